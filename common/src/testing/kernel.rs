//! Kernel facts the claim tests read from `/proc` (descriptors, process states, the
//! system call a thread sleeps in) and frames read with the test's own calls, rather
//! than trusting the programs under test.

use std::fs;
use std::io::Read;
use std::os::fd::AsFd;
use std::time::Instant;

use crate::frame::{Header, Kind, Reassembler, MAX_PAYLOAD};
use crate::testing::DEADLINE;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// One open descriptor of a process: its number, what it points to
/// (`readlink /proc/PID/fd/N`, e.g. `pipe:[1234]`) and its access mode (`fdinfo`'s
/// `flags:` & 3: 0 `O_RDONLY`, 1 `O_WRONLY`, 2 `O_RDWR`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdLink {
    pub fd: i32,
    pub target: String,
    pub access: u32,
}

/// Every descriptor of `pid` (this user's processes only).
pub fn fds(pid: i32) -> Vec<FdLink> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(fd) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(target) = fs::read_link(e.path()) else {
            continue;
        };
        let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
        let access = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .map_or(99, |f| f & 0o3);
        out.push(FdLink {
            fd,
            target: target.to_string_lossy().into_owned(),
            access,
        });
    }
    out.sort_by_key(|l| l.fd);
    out
}

/// The descriptor `fd` of `pid`.
pub fn fd(pid: i32, fd: i32) -> FdLink {
    fds(pid)
        .into_iter()
        .find(|l| l.fd == fd)
        .unwrap_or_else(|| panic!("pid {pid} has no descriptor {fd}"))
}

/// Fields of `/proc/<path>/stat` after the command name: `[state, ppid, ...]`.
fn stat_fields(path: &str) -> Option<Vec<String>> {
    let stat = fs::read_to_string(path).ok()?;
    let (_, tail) = stat.rsplit_once(')')?;
    Some(tail.split_whitespace().map(str::to_string).collect())
}

/// The parent of `pid`, from `/proc/PID/stat`; `None` once it is gone.
pub fn parent(pid: i32) -> Option<i32> {
    stat_fields(&format!("/proc/{pid}/stat")).and_then(|f| f.get(1)?.parse().ok())
}

/// The parent of a process that must exist.
pub fn ppid(pid: i32) -> i32 {
    parent(pid).unwrap_or_else(|| panic!("no /proc/{pid}/stat"))
}

/// The live children of `pid`, found by scanning `/proc/*/stat`.
pub fn children(pid: i32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|&p| parent(p) == Some(pid) && !exited(p))
        .collect()
}

/// Whether `pid` has exited (gone, or a zombie nobody has reaped yet).
pub fn exited(pid: i32) -> bool {
    stat_fields(&format!("/proc/{pid}/stat")).is_none_or(|f| f[0] == "Z" || f[0] == "X")
}

/// Waits until thread `tid` of this process sleeps (state `S`) inside one of the system
/// calls `calls` (`/proc/self/task/TID/syscall` starts with the call's number): the
/// kernel's own word that the call blocked. Fails the test at the deadline.
pub fn wait_until_blocked_in(tid: i32, calls: &[i64], what: &str) {
    wait_until_task_blocked_in(&format!("/proc/self/task/{tid}"), calls, what);
}

/// The same for the main thread of process `pid` (a child of this test).
pub fn wait_until_process_blocked_in(pid: i32, calls: &[i64], what: &str) {
    wait_until_task_blocked_in(&format!("/proc/{pid}/task/{pid}"), calls, what);
}

fn wait_until_task_blocked_in(task: &str, calls: &[i64], what: &str) {
    let start = Instant::now();
    loop {
        let sys = fs::read_to_string(format!("{task}/syscall")).unwrap_or_default();
        let nr = sys.split_whitespace().next().and_then(|n| n.parse().ok());
        let state = stat_fields(&format!("{task}/stat"));
        let sleeping = state.is_some_and(|f| f[0] == "S");
        if sleeping && nr.is_some_and(|n: i64| calls.contains(&n)) {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: {task} never slept in system call {calls:?} (syscall: {sys:?})"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// The system calls `open(2)` may be made with (glibc uses `openat`).
pub fn open_calls() -> Vec<i64> {
    #[cfg(target_arch = "x86_64")]
    return vec![libc::SYS_open, libc::SYS_openat];
    #[cfg(not(target_arch = "x86_64"))]
    return vec![libc::SYS_openat];
}

/// The system calls `poll(2)` may be made with (`ppoll` where there is no `poll`).
pub fn poll_calls() -> Vec<i64> {
    #[cfg(target_arch = "x86_64")]
    return vec![libc::SYS_poll, libc::SYS_ppoll];
    #[cfg(not(target_arch = "x86_64"))]
    return vec![libc::SYS_ppoll];
}

/// Bytes waiting in a pipe or FIFO (`ioctl(FIONREAD)`, on either end).
pub fn fionread(fd: std::os::fd::BorrowedFd<'_>) -> usize {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which points to `n`, alive
    // for the call; `fd` is a borrowed open descriptor.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    assert_eq!(rc, 0, "ioctl FIONREAD: {}", std::io::Error::last_os_error());
    n as usize
}

/// A process this test did not start itself (a grandchild whose parent has exited):
/// nobody here can `waitpid` it, so it is waited for through `/proc`, and killed if it
/// is still running when the test ends, so a failing test leaves nothing behind.
pub struct Orphan {
    pub pid: i32,
    comm: String,
}

impl Orphan {
    pub fn new(pid: i32) -> Orphan {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        Orphan { pid, comm }
    }

    /// Waits until it has exited; kills it and fails at the deadline.
    pub fn wait_gone(&self) {
        let start = Instant::now();
        while !exited(self.pid) {
            if start.elapsed() > DEADLINE {
                self.kill();
                panic!("pid {} did not exit in time", self.pid);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn kill(&self) {
        let now = fs::read_to_string(format!("/proc/{}/comm", self.pid)).unwrap_or_default();
        // Only the process we saw: never a stranger that reused the pid.
        if !exited(self.pid) && now == self.comm {
            let pid = nix::unistd::Pid::from_raw(self.pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for Orphan {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The next whole frame from `src`, read with this test's own `read(2)` calls, each
/// after a `poll` bounded by the deadline; `None` at end of file between frames.
pub fn next_frame<R: Read + AsFd>(
    src: &mut R,
    frames: &mut Reassembler,
    start: Instant,
) -> Option<(Header, Vec<u8>)> {
    loop {
        if let Some((h, payload)) = frames.next_frame().expect("a valid frame") {
            return Some((h, payload.to_vec()));
        }
        let left = DEADLINE.saturating_sub(start.elapsed());
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut p = [PollFd::new(src.as_fd(), PollFlags::POLLIN)];
        let ready = poll(&mut p, PollTimeout::from(ms)).expect("poll");
        assert!(ready > 0, "no bytes within the deadline");
        let n = src.read(frames.spare()).expect("read");
        frames.filled(n);
        if n == 0 {
            assert_eq!(frames.cut(), None, "end of file inside a frame");
            return None;
        }
    }
}

/// Every frame from `src` up to End (End last), then end of file.
pub fn read_frames<R: Read + AsFd>(src: &mut R) -> Vec<(Header, Vec<u8>)> {
    let start = Instant::now();
    let mut frames = Reassembler::new(MAX_PAYLOAD);
    let mut got = Vec::new();
    while let Some(f) = next_frame(src, &mut frames, start) {
        let end = f.0.kind == Kind::End;
        got.push(f);
        if end {
            assert!(
                next_frame(src, &mut frames, start).is_none(),
                "a frame after End"
            );
            return got;
        }
    }
    panic!("end of file before End, after {} frames", got.len());
}
