//! The discrete-event simulation: simulated time jumps from one event to the next.
//!
//! Events: a sitting may start (arrivals are drawn by thinning a Poisson process against
//! the day's curve), a sitting's next run arrives, a run ends, a machine finishes booting,
//! the autoscaler decides, a row of the timeline is taken. Runs are offered to the
//! [`RunQueue`] (the real scheduler), which starts them when it gives them a slot; the
//! [`Autoscaler`] (the real policy) sees the fleet every `decision_interval` and its
//! decisions boot and drain machines.
//!
//! One gateway of `fleet.gateways` is simulated: its users and its queue. The others are
//! alike and independent, so the fleet's busy slots are modelled from this one's
//! ([`super::measure`]): a gateway's expected load (Little's law) times `gateways`, this
//! one's deviation from it times `√gateways`. Workers take runs from every gateway, so this gateway's runs wait only
//! when the fleet so modelled is full: its queue has the slots it may fill before then (its
//! share, [`super::measure::share`]), on no machine in particular; a started run is placed
//! on the ready machines in turn, which keeps a draining machine until its runs end. The
//! policy sees that fleet (the other figures are this gateway's times `gateways`), as the
//! real manager sees the sum of all gateways.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::Duration;

use super::Progress;
use super::config::{SimConfig, SimError};
use super::load::{ArrivalCurve, RunLengths};
use super::measure::{self, Ewma};
use super::queue::{RunQueue, RunSpec, Started};
use super::report::{Report, Sample, Waits};
use super::rng::Rng;
use crate::policy::{Autoscaler, Observation, RuntimeLoad};
use crate::worker::{WorkerId, WorkerState, WorkerView};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A sitting may start (thinning).
    Sitting,
    /// A sitting's next run arrives.
    Run(u32),
    /// A run ends.
    Finish(u64),
    /// A machine has booted.
    Booted(u32),
    /// The autoscaler decides.
    Decide,
    /// A row of the timeline.
    Sample,
}

#[derive(Debug)]
struct Language {
    name: &'static str,
    cumulative: f64,
    compile: f64,
}

/// A run a sitting is about to make (kept while it is retried after a refusal).
#[derive(Clone, Copy, Debug)]
struct Pending {
    content: u64,
    len: f64,
}

#[derive(Debug)]
struct Sitting {
    client: u64,
    language: usize,
    program: f64,
    runs_left: u32,
    version: u64,
    last: Option<Pending>,
    pending: Option<Pending>,
}

#[derive(Debug)]
struct InFlight {
    sitting: u32,
    len: f64,
    language: usize,
    slot: Option<u32>,
    /// The machine it runs on, once started (none if no machine was ready).
    machine: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MachineState {
    Booting,
    Ready,
    Draining,
    Stopped,
}

#[derive(Debug)]
struct Machine {
    id: WorkerId,
    state: MachineState,
    started: Duration,
    stopped: Option<Duration>,
    busy: u32,
}

/// Interned language names: the queue's runtimes are `&'static str`, one copy per name
/// however many simulations run.
fn intern(name: &str) -> &'static str {
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    static NAMES: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let mut names = NAMES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(n) = names.get(name) {
        return n;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The simulation's state.
pub(super) struct Engine<'a, Q> {
    cfg: &'a SimConfig,
    queue: &'a mut Q,
    rng: Rng,
    curve: ArrivalCurve,
    lengths: RunLengths,
    languages: Vec<Language>,
    policy: Autoscaler,
    /// Fleet figures are this gateway's times this.
    gateways: u32,
    /// Ready machines, in the order runs are placed on them.
    ready: Vec<u32>,
    /// The next ready machine a run is placed on.
    next_ready: usize,
    /// Per slot of the queue: online (free or busy), and busy.
    slot_online: Vec<bool>,
    slot_busy: Vec<bool>,
    /// Offline slots, the next to open last.
    offline_slots: Vec<u32>,
    /// Slots online now, and how many the fleet's free capacity gives this gateway.
    online: u32,
    share: u32,
    now: Duration,
    start: Duration,
    end: Duration,
    seq: u64,
    events: BinaryHeap<Reverse<(u64, u64, Event)>>,
    sittings: Vec<Sitting>,
    free_sittings: Vec<u32>,
    next_client: u64,
    next_run: u64,
    runs: HashMap<u64, InFlight>,
    machines: Vec<Machine>,
    busy: u32,
    busy_by_language: Vec<u32>,
    started: Vec<Started>,
    // Measurements between decisions.
    arrivals_since_decision: u64,
    finished_len: f64,
    finished: u64,
    /// The fleet's arrival rate, averaged (see [`super::measure`]).
    arrival_rate: Ewma,
    /// The mean run time, averaged.
    mean_run: Ewma,
    last_decision: Duration,
    target: u32,
    // Measurements between samples.
    arrivals_since_sample: u64,
    sample_waits: Vec<f32>,
    last_sample: Duration,
    // The reported period.
    waits: Waits,
    rejected: u64,
    arrivals: u64,
    arrivals_in_peak: u64,
    len_total: f64,
    short_runs: u64,
    timeline: Vec<Sample>,
    peak_machines: u32,
}

impl<'a, Q: RunQueue> Engine<'a, Q> {
    pub(super) fn new(cfg: &'a SimConfig, queue: &'a mut Q) -> Result<Engine<'a, Q>, SimError> {
        let lengths = RunLengths::new(&cfg.runs)?;
        let l = &cfg.load;
        let mean_runs = f64::from(l.runs_per_sitting[0] + l.runs_per_sitting[1]) / 2.0;
        let sitting = Duration::from_secs_f64(mean_runs * (l.think.as_secs_f64() + lengths.mean()));
        let curve = ArrivalCurve::new(l, mean_runs, sitting);
        let total: f64 = cfg.runs.languages.values().map(|m| m.share).sum();
        let mut cumulative = 0.0;
        let languages = cfg
            .runs
            .languages
            .iter()
            .filter(|(_, m)| m.share > 0.0)
            .map(|(name, m)| {
                cumulative += m.share / total;
                Language {
                    name: intern(name),
                    cumulative,
                    compile: m.compile.as_secs_f64(),
                }
            })
            .collect::<Vec<_>>();
        let start = Duration::from_secs(86_400 * u64::from(cfg.warmup_days));
        // The queue's slots (see `super::simulate`).
        let slots = usize::try_from(
            cfg.policy
                .max_workers
                .saturating_mul(cfg.fleet.cores_per_machine / cfg.fleet.gateways),
        )
        .unwrap_or(usize::MAX);
        let n_languages = languages.len();
        Ok(Engine {
            cfg,
            queue,
            rng: Rng::new(cfg.seed),
            curve,
            lengths,
            languages,
            policy: Autoscaler::new(cfg.policy.clone())?,
            gateways: cfg.fleet.gateways,
            ready: Vec::new(),
            next_ready: 0,
            slot_online: vec![false; slots],
            slot_busy: vec![false; slots],
            offline_slots: (0..u32::try_from(slots).unwrap_or(u32::MAX))
                .rev()
                .collect(),
            online: 0,
            share: 0,
            now: Duration::ZERO,
            start,
            end: start + cfg.duration,
            seq: 0,
            events: BinaryHeap::new(),
            sittings: Vec::new(),
            free_sittings: Vec::new(),
            next_client: 0,
            next_run: 0,
            runs: HashMap::new(),
            machines: Vec::new(),
            busy: 0,
            busy_by_language: vec![0; n_languages],
            started: Vec::new(),
            arrivals_since_decision: 0,
            finished_len: 0.0,
            finished: 0,
            arrival_rate: Ewma::new(measure::ARRIVALS_TAU),
            mean_run: Ewma::new(measure::MEAN_RUN_TAU),
            last_decision: Duration::ZERO,
            target: cfg.fleet.initial_machines,
            arrivals_since_sample: 0,
            sample_waits: Vec::new(),
            last_sample: start,
            waits: Waits::default(),
            rejected: 0,
            arrivals: 0,
            arrivals_in_peak: 0,
            len_total: 0.0,
            short_runs: 0,
            timeline: Vec::new(),
            peak_machines: 0,
        })
    }

    fn at(&mut self, t: Duration, e: Event) {
        self.seq += 1;
        self.events.push(Reverse((nanos(t), self.seq, e)));
    }

    fn reported(&self) -> bool {
        self.now >= self.start
    }

    /// Runs the simulation to its end and reports, telling `progress` about once per
    /// simulated minute.
    pub(super) async fn run(mut self, progress: &mut dyn FnMut(Progress)) -> Report {
        const TICK: Duration = Duration::from_secs(60);
        let mut next_tick = Duration::ZERO;
        for _ in 0..self.cfg.fleet.initial_machines {
            let m = self.add_machine();
            self.machines[m as usize].state = MachineState::Ready;
            self.ready.push(m);
        }
        self.fit_share();
        self.at(Duration::ZERO, Event::Sitting);
        self.at(Duration::ZERO, Event::Decide);
        self.at(self.start, Event::Sample);
        while let Some(Reverse((t, _, e))) = self.events.pop() {
            let t = Duration::from_nanos(t);
            if t > self.end {
                break;
            }
            self.now = t;
            if t >= next_tick {
                progress(Progress {
                    done: t,
                    total: self.end,
                });
                // Past the end once the end is told: it is told once.
                next_tick = if t == self.end {
                    t + TICK
                } else {
                    (t + TICK).min(self.end)
                };
            }
            self.queue.advance_to(t).await;
            match e {
                Event::Sitting => self.sitting(),
                Event::Run(s) => self.arrive(s),
                Event::Finish(id) => self.finish(id),
                Event::Booted(m) => self.booted(m),
                Event::Decide => self.decide(),
                Event::Sample => self.sample(),
            }
            self.start_granted();
        }
        if next_tick <= self.end {
            progress(Progress {
                done: self.end,
                total: self.end,
            });
        }
        self.now = self.end;
        self.report()
    }

    fn add_machine(&mut self) -> u32 {
        let m = u32::try_from(self.machines.len()).expect("fewer than 2^32 machines");
        self.machines.push(Machine {
            id: WorkerId(format!("m{m:05}")),
            state: MachineState::Booting,
            started: self.now,
            stopped: None,
            busy: 0,
        });
        self.count_machines();
        m
    }

    /// The fleet's busy slots: every gateway's expected load, and the swing of `gateways`
    /// independent gateways, `√gateways` times this one's.
    fn fleet_busy(&self) -> f64 {
        let own = f64::from(self.busy);
        let mean = self.expected_busy().unwrap_or(own);
        measure::fleet_figure(own, mean, self.gateways)
    }

    /// The busy slots a gateway is expected to have: its share of the measured arrival
    /// rate times the measured mean run time (Little's law); `None` before they are known.
    fn expected_busy(&self) -> Option<f64> {
        let rate = self.arrival_rate.value()? / f64::from(self.gateways);
        Some(rate * self.mean_run.value()?)
    }

    /// Brings this gateway's slots online or takes free ones offline, to its share of the
    /// fleet: the runs it may have before the fleet, modelled as in [`Self::fleet_busy`],
    /// is full.
    fn fit_share(&mut self) {
        let slots = u64::try_from(self.ready.len()).unwrap_or(u64::MAX)
            * u64::from(self.cfg.fleet.cores_per_machine);
        #[allow(clippy::cast_precision_loss)]
        let slots = slots as f64;
        let mean = self.expected_busy().unwrap_or_else(|| f64::from(self.busy));
        let limit = u32::try_from(self.slot_online.len()).unwrap_or(u32::MAX);
        self.share = measure::share(slots, mean, self.gateways).min(limit);
        if self.online < self.share {
            let n = (self.share - self.online) as usize;
            let at = self.offline_slots.len().saturating_sub(n);
            let opened = self.offline_slots.split_off(at);
            for &s in &opened {
                self.slot_online[s as usize] = true;
            }
            self.online += u32::try_from(opened.len()).unwrap_or(u32::MAX);
            self.queue.open(&opened);
        } else if self.online > self.share {
            let n = (self.online - self.share) as usize;
            let idle: Vec<u32> = (0..self.slot_online.len())
                .rev()
                .filter(|&s| self.slot_online[s] && !self.slot_busy[s])
                .take(n)
                .map(|s| u32::try_from(s).unwrap_or(u32::MAX))
                .collect();
            for s in self.queue.close_idle(&idle) {
                self.slot_online[s as usize] = false;
                self.online -= 1;
                self.offline_slots.push(s);
            }
        }
    }

    /// The ready machine the next run goes to (in turn), if any.
    fn place(&mut self) -> Option<u32> {
        if self.ready.is_empty() {
            return None;
        }
        self.next_ready = (self.next_ready + 1) % self.ready.len();
        Some(self.ready[self.next_ready])
    }

    fn live_machines(&self) -> u32 {
        let n = self
            .machines
            .iter()
            .filter(|m| m.state != MachineState::Stopped)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    fn count_machines(&mut self) {
        if self.reported() {
            self.peak_machines = self.peak_machines.max(self.live_machines());
        }
    }

    fn stop(&mut self, m: u32) {
        let machine = &mut self.machines[m as usize];
        machine.state = MachineState::Stopped;
        machine.stopped = Some(self.now);
    }

    fn sitting(&mut self) {
        let max = self.curve.max_sittings_per_second() / f64::from(self.gateways);
        let rate = self.curve.sittings_per_second(self.now) / f64::from(self.gateways);
        if self.rng.unit() * max < rate {
            let pick = self.rng.unit();
            let language = self
                .languages
                .iter()
                .position(|l| pick < l.cumulative)
                .unwrap_or(self.languages.len() - 1);
            let [lo, hi] = self.cfg.load.runs_per_sitting;
            let s = Sitting {
                client: self.next_client,
                language,
                program: self.lengths.program(&mut self.rng),
                runs_left: self.rng.range(lo, hi),
                version: 0,
                last: None,
                pending: None,
            };
            self.next_client += 1;
            let idx = match self.free_sittings.pop() {
                Some(i) => {
                    self.sittings[i as usize] = s;
                    i
                }
                None => {
                    self.sittings.push(s);
                    u32::try_from(self.sittings.len() - 1).expect("fewer than 2^32 sittings")
                }
            };
            let think = self.rng.exp(self.cfg.load.think.as_secs_f64());
            self.at(self.now + Duration::from_secs_f64(think), Event::Run(idx));
        }
        let gap = self.rng.exp(1.0 / max);
        self.at(self.now + Duration::from_secs_f64(gap), Event::Sitting);
    }

    fn arrive(&mut self, idx: u32) {
        let rerun_p = self.cfg.runs.rerun;
        let s = &mut self.sittings[idx as usize];
        let first_try = s.pending.is_none();
        let run = match s.pending {
            Some(p) => p,
            None => {
                let p = match s.last {
                    Some(last) if self.rng.unit() < rerun_p => last,
                    _ => {
                        s.version += 1;
                        let lang = &self.languages[s.language];
                        let compile = lang.compile * (0.2 * self.rng.normal()).exp();
                        Pending {
                            content: (s.client << 16) ^ s.version,
                            len: self.lengths.run(s.program, &mut self.rng) + compile,
                        }
                    }
                };
                s.last = Some(p);
                p
            }
        };
        let language = s.language;
        let client = s.client;
        let id = self.next_run;
        self.next_run += 1;
        if first_try {
            self.arrivals_since_decision += 1;
            self.arrivals_since_sample += 1;
            if self.reported() {
                self.arrivals += 1;
                if self.curve.in_peak(self.now) {
                    self.arrivals_in_peak += 1;
                }
            }
        }
        let spec = RunSpec {
            id,
            client,
            runtime: self.languages[language].name,
            content: run.content,
            bound: self.cfg.runs.max + Duration::from_secs(1),
        };
        match self.queue.submit(spec) {
            Ok(()) => {
                self.sittings[idx as usize].pending = None;
                self.runs.insert(
                    id,
                    InFlight {
                        sitting: idx,
                        len: run.len,
                        language,
                        slot: None,
                        machine: None,
                    },
                );
            }
            Err(refused) => {
                // The client is told to retry later, and does.
                if self.reported() {
                    self.rejected += 1;
                }
                self.sittings[idx as usize].pending = Some(run);
                self.at(self.now + refused.retry_after, Event::Run(idx));
            }
        }
    }

    /// Starts the runs the queue gave a slot.
    fn start_granted(&mut self) {
        let mut started = std::mem::take(&mut self.started);
        self.queue.take_started(&mut started);
        for st in started.drain(..) {
            let Some(r) = self.runs.get_mut(&st.id) else {
                continue;
            };
            r.slot = Some(st.slot);
            let (len, language) = (r.len, r.language);
            self.slot_busy[st.slot as usize] = true;
            let m = self.place();
            if let Some(m) = m {
                self.machines[m as usize].busy += 1;
            }
            if let Some(r) = self.runs.get_mut(&st.id) {
                r.machine = m;
            }
            self.busy += 1;
            self.busy_by_language[language] += 1;
            let ms = st.waited.as_secs_f64() * 1e3;
            #[allow(clippy::cast_possible_truncation)]
            let ms32 = ms as f32;
            self.sample_waits.push(ms32);
            if self.reported() {
                self.waits.record(ms32, len);
                self.len_total += len;
                if len < 1.0 {
                    self.short_runs += 1;
                }
            }
            self.at(
                self.now + Duration::from_secs_f64(len),
                Event::Finish(st.id),
            );
        }
        self.started = started;
    }

    fn finish(&mut self, id: u64) {
        let Some(r) = self.runs.remove(&id) else {
            return;
        };
        let slot = r.slot.expect("only started runs finish");
        self.slot_busy[slot as usize] = false;
        let reopen = self.online <= self.share;
        if !reopen {
            self.slot_online[slot as usize] = false;
            self.online -= 1;
            self.offline_slots.push(slot);
        }
        if let Some(m) = r.machine {
            let machine = &mut self.machines[m as usize];
            machine.busy -= 1;
            if machine.state == MachineState::Draining && machine.busy == 0 {
                self.stop(m);
            }
        }
        self.busy -= 1;
        self.busy_by_language[r.language] -= 1;
        self.finished += 1;
        self.finished_len += r.len;
        self.queue.finish(id, reopen);
        let s = &mut self.sittings[r.sitting as usize];
        s.runs_left -= 1;
        if s.runs_left == 0 {
            self.free_sittings.push(r.sitting);
        } else {
            let think = self.rng.exp(self.cfg.load.think.as_secs_f64());
            self.at(
                self.now + Duration::from_secs_f64(think),
                Event::Run(r.sitting),
            );
        }
    }

    fn booted(&mut self, m: u32) {
        if self.machines[m as usize].state != MachineState::Booting {
            return;
        }
        self.machines[m as usize].state = MachineState::Ready;
        self.ready.push(m);
        self.fit_share();
    }

    fn observe(&self) -> Observation {
        let g = self.gateways;
        let backlog = self.queue.backlog();
        let mut runtimes: BTreeMap<String, RuntimeLoad> = BTreeMap::new();
        for (i, l) in self.languages.iter().enumerate() {
            let (queued, wait) = backlog.runtimes.get(l.name).copied().unwrap_or_default();
            let busy = self.busy_by_language[i];
            if queued > 0 || busy > 0 {
                runtimes.insert(
                    l.name.to_owned(),
                    RuntimeLoad {
                        queued: queued * g,
                        oldest_wait: wait,
                        busy: busy * g,
                    },
                );
            }
        }
        let workers = self
            .machines
            .iter()
            .filter_map(|m| {
                let state = match m.state {
                    MachineState::Booting => WorkerState::Starting,
                    MachineState::Ready => WorkerState::Ready,
                    MachineState::Draining => WorkerState::Draining,
                    MachineState::Stopped => return None,
                };
                Some(WorkerView {
                    id: m.id.clone(),
                    state,
                    slots: self.cfg.fleet.cores_per_machine,
                    busy: m.busy * g,
                })
            })
            .collect::<Vec<_>>();
        let ready = workers
            .iter()
            .filter(|w| w.state == WorkerState::Ready)
            .count();
        Observation {
            now: self.now,
            runtimes,
            arrival_rate: self.arrival_rate.value().unwrap_or(0.0),
            mean_run: Duration::from_secs_f64(self.mean_run.value().unwrap_or(0.0)),
            queued_cpu: backlog.cpu.map(|c| c * g),
            busy_slots: {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let b = self.fleet_busy().round() as u32;
                b
            },
            total_slots: u32::try_from(ready).unwrap_or(u32::MAX)
                * self.cfg.fleet.cores_per_machine,
            workers,
            startup: Some(self.cfg.fleet.boot + self.cfg.fleet.boot_jitter / 2),
        }
    }

    fn decide(&mut self) {
        let elapsed = self.now - self.last_decision;
        #[allow(clippy::cast_precision_loss)]
        {
            let arrivals = self.arrivals_since_decision as f64 * f64::from(self.gateways);
            self.arrival_rate
                .add(elapsed, arrivals, elapsed.as_secs_f64());
            self.mean_run
                .add(elapsed, self.finished_len, self.finished as f64);
        }
        let obs = self.observe();
        let d = self.policy.decide(&obs);
        self.arrivals_since_decision = 0;
        self.finished = 0;
        self.finished_len = 0.0;
        self.last_decision = self.now;
        self.target = d.target;
        for id in &d.drain {
            let Some(m) = id.0.strip_prefix('m').and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            match self.machines[m as usize].state {
                MachineState::Booting => self.stop(m),
                MachineState::Ready => {
                    self.machines[m as usize].state = MachineState::Draining;
                    self.ready.retain(|&r| r != m);
                    if self.machines[m as usize].busy == 0 {
                        self.stop(m);
                    }
                }
                MachineState::Draining | MachineState::Stopped => {}
            }
        }
        self.fit_share();
        for _ in 0..d.start {
            let m = self.add_machine();
            let jitter = self.rng.unit() * self.cfg.fleet.boot_jitter.as_secs_f64();
            let ready = self.now + self.cfg.fleet.boot + Duration::from_secs_f64(jitter);
            self.at(ready, Event::Booted(m));
        }
        self.at(self.now + self.cfg.decision_interval, Event::Decide);
    }

    fn sample(&mut self) {
        let g = f64::from(self.gateways);
        let dt = (self.now - self.last_sample).as_secs_f64();
        let count = |s: MachineState| {
            let n = self.machines.iter().filter(|m| m.state == s).count();
            u32::try_from(n).unwrap_or(u32::MAX)
        };
        let mut waits = std::mem::take(&mut self.sample_waits);
        waits.sort_unstable_by(f32::total_cmp);
        let p99 = super::report::quantile(&waits, 0.99);
        let backlog = self.queue.backlog();
        let queued: u32 = backlog.runtimes.values().map(|(n, _)| *n).sum();
        #[allow(clippy::cast_precision_loss)]
        let arrivals = if dt > 0.0 {
            self.arrivals_since_sample as f64 * g / dt
        } else {
            0.0
        };
        self.timeline.push(Sample {
            t: self.now.saturating_sub(self.start).as_secs_f64(),
            arrivals_per_s: arrivals,
            busy_slots: self.fleet_busy(),
            queued: f64::from(queued) * g,
            machines: self.live_machines(),
            ready: count(MachineState::Ready),
            booting: count(MachineState::Booting),
            draining: count(MachineState::Draining),
            target: self.target,
            wait_p99_ms: f64::from(p99),
        });
        self.count_machines();
        self.arrivals_since_sample = 0;
        self.last_sample = self.now;
        self.at(self.now + self.cfg.sample_interval, Event::Sample);
    }

    fn report(mut self) -> Report {
        let hours = self.cfg.duration.as_secs_f64() / 3600.0;
        let machine_hours: f64 = self
            .machines
            .iter()
            .map(|m| {
                let from = m.started.max(self.start);
                let to = m.stopped.unwrap_or(self.end).min(self.end);
                to.saturating_sub(from).as_secs_f64() / 3600.0
            })
            .sum();
        let g = u64::from(self.gateways);
        let peak_rate = self
            .timeline
            .iter()
            .map(|s| s.arrivals_per_s)
            .fold(0.0, f64::max);
        let started = self.waits.len() as u64;
        let peak_provisioned = f64::from(self.peak_machines) * hours;
        #[allow(clippy::cast_precision_loss)]
        Report {
            machine_hours,
            peak_provisioned_machine_hours: peak_provisioned,
            ratio: if peak_provisioned > 0.0 {
                machine_hours / peak_provisioned
            } else {
                0.0
            },
            wait_ms: self.waits.all(),
            short_wait_ms: self.waits.short(),
            long_slowdown: self.waits.slowdown(),
            rejected: self.rejected * g,
            peak_machines: self.peak_machines,
            peak_load_machines: self
                .timeline
                .iter()
                .map(|s| s.busy_slots / f64::from(self.cfg.fleet.cores_per_machine))
                .fold(0.0, f64::max),
            runs: self.arrivals * g,
            simulated_runs: self.arrivals,
            peak_runs_per_s: peak_rate,
            peak_share: if self.arrivals > 0 {
                self.arrivals_in_peak as f64 / self.arrivals as f64
            } else {
                0.0
            },
            mean_run_s: if started > 0 {
                self.len_total / started as f64
            } else {
                0.0
            },
            short_share: if started > 0 {
                self.short_runs as f64 / started as f64
            } else {
                0.0
            },
            gateways: self.gateways,
            cores_per_machine: self.cfg.fleet.cores_per_machine,
            hours,
            timeline: std::mem::take(&mut self.timeline),
        }
    }
}
