//! The reader's half of the protocol: verify what arrives, say what to do with it.

use std::fmt;

use anyhow::{anyhow, bail, Context, Result};

use crate::cli::Mode;
use crate::frame::{checksum_continue, encode_header_into, encode_header_summed, parse_end};
use crate::frame::{Fields, Header, Kind};
use crate::frame::{FLAG_HEADER_SUM, HEADER_LEN};
use crate::hello::{Expect, Hello};
use crate::narrate;
use crate::resum::{pong_delta, SlotSums};
use crate::setup::{Role, Setup};
use crate::timing::{fmt_ns, now_ns, CpuTime, Latency, Report};

use super::Outgoing;

/// What the reader's loop does with the frame it just handed to the session.
#[derive(Debug)]
pub enum Action<'a> {
    /// The writer's Hello (checked against this reader's flags, and narrated): what it
    /// runs. A reader sets up what the mode needs here (the way back for pingpong).
    Hello(&'a Hello),
    /// Nothing: take the next frame (a verified stream message, or a stale frame skipped).
    Continue,
    /// Text mode: print this line on stdout.
    Print(TextLine<'a>),
    /// Pingpong: send this Pong back to the writer.
    Echo(Outgoing<'a>),
    /// End arrived: [`ReaderSession::finish`] gives the report.
    Done,
}

/// What [`ReaderSession::on_frame_in_place`] says: an [`Action`] as usual (never
/// [`Action::Echo`]), or a Ping to answer in place.
#[derive(Debug)]
pub enum InPlace<'a> {
    /// What to do, as for a copied frame.
    Action(Action<'a>),
    /// A Ping: reserve a slot of [`PongInPlace::payload_len`] bytes on the way back,
    /// [`PongInPlace::seal`] the Pong into it, publish it.
    Answer(PongInPlace),
}

/// The answer to a Ping received in place: a Pong of the same length, session and
/// sequence number, built where it will lie in the way-back ring.
#[derive(Clone, Copy, Debug)]
pub struct PongInPlace {
    /// The Ping's header.
    ping: Header,
}

impl PongInPlace {
    /// The Pong's payload length: the Ping's.
    pub fn payload_len(&self) -> usize {
        self.ping.payload_len()
    }

    /// Writes the Pong into `frame` (header, then [`PongInPlace::payload_len`] bytes: a
    /// slot lent by the ring): the sequence number in the payload's first 8 bytes, the
    /// header with the Ping's session, seq, `sent_ns` and flags, and a checksum over the
    /// payload as it lies (or the header only, as the Ping's flags say). The payload's other
    /// bytes are not copied from the Ping: that copy is what zero-copy avoids, and the
    /// writer checks a Pong's length, sequence number and checksum.
    pub fn seal(&self, frame: &mut [u8]) -> Result<()> {
        self.seal_with(frame, None).map(|_| ())
    }

    /// [`PongInPlace::seal`], with the checksum derived from the slot's memo where `sums`
    /// is given ([`ReaderSession::seal_pong`]); returns the slot's new memo.
    fn seal_with(
        &self,
        frame: &mut [u8],
        sums: Option<(&mut SlotSums, Option<u32>)>,
    ) -> Result<Option<u32>> {
        let len = self.payload_len();
        if frame.len() != HEADER_LEN + len {
            bail!(
                "a {}-byte slot for a {}-byte Pong",
                frame.len(),
                HEADER_LEN + len
            );
        }
        let fields = Fields {
            kind: Kind::Pong,
            flags: self.ping.flags,
            nonce: self.ping.nonce,
            seq: self.ping.seq,
            sent_ns: self.ping.sent_ns,
        };
        // The checksum first, over the sequence number (held here) and the payload's other
        // bytes as they lie; then header and sequence number are written one after the
        // other, from the values, so the slot's first cache line, which the writer polls,
        // is not taken back between them (as WriterSession::seal_timed does).
        let n = len.min(8);
        let seq = self.ping.seq.to_le_bytes();
        let (header, payload) = frame.split_at_mut(HEADER_LEN);
        let header: &mut [u8; HEADER_LEN] = header.try_into()?;
        let (front, rest) = (&seq[..n], &payload[n..]);
        let mut memo = None;
        match sums {
            _ if self.ping.flags & FLAG_HEADER_SUM != 0 => {
                encode_header_into(fields, len, |c| c, header)?
            }
            Some((sums, had)) => encode_header_into(
                fields,
                len,
                |c| {
                    let (sum, now) = sums.checksum(c, front, rest, had);
                    memo = now;
                    sum
                },
                header,
            )?,
            None => encode_header_into(fields, len, |c| checksum_continue(c, front, rest), header)?,
        }
        payload[..n].copy_from_slice(front);
        Ok(memo)
    }
}

/// What [`ReaderSession::accept`] decided (borrowing nothing, so the caller can then
/// borrow the session for the [`Action`]).
enum Accepted {
    /// A Ping of this session, counted: answer it.
    Ping,
    /// The writer's first Hello.
    Hello,
    /// Nothing to do.
    Continue,
    /// Text mode: print the payload, which arrived this long after it was sent.
    Print { seq: u64, latency_ns: u64 },
    /// End arrived.
    Done,
}

/// A text-mode message as the reader prints it: `#seq (N B, latency after it was sent): text`.
#[derive(Debug)]
pub struct TextLine<'a> {
    /// Its sequence number.
    pub seq: u64,
    /// One-way latency (our clock minus the writer's `sent_ns`).
    pub latency_ns: u64,
    /// The message.
    pub text: &'a [u8],
}

/// Bytes of a text message shown before the rest is cut ("… N more bytes").
pub const SHOWN: usize = 200;

impl fmt::Display for TextLine<'_> {
    /// The message as a terminal can show it: printable text as it is; control bytes
    /// (an escape sequence would drive the terminal) and bytes that are not UTF-8 escaped
    /// (`\x1b`, `\xff`); a long payload cut after `SHOWN` (200) bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{} ({} B, {} after it was sent): ",
            self.seq,
            self.text.len(),
            fmt_ns(self.latency_ns)
        )?;
        let shown = &self.text[..self.text.len().min(SHOWN)];
        for chunk in shown.utf8_chunks() {
            for c in chunk.valid().chars() {
                if c.is_control() {
                    write!(f, "{}", c.escape_default())?;
                } else {
                    write!(f, "{c}")?;
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        if self.text.len() > SHOWN {
            write!(f, " … {} more bytes", thousands(self.text.len() - SHOWN))?;
        }
        Ok(())
    }
}

/// 65472 as "65,472".
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

/// The reader side of the protocol for one run.
///
/// It takes whatever arrives: every Data and Ping is verified (the decoder has checked the
/// checksum; here: sequence, session and content), every Ping is answered with a Pong,
/// and End must carry the totals of what arrived. A stream that stops without End is a
/// writer that died: [`ReaderSession::writer_left`] says so, and it is not a success.
pub struct ReaderSession {
    /// The report being filled in.
    report: Report,
    /// Text mode prints; the others verify content too.
    text: bool,
    /// What this reader's flags ask of the writer.
    expect: Expect,
    /// The writer's Hello, once it came.
    hello: Option<Hello>,
    /// The writer's session, adopted from its Hello.
    session: Option<u64>,
    /// The sequence number the next frame must have.
    expected: u64,
    /// Data and Ping frames of this session taken (warm-up included).
    received: u64,
    /// Their payload bytes.
    bytes_all: u64,
    /// Frames skipped over (a gap in the sequence).
    missing: u64,
    /// Frames that came again or out of order.
    repeated: u64,
    /// Frames whose payload did not carry their sequence number.
    bad_content: u64,
    /// Timed frames (after the warm-up) and their bytes.
    timed: u64,
    /// Payload bytes of the timed frames.
    timed_bytes: u64,
    /// Warm-up frames.
    warm: u64,
    /// When the first timed frame arrived.
    t0: Option<u64>,
    /// CPU time then.
    cpu0: CpuTime,
    /// One-way latencies of the timed frames.
    lat: Latency,
    /// The header of the Pong being sent back.
    pong: [u8; HEADER_LEN],
    /// For which summed length, and what a Ping's checksum is XORed with to be its
    /// Pong's ([`pong_delta`]): the Pong's checksum without reading the payload again.
    pong_delta: (usize, u32),
    /// Checksums of Pongs built in a ring's slots from the slots' memos (zero-copy).
    slot_sums: SlotSums,
}

impl ReaderSession {
    /// A session for `setup`. The reader follows the writer's Hello (mode, size, count);
    /// `setup.args.expect` holds the reader's own flags, which the Hello must match.
    pub fn new(setup: &Setup) -> ReaderSession {
        let mut report = setup.report(Role::Reader);
        report.latency_kind = "one_way".into();
        ReaderSession {
            report,
            expect: setup.args.expect,
            ..ReaderSession::blank(setup.args.mode == Mode::Text)
        }
    }

    /// The writer's Hello, once it has come.
    pub fn writer_hello(&self) -> Option<&Hello> {
        self.hello.as_ref()
    }

    /// Data and Ping frames of the current session taken so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Takes one received frame (checksum already checked by the decoder) and says what
    /// to do. The clock is read here, for the one-way latency of a frame its writer stamped
    /// (every text line, one stream frame in [`super::LATENCY_EVERY`]; not a Ping: in
    /// pingpong the writer times the round trip, and the hop is kept free of clock reads it
    /// does not report).
    pub fn on_frame<'a>(&'a mut self, h: &Header, payload: &'a [u8]) -> Result<Action<'a>> {
        match self.accept(h, payload)? {
            Accepted::Ping => {
                let pong = Fields {
                    kind: Kind::Pong,
                    flags: h.flags,
                    nonce: h.nonce,
                    seq: h.seq,
                    sent_ns: h.sent_ns,
                };
                // The Pong differs from the Ping only in its kind byte: its checksum is
                // the Ping's XOR a constant of the length (crate::resum). The Ping's was
                // checked over every byte by whoever took it; the writer checks the Pong's.
                let summed = if h.flags & FLAG_HEADER_SUM != 0 {
                    0
                } else {
                    payload.len()
                };
                if self.pong_delta.0 != summed {
                    self.pong_delta = (summed, pong_delta(summed));
                }
                let sum = h.checksum ^ self.pong_delta.1;
                encode_header_summed(pong, payload.len(), sum, &mut self.pong)?;
                Ok(Action::Echo(Outgoing {
                    kind: Kind::Pong,
                    header: &self.pong,
                    payload,
                    whole: None,
                }))
            }
            other => Ok(self.action(other, payload)),
        }
    }

    /// The [`Action`] for a decision other than a Ping.
    fn action<'a>(&'a self, d: Accepted, payload: &'a [u8]) -> Action<'a> {
        match d {
            Accepted::Hello => match &self.hello {
                Some(h) => Action::Hello(h),
                None => Action::Continue,
            },
            Accepted::Print { seq, latency_ns } => Action::Print(TextLine {
                seq,
                latency_ns,
                text: payload,
            }),
            Accepted::Done => Action::Done,
            Accepted::Continue | Accepted::Ping => Action::Continue,
        }
    }

    /// Zero-copy: as [`ReaderSession::on_frame`], for a frame read in place; a Ping is not
    /// echoed from its payload but answered with a [`PongInPlace`], which the reader builds
    /// in a slot lent by the way-back ring ([`PongInPlace::seal`]).
    pub fn on_frame_in_place<'a>(
        &'a mut self,
        h: &Header,
        payload: &'a [u8],
    ) -> Result<InPlace<'a>> {
        Ok(match self.accept(h, payload)? {
            Accepted::Ping => InPlace::Answer(PongInPlace { ping: *h }),
            other => InPlace::Action(self.action(other, payload)),
        })
    }

    /// [`PongInPlace::seal`] into a slot of a shared ring (`Producer::frame_mut`) whose
    /// producer may hold a memo of it (`Producer::memo`): the checksum is then derived from
    /// the 8 bytes written now, as [`crate::session::WriterSession::next_in_slot`] does.
    /// Returns the memo to leave for the slot (`Producer::remember`), if any.
    pub fn seal_pong(
        &mut self,
        pong: &PongInPlace,
        frame: &mut [u8],
        memo: Option<u32>,
    ) -> Result<Option<u32>> {
        pong.seal_with(frame, Some((&mut self.slot_sums, memo)))
    }

    /// The checks and bookkeeping of one frame, for both ways of answering a Ping.
    fn accept(&mut self, h: &Header, payload: &[u8]) -> Result<Accepted> {
        match self.session {
            _ if h.kind == Kind::Hello => return self.on_hello(h, payload),
            Some(s) if s == h.nonce => {}
            _ => {
                // Before the Hello, or of another session: left by an earlier run.
                self.report.stale_skipped += 1;
                return Ok(Accepted::Continue);
            }
        }
        match h.kind {
            Kind::Hello => unreachable!("handled above"),
            Kind::End => {
                self.on_end(payload, h.seq, now_ns())?;
                return Ok(Accepted::Done);
            }
            Kind::Pong => bail!(
                "a reader does not expect a Pong (seq {}): is a second writer connected?",
                h.seq
            ),
            Kind::Data | Kind::Ping => {}
        }
        let now = self.count(h, payload);
        if h.kind == Kind::Ping {
            return Ok(Accepted::Ping);
        }
        if self.text {
            return Ok(Accepted::Print {
                seq: h.seq,
                latency_ns: now.saturating_sub(h.sent_ns),
            });
        }
        Ok(Accepted::Continue)
    }

    /// The bookkeeping of one Data or Ping frame: sequence (a gap means lost messages, a
    /// step back a repeat), content, warm-up or timed, one-way latency (a Data frame its
    /// writer stamped: see [`super::LATENCY_EVERY`]). Returns the clock reading it took (0
    /// when it took none: a Ping or an unstamped Data frame after the first timed one).
    fn count(&mut self, h: &Header, payload: &[u8]) -> u64 {
        if h.seq != self.expected {
            if h.seq > self.expected {
                self.missing += h.seq - self.expected;
            } else {
                self.repeated += 1;
            }
        }
        self.expected = h.seq + 1;
        self.received += 1;
        self.bytes_all += payload.len() as u64;
        if !self.text && !super::carries_seq(payload, h.seq) {
            self.bad_content += 1;
        }
        if h.is_warmup() {
            self.warm += 1;
            return 0;
        }
        // A Data frame is timed if its writer stamped it (one in LATENCY_EVERY of a
        // stream, every line of text mode); a Ping is timed by the writer's round trip.
        let ping = h.kind == Kind::Ping;
        let timed_here = !ping && (self.text || h.sent_ns != 0);
        let now = if self.t0.is_some() && !timed_here {
            0
        } else {
            now_ns()
        };
        if self.t0.is_none() {
            self.t0 = Some(now);
            self.cpu0 = CpuTime::now();
        }
        self.timed += 1;
        self.timed_bytes += payload.len() as u64;
        if timed_here {
            self.lat.record(now.saturating_sub(h.sent_ns));
        }
        self.report.size_bytes = self.report.size_bytes.max(payload.len() as u64);
        now
    }

    /// The writer's Hello: checked against this reader's flags, followed, narrated. A
    /// Hello of another session after the first one means the frames before it were left
    /// by an earlier run: they are discarded, and the new writer must run the same thing.
    fn on_hello(&mut self, h: &Header, payload: &[u8]) -> Result<Accepted> {
        let hello = Hello::decode(payload).context("the writer's Hello frame")?;
        if let Some(first) = &self.hello {
            if self.session == Some(h.nonce) {
                bail!("the writer sent its Hello twice (session {:#x})", h.nonce);
            }
            if (first.mode, first.size) != (hello.mode, hello.size) {
                bail!(
                    "a second Hello arrived: {hello}, after {first}. Is a second writer connected, \
                     or were an earlier run's frames left in the channel?"
                );
            }
            narrate!(
                "a new session began (a Hello of {:#x}); the {} messages before it were left by an earlier run and are discarded",
                h.nonce,
                self.received
            );
            self.report.stale_skipped += self.received;
            *self = ReaderSession {
                report: std::mem::take(&mut self.report),
                expect: self.expect,
                hello: self.hello.take(),
                session: Some(h.nonce),
                ..ReaderSession::blank(self.text)
            };
            return Ok(Accepted::Continue);
        }
        self.expect.check(&hello)?;
        if self.expect.is_empty() {
            narrate!("the writer's Hello: {hello}; this reader follows it");
        } else {
            narrate!("the writer's Hello: {hello}; it matches this reader's flags");
        }
        self.text = hello.mode == Mode::Text;
        self.report.mode = hello.mode.as_str().into();
        self.report.verify = hello.verify.as_str().into();
        self.report.zero_copy = hello.zero_copy;
        self.session = Some(h.nonce);
        self.hello = Some(hello);
        Ok(Accepted::Hello)
    }

    /// A session with nothing received yet.
    fn blank(text: bool) -> ReaderSession {
        ReaderSession {
            report: Report::default(),
            text,
            expect: Expect::default(),
            hello: None,
            session: None,
            expected: 0,
            received: 0,
            bytes_all: 0,
            missing: 0,
            repeated: 0,
            bad_content: 0,
            timed: 0,
            timed_bytes: 0,
            warm: 0,
            t0: None,
            cpu0: CpuTime::now(),
            lat: Latency::new(),
            pong: [0; HEADER_LEN],
            pong_delta: (0, pong_delta(0)),
            slot_sums: SlotSums::default(),
        }
    }

    fn on_end(&mut self, payload: &[u8], seq: u64, now: u64) -> Result<()> {
        let claimed = parse_end(payload).context("End frame")?;
        let (received, bytes_all) = (self.received, self.bytes_all);
        let end_ok = claimed == (received, bytes_all) && seq == received;
        if !end_ok {
            narrate!(
                "End says {} messages / {} bytes were sent; {received} / {bytes_all} arrived",
                claimed.0,
                claimed.1
            );
        }
        let (missing, repeated, bad) = (self.missing, self.repeated, self.bad_content);
        if missing + repeated + bad > 0 {
            narrate!("{missing} messages missing, {repeated} repeated or out of order, {bad} with wrong content");
        }
        let r = &mut self.report;
        r.verified = end_ok && missing == 0 && repeated == 0 && bad == 0;
        r.verified_by = "reader".into();
        (r.missing, r.repeated, r.corrupt) = (missing, repeated, bad);
        r.rss_start_kib = self.cpu0.max_rss_kib;
        r.elapsed_ns = self.t0.map_or(0, |t| now.saturating_sub(t));
        r.count = if self.text { received } else { self.timed };
        r.bytes = if self.text {
            bytes_all
        } else {
            self.timed_bytes
        };
        r.warmup = self.warm;
        r.latency_ns = self.lat.summary();
        if !self.text {
            r.notes
                .extend(super::sampled_note(self.lat.len(), self.timed));
        }
        r.set_rates(CpuTime::now().since(self.cpu0));
        Ok(())
    }

    /// The error for a writer that went away without End. `what` names the channel ("the
    /// pipe"); `cut` is `(have, need)` when it stopped inside a frame.
    pub fn writer_left(&self, what: &str, cut: Option<(usize, usize)>) -> anyhow::Error {
        let received = self.received;
        match cut {
            Some((have, need)) => anyhow!(
                "truncated stream: the writer closed {what} in the middle of a frame ({have} of {need} bytes) after {received} whole messages"
            ),
            None if self.hello.is_none() => anyhow!(
                "the writer closed {what} before its Hello: it is not an ipc-study writer of this version, or it died at once"
            ),
            None => anyhow!(
                "the writer closed {what} after {received} {} without sending End: it did not finish",
                if received == 1 { "message" } else { "messages" }
            ),
        }
    }

    /// The report, once [`ReaderSession::on_frame`] returned [`Action::Done`].
    pub fn finish(self) -> Report {
        self.report
    }
}
