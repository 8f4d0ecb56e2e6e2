//! Waiting: what a side does when the ring is empty (consumer) or full (producer).
//!
//! [`Wait`] chooses what a side does when the ring is empty (consumer) or full (producer):
//! - `spin`: re-read the index in a loop with a CPU pause hint ([`std::hint::spin_loop`]).
//!   Fastest hand-over (a cache-line transfer), and one CPU kept at 100 %.
//! - `block`: sleep in the kernel with `futex(FUTEX_WAIT)` on the low 32 bits of the index
//!   the other side will change. A futex word must be 32 bits; the index is 64. The low
//!   half changes on every publish (an index moves by at most `C` < 2^32 while we sleep).
//! - `adaptive` (default): spin for [`SPIN_BEFORE_SLEEP`], then block.
//!
//! A sleeper announces itself in its own "sleeps" flag; the other side calls `FUTEX_WAKE`
//! only when it reads that flag set, so a publish costs no system call while nobody
//! sleeps. Lost wake-ups are prevented by the classic order, with sequentially consistent
//! operations on both sides (see `Producer::publish` and `Pacer::pause`):
//!
//! ```text
//!   sleeper                                  waker
//!   flag = 1                   (SeqCst)      index = new            (SeqCst)
//!   if index == seen           (SeqCst)      if flag == 1           (SeqCst)
//!       futex_wait(&index, seen)                 futex_wake(&index)
//! ```
//!
//! In the single total order of SeqCst operations, either the sleeper's `flag = 1` comes
//! before the waker's read of the flag (so the waker sees 1 and wakes), or the waker's read
//! comes first, and then its earlier `index = new` also precedes the sleeper's re-read, so
//! the sleeper sees the new index and does not sleep. The remaining window, where the waker
//! calls FUTEX_WAKE before the sleeper is inside FUTEX_WAIT, is closed by the kernel:
//! FUTEX_WAIT compares the word with `seen` under the futex bucket lock and returns EAGAIN
//! at once if it has changed. The futex calls are the shared (not `_PRIVATE`) variants:
//! the kernel keys them by the physical page, which two processes' mappings share.
//!
//! **A side that only spins says so, and spares its peer the fence.** On x86 the waker's
//! SeqCst store waits until every earlier store of its core has reached the cache; in a
//! stream of small frames whose consumer has caught up, that includes the store of the
//! stamp the consumer is polling, so each publish waited for the line to come back from
//! the other core (`perf` on an Intel Xeon: more than half of a 64-byte stream writer's
//! time, on the instruction after that store). A side that waits with `spin` never
//! sleeps, so nothing ever needs to wake it: its end stores [`SPINS`] in its own "sleeps"
//! flag once, and a waker that reads [`SPINS`] there (a plain load of a line it keeps
//! cached) publishes with a Release store and no flag check, as a bare spinning ring does.
//! The word is never changed back: an end that has said it spins keeps spinning even if
//! asked to wait otherwise later (`Consumer::set_wait`, `Producer::set_wait`), because
//! its peer may already be publishing without the fence and would not wake it. A peer
//! that writes [`SPINS`] into our flag falsely can only make itself miss wake-ups.
//!
//! Every sleep lasts at most [`SLEEP_SLICE`] (100 ms), and every such slice (also while
//! spinning) the waiter checks that the peer process still exists, that the header's
//! invariant words (magic, version, capacity, session, role, pids) are unchanged, and the
//! idle limit, so a peer killed with `kill -9` is reported as [`RingError::PeerGone`]
//! instead of a hang, and a scribbled header as [`RingError::Corrupt`]. While frames flow,
//! every endpoint audits the header every [`AUDIT_EVERY`] frames too.

use std::cell::Cell;
use std::hint::spin_loop;
use std::ptr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::layout::{view_of, HeaderView, Inner, LOW_HALF, RING_MAGIC};
use super::{EndOpts, RingError, Wait};
use crate::timing::now_ns;

/// How long `adaptive` spins before it sleeps: about the cost of one futex sleep and
/// wake-up, so a peer that answers sooner never pays for a system call.
pub const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(20);
/// Longest single sleep; also how often a waiter checks that the peer still exists.
pub const SLEEP_SLICE: Duration = Duration::from_millis(100);

/// The "low 32 bits" half of an index: the futex word.
pub(super) fn low_word(index: &AtomicU64) -> *const u32 {
    // AtomicU64 is 8-aligned, so either half is 4-aligned, as FUTEX_WAIT requires.
    index
        .as_ptr()
        .cast::<u32>()
        .cast_const()
        .wrapping_add(LOW_HALF)
}

///
/// Returns `Ok` on a wake-up, a timeout, EAGAIN (the word had already changed) or EINTR:
/// all mean "look again"; `Ok(true)` says the sleep lasted its whole `timeout`. Any other
/// errno is an error.
///
/// # Safety
/// `word` must be 4-byte aligned and point into mapped memory for the duration of the call.
pub(super) unsafe fn futex_wait(
    word: *const u32,
    expected: u32,
    timeout: Duration,
) -> Result<bool, RingError> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is aligned and mapped (caller); `ts` lives across the call; uaddr2 and
    // val3 are unused by FUTEX_WAIT. Not FUTEX_PRIVATE_FLAG: the word is shared between
    // processes, and a private futex is keyed by this process's address space only.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word,
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            ptr::null::<u32>(),
            0u32,
        )
    };
    if r == -1 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ETIMEDOUT) => Ok(true),
            Some(libc::EAGAIN | libc::EINTR) => Ok(false),
            _ => Err(RingError::Invalid(format!("futex FUTEX_WAIT: {e}"))),
        };
    }
    Ok(false)
}

/// FUTEX_WAKE: wakes the (at most one) process sleeping on `word`. Its result (how many
/// woke) is not needed: a waker that finds no sleeper has nothing to do.
/// See [futex(2)](https://man7.org/linux/man-pages/man2/futex.2.html).
///
/// # Safety
/// `word` must be 4-byte aligned and point into mapped memory.
pub(super) unsafe fn futex_wake(word: *const u32) {
    // SAFETY: aligned and mapped (caller); FUTEX_WAKE only reads the address as a key.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word,
            libc::FUTEX_WAKE,
            1i32,
            ptr::null::<libc::timespec>(),
            ptr::null::<u32>(),
            0u32,
        )
    };
}

/// Whether process `pid` is gone: no such process, or a zombie (see [`crate::peer::alive`]).
pub fn peer_gone(pid: i32) -> bool {
    !crate::peer::alive(pid)
}

/// One waiting episode's bookkeeping.
pub(super) struct Waiting {
    /// When the episode began (CLOCK_MONOTONIC ns); 0 until the clock is first read, which
    /// is deferred so that a wait that ends within a few spins costs no clock read at all.
    start: u64,
    /// When the peer was last checked.
    checked: u64,
    /// Pause hints so far, to read the clock only every so often.
    pub(super) spins: u64,
    /// Spins that poll again at once, without the pause hint ([`Waiting::poll_hard`]).
    hard: u64,
    /// Adaptive: the spin budget is spent; sleep from now on.
    sleepy: bool,
}

/// The wait strategy in action.
pub(super) struct Pacer {
    /// What the side was configured with.
    opts: EndOpts,
    /// The header's invariant words as first seen complete: what every audit compares.
    expect: Cell<Option<HeaderView>>,
    /// Frames this endpoint moved, to audit the header every [`AUDIT_EVERY`].
    frames: Cell<u64>,
}

/// Every this many frames an endpoint re-reads the header's invariant words (and on every
/// periodic check of a wait), so a scribbled header is reported within a bounded time.
pub const AUDIT_EVERY: u64 = 1024;

/// A "sleeps" flag's value while its side sleeps (0 while it is awake).
pub const SLEEPS: u32 = 1;

/// A "sleeps" flag's value once its side has said it only spins, for good (module docs).
pub const SPINS: u32 = 2;

/// Spins between two clock reads: the clock costs ~20 ns, a pause hint ~10-40 ns.
const SPINS_PER_CLOCK: u64 = 64;

/// Spins of a wait for an answer that poll again at once, without a pause hint (a
/// consumer marked by [`super::Consumer::awaits_answers`]): on an x86 core a pause hint
/// (PAUSE) lasts tens of nanoseconds (140 cycles on Intel since Skylake), and a line that
/// arrives while the core is in one waits for it to end: on average half a pause per
/// hop, a full one per round trip. A pingpong's answer usually comes within a
/// microsecond; these polls (a load the core's cache answers, a few nanoseconds each)
/// cover about that long, and a slower answer is waited for with the pause hint, which
/// spares a sibling hardware thread the core's resources. Nor do these polls read the
/// clock or the producer's index (the periodic checks start after them): either would
/// sit between two polls. A stream's consumer keeps pausing: it would take the polled
/// line back from the producer while it is still writing the record.
pub const HARD_POLLS: u64 = 512;

impl Waiting {
    /// Whether the next pause sleeps (block, or adaptive past its spin budget).
    pub(super) fn sleepy(&self) -> bool {
        self.sleepy
    }

    /// Makes the first [`HARD_POLLS`] spins of this wait poll again at once, with no pause
    /// hint, for a side that waits for an answer (pingpong) and wants it the moment its
    /// line arrives (see [`HARD_POLLS`]); the spins after them pause as any others do.
    pub(super) fn poll_hard(&mut self) {
        self.hard = HARD_POLLS;
    }

    /// Whether the next spin is one of the hard polls ([`Waiting::poll_hard`]).
    pub(super) fn polling_hard(&self) -> bool {
        self.spins < self.hard
    }
}

impl Pacer {
    /// Changes the wait strategy (a reader that follows the writer's Hello). An end that
    /// spins keeps spinning: its peer may publish without waking it (module docs).
    pub(super) fn set_wait(&mut self, wait: Wait) {
        if self.opts.wait != Wait::Spin {
            self.opts.wait = wait;
        }
    }

    /// Whether this end waits by spinning only, for good: its end stores [`SPINS`] in its
    /// own "sleeps" flag ([`Pacer::declare`]).
    pub(super) fn spins(&self) -> bool {
        self.opts.wait == Wait::Spin
    }

    /// Stores [`SPINS`] in this end's own "sleeps" `flag` if it spins (module docs).
    pub(super) fn declare(&self, flag: &AtomicU32) {
        if self.spins() {
            flag.store(SPINS, Ordering::Release);
        }
    }

    /// Stores our `index` (a producer's head, a consumer's tail) and wakes the peer with
    /// `FUTEX_WAKE` only if its sleep `flag` is set: the waker's half of the lost-wake-up
    /// argument (module docs), SeqCst store then SeqCst load, whatever our own wait (the
    /// peer's may differ: a reader given its own `--wait` keeps it). `index` must be an
    /// index in the live region (its low half the futex word the peer sleeps on).
    /// A peer whose flag says [`SPINS`] never sleeps: a Release store, no fence, no check.
    pub(super) fn publish(&self, index: &AtomicU64, value: u64, flag: &AtomicU32) {
        if flag.load(Ordering::Relaxed) == SPINS {
            index.store(value, Ordering::Release);
            return;
        }
        index.store(value, Ordering::SeqCst);
        if flag.load(Ordering::SeqCst) == SLEEPS {
            // SAFETY: the low half of an AtomicU64 in the live region: aligned, mapped.
            unsafe { futex_wake(low_word(index)) };
        }
    }

    /// A pacer for an endpoint of `region`; a header already complete is the one every
    /// audit compares with (else the first complete one an audit sees).
    pub(super) fn new(opts: EndOpts, region: &Inner) -> Pacer {
        let now = view_of(region.header());
        let complete = now.magic == RING_MAGIC && now.ready;
        Pacer {
            opts,
            expect: Cell::new(complete.then_some(now)),
            frames: Cell::new(0),
        }
    }

    /// Counts one frame; every [`AUDIT_EVERY`] frames, audits the header.
    pub(super) fn tick(&self, region: &Inner) -> Result<(), RingError> {
        let n = self.frames.get() + 1;
        self.frames.set(n);
        if n.is_multiple_of(AUDIT_EVERY) {
            return self.audit(region, "while frames were moving");
        }
        Ok(())
    }

    /// check: the header's invariant words (magic, version, ready, capacity, length,
    /// session, role, pids) are what they were when this endpoint first saw the header
    /// complete; only the opener's pid may change, once, from 0 when the peer attaches.
    /// Anything else is a scribble by a buggy or hostile process: "corrupt shared region".
    pub(super) fn audit(&self, region: &Inner, when: &str) -> Result<(), RingError> {
        let now = view_of(region.header());
        let Some(mut was) = self.expect.get() else {
            if now.magic == RING_MAGIC && now.ready {
                self.expect.set(Some(now));
            }
            return Ok(());
        };
        if was.opener_pid == 0 && now.opener_pid != 0 {
            was.opener_pid = now.opener_pid;
            self.expect.set(Some(was));
        }
        let words: [(&str, u64, u64); 9] = [
            ("magic", was.magic, now.magic),
            ("version", was.version.into(), now.version.into()),
            ("ready word", was.ready.into(), now.ready.into()),
            ("capacity", region.capacity as u64, now.capacity),
            ("region_len", was.region_len, now.region_len),
            ("session", was.session, now.session),
            (
                "creator_role",
                was.creator_role.into(),
                now.creator_role.into(),
            ),
            (
                "creator_pid",
                was.creator_pid as u64,
                now.creator_pid as u64,
            ),
            ("opener_pid", was.opener_pid as u64, now.opener_pid as u64),
        ];
        match words.iter().find(|(_, a, b)| a != b) {
            Some((word, a, b)) => Err(RingError::Corrupt(format!(
                "the header's {word} changed from {a:#x} to {b:#x} {when}"
            ))),
            None => Ok(()),
        }
    }

    pub(super) fn begin(&self) -> Waiting {
        Waiting {
            start: 0,
            checked: 0,
            spins: 0,
            hard: 0,
            sleepy: self.opts.wait == Wait::Block,
        }
    }

    /// Waits a little for `index` to move away from `seen`: one spin, or one sleep of at
    /// most SLEEP_SLICE with `flag` raised. Every SLEEP_SLICE it checks the peer, the magic
    /// and the idle limit. The caller re-reads (and checks) the index afterwards.
    pub(super) fn pause(
        &self,
        w: &mut Waiting,
        region: &Inner,
        flag: &AtomicU32,
        index: &AtomicU64,
        seen: u64,
        what: &'static str,
    ) -> Result<(), RingError> {
        w.spins += 1;
        if !w.sleepy {
            // The hard polls read no clock either: one would sit between two polls.
            if w.polling_hard() {
                return Ok(());
            }
            spin_loop();
            if !w.spins.is_multiple_of(SPINS_PER_CLOCK) {
                return Ok(());
            }
        } else {
            // The sleeper's half of the lost-wake-up argument: announce, re-check, sleep.
            flag.store(SLEEPS, Ordering::SeqCst);
            let slept_out = if index.load(Ordering::SeqCst) == seen {
                // SAFETY: the low half of an AtomicU64 in the live region: aligned, mapped.
                let r = unsafe { futex_wait(low_word(index), seen as u32, SLEEP_SLICE) };
                flag.store(0, Ordering::Relaxed);
                r?
            } else {
                flag.store(0, Ordering::Relaxed);
                false
            };
            // Woken (the peer published, most likely): the caller looks again, and no clock
            // is read, so a sleeping round trip costs the two futex calls and no more. A
            // sleep that lasted its whole slice, and every SPINS_PER_CLOCK-th wake-up (a
            // peer that keeps waking us without progress), read it and run the checks.
            if !slept_out && !w.spins.is_multiple_of(SPINS_PER_CLOCK) {
                return Ok(());
            }
            if w.start == 0 {
                // The clock starts at the first sleep that ran out: it began a slice ago.
                let slice = if slept_out {
                    SLEEP_SLICE.as_nanos() as u64
                } else {
                    0
                };
                w.start = now_ns().saturating_sub(slice);
                w.checked = w.start;
            }
        }
        let now = now_ns();
        if w.start == 0 {
            w.start = now;
            w.checked = now;
        }
        if self.opts.wait == Wait::Adaptive && now - w.start >= SPIN_BEFORE_SLEEP.as_nanos() as u64
        {
            w.sleepy = true;
        }
        if now - w.checked >= SLEEP_SLICE.as_nanos() as u64 {
            w.checked = now;
            match self.check(w, region, now, what) {
                // The peer's last act may have been to publish (an End frame, say) just
                // before it exited: if the index moved, let the caller take that first.
                Err(RingError::PeerGone { .. }) if index.load(Ordering::Acquire) != seen => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// The periodic checks of a long wait.
    fn check(
        &self,
        w: &Waiting,
        region: &Inner,
        now: u64,
        what: &'static str,
    ) -> Result<(), RingError> {
        // check: the region is still ours (a replaced or scribbled header).
        let magic = region.header().magic.load(Ordering::Relaxed);
        if magic != RING_MAGIC {
            return Err(RingError::Corrupt(format!(
                "the header's magic became {magic:#018x} while waiting for {what}"
            )));
        }
        self.audit(region, &format!("while waiting for {what}"))?;
        // check: the peer is the process we paired with: its pid exists, and the process
        // with that pid started when the recorded one did (not a reused pid).
        let peer = self.opts.peer;
        if peer.pid > 0 && !peer.alive() {
            return Err(RingError::PeerGone { pid: peer.pid });
        }
        let waited = Duration::from_nanos(now - w.start);
        if let Some(limit) = self.opts.idle_timeout {
            if waited >= limit {
                return Err(RingError::TimedOut { waited, what });
            }
        }
        Ok(())
    }
}
