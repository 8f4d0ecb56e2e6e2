//! pipe-writer: sends messages into an anonymous pipe.
//!
//! Run it (two ways, both first class):
//! ```text
//! pipe-writer | pipe-reader                     # shell mode: the shell makes the pipe (P1)
//! pipe-writer --spawn                           # spawn mode: this program makes it (P4)
//! pipe-writer --spawn --mode pingpong           # round trips over two pipes (P5)
//! pipe-writer --mode stream --size 64K | pipe-reader --mode stream
//! ```
//! Type lines in text mode; each line is one message. Ctrl-D ends both programs cleanly.
//!
//! System calls, in order:
//! - shell mode: `fstat(1)` to see what stdout is; `fcntl(F_SETPIPE_SZ/F_GETPIPE_SZ)`;
//!   `fcntl(F_SETFL, O_NONBLOCK)` so a full pipe is noticed (P6) and waited for in `poll`;
//!   then one `writev` per frame. The shell already connected stdout to the reader.
//! - spawn mode: `pipe2(O_CLOEXEC)` for the way there (and, for pingpong, a second one for
//!   the way back, P5); `fcntl(F_SETFD, 0)` so the child inherits the back pipe's write
//!   end; `fork`+`exec` of pipe-reader (std's `Command`) with the read end as its stdin;
//!   `close` of the ends the parent does not use, which is what lets each side see EOF;
//!   `writev` per frame (and `read` of each Pong); `waitpid` for the child at the end.
//!
//! Start order: shell mode starts both at once; spawn mode starts the reader itself.
//! Cleanup: an anonymous pipe has no name, so nothing outlives the processes: the kernel
//! frees it when the last descriptor closes. If the reader goes away, the next `write`
//! fails with EPIPE (Rust ignores SIGPIPE, so it is an error value, not a death) and this
//! program says "reader closed the pipe after N messages" and exits 1.
//!
//! In shell mode stdout *is* the pipe, so this program's own report goes to stderr.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};

use anyhow::{bail, Context, Result};
use clap::Parser;
use common::cli::{parse_size, CommonArgs, Mode};
use common::frame::MAX_PAYLOAD;
use common::narrate;
use common::protocol::{conclude, run_writer, Setup, StreamSink, StreamSource};
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::unistd::pipe2;

use crate::{capacity, fd_kind, pipe_max_size, set_capacity, FdKind, MECHANISM};

/// Program name, in narration and reports.
pub const PROGRAM: &str = "pipe-writer";

/// Command line of pipe-writer.
#[derive(Parser, Debug, Clone)]
#[command(
    name = PROGRAM,
    about = "Send messages through an anonymous pipe (claims P1-P6).",
    after_help = "Examples:\n  pipe-writer | pipe-reader\n  pipe-writer --spawn --mode pingpong --count 100000\n  pipe-writer --mode stream --size 64K | pipe-reader --mode stream"
)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Make the pipe(s) here and start pipe-reader as a child (P4); needed for pingpong (P5).
    #[arg(long)]
    pub spawn: bool,

    /// Pipe capacity (F_SETPIPE_SZ), 4 KiB up to /proc/sys/fs/pipe-max-size [default: the kernel's, 64 KiB].
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub pipe_size: Option<usize>,

    /// Spawn mode: the reader program [default: pipe-reader beside this program].
    #[arg(long, hide = true)]
    pub reader_exe: Option<PathBuf>,

    /// Spawn mode: an argument put before the reader's own (repeatable).
    #[arg(long, hide = true, allow_hyphen_values = true)]
    pub reader_arg: Vec<String>,
}

/// Entry point of the `pipe-writer` binary.
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// Runs pipe-writer with an explicit argument list (the `bench` runner uses this).
pub fn main_from<I, T>(argv: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::parse_from(argv);
    common::cli::run_main(PROGRAM, args.common.quiet, || run(args))
}

/// The program: check flags, set up the pipe(s), run the mode, report.
pub fn run(args: Args) -> Result<ExitCode> {
    // Flags are checked before any pipe exists.
    if let Some(bytes) = args.pipe_size {
        let max = pipe_max_size()?;
        if !(4096..=max).contains(&bytes) {
            bail!("--pipe-size {bytes} is out of range: 4096 to {max} bytes (/proc/sys/fs/pipe-max-size)");
        }
    }
    let setup = Setup {
        program: PROGRAM.into(),
        mechanism: MECHANISM.into(),
        flavour: if args.spawn { "spawn" } else { "shell" }.into(),
        wait: "blocking".into(),
        args: args.common.clone(),
        max_payload: MAX_PAYLOAD,
    };
    if args.spawn {
        run_spawned(&args, &setup)
    } else {
        run_in_shell(&args, &setup)
    }
}

/// Shell mode: stdout is the pipe the shell made.
fn run_in_shell(args: &Args, setup: &Setup) -> Result<ExitCode> {
    if args.common.mode == Mode::Pingpong {
        bail!(
            "pingpong needs an answer, and a pipe carries data one way only (P3): two-way needs \
             two pipes (P5), and `a | b` in a shell makes one. Run `pipe-writer --spawn --mode pingpong`, \
             which makes both pipes and starts the reader itself"
        );
    }
    // A duplicate of fd 1 as a File: unbuffered, and it can be made non-blocking.
    let stdout: OwnedFd = nix::unistd::dup(io::stdout()).context("dup stdout")?;
    match fd_kind(stdout.as_fd())? {
        FdKind::Pipe | FdKind::Fifo => {
            narrate!("stdout is a pipe: the shell created it and gave its read end to the next command (P1)")
        }
        FdKind::Terminal => bail!(
            "stdout is a terminal, not a pipe: run `pipe-writer | pipe-reader`, or `pipe-writer --spawn`"
        ),
        FdKind::File => narrate!(
            "stdout is a regular file: the frames are saved there; replay them with `pipe-reader < FILE`"
        ),
        FdKind::Other => narrate!("stdout is neither a pipe nor a file; writing frames to it anyway"),
    }
    let mut notes = Vec::new();
    if fd_kind(stdout.as_fd())? == FdKind::Pipe {
        notes.push(show_capacity(stdout.as_fd(), args.pipe_size)?);
    }
    let mut sink = StreamSink::noticing_full(File::from(stdout), "pipe")?;
    let mut stdin = io::stdin().lock();
    let end = run_writer::<_, StreamSource<File>>(setup, &mut sink, None, &mut stdin)?;
    let mut report = end.into_report("closed the pipe")?;
    notes.push(blocked_note(sink.blocked));
    report.notes = notes;
    // stdout is the pipe: the report goes to stderr.
    if args.common.json {
        eprintln!("{}", report.to_json());
    } else {
        eprint!("{report}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Spawn mode: make the pipe(s), start the reader as a child, run, wait for it.
fn run_spawned(args: &Args, setup: &Setup) -> Result<ExitCode> {
    let pingpong = args.common.mode == Mode::Pingpong;
    // The way there. O_CLOEXEC: no descriptor leaks into the child by accident; the one
    // the child needs is given to it explicitly as its stdin.
    let (there_r, there_w) = pipe2(OFlag::O_CLOEXEC).context("pipe2 (writer -> reader)")?;
    let mut notes = vec![show_capacity(there_w.as_fd(), args.pipe_size)?];
    // The way back, for pingpong only (P5): a second pipe, reader -> writer.
    let back = if pingpong {
        let (back_r, back_w) = pipe2(OFlag::O_CLOEXEC).context("pipe2 (reader -> writer)")?;
        if let Some(bytes) = args.pipe_size {
            set_capacity(back_w.as_fd(), bytes)?;
        }
        // Clear close-on-exec on the child's end only, so it survives exec in the child.
        fcntl(back_w.as_fd(), FcntlArg::F_SETFD(FdFlag::empty())).context("fcntl F_SETFD")?;
        Some((back_r, back_w))
    } else {
        None
    };

    let mut child = spawn_reader(args, there_r, back.as_ref().map(|(_, w)| w))?;
    // Close the parent's copy of the child's end: while we held it, the way back could
    // never report EOF, because a pipe ends only when every write end is closed.
    let back_r = back.map(|(r, w)| {
        drop(w);
        r
    });
    narrate!(
        "started pipe-reader as child pid {} with the pipe's read end as its stdin (P4: parent and child)",
        child.id()
    );

    let mut sink = StreamSink::noticing_full(File::from(there_w), "pipe")?;
    let mut stdin = io::stdin().lock();
    let result = match back_r {
        Some(r) => {
            let mut src = StreamSource::new(File::from(r), MAX_PAYLOAD);
            run_writer(setup, &mut sink, Some(&mut src), &mut stdin)
        }
        None => run_writer::<_, StreamSource<File>>(setup, &mut sink, None, &mut stdin),
    };
    let blocked = sink.blocked;
    // Closing the write end is what the reader sees as end of input after End.
    drop(sink);
    let status = wait_child(&mut child)?;
    let mut report = result?.into_report("closed the pipe")?;
    if !status.success() {
        bail!("pipe-reader (pid {}) failed: {status}", child.id());
    }
    notes.push(blocked_note(blocked));
    notes.push(format!("writer pid {}", std::process::id()));
    report.notes = notes;
    conclude(&report, args.common.json)
}

/// Starts pipe-reader with `stdin` = the pipe's read end and, for pingpong, `--back-fd`.
fn spawn_reader(args: &Args, stdin: OwnedFd, back_w: Option<&OwnedFd>) -> Result<Child> {
    let exe = match &args.reader_exe {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("finding this program's path")?
            .with_file_name("pipe-reader"),
    };
    if !exe.exists() {
        bail!(
            "cannot start the reader: {} does not exist (build it: cargo build -p pipe)",
            exe.display()
        );
    }
    let c = &args.common;
    let mut cmd = Command::new(&exe);
    cmd.args(&args.reader_arg)
        .arg("--spawned")
        .arg("--mode")
        .arg(c.mode.as_str())
        .arg("--timeout")
        .arg(format!("{}", c.timeout.as_secs_f64()));
    if c.quiet {
        cmd.arg("--quiet");
    }
    if c.json {
        cmd.arg("--json");
    }
    if let Some(w) = back_w {
        cmd.arg("--back-fd").arg(w.as_raw_fd().to_string());
    }
    cmd.stdin(Stdio::from(stdin));
    cmd.spawn()
        .with_context(|| format!("starting {}", exe.display()))
}

/// Waits for the child; if this side failed first, the child may still wait for input,
/// but our ends are closed by now, so it sees EOF and exits on its own.
fn wait_child(child: &mut Child) -> Result<std::process::ExitStatus> {
    narrate!(
        "waiting for pipe-reader (pid {}) to exit (waitpid)",
        child.id()
    );
    child.wait().context("waitpid pipe-reader")
}

/// Sets the capacity if asked, and says what it is.
fn show_capacity(fd: std::os::fd::BorrowedFd<'_>, want: Option<usize>) -> Result<String> {
    if let Some(bytes) = want {
        let got = set_capacity(fd, bytes)?;
        narrate!("pipe capacity set to {got} bytes (F_SETPIPE_SZ {bytes})");
    }
    let cap = capacity(fd)?;
    narrate!(
        "pipe capacity: {cap} bytes (F_GETPIPE_SZ); a write blocks while the pipe is full (P6)"
    );
    Ok(format!("pipe capacity {cap} bytes"))
}

fn blocked_note(blocked: u64) -> String {
    if blocked > 0 {
        narrate!("the pipe was full {blocked} times: the reader was slower than this writer (P6)");
    }
    format!("a write found the pipe full {blocked} times and waited (P6)")
}
