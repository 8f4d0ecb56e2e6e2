//! Who is already at an address: the kernel's socket tables, for "one reader, one writer".
//!
//! **A first reading may skip this file.** A reader serves one writer and closes its
//! listening socket when it accepts it (K2). So a second writer's `connect` is refused,
//! as if nobody were there, and a second reader could bind the same port (SO_REUSEADDR
//! allows it once nothing listens) or take the socket file for a stale one. Neither may
//! wait in vain or go on in silence: before giving up or binding, they ask the kernel who
//! is there, and say it with the pids.
//! - `/proc/net/unix` lists every Unix socket of this network namespace and the path it
//!   is bound to: a listening socket there is a reader waiting for its writer; a
//!   connected socket with the path and no listener is the end a reader accepted (it
//!   inherits the listener's path): a reader that has its writer.
//! - `/proc/net/tcp` and `/proc/net/tcp6` list every TCP socket with its two addresses,
//!   its state and its inode: LISTEN at the port, or ESTABLISHED with the port as its local
//!   address (the reader's end; the writer's end has the port as its remote address).
//! - `/proc/PID/fd` of every process: which one holds the socket of that inode (the link
//!   reads `socket:[INODE]`). Only the processes this user may look into (all, as root).
//! - The other end of a Unix connection, which `/proc/net/unix` does not show: the
//!   kernel's socket diagnostics (`NETLINK_SOCK_DIAG`, sock_diag(7), `UDIAG_SHOW_PEER`),
//!   which is where `ss -xp` gets its Peer column.
//!
//! Where a pid cannot be found, the message names the `ss` command that lists the socket.

use std::fmt;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::sys::socket::{self as sock, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType};

use crate::rendezvous::Endpoint;

/// A process found holding a socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// Its pid.
    pub pid: i32,
    /// Its program, as started (`argv[0]`'s file name).
    pub program: String,
}

impl fmt::Display for Holder {
    /// `socket-reader pid 1234`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} pid {}", self.program, self.pid)
    }
}

/// What holds an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Occupant {
    /// A socket listens there: a reader waiting for its writer.
    Listening {
        /// The process holding the listening socket, if it could be found.
        reader: Option<Holder>,
    },
    /// A connection is established on the address and nothing listens: a reader that has
    /// accepted its writer and closed its listening socket.
    Paired {
        /// The process holding the accepted end.
        reader: Option<Holder>,
        /// The process holding the other end (on this machine).
        writer: Option<Holder>,
        /// The other end's address (TCP: `127.0.0.1:51234`; it may be another machine).
        from: Option<String>,
    },
}

/// What holds `ep` now, as the kernel's tables say; `None` when nothing does (or the
/// tables cannot be read, or the path is relative: the table lists it as it was bound,
/// relative to whatever directory that reader ran in).
pub fn at(ep: &Endpoint) -> Option<Occupant> {
    match ep {
        Endpoint::Unix(path) => unix(path),
        Endpoint::Tcp(addr) => tcp(*addr),
    }
}

/// Which sockets [`look_with`] lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Look {
    /// The listening socket.
    Listening,
    /// The established connection.
    Connected,
    /// Whatever is there, in any state.
    Any,
}

/// The `ss` command that lists what is at `ep`, for a learner to look (and for holders
/// this user may not see): the listening socket (`-l`: without it `ss` shows none), the
/// connection (over TCP both ends; over Unix the accepted end, whose Peer column is the
/// writer's socket), or any socket there (`-a`: every state).
pub fn look_with(ep: &Endpoint, what: Look) -> String {
    let opts = match what {
        Look::Listening => "l",
        Look::Connected => "",
        Look::Any => "a",
    };
    match (ep, what) {
        (Endpoint::Unix(p), _) => format!("ss -x{opts}p src {}", p.display()),
        (Endpoint::Tcp(a), Look::Connected) => {
            format!("ss -tnp 'sport = :{0} or dport = :{0}'", a.port())
        }
        (Endpoint::Tcp(a), _) => format!("ss -t{opts}np 'sport = :{}'", a.port()),
    }
}

/// "socket-reader pid 1234", or how to find it.
fn who(h: &Option<Holder>, what: &str, ep: &Endpoint, look: Look) -> String {
    match h {
        Some(h) => h.to_string(),
        None => format!(
            "{what} (its pid is not visible to this user; `{}` as root shows it)",
            look_with(ep, look)
        ),
    }
}

/// The writer of a pair: its program and pid, else its address, else how to find it.
fn the_writer(writer: &Option<Holder>, from: &Option<String>, ep: &Endpoint) -> String {
    match (writer, from) {
        (Some(w), _) => w.to_string(),
        (None, Some(f)) => format!("a writer at {f}"),
        (None, None) => who(writer, "a writer", ep, Look::Connected),
    }
}

/// The error for a writer whose `connect` was refused because a reader at `ep` already
/// has its writer, or `None` when `occ` is not that.
pub fn second_writer(ep: &Endpoint, occ: &Occupant) -> Option<anyhow::Error> {
    let Occupant::Paired {
        reader,
        writer,
        from,
    } = occ
    else {
        return None;
    };
    Some(anyhow::anyhow!(
        "{} at {ep} already has its writer ({}): it closed its listening socket when it accepted that one (K2), so connect() is refused. \
         A pair has one reader and one writer: wait until that pair is done and start socket-reader again, or start another socket-reader \
         with another --name, --unix PATH or --tcp port and give this writer the same. `{}` lists that connection",
        who(reader, "a reader", ep, Look::Connected),
        the_writer(writer, from, ep),
        look_with(ep, Look::Connected)
    ))
}

/// The error for a reader that would listen where another reader is (listening, or with
/// its writer); `source` is the table that said so.
pub fn second_reader(ep: &Endpoint, occ: &Occupant, source: &str) -> anyhow::Error {
    let choose = match ep {
        Endpoint::Unix(_) => "choose another --name or --unix PATH".to_string(),
        Endpoint::Tcp(a) => format!(
            "choose another port with --tcp {}:PORT on both sides",
            a.ip()
        ),
    };
    match occ {
        Occupant::Listening { reader } => anyhow::anyhow!(
            "another reader ({}) is already listening at {ep} ({source} lists a listening socket bound there): stop it or {choose}",
            who(reader, "a process", ep, Look::Listening)
        ),
        Occupant::Paired {
            reader,
            writer,
            from,
        } => anyhow::anyhow!(
            "a reader ({}) at {ep} already has its writer ({}): {source} lists the connection it accepted, and no listening socket. \
             A pair has one reader and one writer: wait until that pair is done, or {choose}",
            who(reader, "a process", ep, Look::Connected),
            the_writer(writer, from, ep)
        ),
    }
}

/// One line of /proc/net/unix that names a path.
struct UnixEntry {
    /// Flags 00010000 (`__SO_ACCEPTCON`): a listening socket.
    listening: bool,
    /// St 03 (`SS_CONNECTED`).
    connected: bool,
    /// The socket's inode.
    inode: u64,
}

/// The stream sockets /proc/net/unix lists at `path` (absolute paths only).
fn unix_entries(path: &Path) -> Option<Vec<UnixEntry>> {
    let want = path.to_str().filter(|_| path.is_absolute())?;
    let table = fs::read_to_string("/proc/net/unix").ok()?;
    Some(
        table
            .lines()
            .skip(1)
            .filter_map(|line| {
                // Num RefCount Protocol Flags Type St Inode Path (a path with runs of
                // spaces does not match: the connect probe decides then).
                let f: Vec<&str> = line.split_whitespace().collect();
                (f.len() >= 8 && f[4] == "0001" && f[7..].join(" ") == want).then(|| UnixEntry {
                    listening: f[3] == "00010000",
                    connected: f[5] == "03",
                    inode: f[6].parse().unwrap_or(0),
                })
            })
            .collect(),
    )
}

/// Whether this network namespace has a listening Unix stream socket bound at `path`;
/// `None` when the list cannot be read or `path` is relative.
pub fn unix_listening(path: &Path) -> Option<bool> {
    Some(unix_entries(path)?.iter().any(|e| e.listening))
}

fn unix(path: &Path) -> Option<Occupant> {
    let entries = unix_entries(path)?;
    if let Some(l) = entries.iter().find(|e| e.listening) {
        let [reader] = holders(&[l.inode]);
        return Some(Occupant::Listening { reader });
    }
    let accepted = entries.iter().find(|e| e.connected && e.inode != 0)?;
    let peer = unix_peer(accepted.inode);
    let [reader, writer] = holders(&[accepted.inode, peer.unwrap_or(0)]);
    Some(Occupant::Paired {
        reader,
        writer,
        from: None,
    })
}

/// One line of /proc/net/tcp or tcp6.
struct TcpEntry {
    local: SocketAddr,
    remote: SocketAddr,
    /// 0x0A LISTEN, 0x01 ESTABLISHED (include/net/tcp_states.h).
    state: u8,
    inode: u64,
}

const LISTEN: u8 = 0x0A;
const ESTABLISHED: u8 = 0x01;

/// `0100007F:B93C` (tcp: the address as a native-endian u32) or 32 hex digits (tcp6: four
/// native-endian u32), then the port in hex.
fn proc_addr(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The TCP sockets of this network namespace, of `addr`'s family.
fn tcp_entries(addr: SocketAddr) -> Option<Vec<TcpEntry>> {
    let file = if addr.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let table = fs::read_to_string(file).ok()?;
    Some(
        table
            .lines()
            .skip(1)
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                Some(TcpEntry {
                    local: proc_addr(f.get(1)?)?,
                    remote: proc_addr(f.get(2)?)?,
                    state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                    inode: f.get(9)?.parse().ok()?,
                })
            })
            .collect(),
    )
}

/// Whether a socket bound at `local` stands in the way of `want`: the same port, and the
/// same address or either one unspecified (0.0.0.0 is every address).
fn same_place(local: SocketAddr, want: SocketAddr) -> bool {
    local.port() == want.port()
        && (local.ip() == want.ip() || local.ip().is_unspecified() || want.ip().is_unspecified())
}

fn tcp(addr: SocketAddr) -> Option<Occupant> {
    if addr.port() == 0 {
        return None; // the kernel picks a free port
    }
    let table = tcp_entries(addr)?;
    if let Some(l) = table
        .iter()
        .find(|e| e.state == LISTEN && same_place(e.local, addr))
    {
        let [reader] = holders(&[l.inode]);
        return Some(Occupant::Listening { reader });
    }
    // The reader's end of an accepted connection: ESTABLISHED, the port as local address.
    let accepted = table
        .iter()
        .find(|e| e.state == ESTABLISHED && e.inode != 0 && same_place(e.local, addr))?;
    // The writer's end, when it is on this machine: the same two addresses, swapped.
    let peer = table
        .iter()
        .find(|e| e.local == accepted.remote && e.remote == accepted.local)
        .map_or(0, |e| e.inode);
    let [reader, writer] = holders(&[accepted.inode, peer]);
    Some(Occupant::Paired {
        reader,
        writer,
        from: Some(accepted.remote.to_string()),
    })
}

/// The processes holding the sockets of these inodes (0: none wanted), from the
/// `socket:[INODE]` links in every `/proc/PID/fd` this user may read.
fn holders<const N: usize>(inodes: &[u64; N]) -> [Option<Holder>; N] {
    let mut found: [Option<Holder>; N] = std::array::from_fn(|_| None);
    let Ok(procs) = fs::read_dir("/proc") else {
        return found;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        // Another user's process (unless root), or one that just exited.
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = fs::read_link(fd.path()) else {
                continue;
            };
            let inode = link
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|n| n.parse::<u64>().ok());
            for (i, want) in inodes.iter().enumerate() {
                if inode == Some(*want) && *want != 0 && found[i].is_none() {
                    let program = common::peer::program_name(pid).unwrap_or_else(|| "?".into());
                    found[i] = Some(Holder { pid, program });
                }
            }
        }
        if inodes
            .iter()
            .zip(&found)
            .all(|(w, f)| *w == 0 || f.is_some())
        {
            break;
        }
    }
    found
}

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `UDIAG_SHOW_PEER` (linux/unix_diag.h): answer with the peer's inode.
const UDIAG_SHOW_PEER: u32 = 0x04;
/// `UNIX_DIAG_PEER`: the attribute that carries it.
const UNIX_DIAG_PEER: u16 = 2;

/// The inode of the other end of the connected Unix socket `inode`, from the kernel's
/// socket diagnostics: one `unix_diag_req` for that inode with `UDIAG_SHOW_PEER` on a
/// `NETLINK_SOCK_DIAG` socket; the answer's `UNIX_DIAG_PEER` attribute. `None` if the
/// kernel has no Unix diagnostics (the `unix_diag` module) or the socket is gone.
fn unix_peer(inode: u64) -> Option<u64> {
    let ino = u32::try_from(inode).ok()?;
    let fd = sock::socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .ok()?;
    // struct nlmsghdr (16 bytes), then struct unix_diag_req (24 bytes), native endian.
    let mut req = Vec::with_capacity(40);
    req.extend_from_slice(&40u32.to_ne_bytes()); // nlmsg_len
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes()); // nlmsg_type
    req.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes()); // one socket, no dump
    req.extend_from_slice(&1u32.to_ne_bytes()); // nlmsg_seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid
    req.extend_from_slice(&[libc::AF_UNIX as u8, 0, 0, 0]); // family, protocol, pad
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // udiag_states: any
    req.extend_from_slice(&ino.to_ne_bytes()); // udiag_ino
    req.extend_from_slice(&UDIAG_SHOW_PEER.to_ne_bytes()); // udiag_show
    req.extend_from_slice(&[0xff; 8]); // udiag_cookie: INET_DIAG_NOCOOKIE, no check
    let kernel = sock::NetlinkAddr::new(0, 0);
    sock::sendto(fd.as_raw_fd(), &req, &kernel, MsgFlags::empty()).ok()?;
    let mut buf = [0u8; 512];
    let n = sock::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).ok()?;
    parse_peer(&buf[..n])
}

/// The `UNIX_DIAG_PEER` attribute of one sock_diag answer: nlmsghdr (16 bytes; type
/// NLMSG_ERROR when the kernel refused), unix_diag_msg (16 bytes), then attributes, each
/// `rta_len` (u16, header included), `rta_type` (u16) and its data, 4-byte aligned.
fn parse_peer(msg: &[u8]) -> Option<u64> {
    let u16_at = |i: usize| Some(u16::from_ne_bytes(msg.get(i..i + 2)?.try_into().ok()?));
    let u32_at = |i: usize| Some(u32::from_ne_bytes(msg.get(i..i + 4)?.try_into().ok()?));
    let len = (u32_at(0)? as usize).min(msg.len());
    if u16_at(4)? != SOCK_DIAG_BY_FAMILY {
        return None; // NLMSG_ERROR: no such socket, or no Unix diagnostics
    }
    let mut at = 32;
    while at + 4 <= len {
        let (rta_len, rta_type) = (u16_at(at)? as usize, u16_at(at + 2)?);
        if rta_len < 4 {
            return None;
        }
        if rta_type == UNIX_DIAG_PEER {
            return u32_at(at + 4).map(u64::from).filter(|&p| p != 0);
        }
        at += (rta_len + 3) & !3;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixListener, UnixStream};

    fn inode(fd: &impl AsRawFd) -> u64 {
        let link = fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        let t = link.to_string_lossy();
        t.trim_start_matches("socket:[")
            .trim_end_matches(']')
            .parse()
            .unwrap()
    }

    #[test]
    fn proc_net_unix_lists_a_listening_socket_then_the_accepted_end() {
        let dir = std::env::temp_dir().join(format!("ipc-study-unit-who-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("listed.sock");
        let ep = Endpoint::Unix(path.clone());
        let l = UnixListener::bind(&path).unwrap();
        assert_eq!(unix_listening(&path), Some(true));
        let me = std::process::id() as i32;
        let Some(Occupant::Listening { reader: Some(r) }) = at(&ep) else {
            panic!("{:?}", at(&ep))
        };
        assert_eq!(r.pid, me);
        // Accepted, the listener closed: the accepted end keeps the path, and its peer is
        // the client, found through sock_diag.
        let c = UnixStream::connect(&path).unwrap();
        let (s, _) = l.accept().unwrap();
        drop(l);
        assert_eq!(unix_listening(&path), Some(false));
        assert_eq!(unix_peer(inode(&s)), Some(inode(&c)));
        match at(&ep) {
            Some(Occupant::Paired {
                reader: Some(r),
                writer: Some(w),
                ..
            }) => {
                assert_eq!((r.pid, w.pid), (me, me));
            }
            other => panic!("{other:?}"),
        }
        drop((s, c));
        // The file stays, no socket is bound there any more: nothing holds it.
        assert_eq!(at(&ep), None);
        assert_eq!(unix_listening(Path::new("listed.sock")), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn proc_net_tcp_shows_the_listener_then_the_pair_with_both_ends() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let ep = Endpoint::Tcp(addr);
        assert!(matches!(
            at(&ep),
            Some(Occupant::Listening { reader: Some(_) })
        ));
        // 0.0.0.0 at the same port is in the way too; another port is not.
        assert!(at(&Endpoint::Tcp(
            format!("0.0.0.0:{}", addr.port()).parse().unwrap()
        ))
        .is_some());
        let c = std::net::TcpStream::connect(addr).unwrap();
        let (s, _) = l.accept().unwrap();
        drop(l);
        match at(&ep) {
            Some(Occupant::Paired {
                reader: Some(r),
                writer: Some(w),
                from: Some(f),
            }) => {
                let me = std::process::id() as i32;
                assert_eq!((r.pid, w.pid), (me, me));
                assert_eq!(f, c.local_addr().unwrap().to_string());
            }
            other => panic!("{other:?}"),
        }
        drop((s, c));
        // Closed: at most TIME_WAIT remains, which holds nothing (and has no inode).
        assert_eq!(at(&ep), None);
        assert_eq!(at(&Endpoint::Tcp("127.0.0.1:0".parse().unwrap())), None);
    }

    #[test]
    fn proc_addresses_parse_in_both_families() {
        assert_eq!(
            proc_addr("0100007F:B93C"),
            Some("127.0.0.1:47420".parse().unwrap())
        );
        assert_eq!(
            proc_addr("00000000000000000000000001000000:0050"),
            Some("[::1]:80".parse().unwrap())
        );
        assert_eq!(proc_addr("zz:1"), None);
        assert_eq!(parse_peer(&[]), None);
    }
}
