//! A small harness for process-level tests: every child runs under a deadline, its output
//! is collected by threads (a full pipe never stalls it), a test can wait for a line of
//! narration before acting, and every test gets its own name and runtime directory and
//! checks at the end that nothing is left in /dev/shm, `ipcs -m` or that directory.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long any child may run before the test kills it and fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub const WRITER: &str = env!("CARGO_BIN_EXE_shm-writer");
pub const READER: &str = env!("CARGO_BIN_EXE_shm-reader");

/// One test's private rendezvous: a unique `--name` and runtime directory.
pub struct Scene {
    pub name: String,
    pub dir: PathBuf,
}

impl Scene {
    pub fn new(tag: &str) -> Scene {
        let name = format!("t{}-{tag}", std::process::id());
        let dir = std::env::temp_dir().join(format!("ipc-study-shm-test-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        Scene { name, dir }
    }

    /// A command for `exe` with this scene's name and directory.
    pub fn cmd(&self, exe: &str, args: &[&str]) -> Command {
        let mut c = Command::new(exe);
        c.args(["--name", &self.name])
            .args(args)
            .env("IPC_STUDY_DIR", &self.dir)
            .stdin(Stdio::null());
        c
    }

    pub fn writer(&self, args: &[&str]) -> Proc {
        Proc::spawn("shm-writer", &mut self.cmd(WRITER, args))
    }

    pub fn reader(&self, args: &[&str]) -> Proc {
        Proc::spawn("shm-reader", &mut self.cmd(READER, args))
    }

    /// `/dev/shm/ipc-study-<uid>-<name>`.
    pub fn posix_path(&self) -> String {
        shm::posix_path(&self.name)
    }

    /// The System V segment id for our key, if one exists.
    pub fn sysv_id(&self) -> Option<i32> {
        // SAFETY: shmget takes integers only.
        let id = unsafe { libc::shmget(shm::sysv_key(&self.name), 0, 0) };
        (id >= 0).then_some(id)
    }

    /// Fails the test if anything of ours is left.
    pub fn assert_clean(&self) {
        assert!(
            !std::path::Path::new(&self.posix_path()).exists(),
            "{} was left behind",
            self.posix_path()
        );
        assert_eq!(self.sysv_id(), None, "a System V segment was left behind");
        let left: Vec<_> = std::fs::read_dir(&self.dir).unwrap().collect();
        assert!(left.is_empty(), "runtime dir not empty: {left:?}");
    }

    /// Removes leftovers of a failed test, so one failure does not cascade.
    fn scrub(&self) {
        let _ = std::fs::remove_file(self.posix_path());
        if let Some(id) = self.sysv_id() {
            // SAFETY: IPC_RMID takes no buffer.
            unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
        }
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        self.scrub();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

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
    /// The JSON report on stdout.
    pub fn report(&self) -> common::timing::Report {
        self.stdout
            .lines()
            .filter(|l| l.starts_with('{'))
            .find_map(|l| common::timing::Report::from_json(l).ok())
            .unwrap_or_else(|| {
                panic!(
                    "no report in:\n{}\n--- stderr:\n{}",
                    self.stdout, self.stderr
                )
            })
    }

    pub fn ok(&self) -> bool {
        self.status.success()
    }
}

impl Proc {
    pub fn spawn(label: &str, cmd: &mut Command) -> Proc {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {label}: {e}"));
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), out.clone()),
            collect(child.stderr.take().unwrap(), err.clone()),
        ];
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

    /// Waits until stderr or stdout contains `needle`; fails the test at the deadline.
    pub fn wait_for(&mut self, needle: &str) {
        loop {
            if self.stderr_now().contains(needle) || self.stdout_now().contains(needle) {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
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
                let _ = self.child.wait();
                panic!(
                    "{} did not print {needle:?} in time\nstderr:\n{}",
                    self.label,
                    self.stderr_now()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn write_stdin(&mut self, bytes: &[u8]) {
        self.stdin
            .as_mut()
            .expect("stdin is piped")
            .write_all(bytes)
            .unwrap();
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
