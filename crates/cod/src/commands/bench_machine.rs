//! What this machine's kernel charges for the memory work of a fork per run and for a switch
//! between processes, measured by a small C program compiled and run by the bench: a warm
//! runtime forks its interpreter for each run, and a run's request crosses several
//! processes (more on the distributed path), so a run's cost follows these figures far more
//! than the CPU's speed at running code. Printed next to the throughput, they tell a slow
//! machine (or a slow hour of a shared one) from a slow change.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use serde::Serialize;

/// Medians of the probe's rounds, µs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub(crate) struct MachineCosts {
    /// One system call that does nothing (`getppid`).
    pub(crate) syscall_us: f64,
    /// A page fault on fresh anonymous memory (the kernel zeroes a page and maps it).
    pub(crate) fault_us: f64,
    /// A write to a page shared with the parent after a fork (the kernel copies it).
    pub(crate) cow_fault_us: f64,
    /// `fork` of a process holding 8 MiB of written memory, as seen by the parent.
    pub(crate) fork_8mib_us: f64,
    /// `fork`, `_exit` and `waitpid` of a small process.
    pub(crate) fork_exit_us: f64,
    /// A byte sent to another process through a pipe and back: two wake-ups and two
    /// switches between processes, what each hop between cod's processes pays.
    pub(crate) pipe_round_trip_us: f64,
}

/// The probe: each figure is the median over rounds of a round's mean. The child of the
/// 8 MiB fork writes every eighth page and reports its time on a pipe; the parent then
/// checks that its own copy was left untouched (exit 2 if not).
const PROBE: &str = r#"
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ROUNDS 9

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v) {
    qsort(v, ROUNDS, sizeof *v, cmp);
    return v[ROUNDS / 2];
}

static char *mapped(size_t bytes) {
    char *p = mmap(0, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    return p;
}

int main(void) {
    // Whatever goes wrong, the probe ends: the echo process below ends with it.
    alarm(60);
    size_t page = (size_t)sysconf(_SC_PAGESIZE), pages = (8u << 20) / page;
    double a[ROUNDS], b[ROUNDS];

    for (int r = 0; r < ROUNDS; r++) {
        double t = now_us();
        for (int i = 0; i < 20000; i++)
            syscall(SYS_getppid);
        a[r] = (now_us() - t) / 20000;
    }
    printf("syscall_us %.4f\n", median(a));

    for (int r = 0; r < ROUNDS; r++) {
        char *p = mapped(pages * page);
        double t = now_us();
        for (size_t i = 0; i < pages; i++)
            p[i * page] = 1;
        a[r] = (now_us() - t) / pages;
        munmap(p, pages * page);
    }
    printf("fault_us %.4f\n", median(a));

    char *z = mapped(pages * page);
    for (size_t i = 0; i < pages; i++)
        z[i * page] = 1;
    size_t writes = pages / 8;
    for (int r = 0; r < ROUNDS; r++) {
        double fork_sum = 0, cow_sum = 0;
        for (int k = 0; k < 10; k++) {
            int fd[2];
            if (pipe(fd) != 0) {
                perror("pipe");
                return 1;
            }
            double t = now_us();
            pid_t c = fork();
            if (c == 0) {
                double t1 = now_us();
                for (size_t i = 0; i < writes; i++)
                    z[i * 8 * page] = 2;
                double us = now_us() - t1;
                _exit(write(fd[1], &us, sizeof us) == sizeof us ? 0 : 1);
            }
            if (c < 0) {
                perror("fork");
                return 1;
            }
            fork_sum += now_us() - t;
            double us = 0;
            int status = 0;
            if (read(fd[0], &us, sizeof us) != sizeof us || waitpid(c, &status, 0) != c ||
                status != 0) {
                fprintf(stderr, "the child failed\n");
                return 1;
            }
            close(fd[0]);
            close(fd[1]);
            cow_sum += us / writes;
        }
        a[r] = fork_sum / 10;
        b[r] = cow_sum / 10;
    }
    for (size_t i = 0; i < pages; i++)
        if (z[i * page] != 1) {
            fprintf(stderr, "the child's writes reached the parent\n");
            return 2;
        }
    munmap(z, pages * page);
    printf("cow_fault_us %.4f\n", median(b));
    printf("fork_8mib_us %.4f\n", median(a));

    for (int r = 0; r < ROUNDS; r++) {
        double t = now_us();
        for (int k = 0; k < 50; k++) {
            pid_t c = fork();
            if (c == 0)
                _exit(0);
            if (c < 0 || waitpid(c, 0, 0) != c) {
                perror("fork");
                return 1;
            }
        }
        a[r] = (now_us() - t) / 50;
    }
    printf("fork_exit_us %.4f\n", median(a));

    int there[2], back[2];
    if (pipe(there) != 0 || pipe(back) != 0) {
        perror("pipe");
        return 1;
    }
    pid_t echo = fork();
    if (echo == 0) {
        close(there[1]);
        close(back[0]);
        char c;
        while (read(there[0], &c, 1) == 1)
            if (write(back[1], &c, 1) != 1)
                _exit(1);
        _exit(0);
    }
    if (echo < 0) {
        perror("fork");
        return 1;
    }
    close(there[0]);
    close(back[1]);
    for (int r = 0; r < ROUNDS; r++) {
        double t = now_us();
        for (int k = 0; k < 500; k++) {
            char c = 'x';
            if (write(there[1], &c, 1) != 1 || read(back[0], &c, 1) != 1 || c != 'x') {
                fprintf(stderr, "the echo failed\n");
                return 1;
            }
        }
        a[r] = (now_us() - t) / 500;
    }
    close(there[1]);
    waitpid(echo, 0, 0);
    printf("pipe_round_trip_us %.4f\n", median(a));
    return 0;
}
"#;

/// Compiles the probe with `cc` in `dir` and runs it.
pub(crate) fn machine_costs(dir: &Path) -> anyhow::Result<MachineCosts> {
    let src = dir.join("probe.c");
    let bin = dir.join("probe");
    std::fs::write(&src, PROBE)?;
    let out = Command::new("cc")
        .arg("-O2")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .output()
        .context("running cc")?;
    if !out.status.success() {
        bail!(
            "compiling the probe failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new(&bin).output().context("running the probe")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "the probe failed ({}): {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(&text).with_context(|| format!("the probe printed {text:?}"))
}

/// The probe's `name value` lines; every figure must be there, positive and finite.
fn parse(text: &str) -> Option<MachineCosts> {
    let get = |name: &str| {
        text.lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v > 0.0)
    };
    Some(MachineCosts {
        syscall_us: get("syscall_us")?,
        fault_us: get("fault_us")?,
        cow_fault_us: get("cow_fault_us")?,
        fork_8mib_us: get("fork_8mib_us")?,
        fork_exit_us: get("fork_exit_us")?,
        pipe_round_trip_us: get("pipe_round_trip_us")?,
    })
}

impl MachineCosts {
    /// One line for the report.
    pub(crate) fn describe(&self) -> String {
        format!(
            "a system call {:.2} µs; a page fault {:.2} µs ({:.0} system calls); a copy-on-write \
             fault {:.2} µs; a fork of a process holding 8 MiB {:.0} µs; fork, exit and wait of \
             a small process {:.0} µs; a pipe round trip between two processes {:.1} µs",
            self.syscall_us,
            self.fault_us,
            self.fault_us / self.syscall_us,
            self.cow_fault_us,
            self.fork_8mib_us,
            self.fork_exit_us,
            self.pipe_round_trip_us
        )
    }
}

/// The report's line for the probe's figures, if there are any.
pub(crate) fn print(
    m: Option<&MachineCosts>,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    match m {
        Some(m) => writeln!(
            out,
            "\nWhat this machine's kernel charges (medians): {}.",
            m.describe()
        ),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every figure is read by its name, in any order; a missing, zero or unreadable one
    /// makes the whole answer unusable rather than a row of made-up figures.
    #[test]
    fn the_probe_output_needs_every_figure() {
        let good = concat!(
            "fault_us 2.5\n",
            "syscall_us 0.15\n",
            "cow_fault_us 3.25\n",
            "fork_8mib_us 240\n",
            "fork_exit_us 177.5\n",
            "pipe_round_trip_us 13.1\n",
        );
        assert_eq!(
            parse(good),
            Some(MachineCosts {
                syscall_us: 0.15,
                fault_us: 2.5,
                cow_fault_us: 3.25,
                fork_8mib_us: 240.0,
                fork_exit_us: 177.5,
                pipe_round_trip_us: 13.1,
            })
        );
        assert_eq!(parse(&good.replace("fork_exit_us 177.5\n", "")), None);
        assert_eq!(parse(&good.replace("0.15", "0")), None);
        assert_eq!(parse(&good.replace("240", "nan")), None);
        assert_eq!(parse(&good.replace("3.25", "fast")), None);
    }

    /// The probe compiles with the machine's `cc`, runs, and measures what it names: a
    /// copy-on-write fault copies a page, which costs more than a system call that does
    /// nothing, and a fork of 8 MiB copies page tables a small fork does not have.
    #[test]
    fn the_probe_measures_this_machine() {
        let dir = tempfile::tempdir().unwrap();
        let m = machine_costs(dir.path()).unwrap();
        assert!(m.cow_fault_us > m.syscall_us, "{m:?}");
        assert!(m.fault_us > m.syscall_us, "{m:?}");
        assert!(m.fork_8mib_us > m.syscall_us, "{m:?}");
        assert!(m.pipe_round_trip_us > m.syscall_us, "{m:?}");
        assert!(m.describe().contains("copy-on-write"), "{}", m.describe());
    }
}
