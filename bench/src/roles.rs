//! The bench spawns itself as each writer and reader: `bench __role [--pin CPU] PROGRAM ARGS`.
//!
//! The child pins itself to a CPU and runs the program's own `run` through
//! `common::cli::start`, the same entry the binaries use, so every figure
//! comes from exactly the code a learner runs as `pipe-writer` or `shm-reader`, between two
//! real processes, and `cargo run --release -p bench` needs no other build step.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// A program's entry point taking its argument list (argv[0] first).
type Entry = fn(Vec<OsString>) -> ExitCode;

/// Every program the bench can run, by its binary name.
pub const PROGRAMS: &[(&str, Entry)] = &[
    ("pipe-writer", |a| common::cli::start(a, pipe::writer::run)),
    ("pipe-reader", |a| common::cli::start(a, pipe::reader::run)),
    ("named-pipe-writer", |a| {
        common::cli::start(a, named_pipe::writer::run)
    }),
    ("named-pipe-reader", |a| {
        common::cli::start(a, named_pipe::reader::run)
    }),
    ("msgqueue-writer", |a| {
        common::cli::start(a, msgqueue::writer::run)
    }),
    ("msgqueue-reader", |a| {
        common::cli::start(a, msgqueue::reader::run)
    }),
    ("shm-writer", |a| common::cli::start(a, shm::writer::run)),
    ("shm-reader", |a| common::cli::start(a, shm::reader::run)),
    ("mmap-writer", |a| mmap::start(a, mmap::writer::run)),
    ("mmap-reader", |a| mmap::start(a, mmap::reader::run)),
    ("socket-writer", |a| {
        common::cli::start(a, socket::writer::run)
    }),
    ("socket-reader", |a| {
        common::cli::start(a, socket::reader::run)
    }),
];

/// Whether a program is known to this build.
pub fn known(program: &str) -> bool {
    PROGRAMS.iter().any(|(n, _)| *n == program)
}

/// Pins the calling process to one CPU (sched_setaffinity).
pub fn pin_to(cpu: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu)
        .with_context(|| format!("CPU {cpu} is out of range"))?;
    sched_setaffinity(Pid::from_raw(0), &set)
        .with_context(|| format!("sched_setaffinity CPU {cpu}"))
}

/// `bench __role [--pin CPU] PROGRAM ARGS...`
pub fn role_main(args: &[String]) -> Result<ExitCode> {
    let mut rest = args;
    if rest.first().map(String::as_str) == Some("--pin") {
        let cpu: usize = rest
            .get(1)
            .context("--pin needs a CPU number")?
            .parse()
            .context("--pin CPU")?;
        pin_to(cpu)?;
        rest = &rest[2..];
    }
    let Some((program, argv)) = rest.split_first() else {
        bail!("__role needs a program name");
    };
    let Some((_, entry)) = PROGRAMS.iter().find(|(n, _)| n == program) else {
        bail!("unknown program {program}");
    };
    let mut full: Vec<OsString> = vec![program.into()];
    full.extend(argv.iter().map(OsString::from));
    Ok(entry(full))
}
