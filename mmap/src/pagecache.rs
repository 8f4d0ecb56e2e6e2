//! What the page cache holds of a file (F5): `cachestat(2)` per file, and the machine-wide
//! `Dirty:` line of `/proc/meminfo`.
//!
//! A store through a `MAP_SHARED` map changes the file's page in the page cache at once,
//! and every process that maps the file (or `read()`s it) sees that page. The kernel marks
//! the page *dirty*: its copy on the disk is older. It stays dirty until writeback writes
//! it (the flusher threads, after `vm.dirty_expire_centisecs`, 30 s by default) or until
//! `msync(MS_SYNC)` / `fsync` does, at once. `cachestat` counts, for a range of one file,
//! the pages in the cache and how many of them are dirty, so "the disk copy lags" is a
//! number: dirty before `msync`, 0 after, on a file system with a disk behind it. On tmpfs
//! there is no disk: its pages are always dirty in this sense and `msync` has nothing to do.

use std::fs::{self, File};
use std::os::fd::AsRawFd;

/// `cachestat(2)`'s system call number: 451 on every Linux architecture (added in 6.5,
/// after the tables were unified), not yet in the `libc` crate for x86_64.
const SYS_CACHESTAT: libc::c_long = 451;

/// `struct cachestat_range` of `<linux/mman.h>`: the byte range to look at.
#[repr(C)]
struct CachestatRange {
    /// First byte.
    off: u64,
    /// Bytes; 0 means to the end of the file.
    len: u64,
}

/// `struct cachestat` of `<linux/mman.h>`, in pages.
#[repr(C)]
#[derive(Default)]
struct RawCachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// What `cachestat(2)` says about a range of a file, in pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheStat {
    /// Pages of the range in the page cache.
    pub cached: u64,
    /// Of those, pages changed since they were last written to the file's storage.
    pub dirty: u64,
    /// Pages being written right now.
    pub writeback: u64,
}

impl std::fmt::Display for CacheStat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} pages in the page cache, {} dirty (newer than the disk copy), {} under writeback",
            self.cached, self.dirty, self.writeback
        )
    }
}

/// `cachestat(2)` of `len` bytes of `file` from `off` (`len` 0: to the end of the file).
///
/// `None` where the kernel has no `cachestat` (before Linux 6.5: ENOSYS) or refuses it.
pub fn cachestat(file: &File, off: u64, len: u64) -> Option<CacheStat> {
    let range = CachestatRange { off, len };
    let mut out = RawCachestat::default();
    // SAFETY: both pointers are to live, properly laid out #[repr(C)] structs of this
    // frame, matching the kernel's definitions; the kernel reads `range`, writes `out`,
    // and keeps neither after returning. The descriptor is open for the call.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const CachestatRange,
            &mut out as *mut RawCachestat,
            0u32,
        )
    };
    (rc == 0).then_some(CacheStat {
        cached: out.nr_cache,
        dirty: out.nr_dirty,
        writeback: out.nr_writeback,
    })
}

/// `Dirty:` from /proc/meminfo in KiB: page-cache data of the whole machine not yet written
/// back (F5). Other programs' writes count too; [`cachestat`] is per file.
pub fn dirty_kib() -> Option<u64> {
    let s = fs::read_to_string("/proc/meminfo").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Dirty:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}
