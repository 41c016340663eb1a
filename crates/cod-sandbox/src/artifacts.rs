//! Collecting a stage's artifacts (a compiled program, class files) out of a sandbox, for
//! the caller's compile cache.
//!
//! The supervisor reads them through `/proc/<init>/root`, the sandbox's own root. What the
//! work dir holds was written by sandboxed code, so every lookup is confined to it:
//! `openat2` with `RESOLVE_IN_ROOT` resolves the path inside the sandbox's root, and
//! `RESOLVE_NO_SYMLINKS` refuses any symlink on the way, so a program cannot point the
//! supervisor (host root) at a host file. Only regular files are taken, up to a total size.

use std::ffi::CStr;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{Dir, FileType, Mode, OFlags, ResolveFlags, openat2};

use crate::spec::FileEntry;

/// Most bytes of artifacts one stage may leave.
pub const MAX_ARTIFACTS: u64 = 256 << 20;

/// Whether `name` matches `pattern`, where `*` stands for any run of characters.
pub(crate) fn matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else {
                return false;
            };
            if rest.is_empty() {
                return true;
            }
            (0..=tail.len())
                .filter(|&i| tail.is_char_boundary(i))
                .any(|i| matches(rest, &tail[i..]))
        }
    }
}

/// Reads the regular files of the work dir of the sandbox whose init is `init_pid` whose
/// names match one of `patterns`.
pub(crate) fn collect(init_pid: i32, patterns: &[String]) -> io::Result<Vec<FileEntry>> {
    let root = rustix::fs::open(
        format!("/proc/{init_pid}/root").as_str(),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let confined = ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let work = openat2(
        &root,
        c"box",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        confined,
    )?;
    let mut names = Vec::new();
    for entry in Dir::read_from(&work)? {
        let entry = entry?;
        if entry.file_type() != FileType::RegularFile {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if patterns.iter().any(|p| matches(p, &name)) {
            names.push(entry.file_name().to_owned());
        }
    }
    names.sort();
    let mut total = 0u64;
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let (content, executable) = read_confined(&work, &name, MAX_ARTIFACTS - total)?;
        total += content.len() as u64;
        out.push(FileEntry {
            name: std::ffi::OsStr::from_bytes(name.as_bytes())
                .to_string_lossy()
                .into_owned(),
            content,
            executable,
        });
    }
    Ok(out)
}

fn read_confined(dir: &OwnedFd, name: &CStr, room: u64) -> io::Result<(Vec<u8>, bool)> {
    let f = openat2(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )?;
    let st = rustix::fs::fstat(&f)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(io::Error::other(format!("{name:?} is not a regular file")));
    }
    let size = u64::try_from(st.st_size).unwrap_or(u64::MAX);
    if size > room {
        return Err(io::Error::other(format!(
            "artifacts are larger than {MAX_ARTIFACTS} bytes"
        )));
    }
    let mut content = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    let mut file = std::fs::File::from(f);
    // The size is checked again while reading: the file could still be growing.
    io::Read::read_to_end(&mut io::Read::take(&mut file, room + 1), &mut content)?;
    if content.len() as u64 > room {
        return Err(io::Error::other(format!(
            "artifacts are larger than {MAX_ARTIFACTS} bytes"
        )));
    }
    Ok((content, st.st_mode & 0o111 != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(matches("main", "main"));
        assert!(!matches("main", "main.c"));
        assert!(matches("*.class", "Main.class"));
        assert!(matches("*.class", "Main$Inner.class"));
        assert!(!matches("*.class", "Main.java"));
        assert!(matches("*", "anything"));
        assert!(matches("a*b*c", "axxbyyc"));
        assert!(!matches("a*b*c", "axxbyy"));
    }
}
