//! mmap-reader: receives messages from mmap-writer through a file both programs map.
//!
//! Run it in two terminals (either one first):
//! ```text
//! mmap-writer                                   | mmap-reader            # text
//! mmap-writer --mode stream --size 64K          | mmap-reader
//! mmap-writer --mode pingpong                   | mmap-reader --wait spin
//! mmap-writer --mode bulk --file-size 1G        | mmap-reader --mode bulk --compare-read   # crate::bulk::reader
//! ```
//! The writer's first frame, its Hello, says what it runs (mode, size, count, warm-up,
//! wait, the ring's capacity, zero-copy), and this reader follows it. `--mode`, `--size`,
//! `--count` and `--warmup` given here are checks: a writer that runs something else is
//! refused, naming both values and the fix; `--wait` given here is run instead.
//! It prints each message (text), or verifies every message and reports throughput and
//! one-way latency (stream), or answers each Ping through the second ring (pingpong). In
//! text mode it shows its own `/proc/self/maps` lines: the shared file (F1) and its own
//! program file, which the kernel mapped when it ran the program (F4).
//!
//! System calls, in order:
//! 1. `sigaction(SIGBUS)`: a handler that says why and which file, if the file is cut
//!    under the map or its file system is full (F7), and removes the file if it is ours
//!    ([`crate::sigbus`]); SIGXFSZ ignored, so `ulimit -f` is an error, not a death.
//! 2. The rendezvous, as in mmap-writer ([`rendezvous::open_ring`], a first reading may
//!    skip it): `statvfs` (room for the ring), `open(O_CREAT|O_EXCL)` or `open` of the
//!    writer's file, `fstat` and `pread` of the header before `mmap(MAP_SHARED)` (F7),
//!    then the futex handshake.
//! 3. Per message, [`Consumer::recv`]: an Acquire load of the record's stamp (in a loop,
//!    or `futex(FUTEX_WAIT)` while the ring is empty with `--wait block|adaptive`, every
//!    100 ms checking with `kill(pid, 0)` that the writer still exists), a copy out of the
//!    mapped page, the checks, and a Release store of our index (`futex(FUTEX_WAKE)` only
//!    if the writer sleeps for room). The first message is the writer's Hello: from it
//!    this reader knows the mode and the wait, takes the producer end of ring 1 for
//!    pingpong, and in text mode shows its `/proc/self/maps` lines.
//! 4. Zero-copy (the Hello says so): every later message with
//!    [`Consumer::recv_in_place`] instead: checked and read where it lies in the map, no
//!    copy, lent to us until the next receive.
//! 5. Text: `write(1)` of the line.
//! 6. Pingpong: the Pong into ring 1 with [`Producer::send`] (reserve, copy in, publish,
//!    as the writer does on ring 0); zero-copy: built in place ([`Producer::reserve_in_place`],
//!    [`Producer::frame_mut`], the session's `seal_pong` with the slot's memo,
//!    [`Producer::publish`]). With
//!    `--sync`, `msync(MS_SYNC)` after it (F5).
//! 7. `unlink` of the file: the pair is done. `munmap` as the map is dropped at exit.
//!
//! One reader per file: a second one is refused with the pid of the one already there
//! (the ring header records both processes). Cleanup: this program removes the file when
//! the pair is done; on an error, Ctrl-C or a dead writer it removes it too.
//!
//! [`Consumer::recv`]: common::ring::Consumer::recv
//! [`Consumer::recv_in_place`]: common::ring::Consumer::recv_in_place
//! [`Producer::send`]: common::ring::Producer::send
//! [`Producer::reserve`]: common::ring::Producer::reserve
//! [`Producer::reserve_in_place`]: common::ring::Producer::reserve_in_place
//! [`Producer::frame_mut`]: common::ring::Producer::frame_mut
//! [`Producer::publish`]: common::ring::Producer::publish

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use common::cli::{ExpectArgs, MeetArgs, Mode, OutputArgs, Program};
use common::narrate;
use common::ring::{Direction, EndOpts, Producer, RingError, Role, Wait};
use common::session::{conclude, Action, InPlace, ReaderSession};
use common::setup::Setup;
use common::timing::Report;

use crate::pair::{follows_text, say_waits, writer_gone as gone};
use crate::rendezvous::{self, OpenRing, RingFile};
use crate::{bulk, show_maps, sigbus, wait_means, MapArgs, Msync};
use common::loans;

/// Program name, in narration and reports.
pub const PROGRAM: &str = "mmap-reader";

/// Command line of mmap-reader.
#[derive(Parser, Debug, Clone)]
#[command(
    name = PROGRAM,
    about = "Receive messages through a memory-mapped file, or verify a large one (claims F1-F7).",
    after_help = "--mode bulk is accepted as a spelling of --bulk.\n\nExamples:\n  mmap-reader                     (with mmap-writer in another terminal: this follows it)\n  mmap-reader --wait block\n  mmap-reader --mode bulk --compare-read"
)]
pub struct Args {
    #[command(flatten)]
    pub run: ExpectArgs,

    #[command(flatten)]
    pub meet: MeetArgs,

    #[command(flatten)]
    pub out: OutputArgs,

    #[command(flatten)]
    pub map: MapArgs,

    /// How this side waits for frames: spin, block (futex), adaptive (spin ~20 us, then
    /// futex); each side of a ring waits its own way [default: as the writer's Hello says].
    #[arg(long, value_enum)]
    pub wait: Option<Wait>,

    #[command(flatten)]
    pub bulk: bulk::reader::Flags,
}

common::program!(Args);

/// The program: bulk or a ring mode (steps 1 to 7 of the module docs).
pub fn run(args: Args) -> Result<ExitCode> {
    // 1. A SIGBUS from a map is fatal; the handler says why and cleans up before death.
    sigbus::install(PROGRAM)?;
    let c = &args.common();
    if args.bulk.on {
        return bulk::reader::run(c, &args.map, &args.bulk);
    }
    // 2. Meet the writer at the file, in either start order; until its Hello says how it
    // waits, this side waits adaptive (or its own --wait).
    let wait = args.wait.unwrap_or(Wait::Adaptive);
    let OpenRing {
        rf,
        mut setup,
        opts,
    } = rendezvous::open_ring(&args.map, c, wait, Role::Reader, PROGRAM)?;
    narrate!(
        "reading frames from ring 0 of the mapped file: loads from shared pages, no read() calls; waiting ({wait}: {}) when it is empty, the writer's Hello first",
        wait_means(wait)
    );
    let mut msync = Msync::new(args.map.sync.then(|| rf.map.clone()));
    let mut report = receive_all(&mut setup, &rf, opts, args.wait, &mut msync)?;
    report.notes.push(rf.note(Role::Writer));
    report.notes.extend(msync.note());
    // 7. The pair is done: this side removes the file (the writer already let go of it).
    rf.remove()?;
    conclude(&report, c.json)
}

/// The loop: each frame from ring 0 goes to the session, which says what to do with it
/// (steps 3 to 6). `asked` is this reader's own `--wait`, if given.
fn receive_all(
    setup: &mut Setup,
    rf: &RingFile,
    opts: EndOpts,
    asked: Option<Wait>,
    msync: &mut Msync,
) -> Result<Report> {
    let mut rx = rf.region.consumer(Direction::WriterToReader, opts)?;
    // Ring 1 only in pingpong, which the Hello says (a Ping in another mode is an error);
    // frames read in place (and Pongs built in place) once it says zero-copy.
    let (mut back, mut in_place): (Option<Producer>, bool) = (None, false);
    let mut session = ReaderSession::new(setup);
    let mut stdout = io::stdout().lock();
    loop {
        // 3. Wait for the next frame, copy it out of the map, check it, release its bytes;
        // 4. or (zero-copy) check it where it lies, lent to us until the next receive.
        let frame = if in_place {
            rx.recv_in_place()
        } else {
            rx.recv()
        };
        let (header, payload) = match frame {
            Ok(frame) => frame,
            // A text writer waits for a person typing: silence is no error while it lives.
            Err(RingError::TimedOut { .. }) if follows_text(&session) => continue,
            Err(e) => return Err(gone(&session, rf, e)),
        };
        let action = if !in_place {
            session.on_frame(&header, payload)?
        } else {
            match session.on_frame_in_place(&header, payload)? {
                InPlace::Action(action) => action,
                InPlace::Answer(pong) => {
                    // 6. The Pong, built where it will lie in ring 1: reserve, seal, publish.
                    let tx = back
                        .as_mut()
                        .context("a Ping, but the Hello said no pingpong")?;
                    let slot = tx
                        .reserve_in_place(pong.payload_len())
                        .map_err(|e| gone(&session, rf, e))?;
                    // The slot's memo spares the checksum a pass over the payload.
                    let memo = tx.memo(&slot);
                    let memo = session.seal_pong(&pong, tx.frame_mut(&slot), memo)?;
                    tx.remember(&slot, memo);
                    tx.publish(slot);
                    msync.after_publish()?;
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
                let opts = EndOpts {
                    wait: setup.wait,
                    ..opts
                };
                match hello.mode {
                    Mode::Pingpong => {
                        let mut tx = rf.region.producer(Direction::ReaderToWriter, opts)?;
                        // One Pong at a time: its records keep to the start of ring 1.
                        tx.answered_one_at_a_time(true);
                        back = Some(tx);
                    }
                    Mode::Text if !setup.args.quiet => show_maps(&rf.path),
                    _ => {}
                }
                rx.set_wait(setup.wait);
                // Pingpong: each Ping is an answer we wait for (prefetch while spinning).
                rx.awaits_answers(setup.mode() == Mode::Pingpong);
            }
            Action::Continue => {}
            // 5. Data to stdout, narration to stderr.
            Action::Print(line) => writeln!(stdout, "{line}").context("writing to stdout")?,
            Action::Echo(pong) => {
                let tx = back
                    .as_mut()
                    .context("a Ping, but the Hello said no pingpong")?;
                // 6. The Pong into ring 1: reserve, copy in, publish.
                if let Err(e) = tx.send(pong.header, pong.payload) {
                    return Err(gone(&session, rf, e));
                }
                msync.after_publish()?;
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
