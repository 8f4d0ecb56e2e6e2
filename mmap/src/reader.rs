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
//! wait, the ring's capacity), and this reader follows it. `--mode`, `--size`, `--count`
//! and `--warmup` given here are checks: a writer that runs something else is refused,
//! naming both values and the fix.
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
//! 3. Per message, [`Consumer::recv`]: an Acquire load of the writer's index (in a loop,
//!    or `futex(FUTEX_WAIT)` while the ring is empty with `--wait block|adaptive`, every
//!    100 ms checking with `kill(pid, 0)` that the writer still exists), a copy out of the
//!    mapped page, the checks, and a Release store of our index (`futex(FUTEX_WAKE)` only
//!    if the writer sleeps for room). The first message is the writer's Hello: from it
//!    this reader knows the mode, takes the producer end of ring 1 for pingpong, and in
//!    text mode shows its `/proc/self/maps` lines.
//! 4. Text: `write(1)` of the line.
//! 5. Pingpong: the Pong into ring 1 with [`Producer::send`] (reserve, copy in, publish,
//!    as the writer does on ring 0); with `--sync`, `msync(MS_SYNC)` after it (F5).
//! 6. `unlink` of the file: the pair is done. `munmap` as the map is dropped at exit.
//!
//! One reader per file: a second one is refused with the pid of the one already there
//! (the ring header records both processes). Cleanup: this program removes the file when
//! the pair is done; on an error, Ctrl-C or a dead writer it removes it too.
//!
//! [`Consumer::recv`]: common::ring::Consumer::recv
//! [`Producer::send`]: common::ring::Producer::send

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use common::cli::{ExpectArgs, MeetArgs, Mode, OutputArgs, Program};
use common::ring::{Direction, EndOpts, Producer, RingError, Role, Wait};
use common::session::{conclude, Action, ReaderSession};
use common::setup::Setup;
use common::timing::Report;
use common::{narrate, warn};

use crate::pair::say_waits;
use crate::rendezvous::{self, OpenRing, RingFile};
use crate::{bulk, show_maps, sigbus, wait_means, MapArgs, Msync};

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
    /// futex); each side of a ring waits its own way [default: adaptive].
    #[arg(long, value_enum)]
    pub wait: Option<Wait>,

    #[command(flatten)]
    pub bulk: bulk::reader::Flags,
}

common::program!(Args);

/// The program: bulk or a ring mode (steps 1 to 6 of the module docs).
pub fn run(args: Args) -> Result<ExitCode> {
    // 1. A SIGBUS from a map is fatal; the handler says why and cleans up before death.
    sigbus::install(PROGRAM)?;
    let c = &args.common();
    if args.bulk.on {
        return bulk::reader::run(c, &args.map, &args.bulk);
    }
    // 2. Meet the writer at the file, in either start order.
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
    report.notes.push(format!(
        "ring file {} on {}, {} bytes per direction, {}",
        rf.path.display(),
        rf.flavour,
        args.map.capacity,
        if rf.created {
            "created here"
        } else {
            "created by the writer"
        }
    ));
    report.notes.extend(msync.note());
    // 6. The pair is done: this side removes the file (the writer already let go of it).
    rf.remove()?;
    conclude(&report, c.json)
}

/// The loop: each frame from ring 0 goes to the session, which says what to do with it
/// (steps 3 to 5). `asked` is this reader's own `--wait`, if given.
fn receive_all(
    setup: &mut Setup,
    rf: &RingFile,
    opts: EndOpts,
    asked: Option<Wait>,
    msync: &mut Msync,
) -> Result<Report> {
    let mut rx = rf.region.consumer(Direction::WriterToReader, opts)?;
    // Ring 1 only in pingpong, which the Hello says: a Ping in another mode is an error.
    let mut back: Option<Producer> = None;
    let mut session = ReaderSession::new(setup);
    let mut stdout = io::stdout().lock();
    loop {
        // 3. Wait for the next frame, copy it out of the map, check it, release its bytes.
        let (header, payload) = match rx.recv() {
            Ok(frame) => frame,
            // A text writer waits for a person typing: silence is no error while it lives.
            Err(RingError::TimedOut { .. }) if follows_text(&session) => continue,
            Err(e) => return Err(gone(&session, rf, e)),
        };
        match session.on_frame(&header, payload)? {
            Action::Hello(hello) => {
                // The writer's settings are this run's now; set up what its mode needs.
                setup.follow(hello);
                say_waits(hello, setup.wait, asked);
                match hello.mode {
                    Mode::Pingpong => {
                        back = Some(rf.region.producer(Direction::ReaderToWriter, opts)?)
                    }
                    Mode::Text if !setup.args.quiet => show_maps(&rf.path),
                    _ => {}
                }
            }
            Action::Continue => {}
            // 4. Data to stdout, narration to stderr.
            Action::Print(line) => writeln!(stdout, "{line}").context("writing to stdout")?,
            Action::Echo(pong) => {
                let Some(tx) = back.as_mut() else {
                    bail!("a Ping came, but the writer's Hello did not say pingpong");
                };
                // 5. The Pong into ring 1: reserve, copy in, publish.
                if let Err(e) = tx.send(pong.header, pong.payload) {
                    return Err(gone(&session, rf, e));
                }
                msync.after_publish()?;
            }
            Action::Done => break,
        }
    }
    Ok(session.finish())
}

/// Whether the writer's Hello said text mode: a person types, so a wait may last.
fn follows_text(session: &ReaderSession) -> bool {
    session.writer_hello().is_some_and(|h| h.mode == Mode::Text)
}

/// A wait on the ring ends with [`RingError::PeerGone`] when the writer's pid vanished
/// (checked every 100 ms while waiting): it ended without End, so this run failed; what
/// the file shows of the cause (cut under the map, a full file system) is said too.
fn gone(session: &ReaderSession, rf: &RingFile, e: RingError) -> anyhow::Error {
    match e {
        RingError::PeerGone { pid } => {
            warn!("peer (pid {pid}) is gone");
            if let Some(why) = rf.what_happened() {
                warn!("{why}");
            }
            session.writer_left(&format!("its end of the ring (pid {pid} is gone)"), None)
        }
        e => e.into(),
    }
}
