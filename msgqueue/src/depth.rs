//! How much a queue holds before a send waits (M6), and the flags that change it:
//! `--queue-bytes` (System V `msg_qbytes`) and `--queue-depth` (POSIX `mq_maxmsg`), with a
//! POSIX queue's `mq_msgsize` sized for the run's frames. **A first reading may skip this
//! file**: the role files call [`WriterDepth::shape`] or [`ReaderDepth::shape`] once,
//! before anything exists, and the rendezvous makes the queue that [`Shape`].
//!
//! - **System V, `--queue-bytes BYTES` (writer).** A new queue's `msg_qbytes` is
//!   `kernel.msgmnb` (16384 by default: two 8 KiB messages). The queue's owner may change it
//!   at any time with `msgctl(IPC_SET)`, so the writer sets it right after `msgget`,
//!   whichever side made the queue, and reads it back with `IPC_STAT`. Lowering it is always
//!   allowed; above `kernel.msgmnb` the kernel wants `CAP_SYS_RESOURCE` (else EPERM), which
//!   is checked before any queue exists. `msg_qbytes` bounds the number of messages too: a
//!   queue of N bytes holds at most N messages, however small.
//! - **POSIX, `--queue-depth N` (writer and reader).** `mq_maxmsg` and `mq_msgsize` are fixed
//!   when `mq_open(O_CREAT)` makes the queue; nothing changes them later. So the side that
//!   starts first makes it, with its `--queue-depth` (default: 10, the kernel's own default,
//!   at most `fs.mqueue.msg_max`). A stream or pingpong writer sizes `mq_msgsize` for its
//!   frames ([`frame_for`]: the 40-byte header and `--size`, at least a Hello); a text
//!   writer, and a reader, for the largest message `fs.mqueue.msgsize_max` allows (a
//!   reader's `--size` is a check on the writer's Hello: a queue too small for the writer
//!   would fail before the check could name both sizes). Above `fs.mqueue.msg_max` a
//!   depth needs `CAP_SYS_RESOURCE` (else EINVAL), and each queue is charged about
//!   `mq_maxmsg x (mq_msgsize + 96)` bytes against its owner's `RLIMIT_MSGQUEUE`
//!   (`ulimit -q`, 819200 by default; EMFILE beyond it), all of that user's queues together.
//!   A writer that finds a queue already there ([`misfit`]): a live reader's must carry this
//!   writer's frames and have its `--queue-depth`, else the writer refuses (its line of the
//!   pair file says `refused`, so the waiting reader stops too). A leftover of an earlier
//!   run, which nobody uses, is emptied (its messages counted as stale) and made anew in
//!   the shape of the side that finds it (`posix::reshape`).
//!
//! Raising the limits, as root: `sysctl -w kernel.msgmnb=1048576` (the default
//! `msg_qbytes` of every new System V queue, and the most an unprivileged `IPC_SET` may
//! ask), `sysctl -w fs.mqueue.msg_max=1024`, and `ulimit -q` (or `prlimit --msgqueue`) for
//! the shell that starts the pair; or give the programs `CAP_SYS_RESOURCE`.

use anyhow::{Context, Result};
use common::cli::{bad_flag, parse_bytes, CommonArgs, Mode};
use common::frame::{END_PAYLOAD_LEN, HEADER_LEN};
use common::setup::Role;
use nix::mqueue::{MqAttr, MqdT};

use crate::rendezvous::OpenArgs;
use crate::sysv::SysvQueue;
use crate::{Limits, QueueArgs};

/// `CAP_SYS_RESOURCE`'s bit in `/proc/self/status`'s `CapEff` (capabilities(7)).
const CAP_SYS_RESOURCE: u32 = 24;

/// The kernel's hard ceiling on `mq_maxmsg`, even with `CAP_SYS_RESOURCE` (`HARD_MSGMAX`).
pub const HARD_MSGMAX: u32 = 65536;

/// What `RLIMIT_MSGQUEUE` charges per message besides its `mq_msgsize` bytes: the kernel's
/// `struct msg_msg` and its priority tree node (48 bytes each on 64-bit Linux).
pub const MQ_OVERHEAD: usize = 96;

/// The writer's flags for the queue's depth.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct WriterDepth {
    /// System V: bytes the queue holds before msgsnd waits (msg_qbytes, set with msgctl IPC_SET); above kernel.msgmnb needs CAP_SYS_RESOURCE [default: kernel.msgmnb].
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub queue_bytes: Option<usize>,

    /// POSIX: messages the queue holds (mq_maxmsg, fixed when mq_open makes the queue); above fs.mqueue.msg_max needs CAP_SYS_RESOURCE [default: 10, at most fs.mqueue.msg_max].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=HARD_MSGMAX as i64))]
    pub queue_depth: Option<u32>,
}

/// The reader's flag for the queue's depth: it acts when the reader makes the queue.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ReaderDepth {
    /// POSIX: mq_maxmsg if this reader makes the queue (it starts first); a writer given --queue-depth insists on it [default: 10, at most fs.mqueue.msg_max].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=HARD_MSGMAX as i64))]
    pub queue_depth: Option<u32>,
}

/// What a side asks of the queue(s) it makes or joins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    /// System V: `msg_qbytes` to set with `IPC_SET` once the queue is open (`--queue-bytes`).
    pub qbytes: Option<u64>,
    /// POSIX: `mq_maxmsg` of a queue this side makes.
    pub maxmsg: usize,
    /// POSIX: `mq_msgsize` of a queue this side makes (frame included).
    pub msgsize: usize,
    /// POSIX: `--queue-depth`, if given: a writer insists on it in a queue it did not make.
    pub depth: Option<usize>,
    /// The largest frame this side sends (0: none): a queue it did not make must carry it.
    pub frame: usize,
}

impl Shape {
    /// No flags: the kernel's default depth (10, at most `fs.mqueue.msg_max`) and messages
    /// of `msgsize` bytes.
    pub fn plain(limits: &Limits, msgsize: usize) -> Shape {
        Shape {
            qbytes: None,
            maxmsg: limits.mq_msg_max.clamp(1, 10),
            msgsize,
            depth: None,
            frame: 0,
        }
    }
}

/// The frame of a stream or pingpong message of `size` payload bytes, and room for the
/// session's other frames (the Hello, End): the `mq_msgsize` a run of `--size` needs.
pub fn frame_for(size: usize) -> usize {
    HEADER_LEN + size.max(common::hello::MAX_LEN).max(END_PAYLOAD_LEN)
}

impl WriterDepth {
    /// Checks the flags before anything exists (a bad one exits 2, naming the limit) and
    /// says what shape the queue(s) should have.
    pub fn shape(&self, q: &QueueArgs, c: &CommonArgs, limits: &Limits) -> Result<Shape> {
        let posix = q.posix;
        refuse_misplaced(q, self.queue_bytes.is_some(), self.queue_depth.is_some())?;
        // Text lines may be as long as a message may be; other modes send --size frames.
        let largest = limits.max_frame(posix).0;
        let frame = match c.mode {
            Mode::Text => largest,
            _ => frame_for(c.size).min(largest),
        };
        let mut s = Shape {
            frame,
            ..Shape::plain(limits, frame)
        };
        let privileged = privileged();
        if let Some(b) = self.queue_bytes {
            check_qbytes(b, frame, c, limits, privileged)?;
            s.qbytes = Some(b as u64);
        }
        if let Some(d) = self.queue_depth {
            let queues = if c.mode == Mode::Pingpong { 2 } else { 1 };
            check_depth(d as usize, s.msgsize, queues, limits, privileged)?;
            (s.maxmsg, s.depth) = (d as usize, Some(d as usize));
        }
        Ok(s)
    }
}

impl ReaderDepth {
    /// As [`WriterDepth::shape`], for a reader: a queue it makes holds messages of the
    /// largest size (its `--size` is only a check on the writer's Hello).
    pub fn shape(&self, q: &QueueArgs, c: &CommonArgs, limits: &Limits) -> Result<Shape> {
        refuse_misplaced(q, false, self.queue_depth.is_some())?;
        let msgsize = limits.max_frame(q.posix).0;
        let mut s = Shape::plain(limits, msgsize);
        if let Some(d) = self.queue_depth {
            let queues = if c.expect.mode == Some(Mode::Pingpong) {
                2
            } else {
                1
            };
            check_depth(d as usize, msgsize, queues, limits, privileged())?;
            (s.maxmsg, s.depth) = (d as usize, Some(d as usize));
        }
        Ok(s)
    }
}

/// Each flag belongs to one flavour, and to a pair (the shared queue keeps the default):
/// `bytes`, `depth` say which were given.
pub fn refuse_misplaced(q: &QueueArgs, bytes: bool, depth: bool) -> Result<()> {
    if (bytes || depth) && q.shared {
        return Err(bad_flag("--queue-bytes and --queue-depth are for one writer and one reader; a --shared queue keeps kernel.msgmnb (several writers would set it against each other)"));
    }
    if bytes && q.posix {
        return Err(bad_flag("--queue-bytes is System V's msg_qbytes; a POSIX queue counts messages: use --queue-depth"));
    }
    if depth && !q.posix {
        return Err(bad_flag("--queue-depth is POSIX's mq_maxmsg (with --posix); a System V queue counts bytes: the writer's --queue-bytes"));
    }
    Ok(())
}

/// `--queue-bytes`: room for this run's largest frame, and above `kernel.msgmnb` only with
/// `CAP_SYS_RESOURCE`.
fn check_qbytes(
    b: usize,
    frame: usize,
    c: &CommonArgs,
    l: &Limits,
    privileged: bool,
) -> Result<()> {
    if b < frame {
        let what = match c.mode {
            Mode::Text => format!("a text line may fill a whole message ({frame} bytes)"),
            _ => format!(
                "this run's largest frame is {frame} bytes (the 40-byte header and --size {})",
                c.size
            ),
        };
        return Err(bad_flag(format!(
            "--queue-bytes {b} cannot hold one message: {what}, and a msgsnd that cannot fit waits forever (M6)"
        )));
    }
    if b > l.msgmnb && !privileged {
        return Err(bad_flag(format!(
            "--queue-bytes {b} is above kernel.msgmnb = {}: raising msg_qbytes beyond it needs CAP_SYS_RESOURCE, which this process lacks (msgctl IPC_SET would fail with EPERM). As root: sysctl -w kernel.msgmnb={b}, or give the writer CAP_SYS_RESOURCE (M6)",
            l.msgmnb
        )));
    }
    Ok(())
}

/// `--queue-depth`: above `fs.mqueue.msg_max` only with `CAP_SYS_RESOURCE`, and `queues`
/// such queues within `RLIMIT_MSGQUEUE`.
fn check_depth(
    d: usize,
    msgsize: usize,
    queues: usize,
    l: &Limits,
    privileged: bool,
) -> Result<()> {
    if d > l.mq_msg_max && !privileged {
        return Err(bad_flag(format!(
            "--queue-depth {d} is above fs.mqueue.msg_max = {}: a deeper POSIX queue needs CAP_SYS_RESOURCE, which this process lacks (mq_open would fail with EINVAL). As root: sysctl -w fs.mqueue.msg_max={d} (M6)",
            l.mq_msg_max
        )));
    }
    let charge = queues * d * (msgsize + MQ_OVERHEAD);
    let (soft, hard) = rlimit_msgqueue();
    if charge as u64 > soft {
        let raise = if charge as u64 <= hard {
            format!("ulimit -q {charge} in the shell that starts it")
        } else {
            format!("as root, ulimit -q {charge} (the hard limit is {hard})")
        };
        let qs = if queues == 1 {
            "queue"
        } else {
            "queues (and .back)"
        };
        return Err(bad_flag(format!(
            "--queue-depth {d} with mq_msgsize {msgsize}: {queues} {qs} would be charged about {charge} bytes, above RLIMIT_MSGQUEUE = {soft} (ulimit -q; mq_open would fail with EMFILE). Lower --queue-depth (or a writer's --size), or raise the limit: {raise} (M6)"
        )));
    }
    Ok(())
}

/// Whether this process has `CAP_SYS_RESOURCE` (`CapEff` in `/proc/self/status`). The
/// kernel asks for it in the initial user namespace, so inside a container that only has
/// it in its own namespace the kernel may still refuse; its error then says so.
pub fn privileged() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// `getrlimit(RLIMIT_MSGQUEUE)`: the bytes all of this user's POSIX queues may take (soft,
/// hard).
pub fn rlimit_msgqueue() -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `r`, a valid, exclusively borrowed struct.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MSGQUEUE, &mut r) };
    if rc != 0 {
        return (u64::MAX, u64::MAX);
    }
    (r.rlim_cur, r.rlim_max)
}

/// System V: `msgctl(IPC_SET)` of `msg_qbytes` (`--queue-bytes`), then `IPC_STAT` to read
/// back what the queue got.
pub fn set_qbytes(q: SysvQueue, bytes: u64) -> Result<u64> {
    if let Err(e) = q.set_qbytes(bytes) {
        let mnb = Limits::read().map_or(0, |l| l.msgmnb);
        return Err(match e.raw_os_error() {
            Some(libc::EPERM) => anyhow::anyhow!(
                "msgctl IPC_SET msg_qbytes {bytes} (--queue-bytes): EPERM: above kernel.msgmnb = {mnb} the kernel wants CAP_SYS_RESOURCE in the initial user namespace (M6; as root: sysctl -w kernel.msgmnb={bytes})"
            ),
            _ => anyhow::Error::new(e).context(format!("msgctl IPC_SET msg_qbytes {bytes} (--queue-bytes)")),
        });
    }
    Ok(q.stat().context("msgctl IPC_STAT")?.qbytes)
}

/// POSIX: why a queue this writer did not make cannot serve it (`None`: it can): its
/// messages are too small for this run's frames, or its depth is not `--queue-depth`.
pub fn misfit(s: &Shape, at: &MqAttr) -> Option<String> {
    let (maxmsg, msgsize) = (at.maxmsg() as usize, at.msgsize() as usize);
    if msgsize < s.frame {
        return Some(format!(
            "its mq_msgsize is {msgsize} bytes, smaller than this writer's largest frame ({} bytes)",
            s.frame
        ));
    }
    match s.depth {
        Some(d) if d != maxmsg => Some(format!("its mq_maxmsg is {maxmsg}, not --queue-depth {d}")),
        _ => None,
    }
}

/// A queue a live reader made does not fit this writer ([`misfit`]): the writer refuses,
/// and says so in its line of the pair file (`rendezvous.rs`), so the reader stops too.
#[derive(Debug)]
pub struct Misfit(pub String);

impl std::fmt::Display for Misfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Misfit {}

/// What the queue really got, read back from the kernel, for the report's notes.
pub fn got_sysv(q: SysvQueue, l: &Limits) -> Result<String> {
    let st = q.stat().context("msgctl IPC_STAT")?;
    Ok(format!(
        "the queue holds msg_qbytes = {} bytes (read back with msgctl IPC_STAT; kernel.msgmnb = {}, the default)",
        st.qbytes, l.msgmnb
    ))
}

/// As [`got_sysv`], for a POSIX queue: `mq_getattr`.
pub fn got_posix(q: &MqdT, l: &Limits) -> Result<String> {
    let at = nix::mqueue::mq_getattr(q).context("mq_getattr")?;
    Ok(format!(
        "the queue holds mq_maxmsg = {} messages of mq_msgsize = {} bytes (read back with mq_getattr; fs.mqueue.msg_max = {}, msgsize_max = {})",
        at.maxmsg(),
        at.msgsize(),
        l.mq_msg_max,
        l.mq_msgsize_max
    ))
}

/// A reader's `--queue-depth` that could not act: the writer made the queue first.
pub fn unapplied(a: &OpenArgs, created: bool, got: usize) -> Option<String> {
    match a.shape.depth {
        Some(d) if a.role == Role::Reader && !created && d != got => Some(format!(
            "--queue-depth {d} not applied: the writer made the queue first, with mq_maxmsg {got} (fixed at mq_open)"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            msgmax: 8192,
            msgmnb: 16384,
            mq_msg_max: 10,
            mq_msgsize_max: 8192,
            ..Limits::default()
        }
    }

    fn args(mode: Mode, size: usize) -> CommonArgs {
        let mut c = common::session::example_setup(&[]).args;
        (c.mode, c.size) = (mode, size);
        c
    }

    #[test]
    fn queue_bytes_above_msgmnb_names_the_flag_the_sysctl_and_its_value() {
        let (l, c) = (limits(), args(Mode::Stream, 4096));
        let e = check_qbytes(65536, frame_for(4096), &c, &l, false).unwrap_err();
        assert!(
            e.downcast_ref::<common::cli::BadFlag>().is_some(),
            "exits 2"
        );
        let e = e.to_string();
        for want in [
            "--queue-bytes 65536",
            "kernel.msgmnb = 16384",
            "CAP_SYS_RESOURCE",
        ] {
            assert!(e.contains(want), "{want}: {e}");
        }
        assert!(check_qbytes(65536, frame_for(4096), &c, &l, true).is_ok());
        assert!(check_qbytes(16384, frame_for(4096), &c, &l, false).is_ok());
        // Lowering is allowed, but not below one frame.
        let e = check_qbytes(4000, frame_for(4096), &c, &l, false).unwrap_err();
        assert!(e.to_string().contains("cannot hold one message"), "{e}");
    }

    #[test]
    fn queue_depth_above_msg_max_or_rlimit_names_the_limit() {
        let l = limits();
        let e = check_depth(11, 104 + 51, 1, &l, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--queue-depth 11") && e.contains("fs.mqueue.msg_max = 10"),
            "{e}"
        );
        assert!(check_depth(10, 8192, 2, &l, false).is_ok());
        // Privileged: msg_max does not bind, RLIMIT_MSGQUEUE still does.
        let (soft, _) = rlimit_msgqueue();
        let d = (soft as usize / (8192 + MQ_OVERHEAD)) + 1;
        if d <= HARD_MSGMAX as usize {
            let e = check_depth(d, 8192, 1, &l, true).unwrap_err().to_string();
            assert!(
                e.contains("RLIMIT_MSGQUEUE") && e.contains("ulimit -q"),
                "{e}"
            );
        }
    }

    #[test]
    fn each_flag_belongs_to_its_flavour_and_to_a_pair() {
        let q = |posix, shared| QueueArgs {
            posix,
            key: None,
            shared,
        };
        let msg = |r: Result<()>| r.unwrap_err().to_string();
        assert!(msg(refuse_misplaced(&q(true, false), true, false)).contains("--queue-depth"));
        assert!(msg(refuse_misplaced(&q(false, false), false, true)).contains("--queue-bytes"));
        assert!(msg(refuse_misplaced(&q(false, true), true, false)).contains("--shared"));
        assert!(refuse_misplaced(&q(false, false), true, false).is_ok());
        assert!(refuse_misplaced(&q(true, false), false, true).is_ok());
    }

    #[test]
    fn a_posix_queue_is_sized_for_the_run_and_a_misfit_is_named() {
        let l = limits();
        let q = QueueArgs {
            posix: true,
            key: None,
            shared: false,
        };
        let w = WriterDepth {
            queue_bytes: None,
            queue_depth: Some(4),
        };
        let s = w.shape(&q, &args(Mode::Stream, 1000), &l).unwrap();
        assert_eq!(
            (s.maxmsg, s.msgsize, s.frame, s.depth),
            (4, 1040, 1040, Some(4))
        );
        // A tiny payload still leaves room for the Hello; text mode takes whole messages.
        assert_eq!(frame_for(0), HEADER_LEN + common::hello::MAX_LEN);
        let t = WriterDepth::default()
            .shape(&q, &args(Mode::Text, 64), &l)
            .unwrap();
        assert_eq!((t.maxmsg, t.msgsize), (10, 8192));
        let at = |maxmsg, msgsize| MqAttr::new(0, maxmsg, msgsize, 0);
        assert_eq!(misfit(&s, &at(4, 1040)), None);
        assert!(misfit(&s, &at(10, 8192))
            .unwrap()
            .contains("not --queue-depth 4"));
        assert!(misfit(&s, &at(4, 512))
            .unwrap()
            .contains("mq_msgsize is 512"));
    }
}
