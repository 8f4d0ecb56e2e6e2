fn main() -> std::process::ExitCode {
    named_pipe::writer::main()
}
