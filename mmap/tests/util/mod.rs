//! The mmap tests' harness: `common::testing` (every child under a deadline, its output
//! collected by threads) plus what is this pair's own: each test's `--name` and private
//! runtime directory, the file a pair meets at, and the check at the end that nothing
//! was left in that directory.
#![allow(dead_code)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

pub use common::testing::{Done, Proc};

pub const WRITER: &str = env!("CARGO_BIN_EXE_mmap-writer");
pub const READER: &str = env!("CARGO_BIN_EXE_mmap-reader");

/// A private runtime directory (`IPC_STUDY_DIR`) and `--name` for one test, checked
/// empty by [`TestDir::finish`] and removed when dropped.
pub struct TestDir {
    dir: common::testing::TestDir,
    pub path: PathBuf,
    pub name: String,
}

impl TestDir {
    pub fn new(test: &str) -> TestDir {
        let dir = common::testing::TestDir::new("mmap", test);
        std::fs::create_dir_all(&dir.path).unwrap();
        std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o700)).unwrap();
        TestDir {
            path: dir.path.clone(),
            name: format!("t-{test}"),
            dir,
        }
    }

    /// The file a pair with `--name self.name` meets at.
    pub fn file(&self) -> PathBuf {
        self.path.join(format!("{}.map", self.name))
    }

    /// `exe args --name NAME`, with IPC_STUDY_DIR set and stdin from /dev/null.
    fn cmd(&self, exe: &str, args: &[&str]) -> Command {
        let mut c = self.dir.cmd(exe, args);
        c.arg("--name").arg(&self.name);
        c
    }

    /// Starts `exe` with `args` plus `--name`; `stdin` is written by a thread, then closed.
    pub fn spawn(&self, exe: &str, args: &[&str], stdin: Option<&[u8]>) -> Proc {
        let mut c = self.cmd(exe, args);
        if stdin.is_some() {
            c.stdin(Stdio::piped());
        }
        let mut p = Proc::spawn(label(exe), &mut c);
        if let Some(input) = stdin {
            let mut si = p.stdin.take().unwrap();
            let input = input.to_vec();
            std::thread::spawn(move || {
                let _ = si.write_all(&input);
            });
        }
        p
    }

    /// Starts `exe` with `--name` and a stdin the test writes to (and closes) itself.
    pub fn spawn_typing(&self, exe: &str, args: &[&str]) -> (Proc, ChildStdin) {
        let mut c = self.cmd(exe, args);
        c.stdin(Stdio::piped());
        let mut p = Proc::spawn(label(exe), &mut c);
        let stdin = p.stdin.take().unwrap();
        (p, stdin)
    }

    /// Starts `exe` without adding `--name` (for --path runs).
    pub fn spawn_raw(&self, exe: &str, args: &[&str]) -> Proc {
        Proc::spawn(label(exe), &mut self.dir.cmd(exe, args))
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

    /// Asserts nothing was left behind; the directory is removed on drop.
    pub fn finish(self) {
        self.dir.assert_empty();
    }
}

fn label(exe: &str) -> &str {
    Path::new(exe)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(exe)
}

/// What this pair's tests ask of a child beyond `common::testing`.
pub trait ProcExt {
    /// Waits at most `limit` (less than the harness's deadline); kills the child and
    /// fails the test if it is still running.
    fn wait_within(self, limit: Duration) -> Done;
}

impl ProcExt for Proc {
    fn wait_within(mut self, limit: Duration) -> Done {
        let t = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            if t.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "child {} did not finish within {limit:?}; killed. stderr:\n{}",
                    self.pid(),
                    self.stderr_now()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.finish()
    }
}

/// Checks on a finished child.
pub trait DoneExt {
    /// Fails the test with the child's output unless it exited with status 0.
    fn assert_ok(&self, who: &str);
}

impl DoneExt for Done {
    fn assert_ok(&self, who: &str) {
        assert!(
            self.ok(),
            "{who} failed: {:?}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
    }
}
