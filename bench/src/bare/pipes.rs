//! Bare pipe and FIFO loops: `write(2)` and `read(2)`, nothing else (as `stream_pingpong.c
//! pipe` and `pipe_bw.c rw`).
//!
//! - `pipe`: `pipe(2)` before `fork`, so both processes inherit the ends: one pipe for a
//!   stream, two for pingpong (there and back, P5).
//! - `fifo`: the same through two paths made with `mkfifo(3)` in a private directory, so
//!   each end is opened by name as `named-pipe` does. Both ends are opened before `fork`
//!   (the read end first with `O_NONBLOCK`, which a FIFO allows without a writer, then the
//!   write end, which then does not block; N7), then the read end is made blocking again
//!   and the paths are removed: the processes keep an open FIFO, nothing stays on disk.
//!   After `open` the kernel path is the pipe's (the same `pipe_inode_info`, the same
//!   `pipe_read`/`pipe_write`), so the two loops should measure the same; the FIFO's is
//!   here so that the named-pipe row is compared with a loop that really opened a FIFO.
//!
//! A stream's data pipe takes `--pipe-size` (`F_SETPIPE_SZ`), as the bench's pipe and FIFO
//! streams ask for 1 MiB.
//!
//! - `pipe-vmsplice` (stream only): the writer hands its pages to the pipe with
//!   `vmsplice(2)` instead of copying them in, alternating between two message-sized
//!   buffers, in a pipe sized to one message (so a buffer's pages have been read before it is
//!   used again), and the reader `read`s: one copy, as `pipe_bw.c vms_read` does. It is the
//!   bare loop of `pipe-writer --splice`.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use anyhow::{Context, Result};
use common::cli::Mode;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::stat::Mode as Perm;

use super::{byte_pingpong, byte_stream, Bare, Kind, Spec};

/// Runs the pipe or FIFO loop of `spec`.
pub fn run(spec: &Spec) -> Result<Bare> {
    let pipes = if spec.mode == Mode::Pingpong { 2 } else { 1 };
    let mut ends: Vec<(File, File)> = Vec::new();
    match spec.kind {
        Kind::Fifo => {
            // A fresh directory only this user can enter, for the two paths.
            let dir = std::env::temp_dir().join(format!("ipc-study-bare-{}", std::process::id()));
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .with_context(|| format!("mkdir {} 0700", dir.display()))?;
            let made: Result<Vec<(File, File)>> = (0..pipes)
                .map(|i| fifo(&dir.join(format!("fifo{i}"))))
                .collect();
            // Whatever happened, the paths and the directory go: the open ends live on.
            let _ = std::fs::remove_dir_all(&dir);
            ends = made?;
        }
        _ => {
            for _ in 0..pipes {
                let (r, w) = nix::unistd::pipe().context("pipe")?;
                ends.push((File::from(r), File::from(w)));
            }
        }
    }
    let capacity = match spec.pipe_size {
        Some(bytes) => {
            let bytes = i32::try_from(bytes).context("--pipe-size")?;
            fcntl(ends[0].1.as_fd(), FcntlArg::F_SETPIPE_SZ(bytes))
                .with_context(|| format!("fcntl F_SETPIPE_SZ {bytes}"))?
        }
        None => fcntl(ends[0].1.as_fd(), FcntlArg::F_GETPIPE_SZ).context("fcntl F_GETPIPE_SZ")?,
    };
    let what = if spec.kind == Kind::Fifo {
        "FIFO"
    } else {
        "pipe"
    };
    if spec.mode == Mode::Pingpong {
        let setup = format!("two {what}s ({capacity} bytes each)");
        let (there, back) = (ends.remove(0), ends.remove(0));
        // Parent: writes `there`, reads `back`; child: reads `there`, writes `back`.
        byte_pingpong(spec, setup, (there.1, back.0), (there.0, back.1))
    } else {
        let setup = format!("one {what} of {capacity} bytes");
        let (r, w) = ends.remove(0);
        byte_stream(spec, setup, w, r)
    }
}

/// `mkfifo(path, 0600)`, then both ends opened in this process (read end first, with
/// `O_NONBLOCK` so that it does not wait for a writer), the read end made blocking again.
fn fifo(path: &Path) -> Result<(File, File)> {
    nix::unistd::mkfifo(path, Perm::S_IRUSR | Perm::S_IWUSR)
        .with_context(|| format!("mkfifo {}", path.display()))?;
    let r: OwnedFd = nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Perm::empty(),
    )
    .with_context(|| format!("open {} O_RDONLY|O_NONBLOCK", path.display()))?;
    let w: OwnedFd = nix::fcntl::open(path, OFlag::O_WRONLY | OFlag::O_CLOEXEC, Perm::empty())
        .with_context(|| format!("open {} O_WRONLY", path.display()))?;
    fcntl(r.as_fd(), FcntlArg::F_SETFL(OFlag::empty()))
        .with_context(|| format!("fcntl F_SETFL {} (blocking reads)", path.display()))?;
    Ok((File::from(r), File::from(w)))
}

/// The `pipe-vmsplice` stream: `vmsplice` from two alternating buffers into a pipe of one
/// message's size (`--pipe-size` overrides it), `read` on the other side.
pub fn vmsplice(spec: &Spec) -> Result<Bare> {
    if spec.mode != Mode::Stream {
        anyhow::bail!("pipe-vmsplice is a stream loop (pipe_bw.c has no vmsplice pingpong)");
    }
    let (r, w) = nix::unistd::pipe().context("pipe")?;
    let want =
        i32::try_from(spec.pipe_size.unwrap_or(spec.size).max(4096)).context("--pipe-size")?;
    let capacity = fcntl(w.as_fd(), FcntlArg::F_SETPIPE_SZ(want))
        .with_context(|| format!("fcntl F_SETPIPE_SZ {want}"))?;
    let setup = format!(
        "one pipe of {capacity} bytes, vmsplice from two alternating {}-byte buffers",
        spec.size
    );
    // Two halves, written once: the pages are lent to the pipe, never changed after.
    let bufs = vec![b'x'; 2 * spec.size];
    let w = File::from(w);
    let mut half = 0usize;
    let send = move |_| -> Result<()> {
        let mut at = half * spec.size;
        let end = at + spec.size;
        half ^= 1;
        while at < end {
            let iov = libc::iovec {
                iov_base: bufs[at..].as_ptr() as *mut libc::c_void,
                iov_len: end - at,
            };
            // SAFETY: one iovec over `bufs[at..end]`, alive for the whole run (the closure
            // owns it) and never written after it was filled; `w` is the pipe's write end.
            let n = unsafe { libc::vmsplice(std::os::fd::AsRawFd::as_raw_fd(&w), &iov, 1, 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e).context("vmsplice");
            }
            at += n as usize;
        }
        Ok(())
    };
    let total = (spec.warmup() + spec.count) * spec.size as u64;
    let mut rx = File::from(r);
    let mut cbuf = vec![0u8; spec.size];
    super::stream(
        spec,
        setup,
        move || {
            use std::io::Read;
            let mut got = 0u64;
            while got < total {
                let n = match rx.read(&mut cbuf) {
                    Ok(0) => anyhow::bail!("read: end of file after {got} of {total} bytes"),
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e).context("read"),
                };
                got += n as u64;
            }
            Ok(())
        },
        send,
    )
}
