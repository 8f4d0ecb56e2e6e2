//! `--zero-copy` and `--verify`: the shared-memory writers' flags for loans (`shm`, `mmap`),
//! and what both programs of such a pair say about them. The loans themselves are the
//! ring's ([`crate::ring::spsc`], "Loans"):
//! [`Producer::frame_mut`](crate::ring::Producer::frame_mut) lends the writer the
//! reserved bytes of ring 0 to build a frame in, and
//! [`Consumer::recv_in_place`](crate::ring::Consumer::recv_in_place) lends the reader a
//! published record to read where it lies, until its next receive.

use crate::cli::{bad_flag, Mode};
use crate::hello::{Hello, Verify};
use crate::narrate;
use anyhow::Result;

/// The writer's zero-copy flags; the reader has none: it follows the writer's Hello.
#[derive(clap::Args, Debug, Clone)]
pub struct LoanArgs {
    /// Build each timed frame where it lies in the ring (a slot lent by reserve) and let
    /// the reader read it there: no payload is copied on either side. The reader follows.
    #[arg(long)]
    pub zero_copy: bool,

    /// How much of each message is checked (seq only with --zero-copy; both reports say
    /// which).
    #[arg(long, value_enum, value_name = "LEVEL", default_value_t = Verify::Full)]
    pub verify: Verify,
}

impl LoanArgs {
    /// `--verify seq` means something only for frames read in place: the copying path
    /// reads every payload byte anyway (it copies them out), so it is a bad flag (exit 2)
    /// there.
    pub fn check(&self) -> Result<()> {
        if self.verify == Verify::Seq && !self.zero_copy {
            return Err(bad_flag(
                "--verify seq needs --zero-copy: without it every payload is copied out of the \
                 ring, which reads every byte, so only --verify full applies; add --zero-copy, \
                 or leave out --verify seq",
            ));
        }
        Ok(())
    }

    /// The writer's line at start: what zero-copy (and `--verify seq`) mean here.
    pub fn say(&self, text: bool) {
        if !self.zero_copy {
            return;
        }
        narrate!(
            "zero-copy: frames are built where they lie in the ring and read there; no payload is copied{}",
            if text {
                " (text mode: each line is copied in from stdin, and the reader reads it in place)"
            } else {
                " (the Hello and End are copied: the reader learns the mode from the Hello)"
            }
        );
        if self.verify == Verify::Seq {
            narrate!("{}", SEQ_MEANS);
        }
    }

    /// The writer's report notes.
    pub fn notes(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.zero_copy {
            v.push(
                "zero-copy: each timed frame was built in a slot of ring 0 lent by reserve_in_place() \
                 (frame_mut) and published there; no payload was copied"
                    .to_string(),
            );
        }
        if self.verify == Verify::Seq {
            v.push(SEQ_MEANS.to_string());
        }
        v
    }
}

/// What `--verify seq` checks, and what it does not.
pub const SEQ_MEANS: &str =
    "--verify seq: each timed frame's checksum covers its 40-byte header only; \
     the reader checks sequence numbers, the session, each payload's length and its first 8 bytes \
     (the sequence number), and reads no other payload byte";

/// The reader's line once the Hello has come, if the writer lends its frames.
pub fn say_following(hello: &Hello) {
    if hello.zero_copy {
        narrate!(
            "the writer builds its frames in place (--zero-copy): this reader follows, reading each one where it lies in ring 0{}; no payload is copied",
            if hello.mode == Mode::Pingpong {
                " and building each Pong in place in ring 1"
            } else {
                ""
            }
        );
    }
}

/// The reader's report notes on what it followed.
pub fn reader_notes(hello: Option<&Hello>) -> Vec<String> {
    let Some(h) = hello else {
        return Vec::new();
    };
    let mut v = Vec::new();
    if h.zero_copy {
        v.push(
            "zero-copy: every frame after the Hello was read where it lies in ring 0 \
             (recv_in_place), lent to this reader until its next receive"
                .to_string(),
        );
    }
    if h.verify == Verify::Seq {
        v.push(SEQ_MEANS.to_string());
    }
    v
}
