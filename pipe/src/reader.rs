//! pipe-reader: receives messages from an anonymous pipe on its stdin.
//!
//! Run it:
//! ```text
//! pipe-writer | pipe-reader                     # shell mode: stdin is the pipe
//! pipe-writer --spawn                           # the writer starts this program itself
//! pipe-writer --mode stream --count 1e6 | pipe-reader
//! ```
//! Start it with no flags: it runs whatever the writer runs, as the writer's first frame
//! (its Hello) says. A `--mode`, `--size`, `--count` or `--warmup` given here is a check:
//! a writer that runs something else is an error that names both values and the fix.
//! It prints each message (text mode) or verifies every message and reports throughput
//! and one-way latency (stream mode). In pingpong it answers each Ping through the second
//! pipe the writer gave it (`--back-fd N`, P5).
//!
//! System calls, in order (the numbers mark them in the code below):
//! 1. `fcntl(F_GETFD)` and `fstat` on `--back-fd`: the way back, inherited from
//!    `pipe-writer --spawn`, checked before it is trusted ([`take_inherited_pipe`]).
//! 2. `dup(0)` and `fstat` to see that stdin is a pipe, then a scan of `/proc/*/fd` to show
//!    which processes hold its two ends and their PPIDs (P1, P4; [`show_pipe_ends`]).
//! 3. The loop: `read` into a 1 MiB buffer, as many frames per call as have arrived, and
//!    `write` of each Pong on the way back. The first frame is the writer's Hello: only
//!    from then on does this reader know the mode (pingpong needs the way back of step 1).
//!    `read` blocks while the pipe is empty (P6) and returns 0 once every write end is
//!    closed: after End that is a clean finish, before it the writer died (exit 1,
//!    "truncated stream" if it died mid-frame).
//!
//! Start order: whatever the shell does; or started by `pipe-writer --spawn`.
//! Cleanup: nothing to remove: an anonymous pipe disappears with its last descriptor.
//!
//! [`take_inherited_pipe`]: crate::rendezvous::take_inherited_pipe
//! [`show_pipe_ends`]: crate::rendezvous::show_pipe_ends

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use common::cli::{bad_flag, parse_size, ExpectArgs, Mode, OutputArgs, Program};
use common::frame::{Reassembler, MAX_PAYLOAD};
use common::narrate;
use common::session::{conclude, Action, ReaderSession};
use common::setup::{Flavour, Setup, Wait};
use common::stream::{self, Delivery};
use common::timing::Report;

use crate::rendezvous::{fd_kind, show_pipe_ends, take_inherited_pipe, FdKind};
use crate::MECHANISM;

/// Program name, in narration and reports.
pub const PROGRAM: &str = "pipe-reader";

/// Command line of pipe-reader.
#[derive(Parser, Debug, Clone)]
#[command(
    name = PROGRAM,
    about = "Receive messages from an anonymous pipe on stdin (claims P1-P6).",
    after_help = "Examples (no flags needed: this reader follows the writer's Hello):\n  pipe-writer | pipe-reader\n  pipe-writer --mode stream --size 64K | pipe-reader\n  pipe-writer --mode stream --size 64K | pipe-reader --size 64K   # checks the writer's size"
)]
pub struct Args {
    #[command(flatten)]
    pub run: ExpectArgs,

    #[command(flatten)]
    pub out: OutputArgs,

    /// Write end of the way-back pipe, inherited from `pipe-writer --spawn` (pingpong, P5).
    #[arg(long, value_name = "FD")]
    pub back_fd: Option<RawFd>,

    /// Set by `pipe-writer --spawn`: this reader is its child (for the report's flavour).
    #[arg(long, hide = true)]
    pub spawned: bool,

    /// Largest message accepted; a longer length is refused before anything is allocated.
    #[arg(long, value_name = "BYTES", default_value = "16MiB", value_parser = parse_size)]
    pub max_size: usize,
}

// No --name or --timeout: the pipe is inherited (stdin), not met by name.
common::program!(Args, no_meet);

/// The program: take the way back if given, look at stdin, read until End.
pub fn run(args: Args) -> Result<ExitCode> {
    // Mode, size and count are only this reader's checks until the writer's Hello comes.
    let c = &args.common();
    // 1. The way back is taken first, before anything else could open a descriptor.
    let back: Option<OwnedFd> = args.back_fd.map(take_inherited_pipe).transpose()?;
    if args.run.mode == Some(Mode::Pingpong) && back.is_none() {
        // Two flags that contradict each other: exit 2, before stdin is even looked at.
        return Err(bad_flag(
            "--mode pingpong needs --back-fd: pingpong needs a second pipe for the answers (P5), and this reader was not given one: \
             run `pipe-writer --spawn --mode pingpong`, which makes both pipes and starts this program",
        ));
    }
    // 2. stdin: what it is, and who holds the pipe's ends.
    let stdin: OwnedFd = nix::unistd::dup(io::stdin()).context("dup stdin")?;
    let mut notes = Vec::new();
    match fd_kind(stdin.as_fd())? {
        FdKind::Pipe => notes.extend(show_pipe_ends(stdin.as_fd())?),
        FdKind::Fifo => narrate!("stdin is a named pipe (FIFO); see the named-pipe pair for those"),
        FdKind::File => narrate!("stdin is a regular file: replaying frames saved from pipe-writer"),
        FdKind::Terminal => bail!(
            "stdin is a terminal, not a pipe: run `pipe-writer | pipe-reader`, or `pipe-writer --spawn`"
        ),
        FdKind::Other => narrate!("stdin is neither a pipe nor a file; reading frames from it anyway"),
    }
    let mut setup = Setup {
        program: PROGRAM,
        mechanism: MECHANISM,
        flavour: if args.spawned {
            Flavour::Spawn
        } else {
            Flavour::Shell
        },
        wait: Wait::Block,
        args: c.clone(),
        max_payload: args.max_size.min(MAX_PAYLOAD),
    };
    // 3. The loop.
    narrate!("reading from the pipe: read() blocks while it is empty (P6)");
    let mut report = receive_all(&mut setup, File::from(stdin), back.map(File::from))?;
    report.notes.extend(notes);
    conclude(&report, c.json)
}

/// The receive loop: `read` whatever has arrived, hand each whole frame to the session,
/// do what it says.
fn receive_all(setup: &mut Setup, mut pipe: File, mut back: Option<File>) -> Result<Report> {
    let mut session = ReaderSession::new(setup);
    // Finds the frames in whatever each read returned: a pipe keeps no boundaries.
    let mut frames = Reassembler::new(setup.max_payload);
    let mut stdout = io::stdout().lock();
    'receive: loop {
        while let Some((header, payload)) = frames.next_frame()? {
            match session.on_frame(&header, payload)? {
                // The writer's Hello (checked against our flags): from here on this reader
                // runs what it says.
                Action::Hello(hello) => {
                    setup.follow(hello);
                    if setup.mode() == Mode::Pingpong && back.is_none() {
                        bail!(
                            "the writer runs --mode pingpong, which needs a second pipe for the answers (P5), and this reader \
                             was not given one (--back-fd): run `pipe-writer --spawn --mode pingpong`, which makes both pipes"
                        );
                    }
                }
                Action::Continue => {}
                Action::Print(line) => writeln!(stdout, "{line}").context("writing to stdout")?,
                // write(2) of the Pong on the second pipe (P5): header and payload copied into one
                // piece first (a short Pong; a long one goes by writev(2), stream::write_frame).
                Action::Echo(pong) => {
                    let Some(back) = back.as_mut() else {
                        bail!("got a Ping (pingpong mode) but this reader has no way back to the writer");
                    };
                    if stream::write_frame(back, pong)? == Delivery::PeerGone {
                        return Err(session.writer_left("the pipe", None));
                    }
                }
                Action::Done => break 'receive,
            }
        }
        // read(2) blocks while the pipe is empty; 0 once every write end is closed.
        if stream::read(&mut pipe, &mut frames)? == 0 {
            return Err(session.writer_left("the pipe", frames.cut()));
        }
    }
    Ok(session.finish())
}
