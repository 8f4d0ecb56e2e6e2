//! What this process owns, and removing it on every way out, Ctrl-C included.
//!
//! A FIFO, a socket file, a message queue or a shared-memory object outlives the process
//! that made it: the kernel keeps it until someone removes it. Each program registers
//! what it creates with [`own`] and gets an [`Owned`] guard:
//! - the normal path calls [`Owned::remove`] when the pair is done;
//! - an error path drops the guard, and `Drop` removes the object;
//! - Ctrl-C or SIGTERM: the main thread may be blocked anywhere (in `open` on a FIFO, in
//!   `msgrcv`, on a futex), and the kernel restarts those calls after a handler runs, so
//!   the main thread cannot be relied on to notice. [`install_signal_handler`] starts a
//!   thread that waits for SIGINT, SIGTERM and SIGHUP, removes everything still
//!   registered and exits with status 130.
//!
//! `kill -9` cannot be caught: what it leaves behind is found as stale by the next run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::{Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// A removal action: what it removes (for narration) and how.
struct Entry {
    /// Registry key, matched by the guard.
    id: u64,
    /// "FIFO /run/user/1000/ipc-study/fifo", for the line printed when it is removed.
    what: String,
    /// Removes the object; the error is reported, not propagated, on the signal path.
    remove: Box<dyn FnOnce() -> std::io::Result<()> + Send>,
}

/// Everything this process still owns. A plain mutex: it is touched at setup and cleanup,
/// never in a timed loop.
static REGISTRY: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
/// Source of registry keys.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Exit status after Ctrl-C or SIGTERM, as shells report a death by SIGINT (128 + 2).
pub const EXIT_INTERRUPTED: i32 = 130;

/// Set by the signal thread before it removes anything. Removing an object can wake the
/// main thread (a System V queue removed under `msgrcv` returns EIDRM), which must not
/// then race the signal thread to exit with its own status: see [`interrupted`].
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a signal is being handled: the process is about to exit with status 130, and
/// whatever the main thread saw since (EIDRM, EOF, EPIPE) is a consequence, not its verdict.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Registers an object this process created; `remove` deletes it.
pub fn own(
    what: impl Into<String>,
    remove: impl FnOnce() -> std::io::Result<()> + Send + 'static,
) -> Owned {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let entry = Entry {
        id,
        what: what.into(),
        remove: Box::new(remove),
    };
    lock().push(entry);
    Owned { id }
}

fn lock() -> std::sync::MutexGuard<'static, Vec<Entry>> {
    // A panic while holding the lock leaves the list intact; keep using it.
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

fn take(id: u64) -> Option<Entry> {
    let mut reg = lock();
    let i = reg.iter().position(|e| e.id == id)?;
    Some(reg.remove(i))
}

/// A registered object. Dropping it removes the object; [`Owned::release`] keeps it.
#[must_use = "dropping the guard removes the object at once"]
#[derive(Debug)]
pub struct Owned {
    /// Registry key.
    id: u64,
}

impl Owned {
    /// Removes the object now (the pair is done) and narrates it.
    pub fn remove(self) -> Result<()> {
        let entry = take(self.id);
        std::mem::forget(self);
        if let Some(e) = entry {
            (e.remove)().with_context(|| format!("removing {}", e.what))?;
            crate::narrate!("removed {}", e.what);
        }
        Ok(())
    }

    /// Removes the object now without narrating it (a lock file: bookkeeping, not a
    /// kernel object the learner made).
    pub fn remove_quietly(self) -> Result<()> {
        let entry = take(self.id);
        std::mem::forget(self);
        if let Some(e) = entry {
            (e.remove)().with_context(|| format!("removing {}", e.what))?;
        }
        Ok(())
    }

    /// Stops owning the object without removing it (the peer will remove it).
    pub fn release(self) {
        let _ = take(self.id);
        std::mem::forget(self);
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(e) = take(self.id) {
            match (e.remove)() {
                Ok(()) => crate::narrate!("removed {}", e.what),
                Err(err) => crate::warn!("could not remove {}: {err}", e.what),
            }
        }
    }
}

/// Removes everything still registered; returns what was removed. Used on the signal path.
pub fn remove_all() -> Vec<String> {
    let entries: Vec<Entry> = std::mem::take(&mut *lock());
    let mut done = Vec::new();
    for e in entries {
        match (e.remove)() {
            Ok(()) => done.push(e.what),
            Err(err) => crate::warn!("could not remove {}: {err}", e.what),
        }
    }
    done
}

/// Starts the thread that turns SIGINT, SIGTERM and SIGHUP into cleanup and exit 130.
pub fn install_signal_handler() -> Result<()> {
    // The flag is set in the handler itself, before the thread below even wakes, so a main
    // thread that an effect of the signal ends first (EPIPE from a reader that is exiting
    // 130 too) already sees `interrupted()` and leaves the exit to this thread.
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        // SAFETY: the action only stores to a static atomic, which is async-signal-safe;
        // signal-hook chains it with the handler `Signals` installs below.
        unsafe {
            signal_hook::low_level::register(sig, || INTERRUPTED.store(true, Ordering::SeqCst))
        }
        .context("installing the interrupted flag")?;
    }
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP]).context("installing SIGINT/SIGTERM handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                let name = match sig {
                    SIGINT => "SIGINT (Ctrl-C)",
                    SIGTERM => "SIGTERM",
                    _ => "SIGHUP",
                };
                INTERRUPTED.store(true, Ordering::SeqCst);
                let removed = remove_all();
                if removed.is_empty() {
                    crate::warn!("interrupted by {name}; nothing of ours to remove");
                } else {
                    crate::warn!("interrupted by {name}; removed {}", removed.join(", "));
                }
                std::process::exit(EXIT_INTERRUPTED);
            }
        })
        .context("spawning the signal thread")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[test]
    fn remove_release_and_drop() {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        own("a", move || {
            h.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .remove()
        .unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 1);

        let h = hits.clone();
        own("b", move || {
            h.fetch_add(10, Ordering::SeqCst);
            Ok(())
        })
        .release();
        assert_eq!(hits.load(Ordering::SeqCst), 1, "release does not remove");

        let h = hits.clone();
        drop(own("c", move || {
            h.fetch_add(100, Ordering::SeqCst);
            Ok(())
        }));
        assert_eq!(hits.load(Ordering::SeqCst), 101, "drop removes");
    }
}
