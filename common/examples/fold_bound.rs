//! What bounds the folding CRC? The loop of `common::checksum::folding` moves each 64-byte
//! register of input forward with two 512-bit carry-less multiplications
//! (`VPCLMULQDQ`) and adds it to an accumulator. If the multiplications' latency bounds
//! it, more independent accumulators run faster; if their throughput does, the speed stops
//! growing at two. This example runs the bare loop (no copy, no reduction at the end, so it
//! is no CRC: only the instructions the real one repeats per line) with 1 to 16
//! accumulators over a buffer in L1 (16 KiB) and in L2 (64 KiB), beside a loop that only
//! loads and XORs the same bytes (what the caches could deliver) and the same fold on
//! 256-bit registers.
//!
//! On the development machine's AMD EPYC Zen 5 it printed 28-32 GB/s with one accumulator
//! and 51-60 with two to sixteen, against 117-232 GB/s for the loads alone, and 29-30 for
//! the 256-bit fold: the multiplications' throughput bounds the fold (the CPU issues as
//! many 256-bit ones as 512-bit ones, so the wide form moves twice the bytes), and no
//! reordering of the loop can pass it. That is the ceiling of the shared ring's consumer,
//! which copies and folds in one pass (see BENCHMARKS.md).
//!
//! Run: `taskset -c 0 cargo run --release -p common --example fold_bound`. It needs AVX-512F,
//! AVX-512VL and VPCLMULQDQ, and says so and exits on a CPU without them.

use std::time::Instant;

fn main() {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("vpclmulqdq")
        {
            // SAFETY: the three features the loops are compiled for were detected just above.
            unsafe { x86::report() };
            return;
        }
    }
    println!("this CPU lacks AVX-512F, AVX-512VL or VPCLMULQDQ: nothing to measure here (the frame checksum folds only with AVX-512F and VPCLMULQDQ)");
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Instant;
    use std::arch::x86_64::{
        __m512i, _mm256_clmulepi64_epi128, _mm256_loadu_si256, _mm256_set_epi64x,
        _mm256_setzero_si256, _mm256_ternarylogic_epi64, _mm256_xor_si256, _mm512_castsi512_si128,
        _mm512_clmulepi64_epi128, _mm512_loadu_si512, _mm512_set_epi64, _mm512_setzero_si512,
        _mm512_ternarylogic_epi64, _mm512_xor_si512, _mm512_zextsi256_si512, _mm_cvtsi128_si64,
    };
    use std::hint::black_box;

    /// Bytes passed per measurement, whatever the buffer's size.
    const BYTES: usize = 1 << 30;

    /// Prints both buffers' rows.
    ///
    /// # Safety
    /// The CPU has AVX-512F, AVX-512VL and VPCLMULQDQ.
    #[target_feature(enable = "avx512f,avx512vl,vpclmulqdq")]
    pub unsafe fn report() {
        println!(
            "{:>6} {:>11} {:>7} {:>7} {:>7} {:>7} {:>7} {:>11}   (GB/s; N accumulators)",
            "buffer", "loads only", "N=1", "N=2", "N=4", "N=8", "N=16", "256-bit N=4"
        );
        for kib in [16usize, 64] {
            let buf = vec![0x5au8; kib << 10];
            let passes: [Pass; 7] = [
                loads,
                fold_all::<1>,
                fold_all::<2>,
                fold_all::<4>,
                fold_all::<8>,
                fold_all::<16>,
                fold_narrow,
            ];
            // SAFETY: the caller vouches for the features every pass is compiled for.
            let rates = passes.map(|pass| unsafe { rate(&buf, pass) });
            println!(
                "{:>5}K {:>11.1} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>11.1}",
                kib, rates[0], rates[1], rates[2], rates[3], rates[4], rates[5], rates[6]
            );
        }
    }

    /// One loop over a buffer; all of them need AVX-512F, AVX-512VL and VPCLMULQDQ.
    type Pass = unsafe fn(&[u8]) -> __m512i;

    /// GB/s of `pass` over `buf`, repeated until [`BYTES`] have gone through.
    ///
    /// # Safety
    /// The CPU has what `pass` is compiled for.
    unsafe fn rate(buf: &[u8], pass: Pass) -> f64 {
        let reps = BYTES / buf.len();
        let t = Instant::now();
        for _ in 0..reps {
            // SAFETY: the caller vouches for the features; `low` needs AVX-512F only.
            black_box(unsafe { low(pass(black_box(buf))) });
        }
        (reps * buf.len()) as f64 / t.elapsed().as_secs_f64() / 1e9
    }

    /// The low 64 bits of `r`: what `rate` hands to `black_box`.
    #[target_feature(enable = "avx512f")]
    unsafe fn low(r: __m512i) -> i64 {
        _mm_cvtsi128_si64(_mm512_castsi512_si128(r))
    }

    /// Loads every 64-byte line of `buf` and XORs it into one of four registers.
    #[target_feature(enable = "avx512f")]
    unsafe fn loads(buf: &[u8]) -> __m512i {
        let mut a = [_mm512_setzero_si512(); 4];
        for chunk in buf.chunks_exact(256) {
            for (i, acc) in a.iter_mut().enumerate() {
                // SAFETY: 64 bytes at 64 * i inside the 256-byte chunk; unaligned loads.
                let line = unsafe { _mm512_loadu_si512(chunk.as_ptr().add(64 * i).cast()) };
                *acc = _mm512_xor_si512(*acc, line);
            }
        }
        _mm512_xor_si512(_mm512_xor_si512(a[0], a[1]), _mm512_xor_si512(a[2], a[3]))
    }

    /// The folding step of `common::checksum::folding` over every line of `buf`, line `j`
    /// into accumulator `j % N`: two carry-less multiplications and a three-way XOR each.
    /// The multipliers are arbitrary (the speed does not depend on them).
    #[target_feature(enable = "avx512f,vpclmulqdq")]
    unsafe fn fold_all<const N: usize>(buf: &[u8]) -> __m512i {
        let k = _mm512_set_epi64(3, 5, 3, 5, 3, 5, 3, 5);
        let mut a = [_mm512_setzero_si512(); N];
        for chunk in buf.chunks_exact(64 * N) {
            for (i, acc) in a.iter_mut().enumerate() {
                // SAFETY: 64 bytes at 64 * i inside the chunk of 64 * N; unaligned loads.
                let line = unsafe { _mm512_loadu_si512(chunk.as_ptr().add(64 * i).cast()) };
                let early = _mm512_clmulepi64_epi128::<0x00>(*acc, k);
                let late = _mm512_clmulepi64_epi128::<0x11>(*acc, k);
                // 0x96: the exclusive or of all three.
                *acc = _mm512_ternarylogic_epi64::<0x96>(early, late, line);
            }
        }
        a.iter()
            .fold(_mm512_setzero_si512(), |r, x| _mm512_xor_si512(r, *x))
    }

    /// As `fold_all::<4>` with 256-bit registers (`VPCLMULQDQ` on 32 bytes): whether the
    /// wide form moves more bytes per multiplication than the narrow one.
    #[target_feature(enable = "avx512f,avx512vl,vpclmulqdq")]
    unsafe fn fold_narrow(buf: &[u8]) -> __m512i {
        let k = _mm256_set_epi64x(3, 5, 3, 5);
        let mut a = [_mm256_setzero_si256(); 4];
        for chunk in buf.chunks_exact(128) {
            for (i, acc) in a.iter_mut().enumerate() {
                // SAFETY: 32 bytes at 32 * i inside the 128-byte chunk; unaligned loads.
                let line = unsafe { _mm256_loadu_si256(chunk.as_ptr().add(32 * i).cast()) };
                let early = _mm256_clmulepi64_epi128::<0x00>(*acc, k);
                let late = _mm256_clmulepi64_epi128::<0x11>(*acc, k);
                *acc = _mm256_ternarylogic_epi64::<0x96>(early, late, line);
            }
        }
        let r = _mm256_xor_si256(_mm256_xor_si256(a[0], a[1]), _mm256_xor_si256(a[2], a[3]));
        _mm512_zextsi256_si512(r)
    }
}
