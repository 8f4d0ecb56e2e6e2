//! Copying and summing in one pass, 64 bytes at a time: the loop of [`super::copying`] for
//! CPUs with AVX-512 and VPCLMULQDQ, where a CRC is folded with carry-less multiplication
//! instead of fed 8 bytes at a time to the `crc32` instruction.
//!
//! Why: on such a CPU the `crc-fast` crate sums at ~60 GB/s and a copy between two cores
//! runs at ~50, but one after the other they cost the sum of both times: the shared ring's
//! consumer moved a 64 KiB stream at 29 GB/s against 49-56 for a bare copy (AMD EPYC Zen 5,
//! `cargo run --release -p common --example checksum_speed` prints the one-core figures).
//! Here each 64-byte register is loaded once, stored, and folded into the sum while the
//! next lines are still on their way from the other core, so the sum hides in the copy's
//! waiting.
//!
//! What bounds it is the multiplications' throughput: `cargo run --release -p common
//! --example fold_bound` runs this loop's folding step alone, and on the Zen 5 one
//! accumulator folded at 28-32 GB/s while two to sixteen all stopped at 51-60 (the loads
//! alone ran at 117-232), so the four accumulators below are as many as help.
//!
//! How folding works. Four 512-bit accumulators hold the first 256 bytes (with the running
//! CRC state added into the first 4 bytes, as a CRC is linear). Each 128-bit lane of them
//! is then moved forward by 256 bytes and added to the lane of the next block: a lane is
//! two 64-bit halves, and a half `h` that stands `d` bits before its place is replaced by
//! `h * (x^(d + 32) mod P)` (the earlier half) or `h * (x^(d - 32) mod P)` (the later one,
//! 64 bits nearer). Each is one carry-less multiply of a 64-bit half by a 33-bit constant,
//! whose 96-bit product is congruent modulo P to the half moved forward and lies inside
//! the lane it is added to (that is what the `32`s arrange). The constants are
//! bit-reversed, as the CRC's bits are, and shifted left by one, because the multiply of
//! two bit-reversed numbers leaves one `x` out; `xpow_mod` computes them at compile time.
//! At the end the four accumulators are folded into the last one; the remaining whole
//! 64-byte registers are folded into it one at a time; its four lanes into its last lane;
//! the remaining whole 16-byte lanes into that; and the `crc32` instruction reduces the lane's 16 bytes to the 32-bit CRC; the
//! last 0-15 bytes go through [`super::copying`]'s word loop.
//!
//! A short input (under `MIN`, 512 bytes) costs more to set up and reduce than it saves;
//! `copy_fold` and `sum_fold` pass those to the `crc32` loops themselves.
//!
//! Tried and left out, on the Zen 5: running three `crc32` streams beside the folding (4
//! KiB folded, then 1536 bytes for `crc32`, in one loop), which other CPUs' ports allow.
//! Summing in place from the caches it was 1.3x faster (75 against 57 GB/s at 64 KiB), but
//! slower where it counts: summing a zero-copy frame in another core's cache (a 64 KiB
//! stream 39.5 against 43 GB/s, five interleaved runs each) and with the copy's stores
//! beside it (45 against 57 GB/s at 64 KiB). Software prefetching ahead in the loop (512
//! bytes to 4 KiB) changed nothing measurable between cores.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{
    __m128i, __m512i, _mm512_clmulepi64_epi128, _mm512_extracti32x4_epi32, _mm512_maskz_mov_epi64,
    _mm512_set_epi64, _mm512_ternarylogic_epi64, _mm512_xor_si512, _mm512_zextsi128_si512,
    _mm_crc32_u64, _mm_cvtsi128_si64, _mm_cvtsi32_si128, _mm_extract_epi64, _mm_prefetch,
    _mm_set_epi64x, _mm_xor_si128, _MM_HINT_T0,
};

use super::copying::xpow_mod;

/// Bytes folded per round: four 64-byte registers.
const BLOCK: usize = 256;
/// The shortest input worth folding: two rounds.
pub(crate) const MIN: usize = 2 * BLOCK;
/// The longest copy [`copy_fold`] prefetches whole before it starts (as `copy_append`).
const PREFETCH: usize = 8 << 10;

/// The two multipliers that move a 128-bit lane forward by `bytes` (module docs): for its
/// earlier half `x^(8 bytes + 32) mod P` and for its later half `x^(8 bytes - 32) mod P`,
/// bit-reversed and shifted left by one.
pub(crate) const fn fold_pair(bytes: usize) -> (i64, i64) {
    let d = 8 * bytes as u32;
    (
        ((xpow_mod(d + 32).reverse_bits() as u64) << 1) as i64,
        ((xpow_mod(d - 32).reverse_bits() as u64) << 1) as i64,
    )
}

/// Whether this CPU has what [`copy_fold`] and [`sum_fold`] use: AVX-512F, VPCLMULQDQ, and
/// for the short inputs and tails SSE 4.2 and PCLMULQDQ (checked once each; the standard
/// library caches the answers).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("vpclmulqdq")
            && super::copying::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Copies `dst.len()` bytes from `src` into `dst` and returns the CRC-32C of `crc`'s bytes
/// followed by them (the `crc32c::crc32c_append` convention: `crc` is a finished CRC).
/// As with `copy_append`, each 64-byte register is loaded once and the same register is
/// stored and summed, so a peer writing to `src` meanwhile cannot make the sum disagree
/// with the copy.
///
/// # Safety
/// [`available`] must have returned true; `src` must be valid for reads of `dst.len()`
/// bytes and not overlap `dst`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,vpclmulqdq,sse4.2,pclmulqdq")]
pub(crate) unsafe fn copy_fold(crc: u32, src: *const u8, dst: &mut [u8]) -> u32 {
    let len = dst.len();
    let d = dst.as_mut_ptr();
    if len < MIN {
        // SAFETY: the caller's contract; available() checked SSE 4.2 and PCLMULQDQ.
        return unsafe { super::copying::copy_append(crc, src, dst) };
    }
    // A short copy asks for all its lines at once (see `copy_append`).
    let mut q = 0;
    while len <= PREFETCH && q < len {
        // SAFETY: a prefetch of an address inside `src`'s len bytes; it cannot fault.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(src.add(q).cast()) };
        q += 64;
    }
    // SAFETY: both buffers hold len bytes (the contract above); the features are present.
    let (s, p) = unsafe { fold_run::<true>(!crc, src, d, len) };
    // SAFETY: the rest, p.. up to len, lies inside both buffers.
    unsafe { super::copying::copy_append(!s, src.add(p), &mut dst[p..]) }
}

/// The CRC-32C of `crc`'s bytes followed by `bytes` (the `crc32c::crc32c_append`
/// convention) by the same folding as [`copy_fold`], without the stores.
///
/// # Safety
/// [`available`] must have returned true.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,vpclmulqdq,sse4.2,pclmulqdq")]
pub(crate) unsafe fn sum_fold(crc: u32, bytes: &[u8]) -> u32 {
    let len = bytes.len();
    if len < MIN {
        // SAFETY: available() checked SSE 4.2 and PCLMULQDQ.
        return unsafe { super::copying::sum_append(crc, bytes) };
    }
    let b = bytes.as_ptr();
    // SAFETY: `bytes` holds len bytes; nothing is stored.
    let (s, p) = unsafe { fold_run::<false>(!crc, b, std::ptr::null_mut(), len) };
    // SAFETY: available() checked SSE 4.2.
    unsafe { super::copying::sum_short(!s, &bytes[p..]) }
}

/// Folds `len` bytes (at least [`MIN`]) from `src` from the raw state `s`, copying them to
/// `dst` if `COPY`; returns the raw state after them and the offset where fewer than 16
/// bytes remain: whole blocks of four registers, then single 64-byte registers, then
/// 16-byte lanes.
///
/// # Safety
/// `src` readable for `len` bytes and, if `COPY`, `dst` writable for `len` bytes, apart.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,vpclmulqdq,sse4.2,pclmulqdq")]
unsafe fn fold_run<const COPY: bool>(
    s: u32,
    src: *const u8,
    dst: *mut u8,
    len: usize,
) -> (u32, usize) {
    // Every access below is at p.. with p + its width <= len.
    let block = |p: usize| {
        // SAFETY: p + BLOCK <= len at each call: inside both buffers by the contract.
        unsafe {
            if COPY {
                load_store(src.add(p), dst.add(p))
            } else {
                load(src.add(p))
            }
        }
    };
    let k = |(lo, hi): (i64, i64)| _mm512_set_epi64(hi, lo, hi, lo, hi, lo, hi, lo);
    let by_block = k(const { fold_pair(BLOCK) });
    let [mut a0, mut a1, mut a2, mut a3] = block(0);
    // The running state goes into the first 4 bytes (a CRC is linear).
    a0 = _mm512_xor_si512(a0, _mm512_zextsi128_si512(_mm_cvtsi32_si128(s as i32)));
    let mut p = BLOCK;
    while p + BLOCK <= len {
        let [b0, b1, b2, b3] = block(p);
        a0 = fold(a0, by_block, b0);
        a1 = fold(a1, by_block, b1);
        a2 = fold(a2, by_block, b2);
        a3 = fold(a3, by_block, b3);
        p += BLOCK;
    }
    // The four registers into the last one: by 192, 128 and 64 bytes.
    let by_line = k(const { fold_pair(64) });
    a3 = fold(a2, by_line, a3);
    a3 = fold(a1, k(const { fold_pair(128) }), a3);
    a3 = fold(a0, k(const { fold_pair(192) }), a3);
    // Then one register at a time.
    while p + 64 <= len {
        // SAFETY: as above.
        let b = unsafe {
            if COPY {
                load_store_line(src.add(p), dst.add(p))
            } else {
                load_line(src.add(p))
            }
        };
        a3 = fold(a3, by_line, b);
        p += 64;
    }
    // Its four lanes into the last: by 48, 32 and 16 bytes; the last lane is kept as it is
    // (zero multipliers), and added below.
    let ((l0, h0), (l1, h1), (l2, h2)) = const { (fold_pair(48), fold_pair(32), fold_pair(16)) };
    let by_lane = _mm512_set_epi64(0, 0, h2, l2, h1, l1, h0, l0);
    let moved = fold(a3, by_lane, last_lane(a3));
    let mut v = _mm_xor_si128(
        _mm_xor_si128(
            _mm512_extracti32x4_epi32::<0>(moved),
            _mm512_extracti32x4_epi32::<1>(moved),
        ),
        _mm_xor_si128(
            _mm512_extracti32x4_epi32::<2>(moved),
            _mm512_extracti32x4_epi32::<3>(moved),
        ),
    );
    // Then 16 bytes at a time.
    let (lo, hi) = const { fold_pair(16) };
    let by_16 = _mm_set_epi64x(hi, lo);
    while p + 16 <= len {
        // SAFETY: as above.
        let b = unsafe {
            if COPY {
                load_store_lane(src.add(p), dst.add(p))
            } else {
                load_lane(src.add(p))
            }
        };
        v = super::clmul::fold(v, by_16, b);
        p += 16;
    }
    // The lane's 16 bytes through `crc32` from 0: that reduces them modulo P, times x^32.
    let s = _mm_crc32_u64(0, _mm_cvtsi128_si64(v) as u64);
    let s = _mm_crc32_u64(s, _mm_extract_epi64::<1>(v) as u64);
    (s as u32, p)
}

/// `a`'s lanes moved forward by the multipliers in `k` (each lane's earlier half times the
/// lane's low multiplier, its later half times the high one), added to `b`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,vpclmulqdq")]
fn fold(a: __m512i, k: __m512i, b: __m512i) -> __m512i {
    let early = _mm512_clmulepi64_epi128::<0x00>(a, k);
    let late = _mm512_clmulepi64_epi128::<0x11>(a, k);
    // 0x96: the exclusive or of all three.
    _mm512_ternarylogic_epi64::<0x96>(early, late, b)
}

/// `a`'s last 128-bit lane alone, in a register whose other lanes are zero.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
fn last_lane(a: __m512i) -> __m512i {
    _mm512_maskz_mov_epi64(0b1100_0000, a)
}

/// Four 64-byte registers loaded from `src` and stored to `dst`, in assembly so that each
/// is loaded exactly once and what is summed is what was stored (see `copy_append`).
///
/// # Safety
/// `src` readable and `dst` writable for [`BLOCK`] bytes; AVX-512F present.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load_store(src: *const u8, dst: *mut u8) -> [__m512i; 4] {
    let (r0, r1, r2, r3): (__m512i, __m512i, __m512i, __m512i);
    // SAFETY: the caller vouches for the 256 bytes at each pointer.
    unsafe {
        std::arch::asm!(
            "vmovdqu64 {r0}, zmmword ptr [{s}]",
            "vmovdqu64 {r1}, zmmword ptr [{s} + 64]",
            "vmovdqu64 {r2}, zmmword ptr [{s} + 128]",
            "vmovdqu64 {r3}, zmmword ptr [{s} + 192]",
            "vmovdqu64 zmmword ptr [{d}], {r0}",
            "vmovdqu64 zmmword ptr [{d} + 64], {r1}",
            "vmovdqu64 zmmword ptr [{d} + 128], {r2}",
            "vmovdqu64 zmmword ptr [{d} + 192], {r3}",
            s = in(reg) src,
            d = in(reg) dst,
            r0 = out(zmm_reg) r0,
            r1 = out(zmm_reg) r1,
            r2 = out(zmm_reg) r2,
            r3 = out(zmm_reg) r3,
            options(nostack, preserves_flags),
        )
    };
    [r0, r1, r2, r3]
}

/// Four 64-byte registers loaded from `src` (each once, as in [`load_store`]).
///
/// # Safety
/// `src` readable for [`BLOCK`] bytes; AVX-512F present.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load(src: *const u8) -> [__m512i; 4] {
    let (r0, r1, r2, r3): (__m512i, __m512i, __m512i, __m512i);
    // SAFETY: the caller vouches for the 256 bytes.
    unsafe {
        std::arch::asm!(
            "vmovdqu64 {r0}, zmmword ptr [{s}]",
            "vmovdqu64 {r1}, zmmword ptr [{s} + 64]",
            "vmovdqu64 {r2}, zmmword ptr [{s} + 128]",
            "vmovdqu64 {r3}, zmmword ptr [{s} + 192]",
            s = in(reg) src,
            r0 = out(zmm_reg) r0,
            r1 = out(zmm_reg) r1,
            r2 = out(zmm_reg) r2,
            r3 = out(zmm_reg) r3,
            options(nostack, preserves_flags, readonly),
        )
    };
    [r0, r1, r2, r3]
}

/// One 64-byte register loaded from `src` and stored to `dst` (as [`load_store`]).
///
/// # Safety
/// `src` readable and `dst` writable for 64 bytes; AVX-512F present.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load_store_line(src: *const u8, dst: *mut u8) -> __m512i {
    let r: __m512i;
    // SAFETY: the caller vouches for the 64 bytes at each pointer.
    unsafe {
        std::arch::asm!(
            "vmovdqu64 {r}, zmmword ptr [{s}]",
            "vmovdqu64 zmmword ptr [{d}], {r}",
            s = in(reg) src,
            d = in(reg) dst,
            r = out(zmm_reg) r,
            options(nostack, preserves_flags),
        )
    };
    r
}

/// One 64-byte register loaded from `src` (once, as in [`load_store`]).
///
/// # Safety
/// `src` readable for 64 bytes; AVX-512F present.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load_line(src: *const u8) -> __m512i {
    let r: __m512i;
    // SAFETY: the caller vouches for the 64 bytes.
    unsafe {
        std::arch::asm!(
            "vmovdqu64 {r}, zmmword ptr [{s}]",
            s = in(reg) src,
            r = out(zmm_reg) r,
            options(nostack, preserves_flags, readonly),
        )
    };
    r
}

/// 16 bytes loaded from `src` and stored to `dst` (as [`load_store`]). The VEX form
/// (`vmovdqu`), as everywhere in this module: a legacy SSE instruction after 512-bit ones
/// costs a state transition on some Intel CPUs. [`super::clmul`]'s loops load and store
/// with it too.
///
/// # Safety
/// `src` readable and `dst` writable for 16 bytes; AVX present.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(super) unsafe fn load_store_lane(src: *const u8, dst: *mut u8) -> __m128i {
    let r: __m128i;
    // SAFETY: the caller vouches for the 16 bytes at each pointer.
    unsafe {
        std::arch::asm!(
            "vmovdqu {r}, xmmword ptr [{s}]",
            "vmovdqu xmmword ptr [{d}], {r}",
            s = in(reg) src,
            d = in(reg) dst,
            r = out(xmm_reg) r,
            options(nostack, preserves_flags),
        )
    };
    r
}

/// 16 bytes loaded from `src` (once, as in [`load_store`]; VEX form, as [`load_store_lane`]).
///
/// # Safety
/// `src` readable for 16 bytes; AVX present.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(super) unsafe fn load_lane(src: *const u8) -> __m128i {
    let r: __m128i;
    // SAFETY: the caller vouches for the 16 bytes.
    unsafe {
        std::arch::asm!(
            "vmovdqu {r}, xmmword ptr [{s}]",
            s = in(reg) src,
            r = out(xmm_reg) r,
            options(nostack, preserves_flags, readonly),
        )
    };
    r
}

/// Stands in where there is no x86-64 kernel; [`available`] is false there.
///
/// # Safety
/// As the x86-64 version's.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn copy_fold(crc: u32, src: *const u8, dst: &mut [u8]) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { super::copying::copy_append(crc, src, dst) }
}

/// Stands in where there is no x86-64 kernel; [`available`] is false there.
///
/// # Safety
/// None.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn sum_fold(crc: u32, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::checksum::copying::tests::{
        assert_copy_and_sum_match, copy_and_sum_agree, proptest_if, race_copies, twenty_live,
    };
    use crate::resum::tests::bytes;

    /// Every length around each block boundary from 0 to a few blocks past [`MIN`], from
    /// odd offsets, copied and summed in place.
    #[test]
    fn the_folded_copy_and_sum_match_crc32c_at_every_boundary() {
        if !available() {
            return crate::testing::skip(NO_FOLDING);
        }
        let data = bytes(40 * BLOCK + 64, 11);
        let mut lens: Vec<usize> = (0..MIN + 2 * BLOCK + 20).collect();
        for b in [8 * BLOCK, PREFETCH, 32 * BLOCK] {
            lens.extend(b - 9..b + 9);
        }
        assert_copy_and_sum_match(copy_fold, sum_fold, &data, &lens);
    }

    /// Any bytes, any starting CRC, any length up to 70 KiB, copied and in place (a
    /// proptest, run only where the CPU has the instructions, and counted as skipped
    /// elsewhere).
    #[test]
    fn any_folded_copy_and_sum_is_crc32c() {
        let cases = (any::<u32>(), any::<u64>(), 0usize..70_000);
        proptest_if(available(), NO_FOLDING, cases, |(crc, seed, len)| {
            copy_and_sum_agree(copy_fold, sum_fold, crc, &bytes(len, seed))
        });
    }

    /// As the `crc32` loop's test: a torn copy is summed as it is stored.
    #[test]
    fn a_folded_copy_of_a_changing_source_is_summed_as_stored() {
        if !available() {
            return crate::testing::skip(NO_FOLDING);
        }
        race_copies(copy_fold, twenty_live).assert_summed_as_stored("folding loop");
    }

    const NO_FOLDING: &str = "this CPU lacks AVX-512F or VPCLMULQDQ (the folding loop)";
}
