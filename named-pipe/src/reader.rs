//! named-pipe-reader: receives messages from a FIFO that has a name in the file system.
//!
//! Run it in two terminals, in either order (N2, N5):
//! ```text
//! terminal 1: named-pipe-reader
//! terminal 2: named-pipe-writer                    # type lines; Ctrl-D ends both
//!
//! named-pipe-reader --mode stream                  # with named-pipe-writer --mode stream
//! named-pipe-reader --mode pingpong                # answers on NAME.back (N6)
//! ```
//! It prints each message (text mode), or verifies every message and reports throughput
//! and one-way latency (stream mode), or echoes each Ping as a Pong (pingpong).
//!
//! System calls, in order (the numbers mark them in the code below):
//! 1. `lstat` of `<runtime dir>/NAME`: missing -> `mkfifo(0600)`; a FIFO of ours -> reuse
//!    it; anything else -> refuse. Pingpong: the same for `NAME.back` ([`prepare_fifo`]).
//! 2. `open(NAME, O_RDONLY)`: blocks until a writer opens the FIFO for writing (N7); a
//!    watchdog ends the wait at `--timeout` ([`open_for_reading`]).
//! 3. Pingpong: `open(NAME.back, O_WRONLY)`, which blocks until the writer opens it for
//!    reading: the answers travel in a FIFO of their own (N6).
//! 4. A scan of `/proc/*/fd` to show who holds the other end, and that it is no relative
//!    (N5; [`show_peers`]).
//! 5. The loop: `read` into a 1 MiB buffer, as many frames per call as have arrived (N3:
//!    in order), and `writev` of each Pong. `read` blocks while the FIFO is empty (N7) and
//!    returns 0 once the writer has closed it: after End that is a clean finish, before it
//!    the writer died (exit 1; "truncated stream" if it died inside a frame).
//! 6. `unlink` of both names when the pair is done.
//!
//! Start order: either. Cleanup: this side removes the FIFO names when the pair is done,
//! whoever created them, and on an error or Ctrl-C too (once the writer is connected;
//! before that, only what this side created). A name is only needed to meet: removing it
//! does not disturb descriptors that are already open.
//!
//! [`prepare_fifo`]: crate::rendezvous::prepare_fifo
//! [`open_for_reading`]: crate::rendezvous::open_for_reading
//! [`show_peers`]: crate::rendezvous::show_peers

use std::fs::File;
use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use common::cli::{parse_size, CommonArgs, Mode};
use common::frame::{Reassembler, MAX_PAYLOAD};
use common::narrate;
use common::session::{conclude, Action, ReaderSession};
use common::setup::{Flavour, Setup, Wait};
use common::stream::{self, Delivery};
use common::timing::Report;
use nix::fcntl::OFlag;

use crate::rendezvous::{open_for_reading, open_with_timeout, own_fifo, prepare_fifo, show_peers};
use crate::{fifo_paths, MECHANISM};

/// Program name, in narration and reports.
pub const PROGRAM: &str = "named-pipe-reader";

/// Command line of named-pipe-reader.
#[derive(Parser, Debug, Clone)]
#[command(
    name = PROGRAM,
    about = "Receive messages from a named pipe (FIFO) (claims N1-N7).",
    after_help = "Examples (start named-pipe-writer with the same flags in another terminal):\n  named-pipe-reader\n  named-pipe-reader --mode pingpong\n  named-pipe-reader --mode stream --name big"
)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Largest message accepted; a longer length is refused before anything is allocated.
    #[arg(long, value_name = "BYTES", default_value = "16MiB", value_parser = parse_size)]
    pub max_size: usize,
}

common::program!(Args);

/// The program: make or find the FIFO(s), open them, read until End, remove the names.
pub fn run(args: Args) -> Result<ExitCode> {
    let c = &args.common;
    let pingpong = c.mode == Mode::Pingpong;
    let setup = Setup {
        program: PROGRAM,
        mechanism: MECHANISM,
        flavour: Flavour::Fifo,
        wait: Wait::Block,
        args: c.clone(),
        max_payload: args.max_size.min(MAX_PAYLOAD),
    };
    let (there_path, back_path) = fifo_paths(c.name.as_deref())?;
    // 1. The names: created here if the writer has not made them yet. What is created
    //    here is removed on every way out, Ctrl-C included.
    let mut there_owned = prepare_fifo(&there_path)?.then(|| own_fifo(&there_path));
    let mut back_owned = if pingpong {
        prepare_fifo(&back_path)?.then(|| own_fifo(&back_path))
    } else {
        None
    };
    // 2. The way there. Opening for reading blocks until a writer opens for writing (N7).
    let fifo = open_for_reading(&there_path, c)?;
    // The writer is connected: from now on this side removes the names, whoever made them.
    there_owned.get_or_insert_with(|| own_fifo(&there_path));
    // 3. The way back (pingpong): a second FIFO, opened for writing (N6).
    let back: Option<File> = if pingpong {
        narrate!(
            "opening {} for writing, to answer: open(O_WRONLY) blocks until the writer opens it for reading (N6, N7)",
            back_path.display()
        );
        let Some(f) = open_with_timeout(&back_path, OFlag::O_WRONLY, c.timeout)? else {
            bail!(
                "the writer did not open {} for reading within {:?}: is it running in pingpong mode?",
                back_path.display(),
                c.timeout
            );
        };
        back_owned.get_or_insert_with(|| own_fifo(&back_path));
        Some(f)
    } else {
        None
    };
    // 4. Who holds the other end.
    let notes = show_peers(&there_path);
    // 5. The loop.
    narrate!("reading from the FIFO: read() blocks while it is empty (N7)");
    let result = receive_all(&setup, fifo, back);
    // 6. The pair is done (or failed): remove the names. An error path drops the guards,
    //    which removes them too.
    for o in [there_owned, back_owned].into_iter().flatten() {
        o.remove()?;
    }
    let mut report = result?;
    report.notes = notes;
    conclude(&report, c.json)
}

/// The receive loop: `read` whatever has arrived, hand each whole frame to the session,
/// do what it says.
fn receive_all(setup: &Setup, mut fifo: File, mut back: Option<File>) -> Result<Report> {
    let mut session = ReaderSession::new(setup);
    // Finds the frames in whatever each read returned: a FIFO keeps no boundaries.
    let mut frames = Reassembler::new(setup.max_payload);
    let mut stdout = io::stdout().lock();
    'receive: loop {
        while let Some((header, payload)) = frames.next_frame()? {
            match session.on_frame(&header, payload)? {
                Action::Continue => {}
                Action::Print(line) => writeln!(stdout, "{line}").context("writing to stdout")?,
                // writev(2) of the Pong on NAME.back (N6).
                Action::Echo(pong) => {
                    let Some(back) = back.as_mut() else {
                        bail!("got a Ping (pingpong mode) but this reader has no way back to the writer");
                    };
                    if stream::writev(back, pong)? == Delivery::PeerGone {
                        return Err(session.writer_left("the FIFO", None));
                    }
                }
                Action::Done => break 'receive,
            }
        }
        // read(2) blocks while the FIFO is empty; 0 once the writer has closed it.
        if stream::read(&mut fifo, &mut frames)? == 0 {
            return Err(session.writer_left("the FIFO", frames.cut()));
        }
    }
    Ok(session.finish())
}
