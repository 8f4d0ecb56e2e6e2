//! Where a queue is, as a learner looks for it: the command that really lists it, and a
//! queue of the same `--name` in the other flavour. **A first reading may skip this file.**
//!
//! - **Where to look.** `ipcs -q` lists System V queues only (it reads
//!   `/proc/sysvipc/msg`). A POSIX queue is a file in the `mqueue` file system, which a
//!   fresh machine may not have mounted: `ls -l /dev/mqueue` lists it (`ipc-study-0-NAME`
//!   for `/ipc-study-0-NAME`) and `cat /dev/mqueue/ipc-study-0-NAME` shows `QSIZE`, the
//!   bytes queued. [`look_posix`] checks `/proc/self/mounts` and, when no `mqueue` file
//!   system is mounted, says so and gives the mount command.
//! - **The other flavour.** A System V queue and a POSIX queue of the same `--name` never
//!   meet: a reader started with `--posix` while its writer runs System V waits for nobody.
//!   [`other_flavour`] looks for the other flavour's queue (System V: the key of its pair
//!   file, `msgget(key, 0)`; POSIX: `mq_open` of its name, read-only) and its pair file's
//!   line, so the waiting line and the final timeout error can say what is there.

use std::path::PathBuf;

use common::setup::Role;
use nix::mqueue::{mq_close, mq_open, MQ_OFlag};
use nix::sys::stat::Mode;

use crate::pairfile::{peek, Slot};
use crate::posix::posix_names;
use crate::rendezvous::pair_path;
use crate::sysv::{ftok, msgget};

/// The mount command for the `mqueue` file system, as mq_overview(7) gives it.
pub const MOUNT_MQUEUE: &str = "sudo mkdir -p /dev/mqueue && sudo mount -t mqueue none /dev/mqueue";

/// Where the `mqueue` file system is mounted (`/dev/mqueue` as a rule), from
/// `/proc/self/mounts`; `None` when it is not mounted.
pub fn mqueue_mount() -> Option<PathBuf> {
    mount_in(&std::fs::read_to_string("/proc/self/mounts").ok()?)
}

/// The mount point of the first `mqueue` line of a mounts table (`device at fstype ...`).
fn mount_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, at, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "mqueue").then(|| PathBuf::from(at))
    })
}

/// How to see the POSIX queue `kernel_name` (`/ipc-study-0-x`): `ls -l /dev/mqueue` and
/// `cat` of its file, or, when `mqueue` is not mounted, the command that mounts it.
pub fn look_posix(kernel_name: &str) -> String {
    let file = kernel_name.trim_start_matches('/');
    match mqueue_mount() {
        Some(at) => format!(
            "ls -l {0} lists it as {file}, and cat {0}/{file} shows QSIZE, the bytes queued; ipcs -q never lists POSIX queues",
            at.display()
        ),
        None => format!(
            "/dev/mqueue is not mounted here (no mqueue file system in /proc/self/mounts), so nothing lists POSIX queues yet: {MOUNT_MQUEUE}, then ls -l /dev/mqueue; ipcs -q never lists them"
        ),
    }
}

/// How to see the System V queues: `ipcs -q`, with its key, msqid, bytes and messages.
pub const LOOK_SYSV: &str = "ipcs -q lists it, with its key, msqid, bytes and messages";

/// How to see the queue of `--name name` in this flavour.
pub fn look(posix: bool, name: &str) -> String {
    match posix {
        true => look_posix(&posix_names(name).0),
        false => LOOK_SYSV.into(),
    }
}

/// A sentence about a queue of `--name name` in the other flavour than this side's
/// (`posix`), for a side that waits for its `peer`: "a System V queue for --name x exists
/// (key 0x4d002082, msqid 5; its pair file names writer pid 1234, running): is the writer
/// running without --posix?". `None` when there is none.
pub fn other_flavour(name: &str, posix: bool, peer: Role) -> Option<String> {
    let path = pair_path(name, !posix).ok()?;
    let slot = peek(&path, peer);
    let who = match slot {
        Some(Slot::Running(id)) if id.alive() => {
            format!("its pair file names {peer} pid {}, running", id.pid)
        }
        Some(Slot::Finished(id)) => format!("its pair file names {peer} pid {}, finished", id.pid),
        _ => String::new(),
    };
    let queue = if posix {
        // System V: the key of its pair file (a --key queue is found by its file alone).
        let key = slot.and_then(|_| ftok(&path, b'M').ok());
        match key.map(|k| (k, msgget(k, 0))) {
            Some((k, Ok(id))) => Some(format!("key {k:#x}, msqid {id}")),
            _ => None,
        }
    } else {
        let main = posix_names(name).0;
        match mq_open(main.as_str(), MQ_OFlag::O_RDONLY, Mode::empty(), None) {
            Ok(q) => {
                let _ = mq_close(q);
                Some(main)
            }
            Err(_) => None,
        }
    };
    if queue.is_none() && who.is_empty() {
        return None;
    }
    let facts: Vec<String> = queue
        .into_iter()
        .chain((!who.is_empty()).then_some(who))
        .collect();
    let (other, with) = if posix {
        ("System V", "without")
    } else {
        ("POSIX", "with")
    };
    Some(format!(
        "a {other} queue for --name {name} exists ({}): is the {peer} running {with} --posix (a System V and a POSIX queue never meet)?",
        facts.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mqueue_mount_is_found_in_the_mounts_table_or_not_at_all() {
        let with = "proc /proc proc rw 0 0\nmqueue /dev/mqueue mqueue rw,relatime 0 0\n";
        assert_eq!(mount_in(with), Some(PathBuf::from("/dev/mqueue")));
        let elsewhere = "none /mnt/mq mqueue rw 0 0\n";
        assert_eq!(mount_in(elsewhere), Some(PathBuf::from("/mnt/mq")));
        // A device named mqueue on another file system is not it.
        assert_eq!(mount_in("mqueue /x tmpfs rw 0 0\n"), None);
        assert_eq!(mount_in(""), None);
    }

    #[test]
    fn the_posix_hint_names_dev_mqueue_or_the_mount_command() {
        let hint = look_posix("/ipc-study-0-x");
        match mqueue_mount() {
            Some(at) => assert!(
                hint.starts_with(&format!("ls -l {} lists it as ipc-study-0-x", at.display())),
                "{hint}"
            ),
            None => assert!(hint.contains(MOUNT_MQUEUE), "{hint}"),
        }
        assert!(hint.contains("ipcs -q never lists"), "{hint}");
    }
}
