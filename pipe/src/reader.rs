//! pipe-reader: receives messages from an anonymous pipe on its stdin.
//!
//! Run it:
//! ```text
//! pipe-writer | pipe-reader                     # shell mode: stdin is the pipe
//! pipe-writer --spawn                           # the writer starts this program itself
//! pipe-writer --mode stream --count 1e6 | pipe-reader --mode stream
//! ```
//! It prints each message (text mode) or verifies every message and reports throughput
//! and one-way latency (stream mode). In pingpong it answers each Ping through the second
//! pipe the writer gave it (`--back-fd N`, P5).
//!
//! System calls, in order: `fstat(0)` to see that stdin is a pipe, a scan of `/proc/*/fd`
//! to show which processes hold its two ends and their PPIDs (P1, P4); `fcntl(F_GETFD)` on
//! `--back-fd`; then `read` into a 1 MiB buffer, as many frames per call as have arrived;
//! `writev` of each Pong on the way back. `read` blocks while the pipe is empty (P6) and
//! returns 0 once every write end is closed: after End that is a clean finish, before it
//! the writer died (exit 1, "truncated stream" if it died mid-frame).
//!
//! Start order: whatever the shell does; or started by `pipe-writer --spawn`.
//! Cleanup: nothing to remove: an anonymous pipe disappears with its last descriptor.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use common::cli::{parse_size, CommonArgs, Mode};
use common::frame::MAX_PAYLOAD;
use common::narrate;
use common::protocol::{conclude, run_reader, NoWayBack, Setup, StreamSink, StreamSource};

use crate::{fd_kind, pipe_ends, take_inherited_pipe, FdKind, MECHANISM};

/// Program name, in narration and reports.
pub const PROGRAM: &str = "pipe-reader";

/// Command line of pipe-reader.
#[derive(Parser, Debug, Clone)]
#[command(
    name = PROGRAM,
    about = "Receive messages from an anonymous pipe on stdin (claims P1-P6).",
    after_help = "Examples:\n  pipe-writer | pipe-reader\n  pipe-writer --mode stream --size 64K | pipe-reader --mode stream"
)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

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

/// Entry point of the `pipe-reader` binary.
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// Runs pipe-reader with an explicit argument list (the `bench` runner uses this).
pub fn main_from<I, T>(argv: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::parse_from(argv);
    common::cli::run_main(PROGRAM, args.common.quiet, || run(args))
}

/// The program: look at stdin, take the way back if given, read until End.
pub fn run(args: Args) -> Result<ExitCode> {
    // The way back is taken first, before anything else could open a descriptor.
    let back: Option<OwnedFd> = args.back_fd.map(take_inherited_pipe).transpose()?;
    if args.common.mode == Mode::Pingpong && back.is_none() {
        bail!(
            "pingpong needs a second pipe for the answers (P5), and this reader was not given one: \
             run `pipe-writer --spawn --mode pingpong`, which makes both pipes and starts this program"
        );
    }
    let stdin: OwnedFd = nix::unistd::dup(io::stdin()).context("dup stdin")?;
    let mut notes = Vec::new();
    match fd_kind(stdin.as_fd())? {
        FdKind::Pipe => notes.extend(show_pipe_ends(&stdin)?),
        FdKind::Fifo => narrate!("stdin is a named pipe (FIFO); see the named-pipe pair for those"),
        FdKind::File => narrate!("stdin is a regular file: replaying frames saved from pipe-writer"),
        FdKind::Terminal => bail!(
            "stdin is a terminal, not a pipe: run `pipe-writer | pipe-reader`, or `pipe-writer --spawn`"
        ),
        FdKind::Other => narrate!("stdin is neither a pipe nor a file; reading frames from it anyway"),
    }

    let setup = Setup {
        program: PROGRAM.into(),
        mechanism: MECHANISM.into(),
        flavour: if args.spawned { "spawn" } else { "shell" }.into(),
        wait: "blocking".into(),
        args: args.common.clone(),
        max_payload: args.max_size.min(MAX_PAYLOAD),
    };
    narrate!("reading from the pipe: read() blocks while it is empty (P6)");
    let mut src = StreamSource::new(File::from(stdin), setup.max_payload);
    let end = match back {
        Some(fd) => {
            let mut sink = StreamSink::new(File::from(fd));
            run_reader(&setup, &mut src, Some(&mut sink))?
        }
        None => run_reader::<_, NoWayBack>(&setup, &mut src, None)?,
    };
    let mut report = end.into_report("the pipe")?;
    report.notes = notes;
    conclude(&report, args.common.json)
}

/// Prints who holds the two ends of the pipe on stdin, with their PPIDs (P1, P4).
fn show_pipe_ends(stdin: &OwnedFd) -> Result<Vec<String>> {
    let ends = pipe_ends(stdin.as_fd())?;
    let me = std::process::id() as i32;
    let my_ppid = nix::unistd::getppid().as_raw();
    let mut notes = vec![format!("reader pid {me} ppid {my_ppid}")];
    for e in ends.iter().filter(|e| e.writes) {
        narrate!(
            "the write end is held by pid {} ({}), whose parent is pid {}",
            e.pid,
            e.comm,
            e.ppid
        );
        notes.push(format!("writer pid {} ppid {}", e.pid, e.ppid));
        if e.pid == my_ppid {
            narrate!("the writer is this reader's parent: it made the pipe, then started us (P4)");
        } else if e.ppid == my_ppid {
            narrate!(
                "writer and reader share parent pid {my_ppid}: siblings that inherited the two ends from the shell (P1)"
            );
        } else {
            narrate!("writer and reader have different parents: what they share is an ancestor that made the pipe (P1 is imprecise)");
        }
    }
    if !ends.iter().any(|e| e.writes) {
        narrate!("no process holds the write end any more: the writer already finished, and what it wrote waits in the pipe");
    }
    narrate!("this reader is pid {me}, parent pid {my_ppid}");
    Ok(notes)
}
