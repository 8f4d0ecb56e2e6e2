//! The peer watch: who the peer is, whether it is still alive, and what every wait does
//! when it is not. **A first reading may skip this file**: the role files wrap each
//! `msgsnd`/`msgrcv`/`mq_send`/`mq_timedreceive` call in one of its four waits
//! ([`PeerWatch::send_sysv`], [`PeerWatch::recv_sysv`], [`PeerWatch::send_posix`],
//! [`PeerWatch::recv_posix`]), which retry EINTR, notice a full queue (M6) and turn a dead
//! or absent peer into a value instead of a wait that never ends.
//!
//! One [`PeerWatch`] per process knows everything about the peer:
//! - **who is there**: the pair file holds a writer line and a reader line (`writer 1234
//!   running`, `reader 1240 finished`) at fixed offsets, written with `pwrite`, so the two
//!   never overwrite each other's line and `cat` shows both;
//! - **whether it lives**: the pid in the peer's line, checked with `kill(pid, 0)`;
//! - **the verdict**: why a wait ended without a message ([`Gone`]), kept for the error;
//! - **what to remove** when the peer died: the queue and the pair file, once.
//!
//! System V calls have no timeout, so a thread ([`PeerWatch::watchdog`]) checks the peer
//! every 100 ms while the main thread is blocked, and removes the queue when the peer is
//! gone: the blocked call returns EIDRM at once. POSIX calls have timeouts, so the POSIX
//! waits check the peer themselves between 100 ms slices.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::narrate;
use common::setup::Role;
use common::stream::Delivery;
use libc::c_int;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::mqueue::MqdT;
use nix::sys::time::TimeSpec;

use crate::limits::Full;
use crate::posix::deadline;
use crate::sysv::{errno_name, failure, queue_gone, SysvQueue};

/// How often liveness is checked while blocked.
pub const CHECK_EVERY: Duration = Duration::from_millis(100);
/// How long a reader keeps waiting after its writer finished cleanly.
pub const AFTER_FINISH: Duration = Duration::from_millis(500);
/// Bytes per slot of the pair file: one text line, padded, so `cat` shows both.
const SLOT: usize = 40;

/// What a slot of the pair file says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// Nobody recorded.
    Empty,
    /// A process said it is running.
    Running(i32),
    /// A process said it finished its part cleanly.
    Finished(i32),
}

/// Why a wait ended without a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gone {
    /// The peer's pid is recorded as running but no such process exists (killed).
    Died(i32),
    /// No peer was recorded within `--timeout` while this side was blocked.
    NeverCame,
    /// The peer finished cleanly and nothing more came for this side.
    Finished(i32),
}

impl Gone {
    /// A sentence for narration and errors.
    pub fn describe(&self, peer: Role) -> String {
        match self {
            Gone::Died(pid) => format!("the {peer} (pid {pid}) died without finishing"),
            Gone::NeverCame => format!("no {peer} came within --timeout"),
            Gone::Finished(pid) => {
                format!("the {peer} (pid {pid}) finished and nothing more arrived")
            }
        }
    }
}

/// What a failed System V call means for the wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum After {
    /// Interrupted: call again.
    Retry,
    /// The watchdog removed the queue because the peer is gone.
    PeerGone,
}

/// The one place that knows who the peer is and whether it is alive. Shared (in an `Arc`)
/// by the main thread, the watchdog thread and the cleanup registry.
pub struct PeerWatch {
    /// The pair file's path.
    path: PathBuf,
    /// The pair file, open read-write: its two slots say who is there.
    file: File,
    /// Whose slot to watch.
    peer: Role,
    /// `--timeout`: how long to wait for a peer that has not shown up.
    timeout: Duration,
    /// Blocking System V calls made so far (written by the main thread only).
    calls: AtomicU64,
    /// Non-zero while the main thread is inside a call that may block: the call's number,
    /// so the watchdog can tell one long call from many short ones.
    in_call: AtomicU64,
    /// Why the peer is gone, once a wait or the watchdog found out. The watchdog holds the
    /// lock while it removes the queue, so a main thread woken by EIDRM that reads the
    /// verdict cannot exit before the removal is complete.
    verdict: Mutex<Option<Gone>>,
    /// What to remove when the peer is found dead (the queue and the pair file): run once.
    remove: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// Set when the watchdog is no longer needed.
    stop: AtomicBool,
}

impl PeerWatch {
    /// Opens (creating, mode 0600) the pair file at `path`, checks it is a regular file of
    /// ours, and watches the slot of `me`'s peer.
    pub fn open(path: &Path, me: Role, timeout: Duration) -> Result<PeerWatch> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?;
        let meta = file
            .metadata()
            .with_context(|| format!("fstat {}", path.display()))?;
        if !meta.file_type().is_file() || meta.uid() != nix::unistd::geteuid().as_raw() {
            bail!(
                "{} is not a regular file of yours; refusing to use it",
                path.display()
            );
        }
        Ok(PeerWatch {
            path: path.to_path_buf(),
            file,
            peer: me.peer(),
            timeout,
            calls: AtomicU64::new(0),
            in_call: AtomicU64::new(0),
            verdict: Mutex::new(None),
            remove: Mutex::new(None),
            stop: AtomicBool::new(false),
        })
    }

    /// Where the pair file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whom this side watches.
    pub fn peer(&self) -> Role {
        self.peer
    }

    /// Takes the exclusive `flock` held while a side opens the queue and checks it.
    pub fn lock(&self) -> Result<Flock<File>> {
        let f = self.file.try_clone().context("dup of the pair file")?;
        Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .with_context(|| format!("flock {}", self.path.display()))
    }

    /// Reads a slot (`pread`).
    pub fn read(&self, role: Role) -> Slot {
        let mut buf = [0u8; SLOT];
        let n = self.file.read_at(&mut buf, offset(role)).unwrap_or(0);
        let line = String::from_utf8_lossy(&buf[..n]);
        let mut w = line.split_whitespace();
        let (_, pid, state) = (w.next(), w.next(), w.next());
        match (pid.and_then(|p| p.parse().ok()), state) {
            (Some(pid), Some("running")) => Slot::Running(pid),
            (Some(pid), Some("finished")) => Slot::Finished(pid),
            _ => Slot::Empty,
        }
    }

    /// Writes a slot (`pwrite`).
    pub fn write(&self, role: Role, slot: Slot) -> Result<()> {
        let text = match slot {
            Slot::Empty => format!("{role} - none"),
            Slot::Running(p) => format!("{role} {p} running"),
            Slot::Finished(p) => format!("{role} {p} finished"),
        };
        let mut buf = [b' '; SLOT];
        let n = text.len().min(SLOT - 1);
        buf[..n].copy_from_slice(&text.as_bytes()[..n]);
        buf[SLOT - 1] = b'\n';
        self.file
            .write_at(&buf, offset(role))
            .with_context(|| format!("pwrite {}", self.path.display()))?;
        Ok(())
    }

    /// Records this side as finished: a peer that polls (the typed reader) then knows that
    /// nothing more will come, and a later reader that the messages left are a whole session.
    pub fn mark_finished(&self) -> Result<()> {
        self.write(self.peer.peer(), Slot::Finished(std::process::id() as i32))
    }

    /// Sets what is removed when the peer is found dead (the queue and the pair file).
    pub fn on_death(&self, f: impl FnOnce() + Send + 'static) {
        *self.remove.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(f));
    }

    fn remove_once(&self) {
        let f = self.remove.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(f) = f {
            f();
        }
    }

    /// Checks the peer, given how long this side has been blocked. `None`: keep waiting.
    pub fn check(&self, blocked: Duration) -> Option<Gone> {
        match self.read(self.peer) {
            Slot::Running(pid) if !common::peer::alive(pid) => Some(Gone::Died(pid)),
            Slot::Running(_) => None,
            Slot::Finished(pid) if blocked >= AFTER_FINISH => Some(Gone::Finished(pid)),
            Slot::Finished(_) => None,
            Slot::Empty if blocked >= self.timeout => Some(Gone::NeverCame),
            Slot::Empty => None,
        }
    }

    /// Checks the peer after a timed wait ran out; `since` is when the first one did.
    pub fn waited(&self, since: &mut Option<Instant>) -> Option<Gone> {
        self.check(since.get_or_insert_with(Instant::now).elapsed())
    }

    /// Why the peer is gone, if a wait ended because of it.
    pub fn verdict(&self) -> Option<Gone> {
        self.verdict
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How the peer left, for "reader {how} after N messages": from the verdict.
    pub fn how_gone(&self) -> &'static str {
        match self.verdict() {
            Some(Gone::NeverCame) => "never came (--timeout)",
            Some(_) => "died",
            None => "went away",
        }
    }

    /// Keeps the verdict for the error that follows.
    pub fn record(&self, g: Gone) {
        *self.verdict.lock().unwrap_or_else(|p| p.into_inner()) = Some(g);
    }

    /// The peer is gone: if it died, remove what the pair owned (nobody will use it); keep
    /// the verdict.
    pub fn bury(&self, g: Gone) {
        if matches!(g, Gone::Died(_)) {
            self.remove_once();
        }
        self.record(g);
    }

    /// Starts the watchdog thread (System V): while the main thread is blocked in a call,
    /// it checks the peer every 100 ms; on a verdict it keeps it and removes the queue,
    /// which wakes the blocked call with EIDRM. It stops when the guard is dropped.
    ///
    /// Why a thread: msgrcv and msgsnd have no timeout. A loop of IPC_NOWAIT calls and
    /// sleeps would add a system call and a sleep to every empty-queue wait, which is most
    /// of a pingpong round trip; a signal would need a handler. Removing the queue is what
    /// the reader does at the end anyway, and the blocked call returns EIDRM at once.
    pub fn watchdog(self: &Arc<Self>) -> Result<Watching<'_>> {
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || me.watch())
            .context("spawning the watchdog thread")?;
        Ok(Watching(self))
    }

    fn watch(&self) {
        let (mut last_call, mut since) = (0u64, Instant::now());
        while !self.stop.load(Ordering::Acquire) {
            std::thread::sleep(CHECK_EVERY);
            let call = self.in_call.load(Ordering::Relaxed);
            if call == 0 || call != last_call {
                since = Instant::now();
            }
            last_call = call;
            let blocked = if call == 0 {
                Duration::ZERO
            } else {
                since.elapsed()
            };
            let Some(g) = self.check(blocked) else {
                continue;
            };
            // Finished peers are only a verdict while we are stuck waiting.
            if matches!(g, Gone::Finished(_)) && call == 0 {
                continue;
            }
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            let mut v = self.verdict.lock().unwrap_or_else(|p| p.into_inner());
            *v = Some(g);
            self.remove_once();
            drop(v);
            return;
        }
    }

    /// Runs one call that may block, numbered for the watchdog.
    fn during<T>(&self, call: impl FnOnce() -> T) -> T {
        let n = self.calls.load(Ordering::Relaxed) + 1;
        self.calls.store(n, Ordering::Relaxed);
        self.in_call.store(n, Ordering::Relaxed);
        let r = call();
        self.in_call.store(0, Ordering::Relaxed);
        r
    }

    /// A failed System V call on `q`: EINTR retries; a removed queue (EIDRM if the call
    /// was waiting in it, EINVAL if it was gone before the call) is the watchdog's doing
    /// when the peer is gone, else someone else's (an error naming the real errno).
    pub(crate) fn sysv_failed(
        &self,
        call: &str,
        q: SysvQueue,
        e: io::Error,
        what: impl FnOnce() -> String,
    ) -> Result<After> {
        if e.raw_os_error() == Some(libc::EINTR) {
            return Ok(After::Retry);
        }
        if !queue_gone(q, &e) {
            return Err(e).with_context(what);
        }
        match self.verdict() {
            Some(g) => {
                narrate!(
                    "{}; the watchdog removed the queue, which woke {call} ({}: {e})",
                    g.describe(self.peer),
                    errno_name(&e)
                );
                Ok(After::PeerGone)
            }
            // Our own Ctrl-C handler may be the remover: it marks the process interrupted
            // before it removes anything, and `common::cli::run_main` then leaves the exit
            // (status 130) to it, so this error is not printed as the verdict.
            None => bail!(
                "{}: someone ran ipcrm, or another program removed it",
                failure(call, q, &e)
            ),
        }
    }

    /// Sends one System V message: `call(flags)` is the `msgsnd`. A full queue is
    /// narrated once and then waited for; a peer gone is [`Delivery::PeerGone`].
    pub fn send_sysv(
        &self,
        q: SysvQueue,
        full: &mut Full,
        mut call: impl FnMut(c_int) -> io::Result<()>,
    ) -> Result<Delivery> {
        loop {
            let flags = full.sysv_flags();
            match self.during(|| call(flags)) {
                Ok(()) => return Ok(Delivery::Sent),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => full.sysv(q, self.peer)?,
                Err(e) => {
                    let what = || format!("msgsnd msqid {}", q.id);
                    if self.sysv_failed("msgsnd", q, e, what)? == After::PeerGone {
                        return Ok(Delivery::PeerGone);
                    }
                }
            }
        }
    }

    /// Receives one System V message: `call(msgtyp)` is the `msgrcv`. Its length, or
    /// `None` when the peer is gone.
    pub fn recv_sysv(
        &self,
        q: SysvQueue,
        msgtyp: i64,
        mut call: impl FnMut(i64) -> io::Result<usize>,
    ) -> Result<Option<usize>> {
        loop {
            match self.during(|| call(msgtyp)) {
                Ok(n) => return Ok(Some(n)),
                Err(e) => {
                    let what = || format!("msgrcv msqid {} msgtyp {msgtyp}", q.id);
                    if self.sysv_failed("msgrcv", q, e, what)? == After::PeerGone {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Sends one POSIX message: `call(None)` is the `mq_send` on the non-blocking
    /// descriptor; once the queue was found full, `call(Some(deadline))` is an
    /// `mq_timedsend` that sleeps in the kernel like a plain `mq_send`, but only 100 ms at
    /// a time, so a dead reader is noticed between slices.
    pub fn send_posix(
        &self,
        q: &MqdT,
        full: &mut Full,
        mut call: impl FnMut(Option<&TimeSpec>) -> nix::Result<()>,
    ) -> Result<Delivery> {
        // When this send first had to wait: read only then, to keep clocks off the fast path.
        let mut since = None;
        loop {
            let r = if full.seen() {
                call(Some(&deadline(CHECK_EVERY)?))
            } else {
                call(None)
            };
            match r {
                Ok(()) => return Ok(Delivery::Sent),
                Err(Errno::EAGAIN) => full.posix(q, self.peer)?,
                Err(Errno::ETIMEDOUT) => {
                    if let Some(g) = self.waited(&mut since) {
                        narrate!("{} while the queue was full", g.describe(self.peer));
                        self.bury(g);
                        return Ok(Delivery::PeerGone);
                    }
                }
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e).context("mq_send"),
            }
        }
    }

    /// Receives one POSIX message: `call(deadline)` is an `mq_timedreceive` that waits
    /// 100 ms at most; between slices the peer is checked. Its length, or `None` when the
    /// peer is gone.
    pub fn recv_posix(
        &self,
        mut call: impl FnMut(&TimeSpec) -> nix::Result<usize>,
    ) -> Result<Option<usize>> {
        let mut since = None;
        loop {
            match call(&deadline(CHECK_EVERY)?) {
                Ok(n) => return Ok(Some(n)),
                Err(Errno::ETIMEDOUT) => {
                    if let Some(g) = self.waited(&mut since) {
                        narrate!("{}; mq_timedreceive stops waiting", g.describe(self.peer));
                        self.bury(g);
                        return Ok(None);
                    }
                }
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e).context("mq_timedreceive"),
            }
        }
    }
}

/// While this lives, the watchdog thread watches; dropping it stops the thread.
#[must_use = "dropping the guard stops the watchdog"]
pub struct Watching<'a>(&'a PeerWatch);

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Release);
    }
}

/// Where a role's slot starts in the pair file.
fn offset(role: Role) -> u64 {
    match role {
        Role::Writer => 0,
        Role::Reader => SLOT as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_file_slots_round_trip() {
        let d = std::env::temp_dir().join(format!("msgq-unit-{}", std::process::id()));
        let p = PeerWatch::open(&d, Role::Reader, Duration::from_secs(1)).unwrap();
        assert_eq!(p.read(Role::Writer), Slot::Empty);
        p.write(Role::Writer, Slot::Running(42)).unwrap();
        p.write(Role::Reader, Slot::Finished(43)).unwrap();
        assert_eq!(p.read(Role::Writer), Slot::Running(42));
        assert_eq!(p.read(Role::Reader), Slot::Finished(43));
        std::fs::remove_file(&d).unwrap();
    }

    #[test]
    fn the_watch_judges_a_dead_a_finished_and_an_absent_peer() {
        let d = std::env::temp_dir().join(format!("msgq-unit-judge-{}", std::process::id()));
        let w = PeerWatch::open(&d, Role::Reader, Duration::from_secs(1)).unwrap();
        assert_eq!(w.peer(), Role::Writer);
        // Nobody yet: wait until --timeout.
        assert_eq!(w.check(Duration::from_millis(999)), None);
        assert_eq!(w.check(Duration::from_secs(1)), Some(Gone::NeverCame));
        // A live writer is waited for however long.
        w.write(Role::Writer, Slot::Running(std::process::id() as i32))
            .unwrap();
        assert_eq!(w.check(Duration::from_secs(3600)), None);
        // A finished one, for AFTER_FINISH more.
        w.write(Role::Writer, Slot::Finished(1)).unwrap();
        assert_eq!(w.check(Duration::ZERO), None);
        assert_eq!(w.check(AFTER_FINISH), Some(Gone::Finished(1)));
        // A dead one at once; burying it runs the removal once and keeps the verdict.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        w.write(Role::Writer, Slot::Running(pid)).unwrap();
        assert_eq!(w.check(Duration::ZERO), Some(Gone::Died(pid)));
        let removed = Arc::new(AtomicU64::new(0));
        let r = Arc::clone(&removed);
        w.on_death(move || {
            r.fetch_add(1, Ordering::Relaxed);
        });
        w.bury(Gone::Died(pid));
        w.bury(Gone::Died(pid));
        assert_eq!(removed.load(Ordering::Relaxed), 1);
        assert_eq!((w.verdict(), w.how_gone()), (Some(Gone::Died(pid)), "died"));
        std::fs::remove_file(&d).unwrap();
    }
}
