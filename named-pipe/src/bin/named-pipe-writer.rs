fn main() -> std::process::ExitCode {
    common::cli::start(std::env::args_os(), named_pipe::writer::run)
}
