//! The peer watch: who the peer is, whether it is still alive, and what every wait does
//! when it is not. **A first reading may skip this file**: the role files wrap each
//! `msgsnd`/`msgrcv`/`mq_send`/`mq_timedreceive` call in one of its four waits
//! ([`PeerWatch::send_sysv`], [`PeerWatch::recv_sysv`], [`PeerWatch::send_posix`],
//! [`PeerWatch::recv_posix`], in `watch/waits.rs`), which retry EINTR, notice a full queue
//! (M6) and turn a dead or absent peer into a value instead of a wait that never ends.
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
//! - **the verdict**: why a wait ended without a message ([`Gone`]), kept for the error:
//!   a reader that refused the writer's Hello marks its line `refused` ([`Gone::Refused`]),
//!   as does a writer that refused the queue a reader made (`depth.rs`), and a peer that
//!   never came may be waiting in the other flavour (`elsewhere.rs`);
//! - **what to remove** when the peer is gone: the queue and the pair file, once;
//! - **a writer's long waits** on a full queue, narrated as they start and end
//!   (`common::stall::Stall`): the watchdog sees a `msgsnd` blocked in the kernel, and a
//!   POSIX send sees each 100 ms slice of `mq_timedsend` run out.
//!
//! System V calls have no timeout, so a thread ([`PeerWatch::watchdog`]) checks the peer
//! every 100 ms while the main thread is blocked, and removes the queue when the peer is
//! gone: the blocked call returns EIDRM at once. POSIX calls have timeouts, so the POSIX
//! waits check the peer themselves between 100 ms slices.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::peer::{start_time, Identity};
use common::session::WriterSession;
use common::setup::Role;
use common::stall::Stall;

pub use crate::pairfile::{PairFile, Slot};
pub(crate) use waits::After;

mod waits;

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
    /// No peer was recorded within `--timeout` while this side was blocked; what a queue of
    /// the same name in the other flavour has, if there is one (`elsewhere.rs`).
    NeverCame(Option<String>),
    /// The peer is running but this side's wait made no progress for `--timeout`.
    Stalled(i32, Duration),
    /// The peer finished cleanly and nothing more came for this side.
    Finished(i32),
    /// The reader refused this writer's Hello (a flag of its own contradicts it) and left.
    Refused(i32),
    /// The reader stopped before the end (Ctrl-C, an error) and removed the queue.
    Left(i32),
}

impl Gone {
    /// A sentence for narration and errors.
    pub fn describe(&self, peer: Role) -> String {
        match self {
            Gone::Died(pid) => format!("the {peer} (pid {pid}) died without finishing"),
            Gone::NeverCame(None) => format!("no {peer} came within --timeout"),
            Gone::NeverCame(Some(other)) => {
                format!("no {peer} came within --timeout, but {other}")
            }
            Gone::Stalled(pid, t) => format!(
                "the {peer} (pid {pid}) is running but made no progress for --timeout ({t:?})"
            ),
            Gone::Finished(pid) => {
                format!("the {peer} (pid {pid}) finished and nothing more arrived")
            }
            Gone::Refused(pid) if peer == Role::Writer => format!(
                "the writer (pid {pid}) refused this queue and left: it does not have the shape the writer asks for (its --queue-depth; its own output says why)"
            ),
            Gone::Refused(pid) => format!(
                "the {peer} (pid {pid}) refused this writer's Hello and left (its own output says why)"
            ),
            Gone::Left(pid) => format!(
                "the {peer} (pid {pid}) stopped before the end (Ctrl-C, or an error: its own output says why)"
            ),
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
    /// messages come at machine speed); text mode waits as long as a human types. A reader
    /// sets it from the writer's Hello ([`PeerWatch::set_bounded`]).
    bounded: AtomicBool,
    /// The pair's `--name` and flavour, to look for the other flavour's queue (`elsewhere.rs`).
    named: Option<(String, bool)>,
    /// A writer's long waits on a full queue (M6), narrated as they happen: by the watchdog
    /// (System V, whose blocked `msgsnd` it sees) or between `mq_timedsend` slices (POSIX).
    stall: Option<Mutex<Stall>>,
    /// Whether the call in progress is a send (the watchdog times only those).
    in_send: AtomicBool,
    /// The watchdog narrated a long wait of the send in progress: the main thread, whose
    /// call returns first, says how long it lasted (`send_sysv`).
    told: AtomicBool,
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
            bounded: AtomicBool::new(false),
            named: None,
            stall: None,
            in_send: AtomicBool::new(false),
            told: AtomicBool::new(false),
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
        self.set_bounded(bounded);
        self
    }

    /// Changes whether waits are bounded (a reader, once the Hello said the mode).
    pub fn set_bounded(&self, bounded: bool) {
        self.bounded.store(bounded, Ordering::Relaxed);
    }

    /// The pair's `--name` and flavour, so a wait for nobody can say what the other
    /// flavour has; a writer also narrates its long waits on a full queue.
    pub fn named(self, name: &str, posix: bool) -> PeerWatch {
        let call = if posix { "mq_timedsend()" } else { "msgsnd()" };
        let stall = (self.peer == Role::Reader).then(|| {
            Mutex::new(Stall::new(
                call,
                "the queue is full",
                "the queue was full",
                "M6",
            ))
        });
        PeerWatch {
            named: Some((name.to_string(), posix)),
            stall,
            ..self
        }
    }

    /// What a queue of this name in the other flavour has (`elsewhere.rs`), if any.
    pub fn elsewhere(&self) -> Option<String> {
        let (name, posix) = self.named.as_ref()?;
        crate::elsewhere::other_flavour(name, *posix, self.peer)
    }

    /// For a waiting line: "no reader has opened this queue yet", and what the other
    /// flavour has; `None` when the peer is recorded.
    pub fn absent(&self) -> Option<String> {
        if self.read(self.peer) != Slot::Empty {
            return None;
        }
        let peer = self.peer;
        Some(match self.elsewhere() {
            Some(other) => format!("no {peer} has opened this queue yet, but {other}"),
            None => format!("no {peer} has opened this queue yet"),
        })
    }

    /// Why a writer's send waits, when it is not "the reader is not taking anything": no
    /// reader has opened the queue yet (M1: the messages wait in the kernel for one).
    pub(crate) fn no_reader_yet(&self) -> Option<&'static str> {
        (self.read(Role::Reader) == Slot::Empty)
            .then_some("no reader has opened the queue yet, so nothing is taken out")
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
            Slot::Refused(id) => Some(Gone::Refused(id.pid)),
            Slot::Left(id) => Some(Gone::Left(id.pid)),
            Slot::Running(id) if !id.alive() => Some(Gone::Died(id.pid)),
            Slot::Running(id) if bounded && blocked >= self.timeout => {
                Some(Gone::Stalled(id.pid, self.timeout))
            }
            Slot::Running(_) => None,
            Slot::Finished(id) if blocked >= AFTER_FINISH => Some(Gone::Finished(id.pid)),
            Slot::Finished(_) => None,
            Slot::Empty if blocked >= self.timeout => Some(Gone::NeverCame(self.elsewhere())),
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
            Some(Gone::NeverCame(_)) => "never came (--timeout)",
            Some(Gone::Refused(_)) => "refused this writer's Hello",
            Some(Gone::Left(_)) => "stopped (Ctrl-C or an error)",
            Some(Gone::Stalled(..)) => "made no progress for --timeout",
            Some(_) => "died",
            None => "went away",
        }
    }

    /// Why the reader is gone, as a writer's error: it refused the Hello (its line of the
    /// pair file says so), never came, or left (`session` says after how many messages).
    pub fn reader_gone(&self, session: &WriterSession) -> anyhow::Error {
        match self.verdict() {
            Some(Gone::Refused(pid)) => anyhow::anyhow!(
                "the reader (pid {pid}) left right after this writer's Hello ({}): it refused these settings, and its own output says why; stopping",
                session.hello().flags()
            ),
            Some(g @ Gone::NeverCame(_)) => {
                anyhow::anyhow!("{}; stopping", g.describe(Role::Reader))
            }
            _ => session.reader_left(self.how_gone()),
        }
    }

    /// At a writer's end: a reader that refused the Hello or stopped early removed the
    /// queue, which a POSIX writer never notices (no EIDRM): what it sent went nowhere.
    pub fn reader_stayed(&self, session: &WriterSession) -> Result<()> {
        match self.judge(Duration::ZERO, false) {
            Some(g @ (Gone::Refused(_) | Gone::Left(_))) => {
                self.record(g);
                Err(self.reader_gone(session))
            }
            _ => Ok(()),
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
            self.time_send(
                call != 0 && self.in_send.load(Ordering::Relaxed),
                call != last_call,
            );
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

    /// The watchdog's look at a writer's send (System V): a blocking `msgsnd` it sees in
    /// progress begins a wait (`new`: another call than at the last look), one it sees
    /// again continues it, and [`Stall`] narrates it once it passes 0.5 s; the main thread
    /// ends a told wait as its call returns ([`PeerWatch::send_sysv`]), and no send in progress
    /// ends any other. A wait is seen at most 100 ms after it began, so the times said are
    /// at most 0.1 s short; no clock is read on the send path.
    fn time_send(&self, sending: bool, new: bool) {
        let Some(stall) = &self.stall else { return };
        let mut stall = stall.lock().unwrap_or_else(|p| p.into_inner());
        if !sending || new {
            stall.end();
        }
        if sending {
            stall.begin();
            stall.set_reason(self.no_reader_yet());
            stall.tick();
            // Told now (begun, nothing more to say): the call's return ends it.
            if stall.until_tell().is_none() {
                self.told.store(true, Ordering::Relaxed);
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
        assert_eq!(w.check(Duration::from_secs(1)), Some(Gone::NeverCame(None)));
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

    /// A reader that refused the writer's Hello is a verdict at once, whatever the wait:
    /// the writer names it instead of "someone removed the queue".
    #[test]
    fn a_reader_that_refused_the_hello_is_a_verdict_at_once() {
        let d = std::env::temp_dir().join(format!("msgq-unit-refused-{}", std::process::id()));
        let w = PeerWatch::open(&d, Role::Writer, Duration::from_secs(30)).unwrap();
        let me = Identity::me();
        w.write(Role::Reader, Slot::Refused(me)).unwrap();
        let g = w.judge(Duration::ZERO, false).unwrap();
        assert_eq!(g, Gone::Refused(me.pid));
        let said = g.describe(Role::Reader);
        assert!(said.contains("refused this writer's Hello"), "{said}");
        w.record(g);
        assert_eq!(w.how_gone(), "refused this writer's Hello");
        // A watch that does not know its name has no other flavour to look at.
        assert_eq!(w.elsewhere(), None);
        std::fs::remove_file(&d).unwrap();
    }
}
