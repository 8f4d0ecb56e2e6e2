//! Process-level test support, shared by the mechanism crates' `tests/` (enabled by the
//! `testing` feature, which only their dev-dependencies turn on).
//!
//! Every child runs under a deadline, its output is collected by threads (so a full stdout
//! pipe can never stall it), and a test can wait for a line of narration before acting
//! (kill, signal, close stdin). A test that would hang fails with what the child printed.
//! It is test code: it panics (`unwrap`, `expect`) where a test should fail.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long any child may run before the test kills it and fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A running child with its output being collected.
pub struct Proc {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    started: Instant,
    label: String,
}

fn collect(mut src: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = src.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

/// Result of a finished child.
#[derive(Debug)]
pub struct Done {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Done {
    /// Whether the child exited with status 0.
    pub fn ok(&self) -> bool {
        self.status.success()
    }

    /// The first JSON report on stdout, whatever its role (a program run on its own).
    pub fn any_report(&self) -> crate::timing::Report {
        self.stdout
            .lines()
            .filter(|l| l.starts_with('{'))
            .find_map(|l| crate::timing::Report::from_json(l).ok())
            .unwrap_or_else(|| {
                panic!(
                    "no report in:\n{}\n--- stderr:\n{}",
                    self.stdout, self.stderr
                )
            })
    }

    /// The JSON report lines on stdout (or stderr), by role.
    pub fn report(&self, role: &str, from_stderr: bool) -> crate::timing::Report {
        let text = if from_stderr {
            &self.stderr
        } else {
            &self.stdout
        };
        text.lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| crate::timing::Report::from_json(l).ok())
            .find(|r| r.role == role)
            .unwrap_or_else(|| panic!("no {role} report in:\n{text}\n--- stderr:\n{}", self.stderr))
    }
}

impl Proc {
    /// Starts `cmd` with piped stdout and stderr (stdin as configured by the caller).
    pub fn spawn(label: &str, cmd: &mut Command) -> Proc {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        Self::spawn_raw(label, cmd)
    }

    /// Starts `cmd` as configured; collects whichever of stdout/stderr are piped.
    pub fn spawn_raw(label: &str, cmd: &mut Command) -> Proc {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {label}: {e}"));
        Self::adopt(label, child)
    }

    /// Takes over a child started elsewhere (one whose stdout went to another process, as
    /// in a shell pipeline); collects whichever of its stdout/stderr are still piped.
    pub fn adopt(label: &str, mut child: Child) -> Proc {
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        if let Some(o) = child.stdout.take() {
            readers.push(collect(o, out.clone()));
        }
        if let Some(e) = child.stderr.take() {
            readers.push(collect(e, err.clone()));
        }
        let stdin = child.stdin.take();
        Proc {
            child,
            stdin,
            out,
            err,
            readers,
            started: Instant::now(),
            label: label.into(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stderr_now(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    pub fn stdout_now(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// Waits until stderr (or stdout) contains `needle`; fails the test at the deadline.
    pub fn wait_for(&mut self, needle: &str) {
        loop {
            if self.stderr_now().contains(needle) || self.stdout_now().contains(needle) {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                // Let the collectors drain what is left before the last look.
                std::thread::sleep(Duration::from_millis(50));
                if self.stderr_now().contains(needle) || self.stdout_now().contains(needle) {
                    return;
                }
                panic!(
                    "{} exited ({st}) before printing {needle:?}\nstdout:\n{}\nstderr:\n{}",
                    self.label,
                    self.stdout_now(),
                    self.stderr_now()
                );
            }
            if self.started.elapsed() > DEADLINE {
                let _ = self.child.kill();
                panic!(
                    "{} did not print {needle:?} in time\nstderr:\n{}",
                    self.label,
                    self.stderr_now()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn write_stdin(&mut self, bytes: &[u8]) {
        self.stdin
            .as_mut()
            .expect("stdin is piped")
            .write_all(bytes)
            .unwrap();
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// `kill -9`, and collect the status so the pid is really gone (no zombie).
    pub fn kill9(self) -> Done {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        self.finish()
    }

    /// Waits for the child to exit, killing it (and failing) at the deadline.
    pub fn finish(mut self) -> Done {
        self.stdin = None;
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if self.started.elapsed() > DEADLINE {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} hung: killed after {DEADLINE:?}\nstderr:\n{}",
                    self.label,
                    self.stderr_now()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Done {
            status,
            stdout: self.stdout_now(),
            stderr: self.stderr_now(),
        }
    }
}

/// A child still running when its `Proc` goes (a test that panicked before it waited for
/// it) is killed and reaped, so it cannot go on to recreate what the test's cleanup has
/// just removed, or outlive the test run.
impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A private runtime directory for one test (`IPC_STUDY_DIR`), removed at the end; a test
/// asserts that the programs left nothing in it.
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new(krate: &str, test: &str) -> TestDir {
        let path = std::env::temp_dir().join(format!(
            "ipc-study-test-{krate}-{test}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        TestDir { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// A command for `bin` with this directory as its runtime dir.
    pub fn cmd(&self, bin: &str, args: &[&str]) -> Command {
        let mut c = Command::new(bin);
        c.args(args)
            .env("IPC_STUDY_DIR", &self.path)
            .stdin(Stdio::null());
        c
    }

    /// Names left in the directory (it may not exist at all: nothing was created).
    pub fn leftovers(&self) -> Vec<String> {
        match std::fs::read_dir(&self.path) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    pub fn assert_empty(&self) {
        let left = self.leftovers();
        assert!(
            left.is_empty(),
            "left behind in {}: {left:?}",
            self.path.display()
        );
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Environment variable naming a file where [`skip`] records each skipped test, one line
/// each, so `.ci/run` can count and print them (a skip is never a silent pass).
pub const SKIPS_ENV: &str = "IPC_STUDY_SKIPS";

/// Marks the calling test as skipped for `why` (it cannot run on this machine: no root,
/// no `ip`, a 32-bit build). Prints `skipped: TEST: why` on stderr, which `cargo test`
/// shows with `--nocapture`, and appends the same line to the file named by
/// [`SKIPS_ENV`], which `.ci/run` counts. The test then returns, so call it as
/// `return testing::skip("...")`.
pub fn skip(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let line = format!("skipped: {test}: {why}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os(SKIPS_ENV) {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path);
        if let Ok(mut f) = file {
            // One write of one line: parallel tests appending to the file never interleave.
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }
}

pub mod kernel;
