//! Narration: what a learner sees on stderr while a program runs.
//!
//! Every line starts with the program's name and pid, so with two terminals (or two
//! processes writing to one) it is always clear who is speaking. Data and reports go to
//! stdout, narration to stderr, so `pipe-reader > file` keeps the file clean.
//! Before every call that can block, a program says what it waits for and who unblocks it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// The program name set by [`init`].
static PROGRAM: OnceLock<String> = OnceLock::new();
/// `--quiet`: keep narration to errors and the final report.
static QUIET: AtomicBool = AtomicBool::new(false);

/// Sets the name shown in front of every line and whether `--quiet` was given.
pub fn init(program: &str, quiet: bool) {
    let _ = PROGRAM.set(program.to_string());
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Whether narration is switched off.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// The `[program pid]` prefix.
pub fn prefix() -> String {
    let name = PROGRAM.get().map(String::as_str).unwrap_or("ipc-study");
    format!("[{name} {}]", std::process::id())
}

/// Prints one narration line unless `--quiet`. Use the [`narrate!`](macro@crate::narrate) macro.
pub fn line(msg: std::fmt::Arguments<'_>) {
    if !quiet() {
        always(msg);
    }
}

/// Prints a line even under `--quiet`: warnings and errors a user must see.
///
/// The line is formatted first and leaves in one `write(2)`: stderr is unbuffered, so
/// `eprintln!` would write each formatted piece on its own, and two programs sharing one
/// terminal (`pipe-writer | pipe-reader`) would mix their lines mid-line. A single write
/// of a line to a terminal or a pipe is not split by another process's write.
pub fn always(msg: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let line = format!("{} {msg}\n", prefix());
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `narrate!("waiting for {}", what)`: one line on stderr, unless `--quiet`.
#[macro_export]
macro_rules! narrate {
    ($($arg:tt)*) => { $crate::narrate::line(format_args!($($arg)*)) };
}

/// `warn!("...")`: one line on stderr, even under `--quiet`.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::narrate::always(format_args!($($arg)*)) };
}
