//! Prints what `cod bench` reports for program buffers, with memory measured by a counting
//! allocator.
//!
//! How to run: `cargo run --release -p cod-session --example session_bench [SESSIONS]`

use cod_session::bench::{
    EDITS_PER_SESSION, keystroke_bench, measure_compacted_memory, measure_memory_for_sessions,
};

#[global_allocator]
static ALLOCATOR: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

fn main() {
    let sessions = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let k = keystroke_bench(20_000, 20_000);
    println!(
        "keystroke into 20 KB: median {:.2} us, p99 {:.2} us, message median {} B (max {} B)",
        k.median.as_secs_f64() * 1e6,
        k.p99.as_secs_f64() * 1e6,
        k.median_message_bytes,
        k.max_message_bytes,
    );
    for edits in [0, EDITS_PER_SESSION, 500] {
        let m = measure_memory_for_sessions(sessions, 20_000, edits, || ALLOCATOR.allocated());
        let text = m.estimate.text_bytes as f64;
        println!(
            "{} sessions of 20 KB, {edits} keystrokes each: text {:.1} MB, measured heap {:.1} MB \
             ({:.2}x), estimate {:.1} MB ({:.2}x)",
            m.estimate.sessions,
            text / 1e6,
            m.measured_heap_bytes as f64 / 1e6,
            m.measured_heap_bytes as f64 / text,
            m.estimate.heap_bytes as f64 / 1e6,
            m.estimate.heap_bytes as f64 / text,
        );
    }
    let m = measure_compacted_memory(sessions, 20_000, EDITS_PER_SESSION, || {
        ALLOCATOR.allocated()
    });
    let text = m.estimate.text_bytes as f64;
    println!(
        "  the same with {EDITS_PER_SESSION} keystrokes, after compact_idle: measured heap {:.1} MB \
         ({:.2}x), estimate {:.2}x",
        m.measured_heap_bytes as f64 / 1e6,
        m.measured_heap_bytes as f64 / text,
        m.estimate.heap_bytes as f64 / text,
    );
}
