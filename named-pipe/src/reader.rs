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
//! System calls, in order:
//! - `lstat` of `<runtime dir>/NAME`: missing -> `mkfifo(0600)`; a FIFO of ours -> reuse it;
//!   anything else -> refuse. Pingpong: the same for `NAME.back`.
//! - `open(NAME, O_RDONLY)`: blocks until a writer opens the FIFO for writing (N7); a
//!   watchdog ends the wait at `--timeout`.
//! - Pingpong: `open(NAME.back, O_WRONLY)`, which blocks until the writer opens it for
//!   reading: the answers travel in a FIFO of their own (N6).
//! - A scan of `/proc/*/fd` to show who holds the other end, and that it is no relative (N5).
//! - `read` into a 1 MiB buffer, as many frames per call as have arrived (N3: in order);
//!   `writev` of each Pong. `read` blocks while the FIFO is empty (N7) and returns 0 once
//!   the writer has closed it: after End that is a clean finish, before it the writer died
//!   (exit 1; "truncated stream" if it died inside a frame).
//! - `unlink` of both names when the pair is done.
//!
//! Start order: either. Cleanup: this side removes the FIFO names when the pair is done,
//! whoever created them, and on an error or Ctrl-C too (once the writer is connected;
//! before that, only what this side created). A name is only needed to meet: removing it
//! does not disturb descriptors that are already open.

use std::ffi::OsString;
use std::fs::File;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;
use common::cli::{parse_size, CommonArgs, Mode};
use common::frame::MAX_PAYLOAD;
use common::narrate;
use common::protocol::{conclude, run_reader, NoWayBack, Setup, StreamSink, StreamSource};
use nix::fcntl::OFlag;

use crate::writer::name_hint;
use crate::{fifo_paths, holders, open_with_timeout, own_fifo, prepare_fifo, MECHANISM};

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

/// Entry point of the `named-pipe-reader` binary.
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// Runs named-pipe-reader with an explicit argument list (the `bench` runner uses this).
pub fn main_from<I, T>(argv: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::parse_from(argv);
    common::cli::run_main(PROGRAM, args.common.quiet, || run(args))
}

/// The program: make or find the FIFO(s), open them, read until End, remove the names.
pub fn run(args: Args) -> Result<ExitCode> {
    let c = &args.common;
    let pingpong = c.mode == Mode::Pingpong;
    let setup = Setup {
        program: PROGRAM.into(),
        mechanism: MECHANISM.into(),
        flavour: "fifo".into(),
        wait: "blocking".into(),
        args: c.clone(),
        max_payload: args.max_size.min(MAX_PAYLOAD),
    };
    let (there_path, back_path) = fifo_paths(c.name.as_deref())?;

    // The names: created here if the writer has not made them yet. What is created here is
    // removed on every way out, Ctrl-C included.
    let mut there_owned = prepare_fifo(&there_path)?.then(|| own_fifo(&there_path));
    let mut back_owned = if pingpong {
        prepare_fifo(&back_path)?.then(|| own_fifo(&back_path))
    } else {
        None
    };

    // The way there. Opening for reading blocks until a writer opens for writing (N7).
    narrate!(
        "opening {} for reading: open(O_RDONLY) blocks until named-pipe-writer opens it for writing (N7); waiting up to {:?}",
        there_path.display(),
        c.timeout
    );
    let Some(there) = open_with_timeout(&there_path, OFlag::O_RDONLY, c.timeout)? else {
        bail!(
            "no writer opened {} within {:?} (open blocks until both ends exist, N7): start named-pipe-writer{} or raise --timeout",
            there_path.display(),
            c.timeout,
            name_hint(c)
        );
    };
    narrate!(
        "opened {} for reading: this descriptor can only read (N1, N4)",
        there_path.display()
    );
    // The writer is connected: from now on this side removes the names, whoever made them.
    there_owned.get_or_insert_with(|| own_fifo(&there_path));

    // The way back (pingpong): a second FIFO, opened for writing (N6).
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
    let notes = show_peers(&there_path);

    narrate!("reading from the FIFO: read() blocks while it is empty (N7)");
    let mut src = StreamSource::new(there, setup.max_payload);
    let end = match back {
        Some(f) => {
            let mut sink = StreamSink::new(f);
            run_reader(&setup, &mut src, Some(&mut sink))
        }
        None => run_reader::<_, NoWayBack>(&setup, &mut src, None),
    };
    // The pair is done (or failed): remove the names. An error path drops the guards,
    // which removes them too.
    for o in [there_owned, back_owned].into_iter().flatten() {
        o.remove()?;
    }
    let mut report = end?.into_report("the FIFO")?;
    report.notes = notes;
    conclude(&report, c.json)
}

/// Prints who holds the write end, with parents, to show the two are unrelated (N5).
fn show_peers(path: &std::path::Path) -> Vec<String> {
    let me = std::process::id() as i32;
    let my_ppid = nix::unistd::getppid().as_raw();
    let mut notes = vec![format!("reader pid {me} ppid {my_ppid}")];
    let writers: Vec<_> = holders(path).into_iter().filter(|h| h.writes).collect();
    for w in &writers {
        narrate!(
            "the write end is held by pid {} ({}), whose parent is pid {}; this reader is pid {me}, parent {my_ppid}",
            w.pid,
            w.comm,
            w.ppid
        );
        notes.push(format!("writer pid {} ppid {}", w.pid, w.ppid));
        if w.pid != my_ppid && w.ppid != me {
            narrate!("neither started the other: they met only through the name (N2, N5)");
        }
    }
    if writers.is_empty() {
        narrate!("no process holds the write end any more: the writer already finished, and its data waits in the FIFO");
    }
    notes
}
