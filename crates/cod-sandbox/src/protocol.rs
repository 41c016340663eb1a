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

#[cfg(test)]
mod tests {
    use super::*;

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
