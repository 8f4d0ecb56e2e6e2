//! # socket: TCP and Unix domain stream sockets (claims K1-K5)
//!
//! A socket is an endpoint the kernel creates with `socket(2)`; two of them joined by a
//! connection carry bytes both ways (K1). The roles are asymmetric only while they meet
//! (K2): the **server** (here `socket-reader`) `bind`s an address, `listen`s and `accept`s;
//! the **client** (`socket-writer`) `connect`s to that address. Once connected the two
//! descriptors are equal peers, and one connection carries the data and the answers, so
//! pingpong needs no second channel (unlike pipes, P5, and FIFOs, N6).
//!
//! Two address families, one program:
//! - **TCP** (`--tcp HOST:PORT`, default `127.0.0.1:47400`): the address is an IP and a
//!   port, so the peer may be on another machine (K3: `socket-reader --listen
//!   0.0.0.0:PORT` there, `socket-writer --tcp THAT_IP:PORT` here). On one machine the bytes
//!   still go through the whole TCP/IP stack over the loopback device.
//! - **Unix domain** (`--unix [PATH]`, default `<runtime dir>/NAME.sock`): the address is a
//!   path in the file system; the kernel copies between the two sockets' buffers directly.
//!   Same host only, and file permissions decide who may connect (the file is made 0600).
//!
//! What K4 ("it needs network programming") amounts to is in these files: name resolution,
//! `bind` errors (EADDRINUSE), retrying `connect` while the server is not there yet,
//! Nagle's algorithm (`TCP_NODELAY`), `SO_REUSEADDR`, a stale socket file, and above all
//! K5: **a stream has no message boundaries**. One `write` of a 1 MiB frame comes out as
//! many `read`s, and many small frames written back to back come out of one `read`. The
//! 40-byte frame header carries the length, and `common::frame::Reassembler` finds the
//! frames in whatever each `read` returned. `socket-reader --show-reads` prints, per
//! message, how many `read` calls it took.
//!
//! ## Modules, in reading order
//! | file            | what it holds                                                          |
//! |-----------------|------------------------------------------------------------------------|
//! | `lib.rs`        | this essay, the names and defaults, [`Stream`] (either kind of connection) and its socket options |
//! | [`writer`]      | `socket-writer`, the client: connect, options, the send loop (`write`, and `read` of each Pong) |
//! | [`reader`]      | `socket-reader`, the server: listen, accept, the receive loop (`read`, `write` of each Pong) |
//! | [`batch`]       | `--batch`: several stream frames per `writev`, and what that changes (a first reading may skip it) |
//! | [`handshake`]   | the writer's Hello and the reader's answer to it, before the first message |
//! | [`rendezvous`]  | how the two ends meet: addresses, bind with the stale-file probe, accept with a timeout, connect with retries (a first reading may skip it) |
//! | [`options`]     | socket options: the Nagle rule (`TCP_NODELAY`), `SO_SNDBUF`, `SO_RCVBUF`, `SO_BUSY_POLL` (a first reading may skip it) |
//! | [`reads`]       | `--show-reads`: how many `read` calls each message took (K5; a first reading may skip it) |
//! | [`who`]         | who is already at an address (a reader listening, a reader with its writer), from the kernel's socket tables, for "one reader, one writer" (a first reading may skip it) |
//!
//! Man pages: socket(7), tcp(7) (TCP_NODELAY), unix(7) (sun_path length), bind(2)
//! (EADDRINUSE), connect(2) (ECONNREFUSED), accept(2), poll(2).

pub mod batch;
pub mod handshake;
pub mod options;
pub mod reader;
pub mod reads;
pub mod rendezvous;
pub mod who;
pub mod writer;

use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use anyhow::{Context, Result};
use common::setup::Mechanism;
use nix::sys::socket::{self as sock, sockopt};

/// Mechanism name in reports.
pub const MECHANISM: Mechanism = Mechanism::Socket;
/// Default TCP port. Any fixed number works; this one is outside the usual service ports.
pub const DEFAULT_PORT: u16 = 47400;
/// Default TCP address: loopback, so nothing outside this machine can connect.
pub const DEFAULT_TCP: &str = "127.0.0.1:47400";
/// Default name of the Unix socket file (`<runtime dir>/<name>.sock`).
pub const DEFAULT_NAME: &str = "socket";
/// Longest path `bind` accepts for a Unix socket: `sun_path` is 108 bytes with the NUL.
pub const MAX_UNIX_PATH: usize = 107;

/// One connection, of either family. Reads and writes go straight to the socket.
///
/// `&Stream` reads and writes (as `&TcpStream` and `&UnixStream` do): one descriptor,
/// both directions, so the writer reads its Pongs and the reader writes them on the very
/// socket the frames travel on, without a second handle (K1).
#[derive(Debug)]
pub enum Stream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix domain stream connection.
    Unix(UnixStream),
}

impl Stream {
    /// The peer's address, for narration: `getpeername` (TCP) or `SO_PEERCRED` (Unix).
    pub fn peer(&self) -> String {
        match self {
            Stream::Tcp(s) => s
                .peer_addr()
                .map_or_else(|_| "?".into(), |a| format!("tcp {a}")),
            // A connecting Unix client is usually unnamed; its credentials say who it is.
            Stream::Unix(s) => match sock::getsockopt(s, sockopt::PeerCredentials) {
                Ok(cred) => format!("unix peer pid {} uid {}", cred.pid(), cred.uid()),
                Err(_) => "unix peer".into(),
            },
        }
    }

    /// TCP's maximum segment size (`getsockopt(TCP_MAXSEG)`): the payload bytes of one
    /// full segment. `None` for a Unix socket, which has no segments.
    pub fn max_segment(&self) -> Option<u32> {
        match self {
            Stream::Tcp(s) => sock::getsockopt(s, sockopt::TcpMaxSeg).ok(),
            Stream::Unix(_) => None,
        }
    }

    /// `setsockopt(TCP_NODELAY)` (TCP only; a Unix socket has no Nagle algorithm).
    pub fn set_nodelay(&self) -> Result<()> {
        if let Stream::Tcp(s) = self {
            s.set_nodelay(true).context("setsockopt TCP_NODELAY")?;
        }
        Ok(())
    }

    /// `setsockopt(SO_SNDBUF)`, and what the kernel chose: it doubles the value for its
    /// own bookkeeping (socket(7)). Setting it switches off TCP's buffer autotuning.
    pub fn set_send_buffer(&self, bytes: usize) -> Result<usize> {
        sock::setsockopt(self, sockopt::SndBuf, &bytes).context("setsockopt SO_SNDBUF")?;
        self.send_buffer()
    }

    /// `setsockopt(SO_RCVBUF)`, and what the kernel chose (doubled, as for SO_SNDBUF).
    pub fn set_receive_buffer(&self, bytes: usize) -> Result<usize> {
        sock::setsockopt(self, sockopt::RcvBuf, &bytes).context("setsockopt SO_RCVBUF")?;
        self.receive_buffer()
    }

    /// `setsockopt(SO_BUSY_POLL, usec)`, and what the kernel then reports: how long a read
    /// on an empty socket polls the device's receive queue before it sleeps. Above
    /// `net.core.busy_read` the kernel wants CAP_NET_ADMIN (EPERM). nix has no name for
    /// this option, so it is libc's.
    pub fn set_busy_poll(&self, usec: u32) -> Result<u32> {
        let fd = self.as_fd().as_raw_fd();
        let val = libc::c_int::try_from(usec).context("--busy-poll does not fit in an int")?;
        let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `fd` is this connection's open socket, borrowed for the call; the option
        // value is a live c_int on the stack and `len` is its size, as socket(7) asks.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_BUSY_POLL,
                (&raw const val).cast(),
                len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("setsockopt SO_BUSY_POLL");
        }
        let (mut got, mut got_len): (libc::c_int, libc::socklen_t) = (0, len);
        // SAFETY: as above; the kernel writes at most `got_len` bytes into `got`, a live c_int.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_BUSY_POLL,
                (&raw mut got).cast(),
                &mut got_len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("getsockopt SO_BUSY_POLL");
        }
        Ok(got.max(0) as u32)
    }

    /// Whether the peer is this machine through the loopback device (TCP to 127.0.0.0/8 or
    /// ::1), where nothing arrives through a device queue for SO_BUSY_POLL to poll.
    pub fn is_loopback(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.peer_addr().is_ok_and(|a| a.ip().is_loopback()),
            Stream::Unix(_) => false,
        }
    }

    /// `getsockopt(SO_SNDBUF)`: the send buffer as the kernel reports it (bookkeeping
    /// included; TCP's autotuning may grow it later unless SO_SNDBUF was set).
    pub fn send_buffer(&self) -> Result<usize> {
        sock::getsockopt(self, sockopt::SndBuf).context("getsockopt SO_SNDBUF")
    }

    /// `getsockopt(SO_RCVBUF)`: the receive buffer as the kernel reports it.
    pub fn receive_buffer(&self) -> Result<usize> {
        sock::getsockopt(self, sockopt::RcvBuf).context("getsockopt SO_RCVBUF")
    }
}

/// `read(2)` on the socket: whatever has arrived, up to `buf.len()` bytes.
impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => Read::read(&mut { s }, buf),
            Stream::Unix(s) => Read::read(&mut { s }, buf),
        }
    }
}

/// `send(2)` (std's `write` on a socket; strace shows `sendto`) and `writev(2)` on the socket.
impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => Write::write(&mut { s }, buf),
            Stream::Unix(s) => Write::write(&mut { s }, buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => Write::write_vectored(&mut { s }, bufs),
            Stream::Unix(s) => Write::write_vectored(&mut { s }, bufs),
        }
    }
    /// Nothing to flush: every write went to the kernel at once.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}
