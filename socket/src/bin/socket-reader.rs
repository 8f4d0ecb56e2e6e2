fn main() -> std::process::ExitCode {
    socket::reader::main()
}
