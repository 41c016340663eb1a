//! `cod simulate` as a user runs it: a short, small day (three hours, 2,000 users, 8-core
//! machines: a second or two in a debug build), its JSON, its CSV and its plot, and the
//! errors for bad parameters.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// Three hours with a one-hour peak from 01:00, 2,000 users, 2 gateways, 8-core machines.
const SMALL: &str = r#"
duration = "3h"
sample_interval = "1m"

[load]
daily_users = 2000
think = "1m"
peak_start = "1h"
peak_length = "1h"
ramp = "20m"

[fleet]
gateways = 2
cores_per_machine = 8
boot = "2m"
boot_jitter = "30s"
initial_machines = 1

[policy]
slots_per_worker = 8
min_workers = 1
max_workers = 200
"#;

fn cod() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cod"));
    c.env_remove("COD_CONFIG");
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

struct Day {
    dir: tempfile::TempDir,
    params: PathBuf,
}

impl Day {
    fn new(params: &str) -> Day {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("day.toml");
        std::fs::write(&path, params).unwrap();
        Day { dir, params: path }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `cod simulate --config-file day.toml --csv day.csv --plot day.svg` and `extra`.
    fn run(&self, extra: &[&str]) -> Output {
        cod()
            .arg("simulate")
            .arg("--config-file")
            .arg(&self.params)
            .arg("--csv")
            .arg(self.path("day.csv"))
            .arg("--plot")
            .arg(self.path("day.svg"))
            .args(extra)
            .output()
            .unwrap()
    }

    fn json(&self, extra: &[&str]) -> Value {
        let mut args = vec!["--json"];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
    }
}

fn num(v: &Value, path: &str) -> f64 {
    let mut cur = v;
    for k in path.split('.') {
        cur = cur.get(k).unwrap_or_else(|| panic!("no {path} in {v}"));
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number: {cur}"))
}

/// Checks that `svg` is one `<svg>` element whose tags nest and close: enough XML for a
/// browser to draw it.
fn assert_svg(svg: &str) {
    let body = svg.trim();
    let body = match body.strip_prefix("<?xml") {
        Some(rest) => rest[rest.find("?>").expect("the XML declaration ends") + 2..].trim(),
        None => body,
    };
    assert!(body.starts_with("<svg"), "{}", &body[..body.len().min(200)]);
    assert!(body.ends_with("</svg>"));
    assert!(body.contains("xmlns=\"http://www.w3.org/2000/svg\""));
    let mut open: Vec<String> = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        let end = rest.find('>').expect("every tag closes");
        let tag = &rest[..end];
        rest = &rest[end + 1..];
        if tag.starts_with('!') || tag.starts_with('?') {
            continue;
        }
        let name = |t: &str| {
            t.split(|c: char| c.is_whitespace() || c == '/')
                .next()
                .unwrap_or_default()
                .to_owned()
        };
        if let Some(closing) = tag.strip_prefix('/') {
            let top = open
                .pop()
                .unwrap_or_else(|| panic!("</{closing}> closes nothing"));
            assert_eq!(top, closing.trim(), "tags nest");
        } else if !tag.ends_with('/') {
            open.push(name(tag));
        }
        assert!(
            !open.is_empty() || rest.trim().is_empty(),
            "one root element"
        );
    }
    assert!(open.is_empty(), "unclosed: {open:?}");
}

#[test]
fn a_small_day_reports_its_figures_and_writes_the_timeline_and_plot() {
    let day = Day::new(SMALL);
    let r = day.json(&[]);

    // The report's documented fields, and their invariants.
    let machine_hours = num(&r, "machine_hours");
    let peak_hours = num(&r, "peak_provisioned_machine_hours");
    let ratio = num(&r, "ratio");
    let peak_machines = num(&r, "peak_machines");
    assert!(ratio > 0.0 && ratio <= 1.0, "{ratio}");
    assert!(machine_hours > 0.0 && machine_hours <= peak_hours + 1e-9);
    assert!((machine_hours / peak_hours - ratio).abs() < 1e-9);
    assert!((peak_hours - peak_machines * num(&r, "hours")).abs() < 1e-6);
    assert_eq!(num(&r, "hours"), 3.0);
    // A one-hour peak of ~20 runs/s of 10 s on 8-core machines needs a few dozen machines;
    // the quiet hours around it need a few: the fleet follows the load.
    assert!((10.0..=200.0).contains(&peak_machines), "{peak_machines}");
    assert!(ratio < 0.8, "machines follow the load: {ratio}");
    let load = num(&r, "peak_load_machines");
    assert!(
        load > 0.0 && load <= peak_machines,
        "{load} vs {peak_machines}"
    );
    for w in ["wait_ms", "short_wait_ms"] {
        let (p50, p99, max) = (
            num(&r, &format!("{w}.p50")),
            num(&r, &format!("{w}.p99")),
            num(&r, &format!("{w}.max")),
        );
        assert!(0.0 <= p50 && p50 <= p99 && p99 <= max, "{w}: {}", r[w]);
    }
    assert!(num(&r, "short_wait_ms.count") <= num(&r, "wait_ms.count"));
    assert!(
        num(&r, "short_wait_ms.p99") <= 100.0,
        "{}",
        r["short_wait_ms"]
    );
    let rejected = &r["rejected"];
    assert!(rejected.is_u64(), "rejected is a count: {rejected}");
    assert_eq!(num(&r, "runs"), num(&r, "simulated_runs") * 2.0);
    assert!(
        num(&r, "simulated_runs") > 5_000.0,
        "{}",
        r["simulated_runs"]
    );

    // The timeline: a header and one row per simulated minute, every row complete.
    let csv = std::fs::read_to_string(day.path("day.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    for col in [
        "time_s",
        "arrivals_per_s",
        "busy_slots",
        "machines",
        "ready",
        "target",
    ] {
        assert!(header.contains(&col), "{col} in {header:?}");
    }
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|f| f.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 3 * 60 + 1);
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (machines, busy) = (col("machines"), col("busy_slots"));
    for row in &rows {
        assert_eq!(row.len(), header.len());
        assert!(row[busy] <= row[machines] * 8.0, "{row:?}");
    }
    assert_eq!(
        rows.iter().map(|r| r[machines]).fold(0.0, f64::max),
        peak_machines,
        "the CSV's highest machine count is the reported peak"
    );

    // The plot.
    assert_svg(&std::fs::read_to_string(day.path("day.svg")).unwrap());
}

#[test]
fn the_same_seed_gives_the_same_day_and_the_table_has_the_ratio() {
    let day = Day::new(&SMALL.replace("duration = \"3h\"", "duration = \"1h\""));
    let strip = |mut v: Value| {
        v.as_object_mut().unwrap().remove("wall_s");
        v
    };
    let a = strip(day.json(&["--seed", "7"]));
    let b = strip(day.json(&["--seed", "7"]));
    assert_eq!(a, b);
    let c = strip(day.json(&["--seed", "8"]));
    assert_ne!(a["simulated_runs"], c["simulated_runs"]);

    let out = day.run(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(
        table.contains("ratio") && table.contains("machine-hours"),
        "{table}"
    );
    assert!(Path::new(&day.path("day.csv")).exists());
}

#[test]
fn bad_parameters_are_refused_naming_the_key() {
    let cases = [
        // An unknown key: its dotted name and its line.
        (
            "[load]\nthnk = \"3m\"\n",
            &["load.thnk", "line 2", "unknown field"][..],
        ),
        // A value of the wrong type.
        ("[load]\nthink = 3\n", &["load.think", "line 2"][..]),
        // A value out of its range.
        (
            "[fleet]\ngateways = 3\n",
            &["fleet.gateways", "cores_per_machine"][..],
        ),
        (
            "[policy]\ntarget_utilization = 0\n",
            &["target_utilization"][..],
        ),
        // Not TOML at all.
        ("[load\n", &["line 1"][..]),
    ];
    for (params, wanted) in cases {
        let day = Day::new(params);
        let out = day.run(&["--json"]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{params}: {err}");
        assert!(out.stdout.is_empty(), "{params}");
        assert!(err.contains("day.toml"), "the file is named: {err}");
        for w in wanted {
            assert!(err.contains(w), "{params}: {w} in {err}");
        }
        assert!(!day.path("day.csv").exists(), "nothing is written");
    }
    let out = cod()
        .args(["simulate", "--config-file", "/nonexistent/day.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/day.toml"));
}
