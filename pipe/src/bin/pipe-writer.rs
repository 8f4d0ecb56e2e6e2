fn main() -> std::process::ExitCode {
    pipe::writer::main()
}
