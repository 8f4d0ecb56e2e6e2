//! The msgqueue tests' harness: `common::testing` (every child under a deadline, output
//! collected, waiting for narration) plus [`Env`]: a private runtime directory and a unique
//! name per test, and the check that nothing was left behind.

#![allow(dead_code)]

use std::process::{Command, Stdio};

pub use common::testing::{Done, Proc};

pub const WRITER: &str = env!("CARGO_BIN_EXE_msgqueue-writer");
pub const READER: &str = env!("CARGO_BIN_EXE_msgqueue-reader");

/// One test's private world: `IPC_STUDY_DIR`, a unique `--name`, and the leak checks.
pub struct Env {
    pub dir: std::path::PathBuf,
    pub name: String,
    /// `--timeout` of every program started (seconds).
    pub timeout: String,
}

impl Env {
    pub fn new(test: &str) -> Env {
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("ipc-study-test-msgqueue-{test}-{pid}"));
        let _ = std::fs::remove_dir_all(&dir);
        Env::in_dir(test, dir)
    }

    /// A test's world whose runtime directory is `dir` (a small file system, say).
    pub fn in_dir(test: &str, dir: std::path::PathBuf) -> Env {
        Env {
            dir,
            name: format!("t{}-{test}", std::process::id()),
            timeout: "20".into(),
        }
    }

    /// Every program started gets `--timeout secs`.
    pub fn with_timeout(mut self, secs: &str) -> Env {
        self.timeout = secs.into();
        self
    }

    /// The same world (directory and name) whose programs get `--timeout secs`: two sides
    /// of one pair that give up at different times.
    pub fn twin(&self, secs: &str) -> Env {
        Env {
            dir: self.dir.clone(),
            name: self.name.clone(),
            timeout: secs.into(),
        }
    }

    /// The one-to-one pair file of this test's name.
    pub fn pair_file(&self, posix: bool) -> std::path::PathBuf {
        let ext = if posix { "posix-mq" } else { "sysv-mq" };
        self.dir.join(format!("{}.{ext}", self.name))
    }

    /// The `--shared` registry of this test's name.
    pub fn registry(&self) -> std::path::PathBuf {
        self.dir.join(format!("{}.shared-mq", self.name))
    }

    pub fn cmd(&self, exe: &str, args: &[&str]) -> Command {
        let mut c = Command::new(exe);
        c.env("IPC_STUDY_DIR", &self.dir)
            .args(["--name", &self.name, "--timeout", &self.timeout])
            .args(args)
            .stdin(Stdio::piped());
        c
    }

    pub fn writer(&self, args: &[&str]) -> Proc {
        Proc::spawn("msgqueue-writer", &mut self.cmd(WRITER, args))
    }

    pub fn reader(&self, args: &[&str]) -> Proc {
        Proc::spawn("msgqueue-reader", &mut self.cmd(READER, args))
    }

    /// POSIX queue names of this test.
    pub fn posix_names(&self) -> Vec<String> {
        let uid = nix::unistd::geteuid();
        let main = format!("/ipc-study-{uid}-{}", self.name);
        vec![main.clone(), format!("{main}.back")]
    }

    /// Asserts nothing is left: runtime dir empty, no System V queue with any key seen in
    /// `stderrs`, no POSIX queue of this test's name. Then removes the directory.
    pub fn assert_clean(&self, stderrs: &[&str]) {
        if self.dir.exists() {
            let left: Vec<_> = std::fs::read_dir(&self.dir)
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect();
            assert!(left.is_empty(), "left in the runtime dir: {left:?}");
            std::fs::remove_dir(&self.dir).unwrap();
        }
        // By msqid, not by key: an ftok key comes back as soon as another test's file gets
        // the freed inode, but a msqid is not reused for a long time.
        for id in stderrs.iter().flat_map(|s| msqids_in(s)) {
            let q = msgqueue::SysvQueue { id, key: 0 };
            assert!(
                q.stat().is_err(),
                "System V queue msqid {id} left behind: {:?}",
                q.stat()
            );
        }
        for n in self.posix_names() {
            let r = nix::mqueue::mq_open(
                n.as_str(),
                nix::mqueue::MQ_OFlag::O_RDONLY,
                nix::sys::stat::Mode::empty(),
                None,
            );
            assert!(
                matches!(r, Err(nix::errno::Errno::ENOENT)),
                "POSIX queue {n} left behind: {r:?}"
            );
        }
    }
}

/// A test that fails (panics) before its programs cleaned up must not leave its POSIX
/// queues or its runtime directory behind for the next run: they go here. (A passing test
/// has removed them already and `assert_clean` checked it; a System V queue is known only
/// by the msqid its programs narrated, so a failing test names it in its message instead.)
impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in self.posix_names() {
                let _ = nix::mqueue::mq_unlink(n.as_str());
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// System V queue ids narrated as "msqid N".
pub fn msqids_in(stderr: &str) -> Vec<i32> {
    stderr
        .split("msqid ")
        .skip(1)
        .filter_map(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect()
}

/// System V keys narrated as "System V key 0x...", in `ipcs` format (0x%08x).
pub fn keys_in(stderr: &str) -> Vec<String> {
    stderr
        .split("System V key 0x")
        .skip(1)
        .filter_map(|s| {
            let hex: String = s.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
            u32::from_str_radix(&hex, 16).ok()
        })
        .map(|k| format!("0x{k:08x}"))
        .collect()
}

/// Whether POSIX message queues work here; when they do not, the test (or its POSIX
/// part, `what`) is recorded as skipped (`common::testing::skip`), never a silent pass.
pub fn posix_or_skip(what: &str) -> bool {
    match msgqueue::posix_available() {
        Ok(()) => true,
        Err(e) => {
            common::testing::skip(&format!(
                "{what}: POSIX message queues are unavailable here (mq_open: {e})"
            ));
            false
        }
    }
}

/// Waits until the main thread of `pid` is inside system call `nr`
/// (`/proc/<pid>/syscall` starts with its number): blocked there, not just about to call.
pub fn wait_in_syscall(pid: i32, nr: libc::c_long) {
    let path = format!("/proc/{pid}/syscall");
    let start = std::time::Instant::now();
    loop {
        let now = std::fs::read_to_string(&path).unwrap_or_default();
        if now.split_whitespace().next() == Some(nr.to_string().as_str()) {
            return;
        }
        assert!(
            start.elapsed() < common::testing::DEADLINE,
            "pid {pid} never blocked in system call {nr}: {path} says {now:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The two flavours' extra flags.
pub const FLAVOURS: [&[&str]; 2] = [&[], &["--posix"]];
