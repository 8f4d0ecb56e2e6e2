//! # mmap: a regular file mapped into two processes (claims F1-F7)
//!
//! `mmap(2)` with `MAP_SHARED` on a file descriptor makes a range of the file part of the
//! process's address space (F1): a load or store at an address inside the range reads or
//! writes the file's page in the kernel's page cache, with no `read` or `write` call. Two
//! processes that map the same file share those pages, so one sees the other's stores at
//! once (the reviewer's note on F5) and, with the synchronisation the note never mentions,
//! the pair can exchange messages through it exactly as through shared memory. What the
//! file adds over `shm_open`: a name anywhere in the file system, a size that survives the
//! processes, and a copy on disk that the kernel writes back in its own time (F5).
//!
//! ## The two kinds of run
//! - **ring** (`--mode text|stream|pingpong`): the file holds the same single-producer
//!   single-consumer ring of frames as the `shm` pair ([`common::ring`]); only the backing
//!   differs, so `mmap` and `shm` compare fairly. With `--sync` every publish is followed
//!   by `msync(MS_SYNC)`, whose cost the report shows (F5).
//! - **bulk** (`--mode bulk` or `--bulk`, [`bulk`]): the writer fills a large file through
//!   its map and exits; the file outlives it (F2). The reader, started at the same time or
//!   later, verifies every block through its own map and, with `--compare-read`, again with
//!   plain `read()` calls, and prints both throughputs (F3, measured rather than asserted).
//!
//! ## The claims, in one place each
//! - F1 (part of a file mapped into memory): [`Map::create`] / [`Map::open`], and the
//!   reader prints its own `/proc/self/maps` line for the file ([`maps_lines_for`]).
//! - F2 (large data through a file): [`bulk`], the writer exits and the data stays.
//! - F3 (good when file I/O is slow): measured by `mmap-reader --bulk --compare-read`. The
//!   page cache serves both; the map avoids the copy into a buffer but pays page faults.
//! - F4 (executables are mapped files): [`maps_lines_for`] on the program's own path.
//! - F5 (memory and file out of sync): `--sync` and the `Dirty:` line of /proc/meminfo
//!   ([`dirty_kib`]) before and after `msync`.
//! - F6 (4 GB on IA-32): [`address_space_facts`]; on x86_64 a process maps terabytes.
//! - F7 (size fixed while mapped): wrong as stated. [`truncate_while_mapped`] shows that
//!   `ftruncate` succeeds on a mapped file and that touching the map past the new end kills
//!   the toucher with SIGBUS; [`check_length`] is why our programs never map past the end,
//!   and [`explain_sigbus`] prints what happened if another process truncates the file.
//!
//! ## Rules for the memory (see DESIGN.md)
//! - The mapping is `memmap2::MmapRaw`: it hands out a pointer, never a `&[u8]`. Memory
//!   another process may write is only copied with raw pointers, after an Acquire load of
//!   the index or marker the other side published with Release. A reference over it would
//!   promise the compiler that nobody changes it, which another process can break.
//! - Every offset and length into the map is checked against the map's length, kept
//!   locally, in `Map::span`; a value read from the file is never trusted as an offset.
//! - Files are created mode 0600 with `O_EXCL`, never through a symlink (`O_NOFOLLOW`), and
//!   an existing one is used only after [`check_file`] (regular file, ours, not writable by
//!   others). A file is replaced only when its header proves it ours and stale.
//!
//! Man pages: mmap(2), msync(2), ftruncate(2), mincore(2), proc(5) (`/proc/<pid>/maps`),
//! and the kernel's Documentation/filesystems/proc.rst for `Dirty:`.

pub mod bulk;
pub mod reader;
pub mod writer;

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::cleanup::{self, Owned};
use common::cli::{CommonArgs, Mode};
use common::frame;
use common::protocol::{Delivery, FrameSink, Setup};
use common::ring::{self, EndOpts, Region, Role, Wait};
use common::timing::Latency;
use memmap2::{MmapOptions, MmapRaw};
use nix::unistd::geteuid;

/// Mechanism name in reports.
pub const MECHANISM: &str = "mmap";
/// Default `--name` of the ring file: `<runtime dir>/mmap.map`.
pub const DEFAULT_NAME: &str = "mmap";
/// Default `--name` of the bulk file: `<runtime dir>/mmap-bulk.map`.
pub const DEFAULT_BULK_NAME: &str = "mmap-bulk";
/// File name suffix in the runtime directory.
pub const SUFFIX: &str = ".map";

/// The file the pair meets at: `--path` as given, else `<runtime dir>/<name>.map`.
pub fn file_path(name: &str, path: Option<&Path>) -> Result<PathBuf> {
    match path {
        Some(p) => Ok(p.to_path_buf()),
        None => Ok(common::runtime::runtime_path(&format!("{name}{SUFFIX}"))?),
    }
}

/// Rewrites `--mode bulk` (and `--mode=bulk`) into `--bulk`.
///
/// `common::cli::Mode` knows text, stream and pingpong, the modes every pair has; bulk is
/// this pair's own, so it is a separate flag, and the spelling the issue uses is accepted.
pub fn rewrite_bulk_mode<I, T>(argv: I) -> Vec<OsString>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut out: Vec<OsString> = Vec::new();
    let mut it = argv.into_iter().map(Into::into).peekable();
    while let Some(a) = it.next() {
        if a == "--mode=bulk" {
            out.push("--bulk".into());
        } else if a == "--mode" && it.peek().is_some_and(|v| v == "bulk") {
            it.next();
            out.push("--bulk".into());
        } else {
            out.push(a);
        }
    }
    out
}

/// The system's page size (`sysconf(_SC_PAGESIZE)`): the unit of mapping and of faults.
pub fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |n| n as usize)
}

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
    // Registered at once, so an error below or Ctrl-C removes what we created.
    let owned = own_file(path);
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

/// Registers the file for removal (error paths, Ctrl-C, or `.remove()` when done).
pub fn own_file(path: &Path) -> Owned {
    let p = path.to_path_buf();
    cleanup::own(format!("mapped file {}", path.display()), move || {
        fs::remove_file(&p)
    })
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

/// Refuses a file the file system has no room for, before creating it.
///
/// Stores into a map cannot return ENOSPC: when tmpfs or a disk is full, the page fault
/// that would allocate the page raises SIGBUS instead. So the room is checked up front
/// (racy, but it turns the common mistake into a clear error).
pub fn ensure_room(dir: &Path, bytes: u64) -> Result<()> {
    let st =
        nix::sys::statvfs::statvfs(dir).with_context(|| format!("statvfs {}", dir.display()))?;
    let avail = st.blocks_available() as u64 * st.fragment_size() as u64;
    if avail < bytes {
        bail!(
            "{} has {avail} bytes free, the file needs {bytes}: a store into a map of a full file \
             system is SIGBUS, not an ENOSPC error. Pick a smaller --file-size or another --path",
            dir.display()
        );
    }
    Ok(())
}

/// The file system the file lives on, as a report flavour: `tmpfs`, `ext4`, ...
pub fn fs_kind(file: &File) -> String {
    use nix::sys::statfs::{fstatfs, EXT4_SUPER_MAGIC, TMPFS_MAGIC, XFS_SUPER_MAGIC};
    match fstatfs(file) {
        Ok(s) if s.filesystem_type() == TMPFS_MAGIC => "tmpfs".into(),
        Ok(s) if s.filesystem_type() == EXT4_SUPER_MAGIC => "ext4".into(),
        Ok(s) if s.filesystem_type() == XFS_SUPER_MAGIC => "xfs".into(),
        Ok(s) => format!("fs-{:x}", s.filesystem_type().0),
        Err(_) => "unknown-fs".into(),
    }
}

/// A shared mapping of a whole file, handed out only as raw pointers.
///
/// All access goes through methods that check the range against `len`, which is taken
/// from our own `fstat` before mapping, never from the file's contents.
#[derive(Debug)]
pub struct Map {
    /// memmap2's raw mapping: unmapped on drop; never dereferenced as a slice.
    raw: MmapRaw,
    /// Length of the mapping, fixed at map time.
    len: usize,
    /// Whether it was mapped PROT_WRITE (a store into a read-only map is SIGSEGV).
    writable: bool,
}

impl Map {
    /// Maps `len` bytes of `file` read-write, `MAP_SHARED` (F1), after checking the length
    /// (F7). `populate` adds `MAP_POPULATE`: the kernel faults every page in at map time.
    pub fn create(file: &File, path: &Path, len: usize, populate: bool) -> Result<Map> {
        Self::map_file(file, path, len, populate, true)
    }

    /// Maps `len` bytes of `file` read-only, `MAP_SHARED`, after checking the length.
    pub fn open(file: &File, path: &Path, len: usize, populate: bool) -> Result<Map> {
        Self::map_file(file, path, len, populate, false)
    }

    fn map_file(
        file: &File,
        path: &Path,
        len: usize,
        populate: bool,
        writable: bool,
    ) -> Result<Map> {
        check_length(file, path, len as u64)?;
        let mut opts = MmapOptions::new();
        opts.len(len);
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
                "mmap {} ({len} bytes, MAP_SHARED, {})",
                path.display(),
                if writable { "read-write" } else { "read-only" }
            )
        })?;
        Ok(Map { raw, len, writable })
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
    fn span(&self, off: usize, len: usize, align: usize) -> Result<*mut u8> {
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
        let p = self.span(off, len, 8)?.cast::<u64>().cast_const();
        let words = len / 8;
        let at = |i: usize| {
            // SAFETY: callers pass `i < words`, so `p + i` is an aligned word inside the
            // checked span. The writer finished before we read (the caller saw the
            // completion marker with Acquire); the read is by value, no reference is made.
            u64::from_le(unsafe { p.add(i).read() })
        };
        let mut diff = 0u64;
        for i in 0..words {
            diff |= at(i) ^ bulk::word(seed, i as u64);
        }
        if diff == 0 {
            return Ok(None);
        }
        Ok(bulk::first_mismatch(words, seed, at))
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

/// The text printed when this process gets SIGBUS: what it usually means for a map (F7).
static SIGBUS_TEXT: &[u8] =
    b"\n*** SIGBUS: this process touched a page of a memory-mapped file that is no \
longer backed by the file. Usually another process truncated the file while it was mapped \
(ftruncate succeeds on a mapped file; touching past the new end is SIGBUS, F7), or the \
file system had no room for a page written through the map. The default action follows: \
the process dies. ***\n";

extern "C" fn on_sigbus(_: libc::c_int) {
    // SAFETY: write(2) is async-signal-safe; the buffer is a static of known length. The
    // result is ignored: there is nothing better to do inside a signal handler.
    unsafe { libc::write(2, SIGBUS_TEXT.as_ptr().cast(), SIGBUS_TEXT.len()) };
}

/// Installs a SIGBUS handler that explains F7 and then lets the signal kill the process.
///
/// `SA_RESETHAND` restores the default action when the handler runs; on return the
/// faulting access is retried, faults again, and the default action (death, as the kernel
/// intended) follows. Nothing is "recovered": the handler only says why.
pub fn explain_sigbus() -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(
        SigHandler::Handler(on_sigbus),
        SaFlags::SA_RESETHAND,
        SigSet::empty(),
    );
    // SAFETY: the handler only calls write(2), which is async-signal-safe, and touches no
    // state shared with the interrupted code.
    unsafe { sigaction(Signal::SIGBUS, &act) }.context("sigaction SIGBUS")?;
    Ok(())
}

/// What [`truncate_while_mapped`] saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TruncateOutcome {
    /// `ftruncate` of the mapped file returned 0 (the note's F7 says it cannot).
    pub ftruncate_succeeded: bool,
    /// The file's length after the child ran.
    pub len_after: u64,
    /// How the child ended: "killed by SIGBUS", or what happened instead.
    pub child: String,
    /// Whether the child died of SIGBUS.
    pub sigbus: bool,
}

/// F7, shown: maps a two-page file, then in a child process truncates it to one page and
/// touches the second page of the map.
///
/// The child reports through a pipe that `ftruncate` returned 0 while the file was mapped,
/// then dies of SIGBUS on the touch. A child is used because SIGBUS from a map is fatal.
/// The file is created in `dir` (mode 0600) and removed before returning.
pub fn truncate_while_mapped(dir: &Path) -> Result<TruncateOutcome> {
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, pipe, ForkResult};

    let page = page_size();
    let path = dir.join(format!("f7-demo-{}.map", std::process::id()));
    let (file, owned) = create_file(&path, 2 * page as u64)?;
    let map = Map::create(&file, &path, 2 * page, false)?;
    // Touch both pages first: the second page is present in our page tables when the
    // file shrinks, and truncation still takes it away (the kernel unmaps it everywhere).
    map.write_bytes(0, b"page 0")?;
    map.write_bytes(page, b"page 1")?;
    let (rd, wr) = pipe().context("pipe")?;
    let fd = file.as_raw_fd();
    let second = map.span(page, 1, 1)?;
    // SAFETY: the child runs only async-signal-safe calls (ftruncate, write, a memory
    // access, _exit) before it ends, as required after fork in a multi-threaded process;
    // it allocates nothing and takes no lock.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            // SAFETY: `fd` is the open file, `wr` the pipe's write end, `second` a page of
            // the map inherited from the parent; a volatile store there is the point of the
            // demonstration (it raises SIGBUS); _exit ends the child without running
            // destructors or atexit handlers that belong to the parent.
            unsafe {
                let ok = libc::ftruncate(fd, page as libc::off_t) == 0;
                let msg: &[u8] = if ok { b"T" } else { b"E" };
                libc::write(wr.as_raw_fd(), msg.as_ptr().cast(), 1);
                std::ptr::write_volatile(second, b'!');
                libc::_exit(0)
            }
        }
        ForkResult::Parent { child } => {
            drop(wr);
            let mut b = [0u8; 1];
            let got = nix::unistd::read(&rd, &mut b).context("read from the child's pipe")?;
            let status = waitpid(child, None).context("waitpid")?;
            let (child_text, sigbus) = match status {
                WaitStatus::Signaled(_, sig, _) => (
                    format!("killed by {sig:?}"),
                    sig == nix::sys::signal::Signal::SIGBUS,
                ),
                WaitStatus::Exited(_, code) => (format!("exited with status {code}"), false),
                other => (format!("{other:?}"), false),
            };
            let len_after = file.metadata().context("fstat")?.len();
            drop(map);
            drop(file);
            owned.remove()?;
            Ok(TruncateOutcome {
                ftruncate_succeeded: got == 1 && b[0] == b'T',
                len_after,
                child: child_text,
                sigbus,
            })
        }
    }
}

/// Lines of `/proc/self/maps` whose path is `path` (F1, F4).
///
/// Each line is `start-end perms offset dev inode path`: `r-xp` is code (read, execute,
/// private copy-on-write), `rw-s` a shared writable map like ours.
pub fn maps_lines_for(path: &Path) -> Result<Vec<String>> {
    let maps = fs::read_to_string("/proc/self/maps").context("reading /proc/self/maps")?;
    let want = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let want = want.to_string_lossy();
    Ok(maps
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(5)
                .is_some_and(|p| p == want.as_ref())
        })
        .map(str::to_string)
        .collect())
}

/// F6: the address-space facts of this process, as lines to print.
pub fn address_space_facts() -> Vec<String> {
    use nix::sys::resource::{getrlimit, Resource};
    let bits = usize::BITS;
    let mut v = vec![format!(
        "pointers are {bits} bits: a process can address 2^{bits} bytes in theory; x86_64 gives user space 47 bits (128 TiB)"
    )];
    match getrlimit(Resource::RLIMIT_AS) {
        Ok((soft, _)) if soft == libc::RLIM_INFINITY => {
            v.push("RLIMIT_AS (ulimit -v) is unlimited".into())
        }
        Ok((soft, _)) => v.push(format!(
            "RLIMIT_AS (ulimit -v) limits this process to {soft} bytes of address space"
        )),
        Err(e) => v.push(format!("getrlimit RLIMIT_AS: {e}")),
    }
    v.push("on IA-32 a process has 4 GiB of virtual addresses, 3 GiB for user space with Linux's default split; PAE widens physical memory (64 GiB), not a process's address space".into());
    v
}

/// `Dirty:` from /proc/meminfo in KiB: page-cache data not yet written back (F5).
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

/// Minor and major page faults of this process so far (getrusage): what a map costs.
pub fn page_faults() -> (u64, u64) {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| (u.minor_page_faults() as u64, u.major_page_faults() as u64))
        .unwrap_or((0, 0))
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

/// What the pair agreed on before any ring exists: the same on both sides (S5 for shm).
#[derive(Clone, Debug)]
pub struct RingOpts {
    /// The file both map.
    pub path: PathBuf,
    /// Which program this is.
    pub role: Role,
    /// Bytes per direction (`--capacity`), the same on both sides.
    pub capacity: usize,
    /// How long to wait for the peer (`--timeout`).
    pub timeout: Duration,
    /// `--populate`: fault the pages in at map time.
    pub populate: bool,
}

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
    /// The peer's pid, watched while waiting.
    pub peer_pid: i32,
    /// Removal of the file: on error paths, Ctrl-C, or `.remove()` at the end.
    pub owned: Owned,
    /// The file system it lives on (`tmpfs`, `ext4`): the report's flavour.
    pub flavour: String,
}

/// What a look at an existing ring file with `pread` (before mapping it) found.
enum Found {
    /// A complete header that matches our configuration.
    Ready,
    /// Someone is still setting it up.
    NotReady(String),
    /// Left by a run that died: safe to replace.
    Stale(String),
}

/// The fields of a ring header, read with `pread`: they decide whether to map at all.
fn inspect(file: &File, path: &Path, expect_len: u64, capacity: usize) -> Result<Found> {
    let facts = check_file(file, path)?;
    let mut h = [0u8; 64];
    if !pread_exact(file, path, 0, &mut h)? {
        // Shorter than the header: the creator is between open(O_CREAT) and ftruncate, or
        // was killed there. Its pid is not in the file yet, so the file's age decides.
        return Ok(age_verdict(file, facts.len));
    }
    let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let u64_at = |o: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&h[o..o + 8]);
        u64::from_le_bytes(w)
    };
    let magic = u64_at(ring::offsets::MAGIC);
    let creator = u32_at(ring::offsets::CREATOR_PID) as i32;
    if magic != ring::RING_MAGIC && magic != 0 {
        let what = if h[0..8] == bulk::MAGIC {
            "a bulk file (mmap-writer --bulk); use another --name".to_string()
        } else {
            format!("magic {magic:#018x} is not an ipc-study ring's")
        };
        bail!(
            "{} is not a ring file: {what}; refusing to use or remove it",
            path.display()
        );
    }
    if creator != 0 && ring::peer_gone(creator) {
        return Ok(Found::Stale(format!(
            "its creator, pid {creator}, is gone (a run that was killed or crashed)"
        )));
    }
    if creator == 0 {
        return Ok(age_verdict(file, facts.len));
    }
    if u32_at(ring::offsets::READY) != 1 || magic == 0 {
        return Ok(Found::NotReady(format!(
            "its creator, pid {creator}, has not published the header yet"
        )));
    }
    let cap = u64_at(ring::offsets::CAPACITY);
    if cap != capacity as u64 {
        bail!(
            "{} was created by pid {creator} with --capacity {cap}, and this side has --capacity \
             {capacity}: both sides must map the same layout (the length is checked before \
             mapping, F7); pass the same --capacity to both",
            path.display()
        );
    }
    if facts.len != expect_len {
        bail!(
            "{} is {} bytes, but its header says {expect_len}: mapping it and touching a page past \
             its end would be SIGBUS (F7), so it is not mapped",
            path.display(),
            facts.len
        );
    }
    Ok(Found::Ready)
}

/// A file without a creator pid: being created right now, or left by a run killed between
/// `open` and writing its pid. Two seconds is far longer than that window.
fn age_verdict(file: &File, len: u64) -> Found {
    let age = file
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .unwrap_or_default();
    if age > Duration::from_secs(2) {
        Found::Stale(format!(
            "it has no creator pid and has not changed for {:.0} s (a run killed right after creating it, {len} bytes)",
            age.as_secs_f64()
        ))
    } else {
        Found::NotReady("its creator has not written its pid yet".into())
    }
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

/// The flags both programs share: where the file is, how the ring waits, how big it is.
#[derive(clap::Args, Debug, Clone)]
pub struct MapArgs {
    /// The file to map [default: RUNTIME_DIR/NAME.map], the same on both sides; e.g. /dev/shm/x.map (tmpfs) or /var/tmp/x.map (disk).
    #[arg(long, value_name = "PATH")]
    pub path: Option<PathBuf>,

    /// How a waiting side waits: spin, block (futex), adaptive (spin ~20 us, then futex).
    #[arg(long, value_enum, default_value_t = Wait::Adaptive)]
    pub wait: Wait,

    /// Ring bytes per direction, a power of two from 4K to 256M; the same on both sides.
    #[arg(long, value_name = "BYTES", default_value = "1M", value_parser = ring::parse_capacity)]
    pub capacity: usize,

    /// msync(MS_SYNC) after each frame this side publishes (ring) or after filling (bulk), timed (F5).
    #[arg(long)]
    pub sync: bool,

    /// MAP_POPULATE: fault every page in at mmap time instead of on first touch.
    #[arg(long)]
    pub populate: bool,
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

impl MapArgs {
    /// Checks the frame size, meets the peer at the file (either start order) and describes
    /// the run: the first steps of both programs' ring modes.
    pub fn open_ring(&self, c: &CommonArgs, role: Role, program: &str) -> Result<OpenRing> {
        // Flags are checked before any file exists: the frame must fit half the ring.
        if c.mode != Mode::Text {
            ring::check_size(c.size, self.capacity).map_err(anyhow::Error::msg)?;
        }
        let path = file_path(c.name_or(DEFAULT_NAME), self.path.as_deref())?;
        let rf = rendezvous(&RingOpts {
            path,
            role,
            capacity: self.capacity,
            timeout: c.timeout,
            populate: self.populate,
        })?;
        if !c.quiet && c.mode == Mode::Text {
            show_maps(&rf.path);
        }
        let setup = Setup {
            program: program.into(),
            mechanism: MECHANISM.into(),
            flavour: rf.flavour.clone(),
            wait: self.wait.as_str().into(),
            args: c.clone(),
            max_payload: rf.region.max_payload(),
        };
        // Text mode waits as long as the peer lives (a person is typing); the measuring
        // modes also give up after --timeout without progress.
        let opts = EndOpts {
            wait: self.wait,
            peer_pid: rf.peer_pid,
            idle_timeout: (c.mode != Mode::Text).then_some(c.timeout),
        };
        Ok(OpenRing { rf, setup, opts })
    }
}

/// The rendezvous, in either start order: create the file and wait for the peer, or open
/// the peer's file and attach. Stale files of killed runs are replaced (narrated).
pub fn rendezvous(o: &RingOpts) -> Result<RingFile> {
    let len = ring::region_len(o.capacity);
    let start = std::time::Instant::now();
    let mut said = String::new();
    loop {
        if start.elapsed() > o.timeout {
            bail!(
                "timed out after {:.1} s waiting for {} to be set up by its creator",
                o.timeout.as_secs_f64(),
                o.path.display()
            );
        }
        // Whoever comes first creates: O_EXCL lets exactly one of two racing programs win.
        match create_file(&o.path, len as u64) {
            Ok((file, owned)) => return become_creator(o, file, owned, len),
            Err(e) if is_exists(&e) => {}
            Err(e) => return Err(e),
        }
        let Some(file) = open_existing(&o.path, true)? else {
            continue; // removed between our open attempts: try to create again
        };
        let ino = check_file(&file, &o.path)?.ino;
        match inspect(&file, &o.path, len as u64, o.capacity)? {
            Found::Ready => return become_opener(o, file, ino, len),
            Found::Stale(why) => {
                common::narrate!(
                    "{} is stale: {why}; removing it and creating a new one",
                    o.path.display()
                );
                remove_if_same(&o.path, ino)
                    .with_context(|| format!("unlink {}", o.path.display()))?;
            }
            Found::NotReady(why) => {
                if said != why {
                    common::narrate!(
                        "{} exists but {why}; waiting (polling every 2 ms)",
                        o.path.display()
                    );
                    said = why;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

fn is_exists(e: &anyhow::Error) -> bool {
    e.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::AlreadyExists)
}

fn become_creator(o: &RingOpts, file: File, owned: Owned, len: usize) -> Result<RingFile> {
    let flavour = fs_kind(&file);
    let map = Arc::new(Map::create(&file, &o.path, len, o.populate)?);
    let region = region_over(&map, o.capacity)?;
    // pid first, then the header and empty rings, `ready` last with Release.
    region.initialize(o.role, common::protocol::new_nonce());
    let other = match o.role {
        Role::Writer => "reader",
        Role::Reader => "writer",
    };
    common::narrate!(
        "mapped {} ({len} bytes, MAP_SHARED, on {flavour}) and published the ring header; waiting for a {other} to open it (sleeping on a futex in the file's page; its attach wakes us)",
        o.path.display()
    );
    let peer_pid = region
        .wait_for_opener(o.timeout)
        .map_err(|e| anyhow::anyhow!("{e}: start the {other} with the same --name/--path"))?;
    common::narrate!("{other} pid {peer_pid} opened the file and attached");
    Ok(RingFile {
        region,
        map,
        path: o.path.clone(),
        created: true,
        peer_pid,
        owned,
        flavour,
    })
}

fn become_opener(o: &RingOpts, file: File, ino: u64, len: usize) -> Result<RingFile> {
    let flavour = fs_kind(&file);
    let map = Arc::new(Map::create(&file, &o.path, len, o.populate)?);
    let region = region_over(&map, o.capacity)?;
    // The header was complete when read with pread; check it again through the map, with
    // the Acquire load that makes the creator's fields visible, before trusting it.
    if region.check_header()?.is_none() {
        bail!(
            "{}: the header went back to not-ready after we saw it ready",
            o.path.display()
        );
    }
    let peer_pid = region.attach(o.role)?;
    // From now on both sides own the file: whoever ends first on an error removes it.
    let owned = own_file_checked(&o.path, ino);
    common::narrate!(
        "opened {} ({len} bytes, MAP_SHARED, on {flavour}) created by pid {peer_pid}, and attached",
        o.path.display()
    );
    Ok(RingFile {
        region,
        map,
        path: o.path.clone(),
        created: false,
        peer_pid,
        owned,
        flavour,
    })
}

/// A sink that calls `msync(MS_SYNC)` after every publish (`--sync`, F5) and times it.
pub struct SyncSink<S> {
    /// The ring's producer.
    inner: S,
    /// The mapping to flush, when `--sync` was given.
    map: Option<Arc<Map>>,
    /// Time per msync.
    pub cost: Latency,
}

impl<S: FrameSink> SyncSink<S> {
    /// Wraps `inner`; `map` is `Some` with `--sync`.
    pub fn new(inner: S, map: Option<Arc<Map>>) -> Self {
        SyncSink {
            inner,
            map,
            cost: Latency::new(),
        }
    }

    /// A report note on what msync cost, if it ran.
    pub fn note(&self) -> Option<String> {
        let s = self.cost.summary()?;
        Some(format!(
            "msync(MS_SYNC) after each publish (F5): {} calls, p50 {}, p99 {}, max {}",
            self.cost.len(),
            common::timing::fmt_ns(s.p50),
            common::timing::fmt_ns(s.p99),
            common::timing::fmt_ns(s.max)
        ))
    }
}

impl<S: FrameSink> FrameSink for SyncSink<S> {
    fn send(&mut self, header: &[u8; frame::HEADER_LEN], payload: &[u8]) -> Result<Delivery> {
        let d = self.inner.send(header, payload)?;
        if let Some(m) = &self.map {
            // The peer already sees the frame (same page-cache pages); msync only makes the
            // file's copy on the disk catch up. On tmpfs there is no disk, and it is cheap.
            let t = common::timing::now_ns();
            m.sync()?;
            self.cost.record(common::timing::now_ns() - t);
        }
        Ok(d)
    }
}

/// Text mode: checks that the reader still exists before each line is sent.
///
/// A ring has room for many lines, so a writer whose reader died would otherwise go on
/// "sending" into a file nobody reads until the ring filled up. One `kill(pid, 0)` per
/// typed line costs nothing a person notices; the measuring modes do not use this (there
/// the ring's own waits check the peer every 100 ms).
pub struct WatchPeer<S> {
    /// The ring's producer.
    pub inner: S,
    /// The reader's pid.
    pub pid: i32,
}

impl<S: FrameSink> FrameSink for WatchPeer<S> {
    fn send(&mut self, header: &[u8; frame::HEADER_LEN], payload: &[u8]) -> Result<Delivery> {
        if ring::peer_gone(self.pid) {
            return Ok(Delivery::PeerGone);
        }
        self.inner.send(header, payload)
    }
}

/// This process's mappings of `path` and of its own executable, as narration (F1, F4).
pub fn show_maps(path: &Path) {
    if let Ok(lines) = maps_lines_for(path) {
        for l in lines {
            common::narrate!("/proc/self/maps: {l}  <- the shared file, part of our memory (F1)");
        }
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(l) = maps_lines_for(&exe)
            .ok()
            .and_then(|v| v.into_iter().find(|l| l.contains(" r-xp ")))
        {
            common::narrate!(
                "/proc/self/maps: {l}  <- this program's code, mapped from its file at exec (F4)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("ipc-study-mmap-unit-{tag}-{}", std::process::id()));
        common::runtime::ensure_private_dir(&d).unwrap();
        d
    }

    #[test]
    fn bulk_mode_spelling_is_rewritten() {
        let v = rewrite_bulk_mode(["w", "--mode", "bulk", "--x"]);
        assert_eq!(v, ["w", "--bulk", "--x"]);
        let v = rewrite_bulk_mode(["w", "--mode=bulk"]);
        assert_eq!(v, ["w", "--bulk"]);
        let v = rewrite_bulk_mode(["w", "--mode", "stream"]);
        assert_eq!(v, ["w", "--mode", "stream"]);
    }

    #[test]
    fn map_bounds_are_checked_and_patterns_verify() {
        let d = scratch("map");
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
        fs::remove_dir(&d).unwrap();
    }

    #[test]
    fn files_of_others_or_open_to_others_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = scratch("perm");
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
