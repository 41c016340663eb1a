//! A prepared sandbox: the run's init cloned into fresh namespaces, its uids mapped, its root
//! built, waiting for files and stages. Preparing needs only the layout (binds, symlinks,
//! disk size), so a sandbox can be made before its run arrives.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, poll};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType, recvmsg, sendmsg, socketpair,
};
use rustix::process::{Pid, PidfdFlags, Signal, WaitOptions, pidfd_open, pidfd_send_signal};

use crate::init::{
    self, CMD_DATA, CMD_DISK, CMD_END, CMD_FILE, CMD_GO, InitBuffers, InitPlan, MAX_MESSAGE,
    REPORT_LEN,
};
use crate::mounts::{MountPlan, Step};
use crate::protocol::Failure;
use crate::spec::{FileEntry, Layout, SANDBOX_ID, SandboxSpec, SharedFile, WarmKind, WarmRuntime};
use crate::supervisor::{
    HelperState, SlotContext, errno_failure, error_chain, failure, io_failure, timespec,
};
use crate::sys;
use crate::zygote;

/// How long the init may take to build the root before the run is declared failed.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of file content per message to the init.
const FILE_CHUNK: usize = 64 * 1024;

/// The run's init: killed and reaped when dropped, so no error path leaks it; unless it is
/// a zygote borrowed from the slot's keeper, which outlives the run.
pub(crate) struct InitProcess {
    pid: i32,
    pub(crate) pidfd: OwnedFd,
    reaped: bool,
    owned: bool,
}

impl InitProcess {
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    pub(crate) fn kill(&self) {
        let _ = pidfd_send_signal(&self.pidfd, Signal::KILL);
    }

    /// Kills the init (the kernel then kills every process of its PID namespace) and waits
    /// until the namespace is empty: the init's exit is reported only after its last
    /// process is gone.
    pub(crate) fn kill_and_reap(&mut self) {
        if self.reaped || !self.owned {
            return;
        }
        self.kill();
        if let Some(pid) = Pid::from_raw(self.pid) {
            let wait = || rustix::process::waitpid(Some(pid), WaitOptions::empty());
            while let Err(Errno::INTR) = wait() {}
        }
        self.reaped = true;
    }
}

impl Drop for InitProcess {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// A sandbox whose root is built and whose init waits for commands.
pub(crate) struct Sandbox {
    pub(crate) init: InitProcess,
    pub(crate) cmd: OwnedFd,
    pub(crate) report: OwnedFd,
    layout: Layout,
    /// The init is a zygote (see `zygote.rs`): each stage runs in fresh namespaces of its
    /// own, and the init survives the run.
    zygote: bool,
    /// A borrowed zygote's idle memory, as its keeper measured it.
    pub(crate) zygote_idle_memory: u64,
    /// A program started ahead in this sandbox, waiting for its run.
    pub(crate) prestarted: Option<Prestarted>,
    /// A zygote's last run: the pipe that ends once its memory is freed.
    pub(crate) last_run: Option<OwnedFd>,
    /// The init forked the first stage's process ahead (see `init.rs`): it is among the
    /// slot's tasks already, and the stage's own.
    pub(crate) parked_program: bool,
}

/// A program started ahead for one run (see [`WarmKind::Prestart`]): the supervisor's ends
/// of its pipes.
pub(crate) struct Prestarted {
    /// Index of its runtime in `JailConfig::warm`.
    pub(crate) index: usize,
    pub(crate) stdin: OwnedFd,
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: OwnedFd,
    /// Where the run's script and arguments go.
    pub(crate) args: OwnedFd,
    /// Where it says it is ready (one byte, then end of file).
    pub(crate) ready: OwnedFd,
    /// The program's own memory once started (private resident bytes).
    pub(crate) idle_memory: u64,
}

/// A slot's zygote as its keeper hands it to a run's supervisor: the zygote's channels,
/// shared by the runs of the slot one after another.
pub(crate) struct ZygoteHandle {
    /// Index of its runtime in [`JailConfig::warm`](crate::JailConfig::warm).
    pub(crate) index: u32,
    pub(crate) pid: i32,
    pub(crate) cmd: OwnedFd,
    pub(crate) report: OwnedFd,
    pub(crate) pidfd: OwnedFd,
    /// Memory the zygote holds while idle (private resident bytes).
    pub(crate) idle_memory: u64,
}

/// Waits up to `limit` for `fd` to be readable; a failure of `step` if the time runs out,
/// of `waiting` if the wait itself fails.
fn readable_within(
    fd: impl AsFd,
    limit: Duration,
    step: &str,
    waiting: &str,
) -> Result<(), Failure> {
    match sys::wait_readable(fd, limit) {
        Ok(true) => Ok(()),
        Ok(false) => Err(failure(step, Some(libc::ETIMEDOUT), "timed out")),
        Err(e) => Err(errno_failure(waiting)(e)),
    }
}

/// Refuses a command of `len` bytes, which the init could not receive whole (`what` names
/// what made it that large).
fn within_message(len: usize, step: &str, what: &str) -> Result<(), Failure> {
    if len > MAX_MESSAGE {
        return Err(failure(
            step,
            Some(libc::E2BIG),
            format!("{what} would need {len} bytes, more than the {MAX_MESSAGE} one command holds"),
        ));
    }
    Ok(())
}

impl Sandbox {
    /// Clones the init into new user, PID, mount, IPC and UTS namespaces (the network
    /// namespace and cgroup are the slot's, inherited), maps its uids, and waits until it
    /// has built the root. `close` lists descriptors of this process the init must not keep.
    pub(crate) fn prepare(
        st: &HelperState,
        slot: &SlotContext<'_>,
        layout: Layout,
        close: &[RawFd],
    ) -> Result<Sandbox, Failure> {
        let plan = MountPlan::new(
            &layout.binds,
            &layout.symlinks,
            layout.disk,
            &st.staging_root,
            &st.staging_scratch,
        )
        .map_err(|e| failure("planning the root filesystem", None, error_chain(&e)))?;
        let (cmd_sup, cmd_init) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(errno_failure("creating the init's command socket"))?;
        let (rep_r, rep_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(errno_failure("creating the init's report pipe"))?;
        let mut close_in_init: Vec<RawFd> = close.to_vec();
        close_in_init.extend([cmd_sup.as_raw_fd(), rep_r.as_raw_fd()]);
        close_in_init.extend(slot.cgroup.open_fds());
        let init_plan = InitPlan {
            mounts: &plan,
            seccomp: &st.seccomp,
            unpin: st.pins_slots().then_some(&st.cpus),
            cmd: cmd_init.as_raw_fd(),
            report: rep_w.as_raw_fd(),
            close_first: &close_in_init,
        };
        let mut buffers = InitBuffers::new().ok_or_else(|| {
            failure(
                "allocating the init's buffers",
                Some(libc::ENOMEM),
                "no memory for them",
            )
        })?;

        // No CLONE_NEWNET: the slot's keeper made a network namespace (loopback down, nothing
        // else) that its runs share one after another; creating one per run costs half a
        // millisecond, and no state survives a run in it (see docs/sandbox.md).
        let flags = (libc::CLONE_NEWUSER
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::SIGCHLD) as u64;
        let pid = sys::clone_raw(flags).map_err(io_failure("creating the namespaces (clone)"))?;
        if pid == 0 {
            init::init_main(&init_plan, &mut buffers);
        }
        drop(buffers);
        let pidfd = match Pid::from_raw(pid).map(|p| pidfd_open(p, PidfdFlags::empty())) {
            Some(Ok(fd)) => fd,
            other => {
                // Without a pidfd the init cannot be watched: end it now.
                if let Some(p) = Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(p, Signal::KILL);
                    let _ = rustix::process::waitpid(Some(p), WaitOptions::empty());
                }
                let e = match other {
                    Some(Err(e)) => e,
                    _ => Errno::SRCH,
                };
                return Err(errno_failure("opening a pidfd for the init")(e));
            }
        };
        let init = InitProcess {
            pid,
            pidfd,
            reaped: false,
            owned: true,
        };
        drop((cmd_init, rep_w));

        // Map the program's uid (1000 inside) to the slot's unprivileged host uid, and the
        // namespace's root (which the init becomes to build the root) to a second one. The
        // host's root stays unmapped.
        let (program_id, init_id) = st.config.host_ids(slot.slot);
        let map = format!("0 {init_id} 1\n{SANDBOX_ID} {program_id} 1\n");
        for file in ["uid_map", "gid_map"] {
            std::fs::write(format!("/proc/{pid}/{file}"), &map)
                .map_err(io_failure(format!("writing {file}")))?;
        }
        // The init was born in the slot's cgroup (the keeper lives there; migrating a task per
        // run costs an RCU grace period on cgroup v1, up to tens of milliseconds). The keeper
        // and the supervisor share it, so the run's processes are the OOM killer's first pick.
        std::fs::write(format!("/proc/{pid}/oom_score_adj"), "1000")
            .map_err(io_failure("setting the init's oom_score_adj"))?;
        let mut sandbox = Sandbox {
            init,
            cmd: cmd_sup,
            report: rep_r,
            layout,
            zygote: false,
            zygote_idle_memory: 0,
            prestarted: None,
            last_run: None,
            parked_program: false,
        };
        sandbox
            .send(&[CMD_GO], &[])
            .map_err(io_failure("starting the init"))?;
        sandbox.parked_program = sandbox.wait_ready(&plan)?;
        Ok(sandbox)
    }

    /// A zygote's sandbox, borrowed for one run: dropping it leaves the zygote alone.
    pub(crate) fn borrow_zygote(z: ZygoteHandle, layout: Layout) -> Sandbox {
        Sandbox {
            init: InitProcess {
                pid: z.pid,
                pidfd: z.pidfd,
                reaped: false,
                owned: false,
            },
            cmd: z.cmd,
            report: z.report,
            layout,
            zygote: true,
            zygote_idle_memory: z.idle_memory,
            prestarted: None,
            last_run: None,
            parked_program: false,
        }
    }

    /// Whether the init is a zygote.
    pub(crate) fn is_zygote(&self) -> bool {
        self.zygote
    }

    /// Turns the init into a zygote holding `warm` (it reports `REPORT_WARM_READY` or
    /// `REPORT_WARM_FAILED` on the report pipe when done; see `zygote.rs`).
    pub(crate) fn warm(&mut self, warm: &WarmRuntime) -> Result<(), Failure> {
        let mut msg = vec![init::CMD_WARM];
        msg.extend(
            postcard::to_stdvec(warm).map_err(|e| failure("encoding the warm runtime", None, e))?,
        );
        within_message(msg.len(), "starting the warm runtime", "its description")?;
        self.send(&msg, &[])
            .map_err(io_failure("starting the warm runtime"))?;
        // The init ends the process it forked ahead.
        self.parked_program = false;
        self.zygote = true;
        Ok(())
    }

    /// After a stage was sent to a zygote: waits for its answer, the pidfd of the run's
    /// namespace init and the pipe that ends once the run's memory is freed (`None` if the
    /// stage did not start; its report says why).
    pub(crate) fn stage_started(&self) -> Result<Option<(OwnedFd, OwnedFd)>, Failure> {
        let deadline = Instant::now() + SETUP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            readable_within(
                &self.cmd,
                left,
                "starting the run in the zygote",
                "waiting for the zygote",
            )?;
            let mut byte = [0u8; 1];
            let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
            let mut anc = RecvAncillaryBuffer::new(&mut space);
            let msg = match recvmsg(
                &self.cmd,
                &mut [IoSliceMut::new(&mut byte)],
                &mut anc,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Ok(m) => m,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(errno_failure("reading the zygote's answer")(e)),
            };
            let mut got = Vec::with_capacity(2);
            for m in anc.drain() {
                if let RecvAncillaryMessage::ScmRights(fds) = m {
                    got.extend(fds);
                }
            }
            let mut got = got.into_iter();
            return match (msg.bytes, byte[0], got.next(), got.next()) {
                (1, zygote::MSG_STARTED, Some(pidfd), Some(freed)) => Ok(Some((pidfd, freed))),
                (1, zygote::MSG_NOT_STARTED, ..) => Ok(None),
                (0, ..) => Err(failure(
                    "starting the run in the zygote",
                    None,
                    "the zygote died",
                )),
                other => Err(failure(
                    "starting the run in the zygote",
                    None,
                    format!("unexpected answer {:?}", (other.0, other.1)),
                )),
            };
        }
    }

    /// Discards whatever a zygote's channels hold from before this run (nothing, unless a
    /// previous supervisor died mid-run; the keeper then replaces the zygote, so this is a
    /// second line).
    pub(crate) fn drain_stale(&self) {
        let mut buf = [0u8; 64];
        while let Ok((n, _)) = rustix::net::recv(&self.cmd, &mut buf, RecvFlags::DONTWAIT) {
            if n == 0 {
                break;
            }
        }
        let mut fds = [PollFd::new(&self.report, PollFlags::IN)];
        while matches!(poll(&mut fds, Some(&timespec(Duration::ZERO))), Ok(1))
            && fds[0].revents().contains(PollFlags::IN)
        {
            match rustix::io::read(&self.report, &mut buf) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
    }

    /// Whether `spec` can run in this sandbox: the same binds and links (the disk size is
    /// set per run, see [`Sandbox::set_disk`]).
    pub(crate) fn fits(&self, spec: &SandboxSpec) -> bool {
        // A sandbox with a program started ahead serves only a run of that program.
        self.layout_fits(spec) && self.prestarted.is_none()
    }

    /// Whether `spec` asks for this sandbox's binds and links.
    pub(crate) fn layout_fits(&self, spec: &SandboxSpec) -> bool {
        self.layout.binds == spec.binds && self.layout.symlinks == spec.symlinks
    }

    /// Ends the program started ahead in this sandbox, if any (killed and reaped), so that
    /// it serves a run of something else as any prepared sandbox would: the program is
    /// cod's bootstrap, which has run no one's code and written no file.
    pub(crate) fn drop_prestarted(&mut self) -> Result<(), Failure> {
        if self.prestarted.take().is_none() {
            return Ok(());
        }
        self.send(&[init::CMD_DROP], &[])
            .map_err(io_failure("ending a program started ahead"))?;
        match self.wait_report(SETUP_TIMEOUT, "ending a program started ahead")? {
            (init::REPORT_DROPPED, ..) => Ok(()),
            other => Err(failure(
                "ending a program started ahead",
                None,
                format!("unexpected report {other:?}"),
            )),
        }
    }

    /// Starts `warm` (a [`WarmKind::Prestart`] runtime, index `index`) ahead in this sandbox
    /// with `rlimits` (the largest a run may have; the run's own are set when it comes), and
    /// waits until its exec happened.
    pub(crate) fn prestart(
        &mut self,
        index: usize,
        warm: &WarmRuntime,
        rlimits: &[(rustix::process::Resource, u64)],
    ) -> Result<(), Failure> {
        let WarmKind::Prestart { argv, .. } = &warm.kind else {
            return Err(failure(
                "starting a program ahead",
                Some(libc::EINVAL),
                "not a prestarted runtime",
            ));
        };
        let pipe = || {
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .map_err(errno_failure("creating a pipe"))
        };
        let ((in_r, in_w), (out_r, out_w), (err_r, err_w)) = (pipe()?, pipe()?, pipe()?);
        let (args_r, args_w) = pipe()?;
        let (ready_r, ready_w) = pipe()?;
        let mut msg = init::encode_plan(rlimits, argv, &warm.env);
        msg[0] = init::CMD_PRESTART;
        self.send(
            &msg,
            &[
                in_r.as_fd(),
                out_w.as_fd(),
                err_w.as_fd(),
                args_r.as_fd(),
                ready_w.as_fd(),
            ],
        )
        .map_err(io_failure("starting a program ahead"))?;
        // The init ends the process it forked for a first stage: this program is the run.
        self.parked_program = false;
        drop((in_r, out_w, err_w, args_r, ready_w));
        match self.wait_report(SETUP_TIMEOUT, "starting a program ahead")? {
            (init::REPORT_PRESTARTED, 0, ..) => {}
            (init::REPORT_PRESTARTED, errno, ..) => {
                return Err(failure(
                    "starting a program ahead",
                    Some(errno),
                    io::Error::from_raw_os_error(errno),
                ));
            }
            other => {
                return Err(failure(
                    "starting a program ahead",
                    None,
                    format!("unexpected report {other:?}"),
                ));
            }
        }
        self.prestarted = Some(Prestarted {
            index,
            stdin: in_w,
            stdout: out_r,
            stderr: err_r,
            args: args_w,
            ready: ready_r,
            idle_memory: 0,
        });
        Ok(())
    }

    /// Measures the memory of the program started ahead (the init's only child); call once
    /// it has had time to start.
    pub(crate) fn measure_prestarted(&mut self) {
        let pid = self.init.pid();
        if let Some(pre) = &mut self.prestarted {
            pre.idle_memory = sys::children(pid)
                .first()
                .map_or(0, |child| private_memory(&child.to_string()));
        }
    }

    /// Waits up to `timeout` for the init's next report.
    fn wait_report(&self, timeout: Duration, step: &str) -> Result<(u32, i32, i32, i32), Failure> {
        readable_within(&self.report, timeout, step, step)?;
        match read_report(&self.report).map_err(io_failure(step.to_owned()))? {
            Some(r) => Ok(r),
            None => Err(failure(step, None, "the init died")),
        }
    }

    /// Waits until the program started ahead says it is ready (it may still be starting
    /// when its run comes); an error if it died instead.
    pub(crate) fn wait_prestarted(pre: &Prestarted) -> Result<(), Failure> {
        let step = "waiting for the program started ahead";
        readable_within(&pre.ready, SETUP_TIMEOUT, step, step)?;
        let mut byte = [0u8; 1];
        match rustix::io::read(&pre.ready, &mut byte) {
            Ok(1) => Ok(()),
            _ => Err(failure(
                step,
                Some(libc::ECHILD),
                "it exited before its run",
            )),
        }
    }

    /// Starts the prestarted program's run: the init sets its limits, then writes its script
    /// and arguments on `args` and closes it (the program's end of file). The init does
    /// both after the run's files, which were sent before: the program, waiting for its
    /// arguments, starts neither before its files are in place nor before its limits.
    pub(crate) fn go(
        &self,
        args: OwnedFd,
        rlimits: &[(rustix::process::Resource, u64)],
        argv: &[String],
    ) -> Result<(), Failure> {
        let mut msg = vec![init::CMD_AWAIT];
        init::encode_rlimits(&mut msg, rlimits);
        for a in argv.iter().skip(1) {
            msg.extend_from_slice(a.as_bytes());
            msg.push(0);
        }
        within_message(msg.len(), "starting the run", "its arguments")?;
        // This process's copy closes when `args` drops: the init's is the last.
        self.send(&msg, &[args.as_fd()])
            .map_err(io_failure("starting the run"))
    }

    /// Sets the work tmpfs to `disk` bytes (before any file is written).
    pub(crate) fn set_disk(&mut self, disk: u64) -> Result<(), Failure> {
        // A zygote makes each run's tmpfs afresh and is told the size every time.
        if disk != self.layout.disk || self.zygote {
            let mut msg = vec![CMD_DISK];
            msg.extend_from_slice(&disk.to_le_bytes());
            self.send(&msg, &[])
                .map_err(io_failure("resizing the work dir"))?;
            self.layout.disk = disk;
        }
        Ok(())
    }

    /// Sends one command, with descriptors attached.
    fn send(&self, msg: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(3))];
        let mut anc = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !anc.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::other("too many descriptors"));
        }
        loop {
            match sendmsg(
                &self.cmd,
                &[IoSlice::new(msg)],
                &mut anc,
                SendFlags::NOSIGNAL,
            ) {
                Ok(_) => return Ok(()),
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Writes `files` into the work dir (through the init, which owns it).
    pub(crate) fn put_files(&self, files: &[FileEntry]) -> Result<(), Failure> {
        let step = "sending the work files to the init";
        for f in files {
            self.begin_file("work file", &f.name, f.executable, None, step)?;
            for chunk in f.content.chunks(FILE_CHUNK) {
                let mut msg = Vec::with_capacity(chunk.len() + 1);
                msg.push(CMD_DATA);
                msg.extend_from_slice(chunk);
                self.send(&msg, &[]).map_err(io_failure(step))?;
            }
            self.send(&[CMD_END], &[]).map_err(io_failure(step))?;
        }
        Ok(())
    }

    /// Has the init copy `shared` into the work dir (after the files of [`Self::put_files`]):
    /// each descriptor goes with its `CMD_FILE`, no bytes through the socket.
    pub(crate) fn put_shared(&self, shared: &[SharedFile]) -> Result<(), Failure> {
        let step = "handing the shared files to the init";
        for f in shared {
            let Some(fd) = f.fd() else {
                return Err(failure(
                    "validating the spec",
                    Some(libc::EBADF),
                    format!("shared file {:?} came without its descriptor", f.name),
                ));
            };
            self.begin_file("shared file", &f.name, f.executable, Some(fd), step)?;
            self.send(&[CMD_END], &[]).map_err(io_failure(step))?;
        }
        Ok(())
    }

    /// Checks `name` (a `what`, for the error) and sends the init its `CMD_FILE`, with the
    /// descriptor to copy it from, if any.
    fn begin_file(
        &self,
        what: &str,
        name: &str,
        executable: bool,
        from: Option<BorrowedFd<'_>>,
        step: &str,
    ) -> Result<(), Failure> {
        if cod_core::run::check_file_name(name).is_err() {
            return Err(failure(
                "validating the spec",
                Some(libc::EINVAL),
                format!("{what} name {name:?} is not a plain file name"),
            ));
        }
        let mode: u32 = if executable { 0o755 } else { 0o644 };
        let mut begin = vec![CMD_FILE];
        begin.extend_from_slice(&mode.to_le_bytes());
        begin.extend_from_slice(name.as_bytes());
        let fds: &[BorrowedFd<'_>] = match &from {
            Some(fd) => std::slice::from_ref(fd),
            None => &[],
        };
        self.send(&begin, fds).map_err(io_failure(step))
    }

    /// Tells the init to run a stage: `plan` from [`init::encode_plan`], the program's
    /// stdin, stdout and stderr attached.
    pub(crate) fn start_stage(
        &self,
        plan: &[u8],
        stdio: [BorrowedFd<'_>; 3],
    ) -> Result<(), Failure> {
        within_message(
            plan.len(),
            "starting a stage",
            "its arguments and environment",
        )?;
        self.send(plan, &stdio)
            .map_err(io_failure("starting a stage"))
    }

    /// Waits for the init's ready report: whether it forked the first stage's process.
    fn wait_ready(&self, plan: &MountPlan) -> Result<bool, Failure> {
        readable_within(
            &self.report,
            SETUP_TIMEOUT,
            "building the root filesystem",
            "waiting for the init",
        )?;
        match read_report(&self.report).map_err(io_failure("reading the init's report"))? {
            Some((init::REPORT_READY, parked, ..)) => Ok(parked == 1),
            Some((init::REPORT_SETUP_FAILED, step, index, errno)) => {
                let step = Step::from_u32(step.cast_unsigned());
                let what = step.map_or("setting up", Step::describe);
                let item = step
                    .map(|s| plan.describe_item(s, index))
                    .unwrap_or_default();
                Err(failure(
                    format!("{what}{item}"),
                    Some(errno),
                    io::Error::from_raw_os_error(errno),
                ))
            }
            Some(other) => Err(failure(
                "waiting for the init",
                None,
                format!("unexpected report {other:?}"),
            )),
            None => Err(failure(
                "building the root filesystem",
                None,
                "the init died",
            )),
        }
    }
}

/// Reads one report from the init; `None` when it closed the pipe (it died).
pub(crate) fn read_report(fd: &OwnedFd) -> io::Result<Option<(u32, i32, i32, i32)>> {
    let mut buf = [0u8; REPORT_LEN];
    let mut got = 0;
    while got < REPORT_LEN {
        match rustix::io::read(fd, &mut buf[got..]) {
            Ok(0) => return Ok(None),
            Ok(n) => got += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Some(init::parse_report(&buf)))
}

/// Private resident memory of host process `pid`, bytes.
pub(crate) fn private_memory(pid: &str) -> u64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
        return 0;
    };
    text.lines()
        .filter(|l| l.starts_with("Private_Clean:") || l.starts_with("Private_Dirty:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum::<u64>()
        * 1024
}
