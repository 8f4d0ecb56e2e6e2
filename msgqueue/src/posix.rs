//! POSIX message queues: the names, and the one call nix does not wrap.
//!
//! A POSIX queue has a name (`/ipc-study-<uid>-<name>`) and, on Linux, is a file in the
//! `mqueue` file system, so its descriptor is a file descriptor (`fstat` works on it).
//! `mq_open(3)` creates or opens it with a fixed message size and depth, `mq_send(3)` adds a
//! message with a priority, `mq_receive(3)` takes the oldest of the highest priority, and
//! `mq_unlink(3)` removes the name. The programs call nix's `mq_send`, `mq_timedreceive`,
//! `mq_getattr` and `mq_unlink` directly; `mq_timedsend` is below, with the rendezvous's
//! POSIX half ([`open_pair`]: `mq_open` of both queues, created or opened and checked).
//! See [mq_overview(7)](https://man7.org/linux/man-pages/man7/mq_overview.7.html).

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::narrate;
use common::session::Outgoing;
use common::setup::Role;
use nix::errno::Errno;
use nix::mqueue::{mq_getattr, mq_open, MQ_OFlag, MqAttr, MqdT};
use nix::sys::stat::Mode;
use nix::sys::time::TimeSpec;
use nix::time::{clock_gettime, ClockId};

use crate::depth::Misfit;
use crate::rendezvous::{OpenArgs, Queues};

/// POSIX queue names: requests (and data) and, for pingpong, replies.
pub fn posix_names(name: &str) -> (String, String) {
    let main = common::runtime::kernel_name(name);
    let back = format!("{main}.back");
    (main, back)
}

/// `mq_unlink(3)` that treats "already gone" as done.
/// See [mq_unlink(3)](https://man7.org/linux/man-pages/man3/mq_unlink.3.html).
pub fn posix_unlink(name: &str) -> io::Result<()> {
    match nix::mqueue::mq_unlink(name) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether POSIX message queues work here (mq_open can fail with ENOSYS on kernels built
/// without CONFIG_POSIX_MQUEUE).
pub fn posix_available() -> std::result::Result<(), Errno> {
    use nix::mqueue::{mq_close, mq_open, MQ_OFlag};
    use nix::sys::stat::Mode;
    let name = format!("/ipc-study-probe-{}", std::process::id());
    // With O_CREAT, mq_open needs a mode and attributes (nix passes neither with `None`).
    let attr = nix::mqueue::MqAttr::new(0, 1, 64, 0);
    let q = mq_open(
        name.as_str(),
        MQ_OFlag::O_CREAT | MQ_OFlag::O_RDWR,
        Mode::S_IRUSR | Mode::S_IWUSR,
        Some(&attr),
    )?;
    let _ = mq_close(q);
    let _ = nix::mqueue::mq_unlink(name.as_str());
    Ok(())
}

/// One send as [`crate::watch::PeerWatch::send_posix`] asks for it: `mq_send(3)` on the
/// non-blocking descriptor (`None`), or, once the queue was found full, `mq_timedsend(3)`
/// until `deadline`.
pub fn send(q: &MqdT, msg: &[u8], prio: u32, deadline: Option<&TimeSpec>) -> nix::Result<()> {
    match deadline {
        None => nix::mqueue::mq_send(q, msg, prio),
        Some(d) => mq_timedsend(q, msg, prio, d),
    }
}

/// `mq_timedsend(3)`: like `mq_send`, but a blocking descriptor waits for room only until
/// `abstime` (CLOCK_REALTIME), then fails with ETIMEDOUT. nix has `mq_timedreceive` only.
/// See [mq_timedsend(3)](https://man7.org/linux/man-pages/man3/mq_timedsend.3.html).
pub fn mq_timedsend(q: &MqdT, msg: &[u8], prio: u32, abstime: &TimeSpec) -> nix::Result<()> {
    // SAFETY: the descriptor is open (borrowed from a live MqdT, which on Linux is the
    // file descriptor mq_open returned); `msg` is valid for `msg.len()` bytes and
    // `abstime` for one timespec during the call, and the kernel only reads both.
    let rc = unsafe {
        libc::mq_timedsend(
            q.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            prio,
            abstime.as_ref(),
        )
    };
    Errno::result(rc).map(drop)
}

/// The owner uid and permission bits of an open POSIX queue: on Linux a queue descriptor
/// is a file descriptor, so `fstat` works on it (mq_overview(7)).
pub fn posix_owner(q: &MqdT) -> Result<(u32, u32)> {
    let st = nix::sys::stat::fstat(q.as_fd()).context("fstat on the queue descriptor")?;
    Ok((st.st_uid, st.st_mode & 0o777))
}

/// The absolute CLOCK_REALTIME deadline of a wait of `slice` (what mq_timedsend and
/// mq_timedreceive take). The coarse clock is read without a system call and costs a few
/// nanoseconds; it lags by at most one tick (a few ms), which only stretches the slice.
pub fn deadline(slice: Duration) -> Result<TimeSpec> {
    let now = clock_gettime(ClockId::CLOCK_REALTIME_COARSE).context("clock_gettime")?;
    Ok(now + TimeSpec::from_duration(slice))
}

/// The message for a frame: the frame itself when its header and payload are already one
/// slice (every frame the writer session builds), else a copy into `buf`. `buf` has the
/// queue's `mq_msgsize` bytes: a larger frame is refused before `mq_send`, which would fail
/// with EMSGSIZE.
pub fn load<'b>(buf: &'b mut [u8], frame: &Outgoing<'b>) -> Result<&'b [u8]> {
    let len = frame.len();
    if len > buf.len() {
        bail!(
            "a frame of {len} bytes does not fit the queue's mq_msgsize of {} bytes",
            buf.len()
        );
    }
    if let Some(whole) = frame.whole {
        return Ok(whole);
    }
    let (header, payload) = buf.split_at_mut(frame.header.len());
    header.copy_from_slice(frame.header);
    payload[..frame.payload.len()].copy_from_slice(frame.payload);
    Ok(&buf[..len])
}

/// A buffer of the queue's `mq_msgsize` bytes: `mq_receive` refuses a smaller one with
/// EMSGSIZE, and `mq_send` a longer message.
pub fn buffer(q: &MqdT) -> Result<Vec<u8>> {
    let size = nix::mqueue::mq_getattr(q).context("mq_getattr")?.msgsize() as usize;
    Ok(vec![0; size])
}

/// The rendezvous's POSIX queues (step 3 of [`crate::rendezvous`]): the main queue and,
/// for pingpong, the `.back` one, each created or opened (`open_one`); whether this
/// call created the main one. `peer_here`: the peer uses the main queue (a writer then
/// refuses one that cannot serve it: [`Misfit`]).
pub fn open_pair(a: &OpenArgs, peer_here: bool) -> Result<(Queues, bool)> {
    let (main_name, back_name) = posix_names(&a.name);
    let mut names = vec![main_name.clone()];
    // The sending end is non-blocking, so a full queue is noticed (and narrated) before
    // the program waits for room (limits::Full).
    let nb = |sending: bool| {
        if sending {
            MQ_OFlag::O_NONBLOCK
        } else {
            MQ_OFlag::empty()
        }
    };
    let (main, created) = open_one(&main_name, a, nb(a.role == Role::Writer), peer_here)?;
    // The reply queue's name is always in the cleanup list: a killed pingpong run may
    // have left one even when this run does not use it (unlinking a missing name is fine).
    names.push(back_name.clone());
    let back = match a
        .pingpong
        // A reader opens .back only after the Hello: one here now is a leftover.
        .then(|| open_one(&back_name, a, nb(a.role == Role::Reader), false))
    {
        None => None,
        Some(Ok((q, _))) => Some(q),
        // The main queue this call just created is not left behind.
        Some(Err(e)) => {
            if created {
                let _ = posix_unlink(&main_name);
            }
            return Err(e);
        }
    };
    Ok((Queues::Posix { main, back, names }, created))
}

/// Queues nobody uses, in another shape than `a` asks for, made anew: closed, unlinked,
/// created. The main queue if `main_unused` (a leftover of an earlier run, its stale
/// messages already discarded and counted); a writer's `.back` always (a reader opens it
/// only after the Hello). Whether the main queue was.
pub fn reshape(q: &mut Queues, a: &OpenArgs, main_unused: bool) -> Result<bool> {
    let Queues::Posix { main, back, .. } = q else {
        return Ok(false);
    };
    let (main_name, back_name) = posix_names(&a.name);
    let mut remade = false;
    // Each end as open_pair opened it: the sending one non-blocking.
    let (main_nb, back_nb) = match a.role {
        Role::Writer => (MQ_OFlag::O_NONBLOCK, MQ_OFlag::empty()),
        Role::Reader => (MQ_OFlag::empty(), MQ_OFlag::O_NONBLOCK),
    };
    let queues = [
        (&main_name, Some(main).filter(|_| main_unused), main_nb),
        (&back_name, back.as_mut(), back_nb),
    ];
    for (name, q, extra) in queues {
        let Some(q) = q else { continue };
        let at = mq_getattr(q).with_context(|| format!("mq_getattr {name}"))?;
        let (s, now) = (&a.shape, (at.maxmsg() as usize, at.msgsize() as usize));
        if now == (s.maxmsg, s.msgsize) {
            continue;
        }
        narrate!(
            "{name} is a leftover of an earlier run with mq_maxmsg {}, mq_msgsize {}: removing it and making it anew with mq_maxmsg {}, mq_msgsize {}",
            now.0, now.1, s.maxmsg, s.msgsize
        );
        let old = std::mem::replace(q, create_anew(name, a, extra)?);
        let _ = nix::mqueue::mq_close(old);
        remade |= *name == main_name;
    }
    Ok(remade)
}

/// `mq_unlink` and `mq_open(O_CREAT|O_EXCL)` of a queue nobody uses, in `a`'s shape.
fn create_anew(name: &str, a: &OpenArgs, extra: MQ_OFlag) -> Result<MqdT> {
    posix_unlink(name).with_context(|| format!("mq_unlink {name}"))?;
    match create_or_open(name, a, extra)? {
        (q, true) => Ok(q),
        (q, false) => {
            let _ = nix::mqueue::mq_close(q);
            bail!("mq_open {name}: another process made the queue again between mq_unlink and mq_open")
        }
    }
}

/// The reader's `.back` queue for pingpong replies, opened (or created) once the writer's
/// Hello said pingpong; its sending end is non-blocking, like every sender's.
pub fn open_back(a: &OpenArgs) -> Result<MqdT> {
    let back = posix_names(&a.name).1;
    Ok(open_one(&back, a, MQ_OFlag::O_NONBLOCK, true)?.0)
}

/// `mq_open(3)` of one queue: `O_CREAT|O_EXCL` with mode 0600 and `a`'s shape (depth
/// and message size: `depth.rs`), or, if it exists, the existing one; checked to be ours.
/// A writer checks that a live reader's queue can serve it, and refuses one that cannot
/// ([`Misfit`]); a leftover is made anew later ([`reshape`]). Whether this call created it.
fn open_one(name: &str, a: &OpenArgs, extra: MQ_OFlag, peer_here: bool) -> Result<(MqdT, bool)> {
    let (q, created) = create_or_open(name, a, extra)?;
    let (uid, perm) = posix_owner(&q)?;
    let me = nix::unistd::geteuid().as_raw();
    if uid != me {
        bail!("POSIX queue {name} belongs to uid {uid}, not to you (uid {me}): refusing to use another user's queue");
    }
    let at = mq_getattr(&q).with_context(|| format!("mq_getattr {name}"))?;
    if a.role == Role::Writer && !created && peer_here {
        if let Some(why) = crate::depth::misfit(&a.shape, &at) {
            return Err(anyhow::Error::new(Misfit(format!(
                "the POSIX queue {name}, which the reader (started first) waits on, cannot serve this writer: {why}. \
                 mq_open fixes a queue's shape when it makes it: give the reader the same --queue-depth, or start the writer first"
            ))));
        }
    }
    narrate!(
        "mq_open {name}: {} (mode {perm:o}); mq_getattr: mq_maxmsg {}, mq_msgsize {}, mq_curmsgs {} ({})",
        if created { "created" } else { "opened the existing queue" },
        at.maxmsg(),
        at.msgsize(),
        at.curmsgs(),
        crate::elsewhere::look_posix(name)
    );
    Ok((q, created))
}

/// `mq_open(O_CREAT|O_EXCL)` in `a`'s shape, or on EEXIST `mq_open` of the existing
/// queue; the kernel's refusals named with the limit behind them (M6).
fn create_or_open(name: &str, a: &OpenArgs, extra: MQ_OFlag) -> Result<(MqdT, bool)> {
    let (mode, flags) = (Mode::S_IRUSR | Mode::S_IWUSR, MQ_OFlag::O_RDWR | extra);
    let (maxmsg, msgsize) = (a.shape.maxmsg, a.shape.msgsize);
    let attr = MqAttr::new(0, maxmsg as _, msgsize as _, 0);
    match mq_open(name, flags | MQ_OFlag::O_CREAT | MQ_OFlag::O_EXCL, mode, Some(&attr)) {
        Ok(q) => Ok((q, true)),
        Err(Errno::EEXIST) => Ok((
            mq_open(name, flags, mode, None).with_context(|| format!("mq_open {name} O_RDWR"))?,
            false,
        )),
        Err(Errno::ENOSYS) => bail!("mq_open {name}: ENOSYS: this kernel has no POSIX message queues (CONFIG_POSIX_MQUEUE)"),
        Err(Errno::EINVAL) => bail!(
            "mq_open {name}: EINVAL: mq_maxmsg {maxmsg} or mq_msgsize {msgsize} is above fs.mqueue.msg_max / msgsize_max, which bind a process without CAP_SYS_RESOURCE in the initial user namespace (M6)"
        ),
        Err(Errno::EMFILE) => bail!(
            "mq_open {name}: EMFILE: mq_maxmsg {maxmsg} x (mq_msgsize {msgsize} + about {} bytes of the kernel's) does not fit what is left of RLIMIT_MSGQUEUE = {} bytes, shared by all of uid {}'s POSIX queues (ls /dev/mqueue; ulimit -q; M6)",
            crate::depth::MQ_OVERHEAD,
            crate::depth::rlimit_msgqueue().0,
            nix::unistd::geteuid()
        ),
        Err(Errno::ENOSPC) => bail!(
            "mq_open {name}: ENOSPC: fs.mqueue.queues_max POSIX queues exist already on this system (M6)"
        ),
        Err(e) => Err(e).with_context(|| format!("mq_open {name} O_CREAT|O_EXCL 0600")),
    }
}

/// Takes every message out of `q` without waiting (stale messages); how many.
pub(crate) fn drain(q: &MqdT) -> Result<u64> {
    let mut buf = crate::posix::buffer(q)?;
    let mut prio = 0;
    // A deadline in the past: mq_timedreceive returns at once, with ETIMEDOUT (or EAGAIN
    // on a non-blocking descriptor) when the queue is empty.
    let past = TimeSpec::new(0, 0);
    let mut n = 0;
    loop {
        match nix::mqueue::mq_timedreceive(q, &mut buf, &mut prio, &past) {
            Ok(_) => n += 1,
            Err(Errno::ETIMEDOUT | Errno::EAGAIN) => return Ok(n),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e).context("mq_timedreceive (discarding stale messages)"),
        }
    }
}
