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

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    /// Set in the children of the test below: they narrate instead of testing.
    const CHILD_ENV: &str = "IPC_STUDY_NARRATE_CHILD";

    /// Two processes narrating at once into one stderr (a shared terminal or pipe) never
    /// produce a line that mixes them: every line is one whole line of one program.
    #[test]
    fn two_programs_sharing_stderr_never_mix_within_a_line() {
        if let Ok(name) = std::env::var(CHILD_ENV) {
            super::init(&name, false);
            for i in 0..2000 {
                crate::narrate!(
                    "line {i} of {name}, long enough to be written in several pieces: {}",
                    "x".repeat(60)
                );
            }
            return;
        }
        let (r, w) = nix::unistd::pipe().unwrap();
        let exe = std::env::current_exe().unwrap();
        let spawn = |name: &str| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "narrate::tests::two_programs_sharing_stderr_never_mix_within_a_line",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env(CHILD_ENV, name)
                .stdout(Stdio::null())
                .stderr(Stdio::from(w.try_clone().unwrap()))
                .spawn()
                .unwrap()
        };
        let (mut a, mut b) = (spawn("alpha"), spawn("beta"));
        drop(w);
        let reader = std::thread::spawn(move || {
            let mut all = String::new();
            std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut all).unwrap();
            all
        });
        assert!(a.wait().unwrap().success() && b.wait().unwrap().success());
        let all = reader.join().unwrap();
        let ours: Vec<&str> = all
            .lines()
            .filter(|l| l.contains(" of alpha") || l.contains(" of beta"))
            .collect();
        assert_eq!(ours.len(), 4000, "every line arrived");
        for l in ours {
            let who = if l.starts_with("[alpha ") {
                "alpha"
            } else {
                "beta"
            };
            assert!(l.starts_with(&format!("[{who} ")), "{l}");
            assert_eq!(l.matches('[').count(), 1, "a line mixes two programs: {l}");
            assert!(
                l.ends_with(&"x".repeat(60)) && l.contains(&format!(" of {who}, ")),
                "{l}"
            );
        }
    }
}
