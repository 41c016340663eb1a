//! Warm runtimes: a slot's zygote runs Python programs without exec or start-up, and
//! nothing of one run reaches the next.

mod common;

use std::time::{Duration, Instant};

use cod_sandbox::{
    FileEntry, Jail, JailConfig, SandboxOutcome, StageOutcome, WarmKind, WarmRuntime,
};
use common::{ENV, Run, describe, error_chain, helper, layout};

const UID_BASE: u32 = 63_000;
const PYTHON: &str = "/usr/bin/python3";

fn libpython() -> String {
    let out = std::process::Command::new(PYTHON)
        .args(["-c", "import sysconfig, os; print(os.path.join(sysconfig.get_config_var('LIBDIR'), sysconfig.get_config_var('INSTSONAME')))"])
        .output()
        .expect("python3 runs");
    String::from_utf8(out.stdout)
        .expect("a UTF-8 path")
        .trim()
        .to_owned()
}

fn runtime() -> WarmRuntime {
    WarmRuntime {
        name: "python".into(),
        layout: layout(),
        env: ENV.iter().map(|s| (*s).to_owned()).collect(),
        kind: WarmKind::Python {
            library: libpython().into(),
            program: PYTHON.into(),
            preload: vec!["random".into(), "collections".into()],
        },
    }
}

/// A jail whose slots `slots` keep Python warm.
fn warm_jail(uid_base: u32, slots: &[u32]) -> Jail {
    let config = JailConfig {
        slots: common::SLOTS,
        uid_base,
        prepared: Some(layout()),
        warm: vec![runtime()],
        ..Default::default()
    };
    let jail = Jail::spawn(helper(), &[], &config)
        .unwrap_or_else(|e| panic!("the jail did not start: {}", error_chain(&e)));
    for &s in slots {
        jail.set_warm(s, 1).expect("the warm mask is set");
    }
    jail
}

/// `python3 main.py args` with `source` as main.py, allowed to run warm.
fn script(slot: u32, source: &str, args: &[&str]) -> Run {
    let mut argv = vec![PYTHON, "main.py"];
    argv.extend_from_slice(args);
    let mut run = Run::cmd(slot, &argv);
    run.spec.files.push(FileEntry {
        name: "main.py".into(),
        content: source.as_bytes().to_vec(),
        executable: false,
    });
    run.spec.stages[0].warm = Some("python".into());
    run
}

fn run_full(jail: &Jail, run: &Run) -> SandboxOutcome {
    match jail.run(&run.spec) {
        Ok(o) => o,
        Err(e) => panic!("the sandbox failed: {}", error_chain(&e)),
    }
}

/// Runs `run` until the slot's zygote takes it (it starts in the background); every run,
/// warm or not, must succeed.
fn run_warm(jail: &Jail, run: &Run) -> StageOutcome {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = run_full(jail, run);
        let warm = o.warm.is_some();
        let stage = o.stages.into_iter().next().expect("one stage");
        if warm {
            return stage;
        }
        assert!(
            Instant::now() < deadline,
            "the zygote never took a run: {}",
            describe(&stage)
        );
    }
}

#[test]
fn a_warm_run_behaves_like_python3_main_py() {
    let jail = warm_jail(UID_BASE, &[1]);
    let src = "import sys, os\nprint(sys.argv, __file__, sys.path[0], sys.executable, os.getcwd(), __name__)\nprint(os.getuid(), os.getpid(), len(os.listdir('/proc')) > 0)\nraise SystemExit(3)\n";
    let o = run_warm(&jail, &script(1, src, &["a", "b"]));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.starts_with(
            "['main.py', 'a', 'b'] /box/main.py /box /usr/bin/python3 /box __main__\n1000 2 True"
        ),
        "{}",
        describe(&o)
    );
    assert_eq!(o.exit, cod_sandbox::Exit::Code(3), "{}", describe(&o));
}
