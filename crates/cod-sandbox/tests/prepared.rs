//! Sandboxes prepared ahead of their runs: each is used by one run only, so consecutive runs
//! in a slot share nothing; the work dir's size follows each run; a run whose layout differs
//! gets a sandbox built for it; and the path without preparation works alike.

mod common;

use cod_core::{Bytes, Status};
use common::{Run, blocked_in, describe, host_processes_with_uid, spawn_jail, spawn_jail_with};

/// Host uids of this binary's runs start here (see `common`).
const UID_BASE: u32 = 62_000;

fn python(slot: u32, src: &str) -> Run {
    Run::python(slot, src, &[])
}

#[test]
fn consecutive_runs_on_prepared_sandboxes_share_nothing() {
    let jail = spawn_jail(UID_BASE);
    let first = python(
        0,
        "import os, sys\n\
         for d in ('/box', '/tmp', '/dev/shm'):\n    open(d + '/left', 'w').write('x')\n\
         os.environ['LEAK'] = '1'\n\
         if os.fork() == 0:\n    os.setsid()\n    import time\n    time.sleep(1000)\n\
         print('pid', os.getpid())",
    )
    .run_on(&jail);
    assert_eq!(first.status(), Status::Ok, "{}", describe(&first));
    for _ in 0..3 {
        let next = python(
            0,
            "import os\n\
             print('files', [p for p in ('/box/left', '/tmp/left', '/dev/shm/left') if os.path.exists(p)])\n\
             print('env', 'LEAK' in os.environ)\n\
             print('procs', sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))",
        )
        .run_on(&jail);
        assert_eq!(next.status(), Status::Ok, "{}", describe(&next));
        let out = String::from_utf8_lossy(&next.stdout);
        assert!(out.contains("files []\n"), "{out}");
        assert!(out.contains("env False\n"), "{out}");
        assert!(
            out.contains("procs [2]\n"),
            "only the program itself: {out}"
        );
    }
    // The daemon of the first run is gone from the host too (uid_base + slot is the
    // program's host uid; the slot's prepared init runs as another).
    assert!(host_processes_with_uid(UID_BASE..UID_BASE + 1).is_empty());
}

#[test]
fn the_work_dir_size_follows_each_run() {
    let jail = spawn_jail(UID_BASE + 10);
    let fill = "n = 0\ntry:\n    with open('/box/f', 'wb') as f:\n        while True:\n            f.write(b'x' * (1 << 20)); f.flush(); n += 1\nexcept OSError as e:\n    print(n, e.errno)";
    for (disk_mb, most) in [(8u64, 8u64), (32, 32), (8, 8)] {
        let o = python(1, fill)
            .limits(|l| {
                l.disk = Bytes::mib(disk_mb);
                l.memory = Bytes::mib(256);
            })
            .run_on(&jail);
        assert_eq!(o.status(), Status::Ok, "{}", describe(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        let mut it = out.split_whitespace();
        let written: u64 = it.next().unwrap().parse().unwrap();
        // ENOSPC from the tmpfs, or EFBIG from RLIMIT_FSIZE (set to the same size).
        assert!(matches!(it.next(), Some("28" | "27")), "{out}");
        assert!(
            written <= most && written + 2 >= most,
            "{disk_mb} MiB disk, {written} MiB written"
        );
    }
}

#[test]
fn a_run_with_another_layout_gets_its_own_sandbox() {
    let jail = spawn_jail(UID_BASE + 20);
    let mut run = python(2, "import os\nprint(os.path.exists('/etc/hostname.host'))");
    run.spec.binds.push(cod_sandbox::Bind {
        src: "/etc/hostname".into(),
        dst: "/etc/hostname.host".into(),
    });
    let o = run.run_on(&jail);
    assert_eq!(o.status(), Status::Ok, "{}", describe(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "True\n");
    // And the slot's next ordinary run is fine.
    let o = python(2, "print('plain')").run_on(&jail);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "plain\n");
}

#[test]
fn the_path_without_preparation_works_alike() {
    let jail = spawn_jail_with(UID_BASE + 30, None);
    let o = python(3, "import os\nprint(os.getuid(), os.getcwd())").run_on(&jail);
    assert_eq!(o.status(), Status::Ok, "{}", describe(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "1000 /box\n");
    let o = Run::cmd(3, &["/bin/sh", "-c", "exit 7"]).run_on(&jail);
    assert_eq!(o.exit, cod_sandbox::Exit::Code(7));
}

/// 3 MiB that no run could guess: a different byte pattern at every offset.
fn shared_content() -> Vec<u8> {
    (0u32..3 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    // The same digest Python prints, computed here without another dependency: by running
    // the host's sha256sum on the bytes.
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum runs");
    let mut stdin = child.stdin.take().expect("a pipe");
    std::io::Write::write_all(&mut stdin, bytes).expect("sha256sum reads");
    drop(stdin);
    let out = child.wait_with_output().expect("sha256sum ends");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_owned()
}

#[test]
fn a_shared_file_arrives_whole_and_each_run_gets_its_own_copy() {
    let content = shared_content();
    let want = sha256_hex(&content);
    let shared = cod_sandbox::SharedFile::new("prog.bin", &content, true).unwrap();
    // Each run reads its copy, then scribbles over it: the next run still gets the original.
    let src = "import hashlib, os\n\
               st = os.stat('/box/prog.bin')\n\
               data = open('/box/prog.bin', 'rb').read()\n\
               print(hashlib.sha256(data).hexdigest(), len(data), oct(st.st_mode & 0o777), st.st_uid)\n\
               open('/box/prog.bin', 'r+b').write(b'overwritten')\n\
               print(open('/box/small', 'rb').read())";
    for jail in [
        spawn_jail(UID_BASE + 40),
        spawn_jail_with(UID_BASE + 50, None),
    ] {
        for _ in 0..3 {
            let mut run = python(0, src);
            run.spec.shared.push(shared.clone());
            run.spec.files.push(cod_sandbox::FileEntry {
                name: "small".into(),
                content: b"by value".to_vec(),
                executable: false,
            });
            let o = run.run_on(&jail);
            assert_eq!(o.status(), Status::Ok, "{}", describe(&o));
            assert_eq!(
                String::from_utf8_lossy(&o.stdout),
                format!("{want} {} 0o755 1000\nb'by value'\n", content.len())
            );
        }
    }
}

#[test]
fn a_shared_file_larger_than_the_work_dir_fails_naming_it() {
    let jail = spawn_jail(UID_BASE + 60);
    let shared = cod_sandbox::SharedFile::new("big.bin", &shared_content(), false).unwrap();
    let mut run = python(0, "print('ran')").limits(|l| l.disk = Bytes::mib(1));
    run.spec.shared.push(shared);
    let err = jail.run(&run.spec).expect_err("3 MiB do not fit in 1 MiB");
    let why = common::error_chain(&err);
    assert!(why.contains("big.bin"), "{why}");
    // The slot carries on.
    let o = python(0, "print('next')").run_on(&jail);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "next\n");
}

#[test]
fn a_spec_naming_shared_files_it_did_not_send_is_refused() {
    let jail = spawn_jail(UID_BASE + 70);
    let mut run = python(0, "print('ran')");
    // Serialized and back: the name survives, the descriptor does not.
    let shared = cod_sandbox::SharedFile::new("x.bin", b"x", false).unwrap();
    let bytes = postcard::to_stdvec(&shared).unwrap();
    run.spec.shared.push(postcard::from_bytes(&bytes).unwrap());
    let err = jail.run(&run.spec).expect_err("no descriptor to send");
    assert!(common::error_chain(&err).contains("x.bin"), "{err}");
}

/// A field of `/proc/PID/status`.
fn status_field(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The sandbox prepared for a slot's next run has forked its first stage's process
/// already: it waits for the stage under the program's seccomp policy, with no signal
/// blocked and nothing of the init's open (its command socket, report pipe, work
/// dir) but the socket it waits on and its exec-error pipe. The run then takes it: it is
/// gone once the run is over, and the program saw itself alone, pid 2.
#[test]
fn a_prepared_sandbox_forks_its_first_stages_process_ahead() {
    let (base, slot) = (UID_BASE + 80, 4);
    let jail = spawn_jail(base);
    let o = python(slot, "print('first')").run_on(&jail);
    assert_eq!(o.status(), Status::Ok, "{}", describe(&o));
    // The next run's sandbox: its init and the init's child, both as the slot's init uid.
    let init_uid = base + common::SLOTS + slot;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let parked = loop {
        let procs = host_processes_with_uid(init_uid..init_uid + 1);
        let pids: Vec<u32> = procs.iter().map(|&(p, _)| p).collect();
        let child = pids.iter().copied().find(|&p| {
            let parent: u32 = status_field(p, "PPid").parse().unwrap_or(0);
            pids.contains(&parent) && blocked_in(p) == Some(libc::SYS_recvmsg)
        });
        if let Some(c) = child {
            break c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no process forked ahead: {procs:?}"
        );
        std::thread::yield_now();
    };
    assert_eq!(
        status_field(parked, "Seccomp"),
        "2",
        "the program's policy is in"
    );
    assert_eq!(status_field(parked, "SigBlk"), "0000000000000000");
    let mut fds: Vec<(u32, String)> = std::fs::read_dir(format!("/proc/{parked}/fd"))
        .expect("its descriptors")
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some((n, target.to_string_lossy().into_owned()))
        })
        .collect();
    fds.sort();
    let above_stdio: Vec<&(u32, String)> = fds.iter().filter(|(n, _)| *n > 2).collect();
    assert_eq!(above_stdio.len(), 2, "{fds:?}");
    assert_eq!(above_stdio[0].0, 3);
    assert!(above_stdio[0].1.starts_with("socket:"), "{fds:?}");
    assert_eq!(above_stdio[1].0, 4);
    assert!(above_stdio[1].1.starts_with("pipe:"), "{fds:?}");
    let o = python(
        slot,
        "import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))",
    )
    .run_on(&jail);
    assert_eq!(o.status(), Status::Ok, "{}", describe(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "[2]\n");
    assert!(
        !std::path::Path::new(&format!("/proc/{parked}")).exists(),
        "the process forked ahead ran the program and was reaped with its run"
    );
}
