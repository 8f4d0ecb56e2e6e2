//! Opening the pair's queue(s), and one frame = one message in both directions.
//!
//! [`open`] is the rendezvous both programs run: lock the pair file, create or open the
//! queue, refuse another user's queue, sort out messages already in it (stale or not), record
//! this side, unlock. The sinks and sources below implement `common::protocol`'s
//! `FrameSink`/`FrameSource`: a frame (40-byte header + payload) is copied into one
//! message buffer and sent with one `msgsnd`/`mq_send`; one `msgrcv`/`mq_receive` returns one
//! whole frame (M2), which is decoded and checked in place.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::frame::{decode, Decoded, Header, Kind, HEADER_LEN};
use common::narrate;
use common::protocol::{Delivery, FrameSink, FrameSource, Incoming};
use libc::{c_long, key_t};
use nix::errno::Errno;
use nix::mqueue::{mq_getattr, mq_open, MQ_OFlag, MqAttr, MqdT};
use nix::sys::stat::Mode;
use nix::sys::time::TimeSpec;
use nix::time::{clock_gettime, ClockId};

use crate::{
    ftok, is_removed, posix_names, posix_owner, Gone, Liveness, Message, PairFile, Role, Slot,
    SysvQueue, CHECK_EVERY, MTEXT_MAX,
};

/// What a side asks for when it opens the pair.
#[derive(Clone, Debug)]
pub struct OpenArgs {
    /// This side.
    pub role: Role,
    /// POSIX (`--posix`) or System V.
    pub posix: bool,
    /// Rendezvous name.
    pub name: String,
    /// `--key`: a System V key instead of ftok.
    pub key: Option<key_t>,
    /// Pingpong needs the POSIX reply queue.
    pub pingpong: bool,
    /// A POSIX queue is created for messages of this many bytes (frame included).
    pub msgsize: usize,
    /// A POSIX queue is created to hold this many messages.
    pub maxmsg: usize,
    /// Another reader of the same queue is allowed (System V text mode, M4).
    pub shared_reader: bool,
}

/// The queue(s) of one pair.
#[derive(Debug)]
pub enum Queues {
    /// One System V queue; types separate requests, replies and End.
    Sysv(SysvQueue),
    /// POSIX: the main queue and, for pingpong, the reply queue.
    Posix {
        /// Writer -> reader.
        main: MqdT,
        /// Reader -> writer (pingpong).
        back: Option<MqdT>,
        /// Their names, for mq_unlink.
        names: Vec<String>,
    },
}

/// An opened pair.
#[derive(Debug)]
pub struct Opened {
    /// The queue(s).
    pub queues: Queues,
    /// The pair file (locked only during `open`).
    pub pair: PairFile,
    /// Whether this side created the queue (else the peer or an earlier run did).
    pub created: bool,
    /// Messages of an earlier run found and discarded.
    pub stale: u64,
    /// Messages already waiting that belong to this session (the writer started first).
    pub waiting: u64,
    /// Facts for the report.
    pub notes: Vec<String>,
    /// A reader that finished before this one and left messages of other types (M4).
    pub earlier_reader: Option<i32>,
}

/// What identifies the queue(s) for removal, copyable into a cleanup closure.
#[derive(Clone, Debug)]
pub enum QueueIds {
    /// A System V msqid.
    Sysv(libc::c_int),
    /// POSIX queue names.
    Posix(Vec<String>),
}

impl QueueIds {
    /// Removes the queue(s) (IPC_RMID / mq_unlink) and the pair file at `path`.
    pub fn remove(&self, path: &std::path::Path) -> std::io::Result<()> {
        match self {
            QueueIds::Sysv(id) => crate::remove_sysv(*id, path),
            QueueIds::Posix(names) => crate::remove_posix(names, path),
        }
    }

    /// "System V msqid 3" / "/ipc-study-0-x".
    pub fn describe(&self) -> String {
        match self {
            QueueIds::Sysv(id) => format!("System V msqid {id}"),
            QueueIds::Posix(names) => format!("POSIX {}", names.join(" and ")),
        }
    }
}

impl Opened {
    /// The queue(s) as [`QueueIds`].
    pub fn queues_ids(&self) -> QueueIds {
        match &self.queues {
            Queues::Sysv(q) => QueueIds::Sysv(q.id),
            Queues::Posix { names, .. } => QueueIds::Posix(names.clone()),
        }
    }
}

/// The rendezvous: see the crate docs ("The pair's contract").
pub fn open(a: &OpenArgs) -> Result<Opened> {
    let path = crate::pair_path(&a.name, a.posix)?;
    let pair = PairFile::open(&path)?;
    narrate!(
        "pair file {}: flock while checking the queue, so writer and reader never check at the same time",
        path.display()
    );
    let lock = pair.lock()?;
    let me = std::process::id() as i32;
    let mut notes = Vec::new();

    // Is another process already playing this role?
    let earlier_reader = match pair.read(a.role) {
        Slot::Finished(pid) if a.role == Role::Reader && pid != me => Some(pid),
        _ => None,
    };
    match pair.read(a.role) {
        Slot::Running(pid) if pid != me && common::peer::alive(pid) && !a.shared_reader => {
            bail!(
                "another {} (pid {pid}) is using this queue ({}); wait for it or pick another --name",
                a.role.as_str(),
                path.display()
            )
        }
        _ => {}
    }
    let (queues, created) = if a.posix {
        open_posix(a)?
    } else {
        open_sysv(a, &path)?
    };

    // Messages already in the queue: this session's, or leftovers?
    let peer = pair.read(a.role.peer());
    let writer = if a.role == Role::Writer {
        Slot::Empty
    } else {
        peer
    };
    let queued = count(&queues)?;
    let (mut stale, mut waiting) = (0, 0);
    if queued > 0 {
        let keep = match (a.role, writer) {
            (Role::Writer, _) => None,
            (Role::Reader, Slot::Running(pid)) if common::peer::alive(pid) => Some(format!(
                "sent by writer pid {pid}, which started first and is still running"
            )),
            (Role::Reader, Slot::Finished(pid)) => Some(format!(
                "sent by writer pid {pid}, which finished its session and exited: the kernel kept them (M1)"
            )),
            _ => None,
        };
        match keep {
            Some(why) => {
                waiting = queued;
                narrate!("{queued} messages are already waiting in the queue, {why}");
            }
            None => {
                stale = drain(&queues)?;
                let whose = match pair.read(Role::Writer) {
                    Slot::Running(pid) if pid != me => {
                        format!("writer pid {pid}, which was killed before it finished")
                    }
                    Slot::Finished(pid) => {
                        format!("writer pid {pid}, whose session nobody read to the end")
                    }
                    _ => "an earlier run".to_string(),
                };
                narrate!(
                    "the queue held {stale} messages left by {whose}: stale; discarded them before this session starts"
                );
                notes.push(format!(
                    "{stale} stale messages of an earlier run discarded"
                ));
            }
        }
    }
    // A peer recorded as running but dead is history: clear its slot so nobody waits on it.
    if let Slot::Running(pid) = peer {
        if !common::peer::alive(pid) {
            narrate!(
                "the pair file names {} pid {pid}, which no longer runs: forgetting it",
                a.role.peer().as_str()
            );
            pair.write(a.role.peer(), Slot::Empty)?;
        }
    }
    pair.write(a.role, Slot::Running(me))?;
    drop(lock);
    Ok(Opened {
        queues,
        pair,
        created,
        stale,
        waiting,
        notes,
        earlier_reader,
    })
}

fn open_sysv(a: &OpenArgs, path: &std::path::Path) -> Result<(Queues, bool)> {
    let key = match a.key {
        Some(k) => {
            narrate!("System V key {k:#x} from --key");
            k
        }
        None => {
            let k = ftok(path, b'M')?;
            narrate!(
                "System V key {k:#x} = ftok({}, 'M'): from the file's device and inode numbers",
                path.display()
            );
            k
        }
    };
    let (q, created) = SysvQueue::create_or_open(key)?;
    let st = q
        .stat()
        .with_context(|| format!("msgctl IPC_STAT queue {}", q.id))?;
    let me = nix::unistd::geteuid().as_raw();
    if st.uid != me || st.cuid != me {
        bail!(
            "System V queue key {key:#x} (msqid {}) belongs to uid {} (created by uid {}), not to you (uid {me}): refusing to use another user's queue",
            q.id, st.uid, st.cuid
        );
    }
    if created {
        narrate!(
            "msgget(key {key:#x}, IPC_CREAT|IPC_EXCL|0600) created queue msqid {} (ipcs -q lists it)",
            q.id
        );
    } else {
        narrate!(
            "msgget(key {key:#x}, 0) opened the existing queue msqid {} (mode {:o}, {} messages, {} bytes; last msgsnd by pid {}, last msgrcv by pid {})",
            q.id, st.mode & 0o777, st.qnum, st.cbytes, st.lspid, st.lrpid
        );
    }
    narrate!(
        "the queue holds at most {} bytes (msg_qbytes, from kernel.msgmnb): a msgsnd that does not fit blocks (M6)",
        st.qbytes
    );
    Ok((Queues::Sysv(q), created))
}

fn open_posix(a: &OpenArgs) -> Result<(Queues, bool)> {
    let (main_name, back_name) = posix_names(&a.name);
    let mut names = vec![main_name.clone()];
    // The sending end is non-blocking, so a full queue is noticed (and narrated) before
    // the program waits for room in poll(2).
    let nb = |sending: bool| {
        if sending {
            MQ_OFlag::O_NONBLOCK
        } else {
            MQ_OFlag::empty()
        }
    };
    let (main, created) = posix_one(&main_name, a, nb(a.role == Role::Writer))?;
    // The reply queue's name is always in the cleanup list: a killed pingpong run may
    // have left one even when this run does not use it (unlinking a missing name is fine).
    names.push(back_name.clone());
    let back = if a.pingpong {
        Some(posix_one(&back_name, a, nb(a.role == Role::Reader))?.0)
    } else {
        None
    };
    Ok((Queues::Posix { main, back, names }, created))
}

fn posix_one(name: &str, a: &OpenArgs, extra: MQ_OFlag) -> Result<(MqdT, bool)> {
    let mode = Mode::S_IRUSR | Mode::S_IWUSR;
    let attr = MqAttr::new(0, a.maxmsg as _, a.msgsize as _, 0);
    let flags = MQ_OFlag::O_RDWR | extra;
    let (q, created) = match mq_open(name, flags | MQ_OFlag::O_CREAT | MQ_OFlag::O_EXCL, mode, Some(&attr)) {
        Ok(q) => (q, true),
        Err(Errno::EEXIST) => (
            mq_open(name, flags, mode, None).with_context(|| format!("mq_open {name} O_RDWR"))?,
            false,
        ),
        Err(Errno::ENOSYS) => bail!("mq_open {name}: ENOSYS: this kernel has no POSIX message queues (CONFIG_POSIX_MQUEUE)"),
        Err(Errno::EINVAL) => bail!(
            "mq_open {name}: EINVAL: mq_maxmsg {} or mq_msgsize {} is above fs.mqueue.msg_max / msgsize_max (M6)",
            a.maxmsg, a.msgsize
        ),
        Err(e) => return Err(e).with_context(|| format!("mq_open {name} O_CREAT|O_EXCL 0600")),
    };
    let (uid, perm) = posix_owner(&q)?;
    let me = nix::unistd::geteuid().as_raw();
    if uid != me {
        bail!("POSIX queue {name} belongs to uid {uid}, not to you (uid {me}): refusing to use another user's queue");
    }
    let at = mq_getattr(&q).with_context(|| format!("mq_getattr {name}"))?;
    narrate!(
        "mq_open {name}: {} (mode {perm:o}); mq_getattr: mq_maxmsg {}, mq_msgsize {}, mq_curmsgs {}",
        if created { "created" } else { "opened the existing queue" },
        at.maxmsg(),
        at.msgsize(),
        at.curmsgs()
    );
    Ok((q, created))
}

/// Messages currently in the queue(s).
fn count(q: &Queues) -> Result<u64> {
    Ok(match q {
        Queues::Sysv(s) => s.stat().context("msgctl IPC_STAT")?.qnum,
        Queues::Posix { main, back, .. } => {
            let mut n = mq_getattr(main).context("mq_getattr")?.curmsgs() as u64;
            if let Some(b) = back {
                n += mq_getattr(b).context("mq_getattr")?.curmsgs() as u64;
            }
            n
        }
    })
}

/// Takes every message out without waiting.
fn drain(q: &Queues) -> Result<u64> {
    match q {
        Queues::Sysv(s) => s
            .drain(&mut Message::boxed())
            .context("msgrcv IPC_NOWAIT (discarding stale messages)"),
        Queues::Posix { main, back, .. } => {
            let mut n = drain_posix(main)?;
            if let Some(b) = back {
                n += drain_posix(b)?;
            }
            Ok(n)
        }
    }
}

fn drain_posix(q: &MqdT) -> Result<u64> {
    let size = mq_getattr(q).context("mq_getattr")?.msgsize() as usize;
    let mut buf = vec![0u8; size];
    let mut prio = 0;
    // A deadline in the past: mq_timedreceive returns at once, with ETIMEDOUT (or EAGAIN
    // on a non-blocking descriptor) when the queue is empty.
    let past = TimeSpec::new(0, 0);
    let mut n = 0;
    loop {
        match nix::mqueue::mq_timedreceive(q, &mut buf, &mut prio, &past) {
            Ok(_) => n += 1,
            Err(Errno::ETIMEDOUT | Errno::EAGAIN) => return Ok(n),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e).context("mq_timedreceive (discarding stale messages)"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Types and priorities of text lines (M4)
// ---------------------------------------------------------------------------------------

/// `N: text` at the start of a line: N as a number (the type or priority to send it with).
pub fn line_prefix(payload: &[u8]) -> Option<i64> {
    let colon = payload.iter().position(|&b| b == b':')?;
    let digits = &payload[..colon];
    if digits.is_empty() || digits.len() > 6 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// How a sink picks each message's type (System V) or priority (POSIX).
#[derive(Clone, Copy, Debug)]
pub struct Tagging {
    /// Text mode: a line may start with `N: `.
    pub text: bool,
    /// `--type N` / `--priority N`.
    pub default: i64,
    /// POSIX priorities (else System V types).
    pub posix: bool,
}

impl Tagging {
    /// The tag of a frame: End, Ping and Pong have fixed types; text lines may choose.
    fn tag(&self, header: &[u8; HEADER_LEN], payload: &[u8]) -> i64 {
        let kind = header[5];
        if self.posix {
            return match kind {
                k if k == Kind::Data as u8 && self.text => match line_prefix(payload) {
                    Some(p) if p < 32768 => p,
                    _ => self.default,
                },
                k if k == Kind::Data as u8 => self.default,
                // End at priority 0 comes out after everything sent before it.
                _ => 0,
            };
        }
        match kind {
            k if k == Kind::End as u8 => crate::types::END,
            k if k == Kind::Pong as u8 => crate::types::REPLY,
            k if k == Kind::Ping as u8 => crate::types::DATA,
            _ if self.text => match line_prefix(payload) {
                Some(t) if (1..=crate::types::MAX_USER).contains(&t) => t,
                Some(t) => {
                    common::warn!(
                        "type {t} is outside 1..={} (msgsnd needs a type > 0; above that the pair reserves types): sent as type {}",
                        crate::types::MAX_USER,
                        self.default
                    );
                    self.default
                }
                None => self.default,
            },
            _ => self.default,
        }
    }
}

// ---------------------------------------------------------------------------------------
// System V sink and source
// ---------------------------------------------------------------------------------------

/// What the watchdog decided, shared with the transport.
pub type Verdict = Arc<Mutex<Option<Gone>>>;

fn verdict_of(v: &Verdict) -> Option<Gone> {
    v.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Sends frames as System V messages.
pub struct SysvSink {
    /// The queue.
    q: SysvQueue,
    /// The reused message buffer (mtype + frame).
    msg: Box<Message>,
    /// How each message's type is chosen.
    tagging: Tagging,
    /// `--nowait`: a full queue is an EAGAIN error instead of a wait.
    nowait: bool,
    /// Whether a send has found the queue full yet; after the first time, sends just block
    /// (checking every time would cost a second system call per message).
    seen_full: bool,
    /// Peer liveness, for the watchdog's "blocked" bookkeeping.
    live: Arc<Liveness>,
    /// The watchdog's verdict, read when a call fails because the queue is gone.
    verdict: Verdict,
    /// Call counter for `live.in_call`.
    calls: u64,
    /// Whom we send to, for messages.
    pub peer: Role,
}

impl SysvSink {
    /// A sink on `q`.
    pub fn new(
        q: SysvQueue,
        tagging: Tagging,
        nowait: bool,
        live: Arc<Liveness>,
        verdict: Verdict,
        peer: Role,
    ) -> Self {
        SysvSink {
            q,
            msg: Message::boxed(),
            tagging,
            nowait,
            seen_full: false,
            live,
            verdict,
            calls: 0,
            peer,
        }
    }

    /// Whether a send ever found the queue full.
    pub fn saw_full(&self) -> bool {
        self.seen_full
    }
}

impl FrameSink for SysvSink {
    fn send(&mut self, header: &[u8; HEADER_LEN], payload: &[u8]) -> Result<Delivery> {
        let len = HEADER_LEN + payload.len();
        if len > MTEXT_MAX {
            bail!("a frame of {len} bytes does not fit a message of {MTEXT_MAX} bytes");
        }
        self.msg.mtype = self.tagging.tag(header, payload) as c_long;
        self.msg.mtext[..HEADER_LEN].copy_from_slice(header);
        self.msg.mtext[HEADER_LEN..len].copy_from_slice(payload);
        loop {
            let flags = if self.nowait || !self.seen_full {
                libc::IPC_NOWAIT
            } else {
                0
            };
            self.calls += 1;
            self.live
                .in_call
                .store(self.calls, std::sync::atomic::Ordering::Relaxed);
            let r = self.q.send(&self.msg, len, flags);
            self.live
                .in_call
                .store(0, std::sync::atomic::Ordering::Relaxed);
            match r {
                Ok(()) => return Ok(Delivery::Sent),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    if self.nowait {
                        let st = self.q.stat().ok();
                        bail!(
                            "msgsnd IPC_NOWAIT: EAGAIN: the queue is full ({} messages, {} of {} bytes; kernel.msgmnb) and --nowait asked not to block (M6)",
                            st.map_or(0, |s| s.qnum), st.map_or(0, |s| s.cbytes), st.map_or(0, |s| s.qbytes)
                        );
                    }
                    self.seen_full = true;
                    narrate!(
                        "the queue is full (msg_qbytes reached, M6): msgsnd blocks here until the {} takes a message (--nowait shows EAGAIN instead)",
                        self.peer.as_str()
                    );
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if is_removed(&e) => {
                    return removed(&self.verdict, self.peer, "msgsnd", &e)
                        .map(|_| Delivery::PeerGone)
                }
                Err(e) => return Err(e).with_context(|| format!("msgsnd msqid {}", self.q.id)),
            }
        }
    }
}

/// The queue disappeared under a call: the watchdog's doing (peer gone), or someone else's.
fn removed(v: &Verdict, peer: Role, call: &str, e: &std::io::Error) -> Result<()> {
    match verdict_of(v) {
        Some(g) => {
            narrate!(
                "{}; the watchdog removed the queue, which woke {call} ({e})",
                g.describe(peer)
            );
            Ok(())
        }
        None => {
            // Our own Ctrl-C handler may be the remover: it marks the process interrupted
            // before it removes anything, and `common::cli::run_main` then leaves the exit
            // (status 130) to it, so this error is not printed as the verdict.
            bail!(
                "{call}: EIDRM: the queue was removed while this process was using it ({e}): someone ran ipcrm, or another program removed it"
            )
        }
    }
}

/// Receives frames from System V messages.
pub struct SysvSource {
    /// The queue.
    q: SysvQueue,
    /// The reused message buffer.
    msg: Box<Message>,
    /// msgrcv's msgtyp: 0 any, > 0 exactly, < 0 lowest type <= |msgtyp| (M4).
    pub msgtyp: c_long,
    /// Largest payload accepted.
    max_payload: usize,
    /// Peer liveness.
    live: Arc<Liveness>,
    /// The watchdog's verdict.
    verdict: Verdict,
    /// Call counter for `live.in_call`.
    calls: u64,
    /// Poll with IPC_NOWAIT instead of blocking (a typed text reader must notice that the
    /// writer finished: a blocking msgrcv for one type is not woken by End of another).
    pub poll: bool,
    /// Whom we receive from.
    pub peer: Role,
}

impl SysvSource {
    /// A source on `q` selecting `msgtyp`.
    pub fn new(
        q: SysvQueue,
        msgtyp: c_long,
        max_payload: usize,
        live: Arc<Liveness>,
        verdict: Verdict,
        peer: Role,
    ) -> Self {
        SysvSource {
            q,
            msg: Message::boxed(),
            msgtyp,
            max_payload,
            live,
            verdict,
            calls: 0,
            poll: false,
            peer,
        }
    }

    /// One message: `Some((type, text length))`, or `None` when the peer is gone.
    // mtype is a c_long: i64 here, i32 on 32-bit targets, hence `from`.
    #[allow(clippy::useless_conversion)]
    pub fn recv_raw(&mut self) -> Result<Option<(i64, usize)>> {
        // When this call first had to wait: read only then, to keep clocks off the fast path.
        let mut started: Option<Instant> = None;
        loop {
            let flags = if self.poll { libc::IPC_NOWAIT } else { 0 };
            self.calls += 1;
            self.live
                .in_call
                .store(self.calls, std::sync::atomic::Ordering::Relaxed);
            let r = self.q.recv(&mut self.msg, self.msgtyp, flags);
            self.live
                .in_call
                .store(0, std::sync::atomic::Ordering::Relaxed);
            match r {
                Ok(n) => return Ok(Some((i64::from(self.msg.mtype), n))),
                Err(e) if e.raw_os_error() == Some(libc::ENOMSG) => {
                    // Poll mode: nothing of our type; is the writer still there?
                    if let Some(g) = self
                        .live
                        .check(started.get_or_insert_with(Instant::now).elapsed())
                    {
                        narrate!(
                            "{}: no more messages for msgtyp {}",
                            g.describe(self.peer),
                            self.msgtyp
                        );
                        if let Gone::Finished(_) = g {
                            return Ok(None);
                        }
                        *self.verdict.lock().unwrap_or_else(|p| p.into_inner()) = Some(g);
                        return Ok(None);
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if is_removed(&e) => {
                    removed(&self.verdict, self.peer, "msgrcv", &e)?;
                    return Ok(None);
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("msgrcv msqid {} msgtyp {}", self.q.id, self.msgtyp)
                    })
                }
            }
        }
    }

    /// The text of the last message.
    pub fn text(&self, n: usize) -> &[u8] {
        &self.msg.mtext[..n]
    }

    /// Why the writer is gone, if a wait ended because of it (died or never came).
    pub fn gone(&self) -> Option<Gone> {
        verdict_of(&self.verdict)
    }
}

/// Decodes one message's text as exactly one frame.
pub fn frame_of(text: &[u8], max_payload: usize) -> Result<(Header, &[u8])> {
    match decode(text, max_payload)? {
        Decoded::Frame { header, total } if total == text.len() => {
            Ok((header, &text[HEADER_LEN..total]))
        }
        Decoded::Frame { total, .. } => bail!(
            "a message of {} bytes holds a frame of {total} bytes: not one of ours",
            text.len()
        ),
        Decoded::NeedMore { total } => bail!(
            "a message of {} bytes holds a truncated frame ({total} bytes expected)",
            text.len()
        ),
    }
}

impl FrameSource for SysvSource {
    fn recv(&mut self) -> Result<Incoming<'_>> {
        match self.recv_raw()? {
            None => Ok(Incoming::Closed),
            Some((_, n)) => {
                let (h, p) = frame_of(&self.msg.mtext[..n], self.max_payload)?;
                Ok(Incoming::Frame(h, p))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// POSIX sink and source
// ---------------------------------------------------------------------------------------

/// Sends frames with `mq_send`: non-blocking until the queue is first found full (so that
/// is noticed and narrated), then `mq_timedsend` in 100 ms slices.
pub struct PosixSink {
    /// The queue (O_NONBLOCK).
    q: MqdT,
    /// The reused message buffer.
    buf: Vec<u8>,
    /// How each message's priority is chosen.
    tagging: Tagging,
    /// `--nowait`.
    nowait: bool,
    /// Whether a send found the queue full yet.
    seen_full: bool,
    /// Peer liveness, checked between 100 ms waits for room.
    live: Arc<Liveness>,
    /// Where the verdict goes when the peer is found gone.
    verdict: Verdict,
    /// Whom we send to.
    pub peer: Role,
}

impl PosixSink {
    /// A sink on `q` (opened O_NONBLOCK).
    pub fn new(
        q: MqdT,
        tagging: Tagging,
        nowait: bool,
        live: Arc<Liveness>,
        verdict: Verdict,
        peer: Role,
    ) -> Result<Self> {
        // The buffer is the queue's own mq_msgsize: a larger frame is refused before mq_send.
        let size = mq_getattr(&q).context("mq_getattr")?.msgsize() as usize;
        Ok(PosixSink {
            q,
            buf: vec![0; size],
            tagging,
            nowait,
            seen_full: false,
            live,
            verdict,
            peer,
        })
    }

    /// Whether a send ever found the queue full.
    pub fn saw_full(&self) -> bool {
        self.seen_full
    }
}

impl FrameSink for PosixSink {
    fn send(&mut self, header: &[u8; HEADER_LEN], payload: &[u8]) -> Result<Delivery> {
        let len = HEADER_LEN + payload.len();
        if len > self.buf.len() {
            bail!(
                "a frame of {len} bytes does not fit the queue's mq_msgsize of {} bytes",
                self.buf.len()
            );
        }
        self.buf[..HEADER_LEN].copy_from_slice(header);
        self.buf[HEADER_LEN..len].copy_from_slice(payload);
        let prio = self.tagging.tag(header, payload) as u32;
        // When this call first had to wait: read only then, to keep clocks off the fast path.
        let mut started: Option<Instant> = None;
        loop {
            let r = if self.seen_full {
                // After the first full queue the descriptor blocks: one mq_timedsend per
                // message, sleeping in the kernel like a plain mq_send, but only 100 ms at a
                // time so a dead reader is noticed.
                let deadline = deadline()?;
                crate::mq_timedsend(&self.q, &self.buf[..len], prio, &deadline)
            } else {
                nix::mqueue::mq_send(&self.q, &self.buf[..len], prio)
            };
            match r {
                Ok(()) => return Ok(Delivery::Sent),
                Err(Errno::EAGAIN) if self.nowait => {
                    let at = mq_getattr(&self.q).ok();
                    bail!(
                        "mq_send: EAGAIN: the queue is full ({} of mq_maxmsg {} messages; fs.mqueue.msg_max) and --nowait asked not to block (M6)",
                        at.map_or(0, |a| a.curmsgs()), at.map_or(0, |a| a.maxmsg())
                    );
                }
                Err(Errno::EAGAIN) => {
                    self.seen_full = true;
                    narrate!(
                        "the queue is full (mq_maxmsg messages, M6): mq_send blocks here until the {} takes one (--nowait shows EAGAIN instead)",
                        self.peer.as_str()
                    );
                    nix::mqueue::mq_remove_nonblock(&self.q)
                        .context("mq_setattr (clear O_NONBLOCK)")?;
                }
                Err(Errno::ETIMEDOUT) => {
                    if let Some(g) = self
                        .live
                        .check(started.get_or_insert_with(Instant::now).elapsed())
                    {
                        narrate!("{} while the queue was full", g.describe(self.peer));
                        self.live.bury(&g);
                        *self.verdict.lock().unwrap_or_else(|p| p.into_inner()) = Some(g);
                        return Ok(Delivery::PeerGone);
                    }
                }
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e).context("mq_send"),
            }
        }
    }
}

/// The absolute CLOCK_REALTIME deadline of a 100 ms wait (what mq_timedsend and
/// mq_timedreceive take). The coarse clock is read without a system call and costs a few
/// nanoseconds; it lags by at most one tick (a few ms), which only stretches the slice.
fn deadline() -> Result<TimeSpec> {
    let now = clock_gettime(ClockId::CLOCK_REALTIME_COARSE).context("clock_gettime")?;
    Ok(now + TimeSpec::from_duration(CHECK_EVERY))
}

/// Receives frames with `mq_timedreceive` in 100 ms slices, checking the peer between them.
pub struct PosixSource {
    /// The queue (blocking descriptor).
    q: MqdT,
    /// Buffer of mq_msgsize bytes (mq_receive refuses a smaller one with EMSGSIZE).
    buf: Vec<u8>,
    /// Largest payload accepted.
    max_payload: usize,
    /// Peer liveness.
    live: Arc<Liveness>,
    /// Whom we receive from.
    pub peer: Role,
    /// Where the verdict goes when the peer is found gone.
    verdict: Verdict,
}

impl PosixSource {
    /// A source on `q`.
    pub fn new(
        q: MqdT,
        max_payload: usize,
        live: Arc<Liveness>,
        verdict: Verdict,
        peer: Role,
    ) -> Result<Self> {
        let size = mq_getattr(&q).context("mq_getattr")?.msgsize() as usize;
        Ok(PosixSource {
            q,
            buf: vec![0; size],
            max_payload,
            live,
            peer,
            verdict,
        })
    }

    /// One message: `Some((priority, length))`, or `None` when the peer is gone.
    pub fn recv_raw(&mut self) -> Result<Option<(i64, usize)>> {
        // When this call first had to wait: read only then, to keep clocks off the fast path.
        let mut started: Option<Instant> = None;
        let mut prio = 0u32;
        loop {
            let deadline = deadline()?;
            match nix::mqueue::mq_timedreceive(&self.q, &mut self.buf, &mut prio, &deadline) {
                Ok(n) => return Ok(Some((i64::from(prio), n))),
                Err(Errno::ETIMEDOUT) => {
                    if let Some(g) = self
                        .live
                        .check(started.get_or_insert_with(Instant::now).elapsed())
                    {
                        narrate!("{}; mq_timedreceive stops waiting", g.describe(self.peer));
                        self.live.bury(&g);
                        *self.verdict.lock().unwrap_or_else(|p| p.into_inner()) = Some(g);
                        return Ok(None);
                    }
                }
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e).context("mq_timedreceive"),
            }
        }
    }

    /// The bytes of the last message.
    pub fn text(&self, n: usize) -> &[u8] {
        &self.buf[..n]
    }

    /// Why the peer is gone, if a wait ended because of it.
    pub fn gone(&self) -> Option<Gone> {
        verdict_of(&self.verdict)
    }
}

impl FrameSource for PosixSource {
    fn recv(&mut self) -> Result<Incoming<'_>> {
        match self.recv_raw()? {
            None => Ok(Incoming::Closed),
            Some((_, n)) => {
                let (h, p) = frame_of(&self.buf[..n], self.max_payload)?;
                Ok(Incoming::Frame(h, p))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_prefixes_pick_the_type() {
        assert_eq!(line_prefix(b"2: hello"), Some(2));
        assert_eq!(line_prefix(b"17:x"), Some(17));
        assert_eq!(line_prefix(b"hello: 2"), None);
        assert_eq!(line_prefix(b": x"), None);
        assert_eq!(line_prefix(b"12345678: x"), None);
    }
}
