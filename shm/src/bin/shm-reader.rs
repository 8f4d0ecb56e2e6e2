//! shm-reader: see `shm::reader`.
fn main() -> std::process::ExitCode {
    shm::reader::main()
}
