//! The rendezvous: how writer and reader find one queue, and who removes it.
//! **A first reading may skip this file**: the role files call [`open`] once, and then
//! [`writer_owns`] or [`reader_owns`], and get the queue(s) back.
//!
//! [`open`] is the same for both sides, under an exclusive `flock` of the pair file so the
//! two never check at the same time:
//! 1. the pair file (`<name>.sysv-mq` / `<name>.posix-mq` in the runtime directory) is
//!    created or opened, and must be a regular file of ours (and still the one at its path
//!    once locked: the previous pair's last side removes it);
//! 2. another process already playing this role, and alive, is refused. Alive means the
//!    process its line names: the same pid *and* start time (`common::peer::Identity`), so
//!    a killed side's pid, reused by an unrelated process, is gone;
//! 3. the queue is created or opened: System V by the file's `ftok` key (or `--key`),
//!    `msgget(IPC_CREAT|IPC_EXCL|0600)` and on EEXIST `msgget(key, 0)`; POSIX by name,
//!    `mq_open(O_CREAT|O_EXCL, 0600)` and on EEXIST `mq_open` of the existing one.
//!    Whichever side comes first creates it; the other opens it (either start order works);
//! 4. the owner is checked (`msgctl(IPC_STAT)`, `fstat`): another user's queue is refused;
//! 5. messages already in the queue are judged: this session's (a writer that started
//!    first, or finished and exited: M1) or stale (a killed run): discarded and counted;
//! 6. a peer recorded as running but dead is forgotten, and this side records itself.
//!
//! Cleanup: the reader owns the queue(s) and the pair file from the moment the queue exists
//! ([`reader_owns`]); a writer owns a queue it created only until it finishes, and never
//! removes one a live reader is using ([`writer_owns`]). Either side removes both when it
//! finds its peer gone ([`PeerWatch::on_death`]). The claims are taken inside [`open`],
//! right after step 3, so a failure in steps 4 to 6 (a full file system refusing the
//! `pwrite` of step 6, say) removes what this side created, and a pair file this side
//! created is removed if the rendezvous fails at all.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::cleanup::Owned;
use common::cli::CommonArgs;
use common::narrate;
use common::peer::Identity;
use common::setup::Role;
use libc::key_t;
use nix::fcntl::Flock;
use nix::mqueue::{mq_getattr, MqdT};

use crate::depth::{Misfit, Shape};
use crate::posix::posix_unlink;
use crate::sysv::{is_removed, Message, SysvQueue};
use crate::watch::{not_alive, PeerWatch, Slot};
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
    /// A pingpong writer needs the POSIX reply queue now (a reader opens it once the
    /// writer's Hello said pingpong: [`crate::reader_tx`]).
    pub pingpong: bool,
    /// What the queue(s) should hold: System V `msg_qbytes`, POSIX `mq_maxmsg` and
    /// `mq_msgsize` (`depth.rs`).
    pub shape: Shape,
    /// `--timeout`: how long a wait gives a peer that has not shown up.
    pub timeout: Duration,
    /// Stream and pingpong: `--timeout` also ends a wait on a live peer that makes no
    /// progress (text mode waits for a human). A reader's first wait, for the Hello, is
    /// bounded too: a running writer sends it at once; then the Hello's mode decides.
    pub bounded: bool,
}

impl OpenArgs {
    /// What `role` asks for, from its flags and the limits: by default a POSIX queue is
    /// created for the largest frame that fits and at most 10 messages ([`OpenArgs::shaped`]
    /// says otherwise). A reader's mode is not known yet (the writer's Hello says it), so
    /// only a writer's counts here.
    pub fn new(role: Role, q: &QueueArgs, c: &CommonArgs, limits: &Limits) -> OpenArgs {
        let (posix, writer) = (q.posix, role == Role::Writer);
        OpenArgs {
            role,
            posix,
            name: c.name_or(DEFAULT_NAME).to_string(),
            key: q.key,
            pingpong: writer && c.mode == common::cli::Mode::Pingpong,
            shape: Shape::plain(limits, limits.max_frame(posix).0),
            timeout: c.timeout,
            bounded: !writer || c.mode != common::cli::Mode::Text,
        }
    }

    /// The queue(s) in `shape` (`--queue-bytes`, `--queue-depth`, `mq_msgsize` from
    /// `--size`: `depth.rs`).
    pub fn shaped(self, shape: Shape) -> OpenArgs {
        OpenArgs { shape, ..self }
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
    /// Bytes the queue holds (System V `msg_qbytes`; POSIX `mq_maxmsg` x `mq_msgsize`),
    /// for the writer's Hello.
    pub capacity: u64,
    /// Facts for the report.
    pub notes: Vec<String>,
    /// A reader that finished before this one and left messages of other types (M4).
    pub earlier_reader: Option<i32>,
    /// This side's claim on the queue(s), taken as soon as they exist (see the module
    /// docs); [`reader_owns`] and [`writer_owns`] hand it to the program.
    owned: Option<Owned>,
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
        remove_file(path)
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
    let (watch, lock) = open_pair_file(a, &path)?;
    // A pair file this side created is its to remove if the rendezvous fails, until a
    // claim on the queue (which removes the file with it) takes over.
    let mut file_claim = watch.pair().created().then(|| {
        let p = path.clone();
        common::cleanup::own(format!("the pair file {}", path.display()), move || {
            remove_file(&p)
        })
    });
    let me = Identity::me();
    let earlier_reader = check_role(&watch, a.role, me)?;
    // Whether the peer uses the queue: a writer insists on its shape in a live reader's
    // queue; a queue nobody uses is made anew in this side's shape (depth.rs).
    let peer_here = peer_here(&watch, a.role);
    let (queues, created) = if a.posix {
        crate::posix::open_pair(a, peer_here).map_err(|e| refuse_misfit(&watch, e))?
    } else {
        let (q, created) = crate::sysv::open_sysv(a, &path)?;
        (Queues::Sysv(q), created)
    };
    let mut opened = Opened {
        queues,
        watch,
        created,
        stale: 0,
        waiting: 0,
        capacity: 0,
        notes: Vec::new(),
        earlier_reader,
        owned: None,
    };
    // The queue exists: from here on an error drops `opened`, and its claim removes what
    // this side must remove (the reader: the queue(s) and the pair file; a writer: a queue
    // it created), as Ctrl-C does.
    opened.owned = match a.role {
        Role::Reader => Some(reader_claim(&opened)),
        Role::Writer => writer_claim(&opened),
    };
    if let Some(c) = file_claim.take_if(|_| opened.owned.is_some()) {
        c.release();
    }
    judge_queued(&mut opened, a.role)?;
    // A POSIX queue nobody uses (emptied just now) in another shape is made anew, this
    // side's from now on: a leftover, or a writer's .back (a reader opens it later).
    let writer = a.role == Role::Writer;
    if crate::posix::reshape(&mut opened.queues, a, !peer_here)? && !opened.created {
        opened.created = true;
        if writer {
            opened.owned = writer_claim(&opened);
        }
    }
    // What the queue holds, as the kernel reads it back (the Hello says it too). A reader
    // reads it again after the Hello: a writer's --queue-bytes may change it till then.
    opened.capacity = capacity(&opened.queues)?;
    if writer {
        opened.notes.push(got(&opened.queues)?);
    }
    if let Some(n) = unapplied(a, &opened)? {
        narrate!("{n}");
        opened.notes.push(n);
    }
    forget_dead_peer(&opened.watch, a.role)?;
    opened.watch.write(a.role, Slot::Running(me))?;
    drop(lock);
    if let Some(c) = file_claim {
        c.release();
    }
    // A dead peer leaves a queue nobody will use: the side that finds out removes it.
    let (ids, p) = (opened.ids(), path);
    opened.watch.on_death(move || {
        let _ = ids.remove(&p);
    });
    Ok(opened)
}

/// Step 1: the pair file, opened and locked; opened again if the previous pair's last side
/// removed it while this one waited for the lock (a lock on a removed file guards nothing).
fn open_pair_file(a: &OpenArgs, path: &Path) -> Result<(Arc<PeerWatch>, Flock<std::fs::File>)> {
    loop {
        let watch = PeerWatch::open(path, a.role, a.timeout)?
            .bounded(a.bounded)
            .named(&a.name, a.posix);
        let watch = Arc::new(watch);
        narrate!(
            "pair file {}: flock while checking the queue, so writer and reader never check at the same time",
            path.display()
        );
        let lock = watch.pair().lock()?;
        if watch.pair().still_at_path()? {
            return Ok((watch, lock));
        }
        narrate!(
            "{} was removed while this side waited for its lock (the previous pair finished): opening it again",
            path.display()
        );
    }
}

/// Whether the peer uses the queue now: a live reader, for a writer; for a reader, a live
/// writer, or one that finished and left its session in the queue (M1).
fn peer_here(watch: &PeerWatch, role: Role) -> bool {
    match watch.read(role.peer()) {
        Slot::Running(id) => id.alive(),
        Slot::Finished(_) => role == Role::Reader,
        _ => false,
    }
}

/// A live reader's queue that cannot serve this writer (depth.rs): the writer's line says
/// `refused` before it leaves, so the reader, waiting for the Hello, stops and says why.
fn refuse_misfit(watch: &PeerWatch, e: anyhow::Error) -> anyhow::Error {
    if e.downcast_ref::<Misfit>().is_none() {
        return e;
    }
    match watch.write(Role::Writer, Slot::Refused(Identity::me())) {
        Ok(()) => e,
        Err(w) => e.context(format!("(and the pair file could not say so: {w:#})")),
    }
}

/// A reader's `--queue-depth` that the queue, made by the writer, does not have.
fn unapplied(a: &OpenArgs, o: &Opened) -> Result<Option<String>> {
    Ok(match &o.queues {
        Queues::Posix { main, .. } if a.shape.depth.is_some() => {
            let got = mq_getattr(main).context("mq_getattr")?.maxmsg() as usize;
            crate::depth::unapplied(a, o.created, got)
        }
        _ => None,
    })
}

/// Step 2: is another process already playing this role? A live one is refused; one
/// recorded but gone (killed, its pid perhaps reused) is replaced. Returns a reader that
/// finished before this one (it may have left messages of other types, M4).
fn check_role(watch: &PeerWatch, role: Role, me: Identity) -> Result<Option<i32>> {
    match watch.read(role) {
        Slot::Finished(id) if role == Role::Reader && id.pid != me.pid => {
            let pid = id.pid;
            narrate!("reader pid {pid} read this queue before and left what it did not select (M4)");
            Ok(Some(pid))
        }
        // One writer and one reader at a time: two readers at once would remove the
        // queue under each other, and a second writer would mix two sessions. Several of
        // each is the shared mode's (M5), with its own registry and queue.
        Slot::Running(id) if id.pid != me.pid && id.alive() => bail!(
            "another {role} (pid {}{}) is using this queue ({}): a pair has one writer and one reader; wait for it, pick another --name, or run every writer and reader with --shared (several of each at once, M5)",
            id.pid,
            common::peer::program_name(id.pid).map(|p| format!(", {p}")).unwrap_or_default(),
            watch.path().display()
        ),
        Slot::Running(id) if id.pid != me.pid => {
            narrate!(
                "the pair file names {role} pid {} as running, but {}: that {role} is gone, and this one takes its place",
                id.pid,
                not_alive(id)
            );
            Ok(None)
        }
        _ => Ok(None),
    }
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
        Slot::Running(id) if id.alive() => Some(format!(
            "sent by writer pid {}, which started first and is still running",
            id.pid
        )),
        Slot::Finished(id) => Some(format!(
            "sent by writer pid {}, which finished its session and exited: the kernel kept them (M1)",
            id.pid
        )),
        _ => None,
    };
    if let Some(why) = keep {
        o.waiting = queued;
        let (n, are, were) = match queued {
            1 => (crate::messages(1), "is", "was"),
            q => (crate::messages(q), "are", "were"),
        };
        narrate!("{n} {are} already waiting in the queue, {why}");
        o.notes.push(format!(
            "{n} {were} already waiting when this reader started (M1)"
        ));
        return Ok(());
    }
    o.stale = drain(&o.queues)?;
    let whose = match o.watch.read(Role::Writer) {
        Slot::Running(id) if id.pid != me => {
            format!("writer pid {}, which was killed before it finished", id.pid)
        }
        Slot::Finished(id) => format!(
            "writer pid {}, whose session nobody read to the end",
            id.pid
        ),
        _ => "an earlier run".to_string(),
    };
    narrate!(
        "the queue held {} left by {whose}: stale; discarded them before this session starts",
        crate::messages(o.stale)
    );
    o.notes.push(format!(
        "{} stale messages of an earlier run discarded",
        o.stale
    ));
    Ok(())
}

/// Step 6: a peer recorded as running but gone (no such process, or its pid now names
/// another process) is history: clear its slot so nobody waits on it. So is a reader that
/// refused or left an earlier writer (its pair file outlived it): it is not this pair's.
fn forget_dead_peer(watch: &PeerWatch, role: Role) -> Result<()> {
    match watch.read(role.peer()) {
        Slot::Running(id) if !id.alive() => {
            narrate!(
                "the pair file names {} pid {} as running, but {}: forgetting it",
                role.peer(),
                id.pid,
                not_alive(id)
            );
            watch.write(role.peer(), Slot::Empty)
        }
        Slot::Refused(_) | Slot::Left(_) => watch.write(role.peer(), Slot::Empty),
        _ => Ok(()),
    }
}

/// The writer's claim on a queue it created (taken by [`open`] as soon as the queue
/// exists): removed on an error or Ctrl-C unless a live reader is recorded (it removes the
/// queue when done); released after a clean finish, so the messages wait for a reader (M1).
pub fn writer_owns(o: &mut Opened) -> Option<Owned> {
    o.owned.take()
}

/// The reader owns the queue(s) and the pair file (since [`open`] created or opened them):
/// removed when done, on an error, on Ctrl-C.
pub fn reader_owns(o: &mut Opened) -> Owned {
    match o.owned.take() {
        Some(owned) => owned,
        None => reader_claim(o),
    }
}

fn writer_claim(o: &Opened) -> Option<Owned> {
    if !o.created {
        return None;
    }
    let (watch, ids) = (Arc::clone(&o.watch), o.ids());
    let what = format!(
        "the queue ({}) and {}",
        ids.describe(),
        watch.path().display()
    );
    Some(common::cleanup::own(what, move || {
        if let Slot::Running(id) = watch.read(Role::Reader) {
            if id.alive() {
                let pid = id.pid;
                narrate!("leaving the queue to the reader (pid {pid}), which removes it");
                return Ok(());
            }
        }
        ids.remove(watch.path())
    }))
}

/// The reader's claim: before it removes the queue, its line says `left` (unless it says
/// `refused`, or `finished` on the clean way out), so a writer woken by EIDRM knows why
/// the queue went.
fn reader_claim(o: &Opened) -> Owned {
    let (ids, watch) = (o.ids(), Arc::clone(&o.watch));
    let p = watch.path().to_path_buf();
    common::cleanup::own(
        format!("the queue ({}) and {}", ids.describe(), p.display()),
        move || {
            if let Slot::Running(_) = watch.read(Role::Reader) {
                let _ = watch.write(Role::Reader, Slot::Left(Identity::me()));
            }
            ids.remove(&p)
        },
    )
}

/// `unlink` that treats "already gone" as done.
fn remove_file(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Bytes the main queue holds: `msg_qbytes`, or `mq_maxmsg` x `mq_msgsize`.
fn capacity(q: &Queues) -> Result<u64> {
    Ok(match q {
        Queues::Sysv(s) => s.stat().context("msgctl IPC_STAT")?.qbytes,
        Queues::Posix { main, .. } => {
            let at = mq_getattr(main).context("mq_getattr")?;
            (at.maxmsg() * at.msgsize()) as u64
        }
    })
}

/// What the main queue holds, read back from the kernel, for the report (`depth.rs`).
fn got(q: &Queues) -> Result<String> {
    let limits = Limits::read()?;
    match q {
        Queues::Sysv(s) => crate::depth::got_sysv(*s, &limits),
        Queues::Posix { main, .. } => crate::depth::got_posix(main, &limits),
    }
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
            let mut n = crate::posix::drain(main)?;
            if let Some(b) = back {
                n += crate::posix::drain(b)?;
            }
            Ok(n)
        }
    }
}
