fn main() -> std::process::ExitCode {
    mmap::writer::main()
}
