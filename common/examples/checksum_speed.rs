//! How fast is the frame checksum? `common::frame::checksum` (CRC-32C by crc-fast) over
//! buffers from 64 B to 1 MiB, next to the `crc32c` crate (the alternative it replaced) and
//! a plain copy of the same buffer, so you can see whether the checksum or the copy bounds a
//! mechanism at a given message size.
//!
//! Run: `cargo run --release -p common --example checksum_speed` (pin it: `taskset -c 0`).

use std::hint::black_box;
use std::time::Instant;

fn main() {
    println!(
        "{:>8} {:>16} {:>14} {:>14}",
        "size", "frame GB/s", "crc32c GB/s", "memcpy GB/s"
    );
    for size in [64usize, 1 << 10, 4 << 10, 64 << 10, 1 << 20] {
        let src: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let mut dst = vec![0u8; size];
        // About 2 GB of work per measurement, at least 1000 rounds.
        let rounds = ((2usize << 30) / size).max(1000);
        let gbs = |secs: f64| (size * rounds) as f64 / secs / 1e9;
        let t = Instant::now();
        let mut acc = 0u32;
        for _ in 0..rounds {
            acc ^= common::frame::checksum(&[], black_box(&src));
        }
        let frame = gbs(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for _ in 0..rounds {
            acc ^= crc32c::crc32c(black_box(&src));
        }
        let crc = gbs(t.elapsed().as_secs_f64());
        black_box(acc);
        let t = Instant::now();
        for _ in 0..rounds {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        }
        let copy = gbs(t.elapsed().as_secs_f64());
        println!("{size:>8} {frame:>16.2} {crc:>14.2} {copy:>14.2}");
    }
}
