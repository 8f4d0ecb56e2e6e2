//! Byte streams (pipe, FIFO, TCP, Unix stream, stdin): one-call wrappers for the role files.
//!
//! A byte stream keeps no message boundaries (K5), so a frame leaves in one call
//! (`write(2)`, or `writev(2)` of header and payload where they lie apart) and arrives through a [`Reassembler`] that finds the frames
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

/// One frame in one call, continued from where the kernel stopped after a short write, so
/// a frame is never interleaved or resent in part: `write(2)` of a frame that is one piece
/// ([`Outgoing::pieces`]: every frame a writer session builds), `writev(2)` of header and
/// payload when they lie apart (a reader's Pong, whose payload is the received Ping's),
/// except that a short one ([`JOIN_MAX`] bytes or less, header included) is copied into
/// one piece first.
/// Why: a 64 B round trip over a Unix socket took 0.5-7 us longer with `writev` of two
/// pieces than with `write` of one, over a pipe about 0.4 us (BENCHMARKS.md, "One piece per
/// frame").
/// See [write(2)](https://man7.org/linux/man-pages/man2/write.2.html),
/// [writev(2)](https://man7.org/linux/man-pages/man2/writev.2.html).
pub fn write_frame<W: Write>(w: &mut W, frame: Outgoing<'_>) -> Result<Delivery> {
    let mut joined;
    let (mut bufs, n) = match frame.whole.is_none() && frame.len() <= JOIN_MAX {
        true => {
            joined = [0u8; JOIN_MAX];
            let (header, payload) = joined[..frame.len()].split_at_mut(frame.header.len());
            header.copy_from_slice(frame.header);
            payload.copy_from_slice(frame.payload);
            ([IoSlice::new(&joined[..frame.len()]), IoSlice::new(&[])], 1)
        }
        false => frame.pieces(),
    };
    let mut slices: &mut [IoSlice<'_>] = &mut bufs[..n];
    while !slices.is_empty() {
        let call = call_name(slices);
        match write_pieces(w, slices) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)).context(call),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            // A blocking descriptor never answers EAGAIN; a non-blocking one is FullWatch's.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return gone_or(e, call),
        }
    }
    Ok(Delivery::Sent)
}

/// Frames up to this many bytes, header included (payloads up to 984 bytes), that are in
/// two pieces are copied into one before they are sent (a copy of 1 KiB costs less than
/// what `writev` adds).
pub const JOIN_MAX: usize = 1024;

/// `write(2)` of one piece, `writev(2)` of more: the same bytes as a `writev` of one
/// piece, by the kernel's shorter path.
fn write_pieces<W: Write>(w: &mut W, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    match slices {
        [one] => w.write(one),
        _ => w.write_vectored(slices),
    }
}

/// The call [`write_pieces`] makes for `slices`, for an error's context.
fn call_name(slices: &[IoSlice<'_>]) -> &'static str {
    match slices.len() {
        1 => "write",
        _ => "writev",
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Kind, HEADER_LEN};

    /// Records each call as what it was (`write` or `writev` and its pieces) and takes at
    /// most `max` bytes a call, as a full pipe or socket buffer would.
    struct Calls {
        max: usize,
        calls: Vec<(&'static str, usize)>,
        bytes: Vec<u8>,
    }

    impl Write for Calls {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.max);
            self.calls.push(("write", 1));
            self.bytes.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls.push(("writev", bufs.len()));
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.max - n);
                self.bytes.extend_from_slice(&b[..take]);
                n += take;
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn sent(frame: Outgoing<'_>, max: usize) -> Calls {
        let mut w = Calls {
            max,
            calls: Vec::new(),
            bytes: Vec::new(),
        };
        assert_eq!(write_frame(&mut w, frame).unwrap(), Delivery::Sent);
        assert_eq!(
            w.bytes,
            frame.to_vec(),
            "the bytes of the frame, in order, once"
        );
        w
    }

    #[test]
    fn a_frame_in_one_piece_leaves_in_one_write_at_any_size() {
        for len in [0, 64, JOIN_MAX, 65536] {
            let bytes: Vec<u8> = (0..HEADER_LEN + len).map(|i| i as u8).collect();
            let frame = Outgoing::from_bytes(Kind::Data, &bytes).unwrap();
            assert_eq!(sent(frame, usize::MAX).calls, [("write", 1)], "{len} B");
        }
    }

    #[test]
    fn a_short_frame_in_two_pieces_is_joined_and_a_long_one_goes_by_writev() {
        let header = [7u8; HEADER_LEN];
        let payload: Vec<u8> = (0..70_000).map(|i| (i * 31) as u8).collect();
        for len in [
            1,
            64,
            JOIN_MAX - HEADER_LEN,
            JOIN_MAX - HEADER_LEN + 1,
            65536,
        ] {
            let frame = Outgoing {
                kind: Kind::Pong,
                header: &header,
                payload: &payload[..len],
                whole: None,
            };
            let want = match HEADER_LEN + len <= JOIN_MAX {
                true => ("write", 1),
                false => ("writev", 2),
            };
            assert_eq!(sent(frame, usize::MAX).calls, [want], "{len} B");
        }
    }

    #[test]
    fn a_short_count_is_continued_where_the_kernel_stopped() {
        let header = [9u8; HEADER_LEN];
        let payload: Vec<u8> = (0..5000).map(|i| i as u8).collect();
        let two = Outgoing {
            kind: Kind::Pong,
            header: &header,
            payload: &payload,
            whole: None,
        };
        // 5040 bytes, 1000 a call: six calls, the first in two pieces, then the payload's rest.
        let w = sent(two, 1000);
        assert_eq!(w.calls.len(), 6);
        assert_eq!(w.calls[0], ("writev", 2));
        assert!(
            w.calls[1..].iter().all(|c| *c == ("write", 1)),
            "{:?}",
            w.calls
        );
        let bytes = two.to_vec();
        let one = Outgoing::from_bytes(Kind::Data, &bytes).unwrap();
        assert_eq!(sent(one, 1000).calls, [("write", 1); 6]);
        // A short Pong, joined into one piece, 50 bytes a call: 104 bytes in three writes.
        let short = Outgoing {
            payload: &payload[..64],
            ..two
        };
        assert_eq!(sent(short, 50).calls, [("write", 1); 3]);
    }
}
