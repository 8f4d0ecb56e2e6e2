//! The frame: the one message format every mechanism carries.
//!
//! A frame is a fixed 40-byte little-endian header followed by the payload. Byte streams
//! (pipe, FIFO, TCP, Unix stream) need the length field to find where one message ends
//! and the next begins (claim K5); message queues and the shared ring keep message
//! boundaries themselves and still carry the header for the sequence number, the send
//! time and the checksum.
//!
//! | offset | size | field      | meaning                                                      |
//! |-------:|-----:|------------|--------------------------------------------------------------|
//! |      0 |    4 | `magic`    | `b"IPCS"`: this is an ipc-study frame at all                 |
//! |      4 |    1 | `version`  | [`VERSION`]; a reader refuses any other                      |
//! |      5 |    1 | `kind`     | [`Kind`]: Hello, Data, Ping, Pong or End                     |
//! |      6 |    2 | `flags`    | [`FLAG_WARMUP`]: sent before timing starts; [`FLAG_HEADER_SUM`] |
//! |      8 |    8 | `nonce`    | the writer's random session id; stale frames differ          |
//! |     16 |    8 | `seq`      | 0, 1, 2, ... per session; gaps and repeats are detected      |
//! |     24 |    8 | `sent_ns`  | CLOCK_MONOTONIC when sent (a Pong echoes the Ping's); 0 on a stream's untimed Data frames |
//! |     32 |    4 | `len`      | payload length in bytes, checked against a limit first      |
//! |     36 |    4 | `checksum` | CRC-32C of header bytes 0..36 followed by the payload (only the header bytes with [`FLAG_HEADER_SUM`]) |
//!
//! The header is encoded and decoded field by field with `to_le_bytes`/`from_le_bytes`,
//! never by casting a struct, so the bytes on the wire do not depend on the compiler's
//! layout or the machine's byte order. The tests at the bottom pin those bytes.
//!
//! The decoder ([`decode`]) is total: any byte string gives a frame, "need more bytes" or
//! a [`FrameError`], never a panic, and a length above the caller's limit is refused before
//! anything is allocated for it. [`Reassembler`] uses it to find frames in a byte stream.

use std::fmt;

pub use crate::checksum::{
    checksum, checksum_combine, checksum_continue, checksum_u64, checksum_words, method,
    wide_folding, Summer,
};

/// `b"IPCS"` read as a little-endian `u32`.
pub const MAGIC: u32 = u32::from_le_bytes(*b"IPCS");
/// Version of this layout. Bump it when a field changes meaning. Version 2 added the Hello
/// frame ([`Kind::Hello`], [`crate::hello`]) that opens every session.
pub const VERSION: u8 = 2;
/// Size of the fixed header in bytes.
pub const HEADER_LEN: usize = 40;
/// The largest payload any mechanism accepts: 16 MiB. Each mechanism may set a lower one
/// (a System V queue, for instance, is bounded by `kernel.msgmax`).
pub const MAX_PAYLOAD: usize = 16 << 20;
/// An End frame's payload: the count and the bytes of Data or Ping frames sent.
pub const END_PAYLOAD_LEN: usize = 16;
/// Flag bit: this frame is warm-up traffic; a reader verifies it but does not time it.
pub const FLAG_WARMUP: u16 = 1;
/// Flag bit: the checksum covers the header only, not the payload (`--verify seq`: the
/// reader checks sequence, session and length, and need not read the payload at all).
/// The flag is itself covered by the checksum, so a flipped bit is still detected.
pub const FLAG_HEADER_SUM: u16 = 2;

/// Byte offset of the checksum field: the checksum covers the header bytes before it.
pub const CHECKSUM_AT: usize = 36;
/// Byte offset of the `sent_ns` field (8 bytes).
pub const SENT_AT: usize = 24;

/// What a frame is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// A message from writer to reader (text and stream modes).
    Data = 1,
    /// A round-trip request from the writer (pingpong mode).
    Ping = 2,
    /// The reader's answer to a Ping: same seq, same `sent_ns`, same payload.
    Pong = 3,
    /// The writer's last frame: a clean end, carrying what was sent.
    End = 4,
    /// The writer's first frame: what it runs ([`crate::hello::Hello`]), so the reader
    /// can follow it or name the difference.
    Hello = 5,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        match v {
            1 => Some(Kind::Data),
            2 => Some(Kind::Ping),
            3 => Some(Kind::Pong),
            4 => Some(Kind::End),
            5 => Some(Kind::Hello),
            _ => None,
        }
    }
}

/// A decoded header. The payload is not part of it: it stays in the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// What this frame is for.
    pub kind: Kind,
    /// Bit set of `FLAG_*`.
    pub flags: u16,
    /// The sending session's random id.
    pub nonce: u64,
    /// Sequence number within the session.
    pub seq: u64,
    /// CLOCK_MONOTONIC nanoseconds when the frame was (first) sent; 0 on a stream's Data
    /// frames that are not timed (`common::session::LATENCY_EVERY`).
    pub sent_ns: u64,
    /// Payload length in bytes.
    pub len: u32,
    /// CRC-32C over header bytes 0..36 and the payload.
    pub checksum: u32,
}

impl Header {
    /// Whether the warm-up flag is set.
    pub fn is_warmup(&self) -> bool {
        self.flags & FLAG_WARMUP != 0
    }

    /// Whether the checksum covers the header only ([`FLAG_HEADER_SUM`]).
    pub fn header_sum_only(&self) -> bool {
        self.flags & FLAG_HEADER_SUM != 0
    }

    /// Payload length as a `usize`.
    pub fn payload_len(&self) -> usize {
        self.len as usize
    }
}

/// The fields a sender chooses; [`encode_header`] adds magic, version, length and checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fields {
    /// What the frame is for.
    pub kind: Kind,
    /// Bit set of `FLAG_*`.
    pub flags: u16,
    /// Session id.
    pub nonce: u64,
    /// Sequence number.
    pub seq: u64,
    /// Send time, CLOCK_MONOTONIC ns (0: not timed).
    pub sent_ns: u64,
}

/// Why bytes are not a valid frame. Each case names what was wrong and the limit.
#[derive(Debug)]
pub enum FrameError {
    /// The first four bytes are not `b"IPCS"`: not a frame, or the stream lost its place.
    BadMagic { found: [u8; 4] },
    /// A frame of another layout version.
    BadVersion { found: u8 },
    /// A kind byte outside 1..=5.
    BadKind { found: u8 },
    /// The length field is above the reader's limit; nothing was allocated for it.
    TooLong { len: u64, max: usize },
    /// An End frame whose payload is not 16 bytes.
    BadEnd { len: u32 },
    /// A Hello frame longer than [`crate::hello::MAX_LEN`].
    BadHello { len: u32 },
    /// The checksum does not match the header and payload that arrived.
    BadChecksum {
        expected: u32,
        computed: u32,
        seq: u64,
    },
    /// The payload given to the encoder is larger than the caller's buffer or the format.
    PayloadTooLarge { len: usize, max: usize },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::BadMagic { found } => write!(
                f,
                "not an ipc-study frame: magic bytes {:02x?} (expected \"IPCS\")",
                found
            ),
            FrameError::BadVersion { found } => write!(
                f,
                "frame version {found} is not supported (this build speaks version {VERSION})"
            ),
            FrameError::BadKind { found } => {
                write!(f, "frame kind {found} is unknown (expected 1..=5)")
            }
            FrameError::TooLong { len, max } => write!(
                f,
                "frame payload length {len} bytes exceeds the limit of {max} bytes"
            ),
            FrameError::BadEnd { len } => write!(
                f,
                "End frame payload is {len} bytes (expected {END_PAYLOAD_LEN})"
            ),
            FrameError::BadHello { len } => write!(
                f,
                "Hello frame payload is {len} bytes (at most {} expected)",
                crate::hello::MAX_LEN
            ),
            FrameError::BadChecksum {
                expected,
                computed,
                seq,
            } => write!(
                f,
                "frame seq {seq} is corrupt: checksum {computed:#010x} computed, {expected:#010x} in the header"
            ),
            FrameError::PayloadTooLarge { len, max } => write!(
                f,
                "payload of {len} bytes does not fit: the limit is {max} bytes"
            ),
        }
    }
}

impl std::error::Error for FrameError {}

/// Builds the 40 header bytes for `payload`, checksum included.
///
/// Fails only when the payload is longer than [`MAX_PAYLOAD`] (the format's own ceiling).
///
/// ```
/// use common::frame::{decode, encode_header, Decoded, Fields, Kind, HEADER_LEN};
/// let f = Fields { kind: Kind::Ping, flags: 0, nonce: 0xabc, seq: 3, sent_ns: 42 };
/// let header = encode_header(f, b"hi").unwrap();
/// assert_eq!(&header[..4], b"IPCS");
/// let wire = [&header[..], b"hi"].concat();
/// let Decoded::Frame { header: h, total } = decode(&wire, 1024).unwrap() else { panic!() };
/// assert_eq!((h.kind, h.seq, h.sent_ns, total), (Kind::Ping, 3, 42, HEADER_LEN + 2));
/// ```
pub fn encode_header(fields: Fields, payload: &[u8]) -> Result<[u8; HEADER_LEN], FrameError> {
    let summed = if fields.flags & FLAG_HEADER_SUM != 0 {
        &[][..]
    } else {
        payload
    };
    encode_header_with(fields, payload.len(), |prefix| checksum(prefix, summed))
}

/// [`encode_header`] for a payload of `payload_len` bytes whose checksum the caller
/// derives: `sum` gets the header's first 36 bytes and returns the CRC-32C of them and
/// the payload (or of them alone with [`FLAG_HEADER_SUM`]). [`crate::resum`] derives it
/// for the payloads a session repeats.
pub fn encode_header_with(
    fields: Fields,
    payload_len: usize,
    sum: impl FnOnce(&[u8]) -> u32,
) -> Result<[u8; HEADER_LEN], FrameError> {
    // Whole 8-byte words, so that the checksum's 8-byte loads just below are each served
    // by the one store that wrote them: loads that span several smaller stores wait for
    // them all to reach the cache. With the 4-byte step of the `crc32` loop for the last
    // word, on an Intel Xeon (family 6 model 207) a 64-byte spin stream went from 0.47 to
    // 0.51 GB/s (medians of 8 interleaved runs), its writer being the bound.
    let (words, len) = header_words(fields, payload_len)?;
    let mut h = [0u8; HEADER_LEN];
    write_header(&mut h, words, len, 0);
    let crc = sum(&h[..CHECKSUM_AT]);
    h[36..40].copy_from_slice(&crc.to_le_bytes());
    Ok(h)
}

/// The header's summed prefix as four 8-byte words and the 4-byte length, or the error
/// for a payload longer than [`MAX_PAYLOAD`] (the format's own ceiling).
fn header_words(fields: Fields, payload_len: usize) -> Result<([u64; 4], u32), FrameError> {
    if payload_len > MAX_PAYLOAD {
        return Err(FrameError::PayloadTooLarge {
            len: payload_len,
            max: MAX_PAYLOAD,
        });
    }
    let words = [first_word(fields), fields.nonce, fields.seq, fields.sent_ns];
    // The cast cannot truncate: MAX_PAYLOAD < u32::MAX, checked above.
    Ok((words, payload_len as u32))
}

/// Stores a header's words, length and checksum into `out`, 8 bytes at a time.
fn write_header(out: &mut [u8; HEADER_LEN], words: [u64; 4], len: u32, crc: u32) {
    for (k, w) in words.iter().enumerate() {
        out[8 * k..8 * k + 8].copy_from_slice(&w.to_le_bytes());
    }
    out[32..36].copy_from_slice(&len.to_le_bytes());
    out[36..40].copy_from_slice(&crc.to_le_bytes());
}

/// The header's first 8 bytes as one little-endian word: magic, version, kind, flags.
fn first_word(fields: Fields) -> u64 {
    u64::from(MAGIC)
        | u64::from(VERSION) << 32
        | (fields.kind as u64) << 40
        | u64::from(fields.flags) << 48
}

/// [`encode_header_with`] straight into `out`, the header's place in the frame being
/// built, with the header prefix's CRC-32C computed from the values before anything is
/// stored ([`checksum_words`]): `sum` gets that CRC and returns the frame's (the prefix
/// continued over the payload, [`crate::checksum::checksum_continue`], or the prefix's own
/// with [`FLAG_HEADER_SUM`]). For the senders into a shared ring: nothing stored here is
/// read back. A header built in memory and then copied is read back, by loads of other
/// widths than the stores that wrote it, and such a load waits until every earlier store
/// of the core has reached the cache, which in a ring includes the stamp the consumer
/// may be polling (`Producer::frame_mut`).
pub fn encode_header_into(
    fields: Fields,
    payload_len: usize,
    sum: impl FnOnce(u32) -> u32,
    out: &mut [u8; HEADER_LEN],
) -> Result<(), FrameError> {
    let (words, len) = header_words(fields, payload_len)?;
    let crc = sum(checksum_words(words, len));
    write_header(out, words, len, crc);
    Ok(())
}

/// [`encode_header_into`] for a header whose checksum is already known: a Pong's, which is
/// its Ping's XOR a constant ([`crate::resum::pong_delta`]). No prefix CRC is computed:
/// it would only be thrown away.
pub fn encode_header_summed(
    fields: Fields,
    payload_len: usize,
    crc: u32,
    out: &mut [u8; HEADER_LEN],
) -> Result<(), FrameError> {
    let (words, len) = header_words(fields, payload_len)?;
    write_header(out, words, len, crc);
    Ok(())
}

/// Encodes header and payload into `out` and returns the frame's total length.
///
/// For mechanisms that hand the kernel one buffer per message (message queues) or copy a
/// frame into shared memory: the caller owns and reuses `out`, so nothing is allocated.
pub fn encode_into(fields: Fields, payload: &[u8], out: &mut [u8]) -> Result<usize, FrameError> {
    let total = HEADER_LEN + payload.len();
    if total > out.len() {
        return Err(FrameError::PayloadTooLarge {
            len: payload.len(),
            max: out.len().saturating_sub(HEADER_LEN),
        });
    }
    let h = encode_header(fields, payload)?;
    out[..HEADER_LEN].copy_from_slice(&h);
    out[HEADER_LEN..total].copy_from_slice(payload);
    Ok(total)
}

/// The payload of an End frame: count and bytes of the Data/Ping frames sent before it.
pub fn end_payload(count: u64, bytes: u64) -> [u8; END_PAYLOAD_LEN] {
    let mut p = [0u8; END_PAYLOAD_LEN];
    p[..8].copy_from_slice(&count.to_le_bytes());
    p[8..].copy_from_slice(&bytes.to_le_bytes());
    p
}

/// Reads an End frame's payload back as `(count, bytes)`; `None` if it is not 16 bytes.
pub fn parse_end(payload: &[u8]) -> Option<(u64, u64)> {
    let count: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    let bytes: [u8; 8] = payload.get(8..16)?.try_into().ok()?;
    (payload.len() == END_PAYLOAD_LEN)
        .then(|| (u64::from_le_bytes(count), u64::from_le_bytes(bytes)))
}

/// Decodes and checks a header, without the payload's checksum (which needs the payload).
///
/// Returns `Ok(None)` when fewer than [`HEADER_LEN`] bytes are given.
pub fn decode_header(buf: &[u8], max_payload: usize) -> Result<Option<Header>, FrameError> {
    // The magic is checked on whatever prefix has arrived, so a stream of garbage is
    // refused at its first bytes instead of waiting for a whole header's worth.
    // (A whole header skips this: the check below is the same, in one 4-byte comparison
    // rather than a call to memcmp, and it runs once per frame.)
    let seen = buf.len().min(4);
    if buf.len() < HEADER_LEN && buf[..seen] != MAGIC.to_le_bytes()[..seen] {
        let mut found = [0u8; 4];
        found[..seen].copy_from_slice(&buf[..seen]);
        return Err(FrameError::BadMagic { found });
    }
    let Some(h) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    // Every index below is inside `h`, which is exactly HEADER_LEN bytes long.
    let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[i..i + 8]);
        u64::from_le_bytes(b)
    };
    if u32_at(0) != MAGIC {
        return Err(FrameError::BadMagic {
            found: [h[0], h[1], h[2], h[3]],
        });
    }
    if h[4] != VERSION {
        return Err(FrameError::BadVersion { found: h[4] });
    }
    let kind = Kind::from_u8(h[5]).ok_or(FrameError::BadKind { found: h[5] })?;
    let len = u32_at(32);
    // The limit is checked here, before any caller sizes a buffer from `len`.
    if len as u64 > max_payload.min(MAX_PAYLOAD) as u64 {
        return Err(FrameError::TooLong {
            len: len as u64,
            max: max_payload.min(MAX_PAYLOAD),
        });
    }
    if kind == Kind::End && len as usize != END_PAYLOAD_LEN {
        return Err(FrameError::BadEnd { len });
    }
    if kind == Kind::Hello && len as usize > crate::hello::MAX_LEN {
        return Err(FrameError::BadHello { len });
    }
    Ok(Some(Header {
        kind,
        flags: u16_at(6),
        nonce: u64_at(8),
        seq: u64_at(16),
        sent_ns: u64_at(24),
        len,
        checksum: u32_at(36),
    }))
}

/// Checks a payload against the checksum in its header bytes.
pub fn verify(header: &Header, header_bytes: &[u8], payload: &[u8]) -> Result<(), FrameError> {
    let summed = if header.flags & FLAG_HEADER_SUM != 0 {
        &[][..]
    } else {
        payload
    };
    check_sum(header, checksum(&header_bytes[..CHECKSUM_AT], summed))
}

/// The [`verify`] verdict for a checksum computed by the caller (a [`Summer`]).
pub fn check_sum(header: &Header, computed: u32) -> Result<(), FrameError> {
    if computed != header.checksum {
        return Err(FrameError::BadChecksum {
            expected: header.checksum,
            computed,
            seq: header.seq,
        });
    }
    Ok(())
}

/// What [`decode`] found at the start of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole, checked frame: payload at `HEADER_LEN..total` of the buffer.
    Frame { header: Header, total: usize },
    /// Not enough bytes yet: a frame needs `total` bytes in all (header first, then payload).
    NeedMore { total: usize },
}

/// Decodes the frame at the start of `buf`. Total: never panics, whatever the bytes.
pub fn decode(buf: &[u8], max_payload: usize) -> Result<Decoded, FrameError> {
    let Some(header) = decode_header(buf, max_payload)? else {
        return Ok(Decoded::NeedMore { total: HEADER_LEN });
    };
    let total = HEADER_LEN + header.payload_len();
    let Some(frame) = buf.get(..total) else {
        return Ok(Decoded::NeedMore { total });
    };
    verify(&header, frame, &frame[HEADER_LEN..])?;
    Ok(Decoded::Frame { header, total })
}

/// Finds whole frames in the bytes of a stream: the reassembly a byte stream needs (K5).
///
/// It does no I/O. The caller reads into [`Reassembler::spare`] (one `read(2)` asking for
/// as much as there is room for), reports the count with [`Reassembler::filled`], and takes
/// the frames that became whole with [`Reassembler::next_frame`]. So many small frames
/// that arrived together come out of one system call, and a large frame that arrives in
/// pieces is put back together. The buffer grows only to fit one frame whose header passed
/// the length check, so memory is bounded by the limit, not by the message count.
///
/// ```
/// use common::frame::{encode_into, Fields, Kind, Reassembler, HEADER_LEN};
/// let mut wire = vec![0; HEADER_LEN + 5];
/// let f = Fields { kind: Kind::Data, flags: 0, nonce: 1, seq: 0, sent_ns: 0 };
/// encode_into(f, b"hello", &mut wire).unwrap();
/// let mut frames = Reassembler::new(1 << 20);
/// for piece in wire.chunks(7) {
///     // stands for read(2) returning 7 bytes at a time
///     frames.spare()[..piece.len()].copy_from_slice(piece);
///     frames.filled(piece.len());
/// }
/// let (header, payload) = frames.next_frame().unwrap().unwrap();
/// assert_eq!((header.seq, payload), (0, &b"hello"[..]));
/// assert!(frames.next_frame().unwrap().is_none() && frames.cut().is_none());
/// ```
#[derive(Debug)]
pub struct Reassembler {
    /// Receive buffer; bytes `start..end` are received but not yet handed out.
    buf: Vec<u8>,
    /// First byte not yet handed out.
    start: usize,
    /// One past the last byte received.
    end: usize,
    /// Bytes the frame at `start` needs in all (header, or header + payload), once known.
    need: usize,
    /// Largest payload accepted; longer frames are refused before the buffer grows.
    max_payload: usize,
    /// Reads that brought data, for showing K5 (`--show-reads`).
    reads: u64,
}

/// Default receive buffer: large enough that one read drains a full 1 MiB pipe.
pub const DEFAULT_READ_BUFFER: usize = 1 << 20;

impl Reassembler {
    /// A reassembler with the default buffer size.
    pub fn new(max_payload: usize) -> Self {
        Self::with_capacity(max_payload, DEFAULT_READ_BUFFER)
    }

    /// A reassembler whose buffer starts at `capacity` bytes (at least one header).
    pub fn with_capacity(max_payload: usize, capacity: usize) -> Self {
        Reassembler {
            buf: vec![0; capacity.max(HEADER_LEN)],
            start: 0,
            end: 0,
            need: HEADER_LEN,
            max_payload: max_payload.min(MAX_PAYLOAD),
            reads: 0,
        }
    }

    /// The next whole, checked frame among the bytes received, or `None` until more
    /// arrive. A bad frame (magic, version, length over the limit, checksum) is an error.
    pub fn next_frame(&mut self) -> Result<Option<(Header, &[u8])>, FrameError> {
        match decode(&self.buf[self.start..self.end], self.max_payload)? {
            Decoded::Frame { header, total } => {
                let at = self.start;
                self.start += total;
                self.need = HEADER_LEN;
                if self.start == self.end {
                    // Nothing left: the next read can use the whole buffer.
                    self.start = 0;
                    self.end = 0;
                }
                Ok(Some((header, &self.buf[at + HEADER_LEN..at + total])))
            }
            Decoded::NeedMore { total } => {
                self.need = total;
                Ok(None)
            }
        }
    }

    /// Room for the next read: at least the rest of the frame in progress. The bytes of
    /// that frame are moved to the front first when it would run past the end, and the
    /// buffer grows only for a frame whose length passed the check in `decode_header`.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start + self.need > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.need > self.buf.len() {
                self.buf.resize(self.need, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into [`Reassembler::spare`].
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
        if n > 0 {
            self.reads += 1;
        }
    }

    /// At end of stream: `None` if it ended between frames, else `Some((have, need))`,
    /// the bytes of the unfinished frame and how many it announced.
    pub fn cut(&self) -> Option<(usize, usize)> {
        let have = self.end - self.start;
        (have > 0).then_some((have, self.need.max(have)))
    }

    /// How many reads brought data so far.
    pub fn reads(&self) -> u64 {
        self.reads
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fields(kind: Kind, seq: u64) -> Fields {
        Fields {
            kind,
            flags: 0,
            nonce: 0x1122_3344_5566_7788,
            seq,
            sent_ns: 1_000_000_007,
        }
    }

    fn frame(kind: Kind, seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0; HEADER_LEN + payload.len()];
        let n = encode_into(fields(kind, seq), payload, &mut v).unwrap();
        assert_eq!(n, v.len());
        v
    }

    /// Pins the bytes on the wire: a change of layout must change this test on purpose.
    #[test]
    fn header_bytes_are_pinned() {
        let h = encode_header(fields(Kind::Ping, 3), b"hi").unwrap();
        let expected_prefix: [u8; 36] = [
            b'I', b'P', b'C', b'S', // magic
            2,    // version
            2,    // kind = Ping
            0, 0, // flags
            0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // nonce
            3, 0, 0, 0, 0, 0, 0, 0, // seq
            0x07, 0xca, 0x9a, 0x3b, 0, 0, 0, 0, // sent_ns = 1_000_000_007
            2, 0, 0, 0, // len
        ];
        assert_eq!(&h[..36], &expected_prefix);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&expected_prefix), b"hi");
        assert_eq!(&h[36..], &crc.to_le_bytes());
    }

    proptest! {
        /// A header written straight into its place from the values, its prefix summed
        /// from the words, is byte for byte the one built in memory, with or without the
        /// payload in the checksum.
        #[test]
        fn a_header_encoded_into_its_place_is_the_same_header(
            kind in 1u8..6, flags: u16, nonce: u64, seq: u64, sent: u64, len in 0usize..300
        ) {
            let kind = Kind::from_u8(kind).unwrap();
            let f = Fields { kind, flags: flags & !FLAG_HEADER_SUM, nonce, seq, sent_ns: sent };
            let payload: Vec<u8> = (0..len).map(|i| (i as u64 ^ seq) as u8).collect();
            let mut out = [0u8; HEADER_LEN];
            encode_header_into(f, len, |c| checksum_continue(c, &[], &payload), &mut out).unwrap();
            prop_assert_eq!(out, encode_header(f, &payload).unwrap());
            let header_only = Fields { flags: flags | FLAG_HEADER_SUM, ..f };
            encode_header_into(header_only, len, |c| c, &mut out).unwrap();
            prop_assert_eq!(out, encode_header(header_only, &payload).unwrap());
        }
    }

    /// The checksum is standard CRC-32C: an independent implementation agrees.
    #[test]
    fn checksum_matches_an_independent_crc32c() {
        for len in [0usize, 1, 7, 64, 104, 1000, 4095, 4096, 65536, 100_003] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            let prefix = [0x5au8; 36];
            let expected = crc32c::crc32c_append(crc32c::crc32c(&prefix), &payload);
            assert_eq!(checksum(&prefix, &payload), expected, "length {len}");
            // Both implementations, whichever the dispatch picks for this length.
            let mut d = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
            d.update(&prefix);
            d.update(&payload);
            assert_eq!(d.finalize() as u32, expected, "crc-fast, length {len}");
        }
    }

    #[test]
    fn every_kind_round_trips() {
        for kind in [Kind::Data, Kind::Ping, Kind::Pong, Kind::End, Kind::Hello] {
            let payload: Vec<u8> = if kind == Kind::End {
                end_payload(5, 320).to_vec()
            } else {
                (0..100u8).collect()
            };
            let bytes = frame(kind, 9, &payload);
            match decode(&bytes, MAX_PAYLOAD).unwrap() {
                Decoded::Frame { header, total } => {
                    assert_eq!(header.kind, kind);
                    assert_eq!(header.seq, 9);
                    assert_eq!(header.nonce, 0x1122_3344_5566_7788);
                    assert_eq!(header.sent_ns, 1_000_000_007);
                    assert_eq!(total, bytes.len());
                    assert_eq!(&bytes[HEADER_LEN..total], &payload[..]);
                }
                other => panic!("expected a frame, got {other:?}"),
            }
        }
        assert_eq!(parse_end(&end_payload(5, 320)), Some((5, 320)));
    }

    #[test]
    fn truncated_input_needs_more() {
        let bytes = frame(Kind::Data, 1, &[7; 50]);
        for cut in 0..bytes.len() {
            let want = if cut < HEADER_LEN {
                HEADER_LEN
            } else {
                bytes.len()
            };
            assert_eq!(
                decode(&bytes[..cut], MAX_PAYLOAD).unwrap(),
                Decoded::NeedMore { total: want },
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn bad_magic_version_kind_and_checksum_each_have_their_own_error() {
        let good = frame(Kind::Data, 1, b"payload");
        let mut b = good.clone();
        b[0] = b'X';
        assert!(matches!(
            decode(&b, MAX_PAYLOAD),
            Err(FrameError::BadMagic { .. })
        ));
        let mut b = good.clone();
        b[4] = 1; // a version-1 frame, from a build before the Hello
        assert!(matches!(
            decode(&b, MAX_PAYLOAD),
            Err(FrameError::BadVersion { found: 1 })
        ));
        let mut b = good.clone();
        b[5] = 9;
        assert!(matches!(
            decode(&b, MAX_PAYLOAD),
            Err(FrameError::BadKind { found: 9 })
        ));
        let mut b = good.clone();
        *b.last_mut().unwrap() ^= 1;
        assert!(matches!(
            decode(&b, MAX_PAYLOAD),
            Err(FrameError::BadChecksum { seq: 1, .. })
        ));
        let mut b = good;
        b[16] ^= 1; // the header is covered too: a flipped seq bit is caught
        assert!(matches!(
            decode(&b, MAX_PAYLOAD),
            Err(FrameError::BadChecksum { .. })
        ));
    }

    #[test]
    fn garbage_is_refused_at_its_first_byte() {
        assert!(matches!(
            decode(b"x", MAX_PAYLOAD),
            Err(FrameError::BadMagic { .. })
        ));
        assert_eq!(
            decode(b"IPC", MAX_PAYLOAD).unwrap(),
            Decoded::NeedMore { total: HEADER_LEN }
        );
    }

    #[test]
    fn end_frame_with_wrong_length_is_refused() {
        let b = frame(Kind::End, 1, &[0; 8]);
        assert!(matches!(
            decode(&b, MAX_PAYLOAD),
            Err(FrameError::BadEnd { len: 8 })
        ));
    }

    /// What a stream gave: the driver below stands for a program's read loop.
    #[derive(Debug, PartialEq)]
    enum Got {
        Frame(Header, Vec<u8>),
        Eof,
        EofMidFrame { have: usize, need: usize },
    }

    /// Reads from `data` at most `chunk` bytes per "read(2)" until a frame is whole.
    fn next(r: &mut Reassembler, data: &mut &[u8], chunk: usize) -> Result<Got, FrameError> {
        loop {
            if let Some((h, p)) = r.next_frame()? {
                return Ok(Got::Frame(h, p.to_vec()));
            }
            let spare = r.spare();
            let n = chunk.min(spare.len()).min(data.len());
            spare[..n].copy_from_slice(&data[..n]);
            *data = &data[n..];
            if n == 0 {
                return Ok(match r.cut() {
                    None => Got::Eof,
                    Some((have, need)) => Got::EofMidFrame { have, need },
                });
            }
            r.filled(n);
        }
    }

    #[test]
    fn oversize_length_fails_before_the_buffer_grows() {
        let mut b = frame(Kind::Data, 0, b"x");
        b[32..36].copy_from_slice(&u32::MAX.to_le_bytes()); // claims 4 GiB
        let mut r = Reassembler::with_capacity(1024, 4096);
        match next(&mut r, &mut &b[..], usize::MAX) {
            Err(FrameError::TooLong { len, max: 1024 }) => assert_eq!(len, u32::MAX as u64),
            other => panic!("expected TooLong, got {other:?}"),
        }
        assert_eq!(
            r.buf.capacity(),
            4096,
            "nothing was allocated for the claimed length"
        );
    }

    #[test]
    fn stream_end_inside_a_frame_is_reported_as_such() {
        let b = frame(Kind::Data, 0, &[1; 100]);
        let mut r = Reassembler::new(MAX_PAYLOAD);
        match next(&mut r, &mut &b[..70], usize::MAX).unwrap() {
            Got::EofMidFrame { have: 70, need } => assert_eq!(need, HEADER_LEN + 100),
            other => panic!("expected EofMidFrame, got {other:?}"),
        }
        let mut r = Reassembler::new(MAX_PAYLOAD);
        match next(&mut r, &mut &b[..20], usize::MAX).unwrap() {
            Got::EofMidFrame { have: 20, need } => {
                assert_eq!(need, HEADER_LEN, "the header is not whole")
            }
            other => panic!("expected EofMidFrame, got {other:?}"),
        }
        let mut r = Reassembler::new(MAX_PAYLOAD);
        assert_eq!(next(&mut r, &mut &b[..0], usize::MAX).unwrap(), Got::Eof);
    }

    #[test]
    fn many_small_frames_come_out_of_one_read() {
        let mut wire = Vec::new();
        for seq in 0..50 {
            wire.extend(frame(Kind::Data, seq, &seq.to_le_bytes()));
        }
        let mut r = Reassembler::new(MAX_PAYLOAD);
        let mut data = &wire[..];
        for seq in 0..50u64 {
            match next(&mut r, &mut data, usize::MAX).unwrap() {
                Got::Frame(header, payload) => {
                    assert_eq!(header.seq, seq);
                    assert_eq!(payload, seq.to_le_bytes());
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(r.reads(), 1);
    }

    proptest! {
        #[test]
        fn decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200), max in 0usize..300) {
            let _ = decode(&bytes, max);
            let mut r = Reassembler::with_capacity(max, 64);
            let mut data = &bytes[..];
            for _ in 0..10 {
                match next(&mut r, &mut data, 17) {
                    Ok(Got::Frame(..)) => continue,
                    _ => break,
                }
            }
        }

        #[test]
        fn frames_survive_any_cutting(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..8),
            chunk in 1usize..97,
            cap in 40usize..200,
        ) {
            let mut wire = Vec::new();
            for (i, p) in payloads.iter().enumerate() {
                wire.extend(frame(Kind::Data, i as u64, p));
            }
            let mut r = Reassembler::with_capacity(MAX_PAYLOAD, cap);
            let mut data = &wire[..];
            for (i, p) in payloads.iter().enumerate() {
                match next(&mut r, &mut data, chunk).unwrap() {
                    Got::Frame(header, payload) => {
                        prop_assert_eq!(header.seq, i as u64);
                        prop_assert_eq!(&payload[..], &p[..]);
                    }
                    other => prop_assert!(false, "expected frame {}, got {:?}", i, other),
                }
            }
            prop_assert_eq!(next(&mut r, &mut data, chunk).unwrap(), Got::Eof);
        }

        #[test]
        fn any_single_bit_flip_is_detected(payload in proptest::collection::vec(any::<u8>(), 0..64), bit in 0usize..(104 * 8)) {
            let good = frame(Kind::Data, 7, &payload);
            let bit = bit % (good.len() * 8);
            let mut bad = good.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            // A flip may make the frame need more bytes (length grew): that is not a frame either.
            let accepted = matches!(decode(&bad, MAX_PAYLOAD), Ok(Decoded::Frame { .. }));
            prop_assert!(!accepted, "bit {} flipped and the frame was still accepted", bit);
        }
    }
}
