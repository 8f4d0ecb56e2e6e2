//! Socket options: when to switch Nagle's algorithm off, and the socket buffers.
//!
//! **A first reading may skip this file.** The programs call it once connected:
//! [`tune_writer`] (`TCP_NODELAY` by [`wants_nodelay`], `SO_SNDBUF`), [`tune_reader`]
//! (`SO_RCVBUF`, at accept) and [`tune_pongs`] (`TCP_NODELAY` for a pingpong reader's
//! Pongs, once the writer's Hello has said pingpong). Each narrates what it set and returns
//! the report's notes about it.
//!
//! Man pages: socket(7) (SO_SNDBUF, SO_RCVBUF), tcp(7) (TCP_NODELAY, TCP_MAXSEG).

use anyhow::Result;
use common::cli::{CommonArgs, Mode};
use common::frame::HEADER_LEN;
use common::narrate;

use crate::Stream;

/// Whether the writer switches Nagle's algorithm off (`TCP_NODELAY`) for frames of
/// `frame` bytes (header included) over a connection whose segments carry `mss` bytes.
///
/// Nagle's algorithm holds a segment smaller than the MSS back while an earlier one is
/// unacknowledged, hoping to merge it with more data, and the peer delays its ACK (40 to
/// 200 ms on Linux) hoping to piggyback it on an answer. A message that someone waits for
/// (pingpong, text) must never be held: TCP_NODELAY. (With one writev per frame Nagle
/// seldom bites there, since each Pong acknowledges its Ping, but the tail of a frame
/// larger than a segment could be held.) In stream mode, frames smaller than a segment
/// gain from the merging (many per segment, fewer packets and reads); a frame of a segment
/// or more gains nothing, and Nagle would only hold back its last, partial segment:
/// TCP_NODELAY too. `--nagle` leaves it on whatever the mode, to see what it costs.
pub fn wants_nodelay(mode: Mode, frame: usize, mss: u32, nagle: bool) -> bool {
    !nagle && (mode != Mode::Stream || frame >= mss as usize)
}

/// The writer's socket options, narrated: `TCP_NODELAY` by [`wants_nodelay`] (TCP, unless
/// `--nagle`), and `SO_SNDBUF` if `--sock-buf` asks. Returns the report's notes about them.
pub fn tune_writer(
    conn: &Stream,
    sock_buf: Option<usize>,
    nagle: bool,
    c: &CommonArgs,
) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    // Only a TCP connection has segments (getsockopt TCP_MAXSEG) and Nagle's algorithm.
    if let Stream::Tcp(_) = conn {
        let (frame, mss) = (c.size + HEADER_LEN, conn.max_segment().unwrap_or(0));
        let nodelay = wants_nodelay(c.mode, frame, mss, nagle);
        if nodelay {
            conn.set_nodelay()?;
            narrate!("TCP_NODELAY set (MSS {mss} bytes, frames {frame} bytes): each message leaves at once, no Nagle delay");
        } else {
            narrate!("Nagle's algorithm on (MSS {mss} bytes, frames {frame} bytes): small frames are merged into full segments");
        }
        let state = if nodelay { "on" } else { "off (Nagle)" };
        notes.push(format!("TCP_NODELAY {state}"));
    }
    if let Some(bytes) = sock_buf {
        let got = conn.set_send_buffer(bytes)?;
        narrate!("SO_SNDBUF set: the kernel reports {got} bytes (it doubles the request)");
        notes.push(format!("SO_SNDBUF {got} bytes"));
    }
    Ok(notes)
}

/// The reader's receive buffer: `SO_RCVBUF` if `--sock-buf` asks (set at accept, before
/// any frame). Returns the report's note about it.
pub fn tune_reader(conn: &Stream, sock_buf: Option<usize>) -> Result<Option<String>> {
    let Some(bytes) = sock_buf else {
        return Ok(None);
    };
    let got = conn.set_receive_buffer(bytes)?;
    narrate!("SO_RCVBUF set: the kernel reports {got} bytes (it doubles the request)");
    Ok(Some(format!("SO_RCVBUF {got} bytes")))
}

/// The reader in pingpong, once the Hello said so: `TCP_NODELAY` for the Pongs (TCP,
/// unless `--nagle`). They are small answers, and with Nagle's algorithm one could wait
/// for the ACK of the previous segment (see [`wants_nodelay`] for the whole story).
pub fn tune_pongs(conn: &Stream, mode: Mode, nagle: bool) -> Result<()> {
    if mode != Mode::Pingpong || !matches!(conn, Stream::Tcp(_)) {
        return Ok(());
    }
    if nagle {
        narrate!("Nagle's algorithm left on for the Pongs (--nagle): no TCP_NODELAY");
        return Ok(());
    }
    conn.set_nodelay()?;
    narrate!("TCP_NODELAY set for the Pongs (pingpong): each one leaves at once, no Nagle delay");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nagle_stays_on_only_for_stream_frames_below_one_segment() {
        assert!(!wants_nodelay(Mode::Stream, 104, 1460, false));
        assert!(wants_nodelay(Mode::Stream, 1460, 1460, false));
        assert!(wants_nodelay(Mode::Pingpong, 104, 1460, false));
        assert!(wants_nodelay(Mode::Text, 104, 1460, false));
        assert!(!wants_nodelay(Mode::Pingpong, 1 << 20, 1460, true));
    }
}
