//! shm-writer: see `shm::writer`.
fn main() -> std::process::ExitCode {
    common::cli::start(std::env::args_os(), shm::writer::run)
}
