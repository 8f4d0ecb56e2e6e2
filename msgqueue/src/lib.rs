//! # msgqueue: System V and POSIX message queues (claims M1-M6)
//!
//! A message queue is a list of whole messages kept in kernel memory. A sender hands the
//! kernel one message (`msgsnd`, `mq_send`); the kernel copies it into memory it allocates
//! for that message and links it to the queue; a receiver (`msgrcv`, `mq_receive`) takes
//! one whole message out and the kernel frees it. So:
//! - **M1** "a pipe that uses memory": both live in kernel memory, but a pipe is a byte ring
//!   of fixed capacity that dies with its last descriptor, while a queue is a list of
//!   separately allocated messages with a *name* (a System V key, a POSIX `/name`) that
//!   outlives every process: messages sent by a writer that has exited are still there for a
//!   reader that starts later (`ipcs -q` shows them).
//! - **M2** "structures": a message is whole: one `msgrcv` returns exactly one `msgsnd`,
//!   never half of one or two glued together. System V messages are a C struct, a `long`
//!   type followed by bytes ([`Message`]); the bytes themselves are not interpreted.
//! - **M3** "FIFO": within one System V type, and within one POSIX priority, messages come
//!   out in the order they went in. Across types (`msgrcv` with a type other than 0) and
//!   across priorities (POSIX always takes the highest priority first) they do not.
//! - **M4** "a receiver can fetch a different kind": System V's `msgtyp` argument: 0 takes
//!   the first message, `T > 0` the first message of type T, `T < 0` the first message of
//!   the lowest type `<= |T|`. Other messages stay queued for another receiver. POSIX has no
//!   selection; it has priorities instead (0 to 32767, highest first).
//! - **M5** "many kinds of communication": one queue carries any number of senders and
//!   receivers, related or not; pingpong here runs requests and replies over one System V
//!   queue by giving them two types ([`types`]).
//! - **M6** "limits": System V: `kernel.msgmax` (largest message), `kernel.msgmnb` (bytes in
//!   one queue), `kernel.msgmni` (number of queues). POSIX: `fs.mqueue.msgsize_max`,
//!   `fs.mqueue.msg_max` (messages per queue), `fs.mqueue.queues_max`, and the
//!   per-user `RLIMIT_MSGQUEUE`. See [`Limits`].
//!
//! ## The pair's contract
//! - **Rendezvous.** A file in the private runtime directory, `<name>.sysv-mq` or
//!   `<name>.posix-mq` ([`pair_path`]). For System V its inode gives the key (`ftok(3)`),
//!   unless `--key` is given; POSIX names the queue `/ipc-study-<uid>-<name>` (and
//!   `<that>.back` for pingpong replies, since POSIX cannot select by type). Whoever starts
//!   first creates the queue (mode 0600); the other opens it. A queue owned by another user is
//!   refused.
//! - **Who is there.** The same file records the writer's and the reader's pid and state
//!   (`running`, `finished`) in two fixed slots ([`PairFile`]); `cat` shows it. Opening
//!   takes an exclusive `flock` on it, so the checks below never interleave.
//! - **Stale messages.** A queue outlives a killed run, with its messages. The rule:
//!   * the writer, when it opens, discards (and counts) every message already in the queue:
//!     its session has not started, so they belong to an earlier one;
//!   * the reader, when it opens, keeps messages already there only if the recorded writer
//!     is running (it started first) or *finished* (it sent its whole session, End included,
//!     and exited: M1); if the recorded writer is dead while "running" (killed), or none is
//!     recorded, they are leftovers: discarded and counted.
//!
//!   Every frame also carries the writer's session nonce (common::protocol skips frames of
//!   another session), a second line of defence.
//! - **A peer that dies.** Blocking calls must not wait forever for a dead peer. System V
//!   `msgrcv`/`msgsnd` have no timeout, and adding a poll loop would cost the pingpong fast
//!   path, so each side runs a [`Watchdog`] thread: every 100 ms it reads the peer's slot and
//!   checks the pid (`kill(pid, 0)`); if the peer died, it removes the queue (`IPC_RMID`),
//!   which wakes the blocked call with `EIDRM`, and says why. POSIX has timed calls, so the
//!   main thread waits in `mq_timedreceive`/`mq_timedsend` (100 ms slices) and checks the
//!   peer between them. The same check ends a wait for a peer that never came (`--timeout`).
//!   A System V queue removed by anyone else shows up as `EIDRM` and is reported as such.
//!   A side that finds its peer dead removes the queue and the pair file: nobody will use
//!   them, and a `kill -9` of either side leaves nothing behind.
//! - **Cleanup.** The reader removes the queue(s) and the file when done, and on Ctrl-C. A
//!   writer that created the queue removes it on an error or Ctrl-C unless a live reader is
//!   recorded; after a clean finish it leaves the queue for the reader (M1).
//!
//! ## Module map
//! | module | what it holds |
//! |---|---|
//! | this file | the limits, the System V wrappers (`unsafe` lives here), the pair file, liveness, the watchdog |
//! | [`transport`] | the rendezvous ([`transport::open`]) and the `FrameSink`/`FrameSource` of both flavours |
//! | [`writer`], [`reader`] | the two programs, top to bottom |
//!
//! Man pages: msgget(2), msgsnd(2), msgrcv(2), msgctl(2), ftok(3), svipc(7),
//! mq_overview(7), mq_open(3), mq_send(3), mq_timedsend(3), mq_receive(3), mq_getattr(3),
//! mq_unlink(3).

pub mod reader;
pub mod transport;
pub mod writer;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::frame::HEADER_LEN;
use libc::{c_int, c_long, key_t};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::unistd::geteuid;

/// Mechanism name in reports.
pub const MECHANISM: &str = "msgqueue";
/// Default rendezvous name.
pub const DEFAULT_NAME: &str = "msgqueue";

/// The System V message types this pair uses (M4). User types for text mode are
/// `1..=MAX_USER`; the pair reserves the two above them.
pub mod types {
    /// Data and pingpong requests, unless a text line or `--type` says otherwise.
    pub const DATA: i64 = 1;
    /// Largest type a user may give (`--type N`, `N: text`).
    pub const MAX_USER: i64 = 99;
    /// The writer's End frame. A pingpong reader asks for `-END`: the lowest type `<= 100`,
    /// so requests (1) come before End and replies (101) are never taken by mistake.
    pub const END: i64 = 100;
    /// Pingpong replies; the writer asks for exactly this type.
    pub const REPLY: i64 = 101;
}

/// Largest message text this crate handles, whatever `kernel.msgmax` says.
pub const MTEXT_MAX: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------
// M6: the limits
// ---------------------------------------------------------------------------------------

/// The kernel's limits on message queues (M6), read from /proc/sys.
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    /// `kernel.msgmax`: largest System V message text in bytes.
    pub msgmax: usize,
    /// `kernel.msgmnb`: default (and, unprivileged, maximum) bytes in one System V queue.
    pub msgmnb: usize,
    /// `kernel.msgmni`: System V queues system-wide.
    pub msgmni: usize,
    /// `fs.mqueue.msg_max`: most messages an unprivileged POSIX queue may hold.
    pub mq_msg_max: usize,
    /// `fs.mqueue.msgsize_max`: largest POSIX message an unprivileged queue may allow.
    pub mq_msgsize_max: usize,
    /// `fs.mqueue.queues_max`: POSIX queues system-wide.
    pub mq_queues_max: usize,
}

fn read_sysctl(path: &str) -> Result<usize> {
    let s = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    s.trim()
        .parse()
        .with_context(|| format!("parsing {path}: {s:?}"))
}

impl Limits {
    /// Reads the System V and POSIX limits; a POSIX file that is missing reads as 0.
    pub fn read() -> Result<Limits> {
        Ok(Limits {
            msgmax: read_sysctl("/proc/sys/kernel/msgmax")?,
            msgmnb: read_sysctl("/proc/sys/kernel/msgmnb")?,
            msgmni: read_sysctl("/proc/sys/kernel/msgmni")?,
            mq_msg_max: read_sysctl("/proc/sys/fs/mqueue/msg_max").unwrap_or(0),
            mq_msgsize_max: read_sysctl("/proc/sys/fs/mqueue/msgsize_max").unwrap_or(0),
            mq_queues_max: read_sysctl("/proc/sys/fs/mqueue/queues_max").unwrap_or(0),
        })
    }

    /// Largest frame (header + payload) one message may carry, and the sysctl that sets it.
    pub fn max_frame(&self, posix: bool) -> (usize, &'static str) {
        if posix {
            (self.mq_msgsize_max.min(MTEXT_MAX), "fs.mqueue.msgsize_max")
        } else if self.msgmnb < self.msgmax {
            // A message larger than the whole queue could never be sent.
            (self.msgmnb.min(MTEXT_MAX), "kernel.msgmnb")
        } else {
            (self.msgmax.min(MTEXT_MAX), "kernel.msgmax")
        }
    }

    /// Largest payload (`--size`) after the 40-byte frame header.
    pub fn max_payload(&self, posix: bool) -> usize {
        self.max_frame(posix).0.saturating_sub(HEADER_LEN)
    }

    /// Refuses a `--size` the queue cannot carry, naming the sysctl (never clamps).
    pub fn check_size(&self, size: usize, posix: bool) -> Result<()> {
        let (frame, sysctl) = self.max_frame(posix);
        let max = frame.saturating_sub(HEADER_LEN);
        if size > max {
            let cap = if frame == MTEXT_MAX {
                format!(" (this program caps messages at {MTEXT_MAX} bytes)")
            } else {
                String::new()
            };
            bail!(
                "--size {size} is too large: a message may hold at most {frame} bytes ({sysctl} = {frame}){cap}, \
                 and the frame header takes {HEADER_LEN}, so --size may be at most {max} (M6; an administrator can raise {sysctl} with sysctl -w)"
            );
        }
        Ok(())
    }

    /// The lines a learner sees at start (M6).
    pub fn describe(&self, posix: bool) -> Vec<String> {
        if posix {
            vec![
                format!(
                    "fs.mqueue.msgsize_max = {} bytes: largest message a queue may be created for",
                    self.mq_msgsize_max
                ),
                format!(
                    "fs.mqueue.msg_max = {}: most messages a queue may hold",
                    self.mq_msg_max
                ),
                format!(
                    "fs.mqueue.queues_max = {}: POSIX queues on the system",
                    self.mq_queues_max
                ),
            ]
        } else {
            vec![
                format!("kernel.msgmax = {} bytes: largest message", self.msgmax),
                format!(
                    "kernel.msgmnb = {} bytes: what one queue holds before msgsnd blocks",
                    self.msgmnb
                ),
                format!(
                    "kernel.msgmni = {}: System V queues on the system",
                    self.msgmni
                ),
            ]
        }
    }
}

// ---------------------------------------------------------------------------------------
// System V: msgget, msgsnd, msgrcv, msgctl
// ---------------------------------------------------------------------------------------

/// One System V message as `msgsnd(2)` and `msgrcv(2)` see it (M2): a `long` type, then
/// the text. The kernel reads `mtype` and then exactly the text length it is given, so the
/// struct must have C layout: `#[repr(C)]` puts `mtype` at offset 0 and `mtext` right after.
#[repr(C)]
pub struct Message {
    /// The message type, > 0 (M4). `msgrcv` selects on it.
    pub mtype: c_long,
    /// The text: here, one frame (40-byte header + payload).
    pub mtext: [u8; MTEXT_MAX],
}

impl Message {
    /// A zeroed message on the heap (64 KiB would be a large stack frame).
    pub fn boxed() -> Box<Message> {
        let layout = std::alloc::Layout::new::<Message>();
        // SAFETY: the layout is Message's own and not zero-sized (GlobalAlloc's requirement).
        let p = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<Message>();
        if p.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        // SAFETY: `p` is a non-null allocation from the global allocator with Message's
        // layout, so Box may own and free it; `Message` is a c_long and a byte array, for
        // which all-zero bytes are a valid value, so the memory is fully initialised.
        unsafe { Box::from_raw(p) }
    }
}

/// `ftok(3)`: a System V key from a file's device and inode numbers and a project byte.
///
/// Only the low 16 bits of the inode and 8 of the device are used, so two files can give
/// the same key; `--key` avoids the question.
pub fn ftok(path: &Path, proj: u8) -> Result<key_t> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .with_context(|| format!("ftok {}: the path contains a NUL byte", path.display()))?;
    // SAFETY: `c` is a valid NUL-terminated string that lives across the call; ftok only
    // reads it (it calls stat on the path).
    let key = unsafe { libc::ftok(c.as_ptr(), c_int::from(proj)) };
    if key == -1 {
        return Err(io::Error::last_os_error()).with_context(|| format!("ftok {}", path.display()));
    }
    Ok(key)
}

/// What `msgctl(IPC_STAT)` says about a queue.
#[derive(Clone, Copy, Debug)]
pub struct QueueStat {
    /// Owner's uid (can be changed with IPC_SET).
    pub uid: u32,
    /// Creator's uid.
    pub cuid: u32,
    /// Permission bits.
    pub mode: u32,
    /// Messages in the queue.
    pub qnum: u64,
    /// Bytes in the queue.
    pub cbytes: u64,
    /// Most bytes the queue may hold (starts at kernel.msgmnb).
    pub qbytes: u64,
    /// pid of the last msgsnd.
    pub lspid: i32,
    /// pid of the last msgrcv.
    pub lrpid: i32,
}

/// An open System V queue: just an identifier; the kernel keeps everything else.
#[derive(Clone, Copy, Debug)]
pub struct SysvQueue {
    /// The identifier `msgget` returned (what `ipcs -q` lists as msqid).
    pub id: c_int,
    /// The key it was found by.
    pub key: key_t,
}

impl SysvQueue {
    /// `msgget(key, IPC_CREAT | IPC_EXCL | 0600)`, or on EEXIST `msgget(key, 0)`.
    /// Returns the queue and whether this call created it.
    pub fn create_or_open(key: key_t) -> Result<(SysvQueue, bool)> {
        // SAFETY: msgget takes plain integers and touches no memory of ours.
        let id = unsafe { libc::msgget(key, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) };
        if id >= 0 {
            return Ok((SysvQueue { id, key }, true));
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EEXIST) {
            return Err(err)
                .with_context(|| format!("msgget key {key:#x} IPC_CREAT|IPC_EXCL 0600"));
        }
        // SAFETY: as above.
        let id = unsafe { libc::msgget(key, 0) };
        if id < 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("msgget key {key:#x}"));
        }
        Ok((SysvQueue { id, key }, false))
    }

    /// `msgctl(id, IPC_STAT)`.
    // The counters are `c_ulong`: u64 here, u32 on 32-bit targets, hence `from`.
    #[allow(clippy::useless_conversion)]
    pub fn stat(&self) -> io::Result<QueueStat> {
        let mut ds = std::mem::MaybeUninit::<libc::msqid_ds>::zeroed();
        // SAFETY: `ds` is a writable msqid_ds the kernel fills on success; it is only read
        // (assume_init) after the call returned 0.
        let rc = unsafe { libc::msgctl(self.id, libc::IPC_STAT, ds.as_mut_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the call succeeded, so the kernel initialised the struct (and it was
        // zeroed before, so even padding is initialised).
        let ds = unsafe { ds.assume_init() };
        Ok(QueueStat {
            uid: ds.msg_perm.uid,
            cuid: ds.msg_perm.cuid,
            mode: u32::from(ds.msg_perm.mode),
            qnum: u64::from(ds.msg_qnum),
            cbytes: u64::from(ds.__msg_cbytes),
            qbytes: u64::from(ds.msg_qbytes),
            lspid: ds.msg_lspid,
            lrpid: ds.msg_lrpid,
        })
    }

    /// `msgsnd(id, msg, len, flags)`: sends `msg.mtype` and the first `len` text bytes.
    /// Blocks while the queue is full unless `IPC_NOWAIT` (then EAGAIN).
    pub fn send(&self, msg: &Message, len: usize, flags: c_int) -> io::Result<()> {
        assert!(len <= MTEXT_MAX, "message text longer than the buffer");
        // SAFETY: `msg` is a #[repr(C)] Message: a c_long followed by MTEXT_MAX bytes, and
        // `len <= MTEXT_MAX` (asserted), so the kernel reads only memory inside `*msg`,
        // which the shared borrow keeps alive and unchanged during the call.
        let rc = unsafe { libc::msgsnd(self.id, (msg as *const Message).cast(), len, flags) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// `msgrcv(id, msg, MTEXT_MAX, msgtyp, flags)`: takes one message chosen by `msgtyp`
    /// (M4) into `msg` and returns its text length. Blocks while none matches unless
    /// `IPC_NOWAIT` (then ENOMSG).
    pub fn recv(&self, msg: &mut Message, msgtyp: c_long, flags: c_int) -> io::Result<usize> {
        // SAFETY: `msg` is a #[repr(C)] Message with room for MTEXT_MAX text bytes after
        // mtype, and we pass MTEXT_MAX as the size, so the kernel writes only inside `*msg`,
        // which the exclusive borrow keeps alive. Without MSG_NOERROR a longer message fails
        // with E2BIG instead of being written past the end.
        let n = unsafe {
            libc::msgrcv(
                self.id,
                (msg as *mut Message).cast(),
                MTEXT_MAX,
                msgtyp,
                flags,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// `msgctl(id, IPC_RMID)`: removes the queue at once; blocked callers get EIDRM.
    pub fn remove(id: c_int) -> io::Result<()> {
        // SAFETY: IPC_RMID takes no buffer (null is allowed) and touches no memory of ours.
        let rc = unsafe { libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// `msgctl(IPC_SET)` of the owner uid: used by tests (as root) to make a queue another
    /// user's.
    pub fn set_owner(&self, uid: u32) -> io::Result<()> {
        let mut ds = std::mem::MaybeUninit::<libc::msqid_ds>::zeroed();
        // SAFETY: as in `stat`: the kernel fills the zeroed struct.
        let rc = unsafe { libc::msgctl(self.id, libc::IPC_STAT, ds.as_mut_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: IPC_STAT succeeded, so the struct is initialised.
        let mut ds = unsafe { ds.assume_init() };
        ds.msg_perm.uid = uid;
        // SAFETY: IPC_SET reads the struct we pass, which lives across the call.
        let rc = unsafe { libc::msgctl(self.id, libc::IPC_SET, &mut ds) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Takes every message out without waiting (any type); returns how many there were.
    pub fn drain(&self, msg: &mut Message) -> io::Result<u64> {
        let mut n = 0;
        loop {
            match self.recv(msg, 0, libc::IPC_NOWAIT) {
                Ok(_) => n += 1,
                Err(e) if e.raw_os_error() == Some(libc::ENOMSG) => return Ok(n),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Whether an error means "the queue was removed" (EIDRM while waiting, EINVAL after).
pub fn is_removed(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIDRM) | Some(libc::EINVAL))
}

// ---------------------------------------------------------------------------------------
// POSIX names
// ---------------------------------------------------------------------------------------

/// POSIX queue names: requests (and data) and, for pingpong, replies.
pub fn posix_names(name: &str) -> (String, String) {
    let main = common::runtime::kernel_name(name);
    let back = format!("{main}.back");
    (main, back)
}

/// `mq_unlink` that treats "already gone" as done.
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
pub fn mq_timedsend(
    q: &nix::mqueue::MqdT,
    msg: &[u8],
    prio: u32,
    abstime: &nix::sys::time::TimeSpec,
) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
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

/// The owner uid of an open POSIX queue: on Linux a queue descriptor is a file descriptor,
/// so `fstat` works on it (mq_overview(7)).
pub fn posix_owner(q: &nix::mqueue::MqdT) -> Result<(u32, u32)> {
    let st = nix::sys::stat::fstat(q.as_fd()).context("fstat on the queue descriptor")?;
    Ok((st.st_uid, st.st_mode & 0o777))
}

// ---------------------------------------------------------------------------------------
// The pair file: rendezvous, key, and who is there
// ---------------------------------------------------------------------------------------

/// The pair's file in the runtime directory.
pub fn pair_path(name: &str, posix: bool) -> Result<PathBuf> {
    let ext = if posix { "posix-mq" } else { "sysv-mq" };
    common::runtime::runtime_path(&format!("{name}.{ext}"))
}

/// Which side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sends the session.
    Writer,
    /// Receives it.
    Reader,
}

impl Role {
    fn offset(self) -> u64 {
        match self {
            Role::Writer => 0,
            Role::Reader => SLOT as u64,
        }
    }
    /// "writer" / "reader".
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Writer => "writer",
            Role::Reader => "reader",
        }
    }
    /// The other side.
    pub fn peer(self) -> Role {
        match self {
            Role::Writer => Role::Reader,
            Role::Reader => Role::Writer,
        }
    }
}

/// What a slot of the pair file says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// Nobody recorded.
    Empty,
    /// A process said it is running.
    Running(i32),
    /// A process said it finished its part cleanly.
    Finished(i32),
}

/// Bytes per slot: one text line, padded, so `cat` shows both.
const SLOT: usize = 40;

/// The pair file, open. Slots are written with `pwrite` at fixed offsets, so writer and
/// reader never overwrite each other's line.
#[derive(Debug)]
pub struct PairFile {
    /// Where it is.
    pub path: PathBuf,
    /// Open read-write.
    file: File,
}

impl PairFile {
    /// Opens (creating, mode 0600) the pair file and checks it is a regular file of ours.
    pub fn open(path: &Path) -> Result<PairFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?;
        let meta = file
            .metadata()
            .with_context(|| format!("fstat {}", path.display()))?;
        if !meta.file_type().is_file() || meta.uid() != geteuid().as_raw() {
            bail!(
                "{} is not a regular file of yours; refusing to use it",
                path.display()
            );
        }
        Ok(PairFile {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Takes the exclusive `flock` held while a side opens the queue and checks it.
    pub fn lock(&self) -> Result<Flock<File>> {
        let f = self.file.try_clone().context("dup of the pair file")?;
        Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .with_context(|| format!("flock {}", self.path.display()))
    }

    /// Reads a slot.
    pub fn read(&self, role: Role) -> Slot {
        let mut buf = [0u8; SLOT];
        let n = self.file.read_at(&mut buf, role.offset()).unwrap_or(0);
        let line = String::from_utf8_lossy(&buf[..n]);
        let mut w = line.split_whitespace();
        let (_, pid, state) = (w.next(), w.next(), w.next());
        match (pid.and_then(|p| p.parse().ok()), state) {
            (Some(pid), Some("running")) => Slot::Running(pid),
            (Some(pid), Some("finished")) => Slot::Finished(pid),
            _ => Slot::Empty,
        }
    }

    /// Writes a slot.
    pub fn write(&self, role: Role, slot: Slot) -> Result<()> {
        let text = match slot {
            Slot::Empty => format!("{} - none", role.as_str()),
            Slot::Running(p) => format!("{} {p} running", role.as_str()),
            Slot::Finished(p) => format!("{} {p} finished", role.as_str()),
        };
        let mut buf = [b' '; SLOT];
        let n = text.len().min(SLOT - 1);
        buf[..n].copy_from_slice(&text.as_bytes()[..n]);
        buf[SLOT - 1] = b'\n';
        self.file
            .write_at(&buf, role.offset())
            .with_context(|| format!("pwrite {}", self.path.display()))?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Peer liveness and the watchdog
// ---------------------------------------------------------------------------------------

/// Why a wait ended without a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gone {
    /// The peer's pid is recorded as running but no such process exists (killed).
    Died(i32),
    /// No peer was recorded within `--timeout` while this side was blocked.
    NeverCame,
    /// The peer finished cleanly and nothing more came for this side.
    Finished(i32),
}

impl Gone {
    /// A sentence for narration and errors.
    pub fn describe(&self, peer: Role) -> String {
        match self {
            Gone::Died(pid) => format!("the {} (pid {pid}) died without finishing", peer.as_str()),
            Gone::NeverCame => format!("no {} came within --timeout", peer.as_str()),
            Gone::Finished(pid) => {
                format!(
                    "the {} (pid {pid}) finished and nothing more arrived",
                    peer.as_str()
                )
            }
        }
    }
}

/// How often liveness is checked while blocked.
pub const CHECK_EVERY: Duration = Duration::from_millis(100);
/// How long a reader keeps waiting after its writer finished cleanly.
pub const AFTER_FINISH: Duration = Duration::from_millis(500);

/// Watches the peer's slot in the pair file.
pub struct Liveness {
    /// The pair file (its own descriptor).
    pair: PairFile,
    /// Whose slot to watch.
    pub peer: Role,
    /// `--timeout`: how long to wait for a peer that has not shown up.
    timeout: Duration,
    /// Non-zero while the main thread is inside a call that may block: a call number,
    /// so the watchdog can tell one long call from many short ones.
    pub in_call: AtomicU64,
    /// What to remove when the peer is found dead (the queue is useless then): run once.
    on_death: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Liveness {
    /// Watches `peer` in the pair file at `path`.
    pub fn new(path: &Path, peer: Role, timeout: Duration) -> Result<Liveness> {
        Ok(Liveness {
            pair: PairFile::open(path)?,
            peer,
            timeout,
            in_call: AtomicU64::new(0),
            on_death: Mutex::new(None),
        })
    }

    /// Sets what [`Liveness::bury`] removes.
    pub fn set_on_death(&self, f: impl FnOnce() + Send + 'static) {
        *self.on_death.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(f));
    }

    /// The peer died: remove what the pair owned (queue and pair file), once.
    pub fn bury(&self, g: &Gone) {
        if matches!(g, Gone::Died(_)) {
            if let Some(f) = self
                .on_death
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            {
                f();
            }
        }
    }

    /// Checks the peer, given how long this side has been blocked. `None`: keep waiting.
    pub fn check(&self, blocked: Duration) -> Option<Gone> {
        match self.pair.read(self.peer) {
            Slot::Running(pid) if !common::peer::alive(pid) => Some(Gone::Died(pid)),
            Slot::Running(_) => None,
            Slot::Finished(pid) if blocked >= AFTER_FINISH => Some(Gone::Finished(pid)),
            Slot::Finished(_) => None,
            Slot::Empty if blocked >= self.timeout => Some(Gone::NeverCame),
            Slot::Empty => None,
        }
    }
}

/// A thread that wakes a System V call blocked on a dead peer by removing the queue.
///
/// Why a thread: msgrcv and msgsnd have no timeout. A loop of IPC_NOWAIT calls and sleeps
/// would add a system call and a sleep to every empty-queue wait, which is most of a
/// pingpong round trip; a signal would need a handler. Removing the queue is what the
/// reader does at the end anyway, and the blocked call returns EIDRM at once.
pub struct Watchdog {
    /// Set by the main thread when it no longer needs watching.
    stop: Arc<AtomicBool>,
}

impl Watchdog {
    /// Starts watching; on a verdict, stores it in `fired` (shared with the transport,
    /// which reads it when a call fails with EIDRM) and runs `remove` (queue and pair file).
    pub fn start(
        live: Arc<Liveness>,
        fired: Arc<Mutex<Option<Gone>>>,
        remove: impl Fn() + Send + 'static,
    ) -> Result<Watchdog> {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, f) = (stop.clone(), fired);
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || {
                let (mut last_call, mut since) = (0u64, Instant::now());
                while !s.load(Ordering::Acquire) {
                    std::thread::sleep(CHECK_EVERY);
                    let call = live.in_call.load(Ordering::Relaxed);
                    if call == 0 || call != last_call {
                        since = Instant::now();
                    }
                    last_call = call;
                    let blocked = if call == 0 {
                        Duration::ZERO
                    } else {
                        since.elapsed()
                    };
                    if let Some(g) = live.check(blocked) {
                        // Finished peers are only a verdict while we are stuck waiting.
                        if matches!(g, Gone::Finished(_)) && call == 0 {
                            continue;
                        }
                        if s.load(Ordering::Acquire) {
                            return;
                        }
                        // The verdict's lock is held while removing: the main thread, woken
                        // by EIDRM, reads the verdict and so waits until the removal is
                        // complete before it can exit.
                        let mut v = f.lock().unwrap_or_else(|p| p.into_inner());
                        *v = Some(g);
                        remove();
                        drop(v);
                        return;
                    }
                }
            })
            .context("spawning the watchdog thread")?;
        Ok(Watchdog { stop })
    }

    /// Stops watching (the pair is done).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Removes a System V queue and then the pair file; "already gone" is fine. The queue goes
/// first: once the file is gone a new file may get its inode, and so the same ftok key.
pub fn remove_sysv(id: c_int, path: &Path) -> io::Result<()> {
    match SysvQueue::remove(id) {
        Ok(()) => {}
        Err(e) if is_removed(&e) => {}
        Err(e) => return Err(e),
    }
    remove_file(path)
}

/// Removes POSIX queues and then the pair file; "already gone" is fine.
pub fn remove_posix(names: &[String], path: &Path) -> io::Result<()> {
    for n in names {
        posix_unlink(n)?;
    }
    remove_file(path)
}

fn remove_file(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_is_a_long_then_the_text() {
        assert_eq!(std::mem::offset_of!(Message, mtype), 0);
        assert_eq!(
            std::mem::offset_of!(Message, mtext),
            std::mem::size_of::<c_long>()
        );
    }

    #[test]
    fn size_limits_name_the_sysctl() {
        let l = Limits {
            msgmax: 8192,
            msgmnb: 16384,
            mq_msgsize_max: 8192,
            ..Limits::default()
        };
        assert_eq!(l.max_payload(false), 8152);
        assert!(l.check_size(8152, false).is_ok());
        let e = l.check_size(8153, false).unwrap_err().to_string();
        assert!(e.contains("kernel.msgmax") && e.contains("8152"), "{e}");
        let e = l.check_size(9000, true).unwrap_err().to_string();
        assert!(e.contains("fs.mqueue.msgsize_max"), "{e}");
    }

    #[test]
    fn pair_file_slots_round_trip() {
        let d = std::env::temp_dir().join(format!("msgq-unit-{}", std::process::id()));
        let p = PairFile::open(&d).unwrap();
        assert_eq!(p.read(Role::Writer), Slot::Empty);
        p.write(Role::Writer, Slot::Running(42)).unwrap();
        p.write(Role::Reader, Slot::Finished(43)).unwrap();
        assert_eq!(p.read(Role::Writer), Slot::Running(42));
        assert_eq!(p.read(Role::Reader), Slot::Finished(43));
        std::fs::remove_file(&d).unwrap();
    }

    #[test]
    fn a_queue_round_trips_one_message_by_type() {
        let (q, created) = SysvQueue::create_or_open(libc::IPC_PRIVATE).unwrap();
        assert!(created);
        let mut m = Message::boxed();
        for (t, text) in [(2, b"two"), (1, b"one")] {
            m.mtype = t;
            m.mtext[..3].copy_from_slice(text);
            q.send(&m, 3, 0).unwrap();
        }
        // M4: type 1 first although it was sent second.
        let n = q.recv(&mut m, 1, libc::IPC_NOWAIT).unwrap();
        assert_eq!((m.mtype, &m.mtext[..n]), (1, &b"one"[..]));
        assert_eq!(q.stat().unwrap().qnum, 1);
        assert_eq!(q.drain(&mut m).unwrap(), 1);
        SysvQueue::remove(q.id).unwrap();
    }
}
