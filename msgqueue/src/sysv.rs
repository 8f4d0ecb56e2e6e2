//! System V message queues: one thin wrapper per call, named after it. The crate's
//! `unsafe` is here, but for `posix::mq_timedsend`.
//!
//! A queue is found by a `key_t` (from `ftok(3)` or `--key`) and used by the identifier
//! `msgget(2)` returns (`ipcs -q` lists both). A message is a C struct, a `long` type and
//! then the text ([`Message`]); `msgsnd(2)` copies one in and `msgrcv(2)` takes one out,
//! chosen by type (M4). `msgctl(2)` reads the queue's state, changes its owner or removes it.
//! The rendezvous's System V half is here too (`open_sysv`: the key, `msgget`, the
//! owner check), as `posix.rs` holds the POSIX one.
//! See [svipc(7)](https://man7.org/linux/man-pages/man7/svipc.7.html).

use std::io;
use std::path::Path;

use anyhow::{bail, Context, Result};
use common::narrate;
use common::session::Outgoing;
use libc::{c_int, c_long, key_t};

use crate::rendezvous::OpenArgs;
use crate::MTEXT_MAX;

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

    /// Puts a frame in: `mtype`, then header and payload as the text. Returns the text
    /// length to give `msgsnd`.
    pub fn load(&mut self, mtype: i64, frame: &Outgoing<'_>) -> Result<usize> {
        let len = frame.len();
        if len > MTEXT_MAX {
            bail!("a frame of {len} bytes does not fit a message of {MTEXT_MAX} bytes");
        }
        self.mtype = mtype as c_long;
        let (header, payload) = self.mtext.split_at_mut(frame.header.len());
        header.copy_from_slice(frame.header);
        payload[..frame.payload.len()].copy_from_slice(frame.payload);
        Ok(len)
    }
}

/// `ftok(3)`: a System V key from a file's device and inode numbers and a project byte.
///
/// Only the low 16 bits of the inode and 8 of the device are used, so two files can give
/// the same key; `--key` avoids the question.
/// See [ftok(3)](https://man7.org/linux/man-pages/man3/ftok.3.html).
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

/// `msgget(2)`: the identifier of the queue with this key; `IPC_CREAT | IPC_EXCL | mode`
/// creates it and fails with EEXIST if it exists.
/// See [msgget(2)](https://man7.org/linux/man-pages/man2/msgget.2.html).
pub fn msgget(key: key_t, flags: c_int) -> io::Result<c_int> {
    // SAFETY: msgget takes plain integers and touches no memory of ours.
    let id = unsafe { libc::msgget(key, flags) };
    if id < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(id)
}

/// `msgsnd(2)`: the kernel copies `msg.mtype` and the first `len` text bytes into a new
/// message at the end of the queue. Blocks while the queue is full unless `IPC_NOWAIT`
/// (then EAGAIN); a queue removed meanwhile fails with EIDRM.
/// See [msgsnd(2)](https://man7.org/linux/man-pages/man2/msgsnd.2.html).
pub fn msgsnd(q: SysvQueue, msg: &Message, len: usize, flags: c_int) -> io::Result<()> {
    assert!(len <= MTEXT_MAX, "message text longer than the buffer");
    // SAFETY: `msg` is a #[repr(C)] Message: a c_long followed by MTEXT_MAX bytes, and
    // `len <= MTEXT_MAX` (asserted), so the kernel reads only memory inside `*msg`,
    // which the shared borrow keeps alive and unchanged during the call.
    let rc = unsafe { libc::msgsnd(q.id, (msg as *const Message).cast(), len, flags) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `msgrcv(2)`: takes one whole message chosen by `msgtyp` (M4: 0 the first, `T > 0` the
/// first of type T, `T < 0` the first of the lowest type `<= |T|`) into `msg` and returns
/// its text length. Blocks while none matches unless `IPC_NOWAIT` (then ENOMSG).
/// See [msgrcv(2)](https://man7.org/linux/man-pages/man2/msgrcv.2.html).
pub fn msgrcv(q: SysvQueue, msg: &mut Message, msgtyp: i64, flags: c_int) -> io::Result<usize> {
    // SAFETY: `msg` is a #[repr(C)] Message with room for MTEXT_MAX text bytes after
    // mtype, and we pass MTEXT_MAX as the size, so the kernel writes only inside `*msg`,
    // which the exclusive borrow keeps alive. Without MSG_NOERROR a longer message fails
    // with E2BIG instead of being written past the end.
    let n = unsafe {
        libc::msgrcv(
            q.id,
            (msg as *mut Message).cast(),
            MTEXT_MAX,
            msgtyp as c_long,
            flags,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Whether an `IPC_RMID` error means "already removed" (EIDRM, or EINVAL: no such msqid).
pub fn is_removed(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIDRM) | Some(libc::EINVAL))
}

/// The name of the errno an error carries (`EIDRM`, `EINVAL`), from its number, so a
/// message never names an errno the call did not return.
pub fn errno_name(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => format!("{:?}", nix::errno::Errno::from_raw(n)),
        None => "no errno".into(),
    }
}

/// Whether a failed `msgsnd`/`msgrcv` on `q` means the queue is gone: EIDRM (it was
/// removed while the call waited in it), or EINVAL while `msgctl(IPC_STAT)` no longer finds
/// the msqid (it was removed between two calls; EINVAL also means a bad size or type, and
/// then the queue is still there).
pub fn queue_gone(q: SysvQueue, e: &io::Error) -> bool {
    match e.raw_os_error() {
        Some(libc::EIDRM) => true,
        Some(libc::EINVAL) => q.stat().is_err(),
        _ => false,
    }
}

/// What a failed `call` on `q` says, with the errno's real name: EIDRM and EINVAL, the two
/// ways a removed queue shows, are told apart.
pub fn failure(call: &str, q: SysvQueue, e: &io::Error) -> String {
    let name = errno_name(e);
    let what = match e.raw_os_error() {
        Some(libc::EIDRM) => format!("the queue was removed while {call} was waiting in it"),
        Some(libc::EINVAL) if q.stat().is_err() => format!(
            "msqid {} no longer names a queue: it was removed before this call",
            q.id
        ),
        _ => format!("msqid {}", q.id),
    };
    format!("{call}: {name}: {what} ({e})")
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
        match msgget(key, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) {
            Ok(id) => return Ok((SysvQueue { id, key }, true)),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("msgget key {key:#x} IPC_CREAT|IPC_EXCL 0600"))
            }
        }
        let id = msgget(key, 0).with_context(|| format!("msgget key {key:#x}"))?;
        Ok((SysvQueue { id, key }, false))
    }

    /// `msgctl(id, IPC_STAT)`: owner, mode, messages and bytes queued, last pids.
    /// See [msgctl(2)](https://man7.org/linux/man-pages/man2/msgctl.2.html).
    // The counters are `c_ulong`: u64 here, u32 on 32-bit targets, hence `from`.
    #[allow(clippy::useless_conversion)]
    pub fn stat(&self) -> io::Result<QueueStat> {
        let ds = self.msqid_ds()?;
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

    fn msqid_ds(&self) -> io::Result<libc::msqid_ds> {
        let mut ds = std::mem::MaybeUninit::<libc::msqid_ds>::zeroed();
        // SAFETY: `ds` is a writable msqid_ds the kernel fills on success; it is only read
        // (assume_init) after the call returned 0.
        let rc = unsafe { libc::msgctl(self.id, libc::IPC_STAT, ds.as_mut_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the call succeeded, so the kernel initialised the struct (and it was
        // zeroed before, so even padding is initialised).
        Ok(unsafe { ds.assume_init() })
    }

    /// `msgctl(id, IPC_RMID)`: removes the queue at once; blocked callers get EIDRM.
    /// See [msgctl(2)](https://man7.org/linux/man-pages/man2/msgctl.2.html).
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
        let mut ds = self.msqid_ds()?;
        ds.msg_perm.uid = uid;
        // SAFETY: IPC_SET reads the struct we pass, which lives across the call.
        let rc = unsafe { libc::msgctl(self.id, libc::IPC_SET, &mut ds) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// `msgctl(IPC_SET)` of `msg_qbytes`: the bytes the queue holds before `msgsnd` waits
    /// (`--queue-bytes`, M6). The owner may lower it; raising it above `kernel.msgmnb`
    /// needs `CAP_SYS_RESOURCE` (else EPERM).
    pub fn set_qbytes(&self, bytes: u64) -> io::Result<()> {
        let mut ds = self.msqid_ds()?;
        ds.msg_qbytes = bytes as libc::msglen_t;
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
            match msgrcv(*self, msg, 0, libc::IPC_NOWAIT) {
                Ok(_) => n += 1,
                Err(e) if e.raw_os_error() == Some(libc::ENOMSG) => return Ok(n),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// The System V queue of `path` (its `ftok` key, or `--key`): created or opened, and
/// checked to be ours: the rendezvous's System V half (steps 3 and 4 of
/// [`crate::rendezvous`]), also the shared queue's (M5, `members.rs`).
pub(crate) fn open_sysv(a: &OpenArgs, path: &Path) -> Result<(SysvQueue, bool)> {
    let key = match a.key {
        Some(k) => {
            narrate!("System V key {k:#x} from --key");
            k
        }
        None => {
            let k = ftok(path, b'M')?;
            narrate!(
                "System V key {k:#x} = ftok({}, 'M'): from the file's device and inode numbers",
                path.display()
            );
            k
        }
    };
    let (q, created) = SysvQueue::create_or_open(key)?;
    // A queue this call just created is not left behind for a failed check.
    let forget = |e: anyhow::Error| {
        if created {
            let _ = SysvQueue::remove(q.id);
        }
        e
    };
    let st = q
        .stat()
        .with_context(|| format!("msgctl IPC_STAT queue {}", q.id))
        .map_err(forget)?;
    let me = nix::unistd::geteuid().as_raw();
    if st.uid != me || st.cuid != me {
        bail!(
            "System V queue key {key:#x} (msqid {}) belongs to uid {} (created by uid {}), not to you (uid {me}): refusing to use another user's queue",
            q.id, st.uid, st.cuid
        );
    }
    if created {
        narrate!(
            "msgget(key {key:#x}, IPC_CREAT|IPC_EXCL|0600) created queue msqid {} ({})",
            q.id,
            crate::elsewhere::LOOK_SYSV
        );
    } else {
        narrate!(
            "msgget(key {key:#x}, 0) opened the existing queue msqid {} (mode {:o}, {}, {} bytes; last msgsnd by pid {}, last msgrcv by pid {})",
            q.id, st.mode & 0o777, crate::messages(st.qnum), st.cbytes, st.lspid, st.lrpid
        );
    }
    // --queue-bytes: msg_qbytes is the owner's to change at any time (depth.rs).
    let qbytes = match a.shape.qbytes {
        Some(b) => {
            let got = crate::depth::set_qbytes(q, b).map_err(forget)?;
            narrate!("msgctl(IPC_SET) msg_qbytes {b} (--queue-bytes; it was {}): IPC_STAT reads back {got}", st.qbytes);
            got
        }
        None => st.qbytes,
    };
    narrate!(
        "the queue holds at most {qbytes} bytes (msg_qbytes; a new queue gets kernel.msgmnb, --queue-bytes changes it): a msgsnd that does not fit blocks (M6)"
    );
    Ok((q, created))
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
    fn errno_names_match_their_numbers() {
        let e = |n| io::Error::from_raw_os_error(n);
        assert_eq!(errno_name(&e(libc::EIDRM)), "EIDRM");
        assert_eq!(errno_name(&e(libc::EINVAL)), "EINVAL");
        assert_eq!(errno_name(&e(libc::EAGAIN)), "EAGAIN");
        // A queue removed before the call: msgrcv says EINVAL, and so does the message.
        let (q, _) = SysvQueue::create_or_open(libc::IPC_PRIVATE).unwrap();
        SysvQueue::remove(q.id).unwrap();
        let err = msgrcv(q, &mut Message::boxed(), 0, libc::IPC_NOWAIT).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        assert!(queue_gone(q, &err));
        let text = failure("msgrcv", q, &err);
        assert!(text.starts_with("msgrcv: EINVAL: msqid"), "{text}");
        assert!(!text.contains("EIDRM"), "{text}");
    }

    #[test]
    fn a_queue_round_trips_one_message_by_type() {
        let (q, created) = SysvQueue::create_or_open(libc::IPC_PRIVATE).unwrap();
        assert!(created);
        let mut m = Message::boxed();
        for (t, text) in [(2, b"two"), (1, b"one")] {
            m.mtype = t;
            m.mtext[..3].copy_from_slice(text);
            msgsnd(q, &m, 3, 0).unwrap();
        }
        // M4: type 1 first although it was sent second.
        let n = msgrcv(q, &mut m, 1, libc::IPC_NOWAIT).unwrap();
        assert_eq!((m.mtype, &m.mtext[..n]), (1, &b"one"[..]));
        assert_eq!(q.stat().unwrap().qnum, 1);
        assert_eq!(q.drain(&mut m).unwrap(), 1);
        SysvQueue::remove(q.id).unwrap();
    }
}
