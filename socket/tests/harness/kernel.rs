//! What the kernel says about sockets, for the claim tests: the TCP table of a process's
//! network namespace (`/proc/<pid>/net/tcp`), the sockets a process holds
//! (`/proc/<pid>/fd`), its network namespace (`/proc/<pid>/ns/net`) and the bytes waiting
//! in a socket's receive queue (`ioctl(FIONREAD)`). Test code: it panics where a test
//! should fail.

use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use common::testing::DEADLINE;

/// `st` of a listening socket in /proc/net/tcp (`TCP_LISTEN` in include/net/tcp_states.h).
pub const LISTEN: u8 = 0x0A;
/// `st` of a connected socket (`TCP_ESTABLISHED`).
pub const ESTABLISHED: u8 = 0x01;

/// One line of /proc/net/tcp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpSocket {
    pub local: SocketAddrV4,
    pub remote: SocketAddrV4,
    pub state: u8,
    pub inode: u64,
}

/// `0100007F:B93C` (the address as the kernel stores it, printed as a native u32; the
/// port in host order) to 127.0.0.1:47420.
fn addr(field: &str) -> SocketAddrV4 {
    let (ip, port) = field.split_once(':').expect("ADDR:PORT");
    let ip = u32::from_str_radix(ip, 16).expect("hex address");
    let port = u16::from_str_radix(port, 16).expect("hex port");
    SocketAddrV4::new(Ipv4Addr::from(ip.to_ne_bytes()), port)
}

/// The IPv4 TCP sockets of the network namespace `pid` lives in (`/proc/<pid>/net/tcp`;
/// `"self"` for the test's own).
pub fn tcp_table(pid: &str) -> Vec<TcpSocket> {
    let text = fs::read_to_string(format!("/proc/{pid}/net/tcp")).expect("read /proc/PID/net/tcp");
    text.lines()
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            TcpSocket {
                local: addr(f[1]),
                remote: addr(f[2]),
                state: u8::from_str_radix(f[3], 16).expect("hex state"),
                inode: f[9].parse().expect("inode"),
            }
        })
        .collect()
}

/// The inodes of every socket `pid` holds open (`socket:[N]` links in /proc/<pid>/fd).
pub fn socket_inodes(pid: i32) -> Vec<u64> {
    let mut inodes = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).expect("read /proc/PID/fd") {
        let Ok(target) = fs::read_link(entry.unwrap().path()) else {
            continue; // closed between read_dir and readlink
        };
        let t = target.to_string_lossy();
        if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
            inodes.push(n.parse().unwrap());
        }
    }
    inodes
}

/// The TCP sockets `pid` holds, as its own namespace's table lists them. Other sockets it
/// has (signal-hook's socketpair, say) are not in the TCP table and are left out.
pub fn tcp_sockets_of(pid: i32) -> Vec<TcpSocket> {
    let mine = socket_inodes(pid);
    tcp_table(&pid.to_string())
        .into_iter()
        .filter(|s| mine.contains(&s.inode))
        .collect()
}

/// The network namespace of `pid` (`net:[4026531840]`), `"self"` for the test's own.
pub fn net_ns(pid: &str) -> String {
    fs::read_link(format!("/proc/{pid}/ns/net"))
        .expect("readlink /proc/PID/ns/net")
        .to_string_lossy()
        .into_owned()
}

/// `ioctl(FIONREAD)`: the bytes waiting in the socket's receive queue (SIOCINQ in tcp(7)
/// and unix(7)), which the next `read` may take.
pub fn inq(fd: &impl AsFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which points to `n`; the
    // descriptor is borrowed, so it stays open for the call.
    let rc = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::FIONREAD, &mut n) };
    assert_eq!(rc, 0, "ioctl FIONREAD: {}", std::io::Error::last_os_error());
    n as usize
}

/// Waits (polling, up to the test deadline) until `want` bytes wait in the receive queue.
pub fn wait_inq(fd: &impl AsFd, want: usize) {
    let start = Instant::now();
    loop {
        let have = inq(fd);
        if have == want {
            return;
        }
        assert!(
            have < want,
            "{have} bytes queued, more than the {want} written"
        );
        assert!(
            start.elapsed() < DEADLINE,
            "only {have} of {want} bytes arrived"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The kernel's range of ephemeral ports (`connect` without `bind` takes one of them).
pub fn ephemeral_ports() -> std::ops::RangeInclusive<u16> {
    let text = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let mut it = text.split_whitespace().map(|n| n.parse::<u16>().unwrap());
    let (lo, hi) = (it.next().unwrap(), it.next().unwrap());
    lo..=hi
}
