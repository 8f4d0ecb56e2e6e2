//! How fast is the frame checksum? CRC-32C by the two implementations
//! `common::frame::checksum` chooses between (the `crc32c` crate's `crc32` instruction loop,
//! and `crc-fast`'s carry-less-multiply folding), what the dispatch picks on this CPU, and a
//! plain copy of the same buffer, from 64 B to 1 MiB: so you can see whether the checksum
//! or the copy bounds a mechanism at a given message size, and check the dispatch's
//! choice on the CPU you have.
//!
//! Run: `cargo run --release -p common --example checksum_speed` (pin it: `taskset -c 0`).

use std::hint::black_box;
use std::time::Instant;

fn main() {
    println!(
        "CPU folds 512 bits at a time (AVX-512F + VPCLMULQDQ): {}; the frame checksum uses {}",
        common::frame::wide_folding(),
        if common::frame::wide_folding() {
            "crc-fast"
        } else {
            "crc32c"
        }
    );
    println!(
        "{:>8} {:>14} {:>14} {:>16} {:>14}",
        "size", "crc32c GB/s", "crc-fast GB/s", "dispatch GB/s", "memcpy GB/s"
    );
    for size in [64usize, 256, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 1 << 20] {
        let src: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let mut dst = vec![0u8; size];
        // About 2 GB of work per measurement, at least 1000 rounds.
        let rounds = ((2usize << 30) / size).max(1000);
        let gbs = |secs: f64| (size * rounds) as f64 / secs / 1e9;
        let mut acc = 0u32;
        let t = Instant::now();
        for _ in 0..rounds {
            acc ^= crc32c::crc32c(black_box(&src));
        }
        let hw = gbs(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for _ in 0..rounds {
            let mut d = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
            d.update(black_box(&src));
            acc ^= d.finalize() as u32;
        }
        let fold = gbs(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for _ in 0..rounds {
            acc ^= common::frame::checksum(&[], black_box(&src));
        }
        let chosen = gbs(t.elapsed().as_secs_f64());
        black_box(acc);
        let t = Instant::now();
        for _ in 0..rounds {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        }
        let copy = gbs(t.elapsed().as_secs_f64());
        println!("{size:>8} {hw:>14.2} {fold:>14.2} {chosen:>16.2} {copy:>14.2}");
    }
}
