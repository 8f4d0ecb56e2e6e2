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
//! # Region layout
//!
//! All offsets are from the start of the region (the first byte of the mapping), in bytes.
//! `C` is the capacity of one direction's data area (a power of two, 4 KiB to 256 MiB).
//!
//! | offset           | size | what                                                         | written by |
//! |-----------------:|-----:|--------------------------------------------------------------|------------|
//! |                0 |    8 | `magic` = `b"IPCSRING"` ([`RING_MAGIC`])                     | creator    |
//! |                8 |    4 | `version` ([`RING_VERSION`])                                 | creator    |
//! |               12 |    4 | `ready`: 1 once the header is complete (stored **last**)     | creator    |
//! |               16 |    8 | `capacity` = `C`                                             | creator    |
//! |               24 |    8 | `region_len` = 4096 + 2 `C`                                  | creator    |
//! |               32 |    8 | `session`: random id of this region's incarnation            | creator    |
//! |               40 |    4 | `creator_pid`, stored **first** (stale-object detection)     | creator    |
//! |               44 |    4 | `opener_pid`: 0 until the peer attaches (a futex word)       | opener     |
//! |               48 |    4 | `creator_role`: 1 writer, 2 reader                           | creator    |
//! |        52..  256 |      | zero                                                         |            |
//! |  256 + 512 d     |    8 | ring `d` producer index `head` (bytes ever published)        | producer   |
//! |  384 + 512 d     |    8 | ring `d` consumer index `tail` (bytes ever consumed)         | consumer   |
//! |  512 + 512 d     |    4 | ring `d` "consumer sleeps, waiting for data" flag            | consumer   |
//! |  640 + 512 d     |    4 | ring `d` "producer sleeps, waiting for room" flag            | producer   |
//! |      1280..4096  |      | zero                                                         |            |
//! |  4096 + `C` d    |  `C` | ring `d` data area                                           | producer   |
//!
//! Ring `d = 0` carries writer-to-reader frames, ring `d = 1` reader-to-writer (pingpong's
//! Pongs: S4, both sides read and write). Each of the four words of a direction sits alone
//! on a 128-byte block, because each has one writer and its own rhythm: `head` changes
//! with every frame and is read by the consumer; `tail` likewise the other way; a "sleeps"
//! flag changes only when its side goes to sleep but is read on every frame by the other
//! side, so alone it stays in that side's cache and the check costs no cache miss. Sharing
//! a line would make each store invalidate a line the other core is reading for an
//! unrelated reason (false sharing). 64 bytes is a cache line; 128 because x86 cores
//! prefetch lines in aligned pairs (the "adjacent cache line prefetch").
//!
//! # Records in the data area
//!
//! A frame ([`crate::frame`]: 40-byte header, then the payload) is stored at `head mod C`,
//! and `head` advances by the frame's length rounded up to 64 bytes. So every frame starts
//! on a cache line (no line is shared by a frame being read and the next being written),
//! the 40-byte header never straddles the end of the area (`C` is a multiple of 64), and a
//! payload that runs past the end **continues at offset 0**: it is split across the wrap
//! and copied in two pieces. A split costs one extra `memcpy` call; a padding record would
//! instead waste up to a whole frame of space and need a second record kind.
//! A record may take at most half the area ([`max_record`]), so the producer can fill one
//! half while the consumer drains the other.
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
//! Bytes are copied with `ptr::copy_nonoverlapping` from raw pointers: no `&[u8]` or
//! `&mut [u8]` is ever made over memory the peer can write (a reference promises that the
//! bytes do not change while it lives, which another process can break; memmap2's docs
//! say the same). The shared words are reached as `&AtomicU64`/`&AtomicU32`: an atomic is
//! valid for any bit pattern and may be changed by others at any time, which is exactly
//! what shared memory does. A hostile peer scribbling the data area while we copy it is a
//! race in the abstract machine's terms; we never act on those bytes before checking them,
//! which is the most any program sharing memory with an untrusted process can do.
//!
//! # Waiting
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
//! Every sleep lasts at most [`SLEEP_SLICE`] (100 ms), and every such slice (also while
//! spinning) the waiter checks that the peer process still exists, that the header still
//! carries the magic, and the idle limit, so a peer killed with `kill -9` is reported as
//! [`RingError::PeerGone`] instead of a hang.

use std::fmt;
use std::hint::spin_loop;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::frame::{self, Decoded, Header, HEADER_LEN, MAX_PAYLOAD};
use crate::protocol::{Delivery, FrameSink, FrameSource, Incoming};
use crate::timing::now_ns;

/// `b"IPCSRING"` read as a little-endian `u64`: this region holds an ipc-study ring.
pub const RING_MAGIC: u64 = u64::from_le_bytes(*b"IPCSRING");
/// Version of the region layout. Bump it when an offset or a rule changes.
pub const RING_VERSION: u32 = 1;
/// Bytes before the first data area: the header and the index lines, padded to a page.
pub const HEADER_PAGE: usize = 4096;
/// Every record starts at a multiple of this: one cache line.
pub const RECORD_ALIGN: usize = 64;
/// Smallest capacity per direction.
pub const MIN_CAPACITY: usize = 4 << 10;
/// Largest capacity per direction: keeps every index step far below 2^32 (the futex word).
pub const MAX_CAPACITY: usize = 256 << 20;
/// Default capacity per direction: 1 MiB holds 15 frames of 64 KiB, so a writer and a
/// reader that run at slightly different speeds rarely wait for each other. (64 KiB
/// streams ran equally fast with 256 KiB to 4 MiB rings on the development VM.)
pub const DEFAULT_CAPACITY: usize = 1 << 20;
/// How long `adaptive` spins before it sleeps: about the cost of one futex sleep and
/// wake-up, so a peer that answers sooner never pays for a system call.
pub const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(20);
/// Longest single sleep; also how often a waiter checks that the peer still exists.
pub const SLEEP_SLICE: Duration = Duration::from_millis(100);

/// Offset of the first direction's producer line.
const LINES_AT: usize = 256;
/// Bytes per direction of shared words (four 128-byte blocks).
const LINES_PER_DIRECTION: usize = 512;
/// Which half of a little- or big-endian `u64` holds its low 32 bits.
const LOW_HALF: usize = if cfg!(target_endian = "little") { 0 } else { 1 };

/// The header at offset 0. Every field is an atomic, because the opener reads the header
/// while the creator may still be writing it, and `opener_pid` is written by the opener.
#[repr(C)]
struct SharedHeader {
    /// [`RING_MAGIC`]; anything else is not our region.
    magic: AtomicU64,
    /// [`RING_VERSION`].
    version: AtomicU32,
    /// 1 when every other field is written; stored last, with Release.
    ready: AtomicU32,
    /// Data bytes per direction, as the creator was configured.
    capacity: AtomicU64,
    /// Total bytes the creator sized the region to.
    region_len: AtomicU64,
    /// Random id of this incarnation of the region.
    session: AtomicU64,
    /// The creator's pid, stored first, so a half-built region can be told stale.
    creator_pid: AtomicU32,
    /// The opener's pid; 0 until it attaches. The creator futex-waits on it.
    opener_pid: AtomicU32,
    /// [`Role`] of the creator, so a second writer (or reader) is refused.
    creator_role: AtomicU32,
}

/// One shared word alone on a 128-byte block (two cache lines, see the module docs).
#[repr(C, align(128))]
struct Alone<T>(T);

/// The four shared words of one direction, each alone on its block, because each has a
/// different writer and a different rhythm: a word that one side writes often must not
/// share a line with a word the other side reads often.
#[repr(C)]
struct Control {
    /// Bytes ever published (a multiple of 64), written by the producer on every frame.
    /// Its low half is the consumer's futex word.
    head: Alone<AtomicU64>,
    /// Bytes ever consumed (a multiple of 64), written by the consumer on every frame.
    /// Its low half is the producer's futex word.
    tail: Alone<AtomicU64>,
    /// 1 while the consumer sleeps for data. Written rarely, read by every publish: alone,
    /// it stays cached in the producer's core and the check costs no cache miss.
    consumer_sleeping: Alone<AtomicU32>,
    /// 1 while the producer sleeps for room; read by every release of the consumer.
    producer_sleeping: Alone<AtomicU32>,
}

// The table in the module docs is the contract with the other process: pin it.
const _: () = {
    assert!(std::mem::offset_of!(SharedHeader, version) == 8);
    assert!(std::mem::offset_of!(SharedHeader, ready) == 12);
    assert!(std::mem::offset_of!(SharedHeader, capacity) == 16);
    assert!(std::mem::offset_of!(SharedHeader, region_len) == 24);
    assert!(std::mem::offset_of!(SharedHeader, session) == 32);
    assert!(std::mem::offset_of!(SharedHeader, creator_pid) == 40);
    assert!(std::mem::offset_of!(SharedHeader, opener_pid) == 44);
    assert!(std::mem::offset_of!(SharedHeader, creator_role) == 48);
    assert!(std::mem::size_of::<SharedHeader>() <= LINES_AT);
    assert!(std::mem::offset_of!(Control, tail) == 128);
    assert!(std::mem::offset_of!(Control, consumer_sleeping) == 256);
    assert!(std::mem::offset_of!(Control, producer_sleeping) == 384);
    assert!(std::mem::size_of::<Control>() == LINES_PER_DIRECTION);
    assert!(LINES_AT + 2 * LINES_PER_DIRECTION <= HEADER_PAGE);
};

/// Byte offsets of the header fields, for tests and tools that inspect a region.
pub mod offsets {
    /// `magic` (u64).
    pub const MAGIC: usize = 0;
    /// `ready` (u32).
    pub const READY: usize = 12;
    /// `capacity` (u64).
    pub const CAPACITY: usize = 16;
    /// `creator_pid` (u32).
    pub const CREATOR_PID: usize = 40;
    /// `opener_pid` (u32).
    pub const OPENER_PID: usize = 44;
    /// Producer index `head` (u64) of direction `d`.
    pub const fn head(d: usize) -> usize {
        256 + 512 * d
    }
    /// Consumer index `tail` (u64) of direction `d`.
    pub const fn tail(d: usize) -> usize {
        384 + 512 * d
    }
    /// "Consumer sleeps" flag (u32) of direction `d`.
    pub const fn consumer_sleeping(d: usize) -> usize {
        512 + 512 * d
    }
    /// "Producer sleeps" flag (u32) of direction `d`.
    pub const fn producer_sleeping(d: usize) -> usize {
        640 + 512 * d
    }
    /// Start of direction `d`'s data area for capacity `cap`.
    pub const fn data(d: usize, cap: usize) -> usize {
        super::HEADER_PAGE + cap * d
    }
}

/// Total bytes of a region whose two data areas hold `capacity` bytes each.
pub const fn region_len(capacity: usize) -> usize {
    HEADER_PAGE + 2 * capacity
}

/// The largest record (header + payload, rounded up to 64) a ring of `capacity` takes.
pub const fn max_record(capacity: usize) -> usize {
    capacity / 2
}

/// The largest payload a ring of `capacity` carries.
pub fn max_payload(capacity: usize) -> usize {
    (max_record(capacity) - HEADER_LEN).min(MAX_PAYLOAD)
}

/// A frame's length in the ring: header + payload, rounded up to a cache line.
const fn record_len(payload_len: usize) -> usize {
    (HEADER_LEN + payload_len).div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

/// Checks a capacity: a power of two within [`MIN_CAPACITY`]..=[`MAX_CAPACITY`].
pub fn check_capacity(capacity: usize) -> Result<(), String> {
    if !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) || !capacity.is_power_of_two() {
        return Err(format!(
            "must be a power of two between {} (4K) and {} (256M) bytes, got {capacity}",
            MIN_CAPACITY, MAX_CAPACITY
        ));
    }
    Ok(())
}

/// `--capacity`: bytes per direction, with an optional K/KiB/M/MiB suffix.
pub fn parse_capacity(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (examples: 64K, 1M)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        other => return Err(format!("unknown unit '{other}' (use K, KiB, M or MiB)")),
    };
    let bytes = usize::try_from(n.saturating_mul(mult)).unwrap_or(usize::MAX);
    check_capacity(bytes)?;
    Ok(bytes)
}

/// Checks that a `--size` payload fits a ring of `capacity`; the error names both flags.
pub fn check_size(size: usize, capacity: usize) -> Result<(), String> {
    if record_len(size) > max_record(capacity) {
        let need = (2 * record_len(size)).next_power_of_two().max(MIN_CAPACITY);
        return Err(format!(
            "--size {size} does not fit --capacity {capacity}: a frame (40-byte header + payload, \
             rounded up to 64 bytes) may take at most half the ring ({} bytes, so the writer fills one \
             half while the reader drains the other), which allows at most {} payload bytes; use \
             --capacity {need} or more",
            max_record(capacity),
            max_payload(capacity)
        ));
    }
    Ok(())
}

/// What a waiting side does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Wait {
    /// Re-read the index in a loop: lowest latency, one CPU busy.
    Spin,
    /// Sleep in the kernel on a futex until the peer wakes us.
    Block,
    /// Spin briefly, then sleep.
    Adaptive,
}

impl Wait {
    /// Lower-case name, as in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Wait::Spin => "spin",
            Wait::Block => "block",
            Wait::Adaptive => "adaptive",
        }
    }
}

impl fmt::Display for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which program a side is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Produces on ring 0, consumes ring 1.
    Writer = 1,
    /// Consumes ring 0, produces on ring 1.
    Reader = 2,
}

impl Role {
    /// `writer` or `reader`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Writer => "writer",
            Role::Reader => "reader",
        }
    }
    fn from_u32(v: u32) -> Option<Role> {
        match v {
            1 => Some(Role::Writer),
            2 => Some(Role::Reader),
            _ => None,
        }
    }
}

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

/// What the header says, read field by field. Every value is untrusted until compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderView {
    /// `magic` as found.
    pub magic: u64,
    /// `version` as found.
    pub version: u32,
    /// Whether `ready` was 1.
    pub ready: bool,
    /// `capacity` as found.
    pub capacity: u64,
    /// `region_len` as found.
    pub region_len: u64,
    /// `session` as found.
    pub session: u64,
    /// `creator_pid` as found.
    pub creator_pid: i32,
    /// `opener_pid` as found.
    pub opener_pid: i32,
    /// `creator_role` as found (0 or garbage when not ready).
    pub creator_role: u32,
}

/// Reads every header field; `ready` first with Acquire, so if it is 1 the creator's
/// fields read after it are complete.
fn view_of(h: &SharedHeader) -> HeaderView {
    let ready = h.ready.load(Ordering::Acquire) == 1;
    HeaderView {
        magic: h.magic.load(Ordering::Relaxed),
        version: h.version.load(Ordering::Relaxed),
        ready,
        capacity: h.capacity.load(Ordering::Relaxed),
        region_len: h.region_len.load(Ordering::Relaxed),
        session: h.session.load(Ordering::Relaxed),
        creator_pid: h.creator_pid.load(Ordering::Relaxed) as i32,
        opener_pid: h.opener_pid.load(Ordering::Acquire) as i32,
        creator_role: h.creator_role.load(Ordering::Relaxed),
    }
}

/// Reads the header of an existing region of any size, before deciding whether it is
/// ready, stale or not ours at all (an opener must look before it trusts the size).
/// `None` if `len` is smaller than the header page or `base` is not 128-byte aligned.
///
/// # Safety
/// `base..base + len` must be mapped and readable for the duration of the call, with no
/// Rust reference to it alive.
pub unsafe fn peek_header(base: *mut u8, len: usize) -> Option<HeaderView> {
    if base.is_null() || !(base as usize).is_multiple_of(128) || len < HEADER_PAGE {
        return None;
    }
    // SAFETY: non-null, aligned (checked above) and mapped for HEADER_PAGE >= 56 bytes
    // (caller and the check above); all fields are atomics, valid for any bits.
    let h = unsafe { &*base.cast::<SharedHeader>() };
    Some(view_of(h))
}

/// State shared by a region handle and every endpoint made from it.
struct Inner {
    /// First byte of the region.
    base: *mut u8,
    /// Bytes mapped at `base`.
    len: usize,
    /// Capacity this side was configured with: the only capacity ever used for access.
    capacity: usize,
    /// Keeps the mapping alive (an `MmapRaw`, a System V attachment, a test buffer).
    _keeper: Box<dyn Send + Sync>,
    /// Which (direction, role) endpoints exist in this process: SPSC means one each.
    claimed: [AtomicBool; 4],
}

// SAFETY: `base` points into memory that `_keeper` keeps mapped (the `from_raw` contract);
// it is only accessed through atomics or raw-pointer copies whose ranges the SPSC protocol
// assigns to exactly one endpoint, and `claimed` enforces one endpoint per range in-process.
unsafe impl Send for Inner {}
// SAFETY: as for Send: shared `&Inner` only reads `base`/`len`/`capacity` (immutable) and
// touches the region through atomics; `claimed` is atomic.
unsafe impl Sync for Inner {}

impl Inner {
    fn header(&self) -> &SharedHeader {
        // SAFETY: `from_raw` checked that `base` is non-null, 128-byte aligned (SharedHeader
        // needs 8) and `len >= HEADER_PAGE`; the mapping lives as long as `self` (`_keeper`).
        // SharedHeader is all atomics: every bit pattern is valid and concurrent writes by
        // the peer are what atomics allow.
        unsafe { &*self.base.cast::<SharedHeader>() }
    }

    fn control(&self, d: Direction) -> &Control {
        // SAFETY: [256 + 512 d, +512) ends at most at 1280 <= HEADER_PAGE <= len; it is
        // 128-aligned because base is (checked in `from_raw`); all fields are atomics,
        // valid for any bits and for concurrent access by the peer (see `header`).
        unsafe {
            &*self
                .base
                .add(LINES_AT + LINES_PER_DIRECTION * d as usize)
                .cast::<Control>()
        }
    }

    fn data(&self, d: Direction) -> *mut u8 {
        // SAFETY: `from_raw` checked len >= region_len(capacity) = 4096 + 2 capacity, so
        // the data area of either direction, [4096 + capacity d, +capacity), is in bounds.
        unsafe { self.base.add(HEADER_PAGE + self.capacity * d as usize) }
    }
}

/// A region: the memory two processes share, seen through this module's layout.
///
/// Cloning is cheap and shares the mapping.
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

    /// The creator's first act: claims the region with its pid, before anything else,
    /// so that a crash during set-up leaves a region whose creator is visibly dead.
    pub fn begin_init(&self) {
        let h = self.inner.header();
        h.ready.store(0, Ordering::Relaxed);
        h.creator_pid.store(std::process::id(), Ordering::Relaxed);
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

    /// Opener: writes its pid into `opener_pid` (compare-and-swap from 0) and wakes the
    /// creator. Refuses a region created by a process of the same role, or already paired.
    /// Returns the creator's pid. Call after [`Region::check_header`] returned a view.
    pub fn attach(&self, role: Role) -> Result<i32, RingError> {
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
        let me = std::process::id();
        if let Err(other) =
            h.opener_pid
                .compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire)
        {
            return Err(RingError::Busy { pid: other as i32 });
        }
        // SAFETY: `opener_pid` is an aligned u32 inside the live region (see `Inner::header`).
        unsafe { futex_wake(h.opener_pid.as_ptr().cast_const()) };
        Ok(v.creator_pid)
    }

    /// Creator: waits until an opener attaches, sleeping on `opener_pid` as a futex word.
    /// Returns the opener's pid, or [`RingError::TimedOut`] after `timeout`.
    pub fn wait_for_opener(&self, timeout: Duration) -> Result<i32, RingError> {
        let h = self.inner.header();
        let start = now_ns();
        loop {
            let pid = h.opener_pid.load(Ordering::Acquire);
            if pid != 0 {
                return Ok(pid as i32);
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

    /// The producing end of direction `d`. `opts.peer_pid` is watched while waiting.
    pub fn producer(&self, d: Direction, opts: EndOpts) -> Result<Producer, RingError> {
        let claim = self.claim(d, 0)?;
        let cap = self.inner.capacity as u64;
        Ok(Producer {
            region: self.inner.clone(),
            d,
            claim,
            cap,
            head: 0,
            tail_seen: 0,
            pacer: Pacer::new(opts),
        })
    }

    /// The consuming end of direction `d`; it owns a private buffer of one maximal record.
    pub fn consumer(&self, d: Direction, opts: EndOpts) -> Result<Consumer, RingError> {
        let claim = self.claim(d, 1)?;
        let cap = self.inner.capacity;
        Ok(Consumer {
            region: self.inner.clone(),
            d,
            claim,
            cap: cap as u64,
            tail: 0,
            head_seen: 0,
            buf: vec![0; max_record(cap)],
            max_payload: max_payload(cap),
            pacer: Pacer::new(opts),
            frame_len: 0,
        })
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
    /// The peer process, checked every [`SLEEP_SLICE`] while waiting; 0 = do not check.
    pub peer_pid: i32,
    /// Give up after waiting this long without progress (`None`: wait while the peer lives,
    /// as a text-mode reader must while someone thinks about what to type).
    pub idle_timeout: Option<Duration>,
}

/// The producing end of one direction.
pub struct Producer {
    /// The region (keeps the mapping alive).
    region: Arc<Inner>,
    /// Which ring.
    d: Direction,
    /// Index into `claimed`, released on drop.
    claim: usize,
    /// Capacity, from our own configuration.
    cap: u64,
    /// Our index: the truth. The shared copy is only ever written from it, never read.
    head: u64,
    /// The consumer's index as last read and checked.
    tail_seen: u64,
    /// Waiting.
    pacer: Pacer,
}

/// The consuming end of one direction.
pub struct Consumer {
    /// The region (keeps the mapping alive).
    region: Arc<Inner>,
    /// Which ring.
    d: Direction,
    /// Index into `claimed`, released on drop.
    claim: usize,
    /// Capacity, from our own configuration.
    cap: u64,
    /// Our index: the truth.
    tail: u64,
    /// The producer's index as last read and checked.
    head_seen: u64,
    /// Private copy of the current frame: decoded and handed out from here, never from
    /// the shared area.
    buf: Vec<u8>,
    /// Largest payload accepted (from our capacity).
    max_payload: usize,
    /// Waiting.
    pacer: Pacer,
    /// Bytes of the frame in `buf`.
    frame_len: usize,
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.region.claimed[self.claim].store(false, Ordering::Release);
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.region.claimed[self.claim].store(false, Ordering::Release);
    }
}

impl Producer {
    fn ctl(&self) -> &Control {
        self.region.control(self.d)
    }

    /// Reads and checks the consumer's index; returns the free bytes.
    fn refresh_room(&mut self) -> Result<u64, RingError> {
        let tail = self.ctl().tail.0.load(Ordering::Acquire);
        // check: the consumer cannot go back, cannot pass what we published, and moves
        // whole records.
        if tail < self.tail_seen || tail > self.head || !tail.is_multiple_of(RECORD_ALIGN as u64) {
            return Err(RingError::Corrupt(format!(
                "ring {} consumer index {tail} is outside [{}, {}] (last seen, our producer index) \
                 or not a multiple of {RECORD_ALIGN}",
                self.d as usize, self.tail_seen, self.head
            )));
        }
        self.tail_seen = tail;
        Ok(self.cap - (self.head - tail))
    }

    /// Sends one frame without waiting; `Ok(false)` if the ring has no room for it now.
    pub fn try_send(
        &mut self,
        header: &[u8; HEADER_LEN],
        payload: &[u8],
    ) -> Result<bool, RingError> {
        let rec = self.record_for(payload.len())?;
        if self.cap - (self.head - self.tail_seen) < rec && self.refresh_room()? < rec {
            return Ok(false);
        }
        self.write_and_publish(rec, header, payload);
        Ok(true)
    }

    /// Sends one frame, waiting for room with the configured strategy.
    pub fn send(&mut self, header: &[u8; HEADER_LEN], payload: &[u8]) -> Result<(), RingError> {
        let rec = self.record_for(payload.len())?;
        // Fast path: the cached tail already leaves room, no shared read at all.
        if self.cap - (self.head - self.tail_seen) < rec && self.refresh_room()? < rec {
            let mut waiting = self.pacer.begin();
            loop {
                let seen = self.tail_seen;
                let c = self.ctl();
                self.pacer.pause(
                    &mut waiting,
                    &self.region,
                    &c.producer_sleeping.0,
                    &c.tail.0,
                    seen,
                    "room in the ring (the reader to consume)",
                )?;
                if self.refresh_room()? >= rec {
                    break;
                }
            }
        }
        self.write_and_publish(rec, header, payload);
        Ok(())
    }

    fn record_for(&self, payload_len: usize) -> Result<u64, RingError> {
        let max = max_payload(self.cap as usize);
        if payload_len > max {
            return Err(RingError::TooLarge {
                len: payload_len,
                max,
            });
        }
        Ok(record_len(payload_len) as u64)
    }

    /// Copies the frame to `head` and publishes it. The caller checked that `rec` bytes are
    /// free: `rec <= cap - (head - tail_seen)`.
    fn write_and_publish(&mut self, rec: u64, header: &[u8; HEADER_LEN], payload: &[u8]) {
        let data = self.region.data(self.d);
        // SAFETY: `data` is this direction's area of `cap` bytes (Inner::data). The frame's
        // HEADER_LEN + payload bytes <= rec <= cap / 2 (record_for), starting at head, lie in
        // [head, head + rec), which the consumer has released (caller's room check): no one
        // else reads or writes them until we publish. `copy_to_ring` wraps at `cap`.
        unsafe {
            copy_to_ring(data, self.cap, self.head, header);
            copy_to_ring(data, self.cap, self.head + HEADER_LEN as u64, payload);
        }
        self.head += rec;
        self.publish();
    }

    /// Publishes `head`, then wakes the consumer only if it said it sleeps.
    fn publish(&self) {
        let c = self.ctl();
        // SeqCst store then SeqCst load: the waker's half of the lost-wake-up argument in
        // the module docs. It is also a Release store: the frame bytes copied above are
        // visible to whoever reads this index with Acquire.
        c.head.0.store(self.head, Ordering::SeqCst);
        if c.consumer_sleeping.0.load(Ordering::SeqCst) != 0 {
            // SAFETY: the word is the aligned low half of `head`, inside the live region.
            unsafe { futex_wake(low_word(&c.head.0)) };
        }
    }
}

impl Consumer {
    fn ctl(&self) -> &Control {
        self.region.control(self.d)
    }

    /// Reads and checks the producer's index; returns the published, unconsumed bytes.
    fn refresh_available(&mut self) -> Result<u64, RingError> {
        let head = self.ctl().head.0.load(Ordering::Acquire);
        // check: the producer cannot go back, cannot be more than one ring ahead of what
        // we consumed, and publishes whole records.
        if head < self.head_seen
            || head < self.tail
            || head - self.tail > self.cap
            || !head.is_multiple_of(RECORD_ALIGN as u64)
        {
            return Err(RingError::Corrupt(format!(
                "ring {} producer index {head} is outside [{}, {}] (last seen, our consumer \
                 index + capacity {}) or not a multiple of {RECORD_ALIGN}",
                self.d as usize,
                self.head_seen.max(self.tail),
                self.tail + self.cap,
                self.cap
            )));
        }
        self.head_seen = head;
        Ok(head - self.tail)
    }

    /// Takes the next frame into the private buffer if one is published; its header.
    pub fn try_recv(&mut self) -> Result<Option<Header>, RingError> {
        let mut avail = self.head_seen - self.tail;
        if avail == 0 {
            avail = self.refresh_available()?;
            if avail == 0 {
                return Ok(None);
            }
        }
        self.take(avail).map(Some)
    }

    /// Waits for the next frame (configured strategy); returns its header and payload.
    /// The payload is this consumer's private copy, valid until the next call.
    pub fn recv(&mut self) -> Result<(Header, &[u8]), RingError> {
        let mut avail = self.head_seen - self.tail;
        if avail == 0 {
            avail = self.refresh_available()?;
            if avail == 0 {
                let mut waiting = self.pacer.begin();
                loop {
                    let seen = self.head_seen;
                    let c = self.ctl();
                    self.pacer.pause(
                        &mut waiting,
                        &self.region,
                        &c.consumer_sleeping.0,
                        &c.head.0,
                        seen,
                        "a frame from the peer",
                    )?;
                    avail = self.refresh_available()?;
                    if avail > 0 {
                        break;
                    }
                }
            }
        }
        let header = self.take(avail)?;
        Ok((header, &self.buf[HEADER_LEN..self.frame_len]))
    }

    /// The payload of the frame last returned by `try_recv`.
    pub fn payload(&self) -> &[u8] {
        &self.buf[HEADER_LEN.min(self.frame_len)..self.frame_len]
    }

    /// Copies the frame at `tail` out (checking it), releases its bytes, returns its header.
    /// `avail` > 0 is what `refresh_available` checked: <= cap, a multiple of 64.
    fn take(&mut self, avail: u64) -> Result<Header, RingError> {
        let data = self.region.data(self.d);
        let at = self.tail;
        // One copy takes the header and the start of the payload: the CPU then fetches
        // both cache lines of a small frame from the other core at once, not one by one.
        let first = (avail as usize).min(FIRST_COPY).min(self.buf.len());
        // SAFETY: `first` <= avail bytes are published at `at` (avail is a nonzero multiple
        // of 64, checked in refresh_available), first <= FIRST_COPY <= cap; `data` is our
        // direction's area of `cap` bytes and `copy_from_ring` wraps at `cap`. The
        // destination is our private buffer (first <= buf.len()).
        unsafe { copy_from_ring(data, self.cap, at, &mut self.buf[..first]) };
        // check: the header's length is limited by our capacity before it sizes anything.
        let h = match frame::decode_header(&self.buf[..first], self.max_payload) {
            Ok(Some(h)) => h,
            Ok(None) => unreachable_need_more(at)?,
            Err(e) => {
                return Err(RingError::Corrupt(format!(
                    "frame at ring {} position {at}: {e}",
                    self.d as usize
                )))
            }
        };
        let total = HEADER_LEN + h.payload_len();
        let rec = record_len(h.payload_len()) as u64;
        // check: the frame must lie within what the producer published.
        if rec > avail {
            return Err(RingError::Corrupt(format!(
                "frame at ring {} position {at} claims {total} bytes, but only {avail} are published",
                self.d as usize
            )));
        }
        if total > first {
            // total <= max_record == buf.len(): decode_header limited the payload.
            let Some(dst) = self.buf.get_mut(first..total) else {
                return Err(RingError::Corrupt(format!(
                    "frame at position {at} of {total} bytes exceeds the {}-byte record limit",
                    max_record(self.cap as usize)
                )));
            };
            // SAFETY: [at + first, at + total) is within the published bytes (rec <= avail,
            // checked just above) and total <= cap / 2; `dst` is our private buffer.
            unsafe { copy_from_ring(data, self.cap, at + first as u64, dst) };
        }
        // check: decode the private copy again; the shared bytes may have changed between
        // the two copies, so the length and checksum are taken from what we now hold.
        match frame::decode(&self.buf[..total], self.max_payload) {
            Ok(Decoded::Frame { header, total: t }) if t == total => {
                self.frame_len = total;
                self.tail += rec;
                self.release();
                Ok(header)
            }
            Ok(_) => Err(RingError::Corrupt(format!(
                "frame at ring {} position {at} changed while it was being read",
                self.d as usize
            ))),
            Err(e) => Err(RingError::Corrupt(format!(
                "frame at ring {} position {at}: {e}",
                self.d as usize
            ))),
        }
    }

    /// Publishes `tail` (the bytes are free again), waking the producer only if it sleeps.
    fn release(&self) {
        let c = self.ctl();
        // SeqCst store, SeqCst load: the waker's half of the argument in the module docs.
        c.tail.0.store(self.tail, Ordering::SeqCst);
        if c.producer_sleeping.0.load(Ordering::SeqCst) != 0 {
            // SAFETY: the word is the aligned low half of `tail`, inside the live region.
            unsafe { futex_wake(low_word(&c.tail.0)) };
        }
    }
}

/// Bytes the consumer copies before it knows a frame's length: four cache lines.
const FIRST_COPY: usize = 256;

/// `decode_header` answers "need more" only below 40 bytes, and we always pass 64 or more.
fn unreachable_need_more(at: u64) -> Result<Header, RingError> {
    Err(RingError::Corrupt(format!(
        "frame header at position {at} could not be read"
    )))
}

impl FrameSink for Producer {
    fn send(&mut self, header: &[u8; HEADER_LEN], payload: &[u8]) -> anyhow::Result<Delivery> {
        match Producer::send(self, header, payload) {
            Ok(()) => Ok(Delivery::Sent),
            Err(RingError::PeerGone { pid }) => {
                crate::warn!("peer (pid {pid}) is gone");
                Ok(Delivery::PeerGone)
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl FrameSource for Consumer {
    fn recv(&mut self) -> anyhow::Result<Incoming<'_>> {
        match Consumer::recv(self) {
            Ok((h, p)) => Ok(Incoming::Frame(h, p)),
            Err(RingError::PeerGone { pid }) => {
                crate::warn!("peer (pid {pid}) is gone");
                Ok(Incoming::Closed)
            }
            Err(e) => Err(e.into()),
        }
    }
    // session(): the default (None). The region's `session` names the region's
    // incarnation; `run_writer` draws the frames' nonce itself, and a fresh ring holds no
    // frames of an earlier run, so the reader adopts the first seq-0 frame's session.
}

/// The "low 32 bits" half of an index: the futex word.
fn low_word(index: &AtomicU64) -> *const u32 {
    // AtomicU64 is 8-aligned, so either half is 4-aligned, as FUTEX_WAIT requires.
    index
        .as_ptr()
        .cast::<u32>()
        .cast_const()
        .wrapping_add(LOW_HALF)
}

/// Copies `src` into the ring at stream position `pos`, continuing at offset 0 past the end.
///
/// # Safety
/// `data` must be valid for writes of `cap` bytes, `cap` a power of two, `src.len() <= cap`,
/// and no one else may access the destination bytes during the copy.
unsafe fn copy_to_ring(data: *mut u8, cap: u64, pos: u64, src: &[u8]) {
    let start = (pos & (cap - 1)) as usize;
    let first = src.len().min(cap as usize - start);
    // SAFETY: start < cap and start + first <= cap; the rest, src.len() - first <= cap -
    // first, goes to offset 0. `src` is our own memory and cannot overlap the ring.
    unsafe {
        ptr::copy_nonoverlapping(src.as_ptr(), data.add(start), first);
        ptr::copy_nonoverlapping(src.as_ptr().add(first), data, src.len() - first);
    }
}

/// Copies `dst.len()` bytes out of the ring from stream position `pos`, wrapping.
///
/// # Safety
/// `data` must be valid for reads of `cap` bytes, `cap` a power of two, `dst.len() <= cap`.
unsafe fn copy_from_ring(data: *const u8, cap: u64, pos: u64, dst: &mut [u8]) {
    let start = (pos & (cap - 1)) as usize;
    let first = dst.len().min(cap as usize - start);
    // SAFETY: as in copy_to_ring, with the roles swapped; `dst` is private memory.
    unsafe {
        ptr::copy_nonoverlapping(data.add(start), dst.as_mut_ptr(), first);
        ptr::copy_nonoverlapping(data, dst.as_mut_ptr().add(first), dst.len() - first);
    }
}

/// FUTEX_WAIT: sleeps while `*word == expected`, at most `timeout`.
/// See [futex(2)](https://man7.org/linux/man-pages/man2/futex.2.html).
///
/// Returns `Ok` on a wake-up, a timeout, EAGAIN (the word had already changed) or EINTR:
/// all mean "look again". Any other errno is an error.
///
/// # Safety
/// `word` must be 4-byte aligned and point into mapped memory for the duration of the call.
unsafe fn futex_wait(word: *const u32, expected: u32, timeout: Duration) -> Result<(), RingError> {
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
        match e.raw_os_error() {
            Some(libc::EAGAIN | libc::ETIMEDOUT | libc::EINTR) => {}
            _ => return Err(RingError::Invalid(format!("futex FUTEX_WAIT: {e}"))),
        }
    }
    Ok(())
}

/// FUTEX_WAKE: wakes the (at most one) process sleeping on `word`. Its result (how many
/// woke) is not needed: a waker that finds no sleeper has nothing to do.
/// See [futex(2)](https://man7.org/linux/man-pages/man2/futex.2.html).
///
/// # Safety
/// `word` must be 4-byte aligned and point into mapped memory.
unsafe fn futex_wake(word: *const u32) {
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
struct Waiting {
    /// When the episode began (CLOCK_MONOTONIC ns); 0 until the clock is first read, which
    /// is deferred so that a wait that ends within a few spins costs no clock read at all.
    start: u64,
    /// When the peer was last checked.
    checked: u64,
    /// Pause hints so far, to read the clock only every so often.
    spins: u64,
    /// Adaptive: the spin budget is spent; sleep from now on.
    sleepy: bool,
}

/// The wait strategy in action.
struct Pacer {
    /// What the side was configured with.
    opts: EndOpts,
}

/// Spins between two clock reads: the clock costs ~20 ns, a pause hint ~10-40 ns.
const SPINS_PER_CLOCK: u64 = 64;

impl Pacer {
    fn new(opts: EndOpts) -> Pacer {
        Pacer { opts }
    }

    fn begin(&self) -> Waiting {
        Waiting {
            start: 0,
            checked: 0,
            spins: 0,
            sleepy: self.opts.wait == Wait::Block,
        }
    }

    /// Waits a little for `index` to move away from `seen`: one spin, or one sleep of at
    /// most SLEEP_SLICE with `flag` raised. Every SLEEP_SLICE it checks the peer, the magic
    /// and the idle limit. The caller re-reads (and checks) the index afterwards.
    fn pause(
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
            spin_loop();
            if !w.spins.is_multiple_of(SPINS_PER_CLOCK) {
                return Ok(());
            }
        } else {
            if w.start == 0 {
                // Block: start the clock before the first sleep.
                w.start = now_ns();
                w.checked = w.start;
            }
            // The sleeper's half of the lost-wake-up argument: announce, re-check, sleep.
            flag.store(1, Ordering::SeqCst);
            if index.load(Ordering::SeqCst) == seen {
                // SAFETY: the low half of an AtomicU64 in the live region: aligned, mapped.
                let r = unsafe { futex_wait(low_word(index), seen as u32, SLEEP_SLICE) };
                flag.store(0, Ordering::Relaxed);
                r?;
            } else {
                flag.store(0, Ordering::Relaxed);
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
        let pid = self.opts.peer_pid;
        if pid > 0 && peer_gone(pid) {
            return Err(RingError::PeerGone { pid });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode_header, Fields, Kind};
    use proptest::prelude::*;
    use std::alloc::{alloc_zeroed, dealloc, Layout};

    /// A page-aligned zeroed heap buffer standing in for a mapping.
    struct Buf {
        ptr: *mut u8,
        layout: Layout,
    }
    // SAFETY: a plain heap allocation owned by this value; the ring accesses it through
    // atomics and SPSC-partitioned copies only.
    unsafe impl Send for Buf {}
    // SAFETY: as above.
    unsafe impl Sync for Buf {}
    impl Drop for Buf {
        fn drop(&mut self) {
            // SAFETY: allocated in `region` with this layout.
            unsafe { dealloc(self.ptr, self.layout) }
        }
    }

    fn region(cap: usize) -> (Region, *mut u8) {
        let layout = Layout::from_size_align(region_len(cap), 4096).unwrap();
        // SAFETY: non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        let buf = Buf { ptr, layout };
        // SAFETY: the buffer is region_len(cap) bytes, lives as long as the Region (keeper),
        // and no reference to it exists.
        let r = unsafe { Region::from_raw(ptr, region_len(cap), cap, buf) }.unwrap();
        (r, ptr)
    }

    fn opts(wait: Wait) -> EndOpts {
        EndOpts {
            wait,
            peer_pid: std::process::id() as i32,
            idle_timeout: Some(Duration::from_secs(20)),
        }
    }

    fn hdr(kind: Kind, seq: u64, payload: &[u8]) -> [u8; HEADER_LEN] {
        encode_header(
            Fields {
                kind,
                flags: 0,
                nonce: 7,
                seq,
                sent_ns: 0,
            },
            payload,
        )
        .unwrap()
    }

    fn payload(seq: u64, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u64 ^ seq) as u8).collect()
    }

    /// Writes `v` at byte `off` of the region, as a hostile peer would.
    fn poke_u64(base: *mut u8, off: usize, v: u64) {
        // SAFETY: tests only poke offsets inside the region, 8-aligned, through an atomic.
        unsafe { (*base.add(off).cast::<AtomicU64>()).store(v, Ordering::SeqCst) }
    }

    #[test]
    fn layout_offsets_match_the_table() {
        let (r, base) = region(4096);
        r.initialize(Role::Writer, 0xfeed);
        // SAFETY: reading 8-aligned words inside the region through atomics.
        let at =
            |off: usize| unsafe { (*base.add(off).cast::<AtomicU64>()).load(Ordering::SeqCst) };
        assert_eq!(at(offsets::MAGIC).to_le_bytes(), *b"IPCSRING");
        assert_eq!(at(8), 1 | (1 << 32), "version 1, ready 1");
        assert_eq!(at(offsets::CAPACITY), 4096);
        assert_eq!(at(24), region_len(4096) as u64);
        assert_eq!(at(32), 0xfeed);
        assert_eq!(at(offsets::CREATOR_PID) as u32, std::process::id());
        assert_eq!(at(48) as u32, Role::Writer as u32);
        let mut p = r
            .producer(Direction::ReaderToWriter, opts(Wait::Spin))
            .unwrap();
        p.send(&hdr(Kind::Pong, 0, b"x"), b"x").unwrap();
        assert_eq!(at(offsets::head(1)), 64);
        assert_eq!(at(offsets::tail(1)), 0);
        // The frame's magic at the start of ring 1's data area.
        assert_eq!(at(offsets::data(1, 4096)) as u32, frame::MAGIC);
    }

    fn stream(wait: Wait, cap: usize, n: u64) {
        let (r, _) = region(cap);
        r.initialize(Role::Writer, 1);
        let mut p = r.producer(Direction::WriterToReader, opts(wait)).unwrap();
        let mut c = r.consumer(Direction::WriterToReader, opts(wait)).unwrap();
        let max = r.max_payload();
        let t = std::thread::spawn(move || {
            for seq in 0..n {
                let data = payload(seq, (seq as usize * 37) % (max + 1));
                p.send(&hdr(Kind::Data, seq, &data), &data).unwrap();
            }
        });
        for seq in 0..n {
            let (h, got) = c.recv().unwrap();
            assert_eq!(h.seq, seq);
            assert_eq!(got, &payload(seq, (seq as usize * 37) % (max + 1))[..]);
        }
        t.join().unwrap();
    }

    #[test]
    fn stream_spin() {
        stream(Wait::Spin, 4096, 20_000);
    }
    #[test]
    fn stream_block() {
        stream(Wait::Block, 4096, 5_000);
    }
    #[test]
    fn stream_adaptive() {
        stream(Wait::Adaptive, 8192, 20_000);
    }

    fn pingpong(wait: Wait, n: u64) {
        let (r, _) = region(4096);
        r.initialize(Role::Writer, 1);
        let r2 = r.clone();
        let t = std::thread::spawn(move || {
            let mut c = r2.consumer(Direction::WriterToReader, opts(wait)).unwrap();
            let mut p = r2.producer(Direction::ReaderToWriter, opts(wait)).unwrap();
            for _ in 0..n {
                let (h, got) = c.recv().unwrap();
                let got = got.to_vec();
                p.send(&hdr(Kind::Pong, h.seq, &got), &got).unwrap();
            }
        });
        let mut p = r.producer(Direction::WriterToReader, opts(wait)).unwrap();
        let mut c = r.consumer(Direction::ReaderToWriter, opts(wait)).unwrap();
        for seq in 0..n {
            let data = payload(seq, 64);
            p.send(&hdr(Kind::Ping, seq, &data), &data).unwrap();
            let (h, got) = c.recv().unwrap();
            assert_eq!((h.kind, h.seq), (Kind::Pong, seq));
            assert_eq!(got, &data[..]);
        }
        t.join().unwrap();
    }

    #[test]
    fn pingpong_spin() {
        pingpong(Wait::Spin, 20_000);
    }
    #[test]
    fn pingpong_block() {
        pingpong(Wait::Block, 2_000);
    }
    #[test]
    fn pingpong_adaptive() {
        pingpong(Wait::Adaptive, 5_000);
    }

    #[test]
    fn one_producer_per_direction() {
        let (r, _) = region(4096);
        let _p = r
            .producer(Direction::WriterToReader, opts(Wait::Spin))
            .unwrap();
        assert!(r
            .producer(Direction::WriterToReader, opts(Wait::Spin))
            .is_err());
        assert!(r
            .producer(Direction::ReaderToWriter, opts(Wait::Spin))
            .is_ok());
    }

    #[test]
    fn too_large_and_bad_capacity_are_refused() {
        let (r, _) = region(4096);
        let mut p = r
            .producer(Direction::WriterToReader, opts(Wait::Spin))
            .unwrap();
        let big = vec![0; 2048];
        let e = p.send(&hdr(Kind::Data, 0, &big), &big).unwrap_err();
        assert!(
            matches!(
                e,
                RingError::TooLarge {
                    len: 2048,
                    max: 2008
                }
            ),
            "{e}"
        );
        assert!(parse_capacity("3000").is_err());
        assert!(parse_capacity("512M").is_err());
        assert_eq!(parse_capacity("1M").unwrap(), 1 << 20);
        let e = check_size(65536, 128 << 10).unwrap_err();
        assert!(e.contains("--capacity 262144"), "{e}");
        assert!(check_size(65536, 256 << 10).is_ok());
    }

    /// A consumer on a fresh ring, a producer index set by a hostile peer.
    fn consumer_sees_head(head: u64) -> RingError {
        let (r, base) = region(4096);
        r.initialize(Role::Writer, 1);
        let mut c = r
            .consumer(Direction::WriterToReader, opts(Wait::Block))
            .unwrap();
        poke_u64(base, offsets::head(0), head);
        c.recv().unwrap_err()
    }

    #[test]
    fn hostile_producer_index_beyond_capacity() {
        let e = consumer_sees_head(4096 + 64).to_string();
        assert!(
            e.starts_with("corrupt shared region: ring 0 producer index 4160"),
            "{e}"
        );
        let e = consumer_sees_head(u64::MAX - 63).to_string();
        assert!(e.starts_with("corrupt shared region"), "{e}");
        let e = consumer_sees_head(65).to_string();
        assert!(e.contains("not a multiple of 64"), "{e}");
    }

    #[test]
    fn hostile_producer_index_going_back() {
        let (r, base) = region(4096);
        r.initialize(Role::Writer, 1);
        let mut p = r
            .producer(Direction::WriterToReader, opts(Wait::Spin))
            .unwrap();
        let mut c = r
            .consumer(Direction::WriterToReader, opts(Wait::Spin))
            .unwrap();
        p.send(&hdr(Kind::Data, 0, b"a"), b"a").unwrap();
        p.send(&hdr(Kind::Data, 1, b"b"), b"b").unwrap();
        c.recv().unwrap();
        c.recv().unwrap();
        // The consumer saw 128 and consumed it all; a producer index of 64 goes back.
        poke_u64(base, offsets::head(0), 64);
        let e = c.recv().unwrap_err().to_string();
        assert!(
            e.starts_with("corrupt shared region: ring 0 producer index 64"),
            "{e}"
        );
    }

    #[test]
    fn hostile_consumer_index_ahead_of_producer() {
        let (r, base) = region(4096);
        r.initialize(Role::Writer, 1);
        let mut p = r
            .producer(Direction::WriterToReader, opts(Wait::Spin))
            .unwrap();
        // Fill the ring so the producer has to read the consumer's index.
        let data = vec![1u8; 1000];
        for seq in 0..3 {
            p.send(&hdr(Kind::Data, seq, &data), &data).unwrap();
        }
        poke_u64(base, offsets::tail(0), 1 << 40);
        let e = p
            .send(&hdr(Kind::Data, 3, &data), &data)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("corrupt shared region: ring 0 consumer index 1099511627776"),
            "{e}"
        );
    }

    #[test]
    fn hostile_bad_magic_and_capacity() {
        let (r, base) = region(4096);
        assert!(
            r.check_header().unwrap().is_none(),
            "all zero: not ready yet"
        );
        r.initialize(Role::Writer, 1);
        assert!(r.check_header().unwrap().is_some());
        poke_u64(base, offsets::CAPACITY, 8192);
        let e = r.check_header().unwrap_err();
        assert!(
            matches!(
                e,
                RingError::CapacityMismatch {
                    found: 8192,
                    expected: 4096
                }
            ),
            "{e}"
        );
        poke_u64(base, offsets::MAGIC, 0xdead_beef);
        let e = r.check_header().unwrap_err().to_string();
        assert!(
            e.starts_with("corrupt shared region: magic 0x00000000deadbeef"),
            "{e}"
        );
        // A waiter notices a scribbled magic at its next periodic check.
        let mut c = r
            .consumer(Direction::WriterToReader, opts(Wait::Block))
            .unwrap();
        let e = c.recv().unwrap_err().to_string();
        assert!(e.contains("magic became"), "{e}");
    }

    #[test]
    fn hostile_huge_frame_length() {
        let (r, base) = region(4096);
        r.initialize(Role::Writer, 1);
        let mut p = r
            .producer(Direction::WriterToReader, opts(Wait::Spin))
            .unwrap();
        let mut c = r
            .consumer(Direction::WriterToReader, opts(Wait::Spin))
            .unwrap();
        p.send(&hdr(Kind::Data, 0, b"hi"), b"hi").unwrap();
        // Overwrite the frame's length field (header offset 32) with 1 GiB.
        let len_at = offsets::data(0, 4096) + 32;
        // SAFETY: inside the data area; the consumer is not reading concurrently.
        unsafe {
            ptr::copy_nonoverlapping((1u32 << 30).to_le_bytes().as_ptr(), base.add(len_at), 4)
        };
        let e = c.recv().unwrap_err().to_string();
        assert!(
            e.starts_with("corrupt shared region: frame at ring 0 position 0"),
            "{e}"
        );
        assert!(e.contains("exceeds the limit of 2008"), "{e}");
    }

    #[test]
    fn hostile_length_beyond_published_and_bad_checksum() {
        let (r, base) = region(4096);
        r.initialize(Role::Writer, 1);
        let mut p = r
            .producer(Direction::WriterToReader, opts(Wait::Spin))
            .unwrap();
        let mut c = r
            .consumer(Direction::WriterToReader, opts(Wait::Spin))
            .unwrap();
        p.send(&hdr(Kind::Data, 0, b"hi"), b"hi").unwrap();
        let len_at = offsets::data(0, 4096) + 32;
        // SAFETY: inside the data area; nobody reads concurrently.
        unsafe { ptr::copy_nonoverlapping(500u32.to_le_bytes().as_ptr(), base.add(len_at), 4) };
        let e = c.recv().unwrap_err().to_string();
        assert!(e.contains("only 64 are published"), "{e}");

        let (r, base) = region(4096);
        r.initialize(Role::Writer, 1);
        let mut p = r
            .producer(Direction::WriterToReader, opts(Wait::Spin))
            .unwrap();
        let mut c = r
            .consumer(Direction::WriterToReader, opts(Wait::Spin))
            .unwrap();
        p.send(&hdr(Kind::Data, 0, b"hi"), b"hi").unwrap();
        // SAFETY: inside the data area (the payload's first byte).
        unsafe { *base.add(offsets::data(0, 4096) + HEADER_LEN) = b'X' };
        let e = c.recv().unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
    }

    #[test]
    fn a_dead_peer_is_noticed_and_idle_time_is_limited() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        for wait in [Wait::Spin, Wait::Block, Wait::Adaptive] {
            let (r, _) = region(4096);
            r.initialize(Role::Writer, 1);
            let o = EndOpts {
                wait,
                peer_pid: pid,
                idle_timeout: None,
            };
            let mut c = r.consumer(Direction::WriterToReader, o).unwrap();
            let t = now_ns();
            let e = c.recv().unwrap_err();
            assert!(
                matches!(e, RingError::PeerGone { pid: p } if p == pid),
                "{e}"
            );
            assert_eq!(e.to_string(), format!("peer (pid {pid}) is gone"));
            assert!(now_ns() - t < 5_000_000_000);
        }
        let (r, _) = region(4096);
        r.initialize(Role::Writer, 1);
        let o = EndOpts {
            wait: Wait::Adaptive,
            peer_pid: 0,
            idle_timeout: Some(Duration::from_millis(200)),
        };
        let mut c = r.consumer(Direction::WriterToReader, o).unwrap();
        assert!(matches!(c.recv().unwrap_err(), RingError::TimedOut { .. }));
    }

    /// A frame published without a wake-up just before the peer died is still delivered:
    /// the periodic check finds the peer gone, sees the index moved, and lets it through.
    #[test]
    fn a_dead_peers_last_frame_is_delivered() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        let (r, base) = region(4096);
        r.initialize(Role::Writer, 1);
        let o = EndOpts {
            wait: Wait::Block,
            peer_pid: pid,
            idle_timeout: None,
        };
        let mut c = r.consumer(Direction::WriterToReader, o).unwrap();
        let base = base as usize;
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            let base = base as *mut u8;
            let h = hdr(Kind::Data, 0, b"x");
            // SAFETY: 41 bytes at the start of data area 0, which nobody else writes.
            unsafe {
                ptr::copy_nonoverlapping(h.as_ptr(), base.add(offsets::data(0, 4096)), 40);
                *base.add(offsets::data(0, 4096) + 40) = b'x';
            }
            // Publish without FUTEX_WAKE, as if the peer died right after the store.
            poke_u64(base, offsets::head(0), 64);
        });
        let (h, p) = c.recv().unwrap();
        assert_eq!((h.kind, p), (Kind::Data, &b"x"[..]));
        t.join().unwrap();
        assert!(matches!(c.recv().unwrap_err(), RingError::PeerGone { .. }));
    }

    #[test]
    fn rendezvous_attach_and_roles() {
        let (r, _) = region(4096);
        assert!(matches!(
            r.wait_for_opener(Duration::from_millis(1)),
            Err(RingError::TimedOut { .. }) | Err(RingError::Corrupt(_))
        ));
        r.initialize(Role::Reader, 9);
        let e = r.attach(Role::Reader).unwrap_err();
        assert!(
            matches!(
                e,
                RingError::SameRole {
                    role: Role::Reader,
                    ..
                }
            ),
            "{e}"
        );
        let r2 = r.clone();
        let t = std::thread::spawn(move || r2.wait_for_opener(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(r.attach(Role::Writer).unwrap(), std::process::id() as i32);
        assert_eq!(t.join().unwrap().unwrap(), std::process::id() as i32);
        assert!(matches!(
            r.attach(Role::Writer),
            Err(RingError::Busy { .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Any sequence of frame sizes goes through a small ring, wrapping many times,
        /// interleaved however the ring's room allows: what comes out is what went in.
        #[test]
        fn any_sizes_round_trip_through_a_small_ring(
            sizes in proptest::collection::vec(0usize..=2008, 1..80),
            burst in 1usize..6,
        ) {
            let (r, _) = region(4096);
            r.initialize(Role::Writer, 1);
            let mut p = r.producer(Direction::WriterToReader, opts(Wait::Spin)).unwrap();
            let mut c = r.consumer(Direction::WriterToReader, opts(Wait::Spin)).unwrap();
            let mut next_out = 0usize;
            for (seq, &len) in sizes.iter().enumerate() {
                let data = payload(seq as u64, len);
                while !p.try_send(&hdr(Kind::Data, seq as u64, &data), &data).unwrap() {
                    // Full: drain up to `burst` frames, then try again.
                    for _ in 0..burst {
                        let Some(h) = c.try_recv().unwrap() else { break };
                        prop_assert_eq!(h.seq, next_out as u64);
                        prop_assert_eq!(c.payload(), &payload(next_out as u64, sizes[next_out])[..]);
                        next_out += 1;
                    }
                }
            }
            while let Some(h) = c.try_recv().unwrap() {
                prop_assert_eq!(h.seq, next_out as u64);
                prop_assert_eq!(c.payload(), &payload(next_out as u64, sizes[next_out])[..]);
                next_out += 1;
            }
            prop_assert_eq!(next_out, sizes.len());
        }

        /// Whatever a hostile peer writes into the indices and the data area, the consumer
        /// returns frames or a "corrupt shared region" error: never a panic.
        #[test]
        fn scribbled_region_never_panics(
            head in any::<u64>(),
            garbage in proptest::collection::vec(any::<u8>(), 0..4096),
        ) {
            let (r, base) = region(4096);
            r.initialize(Role::Writer, 1);
            let mut c = r.consumer(Direction::WriterToReader, opts(Wait::Spin)).unwrap();
            // SAFETY: garbage.len() <= 4096 bytes into data area 0.
            unsafe { ptr::copy_nonoverlapping(garbage.as_ptr(), base.add(offsets::data(0, 4096)), garbage.len()) };
            poke_u64(base, offsets::head(0), head);
            for _ in 0..4 {
                match c.try_recv() {
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(e) => { prop_assert!(e.to_string().starts_with("corrupt shared region"), "{}", e); break }
                }
            }
        }
    }
}
