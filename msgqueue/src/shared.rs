//! M5, many kinds of communication: one System V queue used by several writers and several
//! readers at the same time (`--shared` on every one of them).
//!
//! ```text
//! msgqueue-reader --shared --type 1 --writers 2   # terminal 1: type 1, from two writers
//! msgqueue-reader --shared --type 2               # terminal 2: type 2
//! msgqueue-writer --shared --type 1               # terminals 3 and 4: type lines
//! msgqueue-writer --shared --type 1
//! msgqueue-writer --shared --type 2               # terminal 5
//! ```
//! - **Many to one.** Each writer is its own session: its own nonce, sequence numbers from
//!   0, its own End. The reader of type 1 gets both writers' messages interleaved as the
//!   kernel queued them, tells them apart by session and verifies each session on its own
//!   (`common::session::ReaderSession`: order, no gap, no repeat, End's totals), and
//!   prints which writer each line came from.
//! - **Dispatch by type.** A writer sends everything, End included, as its `--type`, so its
//!   whole session stays in order (FIFO within a type, M3) and only `msgrcv(msgtyp T)` of
//!   the reader of that type takes it (M4). One reader per type: two would split a session.
//! - **Exactly once.** `msgrcv` removes the message it returns, so no two readers get the
//!   same one; each reader's verification shows that it got every message of its writers,
//!   once. A reader finishes when `--writers` sessions have ended and none it began is open.
//! - **The last one out removes the queue** (`members.rs`): a System V queue does not
//!   know who uses it, so the members keep a registry, and whoever leaves last, with
//!   nothing left waiting for a reader, calls `msgctl(IPC_RMID)`.
//!
//! Waiting: both sides call `msgsnd`/`msgrcv` with `IPC_NOWAIT` and sleep 2 ms when the
//! queue is full or holds nothing of their type, reading the registry every 100 ms to see
//! whether the writers (readers) they wait for still live. The one-to-one mode blocks in
//! the kernel and wakes a blocked call by removing the queue when the peer dies
//! (`watch.rs`): here that would end every other member's session.

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::cli::{bad_flag, CommonArgs, Mode, Program};
use common::frame::Kind;
use common::narrate;
use common::session::{conclude, Action, FrameBuf, Next, ReaderSession, WriterSession};
use common::setup::{Role, Setup, Wait};
use common::stall::Stall;
use common::stream;
use common::timing::{now_ns, CpuTime, Latency, Report};

use crate::members::{self, Member, Membership, State};
use crate::rendezvous::OpenArgs;
use crate::sysv::{self, Message};
use crate::watch::CHECK_EVERY;
use crate::{frame_of, reader, types, writer, Limits, QueueArgs};

/// How long a side sleeps between two `IPC_NOWAIT` calls that found nothing to do.
const POLL: Duration = Duration::from_millis(2);

/// The `--shared` flags, checked before anything exists (a bad one exits 2, like clap's
/// own checks): System V (a POSIX queue cannot select by type), text or stream (pingpong is
/// one writer and one reader), one type.
pub fn check_flags(q: &QueueArgs, mode: Mode, mtype: Option<i64>) -> Result<i64> {
    if q.posix {
        return Err(bad_flag("--shared is System V: a POSIX queue cannot select by type (mq_receive always takes the highest priority), so several readers would take each other's messages (M4)"));
    }
    if mode == Mode::Pingpong {
        return Err(bad_flag("--shared runs text or stream mode; pingpong is one writer and one reader (two types on one queue, M4)"));
    }
    match mtype.unwrap_or(types::DATA) {
        t if (1..=types::MAX_USER).contains(&t) => Ok(t),
        t => Err(bad_flag(format!(
            "--type {t}: with --shared each writer sends, and each reader takes, one type from 1 to {}",
            types::MAX_USER
        ))),
    }
}

/// What both sides report: a System V queue waited on by polling.
fn setup(program: &'static str, c: &CommonArgs, limits: &Limits) -> Setup {
    Setup {
        wait: Wait::Adaptive,
        ..crate::setup(program, false, c, limits)
    }
}

/// Who else uses the queue, as this member joins.
fn narrate_others(others: &[Member]) {
    let live: Vec<String> = others
        .iter()
        .filter(|m| m.live())
        .map(Member::describe)
        .collect();
    if live.is_empty() {
        narrate!("no other member is running yet");
    } else {
        narrate!("also using this queue now: {}", live.join(", "));
    }
}

/// `msgqueue-writer --shared`: joins, sends one session as type `--type`, leaves.
pub fn write(args: &writer::Args) -> Result<ExitCode> {
    let c = &args.common();
    let d = &args.depth;
    crate::depth::refuse_misplaced(
        &args.queue,
        d.queue_bytes.is_some(),
        d.queue_depth.is_some(),
    )?;
    let mtype = check_flags(&args.queue, c.mode, args.mtype)?;
    if args.priority.is_some() {
        return Err(bad_flag("--priority is POSIX; --shared is System V and sends each writer's messages as its --type"));
    }
    // 1. The limits (M6), as in one-to-one mode.
    let limits = Limits::read()?;
    limits.check_size(c.size, false)?;
    limits.narrate(false);
    let setup = setup(writer::PROGRAM, c, &limits);
    // 2. This writer's session: its nonce goes into the registry with its type, so the
    // reader that takes it knows whose it is and notices if it dies.
    let session = WriterSession::new(&setup);
    let (nonce, pid) = (session.nonce(), std::process::id());
    let me = Member::writer(mtype, nonce);
    // 3. Join: flock of the registry, msgget (create or open), a line of our own.
    let joined = members::join(&OpenArgs::new(Role::Writer, &args.queue, c, &limits), me)?;
    let m = &joined.membership;
    // The Hello states what the queue holds (msg_qbytes).
    let session = session.capacity(m.q.stat().map_or(0, |s| s.qbytes));
    // Any error or Ctrl-C from here on leaves the queue as "failed".
    let owned = m.own();
    narrate_others(&joined.others);
    narrate!("writer pid {pid} joined with session {nonce:016x}: every message, End included, goes out as type {mtype}, so the reader of type {mtype} gets the whole session, in order (M3, M4)");
    if c.mode == Mode::Text {
        narrate!(
            "type a line and press Enter to send it as one message; Ctrl-D (end of input) ends"
        );
    }
    let mut how = How {
        mtype,
        nowait: args.nowait,
        timeout: c.timeout,
        stall: Stall::new("msgsnd()", "the queue is full", "the queue was full", "M6"),
    };
    // 4. The loop: one msgsnd(IPC_NOWAIT) per frame, the Hello and End included.
    let mut report = send_all(session, m, &mut how)?;
    // 5. Leave as finished: the last member out removes the queue, unless this session
    // still waits in it for its reader (M1).
    owned.release();
    m.leave(State::Finished)?;
    report.stale_skipped += joined.stale;
    report.notes = how.stall.note().into_iter().collect();
    report.notes.push(format!(
        "shared queue msqid {}: session {nonce:016x} sent as type {mtype}",
        m.q.id
    ));
    report.notes.push(format!("writer pid {pid}"));
    conclude(&report, c.json)
}

/// How a shared writer sends.
struct How {
    /// Every frame's type.
    mtype: i64,
    /// `--nowait`: a full queue is an error.
    nowait: bool,
    /// `--timeout`: how long a full queue is waited for.
    timeout: Duration,
    /// The waits for room, counted; a long one is narrated as it starts and ends.
    stall: Stall,
}

/// The writer's loop: one `msgsnd` per frame, the Hello first, every frame as type
/// `how.mtype`.
fn send_all(mut session: WriterSession, m: &Membership, how: &mut How) -> Result<Report> {
    let (mut frame, mut msg) = (FrameBuf::new(), Message::boxed());
    let (mut stdin, mut line) = (io::stdin().lock(), Vec::new());
    loop {
        match session.next(&mut frame)? {
            Next::Send(out) => {
                let len = msg.load(how.mtype, &out)?;
                send(m, &msg, len, how)?;
            }
            Next::NeedLine => match stream::read_line(&mut stdin, &mut line)? {
                Some(l) => session.push_line(l),
                None => session.end_of_input(),
            },
            Next::AwaitAnswer => bail!("pingpong is one-to-one; --shared runs text or stream mode"),
            Next::Done => return Ok(session.finish()),
        }
    }
}

/// msgsnd(2) with IPC_NOWAIT: the kernel copies the message in, or says EAGAIN when the
/// queue is full (M6). Then 2 ms sleeps, until the reader of this type is gone or the queue
/// has stayed full for `--timeout` (`nowait`: the first EAGAIN is the error).
fn send(m: &Membership, msg: &Message, len: usize, how: &mut How) -> Result<()> {
    let mut wait: Option<Polling> = None;
    loop {
        match sysv::msgsnd(m.q, msg, len, libc::IPC_NOWAIT) {
            Ok(()) => {
                how.stall.end();
                return Ok(());
            }
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                if how.nowait {
                    bail!("msgsnd IPC_NOWAIT: EAGAIN: the shared queue is full (kernel.msgmnb) and --nowait asked not to block (M6)");
                }
                if how.stall.episodes() == 0 {
                    narrate!("the queue is full (msg_qbytes reached, M6): msgsnd(IPC_NOWAIT) says EAGAIN, so this writer retries every 2 ms until a reader takes a message; messages of a type nobody reads block every writer (M4)");
                }
                how.stall.begin();
                how.stall.tick();
                let w = wait.get_or_insert_with(Polling::new);
                if w.due() {
                    writer_check(m, how, w.since.elapsed())?;
                }
                std::thread::sleep(POLL);
            }
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => bail!("{}", sysv::failure("msgsnd", m.q, &e)),
        }
    }
}

/// A writer waiting for room: is the reader of its type gone, or has it waited too long?
fn writer_check(m: &Membership, how: &How, waited: Duration) -> Result<()> {
    let (all, mtype, timeout) = (m.members()?, how.mtype, how.timeout);
    let mine = |r: &&Member| r.role == Role::Reader && r.mtype == mtype;
    if !all.iter().filter(mine).any(Member::live) {
        if let Some(r) = all.iter().filter(mine).find(|r| r.gone()) {
            bail!("the reader of type {mtype} (pid {}) stopped without finishing, and the queue is full", r.pid);
        }
    }
    if waited >= timeout {
        bail!("the queue stayed full for --timeout ({timeout:?}): no reader made room for type {mtype}");
    }
    Ok(())
}

/// A wait by polling: when it began, when the registry was last read, and whether a peer
/// it waits for was running then.
struct Polling {
    since: Instant,
    checked: Instant,
    running: bool,
}

impl Polling {
    fn new() -> Polling {
        let now = Instant::now();
        Polling {
            since: now,
            checked: now,
            running: false,
        }
    }

    /// Whether 100 ms passed since the registry was last read (and it is read now).
    fn due(&mut self) -> bool {
        let due = self.checked.elapsed() >= CHECK_EVERY;
        if due {
            self.checked = Instant::now();
        }
        due
    }
}

/// `msgqueue-reader --shared`: joins, takes type `--type` until `--writers` sessions have
/// ended, leaves.
pub fn read(args: &reader::Args) -> Result<ExitCode> {
    let c = &args.common();
    crate::depth::refuse_misplaced(&args.queue, false, args.depth.queue_depth.is_some())?;
    let mtype = check_flags(&args.queue, c.mode, args.mtype)?;
    let want = args.writers.unwrap_or(1);
    // 1. The limits (M6).
    let limits = Limits::read()?;
    limits.narrate(false);
    let setup = setup(reader::PROGRAM, c, &limits);
    // 2. Join: refused if a live reader already takes this type (members.rs).
    let me = Member::reader(mtype, want);
    let joined = members::join(&OpenArgs::new(Role::Reader, &args.queue, c, &limits), me)?;
    let m = &joined.membership;
    // Any error or Ctrl-C from here on leaves the queue as "failed".
    let owned = m.own();
    narrate_others(&joined.others);
    narrate!("reader pid {} polls msgrcv(msgtyp {mtype}, IPC_NOWAIT) every 2 ms: only type {mtype}, until {want} writer session(s) have ended; each session is verified on its own, and other types stay queued for their readers (M4, M5)", std::process::id());
    // 3. The loop: one msgrcv(msgtyp T, IPC_NOWAIT) per message, into its session.
    let mut s = Sessions::new(&setup, mtype, want);
    // Stream mode: a writer that runs but sends nothing for --timeout is stuck; in text
    // mode a running writer is waited for as long as its human takes.
    s.bounded = c.mode != Mode::Text;
    receive_all(&mut s, m, c.timeout)?;
    // 4. Leave as finished; the last member out removes the queue and the registry.
    owned.release();
    m.leave(State::Finished)?;
    let mut report = s.report();
    report.stale_skipped += joined.stale;
    report
        .notes
        .push(format!("shared queue msqid {}: type {mtype}", m.q.id));
    report
        .notes
        .push(format!("reader pid {}", std::process::id()));
    conclude(&report, c.json)
}

/// The reader's loop: one `msgrcv(msgtyp T, IPC_NOWAIT)` per message; when none of type T
/// is queued, 2 ms sleeps, and every 100 ms a look at the writers. The wait ends after
/// `--timeout` with nothing taken, unless a writer of this type runs and the wait is not
/// bounded (text mode, as the last Hello said).
fn receive_all(s: &mut Sessions, m: &Membership, timeout: Duration) -> Result<()> {
    let (mut msg, mut out) = (Message::boxed(), io::stdout().lock());
    let mut wait: Option<Polling> = None;
    while !s.complete() {
        // msgrcv(2): the first message of type T, whole (M2), or ENOMSG at once.
        match sysv::msgrcv(m.q, &mut msg, s.mtype, libc::IPC_NOWAIT) {
            Ok(n) => {
                wait = None;
                s.take(&msg.mtext[..n], m, &mut out)?;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOMSG) => {
                let w = wait.get_or_insert_with(Polling::new);
                if w.due() {
                    w.running = s.check(m)?;
                    if w.running && !s.bounded {
                        // A writer of this type is alive and may take its time (text).
                        w.since = Instant::now();
                    }
                }
                if w.since.elapsed() >= timeout {
                    let (t, done, want) = (s.mtype, s.done, s.want);
                    if w.running {
                        bail!("{done} of {want} writer sessions of type {t} ended, and nothing of type {t} arrived for --timeout ({timeout:?}) although a writer of type {t} is running: it makes no progress");
                    }
                    bail!("{done} of {want} writer sessions of type {t} ended, and no writer of type {t} was running for --timeout ({timeout:?})");
                }
                std::thread::sleep(POLL);
            }
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => bail!("{}", sysv::failure("msgrcv", m.q, &e)),
        }
    }
    Ok(())
}

/// One writer's session, as a reader sees it.
struct One {
    /// The writer's nonce.
    nonce: u64,
    /// The writer's pid (0 if the registry does not record it).
    pid: i32,
    /// Its verifier.
    rs: ReaderSession,
    /// Its End arrived.
    ended: bool,
}

/// A reader's sessions: one verifier per writer.
struct Sessions<'s> {
    setup: &'s Setup,
    /// The type this reader takes.
    mtype: i64,
    /// `--writers`.
    want: u64,
    /// Sessions whose End arrived.
    done: u64,
    /// Every session begun.
    open: Vec<One>,
    /// Frames of no session begun here (a killed run's leftovers).
    stale: u64,
    /// One-way latencies of every timed message, all sessions together.
    lat: Latency,
    /// When the first message arrived, and the CPU time then.
    t0: Option<(u64, CpuTime)>,
    /// A running writer that sends nothing for `--timeout` is stuck (stream), or not (text
    /// mode waits for a human): the reader's `--mode` at first, then each Hello's.
    bounded: bool,
}

impl<'s> Sessions<'s> {
    fn new(setup: &'s Setup, mtype: i64, want: u64) -> Sessions<'s> {
        Sessions {
            setup,
            mtype,
            want,
            done: 0,
            open: Vec::new(),
            stale: 0,
            lat: Latency::new(),
            t0: None,
            bounded: false,
        }
    }

    /// `--writers` sessions ended, and none begun is still open.
    fn complete(&self) -> bool {
        self.done >= self.want && self.open.iter().all(|o| o.ended)
    }

    /// One message: to its session's verifier (a new session begins with its Hello).
    fn take(&mut self, text: &[u8], m: &Membership, out: &mut impl Write) -> Result<()> {
        let now = now_ns();
        let (h, payload) = frame_of(text, self.setup.max_payload)?;
        let i = match self.open.iter().position(|o| o.nonce == h.nonce) {
            Some(i) => i,
            None if h.kind == Kind::Hello => self.begin(h.nonce, m)?,
            None => {
                self.stale += 1;
                return Ok(());
            }
        };
        if matches!(h.kind, Kind::Data | Kind::Ping) && !h.is_warmup() {
            self.t0.get_or_insert_with(|| (now, CpuTime::now()));
            // A stream's writer stamps one Data frame in LATENCY_EVERY; 0 is "not timed".
            if h.sent_ns != 0 {
                self.lat.record(now.saturating_sub(h.sent_ns));
            }
        }
        let one = &mut self.open[i];
        match one.rs.on_frame(&h, payload)? {
            // Checked against this reader's flags and narrated by the session.
            Action::Hello(hello) => self.bounded = hello.mode != Mode::Text,
            Action::Continue => {}
            Action::Print(line) => {
                writeln!(out, "[type {}, writer {}] {line}", self.mtype, one.pid)
                    .context("writing to stdout")?
            }
            Action::Done => {
                one.ended = true;
                self.done += 1;
                let (pid, nonce, n) = (one.pid, one.nonce, crate::messages(one.rs.received()));
                let (done, want) = (self.done, self.want);
                narrate!("End of writer pid {pid}'s session {nonce:016x}: {n}, in order ({done} of {want} sessions)");
            }
            Action::Echo(_) => bail!(
                "a pingpong request on a shared queue: is a one-to-one writer using this --key?"
            ),
        }
        Ok(())
    }

    /// A session's first message: its writer's line in the registry is marked taken.
    fn begin(&mut self, nonce: u64, m: &Membership) -> Result<usize> {
        let pid = m.take(nonce)?.map_or(0, |w| w.pid);
        narrate!("session {nonce:016x} of writer pid {pid} begins (its Hello): this reader takes it, and marks it taken in the registry");
        self.open.push(One {
            nonce,
            pid,
            rs: ReaderSession::new(self.setup),
            ended: false,
        });
        Ok(self.open.len() - 1)
    }

    /// Nothing of this type is queued: did the writer of a session still open stop? Returns
    /// whether a writer of this type is running.
    fn check(&self, m: &Membership) -> Result<bool> {
        let all = m.members()?;
        for one in self.open.iter().filter(|o| !o.ended) {
            let w = all
                .iter()
                .find(|w| w.role == Role::Writer && w.session == one.nonce);
            if let Some(w) = w.filter(|w| w.gone()) {
                let how = if w.state == State::Failed {
                    "stopped"
                } else {
                    "died"
                };
                let (pid, nonce, n) = (w.pid, one.nonce, crate::messages(one.rs.received()));
                bail!("the writer (pid {pid}) {how} without finishing: its session {nonce:016x} ended after {n}, without End");
            }
        }
        let mine = |w: &&Member| w.role == Role::Writer && w.mtype == self.mtype;
        Ok(all.iter().filter(mine).any(Member::live))
    }

    /// The report: every session's counts added up; verified if every session was.
    fn report(self) -> Report {
        let mut r = self.setup.report(Role::Reader);
        let mut verified = self.complete();
        for (i, one) in self.open.into_iter().enumerate() {
            let s = one.rs.finish();
            if i == 0 {
                // The mode the writers' Hellos said (one-to-one-style: the first one's).
                r.mode = s.mode.clone();
            }
            verified &= s.verified;
            r.count += s.count;
            r.bytes += s.bytes;
            r.warmup += s.warmup;
            r.stale_skipped += s.stale_skipped;
            r.size_bytes = r.size_bytes.max(s.size_bytes);
            let how = if s.verified {
                "verified: in order, none missing or repeated, End's totals matched"
            } else {
                "NOT verified"
            };
            let (nonce, pid, n) = (one.nonce, one.pid, crate::messages(s.count));
            let (warm, bytes) = (s.warmup, s.bytes);
            r.notes.push(format!(
                "session {nonce:016x} of writer pid {pid}: {n} (+{warm} warm-up), {bytes} bytes, {how}"
            ));
        }
        r.verified = verified;
        r.stale_skipped += self.stale;
        r.latency_kind = "one_way".into();
        r.latency_ns = self.lat.summary();
        r.notes
            .extend(common::session::sampled_note(self.lat.len(), r.count));
        if let Some((t0, cpu0)) = self.t0 {
            r.elapsed_ns = now_ns().saturating_sub(t0);
            r.set_rates(CpuTime::now().since(cpu0));
        }
        r
    }
}
