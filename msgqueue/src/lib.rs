//! # msgqueue: System V and POSIX message queues (claims M1-M6)
//!
//! A message queue is a list of whole messages kept in kernel memory. A sender hands the
//! kernel one message (`msgsnd`, `mq_send`); the kernel copies it into memory it allocates
//! for that message and links it to the queue; a receiver (`msgrcv`, `mq_receive`) takes
//! one whole message out and the kernel frees it. So:
//! - **M1** "a pipe that uses memory": both live in kernel memory, but a pipe is a byte ring
//!   of fixed capacity that dies with its last descriptor, while a queue is a list of
//!   separately allocated messages with a *name* (a System V key, a POSIX `/name`) that
//!   outlives every process: messages sent by a writer that has exited are still there for a
//!   reader that starts later (`ipcs -q` shows them).
//! - **M2** "structures": a message is whole: one `msgrcv` returns exactly one `msgsnd`,
//!   never half of one or two glued together. System V messages are a C struct, a `long`
//!   type followed by bytes ([`Message`]); the bytes themselves are not interpreted.
//! - **M3** "FIFO": within one System V type, and within one POSIX priority, messages come
//!   out in the order they went in. Across types (`msgrcv` with a type other than 0) and
//!   across priorities (POSIX always takes the highest priority first) they do not.
//! - **M4** "a receiver can fetch a different kind": System V's `msgtyp` argument: 0 takes
//!   the first message, `T > 0` the first message of type T, `T < 0` the first message of
//!   the lowest type `<= |T|`. Other messages stay queued for another receiver. POSIX has no
//!   selection; it has priorities instead (0 to 32767, highest first). See [`typed`].
//! - **M5** "many kinds of communication": one queue carries any number of senders and
//!   receivers, related or not; pingpong here runs requests and replies over one System V
//!   queue by giving them two types ([`types`]; the Hello has a third), and `--shared`
//!   ([`shared`]) runs several writers and several readers on one queue at once: many to
//!   one, and dispatch by type,
//!   each reader taking its own type, each message taken by exactly one `msgrcv`, the
//!   queue removed by the last member to leave ([`members`]).
//! - **M6** "limits": System V: `kernel.msgmax` (largest message), `kernel.msgmnb` (bytes in
//!   one queue), `kernel.msgmni` (number of queues). POSIX: `fs.mqueue.msgsize_max`,
//!   `fs.mqueue.msg_max` (messages per queue), `fs.mqueue.queues_max`, and the
//!   per-user `RLIMIT_MSGQUEUE`. See [`Limits`]; `--queue-bytes` and `--queue-depth` change
//!   how much one queue holds, within them ([`depth`]).
//!
//! ## The pair's contract
//! - **Rendezvous** ([`rendezvous`]). A file in the private runtime directory,
//!   `<name>.sysv-mq` or `<name>.posix-mq` ([`rendezvous::pair_path`]). For System V its
//!   inode gives the key (`ftok(3)`), unless `--key` is given; POSIX names the queue
//!   `/ipc-study-<uid>-<name>` (and `<that>.back` for pingpong replies, since POSIX cannot
//!   select by type). Whoever starts first creates the queue (mode 0600); the other opens it.
//!   A queue owned by another user is refused.
//! - **Who is there** ([`pairfile`]). The same file records the writer and the reader, each
//!   by pid *and start time* (so a pid reused by an unrelated process is not taken for a
//!   killed side), with its state (`running`, `finished`, `refused`), in two fixed slots;
//!   `cat` shows it. Opening takes an exclusive `flock` on it, so the checks below never
//!   interleave.
//! - **The Hello** ([`follow`]). The writer's first message says what it runs (mode, size,
//!   count, warm-up, flavour, the queue's capacity). It has a type of its own (102,
//!   [`types::HELLO`]; POSIX: the highest priority), so the reader asks for it first,
//!   whatever else is queued, and only then knows what to ask `msgrcv` for (msgtyp 0,
//!   -100 for pingpong, `--type T` in text mode). A reader with no mode flags follows it; a
//!   reader flag that contradicts it is refused, naming both values and the fix, and the
//!   reader marks its line `refused` so the writer names the cause too.
//! - **The other flavour** ([`elsewhere`]). A System V and a POSIX queue of one `--name`
//!   never meet; a side that waits for a peer says so when the other flavour's queue
//!   exists, in its waiting line and in its timeout error.
//! - **Stale messages.** A queue outlives a killed run, with its messages. The rule:
//!   * the writer, when it opens, discards (and counts) every message already in the queue:
//!     its session has not started, so they belong to an earlier one;
//!   * the reader, when it opens, keeps messages already there only if the recorded writer
//!     is running (it started first) or *finished* (it sent its whole session, End included,
//!     and exited: M1); if the recorded writer is dead while "running" (killed), or none is
//!     recorded, they are leftovers: discarded and counted.
//!
//!   Every frame also carries the writer's session nonce (`common::session` skips frames of
//!   another session), a second line of defence.
//! - **A peer that dies.** Blocking calls must not wait forever for a dead peer. System V
//!   `msgrcv`/`msgsnd` have no timeout, and adding a poll loop would cost the pingpong fast
//!   path, so each side runs a watchdog thread ([`watch::PeerWatch::watchdog`]): every
//!   100 ms it reads the peer's slot and checks that process (`kill(pid, 0)`, and its start
//!   time); if the peer is gone, it removes the queue (`IPC_RMID`), which wakes the blocked
//!   call with `EIDRM`, and says why. POSIX has timed calls, so the main thread waits in
//!   `mq_timedreceive`/`mq_timedsend` (100 ms slices) and checks the peer between them. The
//!   same check ends a wait for a peer that never came (`--timeout`), and one on a live peer
//!   that makes no progress for `--timeout`: a full queue nobody empties, and in stream and
//!   pingpong every wait (text mode waits for a human). A System V queue removed by anyone
//!   else shows up as `EIDRM` and is reported as such. A side that finds its peer dead removes the queue and
//!   the pair file: nobody will use them, and a `kill -9` of either side leaves nothing behind.
//! - **Cleanup.** The reader removes the queue(s) and the file when done, on an error and on
//!   Ctrl-C. A writer that created the queue removes it on an error or Ctrl-C unless a live
//!   reader is recorded; after a clean finish it leaves the queue for the reader (M1). Both
//!   claims are taken the moment the queue exists, so a failure later in the rendezvous (a
//!   full file system refusing the pair file's `pwrite`) leaves nothing behind.
//! - **One of each.** The pair file records one writer and one reader: a second live
//!   writer, or a second live reader, is refused with the pid (and program) already there,
//!   before it opens any queue, and pointed to `--shared` (M5), which has its own
//!   registry, key and rules ([`members`]); each of its writers sends its own Hello.
//!
//! ## Module map
//! | module | what it holds |
//! |---|---|
//! | [`writer`], [`reader`] | the two programs, top to bottom, each with its send/receive loop |
//! | [`follow`] | the reader's first message: the writer's Hello, checked, followed, put back for a next typed reader |
//! | this file | the shared flags, the message types, [`Tx`]/[`Rx`] (a queue and its message buffer), one message = one frame |
//! | [`sysv`] | the System V wrappers (`msgget`, `msgsnd`, `msgrcv`, `msgctl`, `ftok`): where the `unsafe` is |
//! | [`posix`] | the POSIX names and the one call nix lacks (`mq_timedsend`, the other `unsafe`) |
//! | [`limits`] | M6: the kernel's limits (printed once), and the first full queue |
//! | [`depth`] | M6: `--queue-bytes`, `--queue-depth`, a POSIX queue's `mq_msgsize` from `--size`: what the queue holds, read back (a first reading skips it) |
//! | [`typed`] | M4 in text mode: `N: text` lines, `--type`, the typed reader |
//! | [`shared`] | M5: `--shared`, several writers and typed readers on one queue at once, each with its own loop |
//! | [`members`] | M5's registry: who uses a shared queue, and the last one out removes it (a first reading skips it) |
//! | [`rendezvous`] | create-or-open, stale messages, ownership, cleanup (a first reading skips it) |
//! | [`watch`] | the peer watch: who the peer is, whether it lives, what a wait does when it dies, a long wait on a full queue (a first reading skips it) |
//! | [`elsewhere`] | where to look (`ipcs -q`, `/dev/mqueue`), and a queue of the same name in the other flavour (a first reading skips it) |
//! | [`pairfile`] | the pair file: the writer's and the reader's line, each a pid and its start time (a first reading skips it) |
//!
//! Man pages: msgget(2), msgsnd(2), msgrcv(2), msgctl(2), ftok(3), svipc(7),
//! mq_overview(7), mq_open(3), mq_send(3), mq_timedsend(3), mq_receive(3), mq_getattr(3),
//! mq_unlink(3).

pub mod depth;
pub mod elsewhere;
pub mod follow;
pub mod limits;
pub mod members;
pub mod pairfile;
pub mod posix;
pub mod reader;
pub mod rendezvous;
pub mod shared;
pub mod sysv;
pub mod typed;
pub mod watch;
pub mod writer;

use anyhow::{bail, Result};
use common::cli::CommonArgs;
use common::frame::{decode, Decoded, Header, Kind, HEADER_LEN};
use common::narrate;
use common::session::{Outgoing, WriterSession};
use common::setup::{Flavour, Mechanism, Setup, Wait};
use nix::mqueue::MqdT;

use crate::limits::Full;
use crate::rendezvous::{OpenArgs, Queues};
use crate::typed::Tagging;

pub use limits::Limits;
pub use posix::{posix_available, posix_names, posix_unlink};
pub use sysv::{Message, QueueStat, SysvQueue};

/// "1 message", "2 messages": a count as a line or a report says it.
pub fn messages(n: u64) -> String {
    match n {
        1 => "1 message".into(),
        n => format!("{n} messages"),
    }
}

/// Default rendezvous name.
pub const DEFAULT_NAME: &str = "msgqueue";

/// Largest message text this crate handles, whatever `kernel.msgmax` says.
pub const MTEXT_MAX: usize = 64 * 1024;

/// The System V message types this pair uses (M4). User types for text mode are
/// `1..=MAX_USER`; the pair reserves the two above them.
pub mod types {
    use common::frame::Kind;

    /// Data and pingpong requests, unless a text line or `--type` says otherwise.
    pub const DATA: i64 = 1;
    /// Largest type a user may give (`--type N`, `N: text`).
    pub const MAX_USER: i64 = 99;
    /// The writer's End frame. A pingpong reader asks for `-END`: the lowest type `<= 100`,
    /// so requests (1) come before End and replies (101) are never taken by mistake.
    pub const END: i64 = 100;
    /// Pingpong replies; the writer asks for exactly this type.
    pub const REPLY: i64 = 101;
    /// The writer's Hello, the first message of every session: the reader asks for exactly
    /// this type first, whatever else is queued, and learns from it what to ask for next
    /// (`follow.rs`).
    pub const HELLO: i64 = 102;
    /// The Hello's POSIX priority, the highest there is (`MQ_PRIO_MAX` - 1): `mq_receive`
    /// always takes it before anything sent after it.
    pub const HELLO_PRIORITY: u32 = 32767;

    /// The fixed type of a frame kind: Hello, End, Pong (reply) and Ping (request). Data
    /// frames have none: their type is the line's or `--type`'s ([`crate::typed::Tagging`]).
    pub fn of(kind: Kind) -> Option<i64> {
        match kind {
            Kind::Hello => Some(HELLO),
            Kind::End => Some(END),
            Kind::Pong => Some(REPLY),
            Kind::Ping => Some(DATA),
            Kind::Data => None,
        }
    }
}

/// The flags both programs take besides the common ones: which kind of queue, and how
/// to find a System V one.
#[derive(clap::Args, Debug, Clone)]
pub struct QueueArgs {
    /// Use a POSIX queue (mq_open, priorities) instead of System V (msgget, types).
    #[arg(long)]
    pub posix: bool,

    /// System V key (decimal or 0x hex) instead of ftok on the pair file.
    #[arg(long, value_name = "KEY", value_parser = rendezvous::parse_key)]
    pub key: Option<i32>,

    /// M5: several writers and several readers on one System V queue at once; each writer
    /// sends, and each reader takes, one --type (see shared.rs).
    #[arg(long)]
    pub shared: bool,
}

/// What both programs' reports say about them: a message queue of either flavour, whose
/// calls sleep in the kernel until the peer's call wakes them ([`Wait::Block`]), carrying
/// at most the payload that fits one message (M6).
pub fn setup(program: &'static str, posix: bool, args: &CommonArgs, limits: &Limits) -> Setup {
    Setup {
        program,
        mechanism: Mechanism::Msgqueue,
        flavour: if posix { Flavour::Posix } else { Flavour::Sysv },
        wait: Wait::Block,
        args: args.clone(),
        max_payload: limits.max_payload(posix),
    }
}

/// Where one side's frames go: the queue, the buffer each message is built in, and the
/// type (System V) or priority (POSIX) each frame is sent as.
pub enum Tx {
    /// System V: `msgsnd` of a [`Message`] (type, then the frame).
    Sysv {
        /// The queue.
        q: SysvQueue,
        /// The message being sent.
        msg: Outbox,
        /// Whether the queue was found full yet (M6).
        full: Full,
        /// Each frame's type.
        tags: Tagging,
    },
    /// POSIX: `mq_send` of a buffer of the queue's `mq_msgsize`.
    Posix {
        /// The queue (opened non-blocking, so a full queue is noticed).
        q: MqdT,
        /// The message being sent.
        buf: Vec<u8>,
        /// Whether the queue was found full yet (M6).
        full: Full,
        /// Each frame's priority.
        tags: Tagging,
    },
}

impl Tx {
    fn sysv(q: SysvQueue, full: Full, tags: Tagging) -> Tx {
        let msg = Outbox::default();
        Tx::Sysv { q, msg, full, tags }
    }

    fn posix(q: MqdT, full: Full, tags: Tagging) -> Result<Tx> {
        let buf = posix::buffer(&q)?;
        Ok(Tx::Posix { q, buf, full, tags })
    }

    /// System V, stream and pingpong: the session's next frame sealed in place, in the
    /// message whose text already holds its payload (copied in with the first such frame,
    /// [`Outbox::load`]), so that `msgsnd` sends it with no copy in user space: only the
    /// header and the sequence number change (`WriterSession::next_in_place`, as
    /// `FrameBuf` does). Returns the queue, the message, the state of the queue and the
    /// text length for the `msgsnd`; `None` when the next frame is another kind, or the
    /// first: the caller builds it with `WriterSession::next` and loads it.
    pub fn seal_in_place(
        &mut self,
        session: &mut WriterSession,
    ) -> Result<Option<(SysvQueue, &Message, &mut Full, usize)>> {
        let Tx::Sysv { q, msg, full, tags } = self else {
            return Ok(None);
        };
        let Some(len) = msg.laid.filter(|_| session.next_is_timed()) else {
            return Ok(None);
        };
        let kind = session.next_in_place(&mut msg.msg.mtext[..len])?;
        let Some(out) = Outgoing::from_bytes(kind, &msg.msg.mtext[..len]) else {
            bail!("a frame of {len} bytes is shorter than its header");
        };
        msg.msg.mtype = tags.of(&out) as libc::c_long;
        Ok(Some((*q, &msg.msg, full, len)))
    }

    /// Whether a send ever found the queue full (M6).
    pub fn full(&self) -> &Full {
        match self {
            Tx::Sysv { full, .. } | Tx::Posix { full, .. } => full,
        }
    }

    /// How each frame gets its type or priority.
    pub fn tags(&self) -> &Tagging {
        match self {
            Tx::Sysv { tags, .. } | Tx::Posix { tags, .. } => tags,
        }
    }
}

/// A System V sender's message, and whether its text holds a stream or pingpong frame
/// whose payload the next one can reuse ([`Tx::seal_in_place`]).
pub struct Outbox {
    /// The message: `mtype`, then the frame.
    msg: Box<Message>,
    /// The text length of the stream or pingpong frame loaded last (`None`: the text holds
    /// another kind, or nothing yet).
    laid: Option<usize>,
}

impl Default for Outbox {
    fn default() -> Outbox {
        let (msg, laid) = (Message::boxed(), None);
        Outbox { msg, laid }
    }
}

impl Outbox {
    /// Copies a frame in ([`Message::load`]) and returns the text length for `msgsnd`; a
    /// Data or Ping frame's payload stays there for the frames after it.
    pub fn load(&mut self, mtype: i64, frame: &Outgoing<'_>) -> Result<usize> {
        let len = self.msg.load(mtype, frame)?;
        self.laid = matches!(frame.kind, Kind::Data | Kind::Ping).then_some(len);
        Ok(len)
    }
}

impl std::ops::Deref for Outbox {
    type Target = Message;

    fn deref(&self) -> &Message {
        &self.msg
    }
}

/// Where one side's frames come from: the queue, what to ask for, and the buffer each
/// message lands in.
pub enum Rx {
    /// System V: `msgrcv` of `msgtyp` (M4) into a [`Message`].
    Sysv {
        /// The queue.
        q: SysvQueue,
        /// msgrcv's msgtyp: 0 any, > 0 exactly, < 0 the lowest type <= |msgtyp|.
        msgtyp: i64,
        /// The message received.
        msg: Box<Message>,
    },
    /// POSIX: `mq_timedreceive` into a buffer of the queue's `mq_msgsize` (a smaller one
    /// is refused with EMSGSIZE).
    Posix {
        /// The queue.
        q: MqdT,
        /// The message received.
        buf: Vec<u8>,
        /// The priority of the message received.
        prio: u32,
    },
}

impl Rx {
    /// What the queue really got, read back from the kernel (`depth.rs`), for the report.
    pub fn got(&self, limits: &Limits) -> Result<String> {
        match self {
            Rx::Sysv { q, .. } => depth::got_sysv(*q, limits),
            Rx::Posix { q, .. } => depth::got_posix(q, limits),
        }
    }

    /// The reader's loop, as it starts waiting: what it asks for and how it waits.
    pub fn narrate_wait(&self) {
        let (end, req, rep) = (types::END, types::DATA, types::REPLY);
        match self {
            Rx::Sysv { msgtyp: 0, .. } => narrate!("waiting in msgrcv(msgtyp 0): blocks until the writer's msgsnd; a watchdog checks every 100 ms that the writer lives"),
            Rx::Sysv { .. } => narrate!("pingpong on one queue (M4): waiting in msgrcv(msgtyp -{end}), which takes requests (type {req}) and End ({end}), never replies (type {rep}), which this reader sends back"),
            Rx::Posix { .. } => narrate!("waiting in mq_timedreceive (100 ms slices, checking the writer between them): the highest priority comes out first, FIFO within a priority (M3)"),
        }
    }

    /// The text of the message just received, `n` bytes.
    pub fn text(&self, n: usize) -> &[u8] {
        match self {
            Rx::Sysv { msg, .. } => &msg.mtext[..n],
            Rx::Posix { buf, .. } => &buf[..n],
        }
    }
}

/// The writer's ways: frames out on the main queue, typed by `tags` (`nowait`: a full
/// queue is an error, not a wait); in pingpong, replies in as type 101 (System V) or on
/// the `.back` queue (POSIX). Narrated.
pub fn writer_link(
    queues: Queues,
    pingpong: bool,
    nowait: bool,
    tags: Tagging,
) -> Result<(Tx, Option<Rx>)> {
    let (req, rep) = (types::DATA, types::REPLY);
    match (pingpong, &queues) {
        (true, Queues::Sysv(_)) => narrate!("pingpong on one queue (M4): requests are type {req}, replies type {rep}; msgrcv(type {rep}) takes only replies"),
        (true, Queues::Posix { .. }) => narrate!("pingpong needs a second POSIX queue for replies: mq_receive cannot select, it always takes the highest priority"),
        _ => {}
    }
    tags.narrate();
    let full = Full::new(nowait);
    Ok(match queues {
        Queues::Sysv(q) => {
            let msgtyp = types::REPLY;
            let rx = pingpong.then(|| Rx::Sysv {
                q,
                msgtyp,
                msg: Message::boxed(),
            });
            (Tx::sysv(q, full, tags), rx)
        }
        Queues::Posix { main, back, .. } => (
            Tx::posix(main, full, tags)?,
            back.map(posix_rx).transpose()?,
        ),
    })
}

/// The reader's way in: frames from the main queue by `msgtyp` (first [`types::HELLO`],
/// then what the writer's mode needs: `follow.rs`).
pub fn reader_rx(queues: Queues, msgtyp: i64) -> Result<Rx> {
    match queues {
        Queues::Sysv(q) => Ok(Rx::Sysv {
            q,
            msgtyp,
            msg: Message::boxed(),
        }),
        Queues::Posix { main, .. } => posix_rx(main),
    }
}

/// The reader's way back in pingpong: replies as type 101 on the same System V queue, or
/// on the POSIX `.back` queue, opened now (the Hello said pingpong).
pub fn reader_tx(rx: &Rx, a: &OpenArgs) -> Result<Tx> {
    Ok(match rx {
        Rx::Sysv { q, .. } => Tx::sysv(*q, Full::new(false), Tagging::replies(false)),
        Rx::Posix { .. } => Tx::posix(
            posix::open_back(a)?,
            Full::new(false),
            Tagging::replies(true),
        )?,
    })
}

fn posix_rx(q: MqdT) -> Result<Rx> {
    Ok(Rx::Posix {
        buf: posix::buffer(&q)?,
        q,
        prio: 0,
    })
}

/// Decodes one message's text as exactly one frame: the queue kept the boundary (M2), so
/// a message that holds less or more than one frame is not one of ours.
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

#[cfg(test)]
mod tests {
    use super::*;
    use common::frame::{encode_into, Fields, Kind};

    #[test]
    fn one_message_holds_exactly_one_frame() {
        let mut wire = vec![0; HEADER_LEN + 5];
        let f = Fields {
            kind: Kind::Data,
            flags: 0,
            nonce: 7,
            seq: 3,
            sent_ns: 0,
        };
        encode_into(f, b"hello", &mut wire).unwrap();
        let (h, p) = frame_of(&wire, 64).unwrap();
        assert_eq!((h.seq, p), (3, &b"hello"[..]));
        let e = frame_of(&wire[..HEADER_LEN + 2], 64)
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated frame"), "{e}");
        wire.push(0);
        let e = frame_of(&wire, 64).unwrap_err().to_string();
        assert!(e.contains("not one of ours"), "{e}");
        assert_eq!(types::of(Kind::Pong), Some(types::REPLY));
        assert_eq!(types::of(Kind::Data), None);
    }

    /// The lean copy path: the Hello and the first stream frame are copied into the
    /// message; every later one is sealed in place there, and is what the copying path
    /// would have sent (the same payload, a header of its own, a valid checksum).
    #[test]
    fn after_the_first_a_stream_frame_is_sealed_in_place_in_the_message() {
        use common::session::{FrameBuf, Next};
        let flags = [
            "--mode", "stream", "--count", "3", "--size", "100", "--warmup", "0",
        ];
        let setup = common::session::example_setup(&flags);
        let mut session = WriterSession::new(&setup);
        let (q, _) = SysvQueue::create_or_open(libc::IPC_PRIVATE).unwrap();
        let tags = Tagging {
            text: false,
            default: types::DATA,
            posix: false,
        };
        let mut tx = Tx::sysv(q, Full::new(true), tags);
        let mut frame = FrameBuf::new();
        let mut first = Vec::new();
        let mut sealed = Vec::new();
        loop {
            if let Some((_, msg, _, len)) = tx.seal_in_place(&mut session).unwrap() {
                assert_eq!(msg.mtype, types::DATA as libc::c_long);
                let (h, payload) = frame_of(&msg.mtext[..len], 100).unwrap();
                assert_eq!(payload[8..], first[8..], "the payload stays in place");
                sealed.push(h.seq);
                continue;
            }
            let out = match session.next(&mut frame).unwrap() {
                Next::Send(out) => out,
                Next::Done => break,
                other => panic!("{other:?}"),
            };
            let Tx::Sysv { msg, tags, .. } = &mut tx else {
                unreachable!()
            };
            let len = msg.load(tags.of(&out), &out).unwrap();
            if out.kind == Kind::Data {
                first = frame_of(&msg.mtext[..len], 100).unwrap().1.to_vec();
            }
        }
        assert_eq!(
            sealed,
            [1, 2],
            "frame 0 was copied in, 1 and 2 sealed in place"
        );
        SysvQueue::remove(q.id).unwrap();
    }
}
