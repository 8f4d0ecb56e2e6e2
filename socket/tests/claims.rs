//! The kernel's side of claims K1, K4 and K5, with raw sockets and no programs: what a
//! stream socket does with bytes (K1: one descriptor carries both directions, the bytes
//! are copied and consumed), the errors a network program must handle (K4), and that a
//! stream keeps no message boundaries, whatever the size of the reader's buffer (K5).
//! Each test runs over loopback TCP and over a Unix domain socket. The programs' own
//! tests, for the same claims, are in socket_pair.rs.

mod harness;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};

use harness::kernel::{inq, wait_inq};
use harness::TestDir;
use nix::errno::Errno;
use nix::sys::socket::{self as sock, sockopt, MsgFlags};
use socket::Stream;

#[derive(Clone, Copy, Debug)]
enum Via {
    Tcp,
    Unix,
}

/// A connected pair, `(client, server)`: loopback TCP through listen, connect and accept,
/// or a Unix stream socketpair. `rcvbuf` is the server's SO_RCVBUF, set before the
/// connection exists (on the TCP listener, which the accepted socket inherits, so its
/// advertised window is small from the first segment).
fn connected(via: Via, rcvbuf: Option<usize>) -> (Stream, Stream) {
    match via {
        Via::Tcp => {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            if let Some(b) = rcvbuf {
                sock::setsockopt(&l, sockopt::RcvBuf, &b).unwrap();
            }
            let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (s, _) = l.accept().unwrap();
            (Stream::Tcp(c), Stream::Tcp(s))
        }
        Via::Unix => {
            let (c, s) = UnixStream::pair().unwrap();
            if let Some(b) = rcvbuf {
                sock::setsockopt(&s, sockopt::RcvBuf, &b).unwrap();
            }
            (Stream::Unix(c), Stream::Unix(s))
        }
    }
}

#[test]
fn claim_k1_one_socket_carries_both_directions_and_the_bytes_are_copied() {
    for via in [Via::Tcp, Via::Unix] {
        let (c, s) = connected(via, None);
        let mut ping = *b"ping from the client";
        assert_eq!((&c).write(&ping).unwrap(), ping.len());
        // write() copied the bytes into the kernel: what the sender does with its buffer
        // afterwards changes nothing the peer reads. A socket is not a shared store.
        ping.fill(b'X');
        let mut got = [0u8; 20];
        (&s).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping from the client", "{via:?}");
        // The answer goes back on the very descriptor the ping came in on: no second channel.
        assert_eq!((&s).write(b"pong").unwrap(), 4);
        let mut pong = [0u8; 4];
        (&c).read_exact(&mut pong).unwrap();
        assert_eq!(&pong, b"pong", "{via:?}");
        // Reading consumed the bytes: nothing is queued, a non-blocking receive finds
        // nothing (a shared memory region would still hold them for a second look).
        assert_eq!((inq(&s), inq(&c)), (0, 0), "{via:?}");
        let fd = s.as_fd().as_raw_fd();
        assert_eq!(
            sock::recv(fd, &mut got, MsgFlags::MSG_DONTWAIT),
            Err(Errno::EAGAIN)
        );
        // Over TCP the two descriptors are the two ends of one connection: each one's
        // address (getsockname) is the other's peer (getpeername).
        if let (Stream::Tcp(c), Stream::Tcp(s)) = (&c, &s) {
            assert_eq!(c.local_addr().unwrap(), s.peer_addr().unwrap());
            assert_eq!(s.local_addr().unwrap(), c.peer_addr().unwrap());
        }
    }
}

#[test]
fn claim_k4_the_kernel_errors_a_network_program_must_handle() {
    // K4 is a judgement ("it needs network programming"), shown by the README's
    // demonstration; this test pins the kernel's answers that the demonstration shows
    // and that src/rendezvous.rs and common::stream handle.
    // Nobody listens: connect() gets ECONNREFUSED (the kernel answers the SYN with a
    // reset), so a client retries or gives up (rendezvous::connect_within).
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED), "{e}");
    // The port is taken: bind() gets EADDRINUSE (rendezvous::listen_tcp names the port).
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let e = TcpListener::bind(taken.local_addr().unwrap()).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE), "{e}");

    // A Unix socket file outlives its listener: connect() to it is refused and bind()
    // on it fails, so a server probes it and unlinks it (rendezvous::clear_stale_socket).
    let d = TestDir::new("socket", "k4-kernel");
    fs::create_dir_all(&d.path).unwrap();
    let path = d.join("k4.sock");
    drop(UnixListener::bind(&path).unwrap());
    assert!(fs::symlink_metadata(&path).unwrap().file_type().is_socket());
    let e = UnixStream::connect(&path).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED), "{e}");
    let e = UnixListener::bind(&path).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE), "{e}");
    fs::remove_file(&path).unwrap();
    d.assert_empty();

    // A socket whose buffer is full takes part of a write: a non-blocking write() returns
    // a short count, then EAGAIN; the sender continues from where the kernel stopped
    // (common::stream::write_frame).
    let (a, b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let big = vec![7u8; 4 << 20];
    let n = (&a).write(&big).unwrap();
    assert!(n > 0 && n < big.len(), "a write of {} took {n}", big.len());
    assert_eq!((&a).write(&big).unwrap_err().kind(), ErrorKind::WouldBlock);
    // The peer is gone: write() gets EPIPE (common::stream: "the peer is gone").
    drop(b);
    let e = (&a).write(b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPIPE), "{e}");
}

#[test]
fn claim_k5_several_writes_come_out_of_one_read_cut_by_the_buffer_not_the_writes() {
    const N: usize = 10;
    const LEN: usize = 100;
    let writes: Vec<Vec<u8>> = (0..N).map(|i| vec![b'a' + i as u8; LEN]).collect();
    let all = writes.concat();
    for via in [Via::Tcp, Via::Unix] {
        let (w, r) = connected(via, None);
        // TCP: no Nagle, so every write() leaves at once as a segment of its own.
        w.set_nodelay().unwrap();
        let send = || {
            for one in &writes {
                assert_eq!(
                    (&w).write(one).unwrap(),
                    LEN,
                    "one write(), one whole piece"
                );
            }
            // The kernel queues them as one run of bytes, nothing marks where one ended.
            wait_inq(&r, N * LEN);
        };
        send();
        // One read() with room for much more returns all ten writes.
        let mut big = vec![0u8; 1 << 20];
        let n = (&r).read(&mut big).unwrap();
        assert_eq!(
            n,
            N * LEN,
            "{via:?}: one read() returned the {N} writes together"
        );
        assert_eq!(big[..n], all[..]);
        // Again, into a buffer of one and a half writes: read() ends where the buffer
        // ends, in the middle of the second write; the rest waits for the next read().
        send();
        let mut odd = vec![0u8; LEN + LEN / 2];
        assert_eq!((&r).read(&mut odd).unwrap(), odd.len(), "{via:?}");
        assert_eq!(odd[..], all[..odd.len()]);
        assert_eq!(inq(&r), N * LEN - odd.len(), "{via:?}");
        let n = (&r).read(&mut big).unwrap();
        assert_eq!(big[..n], all[odd.len()..], "{via:?}");
    }
}

#[test]
fn claim_k5_one_write_comes_out_in_several_reads_even_into_a_bigger_buffer() {
    const LEN: usize = 4 << 20;
    // Small socket buffers (the kernel doubles each): at most a few tens of KiB of the
    // message are in the kernel at any time, so a read() can only take that much.
    const BUF: usize = 32 << 10;
    let msg: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    for via in [Via::Tcp, Via::Unix] {
        let (w, r) = connected(via, Some(BUF));
        w.set_send_buffer(BUF).unwrap();
        let m = msg.clone();
        // One write(2) of the whole message; a blocking socket returns when all of it is
        // in the kernel, which is only possible once the reader has taken most of it.
        let writer = std::thread::spawn(move || (&w).write(&m).unwrap());
        // The reader asks for twice the message in every read().
        let mut buf = vec![0u8; 2 * LEN];
        let (mut got, mut reads) = (Vec::with_capacity(LEN), Vec::new());
        while got.len() < LEN {
            let n = (&r).read(&mut buf).unwrap();
            assert!(n > 0, "{via:?}: end of stream after {} bytes", got.len());
            reads.push(n);
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(
            writer.join().unwrap(),
            LEN,
            "{via:?}: one write() took it all"
        );
        assert!(
            reads.len() >= 2 && reads[0] < LEN,
            "{via:?}: one write of {LEN} bytes came out in {} reads: {reads:?}",
            reads.len()
        );
        assert!(
            got == msg,
            "{via:?}: the pieces put together are the message"
        );
    }
}
