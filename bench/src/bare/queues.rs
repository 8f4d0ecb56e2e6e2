//! Bare message-queue loops (as `mq_bench.c`): one message of SIZE bytes per call, no
//! header inside it.
//!
//! - `sysv-mq`: `msgget(IPC_PRIVATE, 0600)` (a queue no other program can find by key),
//!   `msgsnd`/`msgrcv` with `mtype` 1. Pingpong uses two queues (there and back), a stream
//!   one. The parent removes them (`msgctl IPC_RMID`) when the loop is done; only a
//!   process killed mid-loop (the runner's deadline) would leave them.
//! - `posix-mq`: `mq_open(O_CREAT|O_EXCL, 0600)` with `mq_msgsize` SIZE and `mq_maxmsg`
//!   10 (or `fs.mqueue.msg_max` if lower: the depth the `msgqueue` crate asks for), then at
//!   once `mq_unlink`: both processes use the inherited descriptors and no name remains.
//!
//! System V depth is the kernel's default (`kernel.msgmnb` bytes per queue), as for the
//! `msgqueue` pair, so at 8 KiB a queue holds two messages and the writer blocks.

use anyhow::{bail, Context, Result};
use common::cli::Mode;
use nix::mqueue::{mq_open, mq_receive, mq_send, mq_unlink, MQ_OFlag, MqAttr, MqdT};
use nix::sys::stat::Mode as Perm;

use super::{pingpong, stream, Bare, Kind, Spec};

/// Runs the System V or POSIX loop of `spec`.
pub fn run(spec: &Spec) -> Result<Bare> {
    match spec.kind {
        Kind::SysvMq => sysv(spec),
        _ => posix(spec),
    }
}

/// A System V queue, removed when this value drops (in the parent: the forked child
/// leaves through `exit`, which drops nothing).
struct SysvQueue(libc::c_int);

impl SysvQueue {
    fn new() -> Result<SysvQueue> {
        // SAFETY: msgget takes no pointer; IPC_PRIVATE always makes a new queue.
        let id = unsafe { libc::msgget(libc::IPC_PRIVATE, libc::IPC_CREAT | 0o600) };
        if id < 0 {
            return Err(std::io::Error::last_os_error()).context("msgget IPC_PRIVATE");
        }
        Ok(SysvQueue(id))
    }
}

impl Drop for SysvQueue {
    fn drop(&mut self) {
        // SAFETY: IPC_RMID ignores the buffer argument, which may be null.
        unsafe { libc::msgctl(self.0, libc::IPC_RMID, std::ptr::null_mut()) };
    }
}

/// A `struct msgbuf` for `size` bytes of text: `mtype` (a C long) then the text, in a
/// buffer of longs so that `mtype` is aligned.
struct MsgBuf(Vec<libc::c_long>);

impl MsgBuf {
    fn new(size: usize) -> MsgBuf {
        let mut v = vec![0 as libc::c_long; 1 + size.div_ceil(std::mem::size_of::<libc::c_long>())];
        v[0] = 1; // mtype 1: msgrcv with msgtyp 0 takes any message anyway.
        MsgBuf(v)
    }

    /// `msgsnd(q, buf, size, 0)`: blocks while the queue is full.
    fn send(&self, q: libc::c_int, size: usize) -> Result<()> {
        loop {
            // SAFETY: the buffer holds an mtype followed by at least `size` bytes (see
            // `new`), and msgsnd only reads it.
            let r = unsafe { libc::msgsnd(q, self.0.as_ptr().cast(), size, 0) };
            if r == 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e).context("msgsnd");
            }
        }
    }

    /// `msgrcv(q, buf, size, 0, 0)`: blocks until a message is there; it must be `size` bytes.
    fn recv(&mut self, q: libc::c_int, size: usize) -> Result<()> {
        loop {
            // SAFETY: the buffer has room for an mtype and `size` bytes of text, and
            // msgrcv writes at most that (msgsz = size, no MSG_NOERROR: longer fails).
            let r = unsafe { libc::msgrcv(q, self.0.as_mut_ptr().cast(), size, 0, 0) };
            if r >= 0 {
                if r as usize != size {
                    bail!("msgrcv: {r} bytes, not {size}");
                }
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e).context("msgrcv");
            }
        }
    }
}

fn sysv(spec: &Spec) -> Result<Bare> {
    let size = spec.size;
    let there = SysvQueue::new()?;
    let depth = "default depth, kernel.msgmnb";
    if spec.mode == Mode::Pingpong {
        let back = SysvQueue::new()?;
        let (t, b) = (there.0, back.0);
        let (mut pbuf, mut cbuf) = (MsgBuf::new(size), MsgBuf::new(size));
        pingpong(
            spec,
            format!("two System V queues ({depth})"),
            move |_| {
                cbuf.recv(t, size)?;
                cbuf.send(b, size)
            },
            move |_| {
                pbuf.send(t, size)?;
                pbuf.recv(b, size)
            },
        )
    } else {
        let t = there.0;
        let total = spec.warmup() + spec.count;
        let (pbuf, mut cbuf) = (MsgBuf::new(size), MsgBuf::new(size));
        stream(
            spec,
            format!("one System V queue ({depth})"),
            move || {
                for _ in 0..total {
                    cbuf.recv(t, size)?;
                }
                Ok(())
            },
            move |_| pbuf.send(t, size),
        )
    }
}

/// Opens a new POSIX queue of `size`-byte messages and unlinks its name at once.
fn posix_queue(i: usize, size: usize, maxmsg: usize) -> Result<MqdT> {
    let name = format!(
        "/ipc-study-{}-bare-{}-{i}",
        nix::unistd::geteuid(),
        std::process::id()
    );
    let attr = MqAttr::new(0, maxmsg as _, size as _, 0);
    let q = mq_open(
        name.as_str(),
        MQ_OFlag::O_CREAT | MQ_OFlag::O_EXCL | MQ_OFlag::O_RDWR,
        Perm::S_IRUSR | Perm::S_IWUSR,
        Some(&attr),
    )
    .with_context(|| {
        format!("mq_open {name} O_CREAT|O_EXCL mq_maxmsg {maxmsg} mq_msgsize {size}")
    })?;
    mq_unlink(name.as_str()).with_context(|| format!("mq_unlink {name}"))?;
    Ok(q)
}

/// `mq_send`, retried on EINTR.
fn send(q: &MqdT, buf: &[u8]) -> Result<()> {
    loop {
        match mq_send(q, buf, 0) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => return r.context("mq_send"),
        }
    }
}

/// `mq_receive` of one message, which must be `buf.len()` bytes, retried on EINTR.
fn recv(q: &MqdT, buf: &mut [u8]) -> Result<()> {
    let mut prio = 0;
    loop {
        match mq_receive(q, buf, &mut prio) {
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(n) if n == buf.len() => return Ok(()),
            Ok(n) => bail!("mq_receive: {n} bytes, not {}", buf.len()),
            Err(e) => return Err(e).context("mq_receive"),
        }
    }
}

fn posix(spec: &Spec) -> Result<Bare> {
    let size = spec.size;
    let msg_max = std::fs::read_to_string("/proc/sys/fs/mqueue/msg_max")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(10);
    let maxmsg = msg_max.clamp(1, 10);
    let attrs = format!("mq_maxmsg {maxmsg}, mq_msgsize {size}");
    let there = posix_queue(0, size, maxmsg)?;
    if spec.mode == Mode::Pingpong {
        let back = posix_queue(1, size, maxmsg)?;
        // Both sides borrow both descriptors, which each process inherited.
        let (mut pbuf, mut cbuf) = (vec![b'x'; size], vec![0u8; size]);
        pingpong(
            spec,
            format!("two POSIX queues ({attrs})"),
            |_| {
                recv(&there, &mut cbuf)?;
                send(&back, &cbuf)
            },
            |_| {
                send(&there, &pbuf)?;
                recv(&back, &mut pbuf)
            },
        )
    } else {
        let total = spec.warmup() + spec.count;
        let (pbuf, mut cbuf) = (vec![b'x'; size], vec![0u8; size]);
        stream(
            spec,
            format!("one POSIX queue ({attrs})"),
            || {
                for _ in 0..total {
                    recv(&there, &mut cbuf)?;
                }
                Ok(())
            },
            |_| send(&there, &pbuf),
        )
    }
}
