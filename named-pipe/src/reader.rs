//! named-pipe-reader: receives messages from a FIFO that has a name in the file system.
//!
//! Run it in two terminals, in either order (N2, N5):
//! ```text
//! terminal 1: named-pipe-reader
//! terminal 2: named-pipe-writer                    # type lines; Ctrl-D ends both
//!
//! named-pipe-reader                                # with named-pipe-writer --mode stream, too
//! named-pipe-reader --name big --size 64K          # checks that the writer sends 64 KiB
//! ```
//! Start it with no flags (or only `--name`): it runs whatever the writer runs, as the
//! writer's first frame (its Hello) says. A `--mode`, `--size`, `--count` or `--warmup`
//! given here is a check: a writer that runs something else is an error that names both
//! values and the fix. It prints each message (text mode), or verifies every message and
//! reports throughput and one-way latency (stream mode), or echoes each Ping as a Pong on
//! `NAME.back` (pingpong, N6).
//!
//! System calls, in order (the numbers mark them in the code below):
//! 1. `open` + `flock(LOCK_EX|LOCK_NB)` of `<runtime dir>/NAME.reader.lock`: this is the
//!    FIFO's only reader; a second one is refused with this one's pid, since a FIFO would
//!    let it in and the two would split the messages ([`take_role_lock`]).
//! 2. `lstat` of `<runtime dir>/NAME`: missing -> `mkfifo(0600)`; a FIFO of ours -> reuse
//!    it; anything else -> refuse ([`prepare_fifo`]).
//! 3. `open(NAME, O_RDONLY)`: blocks until a writer opens the FIFO for writing (N7); a
//!    watchdog ends the wait at `--timeout` ([`open_for_reading`]).
//! 4. A scan of `/proc/*/fd` to show who holds the other end, and that it is no relative
//!    (N5; [`show_peers`]).
//! 5. The loop: `read` into a 1 MiB buffer, as many frames per call as have arrived (N3:
//!    in order). The first is the writer's Hello; if it says pingpong, `NAME.back` is made
//!    or found and opened with `open(NAME.back, O_WRONLY)`, which blocks until the writer
//!    opens it for reading: the answers travel in a FIFO of their own (N6,
//!    [`open_back_for_writing`]); then a `write` of each Pong. `read` blocks while the
//!    FIFO is empty (N7) and returns 0 once the writer has closed it: after End that is a
//!    clean finish, before it the writer died (exit 1; "truncated stream" if it died
//!    inside a frame).
//! 6. `unlink` of both names when the pair is done; the lock is released.
//!
//! Start order: either. Cleanup: this side removes the FIFO names when the pair is done,
//! whoever created them, and on an error or Ctrl-C too (once the writer is connected;
//! before that, only what this side created). A name is only needed to meet: removing it
//! does not disturb descriptors that are already open.
//!
//! [`take_role_lock`]: crate::rendezvous::take_role_lock
//! [`prepare_fifo`]: crate::rendezvous::prepare_fifo
//! [`open_for_reading`]: crate::rendezvous::open_for_reading
//! [`open_back_for_writing`]: crate::rendezvous::open_back_for_writing
//! [`show_peers`]: crate::rendezvous::show_peers

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use common::cleanup::Owned;
use common::cli::{parse_size, ExpectArgs, MeetArgs, Mode, OutputArgs, Program};
use common::frame::{Reassembler, MAX_PAYLOAD};
use common::narrate;
use common::session::{conclude, Action, ReaderSession};
use common::setup::{Flavour, Role, Setup, Wait};
use common::stream::{self, Delivery};
use common::timing::Report;

use crate::rendezvous::{
    open_back_for_writing, open_for_reading, own_fifo, prepare_fifo, show_peers, take_role_lock,
};
use crate::{fifo_paths, MECHANISM};

/// Program name, in narration and reports.
pub const PROGRAM: &str = "named-pipe-reader";

/// Command line of named-pipe-reader.
#[derive(Parser, Debug, Clone)]
#[command(
    name = PROGRAM,
    about = "Receive messages from a named pipe (FIFO) (claims N1-N7).",
    after_help = "Examples (start named-pipe-writer in another terminal; this reader follows it):\n  named-pipe-reader\n  named-pipe-reader --name big\n  named-pipe-reader --mode pingpong   # checks that the writer runs pingpong"
)]
pub struct Args {
    #[command(flatten)]
    pub run: ExpectArgs,

    #[command(flatten)]
    pub meet: MeetArgs,

    #[command(flatten)]
    pub out: OutputArgs,

    /// Largest message accepted; a longer length is refused before anything is allocated.
    #[arg(long, value_name = "BYTES", default_value = "16MiB", value_parser = parse_size)]
    pub max_size: usize,
}

common::program!(Args, name = crate::DEFAULT_NAME);

/// The program: make or find the FIFO, open it, read until End (opening the way back if
/// the writer's Hello says pingpong), remove the names.
pub fn run(args: Args) -> Result<ExitCode> {
    // Mode, size and count are only this reader's checks until the writer's Hello comes.
    let c = &args.common();
    let mut setup = Setup {
        program: PROGRAM,
        mechanism: MECHANISM,
        flavour: Flavour::Fifo,
        wait: Wait::Block,
        args: c.clone(),
        max_payload: args.max_size.min(MAX_PAYLOAD),
    };
    let (there_path, back_path) = fifo_paths(c.name.as_deref())?;
    // 1. One reader per FIFO, before the FIFO is touched: held until this program ends.
    let _lock = take_role_lock(&there_path, Role::Reader, PROGRAM)?;
    // 2. The name: created here if the writer has not made it yet. What is created here
    //    is removed on every way out, Ctrl-C included.
    let mut there_owned = prepare_fifo(&there_path)?.then(|| own_fifo(&there_path));
    // 3. The way there. Opening for reading blocks until a writer opens for writing (N7).
    let fifo = open_for_reading(&there_path, c)?;
    // The writer is connected: from now on this side removes the name, whoever made it.
    there_owned.get_or_insert_with(|| own_fifo(&there_path));
    // 4. Who holds the other end.
    let notes = show_peers(&there_path);
    // 5. The loop (the way back is opened in it, if the Hello says pingpong).
    narrate!("reading from the FIFO: read() blocks while it is empty (N7)");
    let mut back_owned = None;
    let result = receive_all(&mut setup, fifo, &back_path, &mut back_owned);
    // 6. The pair is done (or failed): remove the names. An error path drops the guards,
    //    which removes them too.
    for o in [there_owned, back_owned].into_iter().flatten() {
        o.remove()?;
    }
    let mut report = result?;
    report.notes.extend(notes);
    conclude(&report, c.json)
}

/// The receive loop: `read` whatever has arrived, hand each whole frame to the session,
/// do what it says. A pingpong Hello opens the way back (`back_path`); its name's guard
/// goes to `back_owned`, for the caller to remove.
fn receive_all(
    setup: &mut Setup,
    mut fifo: File,
    back_path: &Path,
    back_owned: &mut Option<Owned>,
) -> Result<Report> {
    let mut session = ReaderSession::new(setup);
    // Finds the frames in whatever each read returned: a FIFO keeps no boundaries.
    let mut frames = Reassembler::new(setup.max_payload);
    let mut back: Option<File> = None;
    let mut stdout = io::stdout().lock();
    'receive: loop {
        while let Some((header, payload)) = frames.next_frame()? {
            match session.on_frame(&header, payload)? {
                // The writer's Hello (checked against our flags): from here on this reader
                // runs what it says; pingpong needs the way back, a second FIFO (N6).
                Action::Hello(hello) => {
                    setup.follow(hello);
                    if setup.mode() == Mode::Pingpong {
                        let Some((f, owned)) =
                            open_back_for_writing(back_path, fifo.as_fd(), &setup.args)?
                        else {
                            return Err(session.writer_left("the FIFO", None));
                        };
                        (back, *back_owned) = (Some(f), Some(owned));
                    }
                }
                Action::Continue => {}
                Action::Print(line) => writeln!(stdout, "{line}").context("writing to stdout")?,
                // write(2) of the Pong on NAME.back (N6), header and payload joined first (a long
                // Pong goes by writev(2), stream::write_frame).
                Action::Echo(pong) => {
                    let Some(back) = back.as_mut() else {
                        bail!("got a Ping (pingpong mode) but this reader has no way back to the writer");
                    };
                    if stream::write_frame(back, pong)? == Delivery::PeerGone {
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
