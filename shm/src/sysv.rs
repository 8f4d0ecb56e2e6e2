//! System V shared memory: [`shmget(2)`], [`shmat(2)`], [`shmdt(2)`], [`shmctl(2)`].
//! Part of the rendezvous (a first reading may skip it).
//!
//! A segment is named by a numeric key and identified by the id `shmget` returns; `ipcs -m`
//! lists it with owner, size and `nattch`, the number of attached processes (S3). Its size
//! is fixed by `shmget` (S2), and asking for more than an existing segment has is EINVAL
//! (S5). libc has these calls; nix does not wrap them. A segment this process created is
//! owned from the moment `shmget` returns: if `shmat` then fails, it is removed again.
//! Its size being fixed, nothing another process does can make a page of it vanish; a
//! SIGBUS in it is a memory error (`src/sigbus.rs`).
//!
//! [`shmget(2)`]: https://man7.org/linux/man-pages/man2/shmget.2.html
//! [`shmat(2)`]: https://man7.org/linux/man-pages/man2/shmat.2.html
//! [`shmdt(2)`]: https://man7.org/linux/man-pages/man2/shmdt.2.html
//! [`shmctl(2)`]: https://man7.org/linux/man-pages/man2/shmctl.2.html

use std::io;

use anyhow::{bail, Context, Result};
use common::cleanup::Owned;
use common::narrate;
use common::ring;
use nix::unistd::geteuid;

use crate::rendezvous::{Found, Mapped};

/// Mode bits of our segments: read and write for the owner only.
const PERMS: libc::c_int = 0o600;

/// A System V attachment; `shmdt` on drop.
struct Attachment {
    /// What `shmat` returned.
    addr: *mut u8,
}

// SAFETY: the attachment is a plain address range valid in every thread of the process
// until `shmdt`, which only Drop calls; the ring accesses it through atomics and copies.
unsafe impl Send for Attachment {}
// SAFETY: as above; `&Attachment` allows no access at all.
unsafe impl Sync for Attachment {}

impl Drop for Attachment {
    fn drop(&mut self) {
        // SAFETY: `addr` came from a successful shmat and is detached exactly once, here;
        // the Region that used it is gone (it owned this value).
        unsafe { libc::shmdt(self.addr.cast::<libc::c_void>()) };
    }
}

/// `shmctl(id, IPC_STAT)`: the kernel's record of a segment (owner, size, nattch, pids).
pub(crate) fn stat(id: i32) -> io::Result<libc::shmid_ds> {
    // SAFETY: shmid_ds is plain integers (and a struct of integers): all-zero is valid.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: `ds` is a valid, writable shmid_ds that IPC_STAT fills in.
    if unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(ds)
}

/// `shmctl(id, IPC_RMID)`; a segment already removed (EINVAL, EIDRM) is not an error.
pub(crate) fn remove(id: i32) -> io::Result<()> {
    // SAFETY: IPC_RMID takes no buffer (null is allowed).
    if unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) } == -1 {
        let e = io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EIDRM)) {
            return Err(e);
        }
    }
    Ok(())
}

/// The segment under `key`, if one exists: its id and the pid the kernel recorded as its
/// creator (`shmget(key, 0, 0)`, `shmctl(IPC_STAT)`). For the other flavour's hint.
pub(crate) fn find(key: libc::key_t) -> Option<(i32, i32)> {
    let id = get(key, 0, 0).ok()?;
    let ds = stat(id).ok()?;
    Some((id, ds.shm_cpid))
}

/// `shmget(key, size, flags)`: the segment's id, or the error.
fn get(key: libc::key_t, size: usize, flags: libc::c_int) -> io::Result<i32> {
    // SAFETY: shmget takes plain integers and has no memory-safety preconditions.
    let id = unsafe { libc::shmget(key, size, flags) };
    if id < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(id)
}

/// `shmat(id, NULL, 0)`: the kernel picks a page-aligned address, read-write.
fn attach(id: i32, len: usize) -> Result<Mapped> {
    // SAFETY: a null address lets the kernel choose where to map; no existing memory of
    // ours is affected. The result is checked against (void *) -1 below.
    let addr = unsafe { libc::shmat(id, std::ptr::null(), 0) };
    if addr as isize == -1 {
        return Err(io::Error::last_os_error()).with_context(|| format!("shmat shmid {id}"));
    }
    let addr = addr.cast::<u8>();
    Ok(Mapped {
        base: addr,
        len,
        keeper: Some(Box::new(Attachment { addr })),
        kernel_says_stale: false,
        sysv_id: Some(id),
        ino: None,
    })
}

/// One exclusive-create attempt: creates and attaches the segment, or finds, checks and
/// attaches the one that exists. `own` registers a created segment for removal: from the
/// moment it exists, any failure (or Ctrl-C) removes it again.
pub(crate) fn try_create(
    key: libc::key_t,
    len: usize,
    own: impl FnOnce(i32) -> Owned,
) -> Result<Found> {
    match get(key, len, libc::IPC_CREAT | libc::IPC_EXCL | PERMS) {
        Ok(id) => {
            narrate!("shmget key {key:#010x} size {len} IPC_CREAT|IPC_EXCL 0600: created shmid {id} (see `ipcs -m`, S3; the size is fixed, S2)");
            // Dropped if shmat fails: IPC_RMID, narrated as "removed ...".
            let owned = own(id);
            let m = attach(id, len)?;
            narrate!(
                "shmat shmid {id}: attached {len} bytes at {:p} (S1)",
                m.base
            );
            Ok(Found::Created(m, owned))
        }
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => open_existing(key, len),
        Err(e) => Err(e)
            .with_context(|| format!("shmget key {key:#010x} size {len} IPC_CREAT|IPC_EXCL 0600")),
    }
}

/// The largest segment `shmget` creates here: `kernel.shmmax` (bytes per segment) and
/// `kernel.shmall` (pages in all segments together), from /proc/sys/kernel; `None` if
/// they cannot be read. A larger size is EINVAL (shmmax) or ENOSPC (shmall) from shmget.
pub(crate) fn size_limit() -> Option<(u64, &'static str)> {
    let read = |f: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/proc/sys/kernel/{f}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| p as u64);
    let max = read("shmmax")?;
    let all = read("shmall")?.saturating_mul(page);
    Some(if all < max {
        (
            all,
            "kernel.shmall (pages in all segments, /proc/sys/kernel/shmall)",
        )
    } else {
        (max, "kernel.shmmax (/proc/sys/kernel/shmmax)")
    })
}

/// The segment exists: read the kernel's record, check the owner and the size, attach.
fn open_existing(key: libc::key_t, len: usize) -> Result<Found> {
    // Size 0 finds it whatever its size, so we can read the kernel's record.
    let id = match get(key, 0, 0) {
        Ok(id) => id,
        Err(e) => {
            return match e.raw_os_error() {
                Some(libc::ENOENT | libc::EIDRM) => Ok(Found::Vanished),
                Some(libc::EACCES) => Err(e).with_context(|| {
                    format!("shmget key {key:#010x}: the segment belongs to another user; refusing to use it")
                }),
                _ => Err(e).with_context(|| format!("shmget key {key:#010x}")),
            }
        }
    };
    let ds = match stat(id) {
        Ok(ds) => ds,
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EIDRM)) => {
            return Ok(Found::Vanished)
        }
        Err(e) => return Err(e).with_context(|| format!("shmctl shmid {id} IPC_STAT")),
    };
    let me = geteuid().as_raw();
    if ds.shm_perm.uid != me {
        bail!(
            "System V segment key {key:#010x} (shmid {id}) belongs to uid {}, not to you (uid {me}); refusing to use or remove it",
            ds.shm_perm.uid
        );
    }
    // The kernel's facts, which no process can forge: who created it and who is attached.
    if ds.shm_nattch == 0 && ring::peer_gone(ds.shm_cpid) {
        return Ok(Found::Existing(Mapped::unmapped(Some(id), None, true)));
    }
    // S5, as the kernel enforces it: asking for more than the segment has is EINVAL.
    let id2 = match get(key, len, PERMS) {
        Ok(id2) => id2,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => bail!(
            "shmget key {key:#010x} size {len}: EINVAL: the segment (shmid {id}) has {} bytes and we asked for {len}; \
             the kernel refuses a size larger than the existing segment's. Both processes must use the same size (S5): \
             pass the same --capacity to both",
            ds.shm_segsz
        ),
        Err(e) => return Err(e).with_context(|| format!("shmget key {key:#010x} size {len}")),
    };
    let size = ds.shm_segsz;
    let m = attach(id2, size)?;
    narrate!(
        "shmget key {key:#010x}: it exists (shmid {id2}, {size} bytes, created by pid {}); shmat attached it at {:p}",
        ds.shm_cpid,
        m.base
    );
    Ok(Found::Existing(m))
}
