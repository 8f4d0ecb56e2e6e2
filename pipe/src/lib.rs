//! # pipe: the anonymous pipe (claims P1-P6)
//!
//! `pipe(2)` gives a process two file descriptors: whatever is written to the second comes
//! out of the first, in order (P2), and each descriptor works in one direction only (P3).
//! The pipe has no name: the only way for another process to reach it is to inherit the
//! descriptors, through `fork` (a child, P4) or because a common ancestor, such as a shell
//! running `a | b`, created it and handed one end to each (P1). The bytes live in a kernel
//! buffer of a fixed capacity (64 KiB by default on Linux, changeable with `F_SETPIPE_SZ`):
//! `read` blocks while it is empty and `write` blocks while it is full (P6). Data goes one
//! way; answering needs a second pipe (P5).
//!
//! ## The pair
//! - `pipe-writer | pipe-reader` (shell mode): the shell makes the pipe; the writer writes
//!   frames to stdout, the reader reads them from stdin and shows who holds the two ends.
//! - `pipe-writer --spawn` (spawn mode): the writer makes the pipe(s) itself and starts
//!   `pipe-reader` as its child with the read end as stdin; pingpong adds a second pipe
//!   whose write end the child inherits as descriptor `--back-fd N`.
//!
//! ## What this file holds
//! The few calls both programs need: pipe capacity (`F_GETPIPE_SZ`/`F_SETPIPE_SZ`), what
//! kind of file a descriptor is, which processes hold the ends of a pipe (from `/proc`), and
//! taking over a descriptor inherited from the parent. The modes themselves (text, stream,
//! pingpong) are `common::protocol`, the same code for every mechanism.

pub mod reader;
pub mod writer;

use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use anyhow::{bail, Context, Result};
use nix::fcntl::{fcntl, FcntlArg};
use nix::sys::stat::{fstat, SFlag};

/// Mechanism name in reports.
pub const MECHANISM: &str = "pipe";

/// `/proc/sys/fs/pipe-max-size`: the largest capacity an unprivileged process may set.
pub fn pipe_max_size() -> Result<usize> {
    let s = fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .context("reading /proc/sys/fs/pipe-max-size")?;
    s.trim()
        .parse()
        .with_context(|| format!("parsing /proc/sys/fs/pipe-max-size: {s:?}"))
}

/// The pipe's capacity in bytes: `fcntl(fd, F_GETPIPE_SZ)`.
pub fn capacity(fd: BorrowedFd<'_>) -> Result<usize> {
    let n = fcntl(fd, FcntlArg::F_GETPIPE_SZ).context("fcntl F_GETPIPE_SZ")?;
    Ok(n as usize)
}

/// Sets the capacity: `fcntl(fd, F_SETPIPE_SZ, bytes)`. The kernel rounds up to a power of
/// two pages and returns what it chose. Above `pipe-max-size` it fails with EPERM unless
/// the process has CAP_SYS_RESOURCE; the error says so.
pub fn set_capacity(fd: BorrowedFd<'_>, bytes: usize) -> Result<usize> {
    let max = pipe_max_size().unwrap_or(1 << 20);
    let arg = i32::try_from(bytes).context("--pipe-size does not fit in an int")?;
    match fcntl(fd, FcntlArg::F_SETPIPE_SZ(arg)) {
        Ok(n) => Ok(n as usize),
        Err(nix::errno::Errno::EPERM) => bail!(
            "fcntl F_SETPIPE_SZ {bytes}: EPERM: above /proc/sys/fs/pipe-max-size ({max}) only a privileged process may grow a pipe"
        ),
        Err(nix::errno::Errno::EBUSY) => bail!(
            "fcntl F_SETPIPE_SZ {bytes}: EBUSY: the pipe holds more data than the new size"
        ),
        Err(e) => Err(e).with_context(|| format!("fcntl F_SETPIPE_SZ {bytes}")),
    }
}

/// What kind of file a descriptor refers to, as a learner would name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdKind {
    /// An anonymous pipe (`pipe:[inode]` in /proc).
    Pipe,
    /// A named pipe (FIFO) on a file system.
    Fifo,
    /// A terminal.
    Terminal,
    /// A regular file.
    File,
    /// A socket, a device, or anything else.
    Other,
}

/// Classifies `fd` with `fstat(2)` (file type bits) and `/proc/self/fd` (anonymous or named).
pub fn fd_kind(fd: BorrowedFd<'_>) -> Result<FdKind> {
    let st = fstat(fd).context("fstat")?;
    let fmt = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    Ok(if fmt == SFlag::S_IFIFO {
        // Both kinds are S_IFIFO; an anonymous pipe has no path, only "pipe:[inode]".
        let link = fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default();
        if link.to_string_lossy().starts_with("pipe:") {
            FdKind::Pipe
        } else {
            FdKind::Fifo
        }
    } else if fmt == SFlag::S_IFREG {
        FdKind::File
    } else if nix::unistd::isatty(fd).unwrap_or(false) {
        FdKind::Terminal
    } else {
        FdKind::Other
    })
}

/// One process that holds an end of a given pipe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipeEnd {
    /// The process.
    pub pid: i32,
    /// Its parent.
    pub ppid: i32,
    /// Its command name (`/proc/<pid>/comm`).
    pub comm: String,
    /// Whether it holds the write end (else the read end).
    pub writes: bool,
}

/// Finds every process holding an end of the pipe behind `fd`, by scanning `/proc/*/fd`
/// for links to the same `pipe:[inode]` and reading the access mode from `fdinfo`.
///
/// This is how P1 is shown rather than asserted: the reader prints the PPIDs it finds.
/// Processes of other users are skipped (their `/proc/<pid>/fd` is not readable).
pub fn pipe_ends(fd: BorrowedFd<'_>) -> Result<Vec<PipeEnd>> {
    let target = fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .context("readlink /proc/self/fd")?;
    let mut ends = Vec::new();
    for proc_entry in fs::read_dir("/proc").context("reading /proc")?.flatten() {
        let Ok(pid) = proc_entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(fds) = fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd_entry in fds.flatten() {
            if fs::read_link(fd_entry.path()).ok().as_ref() != Some(&target) {
                continue;
            }
            // fdinfo's "flags:" is the open mode in octal; O_WRONLY is 01.
            let info =
                fs::read_to_string(proc_entry.path().join("fdinfo").join(fd_entry.file_name()))
                    .unwrap_or_default();
            let writes = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                .is_some_and(|f| f & 0o3 == 0o1);
            let (comm, ppid) = proc_comm_ppid(pid);
            let end = PipeEnd {
                pid,
                ppid,
                comm,
                writes,
            };
            if !ends.contains(&end) {
                ends.push(end);
            }
        }
    }
    ends.sort_by_key(|e| (!e.writes, e.pid));
    Ok(ends)
}

/// Command name and parent pid of a process, from `/proc/<pid>/stat`.
pub fn proc_comm_ppid(pid: i32) -> (String, i32) {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Format: "pid (comm) state ppid ...": comm may contain spaces, so split at the last ')'.
    let (head, tail) = stat.rsplit_once(')').unwrap_or(("", ""));
    let comm = head
        .split_once('(')
        .map(|(_, c)| c)
        .unwrap_or("?")
        .to_string();
    let ppid = tail
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    (comm, ppid)
}

/// Takes ownership of a pipe descriptor this process inherited from its parent.
///
/// In spawn mode the writer leaves the write end of the way-back pipe open across `exec`
/// and tells the reader its number with `--back-fd N`: the classic way to hand a child a
/// descriptor other than 0, 1 and 2. The number is checked before it is trusted: not a
/// standard stream, open, and a pipe.
pub fn take_inherited_pipe(fd: RawFd) -> Result<OwnedFd> {
    if fd <= 2 {
        bail!("--back-fd {fd}: descriptors 0, 1 and 2 are the standard streams, not the way back");
    }
    // SAFETY: F_GETFD only reads the descriptor's flags; on a closed or invalid number it
    // fails with EBADF and touches nothing, so any integer is a valid argument.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        bail!("--back-fd {fd}: no such open descriptor (EBADF): start pipe-reader through `pipe-writer --spawn`");
    }
    // SAFETY: the descriptor is open (checked above) and nothing in this process owns it:
    // it was inherited across exec, no code before this point opened or wrapped it, and
    // `--back-fd` is read once, at startup. The OwnedFd becomes its only owner.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    if fd_kind(owned.as_fd())? != FdKind::Pipe {
        // Give the descriptor back untouched rather than closing something we do not know.
        std::mem::forget(owned);
        bail!("--back-fd {fd}: the descriptor is not a pipe");
    }
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::unistd::pipe;

    #[test]
    fn capacity_is_readable_and_settable() {
        let (r, _w) = pipe().unwrap();
        assert!(capacity(r.as_fd()).unwrap() >= 4096);
        let got = set_capacity(r.as_fd(), 128 * 1024).unwrap();
        assert_eq!(got, 128 * 1024);
        assert_eq!(capacity(r.as_fd()).unwrap(), 128 * 1024);
    }

    #[test]
    fn an_anonymous_pipe_is_recognised() {
        let (r, w) = pipe().unwrap();
        assert_eq!(fd_kind(r.as_fd()).unwrap(), FdKind::Pipe);
        let ends = pipe_ends(w.as_fd()).unwrap();
        let me = std::process::id() as i32;
        assert!(ends.iter().any(|e| e.pid == me && e.writes), "{ends:?}");
        assert!(ends.iter().any(|e| e.pid == me && !e.writes), "{ends:?}");
    }

    #[test]
    fn inherited_fd_checks_refuse_bad_numbers() {
        assert!(take_inherited_pipe(1).is_err());
        let e = take_inherited_pipe(100_000).unwrap_err().to_string();
        assert!(e.contains("EBADF"), "{e}");
    }
}
