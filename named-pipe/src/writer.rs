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
//! named-pipe-writer --mode stream --size 64K --splice  # vmsplice: frames lent, not copied
//! ```
//!
//! The reader needs no flags: this program's first frame, its Hello, tells it the mode,
//! size and count, and it follows them.
//!
//! System calls, in order (the numbers mark them in the code below):
//! 1. `open` + `flock(LOCK_EX|LOCK_NB)` of `<runtime dir>/NAME.writer.lock`: this is the
//!    FIFO's only writer; a second one is refused with this one's pid, since a FIFO would
//!    let it in and mix its messages with ours ([`take_role_lock`]).
//! 2. `lstat` of `<runtime dir>/NAME`: missing -> `mkfifo(0600)`; a FIFO of ours -> reuse
//!    it; anything else -> refuse (never unlink what is not ours). Pingpong: the same for
//!    `NAME.back` ([`prepare_fifos`]).
//! 3. `open(NAME, O_WRONLY|O_NONBLOCK)`: succeeds if a reader already has the FIFO open,
//!    fails with ENXIO if not. Then, if needed, the real `open(NAME, O_WRONLY)`, which
//!    blocks until a reader opens the other end (N7); a watchdog ends the wait at
//!    `--timeout` ([`open_for_writing`]).
//! 4. `fcntl(F_SETPIPE_SZ)` (`--pipe-size`), `fcntl(F_GETPIPE_SZ)`: the capacity, which the
//!    Hello states.
//! 5. `fcntl(F_SETFL, O_NONBLOCK)`, so a full FIFO is noticed (N7) and waited for in `poll`.
//! 6. The loop: one `write` per frame, the Hello first; on a full FIFO (a short count or
//!    EAGAIN) `poll(POLLOUT)`, then the rest (a wait over half a second is narrated;
//!    [`FullWatch`]); in text mode a `read` of stdin. `--splice` (stream):
//!    `vmsplice(SPLICE_F_NONBLOCK)` of the same bytes instead of `write`, which lends the
//!    FIFO the frame's pages; each frame is built in the next of K buffers, so it is read
//!    before it is rebuilt ([`splice`]). Pingpong, right after the Hello: `open(NAME.back,
//!    O_RDONLY)`, which blocks until the reader, told by the Hello, opens it for writing:
//!    the way back is a second FIFO, because this descriptor only writes (N4, N6)
//!    ([`open_back_for_reading`]); then a `read` of each Pong from it.
//! 7. `close`, which the reader sees as end of input after End; the lock is released.
//!
//! Start order: either. Whoever comes first makes the FIFO(s); the other finds them.
//! Cleanup: the reader removes the names when the pair is done. This side removes a FIFO
//! it created only if it never got as far as a connected reader (error or Ctrl-C while
//! waiting in `open`, or a reader that refused the Hello). If the reader goes away, `write`
//! fails with EPIPE (Rust ignores SIGPIPE, so it is an error value, not a death): "reader
//! closed the FIFO", exit 1.
//!
//! [`splice`]: pipe::splice
//! [`take_role_lock`]: crate::rendezvous::take_role_lock
//! [`open_back_for_reading`]: crate::rendezvous::open_back_for_reading
//! [`prepare_fifos`]: crate::rendezvous::prepare_fifos
//! [`open_for_writing`]: crate::rendezvous::open_for_writing

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;
use common::cleanup::Owned;
use common::cli::{parse_bytes, MeetArgs, Mode, OutputArgs, Program, RunArgs};
use common::frame::{Kind, MAX_PAYLOAD};
use common::narrate;
use common::session::{conclude, Next, WriterSession};
use common::setup::{Flavour, Role, Setup, Wait};
use common::stream::FullWatch;
use common::stream::{self, check_pipe_size, Delivery};
use common::timing::Report;
use pipe::splice::{self, Frames, Vmsplice};
use pipe::WayBack;

use crate::rendezvous::{open_back_for_reading, open_for_writing, prepare_fifos, take_role_lock};
use crate::{blocked_note, fifo_paths, show_capacity, MECHANISM};

/// Program name, in narration and reports.
pub const PROGRAM: &str = "named-pipe-writer";

/// Command line of named-pipe-writer.
#[derive(Parser, Debug, Clone)]
#[command(
    name = PROGRAM,
    about = "Send messages through a named pipe (FIFO) (claims N1-N7).",
    after_help = "Examples (start named-pipe-reader in another terminal, with the same --name if any: it follows this writer):\n  named-pipe-writer\n  named-pipe-writer --mode pingpong --count 100000\n  named-pipe-writer --mode stream --size 64K --pipe-size 1M"
)]
pub struct Args {
    #[command(flatten)]
    pub run: RunArgs,

    #[command(flatten)]
    pub meet: MeetArgs,

    #[command(flatten)]
    pub out: OutputArgs,

    /// FIFO capacity (F_SETPIPE_SZ), 4 KiB up to /proc/sys/fs/pipe-max-size [default: the kernel's, 64 KiB].
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub pipe_size: Option<usize>,

    /// Stream mode: lend the frames' pages to the FIFO with vmsplice(2) instead of copying them.
    #[arg(long)]
    pub splice: bool,
}

common::program!(Args, name = crate::DEFAULT_NAME);

/// The program: make or find the FIFO(s), open them, run the mode, report.
pub fn run(args: Args) -> Result<ExitCode> {
    // Flags are checked before any FIFO exists.
    check_pipe_size(args.pipe_size)?;
    splice::check_mode(args.splice, args.run.mode)?;
    let c = &args.common();
    let setup = Setup {
        program: PROGRAM,
        mechanism: MECHANISM,
        flavour: Flavour::Fifo,
        wait: Wait::Block,
        args: c.clone(),
        max_payload: MAX_PAYLOAD,
    };
    let (there_path, back_path) = fifo_paths(c.name.as_deref())?;
    // 1. One writer per FIFO, before the FIFO is touched: held until this program ends.
    let _lock = take_role_lock(&there_path, Role::Writer, PROGRAM)?;
    // 2. The names (and NAME.back for pingpong). What this side creates it owns until a
    //    reader has opened it: Ctrl-C while waiting below removes it, and so does an error.
    let back = (c.mode == Mode::Pingpong).then_some(back_path.as_path());
    let owned = prepare_fifos(&there_path, back)?;
    // 3. The way there: blocks until a reader opens the other end (N7).
    let mut fifo = open_for_writing(&there_path, c)?;
    // 4. The buffer belongs to the open FIFO, so it is sized now, not at mkfifo.
    let (cap, note) = show_capacity(fifo.as_fd(), args.pipe_size)?;
    let mut notes = vec![note];
    // 5. Non-blocking, so that a full FIFO is seen (N7); the buffers, K with --splice.
    let mut full = FullWatch::new(fifo.as_fd(), "FIFO", "N7")?;
    let mut frames = Frames::new(args.splice, cap, c.size, &mut full, "FIFO")?;
    // 6. The loop (pingpong opens the way back in it, right after the Hello).
    let result = send_all(&setup, cap, &mut fifo, &mut full, back, owned, &mut frames);
    // 7. Closing the write end is what the reader sees as end of input after End.
    drop(fifo);
    let mut report = result?;
    notes.push(frames.note());
    notes.push(blocked_note(&full, args.splice));
    notes.push(format!("writer pid {}", std::process::id()));
    report.notes = notes;
    conclude(&report, c.json)
}

/// The send loop: the session says what goes next (its Hello first), this function makes
/// the calls; pingpong opens `back` after the Hello. `owned`: the names this side created.
fn send_all(
    setup: &Setup,
    cap: usize,
    fifo: &mut File,
    full: &mut FullWatch,
    back: Option<&Path>,
    mut owned: Vec<Owned>,
    frames: &mut Frames,
) -> Result<Report> {
    // EPIPE on a write, or EOF on the way back: the reader is gone.
    const GONE: &str = "closed the FIFO (write failed with EPIPE)";
    let mut session = WriterSession::new(setup).capacity(cap as u64);
    let lent = frames.lent();
    // The Pongs come back as a byte stream too, through NAME.back, once it is open.
    let mut answers: Option<WayBack> = None;
    if back.is_none() {
        // The reader has the FIFO open: from here on it owns the name and removes it.
        owned.drain(..).for_each(Owned::release);
    }
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
            // a full FIFO (N7) waits in poll.
            // --splice: vmsplice(2) of the same bytes, lending the FIFO their pages.
            Next::Send(out) => {
                let hello = out.kind == Kind::Hello;
                let sent = match lent {
                    true => full.write_frame(&mut Vmsplice(fifo.as_fd()), out)?,
                    false => full.write_frame(fifo, out)?,
                };
                if sent == Delivery::PeerGone {
                    return Err(session.reader_left(GONE));
                }
                // Pingpong: the way back, a second FIFO, opened for reading now that the
                // Hello has told the reader to open it for writing (N6).
                if let Some(back) = back.filter(|_| hello) {
                    let Some(f) = open_back_for_reading(back, fifo.as_fd(), &setup.args)? else {
                        return Err(session.reader_left("closed the FIFO"));
                    };
                    answers = Some(WayBack::new(f));
                    // Both FIFOs are connected: the reader owns the names now.
                    owned.drain(..).for_each(Owned::release);
                }
            }
            // read(2) from NAME.back until the Pong is whole; it blocks while empty.
            // false: read returned 0, the reader closed its end.
            Next::AwaitAnswer => {
                let Some(back) = answers.as_mut() else {
                    bail!("pingpong needs a way back from the reader, and this setup has none");
                };
                if !back.read_pong(&mut session)? {
                    return Err(session.reader_left(GONE));
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
