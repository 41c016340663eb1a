//! The helper is replaced when it dies: killing it (an operator's mistake, say) costs no
//! more than the runs it had in flight; the next run starts a new helper and succeeds.

mod common;

use cod_core::Status;
use common::{Run, describe, spawn_jail};

/// Host uids of this binary's runs start here (see `common`).
const UID_BASE: u32 = 61_800;

#[test]
fn a_killed_helper_is_replaced_on_the_next_run() {
    let jail = spawn_jail(UID_BASE);
    let first = Run::cmd(0, &["/bin/sh", "-c", "echo one"]).run_on(&jail);
    assert_eq!(first.status(), Status::Ok, "{}", describe(&first));

    let old = jail.helper_pid().expect("a helper runs");
    let rc = std::process::Command::new("kill")
        .args(["-KILL", &old.to_string()])
        .status()
        .expect("running kill");
    assert!(rc.success());
    // Wait (bounded) until it is really gone: a run handed to a helper in the middle of dying
    // is lost with it, which is not what this test is about.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while common::alive(old) && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert!(!common::alive(old), "the helper died");

    let second = Run::cmd(1, &["/bin/sh", "-c", "echo two"]).run_on(&jail);
    assert_eq!(second.status(), Status::Ok, "{}", describe(&second));
    assert_eq!(String::from_utf8_lossy(&second.stdout), "two\n");
    let new = jail.helper_pid().expect("a helper runs again");
    assert_ne!(new, old, "a new helper was started");
}
