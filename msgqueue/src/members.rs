//! M5's bookkeeping for a shared queue (`--shared`): who uses it, and who removes it.
//! **A first reading may skip this file**: [`crate::shared`] calls [`join`] once and
//! [`Membership::leave`] on every way out.
//!
//! A System V queue keeps no count of the processes using it (a shared memory segment has
//! `shm_nattch`; a queue has nothing of the kind), so the members keep one themselves: a
//! registry file, `<name>.shared-mq` in the runtime directory, one line per member at a
//! fixed offset (`cat` shows it):
//! ```text
//! writer 1234 running type 1 session 5f0c3a9e12d4b7a1 new start 81234560
//! writer 1235 finished type 2 session 0a1b2c3d4e5f6a7b taken start 81234561
//! reader 1240 running type 1 writers 2 start 81234570
//! ```
//! `start` is the member's start time (clock ticks after boot, field 22 of
//! `/proc/<pid>/stat`): a member is alive only while the process with its pid started at
//! that time (`common::peer::Identity`), so a killed member's pid, reused by an unrelated
//! process, does not keep it "running".
//! Its inode gives the queue's key (`ftok`), a different key from the one-to-one pair file
//! of the same `--name`, so the two modes never meet in one queue. Every change happens
//! under an exclusive `flock` of the file, taken on a fresh `open` each time (a lock is
//! per open file, so the signal thread and the main thread of one process exclude each
//! other too); a member that finds the file replaced between its `open` and its lock (the
//! last member removed it meanwhile) opens the new one.
//!
//! The rules:
//! - **join**: a reader is refused if a live reader already takes its type: each writer's
//!   session must reach one reader whole to be verified. If no member is alive and no
//!   finished session waits, whatever the queue holds is stale (a killed run): drained and
//!   counted, and the registry starts afresh.
//! - **take**: at a session's first message its reader marks the writer's line `taken`.
//! - **leave** (at the end, on an error, on Ctrl-C): the member records how it ended. If
//!   another member is still running, the queue stays for it. Otherwise the queue stays
//!   only if a finished session that no reader has begun waits in it (M1: messages outlive
//!   their writer); else this last member removes the queue and the registry.
//!
//! A member killed with `kill -9` cannot leave: its line says `running` with a dead pid
//! (or one now used by another process), which every check treats as gone, so the next
//! member to leave removes what it left.
//!
//! A join that fails after it created the queue (a full file system refusing the `pwrite`
//! of its line, say) removes the queue, and the registry if no other member is in it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use common::cleanup::Owned;
use common::narrate;
use common::peer::Identity;
use common::setup::Role;
use nix::fcntl::{Flock, FlockArg};

use crate::rendezvous::OpenArgs;
use crate::sysv::{Message, SysvQueue};

/// Bytes per member line: the longest line (a 7-digit pid, `finished`, type 99, a
/// session, `taken` and a 20-digit start time) is 90 characters.
pub const SLOT: usize = 96;
/// Most members one registry records before it starts afresh.
pub const MAX_MEMBERS: usize = 64;

/// The registry file of a shared queue.
pub fn registry_path(name: &str) -> Result<PathBuf> {
    common::runtime::runtime_path(&format!("{name}.shared-mq"))
}

/// How a member is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Joined and not yet left (or killed: then its pid is dead).
    Running,
    /// Done: a writer sent its whole session, End included; a reader took all its sessions.
    Finished,
    /// Left on an error or Ctrl-C, without finishing.
    Failed,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Finished => "finished",
            State::Failed => "failed",
        }
    }
}

/// One line of the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Writer or reader.
    pub role: Role,
    /// Its process id.
    pub pid: i32,
    /// Its start time (`/proc/<pid>/stat` field 22; 0: unknown, judged by the pid alone).
    pub start: u64,
    /// How it is doing.
    pub state: State,
    /// The one type it sends (writer) or takes (reader).
    pub mtype: i64,
    /// A writer's session nonce (every frame it sends carries it); 0 for a reader.
    pub session: u64,
    /// A writer's: a reader has begun taking its session.
    pub taken: bool,
    /// A reader's `--writers`: how many sessions it takes before it finishes.
    pub writers: u64,
}

impl Member {
    /// This process as a writer of `mtype` with session `session`.
    pub fn writer(mtype: i64, session: u64) -> Member {
        let me = Identity::me();
        Member {
            role: Role::Writer,
            pid: me.pid,
            start: me.start,
            state: State::Running,
            mtype,
            session,
            taken: false,
            writers: 0,
        }
    }

    /// This process as the reader of `mtype`, for `writers` sessions.
    pub fn reader(mtype: i64, writers: u64) -> Member {
        Member {
            role: Role::Reader,
            session: 0,
            writers,
            ..Member::writer(mtype, 0)
        }
    }

    /// Running, and its process exists (`kill(pid, 0)`) and is the one recorded (started
    /// at the recorded time: not a reused pid).
    pub fn live(&self) -> bool {
        self.state == State::Running && self.identity().alive()
    }

    /// Its pid and start time.
    pub fn identity(&self) -> Identity {
        Identity {
            pid: self.pid,
            start: self.start,
        }
    }

    /// Left without finishing: failed, or recorded as running while its pid is dead.
    pub fn gone(&self) -> bool {
        self.state == State::Failed || (self.state == State::Running && !self.live())
    }

    /// A writer's whole session is in the queue and no reader has begun it (M1).
    pub fn waiting(&self) -> bool {
        self.role == Role::Writer && self.state == State::Finished && !self.taken
    }

    /// "writer 1234 (type 1)".
    pub fn describe(&self) -> String {
        format!("{} {} (type {})", self.role, self.pid, self.mtype)
    }

    fn line(&self) -> String {
        let (role, pid, state, t) = (self.role, self.pid, self.state.as_str(), self.mtype);
        let start = self.start;
        match self.role {
            Role::Writer => {
                let taken = if self.taken { "taken" } else { "new" };
                format!(
                    "{role} {pid} {state} type {t} session {:016x} {taken} start {start}",
                    self.session
                )
            }
            Role::Reader => format!(
                "{role} {pid} {state} type {t} writers {} start {start}",
                self.writers
            ),
        }
    }

    fn parse(line: &str) -> Option<Member> {
        let line = line.lines().next()?;
        let w: Vec<&str> = line.split_whitespace().collect();
        let role = match *w.first()? {
            "writer" => Role::Writer,
            "reader" => Role::Reader,
            _ => return None,
        };
        let state = match *w.get(2)? {
            "running" => State::Running,
            "finished" => State::Finished,
            "failed" => State::Failed,
            _ => return None,
        };
        // `start N` ends the line; an older line without it is judged by its pid alone.
        let start = match w.iter().position(|&t| t == "start") {
            Some(i) => w.get(i + 1)?.parse().ok()?,
            None => 0,
        };
        let mut m = Member {
            role,
            pid: w.get(1)?.parse().ok()?,
            start,
            state,
            mtype: w.get(4)?.parse().ok()?,
            ..Member::writer(0, 0)
        };
        match role {
            Role::Writer => {
                m.session = u64::from_str_radix(w.get(6)?, 16).ok()?;
                m.taken = *w.get(7)? == "taken";
            }
            Role::Reader => m.writers = w.get(6)?.parse().ok()?,
        }
        Some(m)
    }
}

/// The registry, opened afresh and locked (`flock`, exclusive) for as long as this lives.
struct Locked {
    file: Flock<File>,
}

impl Locked {
    /// Opens (with `create`, creating it mode 0600) and locks the registry at `path`;
    /// `None` if it does not exist and `create` is false. Retries if the file was replaced
    /// between the open and the lock.
    fn open(path: &Path, create: bool) -> Result<Option<Locked>> {
        loop {
            let opened = OpenOptions::new()
                .read(true)
                .write(true)
                .create(create)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(path);
            let file = match opened {
                Err(e) if !create && e.kind() == io::ErrorKind::NotFound => return Ok(None),
                r => r.with_context(|| format!("open {}", path.display()))?,
            };
            let meta = file.metadata().context("fstat of the registry")?;
            if !meta.file_type().is_file() || meta.uid() != nix::unistd::geteuid().as_raw() {
                bail!(
                    "{} is not a regular file of yours; refusing to use it",
                    path.display()
                );
            }
            let file = Flock::lock(file, FlockArg::LockExclusive)
                .map_err(|(_, e)| e)
                .with_context(|| format!("flock {}", path.display()))?;
            // Still the file at `path`? The last member may have removed it meanwhile.
            match std::fs::symlink_metadata(path) {
                Ok(now) if (now.dev(), now.ino()) == (meta.dev(), meta.ino()) => {
                    return Ok(Some(Locked { file }))
                }
                _ => continue,
            }
        }
    }

    /// Every line, `None` for an empty one.
    fn members(&self) -> Result<Vec<Option<Member>>> {
        let len = self.file.metadata().context("fstat of the registry")?.len() as usize;
        let mut buf = vec![0u8; len.min(SLOT * MAX_MEMBERS)];
        self.file
            .read_exact_at(&mut buf, 0)
            .context("pread of the registry")?;
        Ok(buf
            .chunks(SLOT)
            .map(|c| Member::parse(&String::from_utf8_lossy(c)))
            .collect())
    }

    /// Writes line `i` (`pwrite`).
    fn put(&self, i: usize, m: &Member) -> Result<()> {
        let text = m.line();
        let mut buf = [b' '; SLOT];
        buf[..text.len().min(SLOT - 1)]
            .copy_from_slice(&text.as_bytes()[..text.len().min(SLOT - 1)]);
        buf[SLOT - 1] = b'\n';
        self.file
            .write_at(&buf, (i * SLOT) as u64)
            .with_context(|| format!("pwrite of line {i} of the registry"))?;
        Ok(())
    }
}

/// This process's place in a shared queue.
pub struct Membership {
    /// The registry file.
    path: PathBuf,
    /// Which line is ours.
    slot: usize,
    /// What our line says (as joined).
    me: Member,
    /// The queue.
    pub q: SysvQueue,
}

/// What [`join`] found.
pub struct Joined {
    /// This process's membership.
    pub membership: Membership,
    /// Stale messages of a killed run, drained.
    pub stale: u64,
    /// The other members recorded when this one joined.
    pub others: Vec<Member>,
}

/// Joins the shared queue: creates or opens the registry and the queue (by the registry's
/// `ftok` key, or `--key`) and records `me` in a free line. See the module docs.
pub fn join(a: &OpenArgs, me: Member) -> Result<Joined> {
    let path = registry_path(&a.name)?;
    let Some(locked) = Locked::open(&path, true)? else {
        bail!("{} vanished while being created", path.display());
    };
    narrate!(
        "registry {}: one line per writer and reader of the shared queue (M5); flock while joining",
        path.display()
    );
    let mut all = locked.members()?;
    if me.role == Role::Reader {
        let same = |m: &&Member| m.role == Role::Reader && m.mtype == me.mtype && m.live();
        if let Some(r) = all.iter().flatten().find(same) {
            bail!(
                "reader pid {} already takes type {} from this shared queue: one reader per type, so that each writer's session reaches one reader whole; pick another --type",
                r.pid,
                me.mtype
            );
        }
    }
    // Whatever fails from here on undoes what this join made (see undo_join).
    let (q, created) =
        crate::sysv::open_sysv(a, &path).inspect_err(|_| undo_join(&locked, &path, None))?;
    let (slot, stale, others) = record(&locked, &mut all, q, me, &path)
        .inspect_err(|_| undo_join(&locked, &path, Some((q, created))))?;
    Ok(Joined {
        membership: Membership { path, slot, me, q },
        stale,
        others,
    })
}

/// A join failed (a full file system refusing the `pwrite` of its line, say): if no member
/// is recorded, nobody would remove the registry and its queue, so this side does; else
/// only a queue this join created goes.
fn undo_join(locked: &Locked, path: &Path, queue: Option<(SysvQueue, bool)>) {
    let alone = locked
        .members()
        .map_or(true, |m| m.iter().all(Option::is_none));
    if let Some((q, created)) = queue.filter(|&(_, created)| created || alone) {
        let _ = SysvQueue::remove(q.id);
        let how = if created {
            "this join created"
        } else {
            "no member uses"
        };
        narrate!("joining failed: removed msqid {}, which {how}", q.id);
    }
    if alone {
        let _ = std::fs::remove_file(path);
        let p = path.display();
        narrate!("joining failed: removed the registry {p}, which records no member");
    }
}

/// The rest of [`join`], under the registry's lock: stale messages of a dead registry are
/// discarded, and `me` takes a free line. Returns the line, the stale count, the others.
fn record(
    locked: &Locked,
    all: &mut Vec<Option<Member>>,
    q: SysvQueue,
    me: Member,
    path: &Path,
) -> Result<(usize, u64, Vec<Member>)> {
    let alive = all.iter().flatten().any(Member::live);
    let mut stale = 0;
    if !alive && !all.iter().flatten().any(Member::waiting) {
        stale = q
            .drain(&mut Message::boxed())
            .context("msgrcv IPC_NOWAIT (discarding stale messages)")?;
        if stale > 0 || all.iter().any(Option::is_some) {
            narrate!("no member of an earlier run is alive and no finished session waits: the registry starts afresh and what the queue held is stale, discarded: {}", crate::messages(stale));
        }
        locked.file.set_len(0).context("truncating the registry")?;
        all.clear();
    }
    let others: Vec<Member> = all.iter().flatten().copied().collect();
    let slot = all.iter().position(Option::is_none).unwrap_or(all.len());
    if slot >= MAX_MEMBERS {
        bail!("{} already records {MAX_MEMBERS} members; wait until they are done, or pick another --name", path.display());
    }
    locked
        .put(slot, &me)
        .with_context(|| format!("recording this member in {}", path.display()))?;
    Ok((slot, stale, others))
}

impl Membership {
    /// The members recorded now (under the lock).
    pub fn members(&self) -> Result<Vec<Member>> {
        Ok(match Locked::open(&self.path, false)? {
            Some(l) => l.members()?.into_iter().flatten().collect(),
            None => Vec::new(),
        })
    }

    /// A reader begins taking the session `session`: the writer's line says `taken`.
    /// Returns that writer's line, if it is recorded.
    pub fn take(&self, session: u64) -> Result<Option<Member>> {
        let Some(l) = Locked::open(&self.path, false)? else {
            return Ok(None);
        };
        let all = l.members()?;
        let found = all.iter().enumerate().find_map(|(i, m)| match m {
            Some(m) if m.role == Role::Writer && m.session == session => Some((i, *m)),
            _ => None,
        });
        if let Some((i, w)) = found {
            l.put(i, &Member { taken: true, ..w })?;
        }
        Ok(found.map(|(_, w)| w))
    }

    /// On every way out that is not the clean end (an error, Ctrl-C): leaves as failed.
    pub fn own(&self) -> Owned {
        let (path, slot, me, q) = (self.path.clone(), self.slot, self.me, self.q);
        let m = Membership { path, slot, me, q };
        common::cleanup::own(
            format!("this member's claim on the shared queue (msqid {})", q.id),
            move || m.leave(State::Failed).map_err(io::Error::other),
        )
    }

    /// Leaves the shared queue as `state`; the last member out removes the queue and the
    /// registry, unless a finished session nobody has begun waits in it (M1).
    pub fn leave(&self, state: State) -> Result<()> {
        let Some(l) = Locked::open(&self.path, false)? else {
            narrate!(
                "the registry {} is gone: nothing to leave",
                self.path.display()
            );
            return Ok(());
        };
        let mut all = l.members()?;
        let mut me = all.get(self.slot).copied().flatten().unwrap_or(self.me);
        me.state = state;
        l.put(self.slot, &me)?;
        if let Some(line) = all.get_mut(self.slot) {
            *line = Some(me);
        }
        let others: Vec<String> = all
            .iter()
            .flatten()
            .filter(|m| m.live())
            .map(Member::describe)
            .collect();
        if !others.is_empty() {
            narrate!(
                "left the shared queue as {}; still using it: {}: the last one out removes it",
                state.as_str(),
                others.join(", ")
            );
            return Ok(());
        }
        self.last_one_out(&all, state)
    }

    /// Nobody else runs: the queue stays if a finished session nobody has begun waits in it
    /// (M1); else `msgctl(IPC_RMID)` and `unlink` of the registry, under its lock.
    fn last_one_out(&self, all: &[Option<Member>], state: State) -> Result<()> {
        let qnum = self.q.stat().map(|s| s.qnum).unwrap_or(0);
        let waiting: Vec<String> = all
            .iter()
            .flatten()
            .filter(|m| m.waiting())
            .map(Member::describe)
            .collect();
        if qnum > 0 && !waiting.is_empty() {
            narrate!(
                "left as {}, the last one running; the sessions of {} wait in the queue ({}) for a reader (M1): leaving the queue (ipcs -q)",
                state.as_str(),
                waiting.join(", "),
                crate::messages(qnum)
            );
            return Ok(());
        }
        if qnum > 0 {
            narrate!(
                "{} left that nobody will read (their writer or reader stopped without finishing)",
                crate::messages(qnum)
            );
        }
        match SysvQueue::remove(self.q.id) {
            Err(e) if !crate::sysv::is_removed(&e) => {
                return Err(e).with_context(|| format!("msgctl IPC_RMID msqid {}", self.q.id))
            }
            _ => {}
        }
        std::fs::remove_file(&self.path)
            .with_context(|| format!("unlink {}", self.path.display()))?;
        narrate!(
            "left as {}, the last one out: msgctl(IPC_RMID) removed msqid {}, and the registry",
            state.as_str(),
            self.q.id
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_lines_round_trip_and_fit_their_slot() {
        let w = Member {
            pid: 4_194_304,
            start: u64::MAX,
            state: State::Finished,
            taken: true,
            ..Member::writer(99, u64::MAX)
        };
        assert!(w.line().len() < SLOT, "{}", w.line());
        assert_eq!(Member::parse(&w.line()), Some(w));
        let r = Member::reader(2, 3);
        assert_eq!(Member::parse(&r.line()), Some(r));
        assert_eq!(
            r.line(),
            format!(
                "reader {} running type 2 writers 3 start {}",
                r.pid, r.start
            )
        );
        assert!(r.start > 0 && r.live() && !r.gone() && !r.waiting());
        // The same pid with another start time: a reused pid, not this member.
        let reused = Member {
            start: r.start + 1,
            ..r
        };
        assert!(!reused.live() && reused.gone());
        // An older line, without a start time, is judged by its pid alone.
        let old = format!("reader {} running type 2 writers 3", r.pid);
        assert_eq!(Member::parse(&old), Some(Member { start: 0, ..r }));
        // Finished but taken: a reader has it, so it does not keep the queue (M1).
        assert!(!w.waiting() && Member { taken: false, ..w }.waiting());
        assert_eq!(Member::parse("                "), None);
    }
}
