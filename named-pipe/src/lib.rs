//! # named-pipe: the FIFO (claims N1-N7)
//!
//! A FIFO is a pipe with a name in the file system. `mkfifo(3)` creates the name (an inode
//! of type `S_IFIFO`, no data blocks); any process that can reach the path and has
//! permission opens it with plain `open(2)`, one side for reading, the other for writing,
//! and from then on it behaves exactly like the anonymous pipe: a kernel buffer (64 KiB by
//! default, `F_SETPIPE_SZ` to change it), bytes in order (N3), `read` blocks while it is
//! empty and `write` while it is full (N7, as P6). Nothing has to be inherited: two
//! processes that share no ancestor but a login shell meet by name (N2, N5).
//!
//! What the note leaves out, and these programs show:
//! - **open blocks too** (N7): `open(O_RDONLY)` waits until some process opens the FIFO for
//!   writing, and `open(O_WRONLY)` until some process opens it for reading. A FIFO with only
//!   one end open does not exist as a channel yet. With `O_NONBLOCK`, opening for reading
//!   succeeds at once, and opening for writing fails with `ENXIO` while nobody reads.
//! - **one direction per open** (N1, N4): the FIFO itself is not one-way; each *descriptor*
//!   is, because it was opened `O_RDONLY` or `O_WRONLY`. (`O_RDWR` on a FIFO is allowed on
//!   Linux but makes a process its own peer; POSIX leaves it undefined, so it is not used.)
//!   A reply therefore needs a second FIFO (N6): pingpong opens `NAME` and `NAME.back`.
//! - **the name carries no data**: bytes live in the kernel's pipe buffer and vanish when the
//!   last descriptor closes. A FIFO left behind by a killed run is an empty name, so reusing
//!   it is safe; what must be checked is that the path *is* a FIFO and that it is ours.
//!
//! ## The pair's contract
//! - Rendezvous: `<runtime dir>/NAME` (default `fifo`), plus `NAME.back` for pingpong.
//! - Whoever starts first creates the FIFO(s) with mode 0600; the other finds them.
//! - Open order, the same on both sides so neither waits for the other forever:
//!   `NAME` first (writer `O_WRONLY`, reader `O_RDONLY`), then `NAME.back` the other way.
//! - The reader removes both names when the pair is done; Ctrl-C on either side removes
//!   what that side created and still owns.
//!
//! ## What this file holds
//! Paths, the checked create-or-reuse ([`prepare_fifo`]), a blocking `open` that honours
//! `--timeout` ([`open_with_timeout`]), and the pipe capacity calls. The modes themselves
//! are `common::protocol`, the same code as for every other mechanism.
//!
//! Man pages: fifo(7), mkfifo(3), open(2) (ENXIO), pipe(7) (capacity, PIPE_BUF),
//! fcntl(2) (F_SETPIPE_SZ), signal(7) (EINTR and SA_RESTART).

pub mod reader;
pub mod writer;

use std::fs::{self, File};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::narrate;
use nix::errno::Errno;
use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::stat::Mode;
use nix::unistd::{geteuid, mkfifo};

/// Mechanism name in reports.
pub const MECHANISM: &str = "named-pipe";
/// Default FIFO name in the runtime directory.
pub const DEFAULT_NAME: &str = "fifo";
/// Suffix of the way-back FIFO used by pingpong (N6).
pub const BACK_SUFFIX: &str = ".back";

/// The two rendezvous paths: `(there, back)`, writer->reader and reader->writer.
pub fn fifo_paths(name: Option<&str>) -> Result<(PathBuf, PathBuf)> {
    let name = name.unwrap_or(DEFAULT_NAME);
    let dir = common::runtime::runtime_dir()?;
    // Absolute and without symlinks, as /proc/<pid>/fd shows it (see `holders`).
    let dir = fs::canonicalize(&dir).with_context(|| format!("realpath {}", dir.display()))?;
    Ok((dir.join(name), dir.join(format!("{name}{BACK_SUFFIX}"))))
}

/// Makes sure `path` is a FIFO of ours: creates it (mode 0600) if missing, reuses it if it
/// is already there. Returns whether this call created it.
///
/// A path that exists but is not a FIFO, or belongs to another user, is refused and left
/// alone: unlinking a stranger's file because it has the name we wanted would be a bug
/// at best and an attack surface at worst.
pub fn prepare_fifo(path: &Path) -> Result<bool> {
    loop {
        // lstat, not stat: a symlink at this path is refused, not followed.
        match fs::symlink_metadata(path) {
            Ok(meta) => {
                check_existing(path, &meta)?;
                // A peer waiting for us sits in open() and holds no descriptor yet; a
                // process that holds one belongs to a pair that is already connected.
                let busy = holders(path);
                if !busy.is_empty() {
                    let who: Vec<String> = busy
                        .iter()
                        .map(|h| format!("pid {} ({})", h.pid, h.comm))
                        .collect();
                    bail!(
                        "FIFO {} is in use by a connected pair ({}): joining would mix our messages with theirs; choose another --name",
                        path.display(),
                        who.join(", ")
                    );
                }
                narrate!(
                    "FIFO {} already exists (made by a peer that is waiting, or left by an earlier run): reusing it; a FIFO holds no data once both ends are closed",
                    path.display()
                );
                return Ok(false);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("lstat {}", path.display())),
        }
        // mkfifo applies the umask; 0600 has nothing a sane umask removes.
        match mkfifo(path, Mode::S_IRUSR | Mode::S_IWUSR) {
            Ok(()) => {
                narrate!(
                    "created FIFO {} (mkfifo, mode 0600): a name for a pipe, no data on disk (N2)",
                    path.display()
                );
                return Ok(true);
            }
            // The peer created it between our lstat and mkfifo: look again.
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(e).with_context(|| format!("mkfifo {}", path.display())),
        }
    }
}

/// Refuses a path that is not a FIFO or not ours; tightens an own FIFO's mode to 0600.
fn check_existing(path: &Path, meta: &fs::Metadata) -> Result<()> {
    let ft = meta.file_type();
    if !ft.is_fifo() {
        let kind = if ft.is_symlink() {
            "a symbolic link"
        } else if ft.is_dir() {
            "a directory"
        } else if ft.is_file() {
            "a regular file"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a FIFO"
        };
        bail!(
            "{} exists and is {kind}, not a FIFO: refusing to use it (and not removing it); choose another --name or remove it yourself",
            path.display()
        );
    }
    let me = geteuid().as_raw();
    if meta.uid() != me {
        bail!(
            "FIFO {} belongs to uid {}, not to you (uid {me}): refusing to use it (and not removing it); choose another --name",
            path.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", path.display()))?;
        narrate!(
            "FIFO {} was mode {:o}; set it to 0600 so no other user can open it",
            path.display(),
            meta.mode() & 0o777
        );
    }
    Ok(())
}

/// Removes a FIFO name; one already gone is not an error (the peer may have removed it).
pub fn remove_fifo(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Registers a FIFO for removal on every way out (normal end, error, Ctrl-C).
pub fn own_fifo(path: &Path) -> common::cleanup::Owned {
    let p = path.to_path_buf();
    common::cleanup::own(format!("FIFO {}", path.display()), move || remove_fifo(&p))
}

/// Whether some process has the FIFO open for reading right now: `open(O_WRONLY |
/// O_NONBLOCK)` fails with ENXIO when nobody does (fifo(7)). On success the descriptor is
/// returned: it is a valid write end, already connected.
pub fn try_open_for_writing(path: &Path) -> Result<Option<OwnedFd>> {
    match open(
        path,
        OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENXIO) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("open {} O_WRONLY|O_NONBLOCK", path.display())),
    }
}

/// The handler of the watchdog's signal: it does nothing. Its only effect is that a
/// blocking system call in the signalled thread returns EINTR, because the handler is
/// installed without `SA_RESTART`.
extern "C" fn interrupt_only(_: libc::c_int) {}

/// The signal the watchdog uses to interrupt a blocking `open`.
const WAKE_SIGNAL: Signal = Signal::SIGALRM;

/// `open(path, flags)` in blocking mode, given up after `timeout`.
///
/// Opening a FIFO blocks until the other end is opened (N7), and plain `open` has no
/// timeout. The classic remedy (TLPI 23.3) is a signal: a handler installed *without*
/// `SA_RESTART` makes the blocked call return EINTR. A watchdog thread sleeps for
/// `timeout` and then sends `SIGALRM` to this thread only (`pthread_kill`), repeating every
/// 50 ms in case the signal landed just before `open` was entered. Returns `Ok(None)` on
/// timeout.
pub fn open_with_timeout(path: &Path, flags: OFlag, timeout: Duration) -> Result<Option<File>> {
    let action = SigAction::new(
        SigHandler::Handler(interrupt_only),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler does nothing, so it is async-signal-safe and cannot break any
    // invariant of the interrupted code; SIGALRM is not used for anything else in these
    // programs (common's signal thread handles only SIGINT, SIGTERM and SIGHUP).
    unsafe { sigaction(WAKE_SIGNAL, &action) }.context("sigaction SIGALRM")?;
    let target = nix::sys::pthread::pthread_self();
    let fired = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let flag = fired.clone();
    let watchdog = std::thread::Builder::new()
        .name("open-timeout".into())
        .spawn(move || {
            if done_rx.recv_timeout(timeout) != Err(mpsc::RecvTimeoutError::Timeout) {
                return;
            }
            flag.store(true, Ordering::SeqCst);
            // Keep knocking until the main thread says it has stopped waiting.
            loop {
                let _ = nix::sys::pthread::pthread_kill(target, WAKE_SIGNAL);
                if done_rx.recv_timeout(Duration::from_millis(50))
                    != Err(mpsc::RecvTimeoutError::Timeout)
                {
                    return;
                }
            }
        })
        .context("spawning the open watchdog thread")?;
    let result = loop {
        match open(path, flags | OFlag::O_CLOEXEC, Mode::empty()) {
            Ok(fd) => break Ok(Some(File::from(fd))),
            Err(Errno::EINTR) if fired.load(Ordering::SeqCst) => break Ok(None),
            // Some other signal: keep waiting.
            Err(Errno::EINTR) => continue,
            Err(e) => break Err(e).with_context(|| format!("open {} {flags:?}", path.display())),
        }
    };
    // Stop the watchdog and wait for it, so no stray SIGALRM arrives later.
    drop(done_tx);
    let _ = watchdog.join();
    result
}

/// `/proc/sys/fs/pipe-max-size`: the largest capacity an unprivileged process may set.
pub fn pipe_max_size() -> Result<usize> {
    let s = fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .context("reading /proc/sys/fs/pipe-max-size")?;
    s.trim()
        .parse()
        .with_context(|| format!("parsing /proc/sys/fs/pipe-max-size: {s:?}"))
}

/// Checks a `--pipe-size` value before any FIFO exists.
pub fn check_pipe_size(bytes: Option<usize>) -> Result<()> {
    if let Some(bytes) = bytes {
        let max = pipe_max_size()?;
        if !(4096..=max).contains(&bytes) {
            bail!("--pipe-size {bytes} is out of range: 4096 to {max} bytes (/proc/sys/fs/pipe-max-size)");
        }
    }
    Ok(())
}

/// The FIFO's buffer capacity: `fcntl(fd, F_GETPIPE_SZ)`.
pub fn capacity(fd: BorrowedFd<'_>) -> Result<usize> {
    let n = fcntl(fd, FcntlArg::F_GETPIPE_SZ).context("fcntl F_GETPIPE_SZ")?;
    Ok(n as usize)
}

/// Sets the capacity (`F_SETPIPE_SZ`, rounded up by the kernel) if asked, and says what it
/// is. The buffer belongs to the open FIFO, not to the name: it is set once both ends are
/// open and lasts until both close.
pub fn show_capacity(fd: BorrowedFd<'_>, want: Option<usize>) -> Result<String> {
    if let Some(bytes) = want {
        let arg = i32::try_from(bytes).context("--pipe-size does not fit in an int")?;
        let got = match fcntl(fd, FcntlArg::F_SETPIPE_SZ(arg)) {
            Ok(n) => n,
            Err(Errno::EBUSY) => bail!(
                "fcntl F_SETPIPE_SZ {bytes}: EBUSY: the FIFO already holds more data than that"
            ),
            Err(e) => return Err(e).with_context(|| format!("fcntl F_SETPIPE_SZ {bytes}")),
        };
        narrate!("FIFO capacity set to {got} bytes (F_SETPIPE_SZ {bytes})");
    }
    let cap = capacity(fd)?;
    narrate!("FIFO capacity: {cap} bytes (F_GETPIPE_SZ); a write blocks while it is full (N7)");
    Ok(format!("FIFO capacity {cap} bytes"))
}

/// A process that has a FIFO open, found in `/proc`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The process.
    pub pid: i32,
    /// Its parent.
    pub ppid: i32,
    /// Its command name.
    pub comm: String,
    /// Whether it holds the FIFO open for writing (else for reading).
    pub writes: bool,
}

/// Every process (of this user) that has `path` open, by scanning `/proc/*/fd` for links
/// to it and reading the access mode from `fdinfo`. This is how N5 is shown rather than
/// asserted: the reader prints the writer's pid and parent, and they are not related.
pub fn holders(path: &Path) -> Vec<Holder> {
    let mut found = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in procs.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if fs::read_link(fd.path()).ok().as_deref() != Some(path) {
                continue;
            }
            // fdinfo's "flags:" is the open mode in octal; O_WRONLY is 01.
            let info = fs::read_to_string(entry.path().join("fdinfo").join(fd.file_name()))
                .unwrap_or_default();
            let writes = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                .is_some_and(|f| f & 0o3 == 0o1);
            let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // "pid (comm) state ppid ...": comm may hold spaces, so split at the last ')'.
            let (head, tail) = stat.rsplit_once(')').unwrap_or(("", ""));
            let comm = head.split_once('(').map_or("?", |(_, c)| c).to_string();
            let ppid = tail
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            let h = Holder {
                pid,
                ppid,
                comm,
                writes,
            };
            if !found.contains(&h) {
                found.push(h);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("named-pipe-unit-{tag}-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn prepare_creates_then_reuses() {
        let d = scratch("prep");
        let p = d.join("f");
        assert!(prepare_fifo(&p).unwrap());
        let m = fs::symlink_metadata(&p).unwrap();
        assert!(m.file_type().is_fifo());
        assert_eq!(m.mode() & 0o777, 0o600);
        assert!(!prepare_fifo(&p).unwrap(), "second call reuses");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_regular_file_is_refused_and_kept() {
        let d = scratch("file");
        let p = d.join("f");
        fs::write(&p, b"precious").unwrap();
        let e = prepare_fifo(&p).unwrap_err().to_string();
        assert!(e.contains("is a regular file, not a FIFO"), "{e}");
        assert_eq!(fs::read(&p).unwrap(), b"precious");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn open_with_timeout_gives_up() {
        let d = scratch("timeout");
        let p = d.join("f");
        prepare_fifo(&p).unwrap();
        let r = open_with_timeout(&p, OFlag::O_RDONLY, Duration::from_millis(100)).unwrap();
        assert!(r.is_none());
        fs::remove_dir_all(&d).unwrap();
    }
}
