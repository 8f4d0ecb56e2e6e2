//! A full pipe, noticed (P6, N7): the write end is non-blocking, so a write that finds no
//! room comes back instead of sleeping, and the writer sleeps in `poll(2)` instead, where
//! it can count the wait and narrate a long one. Used by `pipe-writer` and by the FIFO's
//! writer (a FIFO is a pipe with a name), with `write(2)` (a frame a writer session built
//! is one piece) or, with `--splice`, `vmsplice(2)`.
//!
//! ## What noticing costs
//! A blocking `write` makes one call per frame, full pipe or not: it sleeps inside the call.
//! [`FullWatch`] makes the same one call per frame while the pipe has room: `O_NONBLOCK` is
//! set once, at the start ([`FullWatch::new`]), and nothing is polled or asked before a
//! write. When the pipe fills in the middle of a frame it makes two more: the `poll` that
//! sleeps until the reader has read, and the `write` of the rest of the frame.
//!
//! It does not make a third. On Linux a non-blocking write to a pipe returns fewer bytes
//! than it was given only when the pipe ran out of room (or the last reader left, which
//! the next call reports as EPIPE): `pipe_write` in fs/pipe.c copies page after page and
//! stops, with the count so far, when no slot is free. So for a pipe or FIFO a short count
//! *is* the news that it is full, and the writer goes to `poll` straight away. (Asking
//! again, to be told EAGAIN, costs a call per full pipe and says nothing new.) `vmsplice` with `SPLICE_F_NONBLOCK` answers the same way.
//! EAGAIN itself still comes when a frame starts on a pipe that is already full, and is
//! waited for the same way. Anything else on `pipe-writer`'s stdout (a file, a socket:
//! `fstat` tells, once) keeps the old rule: after a short count it simply writes the rest.
//!
//! Counted with `perf stat -e 'syscalls:sys_enter_*'` on a 64 KiB stream through a 1 MiB
//! pipe, both programs on one CPU (`taskset -c 1`), so that the writer fills the pipe before
//! the reader runs, once per megabyte, every 16 frames: 1.12 `writev` and 0.06 `poll` per
//! frame with the EAGAIN call, 1.06 and 0.06 without (3 calls more per full pipe than a
//! blocking writer, now 2); a blocking writer makes 1.00 `write`. (Counted when a frame
//! left as two pieces in a `writev`; it is one `write` now, the same count.) In pingpong
//! the pipe never fills: one `write` per frame, no `poll`. The package README has the table.
//!
//! See [pipe(7)](https://man7.org/linux/man-pages/man7/pipe.7.html) ("O_NONBLOCK enabled,
//! n > PIPE_BUF: ... a partial write may occur") and poll(2).

use std::io::{self, IoSlice, Write};
use std::os::fd::{AsFd, BorrowedFd};

use super::Delivery;
use crate::narrate;
use crate::session::Outgoing;
use crate::stall::Stall;
use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::stat::{fstat, SFlag};

/// A writer that notices a full pipe (P6) or FIFO (N7): it counts each wait, says so the
/// first time, and sleeps in `poll(2)` until the reader has made room. A wait longer than
/// half a second is narrated as it starts and as it ends ([`Stall`]), so stopping the
/// reader (`kill -STOP`) shows the writer blocked.
#[derive(Debug)]
pub struct FullWatch {
    /// What the buffer is called in narration ("pipe", "FIFO").
    what: &'static str,
    /// The claim a full buffer shows: P6 for a pipe, N7 for a FIFO.
    claim: &'static str,
    /// The waits, counted and narrated (`vmsplice()`'s with pipe's `--splice`).
    pub stall: Stall,
    /// The descriptor is a pipe or FIFO, so a short write means it is full.
    short_is_full: bool,
}

impl FullWatch {
    /// Makes `fd` non-blocking (`fcntl(F_GETFL)`, `fcntl(F_SETFL, O_NONBLOCK)`: the only
    /// `fcntl` calls, once), looks at what it is (`fstat`) and starts counting; `what`
    /// names the buffer and `claim` the claim in the narration ("pipe", "P6"; "FIFO", "N7").
    pub fn new(fd: BorrowedFd<'_>, what: &'static str, claim: &'static str) -> Result<FullWatch> {
        let st = fstat(fd).context("fstat")?;
        let short_is_full = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFIFO;
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
            short_is_full,
        })
    }

    /// `write(2)` of one frame on the non-blocking descriptor (`writev(2)` if header and
    /// payload lie apart, [`Outgoing::pieces`]), or `vmsplice(2)` through a writer whose
    /// `write` is `vmsplice` (pipe's `--splice`): what fits goes at once; a short count or
    /// EAGAIN means the pipe is full, and `poll(POLLOUT)` sleeps until there is room for the
    /// rest. The frame is never interleaved or resent in part. EPIPE: the reader is gone.
    pub fn write_frame<W: Write + AsFd>(
        &mut self,
        w: &mut W,
        frame: Outgoing<'_>,
    ) -> Result<Delivery> {
        let (mut bufs, n) = frame.pieces();
        let mut slices: &mut [IoSlice<'_>] = &mut bufs[..n];
        while !slices.is_empty() {
            let call = super::call_name(slices);
            match super::write_pieces(w, slices) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)).context(call),
                Ok(n) => {
                    IoSlice::advance_slices(&mut slices, n);
                    // Short: the pipe filled mid-frame. Wait now, not after an EAGAIN.
                    if !slices.is_empty() && self.short_is_full {
                        self.wait_for_room(w.as_fd())?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait_for_room(w.as_fd())?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return match e.kind() {
                        io::ErrorKind::BrokenPipe => Ok(Delivery::PeerGone),
                        _ => Err(e).context(call),
                    }
                }
            }
        }
        Ok(Delivery::Sent)
    }

    /// Sleeps in poll(2) until the descriptor has room again (or no reader is left, which
    /// poll reports as POLLERR and the next write as EPIPE).
    fn wait_for_room(&mut self, fd: BorrowedFd<'_>) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::super::set_capacity;
    use super::*;
    use crate::frame::{encode_header, Fields, Kind, HEADER_LEN};
    use std::fs::File;
    use std::io::Read;

    /// A pipe's write end that counts the calls made on it and the EAGAINs among them.
    struct Counting {
        pipe: File,
        calls: usize,
        eagain: usize,
    }

    /// A pipe of one page (4096 bytes): the read end, and the write end counting its calls.
    fn one_page_pipe() -> (std::os::fd::OwnedFd, Counting) {
        let (r, w) = nix::unistd::pipe().unwrap();
        set_capacity(w.as_fd(), 4096).unwrap();
        let w = Counting {
            pipe: File::from(w),
            calls: 0,
            eagain: 0,
        };
        (r, w)
    }

    /// The header of Data frame 0 carrying `payload`.
    fn data_header(payload: &[u8]) -> [u8; HEADER_LEN] {
        let f = Fields {
            kind: Kind::Data,
            flags: 0,
            nonce: 1,
            seq: 0,
            sent_ns: 0,
        };
        encode_header(f, payload).unwrap()
    }

    /// That frame in two pieces, header and payload (as a reader's Pong is; a writer
    /// session hands out one piece, `Outgoing::from_bytes`).
    fn data_frame<'a>(header: &'a [u8; HEADER_LEN], payload: &'a [u8]) -> Outgoing<'a> {
        Outgoing {
            kind: Kind::Data,
            header,
            payload,
            whole: None,
        }
    }

    impl Write for Counting {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            let r = self.pipe.write_vectored(bufs);
            if matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
                self.eagain += 1;
            }
            r
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl AsFd for Counting {
        fn as_fd(&self) -> BorrowedFd<'_> {
            self.pipe.as_fd()
        }
    }

    #[test]
    fn a_short_write_is_a_full_pipe_waited_for_without_asking_again() {
        let payload = vec![7u8; 65536];
        let header = data_header(&payload);
        let whole = [&header[..], &payload].concat();
        // In two pieces (writev), and in one as a writer session builds it (write).
        for frame in [
            data_frame(&header, &payload),
            Outgoing::from_bytes(Kind::Data, &whole).unwrap(),
        ] {
            a_frame_through_a_one_page_pipe(frame, &header);
        }
    }

    /// Sends `frame` through a one-page pipe: a 64 KiB frame fills it sixteen times over.
    fn a_frame_through_a_one_page_pipe(frame: Outgoing<'_>, header: &[u8; HEADER_LEN]) {
        let (r, mut w) = one_page_pipe();
        let mut full = FullWatch::new(w.as_fd(), "pipe", "P6").unwrap();
        let payload = frame.payload;
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            File::from(r).read_to_end(&mut got).unwrap();
            got
        });
        assert_eq!(full.write_frame(&mut w, frame).unwrap(), Delivery::Sent);
        let calls = w.calls;
        drop(w);
        let got = reader.join().unwrap();
        assert_eq!(got.len(), HEADER_LEN + payload.len(), "the whole frame");
        assert_eq!(&got[..HEADER_LEN], &header[..]);
        // Every call after a wait found room: none was spent on being told EAGAIN, and
        // each call but the last ended in a wait.
        assert_eq!(full.blocked() as usize, calls - 1, "{calls} calls");
        assert!(
            calls >= 2,
            "the frame does not fit a one-page pipe in one call"
        );
    }

    #[test]
    fn only_a_pipe_or_fifo_takes_a_short_write_for_a_full_one() {
        let path = std::env::temp_dir().join(format!("ipc-study-full-{}", std::process::id()));
        let file = File::create(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let full = FullWatch::new(file.as_fd(), "pipe", "P6").unwrap();
        assert!(!full.short_is_full, "a regular file is not a pipe");
        let (_r, w) = nix::unistd::pipe().unwrap();
        assert!(
            FullWatch::new(w.as_fd(), "pipe", "P6")
                .unwrap()
                .short_is_full
        );
    }

    #[test]
    fn no_room_at_all_is_eagain_then_poll_and_a_gone_reader_is_epipe() {
        let (r, mut w) = one_page_pipe();
        let mut full = FullWatch::new(w.as_fd(), "pipe", "P6").unwrap();
        // Fill the pipe to the brim first.
        w.pipe.write_all(&[1u8; 4096]).unwrap();
        let payload = [2u8; 64];
        let header = data_header(&payload);
        let frame = data_frame(&header, &payload);
        // The reader leaves while the writer waits: poll wakes (POLLERR), the write is EPIPE.
        let reader = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            drop(r);
        });
        assert_eq!(full.write_frame(&mut w, frame).unwrap(), Delivery::PeerGone);
        reader.join().unwrap();
        assert_eq!((w.calls, w.eagain, full.blocked()), (2, 1, 1));
    }
}
