//! `cod run`, `cod runtimes` and `cod config` as a user types them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn cod() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cod"));
    c.env_remove("COD_CONFIG");
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write(dir: &tempfile::TempDir, name: &str, body: &str) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn run_with_stdin(cmd: &mut Command, stdin: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn runs_a_c_file_with_stdin_args_and_its_exit_code() {
    let d = tempfile::tempdir().unwrap();
    let src = write(
        &d,
        "hello.c",
        "#include <stdio.h>\nint main(int c, char **v) { char b[32]; scanf(\"%31s\", b); printf(\"hello %s %s\\n\", b, v[1]); return 7; }\n",
    );
    let out = run_with_stdin(
        cod()
            .arg("run")
            .arg(&src)
            .args(["--stdin", "-", "--", "arg1"]),
        "world",
    );
    assert_eq!(
        text(&out.stdout),
        "hello world arg1\n",
        "{}",
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(7));
}

#[test]
fn language_from_flag_and_stdin_from_a_file() {
    let d = tempfile::tempdir().unwrap();
    let src = write(&d, "prog.txt", "print(input().upper())\n");
    let input = write(&d, "in.txt", "shout\n");
    let out = cod()
        .arg("run")
        .arg(&src)
        .args(["--lang", "py", "--stdin"])
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "SHOUT\n", "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn json_prints_the_run_result() {
    let d = tempfile::tempdir().unwrap();
    let src = write(
        &d,
        "x.py",
        "import sys\nprint('out'); print('err', file=sys.stderr)\n",
    );
    let out = cod().arg("run").arg(&src).arg("--json").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["stdout"], "out\n");
    assert_eq!(v["stderr"], "err\n");
    assert_eq!(v["language"], "python");
}

#[test]
fn limits_from_flags_and_verdict_exit_codes() {
    let d = tempfile::tempdir().unwrap();
    let spin = write(&d, "spin.py", "while True:\n    pass\n");
    let out = cod()
        .arg("run")
        .arg(&spin)
        .args(["--cpu-ms", "300"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("time_limit (cpu)"),
        "{}",
        text(&out.stderr)
    );

    let hog = write(
        &d,
        "hog.py",
        "a = []\nwhile True:\n    a.append(bytearray(1 << 20))\n",
    );
    let out = cod()
        .arg("run")
        .arg(&hog)
        .args(["--memory-mb", "48"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));

    let seg = write(&d, "seg.c", "int main(void) { *(volatile int *)0 = 1; }\n");
    let out = cod().arg("run").arg(&seg).output().unwrap();
    assert_eq!(out.status.code(), Some(128 + 11));

    let bad = write(&d, "bad.c", "int main( {\n");
    let out = cod().arg("run").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("error"), "{}", text(&out.stderr));

    let over = cod()
        .arg("run")
        .arg(&spin)
        .args(["--cpu-ms", "999999999"])
        .output()
        .unwrap();
    assert_eq!(over.status.code(), Some(2));
    assert!(
        text(&over.stderr).contains("limits.cpu_ms"),
        "{}",
        text(&over.stderr)
    );
}

#[test]
fn extra_files_sit_beside_the_main_file() {
    let d = tempfile::tempdir().unwrap();
    let main = write(&d, "main.py", "import helper\nprint(helper.X)\n");
    let helper = write(&d, "helper.py", "X = 'from helper'\n");
    let out = cod().arg("run").arg(&main).arg(&helper).output().unwrap();
    assert_eq!(text(&out.stdout), "from helper\n", "{}", text(&out.stderr));
}

#[test]
fn unknown_extension_asks_for_lang() {
    let d = tempfile::tempdir().unwrap();
    let src = write(&d, "notes.xyz", "???");
    let out = cod().arg("run").arg(&src).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--lang"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn runtimes_and_config_commands() {
    let out = cod().arg("runtimes").output().unwrap();
    let list = text(&out.stdout);
    for l in ["python", "c", "cpp", "rust", "javascript", "java", "bash"] {
        assert!(
            list.lines().any(|line| line.starts_with(l)),
            "{l} missing:\n{list}"
        );
    }
    let out = cod().arg("config").output().unwrap();
    let cfg = text(&out.stdout);
    assert!(
        cfg.contains("[server]") && cfg.contains("listen = \"127.0.0.1:2000\""),
        "{cfg}"
    );
    assert!(cfg.contains("[limits.default]"), "{cfg}");
}

#[test]
fn bad_config_fails_at_start_naming_the_key() {
    let d = tempfile::tempdir().unwrap();
    let cfg = write(&d, "cod.toml", "[server]\nworkerz = 3\n");
    let out = cod()
        .arg("--config")
        .arg(&cfg)
        .arg("config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("workerz"),
        "{}",
        text(&out.stderr)
    );
    let cfg = write(
        &d,
        "cod2.toml",
        "[limits.max]\ncpu_ms = 1\nwall_ms = 1\nmemory_mb = 1\nprocesses = 1\noutput_kb = 1\ndisk_mb = 1\n",
    );
    let out = cod()
        .arg("--config")
        .arg(&cfg)
        .arg("config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("limits.default"),
        "{}",
        text(&out.stderr)
    );
}
