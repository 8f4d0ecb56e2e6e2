//! How fast is the frame checksum? CRC-32C of a frame (its header's first 36 bytes, then
//! the payload) by two crates as references (the `crc32c` crate's `crc32` instruction loop,
//! and `crc-fast`'s carry-less-multiply folding through its `Digest`), what
//! `common::frame::checksum` runs (its "dispatch": the project's own `crc32` loops, its
//! 256-bit folding beside them where the CPU has VPCLMULQDQ without AVX-512, its own
//! 512-bit folding on AVX-512 CPUs, or its 128-bit folding where `crc32` is slow; the
//! first line says which), and a plain copy of the same payload, from a header
//! alone (`--verify seq`) to 1 MiB: so you can see whether the checksum or the copy bounds
//! a mechanism at a given message size, and check the dispatch's choice on the CPU you
//! have. The last two columns are what the shared ring's consumer could do with a frame:
//! copy it out then sum the copy, or what it does, `Summer::copy_from` (one pass, by the
//! same loops as the dispatch).
//!
//! Run: `cargo run --release -p common --example checksum_speed` (pin it: `taskset -c 0`).

use std::hint::black_box;
use std::time::Instant;

use common::align::RecordBytes;

fn main() {
    println!("the frame checksum uses {}", common::frame::method());
    println!(
        "{:>8} {:>20} {:>20} {:>20} {:>10} {:>15} {:>14}",
        "payload",
        "crc32c ns (GB/s)",
        "crc-fast ns (GB/s)",
        "dispatch ns (GB/s)",
        "copy GB/s",
        "copy, sum GB/s",
        "copy_from GB/s"
    );
    let prefix = [0x5au8; 36];
    for size in [
        0usize,
        64,
        128,
        256,
        512,
        1 << 10,
        4 << 10,
        64 << 10,
        1 << 20,
    ] {
        let src: Vec<u8> = (0..size).map(|i| i as u8).collect();
        // The copy as the ring's copies run: both buffers laid out like ring records.
        let mut from = RecordBytes::zeroed(size);
        from.copy_from_slice(&src);
        let mut dst = RecordBytes::zeroed(size);
        // About 1 GB of work per measurement, at least 200 000 rounds.
        let rounds = ((1usize << 30) / (size + 36)).max(200_000);
        let time = |f: &mut dyn FnMut() -> u32| {
            let t = Instant::now();
            let mut acc = 0u32;
            for _ in 0..rounds {
                acc ^= f();
            }
            black_box(acc);
            let ns = t.elapsed().as_secs_f64() * 1e9 / rounds as f64;
            format!("{ns:.1} ({:.1})", (size + 36) as f64 / ns)
        };
        let hw = time(&mut || {
            crc32c::crc32c_append(crc32c::crc32c(black_box(&prefix)), black_box(&src))
        });
        let fold = time(&mut || {
            let mut d = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
            d.update(black_box(&prefix));
            d.update(black_box(&src));
            d.finalize() as u32
        });
        let chosen = time(&mut || common::frame::checksum(black_box(&prefix), black_box(&src)));
        let mut gbps = |f: &mut dyn FnMut(&mut [u8])| {
            if size == 0 {
                return "-".to_string();
            }
            let t = Instant::now();
            for _ in 0..rounds {
                f(&mut dst);
                black_box(&mut dst);
            }
            let s = t.elapsed().as_secs_f64();
            format!("{:.1}", (size * rounds) as f64 / s / 1e9)
        };
        let copy = gbps(&mut |dst| dst.copy_from_slice(black_box(&from)));
        let copy_sum = gbps(&mut |dst| {
            dst.copy_from_slice(black_box(&from));
            let mut sum = common::frame::Summer::new(&prefix);
            sum.update(dst);
            black_box(sum.finish());
        });
        let one_pass = gbps(&mut |dst| {
            let mut sum = common::frame::Summer::new(&prefix);
            // SAFETY: `from` holds dst.len() bytes and is another buffer.
            unsafe { sum.copy_from(black_box(&from).as_ptr(), dst) };
            black_box(sum.finish());
        });
        println!(
            "{size:>8} {hw:>20} {fold:>20} {chosen:>20} {copy:>10} {copy_sum:>15} {one_pass:>14}"
        );
    }
}
