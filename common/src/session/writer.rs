//! The writer's half of the protocol: what to send next, and what the answers must be.

use anyhow::{anyhow, bail, Result};

use crate::cli::Mode;
use crate::frame::{
    checksum_continue, encode_header, encode_header_into, end_payload, Fields, Header, Kind,
    FLAG_HEADER_SUM, FLAG_WARMUP, HEADER_LEN,
};
use crate::hello::{Hello, Verify};
use crate::resum::{Repeated, SendTime, SlotSums};

use super::{times_latency, FrameBuf, Outgoing, SAMPLED_BELOW};
use crate::setup::{Role, Setup};
use crate::timing::{now_ns, CpuTime, Latency, Report};

mod ahead;

/// What the writer's loop does next.
#[derive(Debug)]
pub enum Next<'a> {
    /// Send this frame, then call [`WriterSession::next`] again.
    Send(Outgoing<'a>),
    /// Pingpong: receive the Pong of the Ping just sent and give it to
    /// [`WriterSession::answer`].
    AwaitAnswer,
    /// Text mode: read a line and give it to [`WriterSession::push_line`], or call
    /// [`WriterSession::end_of_input`] at end of input.
    NeedLine,
    /// Everything was sent (and answered); [`WriterSession::finish`] gives the report.
    Done,
}

/// Where a writer session is.
#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// Nothing sent yet: the Hello goes first.
    Hello,
    /// Sending Data or Pings.
    Running,
    /// Text mode: end of input; End goes next.
    EndDue,
    /// Text mode: a line was refused; End goes next, then the error.
    Refusing(String),
    /// Text mode: End of a refused line was handed out; the error comes next.
    Failed(String),
    /// End was handed out.
    EndSent,
    /// The timed part is over and measured.
    Done,
}

/// The writer side of the protocol for one run: builds frames, checks answers, times.
///
/// Every mode starts with one Hello frame ([`crate::hello`]). Text mode: one Data frame per line pushed, End at end of input. Stream: `warmup +
/// count` Data frames of `--size` bytes, then End. Pingpong: `warmup + count` Pings, each
/// answered by a Pong before the next, then End.
pub struct WriterSession {
    /// The report being filled in.
    report: Report,
    /// What runs.
    mode: Mode,
    /// Timed messages.
    count: u64,
    /// Untimed messages sent first.
    warmup: u64,
    /// Payload bytes per message (stream, pingpong).
    size: usize,
    /// Longest text line accepted.
    max_payload: usize,
    /// This run's random id, carried by every frame.
    nonce: u64,
    /// Sequence number of the next Data or Ping frame.
    seq: u64,
    /// Sequence number of the last frame handed out (for "after N messages").
    last_seq: u64,
    /// Payload bytes of the Data frames sent (text mode).
    text_bytes: u64,
    /// Text mode: a line pushed and not yet framed.
    line: Option<Vec<u8>>,
    /// Pingpong: a Ping is out and its Pong has not been taken yet.
    awaiting: bool,
    /// Pingpong: when the last Pong arrived (the clock read that timed it), which is also
    /// the send time of the next Ping: one clock read per round trip, and the writer's
    /// own work building the Ping counts in the round trip, as it does in any loop.
    pong_at: Option<u64>,
    /// Where the session is.
    phase: Phase,
    /// What the Hello says.
    hello: Hello,
    /// A Data or Ping frame has been handed out (not only the Hello).
    data_sent: bool,
    /// Round-trip times of the timed Pings.
    rtt: Latency,
    /// Pingpong: the last round trip, measured and not yet recorded in `rtt`: it is
    /// recorded once the next Ping is out, while the writer waits anyway.
    rtt_due: Option<u64>,
    /// Pingpong: the checksum's change for a Ping sealed ahead, when its send time is
    /// written ([`WriterSession::stamp`]).
    send_time: Option<SendTime>,
    /// Checksums of frames built in a ring's slots from the slots' memos (zero-copy).
    slot_sums: SlotSums,
    /// Start of the timed part (CLOCK_MONOTONIC ns) and the CPU time then.
    t0: u64,
    /// CPU time at `t0`.
    cpu0: CpuTime,
}

impl WriterSession {
    /// A session for `setup`'s mode, count, size and warm-up, with a fresh nonce.
    pub fn new(setup: &Setup) -> WriterSession {
        let a = &setup.args;
        WriterSession {
            report: setup.report(Role::Writer),
            mode: a.mode,
            count: a.count,
            warmup: a.warmup(),
            size: a.size,
            max_payload: setup.max_payload,
            nonce: super::new_nonce(),
            seq: 0,
            last_seq: 0,
            text_bytes: 0,
            line: None,
            awaiting: false,
            pong_at: None,
            phase: Phase::Hello,
            hello: Hello::of(setup, 0),
            data_sent: false,
            rtt: Latency::new(),
            rtt_due: None,
            send_time: None,
            slot_sums: SlotSums::default(),
            t0: now_ns(),
            cpu0: CpuTime::now(),
        }
    }

    /// This run's session nonce.
    pub fn nonce(&self) -> u64 {
        self.nonce
    }

    /// States in the Hello how many bytes the channel holds (the pipe's buffer, the ring,
    /// the queue), as the writer measured it after meeting its reader.
    pub fn capacity(mut self, bytes: u64) -> WriterSession {
        self.hello.capacity = bytes;
        self
    }

    /// `--verify seq`: timed frames carry a checksum of their header only, and the reader
    /// checks sequence, session and length (the Hello says so, and both reports).
    pub fn verify(mut self, v: Verify) -> WriterSession {
        self.hello.verify = v;
        self.report.verify = v.as_str().into();
        self
    }

    /// `--zero-copy`: the frames are built in place in the shared ring (the Hello and both
    /// reports say so; [`WriterSession::next_in_slot`] or [`WriterSession::next_in_place`]
    /// does it).
    pub fn zero_copy(mut self, on: bool) -> WriterSession {
        self.hello.zero_copy = on;
        self.report.zero_copy = on;
        self
    }

    /// What this writer's Hello says.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// What to do next; a frame to send is built in `buf`.
    ///
    /// The clock is read here: `sent_ns` of each frame (in pingpong, the clock read that
    /// timed the previous Pong), and the start of the timed part when the first frame after
    /// the warm-up is built.
    pub fn next<'b>(&mut self, buf: &'b mut FrameBuf) -> Result<Next<'b>> {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Hello => {
                self.phase = Phase::Running;
                buf.hello.clear();
                buf.hello.resize(HEADER_LEN, 0);
                buf.hello.extend_from_slice(&self.hello.encode());
                let fields = Fields {
                    kind: Kind::Hello,
                    flags: 0,
                    nonce: self.nonce,
                    seq: 0,
                    sent_ns: now_ns(),
                };
                let header = encode_header(fields, &buf.hello[HEADER_LEN..])?;
                buf.hello[..HEADER_LEN].copy_from_slice(&header);
                let out = Outgoing::from_bytes(Kind::Hello, &buf.hello)
                    .unwrap_or_else(|| unreachable!("hello holds a header"));
                Ok(Next::Send(out))
            }
            Phase::Running => {
                self.phase = Phase::Running;
                match self.mode {
                    Mode::Text => self.next_text(buf),
                    Mode::Stream | Mode::Pingpong => self.next_timed(buf),
                }
            }
            Phase::EndDue => {
                self.phase = Phase::EndSent;
                self.encode_end(buf, self.text_bytes)
            }
            Phase::Refusing(why) => {
                // End goes out first, so every line sent before is accounted for.
                self.phase = Phase::Failed(why);
                self.encode_end(buf, self.text_bytes)
            }
            Phase::Failed(why) => Err(anyhow!("{why}")),
            Phase::EndSent => {
                self.report.rss_start_kib = self.cpu0.max_rss_kib;
                self.report.elapsed_ns = now_ns().saturating_sub(self.t0);
                self.report.set_rates(CpuTime::now().since(self.cpu0));
                Ok(Next::Done)
            }
            Phase::Done => Ok(Next::Done),
        }
    }

    fn next_text<'b>(&mut self, buf: &'b mut FrameBuf) -> Result<Next<'b>> {
        let Some(line) = self.line.take() else {
            return Ok(Next::NeedLine);
        };
        buf.set_payload(&line);
        self.encode(buf, Kind::Data)?;
        self.text_bytes += line.len() as u64;
        self.report.size_bytes = self.report.size_bytes.max(line.len() as u64);
        self.seq += 1;
        Ok(Next::Send(buf.data_frame(Kind::Data)))
    }

    fn next_timed<'b>(&mut self, buf: &'b mut FrameBuf) -> Result<Next<'b>> {
        if self.awaiting {
            // The Ping is out: until its Pong is in, the writer only waits. What does not
            // need the Pong is done now, off the round trip: the last one's sample goes
            // into the histogram, and the next Ping is sealed (all but its send time).
            self.record_rtt();
            self.seal_ahead(buf)?;
            return Ok(Next::AwaitAnswer);
        }
        let total = self.warmup + self.count;
        if self.seq == total {
            self.record_rtt();
            self.phase = Phase::EndSent;
            return self.encode_end(buf, total * self.size as u64);
        }
        if buf.sealed == Some((self.nonce, self.seq)) {
            return self.stamp(buf);
        }
        if buf.repeated.as_ref().map(|r| r.payload_len()) != Some(self.size) {
            buf.set_repeated(&pattern(self.size));
        }
        let sum = match buf.repeated.as_ref() {
            Some(r) => Sum::Repeated(r),
            None => Sum::Whole,
        };
        let (kind, _) = self.seal_timed(&mut buf.data[..], sum)?;
        Ok(Next::Send(buf.data_frame(kind)))
    }

    /// Whether the next frame is a timed Data or Ping of `--size` bytes: one that a
    /// zero-copy writer builds in place with [`WriterSession::next_in_place`].
    pub fn next_is_timed(&self) -> bool {
        self.phase == Phase::Running
            && self.mode != Mode::Text
            && !self.awaiting
            && self.seq < self.warmup + self.count
    }

    /// Zero-copy: builds the next timed frame in `frame` (header, then `--size` payload
    /// bytes: a slot lent by the shared ring), when [`WriterSession::next_is_timed`]. Only
    /// the header and the payload's first 8 bytes (the sequence number) are written; the
    /// rest of the payload is what the slot holds, as the copying path re-sends one payload
    /// buffer and changes only its first 8 bytes. The checksum covers the payload as it
    /// lies (or only the header, with `--verify seq`). Returns the frame's kind.
    pub fn next_in_place(&mut self, frame: &mut [u8]) -> Result<Kind> {
        self.in_place(frame, Sum::Whole).map(|(kind, _)| kind)
    }

    /// [`WriterSession::next_in_place`] for a slot of a shared ring (`Producer::frame_mut`)
    /// whose producer may hold a memo of it (`Producer::memo`): the CRC of the payload
    /// past its first 8 bytes when the last frame was built there. With it, the checksum
    /// is derived from the 8 bytes written now ([`crate::resum::SlotSums`]). Returns the
    /// frame's kind and the memo to leave for the slot (`Producer::remember`): none for a
    /// payload under [`crate::resum::MEMO_FROM`] or a header-only checksum.
    pub fn next_in_slot(
        &mut self,
        frame: &mut [u8],
        memo: Option<u32>,
    ) -> Result<(Kind, Option<u32>)> {
        self.in_place(frame, Sum::Slot(memo))
    }

    fn in_place(&mut self, frame: &mut [u8], sum: Sum<'_>) -> Result<(Kind, Option<u32>)> {
        if !self.next_is_timed() {
            bail!("next_in_place: the next frame is not a timed message");
        }
        if frame.len() != HEADER_LEN + self.size {
            bail!(
                "next_in_place: a {}-byte slot for a {}-byte frame",
                frame.len(),
                HEADER_LEN + self.size
            );
        }
        self.seal_timed(frame, sum)
    }

    /// The timed frame in `frame` (header + payload): sequence number into the payload,
    /// the header (kind, warm-up flag, `sent_ns` on a Ping and on one Data frame in
    /// [`super::LATENCY_EVERY`], checksum) in front, the state moved on. `sum` says how the
    /// checksum is had: derived from the 8 bytes that changed in the session's own buffer
    /// (`Repeated`), or in a ring's slot from its memo (`Slot`), or over the whole payload.
    /// Returns the kind and the slot's new memo, if any. (A pingpong Ping sealed while the
    /// one before it was out is only stamped: `ahead.rs`.)
    fn seal_timed(&mut self, frame: &mut [u8], sum: Sum<'_>) -> Result<(Kind, Option<u32>)> {
        self.start_timing();
        let kind = self.kind();
        // A stream of small payloads stamps one Data frame in LATENCY_EVERY (and the first
        // timed one): the others, warm-up frames included, say 0, "not timed", and cost no
        // clock read here or in the reader.
        let stamped = kind != Kind::Data
            || self.size >= SAMPLED_BELOW
            || self.seq == self.warmup
            || (self.seq > self.warmup && times_latency(self.nonce, self.seq));
        let sent_ns = if stamped { self.send_time_now() } else { 0 };
        let memo = self.build(frame, self.seq, sent_ns, sum)?;
        self.handed_out(kind);
        Ok((kind, memo))
    }

    /// The timed part starts with the first frame after the warm-up.
    #[inline(always)]
    fn start_timing(&mut self) {
        if self.seq == self.warmup {
            self.t0 = now_ns();
            self.cpu0 = CpuTime::now();
        }
    }

    /// A timed frame's kind in this mode.
    #[inline(always)]
    fn kind(&self) -> Kind {
        if self.mode == Mode::Pingpong {
            Kind::Ping
        } else {
            Kind::Data
        }
    }

    /// A stamped frame's send time: the clock read that timed the last Pong, or now.
    #[inline(always)]
    fn send_time_now(&mut self) -> u64 {
        self.pong_at.take().unwrap_or_else(now_ns)
    }

    /// The state after a timed frame was handed out: a Ping awaits its Pong; a Data
    /// frame's successor is next.
    #[inline(always)]
    fn handed_out(&mut self, kind: Kind) {
        self.awaiting = kind == Kind::Ping;
        self.last_seq = self.seq;
        self.data_sent = true;
        if kind == Kind::Data {
            self.seq += 1;
        }
    }

    /// Writes the timed frame `seq` into `frame` (header, then payload): its sequence
    /// number into the payload, the header with `sent_ns` and the checksum in front. `sum`
    /// says how the checksum is had. Returns the slot's new memo, if any.
    #[inline(always)]
    fn build(
        &mut self,
        frame: &mut [u8],
        seq_no: u64,
        sent_ns: u64,
        sum: Sum<'_>,
    ) -> Result<Option<u32>> {
        let kind = self.kind();
        let mut flags = if seq_no < self.warmup { FLAG_WARMUP } else { 0 };
        if self.hello.verify == Verify::Seq {
            flags |= FLAG_HEADER_SUM;
        }
        let fields = Fields {
            kind,
            flags,
            nonce: self.nonce,
            seq: seq_no,
            sent_ns,
        };
        // The checksum first, over the new sequence number (held here) and the payload's
        // other bytes as they lie; only then are the frame's bytes written, header and
        // sequence number one after the other, from the values (encode_header_into: nothing
        // stored is read back). In a ring's slot these are the record's first cache line,
        // which the consumer polls: stores to it that a checksum separated would let the
        // consumer take the line back between them, and the stamp would wait for it once
        // more (Producer::frame_mut).
        let n = self.size.min(8);
        let seq = seq_no.to_le_bytes();
        let (header, payload) = frame.split_at_mut(HEADER_LEN);
        let header: &mut [u8; HEADER_LEN] = header.try_into()?;
        let (front, rest) = (&seq[..n], &payload[n..]);
        let len = n + rest.len();
        let mut memo = None;
        match sum {
            _ if flags & FLAG_HEADER_SUM != 0 => encode_header_into(fields, len, |c| c, header)?,
            Sum::Repeated(r) => encode_header_into(fields, len, |c| r.checksum(c, front), header)?,
            Sum::Slot(had) => encode_header_into(
                fields,
                len,
                |c| {
                    let (sum, now) = self.slot_sums.checksum(c, front, rest, had);
                    memo = now;
                    sum
                },
                header,
            )?,
            Sum::Whole => {
                encode_header_into(fields, len, |c| checksum_continue(c, front, rest), header)?
            }
        }
        payload[..n].copy_from_slice(front);
        Ok(memo)
    }

    fn encode(&mut self, buf: &mut FrameBuf, kind: Kind) -> Result<()> {
        let fields = Fields {
            kind,
            flags: 0,
            nonce: self.nonce,
            seq: self.seq,
            sent_ns: now_ns(),
        };
        let header = encode_header(fields, &buf.data[HEADER_LEN..])?;
        buf.data[..HEADER_LEN].copy_from_slice(&header);
        self.last_seq = self.seq;
        self.data_sent = true;
        Ok(())
    }

    fn encode_end<'b>(&mut self, buf: &'b mut FrameBuf, bytes: u64) -> Result<Next<'b>> {
        buf.end[HEADER_LEN..].copy_from_slice(&end_payload(self.seq, bytes));
        let fields = Fields {
            kind: Kind::End,
            flags: 0,
            nonce: self.nonce,
            seq: self.seq,
            sent_ns: now_ns(),
        };
        let header = encode_header(fields, &buf.end[HEADER_LEN..])?;
        buf.end[..HEADER_LEN].copy_from_slice(&header);
        self.last_seq = self.seq;
        self.fill_report();
        Ok(Next::Send(buf.end_frame()))
    }

    /// Text mode: the next line read from input, with or without its line ending. A line
    /// longer than the mechanism carries is refused: End goes out first (so every line
    /// before it is accounted for), then [`WriterSession::next`] returns the error.
    pub fn push_line(&mut self, line: &[u8]) {
        let mut end = line.len();
        while end > 0 && matches!(line[end - 1], b'\n' | b'\r') {
            end -= 1;
        }
        if end > self.max_payload {
            self.phase = Phase::Refusing(format!(
                "line {} is {end} bytes; the largest message this mechanism carries is {} bytes",
                self.seq + 1,
                self.max_payload
            ));
            return;
        }
        self.line = Some(line[..end].to_vec());
    }

    /// Text mode: input ended (Ctrl-D); the End frame goes next.
    pub fn end_of_input(&mut self) {
        self.phase = Phase::EndDue;
    }

    /// Pingpong: the Pong that came back. It must answer the Ping just sent (same seq and
    /// session) and carry its payload back. The round trip is measured here, from the
    /// Ping's send time, which is when the Pong before it arrived (one clock read per trip).
    pub fn answer(&mut self, pong: &Header, payload: &[u8]) -> Result<()> {
        let now = now_ns();
        let (seq, nonce, size) = (self.seq, self.nonce, self.size);
        if !self.awaiting {
            bail!(
                "got a Pong (seq {}) when no Ping was waiting for one",
                pong.seq
            );
        }
        if pong.kind != Kind::Pong || pong.seq != seq || pong.nonce != nonce {
            bail!(
                "expected Pong seq {seq} of session {nonce:#x}, got {:?} seq {} of session {:#x}",
                pong.kind,
                pong.seq,
                pong.nonce
            );
        }
        if payload.len() != size || !super::carries_seq(payload, seq) {
            bail!(
                "Pong seq {seq} does not carry the payload that was sent ({} bytes back, {size} sent)",
                payload.len()
            );
        }
        if seq >= self.warmup {
            // Recorded once the next Ping is out (next_timed), off the round trip.
            self.rtt_due = Some(now.saturating_sub(pong.sent_ns));
        }
        // The next Ping's send time, unless the timed part starts with it (then its own).
        self.pong_at = (seq + 1 != self.warmup).then_some(now);
        self.awaiting = false;
        self.seq += 1;
        Ok(())
    }

    /// The error for a reader that went away: "reader {how} after this writer sent N
    /// messages; stopping". A reader that left before the first message (or, in pingpong,
    /// before answering the first Ping) probably refused this writer's Hello, and the error
    /// says so; a stream writer cannot tell (its messages are in the channel before the
    /// reader reads the Hello), so it says where to look.
    pub fn reader_left(&self, how: &str) -> anyhow::Error {
        let before_any = if self.mode == Mode::Pingpong {
            self.seq == 0
        } else {
            !self.data_sent
        };
        if before_any && self.phase != Phase::Hello {
            return anyhow!(
                "reader {how} right after this writer's Hello ({}), before any {}: \
                 if it refused these settings, its own output says why; stopping",
                self.hello.flags(),
                if self.mode == Mode::Pingpong {
                    "message was answered"
                } else {
                    "message"
                }
            );
        }
        let (n, what) = if self.mode == Mode::Pingpong {
            (
                self.seq,
                if self.seq == 1 {
                    "round trip"
                } else {
                    "round trips"
                },
            )
        } else {
            let n = self.last_seq + 1;
            (n, if n == 1 { "message" } else { "messages" })
        };
        anyhow!(
            "reader {how} after this writer sent {n} {what}; stopping \
             (a reader that refuses the writer's settings leaves at once: its own output says why)"
        )
    }

    fn fill_report(&mut self) {
        let r = &mut self.report;
        if self.mode == Mode::Text {
            r.count = self.seq;
            r.bytes = self.text_bytes;
        } else {
            r.size_bytes = self.size as u64;
            r.count = self.count;
            r.warmup = self.warmup;
            r.bytes = self.count * self.size as u64;
        }
        // Only a pingpong writer checks anything (each Pong); otherwise the reader verifies,
        // and this report must not say "verified" for messages nobody here looked at.
        if self.mode == Mode::Pingpong {
            r.latency_kind = "round_trip".into();
            r.latency_ns = self.rtt.summary();
            (r.verified, r.verified_by) = (true, "writer".into());
        } else {
            (r.verified, r.verified_by) = (false, "reader".into());
        }
    }

    /// Round trips recorded in the histogram so far (tests).
    #[cfg(test)]
    pub(super) fn round_trips_recorded(&self) -> u64 {
        self.rtt.len()
    }

    /// The report, once [`WriterSession::next`] returned [`Next::Done`].
    pub fn finish(self) -> Report {
        self.report
    }
}

/// How [`WriterSession::seal_timed`] has the payload's checksum.
enum Sum<'r> {
    /// From the session's repeated payload and the 8 bytes that changed.
    Repeated(&'r Repeated),
    /// In a ring's slot, from its memo if the producer kept one.
    Slot(Option<u32>),
    /// Over the whole payload.
    Whole,
}

/// The stream payload: a fixed pattern whose first 8 bytes are overwritten with the
/// sequence number of each message, so the reader checks content as well as the checksum.
fn pattern(size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(7))
        .collect()
}
