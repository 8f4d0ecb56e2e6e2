//! msgqueue-writer: sends messages into a System V (default) or POSIX (`--posix`) queue.
//!
//! Run it in two terminals (either one first):
//! ```text
//! msgqueue-writer                          # type lines; "2: text" sends a line as type 2
//! msgqueue-reader                          # prints each message with its type
//! msgqueue-reader --type 2                 # M4: only type 2; the rest stay queued
//! msgqueue-writer --posix                  # priorities: "5: text" is priority 5
//! msgqueue-writer --mode stream --size 8152 --count 100000   (+ reader --mode stream)
//! msgqueue-writer --mode pingpong --count 100000             (+ reader --mode pingpong)
//! ```
//! Messages outlive this program (M1): run the writer, type two lines, press Ctrl-D, and
//! only then start the reader; `ipcs -q` shows them waiting in between.
//!
//! System calls, in order (System V): read the limits from /proc/sys/kernel (M6); `open` and
//! `flock` of the pair file; `ftok` for the key; `msgget(IPC_CREAT|IPC_EXCL|0600)`, or
//! `msgget(key, 0)` if it exists, and `msgctl(IPC_STAT)` to check its owner and contents;
//! `msgrcv(IPC_NOWAIT)` of any stale message; `pwrite` of our slot; then one `msgsnd` per
//! frame (type from the line, 1, or End's 100), and in pingpong one `msgrcv(type 101)` per
//! reply. POSIX: `mq_open(O_CREAT|O_EXCL, 0600, attr)` of the queue (and `.back` for replies),
//! `fstat` and `mq_getattr`, `mq_send` on a non-blocking descriptor until the queue is first
//! full, then `mq_timedsend` in 100 ms slices, and `mq_timedreceive` of replies.
//!
//! Start order: either. The first side creates the queue; a writer that starts first just
//! fills it, and `msgsnd` blocks when it is full (M6).
//! Cleanup: the reader removes the queue. This program removes it only if it created it and
//! fails (or gets Ctrl-C) with no live reader recorded; after a clean finish it leaves the
//! queue, and the messages in it, to the reader.
//! A reader that dies is noticed by the watchdog (System V) or between timed waits (POSIX):
//! see lib.rs, "A peer that dies".

use std::ffi::OsString;
use std::io;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Result};
use clap::Parser;
use common::cli::{CommonArgs, Mode};
use common::narrate;
use common::protocol::{conclude, run_writer, Setup};

use crate::transport::{
    self, OpenArgs, PosixSink, PosixSource, Queues, SysvSink, SysvSource, Tagging,
};
use crate::{types, Limits, Liveness, PairFile, Role, Slot, Watchdog, DEFAULT_NAME, MECHANISM};

/// Program name, in narration and reports.
pub const PROGRAM: &str = "msgqueue-writer";

/// Command line of msgqueue-writer.
#[derive(Parser, Debug, Clone)]
#[command(
    name = PROGRAM,
    about = "Send messages into a System V or POSIX message queue (claims M1-M6).",
    after_help = "Examples:\n  msgqueue-writer            (then type: hello / 2: a type-2 line)\n  msgqueue-writer --posix    (then type: 5: a priority-5 line)\n  msgqueue-writer --mode pingpong --count 100000"
)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Use a POSIX queue (mq_open, priorities) instead of System V (msgget, types).
    #[arg(long)]
    pub posix: bool,

    /// System V key (decimal or 0x hex) instead of ftok on the pair file.
    #[arg(long, value_name = "KEY", value_parser = parse_key)]
    pub key: Option<i32>,

    /// System V text mode: the type of lines without an "N: " prefix, 1 to 99.
    #[arg(long = "type", value_name = "N", value_parser = clap::value_parser!(i64).range(1..=types::MAX_USER))]
    pub mtype: Option<i64>,

    /// POSIX text mode: the priority of lines without an "N: " prefix, 0 to 32767.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..32768))]
    pub priority: Option<u32>,

    /// Fail with EAGAIN when the queue is full instead of blocking (M6).
    #[arg(long)]
    pub nowait: bool,
}

/// `--key`: decimal or 0x-prefixed hex, not 0 (IPC_PRIVATE).
pub fn parse_key(s: &str) -> Result<i32, String> {
    let t = s.trim();
    let v = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16).map(|v| v as i32),
        None => t.parse::<i32>(),
    }
    .map_err(|_| format!("'{s}' is not a key (decimal or 0x hex)"))?;
    if v == 0 {
        return Err("0 is IPC_PRIVATE, a queue nobody else can find; pick another key".into());
    }
    Ok(v)
}

/// Entry point of the `msgqueue-writer` binary.
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// Runs msgqueue-writer with an explicit argument list (the `bench` runner uses this).
pub fn main_from<I, T>(argv: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::parse_from(argv);
    common::cli::run_main(PROGRAM, args.common.quiet, || run(args))
}

/// The program: check flags, show the limits, open the queue, run the mode, report.
pub fn run(args: Args) -> Result<ExitCode> {
    let c = &args.common;
    let text = c.mode == Mode::Text;
    // Flags first: nothing exists yet.
    if args.posix && (args.key.is_some() || args.mtype.is_some()) {
        bail!("--key and --type are System V; a POSIX queue has a name and priorities (use --priority)");
    }
    if !args.posix && args.priority.is_some() {
        bail!("--priority is POSIX (add --posix); System V messages have types (--type)");
    }
    if !text && (args.mtype.is_some() || args.priority.is_some()) {
        bail!("--type and --priority apply to text mode; stream and pingpong use fixed types (M4)");
    }
    let limits = Limits::read()?;
    // Text mode sends lines, not --size bytes, but a --size that cannot fit is still a
    // mistake worth naming.
    limits.check_size(c.size, args.posix)?;
    for l in limits.describe(args.posix) {
        narrate!("limit (M6): {l}");
    }
    let max_payload = limits.max_payload(args.posix);
    let name = c.name_or(DEFAULT_NAME).to_string();

    let opened = transport::open(&OpenArgs {
        role: Role::Writer,
        posix: args.posix,
        name: name.clone(),
        key: args.key,
        pingpong: c.mode == Mode::Pingpong,
        msgsize: limits.max_frame(args.posix).0,
        maxmsg: limits.mq_msg_max.clamp(1, 10),
        shared_reader: false,
    })?;
    let path = opened.pair.path.clone();
    // A queue this side created is its to remove on failure, unless a reader took over.
    let owned = opened.created.then(|| {
        let (p, q) = (path.clone(), opened.queues_ids());
        common::cleanup::own(format!("the queue ({})", q.describe()), move || {
            if let Ok(pair) = PairFile::open(&p) {
                if let Slot::Running(pid) = pair.read(Role::Reader) {
                    if common::peer::alive(pid) {
                        narrate!("leaving the queue to the reader (pid {pid}), which removes it");
                        return Ok(());
                    }
                }
            }
            q.remove(&p)
        })
    });
    let live = Arc::new(Liveness::new(&path, Role::Reader, c.timeout)?);
    {
        // A dead reader leaves a queue nobody will read: remove it (POSIX; the System V
        // watchdog does the same).
        let (ids, p) = (opened.queues_ids(), path.clone());
        live.set_on_death(move || {
            let _ = ids.remove(&p);
        });
    }
    let setup = Setup {
        program: PROGRAM.into(),
        mechanism: MECHANISM.into(),
        flavour: if args.posix { "posix" } else { "sysv" }.into(),
        wait: "blocking".into(),
        args: c.clone(),
        max_payload,
    };
    let tagging = Tagging {
        text,
        default: if args.posix {
            i64::from(args.priority.unwrap_or(0))
        } else {
            args.mtype.unwrap_or(types::DATA)
        },
        posix: args.posix,
    };
    let mut notes = opened.notes.clone();
    notes.extend(limits.describe(args.posix));
    if text {
        narrate!(
            "each line is one message; start a line with \"N: \" to send it with {} N ({})",
            if args.posix { "priority" } else { "type" },
            if args.posix {
                "POSIX: highest priority is received first"
            } else {
                "M4: a reader can ask for one type"
            }
        );
    }
    let stale = opened.stale;
    narrate!(
        "recorded as writer pid {} in {}; the session starts",
        std::process::id(),
        path.display()
    );
    let mut stdin = io::stdin().lock();
    // What the watchdog (System V) or the timed waits (POSIX) found out about the reader.
    let verdict: crate::transport::Verdict = Default::default();
    let (result, saw_full, watchdog) = match opened.queues {
        Queues::Sysv(q) => {
            let ids = crate::transport::QueueIds::Sysv(q.id);
            let p2 = path.clone();
            let dog = Watchdog::start(live.clone(), verdict.clone(), move || {
                let _ = ids.remove(&p2);
            })?;
            let mut sink = SysvSink::new(
                q,
                tagging,
                args.nowait,
                live.clone(),
                verdict.clone(),
                Role::Reader,
            );
            let r = if c.mode == Mode::Pingpong {
                narrate!(
                    "pingpong on one queue (M4): requests are type {}, replies type {}; msgrcv(type {}) takes only replies",
                    types::DATA, types::REPLY, types::REPLY
                );
                let mut back = SysvSource::new(
                    q,
                    types::REPLY as _,
                    max_payload,
                    live.clone(),
                    verdict.clone(),
                    Role::Reader,
                );
                run_writer(&setup, &mut sink, Some(&mut back), &mut stdin)
            } else {
                run_writer::<_, SysvSource>(&setup, &mut sink, None, &mut stdin)
            };
            (r, sink.saw_full(), Some(dog))
        }
        Queues::Posix { main, back, .. } => {
            let mut sink = PosixSink::new(
                main,
                tagging,
                args.nowait,
                live.clone(),
                verdict.clone(),
                Role::Reader,
            )?;
            let r = match back {
                Some(b) => {
                    narrate!("pingpong needs a second POSIX queue for replies: mq_receive cannot select, it always takes the highest priority");
                    let mut src = PosixSource::new(
                        b,
                        max_payload,
                        live.clone(),
                        verdict.clone(),
                        Role::Reader,
                    )?;
                    run_writer(&setup, &mut sink, Some(&mut src), &mut stdin)
                }
                None => run_writer::<_, PosixSource>(&setup, &mut sink, None, &mut stdin),
            };
            (r, sink.saw_full(), None)
        }
    };
    let verdict = verdict.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(d) = &watchdog {
        d.stop();
    }
    let end = result?;
    let finished = matches!(end, common::protocol::WriterEnd::Finished(_));
    if finished {
        // Tell a reader that polls (typed text mode) that nothing more will come.
        opened
            .pair
            .write(Role::Writer, Slot::Finished(std::process::id() as i32))?;
        if let Some(o) = owned {
            o.release();
        }
        narrate!("sent End; the queue and anything still in it stay in the kernel until a reader removes them (M1: ipcs -q)");
    }
    let mut report = end.into_report(match &verdict {
        Some(g) => {
            if matches!(g, crate::Gone::NeverCame) {
                "never came (--timeout)"
            } else {
                "died"
            }
        }
        None => "went away",
    })?;
    report.stale_skipped += stale;
    notes.push(format!(
        "the queue was {} full while sending{}",
        if saw_full { "at least once" } else { "never" },
        if saw_full {
            " (msgsnd/mq_send waited for room, M6)"
        } else {
            ""
        }
    ));
    notes.push(format!("writer pid {}", std::process::id()));
    report.notes = notes;
    conclude(&report, c.json)
}
