//! What the two ring programs agree on besides the file: one reader and one writer (a
//! third process is refused, naming the one already there), how each side waits (each
//! its own way, said once the writer's Hello has come), and a full ring narrated as it
//! happens (P6's analogue for a ring). The role files call these by name.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use common::hello::Hello;
use common::ring::{offsets, Producer, Region, Reserved, RingError, Role, Wait, HEADER_PAGE};
use common::session::WriterSession;
use common::stall::Stall;
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

/// The writer's wait for room in ring 0, with a wait longer than half a second narrated
/// as it starts and as it ends (P6's analogue for a ring: stop the reader with `kill
/// -STOP` and the writer says so). `tx` was made with an idle limit of at most
/// [`common::stall::TELL_AFTER`], so [`Producer::reserve`] returns `TimedOut` every half
/// second of a long wait; `limit` (`--timeout`, `None` in text mode) is counted across
/// those returns. `try_reserve` first asks, without waiting, whether the ring is full
/// right now: only then does a wait begin.
pub fn reserve_room(
    tx: &mut Producer,
    len: usize,
    full: &mut Stall,
    limit: Option<Duration>,
) -> Result<Reserved, RingError> {
    if tx.try_reserve(len)?.is_none() {
        full.begin();
    }
    let start = Instant::now();
    loop {
        match tx.reserve(len) {
            Ok(slot) => {
                full.end();
                return Ok(slot);
            }
            Err(RingError::TimedOut { what, .. }) => {
                full.tick();
                let waited = start.elapsed();
                if limit.is_some_and(|l| waited >= l) {
                    return Err(RingError::TimedOut { waited, what });
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// A [`Stall`] for ring 0 being full, as [`reserve_room`] counts and narrates it.
pub fn full_ring() -> Stall {
    Stall::new(
        "reserve()",
        "ring 0 is full",
        "ring 0 was full",
        "P6's analogue for a ring",
    )
}

/// How the two sides wait: each side of a ring waits its own way (the futex wake-ups
/// work whatever the other side does), so a different `--wait` here is run, and said.
pub fn say_waits(hello: &Hello, mine: Wait, asked: Option<Wait>) {
    let theirs = hello.wait;
    match asked {
        _ if mine == theirs => narrate!("both sides wait {mine}"),
        Some(_) => narrate!(
            "this reader waits {mine} (--wait), the writer {theirs}: each side of the ring waits its own way"
        ),
        None => narrate!(
            "this reader waits {mine}, the writer {theirs}: each side of the ring waits its own way (pass --wait {theirs} to wait as the writer does)"
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

/// mmap-writer's end when a wait fails. A wait on the ring ends with [`RingError::PeerGone`] when the reader's pid vanished
/// (checked every 100 ms while waiting): an expected end, said as every pair says it,
/// with what the file shows of the cause (cut under the map, a full file system). A
/// reader whose index in ring 0 stopped at the end of the Hello (`hello` bytes) took
/// nothing else: it refused this writer's settings (its own output says why).
pub fn reader_gone(
    session: &WriterSession,
    rf: &RingFile,
    hello: u64,
    e: RingError,
) -> anyhow::Error {
    match e {
        RingError::PeerGone { pid } => {
            warn!("peer (pid {pid}) is gone");
            if let Some(why) = rf.what_happened() {
                warn!("{why}");
            }
            if reader_index(rf).is_some_and(|taken| taken <= hello) {
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
fn reader_index(rf: &RingFile) -> Option<u64> {
    if rf.file.metadata().ok()?.len() < HEADER_PAGE as u64 {
        return None;
    }
    let mut b = [0u8; 8];
    rf.map.read_bytes(offsets::tail(0), &mut b).ok()?;
    Some(u64::from_le_bytes(b))
}
