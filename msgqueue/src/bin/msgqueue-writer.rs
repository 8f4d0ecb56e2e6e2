fn main() -> std::process::ExitCode {
    common::cli::start(std::env::args_os(), msgqueue::writer::run)
}
