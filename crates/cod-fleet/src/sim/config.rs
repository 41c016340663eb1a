//! The simulation's parameters: a TOML file (`cod simulate --config-file FILE`), every key
//! with a default from the figures in the design (1M daily users, 80% of the activity in a
//! 4-hour peak, 10–20 runs per sitting, ~2,220 runs/s at the peak, heavy-tailed run times
//! with a 10 s mean, 64-core machines that boot in minutes). `docs/simulate.toml` lists them
//! all; `docs/simulate.md` explains them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::curve::PrescaleConfig;
use crate::policy::{PolicyConfig, PolicyError};

/// Everything the simulation needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Seed of the random numbers: the same seed, the same day.
    pub seed: u64,
    /// Simulated time that is reported, from midnight.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Whole days simulated before the reported time and not reported: they teach the
    /// policy's pre-scaling curve.
    pub warmup_days: u32,
    /// How often the autoscaler decides.
    #[serde(with = "humantime_serde")]
    pub decision_interval: Duration,
    /// How often a row of the CSV is written.
    #[serde(with = "humantime_serde")]
    pub sample_interval: Duration,
    /// Who comes, and when.
    pub load: LoadConfig,
    /// What they run.
    pub runs: RunConfig,
    /// The machines.
    pub fleet: FleetConfig,
    /// Each gateway's scheduler.
    pub scheduler: GatewayConfig,
    /// The autoscaling policy (as `cod fleet` takes it).
    pub policy: PolicyConfig,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            seed: 1,
            duration: Duration::from_secs(86_400),
            warmup_days: 1,
            decision_interval: Duration::from_secs(10),
            sample_interval: Duration::from_secs(60),
            load: LoadConfig::default(),
            runs: RunConfig::default(),
            fleet: FleetConfig::default(),
            scheduler: GatewayConfig::default(),
            // A manager that has seen the day before scales ahead of its curve, so that
            // the headroom for the load's swings (`headroom_sigmas`) is all it keeps.
            policy: PolicyConfig {
                min_workers: 2,
                target_utilization: 1.0,
                prescale: PrescaleConfig {
                    enabled: true,
                    ..PrescaleConfig::default()
                },
                ..PolicyConfig::default()
            },
        }
    }
}

/// Who comes, and when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadConfig {
    /// Users in a day.
    pub daily_users: u64,
    /// Sittings (an editor open, runs one after another) per user and day. The default
    /// makes the peak about 2,220 runs/s: 400,000 people editing at once, each running
    /// their program every 3 minutes.
    pub sittings_per_user: f64,
    /// Runs per sitting, uniform between the two.
    pub runs_per_sitting: [u32; 2],
    /// Mean pause between a result and the next "Run" (exponential).
    #[serde(with = "humantime_serde")]
    pub think: Duration,
    /// Share of the day's runs in the peak window.
    pub peak_share: f64,
    /// When the peak window starts, from midnight.
    #[serde(with = "humantime_serde")]
    pub peak_start: Duration,
    /// How long the peak window lasts.
    #[serde(with = "humantime_serde")]
    pub peak_length: Duration,
    /// How long the activity takes to rise into the peak (and to fall out of it); the rise
    /// is centred on the window's start.
    #[serde(with = "humantime_serde")]
    pub ramp: Duration,
    /// Relative activity outside the peak at each hour, 00:00 to 23:00 (24 numbers,
    /// interpolated): the quiet hours are the small ones.
    pub hourly: Vec<f64>,
}

impl Default for LoadConfig {
    fn default() -> LoadConfig {
        LoadConfig {
            daily_users: 1_000_000,
            sittings_per_user: 2.67,
            runs_per_sitting: [10, 20],
            think: Duration::from_secs(180),
            peak_share: 0.8,
            peak_start: Duration::from_secs(14 * 3600),
            peak_length: Duration::from_secs(4 * 3600),
            ramp: Duration::from_secs(30 * 60),
            hourly: vec![
                0.3, 0.2, 0.15, 0.1, 0.1, 0.15, 0.3, 0.6, 1.0, 1.2, 1.3, 1.3, 1.2, 1.2, 1.3, 1.3,
                1.2, 1.1, 1.0, 1.0, 0.9, 0.8, 0.6, 0.4,
            ],
        }
    }
}

/// What people run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Median run time.
    #[serde(with = "humantime_serde")]
    pub median: Duration,
    /// Mean run time (the heavy tail lifts it far above the median).
    #[serde(with = "humantime_serde")]
    pub mean: Duration,
    /// The longest a run may take (the CPU limit): longer programs are killed there.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// Spread of one sitting's runs around its program's length (log-normal sigma): a
    /// person edits and reruns the same exercise.
    pub jitter: f64,
    /// Share of runs of code that did not change since the sitting's last run (the same
    /// content: no compile, the same length).
    pub rerun: f64,
    /// Languages: share of sittings, and compile time (zero: interpreted).
    pub languages: BTreeMap<String, LanguageMix>,
}

/// One language's part.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanguageMix {
    /// Share of sittings.
    pub share: f64,
    /// Compile time of a changed program (with the compile service's precompiled headers).
    #[serde(with = "humantime_serde", default)]
    pub compile: Duration,
}

impl Default for RunConfig {
    fn default() -> RunConfig {
        let lang = |share: f64, compile_ms: u64| LanguageMix {
            share,
            compile: Duration::from_millis(compile_ms),
        };
        RunConfig {
            median: Duration::from_secs(1),
            mean: Duration::from_secs(10),
            max: Duration::from_secs(300),
            jitter: 0.3,
            rerun: 0.3,
            languages: [
                ("python", lang(0.45, 0)),
                ("javascript", lang(0.12, 0)),
                ("cpp", lang(0.18, 400)),
                ("java", lang(0.10, 500)),
                ("c", lang(0.08, 50)),
                ("rust", lang(0.04, 100)),
                ("bash", lang(0.03, 0)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        }
    }
}

/// The machines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// Gateways sharing the users. Each orders its own runs over an equal share of every
    /// machine's cores (`cores_per_machine / gateways` slots per machine); they are alike,
    /// so one is simulated in full and the fleet's figures are its own times `gateways`.
    pub gateways: u32,
    /// Cores (slots) of a machine.
    pub cores_per_machine: u32,
    /// Time from asking for a machine to its worker taking runs.
    #[serde(with = "humantime_serde")]
    pub boot: Duration,
    /// Up to this much more, at random, per machine.
    #[serde(with = "humantime_serde")]
    pub boot_jitter: Duration,
    /// Machines up at the start.
    pub initial_machines: u32,
}

impl Default for FleetConfig {
    fn default() -> FleetConfig {
        FleetConfig {
            gateways: 32,
            cores_per_machine: 64,
            boot: Duration::from_secs(180),
            boot_jitter: Duration::from_secs(60),
            initial_machines: 4,
        }
    }
}

/// The scheduler each gateway runs (`cod_sched::SchedulerConfig`, without its slots).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// `sjf` (shortest expected first, aging, fair share) or `fifo`.
    pub policy: cod_sched::Policy,
    /// Aging factor.
    pub aging: f64,
    /// Runs that may wait at one gateway.
    pub queue: usize,
    /// Expected CPU time that may wait at one gateway (zero: no bound).
    #[serde(with = "humantime_serde")]
    pub queue_cpu: Duration,
    /// Longest expected wait admitted (zero: no bound).
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Expected length of a run of a runtime never seen.
    #[serde(with = "humantime_serde")]
    pub default_expected: Duration,
}

impl Default for GatewayConfig {
    fn default() -> GatewayConfig {
        GatewayConfig {
            policy: cod_sched::Policy::Sjf,
            aging: 2.0,
            queue: 50_000,
            queue_cpu: Duration::ZERO,
            max_wait: Duration::from_secs(30),
            default_expected: Duration::from_millis(250),
        }
    }
}

/// Parameters the simulation cannot run with.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The TOML does not parse, or a key is unknown or has a value of the wrong type.
    #[error("{}", place(.key))]
    Toml {
        /// Where the fault is, as a dotted path (`load.think`); empty for a syntax error.
        key: String,
        /// What is wrong, with the line.
        #[source]
        source: toml::de::Error,
    },
    /// The policy's configuration is invalid.
    #[error("simulation parameters: policy")]
    Policy(#[from] PolicyError),
    /// The simulation's runtime could not be made.
    #[error("starting the simulation's runtime")]
    Runtime(#[source] std::io::Error),
    /// A value is out of its range.
    #[error("simulation parameter {key}: {why}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What is wrong.
        why: &'static str,
    },
}

/// Where a TOML fault is, for its message.
fn place(key: &str) -> String {
    if key.is_empty() {
        "simulation parameters".to_owned()
    } else {
        format!("simulation parameter {key}")
    }
}

/// Puts the keys of `given` over `base`, section by section; `runs.languages` is taken
/// whole (the languages given are all the languages).
fn overlay(base: &mut toml::Table, given: toml::Table, prefix: &str) {
    for (key, value) in given {
        let path = format!("{prefix}{key}");
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(over))
                if path != "runs.languages" =>
            {
                overlay(inner, over, &format!("{path}."));
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn check(ok: bool, key: &'static str, why: &'static str) -> Result<(), SimError> {
    if ok {
        Ok(())
    } else {
        Err(SimError::Invalid { key, why })
    }
}

impl SimConfig {
    /// Reads parameters from TOML (missing keys take their defaults) and checks them.
    pub fn from_toml(text: &str) -> Result<SimConfig, SimError> {
        let toml_error = |key: String, source| SimError::Toml { key, source };
        let de = toml::Deserializer::parse(text).map_err(|e| toml_error(String::new(), e))?;
        // This parse names an unknown key or a bad value, with its line.
        let _: SimConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            toml_error(if key == "." { String::new() } else { key }, e.into_inner())
        })?;
        // A section given in part keeps the simulation's defaults for the keys it leaves
        // out: serde alone would take the section type's own (`[policy]` would get `cod
        // fleet`'s, not this file's documented ones).
        let given: toml::Table = toml::from_str(text).map_err(|e| toml_error(String::new(), e))?;
        let mut merged = toml::Table::try_from(SimConfig::default())
            .map_err(|e| toml_error(String::new(), serde::de::Error::custom(e)))?;
        overlay(&mut merged, given, "");
        let c: SimConfig = toml::Value::Table(merged)
            .try_into()
            .map_err(|e| toml_error(String::new(), e))?;
        c.validate()?;
        Ok(c)
    }

    /// Checks every value.
    pub fn validate(&self) -> Result<(), SimError> {
        let l = &self.load;
        let r = &self.runs;
        let f = &self.fleet;
        check(
            !self.duration.is_zero(),
            "duration",
            "must be longer than zero",
        )?;
        check(
            self.duration <= Duration::from_secs(7 * 86_400),
            "duration",
            "at most a week",
        )?;
        check(
            !self.decision_interval.is_zero() && !self.sample_interval.is_zero(),
            "decision_interval, sample_interval",
            "must be longer than zero",
        )?;
        check(l.daily_users > 0, "load.daily_users", "must be at least 1")?;
        check(
            l.sittings_per_user > 0.0,
            "load.sittings_per_user",
            "must be above zero",
        )?;
        check(
            l.runs_per_sitting[0] >= 1 && l.runs_per_sitting[0] <= l.runs_per_sitting[1],
            "load.runs_per_sitting",
            "must be [low, high] with 1 ≤ low ≤ high",
        )?;
        check(!l.think.is_zero(), "load.think", "must be longer than zero")?;
        check(
            l.peak_share > 0.0 && l.peak_share < 1.0,
            "load.peak_share",
            "must be between 0 and 1",
        )?;
        check(
            l.peak_start < Duration::from_secs(86_400),
            "load.peak_start",
            "must be within the day",
        )?;
        check(
            !l.peak_length.is_zero() && l.peak_length < Duration::from_secs(86_400),
            "load.peak_length",
            "must be within a day",
        )?;
        check(
            l.ramp <= l.peak_length,
            "load.ramp",
            "at most load.peak_length",
        )?;
        check(
            l.hourly.len() == 24 && l.hourly.iter().all(|w| *w > 0.0),
            "load.hourly",
            "must be 24 numbers above zero",
        )?;
        check(
            !r.median.is_zero() && r.median < r.mean && r.mean < r.max,
            "runs",
            "must have 0 < median < mean < max",
        )?;
        check(
            (0.0..2.0).contains(&r.jitter),
            "runs.jitter",
            "must be in [0, 2)",
        )?;
        check(
            (0.0..1.0).contains(&r.rerun),
            "runs.rerun",
            "must be in [0, 1)",
        )?;
        check(
            !r.languages.is_empty()
                && r.languages.values().all(|m| m.share >= 0.0)
                && r.languages.values().any(|m| m.share > 0.0),
            "runs.languages",
            "needs a language with a share above zero",
        )?;
        check(f.gateways >= 1, "fleet.gateways", "must be at least 1")?;
        check(
            f.cores_per_machine >= 1 && f.cores_per_machine.is_multiple_of(f.gateways),
            "fleet.gateways",
            "must divide fleet.cores_per_machine",
        )?;
        check(
            self.policy.slots_per_worker == f.cores_per_machine,
            "policy.slots_per_worker",
            "must equal fleet.cores_per_machine",
        )?;
        check(
            f.initial_machines <= self.policy.max_workers,
            "fleet.initial_machines",
            "at most policy.max_workers",
        )?;
        check(
            self.scheduler.queue >= 1,
            "scheduler.queue",
            "must be at least 1",
        )?;
        check(
            self.scheduler.aging >= 1.0,
            "scheduler.aging",
            "must be at least 1",
        )?;
        self.policy.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_an_empty_file_gives_them() {
        SimConfig::default().validate().expect("valid");
        assert_eq!(
            SimConfig::from_toml("").expect("parses"),
            SimConfig::default()
        );
    }

    #[test]
    fn the_documented_parameters_are_the_defaults() {
        let text = include_str!("../../../../docs/simulate.toml");
        assert_eq!(
            SimConfig::from_toml(text).expect("docs/simulate.toml parses"),
            SimConfig::default(),
            "docs/simulate.toml and the defaults differ"
        );
        // And every key is in it.
        let doc: toml::Table = toml::from_str(text).expect("a table");
        let defaults = toml::Table::try_from(SimConfig::default()).expect("serializes");
        fn keys(t: &toml::Table, prefix: &str, out: &mut Vec<String>) {
            for (k, v) in t {
                let name = format!("{prefix}{k}");
                match v {
                    toml::Value::Table(inner) if k != "languages" => {
                        keys(inner, &format!("{name}."), out);
                    }
                    _ => out.push(name),
                }
            }
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        keys(&doc, "", &mut a);
        keys(&defaults, "", &mut b);
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }

    #[test]
    fn a_section_given_in_part_keeps_the_simulations_defaults() {
        let c = SimConfig::from_toml(
            "[policy]\nmax_workers = 500\n[policy.prescale]\nlookahead = \"5m\"\n\
             [runs.languages]\npython = { share = 1.0, compile = \"0s\" }\n",
        )
        .expect("parses");
        let d = SimConfig::default();
        assert_eq!(c.policy.max_workers, 500);
        assert_eq!(c.policy.prescale.lookahead, Duration::from_secs(300));
        // Not `cod fleet`'s defaults (a floor of 1, a 0.9 target, no pre-scaling).
        assert_eq!(c.policy.min_workers, 2);
        assert!((c.policy.target_utilization - 1.0).abs() < f64::EPSILON);
        assert!(c.policy.prescale.enabled);
        assert_ne!(c.policy.min_workers, PolicyConfig::default().min_workers);
        // The languages given are all of them.
        assert_eq!(c.runs.languages.keys().collect::<Vec<_>>(), ["python"]);
        assert_eq!(c.load, d.load);
        assert_eq!(c.warmup_days, d.warmup_days);
    }

    #[test]
    fn bad_values_are_refused_with_their_key() {
        let bad = |text: &str| match SimConfig::from_toml(text) {
            Err(SimError::Invalid { key, .. }) => key,
            other => panic!("{text}: {other:?}"),
        };
        assert_eq!(bad("[fleet]\ngateways = 3\n"), "fleet.gateways");
        assert_eq!(bad("[load]\npeak_share = 1.5\n"), "load.peak_share");
        assert_eq!(bad("[load]\nhourly = [1.0]\n"), "load.hourly");
        assert_eq!(bad("[runs]\nmean = \"500ms\"\n"), "runs");
        assert_eq!(
            bad("[policy]\nslots_per_worker = 32\n"),
            "policy.slots_per_worker"
        );
        let toml_key = |text: &str| match SimConfig::from_toml(text) {
            Err(SimError::Toml { key, source }) => (key, source.to_string()),
            other => panic!("{text}: {other:?}"),
        };
        let (key, why) = toml_key("[load]\nusers = 3\n");
        assert_eq!(key, "load.users");
        assert!(
            why.contains("unknown field `users`") && why.contains("line 2"),
            "{why}"
        );
        let (key, why) = toml_key("[load]\nthink = 3\n");
        assert_eq!(key, "load.think");
        assert!(why.contains("line 2"), "{why}");
        let (key, _) = toml_key("[runs.languages.python]\nshare = \"a lot\"\n");
        assert_eq!(key, "runs.languages.python.share");
        let (key, why) = toml_key("[load\n");
        assert_eq!(key, "");
        assert!(why.contains("line 1"), "{why}");
        assert!(matches!(
            SimConfig::from_toml("[policy]\ntarget_utilization = 0\n"),
            Err(SimError::Policy(_))
        ));
    }
}
