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
//! System calls, in order:
//! - `lstat` of `<runtime dir>/NAME`: missing -> `mkfifo(0600)`; a FIFO of ours -> reuse it;
//!   anything else -> refuse (never unlink what is not ours). Pingpong: the same for `NAME.back`.
//! - `open(NAME, O_WRONLY|O_NONBLOCK)`: succeeds if a reader already has the FIFO open,
//!   fails with ENXIO if not. Then, if needed, the real `open(NAME, O_WRONLY)`, which blocks
//!   until a reader opens the other end (N7); a watchdog ends the wait at `--timeout`.
//! - `fcntl(F_SETPIPE_SZ)` (`--pipe-size`), `fcntl(F_GETPIPE_SZ)`.
//! - Pingpong: `open(NAME.back, O_RDONLY)`, which blocks until the reader opens it for
//!   writing: the way back is a second FIFO, because this descriptor only writes (N4, N6).
//! - `fcntl(F_SETFL, O_NONBLOCK)` so a full FIFO is noticed (N7) and waited for in `poll`;
//!   then one `writev` per frame (and a `read` of each Pong); `close`.
//!
//! Start order: either. Whoever comes first makes the FIFO(s); the other finds them.
//! Cleanup: the reader removes the names when the pair is done. This side removes a FIFO
//! it created only if it never got as far as a connected reader (error or Ctrl-C while
//! waiting in `open`). If the reader goes away, `write` fails with EPIPE (Rust ignores
//! SIGPIPE, so it is an error value, not a death): "reader closed the FIFO", exit 1.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;
use common::cli::{parse_size, CommonArgs, Mode};
use common::frame::MAX_PAYLOAD;
use common::narrate;
use common::protocol::{conclude, run_writer, Setup, StreamSink, StreamSource};
use nix::fcntl::OFlag;

use crate::{
    check_pipe_size, fifo_paths, open_with_timeout, own_fifo, prepare_fifo, show_capacity,
    try_open_for_writing, MECHANISM,
};

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

/// Entry point of the `named-pipe-writer` binary.
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// Runs named-pipe-writer with an explicit argument list (the `bench` runner uses this).
pub fn main_from<I, T>(argv: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::parse_from(argv);
    common::cli::run_main(PROGRAM, args.common.quiet, || run(args))
}

/// The program: make or find the FIFO(s), open them, run the mode, report.
pub fn run(args: Args) -> Result<ExitCode> {
    // Flags are checked before any FIFO exists.
    check_pipe_size(args.pipe_size)?;
    let c = &args.common;
    let pingpong = c.mode == Mode::Pingpong;
    let setup = Setup {
        program: PROGRAM.into(),
        mechanism: MECHANISM.into(),
        flavour: "fifo".into(),
        wait: "blocking".into(),
        args: c.clone(),
        max_payload: MAX_PAYLOAD,
    };
    let (there_path, back_path) = fifo_paths(c.name.as_deref())?;

    // The names. What this side creates it owns until a reader has opened it: Ctrl-C
    // while waiting below removes it, and so does an error on the way.
    let mut owned = Vec::new();
    if prepare_fifo(&there_path)? {
        owned.push(own_fifo(&there_path));
    }
    if pingpong && prepare_fifo(&back_path)? {
        owned.push(own_fifo(&back_path));
    }

    // The way there. First ask without blocking: ENXIO means nobody reads yet.
    let there: File = match try_open_for_writing(&there_path)? {
        Some(fd) => {
            narrate!(
                "a reader already has {} open: open(O_WRONLY) did not need to wait",
                there_path.display()
            );
            File::from(fd)
        }
        None => {
            narrate!(
                "no reader has {} open yet (open with O_NONBLOCK gives ENXIO); open(O_WRONLY) blocks until named-pipe-reader opens it for reading (N7); waiting up to {:?}",
                there_path.display(),
                c.timeout
            );
            match open_with_timeout(&there_path, OFlag::O_WRONLY, c.timeout)? {
                Some(f) => f,
                None => bail!(
                    "no reader opened {} within {:?} (open blocks until both ends exist, N7): start named-pipe-reader{} or raise --timeout",
                    there_path.display(),
                    c.timeout,
                    name_hint(c)
                ),
            }
        }
    };
    narrate!(
        "opened {} for writing: this descriptor can only write (N1, N4)",
        there_path.display()
    );
    let mut notes = vec![show_capacity(there.as_fd(), args.pipe_size)?];

    // The way back (pingpong): a second FIFO, opened for reading (N6).
    let back = if pingpong {
        narrate!(
            "opening {} for reading: the answers need a second FIFO, because each open end goes one way (N6); open(O_RDONLY) blocks until the reader opens it for writing (N7)",
            back_path.display()
        );
        match open_with_timeout(&back_path, OFlag::O_RDONLY, c.timeout)? {
            Some(f) => Some(f),
            None => bail!(
                "the reader did not open {} for writing within {:?}: is it running in pingpong mode?",
                back_path.display(),
                c.timeout
            ),
        }
    } else {
        None
    };
    // Both ends are connected: from here on the reader owns the names and removes them.
    for o in owned {
        o.release();
    }

    let mut sink = StreamSink::noticing_full(there, "FIFO")?;
    let mut stdin = io::stdin().lock();
    let end = match back {
        Some(f) => {
            let mut src = StreamSource::new(f, MAX_PAYLOAD);
            run_writer(&setup, &mut sink, Some(&mut src), &mut stdin)?
        }
        None => run_writer::<_, StreamSource<File>>(&setup, &mut sink, None, &mut stdin)?,
    };
    let blocked = sink.blocked;
    // Closing the write end is what the reader sees as end of input after End.
    drop(sink);
    let mut report = end.into_report("closed the FIFO (write failed with EPIPE)")?;
    if blocked > 0 {
        narrate!("the FIFO was full {blocked} times: the reader was slower than this writer (N7)");
    }
    notes.push(format!(
        "a write found the FIFO full {blocked} times and waited (N7)"
    ));
    notes.push(format!("writer pid {}", std::process::id()));
    report.notes = notes;
    conclude(&report, c.json)
}

/// " --name X" when a name was given, so the hint can be pasted.
pub(crate) fn name_hint(c: &CommonArgs) -> String {
    c.name
        .as_deref()
        .map(|n| format!(" --name {n}"))
        .unwrap_or_default()
}
