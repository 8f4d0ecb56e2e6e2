//! mmap-reader: receives messages from mmap-writer through a file both programs map.
//!
//! Run it in two terminals (either one first):
//! ```text
//! mmap-writer                                   | mmap-reader            # text
//! mmap-writer --mode stream --size 64K          | mmap-reader --mode stream
//! mmap-writer --mode pingpong                   | mmap-reader --mode pingpong
//! mmap-writer --mode bulk --file-size 1G        | mmap-reader --mode bulk --compare-read   # crate::bulk::reader
//! ```
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
//!    if the writer sleeps for room).
//! 4. Text: `write(1)` of the line.
//! 5. Pingpong: the Pong into ring 1 with [`Producer::send`] (reserve, copy in, publish,
//!    as the writer does on ring 0); with `--sync`, `msync(MS_SYNC)` after it (F5).
//! 6. `unlink` of the file: the pair is done. `munmap` as the map is dropped at exit.
//!
//! Cleanup: this program removes the file when the pair is done; on an error, Ctrl-C or a
//! dead writer it removes it too.
//!
//! [`Consumer::recv`]: common::ring::Consumer::recv
//! [`Producer::send`]: common::ring::Producer::send

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use common::cli::{CommonArgs, Mode};
use common::ring::{Direction, EndOpts, RingError, Role};
use common::session::{conclude, Action, ReaderSession};
use common::setup::Setup;
use common::timing::Report;
use common::{narrate, warn};

use crate::rendezvous::{self, OpenRing, RingFile};
use crate::{bulk, sigbus, MapArgs, Msync};

/// Program name, in narration and reports.
pub const PROGRAM: &str = "mmap-reader";

/// Command line of mmap-reader.
#[derive(Parser, Debug, Clone)]
#[command(
    name = PROGRAM,
    about = "Receive messages through a memory-mapped file, or verify a large one (claims F1-F7).",
    after_help = "--mode bulk is accepted as a spelling of --bulk.\n\nExamples:\n  mmap-reader                     (with mmap-writer in another terminal)\n  mmap-reader --mode stream --wait block\n  mmap-reader --mode bulk --compare-read"
)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub map: MapArgs,

    #[command(flatten)]
    pub bulk: bulk::reader::Flags,
}

common::program!(Args);

/// The program: bulk or a ring mode (steps 1 to 6 of the module docs).
pub fn run(args: Args) -> Result<ExitCode> {
    // 1. A SIGBUS from a map is fatal; the handler says why and cleans up before death.
    sigbus::install(PROGRAM)?;
    if args.bulk.on {
        return bulk::reader::run(&args.common, &args.map, &args.bulk);
    }
    let c = &args.common;
    // 2. Meet the writer at the file, in either start order.
    let OpenRing { rf, setup, opts } = rendezvous::open_ring(&args.map, c, Role::Reader, PROGRAM)?;
    narrate!(
        "reading frames from ring 0 of the mapped file: loads from shared pages, no read() calls; waiting ({}) when it is empty",
        args.map.wait
    );
    let mut msync = Msync::new(args.map.sync.then(|| rf.map.clone()));
    let mut report = receive_all(&setup, &rf, opts, &mut msync)?;
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
/// (steps 3 to 5).
fn receive_all(setup: &Setup, rf: &RingFile, opts: EndOpts, msync: &mut Msync) -> Result<Report> {
    let mut rx = rf.region.consumer(Direction::WriterToReader, opts)?;
    // Ring 1 only in pingpong: a Ping in another mode has no way back, and is an error.
    let mut back = match setup.mode() {
        Mode::Pingpong => Some(rf.region.producer(Direction::ReaderToWriter, opts)?),
        _ => None,
    };
    let mut session = ReaderSession::new(setup);
    let mut stdout = io::stdout().lock();
    loop {
        // 3. Wait for the next frame, copy it out of the map, check it, release its bytes.
        let (header, payload) = rx.recv().map_err(|e| gone(&session, rf, e))?;
        match session.on_frame(&header, payload)? {
            Action::Continue => {}
            // 4. Data to stdout, narration to stderr.
            Action::Print(line) => writeln!(stdout, "{line}").context("writing to stdout")?,
            Action::Echo(pong) => {
                let Some(tx) = back.as_mut() else {
                    bail!(
                        "got a Ping (pingpong mode) but this reader has no way back to the writer"
                    );
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
