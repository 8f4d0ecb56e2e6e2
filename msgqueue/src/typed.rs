//! M4 in text mode: every line has a type (System V) or a priority (POSIX), and a reader
//! may take only one type.
//!
//! The writer: a line that starts with `N: ` is sent as type (or priority) N, any other
//! line as `--type N` / `--priority N` (default 1 / 0) ([`Tagging`]). The reader (text mode
//! is all here; [`crate::reader`] dispatches to [`read`] in one line) prints each message
//! as `[type N] #seq (size, age): text`. With `--type T` it passes msgrcv's msgtyp:
//! - `T = 0`: the first message in the queue, whatever its type (FIFO, M3): a blocking
//!   `msgrcv`, woken by the writer's `msgsnd` (or by the watchdog's `IPC_RMID`);
//! - `T > 0`: only messages of type T; `T < 0`: the lowest type `<= |T|` first. The others
//!   stay queued for another reader, so this one must not remove the queue, nor wait for
//!   End (type 100, never selected): it polls `msgrcv(IPC_NOWAIT)` every 2 ms and stops when
//!   the writer's slot says "finished" and nothing more comes (or says it died).
//!
//! Before any of this, the reader took the writer's Hello (type 102, `follow.rs`): a typed
//! reader asks for it first, then for its `--type`, and puts it back when it leaves
//! messages for another reader.
//!
//! This is not `common::session`'s reader: here messages legitimately arrive out of
//! sequence order (priorities, negative msgtyp) or only in part (a typed reader), so a gap
//! in the sequence is not a loss. What is checked: the session nonce (a leftover of
//! another run is skipped), the checksum (in the decoder) and End's totals.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::cleanup::Owned;
use common::cli::{bad_flag, Mode};
use common::frame::{parse_end, Kind};
use common::hello::Hello;
use common::narrate;
use common::session::{Outgoing, TextLine};
use common::setup::{Role, Setup};
use common::timing::{now_ns, CpuTime, Latency, Report};
use nix::mqueue::mq_timedreceive;

use crate::follow::Greeting;
use crate::sysv::{self, Message, SysvQueue};
use crate::watch::{After, Gone, PeerWatch};
use crate::{frame_of, types, QueueArgs, Rx};

/// `N: text` at the start of a line: N as a number (the type or priority to send it with).
pub fn line_prefix(payload: &[u8]) -> Option<i64> {
    let colon = payload.iter().position(|&b| b == b':')?;
    let digits = &payload[..colon];
    if digits.is_empty() || digits.len() > 6 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// How the writer picks each message's type (System V) or priority (POSIX).
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
    /// The writer's `--type` / `--priority` (checked before anything exists: they are text
    /// mode's, and each belongs to one flavour; a contradiction exits 2, like clap's checks).
    pub fn from_flags(
        q: &QueueArgs,
        mode: Mode,
        mtype: Option<i64>,
        priority: Option<u32>,
    ) -> Result<Tagging> {
        if q.posix && (q.key.is_some() || mtype.is_some()) {
            return Err(bad_flag("--key and --type are System V; a POSIX queue has a name and priorities (use --priority)"));
        }
        if !q.posix && priority.is_some() {
            return Err(bad_flag(
                "--priority is POSIX (add --posix); System V messages have types (--type)",
            ));
        }
        let text = mode == Mode::Text;
        if !text && (mtype.is_some() || priority.is_some()) {
            return Err(bad_flag("--type and --priority apply to text mode; stream and pingpong use fixed types (M4)"));
        }
        let default = match priority {
            Some(p) => i64::from(p),
            None if q.posix => 0,
            None => mtype.unwrap_or(types::DATA),
        };
        Ok(Tagging {
            text,
            default,
            posix: q.posix,
        })
    }

    /// The reader's replies: Pongs have a fixed type (101) or priority (0).
    pub fn replies(posix: bool) -> Tagging {
        Tagging {
            text: false,
            default: 0,
            posix,
        }
    }

    /// Text mode: tells the learner how a line picks its type or priority, and how to type.
    pub fn narrate(&self) {
        if !self.text {
            return;
        }
        let (noun, why) = if self.posix {
            ("priority", "POSIX: highest priority is received first")
        } else {
            ("type", "M4: a reader can ask for one type")
        };
        narrate!(
            "each line is one message; start a line with \"N: \" to send it with {noun} N ({why})"
        );
        narrate!(
            "type a line and press Enter to send it as one message; Ctrl-D (end of input) ends"
        );
    }

    /// Says how the Hello just went out: as type 102, or at priority 32767 (`follow.rs`).
    pub fn narrate_hello(&self, hello: &Hello) {
        let how = match self.posix {
            true => format!("at priority {}, the highest", types::HELLO_PRIORITY),
            false => format!("as type {}", types::HELLO),
        };
        narrate!("sent the Hello {how}: {hello}; the reader takes it first and follows it");
    }

    /// The type or priority of a frame: Hello, End, Ping and Pong have fixed types; lines
    /// may choose.
    pub fn of(&self, frame: &Outgoing<'_>) -> i64 {
        if self.posix {
            return match frame.kind {
                Kind::Data if self.text => match line_prefix(frame.payload) {
                    Some(p) if p < 32768 => p,
                    _ => self.default,
                },
                Kind::Data => self.default,
                // The Hello at the highest priority comes out before anything sent after it.
                Kind::Hello => i64::from(types::HELLO_PRIORITY),
                // End at priority 0 comes out after everything sent before it.
                _ => 0,
            };
        }
        if let Some(t) = types::of(frame.kind) {
            return t;
        }
        if !self.text {
            return self.default;
        }
        match line_prefix(frame.payload) {
            Some(t) if (1..=types::MAX_USER).contains(&t) => t,
            Some(t) => {
                common::warn!(
                    "type {t} is outside 1..={} (msgsnd needs a type > 0; above that the pair reserves types): sent as type {}",
                    types::MAX_USER,
                    self.default
                );
                self.default
            }
            None => self.default,
        }
    }
}

/// The reader's `--type`: msgrcv's msgtyp (0 when not given), checked before anything
/// exists (a contradiction exits 2): POSIX cannot select, and the other modes use fixed
/// types.
pub fn msgtyp(q: &QueueArgs, mode: Mode, mtype: Option<i64>) -> Result<i64> {
    if q.posix && (q.key.is_some() || mtype.is_some()) {
        return Err(bad_flag("--key and --type are System V; a POSIX queue cannot select messages: mq_receive always takes the highest priority (M4 is msgrcv's msgtyp)"));
    }
    if mode != Mode::Text && mtype.is_some() {
        return Err(bad_flag(
            "--type applies to text mode; stream and pingpong use fixed types (M4)",
        ));
    }
    Ok(mtype.unwrap_or(0))
}

/// Text mode's reader, after the writer's Hello (`hello`): prints every message it takes;
/// returns the report and how many messages of other types it left in the queue (a typed
/// reader, M4), with the Hello put back for the reader that takes them.
pub fn read(
    setup: &Setup,
    mut rx: Rx,
    watch: &PeerWatch,
    shared: bool,
    hello: &Greeting,
) -> Result<(Report, u64)> {
    let typed = match &rx {
        Rx::Sysv { msgtyp, .. } => {
            narrate!("{}", describe_msgtyp(*msgtyp));
            *msgtyp != 0
        }
        Rx::Posix { .. } => {
            narrate!("waiting in mq_timedreceive (100 ms slices, checking the writer between them): the highest priority comes out first, FIFO within a priority (M3)");
            false
        }
    };
    let report = print_all(setup, &mut rx, watch, (typed, shared), hello.nonce)?;
    let left = match rx {
        Rx::Sysv { q, .. } if typed => what_is_left(q)?,
        _ => 0,
    };
    if let (Rx::Sysv { q, .. }, true) = (&rx, left > 0) {
        hello.put_back(*q)?;
    }
    Ok((report, left))
}

/// What msgrcv's msgtyp means, in words (M4).
fn describe_msgtyp(t: i64) -> String {
    match t {
        0 => "waiting in msgrcv(msgtyp 0): the first message in the queue, whatever its type (FIFO, M3); the writer's msgsnd wakes it".into(),
        t if t > 0 => format!("polling msgrcv(msgtyp {t}, IPC_NOWAIT) every 2 ms: only messages of type {t}; others stay queued for another reader (M4)"),
        t => format!("polling msgrcv(msgtyp {t}, IPC_NOWAIT) every 2 ms: the lowest type <= {} first, FIFO within a type; higher types stay queued (M4)", -t),
    }
}

/// One message: `Some((type or priority, length))`, or `None` when the writer is gone
/// (or, for a typed reader, finished and nothing more came).
// mtype is a c_long: i64 here, i32 on 32-bit targets, hence `from`.
#[allow(clippy::useless_conversion)]
fn recv(rx: &mut Rx, typed: bool, watch: &PeerWatch) -> Result<Option<(i64, usize)>> {
    match rx {
        Rx::Sysv { q, msgtyp, msg } if typed => poll(*q, msg, (*msgtyp, false), watch),
        Rx::Sysv { q, msgtyp, msg } => {
            // msgrcv(2) blocks until a message is there (msgtyp 0: any).
            let n = watch.recv_sysv(*q, *msgtyp, |t| sysv::msgrcv(*q, msg, t, 0))?;
            Ok(n.map(|n| (i64::from(msg.mtype), n)))
        }
        Rx::Posix { q, buf, prio } => {
            // mq_timedreceive(3): the oldest message of the highest priority.
            let n = watch.recv_posix(|deadline| mq_timedreceive(q, buf, prio, deadline))?;
            Ok(n.map(|n| (i64::from(*prio), n)))
        }
    }
}

/// A typed reader's wait: `msgrcv(IPC_NOWAIT)` every 2 ms. A blocking msgrcv for one type
/// is not woken by the End of another, so only polling notices that the writer finished.
/// `bounded`: a live writer that sends nothing for `--timeout` ends it too (the Hello).
// mtype is a c_long: i64 here, i32 on 32-bit targets, hence `from`.
#[allow(clippy::useless_conversion)]
pub(crate) fn poll(
    q: SysvQueue,
    msg: &mut Message,
    (msgtyp, bounded): (i64, bool),
    watch: &PeerWatch,
) -> Result<Option<(i64, usize)>> {
    // When this call first had to wait: read only then, to keep clocks off the fast path.
    let mut since = None;
    loop {
        match sysv::msgrcv(q, msg, msgtyp, libc::IPC_NOWAIT) {
            Ok(n) => return Ok(Some((i64::from(msg.mtype), n))),
            Err(e) if e.raw_os_error() == Some(libc::ENOMSG) => {
                // Nothing of our type; is the writer still there?
                if let Some(g) = watch.waited(&mut since, bounded) {
                    narrate!(
                        "{}: no more messages for msgtyp {msgtyp}",
                        g.describe(watch.peer())
                    );
                    if !matches!(g, Gone::Finished(_)) {
                        watch.record(g);
                    }
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => {
                let what = || format!("msgrcv msqid {} msgtyp {msgtyp}", q.id);
                if watch.sysv_failed("msgrcv", q, e, what)? == After::PeerGone {
                    return Ok(None);
                }
            }
        }
    }
}

/// What text mode counts.
struct Tally {
    /// The report being filled in.
    report: Report,
    /// One-way latencies.
    lat: Latency,
    /// The writer's session, from its Hello.
    session: u64,
    /// End's verdict, once it came.
    end_ok: Option<bool>,
    /// When the reader started (CLOCK_MONOTONIC ns).
    t0: u64,
    /// CPU time at `t0`.
    cpu0: CpuTime,
}

/// Prints every message of session `nonce` until End (or, for a typed reader, the
/// writer's "finished"). A typed reader does not take every type, so End need not arrive;
/// `shared`: an earlier reader took some, so End's totals may exceed what arrives here.
fn print_all(
    setup: &Setup,
    rx: &mut Rx,
    watch: &PeerWatch,
    (typed, shared): (bool, bool),
    nonce: u64,
) -> Result<Report> {
    let mut out = std::io::stdout().lock();
    let mut t = Tally {
        report: setup.report(Role::Reader),
        lat: Latency::new(),
        session: nonce,
        end_ok: None,
        t0: now_ns(),
        cpu0: CpuTime::now(),
    };
    let tag_name = match rx {
        Rx::Sysv { .. } => "type",
        Rx::Posix { .. } => "priority",
    };
    while let Some((tag, n)) = recv(rx, typed, watch)? {
        let now = now_ns();
        let (h, payload) = frame_of(rx.text(n), setup.max_payload)?;
        // Every frame carries the writer's session; a different one is a leftover.
        if t.session != h.nonce {
            t.report.stale_skipped += 1;
            continue;
        }
        match h.kind {
            Kind::End => {
                t.end_ok = Some(t.end(payload, shared)?);
                break;
            }
            Kind::Data => {}
            // Its Hello came first (follow.rs); a copy put back by a typed reader (M4).
            Kind::Hello => continue,
            k => bail!("a text-mode reader got a {k:?} frame: is a writer in another mode using this queue?"),
        }
        let age = now.saturating_sub(h.sent_ns);
        t.record(age, payload.len() as u64);
        let line = TextLine {
            seq: h.seq,
            latency_ns: age,
            text: payload,
        };
        writeln!(out, "[{tag_name} {tag}] {line}").context("writing to stdout")?;
    }
    t.finish(!typed, watch)
}

impl Tally {
    fn record(&mut self, age: u64, len: u64) {
        let r = &mut self.report;
        self.lat.record(age);
        r.count += 1;
        r.bytes += len;
        r.size_bytes = r.size_bytes.max(len);
    }

    /// End arrived: do its totals match what arrived here?
    fn end(&self, payload: &[u8], shared: bool) -> Result<bool> {
        let (count, bytes) = (self.report.count, self.report.bytes);
        let claimed = parse_end(payload).context("End frame")?;
        if claimed != (count, bytes) {
            narrate!(
                "End says {} messages / {} bytes were sent; {count} / {bytes} arrived here{}",
                claimed.0,
                claimed.1,
                if shared {
                    ": the others went to the earlier reader (M4)"
                } else {
                    ""
                }
            );
        }
        Ok(claimed == (count, bytes) || (shared && claimed.0 >= count))
    }

    fn finish(mut self, sees_all: bool, watch: &PeerWatch) -> Result<Report> {
        let count = self.report.count;
        let verified = match self.end_ok {
            Some(ok) => ok,
            None if sees_all => {
                let n = crate::messages(count);
                bail!("the writer went away after {n} without sending End")
            }
            // A typed reader never sees End (type 100): the writer's "finished" record ends
            // it, unless the writer died or never came.
            None => match watch.verdict() {
                Some(g) => bail!(
                    "{} after {}",
                    g.describe(watch.peer()),
                    crate::messages(count)
                ),
                None => true,
            },
        };
        let r = &mut self.report;
        r.verified = verified;
        r.latency_kind = "one_way".into();
        r.latency_ns = self.lat.summary();
        r.elapsed_ns = now_ns() - self.t0;
        r.set_rates(CpuTime::now().since(self.cpu0));
        Ok(self.report)
    }
}

/// Whatever a typed reader leaves: End alone is taken (it was for a `--type 0` reader);
/// returns how many messages stay.
fn what_is_left(q: SysvQueue) -> Result<u64> {
    let st = q.stat().context("msgctl IPC_STAT")?;
    if st.qnum == 1 {
        let mut m = Message::boxed();
        if sysv::msgrcv(q, &mut m, types::END, libc::IPC_NOWAIT).is_ok() {
            return Ok(0);
        }
    }
    Ok(st.qnum)
}

/// A typed reader that left messages of other types: it records itself as finished and
/// leaves the queue for another reader (which removes it). Returns the report's note.
pub fn leave_for_another_reader(left: u64, watch: &PeerWatch, owned: Owned) -> Result<String> {
    let (n, remain) = (
        crate::messages(left),
        if left == 1 { "remains" } else { "remain" },
    );
    narrate!(
        "{n} of other types {remain} in the queue (M4): leaving it for another reader, with the writer's Hello put back so that reader follows the same session (msgqueue-reader --type 0 takes them all and removes the queue)"
    );
    watch.mark_finished()?;
    owned.release();
    Ok(format!(
        "{n} of other types left in the queue for another reader"
    ))
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

    #[test]
    fn tagging_gives_lines_their_type_and_fixed_kinds_theirs() {
        let header = [0u8; common::frame::HEADER_LEN];
        let frame = |kind, payload| Outgoing {
            kind,
            header: &header,
            payload,
            whole: None,
        };
        let text = Tagging {
            text: true,
            default: 4,
            posix: false,
        };
        assert_eq!(text.of(&frame(Kind::Data, b"7: seven")), 7);
        assert_eq!(text.of(&frame(Kind::Data, b"no prefix")), 4);
        assert_eq!(text.of(&frame(Kind::Data, b"100: reserved")), 4);
        assert_eq!(text.of(&frame(Kind::End, b"")), types::END);
        // Stream payloads are not read for a prefix: always the default type.
        let stream = Tagging {
            text: false,
            ..text
        };
        assert_eq!(stream.of(&frame(Kind::Data, b"7: seven")), 4);
        assert_eq!(stream.of(&frame(Kind::Ping, b"")), types::DATA);
        assert_eq!(
            Tagging::replies(false).of(&frame(Kind::Pong, b"")),
            types::REPLY
        );
        // POSIX: priorities up to 32767; End and Pongs at 0.
        let posix = Tagging {
            posix: true,
            ..text
        };
        assert_eq!(posix.of(&frame(Kind::Data, b"9: high")), 9);
        assert_eq!(posix.of(&frame(Kind::Data, b"40000: x")), 4);
        assert_eq!(posix.of(&frame(Kind::End, b"")), 0);
        assert_eq!(Tagging::replies(true).of(&frame(Kind::Pong, b"")), 0);
    }
}
