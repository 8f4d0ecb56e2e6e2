fn main() -> std::process::ExitCode {
    mmap::reader::main()
}
