//! SIGBUS from a mapped file (F7): what the dying process says, and what it does with the
//! file. Installed as step 1 of both programs, in every mode (ring and bulk).
//!
//! A load or store into a mapped page that no longer has a file page behind it (the file
//! was truncated under the map), or whose page the file system cannot supply (tmpfs or a
//! disk full: a page fault cannot return ENOSPC), is SIGBUS. It cannot be survived:
//! returning from the handler retries the access, which faults again. So the handler does
//! what an error path would have done, in the few calls that are safe inside a signal
//! handler (signal-safety(7): `write`, `stat`, `unlink`, `getpid`, `raise`; no allocation,
//! no lock), and then lets the signal kill the process:
//! 1. it says which file this process maps ([`watch`]) and compares, with `stat(2)`, the
//!    file's length now with the length it was mapped at: shorter means it was cut under
//!    the map; as long means the file system had no room for the page;
//! 2. if this process owns the file (it created it, or attached to it, and has not let go
//!    of it), it `unlink`s it, after checking with `stat` that the path still names the
//!    same inode (a newer run's file is not ours to delete); otherwise it says who will;
//! 3. it raises SIGBUS again with the default action (restored by `SA_RESETHAND`): the
//!    process dies of it, status 135 in a shell, as the kernel intended.
//!
//! The survivor of a pair (if any) notices a dead peer within 100 ms and says what it
//! finds of the file ([`crate::rendezvous::RingFile::what_happened`], and the bulk reader's
//! wait); a file nobody removed (both killed with `kill -9`) is replaced as stale by the
//! next run.
//!
//! `SIGXFSZ` is ignored too: with `ulimit -f` smaller than the file, `ftruncate` then fails
//! with EFBIG, an ordinary error whose path removes the file just created, instead of the
//! signal killing the process and leaving a 0-byte file behind.

use std::ffi::CString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use anyhow::{Context, Result};

/// What the handler knows about the mapped file; rendered before, read in the handler.
struct Target {
    /// The path, for `stat` and `unlink`.
    path: CString,
    /// "the ring file /run/.../mmap.map", for the message.
    name: Box<[u8]>,
    /// The inode this process mapped: `unlink` only if the path still names it.
    ino: u64,
    /// The file's length when it was mapped.
    mapped_len: u64,
    /// Whether this process owns the file (removes it on every way out).
    mine: AtomicBool,
    /// Who removes it when this process does not: " for ...".
    otherwise: Box<[u8]>,
}

/// The file being watched. A replaced target is leaked, never freed: a handler running on
/// another thread may still read it, and a process watches only a few files in its life.
static TARGET: AtomicPtr<Target> = AtomicPtr::new(ptr::null_mut());
/// The program name for the `[program pid]` prefix, set once by [`install`].
static PROGRAM: AtomicPtr<&'static str> = AtomicPtr::new(ptr::null_mut());

/// Installs the SIGBUS handler (and ignores SIGXFSZ) for `program`.
pub fn install(program: &'static str) -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    PROGRAM.store(Box::into_raw(Box::new(program)), Ordering::Release);
    let act = SigAction::new(
        SigHandler::Handler(on_sigbus),
        SaFlags::SA_RESETHAND,
        SigSet::empty(),
    );
    // SAFETY: the handler makes only async-signal-safe calls (write, stat, unlink, getpid,
    // raise) and reads only data published before it through atomics (`TARGET`, `PROGRAM`),
    // never freed; it takes no lock and allocates nothing.
    unsafe { sigaction(Signal::SIGBUS, &act) }.context("sigaction SIGBUS")?;
    let ign = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_IGN runs no code in this process.
    unsafe { sigaction(Signal::SIGXFSZ, &ign) }.context("sigaction SIGXFSZ")?;
    Ok(())
}

/// From now on a SIGBUS names `path` (inode `ino`, mapped at `mapped_len` bytes) as "the
/// `what` `path`"; with `mine` the handler removes it, else says it is left `otherwise`
/// (" for the peer to remove").
pub fn watch(what: &str, path: &Path, ino: u64, mapped_len: u64, mine: bool, otherwise: &str) {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return; // a path with a NUL byte could not have been opened either
    };
    let t = Box::new(Target {
        path: c,
        name: format!("the {what} {}", path.display()).into_bytes().into(),
        ino,
        mapped_len,
        mine: AtomicBool::new(mine),
        otherwise: otherwise.as_bytes().into(),
    });
    TARGET.store(Box::into_raw(t), Ordering::Release);
}

/// The process now owns the watched file (`true`: it attached) or has let go of it.
pub fn set_mine(mine: bool) {
    let t = TARGET.load(Ordering::Acquire);
    // SAFETY: a non-null `TARGET` points to a leaked `Target`, valid forever.
    if let Some(t) = unsafe { t.as_ref() } {
        t.mine.store(mine, Ordering::Release);
    }
}

/// Said when nothing is watched (a SIGBUS before any file was mapped).
static GENERIC: &[u8] = b"this process touched a page of a memory-mapped file that is no \
longer backed by the file: usually another process truncated the file while it was mapped \
(ftruncate succeeds on a mapped file; touching past the new end is SIGBUS, F7), or the file \
system had no room for a page written through the map. The default action follows: the \
process dies. ***\n";

extern "C" fn on_sigbus(_: libc::c_int) {
    put(b"\n");
    // SAFETY: a non-null `PROGRAM` points to a leaked `&'static str`, valid forever.
    if let Some(p) = unsafe { PROGRAM.load(Ordering::Acquire).as_ref() } {
        put(b"[");
        put(p.as_bytes());
        put(b" ");
        // SAFETY: getpid(2) is async-signal-safe and cannot fail.
        put_num(unsafe { libc::getpid() } as u64);
        put(b"] ");
    }
    put(b"*** SIGBUS: ");
    // SAFETY: a non-null `TARGET` points to a leaked `Target`, valid forever.
    match unsafe { TARGET.load(Ordering::Acquire).as_ref() } {
        None => put(GENERIC),
        Some(t) => explain(t),
    }
    // SAFETY: SA_RESETHAND restored the default action on entry; SIGBUS is blocked while
    // the handler runs, so the raised one is delivered as it returns, and kills the process
    // (a fault's SIGBUS would also recur on the retried access; a `kill -BUS` would not).
    unsafe { libc::raise(libc::SIGBUS) };
}

/// The handler's message about the watched file, and its removal if this process owns it.
fn explain(t: &Target) {
    put(b"this process touched a page of its map of ");
    put(&t.name);
    put(b" that has no file page behind it. ");
    let now = stat(&t.path).filter(|s| s.st_ino == t.ino);
    match now {
        Some(s) if (s.st_size as u64) < t.mapped_len => {
            put(b"The file is ");
            put_num(s.st_size as u64);
            put(b" bytes now and was ");
            put_num(t.mapped_len);
            put(b" when mapped: it was cut (truncated) under the map, and a page past its new end has no file page behind it (F7). ");
        }
        Some(_) => put(b"The file is as long as when it was mapped, so it was not cut: the file system had no room for the page (a store into a map cannot return ENOSPC; tmpfs or the disk is full). "),
        None => put(b"The file is no longer at that path (removed, perhaps by a peer that died of the same first, or replaced): nothing to remove. "),
    }
    if now.is_some() && t.mine.load(Ordering::Acquire) {
        // SAFETY: `path` is a NUL-terminated string owned by the leaked target; unlink(2)
        // is async-signal-safe. The inode was checked just above (a small race with a new
        // run replacing the file in between, as with any check-then-remove).
        let rc = unsafe { libc::unlink(t.path.as_ptr()) };
        put(if rc == 0 {
            b"Removed it (this process owned it). "
        } else {
            b"Could not remove it (unlink failed). "
        });
    } else if now.is_some() {
        put(b"It is left as it is");
        put(&t.otherwise);
        put(b". ");
    }
    put(b"The default action follows: the process dies. ***\n");
}

/// `stat(2)`, async-signal-safe.
fn stat(path: &CString) -> Option<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: `path` is NUL-terminated; `st` is a writable `struct stat` the call fills.
    let rc = unsafe { libc::stat(path.as_ptr(), st.as_mut_ptr()) };
    // SAFETY: on success the kernel filled the struct (and it was zeroed before anyway).
    (rc == 0).then(|| unsafe { st.assume_init() })
}

/// `write(2)` to stderr; the result is ignored: nothing better can be done in a handler.
fn put(bytes: &[u8]) {
    // SAFETY: write(2) is async-signal-safe; the buffer is valid for its length.
    unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
}

/// A number in decimal, formatted on the stack.
fn put_num(mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    put(&buf[i..]);
}

/// The survivor's side: after the peer vanished, what `fstat` of the open file says
/// happened (`mapped_len` is the length this process mapped): cut under the map, or on a
/// file system without room for the pages nobody touched yet, and whether it is removed
/// already. `None` when it is none of these (the peer was killed some other way).
pub fn what_happened(file: &File, path: &Path, mapped_len: u64) -> Option<String> {
    let m = file.metadata().ok()?;
    let removed = if m.nlink() == 0 {
        "; the file is removed already (a process killed by SIGBUS removes the file it owns as it dies)"
    } else {
        ""
    };
    if m.len() < mapped_len {
        return Some(format!(
            "{} is {} bytes now and was {mapped_len} when mapped: it was cut under the map, and \
             a process that touches a page past the new end dies of SIGBUS (F7), most likely how \
             the peer ended{removed}",
            path.display(),
            m.len()
        ));
    }
    let unbacked = mapped_len.saturating_sub(m.blocks() * 512);
    let free = nix::sys::statvfs::fstatvfs(file).map_or(u64::MAX, |s| crate::space::free_bytes(&s));
    if free < unbacked {
        return Some(format!(
            "{} has {unbacked} bytes that no page backs yet, and {} has {free} bytes free: a \
             store into such a page is SIGBUS, not ENOSPC, most likely how the peer ended{removed}",
            path.display(),
            crate::space::describe(crate::dir_of(path))
        ));
    }
    (m.nlink() == 0).then(|| format!("{} was removed while mapped", path.display()))
}
