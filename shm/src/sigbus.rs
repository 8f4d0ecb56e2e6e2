//! SIGBUS explained: what a side prints, and does, when a page of the shared object is no
//! longer there. Part of the rendezvous (a first reading may skip it).
//!
//! A load or store into a mapping whose page has nothing behind it is not an error that a
//! system call could return: the kernel sends SIGBUS to the thread that touched it, and
//! the default action kills the process (status 135 in a shell: 128 + 7, "Bus error").
//! What can do that to this pair:
//! - **POSIX, a shrink.** Any process that can open the object read-write may `ftruncate`
//!   it while it is mapped (S2), as `truncate -s 0 /dev/shm/ipc-study-<uid>-shm` does; a
//!   page past the new end has no page of the object behind it (`si_code` `BUS_ADRERR`).
//! - **POSIX, a full /dev/shm.** A tmpfs allocates a page when it is first touched, and
//!   with no room that touch is SIGBUS. Not for our objects: the creator reserves every
//!   page with `fallocate` before anything touches them (`src/posix.rs`), so a full
//!   /dev/shm is an ENOSPC error there, cleaned up like any other.
//! - **System V: no shrink.** A segment's size is fixed at `shmget` (S2), `IPC_RMID` does
//!   not unmap it, and its pages are accounted for at `shmget`. What is left is a memory
//!   error the kernel reports as SIGBUS (`BUS_MCEERR_AR`: hardware memory poison).
//! - **Either, `kill -BUS`.** Another process may send the signal (`si_code` `SI_USER`).
//!
//! The handler cannot repair anything (on return the access would fault again), so it
//! explains, cleans up and dies as before: it prints what happened and which object (the
//! byte touched, the part of the region, the object's size now against the size mapped),
//! removes the object if its name still names the one mapped (`unlink` of the /dev/shm
//! path, compared by inode first; `IPC_RMID` for System V, whose id names one segment), and
//! re-raises SIGBUS with the default action restored: the process still dies of SIGBUS,
//! as a shell or `waitpid` expects. The peer, unless it touches the object and dies the
//! same way, notices within 100 ms that this process is gone (`peer (pid N) is gone`).
//! An object the handler could not remove is left to the stale rule of the next run.
//!
//! The handler may interrupt anything, a `malloc` holding the allocator's lock included,
//! so it allocates nothing, takes no lock and calls only async-signal-safe functions
//! (signal-safety(7)): `write`, `stat`, `unlink`, `raise`, and `shmctl`, a thin wrapper of
//! the system call. Every string it prints is prepared by [`arm`] and reached through an
//! atomic pointer to memory that is never freed.

use std::ffi::{c_int, c_void, CString};
use std::sync::atomic::{AtomicPtr, Ordering};

use anyhow::{Context, Result};
use common::ring::{offsets, HEADER_PAGE};

/// What is mapped, as the rendezvous knows it when it hands the mapping to the ring.
pub(crate) struct Target {
    /// `shm-writer (pid 123)`.
    pub(crate) who: String,
    /// `POSIX shared memory /ipc-study-0-shm` or `System V segment key 0x... (shmid N)`.
    pub(crate) object: String,
    /// First byte of the mapping.
    pub(crate) base: *mut u8,
    /// Bytes mapped.
    pub(crate) len: usize,
    /// Ring capacity, to name the part of the region a fault hit.
    pub(crate) cap: usize,
    /// How to check and remove the object.
    pub(crate) backing: Backing,
}

/// The object behind the mapping.
pub(crate) enum Backing {
    /// `/dev/shm/...` and the inode mapped (a name may be unlinked and made again).
    Posix { path: String, ino: u64 },
    /// The segment's id.
    Sysv { id: i32 },
}

/// [`Target`] with its strings leaked, for the handler: nothing here is ever freed.
struct Armed {
    who: &'static [u8],
    object: &'static [u8],
    base: usize,
    len: usize,
    cap: usize,
    /// POSIX: the path, NUL-terminated, and the inode; System V: `None`.
    posix: Option<(&'static CString, u64)>,
    /// System V: the id.
    sysv: Option<i32>,
}

/// The mapping the handler explains; null before [`arm`] (and after its guard is gone).
static ARMED: AtomicPtr<Armed> = AtomicPtr::new(std::ptr::null_mut());

/// Disarms the handler when the mapping goes (dropped after the region, see `Shared`).
pub(crate) struct Guard {
    /// The address of our Armed, only ever compared with ARMED (never dereferenced).
    armed: usize,
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Only our own entry: the Armed itself stays leaked (a handler may be reading it).
        let _ = ARMED.compare_exchange(
            self.armed as *mut Armed,
            std::ptr::null_mut(),
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }
}

/// Installs the handler (`sigaction(SIGBUS)`, `SA_SIGINFO | SA_RESETHAND`) and points it
/// at `t`, before anything touches the mapping.
pub(crate) fn arm(t: Target) -> Result<Guard> {
    let leak = |s: String| -> &'static [u8] { Box::leak(s.into_boxed_str()).as_bytes() };
    let (posix, sysv) = match t.backing {
        Backing::Posix { path, ino } => {
            let c = CString::new(path).context("a /dev/shm path with a NUL byte")?;
            (Some((&*Box::leak(Box::new(c)), ino)), None)
        }
        Backing::Sysv { id } => (None, Some(id)),
    };
    let armed = Box::into_raw(Box::new(Armed {
        who: leak(t.who),
        object: leak(t.object),
        base: t.base as usize,
        len: t.len,
        cap: t.cap,
        posix,
        sysv,
    }));
    ARMED.store(armed, Ordering::Release);
    install().context("sigaction SIGBUS")?;
    Ok(Guard {
        armed: armed as usize,
    })
}

fn install() -> nix::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    // SA_RESETHAND: the default action is back as the handler starts, so the raise at its
    // end (or the access, retried) kills the process as SIGBUS always did.
    let act = SigAction::new(
        SigHandler::SigAction(on_sigbus),
        SaFlags::SA_RESETHAND,
        SigSet::empty(),
    );
    // SAFETY: the handler calls only async-signal-safe functions and reads only memory that
    // is never freed (see the module docs); it touches no state of the interrupted code.
    unsafe { sigaction(Signal::SIGBUS, &act) }.map(|_| ())
}

extern "C" fn on_sigbus(_: c_int, info: *mut libc::siginfo_t, _: *mut c_void) {
    let mut note = Note::new();
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler. si_code says
    // which union member is valid: the sender's pid for a signal sent by a process (<= 0),
    // the faulting address for a fault (> 0).
    let (code, addr, sender) = unsafe {
        let code = (*info).si_code;
        if code <= 0 {
            (code, 0, (*info).si_pid())
        } else {
            (code, (*info).si_addr() as usize, 0)
        }
    };
    // SAFETY: ARMED is null or points to an Armed leaked by `arm`, never freed or changed.
    match unsafe { ARMED.load(Ordering::Acquire).as_ref() } {
        Some(a) => a.explain(&mut note, code, addr, sender),
        None => {
            note.push(b"\n*** SIGBUS before any shared object was mapped: not the pair's doing. ")
        }
    }
    note.push(
        b"The default action follows: the process dies of SIGBUS (status 135 in a shell); \
the peer, unless it touches the object and dies the same way, sees it gone. ***\n",
    );
    note.write_to_stderr();
    // SAFETY: raise(3) is async-signal-safe. SIGBUS is blocked while the handler runs, so
    // the signal is delivered, with the default action, as the handler returns.
    unsafe { libc::raise(libc::SIGBUS) };
}

impl Armed {
    /// What happened, which object, and what was done with it.
    fn explain(&self, n: &mut Note, code: c_int, addr: usize, sender: i32) {
        n.push(b"\n*** SIGBUS: ");
        n.push(self.who);
        let off = addr.wrapping_sub(self.base);
        if code <= 0 {
            n.push(b" was sent SIGBUS by pid ");
            n.num(sender.max(0) as u64);
            n.push(b" (kill): not a fault; nothing is wrong with ");
            n.push(self.object);
            n.push(b". ");
        } else if off < self.len {
            n.push(b" touched byte ");
            n.num(off as u64);
            n.push(b" of ");
            n.push(self.object);
            n.push(self.part(off));
            n.push(b", and the kernel had no page for it. ");
        } else {
            n.push(b" faulted at an address outside ");
            n.push(self.object);
            n.push(b" (si_code ");
            n.num(code as u64);
            n.push(b"): not the shared region's doing. ");
        }
        let fault_here = code > 0 && off < self.len;
        if let Some((path, ino)) = self.posix {
            self.posix_cause_and_removal(n, path, ino, fault_here.then_some(off));
        } else if let Some(id) = self.sysv {
            if fault_here {
                n.push(b"A System V segment cannot shrink (its size is fixed at shmget, S2), so this is a memory error (si_code ");
                n.num(code as u64);
                n.push(b"; 4, BUS_MCEERR_AR, is hardware memory poison). ");
            }
            // SAFETY: IPC_RMID takes no buffer; shmctl wraps the system call directly.
            if unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) } == 0 {
                n.push(b"Marked the segment for removal (IPC_RMID). ");
            } else {
                n.push(b"The segment is already removed (IPC_RMID failed). ");
            }
        }
    }

    /// The part of the region at `off` (see `common/src/ring/layout.rs`).
    fn part(&self, off: usize) -> &'static [u8] {
        if off < HEADER_PAGE {
            b" (the header page: header and indices)"
        } else if off < offsets::data(1, self.cap) {
            b" (ring 0's data area, writer to reader)"
        } else {
            b" (ring 1's data area, reader to writer)"
        }
    }

    /// POSIX: compares the object under the name with the one mapped, says what that
    /// shows (`off`: the fault's offset, if it was one), and unlinks it if it is ours.
    fn posix_cause_and_removal(&self, n: &mut Note, path: &CString, ino: u64, off: Option<usize>) {
        // SAFETY: libc::stat is plain integers: all-zero is valid; stat(2) fills it in.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is NUL-terminated and `st` writable; stat is async-signal-safe.
        let found = unsafe { libc::stat(path.as_ptr(), &mut st) } == 0;
        let name = path.as_bytes();
        if !found {
            n.push(name);
            n.push(b" is gone already: the peer removed it");
            if off.is_some() {
                n.push(b", most likely after the same fault; the usual cause is another process shrinking the object while it is mapped (ftruncate, S2)");
            }
            n.push(b". ");
            return;
        }
        if st.st_ino != ino {
            n.push(name);
            n.push(b" now names another object, which is left alone. ");
            return;
        }
        let size = st.st_size.max(0) as u64;
        if let Some(off) = off {
            n.push(b"The object is now ");
            n.num(size);
            n.push(b" bytes, and ");
            n.num(self.len as u64);
            n.push(b" were mapped: ");
            if size <= off as u64 {
                n.push(
                    b"another process shrank it while it was mapped (ftruncate, as `truncate -s N ",
                );
                n.push(name);
                n.push(b"` does; POSIX lets anyone who can open it read-write, S2), and a page past the new end has nothing behind it. ");
            } else {
                n.push(b"it still covers that byte, so the kernel could not supply the page (a memory error, or a full /dev/shm). ");
            }
        }
        // SAFETY: unlink(2) with a NUL-terminated path; async-signal-safe.
        if unsafe { libc::unlink(path.as_ptr()) } == 0 {
            n.push(b"Removed ");
            n.push(name);
            n.push(b" (unlink). ");
        } else {
            n.push(b"The peer removed ");
            n.push(name);
            n.push(b" meanwhile. ");
        }
    }
}

/// A message built on the stack: the handler may not allocate.
struct Note {
    buf: [u8; 2048],
    len: usize,
}

impl Note {
    fn new() -> Note {
        Note {
            buf: [0; 2048],
            len: 0,
        }
    }

    /// Appends what fits; a message too long is cut, never a reason to fail.
    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    /// Appends `v` in decimal.
    fn num(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    fn write_to_stderr(&self) {
        let mut done = 0;
        while done < self.len {
            // SAFETY: write(2) from our own buffer, in bounds; async-signal-safe.
            let r = unsafe { libc::write(2, self.buf[done..].as_ptr().cast(), self.len - done) };
            if r <= 0 {
                return;
            }
            done += r as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Note;

    #[test]
    fn a_note_formats_numbers_and_cuts_what_does_not_fit() {
        let mut n = Note::new();
        n.push(b"byte ");
        n.num(0);
        n.push(b", ");
        n.num(18_446_744_073_709_551_615);
        assert_eq!(&n.buf[..n.len], b"byte 0, 18446744073709551615");
        for _ in 0..300 {
            n.push(b"0123456789");
        }
        assert_eq!(n.len, n.buf.len());
    }
}
