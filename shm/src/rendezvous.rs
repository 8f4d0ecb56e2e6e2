//! The rendezvous: how shm-writer and shm-reader find each other in either start order.
//! A first reading may skip this file: it is how the two processes meet and how a leftover
//! object is judged, not how a frame moves (that is the loop in `writer.rs`/`reader.rs`).
//!
//! Both programs call [`rendezvous`], which loops:
//! 1. try to create the object exclusively (`src/posix.rs`: `shm_open(O_CREAT|O_EXCL)`,
//!    `ftruncate`, `mmap`, `fallocate`; `src/sysv.rs`: `shmget(IPC_CREAT|IPC_EXCL)`,
//!    `shmat`). The winner owns the object from the moment it exists (a failure in any
//!    later step removes it), arms the SIGBUS explanation (`src/sigbus.rs`), writes the
//!    header, publishes `ready` last and sleeps in a futex on the header's `opener_pid`
//!    until the other side attaches ([`Region::wait_for_opener`]);
//! 2. the loser opens what exists, after checking that it belongs to this user, and
//!    judges it: shm's own checks first (System V: the kernel says nobody is attached and
//!    the creator it recorded is gone; a non-empty object smaller than a header page is
//!    not ours), then [`ring::judge`], the one rule this crate shares with `mmap`. The
//!    kernel records the creator as a bare pid (`shm_cpid`), which a reused pid fools
//!    into "alive"; then the header's record (pid and start time) decides;
//! 3. stale: it is removed (after checking that the name still holds the same object) and
//!    the loop tries again; not ready: it looks again in 2 ms, up to `--timeout`; foreign:
//!    it is refused and left alone; ready: it compares the object's size with the one its
//!    own `--capacity` needs (S5: the kernel checks nothing for POSIX and only a larger
//!    size for System V), then the header, writes its pid and wakes the creator
//!    ([`Region::attach`]).
//!
//! The whole loop is bounded by `--timeout`, like every wait of the pair: after pairing,
//! every ring wait in stream and pingpong mode gives up after `--timeout` without
//! progress (a stopped peer), and in text mode, which waits for a person typing, only a
//! peer that is gone (pid and start time) ends a wait.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::cleanup::{self, Owned};
use common::narrate;
use common::ring::{self, Region, RingError, Role, Verdict, HEADER_PAGE};

use crate::peers::{second, Other};
use crate::{posix, posix_path, sigbus, sysv, sysv_key, Shared, ShmArgs};

/// Pause between two looks at an object that is not ready yet.
const POLL: Duration = Duration::from_millis(2);

/// How often a creator waiting for its peer looks for an object of the other flavour.
const LOOK_AGAIN: Duration = Duration::from_millis(200);

/// Memory mapped from an object, found or made by one exclusive-create attempt.
pub(crate) struct Mapped {
    /// First byte (page-aligned), or null when the object has size 0 (not mapped).
    pub(crate) base: *mut u8,
    /// Bytes mapped (the object's size).
    pub(crate) len: usize,
    /// Keeps the mapping: an `MmapRaw` (`munmap` on drop) or a System V attachment (`shmdt`
    /// on drop). `None` when nothing is mapped.
    pub(crate) keeper: Option<Box<dyn Send + Sync>>,
    /// System V: the kernel says nobody is attached and its recorded creator is gone.
    pub(crate) kernel_says_stale: bool,
    /// System V id.
    pub(crate) sysv_id: Option<i32>,
    /// POSIX: the object's inode (fstat), to make sure a stale object is still the one
    /// under the name when we unlink it.
    pub(crate) ino: Option<u64>,
}

impl Mapped {
    /// Nothing mapped: an object of size 0, or one judged by the kernel's facts alone.
    pub(crate) fn unmapped(sysv_id: Option<i32>, ino: Option<u64>, stale: bool) -> Mapped {
        Mapped {
            base: std::ptr::null_mut(),
            len: 0,
            keeper: None,
            kernel_says_stale: stale,
            sysv_id,
            ino,
        }
    }
}

/// The outcome of one exclusive-create attempt.
pub(crate) enum Found {
    /// We created it (exclusively) with the full size; the guard removes it on any error.
    Created(Mapped, Owned),
    /// It existed; here it is, mapped at its own size.
    Existing(Mapped),
    /// It existed and vanished before we could open it: try again.
    Vanished,
}

/// One flavour's names and calls.
struct Object<'a> {
    /// POSIX or System V.
    sysv: bool,
    /// The `--name`.
    name: &'a str,
    /// `/ipc-study-<uid>-<name>`.
    kname: String,
    /// System V key.
    key: libc::key_t,
}

impl Object<'_> {
    fn new(sysv: bool, name: &str) -> Object<'_> {
        Object {
            sysv,
            name,
            kname: common::runtime::kernel_name(name),
            key: sysv_key(name),
        }
    }

    fn describe(&self, id: Option<i32>) -> String {
        if self.sysv {
            match id {
                Some(id) => format!("System V segment key {:#010x} (shmid {id})", self.key),
                None => format!("System V segment key {:#010x}", self.key),
            }
        } else {
            format!("POSIX shared memory {}", self.kname)
        }
    }

    /// How a user removes an object by hand.
    fn remedy(&self, id: Option<i32>) -> String {
        match (self.sysv, id) {
            (true, Some(id)) => format!("ipcrm -m {id}"),
            (true, None) => format!("ipcrm -M {:#x}", self.key),
            _ => format!("rm {}", posix_path(self.name)),
        }
    }

    /// The object of the other flavour under the same `--name`, if one exists: a peer
    /// started with (or without) `--sysv` waits there and never finds this one.
    fn other_flavour(&self, peer: &str) -> Option<Other> {
        let name = self.name;
        if self.sysv {
            let pid = posix::creator_of(&self.kname)?;
            Some(Other {
                what: format!(
                    "a POSIX shared memory object for --name {name} exists ({}{})",
                    posix_path(name),
                    pid.map_or(String::new(), |p| format!(", created by pid {p}"))
                ),
                ask: format!(
                    "is the {peer} running without --sysv? Start both with --sysv, or both without"
                ),
            })
        } else {
            let (id, cpid) = sysv::find(self.key)?;
            Some(Other {
                what: format!(
                    "a System V segment for --name {name} exists (key {:#010x}, shmid {id}, created by pid {cpid})",
                    self.key
                ),
                ask: format!("is the {peer} running with --sysv? Start both with --sysv, or both without"),
            })
        }
    }

    /// One exclusive-create attempt; a created object is owned (removed on error) at once.
    fn try_create(&self, len: usize) -> Result<Found> {
        if self.sysv {
            sysv::try_create(self.key, len, |id| self.own(Some(id)))
        } else {
            posix::try_create(&self.kname, len, || self.own(None))
        }
    }

    /// What the SIGBUS handler needs to know about the mapping `m` (see `src/sigbus.rs`).
    fn sigbus_target(&self, m: &Mapped, cap: usize, role: Role) -> sigbus::Target {
        sigbus::Target {
            who: format!("shm-{} (pid {})", role.as_str(), std::process::id()),
            object: self.describe(m.sysv_id),
            base: m.base,
            len: m.len,
            cap,
            backing: match m.sysv_id {
                Some(id) => sigbus::Backing::Sysv { id },
                None => sigbus::Backing::Posix {
                    path: posix_path(self.name),
                    ino: m.ino.unwrap_or(0),
                },
            },
        }
    }

    /// Registers the object for removal on every way out.
    fn own(&self, id: Option<i32>) -> Owned {
        let what = self.describe(id);
        match (self.sysv, id) {
            (true, Some(id)) => cleanup::own(what, move || sysv::remove(id)),
            _ => {
                let kname = self.kname.clone();
                cleanup::own(what, move || posix::remove(&kname))
            }
        }
    }

    /// Removes a stale object (the caller has decided it is stale and narrated why).
    ///
    /// System V removes by id, which names this very segment. A POSIX name may meanwhile
    /// have been unlinked and created again by another process that also found the object
    /// stale, so the inode under the name is compared with the one we judged first.
    fn remove_stale(&self, id: Option<i32>, ino: Option<u64>) -> Result<()> {
        match (self.sysv, id) {
            (true, Some(id)) => sysv::remove(id)
                .with_context(|| format!("shmctl IPC_RMID {}", self.describe(Some(id)))),
            _ => {
                let path = posix_path(self.name);
                match (nix::sys::stat::stat(path.as_str()), ino) {
                    (Ok(st), Some(ino)) if st.st_ino != ino => {
                        narrate!("{path} was replaced by another process meanwhile; looking again");
                        return Ok(());
                    }
                    _ => {}
                }
                posix::remove(&self.kname).with_context(|| format!("shm_unlink {}", self.kname))
            }
        }
    }

    /// Fails once `timeout` has passed since `start` in the create-or-open loop.
    fn check_deadline(&self, start: Instant, timeout: Duration) -> Result<()> {
        if start.elapsed() >= timeout {
            bail!(
                "timed out after {:.1} s (--timeout) trying to create or open {}: it kept vanishing or going stale",
                timeout.as_secs_f64(),
                self.describe(None)
            );
        }
        Ok(())
    }

    /// Judges an existing object: shm's own checks, then the rule shared with `mmap`.
    /// `unready_for` is how long this side has watched it without a complete header.
    fn judge(&self, m: &Mapped, unready_for: Duration) -> Result<Verdict> {
        // The kernel's facts, which no process can forge (System V only).
        if m.kernel_says_stale {
            return Ok(Verdict::Stale(
                "no process has it attached (nattch 0) and the creator pid the kernel recorded is gone"
                    .into(),
            ));
        }
        // A creator sizes its object in one call (ftruncate, shmget), so a non-empty object
        // smaller than a header page was never one of ours: refuse it rather than remove it.
        if m.len > 0 && m.len < HEADER_PAGE {
            bail!(
                "{} is {} bytes, too small to be an ipc-study ring; refusing to use or remove it ({})",
                self.describe(m.sysv_id),
                m.len,
                self.remedy(m.sysv_id)
            );
        }
        // SAFETY: `m` maps `m.len` bytes at `m.base` (or base is null and peek refuses) and
        // stays alive across the call; no reference to that memory exists.
        let view = unsafe { ring::peek_header(m.base, m.len) };
        Ok(ring::judge(view.as_ref(), unready_for))
    }
}

/// Creates or opens the named object, pairs with the peer, returns the paired region.
///
/// `timeout` bounds the wait for the peer (creator) or for a ready header (opener), and
/// the whole create-or-open loop (a name that keeps vanishing or going stale).
pub fn rendezvous(args: &ShmArgs, name: &str, role: Role, timeout: Duration) -> Result<Shared> {
    let obj = Object::new(args.sysv, name);
    let cap = args.capacity;
    let len = ring::region_len(cap);
    let start = Instant::now();
    // When we first saw the current object without a complete header (ring::judge's grace).
    let mut unready_since: Option<Instant> = None;
    let mut narrated_wait = false;
    loop {
        // Bounded like every wait: a name that keeps vanishing or going stale gives up too.
        obj.check_deadline(start, timeout)?;
        let mapped = match obj.try_create(len)? {
            Found::Vanished => continue,
            Found::Created(m, owned) => return create_side(&obj, m, owned, cap, role, timeout),
            Found::Existing(m) => m,
        };
        let (id, ino) = (mapped.sysv_id, mapped.ino);
        let unready_for = unready_since.map_or(Duration::ZERO, |t| t.elapsed());
        match obj.judge(&mapped, unready_for)? {
            Verdict::Ready => return open_side(&obj, mapped, cap, role),
            Verdict::Stale(why) => {
                narrate!(
                    "{} is stale: {why}; removing it and creating a new one",
                    obj.describe(id)
                );
                drop(mapped);
                obj.remove_stale(id, ino)?;
                unready_since = None;
            }
            Verdict::NotReady(_) => {
                unready_since.get_or_insert_with(Instant::now);
                if !narrated_wait {
                    narrate!(
                        "{} exists but its creator has not published the header yet; waiting (up to {:.1} s)",
                        obj.describe(id),
                        timeout.as_secs_f64()
                    );
                    narrated_wait = true;
                }
                if start.elapsed() >= timeout {
                    bail!(
                        "timed out after {:.1} s: {} exists but its header never became ready; if no program uses it, remove it ({})",
                        timeout.as_secs_f64(),
                        obj.describe(id),
                        obj.remedy(id)
                    );
                }
                drop(mapped);
                std::thread::sleep(POLL);
            }
            Verdict::Foreign(magic) => bail!(
                "corrupt shared region: {} holds magic {magic:#018x}, not an ipc-study ring's; refusing to use or remove it ({})",
                obj.describe(id),
                obj.remedy(id)
            ),
        }
    }
}

/// The creator's half: initialise, publish, wait for the peer. `owned` removes the object
/// on every error here.
fn create_side(
    obj: &Object<'_>,
    m: Mapped,
    owned: Owned,
    cap: usize,
    role: Role,
    timeout: Duration,
) -> Result<Shared> {
    let id = m.sysv_id;
    let peer = role.peer().as_str();
    let (region, sigbus) = into_region(obj, m, cap, role)?;
    region.initialize(role, common::session::new_nonce());
    narrate!(
        "wrote the header (magic, capacity {cap}, pid {}, role {}) and published `ready` last with a Release store",
        std::process::id(),
        role.as_str()
    );
    // A peer started with the other flavour never finds this object: look for its object
    // under the same name before waiting, and again every LOOK_AGAIN while waiting.
    let mut other = obj.other_flavour(peer);
    narrate!(
        "waiting up to {:.1} s for a {peer} to open it (futex wait on the header's opener_pid; start shm-{peer} with the same --name{}){}",
        timeout.as_secs_f64(),
        if obj.sysv { " and --sysv" } else { "" },
        other.as_ref().map_or(String::new(), |o| format!("; but {}", o.now()))
    );
    let start = Instant::now();
    let opener = loop {
        let left = timeout.saturating_sub(start.elapsed());
        match region.wait_for_opener(left.min(LOOK_AGAIN)) {
            Ok(who) => break who,
            Err(RingError::TimedOut { .. }) if !left.is_zero() => {
                if other.is_none() {
                    other = obj.other_flavour(peer);
                    if let Some(o) = &other {
                        narrate!("still waiting, and {}", o.now());
                    }
                }
            }
            Err(RingError::TimedOut { .. }) => bail!(
                "no {peer} opened {} within {:.1} s (--timeout); {}",
                obj.describe(id),
                timeout.as_secs_f64(),
                match other {
                    // Looked up again: the other side may have given up and removed it.
                    Some(o) if obj.other_flavour(peer).is_some() => o.now(),
                    Some(o) => o.then(),
                    None => format!("start shm-{peer} with the same --name"),
                }
            ),
            Err(e) => return Err(e).context(obj.describe(id)),
        }
    };
    narrate!(
        "the {peer} (pid {}) attached: the two processes now share the same pages (S1)",
        opener.pid
    );
    let shared = Shared {
        region,
        peer_pid: opener.pid,
        peer: opener,
        created: true,
        object: obj.describe(id),
        sysv_id: id,
        owned,
        _sigbus: sigbus,
    };
    shared.show_nattch("after pairing");
    Ok(shared)
}

/// The opener's half: check the header against our configuration, attach.
fn open_side(obj: &Object<'_>, m: Mapped, cap: usize, role: Role) -> Result<Shared> {
    let id = m.sysv_id;
    let expected = ring::region_len(cap);
    if m.len != expected {
        // S5: POSIX does not check sizes, and System V accepts a smaller one (the whole
        // segment is attached); we compare what fstat or shm_segsz said with our own.
        // SAFETY: m maps m.len bytes and is alive; no reference to the memory exists.
        let theirs = unsafe { ring::peek_header(m.base, m.len) }.map_or(0, |v| v.capacity);
        bail!(
            "{} is {} bytes (a ring capacity of {theirs} per direction), but this side's --capacity {cap} needs {expected} bytes: \
             both processes must use the same size (S5); pass the same --capacity to both",
            obj.describe(id),
            m.len
        );
    }
    let (region, sigbus) = into_region(obj, m, cap, role)?;
    match region.check_header() {
        Ok(Some(_)) => {}
        Ok(None) => bail!("{}: the header stopped being ready", obj.describe(id)),
        Err(e) => return Err(e).context(obj.describe(id)),
    }
    // One reader and one writer: the header records who created it (pid, role) and who
    // attached; a second process of a role already there is refused, naming that one.
    let creator = match region.attach(role) {
        Ok(who) => who,
        Err(RingError::SameRole { pid, .. } | RingError::Busy { pid }) => {
            bail!("{}", second(&obj.describe(id), role, pid, &region))
        }
        Err(e) => return Err(e).with_context(|| format!("attaching to {}", obj.describe(id))),
    };
    narrate!(
        "opened {}: the header is valid (magic, version, capacity {cap}); wrote our pid {} into it and woke its creator (pid {})",
        obj.describe(id),
        std::process::id(),
        creator.pid
    );
    let shared = Shared {
        region,
        peer_pid: creator.pid,
        peer: creator,
        created: false,
        object: obj.describe(id),
        sysv_id: id,
        owned: obj.own(id),
        _sigbus: sigbus,
    };
    shared.show_nattch("after pairing");
    Ok(shared)
}

/// The ring over the mapping, with the SIGBUS handler armed for it first: from here on
/// both sides touch every page, and a page taken away kills with an explanation.
fn into_region(
    obj: &Object<'_>,
    m: Mapped,
    cap: usize,
    role: Role,
) -> Result<(Region, sigbus::Guard)> {
    let sigbus = sigbus::arm(obj.sigbus_target(&m, cap, role))?;
    let Some(keeper) = m.keeper else {
        bail!("internal: an unmapped object cannot hold a ring");
    };
    // SAFETY: `keeper` owns the mapping of `m.len` bytes at `m.base` (a MAP_SHARED mapping
    // or a System V attachment) and unmaps it only when dropped, which happens after the
    // Region and all its endpoints are gone because the Region owns it. This program keeps
    // no Rust reference into that memory.
    let region =
        unsafe { Region::from_raw(m.base, m.len, cap, keeper) }.context("mapping the ring")?;
    Ok((region, sigbus))
}
