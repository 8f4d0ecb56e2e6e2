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
//! K5: **a stream has no message boundaries**. One `writev` of a 1 MiB frame comes out as
//! many `read`s, and many small frames written back to back come out of one `read`. The
//! 40-byte frame header carries the length, and `common::frame::FrameReader` reassembles
//! frames from whatever `read` returns. `socket-reader --show-reads` prints, per message,
//! how many `read` calls it took.
//!
//! ## What this file holds
//! The endpoint (`--tcp`/`--unix`/`--listen`) and its checks, the server side (bind with
//! the stale-file probe, listen, accept with a timeout), the client side (connect, retried
//! until `--timeout`), socket options, and [`Stream`], which is either kind of connection.
//!
//! Man pages: socket(7), tcp(7) (TCP_NODELAY), unix(7) (sun_path length), bind(2)
//! (EADDRINUSE), connect(2) (ECONNREFUSED), accept(2), poll(2).

pub mod reader;
pub mod writer;

use std::cell::Cell;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use common::cli::CommonArgs;
use common::narrate;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self as sock, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
use nix::sys::stat::{umask, Mode};

/// Mechanism name in reports.
pub const MECHANISM: &str = "socket";
/// Default TCP port. Any fixed number works; this one is outside the usual service ports.
pub const DEFAULT_PORT: u16 = 47400;
/// Default TCP address: loopback, so nothing outside this machine can connect.
pub const DEFAULT_TCP: &str = "127.0.0.1:47400";
/// Default name of the Unix socket file (`<runtime dir>/<name>.sock`).
pub const DEFAULT_NAME: &str = "socket";
/// Longest path `bind` accepts for a Unix socket: `sun_path` is 108 bytes with the NUL.
pub const MAX_UNIX_PATH: usize = 107;

/// Where the two programs meet: the flags both sides share.
#[derive(Args, Clone, Debug, Default)]
pub struct EndpointArgs {
    /// TCP address (K1, K3) [default when neither --tcp nor --unix: 127.0.0.1:47400].
    #[arg(long, value_name = "HOST:PORT", num_args = 0..=1, default_missing_value = DEFAULT_TCP, conflicts_with = "unix")]
    pub tcp: Option<String>,

    /// Unix domain socket file [default with no PATH: <runtime dir>/<--name or socket>.sock].
    #[arg(long, value_name = "PATH", num_args = 0..=1)]
    pub unix: Option<Option<PathBuf>>,

    /// Socket buffer size (SO_SNDBUF on the writer, SO_RCVBUF on the reader; the kernel doubles it) [default: the kernel's, autotuned for TCP].
    #[arg(long, value_name = "BYTES", value_parser = common::cli::parse_size)]
    pub sock_buf: Option<usize>,

    /// TCP: leave Nagle's algorithm on (no TCP_NODELAY) whatever the mode, to see what it costs.
    #[arg(long)]
    pub nagle: bool,
}

/// A resolved address of either family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// An IP address and port.
    Tcp(SocketAddr),
    /// A path in the file system.
    Unix(PathBuf),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "tcp {a}"),
            Endpoint::Unix(p) => write!(f, "unix {}", p.display()),
        }
    }
}

impl Endpoint {
    /// "tcp" or "unix", the report's flavour.
    pub fn flavour(&self) -> &'static str {
        match self {
            Endpoint::Tcp(_) => "tcp",
            Endpoint::Unix(_) => "unix",
        }
    }
}

/// Resolves `--tcp`/`--unix` (and the reader's `--listen`, passed as `listen`), checking
/// every value before any socket exists.
pub fn resolve(ep: &EndpointArgs, listen: Option<&str>, c: &CommonArgs) -> Result<Endpoint> {
    if let Some(path) = &ep.unix {
        let path = match path {
            Some(p) => p.clone(),
            None => {
                let name = c.name_or(DEFAULT_NAME);
                common::runtime::runtime_dir()?.join(format!("{name}.sock"))
            }
        };
        let len = path.as_os_str().len();
        if len > MAX_UNIX_PATH {
            bail!(
                "--unix {}: the path is {len} bytes, and a Unix socket path may be at most {MAX_UNIX_PATH} (sun_path, unix(7)); choose a shorter path",
                path.display()
            );
        }
        return Ok(Endpoint::Unix(path));
    }
    let (flag, text) = match (listen, ep.tcp.as_deref()) {
        (Some(l), _) => ("--listen", l),
        (None, Some(t)) => ("--tcp", t),
        (None, None) => ("--tcp", DEFAULT_TCP),
    };
    let addr = text
        .to_socket_addrs()
        .with_context(|| {
            format!("{flag} {text}: expected HOST:PORT (like 127.0.0.1:{DEFAULT_PORT})")
        })?
        .next()
        .with_context(|| format!("{flag} {text}: the name resolves to no address"))?;
    if let Some(n) = &c.name {
        narrate!("--name {n} is not used over TCP: the address and port are the rendezvous");
    }
    Ok(Endpoint::Tcp(addr))
}

/// One connection, of either family. Reads and writes go straight to the socket.
#[derive(Debug)]
pub enum Stream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix domain stream connection.
    Unix(UnixStream),
}

impl Stream {
    /// A second handle on the same connection (`dup`): one for the sink, one for the
    /// source. Both refer to one socket, so flags such as O_NONBLOCK would be shared.
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    /// The peer's address, for narration.
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

    /// TCP's maximum segment size (TCP_MAXSEG): the payload bytes of one full segment.
    pub fn max_segment(&self) -> Option<u32> {
        match self {
            Stream::Tcp(s) => sock::getsockopt(s, sockopt::TcpMaxSeg).ok(),
            Stream::Unix(_) => None,
        }
    }

    /// Sets TCP_NODELAY (TCP only; a Unix socket has no Nagle algorithm).
    pub fn set_nodelay(&self) -> Result<()> {
        if let Stream::Tcp(s) = self {
            s.set_nodelay(true).context("setsockopt TCP_NODELAY")?;
        }
        Ok(())
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }
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

/// Sets SO_SNDBUF or SO_RCVBUF and returns what the kernel chose (it doubles the value
/// for its own bookkeeping, socket(7)). Setting it switches off TCP's buffer autotuning.
pub fn set_buffer(fd: BorrowedFd<'_>, bytes: usize, send: bool) -> Result<usize> {
    if send {
        sock::setsockopt(&fd, sockopt::SndBuf, &bytes).context("setsockopt SO_SNDBUF")?;
        sock::getsockopt(&fd, sockopt::SndBuf).context("getsockopt SO_SNDBUF")
    } else {
        sock::setsockopt(&fd, sockopt::RcvBuf, &bytes).context("setsockopt SO_RCVBUF")?;
        sock::getsockopt(&fd, sockopt::RcvBuf).context("getsockopt SO_RCVBUF")
    }
}

/// A listening socket of either family.
#[derive(Debug)]
pub enum Listener {
    /// Bound to an IP address and port.
    Tcp(TcpListener),
    /// Bound to a path.
    Unix(UnixListener),
}

impl Listener {
    /// The address actually bound (the port the kernel chose for port 0).
    pub fn local(&self) -> Result<Endpoint> {
        Ok(match self {
            Listener::Tcp(l) => Endpoint::Tcp(l.local_addr().context("getsockname")?),
            Listener::Unix(l) => {
                let a = l.local_addr().context("getsockname")?;
                Endpoint::Unix(a.as_pathname().map(Path::to_path_buf).unwrap_or_default())
            }
        })
    }

    /// Waits up to `timeout` for a client and accepts it. `Ok(None)` on timeout.
    ///
    /// `accept` itself has no timeout; `poll` for POLLIN on a listening socket says that
    /// a connection is waiting in the backlog, so the `accept` after it does not block.
    pub fn accept_within(&self, timeout: Duration) -> Result<Option<Stream>> {
        let deadline = Instant::now() + timeout;
        let fd = match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l) => l.as_fd(),
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let ms = PollTimeout::try_from(left.as_millis().clamp(1, 60_000) as i32)
                .unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
            match poll(&mut fds, ms) {
                Ok(0) => continue,
                Ok(_) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e).context("poll on the listening socket"),
            }
        }
        Ok(Some(match self {
            Listener::Tcp(l) => Stream::Tcp(l.accept().context("accept")?.0),
            Listener::Unix(l) => Stream::Unix(l.accept().context("accept")?.0),
        }))
    }
}

/// Binds and listens at `ep`. For a Unix socket, also returns the guard that removes the
/// socket file on every way out.
pub fn listen(ep: &Endpoint) -> Result<(Listener, Option<common::cleanup::Owned>)> {
    match ep {
        Endpoint::Tcp(addr) => Ok((Listener::Tcp(listen_tcp(*addr)?), None)),
        Endpoint::Unix(path) => {
            let (l, owned) = listen_unix(path)?;
            Ok((Listener::Unix(l), Some(owned)))
        }
    }
}

/// socket + SO_REUSEADDR + bind + listen, each step named in its error.
fn listen_tcp(addr: SocketAddr) -> Result<TcpListener> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd: OwnedFd = sock::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .context("socket(AF_INET, SOCK_STREAM)")?;
    // SO_REUSEADDR: a port whose last connection is in TIME_WAIT (the 60 s the kernel keeps
    // a closed connection to catch late packets) can be bound again at once. Without it, a
    // reader started right after the previous run would fail with EADDRINUSE.
    sock::setsockopt(&fd, sockopt::ReuseAddr, &true).context("setsockopt SO_REUSEADDR")?;
    let sa = SockaddrStorage::from(addr);
    match sock::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &sa) {
        Ok(()) => {}
        Err(Errno::EADDRINUSE) => bail!(
            "bind {addr}: EADDRINUSE: port {} is already in use (another socket-reader, or another program listens there); choose another port with --tcp {}:PORT on both sides, or port 0 to let the kernel pick one (this reader prints it)",
            addr.port(),
            addr.ip()
        ),
        Err(Errno::EADDRNOTAVAIL) => bail!(
            "bind {addr}: EADDRNOTAVAIL: {} is not an address of this machine",
            addr.ip()
        ),
        Err(Errno::EACCES) => bail!(
            "bind {addr}: EACCES: ports below 1024 need privilege; choose a port above 1023"
        ),
        Err(e) => return Err(e).with_context(|| format!("bind {addr}")),
    }
    // Backlog 1: this reader serves one writer; the kernel completes handshakes up to the
    // backlog even before accept is called.
    sock::listen(&fd, sock::Backlog::new(1).context("listen backlog")?)
        .with_context(|| format!("listen {addr}"))?;
    Ok(TcpListener::from(fd))
}

/// Checks a path that exists where the socket should be; removes it only if it is our own
/// socket file that nobody listens on.
fn clear_stale_socket(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("lstat {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket: refusing to use it (and not removing it); choose another --unix path or --name",
            path.display()
        );
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        bail!(
            "socket {} belongs to uid {}, not to you (uid {me}): refusing to use or remove it",
            path.display(),
            meta.uid()
        );
    }
    // The probe: if a connect succeeds, a live reader owns this file.
    match UnixStream::connect(path) {
        Ok(_) => bail!(
            "another reader is already listening at {} (a connect to it succeeded): stop it or choose another --name",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            fs::remove_file(path).with_context(|| format!("unlink {}", path.display()))?;
            narrate!(
                "removed stale socket file {} (connect gave ECONNREFUSED: nobody listens; an earlier reader was killed)",
                path.display()
            );
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("connect probe of {}", path.display())),
    }
}

/// Stale-file check, then bind with mode 0600 and listen.
fn listen_unix(path: &Path) -> Result<(UnixListener, common::cleanup::Owned)> {
    clear_stale_socket(path)?;
    // bind creates the file with 0777 & ~umask; a umask of 0177 makes it 0600, so no other
    // user may connect (connecting needs write permission on the file, unix(7)).
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    umask(old);
    let listener = match bound {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => bail!(
            "bind {}: EADDRINUSE: a file appeared there just now; is another reader starting?",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("bind {}", path.display())),
    };
    let p = path.to_path_buf();
    let owned = common::cleanup::own(format!("socket file {}", path.display()), move || {
        match fs::remove_file(&p) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    });
    Ok((listener, owned))
}

/// Connects to `ep`, retrying while nobody listens, until `timeout`. `Ok(None)` on timeout.
///
/// A server that is not there yet is normal (the writer may start first): TCP answers
/// ECONNREFUSED, a Unix path that does not exist ENOENT, a stale socket file
/// ECONNREFUSED. Those are retried every 20 ms; anything else is an error at once.
pub fn connect_within(ep: &Endpoint, timeout: Duration) -> Result<Option<Stream>> {
    let deadline = Instant::now() + timeout;
    let mut said = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let attempt = match ep {
            // connect_timeout bounds a SYN that gets no answer (a remote host that drops it).
            Endpoint::Tcp(a) => TcpStream::connect_timeout(a, left).map(Stream::Tcp),
            Endpoint::Unix(p) => UnixStream::connect(p).map(Stream::Unix),
        };
        match attempt {
            Ok(s) => return Ok(Some(s)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
                ) =>
            {
                if !said {
                    narrate!(
                        "waiting for a reader at {ep}: connect() failed ({e}): nobody listens yet; retrying every 20 ms for up to {timeout:?} (start socket-reader)"
                    );
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(20).min(left));
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("connect {ep}")),
        }
    }
}

/// A reader that counts the `read` calls that returned data, shared with whoever holds
/// the counter. It lets `--show-reads` see, around each frame, how many reads it took,
/// while the frame still borrows the reader's buffer.
pub struct CountingReader<R> {
    /// The stream.
    inner: R,
    /// Reads that returned at least one byte.
    reads: Rc<Cell<u64>>,
}

impl<R> CountingReader<R> {
    /// Wraps `inner`; the returned counter follows its reads.
    pub fn new(inner: R) -> (Self, Rc<Cell<u64>>) {
        let reads = Rc::new(Cell::new(0));
        (
            CountingReader {
                inner,
                reads: reads.clone(),
            },
            reads,
        )
    }
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.reads.set(self.reads.get() + 1);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        c: CommonArgs,
        #[command(flatten)]
        e: EndpointArgs,
    }

    #[test]
    fn endpoints_resolve_and_long_paths_are_refused() {
        let t = T::parse_from(["t"]);
        assert_eq!(
            resolve(&t.e, None, &t.c).unwrap(),
            Endpoint::Tcp(DEFAULT_TCP.parse().unwrap())
        );
        let t = T::parse_from(["t", "--tcp", "127.0.0.1:0"]);
        assert_eq!(
            resolve(&t.e, None, &t.c).unwrap().to_string(),
            "tcp 127.0.0.1:0"
        );
        let long = format!("/tmp/{}", "x".repeat(120));
        let t = T::parse_from(["t", "--unix", &long]);
        let e = resolve(&t.e, None, &t.c).unwrap_err().to_string();
        assert!(e.contains("at most 107"), "{e}");
        assert!(T::try_parse_from(["t", "--tcp", "--unix"]).is_err());
    }

    #[test]
    fn eaddrinuse_names_the_port() {
        let first = listen_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        let taken = first.local_addr().unwrap();
        let e = listen_tcp(taken).unwrap_err().to_string();
        assert!(
            e.contains("EADDRINUSE") && e.contains(&format!("port {}", taken.port())),
            "{e}"
        );
        assert!(e.contains("--tcp"), "{e}");
    }
}
