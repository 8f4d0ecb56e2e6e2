//! How the two ends meet: addresses, bind and listen, accept, connect, socket options.
//!
//! **A first reading may skip this file.** The programs call it to find the address
//! ([`resolve`]) and to meet ([`listen`] then [`Listener::accept_within`] on the server,
//! [`connect_within`] on the client); the options of the connected [`Stream`] are set in
//! `options.rs`, and what they do with the connection is in `writer.rs` and `reader.rs`. Come back here for K2 and K4: everything that makes "network
//! programming" more than `read` and `write`:
//! - the endpoint: `--tcp HOST:PORT` resolved through the system resolver, `--unix PATH`
//!   checked against the 107 bytes of `sun_path` and for a directory that exists,
//!   `--listen` for other machines (K3), all before any socket exists; a bad value is a
//!   bad flag value (`common::cli::bad_flag`, exit status 2, as for clap's own checks);
//! - the server: `SO_REUSEADDR` and a named `EADDRINUSE` (TCP); a socket file that exists
//!   already is judged (type, owner, /proc/net/unix, a `connect` probe) and replaced only
//!   when stale, and the new one is made 0600 and owned from the moment `bind` creates it,
//!   so a failing `listen` or `accept` or a timeout removes it (Unix); `accept` bounded by
//!   `poll` so it ends at `--timeout`;
//! - one reader, one writer: a reader that is already there (listening, or with its
//!   writer) is named with its pid, and so is a pair a second writer finds ([`crate::who`]);
//! - the client: `connect` retried while nobody listens, narrated once, until `--timeout`.
//!
//! Man pages: socket(7), tcp(7), unix(7), bind(2), listen(2), accept(2), connect(2), poll(2).

use std::fmt;
use std::fs;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use common::cleanup::Owned;
use common::cli::{bad_flag, CommonArgs};
use common::narrate;
use common::setup::Flavour;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self as sock, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
use nix::sys::stat::{umask, Mode as FileMode};

use crate::who::{self, Occupant};
use crate::{Stream, DEFAULT_NAME, DEFAULT_PORT, DEFAULT_TCP, MAX_UNIX_PATH};

/// Where the two programs meet: the flags both sides share. (`--sock-buf` and `--nagle`
/// are each program's own: they set different options on the two sides.)
#[derive(Args, Clone, Debug, Default)]
pub struct EndpointArgs {
    /// TCP address (K1, K3) [default when neither --tcp nor --unix: 127.0.0.1:47400].
    #[arg(long, value_name = "HOST:PORT", num_args = 0..=1, default_missing_value = DEFAULT_TCP, conflicts_with = "unix")]
    pub tcp: Option<String>,

    /// Unix domain socket file instead of TCP; the help shows the default path.
    // The help is computed, so that --help shows the real path in the runtime dir.
    #[arg(long, value_name = "PATH", num_args = 0..=1, help = unix_help())]
    pub unix: Option<Option<PathBuf>>,
}

/// `--unix`'s help: the socket file it uses with no PATH, in this user's runtime dir.
fn unix_help() -> String {
    let dir = runtime_dir_shown();
    format!(
        "Unix domain socket file instead of TCP [default with no PATH: {}, or NAME.sock there with --name NAME]",
        dir.join(format!("{DEFAULT_NAME}.sock")).display()
    )
}

/// The runtime dir as `common::runtime::runtime_dir` chooses it ($IPC_STUDY_DIR, else
/// $XDG_RUNTIME_DIR/ipc-study, else /tmp/ipc-study-UID), without creating it: `--help`
/// makes nothing.
fn runtime_dir_shown() -> PathBuf {
    let var = |v: &str| std::env::var_os(v).filter(|d| !d.is_empty());
    match (var(common::runtime::DIR_ENV), var("XDG_RUNTIME_DIR")) {
        (Some(d), _) => PathBuf::from(d),
        (None, Some(x)) => Path::new(&x).join("ipc-study"),
        (None, None) => PathBuf::from(format!("/tmp/ipc-study-{}", nix::unistd::geteuid())),
    }
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
    /// The report's flavour: tcp or unix.
    pub fn flavour(&self) -> Flavour {
        match self {
            Endpoint::Tcp(_) => Flavour::Tcp,
            Endpoint::Unix(_) => Flavour::Unix,
        }
    }
}

/// Resolves `--tcp`/`--unix` (and the reader's `--listen`, passed as `listen`), checking
/// every value before any socket exists. A value that does not parse, does not resolve,
/// is too long for `sun_path` or names a directory that does not exist is a bad flag value
/// ([`bad_flag`]: exit status 2, as for the values clap checks).
pub fn resolve(ep: &EndpointArgs, listen: Option<&str>, c: &CommonArgs) -> Result<Endpoint> {
    if let Some(path) = &ep.unix {
        return unix_path(path.as_deref(), c).map(Endpoint::Unix);
    }
    let (flag, text) = match (listen, ep.tcp.as_deref()) {
        (Some(l), _) => ("--listen", l),
        (None, Some(t)) => ("--tcp", t),
        (None, None) => ("--tcp", DEFAULT_TCP),
    };
    // getaddrinfo(3) through std: a name is looked up, an IP literal is only parsed.
    let addr = text
        .to_socket_addrs()
        .map_err(|e| {
            bad_flag(format!(
                "{flag} {text}: expected HOST:PORT, a host that resolves and a port from 0 to 65535 (like 127.0.0.1:{DEFAULT_PORT}): {e}"
            ))
        })?
        .next()
        .ok_or_else(|| bad_flag(format!("{flag} {text}: the name resolves to no address")))?;
    // --name has a default (the socket file's name); only another one is worth a word.
    if let Some(n) = c.name.as_deref().filter(|n| *n != DEFAULT_NAME) {
        narrate!("--name {n} is not used over TCP: the address and port are the rendezvous");
    }
    Ok(Endpoint::Tcp(addr))
}

/// `--unix [PATH]`: the socket file's path, `<runtime dir>/<--name>.sock` when no PATH is
/// given. Checked as a flag value (clap has refused an empty one): at most
/// [`MAX_UNIX_PATH`] bytes (`bind` copies it into the 108 bytes of `sun_path`), and in a
/// directory that exists (`bind` creates the file, not its directory). A relative PATH is
/// relative to each program's own working directory, as `bind` and `connect` take it.
fn unix_path(given: Option<&Path>, c: &CommonArgs) -> Result<PathBuf> {
    let path = match given {
        Some(p) => {
            if let Some(n) = c.name.as_deref().filter(|n| *n != DEFAULT_NAME) {
                narrate!(
                    "--name {n} is not used: --unix {} names the socket file",
                    p.display()
                );
            }
            p.to_path_buf()
        }
        None => common::runtime::runtime_dir()?.join(format!("{}.sock", c.name_or(DEFAULT_NAME))),
    };
    let len = path.as_os_str().len();
    if len > MAX_UNIX_PATH {
        let whose = if given.is_some() {
            ""
        } else {
            " (the runtime dir and --name)"
        };
        return Err(bad_flag(format!(
            "--unix {}: the path{whose} is {len} bytes, and a Unix socket path may be at most {MAX_UNIX_PATH} (sun_path, unix(7)); choose a shorter path",
            path.display()
        )));
    }
    // "x.sock" has the parent "": the working directory.
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(bad_flag(format!(
            "--unix {}: the directory {} does not exist (or is not a directory): bind creates the socket file, not its directory; create it or choose another path",
            path.display(),
            dir.display()
        )));
    }
    Ok(path)
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
    /// The address actually bound (`getsockname`: the port the kernel chose for port 0).
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
        let fd = match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l) => l.as_fd(),
        };
        if !wait_readable(fd, timeout).context("on the listening socket")? {
            return Ok(None);
        }
        Ok(Some(match self {
            Listener::Tcp(l) => Stream::Tcp(l.accept().context("accept")?.0),
            Listener::Unix(l) => Stream::Unix(l.accept().context("accept")?.0),
        }))
    }
}

/// `poll(POLLIN)` on `fd` for up to `timeout`: whether it became readable (a connection
/// waiting on a listening socket, bytes or the end on a connected one) in time.
pub fn wait_readable(fd: impl AsFd, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let ms = PollTimeout::try_from(left.as_millis().clamp(1, 60_000) as i32)
            .unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => return Ok(true),
            Err(e) => return Err(e).context("poll"),
        }
    }
}

/// Binds and listens at `ep`. For a Unix socket, also returns the guard that removes the
/// socket file on every way out (Ctrl-C included). A TCP address that is not loopback
/// is warned about first: nothing checks who connects (K3). `flag` (`--tcp` or
/// `--listen`) is named when `bind` refuses the address itself (not an address of this
/// machine, a privileged port): a bad flag value, exit status 2.
pub fn listen(ep: &Endpoint, flag: &str) -> Result<(Listener, Option<Owned>)> {
    match ep {
        Endpoint::Tcp(addr) => {
            if !addr.ip().is_loopback() {
                common::warn!(
                    "warning: listening on {addr}, not on loopback: anyone who can reach this machine on port {} can connect, and nothing checks who they are (K3). Stop this reader when done.",
                    addr.port()
                );
            }
            Ok((Listener::Tcp(listen_tcp(*addr, flag)?), None))
        }
        Endpoint::Unix(path) => {
            let (l, owned) = listen_unix(path)?;
            Ok((Listener::Unix(l), Some(owned)))
        }
    }
}

/// socket + SO_REUSEADDR + bind + listen, each step named in its error.
fn listen_tcp(addr: SocketAddr, flag: &str) -> Result<TcpListener> {
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
    match sock::bind(fd.as_raw_fd(), &sa) {
        Ok(()) => {}
        Err(Errno::EADDRINUSE) => bail!(
            "bind {addr}: EADDRINUSE: port {} is already in use ({}); choose another port with --tcp {}:PORT on both sides, or port 0 to let the kernel pick one (this reader prints it)",
            addr.port(),
            in_use_by(addr),
            addr.ip()
        ),
        // The value itself is refused: a bad flag value (the socket closes on the way out,
        // and a TCP socket leaves nothing behind).
        Err(Errno::EADDRNOTAVAIL) => {
            return Err(bad_flag(format!(
                "{flag} {addr}: {} is not an address of this machine (bind: EADDRNOTAVAIL); use one of its addresses, 127.0.0.1, or 0.0.0.0 for all",
                addr.ip()
            )))
        }
        Err(Errno::EACCES) => {
            return Err(bad_flag(format!(
                "{flag} {addr}: ports below 1024 need privilege (bind: EACCES); choose a port from 1024 to 65535"
            )))
        }
        Err(e) => return Err(e).with_context(|| format!("bind {addr}")),
    }
    // Bound, not yet listening. SO_REUSEADDR let bind succeed beside a connection that an
    // earlier listener on this port accepted: a reader that has its writer. One reader
    // per pair: refuse (the socket closes on the way out; a TCP socket leaves nothing).
    if let Some(occ @ Occupant::Paired { .. }) = who::at(&Endpoint::Tcp(addr)) {
        return Err(who::second_reader(
            &Endpoint::Tcp(addr),
            &occ,
            "/proc/net/tcp",
        ));
    }
    // Backlog 1: this reader serves one writer; the kernel completes handshakes up to the
    // backlog even before accept is called.
    sock::listen(&fd, sock::Backlog::new(1).context("listen backlog")?)
        .with_context(|| format!("listen {addr}"))?;
    Ok(TcpListener::from(fd))
}

/// Who holds `addr`, for the EADDRINUSE message: the listener's pid from /proc/net/tcp and
/// /proc/PID/fd, or the command that shows it.
fn in_use_by(addr: SocketAddr) -> String {
    let ep = Endpoint::Tcp(addr);
    match who::at(&ep) {
        Some(Occupant::Listening { reader: Some(h) }) => format!("{h} listens there"),
        Some(Occupant::Paired {
            reader: Some(h), ..
        }) => format!("{h} holds a connection on it"),
        _ => format!(
            "another socket-reader, or another program listens there: `{}` shows which",
            who::look_with(&ep, who::Look::Any)
        ),
    }
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
    // A live reader would accept the connect probe below as its writer, and its run would
    // end when the probe closes; a reader that has its writer no longer listens, and the
    // probe would find the file "stale": the kernel's list of Unix sockets is asked first.
    let ep = Endpoint::Unix(path.to_path_buf());
    if let Some(occ) = who::at(&ep) {
        return Err(who::second_reader(&ep, &occ, "/proc/net/unix"));
    }
    // The probe: if a connect succeeds, a live reader owns this file.
    match UnixStream::connect(path) {
        Ok(_) => bail!(
            "another reader is already listening at {} (a connect to it succeeded, and that reader took it for its writer): stop it or choose another --name or --unix PATH",
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

/// Stale-file check, then bind with mode 0600 and listen. `bind` creates the socket file;
/// from that moment it is owned, so a failure of any later step (listen here, accept or
/// a timeout in the reader) removes it.
fn listen_unix(path: &Path) -> Result<(UnixListener, Owned)> {
    clear_stale_socket(path)?;
    let fd: OwnedFd = sock::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("socket(AF_UNIX, SOCK_STREAM)")?;
    let addr = sock::UnixAddr::new(path).with_context(|| format!("sun_path {}", path.display()))?;
    // bind creates the file with 0777 & ~umask; a umask of 0177 makes it 0600, so no other
    // user may connect (connecting needs write permission on the file, unix(7)).
    let old = umask(FileMode::from_bits_truncate(0o177));
    let bound = sock::bind(fd.as_raw_fd(), &addr);
    umask(old);
    match bound {
        Ok(()) => {}
        Err(Errno::EADDRINUSE) => bail!(
            "bind {}: EADDRINUSE: a file appeared there just now; is another reader starting?",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("bind {}", path.display())),
    }
    let p = path.to_path_buf();
    let owned = common::cleanup::own(format!("socket file {}", path.display()), move || {
        match fs::remove_file(&p) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    });
    // SOMAXCONN: a Unix connect sleeps while the backlog is full; this reader takes one
    // writer and then closes the listening socket.
    sock::listen(&fd, sock::Backlog::MAXCONN)
        .with_context(|| format!("listen {}", path.display()))?;
    Ok((UnixListener::from(fd), owned))
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
                // Refused: nobody listens, or a reader that has its writer (it closed its
                // listening socket at accept, K2). The kernel's tables tell which.
                if e.kind() == io::ErrorKind::ConnectionRefused {
                    if let Some(second) = who::at(ep).and_then(|o| who::second_writer(ep, &o)) {
                        return Err(second);
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    use common::cli::{MeetArgs, OutputArgs, Program, RunArgs};

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        meet: MeetArgs,
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        e: EndpointArgs,
        #[arg(long, conflicts_with = "unix")]
        nagle: bool,
    }
    common::program!(T);

    impl T {
        fn c(&self) -> CommonArgs {
            self.common()
        }
    }

    #[test]
    fn endpoints_resolve_and_long_paths_are_refused() {
        let t = T::parse_from(["t"]);
        assert_eq!(
            resolve(&t.e, None, &t.c()).unwrap(),
            Endpoint::Tcp(DEFAULT_TCP.parse().unwrap())
        );
        let t = T::parse_from(["t", "--tcp", "127.0.0.1:0"]);
        assert_eq!(
            resolve(&t.e, None, &t.c()).unwrap().to_string(),
            "tcp 127.0.0.1:0"
        );
        let long = format!("/tmp/{}", "x".repeat(120));
        let t = T::parse_from(["t", "--unix", &long]);
        let e = resolve(&t.e, None, &t.c()).unwrap_err();
        assert!(e.to_string().contains("at most 107"), "{e}");
        // A bad flag value: the program exits 2 for it (common::cli::run_main).
        assert!(e.downcast_ref::<common::cli::BadFlag>().is_some(), "{e}");
        for bad in [
            &["t", "--tcp", "127.0.0.1"][..],
            &["t", "--tcp", "127.0.0.1:65536"],
            &["t", "--unix", "/nonexistent-ipc-study-dir/s.sock"],
        ] {
            let t = T::parse_from(bad);
            let e = resolve(&t.e, None, &t.c()).unwrap_err();
            assert!(
                e.downcast_ref::<common::cli::BadFlag>().is_some(),
                "{bad:?}: {e}"
            );
        }
        assert!(T::try_parse_from(["t", "--tcp", "--unix"]).is_err());
        assert!(T::try_parse_from(["t", "--unix", "--nagle"]).is_err());
    }

    #[test]
    fn eaddrinuse_names_the_port() {
        let first = listen_tcp("127.0.0.1:0".parse().unwrap(), "--tcp").unwrap();
        let taken = first.local_addr().unwrap();
        let e = listen_tcp(taken, "--tcp").unwrap_err().to_string();
        assert!(
            e.contains("EADDRINUSE") && e.contains(&format!("port {}", taken.port())),
            "{e}"
        );
        assert!(e.contains("--tcp"), "{e}");
    }
}
