//! The writer's Hello and the reader's answer: what both ends agree on before the first message.
//!
//! Every session opens with the writer's Hello frame (`common::hello`): its program, mode,
//! size, count, warm-up and capacity. The reader checks it against its own flags and runs
//! whatever it says. Over a socket the reader also **answers** it, on the same connection
//! (K1): with a Hello of its own, carrying the writer's session nonce, the mode, size and
//! count it now runs (the writer's), its program and its receive buffer. The writer waits
//! for that answer before its first message, so:
//! - a reader that refuses the Hello (a `--mode` or `--size` that contradicts it) closes
//!   the connection before anything else was sent, and the writer's `read` returns 0:
//!   "the reader closed the connection right after this writer's Hello", every time,
//!   instead of "after 3071 messages" in stream mode, where the writer would otherwise have
//!   filled the socket buffers before it noticed;
//! - a writer knows whom it talks to (`the reader's answer: socket-reader 0.1.0 runs ...`)
//!   before any message is timed.
//!
//! It costs one round trip per run, before the timed part.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::frame::{encode_header, Fields, Header, Kind, Reassembler, HEADER_LEN};
use common::hello::Hello;
use common::setup::Setup;
use common::stream;
use common::timing::now_ns;

use crate::rendezvous::wait_readable;
use crate::Stream;

/// The reader's answer to the Hello in `to`: a Hello frame of `setup` (which has followed
/// the writer's), in the writer's session, stating `capacity` (the receive buffer).
pub fn answer(setup: &Setup, to: &Header, capacity: u64) -> Result<Vec<u8>> {
    let payload = Hello::of(setup, capacity).encode();
    let fields = Fields {
        kind: Kind::Hello,
        flags: 0,
        nonce: to.nonce,
        seq: 0,
        sent_ns: now_ns(),
    };
    let header = encode_header(fields, &payload).context("encoding the reader's Hello")?;
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.extend_from_slice(&header);
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// The writer waits for the reader's answer: `poll` (up to `timeout`), then `read` until a
/// whole frame is there. `Ok(None)` when the reader closed the connection instead (it
/// refused the Hello; its own output says why).
pub fn await_answer(
    mut conn: &Stream,
    frames: &mut Reassembler,
    nonce: u64,
    timeout: Duration,
) -> Result<Option<Hello>> {
    loop {
        if let Some((header, payload)) = frames.next_frame()? {
            if header.kind != Kind::Hello || header.nonce != nonce {
                bail!(
                    "the reader answered this writer's Hello with a {:?} frame of session {:#x} (expected its own Hello, session {nonce:#x}): is it an ipc-study reader of this version?",
                    header.kind,
                    header.nonce
                );
            }
            return Hello::decode(payload)
                .context("the reader's answer to the Hello")
                .map(Some);
        }
        if !wait_readable(conn, timeout)? {
            bail!(
                "the reader accepted the connection but did not answer this writer's Hello within {timeout:?}: is it an ipc-study reader of this version?"
            );
        }
        if stream::read(&mut conn, frames)? == 0 {
            return Ok(None);
        }
    }
}

/// The reader's half: `getsockopt(SO_RCVBUF)` (the capacity its answer states), then one
/// `write` of the answer on the connection the Hello came in on. A writer that has
/// already closed its end is no error here: what it sent is still read, and the session
/// says whether End came.
pub fn reply(mut conn: &Stream, setup: &Setup, to: &Header) -> Result<()> {
    let frame = answer(setup, to, conn.receive_buffer()? as u64)?;
    let out = common::session::Outgoing::from_bytes(Kind::Hello, &frame)
        .unwrap_or_else(|| unreachable!("the frame holds a header"));
    stream::write_frame(&mut conn, out).map(drop)
}

/// The reader at the writer's Hello, which the session has checked against the reader's
/// flags: the Hello's size against `--max-size`, then [`Setup::follow`] (its mode, size,
/// count, warm-up), `TCP_NODELAY` for the Pongs in pingpong, and the [`reply`].
pub fn follow(
    h: &Hello,
    header: &Header,
    setup: &mut Setup,
    conn: &Stream,
    nagle: bool,
) -> Result<()> {
    if h.size > setup.max_payload as u64 {
        bail!(
            "the writer runs --size {}; this reader takes at most --max-size {}: restart it with --max-size {} or more",
            h.size,
            setup.max_payload,
            h.size
        );
    }
    setup.follow(h);
    crate::options::tune_pongs(conn, h.mode, nagle)?;
    reply(conn, setup, header)
}
