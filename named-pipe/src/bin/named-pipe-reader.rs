fn main() -> std::process::ExitCode {
    named_pipe::reader::main()
}
