//! `cachestat FILE [OFFSET LENGTH]`: what the page cache holds of a file, and how much of
//! it is dirty (newer than the copy on the disk), from `cachestat(2)` (Linux 6.5+). F5.
//!
//! ```text
//! cargo run -q -p mmap --example cachestat -- /var/tmp/b.map
//! /var/tmp/b.map: 4097 pages in the page cache, 4097 dirty (newer than the disk copy), 0 under writeback
//! ```
//!
//! Run it while `mmap-writer` has the file mapped: the pages the writer stored into are
//! dirty, the reader already sees them, and nothing reached the disk yet. After an
//! `msync(MS_SYNC)` (`mmap-writer --sync`) the count of dirty pages drops to 0.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| args.get(i).map_or(Ok(0), |s| s.parse::<u64>());
    let (Some(path), Ok(off), Ok(len)) = (args.first(), num(1), num(2)) else {
        eprintln!("usage: cachestat FILE [OFFSET LENGTH]   (bytes; LENGTH 0: to the end)");
        return ExitCode::from(2);
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("open {path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match mmap::cachestat(&file, off, len) {
        Some(s) => {
            println!("{path}: {s}");
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("cachestat {path}: not available (Linux 6.5 or later is needed)");
            ExitCode::FAILURE
        }
    }
}
