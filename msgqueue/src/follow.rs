//! The reader's first message: the writer's Hello, which says what the writer runs, so a
//! reader started with no mode flags runs whatever the writer runs. **A first reading may
//! skip this file**: `reader.rs` calls [`receive`] once, before its loop.
//!
//! What a reader asks `msgrcv` for depends on the mode (stream: msgtyp 0; pingpong: -100,
//! so that it never takes its own replies; text: `--type T`), and the mode is what the
//! Hello says. So the Hello has a type of its own, [`types::HELLO`] (102), and the reader
//! asks for exactly that type first, whatever else is queued; a POSIX Hello has the
//! highest priority ([`types::HELLO_PRIORITY`]), so `mq_receive` takes it first. Then:
//! 1. `common::session::ReaderSession` checks it against this reader's own flags
//!    (`--mode`, `--size`, `--count`, `--warmup`) and narrates it; a flag that contradicts
//!    it is an error naming both values and the fix. So is `--type T` (it selects text
//!    lines, M4) with a writer that runs another mode;
//! 2. a reader that refuses marks its line of the pair file `refused` before it removes
//!    the queue, so the writer says that the reader refused its Hello instead of "someone
//!    removed the queue";
//! 3. a typed reader that leaves messages of other types for another reader puts the
//!    Hello back ([`Greeting::put_back`]): the next reader follows the same session.

use anyhow::{bail, Result};
use common::cli::Mode;
use common::hello::Hello;
use common::narrate;
use common::peer::Identity;
use common::session::{Action, ReaderSession};
use common::setup::Role;
use nix::mqueue::mq_timedreceive;

use crate::sysv::{self, Message, SysvQueue};
use crate::watch::{Gone, PeerWatch, Slot};
use crate::{frame_of, typed, types, Rx};

/// The writer's Hello as it came: its session, and the message, to put back.
pub struct Greeting {
    /// What the writer runs.
    pub hello: Hello,
    /// The writer's session nonce.
    pub nonce: u64,
    /// The whole frame, header and payload.
    frame: Vec<u8>,
}

impl Greeting {
    /// `msgsnd` of the Hello again, as type 102, for the next reader of this session (a
    /// typed reader leaves the rest for it, M4). The writer has finished, so the queue has
    /// room: it holds less than when the Hello was first sent.
    pub fn put_back(&self, q: SysvQueue) -> Result<()> {
        let mut m = Message::boxed();
        m.mtype = types::HELLO as libc::c_long;
        m.mtext[..self.frame.len()].copy_from_slice(&self.frame);
        if let Err(e) = sysv::msgsnd(q, &m, self.frame.len(), libc::IPC_NOWAIT) {
            bail!(
                "{}",
                sysv::failure("msgsnd (putting the Hello back)", q, &e)
            );
        }
        Ok(())
    }
}

/// Waits for the writer's Hello on `rx` and checks it with `session` (see the module
/// docs); `msgtyp` is this reader's `--type` (0: none). Frames before the Hello are
/// another session's, skipped and counted by the session.
pub fn receive(
    rx: &mut Rx,
    session: &mut ReaderSession,
    watch: &PeerWatch,
    msgtyp: i64,
    max_payload: usize,
) -> Result<Greeting> {
    let (hello, typed) = (types::HELLO, msgtyp != 0);
    let waiting = match rx {
        Rx::Sysv { .. } if typed => format!("waiting in msgrcv(msgtyp {hello}, IPC_NOWAIT), polled every 2 ms, for the writer's Hello, the first message of its session: it says what the writer runs"),
        Rx::Sysv { .. } => format!("waiting in msgrcv(msgtyp {hello}) for the writer's Hello, the first message of its session: it says what the writer runs, and this reader follows it; a watchdog checks every 100 ms that the writer lives"),
        Rx::Posix { .. } => format!("waiting in mq_timedreceive (100 ms slices, checking the writer between them) for the writer's Hello, the first message of its session (priority {}, the highest, so it comes out first): it says what the writer runs, and this reader follows it", types::HELLO_PRIORITY),
    };
    match watch.absent() {
        Some(absent) => narrate!("{waiting}; {absent}"),
        None => narrate!("{waiting}"),
    }
    loop {
        let got = match rx {
            // msgrcv(2) of type 102 only: the Hello, whatever else is queued (M4).
            Rx::Sysv { q, msg, .. } if typed => {
                typed::poll(*q, msg, (hello, true), watch)?.map(|(_, n)| n)
            }
            Rx::Sysv { q, msg, .. } => {
                watch.recv_sysv(*q, hello, |t| sysv::msgrcv(*q, msg, t, 0))?
            }
            // mq_timedreceive(3): the highest priority first, and the Hello has it.
            Rx::Posix { q, buf, prio } => watch.recv_posix(|d| mq_timedreceive(q, buf, prio, d))?,
        };
        let Some(n) = got else {
            return Err(no_hello(watch));
        };
        let frame = rx.text(n);
        let (header, payload) = frame_of(frame, max_payload)?;
        let hello = match session.on_frame(&header, payload) {
            Ok(Action::Hello(h)) => h.clone(),
            Ok(_) => continue,
            Err(e) => return Err(refuse(watch, e)),
        };
        if typed && hello.mode != Mode::Text {
            let e = anyhow::anyhow!(
                "the writer ({}) runs {}; this reader was started with --type {msgtyp}, which selects text lines by their type (M4): restart it without --type",
                hello.program,
                hello.flags()
            );
            return Err(refuse(watch, e));
        }
        return Ok(Greeting {
            hello,
            nonce: header.nonce,
            frame: frame.to_vec(),
        });
    }
}

/// A reader that refuses the writer's Hello says so in its line of the pair file, before
/// its cleanup removes the queue: the writer then names the cause.
fn refuse(watch: &PeerWatch, e: anyhow::Error) -> anyhow::Error {
    match watch.write(Role::Reader, Slot::Refused(Identity::me())) {
        Ok(()) => e,
        Err(w) => e.context(format!("(and the pair file could not say so: {w:#})")),
    }
}

/// Why no Hello came: the writer never came, died or stalled, or it finished and its
/// Hello is not in the queue (another reader took its session).
fn no_hello(watch: &PeerWatch) -> anyhow::Error {
    match watch.verdict() {
        Some(g @ Gone::NeverCame(_)) => anyhow::anyhow!("{}", g.describe(Role::Writer)),
        Some(Gone::Finished(_)) | None => anyhow::anyhow!(
            "the writer finished before this reader came, and no Hello of its session is in the queue (another reader took the session): nothing to follow"
        ),
        Some(g) => anyhow::anyhow!("{}, before its Hello", g.describe(Role::Writer)),
    }
}
