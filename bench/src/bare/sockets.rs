//! Bare stream-socket loops (as `stream_pingpong.c unix|tcp` and `sock_bw.c`):
//! `write(2)` and `read(2)` on a connected stream socket, nothing else.
//!
//! - `unix`: `socketpair(AF_UNIX, SOCK_STREAM)` before `fork`. The `socket` pair binds a
//!   path and accepts instead; once connected, the data path is the same.
//! - `tcp`: a listener on 127.0.0.1 port 0 (the kernel picks a free port), `connect`,
//!   `accept`, the listener closed; then the two connected sockets are shared out by
//!   `fork`. `TCP_NODELAY` on both sockets in pingpong (a small message would otherwise
//!   wait for the peer's ACK, Nagle's algorithm), on the writer's in a stream (as
//!   `sock_bw.c`). Socket buffers are the kernel's defaults.
//!
//! One socket carries both directions, so each side's read and write handles are two
//! descriptors of the same socket (`try_clone`, a `dup`).

use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;

use anyhow::{Context, Result};
use common::cli::Mode;

use super::{byte_pingpong, byte_stream, Bare, Kind, Spec};

/// Runs the Unix or TCP loop of `spec`.
pub fn run(spec: &Spec) -> Result<Bare> {
    if spec.kind == Kind::Unix {
        let (a, b) = UnixStream::pair().context("socketpair AF_UNIX SOCK_STREAM")?;
        let setup = "a Unix stream socketpair".to_string();
        if spec.mode == Mode::Pingpong {
            let (a2, b2) = (a.try_clone().context("dup")?, b.try_clone().context("dup")?);
            byte_pingpong(spec, setup, (a, a2), (b, b2))
        } else {
            byte_stream(spec, setup, a, b)
        }
    } else {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
        let addr = listener.local_addr().context("getsockname")?;
        let a = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
        let (b, _) = listener
            .accept()
            .with_context(|| format!("accept on {addr}"))?;
        drop(listener);
        a.set_nodelay(true).context("setsockopt TCP_NODELAY")?;
        if spec.mode == Mode::Pingpong {
            b.set_nodelay(true).context("setsockopt TCP_NODELAY")?;
            let setup = format!("TCP loopback ({addr}), TCP_NODELAY on both sockets");
            let (a2, b2) = (a.try_clone().context("dup")?, b.try_clone().context("dup")?);
            byte_pingpong(spec, setup, (a, a2), (b, b2))
        } else {
            let setup = format!("TCP loopback ({addr}), TCP_NODELAY on the writer");
            byte_stream(spec, setup, a, b)
        }
    }
}
