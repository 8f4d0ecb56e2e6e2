//! The region's layout: where every shared word and data area lives, pinned by const asserts.
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
//! |               56 |    8 | `creator_start`: the creator's start time (/proc stat field 22) | creator |
//! |               64 |    8 | `opener_start`: the opener's start time, stored before its pid | opener  |
//! |        52..  256 |      | zero                                                         |            |
//! |  256 + 512 d     |    8 | ring `d` producer index `head` (bytes ever published)        | producer   |
//! |  384 + 512 d     |    8 | ring `d` consumer index `tail` (bytes ever consumed)         | consumer   |
//! |  512 + 512 d     |    4 | ring `d` "consumer sleeps, waiting for data" flag (2: spins) | consumer   |
//! |  640 + 512 d     |    4 | ring `d` "producer sleeps, waiting for room" flag (2: spins) | producer   |
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
//! A record is stored at `head mod C`, and `head` advances by its length rounded up to 64
//! bytes, so every record starts on a cache line (no line is shared by a record being read
//! and the next being written):
//!
//! | record offset | size | what                                                          |
//! |--------------:|-----:|---------------------------------------------------------------|
//! |             0 |    8 | `stamp` ([`stamp`]): position and length, stored **last**      |
//! |             8 |   40 | the frame header ([`crate::frame`])                           |
//! |            48 |    n | the payload                                                   |
//!
//! **The stamp is how a record is published.** The producer writes the frame, then stores
//! the stamp with Release; the consumer, which knows the position it expects next (its
//! `tail`), polls the stamp at that position with Acquire and takes the record when it reads
//! the stamp of position `tail`. So a spinning consumer polls the record's own first cache
//! line, which is the line it must fetch anyway, instead of a separate index line and then
//! the record (one cache-line transfer per message instead of two). A stamp also says how
//! long the record is, which the frame's header must agree with. Positions only grow, so
//! whatever an earlier lap left at that offset is not the stamp of `tail`. The
//! producer also stores `head` after each record, for a consumer that sleeps (its futex
//! word) and as a second opinion the consumer checks when a stamp is not what it expects.
//!
//! Because the consumer polls that first line, the producer writes it last and in one go:
//! the rest of the record first, then header, the payload's first 16 bytes and the stamp,
//! with nothing to compute between them (the checksum is done before anything is
//! written). Each store into the polled line takes it from the consumer, and a pause
//! between two of them lets the consumer's next poll take it back
//! ([`super::spsc::Producer::frame_mut`] has the measurement). A consumer waiting for an
//! answer also prefetches the record's second line while it polls
//! ([`super::spsc::Consumer::awaits_answers`]).
//!
//! **A record never wraps.** When a record does not fit between `head` and the end of the
//! area, the producer publishes a pad there (a stamp with [`PAD_BIT`] set: "skip to the
//! start of the area") and stores the record at offset 0. So every frame lies in one piece
//! of the area, which is what lets a side build or read a frame in place (`--zero-copy`:
//! [`super::spsc::Producer::frame_mut`], [`super::spsc::Consumer::recv_in_place`]). A pad wastes the bytes
//! to the end of the area, less than one record; a record may take at most half the area
//! ([`max_record`]), so there is always room for a pad and a record once the area drains.
//! The producer also pads on purpose: a record of half a MiB or more goes back to offset 0
//! whenever the ring is empty and it fits before `head`'s offset, so large pingpong frames
//! reuse bytes that are still in the caches ([`super::spsc::producer::RESTART_FROM`]), and
//! a producer answered one at a time (pingpong) sends a record of any size back once it is
//! past the first MiB of an empty ring ([`super::spsc::producer::RESTART_WINDOW`]); a
//! frame built in place does not (it copies nothing for the caches to keep).
//!

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::frame::{HEADER_LEN, MAX_PAYLOAD};
use crate::peer::Identity;

use super::Direction;

/// `b"IPCSRING"` read as a little-endian `u64`: this region holds an ipc-study ring.
pub const RING_MAGIC: u64 = u64::from_le_bytes(*b"IPCSRING");
/// Version of the region layout. Bump it when an offset or a rule changes. Version 3: every
/// record starts with its stamp, and records never wrap (pads).
pub const RING_VERSION: u32 = 3;
/// Bytes of a record's stamp, before the frame.
pub const STAMP_LEN: usize = 8;
/// Set in a stamp: a pad, not a record; the consumer skips to the start of the area.
pub const PAD_BIT: u64 = 1 << 63;
/// Bits of a stamp that hold the record's position: `position / 64 + 1`, modulo 2^42 (a
/// value repeats only after 2^48 bytes, 281 TB, have gone through the ring).
const STAMP_POS_BITS: u32 = 42;
/// Mask of the position part.
const STAMP_POS_MASK: u64 = (1 << STAMP_POS_BITS) - 1;

/// The stamp of a record (or, with `pad`, a pad) of `len` bytes at stream position `pos`:
/// bit 63 pad, bits 42..63 `len / 64`, bits 0..42 `pos / 64 + 1`. Positions and lengths
/// are multiples of 64, and a length is at most half of 256 MiB, so both fit.
pub const fn stamp(pos: u64, len: u64, pad: bool) -> u64 {
    let p = (pos / RECORD_ALIGN as u64 + 1) & STAMP_POS_MASK;
    let l = (len / RECORD_ALIGN as u64) << STAMP_POS_BITS;
    p | l | if pad { PAD_BIT } else { 0 }
}

/// Reads a stamp found where the record at `pos` should be: `Some((len, pad))` if it is
/// that record's stamp (or its pad's), `None` if it is anything else (not yet published:
/// what an earlier lap left there).
pub const fn read_stamp(word: u64, pos: u64) -> Option<(u64, bool)> {
    if word & STAMP_POS_MASK != (pos / RECORD_ALIGN as u64 + 1) & STAMP_POS_MASK {
        return None;
    }
    let len = ((word & !PAD_BIT) >> STAMP_POS_BITS) * RECORD_ALIGN as u64;
    Some((len, word & PAD_BIT != 0))
}
/// Bytes before the first data area: the header and the index lines, padded to a page.
pub const HEADER_PAGE: usize = 4096;
/// Every record starts at a multiple of this: one cache line.
pub const RECORD_ALIGN: usize = 64;
/// Smallest capacity per direction.
pub const MIN_CAPACITY: usize = 4 << 10;
/// Largest capacity per direction: keeps every index step far below 2^32 (the futex word).
pub const MAX_CAPACITY: usize = 256 << 20;
/// Default capacity per direction: 4 MiB, 63 frames of 64 KiB. A ring larger than one
/// core's L2 cache keeps a stream's bytes moving through the shared L3 rather than from
/// the other core's L2: on an AMD EPYC Zen 4 (1 MiB L2 per core) a 64 KiB spin stream ran
/// at 11-23 GB/s through a 1 MiB ring and 23-34 GB/s through a 4 MiB one, a 4 KiB stream
/// at 2-11 against 14-20 GB/s, pingpong 64 KiB 7.6-13 against 7.2-8.6 µs (five
/// interleaved repetitions); on a Zen 2 and a Zen 5, 256 KiB to 4 MiB rings streamed
/// equally fast. 16 MiB was slower again on the Zen 4 (17-26 GB/s): the ring and the
/// copies no longer fit the L3 together. The region is 4 KiB + 2 x capacity.
pub const DEFAULT_CAPACITY: usize = 4 << 20;
/// [`DEFAULT_CAPACITY`] as `--capacity` spells it (the programs' default value).
pub const DEFAULT_CAPACITY_ARG: &str = "4M";
/// Offset of the first direction's producer line.
const LINES_AT: usize = 256;
/// Bytes per direction of shared words (four 128-byte blocks).
const LINES_PER_DIRECTION: usize = 512;
/// Which half of a little- or big-endian `u64` holds its low 32 bits.
pub(super) const LOW_HALF: usize = if cfg!(target_endian = "little") { 0 } else { 1 };

/// The header at offset 0. Every field is an atomic, because the opener reads the header
/// while the creator may still be writing it, and `opener_pid` is written by the opener.
#[repr(C)]
pub(super) struct SharedHeader {
    /// [`RING_MAGIC`]; anything else is not our region.
    pub(super) magic: AtomicU64,
    /// [`RING_VERSION`].
    pub(super) version: AtomicU32,
    /// 1 when every other field is written; stored last, with Release.
    pub(super) ready: AtomicU32,
    /// Data bytes per direction, as the creator was configured.
    pub(super) capacity: AtomicU64,
    /// Total bytes the creator sized the region to.
    pub(super) region_len: AtomicU64,
    /// Random id of this incarnation of the region.
    pub(super) session: AtomicU64,
    /// The creator's pid, stored first, so a half-built region can be told stale.
    pub(super) creator_pid: AtomicU32,
    /// The opener's pid; 0 until it attaches. The creator futex-waits on it.
    pub(super) opener_pid: AtomicU32,
    /// [`Role`] of the creator, so a second writer (or reader) is refused.
    pub(super) creator_role: AtomicU32,
    /// Zero (keeps the start times 8-aligned).
    pub(super) _pad: AtomicU32,
    /// The creator's start time in clock ticks after boot: with its pid, its identity
    /// (a pid alone may be reused by an unrelated process after the creator died).
    pub(super) creator_start: AtomicU64,
    /// The opener's start time, stored before it publishes its pid.
    pub(super) opener_start: AtomicU64,
}

/// One shared word alone on a 128-byte block (two cache lines, see the module docs).
#[repr(C, align(128))]
pub(super) struct Alone<T>(pub(super) T);

/// The four shared words of one direction, each alone on its block, because each has a
/// different writer and a different rhythm: a word that one side writes often must not
/// share a line with a word the other side reads often.
#[repr(C)]
pub(super) struct Control {
    /// Bytes ever published (a multiple of 64), written by the producer on every frame.
    /// Its low half is the consumer's futex word.
    pub(super) head: Alone<AtomicU64>,
    /// Bytes ever consumed (a multiple of 64), written by the consumer on every frame.
    /// Its low half is the producer's futex word.
    pub(super) tail: Alone<AtomicU64>,
    /// 1 while the consumer sleeps for data; 2 for good once it has said it only spins
    /// (`wait::SPINS`: the producer then publishes without the fence). Written rarely,
    /// read by every publish: alone, it stays cached in the producer's core and the check
    /// costs no cache miss.
    pub(super) consumer_sleeping: Alone<AtomicU32>,
    /// 1 while the producer sleeps for room, 2 for good once it has said it only spins;
    /// read by every release of the consumer.
    pub(super) producer_sleeping: Alone<AtomicU32>,
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
    assert!(std::mem::offset_of!(SharedHeader, creator_start) == 56);
    assert!(std::mem::offset_of!(SharedHeader, opener_start) == 64);
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
    /// `version` (u32).
    pub const VERSION: usize = 8;
    /// `ready` (u32).
    pub const READY: usize = 12;
    /// `capacity` (u64).
    pub const CAPACITY: usize = 16;
    /// `region_len` (u64).
    pub const REGION_LEN: usize = 24;
    /// `session` (u64).
    pub const SESSION: usize = 32;
    /// `creator_pid` (u32).
    pub const CREATOR_PID: usize = 40;
    /// `opener_pid` (u32).
    pub const OPENER_PID: usize = 44;
    /// `creator_role` (u32).
    pub const CREATOR_ROLE: usize = 48;
    /// `creator_start` (u64).
    pub const CREATOR_START: usize = 56;
    /// `opener_start` (u64).
    pub const OPENER_START: usize = 64;
    /// Bytes of the header fields: what [`HeaderView::decode`](super::HeaderView::decode) reads.
    pub const HEADER_FIELDS: usize = 72;
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
    (max_record(capacity) - STAMP_LEN - HEADER_LEN).min(MAX_PAYLOAD)
}

/// A record's length in the ring: stamp, header and payload, rounded up to a cache line.
pub const fn record_len(payload_len: usize) -> usize {
    (STAMP_LEN + HEADER_LEN + payload_len).div_ceil(RECORD_ALIGN) * RECORD_ALIGN
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
            "--size {size} does not fit --capacity {capacity}: a record (8-byte stamp, 40-byte header \
             and payload, rounded up to 64 bytes) may take at most half the ring ({} bytes, so the writer fills one \
             half while the reader drains the other), which allows at most {} payload bytes; use \
             --capacity {need} or more",
            max_record(capacity),
            max_payload(capacity)
        ));
    }
    Ok(())
}

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
    /// `creator_start` as found.
    pub creator_start: u64,
    /// `opener_start` as found.
    pub opener_start: u64,
}

impl HeaderView {
    /// The creator as the header records it: pid and start time.
    pub fn creator(&self) -> Identity {
        Identity {
            pid: self.creator_pid,
            start: self.creator_start,
        }
    }

    /// The opener as the header records it (pid 0: nobody attached yet).
    pub fn opener(&self) -> Identity {
        Identity {
            pid: self.opener_pid,
            start: self.opener_start,
        }
    }
}

/// Reads every header field; `ready` first with Acquire, so if it is 1 the creator's
/// fields read after it are complete.
pub(super) fn view_of(h: &SharedHeader) -> HeaderView {
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
        creator_start: h.creator_start.load(Ordering::Relaxed),
        // After the Acquire load of opener_pid: the opener stored its start time first.
        opener_start: h.opener_start.load(Ordering::Relaxed),
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
pub(crate) struct Inner {
    /// First byte of the region.
    pub(super) base: *mut u8,
    /// Bytes mapped at `base`.
    pub(super) len: usize,
    /// Capacity this side was configured with: the only capacity ever used for access.
    pub(super) capacity: usize,
    /// Keeps the mapping alive (an `MmapRaw`, a System V attachment, a test buffer).
    pub(super) _keeper: Box<dyn Send + Sync>,
    /// Which (direction, role) endpoints exist in this process: SPSC means one each.
    pub(super) claimed: [AtomicBool; 4],
}

// SAFETY: `base` points into memory that `_keeper` keeps mapped (the `from_raw` contract);
// it is only accessed through atomics or raw-pointer copies whose ranges the SPSC protocol
// assigns to exactly one endpoint, and `claimed` enforces one endpoint per range in-process.
unsafe impl Send for Inner {}
// SAFETY: as for Send: shared `&Inner` only reads `base`/`len`/`capacity` (immutable) and
// touches the region through atomics; `claimed` is atomic.
unsafe impl Sync for Inner {}

impl Inner {
    pub(super) fn header(&self) -> &SharedHeader {
        // SAFETY: `from_raw` checked that `base` is non-null, 128-byte aligned (SharedHeader
        // needs 8) and `len >= HEADER_PAGE`; the mapping lives as long as `self` (`_keeper`).
        // SharedHeader is all atomics: every bit pattern is valid and concurrent writes by
        // the peer are what atomics allow.
        unsafe { &*self.base.cast::<SharedHeader>() }
    }

    pub(super) fn control(&self, d: Direction) -> &Control {
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

    pub(super) fn data(&self, d: Direction) -> *mut u8 {
        // SAFETY: `from_raw` checked len >= region_len(capacity) = 4096 + 2 capacity, so
        // the data area of either direction, [4096 + capacity d, +capacity), is in bounds.
        unsafe { self.base.add(HEADER_PAGE + self.capacity * d as usize) }
    }
}
