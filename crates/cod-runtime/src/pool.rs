//! The warm runtime pool: which worker slots keep which languages' interpreters started.
//!
//! A language with a `[warm]` section (Python) can be kept started in a slot: the slot's
//! keeper holds a zygote that forks a fresh, isolated process per run (see the sandbox's
//! `zygote.rs` and `docs/sandbox.md`). This module decides which slots hold which
//! runtimes: a slot per runtime as the recent mix of requests asks for (a language that
//! most runs use is warm everywhere, one rarely used in a few), within the configured
//! bounds and the memory budget of all idle zygotes together, measured as they report it.
//! It tells the jail ([`Jail::set_warm`]), whose keepers start and end zygotes while their
//! slots are idle, off any run's path.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use cod_core::config::PoolConfig;
use cod_sandbox::{Jail, WarmKind, WarmRuntime, WarmUse};
use tracing::{debug, warn};

use crate::job::{HostLayout, stage_env};
use crate::language::Registry;

/// What a zygote is assumed to hold until one reports its real figure.
const ESTIMATED_IDLE: u64 = 16 << 20;
/// Weight of the past in the demand estimate, per run: a half-life of about 35 runs.
const DECAY: f64 = 0.98;
/// Runs between two re-balances.
const REBALANCE_EVERY: u32 = 8;
/// Slots kept warm beyond a runtime's share of the recent runs (bursts come).
const HEADROOM: f64 = 1.25;

/// Where the bootstrap is bound in the sandbox (see [`Registry::with_warm_files`]).
pub(crate) const NODE_BOOTSTRAP_PATH: &str = "/opt/cod/warm/node-bootstrap.js";

/// Where the JVM bootstrap's class is bound in the sandbox (a directory).
pub(crate) const JAVA_BOOT_DIR: &str = "/opt/cod/warm/java";

/// The JVM's bootstrap, compiled once on the host (see `CodBoot.java`): started ahead with
/// the run command's JVM options, it reads the run's arguments on fd 4 and runs its main
/// class from the class path they name, as `java -cp PATH Main args` would.
pub(crate) const JAVA_BOOT: &str = include_str!("CodBoot.java");

/// How a Node.js started ahead waits for its run: it says it is ready on fd 5, reads the
/// script and its arguments (NUL-terminated) on fd 4 until end of file, then runs the
/// script as `node script args` would (`process.argv`, `require.main`, the module's file
/// name and directory are the same, and the module cache holds the program's modules only).
/// Its standard streams exist before the run, and so does the compiled code of a first
/// `console.log` (V8 compiles a function on its first call: the bootstrap logs to a console
/// of its own that writes nowhere), so the program's first line pays for neither; a
/// program that ends without an uncaught exception leaves, once every `exit` listener has
/// run, by a SIGKILL of its own with its exit status in its name (`cod-exit N`, which the
/// init reads while the process is a zombie: see `init::chosen_exit`), skipping the
/// runtime's teardown; its output is a pipe, written synchronously.
pub(crate) const NODE_BOOTSTRAP: &str = r#"'use strict';
const fs = require('fs');
// Created now, not by the program's first console.log (both are pipes: writes are synchronous).
process.stdout;
process.stderr;
let clean = true;
process.on('uncaughtExceptionMonitor', () => {
  clean = false;
});
process.on('exit', function codExit(code) {
  if (!clean) return;
  // Run the listeners the program added, then leave without the runtime's slow teardown.
  const all = process.listeners('exit');
  for (const l of all.slice(all.indexOf(codExit) + 1)) l.call(process, code);
  const status = process.exitCode === undefined ? code : process.exitCode;
  // Even reallyExit first stops node's threads and runs its destructors. A SIGKILL ends
  // the process at once; the status goes in its name, which cod's init reads.
  const name = `cod-exit ${(Number(status) | 0) & 255}`;
  try {
    process.title = name;
    if (fs.readFileSync('/proc/self/comm', 'latin1') === `${name}\n`) {
      // The output is complete (pipes are written synchronously): it ends here. Then the
      // init (pid 1) is told: it reads the name, reports, and kills this process without
      // waiting for its memory to be torn down (milliseconds, before its end is visible).
      for (const f of [1, 2]) {
        try {
          fs.closeSync(f);
        } catch {}
      }
      try {
        process.kill(1, 'SIGUSR1');
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1000);
      } catch {}
      process.kill(process.pid, 'SIGKILL');
    }
  } catch {}
  process.reallyExit(status);
});
// V8 compiles a function when it is first called: call now, on a console of its own that
// writes nowhere, what the run's first console.log would compile (the console, util.inspect,
// streams), and what starts the run below.
{
  const { Console } = require('console');
  const { Writable } = require('stream');
  const sink = new Writable({ write(chunk, encoding, done) { done(); } });
  const c = new Console({ stdout: sink, stderr: sink });
  Buffer.concat([Buffer.from('a\0')]).toString('utf8').split('\0');
  require('path').resolve('a');
  c.log(1);
  c.log('%s %d', 'a', 1.5, -0, 10n, [1, 'a'], { a: { b: [1] } }, new Map([[1, 2]]), null, undefined, true);
  c.error('e');
}
fs.writeSync(5, 'R');
fs.closeSync(5);
const chunks = [];
const buf = Buffer.alloc(65536);
for (;;) {
  let n;
  try {
    n = fs.readSync(4, buf, 0, buf.length, null);
  } catch (e) {
    if (e.code === 'EAGAIN' || e.code === 'EINTR') continue;
    throw e;
  }
  if (n === 0) break;
  chunks.push(Buffer.from(buf.subarray(0, n)));
}
fs.closeSync(4);
const args = Buffer.concat(chunks).toString('utf8').split('\0');
args.pop();
process.argv = [process.argv[0], require('path').resolve(args[0]), ...args.slice(1)];
// The program finds in the module cache only what it loaded.
delete require.cache[__filename];
require('module').runMain();
"#;

/// The warm runtimes of `registry`'s languages that have a usable `[warm]` section, for
/// [`cod_sandbox::JailConfig::warm`], in the order the pool refers to them.
pub fn warm_runtimes(registry: &Registry, host: &HostLayout, disk: u64) -> Vec<WarmRuntime> {
    let memory = cod_core::limits::LimitsPolicy::default()
        .default
        .to_limits()
        .memory
        .get();
    warm_runtimes_with(registry, host, disk, memory)
}

/// [`warm_runtimes`] for runs whose default limits are `disk` and `memory` bytes (a JVM
/// started ahead sizes its heap for `memory`).
pub fn warm_runtimes_with(
    registry: &Registry,
    host: &HostLayout,
    disk: u64,
    memory: u64,
) -> Vec<WarmRuntime> {
    registry
        .all()
        .iter()
        .filter_map(|lang| {
            let w = lang.warm()?;
            let program = lang.run_program().to_owned();
            let kind = match w.kind.as_str() {
                "python" => WarmKind::Python {
                    library: w.library.clone().into(),
                    program,
                    preload: w.preload.clone(),
                },
                "node" => WarmKind::Prestart {
                    argv: vec![program.clone(), NODE_BOOTSTRAP_PATH.into()],
                    program,
                    options: Vec::new(),
                },
                "java" => {
                    // The run command's JVM options (before `-cp`), for runs with the
                    // default limits; a run with other options runs cold.
                    let argv = crate::template::expand(
                        &lang.run.command,
                        &crate::template::Context {
                            source: "",
                            sources: &[],
                            args: &[],
                            main: "",
                            memory_bytes: memory,
                        },
                    );
                    let cp = argv.iter().position(|a| a == "-cp" || a == "-classpath")?;
                    let options = argv[1..cp].to_vec();
                    let mut start = vec![program.clone()];
                    start.extend(options.iter().cloned());
                    start.extend([
                        // For the bootstrap's own descriptors (fds 4 and 5).
                        "--add-opens=java.base/java.io=ALL-UNNAMED".into(),
                        // No /tmp/hsperfdata file: a JVM ended unused (the run was not
                        // Java) leaves nothing in the sandbox.
                        "-XX:-UsePerfData".into(),
                        "-cp".into(),
                        JAVA_BOOT_DIR.into(),
                        "CodBoot".into(),
                    ]);
                    WarmKind::Prestart {
                        argv: start,
                        program,
                        options,
                    }
                }
                _ => return None,
            };
            Some(WarmRuntime {
                name: lang.name.clone(),
                layout: host.layout(disk),
                env: stage_env(lang, &lang.run.env),
                kind,
            })
        })
        .take(cod_sandbox::client::MAX_WARM)
        .collect()
}

/// Counters of one warm runtime.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeStats {
    /// Its language.
    pub language: String,
    /// Slots told to keep it.
    pub slots: u32,
    /// Runs of the language a zygote served.
    pub hits: u64,
    /// Runs of the language that started the interpreter (no ready zygote in their slot).
    pub misses: u64,
    /// What one idle zygote holds (private resident bytes; an estimate until one reports).
    pub idle_memory: u64,
}

/// The pool's state, for monitoring.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Per warm runtime.
    pub runtimes: Vec<RuntimeStats>,
    /// The memory budget.
    pub budget: u64,
}

impl PoolStats {
    /// Memory the idle warm runtimes of all slots hold (by their reported figures).
    pub fn idle_memory(&self) -> u64 {
        self.runtimes
            .iter()
            .map(|r| u64::from(r.slots) * r.idle_memory)
            .sum()
    }
}

#[derive(Debug)]
struct State {
    /// Per slot: bit `i` for runtime `i`.
    masks: Vec<u32>,
    /// Decayed count of recent runs per runtime.
    demand: Vec<f64>,
    /// Decayed count of all recent runs (warm languages or not).
    total: f64,
    idle: Vec<Option<u64>>,
    hits: Vec<u64>,
    misses: Vec<u64>,
    since_rebalance: u32,
    /// Per slot: when its latest run ended.
    last_run: Vec<Option<Instant>>,
}

/// Decides which slots keep which warm runtimes.
#[derive(Debug)]
pub struct Pool {
    jail: Arc<Jail>,
    /// Language names, in [`warm_runtimes`] order.
    languages: Vec<String>,
    /// Per runtime: started ahead for one run (node, a JVM), not forked by a zygote.
    single_use: Vec<bool>,
    slots: u32,
    config: PoolConfig,
    state: Mutex<State>,
}

impl Pool {
    /// A pool for the runtimes `languages` (in the order of the jail's
    /// [`JailConfig::warm`](cod_sandbox::JailConfig::warm)) over `jail`'s slots; starts
    /// with as many slots warm as the bounds and the budget allow.
    pub fn new(jail: Arc<Jail>, languages: Vec<String>, config: PoolConfig) -> Arc<Pool> {
        let n = languages.len();
        let slots = jail.slots();
        let single_use = languages
            .iter()
            .map(|l| {
                jail.warm_runtimes()
                    .iter()
                    .find(|w| &w.name == l)
                    .is_some_and(|w| !w.forks())
            })
            .collect();
        let pool = Arc::new(Pool {
            jail,
            languages,
            single_use,
            slots,
            config,
            state: Mutex::new(State {
                masks: vec![0; slots as usize],
                demand: vec![0.0; n],
                total: 0.0,
                idle: vec![None; n],
                hits: vec![0; n],
                misses: vec![0; n],
                since_rebalance: 0,
                last_run: vec![None; slots as usize],
            }),
        });
        if let Ok(mut st) = pool.state.lock() {
            pool.rebalance(&mut st);
        }
        pool
    }

    fn index(&self, language: &str) -> Option<usize> {
        self.languages.iter().position(|l| l == language)
    }

    /// Takes note of a run of `language` in `slot` that `warm` served (or not).
    pub fn record(&self, language: &str, slot: u32, warm: Option<&WarmUse>) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if let Some(t) = st.last_run.get_mut(slot as usize) {
            *t = Some(Instant::now());
        }
        if let Some(i) = self.index(language) {
            match warm {
                Some(w) => {
                    st.hits[i] += 1;
                    if w.idle_memory > 0 {
                        st.idle[i] = Some(w.idle_memory);
                    }
                }
                None => {
                    st.misses[i] += 1;
                    let assigned = st
                        .masks
                        .get(slot as usize)
                        .is_some_and(|m| m & (1 << i) != 0);
                    debug!(language, slot, assigned, "run without a warm runtime");
                }
            }
        }
    }

    /// Slots told to keep `language` warm (its runs should go there). Asked once for each
    /// run as it is queued, which is when the pool counts it: the mix of runtimes it
    /// follows is that of the runs arriving, queued ones included, not of those already
    /// served. Re-balances every few runs.
    pub fn warm_slots(&self, language: &str) -> Vec<u32> {
        let Ok(mut st) = self.state.lock() else {
            return Vec::new();
        };
        for d in &mut st.demand {
            *d *= DECAY;
        }
        st.total = st.total * DECAY + 1.0;
        let index = self.index(language);
        if let Some(i) = index {
            st.demand[i] += 1.0;
        }
        st.since_rebalance += 1;
        if st.since_rebalance >= REBALANCE_EVERY {
            self.rebalance(&mut st);
        }
        let Some(i) = index else {
            return Vec::new();
        };
        let slots = (0..)
            .zip(&st.masks)
            .filter(|(_, m)| *m & (1 << i) != 0)
            .map(|(s, _)| s)
            .collect();
        if self.single_use.get(i).copied().unwrap_or(false) {
            least_recently_run(slots, &st.last_run)
        } else {
            slots
        }
    }

    /// Counters and sizes, for `/metrics` and `cod bench`.
    pub fn stats(&self) -> PoolStats {
        let Ok(st) = self.state.lock() else {
            return PoolStats::default();
        };
        PoolStats {
            runtimes: self
                .languages
                .iter()
                .enumerate()
                .map(|(i, language)| RuntimeStats {
                    language: language.clone(),
                    slots: u32::try_from(st.masks.iter().filter(|m| *m & (1 << i) != 0).count())
                        .unwrap_or(u32::MAX),
                    hits: st.hits[i],
                    misses: st.misses[i],
                    idle_memory: st.idle[i].unwrap_or(ESTIMATED_IDLE),
                })
                .collect(),
            budget: self.config.memory.get(),
        }
    }

    fn targets(&self, st: &State) -> Vec<u32> {
        targets(&self.languages, self.slots, &self.config, st)
    }

    /// Recomputes the masks and tells the jail about the slots whose mask changed.
    fn rebalance(&self, st: &mut State) {
        st.since_rebalance = 0;
        let targets = self.targets(st);
        let mut masks = vec![0u32; self.slots as usize];
        for (i, &t) in targets.iter().enumerate() {
            // The lowest slots first: they are the first handed out when the server is
            // not busy.
            for m in masks.iter_mut().take(t as usize) {
                *m |= 1 << i;
            }
        }
        for (slot, (new, old)) in (0..).zip(masks.iter().zip(&st.masks)) {
            if new != old
                && let Err(e) = self.jail.set_warm(slot, *new)
            {
                warn!(slot, error = %e, "could not change a slot's warm runtimes");
            }
        }
        if masks != st.masks {
            debug!(?targets, "warm runtimes re-balanced");
        }
        st.masks = masks;
    }
}

/// `slots` ordered by when their latest run ended, the longest ago (or never) first: the
/// order to prefer them in for a runtime started ahead for one run. A slot starts the next
/// one when its run ends (node takes 30 to 40 ms), so the slot free the longest is the one
/// likeliest to have it ready; the scheduler takes the first free slot in this order.
/// (Runs of a zygote's runtime prefer the lowest slots instead: the zygote is there all
/// along, and a slot just used has its memory in the caches.)
fn least_recently_run(mut slots: Vec<u32>, last_run: &[Option<Instant>]) -> Vec<u32> {
    slots.sort_by_key(|&s| last_run.get(s as usize).copied().flatten());
    slots
}

/// How many slots each runtime should have: its share of the recent runs (with headroom,
/// at least one while it is used at all) within its bounds, then within the memory budget,
/// the most used runtimes first.
fn targets(languages: &[String], slots: u32, config: &PoolConfig, st: &State) -> Vec<u32> {
    let n = languages.len();
    if !config.enabled {
        return vec![0; n];
    }
    let wanted: Vec<u32> = languages
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let b = config.languages.get(l).copied().unwrap_or_default();
            let max = b.max.unwrap_or(slots).min(slots);
            let min = b.min.min(max);
            if !config.adapt || st.total < 1.0 {
                // No mix to follow yet (or told not to): as many as allowed.
                return max;
            }
            let share = st.demand[i] / st.total;
            let mut want = (f64::from(slots) * share * HEADROOM).ceil();
            if st.demand[i] > 0.05 {
                want = want.max(1.0);
            }
            // In range: `want` is at most `slots * HEADROOM`.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let want = want as u32;
            want.clamp(min, max)
        })
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| st.demand[b].total_cmp(&st.demand[a]));
    let mut left = config.memory.get();
    let mut targets = vec![0; n];
    for i in order {
        let each = st.idle[i].unwrap_or(ESTIMATED_IDLE).max(1);
        let fits = u32::try_from(left / each).unwrap_or(u32::MAX);
        targets[i] = wanted[i].min(fits);
        left -= u64::from(targets[i]) * each;
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;
    use cod_core::Bytes;
    use cod_core::config::PoolLanguage;

    fn state(demand: &[f64], total: f64, idle: &[Option<u64>]) -> State {
        let n = demand.len();
        State {
            masks: Vec::new(),
            demand: demand.to_vec(),
            total,
            idle: idle.to_vec(),
            hits: vec![0; n],
            misses: vec![0; n],
            since_rebalance: 0,
            last_run: Vec::new(),
        }
    }

    #[test]
    fn a_runtime_started_ahead_prefers_the_slot_whose_run_ended_the_longest_ago() {
        let t0 = Instant::now();
        let at = |ms: u64| Some(t0 + std::time::Duration::from_millis(ms));
        // Slot 2 never ran; slot 0 ran last, slot 3 before it, slot 1 first.
        let last = [at(30), at(10), None, at(20)];
        assert_eq!(least_recently_run(vec![0, 1, 2, 3], &last), [2, 1, 3, 0]);
        // Only the runtime's own slots, whatever else ran.
        assert_eq!(least_recently_run(vec![0, 3], &last), [3, 0]);
        // Slots that never ran keep their order.
        assert_eq!(least_recently_run(vec![1, 0], &[None, None]), [1, 0]);
    }

    fn langs(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_fresh_pool_warms_every_slot_within_the_budget() {
        let config = PoolConfig::default();
        let st = state(&[0.0], 0.0, &[None]);
        assert_eq!(targets(&langs(&["python"]), 8, &config, &st), [8]);
        // 256 MiB at the 16 MiB estimate: 16 of 64 slots.
        assert_eq!(targets(&langs(&["python"]), 64, &config, &st), [16]);
        // A measured 10 MiB per zygote: 25.
        let st = state(&[0.0], 0.0, &[Some(10 << 20)]);
        assert_eq!(targets(&langs(&["python"]), 64, &config, &st), [25]);
    }

    #[test]
    fn slots_follow_the_mix_of_requests() {
        let config = PoolConfig::default();
        let names = langs(&["python", "javascript"]);
        // 90% of recent runs Python, 5% JavaScript, 5% others, on 16 slots.
        let st = state(&[9.0, 0.5], 10.0, &[Some(10 << 20), Some(40 << 20)]);
        let t = targets(&names, 16, &config, &st);
        assert_eq!(t[0], 16, "{t:?}");
        assert_eq!(t[1], 1, "a language in use keeps one warm slot: {t:?}");
        // The mix turns: mostly JavaScript. It gets 12 slots (90% of 16, plus headroom) at
        // 20 MiB, 240 MiB of the 256; Python would like 3 but 16 MiB is left for one.
        let st = state(&[1.0, 9.0], 10.0, &[Some(10 << 20), Some(20 << 20)]);
        let t = targets(&names, 16, &config, &st);
        assert_eq!(t, [1, 12], "{t:?}");
        // Unused languages get nothing (unless a minimum says so).
        let st = state(&[0.0, 0.0], 10.0, &[None, None]);
        assert_eq!(targets(&names, 16, &config, &st), [0, 0]);
        let mut with_min = config.clone();
        with_min.languages.insert(
            "python".into(),
            PoolLanguage {
                min: 2,
                max: Some(4),
            },
        );
        assert_eq!(targets(&names, 16, &with_min, &st), [2, 0]);
        let st = state(&[10.0, 0.0], 10.0, &[None, None]);
        assert_eq!(targets(&names, 16, &with_min, &st)[0], 4, "max caps it");
    }

    #[test]
    fn the_budget_is_never_exceeded_and_goes_to_the_busiest_first() {
        let config = PoolConfig {
            memory: Bytes::mib(100),
            ..PoolConfig::default()
        };
        let names = langs(&["python", "javascript"]);
        let idle = [Some(10 << 20), Some(30 << 20)];
        for (demand, total) in [([5.0, 5.0], 10.0), ([9.0, 1.0], 10.0), ([1.0, 9.0], 10.0)] {
            let st = state(&demand, total, &idle);
            let t = targets(&names, 32, &config, &st);
            let used = u64::from(t[0]) * (10 << 20) + u64::from(t[1]) * (30 << 20);
            assert!(used <= 100 << 20, "{demand:?}: {t:?} uses {used}");
        }
        // JavaScript busiest: it is served first (3 × 30 MiB), Python gets what is left.
        let st = state(&[1.0, 9.0], 10.0, &idle);
        assert_eq!(targets(&names, 32, &config, &st), [1, 3]);
        // Disabled: nothing.
        let off = PoolConfig {
            enabled: false,
            ..PoolConfig::default()
        };
        assert_eq!(targets(&names, 32, &off, &st), [0, 0]);
    }
}
