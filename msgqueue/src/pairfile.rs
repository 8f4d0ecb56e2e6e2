//! The pair file: who is there. **A first reading may skip this file.**
//!
//! `<name>.sysv-mq` / `<name>.posix-mq` in the runtime directory holds two lines at fixed
//! offsets, the writer's and the reader's, each written with one `pwrite`, so the two
//! never overwrite each other's line and `cat` shows both:
//! ```text
//! writer 1234 running start 81234567
//! reader 1240 finished start 81234570
//! ```
//! A line names a process by its pid *and* its start time (clock ticks after boot, field
//! 22 of `/proc/<pid>/stat`): `common::peer::Identity`, so a pid reused by an unrelated
//! process after the recorded one died is not taken for it ([`crate::watch`] judges).
//! Opening takes an exclusive `flock` on the file ([`PairFile::lock`]) while a side checks
//! the queue, so the two sides' checks never interleave. A reader that refused the
//! writer's Hello writes `reader 1240 refused start 81234570` before it removes the queue,
//! and one that stops otherwise (Ctrl-C, an error) `reader 1240 left ...`, so the writer
//! names the cause. [`peek`] reads a line without opening the pair: the
//! other flavour's file, for a side that waits in vain (`elsewhere.rs`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use common::peer::Identity;
use common::setup::Role;
use nix::fcntl::{Flock, FlockArg};

/// Bytes per slot of the pair file: one text line, padded, so `cat` shows both. The
/// longest line (`reader`, a 7-digit pid, `finished`, a 20-digit start time) is 50 bytes.
pub const SLOT: usize = 64;

/// What a slot of the pair file says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// Nobody recorded.
    Empty,
    /// A process said it is running.
    Running(Identity),
    /// A process said it finished its part cleanly.
    Finished(Identity),
    /// A reader refused the writer's Hello (a flag that contradicts it) and left: the
    /// writer says so instead of "someone removed the queue".
    Refused(Identity),
    /// A reader stopped before the end (Ctrl-C, an error) and removed the queue: the
    /// writer's call that fails with EIDRM then knows why.
    Left(Identity),
}

/// The pair file, open read-write.
pub struct PairFile {
    /// Where it is.
    path: PathBuf,
    /// The open file: `pread`/`pwrite` of the slots, `flock`.
    file: File,
    /// Whether this process created it (else it was there).
    created: bool,
}

impl PairFile {
    /// Opens the pair file at `path`, creating it (mode 0600) if it does not exist, and
    /// checks it is a regular file of ours.
    pub fn open(path: &Path) -> Result<PairFile> {
        let opening = |create_new: bool| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(create_new)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(path)
        };
        // O_CREAT|O_EXCL first, so this side knows whether the file is its own creation.
        let (file, created) = match opening(true) {
            Ok(f) => (Ok(f), true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => (opening(false), false),
            Err(e) => (Err(e), true),
        };
        let file = file.with_context(|| format!("open {}", path.display()))?;
        let meta = file
            .metadata()
            .with_context(|| format!("fstat {}", path.display()))?;
        if !meta.file_type().is_file() || meta.uid() != nix::unistd::geteuid().as_raw() {
            bail!(
                "{} is not a regular file of yours; refusing to use it",
                path.display()
            );
        }
        Ok(PairFile {
            path: path.to_path_buf(),
            file,
            created,
        })
    }

    /// Whether this process created the pair file.
    pub fn created(&self) -> bool {
        self.created
    }

    /// Where the pair file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the pair file is still the one at its path (the last side of the previous
    /// pair removes it; one that waited for the lock meanwhile must open the new one).
    pub fn still_at_path(&self) -> Result<bool> {
        let mine = self.file.metadata().context("fstat of the pair file")?;
        Ok(match std::fs::symlink_metadata(&self.path) {
            Ok(now) => (now.dev(), now.ino()) == (mine.dev(), mine.ino()),
            Err(_) => false,
        })
    }

    /// Takes the exclusive `flock` held while a side opens the queue and checks it.
    pub fn lock(&self) -> Result<Flock<File>> {
        let f = self.file.try_clone().context("dup of the pair file")?;
        Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .with_context(|| format!("flock {}", self.path.display()))
    }

    /// Reads a slot (`pread`): `<role> <pid> <state> start <ticks>`. A line without the
    /// start time (an older pair file) reads as start 0: judged by the pid alone.
    pub fn read(&self, role: Role) -> Slot {
        let mut buf = [0u8; SLOT];
        let n = self.file.read_at(&mut buf, offset(role)).unwrap_or(0);
        parse(&String::from_utf8_lossy(&buf[..n]))
    }

    /// Writes a slot (`pwrite`).
    pub fn write(&self, role: Role, slot: Slot) -> Result<()> {
        let text = match slot {
            Slot::Empty => format!("{role} - none"),
            Slot::Running(id) => format!("{role} {} running start {}", id.pid, id.start),
            Slot::Finished(id) => format!("{role} {} finished start {}", id.pid, id.start),
            Slot::Refused(id) => format!("{role} {} refused start {}", id.pid, id.start),
            Slot::Left(id) => format!("{role} {} left start {}", id.pid, id.start),
        };
        let mut buf = [b' '; SLOT];
        let n = text.len().min(SLOT - 1);
        buf[..n].copy_from_slice(&text.as_bytes()[..n]);
        buf[SLOT - 1] = b'\n';
        self.file
            .write_at(&buf, offset(role))
            .with_context(|| format!("pwrite of the {role} line to {}", self.path.display()))?;
        Ok(())
    }
}

/// One slot's text: `<role> <pid> <state> start <ticks>`; a line without the start time
/// (an older pair file) reads as start 0.
fn parse(text: &str) -> Slot {
    let line = text.lines().next().unwrap_or("");
    let w: Vec<&str> = line.split_whitespace().collect();
    let Some(pid) = w.get(1).and_then(|p| p.parse().ok()) else {
        return Slot::Empty;
    };
    let start = match (w.get(3), w.get(4)) {
        (Some(&"start"), Some(t)) => t.parse().unwrap_or(0),
        _ => 0,
    };
    let id = Identity { pid, start };
    match w.get(2) {
        Some(&"running") => Slot::Running(id),
        Some(&"finished") => Slot::Finished(id),
        Some(&"refused") => Slot::Refused(id),
        Some(&"left") => Slot::Left(id),
        _ => Slot::Empty,
    }
}

/// `role`'s slot of the pair file at `path`, read without creating or locking anything
/// (a look at the other flavour's pair: `elsewhere.rs`); `None` if there is no such file.
pub fn peek(path: &Path, role: Role) -> Option<Slot> {
    let text = std::fs::read(path).ok()?;
    let start = offset(role) as usize;
    let slot = text.get(start..text.len().min(start + SLOT))?;
    Some(parse(&String::from_utf8_lossy(slot)))
}

/// Where a role's slot starts in the pair file.
fn offset(role: Role) -> u64 {
    match role {
        Role::Writer => 0,
        Role::Reader => SLOT as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_file_slots_round_trip() {
        let d = std::env::temp_dir().join(format!("msgq-unit-{}", std::process::id()));
        let p = PairFile::open(&d).unwrap();
        assert_eq!(p.read(Role::Writer), Slot::Empty);
        let (w, r) = (
            Identity { pid: 42, start: 7 },
            Identity { pid: 43, start: 8 },
        );
        p.write(Role::Writer, Slot::Running(w)).unwrap();
        p.write(Role::Reader, Slot::Finished(r)).unwrap();
        assert_eq!(p.read(Role::Writer), Slot::Running(w));
        assert_eq!(p.read(Role::Reader), Slot::Finished(r));
        // `cat` shows two lines; the longest one fits its slot.
        let text = std::fs::read_to_string(&d).unwrap();
        assert_eq!(
            text.lines().next().unwrap().trim_end(),
            "writer 42 running start 7"
        );
        let longest = Identity {
            pid: 4_194_304,
            start: u64::MAX,
        };
        p.write(Role::Reader, Slot::Finished(longest)).unwrap();
        assert_eq!(p.read(Role::Reader), Slot::Finished(longest));
        assert_eq!(p.read(Role::Writer), Slot::Running(w));
        // A reader that refused the writer's Hello says so; a look from outside sees it.
        p.write(Role::Reader, Slot::Refused(r)).unwrap();
        assert_eq!(p.read(Role::Reader), Slot::Refused(r));
        assert_eq!(peek(&d, Role::Reader), Some(Slot::Refused(r)));
        assert_eq!(peek(&d, Role::Writer), Some(Slot::Running(w)));
        p.write(Role::Reader, Slot::Left(r)).unwrap();
        assert_eq!(p.read(Role::Reader), Slot::Left(r));
        // A line of an older pair file, with no start time, is judged by its pid alone.
        std::fs::write(&d, format!("{:<39}\n", "writer 42 running")).unwrap();
        assert_eq!(
            p.read(Role::Writer),
            Slot::Running(Identity { pid: 42, start: 0 })
        );
        std::fs::remove_file(&d).unwrap();
        assert_eq!(peek(&d, Role::Writer), None);
    }
}
