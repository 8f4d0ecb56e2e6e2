//! POSIX shared memory: [`shm_open(3)`], [`ftruncate(2)`], [`mmap(2)`], [`fallocate(2)`],
//! [`shm_unlink(3)`].
//! Part of the rendezvous (a first reading may skip it).
//!
//! A POSIX object is a file in the `tmpfs` mounted at `/dev/shm` (S3): `shm_open` is
//! `open` there, `ftruncate` gives it its size (S2: the kernel would let any process that
//! has it open read-write `ftruncate` it again; these programs never do), and `mmap(MAP_SHARED)` maps its pages,
//! which the peer maps too (S1). `fallocate` then makes the tmpfs allocate every page, so
//! that a full /dev/shm is an error return (ENOSPC) and not a SIGBUS at the first store.
//! Once mapped, the descriptor may close: the mapping keeps the pages, and the name keeps
//! the object until `shm_unlink`. A failure after `shm_open` created the object removes
//! it again (the [`Owned`] guard taken right after the create).
//!
//! [`shm_open(3)`]: https://man7.org/linux/man-pages/man3/shm_open.3.html
//! [`ftruncate(2)`]: https://man7.org/linux/man-pages/man2/ftruncate.2.html
//! [`mmap(2)`]: https://man7.org/linux/man-pages/man2/mmap.2.html
//! [`shm_unlink(3)`]: https://man7.org/linux/man-pages/man3/shm_unlink.3.html
//! [`fallocate(2)`]: https://man7.org/linux/man-pages/man2/fallocate.2.html

use std::io;
use std::os::fd::OwnedFd;

use anyhow::{bail, Context, Result};
use common::cleanup::Owned;
use common::narrate;
use nix::errno::Errno;
use nix::fcntl::{fallocate, FallocateFlags, OFlag};
use nix::sys::mman::{shm_open, shm_unlink};
use nix::sys::stat::{fstat, Mode};
use nix::sys::statvfs::{fstatvfs, statvfs};
use nix::unistd::{ftruncate, geteuid};

use crate::rendezvous::{Found, Mapped};

/// `shm_unlink`; an object already gone (the peer removed it) is not an error.
pub(crate) fn remove(kname: &str) -> io::Result<()> {
    match shm_unlink(kname) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Maps `len` bytes of `fd` shared, read-write.
fn map(fd: &OwnedFd, len: usize, kname: &str) -> Result<Mapped> {
    let map = memmap2::MmapOptions::new()
        .len(len)
        .map_raw(fd)
        .with_context(|| format!("mmap MAP_SHARED {len} bytes of {kname}"))?;
    Ok(Mapped {
        base: map.as_mut_ptr(),
        len,
        // memmap2 unmaps (munmap) when this is dropped.
        keeper: Some(Box::new(map)),
        kernel_says_stale: false,
        sysv_id: None,
        ino: None,
    })
}

/// One exclusive-create attempt: creates, sizes, maps and reserves the object, or opens
/// and maps the one that exists. `own` registers a created object for removal: from the
/// moment it exists, any failure (or Ctrl-C) removes it again.
pub(crate) fn try_create(kname: &str, len: usize, own: impl FnOnce() -> Owned) -> Result<Found> {
    // O_EXCL: exactly one process creates; the other gets EEXIST and opens what exists.
    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR;
    match shm_open(kname, flags, Mode::S_IRUSR | Mode::S_IWUSR) {
        Ok(fd) => {
            narrate!("shm_open {kname} O_CREAT|O_EXCL|O_RDWR 0600: created (a file in the tmpfs at /dev/shm, S3)");
            // Dropped on any error below: shm_unlink, narrated as "removed ...".
            let owned = own();
            ftruncate(&fd, len as libc::off_t)
                .with_context(|| format!("ftruncate {kname} to {len} bytes"))?;
            narrate!("ftruncate {kname} to {len} bytes: this program never resizes it, though POSIX would let any opener ftruncate it again (S2)");
            let mut m = map(&fd, len, kname)?;
            narrate!("mmap MAP_SHARED {len} bytes: our stores land in the object's pages, which the peer maps too (S1)");
            reserve(&fd, len, kname)?;
            m.ino = Some(fstat(&fd).with_context(|| format!("fstat {kname}"))?.st_ino);
            Ok(Found::Created(m, owned))
        }
        Err(Errno::EEXIST) => open_existing(kname),
        Err(e) => Err(e).with_context(|| format!("shm_open {kname} O_CREAT|O_EXCL|O_RDWR 0600")),
    }
}

/// `fallocate(fd, 0, 0, len)`: the tmpfs allocates every page of the object now. Without
/// it a page is allocated when it is first touched, and on a full /dev/shm that touch is
/// SIGBUS instead of an error return; here it is ENOSPC, and the caller removes the object.
fn reserve(fd: &OwnedFd, len: usize, kname: &str) -> Result<()> {
    match fallocate(fd, FallocateFlags::empty(), 0, len as libc::off_t) {
        Ok(()) => {
            narrate!("fallocate {len} bytes: the tmpfs reserved every page now, so a full /dev/shm is an error here, not a SIGBUS at the first store");
            Ok(())
        }
        Err(Errno::EOPNOTSUPP) => {
            narrate!("fallocate is not supported for {kname}: pages are allocated at the first touch (a full /dev/shm would be SIGBUS then)");
            Ok(())
        }
        Err(Errno::ENOSPC) => {
            let free = fstatvfs(fd).map_or(0, |s| s.blocks_available() * s.fragment_size());
            bail!(
                "fallocate {kname} {len} bytes: ENOSPC: the tmpfs at /dev/shm has {free} bytes free and the region needs {len} \
                 (4 KiB header + 2 rings of --capacity); free some room there or pass a smaller --capacity to both sides"
            )
        }
        Err(e) => Err(e).with_context(|| format!("fallocate {kname} {len} bytes")),
    }
}

/// Bytes the tmpfs at /dev/shm holds in all (`statvfs`), if it can be read: no POSIX
/// object larger than that can ever be created there.
pub(crate) fn tmpfs_size() -> Option<u64> {
    let s = statvfs("/dev/shm").ok()?;
    Some(s.blocks() * s.fragment_size())
}

/// The object `kname`, if one exists: `Some` with its creator's pid as the ring header
/// records it (`shm_open(O_RDONLY)`, `pread` of the header; `None` inside when it has
/// none yet or cannot be read). For the other flavour's hint.
pub(crate) fn creator_of(kname: &str) -> Option<Option<i32>> {
    use std::os::unix::fs::FileExt;
    let fd = match shm_open(kname, OFlag::O_RDONLY, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return None,
        Err(_) => return Some(None),
    };
    let mut bytes = [0u8; common::ring::offsets::HEADER_FIELDS];
    let file = std::fs::File::from(fd);
    let pid = file
        .read_exact_at(&mut bytes, 0)
        .ok()
        .and_then(|()| common::ring::HeaderView::decode(&bytes))
        .map(|v| v.creator_pid)
        .filter(|&p| p > 0);
    Some(pid)
}

/// The object exists: open it, check its owner, map it at its own size (0: not mapped).
fn open_existing(kname: &str) -> Result<Found> {
    let fd = match shm_open(kname, OFlag::O_RDWR, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(Found::Vanished),
        Err(e) => return Err(e).with_context(|| format!("shm_open {kname} O_RDWR")),
    };
    let st = fstat(&fd).with_context(|| format!("fstat {kname}"))?;
    // Refuse an object another user owns: we would be sharing memory with them.
    let me = geteuid().as_raw();
    if st.st_uid != me {
        bail!(
            "{kname} belongs to uid {}, not to you (uid {me}); refusing to use or remove it",
            st.st_uid
        );
    }
    let size = usize::try_from(st.st_size).unwrap_or(0);
    let ino = Some(st.st_ino);
    if size == 0 {
        // Created but not yet sized: the creator is between shm_open and ftruncate.
        return Ok(Found::Existing(Mapped::unmapped(None, ino, false)));
    }
    let mut m = map(&fd, size, kname)?;
    m.ino = ino;
    Ok(Found::Existing(m))
}
