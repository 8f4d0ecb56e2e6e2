//! msgqueue-reader: receives messages from a System V (default) or POSIX (`--posix`) queue.
//!
//! Run it in two terminals (either one first):
//! ```text
//! msgqueue-writer                  |  msgqueue-reader              # every message, FIFO (M3)
//! msgqueue-writer  (type "1: a", "2: b", "3: c", Ctrl-D)
//!                                  |  msgqueue-reader --type 2     # only b; a and c stay (M4)
//!                                  |  msgqueue-reader --type -3    # lowest type <= 3 first
//! msgqueue-writer --posix (type "0: low", "9: high", Ctrl-D)
//!                                  |  msgqueue-reader --posix      # high comes out first
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
//!    (`mq_open`, `fstat`, `mq_getattr`); `msgrcv(IPC_NOWAIT)` of stale messages if the
//!    recorded writer was killed (`mq_timedreceive`); `pwrite` of this side's slot;
//! 3. a watchdog thread that removes the queue if the writer dies (none for a typed reader,
//!    which polls, nor for POSIX, whose calls time out);
//! 4. the loop: one `msgrcv` per message, msgtyp 0 in stream mode and -100 in pingpong
//!    (`mq_timedreceive` in 100 ms slices); in pingpong one `msgsnd` of each reply as type
//!    101 (`mq_send` on `.back`). Text mode's loop, with `--type`, is `typed.rs`'s;
//! 5. `msgctl(IPC_RMID)` (`mq_unlink` of both queues), and `unlink` of the pair file.
//!
//! Start order: either. Cleanup: this program removes the queue(s) and the pair file when
//! done, on an error and on Ctrl-C; a typed reader leaves the queue if messages of other
//! types remain, for another reader (which removes it).

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;
use common::cleanup::Owned;
use common::cli::{CommonArgs, Mode};
use common::narrate;
use common::session::{conclude, Action, ReaderSession};
use common::setup::{Role, Setup};
use common::stream::Delivery;
use common::timing::Report;
use nix::mqueue::{mq_send, mq_timedreceive};

use crate::limits::Limits;
use crate::rendezvous::{self, OpenArgs};
use crate::sysv;
use crate::watch::PeerWatch;
use crate::{frame_of, posix, typed, types, QueueArgs, Rx, Tx};

/// Program name, in narration and reports.
pub const PROGRAM: &str = "msgqueue-reader";

/// Command line of msgqueue-reader.
#[derive(Parser, Debug, Clone)]
#[command(
    name = PROGRAM,
    about = "Receive messages from a System V or POSIX message queue (claims M1-M6).",
    after_help = "Examples:\n  msgqueue-reader\n  msgqueue-reader --type 2      (only type 2, M4)\n  msgqueue-reader --type -3     (lowest type <= 3 first)\n  msgqueue-reader --posix\n  msgqueue-reader --shared --type 1 --writers 2   (M5: type 1, from two writers)"
)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub queue: QueueArgs,

    /// System V text mode: msgrcv's msgtyp: 0 any, T > 0 only type T, T < 0 the lowest type <= |T| (-99 to 99; --shared: one type, 1 to 99).
    #[arg(long = "type", value_name = "T", allow_negative_numbers = true,
          value_parser = clap::value_parser!(i64).range(-types::MAX_USER..=types::MAX_USER))]
    pub mtype: Option<i64>,

    /// --shared: how many writers' sessions of this --type to take before finishing (M5).
    #[arg(long, value_name = "N", requires = "shared", value_parser = clap::value_parser!(u64).range(1..=64))]
    pub writers: Option<u64>,
}

common::program!(Args);

/// The program: check flags, show the limits, open the queue, receive, remove it, report.
pub fn run(args: Args) -> Result<ExitCode> {
    // M5: several writers and readers on one queue at once is shared.rs's program.
    if args.queue.shared {
        return crate::shared::read(&args);
    }
    let (c, posix) = (&args.common, args.queue.posix);
    // Flags first, before anything exists: --type is msgrcv's msgtyp (typed.rs).
    let msgtyp = typed::msgtyp(&args.queue, c.mode, args.mtype)?;
    // 1. The limits (M6).
    let limits = Limits::read()?;
    limits.narrate(posix);
    // 2. Create or open the queue and judge what is already in it (rendezvous.rs). The
    // reader owns the queue from now on: removed when done, on an error, on Ctrl-C.
    let mut opened = rendezvous::open(&OpenArgs::new(Role::Reader, &args.queue, c, &limits))?;
    let owned = rendezvous::reader_owns(&mut opened);
    let (setup, watch) = (crate::setup(PROGRAM, posix, c, &limits), &opened.watch);
    let mut notes = [opened.notes, limits.describe(posix)].concat();
    if opened.waiting > 0 {
        let n = opened.waiting;
        notes.push(format!(
            "{n} messages were already waiting when this reader started (M1)"
        ));
    }
    // A typed reader before us took some messages (M4): End's totals cannot match here.
    let shared = opened.earlier_reader.is_some();
    if let Some(pid) = opened.earlier_reader {
        narrate!("reader pid {pid} read this queue before and left what it did not select (M4)");
    }
    // 3. msgrcv has no timeout: a watchdog thread removes the queue if the writer dies,
    // which wakes msgrcv with EIDRM (watch.rs). A typed reader polls instead (typed.rs),
    // and POSIX waits in timed calls.
    let _watchdog = if posix || msgtyp != 0 {
        None
    } else {
        Some(watch.watchdog()?)
    };
    // Pingpong asks for msgtyp -100: requests (1) and End (100), never the replies (101).
    let pingpong = c.mode == Mode::Pingpong;
    let msgtyp = if pingpong { -types::END } else { msgtyp };
    let (rx, tx) = crate::reader_link(opened.queues, msgtyp, pingpong)?;
    let outcome = match c.mode {
        // Text mode, where types and priorities pick what is printed (M4), is typed.rs's.
        Mode::Text => typed::read(&setup, rx, watch, shared),
        _ => receive_all(rx, tx, &setup, watch).map(|report| (report, 0)),
    };
    finish(outcome, watch, owned, opened.stale, notes, c.json)
}

/// Step 4, the loop: one `msgrcv` (`mq_timedreceive`) per message; in pingpong one
/// `msgsnd` (`mq_send`) of each reply.
fn receive_all(mut rx: Rx, mut tx: Option<Tx>, setup: &Setup, watch: &PeerWatch) -> Result<Report> {
    let (end, req, rep) = (types::END, types::DATA, types::REPLY);
    match rx {
        Rx::Sysv { msgtyp: 0, .. } => narrate!("waiting in msgrcv(msgtyp 0): blocks until the writer's msgsnd; a watchdog checks every 100 ms that the writer lives"),
        Rx::Sysv { .. } => narrate!("pingpong on one queue (M4): waiting in msgrcv(msgtyp -{end}), which takes requests (type {req}) and End ({end}), never replies (type {rep}), which this reader sends back"),
        Rx::Posix { .. } => narrate!("waiting in mq_timedreceive (100 ms slices, checking the writer between them): the highest priority comes out first, FIFO within a priority (M3)"),
    }
    let mut session = ReaderSession::new(setup);
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
        let pong = match session.on_frame(&header, payload)? {
            Action::Continue | Action::Print(_) => continue,
            Action::Echo(pong) => pong,
            Action::Done => return Ok(session.finish()),
        };
        let sent = match &mut tx {
            // msgsnd(2) of the reply as type 101: only the writer's msgrcv(101) takes it.
            Some(Tx::Sysv { q, msg, full, tags }) => {
                let (q, len) = (*q, msg.load(tags.of(&pong), &pong)?);
                watch.send_sysv(q, full, |flags| sysv::msgsnd(q, msg, len, flags))?
            }
            // mq_send(3) of the reply on the .back queue, at priority 0.
            Some(Tx::Posix { q, buf, full, tags }) => {
                let (m, prio) = (posix::load(buf, &pong)?, tags.of(&pong) as u32);
                watch.send_posix(q, full, |deadline| match deadline {
                    None => mq_send(q, m, prio),
                    Some(d) => posix::mq_timedsend(q, m, prio, d),
                })?
            }
            None => {
                bail!("got a Ping (pingpong mode) but this reader has no way back to the writer")
            }
        };
        if sent == Delivery::PeerGone {
            return Err(session.writer_left("the queue", None));
        }
    }
}

/// Step 5: the queue(s) and the pair file are removed (`msgctl(IPC_RMID)` or `mq_unlink`,
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
        owned.remove()?;
    }
    report.stale_skipped += stale;
    notes.push(format!("reader pid {}", std::process::id()));
    report.notes = notes;
    conclude(&report, json)
}
