fn main() -> std::process::ExitCode {
    pipe::reader::main()
}
