//! The `mmap-writer` binary: the program is `mmap::writer` (src/writer.rs).

fn main() -> std::process::ExitCode {
    // `--mode bulk` is this pair's own spelling of `--bulk`, and `--help` shows the real
    // defaults of `--name` and `--path` (see `mmap::start`).
    mmap::start(std::env::args_os(), mmap::writer::run)
}
