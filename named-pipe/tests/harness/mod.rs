//! The named-pipe tests' harness: `common::testing` (every child under a deadline, output
//! collected, waiting for narration) plus the FIFO check.

#![allow(dead_code)]

use std::path::Path;

pub use common::testing::{Done, Proc, TestDir};

/// Whether `p` exists as a FIFO.
pub fn is_fifo(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_fifo())
}

/// Kernel facts the claim tests read from `/proc` (shared with the FIFO tests).
pub use common::testing::kernel;

/// A small tmpfs mounted for one test, so that a create in it can be made to fail (a
/// full file system: ENOSPC). It is the test's runtime directory (`dir`, with `cmd` and
/// `leftovers`); dropping it unmounts it, even when the test fails, and then `TestDir`
/// removes the empty mount point. Needs root.
pub struct Tmpfs {
    pub dir: TestDir,
}

impl Tmpfs {
    /// Mounts a tmpfs that holds `inodes` inodes (its root directory is one of them) on a
    /// fresh directory named after the test. `Err(why)` when it cannot (not root, or no
    /// permission to mount here).
    pub fn mount(test: &str, inodes: u32) -> Result<Tmpfs, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("needs root to mount a small tmpfs".into());
        }
        let dir = TestDir::new("named-pipe", test);
        std::fs::create_dir_all(&dir.path).map_err(|e| format!("mkdir: {e}"))?;
        let opts = format!("size=64k,nr_inodes={inodes},mode=0700");
        let mut cmd = std::process::Command::new("mount");
        cmd.args(["-t", "tmpfs", "-o", &opts, "ipc-study-test"])
            .arg(&dir.path)
            .stdin(std::process::Stdio::null());
        let done = Proc::spawn("mount", &mut cmd).finish();
        if !done.ok() {
            return Err(format!("mount -t tmpfs failed: {}", done.stderr.trim()));
        }
        Ok(Tmpfs { dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // -l (lazy): a process the test failed to reap must not keep the mount alive.
        let mut cmd = std::process::Command::new("umount");
        cmd.arg("-l")
            .arg(&self.dir.path)
            .stdin(std::process::Stdio::null());
        let _ = Proc::spawn("umount", &mut cmd).finish();
    }
}
