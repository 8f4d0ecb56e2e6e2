//! Byte streams (pipe, FIFO, TCP, Unix stream, stdin): one-call wrappers for the role files.
//!
//! A byte stream keeps no message boundaries (K5), so a frame leaves as its header and
//! payload in one `writev(2)` and arrives through a [`Reassembler`] that finds the frames
//! in whatever each `read(2)` returned. The pipe and the FIFO also share the capacity
//! calls (`F_GETPIPE_SZ`, `F_SETPIPE_SZ`) and the non-blocking write that notices a full
//! pipe (P6) instead of just stalling in it.

use std::io::{self, BufRead, IoSlice, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};

use crate::frame::Reassembler;
use crate::narrate;
use crate::session::Outgoing;
use crate::stall::Stall;

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
    writev_or(w, frame, |_| {
        // A blocking descriptor never answers EAGAIN; a non-blocking one belongs in FullWatch.
        Err(io::Error::from(io::ErrorKind::WouldBlock)).context("writev")
    })
}

/// The writev loop; `full` is what to do when a non-blocking descriptor has no room.
fn writev_or<W: Write>(
    w: &mut W,
    frame: Outgoing<'_>,
    mut full: impl FnMut(&mut W) -> Result<()>,
) -> Result<Delivery> {
    let (mut bufs, n) = frame.iovecs();
    let mut slices: &mut [IoSlice<'_>] = &mut bufs[..n];
    while !slices.is_empty() {
        match w.write_vectored(slices) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)).context("writev"),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => full(w)?,
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

/// A writer that notices a full pipe (P6): its descriptor is non-blocking, so a `writev`
/// that finds no room returns EAGAIN instead of sleeping; the writer counts that, says so
/// the first time, and waits in `poll(2)` until the reader has made room. A wait longer
/// than half a second is narrated as it starts and as it ends ([`Stall`]), so stopping
/// the reader (`kill -STOP`) shows the writer blocked.
#[derive(Debug)]
pub struct FullWatch {
    /// What the buffer is called in narration ("pipe", "FIFO").
    what: &'static str,
    /// The claim a full buffer shows: P6 for a pipe, N7 for a FIFO.
    claim: &'static str,
    /// The waits, counted and narrated.
    pub stall: Stall,
}

impl FullWatch {
    /// Makes `fd` non-blocking (`fcntl(F_SETFL, O_NONBLOCK)`) and starts counting;
    /// `what` names the buffer and `claim` the note's claim in the narration ("pipe",
    /// "P6"; "FIFO", "N7").
    pub fn new(fd: BorrowedFd<'_>, what: &'static str, claim: &'static str) -> Result<FullWatch> {
        let flags = fcntl(fd, FcntlArg::F_GETFL).context("fcntl F_GETFL")?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(fd, FcntlArg::F_SETFL(flags)).context("fcntl F_SETFL O_NONBLOCK")?;
        let (now, then) = match what {
            "FIFO" => ("the FIFO is full", "the FIFO was full"),
            _ => ("the pipe is full", "the pipe was full"),
        };
        Ok(FullWatch {
            what,
            claim,
            stall: Stall::new("write()", now, then, claim),
        })
    }

    /// `writev(2)` of one frame on the non-blocking descriptor: what fits goes at once;
    /// on EAGAIN the pipe is full, and `poll(POLLOUT)` sleeps until there is room again.
    pub fn writev<W: Write + AsFd>(&mut self, w: &mut W, frame: Outgoing<'_>) -> Result<Delivery> {
        writev_or(w, frame, |w| self.wait_for_room(w.as_fd()))
    }

    /// Waits with poll(2) until the descriptor has room again.
    fn wait_for_room(&mut self, fd: BorrowedFd<'_>) -> Result<()> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        if self.stall.episodes() == 0 {
            narrate!(
                "the {} is full: {} would block here until the reader reads ({}); waiting in poll()",
                self.what,
                self.stall.call(),
                self.claim
            );
        }
        self.stall.begin();
        let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
        loop {
            let timeout = match self.stall.until_tell() {
                // Wake up to say "blocked" once the wait is long enough to tell.
                Some(d) => {
                    PollTimeout::try_from(d.as_millis().max(1) as i32).unwrap_or(PollTimeout::NONE)
                }
                None => PollTimeout::NONE,
            };
            match poll(&mut fds, timeout) {
                Ok(0) => self.stall.tick(),
                Ok(_) => {
                    self.stall.end();
                    return Ok(());
                }
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e).context("poll POLLOUT"),
            }
        }
    }

    /// How many times a write found the buffer full and waited.
    pub fn blocked(&self) -> u64 {
        self.stall.episodes()
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
