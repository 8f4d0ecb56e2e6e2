//! The bulk file format (F2, F3): a header page, then data blocks with a known pattern.
//!
//! Bulk mode shows what a memory-mapped file is good at: a large amount of data written once
//! through a map, kept by the file system after the writer exits (F2), and read later by
//! another process through its own map or with plain `read()` calls (F3, measured).
//!
//! ## Layout
//! | offset | size | field        | meaning                                                  |
//! |-------:|-----:|--------------|----------------------------------------------------------|
//! | 0      | 8    | `magic`      | `IPCSBULK`: this file was made by `mmap-writer --bulk`   |
//! | 8      | 4    | `version`    | [`VERSION`]                                              |
//! | 12     | 4    | `state`      | 0 = being written, 1 = complete; stored **last**, Release |
//! | 16     | 4    | `writer_pid` | who fills it (a dead writer with state 0 = stale file)   |
//! | 20     | 4    | `block_size` | bytes per pattern block ([`BLOCK_SIZE`])                 |
//! | 24     | 8    | `data_len`   | bytes of data after the header page                      |
//! | 32     | 8    | `nonce`      | this run's random number; seeds every block's pattern    |
//! | 40     | 8    | `done_ns`    | CLOCK_MONOTONIC when the writer finished                 |
//! | 48     | 8    | `writer_start` | the writer's start time (`/proc/<pid>/stat` field 22) |
//! | 56     | 4040 | zero         | padding to one page, so the data is page-aligned         |
//! | 4096   | ...  | data         | block *b*, word *i* = [`word`]`(`[`block_seed`]`(nonce, b), i)` |
//!
//! All integers little-endian. The file's length must be exactly `4096 + data_len`; a
//! reader checks it with `fstat` *before* mapping (F7: touching a map past the end of the
//! file is SIGBUS, not an error return).
//!
//! The writer is recorded by pid *and* start time ([`common::peer::Identity`]): a pid is
//! reused once its process exits, and an unrelated process that got the dead writer's
//! number must not make its unfinished file look "being filled right now". Version 1 had
//! the pid only; a version-1 file is replaced by a writer and refused by a reader.
//!
//! ## The rule for reading it
//! The reader waits until `state` is 1, loaded with Acquire through its own map, which pairs
//! with the writer's Release store: every data byte the writer stored before it is then
//! visible. A writer never reopens a completed file: a new run unlinks it and creates a new
//! inode, so a reader's map keeps the old data. Even so, the reader reads through raw
//! pointers and never makes a `&[u8]` over the map (another process of the same user could
//! still write the file; a Rust reference promises nobody does).
//!
//! ## The two programs
//! [`writer`] (`mmap-writer --bulk`) and [`reader`] (`mmap-reader --bulk`) are their own
//! code: the role files dispatch to them in one line. This file is the format they share,
//! all safe code: the pattern, the header encoding and its checks. The raw memory
//! accesses are in [`crate::map`].

pub mod reader;
pub mod writer;

use std::fmt;

use common::cli::CommonArgs;
use common::peer::Identity;
use common::ring::{Role, Wait};
use common::setup::{Flavour, Mechanism, Setup};
use common::timing::{CpuTime, Report};

/// `IPCSBULK`.
pub const MAGIC: [u8; 8] = *b"IPCSBULK";
/// Format version: 2 added `writer_start`.
pub const VERSION: u32 = 2;
/// Bytes before the data: one page (4 KiB on x86_64; checked against the real page size).
pub const HEADER_LEN: usize = 4096;
/// Bytes of the header that carry fields (the rest of the page is zero).
pub const FIELDS_LEN: usize = 56;
/// Offset of `state`, the completion marker (4-byte aligned, for an `AtomicU32`).
pub const STATE_OFFSET: usize = 12;
/// `state` while the writer fills the file.
pub const STATE_WRITING: u32 = 0;
/// `state` once every block is written.
pub const STATE_COMPLETE: u32 = 1;
/// Bytes per pattern block: each block has its own seed, so a block in the wrong place or
/// a stale block from another run is caught, not only a flipped bit.
pub const BLOCK_SIZE: usize = 64 * 1024;
/// Smallest `--file-size`: one page.
pub const MIN_FILE_SIZE: u64 = 4096;
/// Largest `--file-size`: 1 TiB (a 64-bit process can map far more, F6; this bounds typos).
pub const MAX_FILE_SIZE: u64 = 1 << 40;

/// The header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// [`STATE_WRITING`] or [`STATE_COMPLETE`].
    pub state: u32,
    /// The writer's pid: lets a reader tell a writer at work from one that died.
    pub writer_pid: i32,
    /// The writer's start time (clock ticks after boot), beside the pid: a reused pid
    /// with another start time is not the writer ([`Header::writer`]).
    pub writer_start: u64,
    /// Bytes per block (the last block may be shorter).
    pub block_size: u32,
    /// Bytes of data after the header page.
    pub data_len: u64,
    /// Seeds the pattern, so data left by another run does not verify.
    pub nonce: u64,
    /// When the writer finished (CLOCK_MONOTONIC ns), to show the data outlived it.
    pub done_ns: u64,
}

/// Why a header was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer than [`FIELDS_LEN`] bytes.
    Short(usize),
    /// All-zero magic: a file created but not yet (or never) given its header.
    NoHeaderYet,
    /// Some other magic: not a file of ours.
    NotOurs([u8; 8]),
    /// Our magic with another format version: made by another build of mmap-writer.
    Version(u32),
    /// A field out of range.
    Bad(String),
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Short(n) => write!(
                f,
                "only {n} bytes, shorter than the {FIELDS_LEN}-byte header"
            ),
            HeaderError::NoHeaderYet => write!(
                f,
                "the header is all zero: created, but no header written yet"
            ),
            HeaderError::NotOurs(m) => write!(
                f,
                "magic {:?} is not {:?}: not a bulk file of mmap-writer",
                String::from_utf8_lossy(m),
                "IPCSBULK"
            ),
            HeaderError::Version(v) => write!(
                f,
                "bulk format version {v}, made by another build of mmap-writer (this one speaks {VERSION})"
            ),
            HeaderError::Bad(why) => write!(f, "corrupt bulk header: {why}"),
        }
    }
}

impl std::error::Error for HeaderError {}

impl Header {
    /// The header's bytes, field by field (never by transmuting a struct).
    pub fn encode(&self) -> [u8; FIELDS_LEN] {
        let mut b = [0u8; FIELDS_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.state.to_le_bytes());
        b[16..20].copy_from_slice(&self.writer_pid.to_le_bytes());
        b[20..24].copy_from_slice(&self.block_size.to_le_bytes());
        b[24..32].copy_from_slice(&self.data_len.to_le_bytes());
        b[32..40].copy_from_slice(&self.nonce.to_le_bytes());
        b[40..48].copy_from_slice(&self.done_ns.to_le_bytes());
        b[48..56].copy_from_slice(&self.writer_start.to_le_bytes());
        b
    }

    /// The writer as recorded: alive only if a process with that pid *and* start time is.
    pub fn writer(&self) -> Identity {
        Identity {
            pid: self.writer_pid,
            start: self.writer_start,
        }
    }

    /// Parses and checks a header read from a file nobody vouches for.
    pub fn decode(b: &[u8]) -> Result<Header, HeaderError> {
        if b.len() < FIELDS_LEN {
            return Err(HeaderError::Short(b.len()));
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(w)
        };
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&b[0..8]);
        if magic == [0; 8] {
            return Err(HeaderError::NoHeaderYet);
        }
        if magic != MAGIC {
            return Err(HeaderError::NotOurs(magic));
        }
        let version = u32_at(8);
        if version != VERSION {
            return Err(HeaderError::Version(version));
        }
        let h = Header {
            state: u32_at(12),
            writer_pid: u32_at(16) as i32,
            block_size: u32_at(20),
            data_len: u64_at(24),
            nonce: u64_at(32),
            done_ns: u64_at(40),
            writer_start: u64_at(48),
        };
        if h.state > STATE_COMPLETE {
            return Err(HeaderError::Bad(format!(
                "state {} is neither 0 nor 1",
                h.state
            )));
        }
        if h.block_size as usize != BLOCK_SIZE {
            return Err(HeaderError::Bad(format!(
                "block size {}, expected {BLOCK_SIZE}",
                h.block_size
            )));
        }
        if !(MIN_FILE_SIZE..=MAX_FILE_SIZE).contains(&h.data_len) || !h.data_len.is_multiple_of(8) {
            return Err(HeaderError::Bad(format!(
                "data length {} is not a multiple of 8 between {MIN_FILE_SIZE} and {MAX_FILE_SIZE}",
                h.data_len
            )));
        }
        if h.writer_pid <= 0 {
            return Err(HeaderError::Bad(format!("writer pid {}", h.writer_pid)));
        }
        Ok(h)
    }

    /// The file length this header implies: header page plus data.
    pub fn file_len(&self) -> u64 {
        HEADER_LEN as u64 + self.data_len
    }

    /// Number of blocks (the last may be shorter).
    pub fn blocks(&self) -> u64 {
        self.data_len.div_ceil(BLOCK_SIZE as u64)
    }

    /// Offset in the file and length of block `b`.
    pub fn block_range(&self, b: u64) -> (usize, usize) {
        let start = b * BLOCK_SIZE as u64;
        let len = (self.data_len - start).min(BLOCK_SIZE as u64);
        (HEADER_LEN + start as usize, len as usize)
    }

    /// The data of file bytes `[start, end)`, block by block: each block's part that lies
    /// in the range (all of it for the whole file; a window may begin or end inside one).
    pub fn pieces(&self, start: u64, end: u64) -> impl Iterator<Item = Piece> + '_ {
        let data_start = HEADER_LEN as u64;
        let (start, end) = (start.max(data_start), end.min(self.file_len()));
        let first = start.saturating_sub(data_start) / BLOCK_SIZE as u64;
        (first..self.blocks()).map_while(move |b| {
            let (off, len) = self.block_range(b);
            let (bs, be) = (off as u64, (off + len) as u64);
            let (s, e) = (bs.max(start), be.min(end));
            (s < e).then(|| Piece {
                block: b,
                file_off: s,
                len: (e - s) as usize,
                first_word: (s - bs) / 8,
            })
        })
    }
}

/// A block, or the part of one that lies in a window of the file ([`Header::pieces`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// The block's number: its pattern's seed is `block_seed(nonce, block)`.
    pub block: u64,
    /// File offset of the piece's first byte.
    pub file_off: u64,
    /// Bytes in the piece (a multiple of 8).
    pub len: usize,
    /// Which word of the block's pattern the piece starts at.
    pub first_word: u64,
}

/// A timed pass over the file (the writer's fill, the reader's check through the map).
pub struct Measured {
    /// Blocks (or parts of blocks, for a window) the pass went over.
    pub blocks: u64,
    /// Data bytes it went over.
    pub bytes: u64,
    /// Wall time of the pass.
    pub ns: u64,
    /// This process's CPU time during it.
    pub cpu: CpuTime,
    /// What the report's notes say about it.
    pub notes: Vec<String>,
}

/// The bulk report, typed as the ring's: one "message" per block, mode `bulk`.
///
/// Neither side waits in a loop that spins: the reader sleeps 10 ms between looks at the
/// header, and the writer's one wait is `msync`, in the kernel. So the wait is `block`.
pub fn report(
    c: &CommonArgs,
    program: &'static str,
    role: Role,
    flavour: String,
    m: Measured,
) -> Report {
    let setup = Setup {
        program,
        mechanism: Mechanism::Mmap,
        flavour: Flavour::File(flavour),
        wait: Wait::Block,
        args: c.clone(),
        max_payload: BLOCK_SIZE,
    };
    let mut report = setup.report(role);
    report.mode = "bulk".into();
    report.size_bytes = BLOCK_SIZE as u64;
    report.count = m.blocks;
    report.bytes = m.bytes;
    // The reader checks every block; the writer only stores them (it says "sent").
    report.verified = role == Role::Reader;
    report.verified_by = "reader".into();
    report.elapsed_ns = m.ns;
    report.notes = m.notes;
    report.set_rates(m.cpu);
    report
}

/// SplitMix64: turns (nonce, block number) into a well-mixed 64-bit seed.
pub fn block_seed(nonce: u64, block: u64) -> u64 {
    let mut z = nonce.wrapping_add(block.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Word `i` of a block: cheap (one multiply, one xor-shift), different in every word, so
/// generating it costs less than the memory traffic it is compared against.
#[inline(always)]
pub fn word(seed: u64, i: u64) -> u64 {
    let x = seed ^ i.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    x ^ (x >> 32)
}

/// Fills a buffer with block pattern `seed` (tests, and what the writer stores via the map).
pub fn fill_slice(buf: &mut [u8], seed: u64) {
    for (i, w) in buf.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&word(seed, i as u64).to_le_bytes());
    }
}

/// Where a block first differs from its pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// Byte offset of the word inside the block.
    pub offset: usize,
    /// What the pattern says.
    pub expected: u64,
    /// What the file holds.
    pub found: u64,
}

/// Checks a buffer (filled by `read()`) against block pattern `seed`.
///
/// The fast path ORs the differences of all words and tests once at the end, which the
/// compiler vectorises; only a block that fails is scanned again to say where.
pub fn verify_slice(buf: &[u8], seed: u64) -> Option<Mismatch> {
    let mut diff = 0u64;
    for (i, w) in buf.chunks_exact(8).enumerate() {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        diff |= u64::from_le_bytes(a) ^ word(seed, i as u64);
    }
    if diff == 0 {
        return None;
    }
    first_mismatch(buf.len() / 8, seed, 0, |i| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&buf[i * 8..i * 8 + 8]);
        u64::from_le_bytes(a)
    })
}

/// Slow path shared by both readers: the first of `words` words that differs from the
/// pattern, `at(i)` being word `first_word + i` of the block.
pub fn first_mismatch(
    words: usize,
    seed: u64,
    first_word: u64,
    at: impl Fn(usize) -> u64,
) -> Option<Mismatch> {
    (0..words).find_map(|i| {
        let (expected, found) = (word(seed, first_word + i as u64), at(i));
        (expected != found).then_some(Mismatch {
            offset: i * 8,
            expected,
            found,
        })
    })
}

/// A byte count with an optional K, M or G suffix (powers of 1024); `example` goes into
/// the error for what is not a number.
fn parse_bytes(s: &str, example: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (examples: {example})"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown unit '{other}' (use K, M or G)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// `--file-size`: 4 KiB to 1 TiB, a multiple of 4 KiB; K, M, G suffixes (powers of 1024).
pub fn parse_file_size(s: &str) -> Result<u64, String> {
    let bytes = parse_bytes(s, "64M, 1G, 4096")?;
    if !(MIN_FILE_SIZE..=MAX_FILE_SIZE).contains(&bytes) {
        return Err(format!(
            "must be between {MIN_FILE_SIZE} bytes (one page) and {MAX_FILE_SIZE} bytes (1 TiB)"
        ));
    }
    if bytes % 4096 != 0 {
        return Err(format!("{bytes} is not a multiple of 4096 (the page size)"));
    }
    Ok(bytes)
}

/// `--offset` and `--length` of `mmap-reader --bulk` (F1): bytes with K, M, G suffixes, a
/// multiple of the page size, since `mmap(2)` maps whole pages from a page-aligned offset.
/// How they must fit the file is checked once its length is known ([`reader`]).
pub fn parse_window_bytes(s: &str) -> Result<u64, String> {
    let bytes = parse_bytes(s, "0, 64K, 1M")?;
    if bytes > MAX_FILE_SIZE + HEADER_LEN as u64 {
        return Err(format!(
            "'{s}' is larger than any bulk file (1 TiB of data)"
        ));
    }
    let page = crate::page_size() as u64;
    if bytes % page != 0 {
        return Err(format!(
            "{bytes} is not a multiple of the page size ({page} bytes): mmap(2) maps whole pages, \
             and its offset must be page-aligned (the kernel returns EINVAL otherwise)"
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            state: STATE_COMPLETE,
            writer_pid: 42,
            block_size: BLOCK_SIZE as u32,
            data_len: 3 * BLOCK_SIZE as u64 + 4096,
            nonce: 0x1234_5678_9abc_def0,
            done_ns: 99,
            writer_start: 0x0102_0304_0506_0708,
        }
    }

    #[test]
    fn header_round_trips_and_pins_the_bytes() {
        let h = header();
        let b = h.encode();
        assert_eq!(&b[0..8], b"IPCSBULK");
        assert_eq!(&b[12..16], &1u32.to_le_bytes(), "state at offset 12");
        assert_eq!(&b[16..20], &42u32.to_le_bytes(), "pid at offset 16");
        assert_eq!(
            &b[48..56],
            &0x0102_0304_0506_0708u64.to_le_bytes(),
            "start time at 48"
        );
        assert_eq!(b.len(), 56);
        assert_eq!(Header::decode(&b).unwrap(), h);
        assert_eq!(h.blocks(), 4);
        assert_eq!(h.block_range(3), (HEADER_LEN + 3 * BLOCK_SIZE, 4096));
        assert_eq!(h.file_len(), 4096 + h.data_len);
    }

    #[test]
    fn a_window_is_cut_into_the_parts_of_its_blocks() {
        let h = header();
        let all: Vec<Piece> = h.pieces(0, h.file_len()).collect();
        assert_eq!(all.len(), 4);
        assert!(all.iter().all(|p| p.first_word == 0));
        assert_eq!(all[3].len, 4096);
        // A window from the second page of block 0 to the middle of block 2.
        let start = (HEADER_LEN + 4096) as u64;
        let end = (HEADER_LEN + 2 * BLOCK_SIZE + 8192) as u64;
        let w: Vec<Piece> = h.pieces(start, end).collect();
        assert_eq!(w.len(), 3);
        assert_eq!(
            (w[0].block, w[0].file_off, w[0].first_word),
            (0, start, 512)
        );
        assert_eq!(w[0].len, BLOCK_SIZE - 4096);
        assert_eq!((w[1].block, w[1].len, w[1].first_word), (1, BLOCK_SIZE, 0));
        assert_eq!((w[2].block, w[2].len), (2, 8192));
        assert_eq!(
            h.pieces(0, HEADER_LEN as u64).count(),
            0,
            "the header page only"
        );
    }

    #[test]
    fn window_bytes_must_be_whole_pages() {
        assert_eq!(parse_window_bytes("0").unwrap(), 0);
        assert_eq!(parse_window_bytes("1M").unwrap(), 1 << 20);
        let e = parse_window_bytes("5000").unwrap_err();
        assert!(e.contains("page size") && e.contains("EINVAL"), "{e}");
        assert!(parse_window_bytes("2048G").is_err());
    }

    #[test]
    fn hostile_headers_are_refused() {
        assert_eq!(Header::decode(&[0; 10]), Err(HeaderError::Short(10)));
        assert_eq!(Header::decode(&[0; 56]), Err(HeaderError::NoHeaderYet));
        assert_eq!(
            Header::decode(&[0; 48]),
            Err(HeaderError::Short(48)),
            "a version-1 length"
        );
        let mut v1 = header().encode();
        v1[8..12].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(Header::decode(&v1), Err(HeaderError::Version(1)));
        v1[8..12].copy_from_slice(&7u32.to_le_bytes());
        assert_eq!(Header::decode(&v1), Err(HeaderError::Version(7)));
        assert!(matches!(
            Header::decode(&[b'x'; 56]),
            Err(HeaderError::NotOurs(_))
        ));
        for (off, val) in [(12usize, 5u64), (20, 1), (24, 3), (24, u64::MAX), (16, 0)] {
            let mut b = header().encode();
            let bytes = val.to_le_bytes();
            let n = if off == 24 { 8 } else { 4 };
            b[off..off + n].copy_from_slice(&bytes[..n]);
            assert!(
                matches!(Header::decode(&b), Err(HeaderError::Bad(_))),
                "offset {off} value {val}"
            );
        }
    }

    #[test]
    fn the_pattern_catches_flips_and_misplaced_blocks() {
        let mut buf = vec![0u8; BLOCK_SIZE];
        let s0 = block_seed(7, 0);
        fill_slice(&mut buf, s0);
        assert_eq!(verify_slice(&buf, s0), None);
        assert!(
            verify_slice(&buf, block_seed(7, 1)).is_some(),
            "another block"
        );
        assert!(
            verify_slice(&buf, block_seed(8, 0)).is_some(),
            "another run"
        );
        buf[1000] ^= 1;
        let m = verify_slice(&buf, s0).unwrap();
        assert_eq!(m.offset, 1000 / 8 * 8);
    }

    #[test]
    fn file_sizes_parse_with_units_and_limits() {
        assert_eq!(parse_file_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_file_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_file_size("8192").unwrap(), 8192);
        assert!(parse_file_size("100").unwrap_err().contains("4096"));
        assert!(parse_file_size("5000").unwrap_err().contains("multiple"));
        assert!(parse_file_size("2048G").unwrap_err().contains("1 TiB"));
        assert!(parse_file_size("1T").unwrap_err().contains("unknown unit"));
    }
}
