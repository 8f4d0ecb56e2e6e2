//! The mapping itself: a file, or a window of one from a page-aligned offset, mapped
//! `MAP_SHARED`, reached only through raw pointers whose every range is checked against
//! the length this process mapped (F1).
//!
//! memmap2's `MmapRaw` hands out a pointer, never a `&[u8]`: memory another process may
//! write must not be seen through a Rust reference, which would promise the compiler that
//! nobody changes it. The ring modes give the pointer to [`common::ring::Region`], which
//! checks its own bounds; the bulk mode and the F7 demonstration use the methods here.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};
use memmap2::{MmapOptions, MmapRaw};

use crate::bulk;
use crate::rendezvous::check_length;

/// What to map: `len` bytes from file byte `offset` of a file that must be `file_len` long.
#[derive(Clone, Copy, Debug)]
struct Window {
    offset: u64,
    len: usize,
    file_len: u64,
}

impl Window {
    /// All of a file of `len` bytes.
    fn whole(len: usize) -> Window {
        Window {
            offset: 0,
            len,
            file_len: len as u64,
        }
    }
}

/// A shared mapping of a file, whole or a window of it, handed out only as raw pointers.
///
/// All access goes through methods that check the range against `len`, which is taken
/// from our own `fstat` before mapping, never from the file's contents. Offsets given to
/// the methods count from the start of the map, i.e. from file byte [`Map::offset`].
#[derive(Debug)]
pub struct Map {
    /// memmap2's raw mapping: unmapped on drop; never dereferenced as a slice.
    raw: MmapRaw,
    /// Length of the mapping, fixed at map time.
    len: usize,
    /// The file offset of the map's first byte: 0 for a whole file, a multiple of the page
    /// size for a window (F1). `/proc/self/maps` shows it in its third column.
    offset: u64,
    /// Whether it was mapped PROT_WRITE (a store into a read-only map is SIGSEGV).
    writable: bool,
}

impl Map {
    /// Maps `len` bytes of `file` read-write, `MAP_SHARED` (F1), after checking the length
    /// (F7). `populate` adds `MAP_POPULATE`: the kernel faults every page in at map time.
    pub fn create(file: &File, path: &Path, len: usize, populate: bool) -> Result<Map> {
        Self::map_file(file, path, Window::whole(len), populate, true)
    }

    /// Maps `len` bytes of `file` read-only, `MAP_SHARED`, after checking the length.
    pub fn open(file: &File, path: &Path, len: usize, populate: bool) -> Result<Map> {
        Self::map_file(file, path, Window::whole(len), populate, false)
    }

    /// Maps only `len` bytes of `file` from byte `offset`, read-only, `MAP_SHARED`: a part
    /// of a file (F1). `file_len` is the length the file must have (checked with `fstat`
    /// first, F7); the window must lie inside it and `offset` must be a multiple of the
    /// page size, as `mmap(2)` requires (it returns EINVAL otherwise).
    pub fn open_window(
        file: &File,
        path: &Path,
        offset: u64,
        len: usize,
        file_len: u64,
        populate: bool,
    ) -> Result<Map> {
        let w = Window {
            offset,
            len,
            file_len,
        };
        Self::map_file(file, path, w, populate, false)
    }

    fn map_file(
        file: &File,
        path: &Path,
        w: Window,
        populate: bool,
        writable: bool,
    ) -> Result<Map> {
        check_length(file, path, w.file_len)?;
        let page = crate::page_size() as u64;
        let end = w.offset.checked_add(w.len as u64);
        if !w.offset.is_multiple_of(page) || end.is_none_or(|e| e > w.file_len) || w.len == 0 {
            bail!(
                "mmap {}: a window of {} bytes at offset {} does not lie in the {}-byte file at a multiple of the page size ({page})",
                path.display(),
                w.len,
                w.offset,
                w.file_len
            );
        }
        let mut opts = MmapOptions::new();
        opts.offset(w.offset).len(w.len);
        if populate {
            opts.populate();
        }
        // memmap2's raw maps are safe to create: they give out no reference, only a pointer.
        let raw = if writable {
            opts.map_raw(file)
        } else {
            opts.map_raw_read_only(file)
        }
        .with_context(|| {
            format!(
                "mmap {} ({} bytes at offset {}, MAP_SHARED, {})",
                path.display(),
                w.len,
                w.offset,
                if writable { "read-write" } else { "read-only" }
            )
        })?;
        Ok(Map {
            raw,
            len: w.len,
            offset: w.offset,
            writable,
        })
    }

    /// The file offset of the map's first byte (0 unless mapped with [`Map::open_window`]).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the map is empty (never, for our files).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Start address, for `/proc/self/maps` and for the ring (which checks its own bounds).
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.raw.as_mut_ptr()
    }

    /// The one bounds check: `[off, off + len)` inside the map, `align`-aligned.
    pub(crate) fn span(&self, off: usize, len: usize, align: usize) -> Result<*mut u8> {
        let end = off.checked_add(len);
        if end.is_none_or(|e| e > self.len) || !off.is_multiple_of(align) {
            bail!(
                "access of {len} bytes at offset {off} is outside the {}-byte map or misaligned",
                self.len
            );
        }
        // SAFETY: `off + len <= self.len` (checked just above), and the mapping is `self.len`
        // bytes long, so the offset stays inside the same allocation.
        Ok(unsafe { self.raw.as_mut_ptr().add(off) })
    }

    fn writable_span(&self, off: usize, len: usize, align: usize) -> Result<*mut u8> {
        if !self.writable {
            bail!("this map is read-only; a store into it would be SIGSEGV");
        }
        self.span(off, len, align)
    }

    /// Copies `bytes` into the map at `off` (raw copy, no reference over the map).
    pub fn write_bytes(&self, off: usize, bytes: &[u8]) -> Result<()> {
        let dst = self.writable_span(off, bytes.len(), 1)?;
        // SAFETY: `dst..dst+len` is inside our writable mapping (checked by `span`), and
        // `bytes` is our own buffer, so the two do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) };
        Ok(())
    }

    /// Copies bytes out of the map at `off` into our own buffer.
    pub fn read_bytes(&self, off: usize, out: &mut [u8]) -> Result<()> {
        let src = self.span(off, out.len(), 1)?;
        // SAFETY: `src..src+len` is inside the mapping (checked); the copy reads through a
        // raw pointer, so no reference to memory another process may write is created.
        unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// Stores a `u32` with Release ordering: every store before it becomes visible to a
    /// process that loads the same word with Acquire and sees this value.
    pub fn store_u32_release(&self, off: usize, v: u32) -> Result<()> {
        let p = self.writable_span(off, 4, 4)?;
        // SAFETY: `p` is 4-byte aligned and inside the mapping (checked by `span`), and the
        // mapping lives as long as `self`; the word is only ever accessed atomically by
        // both sides, which is what `AtomicU32::from_ptr` requires.
        let a = unsafe { AtomicU32::from_ptr(p.cast::<u32>()) };
        a.store(v, Ordering::Release);
        Ok(())
    }

    /// Loads a `u32` with Acquire ordering (pairs with [`Map::store_u32_release`]).
    pub fn load_u32_acquire(&self, off: usize) -> Result<u32> {
        let p = self.span(off, 4, 4)?;
        // SAFETY: as in `store_u32_release`: aligned, in bounds, only accessed atomically.
        // An atomic load from a read-only page is a plain load on x86_64 and aarch64.
        let a = unsafe { AtomicU32::from_ptr(p.cast::<u32>()) };
        Ok(a.load(Ordering::Acquire))
    }

    /// Writes block pattern `seed` into `[off, off + len)`, one 8-byte store per word.
    ///
    /// The first store to each page is a page fault: the kernel allocates a page-cache page
    /// (tmpfs) or finds the file's block (disk), and marks it dirty for writeback (F5).
    pub fn fill_pattern(&self, off: usize, len: usize, seed: u64) -> Result<()> {
        let p = self.writable_span(off, len, 8)?.cast::<u64>();
        for i in 0..len / 8 {
            // SAFETY: `i < len/8`, so the word at `p + i` is inside the checked span, and it
            // is 8-byte aligned because `off` is (checked) and the map is page-aligned.
            unsafe { p.add(i).write(bulk::word(seed, i as u64).to_le()) };
        }
        Ok(())
    }

    /// Checks `[off, off + len)` against block pattern `seed`, reading through raw pointers.
    pub fn verify_pattern(
        &self,
        off: usize,
        len: usize,
        seed: u64,
    ) -> Result<Option<bulk::Mismatch>> {
        self.verify_pattern_from(off, len, seed, 0)
    }

    /// As [`Map::verify_pattern`] for a part of a block whose first word is word
    /// `first_word` of the block's pattern (a window that starts inside a block, F1).
    /// A mismatch's `offset` counts from `off`.
    pub fn verify_pattern_from(
        &self,
        off: usize,
        len: usize,
        seed: u64,
        first_word: u64,
    ) -> Result<Option<bulk::Mismatch>> {
        let p = self.span(off, len, 8)?.cast::<u64>().cast_const();
        let words = len / 8;
        let seed_at = |i: usize| bulk::word(seed, first_word + i as u64);
        let at = |i: usize| {
            // SAFETY: callers pass `i < words`, so `p + i` is an aligned word inside the
            // checked span. The writer finished before we read (the caller saw the
            // completion marker with Acquire); the read is by value, no reference is made.
            u64::from_le(unsafe { p.add(i).read() })
        };
        let mut diff = 0u64;
        for i in 0..words {
            diff |= at(i) ^ seed_at(i);
        }
        if diff == 0 {
            return Ok(None);
        }
        Ok(bulk::first_mismatch(words, seed, first_word, at))
    }

    /// `msync(MS_SYNC)` over the whole map: returns once the dirty pages are on the disk (F5).
    pub fn sync(&self) -> Result<()> {
        self.raw.flush().context("msync(MS_SYNC)")
    }

    /// `msync(MS_SYNC)` over `[off, off + len)`, rounded out to whole pages.
    pub fn sync_range(&self, off: usize, len: usize) -> Result<()> {
        self.span(off, len, 1)?;
        self.raw
            .flush_range(off, len)
            .context("msync(MS_SYNC) range")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rendezvous::create_file;

    #[test]
    fn map_bounds_are_checked_and_patterns_verify() {
        let d =
            std::env::temp_dir().join(format!("ipc-study-mmap-unit-map-{}", std::process::id()));
        common::runtime::ensure_private_dir(&d).unwrap();
        let p = d.join("m.map");
        let (f, owned) = create_file(&p, 8192).unwrap();
        let m = Map::create(&f, &p, 8192, false).unwrap();
        assert!(m.write_bytes(8190, b"abc").is_err());
        assert!(m.store_u32_release(2, 1).is_err(), "misaligned");
        assert!(m.read_bytes(usize::MAX, &mut [0u8; 2]).is_err());
        m.fill_pattern(0, 8192, 5).unwrap();
        assert_eq!(m.verify_pattern(0, 8192, 5).unwrap(), None);
        m.write_bytes(100, &[0xff]).unwrap();
        assert_eq!(m.verify_pattern(0, 8192, 5).unwrap().unwrap().offset, 96);
        let r = Map::open(&f, &p, 8192, true).unwrap();
        assert!(
            r.write_bytes(0, b"x").is_err(),
            "read-only map refuses stores"
        );
        m.store_u32_release(12, 7).unwrap();
        assert_eq!(r.load_u32_acquire(12).unwrap(), 7, "one page, two maps");
        // F7: the length is checked before mapping.
        assert!(Map::open(&f, &p, 16384, false)
            .unwrap_err()
            .to_string()
            .contains("SIGBUS"));
        drop((m, r, f));
        owned.remove().unwrap();
        std::fs::remove_dir(&d).unwrap();
    }
}
