//! A small harness for process-level tests: every child runs under a deadline, its output
//! is collected by threads (so a full stdout pipe can never stall it), and a test can wait
//! for a line of narration before acting (kill, signal, close stdin). Copied from the pipe
//! crate's harness (tests cannot share a module across crates), plus [`Env`]: a private
//! runtime directory and a unique name per test, and the check that nothing was left behind.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long any child may run before the test kills it and fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub const WRITER: &str = env!("CARGO_BIN_EXE_msgqueue-writer");
pub const READER: &str = env!("CARGO_BIN_EXE_msgqueue-reader");

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
    /// The JSON report lines on stdout (or stderr), by role.
    pub fn report(&self, role: &str, from_stderr: bool) -> common::timing::Report {
        let text = if from_stderr {
            &self.stderr
        } else {
            &self.stdout
        };
        text.lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| common::timing::Report::from_json(l).ok())
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
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {label}: {e}"));
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

/// One test's private world: `IPC_STUDY_DIR`, a unique `--name`, and the leak checks.
pub struct Env {
    pub dir: std::path::PathBuf,
    pub name: String,
}

impl Env {
    pub fn new(test: &str) -> Env {
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("ipc-study-test-msgqueue-{test}-{pid}"));
        let _ = std::fs::remove_dir_all(&dir);
        Env {
            dir,
            name: format!("t{pid}-{test}"),
        }
    }

    fn cmd(&self, exe: &str, args: &[&str]) -> Command {
        let mut c = Command::new(exe);
        c.env("IPC_STUDY_DIR", &self.dir)
            .args(["--name", &self.name, "--timeout", "20"])
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

/// Whether POSIX message queues work here; prints "skipped: ..." when they do not.
pub fn posix_or_skip(test: &str) -> bool {
    match msgqueue::posix_available() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("skipped: {test}: POSIX message queues are unavailable here (mq_open: {e})");
            false
        }
    }
}

/// The two flavours' extra flags.
pub const FLAVOURS: [&[&str]; 2] = [&[], &["--posix"]];
