//! Socket options: when to switch Nagle's algorithm off, and the socket buffers.
//!
//! **A first reading may skip this file.** The programs call it once connected:
//! [`tune_writer`] (`TCP_NODELAY` by [`wants_nodelay`], `SO_SNDBUF`), [`tune_reader`]
//! (`SO_RCVBUF` and `SO_BUSY_POLL`, at accept) and [`tune_pongs`] (`TCP_NODELAY` for a
//! pingpong reader's Pongs, once the writer's Hello has said pingpong). Each narrates what
//! it set and returns the report's notes about it. [`check_busy_poll`] checks the reader's
//! `--busy-poll` before any socket exists.
//!
//! ## Busy polling (`socket-reader --busy-poll MICROSECONDS`)
//! A `read` on an empty socket normally sleeps, and the packet's arrival wakes it: an
//! interrupt, the network stack's softirq, a wake-up, a context switch. With `SO_BUSY_POLL`
//! the read first polls the network card's receive queue itself (the NAPI queue the
//! socket's last packet came from) for up to that many microseconds, and takes a packet
//! the moment it lands. What it trades: **a CPU**, spinning in the kernel for the whole wait
//! instead of sleeping (`top` shows the reader at 100 % while it waits), for a shorter and
//! steadier latency. The kernel lets any process set it up to `net.core.busy_read` (0 by
//! default: off); above that it wants `CAP_NET_ADMIN` (`setsockopt` fails with EPERM). On
//! loopback it has nothing to poll: loopback packets reach the socket through the kernel's
//! per-CPU backlog, not a device queue with a NAPI id, so the read sleeps as before (the
//! package README shows the count). It pays on a real network card, between machines (K3).
//!
//! Man pages: socket(7) (SO_SNDBUF, SO_RCVBUF, SO_BUSY_POLL), tcp(7) (TCP_NODELAY,
//! TCP_MAXSEG); the kernel's Documentation/networking/napi.rst ("Busy polling").

use std::io;

use anyhow::{anyhow, Context, Result};
use common::cli::{bad_flag, CommonArgs, Mode};
use common::frame::HEADER_LEN;
use common::narrate;

use crate::Stream;

/// Whether the writer switches Nagle's algorithm off (`TCP_NODELAY`) for frames of
/// `frame` bytes (header included) over a connection whose segments carry `mss` bytes.
///
/// Nagle's algorithm holds a segment smaller than the MSS back while an earlier one is
/// unacknowledged, hoping to merge it with more data, and the peer delays its ACK (40 to
/// 200 ms on Linux) hoping to piggyback it on an answer. A message that someone waits for
/// (pingpong, text) must never be held: TCP_NODELAY. (With one write per frame Nagle
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

/// The reader's options, set at accept, before any frame: `SO_RCVBUF` if `--sock-buf`
/// asks, `SO_BUSY_POLL` if `--busy-poll` does (checked by [`check_busy_poll`] already).
/// Returns the report's notes about them.
pub fn tune_reader(
    conn: &Stream,
    sock_buf: Option<usize>,
    busy_poll: Option<u32>,
) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    if let Some(bytes) = sock_buf {
        let got = conn.set_receive_buffer(bytes)?;
        narrate!("SO_RCVBUF set: the kernel reports {got} bytes (it doubles the request)");
        notes.push(format!("SO_RCVBUF {got} bytes"));
    }
    if let Some(usec) = busy_poll {
        let got = conn
            .set_busy_poll(usec)
            .map_err(|e| match e.downcast_ref::<io::Error>() {
                Some(io) if io.raw_os_error() == Some(libc::EPERM) => busy_poll_refused(usec, e),
                _ => e,
            })?;
        narrate!(
            "SO_BUSY_POLL set to {got} µs: a read() that finds nothing polls the network card's receive queue for up to {got} µs before it sleeps, keeping this CPU busy to take each packet sooner"
        );
        let mut note = format!("SO_BUSY_POLL {got} us");
        if conn.is_loopback() {
            narrate!(
                "this connection is loopback: its packets come through the kernel's backlog, not a card's queue, so there is nothing to poll and read() sleeps as it would without --busy-poll"
            );
            note.push_str(" (loopback: nothing to poll)");
        }
        notes.push(note);
    }
    Ok(notes)
}

/// `net.core.busy_read`: the SO_BUSY_POLL every socket starts with, in microseconds, and
/// the most a process without CAP_NET_ADMIN may set.
pub fn busy_read_sysctl() -> Result<u32> {
    let path = "/proc/sys/net/core/busy_read";
    let s = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    s.trim()
        .parse()
        .with_context(|| format!("parsing {path}: {s:?}"))
}

/// CAP_NET_ADMIN's bit in a capability set (linux/capability.h; libc has no name for it).
const CAP_NET_ADMIN: u32 = 12;

/// Whether this process holds CAP_NET_ADMIN: its bit in `CapEff` of /proc/self/status.
fn has_net_admin() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

/// `--busy-poll`, checked before any socket exists: above `net.core.busy_read` only a
/// process with CAP_NET_ADMIN may raise SO_BUSY_POLL, so without it that is a bad flag
/// value (exit 2) that names the sysctl, its value and the capability.
pub fn check_busy_poll(usec: Option<u32>) -> Result<()> {
    match usec {
        Some(usec) if usec > busy_read_sysctl()? && !has_net_admin() => {
            Err(busy_poll_refused(usec, anyhow!("EPERM")))
        }
        _ => Ok(()),
    }
}

/// The refusal of `--busy-poll usec`, with what allows it.
fn busy_poll_refused(usec: u32, why: anyhow::Error) -> anyhow::Error {
    let limit = busy_read_sysctl().map_or("?".to_string(), |v| v.to_string());
    bad_flag(format!(
        "--busy-poll {usec}: SO_BUSY_POLL above net.core.busy_read ({limit} µs) needs CAP_NET_ADMIN ({why:#}): \
         run socket-reader as root (or with that capability), raise the limit (sysctl net.core.busy_read={usec}), or drop --busy-poll"
    ))
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
