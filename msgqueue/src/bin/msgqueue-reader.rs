fn main() -> std::process::ExitCode {
    msgqueue::reader::main()
}
