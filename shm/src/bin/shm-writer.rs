//! shm-writer: see `shm::writer`.
fn main() -> std::process::ExitCode {
    shm::writer::main()
}
