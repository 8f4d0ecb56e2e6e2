//! The `mmap-writer` binary: the program is `mmap::writer` (src/writer.rs).

fn main() -> std::process::ExitCode {
    // `--mode bulk` is this pair's own spelling of `--bulk` (common's `--mode` has three).
    let argv = mmap::rewrite_bulk_mode(std::env::args_os());
    common::cli::start(argv, mmap::writer::run)
}
