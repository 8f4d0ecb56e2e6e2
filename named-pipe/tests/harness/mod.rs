//! The named-pipe tests' harness: `common::testing` (every child under a deadline, output
//! collected, waiting for narration) plus a private runtime directory per test.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub use common::testing::{Done, Proc};

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

/// Whether `p` exists as a FIFO.
pub fn is_fifo(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_fifo())
}
