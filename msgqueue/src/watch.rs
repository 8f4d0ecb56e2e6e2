//! The peer watch: who the peer is, whether it is still alive, and what every wait does
//! when it is not. **A first reading may skip this file**: the role files wrap each
//! `msgsnd`/`msgrcv`/`mq_send`/`mq_timedreceive` call in one of its four waits
//! ([`PeerWatch::send_sysv`], [`PeerWatch::recv_sysv`], [`PeerWatch::send_posix`],
//! [`PeerWatch::recv_posix`]), which retry EINTR, notice a full queue (M6) and turn a dead
//! or absent peer into a value instead of a wait that never ends.
//!
//! One [`PeerWatch`] per process knows everything about the peer:
//! - **who is there**: the pair file's two lines ([`PairFile`]: `writer 1234 running
//!   start 81234567`, `reader 1240 finished start 81234570`);
//! - **whether it lives**: the peer's line records its pid *and* its start time (clock
//!   ticks after boot, field 22 of `/proc/<pid>/stat`: `common::peer::Identity`). The peer
//!   lives while a process with that pid exists (`kill(pid, 0)`), is not a zombie, and
//!   started at that time: a pid is reused once its process is gone, and an unrelated
//!   process that got the number must not keep a killed peer "alive";
//! - **how long a wait may last**: a peer that never came is waited for `--timeout`; a
//!   live peer that makes no progress too, when the wait is one a live peer cannot
//!   explain: a send into a full queue (the reader takes nothing), and in stream and
//!   pingpong every wait (text mode waits for a human, as long as it takes);
//! - **the verdict**: why a wait ended without a message ([`Gone`]), kept for the error;
//! - **what to remove** when the peer is gone: the queue and the pair file, once.
//!
//! System V calls have no timeout, so a thread ([`PeerWatch::watchdog`]) checks the peer
//! every 100 ms while the main thread is blocked, and removes the queue when the peer is
//! gone: the blocked call returns EIDRM at once. POSIX calls have timeouts, so the POSIX
//! waits check the peer themselves between 100 ms slices.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::narrate;
use common::peer::{start_time, Identity};
use common::setup::Role;
use common::stream::Delivery;
use libc::c_int;
use nix::errno::Errno;
use nix::mqueue::MqdT;
use nix::sys::time::TimeSpec;

use crate::limits::Full;
pub use crate::pairfile::{PairFile, Slot};
use crate::posix::deadline;
use crate::sysv::{errno_name, failure, queue_gone, SysvQueue};

/// How often liveness is checked while blocked.
pub const CHECK_EVERY: Duration = Duration::from_millis(100);
/// How long a reader keeps waiting after its writer finished cleanly.
pub const AFTER_FINISH: Duration = Duration::from_millis(500);
/// Why a wait ended without a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gone {
    /// The peer is recorded as running but the process it names is gone (killed): no
    /// process has its pid, or the one that has it started at another time (a reused pid).
    Died(i32),
    /// No peer was recorded within `--timeout` while this side was blocked.
    NeverCame,
    /// The peer is running but this side's wait made no progress for `--timeout`.
    Stalled(i32, Duration),
    /// The peer finished cleanly and nothing more came for this side.
    Finished(i32),
}

impl Gone {
    /// A sentence for narration and errors.
    pub fn describe(&self, peer: Role) -> String {
        match self {
            Gone::Died(pid) => format!("the {peer} (pid {pid}) died without finishing"),
            Gone::NeverCame => format!("no {peer} came within --timeout"),
            Gone::Stalled(pid, t) => format!(
                "the {peer} (pid {pid}) is running but made no progress for --timeout ({t:?})"
            ),
            Gone::Finished(pid) => {
                format!("the {peer} (pid {pid}) finished and nothing more arrived")
            }
        }
    }
}

/// Why a recorded process is not alive, for narration: "pid N no longer runs", or, for a
/// reused pid, that the process with that number now started at another time.
pub fn not_alive(id: Identity) -> String {
    match start_time(id.pid) {
        Some(now) if id.start != 0 && now != id.start && common::peer::alive(id.pid) => format!(
            "pid {} is now another process (it started at tick {now}, the recorded one at tick {}: a reused pid)",
            id.pid, id.start
        ),
        _ => format!("pid {} no longer runs", id.pid),
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
    /// The pair file: its two slots say who is there.
    pair: PairFile,
    /// Whose slot to watch.
    peer: Role,
    /// `--timeout`: how long to wait for a peer that has not shown up, or that shows no
    /// progress in a bounded wait.
    timeout: Duration,
    /// Stream and pingpong: every wait is bounded by `--timeout`, a live peer's too (its
    /// messages come at machine speed); text mode waits as long as a human types.
    bounded: bool,
    /// Blocking System V calls made so far (written by the main thread only).
    calls: AtomicU64,
    /// Non-zero while the main thread is inside a call that may block: the call's number,
    /// so the watchdog can tell one long call from many short ones.
    in_call: AtomicU64,
    /// Whether the call in progress is bounded by `--timeout` even with a live peer.
    call_bounded: AtomicBool,
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
    /// Opens (creating, mode 0600) the pair file at `path` ([`PairFile::open`]) and
    /// watches the slot of `me`'s peer.
    pub fn open(path: &Path, me: Role, timeout: Duration) -> Result<PeerWatch> {
        Ok(PeerWatch {
            pair: PairFile::open(path)?,
            peer: me.peer(),
            timeout,
            bounded: false,
            calls: AtomicU64::new(0),
            in_call: AtomicU64::new(0),
            call_bounded: AtomicBool::new(false),
            verdict: Mutex::new(None),
            remove: Mutex::new(None),
            stop: AtomicBool::new(false),
        })
    }

    /// Bounds every wait by `--timeout`, a live peer's too (stream and pingpong).
    pub fn bounded(self, bounded: bool) -> PeerWatch {
        PeerWatch { bounded, ..self }
    }

    /// The pair file.
    pub fn pair(&self) -> &PairFile {
        &self.pair
    }

    /// Where the pair file is.
    pub fn path(&self) -> &Path {
        self.pair.path()
    }

    /// Whom this side watches.
    pub fn peer(&self) -> Role {
        self.peer
    }

    /// Reads `role`'s slot of the pair file.
    pub fn read(&self, role: Role) -> Slot {
        self.pair.read(role)
    }

    /// Writes `role`'s slot of the pair file.
    pub fn write(&self, role: Role, slot: Slot) -> Result<()> {
        self.pair.write(role, slot)
    }

    /// Records this side as finished: a peer that polls (the typed reader) then knows that
    /// nothing more will come, and a later reader that the messages left are a whole session.
    pub fn mark_finished(&self) -> Result<()> {
        self.write(self.peer.peer(), Slot::Finished(Identity::me()))
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

    /// Checks the peer, given how long this side has been blocked in a wait that a live
    /// peer may make as long as it likes (text mode). `None`: keep waiting.
    pub fn check(&self, blocked: Duration) -> Option<Gone> {
        self.judge(blocked, false)
    }

    /// Checks the peer, given how long this side has been blocked; `bounded`: a live peer
    /// that made no progress for `--timeout` ends the wait too. `None`: keep waiting.
    pub fn judge(&self, blocked: Duration, bounded: bool) -> Option<Gone> {
        match self.read(self.peer) {
            Slot::Running(id) if !id.alive() => Some(Gone::Died(id.pid)),
            Slot::Running(id) if bounded && blocked >= self.timeout => {
                Some(Gone::Stalled(id.pid, self.timeout))
            }
            Slot::Running(_) => None,
            Slot::Finished(id) if blocked >= AFTER_FINISH => Some(Gone::Finished(id.pid)),
            Slot::Finished(_) => None,
            Slot::Empty if blocked >= self.timeout => Some(Gone::NeverCame),
            Slot::Empty => None,
        }
    }

    /// Checks the peer after a timed wait ran out; `since` is when the first one did.
    pub fn waited(&self, since: &mut Option<Instant>, bounded: bool) -> Option<Gone> {
        self.judge(since.get_or_insert_with(Instant::now).elapsed(), bounded)
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
            Some(Gone::Stalled(..)) => "made no progress for --timeout",
            Some(_) => "died",
            None => "went away",
        }
    }

    /// Keeps the verdict for the error that follows.
    pub fn record(&self, g: Gone) {
        *self.verdict.lock().unwrap_or_else(|p| p.into_inner()) = Some(g);
    }

    /// The peer is gone: unless it finished cleanly (then what it left is this side's to
    /// take, and to remove), remove what the pair owned: nobody will use it (the same as
    /// the System V watchdog does); keep the verdict.
    pub fn bury(&self, g: Gone) {
        if !matches!(g, Gone::Finished(_)) {
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
            let Some(g) = self.judge(blocked, self.call_bounded.load(Ordering::Relaxed)) else {
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

    /// Runs one call that may block, numbered for the watchdog; `bounded`: the watchdog
    /// ends it after `--timeout` even while the peer lives.
    fn during<T>(&self, bounded: bool, call: impl FnOnce() -> T) -> T {
        let n = self.calls.load(Ordering::Relaxed) + 1;
        self.calls.store(n, Ordering::Relaxed);
        self.call_bounded.store(bounded, Ordering::Relaxed);
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
    /// narrated once and then waited for, at most `--timeout` while nothing is taken (a
    /// blocking msgsnd returns as soon as there is room); a peer gone is
    /// [`Delivery::PeerGone`].
    pub fn send_sysv(
        &self,
        q: SysvQueue,
        full: &mut Full,
        mut call: impl FnMut(c_int) -> io::Result<()>,
    ) -> Result<Delivery> {
        loop {
            let flags = full.sysv_flags();
            match self.during(true, || call(flags)) {
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
            match self.during(self.bounded, || call(msgtyp)) {
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
    /// a time, so a dead reader is noticed between slices, and a queue that stays full
    /// for `--timeout` ends the wait.
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
                    if let Some(g) = self.waited(&mut since, true) {
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
                    if let Some(g) = self.waited(&mut since, self.bounded) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watch_judges_a_dead_a_finished_and_an_absent_peer() {
        let d = std::env::temp_dir().join(format!("msgq-unit-judge-{}", std::process::id()));
        let w = PeerWatch::open(&d, Role::Reader, Duration::from_secs(1)).unwrap();
        assert_eq!(w.peer(), Role::Writer);
        // Nobody yet: wait until --timeout.
        assert_eq!(w.check(Duration::from_millis(999)), None);
        assert_eq!(w.check(Duration::from_secs(1)), Some(Gone::NeverCame));
        // A live writer is waited for however long.
        w.write(Role::Writer, Slot::Running(Identity::me()))
            .unwrap();
        assert_eq!(w.check(Duration::from_secs(3600)), None);
        // A finished one, for AFTER_FINISH more.
        w.write(Role::Writer, Slot::Finished(Identity { pid: 1, start: 0 }))
            .unwrap();
        assert_eq!(w.check(Duration::ZERO), None);
        assert_eq!(w.check(AFTER_FINISH), Some(Gone::Finished(1)));
        // A dead one at once; burying it runs the removal once and keeps the verdict.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        w.write(Role::Writer, Slot::Running(Identity { pid, start: 0 }))
            .unwrap();
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

    /// A live process whose pid is recorded with another start time is a reused pid: the
    /// recorded peer is dead. A live peer that is the recorded one bounds a wait only
    /// where the wait is bounded (a full queue; stream and pingpong).
    #[test]
    fn a_reused_pid_is_dead_and_a_stalled_peer_ends_a_bounded_wait() {
        let d = std::env::temp_dir().join(format!("msgq-unit-reuse-{}", std::process::id()));
        let w = PeerWatch::open(&d, Role::Writer, Duration::from_secs(1)).unwrap();
        let me = Identity::me();
        let reused = Identity {
            start: me.start + 1,
            ..me
        };
        w.write(Role::Reader, Slot::Running(reused)).unwrap();
        assert_eq!(w.check(Duration::ZERO), Some(Gone::Died(me.pid)));
        assert!(
            not_alive(reused).contains("a reused pid"),
            "{}",
            not_alive(reused)
        );
        w.write(Role::Reader, Slot::Running(me)).unwrap();
        assert_eq!(w.judge(Duration::from_secs(3600), false), None);
        assert_eq!(w.judge(Duration::from_millis(999), true), None);
        let stalled = w.judge(Duration::from_secs(1), true);
        assert_eq!(stalled, Some(Gone::Stalled(me.pid, Duration::from_secs(1))));
        let said = stalled.unwrap().describe(Role::Reader);
        assert!(said.contains("made no progress for --timeout"), "{said}");
        std::fs::remove_file(&d).unwrap();
    }
}
