//! shm-reader: receives messages from shm-writer through shared memory (claims S1-S5).
//!
//! Run it in two terminals, in either order:
//! ```text
//! terminal 1: shm-reader                         # prints each message as it arrives
//! terminal 2: shm-writer
//! shm-reader --json                              # with shm-writer --mode stream ...
//! shm-reader --sysv                              # System V instead of POSIX
//! shm-reader --mode pingpong --size 64           # only with a writer that runs that
//! ```
//! Pass the same `--name`, `--sysv` and `--capacity` as the writer (S5). The rest is the
//! writer's business: its first frame, the Hello, says its mode, size, count, warm-up and
//! wait, and this reader follows it. `--mode`, `--size`, `--count` and `--warmup` given
//! here are checks: a writer that runs something else is refused, naming both values.
//!
//! System calls, in order (POSIX, with System V in parentheses):
//! 1. `shm_open(O_CREAT|O_EXCL|O_RDWR, 0600)` (`shmget(IPC_CREAT|IPC_EXCL|0600)`); if the
//!    writer came first: `shm_open(O_RDWR)` + `fstat` (`shmget` + `shmctl(IPC_STAT)`).
//! 2. Creator: `ftruncate`, `mmap(MAP_SHARED)` (`shmat`), POSIX `fallocate`,
//!    `sigaction(SIGBUS)`, header, `FUTEX_WAIT` for the writer. Opener: `mmap` (`shmat`),
//!    `sigaction(SIGBUS)`, wait for `ready`, attach, `FUTEX_WAKE`. Steps 1 and 2 are
//!    [`rendezvous`](crate::rendezvous()), which a first reading may skip.
//! 3. The loop ([`common::ring::spsc`]): `recv` takes each frame out of ring 0 after an
//!    Acquire load of the writer's index (spin, or `futex(FUTEX_WAIT)` while the ring is
//!    empty), copies it into our private buffer, decodes and checksums that copy, then
//!    publishes our index so the writer may reuse the bytes (`FUTEX_WAKE` only if the
//!    writer sleeps on a full ring). The first frame is the writer's Hello: from it this
//!    reader knows the mode, and in pingpong takes the producer end of ring 1. Each Ping
//!    is answered with a Pong in ring 1 by `reserve`, `copy_in`, `publish`, as the writer
//!    sends. Text mode prints each message on stdout (`write`).
//! 4. At End: System V shows `nattch` (`shmctl(IPC_STAT)`), then `shm_unlink`
//!    (`shmctl(IPC_RMID)`): this program removes the object (S3: the kernel keeps it until
//!    someone does); `munmap` (`shmdt`) as the last handle on the region goes.
//!
//! One reader per pair: a second one is refused with the pid of the one already there
//! (the ring header records both processes). Start order: either. Cleanup: this program
//! removes the object when the pair is done, and on an error or Ctrl-C. If the writer
//! dies (`kill -9`), the next wait notices within 100 ms that its pid is gone, and this
//! program says so and exits with status 1; a writer that is alive but sends nothing ends
//! a stream or pingpong after `--timeout`.

use std::io::{self, Write as _};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use common::cli::{ExpectArgs, MeetArgs, Mode, OutputArgs, Program};
use common::hello::Hello;
use common::ring::{Consumer, Direction, Producer, RingError, Role, Wait};
use common::session::{conclude, Action, ReaderSession};
use common::setup::{Mechanism, Setup};
use common::timing::Report;
use common::{narrate, warn};

use crate::{rendezvous, wait_means, Shared, ShmArgs, DEFAULT_NAME};

/// Program name, in narration and reports.
pub const PROGRAM: &str = "shm-reader";

/// Command line of shm-reader.
#[derive(Parser, Debug, Clone)]
#[command(
    name = PROGRAM,
    about = "Receive messages through shared memory, POSIX or System V (claims S1-S5).",
    after_help = "Examples:\n  shm-reader                     (and shm-writer in another terminal: this follows it)\n  shm-reader --wait spin --json\n  shm-reader --sysv --capacity 1M"
)]
pub struct Args {
    #[command(flatten)]
    pub run: ExpectArgs,

    #[command(flatten)]
    pub meet: MeetArgs,

    #[command(flatten)]
    pub out: OutputArgs,

    #[command(flatten)]
    pub shm: ShmArgs,

    /// How this side waits for frames: spin (busy, fastest), block (futex sleep), adaptive
    /// (spin 20 us, then sleep); each side of a ring waits its own way [default: adaptive].
    #[arg(long, value_enum)]
    pub wait: Option<Wait>,
}

common::program!(Args, name = DEFAULT_NAME);

/// The program: meet the writer, take what arrives, remove the object, report.
pub fn run(args: Args) -> Result<ExitCode> {
    let c = &args.common();
    // Flags first, before any object exists (a bad value exits 2): the region must fit
    // the kernel's limit for the flavour.
    args.shm.check(None)?;
    // 1-2. Create or open the object, map it, meet the writer.
    let shared = rendezvous(&args.shm, c.name_or(DEFAULT_NAME), Role::Reader, c.timeout)?;

    // Every wait also checks, each 100 ms, that the writer's pid still exists (kill -9),
    // and returns after --timeout without a frame; only the Hello says whether that ends
    // the run (stream, pingpong) or not (text: a person is typing).
    let wait = args.wait.unwrap_or(Wait::Adaptive);
    let opts = shared.end_opts(wait, Some(c.timeout));
    // The consumer end of ring 0, with a private buffer of one maximal frame.
    let mut rx = shared.region.consumer(Direction::WriterToReader, opts)?;
    // What the report says about this run; the mode, size and count come with the Hello.
    let mut setup = Setup {
        program: PROGRAM,
        mechanism: Mechanism::Shm,
        flavour: args.shm.flavour(),
        wait,
        args: c.clone(),
        max_payload: shared.region.max_payload(),
    };
    narrate!(
        "waiting for frames in ring 0 ({wait} waiting: {}), the writer's Hello first",
        wait_means(wait)
    );
    // 3. The loop.
    let mut report = take_frames(&mut setup, &shared, &mut rx, args.wait)?;
    report.notes.push(shared.note());
    // 4. nattch, then shm_unlink (IPC_RMID); the mapping goes with the region.
    shared.show_nattch("at the end");
    drop(rx);
    shared.remove()?;
    conclude(&report, c.json)
}

/// Step 3: each frame from ring 0 goes to the session, which says what to do with it.
/// `asked` is this reader's own `--wait`, if given.
fn take_frames(
    setup: &mut Setup,
    shared: &Shared,
    rx: &mut Consumer,
    asked: Option<Wait>,
) -> Result<Report> {
    // Names the object and the writer, if it dies without End.
    let what = format!("{} (writer pid {})", shared.object, shared.peer_pid);
    // The session verifies each frame (sequence, session, content, End's totals) and times.
    let mut session = ReaderSession::new(setup);
    // Ring 1 carries Pongs back: taken once the Hello says pingpong.
    let mut back: Option<Producer> = None;
    // Text mode prints on stdout (narration goes to stderr), locked once.
    let mut stdout = io::stdout().lock();
    loop {
        // Acquire load of the writer's index (waiting while ring 0 is empty), a copy into
        // our private buffer, the checks, then our index published: the bytes are free.
        let (header, payload) = match rx.recv() {
            Ok(frame) => frame,
            // A text writer waits for a person typing: silence is no error while it lives.
            Err(RingError::TimedOut { .. }) if follows_text(&session) => continue,
            Err(e) => return Err(writer_gone(&session, e, &what)),
        };
        match session.on_frame(&header, payload)? {
            Action::Hello(hello) => {
                // The writer's settings are this run's now; pingpong needs the way back.
                setup.follow(hello);
                say_waits(hello, setup.wait, asked);
                if hello.mode == Mode::Pingpong {
                    let opts = shared.end_opts(setup.wait, Some(setup.args.timeout));
                    back = Some(shared.region.producer(Direction::ReaderToWriter, opts)?);
                }
            }
            Action::Continue => {}
            Action::Print(line) => writeln!(stdout, "{line}").context("writing to stdout")?,
            Action::Echo(pong) => {
                let Some(back) = back.as_mut() else {
                    anyhow::bail!("a Ping came, but the writer's Hello did not say pingpong");
                };
                // The Pong goes back in ring 1 the way the writer sends: reserve room,
                // copy in, publish with a Release store (and FUTEX_WAKE if it sleeps).
                let slot = match back.reserve(pong.payload.len()) {
                    Ok(slot) => slot,
                    Err(e) => return Err(writer_gone(&session, e, &what)),
                };
                back.copy_in(&slot, pong.header, pong.payload)?;
                back.publish(slot);
            }
            Action::Done => break,
        }
    }
    Ok(session.finish())
}

/// How the two sides wait: each side of a ring waits its own way (the futex wake-ups
/// work whatever the other side does), so a different `--wait` here is run, and said.
fn say_waits(hello: &Hello, mine: Wait, asked: Option<Wait>) {
    let theirs = hello.wait;
    match asked {
        _ if mine == theirs => narrate!("both sides wait {mine}"),
        Some(_) => narrate!(
            "this reader waits {mine} (--wait), the writer {theirs}: each side of the ring waits its own way"
        ),
        None => narrate!(
            "this reader waits {mine}, the writer {theirs}: each side of the ring waits its own way (pass --wait {theirs} to wait as the writer does)"
        ),
    }
}

/// Whether the writer's Hello said text mode: a person types, so a wait may last.
fn follows_text(session: &ReaderSession) -> bool {
    session.writer_hello().is_some_and(|h| h.mode == Mode::Text)
}

/// A writer that died without End: say so, then fail with what arrived.
fn writer_gone(session: &ReaderSession, e: RingError, what: &str) -> anyhow::Error {
    match e {
        RingError::PeerGone { pid } => {
            warn!("peer (pid {pid}) is gone");
            session.writer_left(what, None)
        }
        e => e.into(),
    }
}
