fn main() -> std::process::ExitCode {
    msgqueue::writer::main()
}
