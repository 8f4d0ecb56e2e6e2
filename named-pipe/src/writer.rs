//! named-pipe-writer: sends messages into a FIFO that has a name in the file system.
//!
//! Run it in two terminals, in either order (N2, N5: the two programs are unrelated; all
//! they share is the name):
//! ```text
//! terminal 1: named-pipe-writer                    # type lines; Ctrl-D ends
//! terminal 2: named-pipe-reader
//!
//! named-pipe-writer --mode stream --count 1e6 --size 64K --pipe-size 1M
//! named-pipe-writer --mode pingpong --count 100000  # two FIFOs: NAME and NAME.back (N6)
//! ```
//!
//! System calls, in order (the numbers mark them in the code below):
//! 1. `lstat` of `<runtime dir>/NAME`: missing -> `mkfifo(0600)`; a FIFO of ours -> reuse
//!    it; anything else -> refuse (never unlink what is not ours). Pingpong: the same for
//!    `NAME.back` ([`prepare_fifo`]).
//! 2. `open(NAME, O_WRONLY|O_NONBLOCK)`: succeeds if a reader already has the FIFO open,
//!    fails with ENXIO if not. Then, if needed, the real `open(NAME, O_WRONLY)`, which
//!    blocks until a reader opens the other end (N7); a watchdog ends the wait at
//!    `--timeout` ([`open_for_writing`]).
//! 3. `fcntl(F_SETPIPE_SZ)` (`--pipe-size`), `fcntl(F_GETPIPE_SZ)`.
//! 4. Pingpong: `open(NAME.back, O_RDONLY)`, which blocks until the reader opens it for
//!    writing: the way back is a second FIFO, because this descriptor only writes (N4, N6).
//! 5. `fcntl(F_SETFL, O_NONBLOCK)`, so a full FIFO is noticed (N7) and waited for in `poll`.
//! 6. The loop: one `writev` per frame, `poll(POLLOUT)` when it finds the FIFO full; in
//!    pingpong a `read` of each Pong from `NAME.back`; in text mode a `read` of stdin.
//! 7. `close`, which the reader sees as end of input after End.
//!
//! Start order: either. Whoever comes first makes the FIFO(s); the other finds them.
//! Cleanup: the reader removes the names when the pair is done. This side removes a FIFO
//! it created only if it never got as far as a connected reader (error or Ctrl-C while
//! waiting in `open`). If the reader goes away, `write` fails with EPIPE (Rust ignores
//! SIGPIPE, so it is an error value, not a death): "reader closed the FIFO", exit 1.
//!
//! [`prepare_fifo`]: crate::rendezvous::prepare_fifo
//! [`open_for_writing`]: crate::rendezvous::open_for_writing

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;
use common::cli::{parse_size, CommonArgs, Mode};
use common::frame::{Reassembler, MAX_PAYLOAD};
use common::narrate;
use common::session::{conclude, FrameBuf, Next, WriterSession};
use common::setup::{Flavour, Setup, Wait};
use common::stream::{self, check_pipe_size, Delivery, FullWatch};
use common::timing::Report;
use nix::fcntl::OFlag;

use crate::rendezvous::{open_for_writing, open_with_timeout, own_fifo, prepare_fifo};
use crate::{blocked_note, fifo_paths, show_capacity, MECHANISM};

/// Program name, in narration and reports.
pub const PROGRAM: &str = "named-pipe-writer";

/// Command line of named-pipe-writer.
#[derive(Parser, Debug, Clone)]
#[command(
    name = PROGRAM,
    about = "Send messages through a named pipe (FIFO) (claims N1-N7).",
    after_help = "Examples (start named-pipe-reader with the same flags in another terminal):\n  named-pipe-writer\n  named-pipe-writer --mode pingpong --count 100000\n  named-pipe-writer --mode stream --size 64K --pipe-size 1M"
)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// FIFO capacity (F_SETPIPE_SZ), 4 KiB up to /proc/sys/fs/pipe-max-size [default: the kernel's, 64 KiB].
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub pipe_size: Option<usize>,
}

common::program!(Args);

/// The program: make or find the FIFO(s), open them, run the mode, report.
pub fn run(args: Args) -> Result<ExitCode> {
    // Flags are checked before any FIFO exists.
    check_pipe_size(args.pipe_size)?;
    let c = &args.common;
    let pingpong = c.mode == Mode::Pingpong;
    let setup = Setup {
        program: PROGRAM,
        mechanism: MECHANISM,
        flavour: Flavour::Fifo,
        wait: Wait::Block,
        args: c.clone(),
        max_payload: MAX_PAYLOAD,
    };
    let (there_path, back_path) = fifo_paths(c.name.as_deref())?;
    // 1. The names. What this side creates it owns until a reader has opened it: Ctrl-C
    //    while waiting below removes it, and so does an error on the way.
    let mut owned = Vec::new();
    if prepare_fifo(&there_path)? {
        owned.push(own_fifo(&there_path));
    }
    if pingpong && prepare_fifo(&back_path)? {
        owned.push(own_fifo(&back_path));
    }
    // 2. The way there: blocks until a reader opens the other end (N7).
    let mut fifo = open_for_writing(&there_path, c)?;
    // 3. The buffer belongs to the open FIFO, so it is sized now, not at mkfifo.
    let mut notes = vec![show_capacity(fifo.as_fd(), args.pipe_size)?];
    // 4. The way back (pingpong): a second FIFO, opened for reading (N6).
    let back = if pingpong {
        narrate!(
            "opening {} for reading: the answers need a second FIFO, because each open end goes one way (N6); open(O_RDONLY) blocks until the reader opens it for writing (N7)",
            back_path.display()
        );
        let Some(f) = open_with_timeout(&back_path, OFlag::O_RDONLY, c.timeout)? else {
            bail!(
                "the reader did not open {} for writing within {:?}: is it running in pingpong mode?",
                back_path.display(),
                c.timeout
            );
        };
        Some(f)
    } else {
        None
    };
    // Both ends are connected: from here on the reader owns the names and removes them.
    owned.into_iter().for_each(|o| o.release());
    // 5. Non-blocking, so that a full FIFO is seen rather than slept in (N7).
    let mut full = FullWatch::new(fifo.as_fd(), "FIFO", "N7")?;
    // 6. The loop.
    let result = send_all(&setup, &mut fifo, &mut full, back);
    let blocked = full.blocked;
    // 7. Closing the write end is what the reader sees as end of input after End.
    drop(fifo);
    let mut report = result?;
    notes.push(blocked_note(blocked));
    notes.push(format!("writer pid {}", std::process::id()));
    report.notes = notes;
    conclude(&report, c.json)
}

/// The send loop: the session says what goes next, this function makes the calls.
fn send_all(
    setup: &Setup,
    fifo: &mut File,
    full: &mut FullWatch,
    back: Option<File>,
) -> Result<Report> {
    // EPIPE on a write, or EOF on the way back: the reader is gone.
    const GONE: &str = "closed the FIFO (write failed with EPIPE)";
    let mut session = WriterSession::new(setup);
    let mut frame = FrameBuf::new();
    // The Pongs come back as a byte stream too, through NAME.back.
    let mut answers = back.map(|f| (f, Reassembler::new(MAX_PAYLOAD)));
    let mut stdin = io::stdin().lock();
    let mut line = Vec::new();
    if setup.mode() == Mode::Text {
        narrate!(
            "type a line and press Enter to send it as one message; Ctrl-D (end of input) ends"
        );
    }
    loop {
        match session.next(&mut frame)? {
            // writev(2): header and payload in one call; EAGAIN (full, N7) waits in poll.
            Next::Send(out) => {
                if full.writev(fifo, out)? == Delivery::PeerGone {
                    return Err(session.reader_left(GONE));
                }
            }
            // read(2) from NAME.back until the Pong is whole; it blocks while empty.
            Next::AwaitAnswer => {
                let Some((back, pongs)) = answers.as_mut() else {
                    bail!("pingpong needs a way back from the reader, and this setup has none");
                };
                loop {
                    if let Some((header, payload)) = pongs.next_frame()? {
                        session.answer(&header, payload)?;
                        break;
                    }
                    if stream::read(back, pongs)? == 0 {
                        return Err(session.reader_left(GONE));
                    }
                }
            }
            // Text mode: read(2) of stdin up to a newline; 0 bytes is Ctrl-D.
            Next::NeedLine => match stream::read_line(&mut stdin, &mut line)? {
                Some(l) => session.push_line(l),
                None => session.end_of_input(),
            },
            Next::Done => return Ok(session.finish()),
        }
    }
}
