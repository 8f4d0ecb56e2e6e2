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

    /// Starts `exe` with `args` plus `--name`, after `setup` adjusts the command (limits).
    pub fn spawn_with(&self, exe: &str, args: &[&str], setup: impl FnOnce(&mut Command)) -> Proc {
        let mut c = self.cmd(exe, args);
        setup(&mut c);
        Proc::spawn(label(exe), &mut c)
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

    /// As [`TestDir::finish`], keeping the directory (a tmpfs on it is unmounted first).
    pub fn assert_empty(&self) {
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

/// A small tmpfs mounted on a test's directory, so a test can fill a file system (root
/// only). Unmounted when dropped, even when the test fails; declare it after the
/// [`TestDir`] so it is dropped first (the directory is removed after the unmount).
pub struct Tmpfs {
    pub at: PathBuf,
}

impl Tmpfs {
    /// `mount -t tmpfs -o size=SIZE,mode=0700 tmpfs DIR`; `Err(why)` to skip the test.
    pub fn mount(dir: &TestDir, size: &str) -> Result<Tmpfs, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("needs root to mount a small tmpfs".into());
        }
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir.path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            at: dir.path.clone(),
        })
    }

    /// Writes `name` until the file system is full (ENOSPC); the test removes it.
    pub fn fill(&self, name: &str) -> PathBuf {
        let p = self.at.join(name);
        let mut f = std::fs::File::create(&p).unwrap();
        let chunk = vec![0x55u8; 4096];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", p.display()),
            }
        }
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Busy (a child the test could not reap): detach it now, freed when unused.
            let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        }
    }
}

/// Waits until process `pid` is stopped (state `T` in /proc/PID/stat) after a SIGSTOP.
pub fn wait_stopped(pid: i32) {
    let t = Instant::now();
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next());
        if state == Some('T') {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "pid {pid} never stopped: {stat}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits (polling every millisecond) until `p`'s stderr contains `needle`.
pub fn wait_for_quickly(p: &Proc, needle: &str) {
    let t = Instant::now();
    while !p.stderr_now().contains(needle) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "never printed {needle:?}:\n{}",
            p.stderr_now()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Cuts `path` to `len` bytes (what `truncate -s LEN` does), under whoever maps it.
pub fn cut(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// Reads the little-endian u64 at `off` of `path` (a header word).
pub fn read_u64(path: &Path, off: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 8];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut b, off)
        .unwrap();
    u64::from_le_bytes(b)
}
