//! How the two programs meet at a FIFO's name. **A first reading may skip this file**:
//! `writer.rs` and `reader.rs` read well without it, and come back here for the judgement
//! calls that make meeting by name safe and for the blocking `open` with a timeout.
//!
//! - **create or reuse** ([`prepare_fifo`]): whoever starts first makes the FIFO with
//!   `mkfifo(0600)`; the other finds it. An existing path is judged before it is used, with
//!   `lstat` (a symbolic link is refused, not followed): not a FIFO, or a FIFO of another
//!   user, is refused and left alone; a FIFO of ours that nobody holds open is reused (a
//!   FIFO keeps no data once both ends are closed, so one left by a killed run is harmless);
//!   one that a connected pair holds open ([`holders`]) is refused, so two pairs never mix.
//! - **start-order race**: both sides may call `mkfifo` at once; the loser gets EEXIST and
//!   looks again.
//! - **one reader, one writer** ([`take_role_lock`]): a FIFO lets any number of processes
//!   open it, and two readers would silently split the messages. So each side first takes
//!   a lock file in the runtime dir (`common::lock`, `NAME.reader.lock`, `NAME.writer.lock`);
//!   a second reader or writer is refused with the pid already there, before it touches
//!   the FIFO.
//! - **ownership** ([`own_fifo`]): what a side created is registered with
//!   `common::cleanup`, so an error or Ctrl-C while it waits in `open` removes it.
//! - **open with a timeout** ([`open_with_timeout`]): `open` on a FIFO blocks until the
//!   other end is opened (N7) and has no timeout of its own; a watchdog thread interrupts it
//!   with a signal, at `--timeout` or when the peer leaves the pair's other FIFO.
//!   [`try_open_for_writing`] asks first without blocking (ENXIO: no reader);
//!   [`open_for_writing`] and [`open_for_reading`] are the two programs' ways there,
//!   [`open_back_for_reading`] and [`open_back_for_writing`] their ways back (pingpong,
//!   N6), opened once the writer's Hello has said pingpong; all narrated.
//! - **who holds it** ([`holders`]): a scan of `/proc/*/fd`, used for the judgement above and
//!   by the reader to show that its writer is no relative (N5, [`show_peers`]).

use std::fs::{self, File};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::cleanup::Owned;
use common::cli::CommonArgs;
use common::lock::RoleLock;
use common::narrate;
use common::setup::Role;
use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::stat::Mode;
use nix::unistd::{geteuid, mkfifo};

use crate::name_hint;

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
                        .map(|h| format!("pid {} ({})", h.pid, h.program))
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

/// Takes this side's role lock for the FIFO at `fifo` (`NAME.reader.lock` or
/// `NAME.writer.lock` beside it), before the FIFO is created or opened: a FIFO cannot tell a
/// second reader or writer, which would split or mix the messages, so the lock does. Held
/// by another process: an error naming its pid. Released (and removed) when dropped.
pub fn take_role_lock(fifo: &Path, role: Role, program: &str) -> Result<RoleLock> {
    let (Some(dir), Some(name)) = (fifo.parent(), fifo.file_name().and_then(|n| n.to_str())) else {
        bail!("{} is not a FIFO path in a directory", fifo.display());
    };
    let what = format!("the FIFO {}", fifo.display());
    let lock = RoleLock::take(dir, name, role, program, &what)?;
    narrate!(
        "this is the only {role} of {what}: it holds {name}.{role}.lock (flock), since a FIFO itself would let a second {role} in"
    );
    Ok(lock)
}

/// The writer's names: [`prepare_fifo`] for `there` and, in pingpong, for `back`. Returns
/// the guards of those this call created: the writer owns them (Ctrl-C or an error removes
/// them) until a reader has opened them, then releases them to the reader.
pub fn prepare_fifos(there: &Path, back: Option<&Path>) -> Result<Vec<Owned>> {
    let mut owned = Vec::new();
    for path in std::iter::once(there).chain(back) {
        if prepare_fifo(path)? {
            owned.push(own_fifo(path));
        }
    }
    Ok(owned)
}

/// Registers a FIFO for removal on every way out (normal end, error, Ctrl-C).
pub fn own_fifo(path: &Path) -> Owned {
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

/// The writer's way there: `open(O_WRONLY | O_NONBLOCK)` first, which succeeds at once if a
/// reader already has the FIFO open; on ENXIO (nobody reads yet) the blocking
/// `open(O_WRONLY)`, which waits until a reader opens the other end (N7), given up at
/// `--timeout` with an error that says what to start.
pub fn open_for_writing(path: &Path, c: &CommonArgs) -> Result<File> {
    let fifo = match try_open_for_writing(path)? {
        Some(fd) => {
            narrate!(
                "a reader already has {} open: open(O_WRONLY) did not need to wait",
                path.display()
            );
            File::from(fd)
        }
        None => {
            narrate!(
                "no reader has {} open yet (open with O_NONBLOCK gives ENXIO); open(O_WRONLY) blocks until named-pipe-reader opens it for reading (N7); waiting up to {:?}",
                path.display(),
                c.timeout
            );
            let Opened::Now(f) = open_with_timeout(path, OFlag::O_WRONLY, c.timeout, None)? else {
                bail!(
                    "no reader opened {} within {:?} (open blocks until both ends exist, N7): start named-pipe-reader{} or raise --timeout",
                    path.display(),
                    c.timeout,
                    name_hint(c)
                );
            };
            f
        }
    };
    narrate!(
        "opened {} for writing: this descriptor can only write (N1, N4)",
        path.display()
    );
    Ok(fifo)
}

/// The reader's way there: the blocking `open(O_RDONLY)`, which waits until a writer opens
/// the other end (N7), given up at `--timeout` with an error that says what to start.
pub fn open_for_reading(path: &Path, c: &CommonArgs) -> Result<File> {
    narrate!(
        "opening {} for reading: open(O_RDONLY) blocks until named-pipe-writer opens it for writing (N7); waiting up to {:?}",
        path.display(),
        c.timeout
    );
    let Opened::Now(fifo) = open_with_timeout(path, OFlag::O_RDONLY, c.timeout, None)? else {
        bail!(
            "no writer opened {} within {:?} (open blocks until both ends exist, N7): start named-pipe-writer{} or raise --timeout",
            path.display(),
            c.timeout,
            name_hint(c)
        );
    };
    narrate!(
        "opened {} for reading: this descriptor can only read (N1, N4)",
        path.display()
    );
    Ok(fifo)
}

/// The writer's way back (pingpong, N6), once its Hello is in `there`: `open(NAME.back,
/// O_RDONLY)`, which blocks until the reader, told by the Hello that this is pingpong,
/// opens it for writing (N7). `Ok(None)`: the reader left `there` instead (it refused the
/// Hello, or died); given up at `--timeout`.
pub fn open_back_for_reading(
    back: &Path,
    there: BorrowedFd<'_>,
    c: &CommonArgs,
) -> Result<Option<File>> {
    narrate!(
        "opening {} for reading: the answers need a second FIFO, because each open end goes one way (N6); open(O_RDONLY) blocks until the reader, told by the Hello, opens it for writing (N7)",
        back.display()
    );
    match open_with_timeout(back, OFlag::O_RDONLY, c.timeout, Some(there))? {
        Opened::Now(f) => Ok(Some(f)),
        Opened::PeerLeft => Ok(None),
        Opened::TimedOut => bail!(
            "the reader did not open {} for writing within {:?}: it has this writer's Hello (pingpong) and does not answer; is it a named-pipe-reader of this version?",
            back.display(),
            c.timeout
        ),
    }
}

/// The reader's way back (pingpong, N6), once the writer's Hello said pingpong: the name
/// ([`prepare_fifo`]: the writer has usually made it), then `open(NAME.back, O_WRONLY)`,
/// which blocks until the writer opens it for reading (N7). Returns the descriptor and the
/// name's guard (this side removes the name when the pair is done); `Ok(None)`: the writer
/// left `there` instead; given up at `--timeout`. A name created here and not connected
/// is removed on the way out.
pub fn open_back_for_writing(
    back: &Path,
    there: BorrowedFd<'_>,
    c: &CommonArgs,
) -> Result<Option<(File, Owned)>> {
    let created = prepare_fifo(back)?.then(|| own_fifo(back));
    narrate!(
        "the writer runs pingpong: opening {} for writing, to answer; open(O_WRONLY) blocks until the writer opens it for reading (N6, N7)",
        back.display()
    );
    match open_with_timeout(back, OFlag::O_WRONLY, c.timeout, Some(there))? {
        Opened::Now(f) => Ok(Some((f, created.unwrap_or_else(|| own_fifo(back))))),
        Opened::PeerLeft => Ok(None),
        Opened::TimedOut => bail!(
            "the writer did not open {} for reading within {:?}: its Hello says pingpong, but it does not read the answers; is it a named-pipe-writer of this version?",
            back.display(),
            c.timeout
        ),
    }
}

/// The handler of the watchdog's signal: it does nothing. Its only effect is that a
/// blocking system call in the signalled thread returns EINTR, because the handler is
/// installed without `SA_RESTART`.
extern "C" fn interrupt_only(_: libc::c_int) {}

/// The signal the watchdog uses to interrupt a blocking `open`.
const WAKE_SIGNAL: Signal = Signal::SIGALRM;

/// How often the watchdog looks at the clock and the peer, and knocks again.
const TICK: Duration = Duration::from_millis(50);

/// How a blocking `open` in [`open_with_timeout`] ended.
#[derive(Debug)]
pub enum Opened {
    /// The other end was opened: the descriptor.
    Now(File),
    /// `timeout` passed first.
    TimedOut,
    /// The peer left first: the watched descriptor reported POLLHUP or POLLERR.
    PeerLeft,
}

/// The watchdog's verdicts, in an atomic the waiting thread reads after EINTR.
const WAITING: u8 = 0;
const TIMED_OUT: u8 = 1;
const PEER_LEFT: u8 = 2;

/// `open(path, flags)` in blocking mode, given up after `timeout`, or as soon as `watch`
/// (the pair's other FIFO, already connected) shows that the peer has closed its end.
///
/// Opening a FIFO blocks until the other end is opened (N7), and plain `open` has no
/// timeout. The classic remedy (TLPI 23.3) is a signal: a handler installed *without*
/// `SA_RESTART` makes the blocked call return EINTR. A watchdog thread wakes every 50 ms;
/// once `timeout` has passed, or `poll(2)` on `watch` reports POLLHUP (a read end whose
/// writer closed) or POLLERR (a write end whose reader closed), it sends `SIGALRM` to this
/// thread only (`pthread_kill`), repeating every 50 ms in case the signal landed just
/// before `open` was entered.
pub fn open_with_timeout(
    path: &Path,
    flags: OFlag,
    timeout: Duration,
    watch: Option<BorrowedFd<'_>>,
) -> Result<Opened> {
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
    let verdict = &AtomicU8::new(WAITING);
    let (done_tx, done_rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let watchdog = std::thread::Builder::new()
            .name("open-timeout".into())
            .spawn_scoped(s, move || {
                let deadline = Instant::now() + timeout;
                loop {
                    let slice = TICK.min(deadline.saturating_duration_since(Instant::now()));
                    if done_rx.recv_timeout(slice) != Err(RecvTimeoutError::Timeout) {
                        return;
                    }
                    if watch.is_some_and(peer_gone) {
                        verdict.store(PEER_LEFT, Ordering::SeqCst);
                        break;
                    }
                    if Instant::now() >= deadline {
                        verdict.store(TIMED_OUT, Ordering::SeqCst);
                        break;
                    }
                }
                // Keep knocking until the main thread says it has stopped waiting.
                loop {
                    let _ = nix::sys::pthread::pthread_kill(target, WAKE_SIGNAL);
                    if done_rx.recv_timeout(TICK) != Err(RecvTimeoutError::Timeout) {
                        return;
                    }
                }
            })
            .context("spawning the open watchdog thread")?;
        let result = loop {
            match open(path, flags | OFlag::O_CLOEXEC, Mode::empty()) {
                Ok(fd) => break Ok(Opened::Now(File::from(fd))),
                Err(Errno::EINTR) => match verdict.load(Ordering::SeqCst) {
                    TIMED_OUT => break Ok(Opened::TimedOut),
                    PEER_LEFT => break Ok(Opened::PeerLeft),
                    // Some other signal: keep waiting.
                    _ => continue,
                },
                Err(e) => {
                    break Err(e).with_context(|| format!("open {} {flags:?}", path.display()))
                }
            }
        };
        // Stop the watchdog and wait for it, so no stray SIGALRM arrives later.
        drop(done_tx);
        let _ = watchdog.join();
        result
    })
}

/// Whether the peer has closed its end of a connected FIFO: `poll(2)` with no events asked
/// still reports POLLHUP (read end, no writer left) and POLLERR (write end, no reader left).
fn peer_gone(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::empty())];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)),
        Err(_) => false,
    }
}

/// A process that has a FIFO open, found in `/proc`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The process.
    pub pid: i32,
    /// Its parent.
    pub ppid: i32,
    /// Its program name, as it was run (`common::peer::program_name`: `argv[0]`, not the
    /// kernel's 15-byte `comm`).
    pub program: String,
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
            let program = common::peer::program_name(pid).unwrap_or(comm);
            let ppid = tail
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            let h = Holder {
                pid,
                ppid,
                program,
                writes,
            };
            if !found.contains(&h) {
                found.push(h);
            }
        }
    }
    found
}

/// Prints who holds the write end, with parents, to show the two are unrelated (N5), and
/// returns the report's notes about it.
pub fn show_peers(path: &Path) -> Vec<String> {
    let me = std::process::id() as i32;
    let my_ppid = nix::unistd::getppid().as_raw();
    let mut notes = vec![format!("reader pid {me} ppid {my_ppid}")];
    let writers: Vec<_> = holders(path).into_iter().filter(|h| h.writes).collect();
    for w in &writers {
        narrate!(
            "the write end is held by pid {} ({}), whose parent is pid {}; this reader is pid {me}, parent {my_ppid}",
            w.pid,
            w.program,
            w.ppid
        );
        notes.push(format!("writer pid {} ppid {}", w.pid, w.ppid));
        if w.pid != my_ppid && w.ppid != me {
            narrate!("neither started the other: they met only through the name (N2, N5)");
        }
    }
    if writers.is_empty() {
        narrate!("no process holds the write end any more: the writer already finished, and its data waits in the FIFO");
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::path::PathBuf;

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
    fn open_with_timeout_stops_when_the_peer_leaves_the_other_fifo() {
        let d = scratch("peer-left");
        let (there, back) = (d.join("there"), d.join("back"));
        prepare_fifo(&there).unwrap();
        prepare_fifo(&back).unwrap();
        let r = open(&there, OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty()).unwrap();
        let w = open(&there, OFlag::O_WRONLY | OFlag::O_NONBLOCK, Mode::empty()).unwrap();
        // The reader of `there` is gone; nobody will ever open `back` for writing.
        drop(r);
        let long = Duration::from_secs(3600);
        let got = open_with_timeout(&back, OFlag::O_RDONLY, long, Some(w.as_fd())).unwrap();
        assert!(matches!(got, Opened::PeerLeft), "{got:?}");
        drop(w);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn open_with_timeout_gives_up() {
        let d = scratch("timeout");
        let p = d.join("f");
        prepare_fifo(&p).unwrap();
        let r = open_with_timeout(&p, OFlag::O_RDONLY, Duration::from_millis(100), None).unwrap();
        assert!(matches!(r, Opened::TimedOut), "{r:?}");
        fs::remove_dir_all(&d).unwrap();
    }
}
