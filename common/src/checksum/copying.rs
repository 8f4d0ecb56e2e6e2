//! Copying and summing in one pass: the shared ring's consumer moves a frame out of the
//! ring and computes its CRC-32C in the same loop, so each byte is read once, from the
//! ring, and the sum costs no second pass over the private copy.
//!
//! Why this pays on CPUs without AVX-512: there the checksum is the `crc32` instruction
//! (one 8-byte word per cycle, in three independent streams because each result takes three
//! cycles), about 23 GB/s on the development machine's AMD EPYC (Zen 2), while a copy runs
//! at 40-50 GB/s. Copy then sum costs the sum of both times (16.7 GB/s at 64 KiB); a loop
//! that loads each word, stores it and feeds it to `crc32` costs only the slower of the
//! two (21.3 GB/s; `cargo run --release -p common --example checksum_speed` prints both,
//! one core, the bytes in its caches). Between two cores, where the copy waits for the
//! other core's lines, the shared ring's consumer gains more (its 64 KiB and 1 MiB streams
//! 1.45x). At 4 KiB the loop alone lost to a plain copy, which keeps more of those misses
//! in flight; a copy of 8 KiB or less therefore asks for all its lines first (a prefetch
//! of each), and then gains too (4 KiB stream 1.1x, pingpong 0.92x the time). CPUs with
//! AVX-512 and VPCLMULQDQ run the same idea with 64-byte registers ([`super::folding`]).
//! CPUs with VPCLMULQDQ but not AVX-512 copy with this loop too, and sum in place with
//! [`super::hybrid`], which runs 256-bit folding beside `crc32` streams. On AMD's first Zen
//! cores `crc32` retires a word every three cycles (7 GB/s in one to four streams), and
//! 128-bit folding ([`super::clmul`]) copies and sums instead.
//!
//! Tried and left out, on that Zen 2: folding with PCLMULQDQ alone (12.7 GB/s copying), and
//! PCLMULQDQ folding beside the `crc32` streams, which other CPUs run side by side (19.7 GB/s
//! summing only, against 24.3 for `crc32` alone: here the two compete; with 256-bit
//! VPCLMULQDQ on a Zen 3 they do not, see [`super::hybrid`]); prefetching ahead
//! inside the loop (slower at 64 KiB and 1 MiB: the CPU's own prefetcher does better).
//!
//! The same three streams without the stores (`sum_append`) sum bytes already in place;
//! `sum_short` is the instruction in one stream, for the short inputs where setting up
//! three streams costs more than it saves. [`super::checksum`] chooses between them.
//!
//! How three streams make one CRC. A block of `3 * B` bytes is summed as three blocks of
//! `B` bytes side by side: the first starts from the running state, the other two from 0.
//! A CRC is linear, so the state after all three is
//! `shift(s0, 2B) ^ shift(s1, B) ^ s2`, where `shift(s, n)` is the state `s` followed by
//! `n` zero bytes: `s * x^(8n) mod P`. `shift` computes it with one carry-less multiply
//! (PCLMULQDQ) by a constant, `x^(8n - 33) mod P` bit-reversed, and one `crc32` of the
//! 64-bit product, which reduces it modulo P and multiplies by the remaining `x^32`
//! (the `- 33` is those 32 and the one extra `x` a carry-less multiply of two bit-reversed
//! numbers leaves). The constants are computed at compile time by `xpow_mod`.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{
    _mm_clmulepi64_si128, _mm_crc32_u32, _mm_crc32_u64, _mm_crc32_u8, _mm_cvtsi128_si64,
    _mm_cvtsi64_si128, _mm_prefetch, _MM_HINT_T0,
};

/// CRC-32C's polynomial P with its x^32 term (the normal, not bit-reversed, form).
pub(crate) const POLY: u64 = 0x1_1EDC_6F41;

/// `x^n mod P` in the normal form: bit `i` is the coefficient of `x^i`.
pub(crate) const fn xpow_mod(n: u32) -> u32 {
    let mut v: u64 = 1;
    let mut i = 0;
    while i < n {
        v <<= 1;
        if v & (1 << 32) != 0 {
            v ^= POLY;
        }
        i += 1;
    }
    v as u32
}

/// The multiplier that moves a CRC state past `bytes` zero bytes (see the module docs).
pub(crate) const fn shift_const(bytes: usize) -> u64 {
    xpow_mod(8 * bytes as u32 - 33).reverse_bits() as u64
}

/// Block sizes of the three-stream loop, largest first: a block is three streams of this
/// many bytes. Large blocks spread the two shifts over more bytes; the smaller ones serve
/// the rest of a frame (a 4 KiB frame is two middle and two small blocks and 256 bytes).
const LONG: usize = 4096;
const MIDDLE: usize = 512;
const SHORT: usize = 128;
/// The longest copy [`copy_append`] prefetches whole before it starts.
const PREFETCH: usize = 8 << 10;

/// Whether this CPU has what [`copy_append`] uses: SSE 4.2's `crc32` and PCLMULQDQ (every
/// x86-64 CPU since about 2010; checked once, the standard library caches the answer).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("sse4.2")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Copies `dst.len()` bytes from `src` into `dst` and returns the CRC-32C of `crc`'s bytes
/// followed by them (the `crc32c::crc32c_append` convention: `crc` is a finished CRC).
/// The sum is over the bytes stored in `dst`: each word is loaded once, and the same
/// register is stored and summed, so a peer writing to `src` meanwhile cannot make the sum
/// disagree with the copy.
///
/// # Safety
/// [`available`] must have returned true; `src` must be valid for reads of `dst.len()`
/// bytes and not overlap `dst`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2,pclmulqdq")]
pub(crate) unsafe fn copy_append(crc: u32, src: *const u8, dst: &mut [u8]) -> u32 {
    let len = dst.len();
    let dst = dst.as_mut_ptr();
    let mut s = !crc;
    let mut p = 0usize;
    // A short copy asks for all its lines now, at once: between two cores each is a miss,
    // and the loop below alone would have only a few in flight at a time. (Longer copies
    // leave it to the CPU's prefetcher, which follows the streams: asking for 16 KiB
    // ahead made 64 KiB and 1 MiB frames slower.)
    let mut q = 0;
    while len <= PREFETCH && q < len {
        // SAFETY: a prefetch of an address inside `src`'s len bytes; it cannot fault.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(src.add(q).cast()) };
        q += 64;
    }
    // SAFETY: every access in the loops below is at p.. with p + its width <= len, inside
    // both buffers by the contract above; the features are present.
    unsafe {
        while p + 3 * LONG <= len {
            s = three::<LONG>(s, src.add(p), dst.add(p));
            p += 3 * LONG;
        }
        while p + 3 * MIDDLE <= len {
            s = three::<MIDDLE>(s, src.add(p), dst.add(p));
            p += 3 * MIDDLE;
        }
        while p + 3 * SHORT <= len {
            s = three::<SHORT>(s, src.add(p), dst.add(p));
            p += 3 * SHORT;
        }
        while p + 8 <= len {
            let mut state = u64::from(s);
            // One word, as in `three`'s loop.
            std::arch::asm!(
                "mov {t}, qword ptr [{src}]",
                "mov qword ptr [{dst}], {t}",
                "crc32 {s}, {t}",
                src = in(reg) src.add(p),
                dst = in(reg) dst.add(p),
                t = out(reg) _,
                s = inout(reg) state,
                options(nostack, preserves_flags),
            );
            s = state as u32;
            p += 8;
        }
        while p < len {
            let v = src.add(p).read_volatile();
            dst.add(p).write(v);
            s = _mm_crc32_u8(s, v);
            p += 1;
        }
    }
    !s
}

/// The CRC-32C of `crc`'s bytes followed by `bytes` (the `crc32c::crc32c_append`
/// convention), one `crc32` per 8-byte word in a single stream: for the short inputs of
/// [`super::checksum`] (a 36-byte header prefix, a 64-byte payload), where the crates'
/// set-up for three streams or folding costs more than the bytes (~21 ns for 36 bytes
/// through `crc32c`, ~6 ns here, on the development machine).
///
/// # Safety
/// [`available`] must have returned true.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
pub(crate) unsafe fn sum_short(crc: u32, bytes: &[u8]) -> u32 {
    // SAFETY: the caller's contract is this function's.
    unsafe { sum_short_pair(crc, bytes, &[]) }
}

/// [`sum_short`] over `first` and then `second`, in one call: a short frame's header
/// prefix and payload (or a payload's new first bytes and the rest), summed as one
/// stream without a call and a dispatch per part. The CRC runs on from one part into
/// the next, so the result is that of the two parts joined.
///
/// # Safety
/// [`available`] must have returned true.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
pub(crate) unsafe fn sum_short_pair(crc: u32, first: &[u8], second: &[u8]) -> u32 {
    let mut s = !crc;
    for part in [first, second] {
        let mut words = part.chunks_exact(8);
        let mut w64 = u64::from(s);
        for w in &mut words {
            // chunks_exact gives 8-byte slices: the conversion cannot fail.
            w64 = _mm_crc32_u64(w64, u64::from_le_bytes(w.try_into().unwrap_or([0; 8])));
        }
        s = w64 as u32;
        let mut rest = words.remainder();
        // The header's 36 bytes end in a 4-byte word: one instruction for it.
        if let Some((word, tail)) = rest.split_first_chunk::<4>() {
            s = _mm_crc32_u32(s, u32::from_le_bytes(*word));
            rest = tail;
        }
        for &b in rest {
            s = _mm_crc32_u8(s, b);
        }
    }
    !s
}

/// The CRC-32C of the 36 bytes that four little-endian 8-byte `words` and a 4-byte `last`
/// make, from the values themselves: a frame header's summed prefix, computed before the
/// header is written anywhere (`frame::encode_header_into`).
///
/// # Safety
/// [`available`] must have returned true.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "sse4.2")]
pub(crate) unsafe fn sum_words(words: [u64; 4], last: u32) -> u32 {
    let s = words
        .iter()
        .fold(u64::from(!0u32), |s, &w| _mm_crc32_u64(s, w));
    !_mm_crc32_u32(s as u32, last)
}

/// The CRC-32C of `crc`'s bytes followed by the 8 little-endian bytes of `word` (the
/// `crc32c::crc32c_append` convention): one instruction.
///
/// # Safety
/// [`available`] must have returned true.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "sse4.2")]
pub(crate) unsafe fn sum_u64(crc: u32, word: u64) -> u32 {
    !(_mm_crc32_u64(u64::from(!crc), word) as u32)
}

/// Stands in where there is no x86-64 kernel; [`available`] is false there.
///
/// # Safety
/// None beyond the x86-64 version's.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn sum_u64(crc: u32, word: u64) -> u32 {
    crc32c::crc32c_append(crc, &word.to_le_bytes())
}

/// Stands in where there is no x86-64 kernel; [`available`] is false there.
///
/// # Safety
/// None beyond the x86-64 version's.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn sum_words(words: [u64; 4], last: u32) -> u32 {
    crc32c::crc32c(&super::words_bytes(words, last))
}

/// Stands in where there is no x86-64 kernel; [`available`] is false there.
///
/// # Safety
/// None beyond the x86-64 version's.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn sum_short(crc: u32, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, bytes)
}

/// Stands in where there is no x86-64 kernel; [`available`] is false there.
///
/// # Safety
/// None beyond the x86-64 version's.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn sum_short_pair(crc: u32, first: &[u8], second: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c_append(crc, first), second)
}

/// The CRC-32C of `crc`'s bytes followed by `bytes` (the `crc32c::crc32c_append`
/// convention) by the same three streams as [`copy_append`], without the copy: for sums
/// over bytes already in place (a frame read into a buffer, or read where it lies).
///
/// # Safety
/// [`available`] must have returned true.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2,pclmulqdq")]
pub(crate) unsafe fn sum_append(crc: u32, bytes: &[u8]) -> u32 {
    let mut s = !crc;
    let mut rest = bytes;
    while rest.len() >= 3 * LONG {
        s = sum_three::<LONG>(s, &rest[..3 * LONG]);
        rest = &rest[3 * LONG..];
    }
    while rest.len() >= 3 * MIDDLE {
        s = sum_three::<MIDDLE>(s, &rest[..3 * MIDDLE]);
        rest = &rest[3 * MIDDLE..];
    }
    while rest.len() >= 3 * SHORT {
        s = sum_three::<SHORT>(s, &rest[..3 * SHORT]);
        rest = &rest[3 * SHORT..];
    }
    // SAFETY: the CPU has the instruction (the caller's contract).
    unsafe { sum_short(!s, rest) }
}

/// Stands in where there is no x86-64 kernel; [`available`] is false there.
///
/// # Safety
/// None beyond the x86-64 version's.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn sum_append(crc: u32, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, bytes)
}

/// Sums one block of three streams of `B` bytes each (`block` is `3 * B` bytes).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "sse4.2,pclmulqdq")]
fn sum_three<const B: usize>(s: u32, block: &[u8]) -> u32 {
    let word = |at: usize| u64::from_le_bytes(block[at..at + 8].try_into().unwrap_or([0; 8]));
    let (mut s0, mut s1, mut s2) = (u64::from(s), 0u64, 0u64);
    let mut i = 0;
    while i < B {
        s0 = _mm_crc32_u64(s0, word(i));
        s1 = _mm_crc32_u64(s1, word(B + i));
        s2 = _mm_crc32_u64(s2, word(2 * B + i));
        s0 = _mm_crc32_u64(s0, word(i + 8));
        s1 = _mm_crc32_u64(s1, word(B + i + 8));
        s2 = _mm_crc32_u64(s2, word(2 * B + i + 8));
        i += 16;
    }
    join::<B>(s0, s1, s2)
}

/// Copies and sums one block of three streams of `B` bytes (a multiple of 16), from state `s`.
///
/// # Safety
/// `src` readable and `dst` writable for `3 * B` bytes; SSE 4.2 and PCLMULQDQ present.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "sse4.2,pclmulqdq")]
unsafe fn three<const B: usize>(s: u32, src: *const u8, dst: *mut u8) -> u32 {
    let (mut s0, mut s1, mut s2) = (u64::from(s), 0u64, 0u64);
    let (sa, sb, sc) = (src, src.wrapping_add(B), src.wrapping_add(2 * B));
    let (da, db, dc) = (dst, dst.wrapping_add(B), dst.wrapping_add(2 * B));
    let mut i = 0usize;
    while i < B {
        // Two words of each stream: each loaded once into a register that is stored and
        // summed. Written as assembly because the compiler, given plain loads and stores,
        // turned the stores into `memcpy` calls and summed by loading the source again
        // (slower, 17 against 22 GB/s, and a peer writing meanwhile could make the sum
        // disagree with the copy); one register for all six words is enough, as the CPU
        // renames it for each load.
        // SAFETY: B is a multiple of 16 and i + 16 <= B: the six words lie in the three
        // streams' B bytes of the 3 * B the caller vouches for; nothing else is touched.
        unsafe {
            std::arch::asm!(
                "mov {t}, qword ptr [{sa} + {i}]",
                "mov qword ptr [{da} + {i}], {t}",
                "crc32 {s0}, {t}",
                "mov {t}, qword ptr [{sb} + {i}]",
                "mov qword ptr [{db} + {i}], {t}",
                "crc32 {s1}, {t}",
                "mov {t}, qword ptr [{sc} + {i}]",
                "mov qword ptr [{dc} + {i}], {t}",
                "crc32 {s2}, {t}",
                "mov {t}, qword ptr [{sa} + {i} + 8]",
                "mov qword ptr [{da} + {i} + 8], {t}",
                "crc32 {s0}, {t}",
                "mov {t}, qword ptr [{sb} + {i} + 8]",
                "mov qword ptr [{db} + {i} + 8], {t}",
                "crc32 {s1}, {t}",
                "mov {t}, qword ptr [{sc} + {i} + 8]",
                "mov qword ptr [{dc} + {i} + 8], {t}",
                "crc32 {s2}, {t}",
                sa = in(reg) sa,
                sb = in(reg) sb,
                sc = in(reg) sc,
                da = in(reg) da,
                db = in(reg) db,
                dc = in(reg) dc,
                i = in(reg) i,
                t = out(reg) _,
                s0 = inout(reg) s0,
                s1 = inout(reg) s1,
                s2 = inout(reg) s2,
                options(nostack, preserves_flags),
            )
        };
        i += 16;
    }
    join::<B>(s0, s1, s2)
}

/// The state after three streams of `B` bytes from their three states (module docs).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "sse4.2,pclmulqdq")]
fn join<const B: usize>(s0: u64, s1: u64, s2: u64) -> u32 {
    let two: u64 = const { shift_const(2 * B) };
    let one: u64 = const { shift_const(B) };
    // The results of crc32 are 32-bit values in 64-bit registers.
    shift(s0 as u32, two) ^ shift(s1 as u32, one) ^ s2 as u32
}

/// The CRC state `s` moved past as many zero bytes as `k` (a [`shift_const`]) stands for.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "sse4.2,pclmulqdq")]
pub(crate) fn shift(s: u32, k: u64) -> u32 {
    let v = _mm_clmulepi64_si128(
        _mm_cvtsi64_si128(i64::from(s)),
        _mm_cvtsi64_si128(k as i64),
        0x00,
    );
    // The 32-bit by 32-bit product lies in the low 64 bits.
    _mm_crc32_u64(0, _mm_cvtsi128_si64(v) as u64) as u32
}

/// Stands in where there is no x86-64 kernel; [`available`] is false there.
///
/// # Safety
/// As the x86-64 version's.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn copy_append(crc: u32, src: *const u8, dst: &mut [u8]) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
    crc32c::crc32c_append(crc, dst)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::resum::tests::bytes;

    fn copy_checked(crc: u32, src: &[u8]) -> (u32, Vec<u8>) {
        let mut dst = vec![0u8; src.len()];
        // SAFETY: checked available(); src holds dst.len() bytes, apart from dst.
        let got = unsafe { copy_append(crc, src.as_ptr(), &mut dst) };
        (got, dst)
    }

    #[test]
    fn powers_of_x_reduce_as_the_polynomial_says() {
        assert_eq!(xpow_mod(0), 1);
        assert_eq!(xpow_mod(31), 1 << 31);
        // x^32 = P - x^32, the polynomial's lower terms.
        assert_eq!(xpow_mod(32), 0x1EDC_6F41);
    }

    /// Every block size and every tail: lengths around each boundary, from odd offsets.
    #[test]
    fn the_copy_and_its_sum_match_crc32c_at_every_boundary() {
        if !available() {
            return crate::testing::skip(NO_CRC32);
        }
        let data = bytes(3 * LONG * 2 + 5000, 7);
        let mut lens: Vec<usize> = (0..2 * 3 * SHORT + 20).collect();
        for b in [3 * SHORT, 3 * MIDDLE, 3 * LONG, 2 * 3 * LONG] {
            lens.extend(b.saturating_sub(9)..b + 9);
        }
        lens.push(data.len() - 7);
        for len in lens {
            for off in [0usize, 1, 7] {
                let src = &data[off..off + len];
                let (got, dst) = copy_checked(0x1234_5678, src);
                assert_eq!(
                    got,
                    crc32c::crc32c_append(0x1234_5678, src),
                    "{len} at +{off}"
                );
                assert_eq!(dst, src, "the copy of {len} at +{off}");
            }
        }
    }

    /// Runs `check` on proptest's cases of `strategy` if `ok` (the CPU has the
    /// instructions under test); else records a skip for `why` (a proptest that rejected
    /// every case would fail instead, and one that returned early would pass silently).
    pub(crate) fn proptest_if<S: Strategy>(
        ok: bool,
        why: &str,
        strategy: S,
        check: impl Fn(S::Value) -> Result<(), TestCaseError>,
    ) {
        if !ok {
            return crate::testing::skip(why);
        }
        proptest::test_runner::TestRunner::default()
            .run(&strategy, check)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Runs `check` where the CPU has the `crc32` loops, as [`proptest_if`].
    fn where_available<S: Strategy>(
        strategy: S,
        check: impl Fn(S::Value) -> Result<(), TestCaseError>,
    ) {
        proptest_if(available(), NO_CRC32, strategy, check);
    }

    const NO_CRC32: &str = "this CPU lacks SSE 4.2 or PCLMULQDQ (the crc32 loops)";

    /// A copying sum: `(crc, src, dst)` copies `dst.len()` bytes from `src` and returns the
    /// CRC of `crc`'s bytes followed by them.
    pub(crate) type CopySum = unsafe fn(u32, *const u8, &mut [u8]) -> u32;

    /// A sum in place: `(crc, bytes)` returns the CRC of `crc`'s bytes followed by `bytes`.
    pub(crate) type SumInPlace = unsafe fn(u32, &[u8]) -> u32;

    /// For a loop pair that copies and sums ([`CopySum`]) and sums in place
    /// ([`SumInPlace`]): each of `lens` from offsets 0, 1, 7 and 63 of `data`, both
    /// against `crc32c` and the copy against its source. The caller has checked that the
    /// CPU runs both.
    pub(crate) fn assert_copy_and_sum_match(
        copy: CopySum,
        sum: SumInPlace,
        data: &[u8],
        lens: &[usize],
    ) {
        for &len in lens {
            for off in [0usize, 1, 7, 63] {
                let src = &data[off..off + len];
                let want = crc32c::crc32c_append(0x89ab_cdef, src);
                let mut dst = vec![0u8; len];
                // SAFETY: the caller checked the CPU; src holds len bytes, apart from dst.
                let got = unsafe { copy(0x89ab_cdef, src.as_ptr(), &mut dst) };
                assert_eq!(got, want, "copy of {len} at +{off}");
                assert_eq!(dst, src, "the copy of {len} at +{off}");
                // SAFETY: as above.
                let got = unsafe { sum(0x89ab_cdef, src) };
                assert_eq!(got, want, "sum of {len} at +{off}");
            }
        }
    }

    /// [`assert_copy_and_sum_match`] for one proptest case: `src` from the CRC `crc`.
    pub(crate) fn copy_and_sum_agree(
        copy: CopySum,
        sum: SumInPlace,
        crc: u32,
        src: &[u8],
    ) -> Result<(), TestCaseError> {
        let want = crc32c::crc32c_append(crc, src);
        let mut dst = vec![0u8; src.len()];
        // SAFETY: the caller checked the CPU; src holds dst.len() bytes, apart from dst.
        prop_assert_eq!(unsafe { copy(crc, src.as_ptr(), &mut dst) }, want);
        prop_assert_eq!(&dst[..], src);
        // SAFETY: as above.
        prop_assert_eq!(unsafe { sum(crc, src) }, want);
        Ok(())
    }

    /// Words of the source [`race_copies`] rewrites (68 KiB).
    const WORDS: usize = 68 << 7;

    /// What [`race_copies`] saw.
    pub(crate) struct Race {
        /// Copies that ran while the other thread was rewriting: the copy holds words of
        /// two sweeps, and the sweep counter moved during it.
        pub(crate) live: usize,
        /// Copies whose returned CRC is not the CRC of the bytes the copy holds.
        pub(crate) wrong: usize,
    }

    impl Race {
        /// Asserts that every copy of the loop named `what` summed what it stored; a
        /// skip if none ran while the source was being rewritten (the other thread never
        /// got a CPU alongside).
        pub(crate) fn assert_summed_as_stored(&self, what: &str) {
            eprintln!(
                "{what}: {} copies during a rewrite, {} wrong",
                self.live, self.wrong
            );
            assert_eq!(
                self.wrong, 0,
                "{} copies of the {what} summed otherwise",
                self.wrong
            );
            if self.live == 0 {
                crate::testing::skip(&format!("no copy of the {what} ran during a rewrite"));
            }
        }
    }

    /// Copies 68 KiB with `copy` while another thread rewrites the source (every word set
    /// to a sweep number, sweep after sweep), as a peer may rewrite a frame in the shared
    /// ring while the consumer copies it out; each result is checked against `crc32c` over
    /// the copy itself. Runs for at most two seconds, or until `enough` says so. A loop
    /// that loads each word once, stores it and sums the same register always agrees; one
    /// that reads the source twice (once to copy, once to sum) disagrees when a rewrite
    /// falls between its two reads.
    pub(crate) fn race_copies(copy: CopySum, enough: fn(&Race) -> bool) -> Race {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
        use std::sync::Arc;
        let src: Arc<Vec<AtomicU64>> = Arc::new((0..WORDS).map(|_| AtomicU64::new(0)).collect());
        let (sweeps, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let rewriter = {
            let (src, sweeps, stop) = (src.clone(), sweeps.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut g = 0u64;
                while !stop.load(Relaxed) {
                    g += 1;
                    for w in src.iter() {
                        w.store(g, Relaxed);
                    }
                    sweeps.store(g, Relaxed);
                }
            })
        };
        let mut dst = vec![0u8; WORDS * 8];
        let mut race = Race { live: 0, wrong: 0 };
        let start = std::time::Instant::now();
        while !enough(&race) && start.elapsed() < std::time::Duration::from_secs(2) {
            let before = sweeps.load(Relaxed);
            // SAFETY: the caller's `copy` needs what its CPU check vouched for; `src` holds
            // WORDS * 8 bytes, 8-aligned, apart from `dst`. The other thread's stores race
            // with the copy's loads on purpose, the race a peer process makes with the
            // consumer in the shared ring: the loops under test load the source through
            // inline assembly or volatile loads, never through a Rust reference.
            let got = unsafe { copy(0x5eed, src.as_ptr().cast::<u8>(), &mut dst) };
            let first = &dst[..8];
            if sweeps.load(Relaxed) != before && dst.chunks_exact(8).any(|w| w != first) {
                race.live += 1;
            }
            if got != crc32c::crc32c_append(0x5eed, &dst) {
                race.wrong += 1;
            }
        }
        stop.store(true, Relaxed);
        rewriter.join().unwrap();
        race
    }

    /// The loops under test have copied enough while the source changed.
    pub(crate) fn twenty_live(r: &Race) -> bool {
        r.live >= 20
    }

    /// The naive way, for contrast: copy, then read the source again to sum it. (Word by
    /// word with atomic loads: the source is [`race_copies`]'s, 8-aligned, a whole number
    /// of words.)
    unsafe fn copy_then_sum_the_source(crc: u32, src: *const u8, dst: &mut [u8]) -> u32 {
        use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
        // SAFETY: race_copies passes its own Vec<AtomicU64> of dst.len() / 8 words.
        let words = unsafe { std::slice::from_raw_parts(src.cast::<AtomicU64>(), dst.len() / 8) };
        for (w, d) in words.iter().zip(dst.chunks_exact_mut(8)) {
            d.copy_from_slice(&w.load(Relaxed).to_le_bytes());
        }
        let again: Vec<u8> = words
            .iter()
            .flat_map(|w| w.load(Relaxed).to_le_bytes())
            .collect();
        crc32c::crc32c_append(crc, &again)
    }

    /// The copy's sum is over the bytes the copy holds, even while the source changes: a
    /// peer rewriting a frame cannot make a torn copy pass its check. The naive copy then
    /// sum, run the same way until it is caught, shows that the race happened (where it
    /// is never caught, the other thread never ran alongside, and the test records a skip).
    #[test]
    fn a_copy_of_a_changing_source_is_summed_as_stored() {
        if !available() {
            return crate::testing::skip(NO_CRC32);
        }
        let naive = race_copies(copy_then_sum_the_source, |r| r.wrong > 0);
        if naive.wrong == 0 {
            return crate::testing::skip(
                "the naive copy was never caught: no rewrite ran alongside",
            );
        }
        race_copies(copy_append, twenty_live).assert_summed_as_stored("crc32 loop");
    }

    /// Short sums: any bytes, any starting CRC, any length up to 600 bytes.
    #[test]
    fn any_short_sum_is_crc32c() {
        where_available(
            (any::<u32>(), any::<u64>(), 0usize..600),
            |(crc, seed, len)| {
                let b = bytes(len, seed);
                // SAFETY: where_available checked available().
                let got = unsafe { sum_short(crc, &b) };
                prop_assert_eq!(got, crc32c::crc32c_append(crc, &b));
                Ok(())
            },
        );
    }

    /// Sums in place: any bytes, any starting CRC, any length up to 40 KiB.
    #[test]
    fn any_sum_in_place_is_crc32c() {
        where_available(
            (any::<u32>(), any::<u64>(), 0usize..40_000),
            |(crc, seed, len)| {
                let b = bytes(len, seed);
                // SAFETY: where_available checked available().
                let got = unsafe { sum_append(crc, &b) };
                prop_assert_eq!(got, crc32c::crc32c_append(crc, &b));
                Ok(())
            },
        );
    }

    /// Any bytes, any starting CRC, any length up to 40 KiB, copied.
    #[test]
    fn any_copy_sums_as_crc32c_does() {
        where_available(
            (any::<u32>(), any::<u64>(), 0usize..40_000),
            |(crc, seed, len)| {
                let src = bytes(len, seed);
                let (got, dst) = copy_checked(crc, &src);
                prop_assert_eq!(got, crc32c::crc32c_append(crc, &src));
                prop_assert_eq!(dst, src);
                Ok(())
            },
        );
    }
}
