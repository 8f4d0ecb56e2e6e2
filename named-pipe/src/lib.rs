//! # named-pipe: the FIFO (claims N1-N7)
//!
//! A FIFO is a pipe with a name in the file system. `mkfifo(3)` creates the name (an inode
//! of type `S_IFIFO`, no data blocks); any process that can reach the path and has
//! permission opens it with plain `open(2)`, one side for reading, the other for writing,
//! and from then on it behaves exactly like the anonymous pipe: a kernel buffer (64 KiB by
//! default, `F_SETPIPE_SZ` to change it), bytes in order (N3), `read` blocks while it is
//! empty and `write` while it is full (N7, as P6). Nothing has to be inherited: two
//! processes that share no ancestor but a login shell meet by name (N2, N5).
//!
//! What the note leaves out, and these programs show:
//! - **open blocks too** (N7): `open(O_RDONLY)` waits until some process opens the FIFO for
//!   writing, and `open(O_WRONLY)` until some process opens it for reading. A FIFO with only
//!   one end open does not exist as a channel yet. With `O_NONBLOCK`, opening for reading
//!   succeeds at once, and opening for writing fails with `ENXIO` while nobody reads.
//! - **one direction per open** (N1, N4): the FIFO itself is not one-way; each *descriptor*
//!   is, because it was opened `O_RDONLY` or `O_WRONLY`. (`O_RDWR` on a FIFO is allowed on
//!   Linux but makes a process its own peer; POSIX leaves it undefined, so it is not used.)
//!   A reply therefore needs a second FIFO (N6): pingpong opens `NAME` and `NAME.back`.
//! - **the name carries no data**: bytes live in the kernel's pipe buffer and vanish when the
//!   last descriptor closes. A FIFO left behind by a killed run is an empty name, so reusing
//!   it is safe; what must be checked is that the path *is* a FIFO and that it is ours.
//!
//! ## The pair's contract
//! - Rendezvous: `<runtime dir>/NAME` (default `fifo`), plus `NAME.back` for pingpong.
//! - One reader and one writer: each side first takes its lock, `NAME.reader.lock` or
//!   `NAME.writer.lock` in the runtime dir (a FIFO cannot tell a second reader, which would
//!   split the messages); a second one is refused with the pid already there.
//! - Whoever starts first creates the FIFO with mode 0600; the other finds it.
//! - The writer's first frame is its Hello: mode, size, count, capacity. The reader is
//!   started with no flags and follows it; a flag given to it is a check.
//! - Open order, so neither waits for the other forever: `NAME` first (writer `O_WRONLY`,
//!   reader `O_RDONLY`); the writer sends its Hello; for pingpong both then open
//!   `NAME.back` the other way (the reader learns it needs one only from the Hello).
//! - The reader removes both names when the pair is done; Ctrl-C on either side removes
//!   what that side created and still owns, and its lock.
//!
//! ## The modules
//! | module | what it holds |
//! |---|---|
//! | [`writer`] | `named-pipe-writer`, top to bottom: its role lock, the name(s), `open` for writing (N7), the capacity, the send loop (the Hello first, then `NAME.back` for pingpong; `write` per frame, or `vmsplice` with `--splice`; `poll` on a full FIFO), the report |
//! | [`reader`] | `named-pipe-reader`, top to bottom: its role lock, the name, `open` for reading, who holds the other end (N5), the receive loop (`read` into a `Reassembler`; the Hello, then `NAME.back` for pingpong; `write` of each Pong), `unlink` |
//! | [`rendezvous`] | the role locks, create-or-reuse, the start-order race, stale and foreign paths, ownership, the blocking `open` with a timeout that also ends when the peer leaves, the ways back, who holds a FIFO (`/proc`); a first reading may skip it |
//!
//! This file holds the names ([`fifo_paths`]), what the programs say about the FIFO's
//! buffer ([`show_capacity`], [`blocked_note`]); the capacity calls are `common::stream`'s,
//! and the write end that notices a full FIFO (N7, [`common::stream::FullWatch`]) and the writer's way back
//! ([`pipe::WayBack`]) are the pipe crate's, shared with the anonymous pipe.
//! `--splice` is the pipe crate's [`pipe::splice`], since a FIFO is a pipe: the frames lent
//! to the FIFO with `vmsplice(2)` from K buffers in rotation, and why each has been read
//! before it is rebuilt. The modes (text, stream, pingpong) are the sans-I/O sessions of
//! `common::session`, the same for every mechanism, driven by the role files' own calls.
//!
//! Man pages: fifo(7), mkfifo(3), open(2) (ENXIO), pipe(7) (capacity, PIPE_BUF),
//! fcntl(2) (F_SETPIPE_SZ), signal(7) (EINTR and SA_RESTART).

pub mod reader;
pub mod rendezvous;
pub mod writer;

use std::fs;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;

use anyhow::{Context, Result};
use common::cli::CommonArgs;
use common::narrate;
use common::setup::Mechanism;
use common::stream::FullWatch;
use common::stream::{capacity, set_capacity};

/// Mechanism name in reports.
pub const MECHANISM: Mechanism = Mechanism::NamedPipe;
/// Default FIFO name in the runtime directory.
pub const DEFAULT_NAME: &str = "fifo";
/// Suffix of the way-back FIFO used by pingpong (N6).
pub const BACK_SUFFIX: &str = ".back";

/// The two rendezvous paths: `(there, back)`, writer->reader and reader->writer.
pub fn fifo_paths(name: Option<&str>) -> Result<(PathBuf, PathBuf)> {
    let name = name.unwrap_or(DEFAULT_NAME);
    let dir = common::runtime::runtime_dir()?;
    // Absolute and without symlinks, as /proc/<pid>/fd shows it (see `holders`).
    let dir = fs::canonicalize(&dir).with_context(|| format!("realpath {}", dir.display()))?;
    Ok((dir.join(name), dir.join(format!("{name}{BACK_SUFFIX}"))))
}

/// Sets the capacity (`F_SETPIPE_SZ`, rounded up by the kernel) if asked, and says what it
/// is. The buffer belongs to the open FIFO, not to the name: it is set once both ends are
/// open and lasts until both close. Returns the capacity (for the Hello) and the report's
/// note.
pub fn show_capacity(fd: BorrowedFd<'_>, want: Option<usize>) -> Result<(usize, String)> {
    if let Some(bytes) = want {
        let got = set_capacity(fd, bytes)?;
        narrate!("FIFO capacity set to {got} bytes (F_SETPIPE_SZ {bytes})");
    }
    let cap = capacity(fd)?;
    narrate!("FIFO capacity: {cap} bytes (F_GETPIPE_SZ); a write blocks while it is full (N7)");
    Ok((cap, format!("FIFO capacity {cap} bytes")))
}

/// The report's note on the writes that found the FIFO full and waited (N7): how many,
/// the longest wait and all of them together (`common::stall`); narrated if there were any.
/// With `--splice` (`splice`) the call that waited is `vmsplice()`, not `write()`.
pub fn blocked_note(full: &FullWatch, splice: bool) -> String {
    match full.stall.note() {
        Some(note) => {
            narrate!(
                "the FIFO was full {} times: the reader was slower than this writer (N7)",
                full.blocked()
            );
            note
        }
        None => format!(
            "{}() never found the FIFO full (N7)",
            if splice { "vmsplice" } else { "write" }
        ),
    }
}

/// " --name X" when a name other than the default was given, so a hint in an error can be
/// pasted.
pub fn name_hint(c: &CommonArgs) -> String {
    c.name
        .as_deref()
        .filter(|n| *n != DEFAULT_NAME)
        .map(|n| format!(" --name {n}"))
        .unwrap_or_default()
}
