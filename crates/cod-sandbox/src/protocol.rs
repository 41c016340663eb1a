//! The framing spoken on a run's socket between a caller and the supervisor of that run.
//!
//! Each frame is a little-endian `u32` length followed by that many bytes of postcard. The
//! caller sends one [`Request::Run`], then possibly [`Request::Kill`] (and, for an interactive
//! stage, [`Request::Stdin`] and [`Request::StdinClose`]); the supervisor answers with
//! [`Event`]s and ends with [`Event::Finished`]. Closing the caller's end kills the run.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[allow(unused_imports)] // for doc links
use crate::spec::StageSpec;
use crate::spec::{FileEntry, SandboxOutcome, SandboxSpec, StageOutcome};

/// Largest frame either side accepts (a spec carries sources, an outcome carries output).
pub const MAX_FRAME: usize = 256 << 20;

/// Caller to supervisor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Run this sandbox (the first and only spec on a socket).
    Run(Box<SandboxSpec>),
    /// Stop the run now; the outcome marks it cancelled.
    Kill,
    /// Bytes for the running stage's stdin (an interactive stage: [`StageSpec::interactive`]).
    Stdin(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The running interactive stage's stdin ends (once what was sent is read).
    StdinClose,
}

/// Supervisor to caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// Stage `n` started.
    StageStarted(u32),
    /// A stage that asked to collect files ended; sent before the next stage starts.
    StageFinished {
        /// The stage.
        stage: u32,
        /// What it did.
        outcome: Box<StageOutcome>,
        /// The files collected from the work dir (none unless it ended `ok`).
        artifacts: Vec<FileEntry>,
    },
    /// The sandbox ended, normally or not.
    Finished(Result<SandboxOutcome, Failure>),
    /// Output of a stage, as the program wrote it (with [`SandboxSpec::stream`]); only what
    /// fits the output limit.
    Output {
        /// The stage.
        stage: u32,
        /// 1 for stdout, 2 for stderr.
        stream: u8,
        /// The bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// What a running stage has used so far, about every 250 ms.
    Usage {
        /// The stage.
        stage: u32,
        /// CPU time.
        cpu: std::time::Duration,
        /// Peak memory, bytes.
        memory: u64,
        /// Wall time.
        wall: std::time::Duration,
    },
}

/// An infrastructure failure of a run (not the program's fault), as reported across the
/// socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{step}: {message}")]
pub struct Failure {
    /// The step that failed, e.g. "mount /usr".
    pub step: String,
    /// The errno, when a system call failed.
    pub errno: Option<i32>,
    /// Description including the cause.
    pub message: String,
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// the socket failed
    #[error("socket i/o")]
    Io(#[from] io::Error),
    /// the frame is larger than [`MAX_FRAME`]
    #[error("frame of {0} bytes is larger than the maximum")]
    TooLarge(usize),
    /// the bytes are not a valid message
    #[error("malformed frame")]
    Decode(#[from] postcard::Error),
}

/// Serializes `msg` as one frame (length prefix included).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = vec![0u8; 4];
    let body = postcard::to_extend(msg, Vec::new())?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge(body.len()))?;
    buf[..4].copy_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&body);
    Ok(buf)
}

/// Reads a frame's length prefix and checks it.
pub fn decode_len(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME {
        Err(FrameError::TooLarge(len))
    } else {
        Ok(len)
    }
}

/// Deserializes a frame's body.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    Ok(postcard::from_bytes(body)?)
}

/// Writes one frame.
pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), FrameError> {
    w.write_all(&encode(msg)?)?;
    Ok(())
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> Result<Option<T>, FrameError> {
    let mut header = [0u8; 4];
    match r.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = decode_len(header)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    decode(&body).map(Some)
}

/// Most [`SharedFile`](crate::spec::SharedFile)s one run takes.
pub const MAX_SHARED: usize = 8;

/// The descriptors of `spec`'s shared files, in order, to send with its request
/// ([`send_run_head`]). Errors if there are more than [`MAX_SHARED`] or one has none.
pub fn shared_fds(spec: &SandboxSpec) -> io::Result<Vec<std::os::fd::OwnedFd>> {
    if spec.shared.len() > MAX_SHARED {
        return Err(io::Error::other(format!(
            "{} shared files, more than {MAX_SHARED}",
            spec.shared.len()
        )));
    }
    spec.shared
        .iter()
        .map(|f| match f.fd() {
            Some(fd) => fd.try_clone_to_owned(),
            None => Err(io::Error::other(format!(
                "shared file {:?} has no descriptor",
                f.name
            ))),
        })
        .collect()
}

/// Sends the length prefix of a run's request `frame` with `fds` (its spec's shared files)
/// attached, on a fresh run socket; the caller then writes `frame[4..]`.
pub fn send_run_head(
    sock: std::os::fd::BorrowedFd<'_>,
    frame: &[u8],
    fds: &[std::os::fd::OwnedFd],
) -> io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
    use std::os::fd::AsFd as _;
    let head = frame
        .get(..4)
        .ok_or_else(|| io::Error::other("a frame has a length prefix"))?;
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    let mut space =
        [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_SHARED))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    if !borrowed.is_empty() && !anc.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(io::Error::other("too many shared files"));
    }
    loop {
        match sendmsg(
            sock,
            &[io::IoSlice::new(head)],
            &mut anc,
            SendFlags::NOSIGNAL,
        ) {
            // A fresh socket's buffer takes four bytes at once.
            Ok(4) => return Ok(()),
            Ok(_) => return Err(io::Error::other("the run socket took part of a prefix")),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads a run's request as [`send_run_head`] and the rest of the frame sent it: the
/// request, with its spec's shared files given their descriptors. `Ok(None)` at a clean
/// end of stream.
pub(crate) fn read_run_request(
    sock: &mut std::os::unix::net::UnixStream,
) -> Result<Option<Request>, FrameError> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
    let mut header = [0u8; 4];
    let mut space =
        [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_SHARED))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let got = loop {
        match recvmsg(
            &*sock,
            &mut [io::IoSliceMut::new(&mut header)],
            &mut anc,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(m) => break m,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(io::Error::from(e).into()),
        }
    };
    let mut fds: Vec<std::os::fd::OwnedFd> = Vec::new();
    for m in anc.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    if got.bytes == 0 {
        return Ok(None);
    }
    if got.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
        return Err(io::Error::other(format!("more than {MAX_SHARED} shared files")).into());
    }
    sock.read_exact(&mut header[got.bytes..])?;
    let len = decode_len(header)?;
    let mut body = vec![0u8; len];
    sock.read_exact(&mut body)?;
    let mut req: Request = decode(&body)?;
    match &mut req {
        Request::Run(spec) if spec.shared.len() == fds.len() => {
            for (f, fd) in spec.shared.iter_mut().zip(fds) {
                f.attach(fd);
            }
        }
        Request::Run(spec) => {
            return Err(io::Error::other(format!(
                "the spec names {} shared files but {} descriptors came with it",
                spec.shared.len(),
                fds.len()
            ))
            .into());
        }
        _ if !fds.is_empty() => {
            return Err(
                io::Error::other("descriptors came with a request other than a run").into(),
            );
        }
        _ => {}
    }
    Ok(Some(req))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_request_brings_its_shared_descriptors_and_no_others() {
        use std::io::Write as _;
        let send = |spec: &SandboxSpec, fds: &[std::os::fd::OwnedFd]| {
            let (mut a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
            let frame = encode(&Request::Run(Box::new(spec.clone()))).unwrap();
            send_run_head(std::os::fd::AsFd::as_fd(&a), &frame, fds).unwrap();
            a.write_all(&frame[4..]).unwrap();
            drop(a);
            read_run_request(&mut b)
        };
        let file = crate::spec::SharedFile::new("main", b"\x7fELF", true).unwrap();
        let mut spec = SandboxSpec::default();
        spec.shared.push(file.clone());
        let fds = shared_fds(&spec).unwrap();
        let Ok(Some(Request::Run(got))) = send(&spec, &fds) else {
            panic!("the request arrives");
        };
        assert_eq!(*got, spec);
        // The descriptor that came is the memfd: same contents, still sealed.
        let fd = got.shared[0].fd().expect("attached");
        let mut buf = [0u8; 8];
        let n = rustix::io::pread(fd, &mut buf, 0).unwrap();
        assert_eq!(&buf[..n], b"\x7fELF");
        assert!(
            rustix::io::write(fd, b"x").is_err(),
            "a shared file is sealed"
        );
        // A spec naming a file whose descriptor did not come, or descriptors no spec names.
        assert!(send(&spec, &[]).is_err());
        assert!(send(&SandboxSpec::default(), &fds).is_err());
    }

    #[test]
    fn frames_round_trip() {
        let spec = SandboxSpec {
            slot: 3,
            files: vec![FileEntry {
                name: "main.py".into(),
                content: b"print(1)\n".to_vec(),
                executable: false,
            }],
            disk: 1 << 20,
            ..Default::default()
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request::Run(Box::new(spec.clone()))).unwrap();
        write_frame(&mut buf, &Request::Kill).unwrap();
        let mut r = &buf[..];
        assert_eq!(
            read_frame::<Request>(&mut r).unwrap(),
            Some(Request::Run(Box::new(spec)))
        );
        assert_eq!(read_frame::<Request>(&mut r).unwrap(), Some(Request::Kill));
        assert_eq!(read_frame::<Request>(&mut r).unwrap(), None);

        let out = Event::Finished(Ok(SandboxOutcome {
            stages: vec![StageOutcome {
                stdout: vec![0xff, 0, 1],
                ..Default::default()
            }],
            warm: Some(crate::spec::WarmUse {
                runtime: "python".into(),
                idle_memory: 12 << 20,
            }),
        }));
        let bytes = encode(&out).unwrap();
        assert_eq!(decode::<Event>(&bytes[4..]).unwrap(), out);
    }

    #[test]
    fn oversized_and_garbage_frames_are_errors() {
        assert!(matches!(
            decode_len((u32::try_from(MAX_FRAME).unwrap() + 1).to_le_bytes()),
            Err(FrameError::TooLarge(_))
        ));
        let mut r: &[u8] = &[3, 0, 0, 0, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_frame::<Request>(&mut r),
            Err(FrameError::Decode(_))
        ));
        let mut truncated: &[u8] = &[10, 0, 0, 0, 1];
        assert!(matches!(
            read_frame::<Request>(&mut truncated),
            Err(FrameError::Io(_))
        ));
    }
}
