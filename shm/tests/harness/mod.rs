//! The shm tests' harness: `common::testing` (every child under a deadline, output
//! collected, waiting for narration) plus [`Scene`]: each test's own name and runtime
//! directory, and the check at the end that nothing is left in /dev/shm, `ipcs -m` or it.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};

pub use common::testing::{Done, Proc};

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
