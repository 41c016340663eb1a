//! `cod simulate`: a day of the full load through the real scheduler (`cod-sched`) and the
//! real autoscaling policy (`cod-fleet`), in simulated time (`cod_fleet::sim`). Prints what
//! the day cost against a fleet sized for its peak and how long runs waited (a table, or
//! JSON with `--json`), and writes the timeline as CSV and as an SVG plot.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use cod_fleet::sim::{self, Progress, Report, SimConfig};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::SimulateArgs;

/// Runs `cod simulate`.
pub(crate) fn simulate(args: &SimulateArgs) -> anyhow::Result<ExitCode> {
    let mut config = match &args.config_file {
        None => SimConfig::default(),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading the simulation parameters {}", p.display()))?;
            SimConfig::from_toml(&text).with_context(|| format!("in {}", p.display()))?
        }
    };
    if let Some(seed) = args.seed {
        config.seed = seed;
    }
    let bar = progress_bar(&config);
    let started = Instant::now();
    let report = sim::simulate_with_progress(&config, &mut |p: Progress| {
        bar.set_position(minutes(p.done));
        bar.set_message(clock(p.done));
    })
    .context("simulating")?;
    let wall = started.elapsed();
    bar.finish_and_clear();

    write(&args.csv, &report.csv()).context("writing the timeline")?;
    write(&args.plot, &sim::svg(&report)).context("writing the plot")?;
    if args.json {
        let mut json = serde_json::to_value(&report).context("serializing the report")?;
        if let Some(o) = json.as_object_mut() {
            o.insert("wall_s".into(), round(wall.as_secs_f64(), 2).into());
            o.insert("csv".into(), args.csv.display().to_string().into());
            o.insert("plot".into(), args.plot.display().to_string().into());
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&json).context("serializing the report")?
        );
    } else {
        print!("{}", table(&report, wall));
        println!(
            "timeline: {}  plot: {}",
            args.csv.display(),
            args.plot.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A bar over the simulated minutes (warm-up days included); hidden when stderr is not a
/// terminal.
fn progress_bar(config: &SimConfig) -> ProgressBar {
    let total = Duration::from_secs(86_400 * u64::from(config.warmup_days)) + config.duration;
    let bar = ProgressBar::new(minutes(total));
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} simulated {msg:>8} [{bar:30}] {percent:>3}% {elapsed} (eta {eta})",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar
}

fn minutes(d: Duration) -> u64 {
    d.as_secs() / 60
}

/// Simulated time as a day and a clock: `d1 14:05`, or `14:05` on the first day.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    let (day, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    if day == 0 {
        format!("{h:02}:{m:02}")
    } else {
        format!("d{day} {h:02}:{m:02}")
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The report as a table for a person.
fn table(r: &Report, wall: Duration) -> String {
    let ms = |p: &cod_fleet::sim::Percentiles| {
        format!(
            "p50 {:.0}  p90 {:.0}  p99 {:.0}  max {:.0} ms",
            p.p50, p.p90, p.p99, p.max
        )
    };
    let rows = [
        (
            "simulated",
            format!(
                "{:.1} h in {:.1} s: {} runs fleet-wide ({} through one gateway of {} in full)",
                r.hours,
                wall.as_secs_f64(),
                r.runs,
                r.simulated_runs,
                r.gateways
            ),
        ),
        (
            "load",
            format!(
                "peak {:.0} runs/s, {:.0}% of runs in the peak window, mean run {:.1} s, {:.0}% under 1 s",
                r.peak_runs_per_s,
                r.peak_share * 100.0,
                r.mean_run_s,
                r.short_share * 100.0
            ),
        ),
        ("machine-hours", format!("{:.0}", r.machine_hours)),
        (
            "peak-provisioned",
            format!(
                "{:.0} ({} machines of {} cores for {:.1} h; the load peaked at {:.0} machines' worth)",
                r.peak_provisioned_machine_hours,
                r.peak_machines,
                r.cores_per_machine,
                r.hours,
                r.peak_load_machines
            ),
        ),
        ("ratio", format!("{:.3} (goal: at most 0.6)", r.ratio)),
        ("wait, all runs", ms(&r.wait_ms)),
        (
            "wait, runs < 1 s",
            format!("{} (goal: p99 at most 100 ms)", ms(&r.short_wait_ms)),
        ),
        (
            "slowdown, runs ≥ 1 s",
            format!(
                "p50 {:.2}  p99 {:.2}  max {:.2} ((wait + run) / run)",
                r.long_slowdown.p50, r.long_slowdown.p99, r.long_slowdown.max
            ),
        ),
        ("refused (429)", format!("{}", r.rejected)),
    ];
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{k:<22} {v}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_shows_the_day_after_the_first() {
        assert_eq!(clock(Duration::from_secs(14 * 3600 + 5 * 60 + 59)), "14:05");
        assert_eq!(clock(Duration::from_secs(86_400 + 3600)), "d1 01:00");
    }
}
