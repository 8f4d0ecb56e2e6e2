//! shm-writer: sends messages to shm-reader through shared memory (claims S1-S5).
//!
//! Run it in two terminals, in either order:
//! ```text
//! terminal 1: shm-writer                         # type lines; Ctrl-D ends
//! terminal 2: shm-reader
//! shm-writer --mode stream --size 64K --wait spin      # and shm-reader --wait spin
//! shm-writer --mode pingpong --wait block --json       # and shm-reader --wait block
//! shm-writer --sysv ...                                 # System V instead of POSIX
//! ```
//! While they run, `ls -l /dev/shm` (POSIX) or `ipcs -m` (System V) shows the object (S3).
//!
//! System calls, in order (POSIX; System V in brackets):
//! 1. `shm_open(O_CREAT|O_EXCL|O_RDWR, 0600)` [`shmget(IPC_CREAT|IPC_EXCL|0600)`]: create
//!    the object exclusively. If it exists (the reader came first): `shm_open(O_RDWR)` +
//!    `fstat` for owner and size [`shmget(key, 0)` + `shmctl(IPC_STAT)`].
//! 2. Creator: `ftruncate` to the fixed size (S2), `mmap(MAP_SHARED)` [`shmat`], write the
//!    header, publish it, `futex(FUTEX_WAIT)` on the header's `opener_pid` until the reader
//!    attaches. Opener: `mmap` [`shmat`], wait for `ready`, write our pid, `futex(FUTEX_WAKE)`.
//! 3. The mode: each frame is copied into ring 0 and published with a Release store; no
//!    system call unless the reader sleeps (then one `FUTEX_WAKE`) or the ring is full and
//!    we sleep (`FUTEX_WAIT` on the reader's index). Pingpong reads Pongs from ring 1.
//! 4. `munmap` [`shmdt`] when the program ends.
//!
//! Start order: either. Cleanup: the reader removes the object when the pair is done; this
//! program removes it itself only on an error or Ctrl-C (then the reader sees the writer
//! gone). A run killed with `kill -9` leaves the object; the next run finds it stale.

use std::ffi::OsString;
use std::io;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;
use common::cli::{CommonArgs, Mode};
use common::protocol::{conclude, run_writer, Setup};
use common::ring::{self, Direction, Role};

use crate::{rendezvous, ShmArgs, DEFAULT_NAME, MECHANISM};

/// Program name, in narration and reports.
pub const PROGRAM: &str = "shm-writer";

/// Command line of shm-writer.
#[derive(Parser, Debug, Clone)]
#[command(
    name = PROGRAM,
    about = "Send messages through shared memory, POSIX or System V (claims S1-S5).",
    after_help = "Examples:\n  shm-writer                     (and shm-reader in another terminal)\n  shm-writer --mode pingpong --wait spin --json\n  shm-writer --sysv --mode stream --size 64K --capacity 1M"
)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub shm: ShmArgs,
}

/// Entry point of the `shm-writer` binary.
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// Runs shm-writer with an explicit argument list (the `bench` runner uses this).
pub fn main_from<I, T>(argv: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::parse_from(argv);
    common::cli::run_main(PROGRAM, args.common.quiet, || run(args))
}

/// The program: check flags, meet the reader, run the mode, report.
pub fn run(args: Args) -> Result<ExitCode> {
    let c = &args.common;
    // Flags first, before any object exists: a frame must fit half a ring.
    if c.mode != Mode::Text {
        if let Err(e) = ring::check_size(c.size, args.shm.capacity) {
            bail!(e);
        }
    }
    let name = c.name_or(DEFAULT_NAME);
    let shared = rendezvous(&args.shm, name, Role::Writer, c.timeout)?;

    // Text mode waits for a person typing, so only a dead peer ends a wait there.
    let idle = (c.mode != Mode::Text).then_some(c.timeout);
    let opts = shared.end_opts(args.shm.wait, idle);
    let mut sink = shared.region.producer(Direction::WriterToReader, opts)?;
    // Pingpong's way back is ring 1 (S4: both processes read and write the region).
    let mut back = match c.mode {
        Mode::Pingpong => Some(shared.region.consumer(Direction::ReaderToWriter, opts)?),
        _ => None,
    };
    let setup = Setup {
        program: PROGRAM.into(),
        mechanism: MECHANISM.into(),
        flavour: args.shm.flavour().into(),
        wait: args.shm.wait.as_str().into(),
        args: c.clone(),
        max_payload: shared.region.max_payload(),
    };
    if c.mode != Mode::Text {
        common::narrate!(
            "{} mode: {} messages of {} bytes (+{} warm-up), waiting strategy {}",
            c.mode.as_str(),
            c.count,
            c.size,
            c.warmup(),
            args.shm.wait
        );
    }
    let end = run_writer(&setup, &mut sink, back.as_mut(), &mut io::stdin().lock())?;
    let mut report = end.into_report(&format!("(pid {}) is gone", shared.peer_pid))?;
    report.notes.push(shared.note());
    drop((sink, back));
    shared.leave();
    conclude(&report, c.json)
}
