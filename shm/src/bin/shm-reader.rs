//! shm-reader: see `shm::reader`.
fn main() -> std::process::ExitCode {
    common::cli::start(std::env::args_os(), shm::reader::run)
}
