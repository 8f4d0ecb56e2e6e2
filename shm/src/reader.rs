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
//! System calls, in order (POSIX; System V in brackets):
//! 1. `shm_open(O_CREAT|O_EXCL|O_RDWR, 0600)` [`shmget(IPC_CREAT|IPC_EXCL|0600)`]; if the
//!    writer came first: `shm_open(O_RDWR)` + `fstat` [`shmget` + `shmctl(IPC_STAT)`].
//! 2. Creator: `ftruncate`, `mmap(MAP_SHARED)` [`shmat`], header, `FUTEX_WAIT` for the
//!    writer. Opener: `mmap` [`shmat`], wait for `ready`, attach, `FUTEX_WAKE`.
//! 3. The mode: each frame is copied out of ring 0 after an Acquire load of the writer's
//!    index, decoded and checksummed from our private copy; then our index is published so
//!    the writer may reuse the bytes. Pings are answered with Pongs in ring 1. A system
//!    call happens only to sleep (`FUTEX_WAIT`, `--wait block|adaptive`) or to wake a
//!    writer that sleeps on a full ring.
//! 4. At End: `shm_unlink` [`shmctl(IPC_RMID)`]: this program removes the object (S3: the
//!    kernel keeps it until someone does); `munmap` [`shmdt`] at exit.
//!
//! Start order: either. Cleanup: this program removes the object when the pair is done,
//! and on an error or Ctrl-C. If the writer dies (`kill -9`), the next wait notices within
//! 100 ms that its pid is gone, and this program says so and exits with status 1.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use common::cli::{CommonArgs, Mode};
use common::protocol::{conclude, run_reader, Setup};
use common::ring::{Direction, Role};

use crate::{rendezvous, ShmArgs, DEFAULT_NAME, MECHANISM};

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

/// Entry point of the `shm-reader` binary.
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// Runs shm-reader with an explicit argument list (the `bench` runner uses this).
pub fn main_from<I, T>(argv: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::parse_from(argv);
    common::cli::run_main(PROGRAM, args.common.quiet, || run(args))
}

/// The program: meet the writer, take what arrives, remove the object, report.
pub fn run(args: Args) -> Result<ExitCode> {
    let c = &args.common;
    let name = c.name_or(DEFAULT_NAME);
    let shared = rendezvous(&args.shm, name, Role::Reader, c.timeout)?;

    // Text mode waits for a person typing, so only a dead peer ends a wait there.
    let idle = (c.mode != Mode::Text).then_some(c.timeout);
    let opts = shared.end_opts(args.shm.wait, idle);
    let mut src = shared.region.consumer(Direction::WriterToReader, opts)?;
    // Ring 1 carries Pongs back; made in every mode because the writer decides the mode.
    let mut back = shared.region.producer(Direction::ReaderToWriter, opts)?;
    let setup = Setup {
        program: PROGRAM.into(),
        mechanism: MECHANISM.into(),
        flavour: args.shm.flavour().into(),
        wait: args.shm.wait.as_str().into(),
        args: c.clone(),
        max_payload: shared.region.max_payload(),
    };
    common::narrate!(
        "waiting for frames in ring 0 ({} waiting: {})",
        args.shm.wait,
        match args.shm.wait {
            common::ring::Wait::Spin => "re-reading the writer's index in a loop",
            common::ring::Wait::Block => "futex sleep on the writer's index until it wakes us",
            common::ring::Wait::Adaptive => "spin 20 us, then futex sleep",
        }
    );
    let end = run_reader(&setup, &mut src, Some(&mut back))?;
    let what = format!("{} (writer pid {})", shared.object, shared.peer_pid);
    let mut report = end.into_report(&what)?;
    report.notes.push(shared.note());
    shared.show_nattch("at the end");
    drop((src, back));
    shared.remove()?;
    conclude(&report, c.json)
}
