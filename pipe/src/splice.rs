//! `--splice`: the writer lends its frames' pages to the pipe with `vmsplice(2)` instead of
//! copying them in with `write(2)`. Used by `pipe-writer` and, through this `pub` module,
//! by `named-pipe-writer` (a FIFO is a pipe with a name: the same buffer, the same calls).
//!
//! ## What a lent page is
//! `write` copies the frame into pages the pipe owns; once it returns, the writer may do
//! anything with its buffer. `vmsplice` copies nothing: the kernel takes a reference to each
//! page of the writer's memory that the iovecs cover and puts *that page* in a pipe slot
//! (one slot per page or part of a page). The reader's `read(2)` copies out of the writer's
//! own page, later, whenever it gets to that slot, and only then does the slot leave the
//! pipe. Until then the bytes the reader will get are whatever the writer's memory holds at
//! the moment of that `read`. So, until the reader has read a frame, the writer must not:
//! - **change it**: not the header, not the sequence number, not the payload pattern; a
//!   rewritten buffer arrives as the new frame's bytes (or half of each), which the reader
//!   refuses (sequence or checksum), so a broken rule is caught, never silently delivered;
//! - **free it**: `free()` writes its own bookkeeping into freed memory and hands it out
//!   again, so a freed buffer is a changed buffer. [`Frames`] never frees lent buffers: when
//!   it is dropped, at the end of the run, it leaks them on purpose. The process's exit then
//!   unmaps them without writing them, and the pipe's page references keep the pages (and
//!   their bytes) alive until the reader, which may be behind, has read them;
//! - **gift it**: `SPLICE_F_GIFT` would hand the pages to the kernel for good; not used.
//!
//! Nothing here is `unsafe` in Rust's sense: the kernel only *reads* the lent pages, and a
//! write of ours that raced with the reader's copy would spoil the reader's data (which it
//! checks), not this process's memory.
//!
//! ## How the code guarantees it: K buffers in rotation
//! The writer builds frame `n` in buffer `n % K` ([`Frames::next_buf`]: the session builds
//! into whichever buffer it is given; the payload pattern is written once per buffer, then
//! only the header and the 8-byte sequence number change). The argument, with `P` the page
//! size (4096 bytes here):
//! 1. A pipe holds at most `S = F_GETPIPE_SZ / P` slots at once, and gives them to the
//!    reader in order (FIFO). A slot leaves only when `read` has copied all of its bytes.
//! 2. A slot refers to at most one page, so a frame of `L = 40 + size` bytes fills at least
//!    `m = ceil(L / P)` slots.
//! 3. Buffer `b` is rebuilt for frame `n + K` only after frames `n+1 .. n+K-1` have been
//!    vmspliced whole (the writer sends one frame at a time, waiting in `poll` while the pipe
//!    is full). They are `K - 1` frames in other buffers, in the pipe *behind* every slot of
//!    frame `n`, and with `K = 1 + ceil(S / m)` they filled `(K-1)·m >= S` slots.
//! 4. If a slot of frame `n` were still in the pipe, so would be every slot put in after it:
//!    at least `1 + S` slots in a pipe that holds `S`. So all of frame `n` has been read, and
//!    buffer `b` is free to be rebuilt. ([`buffers_needed`]; its tests check the formula
//!    and run the argument against a model pipe.)
//!
//! The buffers hold `K·L <= cap + 2·L` bytes (`ceil(S/m)·L <= S·P`, since `m·P >= L`):
//! about the pipe's capacity plus two frames, flat in `--count`. The Hello and End frames
//! live in their own parts of a buffer and are written once. The capacity is measured after
//! `--pipe-size`; nothing in this pair resizes the pipe later (only a holder of the pipe
//! could, and the reader would refuse the frames it spoiled).
//!
//! The reader is unchanged: it `read`s and verifies every byte, so a spliced stream is
//! checked exactly as a copied one. See [vmsplice(2)](https://man7.org/linux/man-pages/man2/vmsplice.2.html).

use std::io::{self, IoSlice, Write};
use std::os::fd::{AsFd, BorrowedFd};

use anyhow::{bail, Result};
use common::cli::{bad_flag, Mode};
use common::frame::HEADER_LEN;
use common::narrate;
use common::session::FrameBuf;
use common::stall::Stall;
use common::stream::FullWatch;
use nix::fcntl::{vmsplice, SpliceFFlags};

/// `--splice` runs in stream mode only: any other mode is a bad flag (exit 2) that names
/// the flag and the mode, checked before any pipe exists.
pub fn check_mode(splice: bool, mode: Mode) -> Result<()> {
    if splice && mode != Mode::Stream {
        return Err(bad_flag(format!(
            "--splice works with --mode stream only, and this run is --mode {}: \
             drop --splice (this mode sends with write), or run --mode stream --splice",
            mode.as_str()
        )));
    }
    Ok(())
}

/// The page size `P` (`sysconf(_SC_PAGESIZE)`): what one pipe slot holds at most.
pub fn page_size() -> usize {
    use nix::unistd::{sysconf, SysconfVar};
    match sysconf(SysconfVar::PAGE_SIZE) {
        Ok(Some(p)) if p > 0 => p as usize,
        _ => 4096,
    }
}

/// `K = 1 + ceil(S / m)`: how many frame buffers a writer rotates through so that a buffer
/// is rebuilt only after its pages have left the pipe. `S = capacity / page` slots the pipe
/// holds, `m = ceil(frame_len / page)` slots a frame fills at least (the module's argument).
pub fn buffers_needed(capacity: usize, frame_len: usize, page: usize) -> usize {
    let slots = (capacity / page).max(1);
    let per_frame = frame_len.div_ceil(page).max(1);
    1 + slots.div_ceil(per_frame)
}

/// The writer's frame buffers: one when `write` copies the frames, K in rotation when
/// `vmsplice` lends them (see the module's argument). The session builds each frame in
/// [`Frames::next_buf`].
#[derive(Debug)]
pub struct Frames {
    /// The buffers; never freed when lent (see [`Drop`]).
    bufs: Vec<FrameBuf>,
    /// How many buffers have been handed out.
    turn: usize,
    /// Header plus payload bytes of one frame.
    frame_len: usize,
    /// What the buffer is called ("pipe", "FIFO").
    what: &'static str,
    /// `--splice`: the frames are lent with vmsplice, not copied with write.
    lend: bool,
}

impl Frames {
    /// The buffers for frames of `size` payload bytes through a pipe (`what`: "pipe" or
    /// "FIFO") of `cap` bytes (`F_GETPIPE_SZ`; 0 when unknown, which `--splice` refuses).
    /// With `lend` (`--splice`) there are K of them, said in narration, and `full`'s waits
    /// are told as vmsplice()'s from here on.
    pub fn new(
        lend: bool,
        cap: usize,
        size: usize,
        full: &mut FullWatch,
        what: &'static str,
    ) -> Result<Frames> {
        let frame_len = HEADER_LEN + size;
        let mut frames = Frames {
            bufs: vec![FrameBuf::new()],
            turn: 0,
            frame_len,
            what,
            lend,
        };
        if !lend {
            return Ok(frames);
        }
        if cap == 0 {
            // Only pipe-writer in shell mode, with something other than a pipe on stdout.
            bail!(
                "--splice needs stdout to be a pipe (vmsplice moves pages into a pipe only): \
                 run `pipe-writer --splice | pipe-reader`, or `pipe-writer --spawn --splice`"
            );
        }
        let page = page_size();
        let k = buffers_needed(cap, frame_len, page);
        frames.bufs = (0..k).map(|_| FrameBuf::new()).collect();
        let (now, then, claim) = match what {
            "FIFO" => ("the FIFO is full", "the FIFO was full", "N7"),
            _ => ("the pipe is full", "the pipe was full", "P6"),
        };
        full.stall = Stall::new("vmsplice()", now, then, claim);
        let (slots, behind) = (cap / page, (k - 1) * frame_len.div_ceil(page));
        narrate!(
            "--splice: frames are lent to the {what} with vmsplice(2), not copied, from {k} buffers of {} B in rotation: \
             a buffer is rebuilt only after the {} after it filled at least {behind} slot{}, and the {what} holds {slots} \
             ({cap} B / {page} B pages), so the reader has read it by then",
            thousands(frame_len),
            if k == 2 { "frame".to_string() } else { format!("{} frames", k - 1) },
            if behind == 1 { "" } else { "s" },
        );
        Ok(frames)
    }

    /// The buffer to build the next frame in: buffer `n % K` for the `n`-th call.
    pub fn next_buf(&mut self) -> &mut FrameBuf {
        let i = self.turn % self.bufs.len();
        self.turn += 1;
        &mut self.bufs[i]
    }

    /// Whether the frames are lent (`--splice`: send them with [`Vmsplice`]).
    pub fn lent(&self) -> bool {
        self.lend
    }

    /// The report's note on the path that ran.
    pub fn note(&self) -> String {
        let what = self.what;
        match self.lend {
            true => format!(
                "vmsplice: frames lent to the {what} from {} rotating buffers of {} B (no copy into the {what}; the reader's read() copies out)",
                self.bufs.len(),
                thousands(self.frame_len),
            ),
            false => format!("write: frames copied into the {what} (the reader's read() copies them out again)"),
        }
    }
}

impl Drop for Frames {
    /// Lent buffers are leaked: the pipe may still hold their pages for a reader that is
    /// behind, and `free()` would write into them. The process's exit releases them unwritten.
    fn drop(&mut self) {
        if self.lend {
            std::mem::forget(std::mem::take(&mut self.bufs));
        }
    }
}

/// A pipe's write end that lends instead of copying: its `write` and `write_vectored` are
/// `vmsplice(2)` with `SPLICE_F_NONBLOCK`, which takes the iovecs `writev(2)` would and
/// answers the same way (the bytes taken, fewer when the pipe fills mid-frame; EAGAIN when
/// it is full; EPIPE when no reader is left). So `FullWatch::write_frame` drives it unchanged: a short vmsplice
/// (the pipe is full) or EAGAIN waits in `poll(POLLOUT)` with the P6/N7 narration, then the
/// rest of the iovecs go; EPIPE is the reader gone.
#[derive(Debug)]
pub struct Vmsplice<'a>(pub BorrowedFd<'a>);

impl Write for Vmsplice<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // The pages of `bufs` stay in the pipe after this returns: the rotation of Frames
        // is what keeps them unchanged until they are read.
        vmsplice(self.0, bufs, SpliceFFlags::SPLICE_F_NONBLOCK).map_err(io::Error::from)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Vmsplice<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0
    }
}

/// 65576 as "65,576".
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    const P: usize = 4096;

    #[test]
    fn k_is_one_more_than_the_frames_that_fill_the_pipe() {
        // (capacity, payload size, K)
        for (cap, size, k) in [
            (65536, 64, 17),           // 16 slots, 1 per frame
            (65536, 4096, 9),          // 4136 B: 2 slots per frame, 8 frames fill 16
            (65536, 65537, 2),         // 17 slots per frame: one frame more than fills it
            (65536, 1 << 20, 2),       // 257 slots per frame
            (4096, 64, 2),             // a one-slot pipe
            (4096, 1 << 20, 2),        // a one-slot pipe, a huge frame
            (1 << 20, 65536, 17),      // 256 slots, 17 per frame: 16 frames hold 272 >= 256
            (1 << 20, 64, 257),        // 256 slots, 1 per frame
            (1 << 20, 4096 - 40, 257), // exactly one page per frame
            (1 << 20, 4096 - 39, 129), // one byte over: 2 slots per frame
        ] {
            assert_eq!(
                buffers_needed(cap, HEADER_LEN + size, P),
                k,
                "cap {cap}, size {size}"
            );
        }
    }

    #[test]
    fn k_is_enough_and_no_larger_than_needed() {
        for slots in [1usize, 2, 3, 16, 17, 64, 256, 1000] {
            for frame_len in [41usize, 104, 4095, 4096, 4097, 8192, 65576, 65577, 1 << 20] {
                let k = buffers_needed(slots * P, frame_len, P);
                let m = frame_len.div_ceil(P);
                assert!((k - 1) * m >= slots, "K-1 frames fill the pipe");
                assert!((k - 2) * m < slots, "one buffer fewer would not");
            }
        }
    }

    #[test]
    fn thousands_groups_by_three() {
        assert_eq!(thousands(7), "7");
        assert_eq!(thousands(104), "104");
        assert_eq!(thousands(65576), "65,576");
        assert_eq!(thousands(1048616), "1,048,616");
    }

    /// A model pipe for the module's argument: a FIFO of at most `slots` slots, each naming
    /// the buffer whose page it holds, fed by a writer rotating through `k` buffers. A frame
    /// fills the fewest slots it can (`ceil(L / P)`, one contiguous aligned iovec) or, at
    /// random, what two iovecs (header, payload) at a random page offset fill; the pipe fills a slot
    /// at a time as vmsplice does. The reader takes at least one slot whenever the writer
    /// would wait, and `eager` readers also take a random number between frames. Returns the
    /// first frame whose buffer still had a slot in the pipe when it was to be rebuilt.
    fn rebuilt_while_lent(slots: usize, size: usize, k: usize, eager: bool) -> Option<usize> {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (slots * 31 + size) as u64;
        let mut next = move |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n as u64) as usize
        };
        let mut pipe: VecDeque<usize> = VecDeque::new();
        for n in 0..(4 * k + 50) {
            let b = n % k;
            if pipe.contains(&b) {
                return Some(n);
            }
            let fill = match eager && next(2) == 0 {
                true => 1 + (next(P) + size).div_ceil(P),
                false => (HEADER_LEN + size).div_ceil(P),
            };
            for _ in 0..fill {
                if pipe.len() == slots {
                    let take = if eager { 1 + next(pipe.len()) } else { 1 };
                    pipe.drain(..take);
                }
                pipe.push_back(b);
            }
            if eager {
                let take = next(pipe.len() + 1);
                pipe.drain(..take);
            }
        }
        None
    }

    #[test]
    fn a_buffer_is_never_rebuilt_while_its_pages_are_in_the_model_pipe() {
        for slots in [1usize, 2, 16, 255, 256] {
            for size in [1usize, 64, 4056, 4057, 65536, 65537, 300_000] {
                let k = buffers_needed(slots * P, HEADER_LEN + size, P);
                for eager in [false, true] {
                    let bad = rebuilt_while_lent(slots, size, k, eager);
                    assert_eq!(
                        bad, None,
                        "slots {slots}, size {size}, K {k}, eager {eager}"
                    );
                }
                // One buffer fewer, against a reader that takes a slot only when it must:
                // a buffer is rebuilt while the pipe still holds its pages.
                let bad = rebuilt_while_lent(slots, size, k - 1, false);
                assert!(
                    bad.is_some(),
                    "slots {slots}, size {size}: K-1 = {} sufficed",
                    k - 1
                );
            }
        }
    }
}
