//! `mmap-writer --demo-truncate`: claim F7 ("a mapped file cannot change its size") shown
//! to be wrong as stated, in one command.
//!
//! The parent maps a two-page file and touches both pages; a child process (sharing the
//! map) calls `ftruncate` to one page, reports through a pipe that it returned 0, and then
//! stores into the second page, which no longer has a file page behind it: the kernel
//! kills it with SIGBUS. A child is used because SIGBUS from a map is fatal.
//!
//! System calls, in order: `open(O_CREAT|O_EXCL, 0600)`, `ftruncate` (two pages), `mmap`,
//! `pipe`, `fork`; child: `ftruncate` (one page), `write` to the pipe, the store that
//! faults; parent: `read` from the pipe, `waitpid`, `fstat` (the new length), `munmap`,
//! `unlink`.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use common::narrate;

use crate::rendezvous::create_file;
use crate::{page_size, Map};

/// Runs the demonstration in the directory of `--path` (else the runtime directory) and
/// prints what happened on stdout; fails if the kernel did not behave as documented.
pub fn demo(path: Option<&Path>) -> Result<ExitCode> {
    let dir = match path {
        Some(p) => {
            crate::check_path(p)?;
            crate::dir_of(p).to_path_buf()
        }
        None => common::runtime::runtime_dir()?,
    };
    narrate!(
        "F7: mapping a two-page file, then a child process truncates it to one page and touches the second page"
    );
    let out = truncate_while_mapped(&dir)?;
    println!(
        "ftruncate on the mapped file: {}",
        if out.ftruncate_succeeded {
            "succeeded (returned 0)"
        } else {
            "failed"
        }
    );
    println!("file length afterwards: {} bytes", out.len_after);
    println!(
        "child that touched the page past the new end: {}",
        out.child
    );
    println!(
        "so F7 is imprecise: a mapped file can change size; what breaks is access to pages past the end (SIGBUS)"
    );
    if out.ftruncate_succeeded && out.sigbus {
        Ok(ExitCode::SUCCESS)
    } else {
        bail!("the demonstration did not go as the kernel documents: {out:?}")
    }
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
    use nix::unistd::{fork, pipe, ForkResult};

    let page = page_size();
    let path = dir.join(format!("f7-demo-{}.map", std::process::id()));
    let (file, owned) = create_file(&path, 2 * page as u64)?;
    // The child's SIGBUS handler names the file and leaves it: the parent removes it.
    let ino = std::os::unix::fs::MetadataExt::ino(&file.metadata().context("fstat")?);
    let leave = " for the parent process of this demonstration, which removes it";
    crate::sigbus::watch(
        "F7 demonstration file",
        &path,
        ino,
        2 * page as u64,
        false,
        leave,
    );
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
            let (child, sigbus) = how_it_ended(child)?;
            let len_after = file.metadata().context("fstat")?.len();
            drop(map);
            drop(file);
            owned.remove()?;
            Ok(TruncateOutcome {
                ftruncate_succeeded: got == 1 && b[0] == b'T',
                len_after,
                child,
                sigbus,
            })
        }
    }
}

/// `waitpid` for the child: how it ended, and whether that was SIGBUS.
fn how_it_ended(child: nix::unistd::Pid) -> Result<(String, bool)> {
    use nix::sys::signal::Signal;
    use nix::sys::wait::{waitpid, WaitStatus};
    Ok(match waitpid(child, None).context("waitpid")? {
        WaitStatus::Signaled(_, sig, _) => (format!("killed by {sig:?}"), sig == Signal::SIGBUS),
        WaitStatus::Exited(_, code) => (format!("exited with status {code}"), false),
        other => (format!("{other:?}"), false),
    })
}
