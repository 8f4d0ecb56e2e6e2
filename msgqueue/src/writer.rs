//! msgqueue-writer: sends messages into a System V (default) or POSIX (`--posix`) queue.
//!
//! Run it in two terminals (either one first):
//! ```text
//! msgqueue-writer                          # type lines; "2: text" sends a line as type 2
//! msgqueue-reader                          # prints each message with its type
//! msgqueue-reader --type 2                 # M4: only type 2; the rest stay queued
//! msgqueue-writer --posix                  # priorities: "5: text" is priority 5
//! msgqueue-writer --mode stream --size 8152 --count 100000   (+ msgqueue-reader)
//! msgqueue-writer --mode pingpong --count 100000             (+ msgqueue-reader)
//! ```
//! The reader needs no mode flags: this program's first message, its Hello, says what it
//! runs, and the reader follows it (`follow.rs`). Messages outlive this program (M1): run
//! the writer, type two lines, press Ctrl-D, and only then start the reader; `ipcs -q`
//! (POSIX: `ls -l /dev/mqueue`) shows them waiting in between.
//!
//! System calls, in order (System V, with POSIX in parentheses):
//! 1. `read` of the limits in /proc/sys/kernel (/proc/sys/fs/mqueue) (M6), and of
//!    /proc/self/status for a `--queue-bytes` / `--queue-depth` beyond them (`depth.rs`);
//! 2. the rendezvous (`rendezvous.rs`): `open` and `flock` of the pair file; `ftok` for the
//!    key; `msgget(IPC_CREAT|IPC_EXCL|0600)`, or `msgget(key, 0)` if it exists,
//!    `msgctl(IPC_STAT)` for its owner and contents and `msgctl(IPC_SET)` of `msg_qbytes`
//!    (`mq_open(O_CREAT|O_EXCL|O_NONBLOCK, 0600, attr)`, attr from `--queue-depth` and
//!    `--size`, and `.back` for replies, `fstat`, `mq_getattr`); `msgrcv(IPC_NOWAIT)` of
//!    any stale message (`mq_timedreceive`); `pwrite` of this side's slot;
//! 3. a watchdog thread that wakes a blocked call if the reader dies (none: POSIX calls
//!    time out);
//! 4. the loop, per frame (a line `read` from stdin in text mode): one `msgsnd`, the Hello
//!    first as type 102, then as the line's type, 1, or End's 100 (`mq_send` on the
//!    non-blocking descriptor until the queue is first found full, then `mq_timedsend` in
//!    100 ms slices; the Hello at priority 32767); in pingpong one `msgrcv(msgtyp 101)`
//!    per reply (`mq_timedreceive` on `.back`); no copy in user space: a stream or pingpong
//!    frame is sealed where it is sent from, a reply checked where it lands;
//! 5. `pwrite` of "finished" to the pair file.
//!
//! Start order: either. The first side creates the queue; a writer that starts first just
//! fills it, and `msgsnd` blocks when it is full (M6).
//! Cleanup: the reader removes the queue. This program removes it only if it created it and
//! fails (or gets Ctrl-C) with no live reader recorded; after a clean finish it leaves the
//! queue, and the messages in it, to the reader. A reader that dies, or refuses the Hello,
//! is noticed by the watchdog (System V) or between timed waits (POSIX): see `watch.rs`,
//! which also tells a long wait on a full queue as it starts and ends.

use std::io;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;
use common::cli::{MeetArgs, Mode, OutputArgs, Program, RunArgs};
use common::frame::Kind;
use common::narrate;
use common::session::{conclude, FrameBuf, Next, WriterSession};
use common::setup::{Role, Setup};
use common::stream::{self, Delivery};
use common::timing::Report;
use nix::mqueue::mq_timedreceive;

use crate::depth::WriterDepth;
use crate::limits::Limits;
use crate::rendezvous::{self, OpenArgs};
use crate::sysv;
use crate::typed::Tagging;
use crate::watch::PeerWatch;
use crate::{frame_of, posix, types, QueueArgs, Rx, Tx, DEFAULT_NAME};

/// Program name, in narration and reports.
pub const PROGRAM: &str = "msgqueue-writer";

/// Command line of msgqueue-writer.
#[derive(Parser, Debug, Clone)]
#[command(
    name = PROGRAM,
    about = "Send messages into a System V or POSIX message queue (claims M1-M6).",
    after_help = "Examples:\n  msgqueue-writer            (then type: hello / 2: a type-2 line)\n  msgqueue-writer --posix    (then type: 5: a priority-5 line)\n  msgqueue-writer --mode pingpong --count 100000\n  msgqueue-writer --shared --type 2   (M5: one of several writers on one queue)"
)]
pub struct Args {
    /// What this writer runs: --mode --count --size --warmup (its Hello tells the reader).
    #[command(flatten)]
    pub run: RunArgs,

    /// --name --timeout.
    #[command(flatten)]
    pub meet: MeetArgs,

    /// --posix --key --shared.
    #[command(flatten)]
    pub queue: QueueArgs,

    /// System V text mode: the type of lines without an "N: " prefix, 1 to 99 (--shared: of every message).
    #[arg(long = "type", value_name = "N", value_parser = clap::value_parser!(i64).range(1..=types::MAX_USER))]
    pub mtype: Option<i64>,

    /// POSIX text mode: the priority of lines without an "N: " prefix, 0 to 32767.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..32768))]
    pub priority: Option<u32>,

    /// Fail with EAGAIN when the queue is full instead of blocking (M6).
    #[arg(long)]
    pub nowait: bool,

    /// --queue-bytes (System V) --queue-depth (POSIX): how much the queue holds (M6).
    #[command(flatten)]
    pub depth: WriterDepth,

    /// --json --quiet.
    #[command(flatten)]
    pub out: OutputArgs,
}

common::program!(Args, name = crate::DEFAULT_NAME);

/// The program: check flags, show the limits, open the queue, run the mode, report.
pub fn run(args: Args) -> Result<ExitCode> {
    // M5: several writers and readers on one queue at once is shared.rs's program.
    if args.queue.shared {
        return crate::shared::write(&args);
    }
    let (c, posix) = (&args.common(), args.queue.posix);
    // Flags first: a line's "N: " prefix, or --type / --priority, picks its type (typed.rs).
    let tags = Tagging::from_flags(&args.queue, c.mode, args.mtype, args.priority)?;
    // 1. The limits (M6). Text mode sends lines, not --size bytes, but a --size that
    // cannot fit is still a mistake worth naming; so is a depth beyond the limits.
    let limits = Limits::read()?;
    limits.check_size(c.size, posix)?;
    let shape = args.depth.shape(&args.queue, c, &limits)?;
    limits.narrate(posix);
    // 2. Create or open the queue in that shape, judge what is in it (rendezvous.rs). A
    // queue this side created is its to remove on failure, unless a reader took over.
    let how = OpenArgs::new(Role::Writer, &args.queue, c, &limits).shaped(shape);
    let mut opened = rendezvous::open(&how)?;
    let owned = rendezvous::writer_owns(&mut opened);
    let (setup, watch) = (crate::setup(PROGRAM, posix, c, &limits), &opened.watch);
    let (pid, path) = (std::process::id(), watch.path().display());
    narrate!("recorded as writer pid {pid} in {path}; the session starts");
    // 3. msgsnd and msgrcv have no timeout: a watchdog thread wakes them if the reader
    // dies (watch.rs). POSIX waits in timed calls instead.
    let _watchdog = if posix { None } else { Some(watch.watchdog()?) };
    let pingpong = c.mode == Mode::Pingpong;
    let (mut tx, rx) = crate::writer_link(opened.queues, pingpong, args.nowait, tags)?;
    let session = WriterSession::new(&setup).capacity(opened.capacity);
    let mut report = send_all(session, &setup, &mut tx, rx, watch)?;
    // After a clean finish the queue and its messages are the reader's (M1).
    if let Some(o) = owned {
        o.release();
    }
    let look = crate::elsewhere::look(posix, c.name_or(DEFAULT_NAME));
    narrate!("sent End; the queue and anything still in it stay in the kernel until a reader removes them (M1: {look})");
    report.stale_skipped += opened.stale;
    report.notes = opened.notes;
    report.notes.push(tx.full().note());
    report.notes.push(format!("writer pid {pid}"));
    conclude(&report, c.json)
}

/// Steps 4 and 5: one `msgsnd` (`mq_send`) per frame, the Hello first, in pingpong one
/// `msgrcv` (`mq_timedreceive`) of each reply; then "finished" in the pair file.
fn send_all(
    mut session: WriterSession,
    setup: &Setup,
    tx: &mut Tx,
    mut rx: Option<Rx>,
    watch: &PeerWatch,
) -> Result<Report> {
    let (mut frame, mut stdin, mut line) = (FrameBuf::new(), io::stdin().lock(), Vec::new());
    loop {
        // System V, stream and pingpong: after the first, each frame is sealed in place in
        // the message it goes out in (lib.rs), and msgsnd(2) copies it straight from there.
        if let Some((q, msg, full, len)) = tx.seal_in_place(&mut session)? {
            let sent = watch.send_sysv(q, full, |flags| sysv::msgsnd(q, msg, len, flags))?;
            if sent == Delivery::PeerGone {
                return Err(watch.reader_gone(&session));
            }
            continue;
        }
        match session.next(&mut frame)? {
            Next::Send(out) => {
                let hello = out.kind == Kind::Hello;
                let sent = match tx {
                    // msgsnd(2): the kernel copies the type and the frame into a new message
                    // at the end of the queue (M2); it sleeps while the queue is full (M6).
                    // The frame is copied in first (a stream or pingpong one only once).
                    Tx::Sysv { q, msg, full, tags } => {
                        let (q, len) = (*q, msg.load(tags.of(&out), &out)?);
                        watch.send_sysv(q, full, |flags| sysv::msgsnd(q, msg, len, flags))?
                    }
                    // mq_send(3) links the message in at its priority; once the queue was
                    // found full (M6), mq_timedsend(3) waits for room 100 ms at a time,
                    // sending the session's buffer as it is (posix::load).
                    Tx::Posix { q, buf, full, tags } => {
                        let (m, prio) = (posix::load(buf, &out)?, tags.of(&out) as u32);
                        watch.send_posix(q, full, |d| posix::send(q, m, prio, d))?
                    }
                };
                if sent == Delivery::PeerGone {
                    return Err(watch.reader_gone(&session));
                }
                if hello {
                    tx.tags().narrate_hello(session.hello());
                }
            }
            Next::AwaitAnswer => {
                let Some(rx) = rx.as_mut() else {
                    bail!("pingpong needs a way back from the reader, and this setup has none");
                };
                let got = match rx {
                    // msgrcv(2), msgtyp 101: sleeps until the reader's reply arrives;
                    // requests and End on the same queue are never taken here (M4).
                    Rx::Sysv { q, msgtyp, msg } => {
                        watch.recv_sysv(*q, *msgtyp, |t| sysv::msgrcv(*q, msg, t, 0))?
                    }
                    // mq_timedreceive(3) on .back: the reply, or after 100 ms a check that
                    // the reader lives.
                    Rx::Posix { q, buf, prio } => {
                        watch.recv_posix(|d| mq_timedreceive(q, buf, prio, d))?
                    }
                };
                let n = got.ok_or_else(|| watch.reader_gone(&session))?;
                let (header, payload) = frame_of(rx.text(n), setup.max_payload)?;
                session.answer(&header, payload)?;
            }
            // Text mode: read(2) on stdin blocks until a line is typed; None is Ctrl-D.
            Next::NeedLine => match stream::read_line(&mut stdin, &mut line)? {
                Some(l) => session.push_line(l),
                None => session.end_of_input(),
            },
            Next::Done => break,
        }
    }
    // 5. End is out: pwrite(2) of "finished" to the pair file, for a typed reader (it
    // polls) and for a reader that comes later (M1); unless the reader left meanwhile.
    watch.reader_stayed(&session)?;
    watch.mark_finished()?;
    Ok(session.finish())
}
