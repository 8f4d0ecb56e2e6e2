fn main() -> std::process::ExitCode {
    socket::writer::main()
}
