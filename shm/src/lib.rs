//! # shm: shared memory, POSIX and System V (claims S1-S5)
//!
//! Two processes map the same physical pages into their address spaces (S1): a store by
//! one is a load away for the other, with no system call and no copy by the kernel. That
//! is why shared memory is the fastest IPC mechanism, and also why it is the hardest to
//! use well: the kernel only provides the memory.
//!
//! - **S2, a fixed size.** The creator chooses the size once: `ftruncate` of a POSIX object,
//!   the `size` argument of `shmget` for System V. Here the region is one header page plus
//!   two rings of `--capacity` bytes each ([`common::ring`] has the byte-by-byte layout).
//! - **S3, managed by the kernel.** The object outlives the processes that use it: a POSIX
//!   object is a file in the `tmpfs` mounted at `/dev/shm` (`ls -l /dev/shm` shows it, with
//!   owner and mode 0600), a System V segment is listed by `ipcs -m` with its key, owner,
//!   size and `nattch` (how many processes have it attached). Someone must remove it:
//!   `shm_unlink` or `shmctl(IPC_RMID)`; here the reader does, at the end.
//! - **S4, both read and write.** Both processes map it read-write. Frames go writer to
//!   reader in ring 0, and in pingpong the reader's answers come back in ring 1.
//! - **S5, the same size.** Each side is started with `--capacity` and both must agree.
//!   System V checks it in the kernel: `shmget` of an existing key with a *larger* size
//!   fails with EINVAL (a smaller one is accepted, and the header check catches it). POSIX
//!   does not check anything: an opener learns the size with `fstat`, so this program
//!   compares it with its own and explains a mismatch.
//! - **What the note leaves out: synchronisation.** Shared memory gives neither ordering
//!   nor wake-ups. The ring publishes each frame with a Release store of an index and the
//!   other side reads the index with Acquire; a side with nothing to do spins, sleeps in a
//!   futex on the index word, or both (`--wait spin|block|adaptive`). The report's `wait`
//!   and `cpu_ns_per_msg` fields show the trade: spinning is fast and burns a CPU.
//!
//! ## The pair's contract
//! - Rendezvous: `--name NAME` (default `shm`). POSIX: the object `/ipc-study-<uid>-NAME`
//!   ([`common::runtime::kernel_name`]), i.e. `/dev/shm/ipc-study-<uid>-NAME`. System V: the
//!   key [`sysv_key`]`(NAME)`, derived from the uid and name (TLPI uses `ftok(3)` on a file;
//!   a hash needs no file that could be deleted under a running pair).
//! - Either start order: each side first tries to create the object exclusively
//!   (`O_CREAT|O_EXCL`, `IPC_CREAT|IPC_EXCL`). The winner sizes and maps it, writes the
//!   header with its pid, role and capacity, publishes `ready` last, and waits (futex on
//!   the header's `opener_pid`) for the other side. The loser opens the existing object,
//!   waits until `ready` is published, checks the header and writes its pid.
//! - Stale objects: an object whose creator and opener are both dead (for System V also:
//!   `nattch` is 0 and the kernel-recorded creator pid is gone) was left by a killed run;
//!   it is removed with a narrated line and created afresh. One owned by another uid, or
//!   one whose header is not an ipc-study ring's, is refused, never removed.
//! - Cleanup: both sides register the object with [`common::cleanup`] once paired, so an
//!   error or Ctrl-C on either side removes it; at a normal end the writer lets go and the
//!   reader removes it.

pub mod reader;
pub mod writer;

use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::cleanup::{self, Owned};
use common::narrate;
use common::ring::{self, EndOpts, HeaderView, Region, RingError, Role, Wait};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::mman::{shm_open, shm_unlink};
use nix::sys::stat::{fstat, Mode};
use nix::unistd::{ftruncate, geteuid};

/// Mechanism name in reports.
pub const MECHANISM: &str = "shm";
/// Default `--name`.
pub const DEFAULT_NAME: &str = "shm";
/// How long an existing object may stay unsized, or without a creator pid in its header,
/// before it counts as left by a crash: a live creator needs microseconds for those steps.
pub const SETUP_GRACE: Duration = Duration::from_secs(1);
/// Pause between two looks at an object that is not ready yet.
const POLL: Duration = Duration::from_millis(2);

/// Flags both programs take besides the common ones.
#[derive(clap::Args, Debug, Clone)]
pub struct ShmArgs {
    /// Use System V shared memory (shmget/shmat/shmctl) instead of POSIX (shm_open/mmap).
    #[arg(long)]
    pub sysv: bool,

    /// How a side with nothing to do waits: spin (busy, fastest), block (futex sleep),
    /// adaptive (spin 20 us, then sleep).
    #[arg(long, value_enum, default_value_t = Wait::Adaptive)]
    pub wait: Wait,

    /// Bytes per ring (one per direction), a power of two from 4K to 256M; both sides must
    /// pass the same value (S5). A frame may take at most half a ring.
    #[arg(long, value_name = "BYTES", default_value = "1M", value_parser = ring::parse_capacity)]
    pub capacity: usize,
}

impl ShmArgs {
    /// `posix` or `sysv`, as in reports.
    pub fn flavour(&self) -> &'static str {
        if self.sysv {
            "sysv"
        } else {
            "posix"
        }
    }
}

/// The System V key for a name: 32-bit FNV-1a of `ipc-study-<uid>-<name>`, never
/// `IPC_PRIVATE` (0), which would make a new private segment instead of finding ours.
pub fn sysv_key(name: &str) -> libc::key_t {
    let mut h: u32 = 0x811c_9dc5;
    for b in format!("ipc-study-{}-{name}", geteuid()).bytes() {
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    match h as libc::key_t {
        0 => 1,
        k => k,
    }
}

/// `/dev/shm` path of a POSIX object, for messages and tests (Linux mounts tmpfs there).
pub fn posix_path(name: &str) -> String {
    format!("/dev/shm{}", common::runtime::kernel_name(name))
}

/// A paired region: what the writer and reader use after the rendezvous.
pub struct Shared {
    /// The ring over the mapping (keeps the mapping alive).
    pub region: Region,
    /// The other process.
    pub peer_pid: i32,
    /// Whether this side created the object.
    pub created: bool,
    /// `POSIX shared memory /ipc-study-0-shm` or `System V segment key 0x.. (shmid N)`.
    pub object: String,
    /// The System V id, to show `nattch`.
    sysv_id: Option<i32>,
    /// Removes the object on error paths and Ctrl-C; `remove`/`leave` at a normal end.
    owned: Owned,
}

impl Shared {
    /// Endpoint options for this pair: the strategy, the peer to watch, the idle limit.
    pub fn end_opts(&self, wait: Wait, idle_timeout: Option<Duration>) -> EndOpts {
        EndOpts {
            wait,
            peer_pid: self.peer_pid,
            idle_timeout,
        }
    }

    /// A line for the report's notes: what was shared and how big.
    pub fn note(&self) -> String {
        let cap = self.region.capacity();
        format!(
            "{}: {} bytes = 4 KiB header + 2 rings of {} KiB; {} it",
            self.object,
            self.region.len(),
            cap >> 10,
            if self.created { "created" } else { "opened" }
        )
    }

    /// System V: narrates `nattch`, the kernel's count of attached processes (S3).
    pub fn show_nattch(&self, when: &str) {
        if let Some(id) = self.sysv_id {
            match shm_stat(id) {
                Ok(ds) => narrate!(
                    "shmctl(IPC_STAT) {when}: nattch = {} (processes attached), size {} bytes, creator pid {}",
                    ds.shm_nattch,
                    ds.shm_segsz,
                    ds.shm_cpid
                ),
                Err(e) => narrate!("shmctl(IPC_STAT) {when}: {e}"),
            }
        }
    }

    /// The reader's end of a run: removes the object (`shm_unlink` / `IPC_RMID`).
    pub fn remove(self) -> Result<()> {
        if self.sysv_id.is_some() {
            narrate!("IPC_RMID marks the segment for removal; the kernel frees it when the last process detaches");
        } else {
            narrate!("shm_unlink removes the name; the pages go when the last mapping goes");
        }
        self.owned.remove()
    }

    /// The writer's end of a run: keeps the object for the reader to remove.
    pub fn leave(self) {
        narrate!("leaving {} for the reader, which removes it", self.object);
        self.owned.release();
    }
}

/// The kernel object behind a mapping; dropping it unmaps (POSIX) or detaches (System V).
enum Keeper {
    /// A POSIX object mapped with memmap2 (`munmap` on drop).
    Posix(#[allow(dead_code)] memmap2::MmapRaw),
    /// A System V attachment (`shmdt` on drop).
    Sysv(#[allow(dead_code)] SysvAttachment),
}

/// Memory mapped from an object, found or made by [`try_create`].
struct Mapped {
    /// First byte (page-aligned), or null when the object has size 0 (not mapped).
    base: *mut u8,
    /// Bytes mapped (the object's size).
    len: usize,
    /// Keeps the mapping.
    keeper: Option<Keeper>,
    /// System V: the kernel says nobody is attached and its recorded creator is gone.
    kernel_says_stale: bool,
    /// System V id.
    sysv_id: Option<i32>,
    /// POSIX: the object's inode (fstat), to make sure a stale object is still the one
    /// under the name when we unlink it.
    ino: Option<u64>,
}

/// The outcome of one exclusive-create attempt.
enum Found {
    /// We created it (exclusively) with the full size.
    Created(Mapped),
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

    /// Registers the object for removal on every way out.
    fn own(&self, id: Option<i32>) -> Owned {
        let what = self.describe(id);
        match (self.sysv, id) {
            (true, Some(id)) => cleanup::own(what, move || sysv_remove(id)),
            _ => {
                let kname = self.kname.clone();
                cleanup::own(what, move || posix_remove(&kname))
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
            (true, Some(id)) => sysv_remove(id)
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
                posix_remove(&self.kname).with_context(|| format!("shm_unlink {}", self.kname))
            }
        }
    }

    fn try_create(&self, len: usize) -> Result<Found> {
        if self.sysv {
            sysv_try_create(self.key, len)
        } else {
            posix_try_create(&self.kname, len)
        }
    }
}

/// Creates or opens the named object, pairs with the peer, returns the paired region.
///
/// `timeout` bounds the wait for the peer (creator) or for a ready header (opener).
pub fn rendezvous(args: &ShmArgs, name: &str, role: Role, timeout: Duration) -> Result<Shared> {
    let obj = Object {
        sysv: args.sysv,
        name,
        kname: common::runtime::kernel_name(name),
        key: sysv_key(name),
    };
    let cap = args.capacity;
    let len = ring::region_len(cap);
    let peer = if role == Role::Writer {
        "reader"
    } else {
        "writer"
    };
    let start = Instant::now();
    // When we first saw the current object not yet set up (for the SETUP_GRACE rule).
    let mut unready_since: Option<Instant> = None;
    let mut narrated_wait = false;
    loop {
        let mapped = match obj.try_create(len)? {
            Found::Vanished => continue,
            Found::Created(m) => return create_side(&obj, m, cap, role, peer, timeout),
            Found::Existing(m) => m,
        };
        let (id, ino) = (mapped.sysv_id, mapped.ino);
        // SAFETY: `mapped` maps `len` bytes at `base` (or base is null and peek refuses)
        // and stays alive across the call; no reference to that memory exists.
        let view = unsafe { ring::peek_header(mapped.base, mapped.len) };
        match judge(&obj, &mapped, view)? {
            Verdict::Stale(why) => {
                narrate!(
                    "{} is stale: {why}; removing it and creating a new one",
                    obj.describe(id)
                );
                drop(mapped);
                obj.remove_stale(id, ino)?;
                unready_since = None;
                continue;
            }
            Verdict::NotReady => {
                let since = *unready_since.get_or_insert_with(Instant::now);
                if !narrated_wait {
                    narrate!(
                        "{} exists but its creator has not published the header yet; waiting (up to {:.1} s)",
                        obj.describe(id),
                        timeout.as_secs_f64()
                    );
                    narrated_wait = true;
                }
                let pid_known = view.is_some_and(|v| v.creator_pid > 0);
                if !pid_known && since.elapsed() >= SETUP_GRACE {
                    narrate!(
                        "{} was never set up (size {}, no creator pid after {:.1} s): left by a run that died while creating it; removing it",
                        obj.describe(id),
                        mapped.len,
                        SETUP_GRACE.as_secs_f64()
                    );
                    drop(mapped);
                    obj.remove_stale(id, ino)?;
                    unready_since = None;
                    continue;
                }
                if start.elapsed() >= timeout {
                    bail!(
                        "timed out after {:.1} s: {} exists but its header never became ready; if no program uses it, remove it ({})",
                        timeout.as_secs_f64(),
                        obj.describe(id),
                        remedy(&obj, id)
                    );
                }
                drop(mapped);
                std::thread::sleep(POLL);
                continue;
            }
            Verdict::Ready => return open_side(&obj, mapped, cap, role),
        }
    }
}

/// What an existing object is, judged from the kernel's facts and its header.
enum Verdict {
    /// Left by a dead run: remove and create anew.
    Stale(String),
    /// The creator is still setting it up.
    NotReady,
    /// A complete header: open it.
    Ready,
}

fn judge(obj: &Object<'_>, m: &Mapped, view: Option<HeaderView>) -> Result<Verdict> {
    if m.kernel_says_stale {
        return Ok(Verdict::Stale(
            "no process has it attached (nattch 0) and the creator pid the kernel recorded is gone"
                .into(),
        ));
    }
    if m.len == 0 {
        // POSIX: shm_open'ed but not yet ftruncate'd.
        return Ok(Verdict::NotReady);
    }
    let Some(v) = view else {
        bail!(
            "{} is {} bytes, too small to be an ipc-study ring; refusing to use or remove it ({})",
            obj.describe(m.sysv_id),
            m.len,
            remedy(obj, m.sysv_id)
        );
    };
    if v.magic != ring::RING_MAGIC && v.magic != 0 {
        bail!(
            "corrupt shared region: {} holds magic {:#018x}, not an ipc-study ring's; refusing to use or remove it ({})",
            obj.describe(m.sysv_id),
            v.magic,
            remedy(obj, m.sysv_id)
        );
    }
    let dead = |pid: i32| pid > 0 && ring::peer_gone(pid);
    if dead(v.creator_pid) && (v.opener_pid == 0 || dead(v.opener_pid)) {
        return Ok(Verdict::Stale(format!(
            "its creator (pid {}) is gone{}",
            v.creator_pid,
            if v.opener_pid > 0 {
                format!(" and so is its peer (pid {})", v.opener_pid)
            } else {
                String::new()
            }
        )));
    }
    if !v.ready {
        return Ok(Verdict::NotReady);
    }
    Ok(Verdict::Ready)
}

/// How a user removes an object by hand.
fn remedy(obj: &Object<'_>, id: Option<i32>) -> String {
    match (obj.sysv, id) {
        (true, Some(id)) => format!("ipcrm -m {id}"),
        (true, None) => format!("ipcrm -M {:#x}", obj.key),
        _ => format!("rm {}", posix_path(obj.name)),
    }
}

/// The creator's half: initialise, publish, wait for the peer.
fn create_side(
    obj: &Object<'_>,
    m: Mapped,
    cap: usize,
    role: Role,
    peer: &str,
    timeout: Duration,
) -> Result<Shared> {
    let id = m.sysv_id;
    let owned = obj.own(id);
    let region = into_region(m, cap)?;
    region.initialize(role, common::protocol::new_nonce());
    narrate!(
        "wrote the header (magic, capacity {cap}, pid {}, role {}) and published `ready` last with a Release store",
        std::process::id(),
        role.as_str()
    );
    narrate!(
        "waiting up to {:.1} s for a {peer} to open it (futex wait on the header's opener_pid; start shm-{peer} with the same --name{})",
        timeout.as_secs_f64(),
        if obj.sysv { " and --sysv" } else { "" }
    );
    let peer_pid = match region.wait_for_opener(timeout) {
        Ok(pid) => pid,
        Err(RingError::TimedOut { waited, .. }) => bail!(
            "no {peer} opened {} within {:.1} s (--timeout); start shm-{peer} with the same --name",
            obj.describe(id),
            waited.as_secs_f64()
        ),
        Err(e) => return Err(e).context(obj.describe(id)),
    };
    narrate!(
        "the {peer} (pid {peer_pid}) attached: the two processes now share the same pages (S1)"
    );
    let shared = Shared {
        region,
        peer_pid,
        created: true,
        object: obj.describe(id),
        sysv_id: id,
        owned,
    };
    shared.show_nattch("after pairing");
    Ok(shared)
}

/// The opener's half: check the header against our configuration, attach.
fn open_side(obj: &Object<'_>, m: Mapped, cap: usize, role: Role) -> Result<Shared> {
    let id = m.sysv_id;
    let expected = ring::region_len(cap);
    if m.len != expected {
        // S5: POSIX does not check sizes; we compare what fstat said with our own.
        // SAFETY: m maps m.len bytes and is alive; no reference to the memory exists.
        let theirs = unsafe { ring::peek_header(m.base, m.len) }.map_or(0, |v| v.capacity);
        bail!(
            "{} is {} bytes (a ring capacity of {theirs} per direction), but this side's --capacity {cap} needs {expected} bytes: \
             both processes must use the same size (S5); pass the same --capacity to both",
            obj.describe(id),
            m.len
        );
    }
    let region = into_region(m, cap)?;
    match region.check_header() {
        Ok(Some(_)) => {}
        Ok(None) => bail!("{}: the header stopped being ready", obj.describe(id)),
        Err(e) => return Err(e).context(obj.describe(id)),
    }
    let creator = region
        .attach(role)
        .with_context(|| format!("attaching to {}", obj.describe(id)))?;
    narrate!(
        "opened {}: the header is valid (magic, version, capacity {cap}); wrote our pid {} into it and woke its creator (pid {creator})",
        obj.describe(id),
        std::process::id()
    );
    let shared = Shared {
        region,
        peer_pid: creator,
        created: false,
        object: obj.describe(id),
        sysv_id: id,
        owned: obj.own(id),
    };
    shared.show_nattch("after pairing");
    Ok(shared)
}

fn into_region(m: Mapped, cap: usize) -> Result<Region> {
    let Some(keeper) = m.keeper else {
        bail!("internal: an unmapped object cannot hold a ring");
    };
    // SAFETY: `keeper` owns the mapping of `m.len` bytes at `m.base` (a MAP_SHARED mapping
    // or a System V attachment) and unmaps it only when dropped, which happens after the
    // Region and all its endpoints are gone because the Region owns it. This program keeps
    // no Rust reference into that memory.
    unsafe { Region::from_raw(m.base, m.len, cap, keeper) }.context("mapping the ring")
}

// ---- POSIX: shm_open(3), ftruncate(2), mmap(2), shm_unlink(3) ----

/// `shm_unlink`; an object already gone (the peer removed it) is not an error.
fn posix_remove(kname: &str) -> io::Result<()> {
    match shm_unlink(kname) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Maps `len` bytes of `fd` shared, read-write.
fn posix_map(fd: &OwnedFd, len: usize, kname: &str) -> Result<memmap2::MmapRaw> {
    memmap2::MmapOptions::new()
        .len(len)
        .map_raw(fd)
        .with_context(|| format!("mmap MAP_SHARED {len} bytes of {kname}"))
}

fn posix_try_create(kname: &str, len: usize) -> Result<Found> {
    // O_EXCL: exactly one process creates; the other gets EEXIST and opens what exists.
    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR;
    match shm_open(kname, flags, Mode::S_IRUSR | Mode::S_IWUSR) {
        Ok(fd) => {
            narrate!("shm_open {kname} O_CREAT|O_EXCL|O_RDWR 0600: created (a file in the tmpfs at /dev/shm, S3)");
            ftruncate(&fd, len as libc::off_t)
                .with_context(|| format!("ftruncate {kname} to {len} bytes"))?;
            narrate!("ftruncate {kname} to {len} bytes: the size is fixed now (S2)");
            let map = posix_map(&fd, len, kname)?;
            narrate!("mmap MAP_SHARED {len} bytes: our stores land in the object's pages, which the peer maps too (S1)");
            // The descriptor may close now: the mapping keeps the object's pages.
            Ok(Found::Created(Mapped {
                base: map.as_mut_ptr(),
                len,
                keeper: Some(Keeper::Posix(map)),
                kernel_says_stale: false,
                sysv_id: None,
                ino: None,
            }))
        }
        Err(Errno::EEXIST) => {
            let fd = match shm_open(kname, OFlag::O_RDWR, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => return Ok(Found::Vanished),
                Err(e) => return Err(e).with_context(|| format!("shm_open {kname} O_RDWR")),
            };
            let st = fstat(&fd).with_context(|| format!("fstat {kname}"))?;
            // Refuse an object another user owns: we would be sharing memory with them.
            let me = geteuid().as_raw();
            if st.st_uid != me {
                bail!(
                    "{kname} belongs to uid {}, not to you (uid {me}); refusing to use or remove it",
                    st.st_uid
                );
            }
            let size = usize::try_from(st.st_size).unwrap_or(0);
            let ino = Some(st.st_ino);
            if size == 0 {
                return Ok(Found::Existing(Mapped {
                    base: std::ptr::null_mut(),
                    len: 0,
                    keeper: None,
                    kernel_says_stale: false,
                    sysv_id: None,
                    ino,
                }));
            }
            let map = posix_map(&fd, size, kname)?;
            Ok(Found::Existing(Mapped {
                base: map.as_mut_ptr(),
                len: size,
                keeper: Some(Keeper::Posix(map)),
                kernel_says_stale: false,
                sysv_id: None,
                ino,
            }))
        }
        Err(e) => Err(e).with_context(|| format!("shm_open {kname} O_CREAT|O_EXCL|O_RDWR 0600")),
    }
}

// ---- System V: shmget(2), shmat(2), shmdt(2), shmctl(2) ----

/// A System V attachment; `shmdt` on drop.
struct SysvAttachment {
    /// What `shmat` returned.
    addr: *mut u8,
}

// SAFETY: the attachment is a plain address range valid in every thread of the process
// until `shmdt`, which only Drop calls; the ring accesses it through atomics and copies.
unsafe impl Send for SysvAttachment {}
// SAFETY: as above; `&SysvAttachment` allows no access at all.
unsafe impl Sync for SysvAttachment {}

impl Drop for SysvAttachment {
    fn drop(&mut self) {
        // SAFETY: `addr` came from a successful shmat and is detached exactly once, here;
        // the Region that used it is gone (it owned this value).
        unsafe { libc::shmdt(self.addr.cast::<libc::c_void>()) };
    }
}

/// `shmctl(id, IPC_STAT)`: the kernel's record of a segment (owner, size, nattch, pids).
fn shm_stat(id: i32) -> io::Result<libc::shmid_ds> {
    // SAFETY: shmid_ds is plain integers (and a struct of integers): all-zero is valid.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: `ds` is a valid, writable shmid_ds that IPC_STAT fills in.
    if unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(ds)
}

/// `shmctl(id, IPC_RMID)`; a segment already removed (EINVAL, EIDRM) is not an error.
fn sysv_remove(id: i32) -> io::Result<()> {
    // SAFETY: IPC_RMID takes no buffer (null is allowed).
    if unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) } == -1 {
        let e = io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EIDRM)) {
            return Err(e);
        }
    }
    Ok(())
}

/// `shmat(id, NULL, 0)`: the kernel picks a page-aligned address, read-write.
fn sysv_attach(id: i32, len: usize) -> Result<Mapped> {
    // SAFETY: a null address lets the kernel choose where to map; no existing memory of
    // ours is affected. The result is checked against (void *) -1 below.
    let addr = unsafe { libc::shmat(id, std::ptr::null(), 0) };
    if addr as isize == -1 {
        return Err(io::Error::last_os_error()).with_context(|| format!("shmat shmid {id}"));
    }
    Ok(Mapped {
        base: addr.cast::<u8>(),
        len,
        keeper: Some(Keeper::Sysv(SysvAttachment {
            addr: addr.cast::<u8>(),
        })),
        kernel_says_stale: false,
        sysv_id: Some(id),
        ino: None,
    })
}

fn sysv_try_create(key: libc::key_t, len: usize) -> Result<Found> {
    let perms = 0o600;
    // SAFETY: shmget takes plain integers and has no memory-safety preconditions.
    let id = unsafe { libc::shmget(key, len, libc::IPC_CREAT | libc::IPC_EXCL | perms) };
    if id >= 0 {
        narrate!("shmget key {key:#010x} size {len} IPC_CREAT|IPC_EXCL 0600: created shmid {id} (see `ipcs -m`, S3; the size is fixed, S2)");
        let m = sysv_attach(id, len)?;
        narrate!(
            "shmat shmid {id}: attached {len} bytes at {:p} (S1)",
            m.base
        );
        return Ok(Found::Created(m));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EEXIST) {
        return Err(e)
            .with_context(|| format!("shmget key {key:#010x} size {len} IPC_CREAT|IPC_EXCL 0600"));
    }
    // It exists. Size 0 finds it whatever its size, so we can read the kernel's record.
    // SAFETY: as above.
    let id = unsafe { libc::shmget(key, 0, 0) };
    if id < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT | libc::EIDRM) => Ok(Found::Vanished),
            Some(libc::EACCES) => Err(e).with_context(|| {
                format!("shmget key {key:#010x}: the segment belongs to another user; refusing to use it")
            }),
            _ => Err(e).with_context(|| format!("shmget key {key:#010x}")),
        };
    }
    let ds = match shm_stat(id) {
        Ok(ds) => ds,
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EIDRM)) => {
            return Ok(Found::Vanished)
        }
        Err(e) => return Err(e).with_context(|| format!("shmctl shmid {id} IPC_STAT")),
    };
    let me = geteuid().as_raw();
    if ds.shm_perm.uid != me {
        bail!(
            "System V segment key {key:#010x} (shmid {id}) belongs to uid {}, not to you (uid {me}); refusing to use or remove it",
            ds.shm_perm.uid
        );
    }
    // The kernel's facts, which no process can forge: who created it and who is attached.
    if ds.shm_nattch == 0 && ring::peer_gone(ds.shm_cpid) {
        return Ok(Found::Existing(Mapped {
            base: std::ptr::null_mut(),
            len: 0,
            keeper: None,
            kernel_says_stale: true,
            sysv_id: Some(id),
            ino: None,
        }));
    }
    // S5, as the kernel enforces it: asking for more than the segment has is EINVAL.
    // SAFETY: as above.
    let id2 = unsafe { libc::shmget(key, len, perms) };
    if id2 < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINVAL) {
            bail!(
                "shmget key {key:#010x} size {len}: EINVAL: the segment (shmid {id}) has {} bytes and we asked for {len}; \
                 the kernel refuses a size larger than the existing segment's. Both processes must use the same size (S5): \
                 pass the same --capacity to both",
                ds.shm_segsz
            );
        }
        return Err(e).with_context(|| format!("shmget key {key:#010x} size {len}"));
    }
    let size = ds.shm_segsz;
    let m = sysv_attach(id2, size)?;
    narrate!(
        "shmget key {key:#010x}: it exists (shmid {id2}, {size} bytes, created by pid {}); shmat attached it at {:p}",
        ds.shm_cpid,
        m.base
    );
    Ok(Found::Existing(m))
}
