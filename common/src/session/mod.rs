//! The protocol of the three modes as state machines that do no I/O.
//!
//! Every pair runs the same protocol (text, stream, pingpong), so the benchmark compares
//! mechanisms rather than six different loops. But a learner must see each mechanism's own
//! system calls in its own files. So this module holds the protocol *without* the calls,
//! in the style of quinn-proto and rustls: a [`WriterSession`] says what to send next and
//! takes the answers; a [`ReaderSession`] takes each received frame and says what to do
//! with it. The loop that moves the bytes (`write`/`read`, `msgsnd`/`msgrcv`, the ring's
//! copy and publish, `send`/`recv`) lives in the mechanism's `writer.rs` and `reader.rs`:
//!
//! ```
//! use common::session::{Next, WriterSession, FrameBuf};
//! # use common::session::{Action, ReaderSession};
//! # let setup = common::session::example_setup(&["--mode", "stream", "--count", "3"]);
//! let mut session = WriterSession::new(&setup);
//! let mut frame = FrameBuf::new();
//! let mut wire = Vec::new(); // stands for a pipe: the real loop calls write(2) here
//! loop {
//!     match session.next(&mut frame).unwrap() {
//!         Next::Send(out) => wire.extend_from_slice(&out.to_vec()),
//!         Next::AwaitAnswer | Next::NeedLine => unreachable!("stream mode asks for neither"),
//!         Next::Done => break,
//!     }
//! }
//! let report = session.finish();
//! assert_eq!(report.count, 3);
//! # let mut reader = ReaderSession::new(&setup);
//! # let mut rest = &wire[..];
//! # while let Ok(common::frame::Decoded::Frame { header, total }) = common::frame::decode(rest, 1 << 20) {
//! #     let action = reader.on_frame(&header, &rest[common::frame::HEADER_LEN..total]).unwrap();
//! #     if matches!(action, Action::Done) { break }
//! #     rest = &rest[total..];
//! # }
//! # assert!(reader.finish().verified);
//! ```
//!
//! What the sessions keep, so every mechanism is measured and checked the same way:
//! - **the frames**: a random session nonce, sequence numbers from 0, the warm-up flag,
//!   the `sent_ns` stamp taken as the frame is built, a payload whose first 8 bytes carry
//!   the sequence number, and a closing End frame with the count and bytes sent;
//! - **verification** (reader): sequence (gaps, repeats), session (stale frames of an
//!   earlier run are skipped and counted), content, and the End frame's totals; the
//!   checksum is checked by the frame decoder before a frame reaches the session;
//! - **timing**: the clock is read at the same points for every mechanism, when a frame
//!   is built (writer) and when it is handed to the session (reader, and the writer's
//!   Pong); in pingpong a Ping's `sent_ns` is the clock read that timed the Pong before it,
//!   so a round trip costs one clock read. The writer seals each Ping (header, sequence
//!   number, checksum) while the Ping before it is out, and writes only its send time (the
//!   checksum XORed with that field's share, [`crate::resum::SendTime`]) once the Pong is
//!   in; the round trip's histogram sample is recorded then too. So a round trip includes
//!   the writer's check of the Pong, the stamp, the copy in and the publish, not the
//!   Ping's building, as a sender that prepares its next message while it waits would;
//!   a stream of payloads under [`SAMPLED_BELOW`] times one Data frame in
//!   [`LATENCY_EVERY`] (the first timed one and one of each block of sequence numbers;
//!   the others carry `sent_ns` 0 and cost neither side a clock read), and the reader's
//!   report says how many it timed;
//!   the timed part starts after the warm-up;
//! - **checksums a sender derives**: the writer's timed payload changes only in its first
//!   8 bytes, and a Pong differs from its Ping only in the kind byte, so their checksums are
//!   derived from the bytes that changed ([`crate::resum`]); every receiver still checks the
//!   checksum over every byte it takes.
//!
//! Nothing here allocates, prints or takes a lock per message, except text mode's one
//! line of narration per message, which is not timed.

mod buf;
mod reader;
mod writer;

#[cfg(test)]
mod tests;

pub use buf::{FrameBuf, Outgoing};

/// A stream times one Data frame in this many for its one-way latency: the writer stamps
/// `sent_ns` on the first timed frame and on one frame of each block of this many
/// sequence numbers ([`times_latency`]), and 0 on the others, and the reader reads the
/// clock for the stamped ones only. Two clock reads per frame (~20 ns each through the
/// vDSO) were a tenth of each side's time in a 4 KiB shared-memory stream; a sample of 1 in
/// 16 still gives ten thousand latencies and more in the bench's runs of small frames.
/// Payloads of [`SAMPLED_BELOW`] and more, text mode and pingpong time every frame.
pub const LATENCY_EVERY: u64 = 16;

/// Stream payloads from this size on are all timed: a frame takes a microsecond or more
/// there, the clock reads a few per cent of it, and a run has few enough frames (the
/// bench's 1 GiB of 1 MiB frames is 1024) that a sample would leave its tail to chance.
pub const SAMPLED_BELOW: usize = 16 << 10;

/// Whether a stream writer stamps the Data frame `seq` of session `nonce` (one of each
/// block of [`LATENCY_EVERY`] sequence numbers). The place in the block is drawn from the
/// nonce and the block's number, not fixed: a fixed one (every multiple of 16, say) would
/// always time the same frame of a writer's batch (`socket --batch` sends a whole number
/// of frames per call, and the first of a batch waits for the rest to be built), which
/// would bias the latencies.
pub fn times_latency(nonce: u64, seq: u64) -> bool {
    // splitmix64's finaliser: every input bit moves about half the output bits.
    let mut z = nonce ^ (seq / LATENCY_EVERY).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    seq % LATENCY_EVERY == z % LATENCY_EVERY
}

/// The report's note when fewer messages were timed for their one-way latency than were
/// received: "one-way latency from N of the M timed messages: ...".
pub fn sampled_note(samples: u64, timed: u64) -> Option<String> {
    (samples > 0 && samples < timed).then(|| {
        format!(
            "one-way latency from {samples} of the {timed} timed messages: the writer stamps \
             one in each block of {LATENCY_EVERY} sequence numbers (and the first), sparing \
             both sides a clock read per message"
        )
    })
}
pub use reader::{Action, InPlace, PongInPlace, ReaderSession, TextLine};
pub use writer::{Next, WriterSession};

use std::process::ExitCode;

use anyhow::bail;

use crate::timing::{now_ns, Report};

/// A random session id: std's per-process random hash keys, mixed with pid and time.
pub fn new_nonce() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one((std::process::id(), now_ns()))
}

/// Prints the report and turns "not verified" into a failing exit status, where this side
/// is the one that verifies (a stream or text writer leaves that to its reader).
pub fn conclude(report: &Report, json: bool) -> anyhow::Result<ExitCode> {
    report.print(json);
    if report.checks_here() && !report.verified {
        bail!("verification failed: messages were missing, repeated, corrupt or unaccounted for (see above)");
    }
    Ok(ExitCode::SUCCESS)
}

/// A [`Setup`](crate::setup::Setup) parsed from flags, for examples and tests.
#[doc(hidden)]
pub fn example_setup(flags: &[&str]) -> crate::setup::Setup {
    use clap::Parser;
    #[derive(Parser)]
    struct A {
        #[command(flatten)]
        run: crate::cli::RunArgs,
        #[command(flatten)]
        meet: crate::cli::MeetArgs,
        #[command(flatten)]
        out: crate::cli::OutputArgs,
    }
    crate::program!(A);
    use crate::cli::Program;
    let argv = std::iter::once("example").chain(flags.iter().copied());
    crate::setup::Setup {
        program: "example",
        mechanism: crate::setup::Mechanism::Pipe,
        flavour: crate::setup::Flavour::Spawn,
        wait: crate::setup::Wait::Block,
        args: A::parse_from(argv).common(),
        max_payload: crate::frame::MAX_PAYLOAD,
    }
}

/// Whether a timed payload starts with its frame's sequence number (little-endian, cut to
/// the payload's length when shorter than 8 bytes): the content check of both sides. One
/// 8-byte comparison, not a call to `memcmp`: it runs once per message.
pub(crate) fn carries_seq(payload: &[u8], seq: u64) -> bool {
    match payload.first_chunk::<8>() {
        Some(head) => u64::from_le_bytes(*head) == seq,
        None => payload[..] == seq.to_le_bytes()[..payload.len()],
    }
}
