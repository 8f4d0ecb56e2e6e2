//! How the two ends of an anonymous pipe meet. **A first reading may skip this file**: the
//! programs in `writer.rs` and `reader.rs` read well without it, and come back here only to
//! see how a pipe that has no name reaches a second process at all.
//!
//! A pipe is reached by inheriting its descriptors, nothing else (P1, P4):
//! - **shell mode** (`pipe-writer | pipe-reader`): the shell called `pipe(2)`, forked twice
//!   and gave the write end to the writer as stdout and the read end to the reader as stdin.
//!   [`stdout_pipe`] and [`fd_kind`] look at what the program was given (`fstat`), and
//!   [`pipe_ends`] scans `/proc` for who holds the two ends, which is how the reader shows P1
//!   instead of asserting it.
//! - **spawn mode** (`pipe-writer --spawn`): [`spawn_reader`] makes the pipe(s) with
//!   `pipe2(O_CLOEXEC)`, starts `pipe-reader` as a child with the read end as its stdin,
//!   lets the way-back pipe's write end survive `exec` (pingpong, P5) and closes the ends
//!   the parent does not use. The child takes that end over with [`take_inherited_pipe`].
//!   The child gets no mode flags: it follows the writer's Hello like any reader.
//!
//! Nothing here needs cleaning up: a pipe disappears with its last descriptor.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Child, Command, ExitStatus, Stdio};

use anyhow::{bail, Context, Result};
use common::cli::{bad_flag, Mode};
use common::narrate;
use common::stream::{check_pipe_size, set_capacity};
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::stat::{fstat, SFlag};
use nix::unistd::pipe2;

use crate::writer::Args;

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

/// The writer's flags that only this program can check, before any pipe exists: each bad
/// one is a [`bad_flag`] (exit status 2, as for the values clap checks). `--pipe-size`
/// against `/proc/sys/fs/pipe-max-size`; `--splice` outside stream mode; `--mode pingpong` without `--spawn` (the shell
/// makes one pipe, and an answer needs a second, P5); a `--reader-exe` that does not exist.
pub fn check_flags(args: &Args) -> Result<()> {
    check_pipe_size(args.pipe_size)?;
    crate::splice::check_mode(args.splice, args.run.mode)?;
    if args.run.mode == Mode::Pingpong && !args.spawn {
        return Err(bad_flag(
            "--mode pingpong needs --spawn: pingpong needs an answer, and a pipe carries data one way only (P3): \
             two-way needs two pipes (P5), and `a | b` in a shell makes one. Run `pipe-writer --spawn --mode pingpong`, \
             which makes both pipes and starts the reader itself",
        ));
    }
    if let Some(exe) = args.reader_exe.as_ref().filter(|p| !p.exists()) {
        return Err(bad_flag(format!(
            "--reader-exe {}: no such file",
            exe.display()
        )));
    }
    Ok(())
}

/// Shell mode: the pipe the shell connected to stdout, as a descriptor of our own (`dup`),
/// after saying what stdout is.
pub fn stdout_pipe() -> Result<(OwnedFd, FdKind)> {
    // A duplicate of fd 1 as a File: unbuffered, and it can be made non-blocking.
    let stdout: OwnedFd = nix::unistd::dup(io::stdout()).context("dup stdout")?;
    let kind = fd_kind(stdout.as_fd())?;
    match kind {
        FdKind::Pipe | FdKind::Fifo => {
            narrate!("stdout is a pipe: the shell created it and gave its read end to the next command (P1)")
        }
        FdKind::Terminal => bail!(
            "stdout is a terminal, not a pipe: run `pipe-writer | pipe-reader`, or `pipe-writer --spawn`"
        ),
        FdKind::File => narrate!(
            "stdout is a regular file: the frames are saved there; replay them with `pipe-reader < FILE`"
        ),
        FdKind::Other => narrate!("stdout is neither a pipe nor a file; writing frames to it anyway"),
    }
    Ok((stdout, kind))
}

/// Spawn mode: the writer's ends of the pipe(s) it made, and the reader it started.
#[derive(Debug)]
pub struct Spawned {
    /// Write end of the way there; the child holds the read end as its stdin.
    pub there: OwnedFd,
    /// Read end of the way back (pingpong only, P5); the child holds the write end.
    pub back: Option<OwnedFd>,
    /// pipe-reader, this process's child (P4).
    pub child: Child,
}

/// Makes the pipe(s) with `pipe2`, starts pipe-reader with the read end as its stdin and,
/// for pingpong, the way back's write end as `--back-fd N`, then closes the parent's copies
/// of the child's ends.
pub fn spawn_reader(args: &Args) -> Result<Spawned> {
    // The way there. O_CLOEXEC: no descriptor leaks into the child by accident; the one
    // the child needs is given to it explicitly as its stdin.
    let (there_r, there_w) = pipe2(OFlag::O_CLOEXEC).context("pipe2 (writer -> reader)")?;
    // The way back, for pingpong only (P5): a second pipe, reader -> writer.
    let back = if args.run.mode == Mode::Pingpong {
        let (back_r, back_w) = pipe2(OFlag::O_CLOEXEC).context("pipe2 (reader -> writer)")?;
        if let Some(bytes) = args.pipe_size {
            set_capacity(back_w.as_fd(), bytes)?;
        }
        // Clear close-on-exec on the child's end only, so it survives exec in the child.
        fcntl(back_w.as_fd(), FcntlArg::F_SETFD(FdFlag::empty())).context("fcntl F_SETFD")?;
        Some((back_r, back_w))
    } else {
        None
    };
    let child = start_child(args, there_r, back.as_ref().map(|(_, w)| w))?;
    // Close the parent's copy of the child's end: while we held it, the way back could
    // never report EOF, because a pipe ends only when every write end is closed.
    let back = back.map(|(r, w)| {
        drop(w);
        r
    });
    narrate!(
        "started pipe-reader as child pid {} with the pipe's read end as its stdin (P4: parent and child)",
        child.id()
    );
    Ok(Spawned {
        there: there_w,
        back,
        child,
    })
}

/// `fork`+`exec` of pipe-reader (std's `Command`) with `stdin` as its standard input. It
/// is given no `--mode`, `--size` or `--count`: the Hello on the pipe tells it those.
fn start_child(args: &Args, stdin: OwnedFd, back_w: Option<&OwnedFd>) -> Result<Child> {
    let exe = match &args.reader_exe {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("finding this program's path")?
            .with_file_name("pipe-reader"),
    };
    if !exe.exists() {
        bail!(
            "cannot start the reader: {} does not exist (build it: cargo build -p pipe)",
            exe.display()
        );
    }
    let mut cmd = Command::new(&exe);
    cmd.args(&args.reader_arg).arg("--spawned");
    if args.out.quiet {
        cmd.arg("--quiet");
    }
    if args.out.json {
        cmd.arg("--json");
    }
    if let Some(w) = back_w {
        cmd.arg("--back-fd").arg(w.as_raw_fd().to_string());
    }
    cmd.stdin(Stdio::from(stdin));
    cmd.spawn()
        .with_context(|| format!("starting {}", exe.display()))
}

/// `waitpid` for the child. If this side failed first, the child may still wait for input,
/// but our ends are closed by now, so it sees EOF and exits on its own.
pub fn wait_child(child: &mut Child) -> Result<ExitStatus> {
    narrate!(
        "waiting for pipe-reader (pid {}) to exit (waitpid)",
        child.id()
    );
    child.wait().context("waitpid pipe-reader")
}

/// Takes ownership of a pipe descriptor this process inherited from its parent.
///
/// In spawn mode the writer leaves the write end of the way-back pipe open across `exec`
/// and tells the reader its number with `--back-fd N`: the classic way to hand a child a
/// descriptor other than 0, 1 and 2. The number is checked before it is trusted: not a
/// standard stream, open, and a pipe; a number that fails is a bad flag value (exit 2).
pub fn take_inherited_pipe(fd: RawFd) -> Result<OwnedFd> {
    if fd <= 2 {
        return Err(bad_flag(format!(
            "--back-fd {fd}: must be 3 or more: descriptors 0, 1 and 2 are the standard streams, not the way back"
        )));
    }
    // SAFETY: F_GETFD only reads the descriptor's flags; on a closed or invalid number it
    // fails with EBADF and touches nothing, so any integer is a valid argument.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(bad_flag(format!(
            "--back-fd {fd}: no such open descriptor (EBADF): start pipe-reader through `pipe-writer --spawn`"
        )));
    }
    // SAFETY: the descriptor is open (checked above) and nothing in this process owns it:
    // it was inherited across exec, no code before this point opened or wrapped it, and
    // `--back-fd` is read once, at startup. The OwnedFd becomes its only owner.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    if fd_kind(owned.as_fd())? != FdKind::Pipe {
        // Give the descriptor back untouched rather than closing something we do not know.
        std::mem::forget(owned);
        return Err(bad_flag(format!(
            "--back-fd {fd}: the descriptor is not a pipe"
        )));
    }
    Ok(owned)
}

/// One process that holds an end of a given pipe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipeEnd {
    /// The process.
    pub pid: i32,
    /// Its parent.
    pub ppid: i32,
    /// Its program name, as typed (`argv[0]`'s file name, `common::peer::program_name`).
    pub program: String,
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
            // Not comm, which the kernel cuts to 15 bytes: the name the program was run by.
            let program = common::peer::program_name(pid).unwrap_or(comm);
            let end = PipeEnd {
                pid,
                ppid,
                program,
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

/// Prints who holds the two ends of the pipe on stdin, with their PPIDs (P1, P4), and
/// returns the report's notes about it.
pub fn show_pipe_ends(stdin: BorrowedFd<'_>) -> Result<Vec<String>> {
    let ends = pipe_ends(stdin)?;
    let me = std::process::id() as i32;
    let my_ppid = nix::unistd::getppid().as_raw();
    let mut notes = vec![format!("reader pid {me} ppid {my_ppid}")];
    for e in ends.iter().filter(|e| e.writes) {
        narrate!(
            "the write end is held by pid {} ({}), whose parent is pid {}",
            e.pid,
            e.program,
            e.ppid
        );
        notes.push(format!("writer pid {} ppid {}", e.pid, e.ppid));
        if e.pid == my_ppid {
            narrate!("the writer is this reader's parent: it made the pipe, then started us (P4)");
        } else if e.ppid == my_ppid {
            narrate!(
                "writer and reader share parent pid {my_ppid}: siblings that inherited the two ends from the shell (P1)"
            );
        } else {
            narrate!("writer and reader have different parents: what they share is an ancestor that made the pipe (P1 is imprecise)");
        }
    }
    if !ends.iter().any(|e| e.writes) {
        narrate!("no process holds the write end any more: the writer already finished, and what it wrote waits in the pipe");
    }
    narrate!("this reader is pid {me}, parent pid {my_ppid}");
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::stream::{capacity, set_capacity};
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
