//! A stand-in for `cod worker` in the local provider's tests: a process that starts, says
//! it is ready, and on `SIGTERM` drains (takes `--drain-ms` to finish its pretend runs) and
//! exits 0. `--ignore-term` makes it never exit on its own (to test the kill after the
//! drain timeout); `--exit-after-ms N --exit-code C` makes it crash by itself.
//!
//! How to run: `cod-worker-standin --id w1 [--drain-ms 100] [--ignore-term]
//! [--exit-after-ms N --exit-code C]`. It prints `ready ID`, `draining ID`, `done ID`.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

struct Args {
    id: String,
    drain: Duration,
    ignore_term: bool,
    exit_after: Option<Duration>,
    exit_code: u8,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        id: "standin".into(),
        drain: Duration::ZERO,
        ignore_term: false,
        exit_after: None,
        exit_code: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let ms = |v: String| {
            v.parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|e| format!("{v}: {e}"))
        };
        match flag.as_str() {
            "--id" => a.id = value()?,
            "--drain-ms" => a.drain = ms(value()?)?,
            "--ignore-term" => a.ignore_term = true,
            "--exit-after-ms" => a.exit_after = Some(ms(value()?)?),
            "--exit-code" => a.exit_code = value()?.parse().map_err(|e| format!("{e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cod-worker-standin: {e}");
            return ExitCode::from(2);
        }
    };
    // Listen before saying ready, so that a SIGTERM right after is not lost.
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    println!("ready {}", args.id);
    let crash = async {
        match args.exit_after {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        () = crash => {
            println!("crashing {}", args.id);
            return ExitCode::from(args.exit_code);
        }
    }
    println!("draining {}", args.id);
    if args.ignore_term {
        loop {
            term.recv().await;
        }
    }
    // Finishing the runs it has.
    tokio::time::sleep(args.drain).await;
    println!("done {}", args.id);
    ExitCode::SUCCESS
}
