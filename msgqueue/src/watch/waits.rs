//! The four waits the role files wrap their calls in: [`PeerWatch::send_sysv`],
//! [`PeerWatch::recv_sysv`], [`PeerWatch::send_posix`], [`PeerWatch::recv_posix`]. Each
//! retries EINTR, notices a full queue (M6, `limits::Full`), narrates a long wait on it as
//! it happens (`common::stall`), and turns a dead, absent, stalled or refusing peer into
//! a value instead of a wait that never ends. **A first reading may skip this file.**

use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::narrate;
use common::stall::Stall;
use common::stream::Delivery;
use libc::c_int;
use nix::errno::Errno;
use nix::mqueue::MqdT;
use nix::sys::time::TimeSpec;

use super::{Gone, PeerWatch, CHECK_EVERY};
use crate::limits::Full;
use crate::posix::deadline;
use crate::sysv::{errno_name, failure, queue_gone, SysvQueue};

/// What a failed System V call means for the wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum After {
    /// Interrupted: call again.
    Retry,
    /// The watchdog removed the queue because the peer is gone.
    PeerGone,
}

impl PeerWatch {
    /// Runs one call that may block, numbered for the watchdog; `bounded`: the watchdog
    /// ends it after `--timeout` even while the peer lives; `sending`: a blocking send.
    fn during<T>(&self, bounded: bool, sending: bool, call: impl FnOnce() -> T) -> T {
        let n = self.calls.load(Ordering::Relaxed) + 1;
        self.calls.store(n, Ordering::Relaxed);
        self.call_bounded.store(bounded, Ordering::Relaxed);
        self.in_send.store(sending, Ordering::Relaxed);
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
        // The peer may have removed the queue itself, on its way out: a reader that
        // refused this writer's Hello marks its line "refused" first.
        let found = match self.verdict() {
            Some(g) => Some((g, "the watchdog removed the queue")),
            None => self.judge(Duration::ZERO, false).map(|g| {
                self.record(g.clone());
                (g, "the queue was removed")
            }),
        };
        match found {
            Some((g, how)) => {
                let how = match g {
                    Gone::Refused(_) | Gone::Left(_) => "it removed the queue",
                    _ => how,
                };
                // EIDRM: the call was waiting in the queue; EINVAL: it came after.
                let woke = match e.raw_os_error() {
                    Some(libc::EIDRM) => "which woke",
                    _ => "before",
                };
                narrate!(
                    "{}; {how}, {woke} {call} ({}: {e})",
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
            let r = self.during(true, flags == 0, || call(flags));
            // A long wait the watchdog told ends here (one load per call): with room, said;
            // with the queue gone, not (the verdict says why).
            if self.told.load(Ordering::Relaxed) {
                self.told.store(false, Ordering::Relaxed);
                if r.is_ok() {
                    self.stalled(|s| s.end());
                }
            }
            match r {
                Ok(()) => return Ok(Delivery::Sent),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    full.sysv(q, self.peer, self.absent())?
                }
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
            let bounded = self.bounded.load(Ordering::Relaxed);
            match self.during(bounded, false, || call(msgtyp)) {
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
                call(Some(&deadline(self.slice(since.is_some()))?))
            } else {
                call(None)
            };
            match r {
                Ok(()) => {
                    if since.is_some() {
                        self.stalled(|s| s.end());
                    }
                    return Ok(Delivery::Sent);
                }
                Err(Errno::EAGAIN) => full.posix(q, self.peer, self.absent())?,
                Err(Errno::ETIMEDOUT) => {
                    // A whole 100 ms slice without room: a wait (M6), told once it is long.
                    let why = self.no_reader_yet();
                    self.stalled(|s| {
                        s.begin();
                        s.set_reason(why);
                        s.tick();
                    });
                    if let Some(g) = self.waited(&mut since, true) {
                        narrate!("the queue was full, and {}", g.describe(self.peer));
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
                    let bounded = self.bounded.load(Ordering::Relaxed);
                    if let Some(g) = self.waited(&mut since, bounded) {
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

    /// Runs `f` on a writer's [`Stall`] (POSIX: the main thread's own waits).
    fn stalled(&self, f: impl FnOnce(&mut Stall)) {
        if let Some(stall) = &self.stall {
            f(&mut stall.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }

    /// How long the next `mq_timedsend` may sleep: 100 ms, or less while `waiting` when
    /// the [`Stall`] is about to have something to say (a wait is noticed after its first
    /// slice, so the times said are at most 0.1 s short).
    fn slice(&self, waiting: bool) -> Duration {
        let mut slice = CHECK_EVERY;
        if waiting {
            self.stalled(|s| {
                if let Some(d) = s.until_tell() {
                    slice = d.clamp(Duration::from_millis(1), CHECK_EVERY);
                }
            });
        }
        slice
    }
}
