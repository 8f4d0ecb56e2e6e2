//! The handshake: the creator writes the header and publishes `ready` last; the opener
//! checks it against its own configuration and writes its pid; the creator sleeps until
//! then. A first reading may skip this file: it is how the two processes meet, not how
//! a frame moves.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::layout::{region_len, view_of, HeaderView, RING_MAGIC, RING_VERSION};
use super::wait::{futex_wait, futex_wake, SLEEP_SLICE};
use super::{Direction, Region, RingError, Role};
use crate::peer::Identity;
use crate::timing::now_ns;

impl Region {
    /// The creator's first act: claims the region with its identity (start time, then
    /// pid), before anything else, so that a crash during set-up leaves a region whose
    /// creator is visibly dead, even once its pid is reused.
    pub fn begin_init(&self) {
        let h = self.inner.header();
        let me = Identity::me();
        h.ready.store(0, Ordering::Relaxed);
        h.creator_start.store(me.start, Ordering::Relaxed);
        h.creator_pid.store(me.pid as u32, Ordering::Relaxed);
    }

    /// Creator: writes the header and empty rings, then publishes `ready` last (Release),
    /// so an opener that sees `ready == 1` with Acquire sees every other field too.
    pub fn initialize(&self, role: Role, session: u64) {
        let inner = &self.inner;
        let h = inner.header();
        self.begin_init();
        for d in [Direction::WriterToReader, Direction::ReaderToWriter] {
            let c = inner.control(d);
            c.head.0.store(0, Ordering::Relaxed);
            c.tail.0.store(0, Ordering::Relaxed);
            c.consumer_sleeping.0.store(0, Ordering::Relaxed);
            c.producer_sleeping.0.store(0, Ordering::Relaxed);
        }
        h.version.store(RING_VERSION, Ordering::Relaxed);
        h.capacity.store(inner.capacity as u64, Ordering::Relaxed);
        h.region_len
            .store(region_len(inner.capacity) as u64, Ordering::Relaxed);
        h.session.store(session, Ordering::Relaxed);
        h.opener_pid.store(0, Ordering::Relaxed);
        h.opener_start.store(0, Ordering::Relaxed);
        h.creator_role.store(role as u32, Ordering::Relaxed);
        h.magic.store(RING_MAGIC, Ordering::Relaxed);
        // Publish: everything above happens-before an Acquire load that reads this 1.
        h.ready.store(1, Ordering::Release);
    }

    /// Reads the header as it is now (untrusted values).
    pub fn header(&self) -> HeaderView {
        view_of(self.inner.header())
    }

    /// Opener: checks the header against this side's own configuration.
    ///
    /// `Ok(None)`: not ready yet (all zero, or the creator is still writing: magic set but
    /// `ready` not). `Ok(Some(view))`: a complete header that matches. An error: not ours.
    pub fn check_header(&self) -> Result<Option<HeaderView>, RingError> {
        let v = self.header();
        // check: the magic says what this memory is; zero means "not written yet".
        if v.magic != RING_MAGIC {
            if v.magic == 0 && !v.ready {
                return Ok(None);
            }
            return Err(RingError::Corrupt(format!(
                "magic {:#018x} is not an ipc-study ring's ({RING_MAGIC:#018x})",
                v.magic
            )));
        }
        if !v.ready {
            return Ok(None);
        }
        // check: layout version, then sizes against our own configuration (S5).
        if v.version != RING_VERSION {
            return Err(RingError::Corrupt(format!(
                "layout version {} (this build speaks {RING_VERSION})",
                v.version
            )));
        }
        if v.capacity != self.inner.capacity as u64 {
            return Err(RingError::CapacityMismatch {
                found: v.capacity,
                expected: self.inner.capacity,
            });
        }
        if v.region_len != region_len(self.inner.capacity) as u64 {
            return Err(RingError::Corrupt(format!(
                "region_len {} does not match capacity {} (expected {})",
                v.region_len,
                v.capacity,
                region_len(self.inner.capacity)
            )));
        }
        if Role::from_u32(v.creator_role).is_none() {
            return Err(RingError::Corrupt(format!(
                "creator_role {} is neither writer (1) nor reader (2)",
                v.creator_role
            )));
        }
        Ok(Some(v))
    }

    /// Opener: writes its start time, then its pid into `opener_pid` (compare-and-swap
    /// from 0), and wakes the creator. Refuses a region created by a process of the same
    /// role, or already paired. Returns the creator's identity. Call after
    /// [`Region::check_header`] returned a view.
    pub fn attach(&self, role: Role) -> Result<Identity, RingError> {
        let v = self.check_header()?.ok_or_else(|| {
            RingError::Invalid("attach called before the header was ready".into())
        })?;
        if v.creator_role == role as u32 {
            return Err(RingError::SameRole {
                role,
                pid: v.creator_pid,
            });
        }
        let h = self.inner.header();
        let me = Identity::me();
        if let Err(other) =
            h.opener_pid
                .compare_exchange(0, me.pid as u32, Ordering::AcqRel, Ordering::Acquire)
        {
            return Err(RingError::Busy { pid: other as i32 });
        }
        // Only the winner of the compare-and-swap writes the start time; the creator waits
        // for it after it sees our pid (see `wait_for_opener`).
        h.opener_start.store(me.start, Ordering::Release);
        // SAFETY: `opener_pid` is an aligned u32 inside the live region (see `Inner::header`).
        unsafe { futex_wake(h.opener_pid.as_ptr().cast_const()) };
        Ok(v.creator())
    }

    /// Creator: waits until an opener attaches, sleeping on `opener_pid` as a futex word.
    /// Returns the opener's identity, or [`RingError::TimedOut`] after `timeout`.
    pub fn wait_for_opener(&self, timeout: Duration) -> Result<Identity, RingError> {
        let h = self.inner.header();
        let start = now_ns();
        loop {
            let pid = h.opener_pid.load(Ordering::Acquire);
            if pid != 0 {
                return Ok(Identity {
                    pid: pid as i32,
                    start: opener_start(h),
                });
            }
            let waited = Duration::from_nanos(now_ns().saturating_sub(start));
            if waited >= timeout {
                return Err(RingError::TimedOut {
                    waited,
                    what: "the peer to open the region",
                });
            }
            // check: someone may have overwritten the region while we wait.
            if h.magic.load(Ordering::Relaxed) != RING_MAGIC {
                return Err(RingError::Corrupt(
                    "the magic changed while waiting for the peer: the region was overwritten"
                        .into(),
                ));
            }
            let slice = (timeout - waited).min(SLEEP_SLICE);
            // SAFETY: `opener_pid` is an aligned u32 inside the live region.
            unsafe { futex_wait(h.opener_pid.as_ptr().cast_const(), 0, slice)? };
        }
    }
}

/// The opener's start time, which it stores right after its pid: a few loads at most.
/// 0 (the pid alone identifies it) if it died in between.
fn opener_start(h: &super::layout::SharedHeader) -> u64 {
    for _ in 0..100_000 {
        let start = h.opener_start.load(Ordering::Acquire);
        if start != 0 {
            return start;
        }
        std::hint::spin_loop();
    }
    0
}

/// How long an existing region may stay without a creator pid or a size before it counts
/// as left by a run that died while creating it: a live creator needs microseconds for
/// those steps (create, size, store its pid).
pub const SETUP_GRACE: Duration = Duration::from_secs(1);

impl HeaderView {
    /// The one header decoder for a region found in place: reads the fields from a private
    /// copy of its first bytes (a `pread` of a file, or a copy out of a mapping), little
    /// endian as the layout table says. `None` when fewer bytes than a header were given.
    pub fn decode(bytes: &[u8]) -> Option<HeaderView> {
        use super::offsets;
        let u32_at = |o: usize| -> Option<u32> {
            Some(u32::from_le_bytes(bytes.get(o..o + 4)?.try_into().ok()?))
        };
        let u64_at = |o: usize| -> Option<u64> {
            Some(u64::from_le_bytes(bytes.get(o..o + 8)?.try_into().ok()?))
        };
        Some(HeaderView {
            magic: u64_at(offsets::MAGIC)?,
            version: u32_at(offsets::VERSION)?,
            ready: u32_at(offsets::READY)? == 1,
            capacity: u64_at(offsets::CAPACITY)?,
            region_len: u64_at(offsets::REGION_LEN)?,
            session: u64_at(offsets::SESSION)?,
            creator_pid: u32_at(offsets::CREATOR_PID)? as i32,
            opener_pid: u32_at(offsets::OPENER_PID)? as i32,
            creator_role: u32_at(offsets::CREATOR_ROLE)?,
            creator_start: u64_at(offsets::CREATOR_START)?,
            opener_start: u64_at(offsets::OPENER_START)?,
        })
    }
}

/// What an existing region's header says about it, before this side trusts its size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Left by a run that died: remove it (after re-checking it is the same object) and
    /// create it anew. The reason, for the narration.
    Stale(String),
    /// Its creator is still setting it up: look again shortly. The reason.
    NotReady(String),
    /// A complete header whose creator is alive: open it and check it against our flags.
    Ready,
    /// Not an ipc-study ring (this magic): refuse it, and never remove it.
    Foreign(u64),
}

/// Judges a region found in place, for `shm` and `mmap` alike.
///
/// `view` is its decoded header (`None`: smaller than a header, or not sized yet);
/// `unready_for` is how long it is known to have been without a size or a creator pid
/// (how long this side has watched it, or a file's age by its modification time). The
/// rules, in order:
/// 1. a foreign magic is [`Verdict::Foreign`];
/// 2. a creator that is gone (no process with its pid, or one that started at another
///    time: the pid was reused), with no live opener, is [`Verdict::Stale`];
/// 3. no size or no creator pid for [`SETUP_GRACE`] is stale, sooner is not ready;
/// 4. a header whose `ready` word is not 1 yet is not ready; otherwise it is ready.
pub fn judge(view: Option<&HeaderView>, unready_for: Duration) -> Verdict {
    // `what` the creator writes early: missing past the grace, the creator died.
    let grace = |what: &str| {
        if unready_for >= SETUP_GRACE {
            Verdict::Stale(format!(
                "it has no {what} after {:.1} s: left by a run that died while creating it",
                unready_for.as_secs_f64()
            ))
        } else {
            Verdict::NotReady(format!("its creator has not written its {what} yet"))
        }
    };
    let Some(v) = view else {
        return grace("header");
    };
    if v.magic != RING_MAGIC && v.magic != 0 {
        return Verdict::Foreign(v.magic);
    }
    // A recorded process is dead when no process has its pid, or the one that has it
    // started at another time (the pid was reused by an unrelated process).
    let dead = |who: Identity| who.pid > 0 && !who.alive();
    if dead(v.creator()) && (v.opener_pid <= 0 || dead(v.opener())) {
        let peer = if v.opener_pid > 0 {
            format!(" and so is its peer (pid {})", v.opener_pid)
        } else {
            String::new()
        };
        return Verdict::Stale(format!("its creator (pid {}) is gone{peer}", v.creator_pid));
    }
    if v.creator_pid <= 0 {
        return grace("creator pid");
    }
    if !v.ready || v.magic == 0 {
        return Verdict::NotReady(format!(
            "its creator, pid {}, has not published the header yet",
            v.creator_pid
        ));
    }
    Verdict::Ready
}
