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
//! writer's business: its first frame, the Hello, says its mode, size, count, warm-up,
//! wait and whether it lends its frames (`--zero-copy`), and this reader follows it.
//! `--mode`, `--size`, `--count` and `--warmup` given here are checks: a writer that runs
//! something else is refused, naming both values. `--wait` given here is run instead.
//!
//! System calls, in order (POSIX, with System V in parentheses):
//! 1. `shm_open(O_CREAT|O_EXCL|O_RDWR, 0600)` (`shmget(IPC_CREAT|IPC_EXCL|0600)`); if the
//!    writer came first: `shm_open(O_RDWR)` + `fstat` (`shmget` + `shmctl(IPC_STAT)`).
//! 2. Creator: `ftruncate`, `mmap(MAP_SHARED)` (`shmat`), POSIX `fallocate`,
//!    `sigaction(SIGBUS)`, header, `FUTEX_WAIT` for the writer. Opener: `mmap` (`shmat`),
//!    `sigaction(SIGBUS)`, wait for `ready`, attach, `FUTEX_WAKE`. Steps 1 and 2 are
//!    [`rendezvous`](crate::rendezvous()), which a first reading may skip.
//! 3. The loop ([`common::ring::spsc`]): `recv` takes each frame out of ring 0 after an
//!    Acquire load of its record's stamp (spin, or `futex(FUTEX_WAIT)` while the ring is
//!    empty), copies it into our private buffer, decodes and checksums that copy, then
//!    publishes our index so the writer may reuse the bytes (`FUTEX_WAKE` only if the
//!    writer sleeps on a full ring). The first frame is the writer's Hello: from it this
//!    reader knows the mode and the wait, and in pingpong takes the producer end of the
//!    way back, ring 1, where each Ping is answered by `reserve`, `copy_in`, `publish`.
//!    Text mode prints each message on stdout (`write`).
//! 4. If the Hello says zero-copy, every later frame is taken with `recv_in_place`: the
//!    header copied and decoded, the checksum computed over the payload where it lies (no
//!    copy), the record lent to us until the next receive; each Pong is built in place in
//!    ring 1 (`reserve_in_place`, `frame_mut`, the session's `seal_pong`, `publish`; from 16 KiB up
//!    the checksum comes from the slot's memo, `memo`/`remember`).
//! 5. At End: System V shows `nattch` (`shmctl(IPC_STAT)`), then `shm_unlink`
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
use common::narrate;
use common::ring::{Consumer, Direction, Producer, RingError, Role, Wait};
use common::session::{conclude, Action, InPlace, ReaderSession};
use common::setup::{Mechanism, Setup};
use common::timing::Report;

use crate::{follows_text, rendezvous, say_waits, wait_means, way_back, writer_gone};
use crate::{Shared, ShmArgs, DEFAULT_NAME};
use common::loans;

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
    /// (spin 20 us, then sleep); each side of a ring waits its own way [default: as the
    /// writer's Hello says].
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
    // and returns after --timeout without a frame; the Hello says whether that ends the
    // run (stream, pingpong) or not (text: a person types), and how to wait from then on.
    let wait = args.wait.unwrap_or(Wait::Adaptive);
    let opts = shared.end_opts(wait, Some(c.timeout));
    // The consumer end of ring 0, with a private buffer of one maximal frame.
    let mut rx = shared.region.consumer(Direction::WriterToReader, opts)?;
    // What the report says about this run; the mode, size, count and wait come with the Hello.
    let mut setup = Setup {
        program: PROGRAM,
        mechanism: Mechanism::Shm,
        flavour: args.shm.flavour(),
        wait,
        args: c.clone(),
        max_payload: shared.region.max_payload(),
    };
    narrate!(
        "waiting for frames in ring 0 ({wait} waiting: {}), the writer's Hello first{}",
        wait_means(wait),
        if args.wait.is_none() {
            "; then this reader waits as it says"
        } else {
            ""
        }
    );
    // 3-4. The loop.
    let mut report = take_frames(&mut setup, &shared, &mut rx, args.wait)?;
    report.notes.push(shared.note());
    // 5. nattch, then shm_unlink (IPC_RMID); the mapping goes with the region.
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
    // Ring 1 carries Pongs back once the Hello says pingpong; frames are read where they
    // lie (and Pongs built in place) once it says zero-copy.
    let (mut back, mut in_place): (Option<Producer>, bool) = (None, false);
    // Text mode prints on stdout (narration goes to stderr), locked once.
    let mut stdout = io::stdout().lock();
    loop {
        // Acquire load of the record's stamp (waiting while ring 0 is empty), then a copy
        // into our private buffer and the checks, our index published: the bytes are free.
        // 4. Zero-copy: the checks over the bytes where they lie, lent to the next receive.
        let frame = if in_place {
            rx.recv_in_place()
        } else {
            rx.recv()
        };
        let (header, payload) = match frame {
            Ok(frame) => frame,
            // A text writer waits for a person typing: silence is no error while it lives.
            Err(RingError::TimedOut { .. }) if follows_text(&session) => continue,
            Err(e) => return Err(writer_gone(&session, e, &what)),
        };
        let action = if !in_place {
            session.on_frame(&header, payload)?
        } else {
            match session.on_frame_in_place(&header, payload)? {
                InPlace::Action(action) => action,
                InPlace::Answer(pong) => {
                    // 4. The Pong is built where it will lie in ring 1: reserve, seal in
                    // place (sequence number, header, checksum: derived from the slot's
                    // memo when the last Pong there left one), publish.
                    let back = way_back(&mut back)?;
                    let slot = back
                        .reserve_in_place(pong.payload_len())
                        .map_err(|e| writer_gone(&session, e, &what))?;
                    let memo = back.memo(&slot);
                    let memo = session.seal_pong(&pong, back.frame_mut(&slot), memo)?;
                    back.remember(&slot, memo);
                    back.publish(slot);
                    continue;
                }
            }
        };
        match action {
            Action::Hello(hello) => {
                // The writer's settings are this run's now, its wait too unless --wait.
                setup.follow(hello);
                setup.wait = asked.unwrap_or(hello.wait);
                say_waits(hello, setup.wait, asked);
                loans::say_following(hello);
                in_place = hello.zero_copy;
                if hello.mode == Mode::Pingpong {
                    let opts = shared.end_opts(setup.wait, Some(setup.args.timeout));
                    let mut tx = shared.region.producer(Direction::ReaderToWriter, opts)?;
                    // One Pong at a time: its records keep to the start of ring 1.
                    tx.answered_one_at_a_time(true);
                    back = Some(tx);
                }
                rx.set_wait(setup.wait);
                // Pingpong: each Ping is an answer we wait for (prefetch while spinning).
                rx.awaits_answers(setup.mode() == Mode::Pingpong);
            }
            Action::Continue => {}
            Action::Print(line) => writeln!(stdout, "{line}").context("writing to stdout")?,
            Action::Echo(pong) => {
                // The Pong goes back in ring 1 the way the writer sends: reserve room,
                // copy in, publish with a Release store (and FUTEX_WAKE if it sleeps).
                let back = way_back(&mut back)?;
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
    let notes = loans::reader_notes(session.writer_hello());
    let mut report = session.finish();
    // The wait this side ran: its own --wait, or the writer's from the Hello.
    report.wait = setup.wait.as_str().into();
    report.notes.extend(notes);
    Ok(report)
}
