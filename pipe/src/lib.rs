//! # pipe: the anonymous pipe (claims P1-P6)
//!
//! `pipe(2)` gives a process two file descriptors: whatever is written to the second comes
//! out of the first, in order (P2), and each descriptor works in one direction only (P3).
//! The pipe has no name: the only way for another process to reach it is to inherit the
//! descriptors, through `fork` (a child, P4) or because a common ancestor, such as a shell
//! running `a | b`, created it and handed one end to each (P1). The bytes live in a kernel
//! buffer of a fixed capacity (64 KiB by default on Linux, changeable with `F_SETPIPE_SZ`):
//! `read` blocks while it is empty and `write` blocks while it is full (P6). Data goes one
//! way; answering needs a second pipe (P5).
//!
//! ## The pair
//! - `pipe-writer | pipe-reader` (shell mode): the shell makes the pipe; the writer writes
//!   frames to stdout, the reader reads them from stdin and shows who holds the two ends.
//! - `pipe-writer --spawn` (spawn mode): the writer makes the pipe(s) itself and starts
//!   `pipe-reader` as its child with the read end as stdin; pingpong adds a second pipe
//!   whose write end the child inherits as descriptor `--back-fd N`.
//! - Either way the writer's first frame is its Hello (`common::hello`): mode, size, count,
//!   capacity. The reader follows it, so it is started with no mode flags; a flag given to
//!   it is a check (`pipe-reader --size 16` against a 4096-byte writer is an error that
//!   names both values).
//!
//! ## The modules
//! | module | what it holds |
//! |---|---|
//! | [`writer`] | `pipe-writer`, top to bottom: the pipe (the shell's, or made here), its capacity, the send loop (`write` per frame, `poll` on a full pipe, P6), the report |
//! | [`reader`] | `pipe-reader`, top to bottom: stdin, the way back, the receive loop (`read` into a `Reassembler`, `write` of each Pong), the report |
//! | [`splice`] | `--splice`: the frames lent to the pipe with `vmsplice(2)` instead of copied, from K buffers in rotation, and why the pipe has read a buffer before it is rebuilt (also the FIFO writer's) |
//! | [`rendezvous`] | how the two ends meet: the shell's pipe on stdout, spawn mode (`pipe2`, the child with the read end as stdin, `--back-fd`), who holds the ends (`/proc`); a first reading may skip it |
//!
//! The modes themselves (text, stream, pingpong) are the sans-I/O sessions of
//! `common::session`, the same for every mechanism: the role files drive them with the
//! pipe's own calls. The capacity calls (`F_GETPIPE_SZ`, `F_SETPIPE_SZ`) are
//! `common::stream`, shared with the FIFO; this file holds what the pipe programs say about
//! them and about a full pipe ([`show_capacity`], [`blocked_note`]), and the writer's way
//! back in pingpong ([`WayBack`], also the FIFO writer's).

pub mod reader;
pub mod rendezvous;
pub mod splice;
pub mod writer;

use std::fs::File;
use std::os::fd::BorrowedFd;

use anyhow::Result;
use common::frame::{Reassembler, MAX_PAYLOAD};
use common::narrate;
use common::session::WriterSession;
use common::setup::Mechanism;
use common::stream::{self, capacity, set_capacity};

use common::stream::FullWatch;

/// Mechanism name in reports.
pub const MECHANISM: Mechanism = Mechanism::Pipe;

/// Sets the pipe's capacity (`F_SETPIPE_SZ`, rounded up by the kernel) if asked, and says
/// what it is (`F_GETPIPE_SZ`): the bytes a writer may be ahead of its reader (P6). Returns
/// the capacity (for the writer's Hello) and the report's note.
pub fn show_capacity(fd: BorrowedFd<'_>, want: Option<usize>) -> Result<(usize, String)> {
    if let Some(bytes) = want {
        let got = set_capacity(fd, bytes)?;
        narrate!("pipe capacity set to {got} bytes (F_SETPIPE_SZ {bytes})");
    }
    let cap = capacity(fd)?;
    narrate!(
        "pipe capacity: {cap} bytes (F_GETPIPE_SZ); a write blocks while the pipe is full (P6)"
    );
    Ok((cap, format!("pipe capacity {cap} bytes")))
}

/// The report's note on the writes that found the pipe full and waited (P6): how many,
/// the longest wait and all of them together (`common::stall`); narrated if there were any.
/// With `--splice` (`splice`) the call that waited is `vmsplice()`, not `write()`.
pub fn blocked_note(full: &FullWatch, splice: bool) -> String {
    match full.stall.note() {
        Some(note) => {
            narrate!(
                "the pipe was full {} times: the reader was slower than this writer (P6)",
                full.blocked()
            );
            note
        }
        None => format!(
            "{}() never found the pipe full (P6)",
            if splice { "vmsplice" } else { "write" }
        ),
    }
}

/// The writer's end of the way back (pingpong, P5; the FIFO's N6): the Pongs come back as
/// a byte stream too, so they are read into a [`Reassembler`].
#[derive(Debug)]
pub struct WayBack {
    /// The read end of the second pipe (or of the FIFO `NAME.back`).
    pipe: File,
    /// Finds the Pongs in whatever each read returned.
    pongs: Reassembler,
}

impl WayBack {
    /// The way back, read from `pipe`.
    pub fn new(pipe: File) -> WayBack {
        WayBack {
            pipe,
            pongs: Reassembler::new(MAX_PAYLOAD),
        }
    }

    /// `read(2)` until the Pong of the Ping just sent is whole, and hands it to the
    /// session, which checks it; one `read` per Pong when it comes whole, as it does in
    /// pingpong. `Ok(false)`: `read` returned 0, the reader closed its end first.
    pub fn read_pong(&mut self, session: &mut WriterSession) -> Result<bool> {
        loop {
            if let Some((header, payload)) = self.pongs.next_frame()? {
                session.answer(&header, payload)?;
                return Ok(true);
            }
            if stream::read(&mut self.pipe, &mut self.pongs)? == 0 {
                return Ok(false);
            }
        }
    }
}
