//! Summing in place on CPUs with VPCLMULQDQ but not AVX-512 (AMD Zen 3, Intel client
//! cores since Alder Lake): 256-bit carry-less folding and four streams of the `crc32`
//! instruction side by side in the same loop, each on its own part of the bytes.
//!
//! Why: on such a CPU neither way alone is fast. On an AMD EPYC Zen 3 (one core, the bytes
//! in its caches; best of 2000 bursts) the three `crc32` streams of [`super::copying`]
//! summed 64 KiB at 25.0 GB/s, and 256-bit folding alone at 25.8 (two VPCLMULQDQ per 32
//! bytes, and the CPU starts one every other cycle). The two use different units,
//! `crc32` an integer one and the multiplications the vector ones, so a loop that gives
//! each its share sums at 36 GB/s there (22.8 against 13-14 at 1 KiB, 31 against 21 at
//! 4 KiB). `cargo run --release -p common --example checksum_speed` prints the figures of
//! the CPU at hand. On the Zen 2, without VPCLMULQDQ, the same pairing with 128-bit
//! PCLMULQDQ ran slower than `crc32` alone (see [`super::copying`]); on AVX-512 CPUs
//! [`super::folding`] is faster still and is used instead.
//!
//! This loop sums bytes in place: a zero-copy frame read where it lies, a message read
//! into a buffer, [`super::Summer::update`]. Copies out of the shared ring stay with
//! [`super::copying`]'s `copy_append`, which sums each word as it copies it. A copying
//! form of this loop (each 32-byte register loaded once and stored, the folded part
//! folded from the registers, the streams summed from the copy a step later) copied
//! and summed 64 KiB at 21-23.5 GB/s against 18-19 for `copy_append` on one core, but
//! between the two cores of the shared ring it was no faster: 64 KiB and 4 KiB streams,
//! 20 to 30 interleaved runs each, gave medians of 0.78-1.04x and 0.90-0.97x
//! `copy_append`'s, the copy from the other core's cache being the bound there.
//!
//! How. The bytes go in rounds of up to `ROUND` (4096) bytes, of `n` steps: the first
//! `n * FOLD` bytes are folded as in [`super::folding`] (four accumulators, here of 32
//! bytes), the other `n * STREAMS * LANE` are four `crc32` streams of `n * LANE` bytes.
//! All five parts start from the state 0, so none waits for another. A CRC is linear, so
//! with `L = n * LANE` the state after the round is
//! `shift(s, 8L) ^ shift(f, 4L) ^ shift(c0, 3L) ^ shift(c1, 2L) ^ shift(c2, L) ^ c3`,
//! where `s` is the state before the round, `f` the folded part's state and `c0..c3` the
//! streams' (`shift` is [`super::copying`]'s: one PCLMULQDQ and one `crc32` each, by
//! multipliers from the table `SHIFTS`). Each step of the loop gives the CPU 128 bytes to
//! fold and four words of each stream, so both units always have work. Whole rounds are
//! 16 steps, 4 KiB; the rest is one shorter round of as many steps as fit, and the last
//! bytes (under 256) go through one `crc32` stream. Inputs under `MIN` (1 KiB) go to
//! [`super::copying`]'s loops.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{
    __m256i, _mm256_castsi256_si128, _mm256_clmulepi64_epi128, _mm256_extracti128_si256,
    _mm256_loadu_si256, _mm256_set_epi64x, _mm256_xor_si256, _mm_clmulepi64_si128, _mm_crc32_u64,
    _mm_cvtsi128_si64, _mm_extract_epi64, _mm_set_epi64x, _mm_xor_si128,
};

#[cfg(target_arch = "x86_64")]
use super::copying::shift;
use super::copying::{xpow_mod, POLY};
#[cfg(target_arch = "x86_64")]
use super::folding::fold_pair;

/// Bytes folded per step: four 32-byte accumulators.
const FOLD: usize = 128;
/// The `crc32` streams, and each one's bytes per step (one 32-byte register's worth: four
/// words). Four streams of four words beside 128 folded bytes is about the two units'
/// equal shares (three streams of four words summed no faster).
const STREAMS: usize = 4;
const LANE: usize = 32;
/// Bytes per step.
const STEP: usize = FOLD + STREAMS * LANE;
/// Steps per whole round.
const STEPS: usize = 16;
/// Bytes per whole round: 4096. What is left after the whole rounds is one shorter round
/// of as many whole steps as fit, then under 256 bytes for one `crc32` stream.
const ROUND: usize = STEPS * STEP;
/// The shortest input summed here: four steps (shorter ones cost more to reduce and join
/// than they save, and go to [`super::copying`]).
const MIN: usize = 4 * STEP;

/// `SHIFTS[u]` moves a CRC state past `32 * u` zero bytes (`shift_const(32 * u)`), for
/// every distance a round of up to [`STEPS`] steps joins its parts by. Computed at compile
/// time by multiplying modulo P, 256 bits at a time (`shift_const` itself would step
/// through every bit of each distance).
const SHIFTS: [u64; 8 * STEPS + 1] = {
    let mut t = [0u64; 8 * STEPS + 1];
    let by_32_bytes = xpow_mod(256);
    let mut x = xpow_mod(256 - 33);
    let mut u = 1;
    while u < t.len() {
        t[u] = x.reverse_bits() as u64;
        x = mul_mod(x, by_32_bytes);
        u += 1;
    }
    t
};

/// `a * b mod P` in the normal form ([`xpow_mod`]'s), bit by bit from `a`'s highest.
const fn mul_mod(a: u32, b: u32) -> u32 {
    let mut r: u64 = 0;
    let mut i = 32;
    while i > 0 {
        i -= 1;
        r <<= 1;
        if r & (1 << 32) != 0 {
            r ^= POLY;
        }
        if (a >> i) & 1 == 1 {
            r ^= b as u64;
        }
    }
    r as u32
}

/// Whether this CPU has what [`sum_hybrid`] uses: AVX2, VPCLMULQDQ, and
/// SSE 4.2 and PCLMULQDQ (checked once each; the standard library caches the answers).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("vpclmulqdq")
            && super::copying::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The CRC-32C of `crc`'s bytes followed by `bytes` (the `crc32c::crc32c_append`
/// convention: `crc` is a finished CRC), in rounds (module docs).
///
/// # Safety
/// [`available`] must have returned true.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,vpclmulqdq,sse4.2,pclmulqdq")]
pub(crate) unsafe fn sum_hybrid(crc: u32, bytes: &[u8]) -> u32 {
    let len = bytes.len();
    if len < MIN {
        // SAFETY: available() checked SSE 4.2 and PCLMULQDQ.
        return unsafe { super::copying::sum_append(crc, bytes) };
    }
    let (mut s, mut p) = (!crc, 0);
    while p + STEP <= len {
        let n = (len - p).min(ROUND) / STEP;
        // SAFETY: p + n * STEP <= len: inside `bytes`; nothing is stored.
        s = unsafe { round(s, bytes.as_ptr().add(p), n) };
        p += n * STEP;
    }
    // SAFETY: available() checked SSE 4.2.
    unsafe { super::copying::sum_short(!s, &bytes[p..]) }
}

/// One round of `n` steps (1 to [`STEPS`]) from the raw state `s`: `n * FOLD` bytes
/// folded, then four streams of `n * LANE` bytes; returns the raw state after the round.
///
/// # Safety
/// `src` readable for `n * STEP` bytes.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,vpclmulqdq,sse4.2,pclmulqdq")]
unsafe fn round(s: u32, src: *const u8, n: usize) -> u32 {
    // Where the streams start, and how far apart they are.
    let (words, apart) = (n * FOLD, n * LANE);
    // Step `i`'s 128 bytes to fold (plain loads, which the compiler folds into the
    // exclusive ors).
    let step = |i: usize| {
        // SAFETY: i * FOLD + 128 <= n * FOLD for i < n: inside the round's bytes.
        let l = |o: usize| unsafe { _mm256_loadu_si256(src.add(i * FOLD + o).cast()) };
        [l(0), l(32), l(64), l(96)]
    };
    // Step `i`'s four words of each stream, into the four states.
    let sum = |i: usize, c: &mut [u64; STREAMS]| {
        let w = words + i * LANE;
        for k in 0..LANE / 8 {
            for (j, c) in c.iter_mut().enumerate() {
                // SAFETY: w + j * apart + 8 * k + 8 <= words + STREAMS * apart = n * STEP
                // for i < n: inside the round's bytes; an unaligned read of plain bytes.
                let word = unsafe {
                    src.add(w + j * apart + 8 * k)
                        .cast::<u64>()
                        .read_unaligned()
                };
                *c = _mm_crc32_u64(*c, word);
            }
        }
    };
    let k = |(lo, hi): (i64, i64)| _mm256_set_epi64x(hi, lo, hi, lo);
    let by_step = k(const { fold_pair(FOLD) });
    let mut c = [0u64; STREAMS];
    let [mut a0, mut a1, mut a2, mut a3] = step(0);
    sum(0, &mut c);
    for i in 1..n {
        let [b0, b1, b2, b3] = step(i);
        a0 = fold(a0, by_step, b0);
        a1 = fold(a1, by_step, b1);
        a2 = fold(a2, by_step, b2);
        a3 = fold(a3, by_step, b3);
        sum(i, &mut c);
    }
    // The four accumulators into the last: by 96, 64 and 32 bytes; then its earlier lane
    // into its later one, by 16; then `crc32` from 0 reduces the lane's 16 bytes.
    a3 = fold(a2, k(const { fold_pair(32) }), a3);
    a3 = fold(a1, k(const { fold_pair(64) }), a3);
    a3 = fold(a0, k(const { fold_pair(96) }), a3);
    let (lo, hi) = const { fold_pair(16) };
    let by_16 = _mm_set_epi64x(hi, lo);
    let early = _mm256_castsi256_si128(a3);
    let v = _mm_xor_si128(
        _mm_xor_si128(
            _mm_clmulepi64_si128::<0x00>(early, by_16),
            _mm_clmulepi64_si128::<0x11>(early, by_16),
        ),
        _mm256_extracti128_si256::<1>(a3),
    );
    let f = _mm_crc32_u64(0, _mm_cvtsi128_si64(v) as u64);
    let f = _mm_crc32_u64(f, _mm_extract_epi64::<1>(v) as u64) as u32;
    // The six parts joined (module docs): the round is 8n units of 32 bytes, a stream n.
    shift(s, SHIFTS[8 * n])
        ^ shift(f, SHIFTS[4 * n])
        ^ shift(c[0] as u32, SHIFTS[3 * n])
        ^ shift(c[1] as u32, SHIFTS[2 * n])
        ^ shift(c[2] as u32, SHIFTS[n])
        ^ c[3] as u32
}

/// `a`'s two lanes moved forward by the multipliers in `k`, added to `b` (as
/// [`super::folding`]'s `fold`, with two exclusive ors for its ternary one).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,vpclmulqdq")]
fn fold(a: __m256i, k: __m256i, b: __m256i) -> __m256i {
    let early = _mm256_clmulepi64_epi128::<0x00>(a, k);
    let late = _mm256_clmulepi64_epi128::<0x11>(a, k);
    _mm256_xor_si256(_mm256_xor_si256(early, late), b)
}

/// Stands in where there is no x86-64 kernel; [`available`] is false there.
///
/// # Safety
/// None.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn sum_hybrid(crc: u32, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::checksum::copying::tests::proptest_if;
    use crate::resum::tests::bytes;

    /// Every length around [`MIN`], each whole-round boundary and the step boundaries of
    /// the shorter last round, from odd offsets.
    #[test]
    fn the_side_by_side_sum_matches_crc32c_at_every_boundary() {
        if !available() {
            return crate::testing::skip(NO_VPCLMULQDQ);
        }
        let data = bytes(5 * ROUND + 128, 13);
        let mut lens: Vec<usize> = vec![0, 1, 100, MIN / 2];
        for b in [
            MIN,
            MIN + STEP,
            ROUND - STEP,
            ROUND,
            ROUND + STEP,
            ROUND + MIN,
            2 * ROUND,
            4 * ROUND,
            5 * ROUND - STEP,
            5 * ROUND,
        ] {
            lens.extend(b - 9..b + 9);
        }
        for len in lens {
            for off in [0usize, 1, 7, 63] {
                let src = &data[off..off + len];
                let want = crc32c::crc32c_append(0x1357_9bdf, src);
                // SAFETY: checked available().
                let got = unsafe { sum_hybrid(0x1357_9bdf, src) };
                assert_eq!(got, want, "sum of {len} at +{off}");
            }
        }
    }

    /// The table the rounds join their parts by holds what `shift_const` computes bit by
    /// bit.
    #[test]
    fn the_join_table_moves_states_as_far_as_it_says() {
        for (u, &k) in SHIFTS.iter().enumerate().skip(1) {
            let want = crate::checksum::copying::shift_const(32 * u);
            assert_eq!(k, want, "{} bytes", 32 * u);
        }
    }

    /// Any bytes, any starting CRC, any length up to 70 KiB (a proptest, run only where the
    /// CPU has the instructions, and counted as skipped elsewhere).
    #[test]
    fn any_side_by_side_sum_is_crc32c() {
        let cases = (any::<u32>(), any::<u64>(), 0usize..70_000);
        proptest_if(available(), NO_VPCLMULQDQ, cases, |(crc, seed, len)| {
            let src = bytes(len, seed);
            let want = crc32c::crc32c_append(crc, &src);
            // SAFETY: proptest_if checked available().
            prop_assert_eq!(unsafe { sum_hybrid(crc, &src) }, want);
            Ok(())
        });
    }

    const NO_VPCLMULQDQ: &str = "this CPU lacks AVX2 or VPCLMULQDQ (the side-by-side loop)";
}
