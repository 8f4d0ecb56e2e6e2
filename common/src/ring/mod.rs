//! The shared ring: one single-producer single-consumer protocol over a raw memory region.
//!
//! `shm` (a POSIX `shm_open` object or a System V segment) and `mmap` (a regular file mapped
//! with memmap2) hand this module the same thing: a pointer and a length of memory that two
//! processes map `MAP_SHARED`. Only the backing differs, so the two compare fairly.
//!
//! Shared memory gives no ordering and no wake-up by itself (the reviewer's note on S5):
//! a byte stored by one process is visible to the other, but nothing says *when* the
//! other should look, or that the bytes it sees are complete. This module is where the
//! project solves that, with two indices per direction and one rule: the producer copies
//! a frame in, then publishes the new producer index with a **Release** store; the consumer
//! reads that index with an **Acquire** load and only then copies the frame out. Acquire
//! pairs with Release, so every byte written before the publish is visible after the load.
//!
//! The module is split by concern, and each file can be read alone:
//!
//! | file           | what it holds                                                             |
//! |----------------|---------------------------------------------------------------------------|
//! | [`layout`]     | the byte-by-byte layout of the region, its constants and const asserts     |
//! | [`spsc`]       | the data path: reserve, copy in (or build in place), publish; take, copy out (or read in place), release |
//! | [`wait`]       | spinning, futex sleeps and wake-ups, and noticing a dead peer              |
//! | [`handshake`]  | creating the header, checking it, attaching, judging a leftover region     |
//!
//! It knows nothing of the modes or of the protocol: it moves frames (a header and a
//! payload, [`crate::frame`]) and checks only what it must to stay in bounds.
//!
//! # Trust
//!
//! The peer is another process; it may be buggy, stale, or hostile. Every value read from
//! the region is checked against what this side keeps locally before it is used:
//! - the capacity this side was configured with, never the one in the header, sizes every
//!   access (the header's value is only compared with it);
//! - an index must lie between the last value we saw of it and our own index plus `C`,
//!   and be a multiple of 64; otherwise the call returns [`RingError::Corrupt`];
//! - a frame's length is checked against the published bytes and [`max_record`] before
//!   anything is copied, and after copying the frame is decoded again from the private
//!   copy (the peer could change the shared bytes in between) with its checksum verified.
//!
//! So a bad region gives "corrupt shared region: ...", never a panic, undefined behaviour
//! or an access outside the region. Look for `check:` comments: each marks one such test.
//!
//! On the copying path bytes are copied with `ptr::copy_nonoverlapping` from raw pointers:
//! no `&[u8]` or `&mut [u8]` is made over memory the peer can write (a reference promises
//! that the bytes do not change while it lives, which another process can break; memmap2's
//! docs say the same). The zero-copy path is the one exception, and it is explicit: a
//! **loan** ([`Producer::frame_mut`], [`Consumer::recv_in_place`]) is a slice over bytes
//! that the protocol gives to this side alone until it publishes or releases them; what a
//! peer that breaks the protocol can still do to them, and why nothing is decided from
//! them once checked, is in [`spsc`] ("Loans"). The shared words are reached as `&AtomicU64`/`&AtomicU32`: an atomic is
//! valid for any bit pattern and may be changed by others at any time, which is exactly
//! what shared memory does. A hostile peer scribbling the data area while we copy it is a
//! race in the abstract machine's terms; we never act on those bytes before checking them,
//! which is the most any program sharing memory with an untrusted process can do.
//!

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub mod handshake;
pub mod layout;
pub mod spsc;
pub mod wait;

#[cfg(test)]
mod tests;

pub use crate::setup::{Role, Wait};
pub use handshake::{judge, Verdict, SETUP_GRACE};
pub use layout::{
    check_capacity, check_size, max_payload, max_record, offsets, parse_capacity, peek_header,
    record_len, region_len, HeaderView, DEFAULT_CAPACITY, DEFAULT_CAPACITY_ARG, HEADER_PAGE,
    MAX_CAPACITY, MIN_CAPACITY, PAD_BIT, RECORD_ALIGN, RING_MAGIC, RING_VERSION, STAMP_LEN,
};
pub use spsc::{Consumer, Producer, Reserved};
pub use wait::{peer_gone, SLEEP_SLICE, SPIN_BEFORE_SLEEP};

use crate::align::RecordBytes;
use crate::peer::Identity;
use layout::Inner;
use wait::Pacer;

/// One of the two rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Ring 0: Data, Ping and End frames.
    WriterToReader = 0,
    /// Ring 1: Pong frames (pingpong only).
    ReaderToWriter = 1,
}

/// Why a ring operation failed.
#[derive(Debug)]
pub enum RingError {
    /// A value read from the region broke a rule: a bug or a hostile peer.
    Corrupt(String),
    /// The peer process no longer exists.
    PeerGone {
        /// Its pid.
        pid: i32,
    },
    /// Nothing happened for `waited` while waiting for `what`.
    TimedOut {
        /// How long we waited.
        waited: Duration,
        /// What we waited for.
        what: &'static str,
    },
    /// A frame larger than the ring takes.
    TooLarge {
        /// Payload bytes offered.
        len: usize,
        /// Largest payload this ring takes.
        max: usize,
    },
    /// The region was made for another capacity (S5: both sides must agree on the size).
    CapacityMismatch {
        /// Capacity in the header.
        found: u64,
        /// Capacity this side was configured with.
        expected: usize,
    },
    /// Another process already attached as the opener.
    Busy {
        /// That process.
        pid: i32,
    },
    /// The creator has the same role as we do (two writers, or two readers).
    SameRole {
        /// The role both claim.
        role: Role,
        /// The creator's pid.
        pid: i32,
    },
    /// A misuse of the API (bad pointer, length, a second producer in one process).
    Invalid(String),
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingError::Corrupt(why) => write!(f, "corrupt shared region: {why}"),
            RingError::PeerGone { pid } => write!(f, "peer (pid {pid}) is gone"),
            RingError::TimedOut { waited, what } => {
                write!(f, "timed out after {:.1} s waiting for {what}", waited.as_secs_f64())
            }
            RingError::TooLarge { len, max } => write!(
                f,
                "a {len}-byte payload does not fit the ring: it takes at most {max} bytes per frame"
            ),
            RingError::CapacityMismatch { found, expected } => write!(
                f,
                "the region was created with a capacity of {found} bytes per direction, and this side \
                 expects {expected}: both sides must use the same size (S5); pass the same --capacity to both"
            ),
            RingError::Busy { pid } => write!(
                f,
                "the region already has its two processes (pid {pid} attached as the peer)"
            ),
            RingError::SameRole { role, pid } => write!(
                f,
                "the region was created by a {} (pid {pid}); start a {} to pair with it",
                role.as_str(),
                if *role == Role::Writer { "reader" } else { "writer" }
            ),
            RingError::Invalid(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for RingError {}

/// A region: the memory two processes share, seen through this module's layout.
///
/// Cloning is cheap and shares the mapping. Here one process plays both sides over a
/// heap buffer standing in for a `MAP_SHARED` mapping:
///
/// ```
/// use common::frame::{encode_header, Fields, Kind};
/// use common::ring::{region_len, Direction, EndOpts, Region, Role, Wait};
/// use std::alloc::{alloc_zeroed, Layout};
///
/// let cap = 4096;
/// let layout = Layout::from_size_align(region_len(cap), 4096).unwrap();
/// // SAFETY: a non-zero size; the buffer is leaked, so it outlives the Region.
/// let base = unsafe { alloc_zeroed(layout) };
/// // SAFETY: `base` holds region_len(cap) writable bytes for the rest of the program and
/// // no reference to them exists.
/// let region = unsafe { Region::from_raw(base, region_len(cap), cap, ()) }.unwrap();
/// region.initialize(Role::Writer, 1);
/// let opts = EndOpts { wait: Wait::Spin, peer: common::peer::Identity { pid: 0, start: 0 }, idle_timeout: None };
/// let mut tx = region.producer(Direction::WriterToReader, opts).unwrap();
/// let mut rx = region.consumer(Direction::WriterToReader, opts).unwrap();
///
/// let f = Fields { kind: Kind::Data, flags: 0, nonce: 7, seq: 0, sent_ns: 0 };
/// let header = encode_header(f, b"hello").unwrap();
/// let slot = tx.reserve(5).unwrap();         // wait for room
/// tx.copy_in(&slot, &header, b"hello").unwrap(); // copy into the shared pages
/// tx.publish(slot);                          // Release store of the producer index
/// let (h, payload) = rx.recv().unwrap();     // Acquire load, copy out, check, release
/// assert_eq!((h.seq, payload), (0, &b"hello"[..]));
/// ```
#[derive(Clone)]
pub struct Region {
    inner: Arc<Inner>,
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("base", &self.inner.base)
            .field("len", &self.inner.len)
            .field("capacity", &self.inner.capacity)
            .finish()
    }
}

impl Region {
    /// Wraps `len` bytes at `base`, to be used with data areas of `capacity` bytes each.
    ///
    /// Fails if `capacity` is not a valid capacity, `base` is null or not 128-byte aligned
    /// (a mapping is page-aligned), or `len` is smaller than [`region_len`]`(capacity)`.
    ///
    /// # Safety
    /// `base..base + len` must be readable and writable memory (normally a `MAP_SHARED`
    /// mapping) that stays mapped for as long as `keeper` lives; `keeper` is dropped only
    /// after this `Region` and every endpoint made from it are gone. No Rust reference to
    /// that memory may exist anywhere in this process (the peer may change any byte).
    pub unsafe fn from_raw(
        base: *mut u8,
        len: usize,
        capacity: usize,
        keeper: impl Send + Sync + 'static,
    ) -> Result<Region, RingError> {
        check_capacity(capacity).map_err(|e| RingError::Invalid(format!("capacity {e}")))?;
        if base.is_null() || !(base as usize).is_multiple_of(128) {
            return Err(RingError::Invalid(format!(
                "region at {base:p} is not 128-byte aligned"
            )));
        }
        if len < region_len(capacity) {
            return Err(RingError::Invalid(format!(
                "region of {len} bytes is too small for two rings of {capacity} bytes ({} needed)",
                region_len(capacity)
            )));
        }
        Ok(Region {
            inner: Arc::new(Inner {
                base,
                len,
                capacity,
                _keeper: Box::new(keeper),
                claimed: Default::default(),
            }),
        })
    }

    /// Capacity per direction this side uses.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Bytes of the region.
    pub fn len(&self) -> usize {
        self.inner.len
    }

    /// Always false: a region holds at least one header page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Largest payload per frame.
    pub fn max_payload(&self) -> usize {
        max_payload(self.inner.capacity)
    }

    /// The producing end of direction `d`. `opts.peer` is watched while waiting.
    pub fn producer(&self, d: Direction, opts: EndOpts) -> Result<Producer, RingError> {
        let claim = self.claim(d, 0)?;
        let cap = self.inner.capacity as u64;
        let end = Producer {
            region: self.inner.clone(),
            d,
            claim,
            cap,
            head: 0,
            tail_seen: 0,
            pacer: Pacer::new(opts, &self.inner),
            full: None,
            memos: Default::default(),
            memo_reach: 0,
            one_at_a_time: false,
        };
        end.declare_wait();
        Ok(end)
    }

    /// The consuming end of direction `d`; it owns a private buffer of one maximal record.
    pub fn consumer(&self, d: Direction, opts: EndOpts) -> Result<Consumer, RingError> {
        let claim = self.claim(d, 1)?;
        let cap = self.inner.capacity;
        let end = Consumer {
            region: self.inner.clone(),
            d,
            claim,
            cap: cap as u64,
            tail: 0,
            head_seen: 0,
            buf: RecordBytes::zeroed(max_record(cap)),
            max_payload: max_payload(cap),
            pacer: Pacer::new(opts, &self.inner),
            frame_len: 0,
            lent: 0,
            answers: false,
        };
        end.declare_wait();
        Ok(end)
    }

    fn claim(&self, d: Direction, end: usize) -> Result<usize, RingError> {
        let i = d as usize * 2 + end;
        if self.inner.claimed[i].swap(true, Ordering::AcqRel) {
            return Err(RingError::Invalid(format!(
                "this process already has a {} of {d:?}: the ring has one producer and one consumer",
                if end == 0 { "producer" } else { "consumer" }
            )));
        }
        Ok(i)
    }
}

/// How an endpoint waits, and for whom.
#[derive(Clone, Copy, Debug)]
pub struct EndOpts {
    /// The wait strategy.
    pub wait: Wait,
    /// The peer process (pid and start time), checked every [`SLEEP_SLICE`] while
    /// waiting; pid 0 = do not check.
    pub peer: Identity,
    /// Give up after waiting this long without progress (`None`: wait while the peer lives,
    /// as a text-mode reader must while someone thinks about what to type).
    pub idle_timeout: Option<Duration>,
}
