//! The timeline as an SVG line chart, written by hand (no plotting dependency): machines
//! paid for, the load in machines' worth of busy slots, the fleet a peak-sized provisioning
//! would keep all day, and the arrival rate on a second axis.

use std::fmt::Write as _;

use super::report::Report;

const W: f64 = 960.0;
const H: f64 = 540.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 80.0;
const TOP: f64 = 78.0;
const BOTTOM: f64 = 56.0;

/// A round step for about `n` ticks up to `max`.
fn step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn thousands(v: f64) -> String {
    #[allow(clippy::cast_possible_truncation)]
    let n = v.round() as i64;
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// The chart of `r`'s timeline.
pub fn svg(r: &Report) -> String {
    let hours = r.hours.max(1.0 / 60.0);
    let cores = f64::from(r.cores_per_machine.max(1));
    let load_max = r
        .timeline
        .iter()
        .map(|s| s.busy_slots / cores)
        .fold(0.0, f64::max);
    let machines_max = r
        .timeline
        .iter()
        .map(|s| f64::from(s.machines))
        .fold(f64::from(r.peak_machines), f64::max)
        .max(load_max)
        .max(1.0);
    let y_step = step(machines_max * 1.1, 6.0);
    let y_max = (machines_max * 1.1 / y_step).ceil() * y_step;
    let rate_max = r
        .timeline
        .iter()
        .map(|s| s.arrivals_per_s)
        .fold(0.0, f64::max)
        .max(1.0);
    let r_step = step(rate_max * 1.1, 6.0);
    let r_max = (rate_max * 1.1 / r_step).ceil() * r_step;
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let x = |t: f64| LEFT + pw * (t / 3600.0 / hours).clamp(0.0, 1.0);
    let y = |v: f64| TOP + ph * (1.0 - (v / y_max).clamp(0.0, 1.0));
    let yr = |v: f64| TOP + ph * (1.0 - (v / r_max).clamp(0.0, 1.0));

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="Helvetica, Arial, sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let title = format!(
        "cod simulate: {} runs in {:.0} h, machines follow the load",
        thousands(r.runs as f64),
        r.hours
    );
    let subtitle = format!(
        "{} machine-hours vs {} for a fleet sized for the peak (ratio {:.2}) · peak {} machines · wait p99 of runs under 1 s: {:.0} ms · refused: {}",
        thousands(r.machine_hours),
        thousands(r.peak_provisioned_machine_hours),
        r.ratio,
        r.peak_machines,
        r.short_wait_ms.p99,
        thousands(r.rejected as f64),
    );
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="26" font-size="17" font-weight="bold">{}</text>"#,
        escape(&title)
    );
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="46" fill="#444">{}</text>"##,
        escape(&subtitle)
    );
    // Grid and left axis: machines.
    let mut v = 0.0;
    while v <= y_max + 1e-9 {
        let yy = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#e5e5e5"/>"##,
            LEFT + pw
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            yy + 4.0,
            thousands(v)
        );
        v += y_step;
    }
    // Right axis: runs per second.
    let mut v = 0.0;
    while v <= r_max + 1e-9 {
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" fill="#2a9d5c">{}</text>"##,
            LEFT + pw + 6.0,
            yr(v) + 4.0,
            thousands(v)
        );
        v += r_step;
    }
    // Time axis.
    let tick_h = if hours <= 6.0 {
        1.0
    } else if hours <= 30.0 {
        2.0
    } else {
        6.0
    };
    let mut h = 0.0;
    while h <= hours + 1e-9 {
        let xx = x(h * 3600.0);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{:.1}" stroke="#f0f0f0"/>"##,
            TOP + ph
        );
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let label = format!("{:02}:00", (h as u64) % 24);
        let _ = writeln!(
            s,
            r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            TOP + ph + 18.0
        );
        h += tick_h;
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time of day</text>"#,
        LEFT + pw / 2.0,
        H - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">machines ({} cores each)</text>"#,
        TOP + ph / 2.0,
        r.cores_per_machine
    );
    let _ = writeln!(
        s,
        r##"<text transform="translate({:.1} {:.1}) rotate(90)" text-anchor="middle" fill="#2a9d5c">runs arriving per second</text>"##,
        W - 14.0,
        TOP + ph / 2.0
    );
    // Series.
    let line = |s: &mut String, pts: Vec<(f64, f64)>, color: &str, width: f64, extra: &str| {
        let mut d = String::new();
        for (i, (px, py)) in pts.iter().enumerate() {
            let _ = write!(d, "{}{px:.1},{py:.1}", if i == 0 { "M" } else { " L" });
        }
        let _ = writeln!(
            s,
            r#"<path d="{d}" fill="none" stroke="{color}" stroke-width="{width}" {extra}/>"#
        );
    };
    let tl = &r.timeline;
    line(
        &mut s,
        tl.iter().map(|p| (x(p.t), yr(p.arrivals_per_s))).collect(),
        "#2a9d5c",
        1.0,
        r#"stroke-opacity="0.55""#,
    );
    let peak_y = y(f64::from(r.peak_machines));
    line(
        &mut s,
        vec![(LEFT, peak_y), (LEFT + pw, peak_y)],
        "#888",
        1.5,
        r#"stroke-dasharray="6 4""#,
    );
    line(
        &mut s,
        tl.iter()
            .map(|p| (x(p.t), y(p.busy_slots / cores)))
            .collect(),
        "#e07a1f",
        1.6,
        "",
    );
    line(
        &mut s,
        tl.iter()
            .map(|p| (x(p.t), y(f64::from(p.machines))))
            .collect(),
        "#1f5fbf",
        2.0,
        "",
    );
    // Legend.
    let entries = [
        (
            "#1f5fbf",
            "machines paid for (booting, ready, draining)",
            "",
        ),
        ("#e07a1f", "load: busy slots ÷ cores per machine", ""),
        (
            "#888",
            "a fleet sized for the peak, all day",
            r#"stroke-dasharray="6 4""#,
        ),
        ("#2a9d5c", "runs arriving per second (right axis)", ""),
    ];
    for (i, (color, label, extra)) in entries.iter().enumerate() {
        #[allow(clippy::cast_precision_loss)]
        let ly = TOP + 16.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2.5" {extra}/>"#,
            LEFT + 12.0,
            LEFT + 40.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            LEFT + 46.0,
            ly + 4.0,
            escape(label)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::report::{Percentiles, Sample};

    fn report() -> Report {
        let timeline = (0..=24)
            .map(|h| Sample {
                t: f64::from(h) * 3600.0,
                arrivals_per_s: if (14..18).contains(&h) { 2000.0 } else { 100.0 },
                busy_slots: if (14..18).contains(&h) {
                    20_000.0
                } else {
                    1000.0
                },
                queued: 0.0,
                machines: if (14..18).contains(&h) { 350 } else { 20 },
                ready: 0,
                booting: 0,
                draining: 0,
                target: 0,
                wait_p99_ms: 0.0,
            })
            .collect();
        Report {
            machine_hours: 2000.0,
            peak_provisioned_machine_hours: 8400.0,
            ratio: 0.238,
            wait_ms: Percentiles::default(),
            short_wait_ms: Percentiles::default(),
            long_slowdown: Percentiles::default(),
            rejected: 0,
            peak_machines: 350,
            peak_load_machines: 300.0,
            runs: 40_000_000,
            simulated_runs: 1_250_000,
            peak_runs_per_s: 2000.0,
            peak_share: 0.8,
            mean_run_s: 10.0,
            short_share: 0.5,
            gateways: 32,
            cores_per_machine: 64,
            hours: 24.0,
            timeline,
        }
    }

    #[test]
    fn the_chart_is_an_svg_with_its_series_axes_and_summary() {
        let s = svg(&report());
        assert!(s.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<path ").count(), 4, "four series");
        assert!(s.contains("40,000,000 runs in 24 h"));
        assert!(s.contains("ratio 0.24"));
        assert!(s.contains("peak 350 machines"));
        assert!(s.contains(">00:00<") && s.contains(">12:00<") && s.contains(">22:00<"));
        // Every element that opens closes (a light well-formedness check).
        assert_eq!(s.matches("<text").count(), s.matches("</text>").count());
        // The machines line reaches the peak's height: 350 on an axis to 400.
        assert!(s.contains(">400<"), "the axis goes past the peak");
    }

    #[test]
    fn steps_are_round() {
        assert_eq!(step(385.0, 6.0), 100.0);
        assert_eq!(step(2442.0, 6.0), 500.0);
        assert_eq!(step(13.0, 6.0), 2.5);
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(thousands(999.0), "999");
    }
}
