//! `cod run FILE...`: one program, locally, through the same sandbox as the service.

use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::{Context, bail};
use cod_core::{Config, LimitsRequest, RunRequest, RunResult, SourceFile, Status};
use cod_runtime::Executor;

use crate::cli::RunArgs;

/// Exit code when the run hit its time limit (as `timeout(1)`).
pub(crate) const EXIT_TIME_LIMIT: u8 = 124;
/// Exit code when the run hit its memory limit.
pub(crate) const EXIT_MEMORY_LIMIT: u8 = 125;
/// Exit code when the run hit its output limit.
pub(crate) const EXIT_OUTPUT_LIMIT: u8 = 126;
/// Exit code when compilation failed.
pub(crate) const EXIT_COMPILE_ERROR: u8 = 1;
/// Exit code when cod itself failed (EX_SOFTWARE).
pub(crate) const EXIT_INTERNAL: u8 = 70;

pub(crate) fn run(config: &Config, args: RunArgs) -> anyhow::Result<ExitCode> {
    let registry = super::load_registry(config)?;
    let main = &args.files[0];
    let language = match &args.language {
        Some(l) => l.clone(),
        None => registry
            .for_file(main)
            .map(|l| l.name.clone())
            .with_context(|| {
                format!(
                    "cannot tell the language of {} from its extension; use --lang",
                    main.display()
                )
            })?,
    };
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    let mut files = Vec::new();
    for p in &args.files[1..] {
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has no usable file name", p.display()))?;
        files.push(SourceFile {
            name: Some(name.to_owned()),
            content: read(p)?,
        });
    }
    let stdin = match &args.stdin {
        None => None,
        Some(p) if p.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading standard input")?;
            Some(s)
        }
        Some(p) => Some(read(p)?),
    };
    let l = &args.limits;
    let req = RunRequest {
        language,
        source: Some(read(main)?),
        stdin,
        args: args.args.clone(),
        files,
        limits: Some(LimitsRequest {
            cpu_ms: l.cpu_ms,
            wall_ms: l.wall_ms,
            memory_mb: l.memory_mb,
            processes: l.processes,
            output_kb: l.output_kb,
            disk_mb: l.disk_mb,
        }),
    };
    // One run: nothing to gain from preparing a sandbox ahead of it.
    let jail = super::start_jail(config, 1, None)?;
    let executor = Executor::new(jail, registry, config.limits);
    let job = match executor.prepare(&req) {
        Ok(j) => j,
        Err(e) => bail!("{e}"),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = rt.block_on(executor.execute(&job, 0));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print_result(&result)?;
    }
    Ok(ExitCode::from(exit_code(&result)))
}

fn print_result(r: &RunResult) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    if let Some(c) = r.compile.as_ref().filter(|c| c.stage.status != Status::Ok) {
        err.write_all(c.stage.stdout.as_bytes())?;
        err.write_all(c.stage.stderr.as_bytes())?;
    }
    out.write_all(r.run.stdout.as_bytes())?;
    out.flush()?;
    err.write_all(r.run.stderr.as_bytes())?;
    if r.run.status != Status::Ok && r.run.status != Status::RuntimeError {
        let reason = r
            .run
            .reason
            .map(|x| format!(" ({x:?})").to_lowercase())
            .unwrap_or_default();
        writeln!(
            err,
            "cod: {}{reason}: {}",
            r.run.status.as_str(),
            r.run.message.as_deref().unwrap_or("")
        )?;
    }
    Ok(())
}

/// The exit code of `cod run`: the program's own, 128+signal, or a code for cod's verdicts.
pub(crate) fn exit_code(r: &RunResult) -> u8 {
    match r.run.status {
        Status::Ok | Status::RuntimeError => match (r.run.exit_code, &r.run.signal) {
            (Some(c), _) => u8::try_from(c & 0xff).unwrap_or(1),
            (None, Some(sig)) => 128u8.saturating_add(signal_number(sig)),
            (None, None) => 1,
        },
        Status::TimeLimit => EXIT_TIME_LIMIT,
        Status::MemoryLimit => EXIT_MEMORY_LIMIT,
        Status::OutputLimit => EXIT_OUTPUT_LIMIT,
        Status::CompileError => EXIT_COMPILE_ERROR,
        Status::InternalError => EXIT_INTERNAL,
    }
}

fn signal_number(name: &str) -> u8 {
    (1..=64u8)
        .find(|&n| cod_core::verdict::signal_name(i32::from(n)) == name)
        .unwrap_or(0)
}
