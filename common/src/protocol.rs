//! The three modes, written once for every mechanism.
//!
//! A mechanism supplies a [`FrameSink`] (how one frame leaves) and a [`FrameSource`] (how
//! one arrives); this module runs text, stream and pingpong over them. So the loop that
//! is timed is the same code for a pipe, a message queue and shared memory, and the
//! comparison between them measures the mechanisms, not six different loops.
//!
//! The writer side ([`run_writer`]):
//! - text: each line of stdin becomes a Data frame; end of input sends End.
//! - stream: `warmup + count` Data frames of `--size` bytes back to back, then End.
//! - pingpong: `warmup + count` times: send a Ping, wait for its Pong, record the round
//!   trip; then End. Needs a way back (two pipes P5, two FIFOs N6, two message types M4,
//!   two rings, one socket).
//!
//! The reader side ([`run_reader`]) takes whatever arrives: it verifies every Data and Ping
//! (checksum in the decoder; here sequence, session and content), echoes each Ping as a
//! Pong, and stops at End, whose totals must match what arrived. A stream that stops
//! without End is a writer that died: reported, not counted as success.
//!
//! Nothing in the timed loops allocates, prints or takes a lock.

use std::io::{self, BufRead, Write as _};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::cli::{CommonArgs, Mode};
use crate::frame::{
    encode_header, end_payload, parse_end, write_frame, Fields, FrameReader, Header, Kind,
    StreamEvent, FLAG_WARMUP, HEADER_LEN,
};
use crate::narrate;
use crate::timing::{now_ns, CpuTime, Latency, Report};

/// Whether a frame left, or the peer had already gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The frame was handed to the mechanism.
    Sent,
    /// The peer is gone (EPIPE, connection reset, queue removed): an expected end, not a bug.
    PeerGone,
}

/// What arrived.
#[derive(Debug)]
pub enum Incoming<'a> {
    /// A checked frame; the payload borrows the source's buffer until the next `recv`.
    Frame(Header, &'a [u8]),
    /// The peer closed between two frames.
    Closed,
    /// The peer closed inside a frame: `have` of `need` bytes arrived.
    ClosedMidFrame { have: usize, need: usize },
}

/// How a mechanism sends one frame.
pub trait FrameSink {
    /// Sends `header` followed by `payload` as one message.
    fn send(&mut self, header: &[u8; HEADER_LEN], payload: &[u8]) -> Result<Delivery>;
}

/// How a mechanism receives one frame.
pub trait FrameSource {
    /// Waits for the next frame.
    fn recv(&mut self) -> Result<Incoming<'_>>;

    /// The writer's session nonce, when the mechanism learned it at rendezvous (the shared
    /// ring's header carries it). Otherwise the reader adopts the session of the first
    /// frame with seq 0 and skips frames of any other session as stale.
    fn session(&self) -> Option<u64> {
        None
    }
}

impl<T: FrameSink + ?Sized> FrameSink for &mut T {
    fn send(&mut self, header: &[u8; HEADER_LEN], payload: &[u8]) -> Result<Delivery> {
        (**self).send(header, payload)
    }
}

impl<T: FrameSource + ?Sized> FrameSource for &mut T {
    fn recv(&mut self) -> Result<Incoming<'_>> {
        (**self).recv()
    }
    fn session(&self) -> Option<u64> {
        (**self).session()
    }
}

/// A sink for a mechanism with no way back (a one-way pipe without `--spawn`).
pub struct NoWayBack;

impl FrameSink for NoWayBack {
    fn send(&mut self, _: &[u8; HEADER_LEN], _: &[u8]) -> Result<Delivery> {
        bail!("this reader has no way back to the writer, so it cannot answer a Ping")
    }
}

/// Byte-stream sink: one `writev` per frame (pipe, FIFO, TCP, Unix stream).
///
/// With [`StreamSink::noticing_full`] the descriptor is non-blocking and a write that
/// finds no room is counted and waited for with `poll`, so the program can say that the
/// write would have blocked (P6) instead of just stalling.
pub struct StreamSink<W> {
    /// The stream.
    inner: W,
    /// Whether the descriptor was made non-blocking to notice a full buffer.
    notice_full: bool,
    /// How many times a write found the buffer full and waited.
    pub blocked: u64,
    /// What the buffer is called in narration ("pipe", "FIFO", "socket").
    what: &'static str,
}

impl<W: io::Write + std::os::fd::AsFd> StreamSink<W> {
    /// A plain blocking sink.
    pub fn new(inner: W) -> Self {
        StreamSink {
            inner,
            notice_full: false,
            blocked: 0,
            what: "stream",
        }
    }

    /// A sink that notices and counts writes that would block on a full buffer.
    pub fn noticing_full(inner: W, what: &'static str) -> Result<Self> {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let fd = inner.as_fd();
        let flags = fcntl(fd, FcntlArg::F_GETFL).context("fcntl F_GETFL")?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(fd, FcntlArg::F_SETFL(flags)).context("fcntl F_SETFL O_NONBLOCK")?;
        Ok(StreamSink {
            inner,
            notice_full: true,
            blocked: 0,
            what,
        })
    }

    /// The stream.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Waits with poll(2) until the stream has room again.
    fn wait_for_room(&mut self) -> io::Result<()> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        if self.blocked == 0 {
            narrate!(
                "the {} is full: write() would block here until the reader reads (P6); waiting in poll()",
                self.what
            );
        }
        self.blocked += 1;
        let mut fds = [PollFd::new(self.inner.as_fd(), PollFlags::POLLOUT)];
        loop {
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl<W: io::Write + std::os::fd::AsFd> FrameSink for StreamSink<W> {
    fn send(&mut self, header: &[u8; HEADER_LEN], payload: &[u8]) -> Result<Delivery> {
        if !self.notice_full {
            return stream_delivery(write_frame(&mut self.inner, header, payload));
        }
        // Non-blocking: write what fits, wait for room, continue where the kernel stopped.
        let mut bufs = [io::IoSlice::new(header), io::IoSlice::new(payload)];
        let mut slices: &mut [io::IoSlice<'_>] = &mut bufs;
        while !slices.is_empty() {
            match self.inner.write_vectored(slices) {
                Ok(n) => io::IoSlice::advance_slices(&mut slices, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = self.wait_for_room() {
                        return stream_delivery(Err(e));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return stream_delivery(Err(e)),
            }
        }
        Ok(Delivery::Sent)
    }
}

/// EPIPE and a reset connection mean the peer is gone: a value, not an error.
fn stream_delivery(r: io::Result<()>) -> Result<Delivery> {
    match r {
        Ok(()) => Ok(Delivery::Sent),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            Ok(Delivery::PeerGone)
        }
        Err(e) => Err(e).context("write"),
    }
}

/// Byte-stream source over a [`FrameReader`].
pub struct StreamSource<R> {
    /// The framing reader.
    pub reader: FrameReader<R>,
}

impl<R: io::Read> StreamSource<R> {
    /// A source reading frames of at most `max_payload` bytes.
    pub fn new(inner: R, max_payload: usize) -> Self {
        StreamSource {
            reader: FrameReader::new(inner, max_payload),
        }
    }
}

impl<R: io::Read> FrameSource for StreamSource<R> {
    fn recv(&mut self) -> Result<Incoming<'_>> {
        match self.reader.next_frame() {
            Ok(StreamEvent::Frame { header, payload }) => Ok(Incoming::Frame(header, payload)),
            Ok(StreamEvent::Eof) => Ok(Incoming::Closed),
            Ok(StreamEvent::EofMidFrame { have, need }) => {
                Ok(Incoming::ClosedMidFrame { have, need })
            }
            Err(crate::frame::FrameError::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                Ok(Incoming::Closed)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// A random session id: std's per-process random hash keys, mixed with pid and time.
pub fn new_nonce() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one((std::process::id(), now_ns()))
}

/// Who is running and what the report should say about it.
#[derive(Clone, Debug)]
pub struct Setup {
    /// `pipe-writer`, ...
    pub program: String,
    /// Crate name.
    pub mechanism: String,
    /// Variant (`anonymous`, `posix`, `tcp`, ...).
    pub flavour: String,
    /// Wait strategy (`blocking` for mechanisms that wait in the kernel).
    pub wait: String,
    /// The shared flags.
    pub args: CommonArgs,
    /// Largest payload this mechanism carries (text lines longer than this are refused).
    pub max_payload: usize,
}

impl Setup {
    fn report(&self, role: &str) -> Report {
        Report {
            program: self.program.clone(),
            role: role.into(),
            mechanism: self.mechanism.clone(),
            flavour: self.flavour.clone(),
            mode: self.args.mode.as_str().into(),
            wait: self.wait.clone(),
            ..Report::default()
        }
    }
}

/// How a writer's run ended.
#[derive(Debug)]
pub enum WriterEnd {
    /// Everything was sent (and, in pingpong, answered).
    Finished(Box<Report>),
    /// The reader went away after `sent` messages.
    PeerGone { sent: u64 },
}

/// Runs the writer side of `setup.args.mode`. `back` is required for pingpong.
pub fn run_writer<S: FrameSink, B: FrameSource>(
    setup: &Setup,
    sink: &mut S,
    back: Option<&mut B>,
    stdin: &mut dyn BufRead,
) -> Result<WriterEnd> {
    let nonce = new_nonce();
    match setup.args.mode {
        Mode::Text => write_text(setup, sink, stdin, nonce),
        Mode::Stream => write_stream(setup, sink, nonce),
        Mode::Pingpong => match back {
            Some(back) => write_pingpong(setup, sink, back, nonce),
            None => bail!("pingpong needs a way back from the reader, and this setup has none"),
        },
    }
}

fn fields(kind: Kind, nonce: u64, seq: u64, warmup: bool) -> Fields {
    Fields {
        kind,
        flags: if warmup { FLAG_WARMUP } else { 0 },
        nonce,
        seq,
        sent_ns: now_ns(),
    }
}

fn send_end<S: FrameSink>(
    sink: &mut S,
    nonce: u64,
    seq: u64,
    count: u64,
    bytes: u64,
) -> Result<Delivery> {
    let payload = end_payload(count, bytes);
    let header = encode_header(fields(Kind::End, nonce, seq, false), &payload)?;
    sink.send(&header, &payload)
}

fn write_text<S: FrameSink>(
    setup: &Setup,
    sink: &mut S,
    stdin: &mut dyn BufRead,
    nonce: u64,
) -> Result<WriterEnd> {
    narrate!("type a line and press Enter to send it as one message; Ctrl-D (end of input) ends");
    let mut report = setup.report("writer");
    let mut line = Vec::new();
    let (mut seq, mut bytes) = (0u64, 0u64);
    let cpu0 = CpuTime::now();
    let t0 = now_ns();
    loop {
        line.clear();
        let n = stdin
            .read_until(b'\n', &mut line)
            .context("reading stdin")?;
        if n == 0 {
            break;
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        if line.len() > setup.max_payload {
            // Refuse the line, but close the session cleanly first so nothing sent is lost.
            send_end(sink, nonce, seq, seq, bytes)?;
            bail!(
                "line {} is {} bytes; the largest message this mechanism carries is {} bytes",
                seq + 1,
                line.len(),
                setup.max_payload
            );
        }
        let header = encode_header(fields(Kind::Data, nonce, seq, false), &line)?;
        if sink.send(&header, &line)? == Delivery::PeerGone {
            return Ok(WriterEnd::PeerGone { sent: seq });
        }
        seq += 1;
        bytes += line.len() as u64;
        report.size_bytes = report.size_bytes.max(line.len() as u64);
    }
    if send_end(sink, nonce, seq, seq, bytes)? == Delivery::PeerGone {
        return Ok(WriterEnd::PeerGone { sent: seq });
    }
    report.count = seq;
    report.bytes = bytes;
    report.elapsed_ns = now_ns() - t0;
    report.verified = true;
    report.set_rates(CpuTime::now().since(cpu0));
    Ok(WriterEnd::Finished(Box::new(report)))
}

/// A payload whose first 8 bytes carry the sequence number, so the reader checks content
/// as well as the checksum; the rest is a fixed pattern.
fn stamp(payload: &mut [u8], seq: u64) {
    let n = payload.len().min(8);
    payload[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
}

fn pattern(size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(7))
        .collect()
}

fn write_stream<S: FrameSink>(setup: &Setup, sink: &mut S, nonce: u64) -> Result<WriterEnd> {
    let (count, warmup, size) = (setup.args.count, setup.args.warmup(), setup.args.size);
    let mut payload = pattern(size);
    let mut report = setup.report("writer");
    let (mut t0, mut cpu0) = (now_ns(), CpuTime::now());
    for seq in 0..warmup + count {
        if seq == warmup {
            t0 = now_ns();
            cpu0 = CpuTime::now();
        }
        stamp(&mut payload, seq);
        let header = encode_header(fields(Kind::Data, nonce, seq, seq < warmup), &payload)?;
        if sink.send(&header, &payload)? == Delivery::PeerGone {
            return Ok(WriterEnd::PeerGone { sent: seq });
        }
    }
    let total = warmup + count;
    if send_end(sink, nonce, total, total, total * size as u64)? == Delivery::PeerGone {
        return Ok(WriterEnd::PeerGone { sent: total });
    }
    report.elapsed_ns = now_ns() - t0;
    report.size_bytes = size as u64;
    report.count = count;
    report.warmup = warmup;
    report.bytes = count * size as u64;
    report.verified = true;
    report.set_rates(CpuTime::now().since(cpu0));
    Ok(WriterEnd::Finished(Box::new(report)))
}

fn write_pingpong<S: FrameSink, B: FrameSource>(
    setup: &Setup,
    sink: &mut S,
    back: &mut B,
    nonce: u64,
) -> Result<WriterEnd> {
    let (count, warmup, size) = (setup.args.count, setup.args.warmup(), setup.args.size);
    let mut payload = pattern(size);
    let mut rtt = Latency::new();
    let mut report = setup.report("writer");
    let (mut t0, mut cpu0) = (now_ns(), CpuTime::now());
    for seq in 0..warmup + count {
        if seq == warmup {
            t0 = now_ns();
            cpu0 = CpuTime::now();
        }
        stamp(&mut payload, seq);
        let header = encode_header(fields(Kind::Ping, nonce, seq, seq < warmup), &payload)?;
        if sink.send(&header, &payload)? == Delivery::PeerGone {
            return Ok(WriterEnd::PeerGone { sent: seq });
        }
        let (pong, echoed) = match back.recv()? {
            Incoming::Frame(h, p) => (h, p),
            Incoming::Closed | Incoming::ClosedMidFrame { .. } => {
                return Ok(WriterEnd::PeerGone { sent: seq })
            }
        };
        let now = now_ns();
        if pong.kind != Kind::Pong || pong.seq != seq || pong.nonce != nonce {
            bail!(
                "expected Pong seq {seq} of session {nonce:#x}, got {:?} seq {} of session {:#x}",
                pong.kind,
                pong.seq,
                pong.nonce
            );
        }
        if echoed.len() != size || echoed[..size.min(8)] != seq.to_le_bytes()[..size.min(8)] {
            bail!("Pong seq {seq} does not carry the payload that was sent ({} bytes back, {size} sent)", echoed.len());
        }
        if seq >= warmup {
            rtt.record(now.saturating_sub(pong.sent_ns));
        }
    }
    let total = warmup + count;
    if send_end(sink, nonce, total, total, total * size as u64)? == Delivery::PeerGone {
        return Ok(WriterEnd::PeerGone { sent: total });
    }
    report.elapsed_ns = now_ns() - t0;
    report.size_bytes = size as u64;
    report.count = count;
    report.warmup = warmup;
    report.bytes = count * size as u64;
    report.latency_kind = "round_trip".into();
    report.latency_ns = rtt.summary();
    report.verified = true;
    report.set_rates(CpuTime::now().since(cpu0));
    Ok(WriterEnd::Finished(Box::new(report)))
}

/// How a reader's run ended.
#[derive(Debug)]
pub enum ReaderEnd {
    /// End arrived; the report says whether everything verified.
    Finished(Box<Report>),
    /// The writer went away inside a frame after `received` whole messages.
    Truncated {
        received: u64,
        have: usize,
        need: usize,
    },
    /// The writer went away between frames without sending End.
    NoEnd { received: u64 },
}

/// Runs the reader side: verify, echo Pings through `back`, stop at End.
pub fn run_reader<S: FrameSource, B: FrameSink>(
    setup: &Setup,
    src: &mut S,
    mut back: Option<&mut B>,
) -> Result<ReaderEnd> {
    let text = setup.args.mode == Mode::Text;
    let mut report = setup.report("reader");
    report.latency_kind = "one_way".into();
    let mut lat = Latency::new();
    let mut session = src.session();
    let preset_session = session.is_some();
    // Sequence bookkeeping: every Data/Ping must come once, in order.
    let (mut expected, mut received, mut bytes_all) = (0u64, 0u64, 0u64);
    let (mut missing, mut repeated, mut bad_content) = (0u64, 0u64, 0u64);
    let (mut timed, mut timed_bytes, mut warm) = (0u64, 0u64, 0u64);
    let mut t0 = None;
    let mut cpu0 = CpuTime::now();
    let mut stdout = io::stdout().lock();
    loop {
        let (h, payload) = match src.recv()? {
            Incoming::Frame(h, p) => (h, p),
            Incoming::Closed => return Ok(ReaderEnd::NoEnd { received }),
            Incoming::ClosedMidFrame { have, need } => {
                return Ok(ReaderEnd::Truncated {
                    received,
                    have,
                    need,
                })
            }
        };
        let now = now_ns();
        match session {
            Some(s) if s == h.nonce => {}
            Some(_) if !preset_session && h.seq == 0 && h.kind != Kind::End => {
                // A new session began: what came before was left by an earlier run.
                narrate!(
                    "a new session began (seq 0 of {:#x}); the {received} messages before it were left by an earlier run and are discarded",
                    h.nonce
                );
                report.stale_skipped += received;
                (
                    expected,
                    received,
                    bytes_all,
                    missing,
                    repeated,
                    bad_content,
                ) = (0, 0, 0, 0, 0, 0);
                (timed, timed_bytes, warm, t0) = (0, 0, 0, None);
                lat = Latency::new();
                session = Some(h.nonce);
            }
            None if h.seq == 0 => session = Some(h.nonce),
            _ => {
                report.stale_skipped += 1;
                continue;
            }
        }
        if h.kind == Kind::End {
            let claimed = parse_end(payload).context("End frame")?;
            let end_ok = claimed == (received, bytes_all) && h.seq == received;
            if !end_ok {
                narrate!(
                    "End says {} messages / {} bytes were sent; {} / {} arrived",
                    claimed.0,
                    claimed.1,
                    received,
                    bytes_all
                );
            }
            report.verified = end_ok && missing == 0 && repeated == 0 && bad_content == 0;
            if missing + repeated + bad_content > 0 {
                narrate!("{missing} messages missing, {repeated} repeated or out of order, {bad_content} with wrong content");
            }
            let elapsed = t0.map_or(0, |t| now.saturating_sub(t));
            report.elapsed_ns = elapsed;
            report.count = if text { received } else { timed };
            report.bytes = if text { bytes_all } else { timed_bytes };
            report.warmup = warm;
            report.latency_ns = lat.summary();
            report.set_rates(CpuTime::now().since(cpu0));
            return Ok(ReaderEnd::Finished(Box::new(report)));
        }
        if h.kind == Kind::Pong {
            bail!(
                "a reader does not expect a Pong (seq {}): is a second writer connected?",
                h.seq
            );
        }
        // Sequence check: a gap means lost messages, a step back a repeat.
        if h.seq != expected {
            if h.seq > expected {
                missing += h.seq - expected;
            } else {
                repeated += 1;
            }
        }
        expected = h.seq + 1;
        received += 1;
        bytes_all += payload.len() as u64;
        if !text {
            let n = payload.len().min(8);
            if payload[..n] != h.seq.to_le_bytes()[..n] {
                bad_content += 1;
            }
        }
        if h.is_warmup() {
            warm += 1;
        } else {
            if t0.is_none() {
                t0 = Some(now);
                cpu0 = CpuTime::now();
            }
            timed += 1;
            timed_bytes += payload.len() as u64;
            lat.record(now.saturating_sub(h.sent_ns));
            report.size_bytes = report.size_bytes.max(payload.len() as u64);
        }
        if text {
            writeln!(
                stdout,
                "#{} ({} B, {} after it was sent): {}",
                h.seq,
                payload.len(),
                crate::timing::fmt_ns(now.saturating_sub(h.sent_ns)),
                String::from_utf8_lossy(payload)
            )
            .context("writing to stdout")?;
        }
        if h.kind == Kind::Ping {
            let Some(back) = back.as_deref_mut() else {
                bail!("got a Ping (pingpong mode) but this reader has no way back to the writer");
            };
            let pong = Fields {
                kind: Kind::Pong,
                flags: h.flags,
                nonce: h.nonce,
                seq: h.seq,
                sent_ns: h.sent_ns,
            };
            let header = encode_header(pong, payload)?;
            if back.send(&header, payload)? == Delivery::PeerGone {
                return Ok(ReaderEnd::NoEnd { received });
            }
        }
    }
}

impl WriterEnd {
    /// The report, or an error that says the reader left (`"closed the pipe"`).
    pub fn into_report(self, reader_left: &str) -> Result<Report> {
        match self {
            WriterEnd::Finished(r) => Ok(*r),
            WriterEnd::PeerGone { sent } => {
                bail!("reader {reader_left} after {sent} messages; stopping")
            }
        }
    }
}

impl ReaderEnd {
    /// The report, or an error that says how the writer left (`what` = "the pipe").
    pub fn into_report(self, what: &str) -> Result<Report> {
        match self {
            ReaderEnd::Finished(r) => Ok(*r),
            ReaderEnd::Truncated { received, have, need } => bail!(
                "truncated stream: the writer closed {what} in the middle of a frame ({have} of {need} bytes) after {received} whole messages"
            ),
            ReaderEnd::NoEnd { received } => bail!(
                "the writer closed {what} after {received} messages without sending End: it did not finish"
            ),
        }
    }
}

/// Prints the report and turns "not verified" into a failing exit status.
pub fn conclude(report: &Report, json: bool) -> Result<ExitCode> {
    report.print(json);
    if !report.verified {
        bail!("verification failed: messages were missing, repeated, corrupt or unaccounted for (see above)");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::MAX_PAYLOAD;
    use clap::Parser;
    use std::collections::VecDeque;

    #[derive(Parser)]
    struct A {
        #[command(flatten)]
        c: CommonArgs,
    }

    fn setup(args: &[&str]) -> Setup {
        let mut v = vec!["t"];
        v.extend_from_slice(args);
        Setup {
            program: "test".into(),
            mechanism: "memory".into(),
            flavour: "queue".into(),
            wait: "none".into(),
            args: A::parse_from(v).c,
            max_payload: MAX_PAYLOAD,
        }
    }

    /// An in-memory mechanism: frames go into a queue, whole.
    #[derive(Default)]
    struct Queue {
        frames: VecDeque<(Vec<u8>, Vec<u8>)>,
        current: Vec<u8>,
    }
    impl FrameSink for Queue {
        fn send(&mut self, h: &[u8; HEADER_LEN], p: &[u8]) -> Result<Delivery> {
            self.frames.push_back((h.to_vec(), p.to_vec()));
            Ok(Delivery::Sent)
        }
    }
    impl FrameSource for Queue {
        fn recv(&mut self) -> Result<Incoming<'_>> {
            let Some((h, p)) = self.frames.pop_front() else {
                return Ok(Incoming::Closed);
            };
            self.current = [h, p].concat();
            match crate::frame::decode(&self.current, MAX_PAYLOAD)? {
                crate::frame::Decoded::Frame { header, total } => {
                    Ok(Incoming::Frame(header, &self.current[HEADER_LEN..total]))
                }
                other => bail!("{other:?}"),
            }
        }
    }

    #[test]
    fn stream_is_verified_end_to_end() {
        let s = setup(&[
            "--mode", "stream", "--count", "50", "--size", "100", "--warmup", "5",
        ]);
        let mut q = Queue::default();
        let w = run_writer::<_, Queue>(&s, &mut q, None, &mut io::empty()).unwrap();
        let WriterEnd::Finished(wr) = w else { panic!() };
        assert_eq!(wr.count, 50);
        let r = run_reader::<_, NoWayBack>(&s, &mut q, None).unwrap();
        let ReaderEnd::Finished(rr) = r else {
            panic!("{r:?}")
        };
        assert!(rr.verified);
        assert_eq!((rr.count, rr.warmup, rr.bytes), (50, 5, 5000));
    }

    #[test]
    fn a_lost_message_fails_verification() {
        let s = setup(&["--mode", "stream", "--count", "10", "--warmup", "0"]);
        let mut q = Queue::default();
        run_writer::<_, Queue>(&s, &mut q, None, &mut io::empty()).unwrap();
        q.frames.remove(4);
        let ReaderEnd::Finished(rr) = run_reader::<_, NoWayBack>(&s, &mut q, None).unwrap() else {
            panic!()
        };
        assert!(!rr.verified);
    }

    #[test]
    fn stale_frames_of_another_session_are_skipped_and_counted() {
        let s = setup(&["--mode", "stream", "--count", "10", "--warmup", "0"]);
        let mut old = Queue::default();
        run_writer::<_, Queue>(&s, &mut old, None, &mut io::empty()).unwrap();
        let mut q = Queue::default();
        run_writer::<_, Queue>(&s, &mut q, None, &mut io::empty()).unwrap();
        // Leftovers of a crashed run: its frames 3..7, no End, before the new session.
        let leftovers: Vec<_> = old.frames.drain(..).skip(3).take(4).collect();
        for f in leftovers.into_iter().rev() {
            q.frames.push_front(f);
        }
        let ReaderEnd::Finished(rr) = run_reader::<_, NoWayBack>(&s, &mut q, None).unwrap() else {
            panic!()
        };
        assert!(rr.verified, "{rr:?}");
        assert_eq!(rr.stale_skipped, 4);
        assert_eq!(rr.count, 10);
    }

    #[test]
    fn no_end_is_reported_as_such() {
        let s = setup(&["--mode", "stream", "--count", "10", "--warmup", "0"]);
        let mut q = Queue::default();
        run_writer::<_, Queue>(&s, &mut q, None, &mut io::empty()).unwrap();
        q.frames.pop_back();
        let r = run_reader::<_, NoWayBack>(&s, &mut q, None).unwrap();
        assert!(matches!(r, ReaderEnd::NoEnd { received: 10 }), "{r:?}");
        assert!(r
            .into_report("the queue")
            .unwrap_err()
            .to_string()
            .contains("without sending End"));
    }

    #[test]
    fn text_lines_become_messages_and_an_oversized_line_is_refused() {
        let mut s = setup(&["--mode", "text"]);
        s.max_payload = 10;
        let mut q = Queue::default();
        let mut input = &b"hello\nworld\r\n"[..];
        let WriterEnd::Finished(wr) = run_writer::<_, Queue>(&s, &mut q, None, &mut input).unwrap()
        else {
            panic!()
        };
        assert_eq!((wr.count, wr.bytes), (2, 10));
        let mut q = Queue::default();
        let mut input = &b"ok\nthis line is too long\n"[..];
        let e = run_writer::<_, Queue>(&s, &mut q, None, &mut input).unwrap_err();
        assert!(
            e.to_string().contains("line 2 is 21 bytes") && e.to_string().contains("10 bytes"),
            "{e}"
        );
        // The line before it was delivered and the session closed cleanly.
        let ReaderEnd::Finished(rr) = run_reader::<_, NoWayBack>(&s, &mut q, None).unwrap() else {
            panic!()
        };
        assert!(rr.verified);
        assert_eq!(rr.count, 1);
    }
}
