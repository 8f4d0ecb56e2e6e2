//! `socket-reader --show-reads` (K5): per message, how many `read(2)` calls it took.
//!
//! **A first reading may skip this file.** A stream keeps no message boundaries, so one
//! `read` may bring a piece of a frame, one frame or many. The reader counts the reads that
//! brought data (`Reassembler::reads`) and, with `--show-reads`, says for each frame how
//! many of them it took: none (it came with the frame before it), one, or several (it
//! arrived in pieces and its length field put it back together). For study, not for
//! timing: one line of narration per message.

use common::frame::{Header, Kind};
use common::narrate;

/// `--show-reads` (K5): how many `read` calls, `before` this frame and `after` it was
/// whole, it took. Zero means it came out of the read that finished the one before.
pub fn show(h: &Header, len: usize, before: u64, after: u64) {
    let what = match h.kind {
        Kind::Hello => format!("the writer's Hello ({len} B + 40 B header)"),
        _ => format!("message #{} ({len} B + 40 B header)", h.seq),
    };
    match after - before {
        0 => narrate!(
            "{what}: no new read(): it came out of read #{after} together with the message before it (K5)"
        ),
        1 => narrate!("{what}: 1 read() (#{after})"),
        n => narrate!(
            "{what}: {n} read() calls (#{}..#{after}): it arrived in pieces and was put back together by its length field (K5)",
            before + 1
        ),
    }
}
