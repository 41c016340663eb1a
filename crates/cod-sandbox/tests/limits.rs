//! Escape probes for the sandbox's limits: processes, memory, CPU, wall time, output, disk,
//! open files and stack, plus how exits, signals and stdin are reported and what the cgroup
//! measures. Each test runs a probe from `tests/probes/` (or a stock program from `/usr`)
//! under the real jail and asserts the exact verdict, limit, signal or errno.

mod common;

use std::time::Duration;

use cod_core::{Bytes, LimitReason, Status};
use cod_sandbox::{Exit, Jail};
use common::{Run, describe, field, num};

/// Host uids of this binary's runs start here (see `common`).
const UID_BASE: u32 = 61_000;

fn jail() -> &'static Jail {
    common::shared_jail(UID_BASE)
}

/// One slot per test, so that tests running at once never share one.
mod slot {
    pub(crate) const FORK_BOMB: u32 = 0;
    pub(crate) const THREAD_BOMB: u32 = 1;
    pub(crate) const C_MEMORY_BOMB: u32 = 2;
    pub(crate) const PYTHON_MEMORY_BOMB: u32 = 3;
    pub(crate) const CPU_LOOP: u32 = 4;
    pub(crate) const SLEEP: u32 = 5;
    pub(crate) const STDOUT_LINES: u32 = 6;
    pub(crate) const STDOUT_RAW: u32 = 7;
    pub(crate) const STDERR: u32 = 8;
    pub(crate) const DISK: u32 = 9;
    pub(crate) const FDS: u32 = 10;
    pub(crate) const RECURSION: u32 = 11;
    pub(crate) const SEGV: u32 = 12;
    pub(crate) const EXIT_CODE: u32 = 13;
    pub(crate) const STDIN_ECHO: u32 = 14;
    pub(crate) const STDIN_UNREAD: u32 = 15;
    pub(crate) const MEMORY_PEAK: u32 = 16;
    pub(crate) const CPU_TIME: u32 = 17;
    pub(crate) const OUTPUT_PAUSE: u32 = 18;
    pub(crate) const WALL_COVERS_CPU: u32 = 19;
    pub(crate) const OUTPUT_AT_EXIT: u32 = 20;
    pub(crate) const STDIN_EMPTY: u32 = 21;
    pub(crate) const PEAK_AT_KILL: u32 = 22;
}

const SIGKILL: i32 = libc::SIGKILL;

#[test]
fn fork_bomb_is_held_at_the_process_limit() {
    const PROCESSES: u64 = 16;
    let o = Run::probe(slot::FORK_BOMB, "fork_bomb", &[])
        .limits(|l| l.processes = PROCESSES)
        .run_on(jail());
    let d = describe(&o);
    // The first process saw fork fail with EAGAIN (the pids cgroup), reported and exited 0;
    // the init then killed every bomb still forking.
    assert_eq!(o.status(), Status::Ok, "{d}");
    assert_eq!(o.exit, Exit::Code(0), "{d}");
    assert_eq!(num(&o, "fork_errno"), i64::from(libc::EAGAIN), "{d}");
    let forks = num(&o, "forks");
    assert!((1..PROCESSES.cast_signed()).contains(&forks), "{d}");
    // Processes alive at once, the init (pid 1) included: at most the limit plus the init.
    let procs = num(&o, "procs");
    assert!((2..=PROCESSES.cast_signed() + 1).contains(&procs), "{d}");
    assert!(o.wall < Duration::from_secs(5), "{d}");
    // Not one of the bombs outlived the run.
    let uid = UID_BASE + slot::FORK_BOMB;
    assert_eq!(common::host_processes_with_uid(uid..uid + 1), vec![], "{d}");
}

#[test]
fn thread_bomb_is_held_at_the_process_limit() {
    const PROCESSES: u64 = 16;
    let o = Run::probe(slot::THREAD_BOMB, "thread_bomb", &[])
        .limits(|l| l.processes = PROCESSES)
        .run_on(jail());
    let d = describe(&o);
    assert_eq!(o.status(), Status::Ok, "{d}");
    assert_eq!(num(&o, "thread_err"), i64::from(libc::EAGAIN), "{d}");
    // Threads count as processes: the main thread plus the new ones make up the limit
    // exactly (the init is accounted separately).
    assert_eq!(num(&o, "threads"), PROCESSES.cast_signed() - 1, "{d}");
}

/// Asserts that `o` was stopped by the memory cgroup's OOM killer at a 64 MiB limit.
fn assert_memory_limit(o: &cod_sandbox::StageOutcome) {
    let d = describe(o);
    assert_eq!(o.status(), Status::MemoryLimit, "{d}");
    assert_eq!(o.limit, Some(LimitReason::Memory), "{d}");
    assert_eq!(o.exit, Exit::Signal(SIGKILL), "{d}");
    assert!(o.memory_peak <= Bytes::mib(64).get(), "{d}");
    assert!(o.memory_peak >= Bytes::mib(48).get(), "{d}");
}

#[test]
fn c_memory_bomb_is_killed_at_the_memory_limit() {
    let o = Run::probe(slot::C_MEMORY_BOMB, "mem_bomb", &[])
        .limits(|l| l.memory = Bytes::mib(64))
        .run_on(jail());
    assert_memory_limit(&o);
    assert!(o.stdout.is_empty(), "malloc never failed: {}", describe(&o));
}

#[test]
fn python_memory_bomb_is_killed_at_the_memory_limit() {
    let o = Run::python(
        slot::PYTHON_MEMORY_BOMB,
        "a = []\nwhile True:\n    a.append(bytearray(1 << 20))\n",
        &[],
    )
    .limits(|l| l.memory = Bytes::mib(64))
    .run_on(jail());
    assert_memory_limit(&o);
    // Killed by the cgroup, not a MemoryError the program could catch.
    assert!(o.stderr.is_empty(), "{}", describe(&o));
}

#[test]
fn cpu_loop_hits_the_cpu_limit() {
    let o = Run::probe(slot::CPU_LOOP, "cpu_loop", &[])
        .limits(|l| {
            l.cpu = Duration::from_millis(500);
            l.wall = Duration::from_secs(10);
        })
        .run_on(jail());
    let d = describe(&o);
    assert_eq!(o.status(), Status::TimeLimit, "{d}");
    assert_eq!(o.limit, Some(LimitReason::Cpu), "{d}");
    assert_eq!(o.exit, Exit::Signal(SIGKILL), "{d}");
    assert!(o.cpu >= Duration::from_millis(500), "{d}");
    assert!(o.cpu < Duration::from_millis(1000), "{d}");
    assert!(o.wall < Duration::from_secs(5), "{d}");
}

#[test]
fn sleeping_program_hits_the_wall_limit() {
    let o = Run::cmd(slot::SLEEP, &["/usr/bin/sleep", "1000"])
        .limits(|l| l.wall = Duration::from_millis(500))
        .run_on(jail());
    let d = describe(&o);
    assert_eq!(o.status(), Status::TimeLimit, "{d}");
    assert_eq!(o.limit, Some(LimitReason::Wall), "{d}");
    assert_eq!(o.exit, Exit::Signal(SIGKILL), "{d}");
    assert!(o.wall >= Duration::from_millis(500), "{d}");
    assert!(o.wall < Duration::from_secs(3), "{d}");
    assert!(o.cpu < Duration::from_millis(100), "{d}");
}

/// Runs the flood probe with a 64 KiB output limit and checks the verdict and the captured
/// stream against the first 64 KiB of what it writes.
fn flood(slot: u32, args: &[&str], unit: &[u8]) -> cod_sandbox::StageOutcome {
    const CAP: usize = 64 * 1024;
    let o = Run::probe(slot, "flood", args)
        .limits(|l| l.output = Bytes::kib(64))
        .run_on(jail());
    let d = describe(&o);
    assert_eq!(o.status(), Status::OutputLimit, "{d}");
    assert_eq!(o.limit, Some(LimitReason::Output), "{d}");
    assert_eq!(o.exit, Exit::Signal(SIGKILL), "{d}");
    let expected: Vec<u8> = unit.iter().copied().cycle().take(CAP).collect();
    let (flooded, quiet, truncated, quiet_truncated) = if args[0] == "err" {
        (&o.stderr, &o.stdout, o.stderr_truncated, o.stdout_truncated)
    } else {
        (&o.stdout, &o.stderr, o.stdout_truncated, o.stderr_truncated)
    };
    assert_eq!(flooded.len(), CAP, "{d}");
    assert!(
        *flooded == expected,
        "captured bytes differ from what was written: {d}"
    );
    assert!(truncated, "{d}");
    assert!(quiet.is_empty() && !quiet_truncated, "{d}");
    o
}

#[test]
fn stdout_flood_with_newlines_is_cut_at_the_output_limit() {
    flood(slot::STDOUT_LINES, &["out", "lines"], b"y\n");
}

#[test]
fn stdout_flood_without_newlines_is_cut_at_the_output_limit() {
    flood(slot::STDOUT_RAW, &["out", "raw"], b"x");
}

#[test]
fn stderr_flood_is_cut_at_the_output_limit() {
    flood(slot::STDERR, &["err", "lines"], b"y\n");
}

#[test]
fn output_past_the_cap_right_before_exit_is_an_output_limit() {
    // One write of a byte more than the limit, then exit 0: the supervisor may read the
    // init's report in the same wake-up as that output, which must not lose the verdict.
    // The race goes either way, so it is run many times.
    for i in 0..300 {
        let o = Run::cmd(
            slot::OUTPUT_AT_EXIT,
            &["/usr/bin/head", "-c", "1025", "/dev/zero"],
        )
        .limits(|l| l.output = Bytes::kib(1))
        .run_on(jail());
        let d = describe(&o);
        assert_eq!(o.status(), Status::OutputLimit, "run {i}: {d}");
        assert_eq!(o.limit, Some(LimitReason::Output), "run {i}: {d}");
        assert!(
            matches!(o.exit, Exit::Code(0) | Exit::Signal(SIGKILL)),
            "run {i}: {d}"
        );
        assert_eq!(o.stdout, vec![0u8; 1024], "run {i}: {d}");
        assert!(o.stdout_truncated, "run {i}: {d}");
    }
}

#[test]
fn output_limit_wall_time_counts_until_the_limit_is_passed() {
    // Exactly the limit, a pause, then one byte more: the limit is passed after the pause.
    // (1.05 s: off the 100 ms grid of the supervisor's CPU checks, so that a kill time taken
    // from the previous wake-up instead of the moment the limit was passed shows.)
    let script = "head -c 65536 /dev/zero; sleep 1.05; echo x";
    let o = Run::cmd(slot::OUTPUT_PAUSE, &["/bin/sh", "-c", script])
        .limits(|l| l.output = Bytes::kib(64))
        .run_on(jail());
    let d = describe(&o);
    assert_eq!(o.status(), Status::OutputLimit, "{d}");
    assert_eq!(o.stdout, vec![0u8; 64 * 1024], "{d}");
    assert!(o.stdout_truncated, "{d}");
    assert!(o.wall >= Duration::from_millis(1050), "{d}");
    assert!(o.wall < Duration::from_secs(3), "{d}");
}

#[test]
fn disk_fill_stops_at_the_tmpfs_size() {
    let disk = Bytes::mib(8).get();
    let o = Run::probe(
        slot::DISK,
        "disk_fill",
        &["/box/big", "/tmp/big", "/dev/shm/big"],
    )
    .limits(|l| l.disk = Bytes(disk))
    .run_on(jail());
    let d = describe(&o);
    assert_eq!(o.status(), Status::Ok, "{d}");
    for path in ["/box/big", "/tmp/big", "/dev/shm/big"] {
        // The work dir, /tmp and /dev/shm share one tmpfs of `disk` bytes, which also holds
        // the probe itself; RLIMIT_FSIZE (also `disk`) is the second line.
        let errno = num(&o, &format!("{path}.errno"));
        assert_eq!(errno, i64::from(libc::ENOSPC), "{path}: {d}");
        let bytes = u64::try_from(num(&o, &format!("{path}.bytes"))).expect("non-negative");
        assert!(bytes <= disk, "{path}: wrote {bytes} of {disk}: {d}");
        assert!(
            bytes >= disk - Bytes::mib(1).get(),
            "{path}: wrote only {bytes}: {d}"
        );
    }
}

#[test]
fn open_files_are_bounded_by_rlimit_nofile() {
    let o = Run::probe(slot::FDS, "fd_exhaust", &[]).run_on(jail());
    let d = describe(&o);
    let limit = i64::try_from(cod_core::config::DEFAULT_OPEN_FILES).expect("small");
    assert_eq!(o.status(), Status::Ok, "{d}");
    assert_eq!(num(&o, "nofile_soft"), limit, "{d}");
    assert_eq!(num(&o, "nofile_hard"), limit, "{d}");
    assert_eq!(num(&o, "open_errno"), i64::from(libc::EMFILE), "{d}");
    // Only stdin, stdout and stderr are open at exec.
    assert_eq!(num(&o, "opened"), limit - 3, "{d}");
    assert_eq!(num(&o, "raise_errno"), i64::from(libc::EPERM), "{d}");
}

#[test]
fn deep_recursion_ends_with_sigsegv() {
    let o = Run::probe(slot::RECURSION, "recurse", &[])
        .limits(|l| l.memory = Bytes::mib(256))
        .run_on(jail());
    let d = describe(&o);
    // The 64 MiB stack rlimit is reached long before the 256 MiB memory limit.
    assert_eq!(o.exit, Exit::Signal(libc::SIGSEGV), "{d}");
    assert_eq!(o.limit, None, "{d}");
    assert_eq!(o.status(), Status::RuntimeError, "{d}");
    assert!(
        o.memory_peak >= Bytes::mib(60).get(),
        "the stack grew to its limit: {d}"
    );
}

#[test]
fn null_write_is_a_runtime_error_with_sigsegv() {
    let o = Run::probe(slot::SEGV, "segv", &[]).run_on(jail());
    let d = describe(&o);
    assert_eq!(o.exit, Exit::Signal(libc::SIGSEGV), "{d}");
    assert_eq!(o.limit, None, "{d}");
    assert_eq!(o.status(), Status::RuntimeError, "{d}");
}

#[test]
fn exit_code_is_reported() {
    let o = Run::cmd(slot::EXIT_CODE, &["/bin/sh", "-c", "echo before; exit 3"]).run_on(jail());
    let d = describe(&o);
    assert_eq!(o.exit, Exit::Code(3), "{d}");
    assert_eq!(o.limit, None, "{d}");
    assert_eq!(o.status(), Status::RuntimeError, "{d}");
    assert_eq!(o.stdout, b"before\n", "{d}");
}

#[test]
fn stdin_is_delivered_byte_for_byte() {
    // Every byte value, and more than a pipe buffer holds.
    let input: Vec<u8> = (0..=255u8).cycle().take(300 * 1024 + 7).collect();
    let o = Run::cmd(slot::STDIN_ECHO, &["/usr/bin/cat"])
        .stdin(input.clone())
        .run_on(jail());
    let d = describe(&o);
    assert_eq!(o.status(), Status::Ok, "{d}");
    assert_eq!(o.stdout.len(), input.len(), "{d}");
    assert!(o.stdout == input, "stdout differs from stdin: {d}");
}

#[test]
fn empty_stdin_is_the_end_of_the_input_at_once() {
    // `cat` copies its input until its end: none given is an end right away, not a read
    // that waits for the wall limit.
    let o = Run::cmd(slot::STDIN_EMPTY, &["/usr/bin/cat"]).run_on(jail());
    let d = describe(&o);
    assert_eq!(o.limit, None, "{d}");
    assert_eq!(o.status(), Status::Ok, "{d}");
    assert_eq!(o.stdout, b"", "{d}");
    // The shell's `read` reports the end of input (status 1), twice.
    let o = Run::cmd(
        slot::STDIN_EMPTY,
        &["/bin/sh", "-c", "read a; echo $?; read b; echo $?"],
    )
    .run_on(jail());
    let d = describe(&o);
    assert_eq!(o.limit, None, "{d}");
    assert_eq!(o.stdout, b"1\n1\n", "{d}");
}

#[test]
fn unread_stdin_does_not_block_the_run() {
    let input = vec![b'a'; 1 << 20];
    let o = Run::cmd(slot::STDIN_UNREAD, &["/usr/bin/true"])
        .stdin(input.clone())
        .run_on(jail());
    let d = describe(&o);
    assert_eq!(o.status(), Status::Ok, "{d}");
    assert!(o.wall < Duration::from_secs(2), "{d}");
    // A program that reads a little and exits is not blocked either.
    let o = Run::cmd(slot::STDIN_UNREAD, &["/usr/bin/head", "-c", "10"])
        .stdin(input)
        .run_on(jail());
    let d = describe(&o);
    assert_eq!(o.status(), Status::Ok, "{d}");
    assert_eq!(o.stdout, b"aaaaaaaaaa", "{d}");
    assert!(o.wall < Duration::from_secs(2), "{d}");
}

#[test]
fn memory_peak_is_measured() {
    let o = Run::probe(slot::MEMORY_PEAK, "mem_touch", &["50"])
        .limits(|l| l.memory = Bytes::mib(256))
        .run_on(jail());
    let d = describe(&o);
    assert_eq!(o.status(), Status::Ok, "{d}");
    assert_eq!(field(&o, "touched_mib"), "50", "{d}");
    assert!(o.memory_peak >= Bytes::mib(50).get(), "{d}");
    assert!(o.memory_peak < Bytes::mib(256).get(), "{d}");
}

#[test]
fn a_run_killed_at_a_limit_reports_its_processes_peak_like_one_that_ends() {
    // The same interpreter ending by itself, then killed at its CPU and at its wall limit:
    // each reports at least the interpreter's resident size, not only what the slot's
    // cgroup grew by (the interpreter's code is page cache, charged to no run).
    let python = |src: &str| Run::cmd(slot::PEAK_AT_KILL, &["/usr/bin/python3", "-c", src]);
    let ends = python("pass").run_on(jail());
    let d = describe(&ends);
    assert_eq!(ends.status(), Status::Ok, "{d}");
    assert!(ends.memory_peak >= Bytes::mib(4).get(), "{d}");
    let spins = python("while True: pass")
        .limits(|l| l.cpu = Duration::from_millis(300))
        .run_on(jail());
    let sleeps = python("import time\ntime.sleep(60)")
        .limits(|l| l.wall = Duration::from_millis(500))
        .run_on(jail());
    for (killed, reason) in [(spins, LimitReason::Cpu), (sleeps, LimitReason::Wall)] {
        let d = describe(&killed);
        assert_eq!(killed.limit, Some(reason), "{d}");
        assert!(
            killed.memory_peak * 10 >= ends.memory_peak * 9,
            "killed: {} bytes, ended: {} bytes; {d}",
            killed.memory_peak,
            ends.memory_peak
        );
    }
}

#[test]
fn cpu_time_is_measured() {
    let o = Run::probe(slot::CPU_TIME, "cpu_burn", &["300"]).run_on(jail());
    let d = describe(&o);
    assert_eq!(o.status(), Status::Ok, "{d}");
    assert!(num(&o, "burned_ms") >= 300, "{d}");
    assert!(o.cpu >= Duration::from_millis(250), "{d}");
    assert!(o.cpu <= Duration::from_millis(600), "{d}");
}

#[test]
fn wall_time_covers_the_whole_stage() {
    // The stage's CPU time (the program's, and the init's fork and reaping) all falls between
    // the stage's start and its end, and its processes can use at most every CPU at once, so
    // the reported wall time times the CPUs must cover it. (The init and the program do
    // overlap for a moment around fork and exit, so one CPU's worth is not a bound.) A late
    // start, the bug this guards against, showed as microseconds of wall for a millisecond
    // of CPU; short programs are where it shows, and 50 of them make it likely to be caught.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpus = u32::try_from(cpus).unwrap_or(1);
    for _ in 0..50 {
        let o = Run::cmd(slot::WALL_COVERS_CPU, &["/usr/bin/true"]).run_on(jail());
        let d = describe(&o);
        assert_eq!(o.status(), Status::Ok, "{d}");
        assert!(o.cpu > Duration::ZERO, "{d}");
        assert!(o.cpu <= o.wall * cpus, "{d}");
    }
}
