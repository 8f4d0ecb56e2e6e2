//! msgqueue-reader: receives messages from a System V (default) or POSIX (`--posix`) queue.
//!
//! Run it in two terminals (either one first); it needs no mode flags, it follows the
//! writer's Hello (`--mode`, `--size`, `--count`, `--warmup` here are checks on it):
//! ```text
//! msgqueue-writer                  |  msgqueue-reader              # every message, FIFO (M3)
//! msgqueue-writer  (type "1: a", "2: b", "3: c", Ctrl-D)
//!                                  |  msgqueue-reader --type 2     # only b; a and c stay (M4)
//!                                  |  msgqueue-reader --type -3    # lowest type <= 3 first
//! msgqueue-writer --posix (type "0: low", "9: high", Ctrl-D)
//!                                  |  msgqueue-reader --posix      # high comes out first
//! msgqueue-writer --mode pingpong  |  msgqueue-reader              # follows: pingpong
//! ```
//! Text mode prints each message with its type (System V) or priority (POSIX), its sequence
//! number, size and the time since it was sent; it is `typed.rs`'s job (M4: `--type T`
//! passes msgrcv's msgtyp). Stream mode verifies every message and reports throughput;
//! pingpong answers each request with a reply of another type on the same queue (M4).
//!
//! System calls, in order (System V, with POSIX in parentheses):
//! 1. `read` of the limits in /proc/sys (M6);
//! 2. the rendezvous (`rendezvous.rs`): `open`/`flock` of the pair file; `ftok`; `msgget`
//!    (create or open) and `msgctl(IPC_STAT)`: owner, messages waiting, last sender
//!    (`mq_open`, `mq_maxmsg` from `--queue-depth` if this side makes the queue: `depth.rs`;
//!    `fstat`, `mq_getattr`); `msgrcv(IPC_NOWAIT)` of stale messages if the recorded
//!    writer was killed (`mq_timedreceive`); `pwrite` of this side's slot;
//! 3. a watchdog thread that removes the queue if the writer dies (none for a typed reader,
//!    which polls, nor for POSIX, whose calls time out);
//! 4. the writer's Hello (`follow.rs`): one `msgrcv(msgtyp 102)` (`mq_timedreceive`: it has
//!    the highest priority); a flag of this reader that contradicts it: `pwrite` of
//!    "refused" to the pair file, and step 6; pingpong on POSIX: `mq_open` of `.back`;
//! 5. the loop: one `msgrcv` per message, msgtyp 0 in stream mode and -100 in pingpong
//!    (`mq_timedreceive` in 100 ms slices), checked where it landed; in pingpong one
//!    `msgsnd` of each reply as type 101 (`mq_send` on `.back`), sealed over the request
//!    in that same buffer: no copy in user space. Text mode's loop is `typed.rs`'s;
//! 6. `msgctl(IPC_RMID)` (`mq_unlink` of both queues), and `unlink` of the pair file.
//!
//! Start order: either. Cleanup: this program removes the queue(s) and the pair file when
//! done, on an error and on Ctrl-C; a typed reader leaves the queue if messages of other
//! types remain, for another reader (which removes it), with the Hello put back.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;
use common::cleanup::Owned;
use common::cli::{ExpectArgs, MeetArgs, Mode, OutputArgs, Program};
use common::session::{conclude, Action, InPlace, ReaderSession};
use common::setup::{Role, Setup};
use common::stream::Delivery;
use common::timing::Report;
use nix::mqueue::mq_timedreceive;

use crate::depth::ReaderDepth;
use crate::limits::Limits;
use crate::rendezvous::{self, OpenArgs};
use crate::sysv;
use crate::watch::PeerWatch;
use crate::{follow, frame_of, posix, typed, types, QueueArgs, Rx, Tx};

/// Program name, in narration and reports.
pub const PROGRAM: &str = "msgqueue-reader";

/// Command line of msgqueue-reader.
#[derive(Parser, Debug, Clone)]
#[command(
    name = PROGRAM,
    about = "Receive messages from a System V or POSIX message queue (claims M1-M6).",
    after_help = "Examples:\n  msgqueue-reader               (follows the writer: text, stream or pingpong)\n  msgqueue-reader --mode stream (the same, and refuses a writer in another mode)\n  msgqueue-reader --type 2      (only type 2, M4)\n  msgqueue-reader --type -3     (lowest type <= 3 first)\n  msgqueue-reader --posix\n  msgqueue-reader --shared --type 1 --writers 2   (M5: type 1, from two writers)"
)]
pub struct Args {
    /// Checks on the writer's Hello: --mode --count --size --warmup.
    #[command(flatten)]
    pub run: ExpectArgs,

    /// --name --timeout.
    #[command(flatten)]
    pub meet: MeetArgs,

    /// --posix --key --shared.
    #[command(flatten)]
    pub queue: QueueArgs,

    /// System V text mode: msgrcv's msgtyp: 0 any, T > 0 only type T, T < 0 the lowest type <= |T| (-99 to 99; --shared: one type, 1 to 99).
    #[arg(long = "type", value_name = "T", allow_negative_numbers = true,
          value_parser = clap::value_parser!(i64).range(-types::MAX_USER..=types::MAX_USER))]
    pub mtype: Option<i64>,

    /// --shared: how many writers' sessions of this --type to take before finishing (M5).
    #[arg(long, value_name = "N", requires = "shared", value_parser = clap::value_parser!(u64).range(1..=64))]
    pub writers: Option<u64>,

    /// --queue-depth (POSIX): how many messages the queue holds, if this reader makes it.
    #[command(flatten)]
    pub depth: ReaderDepth,

    /// --json --quiet.
    #[command(flatten)]
    pub out: OutputArgs,
}

common::program!(Args, name = crate::DEFAULT_NAME);

/// The program: check flags, show the limits, open the queue, follow the writer's Hello,
/// receive, remove the queue, report.
pub fn run(args: Args) -> Result<ExitCode> {
    // M5: several writers and readers on one queue at once is shared.rs's program.
    if args.queue.shared {
        return crate::shared::read(&args);
    }
    let (c, posix) = (&args.common(), args.queue.posix);
    // Flags first, before anything exists: --type is msgrcv's msgtyp (typed.rs).
    let msgtyp = typed::msgtyp(&args.queue, c.mode, args.mtype)?;
    // 1. The limits (M6), and what shape this side makes a queue in (depth.rs).
    let limits = Limits::read()?;
    let shape = args.depth.shape(&args.queue, c, &limits)?;
    limits.narrate(posix);
    // 2. Create or open the queue and judge what is already in it (rendezvous.rs). The
    // reader owns the queue from now on: removed when done, on an error, on Ctrl-C.
    let how = OpenArgs::new(Role::Reader, &args.queue, c, &limits).shaped(shape);
    let mut opened = rendezvous::open(&how)?;
    let owned = rendezvous::reader_owns(&mut opened);
    let (mut setup, watch) = (crate::setup(PROGRAM, posix, c, &limits), &opened.watch);
    // A typed reader before us took some messages (M4): End's totals cannot match here.
    let (mut notes, shared) = (opened.notes, opened.earlier_reader.is_some());
    // 3. msgrcv has no timeout: a watchdog thread removes the queue if the writer dies,
    // which wakes msgrcv with EIDRM (watch.rs). A typed reader polls instead (typed.rs),
    // and POSIX waits in timed calls.
    let _watchdog = (!posix && msgtyp == 0)
        .then(|| watch.watchdog())
        .transpose()?;
    // 4. The writer's Hello says what it runs (follow.rs); this reader follows it.
    let mut rx = crate::reader_rx(opened.queues, types::HELLO)?;
    let mut session = ReaderSession::new(&setup);
    let hello = follow::receive(&mut rx, &mut session, watch, msgtyp, setup.max_payload)?;
    setup.follow(&hello.hello);
    watch.set_bounded(setup.mode() != Mode::Text);
    // The writer has shaped the queue by now (--queue-bytes): what it holds, read back.
    notes.push(rx.got(&limits)?);
    // The mode chooses msgtyp (M4): stream 0, text --type (0: any), pingpong -100:
    // requests (1) and End (100), never the replies (101), which go back on the same
    // queue (POSIX: on .back, opened now).
    let pingpong = setup.mode() == Mode::Pingpong;
    if let Rx::Sysv { msgtyp: t, .. } = &mut rx {
        *t = if pingpong { -types::END } else { msgtyp };
    }
    let tx = pingpong.then(|| crate::reader_tx(&rx, &how)).transpose()?;
    let outcome = match setup.mode() {
        // Text mode, where types and priorities pick what is printed (M4), is typed.rs's.
        Mode::Text => typed::read(&setup, rx, watch, shared, &hello),
        _ => receive_all(rx, tx, session, &setup, watch).map(|report| (report, 0)),
    };
    finish(outcome, watch, owned, opened.stale, notes, c.json)
}

/// Step 5, the loop: one `msgrcv` (`mq_timedreceive`) per message; in pingpong one
/// `msgsnd` (`mq_send`) of each reply. `session` has taken the Hello.
fn receive_all(
    mut rx: Rx,
    mut tx: Option<Tx>,
    mut session: ReaderSession,
    setup: &Setup,
    watch: &PeerWatch,
) -> Result<Report> {
    rx.narrate_wait();
    loop {
        let got = match &mut rx {
            // msgrcv(2): sleeps until a message of msgtyp is queued, then takes it whole (M2).
            Rx::Sysv { q, msgtyp, msg } => {
                watch.recv_sysv(*q, *msgtyp, |t| sysv::msgrcv(*q, msg, t, 0))?
            }
            // mq_timedreceive(3): the oldest message of the highest priority, or after
            // 100 ms a check that the writer lives.
            Rx::Posix { q, buf, prio } => watch.recv_posix(|d| mq_timedreceive(q, buf, prio, d))?,
        };
        let n = got.ok_or_else(|| session.writer_left("the queue", None))?;
        let (header, payload) = frame_of(rx.text(n), setup.max_payload)?;
        let pong = match session.on_frame_in_place(&header, payload)? {
            InPlace::Answer(pong) => pong,
            // The Hello was taken in step 4; a text line cannot come in these modes.
            InPlace::Action(Action::Done) => return Ok(session.finish()),
            InPlace::Action(_) => continue,
        };
        // The reply is the request with a new header: sealed over it where msgrcv put it
        // (same payload), and sent from there.
        let sent = match (&mut rx, &mut tx) {
            // msgsnd(2) of the reply as type 101: only the writer's msgrcv(101) takes it.
            (Rx::Sysv { msg, .. }, Some(Tx::Sysv { q, full, .. })) => {
                pong.seal(&mut msg.mtext[..n])?;
                msg.mtype = types::REPLY as libc::c_long;
                watch.send_sysv(*q, full, |flags| sysv::msgsnd(*q, msg, n, flags))?
            }
            // mq_send(3) of the reply on the .back queue, at priority 0.
            (Rx::Posix { buf, .. }, Some(Tx::Posix { q, full, .. })) => {
                pong.seal(&mut buf[..n])?;
                watch.send_posix(q, full, |d| posix::send(q, &buf[..n], 0, d))?
            }
            _ => bail!("got a Ping (pingpong mode) but this reader has no way back to the writer"),
        };
        if sent == Delivery::PeerGone {
            return Err(session.writer_left("the queue", None));
        }
    }
}

/// Step 6: the queue(s) and the pair file are removed (`msgctl(IPC_RMID)` or `mq_unlink`,
/// and `unlink`), unless a typed reader leaves them for another reader (M4); the report.
fn finish(
    outcome: Result<(Report, u64)>,
    watch: &PeerWatch,
    owned: Owned,
    stale: u64,
    mut notes: Vec<String>,
    json: bool,
) -> Result<ExitCode> {
    // A wait that ended because the writer died or never came: say that first.
    let (mut report, left) = outcome.map_err(|e| match watch.verdict() {
        Some(g) => e.context(g.describe(Role::Writer)),
        None => e,
    })?;
    if left > 0 {
        notes.push(typed::leave_for_another_reader(left, watch, owned)?);
    } else {
        // "finished", not "left": the writer is done, and nothing went missing.
        watch.mark_finished()?;
        owned.remove()?;
    }
    report.stale_skipped += stale;
    notes.push(format!("reader pid {}", std::process::id()));
    report.notes.extend(notes);
    conclude(&report, json)
}
