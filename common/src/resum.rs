//! Checksums a sender derives instead of re-reading the payload.
//!
//! Every receiver checks a frame's CRC-32C over every byte it received: that is the
//! integrity check, and nothing here changes it. A *sender* often knows more: a timed
//! Data or Ping frame repeats one payload buffer with only its first 8 bytes (the sequence
//! number) changed, and a Pong repeats its Ping with only the header's kind byte changed.
//! A CRC is affine over GF(2): for messages of equal length, `crc(A) ^ crc(B)` depends only
//! on `A ^ B`. So the sender computes the new checksum from one it already has and the few
//! bytes that changed, in nanoseconds, instead of reading `--size` bytes again (at 64 KiB
//! and more that pass costs as much as the copy itself). The frame carries exactly the
//! checksum a full computation gives; the tests check both ways against each other.
//!
//! - [`Shift`]: "this CRC, followed by `n` more bytes": `crc(X || Y)` is
//!   `shift_|Y|(crc(X)) ^ crc(Y)` for CRC-32C, whose initial value and final XOR are equal.
//!   `shift` is linear in the CRC value, so it is four table lookups once built for one
//!   length. [`Repeated`] uses it for a payload whose tail never changes.
//! - [`pong_delta`]: what a Ping's checksum is XORed with to become its Pong's.
//! - [`SendTime`]: what a frame's checksum is XORed with when its send time is written
//!   into a header sealed with 0 there (a Ping built while the writer waits for the Pong
//!   before it, stamped once that Pong is in).
//! - [`SlotSums`]: a frame built in place in a shared ring's slot (`--zero-copy`), whose
//!   payload past its first 8 bytes is what the slot held: its checksum from the CRC of
//!   those bytes the last time a frame was built there (the producer's memo of the slot).

use crate::frame::{
    checksum, checksum_combine, checksum_continue, checksum_u64, Kind, CHECKSUM_AT, SENT_AT,
};

/// The linear map "a CRC-32C value, followed by `n` more bytes": for any `X` and any `Y`
/// of `n` bytes, `crc(X || Y) == shift.apply(crc(X)) ^ crc(Y)`.
#[derive(Clone, Debug)]
pub struct Shift {
    n: usize,
    /// `table[k][b]`: the image of byte value `b` in byte `k` of the CRC.
    table: Box<[[u32; 256]; 4]>,
}

impl Shift {
    /// The map for `n` following bytes: 32 combinations (one per bit of a CRC value), then
    /// tables of 4 x 256 entries. Built once per length, in microseconds.
    pub fn new(n: usize) -> Shift {
        // The image of each bit of a CRC value: combine(c1, c2, n) is shift(c1) ^ c2.
        let column: [u32; 32] = std::array::from_fn(|i| checksum_combine(1 << i, 0, n));
        let mut table = Box::new([[0u32; 256]; 4]);
        for (k, t) in table.iter_mut().enumerate() {
            for (b, slot) in t.iter_mut().enumerate() {
                *slot = (0..8)
                    .filter(|j| b & (1 << j) != 0)
                    .fold(0, |acc, j| acc ^ column[8 * k + j]);
            }
        }
        Shift { n, table }
    }

    /// How many bytes this map skips.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Never true for a useful map, but clippy asks for it beside `len`.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// `crc` followed by `n` bytes of a message whose own CRC is then XORed in.
    pub fn apply(&self, crc: u32) -> u32 {
        let t = &self.table;
        t[0][(crc & 0xff) as usize]
            ^ t[1][((crc >> 8) & 0xff) as usize]
            ^ t[2][((crc >> 16) & 0xff) as usize]
            ^ t[3][(crc >> 24) as usize]
    }
}

/// A payload sent again and again with only its first `head` bytes changed: the checksum
/// of "header prefix, then this payload" from the prefix and those bytes alone.
#[derive(Clone, Debug)]
pub struct Repeated {
    head: usize,
    /// CRC of `payload[head..]`, which never changes.
    tail_crc: u32,
    /// Shift over `payload.len() - head` bytes.
    shift: Shift,
}

impl Repeated {
    /// For `payload`, whose bytes from `head` on stay as they are now.
    pub fn new(payload: &[u8], head: usize) -> Repeated {
        let head = head.min(payload.len());
        let tail = &payload[head..];
        Repeated {
            head,
            tail_crc: checksum(&[], tail),
            shift: Shift::new(tail.len()),
        }
    }

    /// The payload length this was built for.
    pub fn payload_len(&self) -> usize {
        self.head + self.shift.len()
    }

    /// `checksum(prefix, payload)`, from the prefix's CRC (`prefix_crc`), for the payload
    /// whose first `head` bytes are now `front`: the caller guarantees that the rest is what
    /// [`Repeated::new`] saw (the session owns the buffer).
    pub fn checksum(&self, prefix_crc: u32, front: &[u8]) -> u32 {
        debug_assert_eq!(front.len(), self.head);
        // The sequence number's 8 bytes (every payload of 8 bytes or more) in one step.
        let c = match <[u8; 8]>::try_from(front) {
            Ok(word) => checksum_u64(prefix_crc, u64::from_le_bytes(word)),
            Err(_) => checksum_continue(prefix_crc, front, &[]),
        };
        self.shift.apply(c) ^ self.tail_crc
    }
}

/// Payloads shorter than this are summed whole even when built in place: a pass over them
/// costs less than keeping a memo per slot (16 KiB sums in ~0.3 µs in one core's cache).
pub const MEMO_FROM: usize = 16 << 10;

/// Checksums of frames built in place, one payload length at a time: a slot lent by the
/// ring holds the payload of the last frame built there, and a sender writes only the
/// first 8 bytes (the sequence number), so the CRC of the rest, kept as the slot's memo
/// (`Producer::memo`), gives the new checksum from those 8 bytes alone ([`Shift`]).
#[derive(Debug, Default)]
pub struct SlotSums {
    /// The shift over `payload_len - 8` bytes, built for the first payload of that length.
    shift: Option<Shift>,
}

impl SlotSums {
    /// `checksum(prefix, payload)`, from the prefix's CRC (`prefix_crc`), and the memo to
    /// keep for the slot (the CRC of `payload[8..]`), or no memo for a payload shorter
    /// than [`MEMO_FROM`]. The payload is
    /// `front`, its new first bytes (the sequence number, not yet written into the slot),
    /// then `rest`, the slot's bytes after them. With `memo` (the slot's, from the last
    /// frame built there) `rest` is not read; the caller vouches that it is unchanged since
    /// (the producer forgets a memo when anything else writes the slot).
    pub fn checksum(
        &mut self,
        prefix_crc: u32,
        front: &[u8],
        rest: &[u8],
        memo: Option<u32>,
    ) -> (u32, Option<u32>) {
        if front.len() + rest.len() < MEMO_FROM {
            return (checksum_continue(prefix_crc, front, rest), None);
        }
        debug_assert_eq!(
            front.len(),
            8,
            "a memo covers the payload past its first 8 bytes"
        );
        if self.shift.as_ref().map(Shift::len) != Some(rest.len()) {
            self.shift = Some(Shift::new(rest.len()));
        }
        let shift = self.shift.as_ref().expect("built above");
        let tail = memo.unwrap_or_else(|| checksum(&[], rest));
        let front = checksum_continue(prefix_crc, front, &[]);
        (shift.apply(front) ^ tail, Some(tail))
    }
}

/// What a Ping's checksum is XORed with to be the checksum of its Pong, for a payload of
/// `payload_len` bytes: the two frames differ only in the kind byte of the header (the
/// Pong carries the Ping's flags, nonce, sequence, send time, length and payload), so the
/// difference of their CRCs depends on the length alone. Computed here from two frames
/// of zeros that differ the same way (one pass over `payload_len` bytes, once per length).
pub fn pong_delta(payload_len: usize) -> u32 {
    let mut prefix = [0u8; CHECKSUM_AT];
    let zeros = vec![0u8; payload_len];
    prefix[5] = Kind::Ping as u8;
    let ping = checksum(&prefix, &zeros);
    prefix[5] = Kind::Pong as u8;
    ping ^ checksum(&prefix, &zeros)
}

/// The checksum's change when a frame's `sent_ns` (header bytes 24..32) goes from 0 to
/// `t`, for one summed payload length: the bytes after the field (the header's length
/// word, then the payload, or nothing more with a header-only checksum) are the same
/// either way, so the change is the CRC of `t`'s 8 bytes from a zero state (the `crc32`
/// instruction's own step, linear in `t`) carried through those bytes ([`Shift`]). A
/// writer seals the next Ping with 0 there while it waits for a Pong, and stamps it in a
/// few nanoseconds when the Pong is in: the clock read comes first, then the stamp.
#[derive(Clone, Debug)]
pub struct SendTime {
    /// Payload bytes the checksum covers.
    summed: usize,
    /// Over the length word and those payload bytes.
    shift: Shift,
}

impl SendTime {
    /// For frames whose checksum covers `summed` payload bytes (0 with
    /// [`crate::frame::FLAG_HEADER_SUM`]).
    pub fn new(summed: usize) -> SendTime {
        SendTime {
            summed,
            shift: Shift::new(CHECKSUM_AT - (SENT_AT + 8) + summed),
        }
    }

    /// The payload bytes summed, as given to [`SendTime::new`].
    pub fn summed(&self) -> usize {
        self.summed
    }

    /// What the checksum of a frame sealed with `sent_ns` 0 is XORed with when `t` is
    /// written there. A CRC-32C is `!raw(!0, bytes)`, with `raw` the linear step of the
    /// instruction; `!checksum_continue(!0, x)` is therefore `raw(0, x)`.
    pub fn delta(&self, t: u64) -> u32 {
        self.shift
            .apply(!checksum_continue(!0, &t.to_le_bytes(), &[]))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::frame::{encode_header, Fields};
    use proptest::prelude::*;

    /// `n` pseudo-random bytes from `seed` (xorshift64), the same for the same seed; the
    /// checksum tests use them too.
    pub(crate) fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    proptest! {
        #[test]
        fn shift_joins_two_crcs(a in 0usize..300, b in 0usize..5000, seed: u64) {
            let x = bytes(a, seed);
            let y = bytes(b, seed ^ 0x9e37);
            let joined = [&x[..], &y[..]].concat();
            prop_assert_eq!(
                Shift::new(b).apply(checksum(&[], &x)) ^ checksum(&[], &y),
                checksum(&[], &joined)
            );
        }

        #[test]
        fn a_repeated_payload_sums_as_a_full_pass_does(
            len in 0usize..20_000, head in 0usize..16, seq: u64, seed: u64
        ) {
            let mut payload = bytes(len, seed);
            let r = Repeated::new(&payload, head);
            let n = head.min(len);
            payload[..n].copy_from_slice(&seq.to_le_bytes().repeat(2)[..n]);
            let prefix = bytes(CHECKSUM_AT, seq);
            let prefix_crc = checksum(&prefix, &[]);
            prop_assert_eq!(r.checksum(prefix_crc, &payload[..n]), checksum(&prefix, &payload));
        }

        #[test]
        fn a_pong_checksum_is_its_pings_xor_the_delta(
            len in 0usize..20_000, seq: u64, sent: u64, nonce: u64, warm: bool, seed: u64
        ) {
            let payload = bytes(len, seed);
            let f = |kind| Fields {
                kind,
                flags: u16::from(warm),
                nonce,
                seq,
                sent_ns: sent,
            };
            let ping = encode_header(f(Kind::Ping), &payload).unwrap();
            let pong = encode_header(f(Kind::Pong), &payload).unwrap();
            let sum = |h: &[u8; 40]| u32::from_le_bytes(h[36..40].try_into().unwrap());
            prop_assert_eq!(sum(&ping) ^ pong_delta(len), sum(&pong));
        }
    }

    proptest! {
        #[test]
        fn a_send_time_stamped_late_sums_as_one_sealed_with_it(
            len in 0usize..5000, t: u64, seq: u64, nonce: u64, header_only: bool, seed: u64
        ) {
            let payload = bytes(len, seed);
            let flags = if header_only { crate::frame::FLAG_HEADER_SUM } else { 0 };
            let f = |sent_ns| Fields { kind: Kind::Ping, flags, nonce, seq, sent_ns };
            let sum = |h: &[u8; 40]| u32::from_le_bytes(h[36..40].try_into().unwrap());
            let sealed = encode_header(f(0), &payload).unwrap();
            let stamped = encode_header(f(t), &payload).unwrap();
            let summed = if header_only { 0 } else { len };
            prop_assert_eq!(sum(&sealed) ^ SendTime::new(summed).delta(t), sum(&stamped));
        }
    }

    #[test]
    fn large_lengths_too() {
        for len in [65_536usize, 1 << 20] {
            let payload = bytes(len, 5);
            let r = Repeated::new(&payload, 8);
            let prefix = bytes(CHECKSUM_AT, 1);
            assert_eq!(
                r.checksum(checksum(&prefix, &[]), &payload[..8]),
                checksum(&prefix, &payload)
            );
        }
    }
}
