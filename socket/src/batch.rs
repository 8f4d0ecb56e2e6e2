//! `socket-writer --batch BYTES` (stream mode): several frames per `writev(2)`.
//!
//! **A first reading may skip this file.** By default each frame leaves in its own
//! `write` (header and payload back to back), which is what the bare loop does with its 64 KiB writes
//! and what makes K5 visible: the reader's `read`s never line up with the writer's calls.
//! With `--batch`, once the reader has answered the Hello, the writer builds frames into
//! several buffers in turn until they hold at least `BYTES` (at most [`MAX_FRAMES`]
//! frames, or the End frame), and hands the kernel all their iovecs in one `writev`.
//!
//! What it changes, counted per 64 KiB over TCP loopback (`perf stat` on the syscall and
//! `net:net_dev_xmit` tracepoints, the package README has the table): the write calls
//! (1 per frame, 0.25 with `--batch 256K`); and the packets. Loopback's segments carry
//! 65,483 bytes (MTU 65,536), so a 65,576-byte frame is one full segment and a 93-byte
//! tail, and with `TCP_NODELAY` each tail leaves on its own and is acknowledged; four
//! frames in one call make four full segments and one tail. What it costs: the first
//! frame of a batch waits for the others to be built before it leaves (its one-way latency
//! grows by their build time), and the buffers take `K` frames of memory, flat in
//! `--count`. Text and pingpong never batch: each of their frames is waited for.

use std::io::{self, IoSlice, Write};

use anyhow::{bail, Context, Result};
use common::cli::{bad_flag, Mode};
use common::frame::{Kind, HEADER_LEN};
use common::session::{FrameBuf, Next, WriterSession};
use common::stream::Delivery;

use crate::Stream;

/// Most frames in one `writev`: two iovecs each, and IOV_MAX is 1024 on Linux.
pub const MAX_FRAMES: usize = 512;

/// `--batch` in stream mode only (clap has checked its value: 1 byte to 16 MiB): another
/// mode is a bad flag (exit 2) naming the flag and the mode, before any socket exists.
pub fn check(batch: Option<usize>, mode: Mode) -> Result<()> {
    match batch {
        Some(_) if mode != Mode::Stream => Err(bad_flag(format!(
            "--batch works with --mode stream only, and this run is --mode {}: \
             drop --batch (each of this mode's frames is waited for, so it leaves alone)",
            mode.as_str()
        ))),
        _ => Ok(()),
    }
}

/// The frames of one `writev`: `K` buffers the session builds into in turn.
#[derive(Debug)]
pub struct Batch {
    /// One buffer per frame of a batch.
    bufs: Vec<FrameBuf>,
    /// `--batch`: bytes a batch gathers before it is sent.
    limit: usize,
}

impl Batch {
    /// Buffers for batches of at least `limit` bytes of frames of `size` payload bytes:
    /// `K = ceil(limit / frame)` of them, 1 to [`MAX_FRAMES`].
    pub fn new(limit: usize, size: usize) -> Batch {
        let k = limit.div_ceil(HEADER_LEN + size).clamp(1, MAX_FRAMES);
        Batch {
            bufs: (0..k).map(|_| FrameBuf::new()).collect(),
            limit,
        }
    }

    /// Frames per `writev` (the last batch may hold fewer).
    pub fn frames(&self) -> usize {
        self.bufs.len()
    }

    /// The report's note on it.
    pub fn note(&self) -> String {
        format!(
            "--batch {}: up to {} frames per writev()",
            self.limit,
            self.frames()
        )
    }

    /// The rest of a stream, after the Hello's answer: batch after batch until the session
    /// is done. `PeerGone` if the reader went away (EPIPE, ECONNRESET).
    pub fn send_rest(&mut self, session: &mut WriterSession, conn: &Stream) -> Result<Delivery> {
        loop {
            let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(2 * self.bufs.len());
            let (mut bytes, mut done) = (0, false);
            for buf in self.bufs.iter_mut() {
                match session.next(buf)? {
                    Next::Send(out) => {
                        let (v, n) = out.iovecs();
                        iov.extend_from_slice(&v[..n]);
                        bytes += out.len();
                        if bytes >= self.limit || out.kind != Kind::Data {
                            break;
                        }
                    }
                    Next::Done => {
                        done = true;
                        break;
                    }
                    Next::AwaitAnswer | Next::NeedLine => {
                        bail!("--batch runs stream mode only, and the session asked for an answer or a line")
                    }
                }
            }
            if write_all(conn, &mut iov)? == Delivery::PeerGone {
                return Ok(Delivery::PeerGone);
            }
            if done {
                return Ok(Delivery::Sent);
            }
        }
    }
}

/// `writev(2)` of all of `iov`, continued after a short count, so no frame is interleaved
/// or resent in part. EPIPE and a reset: the reader is gone.
fn write_all(mut conn: &Stream, iov: &mut [IoSlice<'_>]) -> Result<Delivery> {
    let mut slices = iov;
    while !slices.is_empty() {
        match conn.write_vectored(slices) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)).context("writev"),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                return Ok(Delivery::PeerGone)
            }
            Err(e) => return Err(e).context("writev"),
        }
    }
    Ok(Delivery::Sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_frames_hold_at_least_the_batch_and_at_most_max_frames() {
        assert_eq!(Batch::new(256 * 1024, 65536).frames(), 4);
        assert_eq!(Batch::new(262_304, 65536).frames(), 4);
        assert_eq!(Batch::new(262_305, 65536).frames(), 5);
        assert_eq!(Batch::new(1, 65536).frames(), 1);
        assert_eq!(Batch::new(256 * 1024, 64).frames(), MAX_FRAMES);
        assert_eq!(Batch::new(1 << 20, 1 << 20).frames(), 1);
    }

    #[test]
    fn batch_is_for_stream_mode_only() {
        assert!(check(Some(1024), Mode::Stream).is_ok());
        assert!(check(None, Mode::Pingpong).is_ok());
        let e = check(Some(1024), Mode::Pingpong).unwrap_err().to_string();
        assert!(e.contains("--batch works with --mode stream only"), "{e}");
        assert!(e.contains("--mode pingpong"), "{e}");
    }
}
