//! The rendezvous: how writer and reader find one queue, and who removes it.
//! **A first reading may skip this file**: the role files call [`open`] once, and then
//! [`writer_owns`] or [`reader_owns`], and get the queue(s) back.
//!
//! [`open`] is the same for both sides, under an exclusive `flock` of the pair file so the
//! two never check at the same time:
//! 1. the pair file (`<name>.sysv-mq` / `<name>.posix-mq` in the runtime directory) is
//!    created or opened, and must be a regular file of ours;
//! 2. another process already playing this role, and alive, is refused;
//! 3. the queue is created or opened: System V by the file's `ftok` key (or `--key`),
//!    `msgget(IPC_CREAT|IPC_EXCL|0600)` and on EEXIST `msgget(key, 0)`; POSIX by name,
//!    `mq_open(O_CREAT|O_EXCL, 0600)` and on EEXIST `mq_open` of the existing one.
//!    Whichever side comes first creates it; the other opens it (either start order works);
//! 4. the owner is checked (`msgctl(IPC_STAT)`, `fstat`): another user's queue is refused;
//! 5. messages already in the queue are judged: this session's (a writer that started
//!    first, or finished and exited: M1) or stale (a killed run): discarded and counted;
//! 6. a peer recorded as running but dead is forgotten, and this side records itself.
//!
//! Cleanup: the reader owns the queue(s) and the pair file from the start ([`reader_owns`]);
//! a writer owns a queue it created only until it finishes, and never removes one a live
//! reader is using ([`writer_owns`]). Either side removes both when it finds its peer
//! dead ([`PeerWatch::on_death`]).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::cleanup::Owned;
use common::cli::CommonArgs;
use common::narrate;
use common::setup::Role;
use libc::key_t;
use nix::errno::Errno;
use nix::mqueue::{mq_getattr, mq_open, MQ_OFlag, MqAttr, MqdT};
use nix::sys::stat::Mode;
use nix::sys::time::TimeSpec;

use crate::posix::{posix_names, posix_owner, posix_unlink};
use crate::sysv::{ftok, is_removed, Message, SysvQueue};
use crate::watch::{PeerWatch, Slot};
use crate::{Limits, QueueArgs, DEFAULT_NAME};

/// The pair's file in the runtime directory.
pub fn pair_path(name: &str, posix: bool) -> Result<PathBuf> {
    let ext = if posix { "posix-mq" } else { "sysv-mq" };
    common::runtime::runtime_path(&format!("{name}.{ext}"))
}

/// `--key`: decimal or 0x-prefixed hex, not 0 (IPC_PRIVATE).
pub fn parse_key(s: &str) -> Result<i32, String> {
    let t = s.trim();
    let v = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16).map(|v| v as i32),
        None => t.parse::<i32>(),
    }
    .map_err(|_| format!("'{s}' is not a key (decimal or 0x hex)"))?;
    if v == 0 {
        return Err("0 is IPC_PRIVATE, a queue nobody else can find; pick another key".into());
    }
    Ok(v)
}

/// What a side asks for when it opens the pair.
#[derive(Clone, Debug)]
pub struct OpenArgs {
    /// This side.
    pub role: Role,
    /// POSIX (`--posix`) or System V.
    pub posix: bool,
    /// Rendezvous name.
    pub name: String,
    /// `--key`: a System V key instead of ftok.
    pub key: Option<key_t>,
    /// Pingpong needs the POSIX reply queue.
    pub pingpong: bool,
    /// A POSIX queue is created for messages of this many bytes (frame included).
    pub msgsize: usize,
    /// A POSIX queue is created to hold this many messages.
    pub maxmsg: usize,
    /// `--timeout`: how long a wait gives a peer that has not shown up.
    pub timeout: Duration,
}

impl OpenArgs {
    /// What `role` asks for, from its flags and the limits: a POSIX queue is created for the
    /// largest frame that fits and at most 10 messages.
    pub fn new(role: Role, q: &QueueArgs, c: &CommonArgs, limits: &Limits) -> OpenArgs {
        let posix = q.posix;
        OpenArgs {
            role,
            posix,
            name: c.name_or(DEFAULT_NAME).to_string(),
            key: q.key,
            pingpong: c.mode == common::cli::Mode::Pingpong,
            msgsize: limits.max_frame(posix).0,
            maxmsg: limits.mq_msg_max.clamp(1, 10),
            timeout: c.timeout,
        }
    }
}

/// The queue(s) of one pair.
#[derive(Debug)]
pub enum Queues {
    /// One System V queue; types separate requests, replies and End.
    Sysv(SysvQueue),
    /// POSIX: the main queue and, for pingpong, the reply queue.
    Posix {
        /// Writer -> reader.
        main: MqdT,
        /// Reader -> writer (pingpong).
        back: Option<MqdT>,
        /// Their names, for mq_unlink.
        names: Vec<String>,
    },
}

/// An opened pair.
pub struct Opened {
    /// The queue(s).
    pub queues: Queues,
    /// Who the peer is and whether it lives (the pair file, locked only during `open`).
    pub watch: Arc<PeerWatch>,
    /// Whether this side created the queue (else the peer or an earlier run did).
    pub created: bool,
    /// Messages of an earlier run found and discarded.
    pub stale: u64,
    /// Messages already waiting that belong to this session (the writer started first).
    pub waiting: u64,
    /// Facts for the report.
    pub notes: Vec<String>,
    /// A reader that finished before this one and left messages of other types (M4).
    pub earlier_reader: Option<i32>,
}

/// What identifies the queue(s) for removal, copyable into a cleanup closure.
#[derive(Clone, Debug)]
pub enum QueueIds {
    /// A System V msqid.
    Sysv(libc::c_int),
    /// POSIX queue names.
    Posix(Vec<String>),
}

impl QueueIds {
    /// Removes the queue(s) (IPC_RMID / mq_unlink) and then the pair file at `path`;
    /// "already gone" is fine. The queue goes first: once the file is gone a new file may
    /// get its inode, and so the same ftok key.
    pub fn remove(&self, path: &Path) -> io::Result<()> {
        match self {
            QueueIds::Sysv(id) => match SysvQueue::remove(*id) {
                Err(e) if !is_removed(&e) => return Err(e),
                _ => {}
            },
            QueueIds::Posix(names) => {
                for n in names {
                    posix_unlink(n)?;
                }
            }
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// "System V msqid 3" / "POSIX /ipc-study-0-x and /ipc-study-0-x.back".
    pub fn describe(&self) -> String {
        match self {
            QueueIds::Sysv(id) => format!("System V msqid {id}"),
            QueueIds::Posix(names) => format!("POSIX {}", names.join(" and ")),
        }
    }
}

impl Opened {
    /// The queue(s) as [`QueueIds`].
    pub fn ids(&self) -> QueueIds {
        match &self.queues {
            Queues::Sysv(q) => QueueIds::Sysv(q.id),
            Queues::Posix { names, .. } => QueueIds::Posix(names.clone()),
        }
    }
}

/// The rendezvous: see the module docs (steps 1 to 6).
pub fn open(a: &OpenArgs) -> Result<Opened> {
    let path = pair_path(&a.name, a.posix)?;
    let watch = Arc::new(PeerWatch::open(&path, a.role, a.timeout)?);
    narrate!(
        "pair file {}: flock while checking the queue, so writer and reader never check at the same time",
        path.display()
    );
    let lock = watch.lock()?;
    let me = std::process::id() as i32;

    // Is another process already playing this role?
    let earlier_reader = match watch.read(a.role) {
        Slot::Finished(pid) if a.role == Role::Reader && pid != me => Some(pid),
        _ => None,
    };
    match watch.read(a.role) {
        // One writer and one reader at a time: two readers at once would remove the
        // queue under each other, and a second writer would mix two sessions. Several of
        // each is the shared mode's (M5), with its own registry and queue.
        Slot::Running(pid) if pid != me && common::peer::alive(pid) => {
            bail!(
                "another {} (pid {pid}) is using this queue ({}); wait for it, pick another --name, or run every writer and reader with --shared (several of each at once, M5)",
                a.role,
                path.display()
            )
        }
        _ => {}
    }
    let (queues, created) = if a.posix {
        open_posix(a)?
    } else {
        let (q, created) = open_sysv(a, &path)?;
        (Queues::Sysv(q), created)
    };
    let mut opened = Opened {
        queues,
        watch,
        created,
        stale: 0,
        waiting: 0,
        notes: Vec::new(),
        earlier_reader,
    };
    judge_queued(&mut opened, a.role)?;
    forget_dead_peer(&opened.watch, a.role)?;
    opened.watch.write(a.role, Slot::Running(me))?;
    drop(lock);
    // A dead peer leaves a queue nobody will use: the side that finds out removes it.
    let (ids, p) = (opened.ids(), path);
    opened.watch.on_death(move || {
        let _ = ids.remove(&p);
    });
    Ok(opened)
}

/// Step 5: messages already in the queue: this session's, or leftovers?
fn judge_queued(o: &mut Opened, role: Role) -> Result<()> {
    let queued = count(&o.queues)?;
    if queued == 0 {
        return Ok(());
    }
    let me = std::process::id() as i32;
    let writer = match role {
        Role::Writer => Slot::Empty,
        Role::Reader => o.watch.read(Role::Writer),
    };
    let keep = match writer {
        Slot::Running(pid) if common::peer::alive(pid) => Some(format!(
            "sent by writer pid {pid}, which started first and is still running"
        )),
        Slot::Finished(pid) => Some(format!(
            "sent by writer pid {pid}, which finished its session and exited: the kernel kept them (M1)"
        )),
        _ => None,
    };
    if let Some(why) = keep {
        o.waiting = queued;
        narrate!("{queued} messages are already waiting in the queue, {why}");
        return Ok(());
    }
    o.stale = drain(&o.queues)?;
    let whose = match o.watch.read(Role::Writer) {
        Slot::Running(pid) if pid != me => {
            format!("writer pid {pid}, which was killed before it finished")
        }
        Slot::Finished(pid) => format!("writer pid {pid}, whose session nobody read to the end"),
        _ => "an earlier run".to_string(),
    };
    narrate!(
        "the queue held {} messages left by {whose}: stale; discarded them before this session starts",
        o.stale
    );
    o.notes.push(format!(
        "{} stale messages of an earlier run discarded",
        o.stale
    ));
    Ok(())
}

/// Step 6: a peer recorded as running but dead is history: clear its slot so nobody waits
/// on it.
fn forget_dead_peer(watch: &PeerWatch, role: Role) -> Result<()> {
    if let Slot::Running(pid) = watch.read(role.peer()) {
        if !common::peer::alive(pid) {
            narrate!(
                "the pair file names {} pid {pid}, which no longer runs: forgetting it",
                role.peer()
            );
            watch.write(role.peer(), Slot::Empty)?;
        }
    }
    Ok(())
}

/// The writer's claim on a queue it created: removed on an error or Ctrl-C unless a live
/// reader is recorded (it removes the queue when done); released after a clean finish, so
/// the messages wait for a reader (M1).
pub fn writer_owns(o: &Opened) -> Option<Owned> {
    if !o.created {
        return None;
    }
    let (watch, ids) = (Arc::clone(&o.watch), o.ids());
    Some(common::cleanup::own(
        format!("the queue ({})", ids.describe()),
        move || {
            if let Slot::Running(pid) = watch.read(Role::Reader) {
                if common::peer::alive(pid) {
                    narrate!("leaving the queue to the reader (pid {pid}), which removes it");
                    return Ok(());
                }
            }
            ids.remove(watch.path())
        },
    ))
}

/// The reader owns the queue(s) and the pair file from now on: removed when done, on an
/// error, on Ctrl-C.
pub fn reader_owns(o: &Opened) -> Owned {
    let (ids, p) = (o.ids(), o.watch.path().to_path_buf());
    common::cleanup::own(
        format!("the queue ({}) and {}", ids.describe(), p.display()),
        move || ids.remove(&p),
    )
}

/// The System V queue of `path` (its `ftok` key, or `--key`): created or opened, and
/// checked to be ours. Also the shared queue's (M5, `members.rs`).
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
    let st = q
        .stat()
        .with_context(|| format!("msgctl IPC_STAT queue {}", q.id))?;
    let me = nix::unistd::geteuid().as_raw();
    if st.uid != me || st.cuid != me {
        bail!(
            "System V queue key {key:#x} (msqid {}) belongs to uid {} (created by uid {}), not to you (uid {me}): refusing to use another user's queue",
            q.id, st.uid, st.cuid
        );
    }
    if created {
        narrate!(
            "msgget(key {key:#x}, IPC_CREAT|IPC_EXCL|0600) created queue msqid {} (ipcs -q lists it)",
            q.id
        );
    } else {
        narrate!(
            "msgget(key {key:#x}, 0) opened the existing queue msqid {} (mode {:o}, {} messages, {} bytes; last msgsnd by pid {}, last msgrcv by pid {})",
            q.id, st.mode & 0o777, st.qnum, st.cbytes, st.lspid, st.lrpid
        );
    }
    narrate!(
        "the queue holds at most {} bytes (msg_qbytes, from kernel.msgmnb): a msgsnd that does not fit blocks (M6)",
        st.qbytes
    );
    Ok((q, created))
}

fn open_posix(a: &OpenArgs) -> Result<(Queues, bool)> {
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
    let (main, created) = posix_one(&main_name, a, nb(a.role == Role::Writer))?;
    // The reply queue's name is always in the cleanup list: a killed pingpong run may
    // have left one even when this run does not use it (unlinking a missing name is fine).
    names.push(back_name.clone());
    let back = if a.pingpong {
        Some(posix_one(&back_name, a, nb(a.role == Role::Reader))?.0)
    } else {
        None
    };
    Ok((Queues::Posix { main, back, names }, created))
}

fn posix_one(name: &str, a: &OpenArgs, extra: MQ_OFlag) -> Result<(MqdT, bool)> {
    let mode = Mode::S_IRUSR | Mode::S_IWUSR;
    let attr = MqAttr::new(0, a.maxmsg as _, a.msgsize as _, 0);
    let flags = MQ_OFlag::O_RDWR | extra;
    let (q, created) = match mq_open(name, flags | MQ_OFlag::O_CREAT | MQ_OFlag::O_EXCL, mode, Some(&attr)) {
        Ok(q) => (q, true),
        Err(Errno::EEXIST) => (
            mq_open(name, flags, mode, None).with_context(|| format!("mq_open {name} O_RDWR"))?,
            false,
        ),
        Err(Errno::ENOSYS) => bail!("mq_open {name}: ENOSYS: this kernel has no POSIX message queues (CONFIG_POSIX_MQUEUE)"),
        Err(Errno::EINVAL) => bail!(
            "mq_open {name}: EINVAL: mq_maxmsg {} or mq_msgsize {} is above fs.mqueue.msg_max / msgsize_max (M6)",
            a.maxmsg, a.msgsize
        ),
        Err(e) => return Err(e).with_context(|| format!("mq_open {name} O_CREAT|O_EXCL 0600")),
    };
    let (uid, perm) = posix_owner(&q)?;
    let me = nix::unistd::geteuid().as_raw();
    if uid != me {
        bail!("POSIX queue {name} belongs to uid {uid}, not to you (uid {me}): refusing to use another user's queue");
    }
    let at = mq_getattr(&q).with_context(|| format!("mq_getattr {name}"))?;
    narrate!(
        "mq_open {name}: {} (mode {perm:o}); mq_getattr: mq_maxmsg {}, mq_msgsize {}, mq_curmsgs {}",
        if created { "created" } else { "opened the existing queue" },
        at.maxmsg(),
        at.msgsize(),
        at.curmsgs()
    );
    Ok((q, created))
}

/// Messages currently in the queue(s).
fn count(q: &Queues) -> Result<u64> {
    Ok(match q {
        Queues::Sysv(s) => s.stat().context("msgctl IPC_STAT")?.qnum,
        Queues::Posix { main, back, .. } => {
            let mut n = mq_getattr(main).context("mq_getattr")?.curmsgs() as u64;
            if let Some(b) = back {
                n += mq_getattr(b).context("mq_getattr")?.curmsgs() as u64;
            }
            n
        }
    })
}

/// Takes every message out without waiting.
fn drain(q: &Queues) -> Result<u64> {
    match q {
        Queues::Sysv(s) => s
            .drain(&mut Message::boxed())
            .context("msgrcv IPC_NOWAIT (discarding stale messages)"),
        Queues::Posix { main, back, .. } => {
            let mut n = drain_posix(main)?;
            if let Some(b) = back {
                n += drain_posix(b)?;
            }
            Ok(n)
        }
    }
}

fn drain_posix(q: &MqdT) -> Result<u64> {
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
