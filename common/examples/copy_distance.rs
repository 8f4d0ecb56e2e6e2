//! Does the distance between source and destination change how fast `memcpy` runs? On
//! CPUs whose glibc copies 2 KiB to 1 MiB with `rep movsb` it can: this prints the copy
//! speed for destinations 0 to 64 bytes past the source (modulo 4096), which is why the
//! shared ring's private buffers are laid out like its records (`common::align`): their
//! copies are always at a multiple of 64, whatever the record's place in the ring.
//!
//! Run: `cargo run --release -p common --example copy_distance` (pin it: `taskset -c 0`).

use std::hint::black_box;
use std::time::Instant;

fn main() {
    let distances = [0usize, 1, 8, 15, 16, 40, 48, 56, 64];
    print!("{:>8}", "size");
    for d in distances {
        print!(" {:>7}", format!("+{d}"));
    }
    println!("   (GB/s, destination this many bytes past the source, modulo 4096)");
    for size in [1usize << 10, 4 << 10, 64 << 10, 256 << 10, 1 << 20] {
        // Both buffers from page-aligned starts, so the distance is exactly the one shown.
        let mut src = vec![0u8; size + 8192];
        let mut dst = vec![0u8; size + 8192];
        let s0 = (4096 - src.as_ptr() as usize % 4096) % 4096;
        let d0 = (4096 - dst.as_ptr() as usize % 4096) % 4096;
        src.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        print!("{size:>8}");
        for d in distances {
            let from = &src[s0..s0 + size];
            let rounds = ((1usize << 30) / size).max(2000);
            let t = Instant::now();
            for _ in 0..rounds {
                dst[d0 + d..d0 + d + size].copy_from_slice(black_box(from));
                black_box(&mut dst);
            }
            let gbs = (size * rounds) as f64 / t.elapsed().as_secs_f64() / 1e9;
            print!(" {gbs:>7.1}");
        }
        println!();
    }
}
