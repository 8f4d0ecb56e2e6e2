//! Byte streams (pipe, FIFO, TCP, Unix stream, stdin): one-call wrappers for the role files.
//!
//! A byte stream keeps no message boundaries (K5), so a frame leaves as its header and
//! payload in one `writev(2)` and arrives through a [`Reassembler`] that finds the frames
//! in whatever each `read(2)` returned. The pipe and the FIFO also share the capacity
//! calls (`F_GETPIPE_SZ`, `F_SETPIPE_SZ`) and the non-blocking write that notices a full
//! pipe (P6) instead of just stalling in it.

mod full;
pub use full::FullWatch;

use std::io::{self, BufRead, IoSlice, Read, Write};
use std::os::fd::BorrowedFd;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};

use crate::frame::Reassembler;
use crate::session::Outgoing;

/// Whether a frame left, or the peer had already gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The kernel took the whole frame.
    Sent,
    /// The peer is gone (EPIPE, connection reset): an expected end, not a bug.
    PeerGone,
}

/// `writev(2)` of one frame: header and payload in one call, continued from where the
/// kernel stopped after a short write, so a frame is never interleaved or resent in part.
/// See [writev(2)](https://man7.org/linux/man-pages/man2/writev.2.html).
pub fn writev<W: Write>(w: &mut W, frame: Outgoing<'_>) -> Result<Delivery> {
    let (mut bufs, n) = frame.iovecs();
    let mut slices: &mut [IoSlice<'_>] = &mut bufs[..n];
    while !slices.is_empty() {
        match w.write_vectored(slices) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)).context("writev"),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            // A blocking descriptor never answers EAGAIN; a non-blocking one is FullWatch's.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return gone_or(e, "writev"),
        }
    }
    Ok(Delivery::Sent)
}

/// `read(2)` once into the reassembler's free space: the count, 0 at end of stream.
/// A connection reset by the peer counts as the end too: the reader then tells a clean
/// end from a truncated one by whether End came. EINTR is retried.
/// See [read(2)](https://man7.org/linux/man-pages/man2/read.2.html).
pub fn read<R: Read>(r: &mut R, frames: &mut Reassembler) -> Result<usize> {
    loop {
        match r.read(frames.spare()) {
            Ok(n) => {
                frames.filled(n);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(0),
            Err(e) => return Err(e).context("read"),
        }
    }
}

/// Text mode's input: reads one line of stdin (`read(2)` blocks until a line is typed)
/// into `line`; `None` at end of input (Ctrl-D).
pub fn read_line<'a, R: BufRead>(stdin: &mut R, line: &'a mut Vec<u8>) -> Result<Option<&'a [u8]>> {
    line.clear();
    let n = stdin.read_until(b'\n', line).context("reading stdin")?;
    Ok((n > 0).then_some(&line[..]))
}

/// EPIPE and a reset connection mean the peer is gone: a value, not an error.
fn gone_or(e: io::Error, call: &'static str) -> Result<Delivery> {
    match e.kind() {
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => Ok(Delivery::PeerGone),
        _ => Err(e).context(call),
    }
}

/// Largest pipe capacity an unprivileged process may set (`/proc/sys/fs/pipe-max-size`).
pub fn pipe_max_size() -> Result<usize> {
    let s = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .context("reading /proc/sys/fs/pipe-max-size")?;
    s.trim()
        .parse()
        .with_context(|| format!("parsing /proc/sys/fs/pipe-max-size: {s:?}"))
}

/// The capacity of a pipe or FIFO: `fcntl(F_GETPIPE_SZ)`.
pub fn capacity(fd: BorrowedFd<'_>) -> Result<usize> {
    let n = fcntl(fd, FcntlArg::F_GETPIPE_SZ).context("fcntl F_GETPIPE_SZ")?;
    Ok(n as usize)
}

/// Sets the capacity of a pipe or FIFO: `fcntl(fd, F_SETPIPE_SZ, bytes)`. The kernel
/// rounds up to a power of two pages and returns what it chose. Above `pipe-max-size` it
/// fails with EPERM unless the process has CAP_SYS_RESOURCE; the error says so.
pub fn set_capacity(fd: BorrowedFd<'_>, bytes: usize) -> Result<usize> {
    let arg = i32::try_from(bytes).context("--pipe-size does not fit in an int")?;
    match fcntl(fd, FcntlArg::F_SETPIPE_SZ(arg)) {
        Ok(n) => Ok(n as usize),
        Err(Errno::EPERM) => anyhow::bail!(
            "fcntl F_SETPIPE_SZ {bytes}: EPERM: above /proc/sys/fs/pipe-max-size ({}) only a privileged process may grow a pipe",
            pipe_max_size().unwrap_or(1 << 20)
        ),
        Err(Errno::EBUSY) => anyhow::bail!(
            "fcntl F_SETPIPE_SZ {bytes}: EBUSY: the pipe holds more data than the new size"
        ),
        Err(e) => Err(e).with_context(|| format!("fcntl F_SETPIPE_SZ {bytes}")),
    }
}

/// Checks `--pipe-size` against 4 KiB and `/proc/sys/fs/pipe-max-size`, before any pipe
/// exists; the error names the flag, the range and where the upper limit comes from.
pub fn check_pipe_size(bytes: Option<usize>) -> Result<()> {
    if let Some(bytes) = bytes {
        let max = pipe_max_size()?;
        if !(4096..=max).contains(&bytes) {
            return Err(crate::cli::bad_flag(format!(
                "--pipe-size {bytes} is out of range: 4096 to {max} bytes (/proc/sys/fs/pipe-max-size)"
            )));
        }
    }
    Ok(())
}
