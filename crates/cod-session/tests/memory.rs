//! Counts real heap allocations (a counting global allocator; one test per binary so nothing
//! else allocates meanwhile) to check the store's memory estimate and the memory goal: 20 KB
//! programs take at most 2.5 times their size.

use cod_session::bench::{
    EDITS_PER_SESSION, measure_compacted_memory, measure_memory_for_sessions,
};

#[global_allocator]
static ALLOCATOR: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

#[test]
fn estimate_matches_counted_allocations_and_meets_the_goal() {
    let m = measure_memory_for_sessions(1_000, 20_000, EDITS_PER_SESSION, || ALLOCATOR.allocated());
    let (estimate, measured) = (m.estimate.heap_bytes as f64, m.measured_heap_bytes as f64);
    let text = m.estimate.text_bytes as f64;
    println!(
        "{m:?}: measured {:.2}x the text, estimate {:.2}x",
        measured / text,
        estimate / text
    );
    assert_eq!(m.estimate.sessions, 1_000);
    assert!(
        (estimate - measured).abs() <= 0.05 * measured,
        "estimate off by more than 5%: {m:?}"
    );
    assert!(measured <= 2.5 * text, "over 2.5x the text: {m:?}");

    let c = measure_compacted_memory(1_000, 20_000, EDITS_PER_SESSION, || ALLOCATOR.allocated());
    let measured = c.measured_heap_bytes as f64;
    println!(
        "after compact_idle: {c:?}: measured {:.2}x the text",
        measured / text
    );
    assert!(
        measured <= 1.3 * text,
        "compaction should restore full leaves: {c:?}"
    );
    let estimate = c.estimate.heap_bytes as f64;
    assert!(
        (estimate - measured).abs() <= 0.05 * measured,
        "estimate off by more than 5%: {c:?}"
    );
}
