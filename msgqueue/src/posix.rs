//! POSIX message queues: the names, and the one call nix does not wrap.
//!
//! A POSIX queue has a name (`/ipc-study-<uid>-<name>`) and, on Linux, is a file in the
//! `mqueue` file system, so its descriptor is a file descriptor (`fstat` works on it).
//! `mq_open(3)` creates or opens it with a fixed message size and depth, `mq_send(3)` adds a
//! message with a priority, `mq_receive(3)` takes the oldest of the highest priority, and
//! `mq_unlink(3)` removes the name. The programs call nix's `mq_open`, `mq_send`,
//! `mq_timedreceive`, `mq_getattr` and `mq_unlink` directly; `mq_timedsend` is below.
//! See [mq_overview(7)](https://man7.org/linux/man-pages/man7/mq_overview.7.html).

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::session::Outgoing;
use nix::errno::Errno;
use nix::mqueue::MqdT;
use nix::sys::time::TimeSpec;
use nix::time::{clock_gettime, ClockId};

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
