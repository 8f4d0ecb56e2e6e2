//! The frame's checksum: CRC-32C over the header's first 36 bytes and the payload, by the
//! implementation that is faster on the CPU at hand ([`checksum`]), piece by piece
//! ([`Summer`]), and combined from two parts without their bytes ([`checksum_combine`]).
//! [`crate::frame`] re-exports all four; [`crate::resum`] builds on the combination.
//! [`Summer::copy_from`] copies and sums in one pass ([`copying`] with the `crc32`
//! instruction, [`folding`] with AVX-512, [`clmul`] where `crc32` is slow); sums in place
//! without AVX-512 but with VPCLMULQDQ run [`hybrid`]'s loop.

pub mod clmul;
pub mod copying;
pub mod folding;
pub mod hybrid;

use crate::frame::CHECKSUM_AT;

/// CRC-32C (Castagnoli) of the header prefix followed by the payload.
///
/// Three implementations compute the same standard CRC-32C, and the faster one for the
/// CPU and the length is used (the tests check them against each other):
/// - up to 256 bytes in all (a header prefix and a payload of up to 220 bytes), one
///   stream of `crc32` instructions over both parts in one call ([`copying`]'s
///   `sum_short_pair`; a 64-byte frame's check runs 78 instructions, against 169 when each
///   part had its own call and dispatch; `sum_short`: 10.8 ns for a 64-byte
///   frame on the development machine's Zen 2, against 22.8 through `crc32c`, whose set-up
///   for three streams costs more than such bytes);
/// - longer, with AVX-512 and VPCLMULQDQ ([`wide_folding`]): folding 64 bytes at a time
///   with carry-less multiplication ([`folding`]'s `sum_fold`, the loop of
///   [`Summer::copy_from`] there without its stores; on an AMD EPYC Zen 5, 56 GB/s at
///   4 KiB and 60 at 64 KiB, as fast as the `crc-fast` crate's folding and more than twice
///   the 24-28 GB/s of `crc32`);
/// - longer, with VPCLMULQDQ but without AVX-512 (AMD Zen 3, recent Intel client cores),
///   from 1 KiB: 256-bit folding beside four `crc32` streams, each on its own part of the
///   bytes ([`hybrid`]'s `sum_hybrid`; on an AMD EPYC Zen 3, 22.8 GB/s at 1 KiB, 31 at
///   4 KiB and 36 at 64 KiB, against 13-14, 21 and 25 for three `crc32` streams alone);
/// - longer, without either, on a CPU whose `crc32` retires one word per three cycles
///   (AMD's first Zen cores, [`clmul`]'s `preferred`): 128-bit folding with PCLMULQDQ
///   ([`clmul`]'s `sum_clmul`; on an AMD EPYC Zen 1, 8.0 GB/s at 512 bytes, 9.7 at 4 KiB
///   and 10.4 at 64 KiB, against 5.5, 6.7 and 6.8 for three `crc32` streams);
/// - longer, otherwise: three streams of `crc32` instructions ([`copying`]'s `sum_append`,
///   the loop of [`Summer::copy_from`] without its stores; on the Zen 2, 13.9 GB/s at
///   512 bytes, 20.9 at 4 KiB, 25.7 at 64 KiB, against 7.8, 18.6 and 24.2 for the `crc32c`
///   crate, which uses the same instruction and remains for CPUs without it, ARMv8 too).
///
/// `cargo run --release -p common --example checksum_speed` prints them on the machine at
/// hand beside the choice made here (its "dispatch" column).
pub fn checksum(header_prefix: &[u8], payload: &[u8]) -> u32 {
    if header_prefix.len() + payload.len() <= SHORT && copying::available() {
        // A short frame: header prefix and payload in one call.
        // SAFETY: the CPU has the instruction (available()).
        return unsafe { copying::sum_short_pair(0, header_prefix, payload) };
    }
    let c = if copying::available() {
        // SAFETY: the CPU has the instruction (available()).
        unsafe { copying::sum_short(0, header_prefix) }
    } else {
        crc32c::crc32c(header_prefix)
    };
    checksum_continue(c, &[], payload)
}

/// The CRC-32C of whatever `crc` is the CRC of, followed by `front` and `rest`: the
/// payload's part of a frame's checksum, given its header prefix's
/// ([`checksum_words`]).
pub fn checksum_continue(crc: u32, front: &[u8], rest: &[u8]) -> u32 {
    if !copying::available() {
        return crc32c::crc32c_append(crc32c::crc32c_append(crc, front), rest);
    }
    if CHECKSUM_AT + front.len() + rest.len() <= SHORT {
        // Both parts in one call.
        // SAFETY: the CPU has the instruction (available()).
        return unsafe { copying::sum_short_pair(crc, front, rest) };
    }
    // SAFETY: the CPU has the instruction (available()).
    let c = unsafe { copying::sum_short(crc, front) };
    if folding::available() {
        // SAFETY: the CPU has the instructions (available()).
        unsafe { folding::sum_fold(c, rest) }
    } else if hybrid::available() {
        // SAFETY: the CPU has the instructions (available()).
        unsafe { hybrid::sum_hybrid(c, rest) }
    } else if clmul::preferred() {
        // SAFETY: the CPU has the instructions (copying::available(), above).
        unsafe { clmul::sum_clmul(c, rest) }
    } else {
        // SAFETY: the CPU has the instructions (copying::available(), above).
        unsafe { copying::sum_append(c, rest) }
    }
}

/// The CRC-32C of whatever `crc` is the CRC of, followed by the 8 little-endian bytes of
/// `word`: one `crc32` instruction where the CPU has it. A frame's sequence number is the
/// one part of a repeated payload that changes ([`crate::resum::Repeated`]); summed
/// through [`checksum_continue`], its 8 bytes cost a call and about 120 instructions.
#[inline]
pub fn checksum_u64(crc: u32, word: u64) -> u32 {
    if copying::available() {
        // SAFETY: the CPU has the instruction (available()).
        unsafe { copying::sum_u64(crc, word) }
    } else {
        crc32c::crc32c_append(crc, &word.to_le_bytes())
    }
}

/// The CRC-32C of the 36 bytes that four little-endian 8-byte `words` and a 4-byte `last`
/// make, computed from the values: a header's summed prefix before the header is stored
/// ([`crate::frame::encode_header_into`]).
#[inline]
pub fn checksum_words(words: [u64; 4], last: u32) -> u32 {
    if copying::available() {
        // SAFETY: the CPU has the instruction (available()).
        unsafe { copying::sum_words(words, last) }
    } else {
        crc32c::crc32c(&words_bytes(words, last))
    }
}

/// The 36 bytes of [`checksum_words`]'s words, in memory order.
fn words_bytes(words: [u64; 4], last: u32) -> [u8; CHECKSUM_AT] {
    let mut b = [0u8; CHECKSUM_AT];
    for (k, w) in words.iter().enumerate() {
        b[8 * k..8 * k + 8].copy_from_slice(&w.to_le_bytes());
    }
    b[32..].copy_from_slice(&last.to_le_bytes());
    b
}

/// Inputs of at most this many bytes are summed by a plain `crc32` loop where the CPU has
/// the instruction, whatever else it has: a 64-byte frame (100 bytes summed) took 24 ns
/// through `crc32c` and 21 through `crc-fast`, against 11 this way on the development
/// machine (`checksum_speed`'s dispatch column).
const SHORT: usize = 256;

/// [`checksum`] computed piece by piece: the header's first 36 bytes, then the payload in
/// as many pieces as it comes in. The shared ring's consumer adds each piece of a frame as
/// it copies it out ([`Summer::copy_from`]).
pub struct Summer(u32);

impl Summer {
    /// A sum begun with the header's first 36 bytes.
    pub fn new(header_prefix: &[u8]) -> Summer {
        Summer(if copying::available() {
            // SAFETY: the CPU has the instruction (available()).
            unsafe { copying::sum_short(0, header_prefix) }
        } else {
            crc32c::crc32c(header_prefix)
        })
    }

    /// Adds the next bytes of the payload.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0 = if folding::available() {
            // SAFETY: the CPU has the instructions (available()).
            unsafe { folding::sum_fold(self.0, bytes) }
        } else if hybrid::available() {
            // SAFETY: the CPU has the instructions (available()).
            unsafe { hybrid::sum_hybrid(self.0, bytes) }
        } else if clmul::preferred() {
            // SAFETY: the CPU has the instructions (preferred() checks copying::available()).
            unsafe { clmul::sum_clmul(self.0, bytes) }
        } else if copying::available() {
            // SAFETY: the CPU has the instructions (available()).
            unsafe { copying::sum_append(self.0, bytes) }
        } else {
            crc32c::crc32c_append(self.0, bytes)
        };
    }

    /// Copies `dst.len()` bytes from `src` into `dst` and adds them, as
    /// `copy_nonoverlapping` then [`Summer::update`] of `dst` would, in one pass over the
    /// bytes where the CPU sums with `crc32` ([`copying`]), folds with AVX-512
    /// ([`folding`]) or, its `crc32` being slow, with PCLMULQDQ ([`clmul`]). What is summed
    /// is what `dst` holds, even if `src` changes meanwhile.
    ///
    /// # Safety
    /// `src` must be valid for reads of `dst.len()` bytes and must not overlap `dst`.
    pub unsafe fn copy_from(&mut self, src: *const u8, dst: &mut [u8]) {
        self.0 = if folding::available() {
            // SAFETY: the caller's contract; the CPU has the instructions (available()).
            unsafe { folding::copy_fold(self.0, src, dst) }
        } else if clmul::preferred() {
            // SAFETY: the caller's contract; the CPU has the instructions (preferred()).
            unsafe { clmul::copy_clmul(self.0, src, dst) }
        } else if copying::available() {
            // SAFETY: the caller's contract; the CPU has the instructions (available()).
            unsafe { copying::copy_append(self.0, src, dst) }
        } else {
            // SAFETY: the caller's contract.
            unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
            crc32c::crc32c_append(self.0, dst)
        };
    }

    /// The CRC-32C of everything added.
    pub fn finish(self) -> u32 {
        self.0
    }
}

/// The CRC-32C of `A || B` from `crc(A)`, `crc(B)` and `B`'s length, without the bytes
/// (by either implementation, as [`checksum`] chooses; used by [`crate::resum`]).
pub fn checksum_combine(crc_a: u32, crc_b: u32, len_b: usize) -> u32 {
    if wide_folding() {
        let c = crc_fast::checksum_combine(
            crc_fast::CrcAlgorithm::Crc32Iscsi,
            crc_a.into(),
            crc_b.into(),
            len_b as u64,
        );
        c as u32
    } else {
        crc32c::crc32c_combine(crc_a, crc_b, len_b)
    }
}

/// Which loops sum frames on this CPU, in words, with the module that holds them: the
/// line `checksum_speed` prints above its table.
pub fn method() -> &'static str {
    if folding::available() {
        "512-bit folding (AVX-512F + VPCLMULQDQ; common::checksum::folding)"
    } else if hybrid::available() {
        "256-bit folding beside crc32 streams (AVX2 + VPCLMULQDQ; common::checksum::hybrid)"
    } else if clmul::preferred() {
        "128-bit folding (PCLMULQDQ; this CPU's crc32 is slow; common::checksum::clmul)"
    } else if copying::available() {
        "crc32 streams (SSE 4.2 + PCLMULQDQ; common::checksum::copying)"
    } else {
        "the crc32c crate (no SSE 4.2 here)"
    }
}

/// Whether this CPU folds 512 bits at a time: AVX-512F and VPCLMULQDQ (checked once; the
/// standard library caches the CPUID answer). Then [`folding`] sums payloads of 512 bytes
/// and more (shorter ones go to its `crc32` loops) and `crc-fast` combines two CRCs;
/// otherwise [`hybrid`] sums in place where the CPU has VPCLMULQDQ, and the `crc32` loops
/// of [`copying`] do the rest ([`method`] says which, in words).
pub fn wide_folding() -> bool {
    folding::available()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 131 + 7) as u8).collect()
    }

    /// Both implementations combine two parts into the CRC of the whole, and agree.
    #[test]
    fn both_implementations_combine_alike() {
        for (a, b) in [
            (0usize, 0usize),
            (1, 0),
            (36, 64),
            (44, 65_528),
            (100, 1 << 20),
        ] {
            let (x, y) = (bytes(a), bytes(b));
            let whole = crc32c::crc32c(&[&x[..], &y[..]].concat());
            let (cx, cy) = (crc32c::crc32c(&x), crc32c::crc32c(&y));
            assert_eq!(crc32c::crc32c_combine(cx, cy, b), whole, "crc32c {a}+{b}");
            let fast = crc_fast::checksum_combine(
                crc_fast::CrcAlgorithm::Crc32Iscsi,
                cx.into(),
                cy.into(),
                b as u64,
            );
            assert_eq!(fast as u32, whole, "crc-fast {a}+{b}");
            assert_eq!(checksum_combine(cx, cy, b), whole);
        }
    }

    /// A sum taken in pieces equals the one-call checksum, whatever the pieces.
    #[test]
    fn a_word_continues_a_sum_as_its_eight_bytes_do() {
        let data = bytes(64);
        for crc in [0u32, 1, 0x89ab_cdef, u32::MAX] {
            for at in 0..56 {
                let w: [u8; 8] = data[at..at + 8].try_into().unwrap();
                let want = crc32c::crc32c_append(crc, &w);
                assert_eq!(checksum_u64(crc, u64::from_le_bytes(w)), want, "at {at}");
            }
        }
    }

    #[test]
    fn a_sum_in_pieces_is_the_same_sum() {
        let prefix = bytes(36);
        let payload = bytes(100_003);
        for piece in [1usize, 63, 4096, 16 << 10, 1 << 20] {
            let mut s = Summer::new(&prefix);
            payload.chunks(piece).for_each(|c| s.update(c));
            assert_eq!(s.finish(), checksum(&prefix, &payload), "pieces of {piece}");
        }
    }

    /// A payload summed as its front bytes and the rest is the CRC-32C of the whole frame,
    /// on each side of the short-input threshold and with fronts of 0 to 8 bytes.
    #[test]
    fn a_sum_of_front_and_rest_is_the_sum_of_the_whole() {
        let prefix = bytes(CHECKSUM_AT);
        for len in [
            0usize, 1, 7, 8, 9, 63, 64, 212, 219, 220, 221, 1000, 4096, 65_536,
        ] {
            let payload = bytes(len + 3)[3..].to_vec();
            let whole = crc32c::crc32c(&[&prefix[..], &payload[..]].concat());
            for n in 0..=len.min(8) {
                let (front, rest) = payload.split_at(n);
                assert_eq!(
                    checksum_continue(crc32c::crc32c(&prefix), front, rest),
                    whole,
                    "{len} bytes, front {n}"
                );
            }
            assert_eq!(checksum(&prefix, &payload), whole, "{len} bytes, one piece");
        }
    }

    /// A short input summed in one call as two parts (`sum_short_pair`) is the CRC-32C of
    /// the parts joined, wherever the first ends: in a word, at its 4-byte step or in its
    /// last bytes.
    #[test]
    fn a_short_sum_runs_on_from_one_part_into_the_next() {
        let all = bytes(80);
        for len in 0..=all.len() {
            let whole = crc32c::crc32c(&all[..len]);
            for split in 0..=len {
                let (a, b) = all[..len].split_at(split);
                assert_eq!(checksum(a, b), whole, "{len} bytes split at {split}");
                assert_eq!(
                    checksum_continue(0, a, b),
                    whole,
                    "{len} bytes from 0 at {split}"
                );
            }
        }
    }

    /// A sum copied in pieces equals the one-call checksum, and the copy is the payload.
    #[test]
    fn a_sum_copied_in_pieces_is_the_same_sum() {
        let prefix = bytes(36);
        let payload = bytes(100_003);
        for piece in [1usize, 63, 4096, 16 << 10, 1 << 20] {
            let mut s = Summer::new(&prefix);
            let mut copy = vec![0u8; payload.len()];
            for (from, to) in payload.chunks(piece).zip(copy.chunks_mut(piece)) {
                // SAFETY: `from` holds to.len() bytes; the two are different vectors.
                unsafe { s.copy_from(from.as_ptr(), to) };
            }
            assert_eq!(s.finish(), checksum(&prefix, &payload), "pieces of {piece}");
            assert_eq!(copy, payload, "the copy in pieces of {piece}");
        }
    }
}
