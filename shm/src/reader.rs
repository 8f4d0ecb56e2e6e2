//! shm-reader: receives messages from shm-writer through shared memory (claims S1-S5).
//!
//! Run it in two terminals, in either order:
//! ```text
//! terminal 1: shm-reader                         # prints each message as it arrives
//! terminal 2: shm-writer
//! shm-reader --mode stream --wait spin --json    # with shm-writer --mode stream ...
//! shm-reader --sysv                              # System V instead of POSIX
//! ```
//! Pass the same `--name`, `--sysv` and `--capacity` as the writer (S5). `--size` and
//! `--count` are the writer's business; the reader takes whatever arrives and checks it.
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
//!    writer sleeps on a full ring). Each Ping is answered with a Pong in ring 1 by
//!    `reserve`, `copy_in`, `publish`, as the writer sends. Text mode prints each message
//!    on stdout (`write`).
//! 4. At End: System V shows `nattch` (`shmctl(IPC_STAT)`), then `shm_unlink`
//!    (`shmctl(IPC_RMID)`): this program removes the object (S3: the kernel keeps it until
//!    someone does); `munmap` (`shmdt`) as the last handle on the region goes.
//!
//! Start order: either. Cleanup: this program removes the object when the pair is done,
//! and on an error or Ctrl-C. If the writer dies (`kill -9`), the next wait notices within
//! 100 ms that its pid is gone, and this program says so and exits with status 1; a
//! writer that is alive but sends nothing ends a stream or pingpong after `--timeout`.

use std::io::{self, Write as _};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use common::cli::{CommonArgs, Mode};
use common::ring::{Consumer, Direction, Producer, RingError, Role, Wait};
use common::session::{conclude, Action, ReaderSession};
use common::setup::{Mechanism, Setup};
use common::timing::Report;
use common::{narrate, warn};

use crate::{rendezvous, ShmArgs, DEFAULT_NAME};

/// Program name, in narration and reports.
pub const PROGRAM: &str = "shm-reader";

/// Command line of shm-reader.
#[derive(Parser, Debug, Clone)]
#[command(
    name = PROGRAM,
    about = "Receive messages through shared memory, POSIX or System V (claims S1-S5).",
    after_help = "Examples:\n  shm-reader                     (and shm-writer in another terminal)\n  shm-reader --mode pingpong --wait spin --json\n  shm-reader --sysv --capacity 1M"
)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub shm: ShmArgs,
}

common::program!(Args);

/// The program: meet the writer, take what arrives, remove the object, report.
pub fn run(args: Args) -> Result<ExitCode> {
    let c = &args.common;
    // Flags first, before any object exists (a bad value exits 2): the region must fit
    // the kernel's limit for the flavour.
    args.shm.check(None)?;
    // 1-2. Create or open the object, map it, meet the writer.
    let shared = rendezvous(&args.shm, c.name_or(DEFAULT_NAME), Role::Reader, c.timeout)?;

    // Text mode waits for a person typing, so only a dead peer ends a wait there.
    let idle = (c.mode != Mode::Text).then_some(c.timeout);
    // Every wait also checks, each 100 ms, that the writer's pid still exists (kill -9).
    let opts = shared.end_opts(args.shm.wait, idle);
    // The consumer end of ring 0, with a private buffer of one maximal frame.
    let mut rx = shared.region.consumer(Direction::WriterToReader, opts)?;
    // Ring 1 carries Pongs back; made in every mode because the writer decides the mode.
    let mut back = shared.region.producer(Direction::ReaderToWriter, opts)?;
    // What the report says about this run; our --mode only decides whether text is printed.
    let setup = Setup {
        program: PROGRAM,
        mechanism: Mechanism::Shm,
        flavour: args.shm.flavour(),
        wait: args.shm.wait,
        args: c.clone(),
        max_payload: shared.region.max_payload(),
    };
    narrate!(
        "waiting for frames in ring 0 ({} waiting: {})",
        args.shm.wait,
        match args.shm.wait {
            Wait::Spin => "re-reading the writer's index in a loop",
            Wait::Block => "futex sleep on the writer's index until it wakes us",
            Wait::Adaptive => "spin 20 us, then futex sleep",
        }
    );
    // 3. The loop; `what` names the object and the writer if it dies without End.
    let what = format!("{} (writer pid {})", shared.object, shared.peer_pid);
    let mut report = take_frames(&setup, &mut rx, &mut back, &what)?;
    report.notes.push(shared.note());
    // 4. nattch, then shm_unlink (IPC_RMID); the mapping goes with the region.
    shared.show_nattch("at the end");
    drop((rx, back));
    shared.remove()?;
    conclude(&report, c.json)
}

/// Step 3: each frame from ring 0 goes to the session, which says what to do with it.
fn take_frames(
    setup: &Setup,
    rx: &mut Consumer,
    back: &mut Producer,
    what: &str,
) -> Result<Report> {
    // The session verifies each frame (sequence, session, content, End's totals) and times.
    let mut session = ReaderSession::new(setup);
    // Text mode prints on stdout (narration goes to stderr), locked once.
    let mut stdout = io::stdout().lock();
    loop {
        // Acquire load of the writer's index (waiting while ring 0 is empty), a copy into
        // our private buffer, the checks, then our index published: the bytes are free.
        let (header, payload) = match rx.recv() {
            Ok(frame) => frame,
            Err(e) => return Err(writer_gone(&session, e, what)),
        };
        match session.on_frame(&header, payload)? {
            Action::Continue => {}
            Action::Print(line) => writeln!(stdout, "{line}").context("writing to stdout")?,
            Action::Echo(pong) => {
                // The Pong goes back in ring 1 the way the writer sends: reserve room,
                // copy in, publish with a Release store (and FUTEX_WAKE if it sleeps).
                let slot = match back.reserve(pong.payload.len()) {
                    Ok(slot) => slot,
                    Err(e) => return Err(writer_gone(&session, e, what)),
                };
                back.copy_in(&slot, pong.header, pong.payload)?;
                back.publish(slot);
            }
            Action::Done => break,
        }
    }
    Ok(session.finish())
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
