//! One reader and one writer per pair: a lock file in the runtime directory.
//!
//! Most mechanisms can tell when a second program joins a pair (a shared ring records its
//! two processes, a Unix socket accepts one connection). A FIFO cannot: any number of
//! processes may open it, and two readers silently split the messages between them. So a
//! side that must be alone takes [`RoleLock::take`] first: `flock(LOCK_EX | LOCK_NB)` on
//! `<runtime dir>/NAME.ROLE.lock`, with its pid written inside. A second reader finds the
//! lock held and is refused with the pid already there. The kernel drops an `flock` when
//! its holder dies, even by `kill -9`, so a crashed run never blocks the next one; the file
//! is removed when the holder is done (or on Ctrl-C), and a file left by `kill -9` is
//! simply locked again.
//!
//! Removing a lock file is racy unless the taker checks, after locking, that the path
//! still names the file it locked (another holder may have removed it in between): a
//! mismatch means "try again".

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::cleanup::{own, Owned};
use crate::setup::Role;

/// A held role lock; dropping it removes the file and releases the lock.
#[derive(Debug)]
pub struct RoleLock {
    /// The open, locked file (the lock lives as long as this descriptor).
    _file: File,
    /// Removes the file on every way out.
    owned: Option<Owned>,
}

impl RoleLock {
    /// Takes the `role` lock of the pair named `name` (`fifo`: `fifo.reader.lock`) in
    /// `dir`. Held by a live process: an error naming `program` and that pid, and what
    /// to do. `what` names the pair in the message ("the FIFO /run/.../fifo").
    pub fn take(dir: &Path, name: &str, role: Role, program: &str, what: &str) -> Result<RoleLock> {
        let path = dir.join(format!("{name}.{}.lock", role.as_str()));
        for _ in 0..100 {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                .open(&path)
                .with_context(|| format!("opening the lock file {}", path.display()))?;
            // SAFETY: flock on a descriptor we own; it touches no memory.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                    return Err(err).with_context(|| format!("flock {}", path.display()));
                }
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                let who = match pid.parse::<i32>() {
                    Ok(p) => match crate::peer::program_name(p) {
                        Some(name) => format!("{name}, pid {p}"),
                        None => format!("pid {p}"),
                    },
                    Err(_) => "another process".to_string(),
                };
                bail!(
                    "{what} already has a {role} ({who}, which holds {}): a pair has one reader and one writer, \
                     and a second {role} would split the messages with the first. Stop that one, or use another --name",
                    path.display()
                );
            }
            // Locked; is it still the file the path names? (A holder that finished may have
            // removed it between our open and our flock.)
            let same = match fs::symlink_metadata(&path) {
                Ok(m) => {
                    let f = file.metadata().context("fstat lock file")?;
                    (m.dev(), m.ino()) == (f.dev(), f.ino())
                }
                Err(_) => false,
            };
            if !same {
                continue;
            }
            file.set_len(0).context("truncating the lock file")?;
            write!(file, "{}", std::process::id()).context("writing the lock file")?;
            let owned = own(
                format!("{program}'s lock file {}", path.display()),
                remove(path.clone()),
            );
            return Ok(RoleLock {
                _file: file,
                owned: Some(owned),
            });
        }
        bail!(
            "could not take the lock {}: it kept being replaced",
            path.display()
        )
    }

    /// Removes the lock file now (the pair is done), quietly.
    pub fn release(mut self) {
        if let Some(o) = self.owned.take() {
            let _ = o.remove_quietly();
        }
    }
}

impl Drop for RoleLock {
    fn drop(&mut self) {
        if let Some(o) = self.owned.take() {
            let _ = o.remove_quietly();
        }
    }
}

fn remove(path: PathBuf) -> impl FnOnce() -> std::io::Result<()> + Send + 'static {
    move || match fs::remove_file(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Dir {
        fn new(test: &str) -> Dir {
            let d =
                std::env::temp_dir().join(format!("ipc-study-lock-{test}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&d);
            fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = Dir::new("second");
        let first =
            RoleLock::take(dir.path(), "p", Role::Reader, "x-reader", "the FIFO p").unwrap();
        let path = dir.path().join("p.reader.lock");
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            std::process::id().to_string()
        );
        // flock locks belong to the open file description: a second open in this process
        // conflicts just as another process's would.
        let e = RoleLock::take(dir.path(), "p", Role::Reader, "x-reader", "the FIFO p")
            .unwrap_err()
            .to_string();
        assert!(e.contains("the FIFO p already has a reader"), "{e}");
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        // The writer's lock is another file.
        let w = RoleLock::take(dir.path(), "p", Role::Writer, "x-writer", "the FIFO p").unwrap();
        drop(first);
        assert!(!path.exists(), "the lock file is removed with its lock");
        let again =
            RoleLock::take(dir.path(), "p", Role::Reader, "x-reader", "the FIFO p").unwrap();
        again.release();
        w.release();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_file_left_by_a_killed_holder_is_taken_over() {
        let dir = Dir::new("stale");
        fs::write(dir.path().join("q.reader.lock"), "999999").unwrap();
        let l = RoleLock::take(dir.path(), "q", Role::Reader, "x", "the FIFO q").unwrap();
        let now = fs::read_to_string(dir.path().join("q.reader.lock")).unwrap();
        assert_eq!(now, std::process::id().to_string());
        l.release();
    }
}
