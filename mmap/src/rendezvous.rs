//! How the two programs meet at the file: create or open it, judge a file left by an
//! earlier run, check that it is ours and of the right length before mapping it (F7),
//! and register it for removal. **A first reading may skip this file**: it is how the
//! two processes find each other, not how a message moves (that is `writer.rs`,
//! `reader.rs` and `common::ring::spsc`).
//!
//! The rules, each narrated when it acts:
//! - **Created 0600, sized before mapping.** `open(O_CREAT|O_EXCL|O_NOFOLLOW, 0600)`, then
//!   `ftruncate` to the full length, then `mmap`. A new file is 0 bytes long, and touching
//!   a map past the end of its file is SIGBUS (F7).
//! - **Either start order.** `O_EXCL` lets exactly one of two racing programs create; the
//!   other gets EEXIST and opens the file. The creator writes its pid first, then the
//!   header, then `ready = 1` with Release, and sleeps on a futex until the opener
//!   attaches; the opener polls (every 2 ms, narrated) until the header is ready.
//! - **Checked before mapping.** An existing file is opened with `O_NOFOLLOW` and must be
//!   a regular file, ours, not writable by others ([`check_file`]); its header is read
//!   with `pread`, which cannot SIGBUS, and judged by the rules `shm` uses too
//!   ([`common::ring::judge`]); its capacity and length must match ours ([`check_length`]).
//! - **Stale files.** A file whose creator is gone (or that stayed without a header or a
//!   creator pid for [`common::ring::SETUP_GRACE`]) is unlinked and created anew; a file
//!   that is not a ring is refused and never removed. Removal checks the inode first
//!   ([`remove_if_same`]), so a newer run's file is never deleted by mistake.
//! - **Room first.** Before creating or mapping, the file system must have room for the
//!   whole ring (`statvfs`, [`crate::space`]): a store into a page it cannot supply is
//!   SIGBUS, not ENOSPC. Too little is a bad `--capacity` (exit status 2), said before any
//!   file exists.
//! - **Cleanup.** What this process created or attached to is registered with
//!   `common::cleanup` ([`own_file_checked`], by inode): an error path (the `ftruncate`
//!   right after `open` included) or Ctrl-C removes it, and so does the SIGBUS handler
//!   ([`crate::sigbus::watch`]), as the process dies.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::cleanup::{self, Owned};
use common::cli::{bad_flag, CommonArgs, Mode};
use common::narrate;
use common::ring::{
    self, judge, offsets, EndOpts, HeaderView, Region, RingError, Role, Verdict, Wait,
};
use common::setup::{Flavour, Mechanism, Setup};
use nix::unistd::geteuid;

use crate::pair::second;
use crate::space::{ensure_room, Need};
use crate::{bulk, file_path, fs_kind, show_maps, Map, MapArgs, DEFAULT_NAME};

/// Who removes a ring file that a process killed by SIGBUS does not own.
const LEFT: &str = " for its owner to remove: the peer when it notices, else the next run, which replaces it as stale";

/// A ring file mapped and paired with its peer.
pub struct RingFile {
    /// The ring over the mapping (keeps the mapping alive).
    pub region: Region,
    /// The same mapping, for `msync` (F5) and `/proc/self/maps`.
    pub map: Arc<Map>,
    /// The file's path.
    pub path: PathBuf,
    /// Whether this process created the file (and initialised the header).
    pub created: bool,
    /// The open file, for `fstat` after a fault: its length and links tell a survivor
    /// whether it was cut under the map or removed ([`RingFile::what_happened`]).
    pub file: File,
    /// The peer's pid, for messages.
    pub peer_pid: i32,
    /// The peer as the header records it (pid and start time), watched while waiting:
    /// a reused pid does not keep a dead pair open.
    pub peer: common::peer::Identity,
    /// Removal of the file: on error paths, Ctrl-C, or `.remove()` at the end.
    pub owned: Owned,
    /// The file system it lives on (`tmpfs`, `ext4`): the report's flavour.
    pub flavour: String,
}

impl RingFile {
    /// After the peer vanished: what the file says happened to it (cut under the map, a
    /// full file system, removed), for the survivor to print; see [`crate::sigbus`].
    pub fn what_happened(&self) -> Option<String> {
        crate::sigbus::what_happened(&self.file, &self.path, self.map.len() as u64)
    }

    /// The report's note on the file: where, on which file system, how big, who made it
    /// (`peer`: the other program's role).
    pub fn note(&self, peer: Role) -> String {
        let who = match self.created {
            true => "created here".to_string(),
            false => format!("created by the {peer}"),
        };
        format!(
            "ring file {} on {}, {} bytes per direction, {who}",
            self.path.display(),
            self.flavour,
            self.region.capacity()
        )
    }

    /// Stops owning the file (the peer removes it): a later SIGBUS leaves it too.
    pub fn release(self) {
        crate::sigbus::set_mine(false);
        self.owned.release();
    }

    /// Removes the file: the pair is done.
    pub fn remove(self) -> Result<()> {
        crate::sigbus::set_mine(false);
        self.owned.remove()
    }
}

/// A ring rendezvous done: the shared file, what the report says, how the ends wait.
pub struct OpenRing {
    /// The mapped file with its two rings.
    pub rf: RingFile,
    /// Program, mechanism, flavour (the file system) and wait strategy for the report.
    pub setup: Setup,
    /// How this side's ring ends wait, and for whom.
    pub opts: EndOpts,
}

/// Checks the frame size, meets the peer at the file (either start order) and describes
/// the run: the first steps of both programs' ring modes. `wait` is this side's own. A
/// reader knows the mode only from the writer's Hello, so nothing here depends on it for
/// a reader: its waits give up after `--timeout`, and its loop decides what that means.
pub fn open_ring(
    map: &MapArgs,
    c: &CommonArgs,
    wait: Wait,
    role: Role,
    program: &'static str,
) -> Result<OpenRing> {
    // Flags are checked before any file exists: the writer's frame must fit half the ring.
    if role == Role::Writer && c.mode != Mode::Text {
        ring::check_size(c.size, map.capacity).map_err(bad_flag)?;
    }
    let path = file_path(c.name_or(DEFAULT_NAME), map.path.as_deref())?;
    let rf = rendezvous(&path, role, map, c.timeout)?;
    if role == Role::Writer && !c.quiet && c.mode == Mode::Text {
        show_maps(&rf.path);
    }
    let setup = Setup {
        program,
        mechanism: Mechanism::Mmap,
        flavour: Flavour::File(rf.flavour.clone()),
        wait,
        args: c.clone(),
        max_payload: rf.region.max_payload(),
    };
    let opts = EndOpts {
        wait,
        peer: rf.peer,
        idle_timeout: Some(c.timeout),
    };
    Ok(OpenRing { rf, setup, opts })
}

/// The rendezvous, in either start order: create the file and wait for the peer, or open
/// the peer's file and attach. Stale files of killed runs are replaced (narrated).
pub fn rendezvous(path: &Path, role: Role, map: &MapArgs, timeout: Duration) -> Result<RingFile> {
    let len = ring::region_len(map.capacity);
    ring_room(path, map.capacity)?;
    let start = Instant::now();
    let mut said = String::new();
    loop {
        if start.elapsed() > timeout {
            bail!(
                "timed out after {:.1} s waiting for {} to be set up by its creator",
                timeout.as_secs_f64(),
                path.display()
            );
        }
        // Whoever comes first creates: O_EXCL lets exactly one of two racing programs win.
        match create_file(path, len as u64) {
            Ok((file, owned)) => return become_creator(path, role, map, timeout, file, owned),
            Err(e) if is_exists(&e) => {}
            Err(e) => return Err(e),
        }
        let Some(file) = open_existing(path, true)? else {
            continue; // removed between our open attempts: try to create again
        };
        let ino = check_file(&file, path)?.ino;
        match inspect(&file, path, len as u64, map.capacity)? {
            Verdict::Ready => return become_opener(path, role, map, file, ino),
            Verdict::Stale(why) => {
                narrate!(
                    "{} is stale: {why}; removing it and creating a new one",
                    path.display()
                );
                remove_if_same(path, ino).with_context(|| format!("unlink {}", path.display()))?;
            }
            Verdict::NotReady(why) => {
                if said != why {
                    narrate!(
                        "{} exists but {why}; waiting (polling every 2 ms)",
                        path.display()
                    );
                    said = why;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Verdict::Foreign(magic) => bail!(
                "{} is not a ring file: {}; refusing to use or remove it",
                path.display(),
                if magic == u64::from_le_bytes(bulk::MAGIC) {
                    "a bulk file (mmap-writer --bulk); use another --name".to_string()
                } else {
                    format!("magic {magic:#018x} is not an ipc-study ring's")
                }
            ),
        }
    }
}

/// Room first: a store into a page the file system cannot supply is SIGBUS, not ENOSPC,
/// so the whole ring must fit before it is created or mapped. A file already there (the
/// peer's) has some of its pages already; they need no more room.
fn ring_room(path: &Path, capacity: usize) -> Result<()> {
    let len = ring::region_len(capacity) as u64;
    let have = fs::symlink_metadata(path).map_or(0, |m| m.blocks() * 512);
    let what = format!(
        "the ring file {} (--capacity {capacity}: two rings and a header page, {len} bytes)",
        path.display()
    );
    let need = Need {
        need: len.saturating_sub(have),
        what: &what,
        fix: "a smaller --capacity, or a --path on another file system",
    };
    ensure_room(crate::dir_of(path), &need)
}

fn is_exists(e: &anyhow::Error) -> bool {
    e.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::AlreadyExists)
}

/// Judges an existing ring file from its header, read with `pread` *before* mapping it:
/// the shared rules of [`common::ring::judge`] (foreign, stale, not ready, ready), then
/// what only a file can get wrong: a capacity or a length that does not match ours.
fn inspect(file: &File, path: &Path, expect_len: u64, capacity: usize) -> Result<Verdict> {
    let facts = check_file(file, path)?;
    let mut bytes = [0u8; offsets::HEADER_FIELDS];
    // Shorter than the header: the creator is between open(O_CREAT) and ftruncate, or
    // was killed there; `judge` then goes by how long the file has been like this.
    let view = pread_exact(file, path, 0, &mut bytes)?
        .then(|| HeaderView::decode(&bytes))
        .flatten();
    let verdict = judge(view.as_ref(), age(file));
    let Some(v) = view.filter(|_| verdict == Verdict::Ready) else {
        return Ok(verdict);
    };
    if v.capacity != capacity as u64 {
        return Err(bad_flag(format!(
            "{} was created by pid {} with --capacity {}, and this side has --capacity \
             {capacity}: both sides must map the same layout (the length is checked before \
             mapping, F7); pass the same --capacity to both",
            path.display(),
            v.creator_pid,
            v.capacity
        )));
    }
    if facts.len != expect_len {
        bail!(
            "{} is {} bytes, but its header says {expect_len}: mapping it and touching a page past \
             its end would be SIGBUS (F7), so it is not mapped",
            path.display(),
            facts.len
        );
    }
    Ok(Verdict::Ready)
}

/// How long ago the file last changed (its mtime): how long a header-less or pid-less
/// file has been so, since every step of a creator's set-up writes to it.
fn age(file: &File) -> Duration {
    file.metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .unwrap_or_default()
}

/// Wraps a mapping into a [`Region`].
fn region_over(map: &Arc<Map>, capacity: usize) -> Result<Region> {
    // SAFETY: the pointer and length describe the whole mapping, readable and writable
    // (mapped read-write by `Map::create`); `keeper` is an `Arc` of that mapping, so it
    // stays mapped while the region or any endpoint lives. `Map` never creates a Rust
    // reference to the mapped bytes (it hands out raw pointers only), and this process
    // touches the ring's memory only through the region.
    let region = unsafe { Region::from_raw(map.as_mut_ptr(), map.len(), capacity, map.clone()) };
    region.context("setting up the ring over the mapped file")
}

fn become_creator(
    path: &Path,
    role: Role,
    m: &MapArgs,
    timeout: Duration,
    file: File,
    owned: Owned,
) -> Result<RingFile> {
    let flavour = fs_kind(&file);
    let len = ring::region_len(m.capacity);
    // Ours from creation: a SIGBUS from now on removes it (and says so).
    let ino = check_file(&file, path)?.ino;
    crate::sigbus::watch("ring file", path, ino, len as u64, true, LEFT);
    let map = Arc::new(Map::create(&file, path, len, m.populate)?);
    let region = region_over(&map, m.capacity)?;
    // pid first, then the header and empty rings, `ready` last with Release.
    region.initialize(role, common::session::new_nonce());
    let other = role.peer();
    narrate!(
        "mapped {} ({len} bytes, MAP_SHARED, on {flavour}) and published the ring header; waiting for a {other} to open it (sleeping on a futex in the file's page; its attach wakes us)",
        path.display()
    );
    let peer = region
        .wait_for_opener(timeout)
        .map_err(|e| anyhow::anyhow!("{e}: start the {other} with the same --name/--path"))?;
    narrate!("{other} pid {} opened the file and attached", peer.pid);
    Ok(RingFile {
        region,
        map,
        path: path.to_path_buf(),
        created: true,
        file,
        peer_pid: peer.pid,
        peer,
        owned,
        flavour,
    })
}

fn become_opener(path: &Path, role: Role, m: &MapArgs, file: File, ino: u64) -> Result<RingFile> {
    let flavour = fs_kind(&file);
    let len = ring::region_len(m.capacity);
    // The creator's file until we attach: a SIGBUS before that leaves it to its owner.
    crate::sigbus::watch("ring file", path, ino, len as u64, false, LEFT);
    let map = Arc::new(Map::create(&file, path, len, m.populate)?);
    let region = region_over(&map, m.capacity)?;
    // The header was complete when read with pread; check it again through the map, with
    // the Acquire load that makes the creator's fields visible, before trusting it.
    if region.check_header()?.is_none() {
        bail!(
            "{}: the header went back to not-ready after we saw it ready",
            path.display()
        );
    }
    // One reader and one writer: the header records who created the file (pid, role) and
    // who attached; a second process of a role already there is refused, naming that one.
    let peer = match region.attach(role) {
        Ok(who) => who,
        Err(RingError::SameRole { pid, .. } | RingError::Busy { pid }) => {
            bail!("{}", second(path, role, pid, &region))
        }
        Err(e) => return Err(e.into()),
    };
    // From now on both sides own the file: whoever ends first on an error removes it.
    let owned = own_file_checked(path, ino);
    crate::sigbus::set_mine(true);
    narrate!(
        "opened {} ({len} bytes, MAP_SHARED, on {flavour}) created by pid {}, and attached",
        path.display(),
        peer.pid
    );
    Ok(RingFile {
        region,
        map,
        path: path.to_path_buf(),
        created: false,
        file,
        peer_pid: peer.pid,
        peer,
        owned,
        flavour,
    })
}

// ---- The file rules: every file is checked before it is trusted or mapped. ----

/// What `fstat` says about a file we are about to map.
#[derive(Clone, Copy, Debug)]
pub struct FileFacts {
    /// Current length in bytes.
    pub len: u64,
    /// Inode number, to tell a replaced file from the one we checked.
    pub ino: u64,
    /// Permission bits.
    pub mode: u32,
}

/// Checks an open file before trusting it: a regular file (not a FIFO or device, which
/// would block or map something else), owned by us, not writable by group or others.
pub fn check_file(file: &File, path: &Path) -> Result<FileFacts> {
    let m = file
        .metadata()
        .with_context(|| format!("fstat {}", path.display()))?;
    if !m.file_type().is_file() {
        bail!(
            "{} is not a regular file ({:?}); refusing to map it",
            path.display(),
            m.file_type()
        );
    }
    let me = geteuid().as_raw();
    if m.uid() != me {
        bail!(
            "{} belongs to uid {}, not to you (uid {me}); refusing to use it",
            path.display(),
            m.uid()
        );
    }
    if m.mode() & 0o022 != 0 {
        bail!(
            "{} is writable by other users (mode {:o}); they could change what we map. chmod 600 it or remove it",
            path.display(),
            m.mode() & 0o777
        );
    }
    Ok(FileFacts {
        len: m.len(),
        ino: m.ino(),
        mode: m.mode() & 0o777,
    })
}

/// Creates a new file, mode 0600, failing if anything exists at `path` (`O_EXCL`: two
/// creators cannot both win), then sizes it with `ftruncate` *before* it is mapped.
///
/// A new file has length 0, and a map of it would have no page to touch: every access
/// past the end of the file is SIGBUS (F7). `set_len` makes a sparse file: no disk blocks
/// or tmpfs pages are used until a page is first written.
pub fn create_file(path: &Path, len: u64) -> Result<(File, Owned)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("open {} (O_CREAT|O_EXCL, mode 0600)", path.display()))?;
    // Registered at once, so an error below or Ctrl-C removes what we created (only this
    // inode: a file a newer run put at the path after ours was removed is not ours).
    let ino = match file.metadata() {
        Ok(m) => m.ino(),
        Err(e) => {
            let _ = fs::remove_file(path); // just created by us: remove it by its name
            return Err(e).with_context(|| format!("fstat {}", path.display()));
        }
    };
    let owned = own_file_checked(path, ino);
    file.set_len(len)
        .with_context(|| format!("ftruncate {} to {len} bytes", path.display()))?;
    common::narrate!(
        "created {} (mode 0600) and sized it to {len} bytes with ftruncate before mapping it (F7)",
        path.display()
    );
    Ok((file, owned))
}

/// Opens an existing file without following a symlink; `None` if there is none yet.
pub fn open_existing(path: &Path, write: bool) -> Result<Option<File>> {
    match OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => bail!(
            "open {}: ELOOP: it is a symlink; refusing to follow it to a file we did not create",
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("open {}", path.display())),
    }
}

/// F7: checks the file's length with `fstat` right before mapping it.
///
/// A map may be longer than the file (mmap does not check), but touching a page past the
/// end of the file raises SIGBUS instead of returning an error. So the length is checked
/// first, and a wrong one is an ordinary error with an explanation.
pub fn check_length(file: &File, path: &Path, expected: u64) -> Result<()> {
    let len = file
        .metadata()
        .with_context(|| format!("fstat {}", path.display()))?
        .len();
    if len != expected {
        bail!(
            "{} is {len} bytes, expected {expected}: mapping it and touching a page past its end \
             would kill this process with SIGBUS (F7), so it is not mapped. Was it truncated, or \
             made by another version?",
            path.display()
        );
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes at `off` with pread(2): for looking at a header before
/// deciding to map a file (a read past the end returns short, never SIGBUS).
pub fn pread_exact(file: &File, path: &Path, off: u64, buf: &mut [u8]) -> Result<bool> {
    match file.read_exact_at(buf, off) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e).with_context(|| format!("pread {}", path.display())),
    }
}

/// Removes `path` only if it is still the file we checked (same inode): a new run may have
/// replaced it, and that file is not ours to delete. A file already gone is fine.
pub fn remove_if_same(path: &Path, ino: u64) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.ino() == ino => fs::remove_file(path),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Registers `path` (inode `ino`) for removal, tolerating a peer that removed it first.
pub fn own_file_checked(path: &Path, ino: u64) -> Owned {
    let p = path.to_path_buf();
    cleanup::own(format!("mapped file {}", path.display()), move || {
        remove_if_same(&p, ino)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_of_others_or_open_to_others_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d =
            std::env::temp_dir().join(format!("ipc-study-mmap-unit-perm-{}", std::process::id()));
        common::runtime::ensure_private_dir(&d).unwrap();
        let p = d.join("loose.map");
        fs::write(&p, b"x").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o666)).unwrap();
        let f = open_existing(&p, false).unwrap().unwrap();
        assert!(check_file(&f, &p)
            .unwrap_err()
            .to_string()
            .contains("writable by other"));
        let l = d.join("link.map");
        std::os::unix::fs::symlink(&p, &l).unwrap();
        assert!(open_existing(&l, false)
            .unwrap_err()
            .to_string()
            .contains("symlink"));
        assert!(open_existing(&d.join("none"), false).unwrap().is_none());
        fs::remove_dir_all(&d).unwrap();
    }
}
