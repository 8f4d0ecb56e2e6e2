//! Helpers for the process-level tests: a private runtime dir per test, the real binaries
//! under a deadline, their output collected.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const WRITER: &str = env!("CARGO_BIN_EXE_mmap-writer");
pub const READER: &str = env!("CARGO_BIN_EXE_mmap-reader");

/// Longest any child may run before the test kills it and fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A private runtime directory (IPC_STUDY_DIR), checked empty and removed at the end.
pub struct TestDir {
    pub path: PathBuf,
    pub name: String,
}

impl TestDir {
    pub fn new(test: &str) -> TestDir {
        let path =
            std::env::temp_dir().join(format!("ipc-study-test-mmap-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        TestDir {
            path,
            name: format!("t-{test}"),
        }
    }

    /// The file a pair with `--name self.name` meets at.
    pub fn file(&self) -> PathBuf {
        self.path.join(format!("{}.map", self.name))
    }

    /// Starts `exe` with `args` plus `--name`, IPC_STUDY_DIR set, stdin as given.
    pub fn spawn(&self, exe: &str, args: &[&str], stdin: Option<&[u8]>) -> Proc {
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .arg("--name")
            .arg(&self.name)
            .env("IPC_STUDY_DIR", &self.path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd.spawn().unwrap();
        if let Some(input) = stdin {
            let mut si = child.stdin.take().unwrap();
            let input = input.to_vec();
            std::thread::spawn(move || {
                let _ = si.write_all(&input);
            });
        }
        Proc::new(child)
    }

    /// Starts `exe` with `--name` and a stdin the test writes to (and closes) itself.
    pub fn spawn_typing(&self, exe: &str, args: &[&str]) -> (Proc, std::process::ChildStdin) {
        let mut child = Command::new(exe)
            .args(args)
            .arg("--name")
            .arg(&self.name)
            .env("IPC_STUDY_DIR", &self.path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        (Proc::new(child), stdin)
    }

    /// Starts `exe` without adding `--name` (for --path runs).
    pub fn spawn_raw(&self, exe: &str, args: &[&str]) -> Proc {
        let child = Command::new(exe)
            .args(args)
            .env("IPC_STUDY_DIR", &self.path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Proc::new(child)
    }

    /// Waits until `path` exists (the first program created it).
    pub fn wait_for(&self, path: &Path) {
        let t = Instant::now();
        while !path.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{} never appeared",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Asserts nothing was left behind, then removes the directory.
    pub fn finish(self) {
        let left: Vec<_> = std::fs::read_dir(&self.path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let _ = std::fs::remove_dir_all(&self.path);
        assert!(left.is_empty(), "left behind in the runtime dir: {left:?}");
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A running child whose output is collected by two threads.
pub struct Proc {
    pub child: Child,
    out: Option<JoinHandle<String>>,
    err: Option<JoinHandle<String>>,
}

/// How a child ended.
#[derive(Debug)]
pub struct Done {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Done {
    pub fn ok(&self) -> bool {
        self.status.success()
    }
    pub fn assert_ok(&self, who: &str) {
        assert!(
            self.ok(),
            "{who} failed: {:?}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
    }
}

fn collect<R: Read + Send + 'static>(r: Option<R>) -> Option<JoinHandle<String>> {
    r.map(|mut r| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    })
}

impl Proc {
    fn new(mut child: Child) -> Proc {
        let out = collect(child.stdout.take());
        let err = collect(child.stderr.take());
        Proc { child, out, err }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits at most `limit`; kills the child and panics if it is still running.
    pub fn wait_within(mut self, limit: Duration) -> Done {
        let t = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if t.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let err = self
                    .err
                    .take()
                    .map(|h| h.join().unwrap())
                    .unwrap_or_default();
                panic!(
                    "child {} did not finish within {limit:?}; killed. stderr:\n{err}",
                    self.child.id()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        Done {
            status,
            stdout: self
                .out
                .take()
                .map(|h| h.join().unwrap())
                .unwrap_or_default(),
            stderr: self
                .err
                .take()
                .map(|h| h.join().unwrap())
                .unwrap_or_default(),
        }
    }

    pub fn wait(self) -> Done {
        self.wait_within(DEADLINE)
    }

    /// SIGKILL (kill -9): nothing runs in the child, no cleanup.
    pub fn kill9(mut self) -> Done {
        let _ = self.child.kill();
        self.wait()
    }
}

/// The `--json` report line in a program's stdout.
pub fn report(stdout: &str) -> common::timing::Report {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON report in:\n{stdout}"));
    common::timing::Report::from_json(line).unwrap()
}
