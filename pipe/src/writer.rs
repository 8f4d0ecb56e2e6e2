//! pipe-writer: sends messages into an anonymous pipe.
//!
//! Run it (two ways, both first class):
//! ```text
//! pipe-writer | pipe-reader                     # shell mode: the shell makes the pipe (P1)
//! pipe-writer --spawn                           # spawn mode: this program makes it (P4)
//! pipe-writer --spawn --mode pingpong           # round trips over two pipes (P5)
//! pipe-writer --mode stream --size 64K | pipe-reader
//! pipe-writer --spawn --mode stream --size 64K --splice   # vmsplice: frames lent, not copied
//! ```
//! Type lines in text mode; each line is one message. Ctrl-D ends both programs cleanly.
//! The reader needs no flags: this program's first frame, its Hello, tells it the mode,
//! size and count (and the pipe's capacity), and it follows them.
//!
//! System calls, in order (the numbers mark them in the code below):
//! 1. The pipe. Shell mode: `dup(1)` and `fstat` to see what stdout is; the shell already
//!    connected it to the reader. Spawn mode ([`spawn_reader`]): `pipe2(O_CLOEXEC)` for
//!    the way there (and, for pingpong, a second one for the way back, P5); `fcntl(F_SETFD,
//!    0)` so the child inherits the back pipe's write end; `fork`+`exec` of pipe-reader
//!    (std's `Command`) with the read end as its stdin; `close` of the ends the parent does
//!    not use, which is what lets each side see EOF.
//! 2. `fcntl(F_SETPIPE_SZ)` (`--pipe-size`), `fcntl(F_GETPIPE_SZ)`.
//! 3. `fcntl(F_SETFL, O_NONBLOCK)`, so a full pipe is noticed (P6) and waited for in `poll`.
//! 4. The loop: one `write` per frame, the Hello first; on a full pipe (a short count or
//!    EAGAIN) `poll(POLLOUT)`, then the rest of the frame (a wait over half a second is
//!    narrated; [`FullWatch`]); in pingpong a `read` of each Pong from the way
//!    back; in text mode a `read` of stdin.
//!    `--splice` (stream mode): `vmsplice(SPLICE_F_NONBLOCK)` of the same bytes instead, which
//!    lends the pipe the frame's pages; each frame is built in the next of K buffers, so the
//!    reader has read a buffer before it is rebuilt ([`splice`](crate::splice) says why).
//! 5. `close` of the write end, which the reader sees as end of input after End; in spawn
//!    mode `waitpid` for the child.
//!
//! Start order: shell mode starts both at once; spawn mode starts the reader itself.
//! Cleanup: an anonymous pipe has no name, so nothing outlives the processes: the kernel
//! frees it when the last descriptor closes. If the reader goes away, the next `write`
//! fails with EPIPE (Rust ignores SIGPIPE, so it is an error value, not a death) and this
//! program says "reader closed the pipe after N messages" and exits 1.
//!
//! In shell mode stdout *is* the pipe, so this program's own report goes to stderr.
//!
//! [`spawn_reader`]: crate::rendezvous::spawn_reader

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;
use common::cli::{parse_bytes, Mode, OutputArgs, Program, RunArgs};
use common::frame::MAX_PAYLOAD;
use common::narrate;
use common::session::{conclude, Next, WriterSession};
use common::setup::{Flavour, Setup, Wait};
use common::stream::{self, Delivery};
use common::timing::Report;

use crate::rendezvous::{self, FdKind};
use crate::splice::{Frames, Vmsplice};
use crate::{blocked_note, show_capacity, WayBack, MECHANISM};
use common::stream::FullWatch;

/// Program name, in narration and reports.
pub const PROGRAM: &str = "pipe-writer";

/// Command line of pipe-writer.
#[derive(Parser, Debug, Clone)]
#[command(
    name = PROGRAM,
    about = "Send messages through an anonymous pipe (claims P1-P6).",
    after_help = "Examples (the reader follows this writer's Hello: it needs no flags):\n  pipe-writer | pipe-reader\n  pipe-writer --spawn --mode pingpong --count 100000\n  pipe-writer --mode stream --size 64K | pipe-reader"
)]
pub struct Args {
    #[command(flatten)]
    pub run: RunArgs,

    #[command(flatten)]
    pub out: OutputArgs,

    /// Make the pipe(s) here and start pipe-reader as a child (P4); needed for pingpong (P5).
    #[arg(long)]
    pub spawn: bool,

    /// Pipe capacity (F_SETPIPE_SZ), 4 KiB up to /proc/sys/fs/pipe-max-size [default: the kernel's, 64 KiB].
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub pipe_size: Option<usize>,

    /// Stream mode: lend the frames' pages to the pipe with vmsplice(2) instead of copying them.
    #[arg(long)]
    pub splice: bool,

    /// Spawn mode: the reader program [default: pipe-reader beside this program].
    #[arg(long, hide = true)]
    pub reader_exe: Option<PathBuf>,

    /// Spawn mode: an argument put before the reader's own (repeatable).
    #[arg(long, hide = true, allow_hyphen_values = true)]
    pub reader_arg: Vec<String>,
}

// No --name or --timeout: an anonymous pipe is inherited, not met, and nothing here waits
// for a peer to come.
common::program!(Args, no_meet);

/// The program: check flags, set up the pipe(s), run the mode, report.
pub fn run(args: Args) -> Result<ExitCode> {
    let c = &args.common();
    // Flags are checked before any pipe exists; a bad value exits 2, as clap's do.
    rendezvous::check_flags(&args)?;
    let setup = Setup {
        program: PROGRAM,
        mechanism: MECHANISM,
        flavour: if args.spawn {
            Flavour::Spawn
        } else {
            Flavour::Shell
        },
        wait: Wait::Block,
        args: c.clone(),
        max_payload: MAX_PAYLOAD,
    };
    // 1. The pipe: made here and handed to a child (spawn), or the shell's on stdout.
    let (there, back, mut child, kind) = if args.spawn {
        let s = rendezvous::spawn_reader(&args)?;
        (s.there, s.back, Some(s.child), FdKind::Pipe)
    } else {
        let (stdout, kind) = rendezvous::stdout_pipe()?;
        (stdout, None, None, kind)
    };
    // 2. Its capacity (a FIFO or a file on stdout has none of ours to show); the Hello
    //    states it (0: unknown).
    let (cap, mut notes) = match kind {
        FdKind::Pipe => show_capacity(there.as_fd(), args.pipe_size).map(|(b, n)| (b, vec![n]))?,
        _ => (0, Vec::new()),
    };
    // 3. Non-blocking, so that a full pipe is seen rather than slept in; the frame buffers.
    let mut pipe = File::from(there);
    let mut full = FullWatch::new(pipe.as_fd(), "pipe", "P6")?;
    let mut frames = Frames::new(args.splice, cap, c.size, &mut full, "pipe")?;
    // 4. The loop.
    let back = back.map(File::from);
    let result = send_all(&setup, cap, &mut pipe, &mut full, back, &mut frames);
    notes.push(frames.note());
    // 5. Closing the write end is what the reader sees as end of input after End; waitpid.
    drop(pipe);
    let status = child.as_mut().map(rendezvous::wait_child).transpose()?;
    let mut report = result?;
    notes.push(blocked_note(&full, args.splice));
    let Some((child, status)) = child.zip(status) else {
        // stdout is the pipe: the report goes to stderr, in one write so that it never
        // mixes with the reader's lines on the same terminal.
        report.notes = notes;
        report.eprint(c.json);
        return Ok(ExitCode::SUCCESS);
    };
    if !status.success() {
        bail!("pipe-reader (pid {}) failed: {status}", child.id());
    }
    notes.push(format!("writer pid {}", std::process::id()));
    report.notes = notes;
    conclude(&report, c.json)
}

/// The send loop: the session says what goes next (its Hello first), this function makes
/// the calls. `cap` is the pipe's capacity, for the Hello; `frames`, where they are built.
fn send_all(
    setup: &Setup,
    cap: usize,
    pipe: &mut File,
    full: &mut FullWatch,
    back: Option<File>,
    frames: &mut Frames,
) -> Result<Report> {
    let mut session = WriterSession::new(setup).capacity(cap as u64);
    let lent = frames.lent();
    // The Pongs come back as a byte stream too, through the second pipe.
    let mut answers = back.map(WayBack::new);
    let mut stdin = io::stdin().lock();
    let mut line = Vec::new();
    if setup.mode() == Mode::Text {
        narrate!(
            "type a line and press Enter to send it as one message; Ctrl-D (end of input) ends"
        );
    }
    loop {
        // Each frame in the next buffer: the one, or the next of K with --splice.
        match session.next(frames.next_buf())? {
            // write(2): header and payload in one call (the session builds them back to back);
            // a full pipe (P6) waits in poll.
            // The first frame is the Hello, sent like any other. --splice: vmsplice(2) of
            // the same bytes, which lends the pipe their pages instead of copying them.
            Next::Send(out) => {
                let sent = match lent {
                    true => full.write_frame(&mut Vmsplice(pipe.as_fd()), out)?,
                    false => full.write_frame(pipe, out)?,
                };
                if sent == Delivery::PeerGone {
                    // EPIPE: no read end is open any more.
                    return Err(session.reader_left("closed the pipe"));
                }
            }
            // read(2) from the way back until the Pong is whole; it blocks while empty.
            // false: read returned 0, the reader closed its end of the way back.
            Next::AwaitAnswer => {
                let Some(back) = answers.as_mut() else {
                    bail!("pingpong needs a way back from the reader, and this setup has none");
                };
                if !back.read_pong(&mut session)? {
                    return Err(session.reader_left("closed the pipe"));
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
