//! Room on the file system, checked before a file is created and mapped.
//!
//! Stores into a map cannot return ENOSPC: when tmpfs or a disk is full, the page fault
//! that would allocate the page raises SIGBUS instead, and the process dies (F7). So both
//! modes refuse, before creating or mapping anything, a file the file system has no room
//! for: the ring (`--capacity`) in [`crate::rendezvous::rendezvous`], the bulk file
//! (`--file-size`) in [`crate::bulk::writer`]. The check is racy (another program may fill
//! the file system a moment later; then the SIGBUS handler says so, [`crate::sigbus`]), but
//! it turns the common mistake into a clear error.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use common::cli::bad_flag;

/// What needs room: `need` bytes for `what` ("the ring file /x/y.map (--capacity 1M)");
/// `fix` says which flag to change.
pub struct Need<'a> {
    /// Bytes the file will take once every page is touched, minus what it already has.
    pub need: u64,
    /// The file and the flag that sized it.
    pub what: &'a str,
    /// The way out: "a smaller --capacity or a --path on another file system".
    pub fix: &'a str,
}

/// Refuses `n` when the file system holding `dir` has fewer than `n.need` bytes free
/// (`statvfs(3)`: blocks available to us times the fragment size). The error names the
/// file system, its free bytes and the need; it is a bad flag value (exit status 2): the
/// size flag asks for more than this file system has.
pub fn ensure_room(dir: &Path, n: &Need<'_>) -> Result<()> {
    let st =
        nix::sys::statvfs::statvfs(dir).with_context(|| format!("statvfs {}", dir.display()))?;
    let avail = free_bytes(&st);
    if avail < n.need {
        return Err(bad_flag(format!(
            "{} has {avail} bytes free, and {} needs {}: a store into a map of a full file \
             system is SIGBUS, not an ENOSPC error, so nothing was created or mapped. Pick {}",
            describe(dir),
            n.what,
            n.need,
            n.fix
        )));
    }
    Ok(())
}

/// Bytes an unprivileged process may still allocate: blocks available times the fragment
/// size (`f_bavail * f_frsize`, statvfs(3)).
#[allow(clippy::unnecessary_cast)] // u64 already on 64-bit targets, narrower on others
pub fn free_bytes(st: &nix::sys::statvfs::Statvfs) -> u64 {
    st.blocks_available() as u64 * st.fragment_size() as u64
}

/// "the tmpfs mounted at /mnt/small" for the file system that holds `dir`: the mount of
/// `/proc/self/mountinfo` whose mount point is the longest prefix of `dir` (proc(5)).
pub fn describe(dir: &Path) -> String {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let best = fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .filter_map(mount_of)
                .filter(|(at, _)| dir.starts_with(at))
                .max_by_key(|(at, _)| at.as_os_str().len())
        });
    match best {
        Some((at, kind)) => format!("the {kind} file system mounted at {}", at.display()),
        None => format!("the file system of {}", dir.display()),
    }
}

/// A mountinfo line's mount point (field 5, with `\040`-style octal escapes) and type
/// (the first field after the ` - ` separator).
fn mount_of(line: &str) -> Option<(PathBuf, String)> {
    let (left, right) = line.split_once(" - ")?;
    let at = left.split(' ').nth(4)?;
    let kind = right.split(' ').next()?.to_string();
    Some((PathBuf::from(unescape(at)), kind))
}

/// Undoes mountinfo's octal escapes (`\040` is a space, `\011` a tab, `\134` a backslash).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(d) => {
                out.push(
                    d.iter()
                        .fold(0u8, |v, c| v.wrapping_mul(8).wrapping_add(c - b'0')),
                );
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_give_the_mount_point_and_type() {
        let l = "25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24684084k";
        assert_eq!(mount_of(l), Some(("/dev/shm".into(), "tmpfs".into())));
        let l = "90 27 0:50 / /mnt/a\\040b rw - ext4 /dev/vdb rw";
        assert_eq!(mount_of(l), Some(("/mnt/a b".into(), "ext4".into())));
        assert!(describe(Path::new("/")).contains("mounted at /"));
    }

    #[test]
    fn no_room_is_a_bad_flag_naming_the_file_system_and_the_numbers() {
        let n = Need {
            need: u64::MAX,
            what: "the ring file /x.map (--capacity 1M)",
            fix: "a smaller --capacity",
        };
        let e = ensure_room(Path::new("/"), &n).unwrap_err();
        assert!(e.downcast_ref::<common::cli::BadFlag>().is_some());
        let s = e.to_string();
        assert!(
            s.contains("mounted at /")
                && s.contains("bytes free")
                && s.contains(&u64::MAX.to_string()),
            "{s}"
        );
    }
}
