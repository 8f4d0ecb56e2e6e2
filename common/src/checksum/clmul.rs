//! Copying and summing with 128-bit carry-less multiplication (PCLMULQDQ), for CPUs whose
//! `crc32` instruction is slow: the loops of [`super::folding`], 16 bytes to a register
//! instead of 64.
//!
//! Why: on AMD's first Zen cores `crc32` retires one 8-byte word every three cycles
//! whatever the number of streams, so [`super::copying`]'s three streams buy nothing
//! there. Measured on an AMD EPYC Zen 1 (family 17h, model 01h; 2 vCPUs, 64 KiB summed in
//! place from the caches, best of three): one to four `crc32` streams 6.9-7.4 GB/s, this
//! folding (two to eight 16-byte accumulators) 10.8-11.2 GB/s, and the two side by side in
//! one unrolled loop (three `crc32` streams beside four accumulators, in ratios from 1:1 to
//! 1:3) 11.0-11.5 GB/s, no faster than the folding alone: there they compete, as on the
//! Zen 2 that [`super::copying`]'s notes describe. So ~11 GB/s is what CRC-32C costs a core
//! of this CPU, and a copy between its cores can run faster (BENCHMARKS.md's Zen 1 section
//! says where that binds). Elsewhere `crc32` is the faster of the two (on the Zen 2, 21
//! GB/s copying and summing against 12.7 for a PCLMULQDQ fold), so `preferred` chooses
//! this module only on those cores; `cargo run --release -p common --example checksum_speed` prints what the
//! dispatch chose and how fast it runs on the machine at hand.
//!
//! How folding works is said in [`super::folding`]'s docs; here the four accumulators are
//! 16-byte registers holding the first 64 bytes (with the running CRC state added into the
//! first 4), each moved forward by 64 bytes per round and added to the next 64; at the end
//! the four are folded into the last, the remaining whole 16-byte lanes into it, and two
//! `crc32` instructions reduce its 16 bytes to the CRC. The last 0-15 bytes go through
//! [`super::copying`]'s word loop. Inputs under `MIN` (256 bytes) go to the `crc32` loops
//! whole: for them the set-up and the reduction cost more than the folding saves.
//!
//! As in the other copying loops, each 16-byte register is loaded once, stored, and that
//! register is summed (the loads and stores are [`super::folding`]'s, in assembly so the
//! compiler cannot load twice): a peer writing to the source meanwhile cannot make the sum
//! disagree with the copy. They are VEX instructions, so these loops also need AVX
//! (`available`).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{
    __m128i, _mm_clmulepi64_si128, _mm_crc32_u64, _mm_cvtsi128_si64, _mm_cvtsi32_si128,
    _mm_extract_epi64, _mm_prefetch, _mm_set_epi64x, _mm_xor_si128, _MM_HINT_T0,
};

#[cfg(target_arch = "x86_64")]
use super::folding::{fold_pair, load_lane, load_store_lane};

/// Bytes folded per round: four 16-byte registers.
const BLOCK: usize = 64;
/// The shortest input folded here; shorter ones go to the `crc32` loops.
pub(crate) const MIN: usize = 256;
/// The longest copy [`copy_clmul`] prefetches whole before it starts (as `copy_append`).
const PREFETCH: usize = 8 << 10;

/// Whether this CPU has what these loops use: SSE 4.2's `crc32` and PCLMULQDQ
/// ([`super::copying::available`]) and AVX (the loads and stores).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::copying::available() && std::arch::is_x86_feature_detected!("avx")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU should sum long inputs here rather than with `crc32` streams: it has
/// what they use ([`available`]), no wider folding ([`super::folding`], [`super::hybrid`]), and its
/// `crc32` is one of the slow ones ([`slow_crc32`]). Worked out once (in a virtual machine
/// every CPUID is a trip to the hypervisor); after that, one load.
pub(crate) fn preferred() -> bool {
    static PREFERRED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PREFERRED.get_or_init(|| {
        available() && !super::folding::available() && !super::hybrid::available() && slow_crc32()
    })
}

/// Whether the CPU is one whose `crc32` retires one word per three cycles: AMD family 17h
/// models 00h-2Fh (Zen and Zen+) and Hygon family 18h (the same core). Measured on a Zen 1
/// (model 01h); Zen+ and Hygon share its core and were not measured.
fn slow_crc32() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        let v = __cpuid(0);
        let mut vendor = [0u8; 12];
        vendor[..4].copy_from_slice(&v.ebx.to_le_bytes());
        vendor[4..8].copy_from_slice(&v.edx.to_le_bytes());
        vendor[8..].copy_from_slice(&v.ecx.to_le_bytes());
        let sig = __cpuid(1).eax;
        let base_family = (sig >> 8) & 0xf;
        let family = if base_family == 0xf {
            base_family + ((sig >> 20) & 0xff)
        } else {
            base_family
        };
        let model = ((sig >> 4) & 0xf) | (((sig >> 16) & 0xf) << 4);
        match &vendor {
            b"AuthenticAMD" => family == 0x17 && model < 0x30,
            b"HygonGenuine" => family == 0x18,
            _ => false,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Copies `dst.len()` bytes from `src` into `dst` and returns the CRC-32C of `crc`'s bytes
/// followed by them (the `crc32c::crc32c_append` convention), summing what is stored.
///
/// # Safety
/// [`available`] must have returned true; `src` must be valid for reads of `dst.len()`
/// bytes and not overlap `dst`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2,pclmulqdq")]
pub(crate) unsafe fn copy_clmul(crc: u32, src: *const u8, dst: &mut [u8]) -> u32 {
    let len = dst.len();
    let d = dst.as_mut_ptr();
    if len < MIN {
        // SAFETY: the caller's contract.
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

/// The CRC-32C of `crc`'s bytes followed by `bytes` by the same folding as
/// [`copy_clmul`], without the stores.
///
/// # Safety
/// [`available`] must have returned true.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2,pclmulqdq")]
pub(crate) unsafe fn sum_clmul(crc: u32, bytes: &[u8]) -> u32 {
    let len = bytes.len();
    if len < MIN {
        // SAFETY: the caller's contract.
        return unsafe { super::copying::sum_append(crc, bytes) };
    }
    // SAFETY: `bytes` holds len bytes; nothing is stored.
    let (s, p) = unsafe { fold_run::<false>(!crc, bytes.as_ptr(), std::ptr::null_mut(), len) };
    // SAFETY: the caller's contract.
    unsafe { super::copying::sum_short(!s, &bytes[p..]) }
}

/// Folds `len` bytes (at least [`MIN`]) from `src` from the raw state `s`, copying them to
/// `dst` if `COPY`; returns the raw state after them and the offset where fewer than 16
/// bytes remain.
///
/// # Safety
/// `src` readable for `len` bytes and, if `COPY`, `dst` writable for `len` bytes, apart.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "sse4.2,pclmulqdq")]
unsafe fn fold_run<const COPY: bool>(
    s: u32,
    src: *const u8,
    dst: *mut u8,
    len: usize,
) -> (u32, usize) {
    // Every access below is at p.. with p + its width <= len.
    let lane = |p: usize| {
        // SAFETY: p + 16 <= len at each call: inside both buffers by the contract.
        unsafe {
            if COPY {
                load_store_lane(src.add(p), dst.add(p))
            } else {
                load_lane(src.add(p))
            }
        }
    };
    let k = |(lo, hi): (i64, i64)| _mm_set_epi64x(hi, lo);
    let by_block = k(const { fold_pair(BLOCK) });
    let (mut a0, mut a1, mut a2, mut a3) = (lane(0), lane(16), lane(32), lane(48));
    // The running state goes into the first 4 bytes (a CRC is linear).
    a0 = _mm_xor_si128(a0, _mm_cvtsi32_si128(s as i32));
    let mut p = BLOCK;
    while p + BLOCK <= len {
        a0 = fold(a0, by_block, lane(p));
        a1 = fold(a1, by_block, lane(p + 16));
        a2 = fold(a2, by_block, lane(p + 32));
        a3 = fold(a3, by_block, lane(p + 48));
        p += BLOCK;
    }
    // The four registers into the last one: by 48, 32 and 16 bytes.
    let by_16 = k(const { fold_pair(16) });
    a3 = fold(a2, by_16, a3);
    a3 = fold(a1, k(const { fold_pair(32) }), a3);
    let mut v = fold(a0, k(const { fold_pair(48) }), a3);
    // Then 16 bytes at a time.
    while p + 16 <= len {
        v = fold(v, by_16, lane(p));
        p += 16;
    }
    // The lane's 16 bytes through `crc32` from 0: that reduces them modulo P, times x^32.
    let s = _mm_crc32_u64(0, _mm_cvtsi128_si64(v) as u64);
    let s = _mm_crc32_u64(s, _mm_extract_epi64::<1>(v) as u64);
    (s as u32, p)
}

/// `a` moved forward by the multipliers in `k` (its earlier half times `k`'s low half, its
/// later half times the high one), added to `b`. [`super::folding`]'s last 16-byte lanes
/// are folded by it too.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "pclmulqdq")]
pub(super) fn fold(a: __m128i, k: __m128i, b: __m128i) -> __m128i {
    let early = _mm_clmulepi64_si128::<0x00>(a, k);
    let late = _mm_clmulepi64_si128::<0x11>(a, k);
    _mm_xor_si128(_mm_xor_si128(early, late), b)
}

/// Stands in where there is no x86-64 kernel; [`preferred`] is false there.
///
/// # Safety
/// As the x86-64 version's.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn copy_clmul(crc: u32, src: *const u8, dst: &mut [u8]) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { super::copying::copy_append(crc, src, dst) }
}

/// Stands in where there is no x86-64 kernel; [`preferred`] is false there.
///
/// # Safety
/// None.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn sum_clmul(crc: u32, bytes: &[u8]) -> u32 {
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
    /// odd offsets, copied and summed in place. These loops run wherever the CPU has
    /// PCLMULQDQ, whether or not the dispatch prefers them, so they are tested everywhere.
    #[test]
    fn the_clmul_copy_and_sum_match_crc32c_at_every_boundary() {
        if !available() {
            return crate::testing::skip(NO_CLMUL);
        }
        let data = bytes(200 * BLOCK + 64, 13);
        let mut lens: Vec<usize> = (0..MIN + 4 * BLOCK + 20).collect();
        for b in [16 * BLOCK, PREFETCH, 128 * BLOCK] {
            lens.extend(b - 9..b + 9);
        }
        assert_copy_and_sum_match(copy_clmul, sum_clmul, &data, &lens);
    }

    /// Any bytes, any starting CRC, any length up to 70 KiB, copied and in place.
    #[test]
    fn any_clmul_copy_and_sum_is_crc32c() {
        let cases = (any::<u32>(), any::<u64>(), 0usize..70_000);
        proptest_if(available(), NO_CLMUL, cases, |(crc, seed, len)| {
            copy_and_sum_agree(copy_clmul, sum_clmul, crc, &bytes(len, seed))
        });
    }

    /// As the `crc32` loop's test: a torn copy is summed as it is stored.
    #[test]
    fn a_clmul_copy_of_a_changing_source_is_summed_as_stored() {
        if !available() {
            return crate::testing::skip(NO_CLMUL);
        }
        race_copies(copy_clmul, twenty_live).assert_summed_as_stored("clmul loop");
    }

    const NO_CLMUL: &str = "this CPU lacks SSE 4.2, PCLMULQDQ or AVX (the clmul loop)";
}
