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
//! Each message is printed with its type (System V) or priority (POSIX), its sequence
//! number, size and the time since it was sent. Stream mode verifies every message and
//! reports throughput; pingpong answers each request with a reply of another type (M4).
//!
//! System calls, in order (System V): read the limits (M6); `open`/`flock` of the pair
//! file; `ftok`; `msgget` (create or open) and `msgctl(IPC_STAT)` (owner, messages waiting,
//! last sender); `msgrcv(IPC_NOWAIT)` of stale messages if the recorded writer was killed;
//! then `msgrcv(msgtyp)` per message (and `msgsnd` of each reply, type 101); finally
//! `msgctl(IPC_RMID)`. POSIX: `mq_open`, `fstat`, `mq_getattr`, `mq_timedreceive` in 100 ms
//! slices, `mq_send` of replies on the `.back` queue, `mq_unlink` of both at the end.
//!
//! msgrcv's msgtyp (M4): 0 takes the first message in the queue; T > 0 the first of type T;
//! T < 0 the first of the lowest type <= |T|. A typed reader (`--type T`, T != 0) takes
//! only its messages: the others stay queued for another reader, and this one polls
//! (`IPC_NOWAIT` every 2 ms) so it notices when the writer has finished.
//!
//! Start order: either. Cleanup: this program removes the queue(s) and the pair file when
//! done, on an error and on Ctrl-C; a typed reader leaves the queue if messages of other
//! types remain, for another reader (which removes it).

use std::ffi::OsString;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;
use common::cli::{CommonArgs, Mode};
use common::frame::{parse_end, Kind};
use common::narrate;
use common::protocol::{conclude, run_reader, Setup};
use common::timing::{fmt_ns, now_ns, CpuTime, Latency, Report};

use crate::transport::{
    self, frame_of, OpenArgs, PosixSink, PosixSource, QueueIds, Queues, SysvSink, SysvSource,
    Tagging, Verdict,
};
use crate::writer::parse_key;
use crate::{types, Limits, Liveness, Role, SysvQueue, Watchdog, DEFAULT_NAME, MECHANISM};
use nix::mqueue::MqdT;

/// Program name, in narration and reports.
pub const PROGRAM: &str = "msgqueue-reader";

/// Command line of msgqueue-reader.
#[derive(Parser, Debug, Clone)]
#[command(
    name = PROGRAM,
    about = "Receive messages from a System V or POSIX message queue (claims M1-M6).",
    after_help = "Examples:\n  msgqueue-reader\n  msgqueue-reader --type 2      (only type 2, M4)\n  msgqueue-reader --type -3     (lowest type <= 3 first)\n  msgqueue-reader --posix"
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

    /// System V text mode: msgrcv's msgtyp: 0 any, T > 0 only type T, T < 0 the lowest type <= |T| (-99 to 99).
    #[arg(long = "type", value_name = "T", allow_negative_numbers = true,
          value_parser = clap::value_parser!(i64).range(-types::MAX_USER..=types::MAX_USER))]
    pub mtype: Option<i64>,
}

/// Entry point of the `msgqueue-reader` binary.
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// Runs msgqueue-reader with an explicit argument list (the `bench` runner uses this).
pub fn main_from<I, T>(argv: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::parse_from(argv);
    common::cli::run_main(PROGRAM, args.common.quiet, || run(args))
}

/// The program: check flags, show the limits, open the queue, receive, remove it, report.
pub fn run(args: Args) -> Result<ExitCode> {
    let c = &args.common;
    let text = c.mode == Mode::Text;
    if args.posix && (args.key.is_some() || args.mtype.is_some()) {
        bail!("--key and --type are System V; a POSIX queue cannot select messages: mq_receive always takes the highest priority (M4 is msgrcv's msgtyp)");
    }
    if !text && args.mtype.is_some() {
        bail!("--type applies to text mode; stream and pingpong use fixed types (M4)");
    }
    let msgtyp = args.mtype.unwrap_or(0);
    let typed = !args.posix && msgtyp != 0;
    let limits = Limits::read()?;
    for l in limits.describe(args.posix) {
        narrate!("limit (M6): {l}");
    }
    let max_payload = limits.max_payload(args.posix);
    let name = c.name_or(DEFAULT_NAME).to_string();

    let opened = transport::open(&OpenArgs {
        role: Role::Reader,
        posix: args.posix,
        name,
        key: args.key,
        pingpong: c.mode == Mode::Pingpong,
        msgsize: limits.max_frame(args.posix).0,
        maxmsg: limits.mq_msg_max.clamp(1, 10),
        shared_reader: text,
    })?;
    let path = opened.pair.path.clone();
    let ids = opened.queues_ids();
    // The reader owns the queue from now on: removed when done, on an error, on Ctrl-C.
    let owned = {
        let (ids, p) = (ids.clone(), path.clone());
        common::cleanup::own(
            format!("the queue ({}) and {}", ids.describe(), path.display()),
            move || ids.remove(&p),
        )
    };
    let live = Arc::new(Liveness::new(&path, Role::Writer, c.timeout)?);
    let setup = Setup {
        program: PROGRAM.into(),
        mechanism: MECHANISM.into(),
        flavour: if args.posix { "posix" } else { "sysv" }.into(),
        wait: if typed { "poll" } else { "blocking" }.into(),
        args: c.clone(),
        max_payload,
    };
    let mut notes = opened.notes.clone();
    notes.extend(limits.describe(args.posix));
    if opened.waiting > 0 {
        notes.push(format!(
            "{} messages were already waiting when this reader started (M1)",
            opened.waiting
        ));
    }

    // A typed reader before us took some messages (M4): End's totals cannot match here.
    let shared = opened.earlier_reader.is_some();
    if let Some(pid) = opened.earlier_reader {
        narrate!("reader pid {pid} read this queue before and left what it did not select (M4)");
    }
    // What the watchdog (System V) or the timed waits (POSIX) found out about the writer.
    let verdict: Verdict = Default::default();
    let how = How {
        setup: &setup,
        live: &live,
        verdict: &verdict,
        msgtyp,
        typed,
        shared,
    };
    let mut leftover = 0;
    let outcome = match opened.queues {
        Queues::Sysv(q) => receive_sysv(&how, q, &ids, &path, &mut leftover),
        Queues::Posix { main, back, .. } => receive_posix(&how, main, back),
    };
    // A wait that ended because the writer died or never came: say that first.
    let gone = verdict.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut report = outcome.map_err(|e| match gone {
        Some(g) => e.context(g.describe(Role::Writer)),
        None => e,
    })?;
    if leftover > 0 {
        narrate!(
            "{leftover} messages of other types remain in the queue (M4): leaving it for another reader (msgqueue-reader --type 0 takes them all and removes the queue)"
        );
        opened.pair.write(
            Role::Reader,
            crate::Slot::Finished(std::process::id() as i32),
        )?;
        owned.release();
        notes.push(format!(
            "{leftover} messages of other types left in the queue for another reader"
        ));
    } else {
        owned.remove()?;
    }
    report.stale_skipped += opened.stale;
    notes.push(format!("reader pid {}", std::process::id()));
    report.notes = notes;
    conclude(&report, c.json)
}

/// What the receiving functions need to know.
struct How<'a> {
    /// Program, mode and limits.
    setup: &'a Setup,
    /// The writer's liveness.
    live: &'a Arc<Liveness>,
    /// Where the verdict on the writer goes.
    verdict: &'a Verdict,
    /// `--type` (0: any).
    msgtyp: i64,
    /// A System V text reader selecting one type (polls; leaves other types queued).
    typed: bool,
    /// An earlier reader took part of this session (M4).
    shared: bool,
}

/// System V: text (by type), stream (msgtyp 0) or pingpong (requests and End by
/// msgtyp -100, replies sent as type 101). Sets `leftover` for a typed reader.
fn receive_sysv(
    how: &How<'_>,
    q: SysvQueue,
    ids: &QueueIds,
    path: &std::path::Path,
    leftover: &mut u64,
) -> Result<Report> {
    let (setup, live, verdict) = (how.setup, how.live, how.verdict);
    let max = setup.max_payload;
    // The watchdog removes the queue if the writer dies (waking msgrcv with EIDRM); a
    // typed reader polls instead, because the other messages belong to other readers.
    // Dropping the watchdog at the end of this function stops it.
    let _dog = if how.typed {
        None
    } else {
        let (ids, p) = (ids.clone(), path.to_path_buf());
        Some(Watchdog::start(live.clone(), verdict.clone(), move || {
            let _ = ids.remove(&p);
        })?)
    };
    let source = |msgtyp: i64| {
        SysvSource::new(
            q,
            msgtyp as _,
            max,
            live.clone(),
            verdict.clone(),
            Role::Writer,
        )
    };
    match setup.args.mode {
        Mode::Text => {
            let mut src = source(how.msgtyp);
            src.poll = how.typed;
            narrate!("{}", describe_msgtyp(how.msgtyp));
            let r = read_text(setup, &mut Src::Sysv(src), !how.typed, how.shared)?;
            if how.typed {
                *leftover = what_is_left(q)?;
            }
            Ok(r)
        }
        Mode::Stream => {
            narrate!("waiting in msgrcv(msgtyp 0): blocks until the writer's msgsnd; a watchdog checks every 100 ms that the writer lives");
            run_reader::<_, SysvSink>(setup, &mut source(0), None)?.into_report("the queue")
        }
        Mode::Pingpong => {
            let tag = Tagging {
                text: false,
                default: types::REPLY,
                posix: false,
            };
            let mut back =
                SysvSink::new(q, tag, false, live.clone(), verdict.clone(), Role::Writer);
            narrate!(
                "pingpong on one queue (M4): waiting in msgrcv(msgtyp -{}), which takes requests (type {}) and End ({}), never replies (type {}), which this reader sends back",
                types::END, types::DATA, types::END, types::REPLY
            );
            run_reader(setup, &mut source(-types::END), Some(&mut back))?.into_report("the queue")
        }
    }
}

/// POSIX: everything arrives on the main queue, highest priority first; pingpong replies
/// leave on the `.back` queue.
fn receive_posix(how: &How<'_>, main: MqdT, back: Option<MqdT>) -> Result<Report> {
    let (setup, live, verdict) = (how.setup, how.live, how.verdict);
    let mut src = PosixSource::new(
        main,
        setup.max_payload,
        live.clone(),
        verdict.clone(),
        Role::Writer,
    )?;
    narrate!("waiting in mq_timedreceive (100 ms slices, checking the writer between them): the highest priority comes out first, FIFO within a priority (M3)");
    match (setup.args.mode, back) {
        (Mode::Text, _) => read_text(setup, &mut Src::Posix(src), true, how.shared),
        (_, Some(b)) => {
            let tag = Tagging {
                text: false,
                default: 0,
                posix: true,
            };
            let mut sink =
                PosixSink::new(b, tag, false, live.clone(), verdict.clone(), Role::Writer)?;
            run_reader(setup, &mut src, Some(&mut sink))?.into_report("the queue")
        }
        (_, None) => run_reader::<_, PosixSink>(setup, &mut src, None)?.into_report("the queue"),
    }
}

/// What msgrcv's msgtyp means, in words (M4).
fn describe_msgtyp(t: i64) -> String {
    match t {
        0 => "waiting in msgrcv(msgtyp 0): the first message in the queue, whatever its type (FIFO, M3); the writer's msgsnd wakes it".into(),
        t if t > 0 => format!("polling msgrcv(msgtyp {t}, IPC_NOWAIT) every 2 ms: only messages of type {t}; others stay queued for another reader (M4)"),
        t => format!("polling msgrcv(msgtyp {t}, IPC_NOWAIT) every 2 ms: the lowest type <= {} first, FIFO within a type; higher types stay queued (M4)", -t),
    }
}

/// Whatever a typed reader leaves: End alone is taken (it was for a `--type 0` reader);
/// returns how many messages stay.
fn what_is_left(q: SysvQueue) -> Result<u64> {
    let st = q.stat().context("msgctl IPC_STAT")?;
    if st.qnum == 1 {
        let mut m = crate::Message::boxed();
        if q.recv(&mut m, types::END as _, libc::IPC_NOWAIT).is_ok() {
            return Ok(0);
        }
    }
    Ok(st.qnum)
}

/// A text-mode source of either flavour.
enum Src {
    /// System V: the tag is the message type.
    Sysv(SysvSource),
    /// POSIX: the tag is the priority.
    Posix(PosixSource),
}

impl Src {
    fn recv_raw(&mut self) -> Result<Option<(i64, usize)>> {
        match self {
            Src::Sysv(s) => s.recv_raw(),
            Src::Posix(s) => s.recv_raw(),
        }
    }
    fn text(&self, n: usize) -> &[u8] {
        match self {
            Src::Sysv(s) => s.text(n),
            Src::Posix(s) => s.text(n),
        }
    }
    fn gone(&self) -> Option<crate::Gone> {
        match self {
            Src::Sysv(s) => s.gone(),
            Src::Posix(s) => s.gone(),
        }
    }
    fn tag_name(&self) -> &'static str {
        match self {
            Src::Sysv(_) => "type",
            Src::Posix(_) => "priority",
        }
    }
}

/// Text mode: print each message with its type or priority. Not `common::protocol`'s
/// loop, because here messages legitimately arrive out of sequence order (priorities,
/// negative msgtyp) or only in part (a typed reader): sequence gaps are not losses.
/// `sees_all`: this reader takes every message type, so End arrives; `shared`: an earlier
/// reader took some, so End's totals may exceed what arrives here.
fn read_text(setup: &Setup, src: &mut Src, sees_all: bool, shared: bool) -> Result<Report> {
    let mut out = std::io::stdout().lock();
    let mut lat = Latency::new();
    let (mut count, mut bytes, mut largest, mut stale) = (0u64, 0u64, 0u64, 0u64);
    let mut session = None;
    let mut end_ok = None;
    let cpu0 = CpuTime::now();
    let t0 = now_ns();
    let tag_name = src.tag_name();
    while let Some((tag, n)) = src.recv_raw()? {
        let now = now_ns();
        let (h, payload) = frame_of(src.text(n), setup.max_payload)?;
        // Every frame carries the writer's session; a different one is a leftover.
        if *session.get_or_insert(h.nonce) != h.nonce {
            stale += 1;
            continue;
        }
        match h.kind {
            Kind::End => {
                let claimed = parse_end(payload).context("End frame")?;
                let ok = claimed == (count, bytes) || (shared && claimed.0 >= count);
                if claimed != (count, bytes) {
                    narrate!(
                        "End says {} messages / {} bytes were sent; {count} / {bytes} arrived here{}",
                        claimed.0,
                        claimed.1,
                        if shared { ": the others went to the earlier reader (M4)" } else { "" }
                    );
                }
                end_ok = Some(ok);
                break;
            }
            Kind::Data => {}
            k => bail!("a text-mode reader got a {k:?} frame: is a writer in another mode using this queue?"),
        }
        let age = now.saturating_sub(h.sent_ns);
        lat.record(age);
        count += 1;
        bytes += payload.len() as u64;
        largest = largest.max(payload.len() as u64);
        writeln!(
            out,
            "[{tag_name} {tag}] #{} ({} B, {} after it was sent): {}",
            h.seq,
            payload.len(),
            fmt_ns(age),
            String::from_utf8_lossy(payload)
        )
        .context("writing to stdout")?;
    }
    let verified = match end_ok {
        Some(ok) => ok,
        None if sees_all => {
            bail!("the writer went away after {count} messages without sending End")
        }
        // A typed reader never sees End (type 100): the writer's "finished" record ends it,
        // unless the writer died or never came.
        None => match src.gone() {
            Some(g) => bail!("{} after {count} messages", g.describe(Role::Writer)),
            None => true,
        },
    };
    let mut report = Report {
        program: setup.program.clone(),
        role: "reader".into(),
        mechanism: setup.mechanism.clone(),
        flavour: setup.flavour.clone(),
        mode: "text".into(),
        wait: setup.wait.clone(),
        size_bytes: largest,
        count,
        bytes,
        verified,
        latency_kind: "one_way".into(),
        latency_ns: lat.summary(),
        elapsed_ns: now_ns() - t0,
        stale_skipped: stale,
        ..Report::default()
    };
    report.set_rates(CpuTime::now().since(cpu0));
    Ok(report)
}
