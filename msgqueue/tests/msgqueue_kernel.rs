//! The claims M2, M3, M4 and M6 as the kernel shows them: raw `msgsnd`/`msgrcv`/`msgctl`
//! and `mq_send`/`mq_receive`/`mq_getattr` on private queues, with no program of this
//! crate in between. Each test fails if the kernel mechanism the claim names does not
//! behave as the README says (a receive returning two messages or a part of one, an order
//! other than FIFO within a type, a selection that is not the kernel's, a limit that is
//! not enforced with the errno the man page names).

use std::io;

use msgqueue::sysv::{msgsnd, Message, SysvQueue};
use msgqueue::MTEXT_MAX;
use nix::errno::Errno;
use nix::mqueue::{mq_getattr, mq_open, mq_receive, mq_send, mq_unlink, MQ_OFlag, MqAttr, MqdT};
use nix::sys::stat::Mode;

/// A private System V queue (`IPC_PRIVATE`: no key, nobody else can find it), removed on drop.
struct Private(SysvQueue);

impl Private {
    fn new() -> Private {
        let (q, created) = SysvQueue::create_or_open(libc::IPC_PRIVATE).unwrap();
        assert!(created);
        Private(q)
    }

    fn send(&self, mtype: i64, text: &[u8]) {
        let mut m = Message::boxed();
        m.mtype = mtype as libc::c_long;
        m.mtext[..text.len()].copy_from_slice(text);
        msgsnd(self.0, &m, text.len(), libc::IPC_NOWAIT).unwrap();
    }

    /// `msgrcv` offering `size` text bytes (the crate's wrapper always offers 64 KiB):
    /// the type and the text of the message the kernel returns.
    // mtype is a c_long: i64 here, i32 on 32-bit targets, hence `from`.
    #[allow(clippy::useless_conversion)]
    fn recv(&self, size: usize, msgtyp: i64, flags: libc::c_int) -> io::Result<(i64, Vec<u8>)> {
        assert!(size <= MTEXT_MAX);
        let mut m = Message::boxed();
        // SAFETY: `m` is a #[repr(C)] Message (a c_long, then MTEXT_MAX text bytes) and
        // `size <= MTEXT_MAX`, so the kernel writes only inside `*m`, which the Box keeps
        // alive across the call.
        let n = unsafe {
            libc::msgrcv(
                self.0.id,
                (&mut *m as *mut Message).cast(),
                size,
                msgtyp as libc::c_long,
                flags,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((i64::from(m.mtype), m.mtext[..n as usize].to_vec()))
    }

    fn texts(&self, msgtyp: i64, flags: libc::c_int, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                let (_, t) = self
                    .recv(MTEXT_MAX, msgtyp, flags | libc::IPC_NOWAIT)
                    .unwrap();
                String::from_utf8(t).unwrap()
            })
            .collect()
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        let _ = SysvQueue::remove(self.0.id);
    }
}

fn errno(e: io::Error) -> i32 {
    e.raw_os_error().unwrap()
}

fn sysctl(path: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A POSIX queue of this test (`/ipc-study-test-<what>-<pid>`), non-blocking, unlinked on drop.
struct Posix {
    name: String,
    q: MqdT,
}

impl Posix {
    fn new(what: &str, maxmsg: i64, msgsize: i64) -> Option<Posix> {
        if let Err(e) = msgqueue::posix_available() {
            common::testing::skip(&format!(
                "POSIX message queues are unavailable here (mq_open: {e})"
            ));
            return None;
        }
        let name = format!("/ipc-study-test-{what}-{}", std::process::id());
        let _ = mq_unlink(name.as_str());
        let attr = MqAttr::new(0, maxmsg, msgsize, 0);
        let flags = MQ_OFlag::O_CREAT | MQ_OFlag::O_EXCL | MQ_OFlag::O_RDWR | MQ_OFlag::O_NONBLOCK;
        let q = mq_open(
            name.as_str(),
            flags,
            Mode::S_IRUSR | Mode::S_IWUSR,
            Some(&attr),
        )
        .unwrap();
        Some(Posix { name, q })
    }

    fn recv(&self, size: usize) -> nix::Result<(u32, Vec<u8>)> {
        let (mut buf, mut prio) = (vec![0u8; size], 0);
        let n = mq_receive(&self.q, &mut buf, &mut prio)?;
        buf.truncate(n);
        Ok((prio, buf))
    }
}

impl Drop for Posix {
    fn drop(&mut self) {
        let _ = mq_unlink(self.name.as_str());
    }
}

/// Five payloads of different lengths (an empty one included), each with its own bytes.
fn payloads() -> Vec<Vec<u8>> {
    [1usize, 7, 0, 300, 4000]
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            (0..n)
                .map(|b| (b as u8) ^ (i as u8).wrapping_mul(37))
                .collect()
        })
        .collect()
}

#[test]
fn claim_m2_one_msgrcv_returns_exactly_one_whole_message() {
    let q = Private::new();
    let sent = payloads();
    for s in &sent {
        q.send(1, s);
    }
    let st = q.0.stat().unwrap();
    assert_eq!(
        (st.qnum, st.cbytes),
        (5, 4308),
        "five messages, their text bytes"
    );
    // A buffer of 64 KiB has room for all five at once; each msgrcv still returns one
    // message: its length and its bytes, never two merged and never a part.
    for s in &sent {
        let (t, got) = q.recv(MTEXT_MAX, 0, libc::IPC_NOWAIT).unwrap();
        assert_eq!((t, got.len()), (1, s.len()));
        assert_eq!(&got, s);
    }
    let e = q.recv(MTEXT_MAX, 0, libc::IPC_NOWAIT).unwrap_err();
    assert_eq!(errno(e), libc::ENOMSG);
    // Never a part: a buffer one byte too small is refused with E2BIG, and the message
    // stays queued, whole.
    q.send(1, &[0xab; 100]);
    let e = q.recv(99, 0, libc::IPC_NOWAIT).unwrap_err();
    assert_eq!(errno(e), libc::E2BIG);
    let st = q.0.stat().unwrap();
    assert_eq!((st.qnum, st.cbytes), (1, 100));
    // MSG_NOERROR asks for the part: the kernel returns the first 10 bytes and throws the
    // other 90 away; the next msgrcv returns the next message, not the rest.
    q.send(1, b"next");
    let (_, got) = q.recv(10, 0, libc::IPC_NOWAIT | libc::MSG_NOERROR).unwrap();
    assert_eq!(got, [0xab; 10]);
    assert_eq!(q.recv(MTEXT_MAX, 0, libc::IPC_NOWAIT).unwrap().1, b"next");
}

#[test]
fn claim_m2_posix_one_mq_receive_returns_exactly_one_whole_message() {
    let Some(p) = Posix::new("m2", 8, 4096) else {
        return;
    };
    let sent = payloads();
    for s in &sent {
        mq_send(&p.q, s, 0).unwrap();
    }
    for s in &sent {
        let (_, got) = p.recv(4096).unwrap();
        assert_eq!(
            &got,
            s,
            "one mq_receive, one whole message of {} bytes",
            s.len()
        );
    }
    // The buffer must hold mq_msgsize bytes, whatever the message's length: one byte less
    // is EMSGSIZE even for a 1-byte message, which stays queued.
    mq_send(&p.q, b"x", 0).unwrap();
    assert_eq!(p.recv(4095).unwrap_err(), Errno::EMSGSIZE);
    assert_eq!(mq_getattr(&p.q).unwrap().curmsgs(), 1);
    assert_eq!(p.recv(4096).unwrap().1, b"x");
}

#[test]
fn claim_m3_the_kernel_keeps_send_order_within_a_type_and_a_priority() {
    let q = Private::new();
    let typed = [(1, "a"), (2, "b"), (1, "c"), (2, "d"), (1, "e")];
    for (t, s) in typed {
        q.send(t, s.as_bytes());
    }
    // msgtyp 0: the oldest message, whatever its type: the order they were sent.
    assert_eq!(q.texts(0, 0, 5), ["a", "b", "c", "d", "e"]);
    for (t, s) in typed {
        q.send(t, s.as_bytes());
    }
    // msgtyp 2: FIFO within type 2; the type-1 messages keep their order too.
    assert_eq!(q.texts(2, 0, 2), ["b", "d"]);
    assert_eq!(q.texts(0, 0, 3), ["a", "c", "e"]);
    // POSIX: the highest priority first, FIFO within a priority.
    let Some(p) = Posix::new("m3", 8, 64) else {
        return;
    };
    for (prio, s) in [
        (0, "low-1"),
        (5, "mid-1"),
        (0, "low-2"),
        (5, "mid-2"),
        (9, "high"),
    ] {
        mq_send(&p.q, s.as_bytes(), prio).unwrap();
    }
    let order: Vec<(u32, String)> = (0..5)
        .map(|_| {
            let (prio, t) = p.recv(64).unwrap();
            (prio, String::from_utf8(t).unwrap())
        })
        .collect();
    let want = [
        (9, "high"),
        (5, "mid-1"),
        (5, "mid-2"),
        (0, "low-1"),
        (0, "low-2"),
    ];
    assert_eq!(order, want.map(|(p, s)| (p, s.to_string())));
}

#[test]
fn claim_m4_msgtyp_selects_the_message_in_the_kernel() {
    let q = Private::new();
    for (t, s) in [(3, "3a"), (1, "1a"), (2, "2a"), (1, "1b"), (3, "3b")] {
        q.send(t, s.as_bytes());
    }
    // T > 0: the first message of type T, wherever it is in the queue.
    assert_eq!(q.texts(2, 0, 1), ["2a"]);
    // T < 0: the first message of the lowest type <= |T|: type 1 before type 3.
    assert_eq!(q.texts(-3, 0, 1), ["1a"]);
    // MSG_EXCEPT: the first message not of type T.
    assert_eq!(q.texts(3, libc::MSG_EXCEPT, 1), ["1b"]);
    // Nothing of type 2 is left: ENOMSG at once with IPC_NOWAIT, and the others stay.
    let e = q.recv(MTEXT_MAX, 2, libc::IPC_NOWAIT).unwrap_err();
    assert_eq!(errno(e), libc::ENOMSG);
    assert_eq!(q.0.stat().unwrap().qnum, 2);
    assert_eq!(q.texts(0, 0, 2), ["3a", "3b"]);
}

#[test]
fn claim_m6_msgsnd_over_msgmax_is_einval_and_a_full_queue_is_eagain() {
    let msgmax = sysctl("/proc/sys/kernel/msgmax");
    if msgmax >= MTEXT_MAX {
        return common::testing::skip(&format!(
            "kernel.msgmax = {msgmax}: a message over it does not fit this test's {MTEXT_MAX}-byte buffer"
        ));
    }
    let q = Private::new();
    let mut m = Message::boxed();
    m.mtype = 1;
    // One byte over kernel.msgmax: the kernel refuses it with EINVAL, and queues nothing.
    let e = msgsnd(q.0, &m, msgmax + 1, libc::IPC_NOWAIT).unwrap_err();
    assert_eq!(errno(e), libc::EINVAL, "msgsnd of {} bytes", msgmax + 1);
    assert_eq!(q.0.stat().unwrap().qnum, 0);
    let qbytes = q.0.stat().unwrap().qbytes as usize;
    assert_eq!(
        qbytes,
        sysctl("/proc/sys/kernel/msgmnb"),
        "a new queue's msg_qbytes"
    );
    if msgmax <= qbytes {
        msgsnd(q.0, &m, msgmax, libc::IPC_NOWAIT).unwrap();
        q.recv(MTEXT_MAX, 0, libc::IPC_NOWAIT).unwrap();
    }
    // msg_qbytes counts text bytes, not messages: 1000-byte messages until EAGAIN.
    let mut n = 0;
    let e = loop {
        match msgsnd(q.0, &m, 1000, libc::IPC_NOWAIT) {
            Ok(()) => n += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(errno(e), libc::EAGAIN);
    let st = q.0.stat().unwrap();
    assert_eq!((n, st.cbytes as usize), (qbytes / 1000, n * 1000));
    // The bytes left still fit, exactly; then one more byte does not.
    let room = qbytes - st.cbytes as usize;
    if room > 0 {
        msgsnd(q.0, &m, room, libc::IPC_NOWAIT).unwrap();
    }
    assert_eq!(q.0.stat().unwrap().cbytes as usize, qbytes);
    let e = msgsnd(q.0, &m, 1, libc::IPC_NOWAIT).unwrap_err();
    assert_eq!(errno(e), libc::EAGAIN);
}

#[test]
fn claim_m6_posix_mq_send_over_mq_msgsize_is_emsgsize_and_a_full_queue_is_eagain() {
    let Some(p) = Posix::new("m6", 2, 128) else {
        return;
    };
    // mq_msgsize was fixed at mq_open: one byte over it is EMSGSIZE, nothing is queued.
    assert_eq!(mq_send(&p.q, &[7; 129], 0), Err(Errno::EMSGSIZE));
    assert_eq!(mq_getattr(&p.q).unwrap().curmsgs(), 0);
    mq_send(&p.q, &[7; 128], 0).unwrap();
    mq_send(&p.q, b"", 0).unwrap();
    // mq_maxmsg counts messages, not bytes: the third (even an empty one) finds the queue
    // full, EAGAIN on this non-blocking descriptor.
    assert_eq!(mq_send(&p.q, b"", 0), Err(Errno::EAGAIN));
    let at = mq_getattr(&p.q).unwrap();
    assert_eq!((at.curmsgs(), at.maxmsg(), at.msgsize()), (2, 2, 128));
}

#[test]
fn claim_m5_competing_receivers_each_message_goes_to_exactly_one() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use nix::unistd::{fork, ForkResult};
    use std::io::Read;
    use std::os::fd::AsRawFd;
    const N: u64 = 2000;
    let q = Private::new();
    let mut kids = Vec::new();
    for _ in 0..2 {
        let (rd, wr) = nix::unistd::pipe().unwrap();
        let mut m = Message::boxed();
        // SAFETY: the child of this multi-threaded test process calls only msgrcv, write
        // and _exit (no allocation, no lock, no unwinding), which are safe after fork.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => loop {
                // SAFETY: `m` is a Message with room for MTEXT_MAX text bytes, allocated
                // before the fork and owned by this process's copy of the heap.
                let n = unsafe {
                    libc::msgrcv(q.0.id, (&mut *m as *mut Message).cast(), MTEXT_MAX, 0, 0)
                };
                if n != 8 {
                    // The empty stop message (or an error): done.
                    // SAFETY: _exit ends the process at once, running no destructor.
                    unsafe { libc::_exit(0) };
                }
                // SAFETY: `mtext` holds the 8 bytes just received; the pipe's write end is
                // open in this process. A pipe of 64 KiB holds all 2000 x 8 bytes.
                unsafe { libc::write(wr.as_raw_fd(), m.mtext.as_ptr().cast(), 8) };
            },
            ForkResult::Parent { child } => {
                drop(wr);
                kids.push((child, std::fs::File::from(rd)));
            }
        }
    }
    // Two processes receive from one queue with msgtyp 0; the parent sends N numbered
    // messages, then one empty stop message per receiver.
    let mut m = Message::boxed();
    m.mtype = 1;
    for seq in 0..N {
        m.mtext[..8].copy_from_slice(&seq.to_le_bytes());
        msgsnd(q.0, &m, 8, 0).unwrap();
    }
    for _ in &kids {
        msgsnd(q.0, &m, 0, 0).unwrap();
    }
    let start = std::time::Instant::now();
    let mut got: Vec<Vec<u64>> = Vec::new();
    for (pid, mut rd) in kids {
        loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)).unwrap() {
                WaitStatus::StillAlive if start.elapsed() < common::testing::DEADLINE => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                WaitStatus::StillAlive => {
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                    panic!("receiver {pid} hung");
                }
                s => {
                    assert_eq!(s, WaitStatus::Exited(pid, 0));
                    break;
                }
            }
        }
        let mut bytes = Vec::new();
        rd.read_to_end(&mut bytes).unwrap();
        got.push(
            bytes
                .chunks(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        );
    }
    // Every message went to exactly one receiver: none lost, none delivered twice; each
    // receiver saw its share in send order (FIFO, M3).
    eprintln!(
        "receiver shares: {} and {} of {N} messages",
        got[0].len(),
        got[1].len()
    );
    let mut all: Vec<u64> = got.concat();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..N).collect::<Vec<_>>(),
        "split {} / {}",
        got[0].len(),
        got[1].len()
    );
    for share in &got {
        assert!(share.windows(2).all(|w| w[0] < w[1]));
    }
    assert_eq!(q.0.stat().unwrap().qnum, 0);
}
