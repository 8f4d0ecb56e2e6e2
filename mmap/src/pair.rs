//! What the two ring programs agree on besides the file: one reader and one writer (a
//! third process is refused, naming the one already there), how each side waits (the
//! reader as the writer's Hello says, or its own `--wait`, said once the Hello has come),
//! and how the writer tells a reader that left. The role files call these by name.

use std::path::Path;

use anyhow::anyhow;
use common::cli::Mode;
use common::hello::Hello;
use common::ring::{record_len, Producer, Region, RingError, Role, Wait, HEADER_PAGE};
use common::session::{ReaderSession, WriterSession};
use common::{narrate, warn};

use crate::rendezvous::RingFile;

/// What each `--wait` does, for the narration.
pub fn wait_means(w: Wait) -> &'static str {
    match w {
        Wait::Spin => "re-reading the other side's index in a loop",
        Wait::Block => "futex sleep on the other side's index until it wakes us",
        Wait::Adaptive => "spin about 20 us, then futex sleep",
    }
}

/// How the two sides wait: this reader follows the writer's wait, or runs its own
/// `--wait` (each side of a ring waits its own way: the futex wake-ups work whatever the
/// other side does), and says which.
pub fn say_waits(hello: &Hello, mine: Wait, asked: Option<Wait>) {
    let theirs = hello.wait;
    match asked {
        None => narrate!("both sides wait {mine}: this reader follows the writer's Hello"),
        Some(_) if mine == theirs => narrate!("both sides wait {mine}"),
        Some(_) => narrate!(
            "this reader waits {mine} (--wait), the writer {theirs}: each side of the ring waits its own way"
        ),
    }
}

/// The refusal of a second process of `role`: `pid` is the one already there (the creator,
/// if it has our role; else the peer that attached to it), named as a learner typed it.
pub(crate) fn second(path: &Path, role: Role, pid: i32, region: &Region) -> String {
    let program = common::peer::program_name(pid).unwrap_or_else(|| format!("mmap-{role}"));
    let how = if region.header().creator_pid == pid {
        format!("it was created by a {role}")
    } else {
        format!("a {role} attached to it")
    };
    format!(
        "{} already has a {role}: {how}, {program} (pid {pid}). A pair has one reader and one writer, \
         and a second {role} {}; stop that one, or use another --name/--path",
        path.display(),
        match role {
            Role::Reader => "would take frames meant for the first",
            Role::Writer => "would mix its frames into the first one's",
        }
    )
}

/// mmap-writer's end when a wait fails. A wait on the ring ends with
/// [`RingError::PeerGone`] when the reader's pid vanished (checked every 100 ms while
/// waiting): an expected end, said as every pair says it, with what the file shows of the
/// cause (cut under the map, a full file system). A reader whose index in ring 0 (`tx`'s
/// [`Producer::peer_index`]) stopped at the end of the Hello took nothing else: it refused
/// this writer's settings (its own output says why).
pub fn reader_gone(
    session: &WriterSession,
    rf: &RingFile,
    tx: &Producer,
    e: RingError,
) -> anyhow::Error {
    match e {
        RingError::PeerGone { pid } => {
            warn!("peer (pid {pid}) is gone");
            if let Some(why) = rf.what_happened() {
                warn!("{why}");
            }
            let hello = record_len(session.hello().encode().len()) as u64;
            if reader_index(rf, tx).is_some_and(|taken| taken <= hello) {
                return anyhow!(
                    "reader (pid {pid}) is gone right after this writer's Hello ({}), before taking any message: \
                     if it refused these settings, its own output says why; stopping",
                    session.hello().flags()
                );
            }
            session.reader_left(&format!("(pid {pid}) is gone"))
        }
        e => e.into(),
    }
}

/// Ring 0's consumer index as the reader last published it: how many bytes of frames it
/// has taken. After the reader is gone, this tells whether it took anything past the
/// writer's Hello. `None` when the file no longer holds its header page (cut under the
/// map: touching that page would be SIGBUS, F7).
fn reader_index(rf: &RingFile, tx: &Producer) -> Option<u64> {
    if rf.file.metadata().ok()?.len() < HEADER_PAGE as u64 {
        return None;
    }
    Some(tx.peer_index())
}

/// mmap-reader's end when a wait fails: [`RingError::PeerGone`] when the writer's pid
/// vanished (checked every 100 ms while waiting): it ended without End, so this run
/// failed; what the file shows of the cause (cut under the map, a full file system) is
/// said too.
pub fn writer_gone(session: &ReaderSession, rf: &RingFile, e: RingError) -> anyhow::Error {
    match e {
        RingError::PeerGone { pid } => {
            warn!("peer (pid {pid}) is gone");
            if let Some(why) = rf.what_happened() {
                warn!("{why}");
            }
            session.writer_left(&format!("its end of the ring (pid {pid} is gone)"), None)
        }
        e => e.into(),
    }
}

/// Whether the writer's Hello said text mode: a person types, so a wait may last.
pub fn follows_text(session: &ReaderSession) -> bool {
    session.writer_hello().is_some_and(|h| h.mode == Mode::Text)
}
