//! The claims S1-S5, each shown by what the kernel does: `/proc/<pid>/maps` and
//! `/proc/<pid>/pagemap` of both processes, `fstat`, `ftruncate`, `shmget`, `shmctl`,
//! a mapping touched past the object's end, and the bytes the programs store in the
//! shared pages (read back by the test, a third process). Next to them, the program-level
//! claim tests (what shm-writer and shm-reader say and report).
//!
//! Each test has its own `--name` and runtime directory and checks that nothing is left
//! in /dev/shm, `ipcs -m` or that directory. No test asserts a timing.

mod harness;

use std::os::fd::AsRawFd;

use common::frame::HEADER_LEN;
use common::ring::{offsets, region_len, RING_MAGIC, STAMP_LEN};
use harness::{
    assert_verified, hello_record, indices, maps_of, pair, read_u32, read_u64, rmid, shm_stat,
    shmget, sysv_maps_name, the_mapping, try_shm_stat, LivePair, MapsLine, Scene,
};
use nix::sys::signal::Signal;
use nix::sys::stat::{fstat, major, minor};
use nix::sys::wait::{waitpid, WaitStatus};

/// `SHM_DEST` from `<linux/shm.h>` (libc does not export it): the segment is marked for
/// destruction and goes when the last process detaches.
const SHM_DEST: libc::c_ushort = 0o1000;

/// Bytes a text line of `len` bytes takes in a ring: the record's stamp, the frame header
/// and the payload, rounded up to a cache line (`common::ring::layout`).
fn record_len(len: usize) -> u64 {
    common::ring::record_len(len) as u64
}

/// The checks S1 makes on one process's mapping of the object: shared and writable, the
/// whole region, from offset 0.
fn assert_maps_whole_region(m: &MapsLine, len: usize) {
    assert_eq!(m.perms, "rw-s", "a shared read-write mapping: {m:?}");
    assert_eq!((m.end - m.start) as usize, len, "the whole region: {m:?}");
    assert_eq!(m.offset, 0, "{m:?}");
}

/// S1, POSIX: while a pair runs, both processes' /proc/<pid>/maps show the same object:
/// the same device and inode, which are the ones `stat` gives for /dev/shm/<name>.
#[test]
fn claim_s1_both_processes_map_the_same_pages() {
    let s = Scene::new("s1");
    let mut p = LivePair::start(&s, &["--capacity", "64K"]);
    let path = s.posix_path();
    let st = nix::sys::stat::stat(path.as_str()).unwrap();
    let dev = (major(st.st_dev), minor(st.st_dev));
    let r = the_mapping(p.r.pid(), |x| x == path);
    let w = the_mapping(p.w.pid(), |x| x == path);
    for m in [&r, &w] {
        assert_maps_whole_region(m, region_len(64 << 10));
        assert_eq!(
            (m.dev, m.inode),
            (dev, st.st_ino),
            "the /dev/shm file: {m:?}"
        );
    }
    assert_ne!(p.r.pid(), p.w.pid());
    p.send("same pages", 0);
    let (w, r) = p.finish();
    assert_verified(&w, &r);
    assert!(r.stdout.contains(": same pages"), "{}", r.stdout);
    s.assert_clean();
}

/// S1, System V: both maps lines name the segment `/SYSV<key>` with the shmid as inode (the
/// kernel sets the segment file's inode number to the id), and the kernel counts 2 attached.
#[test]
fn claim_s1_sysv_maps_name_the_key_in_both_processes() {
    let s = Scene::new("s1s");
    let mut p = LivePair::start(&s, &["--sysv", "--capacity", "64K"]);
    let id = s.sysv_id().expect("the segment exists while the pair runs");
    let name = format!("{} (deleted)", sysv_maps_name(shm::sysv_key(&s.name)));
    let r = the_mapping(p.r.pid(), |x| x == name);
    let w = the_mapping(p.w.pid(), |x| x == name);
    for m in [&r, &w] {
        assert_maps_whole_region(m, region_len(64 << 10));
        assert_eq!(m.inode, id as u64, "the inode is the shmid: {m:?}");
    }
    assert_eq!(r.dev, w.dev);
    let ds = shm_stat(id);
    assert_eq!(
        ds.shm_nattch, 2,
        "the kernel counts both processes attached"
    );
    assert_eq!(ds.shm_cpid, p.r.pid(), "the reader created it");
    p.send("same segment", 0);
    let (w, r) = p.finish();
    assert_verified(&w, &r);
    s.assert_clean();
}

/// The page-frame number of `pid`'s page at `vaddr`, from /proc/<pid>/pagemap (bits 0-54;
/// bit 63 says the page is present). `None` if the page is not present in memory.
fn pfn(pid: i32, vaddr: u64, page: u64) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(format!("/proc/{pid}/pagemap")).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, vaddr / page * 8).unwrap();
    let e = u64::from_le_bytes(b);
    (e >> 63 == 1).then_some(e & ((1 << 55) - 1))
}

/// S1, "the same physical pages" taken literally: every page present in both processes'
/// mappings has the same page-frame number in /proc/<pid>/pagemap. The kernel shows frame
/// numbers only to CAP_SYS_ADMIN (others read 0), so without it the test is skipped.
#[test]
fn claim_s1_same_physical_pages_in_both_pagemaps() {
    if !nix::unistd::geteuid().is_root() {
        return common::testing::skip("/proc/<pid>/pagemap shows page frames only to root");
    }
    // SAFETY: sysconf takes an integer and has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    let s = Scene::new("s1pfn");
    for flavour in [&[][..], &["--sysv"][..]] {
        let mut args = vec!["--capacity", "64K"];
        args.extend_from_slice(flavour);
        let mut p = LivePair::start(&s, &args);
        // One line, so the first data page is touched by both (written, then read).
        p.send("one line", 0);
        let path = s.posix_path();
        let key = sysv_maps_name(shm::sysv_key(&s.name));
        let ours = |x: &str| x == path || x.starts_with(&key);
        let r = the_mapping(p.r.pid(), ours);
        let w = the_mapping(p.w.pid(), ours);
        let mut common = Vec::new();
        for i in 0..(r.end - r.start) / page {
            let a = pfn(p.r.pid(), r.start + i * page, page);
            let b = pfn(p.w.pid(), w.start + i * page, page);
            if let (Some(a), Some(b)) = (a, b) {
                assert_eq!(a, b, "page {i}: reader frame {a:#x}, writer frame {b:#x}");
                common.push((i, a));
            }
        }
        let (w, r) = p.finish();
        assert_verified(&w, &r);
        s.assert_clean();
        if common.iter().all(|&(_, f)| f == 0) {
            return common::testing::skip("page frame numbers read as 0 (no CAP_SYS_ADMIN)");
        }
        // The header page and the first page of ring 0's data.
        let pages: Vec<u64> = common.iter().map(|&(i, _)| i).collect();
        assert!(
            pages.contains(&0) && pages.contains(&1),
            "{flavour:?}: {common:?}"
        );
    }
}

/// S2 and S3: a fixed-size object the kernel keeps, visible in /dev/shm (0600) and in
/// `ipcs -m` with nattch, and gone after the pair is done.
#[test]
fn claim_s2_s3_fixed_size_object_kept_by_the_kernel() {
    use std::os::unix::fs::MetadataExt;
    let s = Scene::new("s23");
    let mut r = s.reader(&["--capacity", "64K", "--timeout", "20"]);
    r.wait_for("waiting up to");
    let meta = std::fs::metadata(s.posix_path()).unwrap();
    assert_eq!(meta.len() as usize, region_len(64 << 10));
    assert_eq!(meta.mode() & 0o777, 0o600);
    let w = s.writer(&["--capacity", "64K"]).finish();
    let r = r.finish();
    assert!(w.ok() && r.ok(), "{}\n{}", w.stderr, r.stderr);
    assert!(
        r.stderr.contains("removed POSIX shared memory"),
        "{}",
        r.stderr
    );
    s.assert_clean();

    let mut r = s.reader(&["--sysv", "--capacity", "64K", "--timeout", "20"]);
    r.wait_for("waiting up to");
    let id = s
        .sysv_id()
        .expect("the segment exists while the reader waits");
    // The kernel's record: the size fixed at shmget, the creator, one process attached.
    let ds = shm_stat(id);
    assert_eq!(ds.shm_segsz, region_len(64 << 10));
    assert_eq!((ds.shm_cpid, ds.shm_nattch), (r.pid(), 1));
    assert_eq!(ds.shm_perm.mode & 0o777, 0o600);
    let ipcs = std::process::Command::new("ipcs").arg("-m").output();
    if let Ok(out) = ipcs {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&id.to_string()),
            "ipcs -m does not list shmid {id}:\n{text}"
        );
    }
    let w = s.writer(&["--sysv", "--capacity", "64K"]).finish();
    let r = r.finish();
    assert!(w.ok() && r.ok(), "{}\n{}", w.stderr, r.stderr);
    // The writer (the opener) looks after attaching, while the reader is attached and
    // waiting for End: two processes. (The reader may look after the writer left.)
    assert!(w.stderr.contains("nattch = 2"), "{}", w.stderr);
    assert!(r.stderr.contains("nattch = "), "{}", r.stderr);
    s.assert_clean();
}

/// S2, what POSIX allows and the note denies: anyone with the object open read-write may
/// `ftruncate` it to another size, and `fstat` shows it. The size is fixed only because
/// these programs never change it; an opener then finds the size it does not expect.
#[test]
fn claim_s2_posix_object_can_be_resized_with_ftruncate() {
    let s = Scene::new("s2p");
    let len = region_len(64 << 10);
    let args = ["--mode", "stream", "--capacity", "64K", "--json"];
    let mut rargs = args.to_vec();
    rargs.extend_from_slice(&["--timeout", "20"]);
    let mut r = s.reader(&rargs);
    r.wait_for("waiting up to");
    let path = s.posix_path();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    assert_eq!(fstat(&f).unwrap().st_size as usize, len);
    let grown = len + (1 << 20);
    nix::unistd::ftruncate(&f, grown as libc::off_t).expect("ftruncate grows a POSIX object");
    assert_eq!(
        fstat(&f).unwrap().st_size as usize,
        grown,
        "fstat sees the new size"
    );
    assert_eq!(read_u64(&path, grown - 8), 0, "the new bytes read as zeros");
    assert_eq!(
        read_u64(&path, offsets::MAGIC),
        RING_MAGIC,
        "the header is kept"
    );

    let mut wargs = args.to_vec();
    wargs.extend_from_slice(&["--count", "100"]);
    let w = s.writer(&wargs).finish();
    assert_eq!(w.status.code(), Some(1), "{}", w.stderr);
    assert!(
        w.stderr.contains(&format!("is {grown} bytes"))
            && w.stderr.contains(&format!("needs {len} bytes")),
        "{}",
        w.stderr
    );
    // Back to the size both sides agreed on: the pair works.
    nix::unistd::ftruncate(&f, len as libc::off_t).expect("ftruncate shrinks it back");
    drop(f);
    let w = s.writer(&wargs).finish();
    let r = r.finish();
    assert_verified(&w, &r);
    assert_eq!(r.any_report().count, 100);
    s.assert_clean();
}

/// S2, the other way: a POSIX object shrunk under a running pair. The kernel allows it
/// (`ftruncate` to one page), and the writer's next store into ring 0's data (after the
/// Hello it sent first), now past the object's end, is SIGBUS: its handler names the byte, the object and its new size,
/// unlinks it and dies of SIGBUS; the reader, whose waits look at the first page only,
/// sees its peer gone.
#[test]
fn claim_s2_posix_shrink_under_a_pair_is_sigbus() {
    use std::os::unix::process::ExitStatusExt;
    no_core_files();
    let s = Scene::new("s2shrink");
    let path = s.posix_path();
    let mut p = LivePair::start(&s, &["--capacity", "64K"]);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    nix::unistd::ftruncate(&f, 4096).expect("ftruncate shrinks a POSIX object in use");
    assert_eq!(fstat(&f).unwrap().st_size, 4096);
    drop(f);
    let wpid = p.w.pid();
    p.w.write_stdin(b"past the end\n");
    let (w, r) = p.finish();
    assert_eq!(w.status.signal(), Some(libc::SIGBUS), "{}", w.stderr);
    // The writer's SIGBUS handler said what happened and which object, and removed it.
    let kname = common::runtime::kernel_name(&s.name);
    // The writer's first store into the record is one of its frame header's (after the
    // stamp); which of the header's bytes comes first is the compiler's choice (an
    // optimised build stores its last 8 bytes first).
    let frame = offsets::data(0, 64 << 10) as u64 + hello_record("posix") + STAMP_LEN as u64;
    let said = format!("*** SIGBUS: shm-writer (pid {wpid}) touched byte ");
    let byte: u64 = w
        .stderr
        .split_once(&said)
        .and_then(|(_, rest)| rest.split_once(' '))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no touched byte in: {}", w.stderr));
    assert!(
        (frame..frame + HEADER_LEN as u64).contains(&byte),
        "byte {byte}, not in the frame header at {frame}: {}",
        w.stderr
    );
    assert!(
        w.stderr.contains(&format!(
            "{said}{byte} of POSIX shared memory {kname} (ring 0's data area, writer to reader)"
        )) && w.stderr.contains(&format!(
            "The object is now 4096 bytes, and {} were mapped: another process shrank it",
            region_len(64 << 10)
        )) && w.stderr.contains(&format!("Removed {path} (unlink)")),
        "{}",
        w.stderr
    );
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("peer (pid {wpid}) is gone")),
        "{}",
        r.stderr
    );
    s.assert_clean();
}

/// S2, System V: the size really is fixed at `shmget`. No call changes it: asking for more
/// is EINVAL, and `IPC_SET` takes only owner, group and mode (the size it is given is
/// ignored). The pair then runs at the size it was created with.
#[test]
fn claim_s2_sysv_segment_size_is_fixed_at_shmget() {
    let s = Scene::new("s2s");
    let len = region_len(64 << 10);
    let args = ["--sysv", "--mode", "stream", "--capacity", "64K", "--json"];
    let mut rargs = args.to_vec();
    rargs.extend_from_slice(&["--timeout", "20"]);
    let mut r = s.reader(&rargs);
    r.wait_for("waiting up to");
    let key = shm::sysv_key(&s.name);
    let id = s.sysv_id().unwrap();
    let mut ds = shm_stat(id);
    assert_eq!(ds.shm_segsz, len);
    assert_eq!(shmget(key, len + 4096, 0o600), Err(libc::EINVAL));
    ds.shm_segsz = 2 * len;
    // SAFETY: `ds` is a valid shmid_ds (from IPC_STAT); IPC_SET only reads it.
    let rc = unsafe { libc::shmctl(id, libc::IPC_SET, &mut ds) };
    assert_eq!(rc, 0, "IPC_SET: {}", std::io::Error::last_os_error());
    assert_eq!(shm_stat(id).shm_segsz, len, "IPC_SET does not resize");
    let mut wargs = args.to_vec();
    wargs.extend_from_slice(&["--count", "100"]);
    let w = s.writer(&wargs).finish();
    let r = r.finish();
    assert_verified(&w, &r);
    s.assert_clean();
}

/// S3: the kernel keeps the object after the only process using it is killed (-9, so no
/// cleanup ran): POSIX, the same /dev/shm file with its size and the dead creator's pid in
/// its header; System V, the kernel's record says nattch 0 and names the dead pid as both
/// creator and last to detach.
#[test]
fn claim_s3_kernel_keeps_an_object_after_its_processes_die() {
    use std::os::unix::fs::MetadataExt;
    let s = Scene::new("s3k");
    let len = region_len(64 << 10);
    let path = s.posix_path();

    let mut r = s.reader(&["--capacity", "64K", "--timeout", "20"]);
    r.wait_for("waiting up to");
    let (pid, ino) = (r.pid(), std::fs::metadata(&path).unwrap().ino());
    r.kill9();
    let meta = std::fs::metadata(&path).expect("the object outlives its creator");
    assert_eq!((meta.ino(), meta.len() as usize), (ino, len));
    assert_eq!(read_u32(&path, offsets::CREATOR_PID), pid as u32);
    std::fs::remove_file(&path).unwrap(); // shm_unlink is unlink in /dev/shm
    s.assert_clean();

    let mut r = s.reader(&["--sysv", "--capacity", "64K", "--timeout", "20"]);
    r.wait_for("waiting up to");
    let (pid, id) = (r.pid(), s.sysv_id().unwrap());
    r.kill9();
    assert_eq!(s.sysv_id(), Some(id), "the segment outlives its creator");
    let ds = shm_stat(id);
    assert_eq!(ds.shm_segsz, len);
    assert_eq!(ds.shm_nattch, 0, "exit detached it");
    assert_eq!((ds.shm_cpid, ds.shm_lpid), (pid, pid));
    assert_eq!(rmid(id), 0);
    s.assert_clean();
}

/// S3: the name and the pages are separate. Removing the name while the pair runs (POSIX
/// `unlink`, System V `IPC_RMID`) does not take the memory: the maps lines say
/// "(deleted)", the kernel marks the segment SHM_DEST with the private key, and the pair
/// still passes a message. The pages go when the last mapping goes.
#[test]
fn claim_s3_pages_outlive_the_name_while_mapped() {
    let s = Scene::new("s3n");
    let path = s.posix_path();
    let mut p = LivePair::start(&s, &["--capacity", "64K"]);
    std::fs::remove_file(&path).unwrap(); // shm_unlink
    assert!(!std::path::Path::new(&path).exists());
    let deleted = format!("{path} (deleted)");
    for pid in [p.r.pid(), p.w.pid()] {
        assert_eq!(maps_of(pid, |x| x == deleted).len(), 1, "pid {pid}");
    }
    p.send("after unlink", 0);
    let (w, r) = p.finish();
    assert_verified(&w, &r);
    assert!(r.stdout.contains(": after unlink"), "{}", r.stdout);
    s.assert_clean();

    let mut p = LivePair::start(&s, &["--sysv", "--capacity", "64K"]);
    let key = shm::sysv_key(&s.name);
    let id = s.sysv_id().unwrap();
    assert_eq!(rmid(id), 0);
    assert_eq!(shmget(key, 0, 0), Err(libc::ENOENT), "the key is gone");
    let ds = shm_stat(id);
    assert_eq!(ds.shm_nattch, 2, "both still attached");
    assert_ne!(ds.shm_perm.mode & SHM_DEST, 0, "marked for destruction");
    assert_eq!(
        ds.shm_perm.__key,
        libc::IPC_PRIVATE,
        "the key was made private"
    );
    p.send("after IPC_RMID", 0);
    let (w, r) = p.finish();
    assert_verified(&w, &r);
    assert!(r.stdout.contains(": after IPC_RMID"), "{}", r.stdout);
    // The segment went with the last detach: its id is no longer valid.
    assert_eq!(try_shm_stat(id).err(), Some(libc::EINVAL));
    s.assert_clean();
}

/// S4: both sides read and write: Pongs come back through the second ring.
#[test]
fn claim_s4_both_sides_read_and_write() {
    let s = Scene::new("s4");
    let (w, r) = pair(
        &s,
        &[
            "--mode", "pingpong", "--count", "300", "--size", "1000", "--json",
        ],
        &["--mode", "pingpong", "--json"],
        false,
    );
    assert_verified(&w, &r);
    assert_eq!(r.any_report().count, 300, "the reader received every Ping");
    assert_eq!(w.any_report().count, 300, "the writer received every Pong");
    s.assert_clean();
}

/// S4 in the shared pages themselves: both processes map the region read-write, and each
/// stores into it. The test (a third process) reads the object: the creator's and the
/// opener's pids, each written by its own process; after one line, ring 0's `head`
/// (stored only by the writer) and `tail` (stored only by the reader) both moved by one
/// record, while ring 1 is untouched in text mode.
#[test]
fn claim_s4_each_side_stores_into_the_shared_pages() {
    let s = Scene::new("s4k");
    let path = s.posix_path();
    let mut p = LivePair::start(&s, &["--capacity", "64K"]);
    for pid in [p.r.pid(), p.w.pid()] {
        assert_eq!(the_mapping(pid, |x| x == path).perms, "rw-s", "pid {pid}");
    }
    assert_eq!(read_u32(&path, offsets::CREATOR_PID), p.r.pid() as u32);
    assert_eq!(read_u32(&path, offsets::OPENER_PID), p.w.pid() as u32);
    // The writer's Hello went first, and the reader took it.
    let hello = hello_record("posix");
    assert_eq!(indices(&path, 0), (hello, hello));
    p.send("hi", 0);
    let rec = record_len(2);
    assert_eq!(
        indices(&path, 0),
        (hello + rec, hello + rec),
        "writer's head, reader's tail"
    );
    assert_eq!(indices(&path, 1), (0, 0));
    let (w, r) = p.finish();
    assert_verified(&w, &r);
    s.assert_clean();
}

/// S5, POSIX: nothing in the kernel checks the size; the opener compares and explains.
#[test]
fn claim_s5_posix_sizes_must_match() {
    let s = Scene::new("s5p");
    let mut r = s.reader(&["--capacity", "64K", "--timeout", "20"]);
    r.wait_for("waiting up to");
    let w = s.writer(&["--capacity", "128K"]).finish();
    assert!(!w.ok());
    assert!(
        w.stderr.contains("S5") && w.stderr.contains("--capacity"),
        "{}",
        w.stderr
    );
    r.signal(Signal::SIGTERM);
    let r = r.finish();
    assert_eq!(r.status.code(), Some(130), "{}", r.stderr);
    s.assert_clean();
}

/// Sets this test process's soft core-file limit to 0 (children inherit it), so a child
/// killed by SIGBUS on purpose leaves no core file where core dumps are enabled.
fn no_core_files() {
    // SAFETY: getrlimit/setrlimit with a valid, writable rlimit struct we own.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_CORE, &mut lim), 0);
        lim.rlim_cur = 0;
        assert_eq!(libc::setrlimit(libc::RLIMIT_CORE, &lim), 0);
    }
}

/// In a forked child, reads the byte at `addr` and exits 0; returns how the child ended.
fn touch_in_child(addr: *const u8) -> WaitStatus {
    // SAFETY: the child of a multi-threaded process may only make async-signal-safe calls:
    // it does one volatile read (which may fault and kill it) and `_exit`, nothing else.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            // SAFETY: `addr` is inside a live mapping inherited from the parent; a read
            // past the object's end raises SIGBUS, which is what the caller looks for.
            unsafe {
                std::ptr::read_volatile(addr);
                libc::_exit(0)
            }
        }
        nix::unistd::ForkResult::Parent { child } => waitpid(child, None).unwrap(),
    }
}

/// S5, POSIX, the kernel's side: it does not check the size at all. An opener's `mmap`
/// of the length a 1M ring would need succeeds on the 64K object (the header reads fine),
/// a read of its last byte works, and a read one byte past the object's end is SIGBUS.
/// Only `fstat` tells the opener the real size, which is why shm-writer compares it.
#[test]
fn claim_s5_posix_kernel_maps_any_length_and_faults_past_the_end() {
    no_core_files();
    let s = Scene::new("s5k");
    let mut r = s.reader(&["--capacity", "64K", "--timeout", "20"]);
    r.wait_for("waiting up to");
    let (small, big) = (region_len(64 << 10), region_len(1 << 20));
    let kname = common::runtime::kernel_name(&s.name);
    let fd = nix::sys::mman::shm_open(
        kname.as_str(),
        nix::fcntl::OFlag::O_RDWR,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    assert_eq!(fstat(&fd).unwrap().st_size as usize, small);
    // SAFETY: a new read-only shared mapping where the kernel chooses; it is read only
    // through raw pointers below and unmapped at the end.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            big,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    assert_ne!(
        p,
        libc::MAP_FAILED,
        "mmap {big} bytes of a {small}-byte object: {}",
        std::io::Error::last_os_error()
    );
    let base = p.cast::<u8>().cast_const();
    // SAFETY: the first page is inside the object; the header's magic is 8 aligned bytes.
    let magic = unsafe { std::ptr::read_volatile(base.cast::<u64>()) };
    assert_eq!(
        magic, RING_MAGIC,
        "the creator's header, through our mapping"
    );
    let inside = touch_in_child(base.wrapping_add(small - 1));
    assert!(matches!(inside, WaitStatus::Exited(_, 0)), "{inside:?}");
    let past = touch_in_child(base.wrapping_add(small));
    assert!(
        matches!(past, WaitStatus::Signaled(_, Signal::SIGBUS, _)),
        "a read past the object's end: {past:?}"
    );
    // SAFETY: `p` is the mapping of `big` bytes made above, unmapped once.
    assert_eq!(unsafe { libc::munmap(p, big) }, 0);
    r.signal(Signal::SIGTERM);
    let r = r.finish();
    assert_eq!(r.status.code(), Some(130), "{}", r.stderr);
    s.assert_clean();
}

/// S5, the header check: an object of the right size whose header names another
/// capacity (scribbled here) passes the size comparison and is refused by the header.
#[test]
fn claim_s5_header_capacity_is_checked_when_the_size_matches() {
    use std::os::unix::fs::FileExt;
    let s = Scene::new("s5h");
    let mut r = s.reader(&["--capacity", "64K", "--timeout", "20"]);
    r.wait_for("waiting up to");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(s.posix_path())
        .unwrap();
    f.write_all_at(&(32u64 << 10).to_le_bytes(), offsets::CAPACITY as u64)
        .unwrap();
    let w = s.writer(&["--capacity", "64K"]).finish();
    assert_eq!(w.status.code(), Some(1), "{}", w.stderr);
    assert!(
        w.stderr.contains(
            "created with a capacity of 32768 bytes per direction, and this side expects 65536"
        ),
        "{}",
        w.stderr
    );
    r.signal(Signal::SIGINT);
    let r = r.finish();
    assert_eq!(r.status.code(), Some(130), "{}", r.stderr);
    s.assert_clean();
}

/// S5, System V: a larger size than the segment's is EINVAL from shmget itself.
#[test]
fn claim_s5_sysv_larger_size_is_einval() {
    let s = Scene::new("s5s");
    let mut r = s.reader(&["--sysv", "--capacity", "64K", "--timeout", "20"]);
    r.wait_for("waiting up to");
    let w = s.writer(&["--sysv", "--capacity", "1M"]).finish();
    assert!(!w.ok());
    assert!(
        w.stderr.contains("EINVAL") && w.stderr.contains("S5"),
        "{}",
        w.stderr
    );
    // A smaller size passes shmget, which attaches the whole segment; what refuses it is
    // the size comparison in open_side (the segment's 135168 bytes against the 36864 a
    // 16K ring needs), before the header is looked at.
    let w = s.writer(&["--sysv", "--capacity", "16K"]).finish();
    assert!(!w.ok());
    assert!(w.stderr.contains("S5"), "{}", w.stderr);
    let (have, need) = (region_len(64 << 10), region_len(16 << 10));
    assert!(
        w.stderr
            .contains(&format!("it exists (shmid {}", s.sysv_id().unwrap()))
            && !w.stderr.contains("EINVAL"),
        "{}",
        w.stderr
    );
    assert!(
        w.stderr.contains(&format!("is {have} bytes"))
            && w.stderr.contains(&format!("needs {need} bytes")),
        "{}",
        w.stderr
    );
    r.signal(Signal::SIGINT);
    let r = r.finish();
    assert_eq!(r.status.code(), Some(130), "{}", r.stderr);
    s.assert_clean();
}

/// S5, System V, the kernel's side with raw calls: `shmget` of the existing key with a
/// larger size is EINVAL, with the same or a smaller size it returns the same id (the
/// kernel checks one direction only; the segment keeps its size).
#[test]
fn claim_s5_sysv_kernel_refuses_only_a_larger_size() {
    let s = Scene::new("s5sk");
    let mut r = s.reader(&["--sysv", "--capacity", "64K", "--timeout", "20"]);
    r.wait_for("waiting up to");
    let key = shm::sysv_key(&s.name);
    let id = s.sysv_id().unwrap();
    let len = region_len(64 << 10);
    assert_eq!(shmget(key, region_len(1 << 20), 0o600), Err(libc::EINVAL));
    assert_eq!(shmget(key, len + 1, 0o600), Err(libc::EINVAL));
    assert_eq!(shmget(key, len, 0o600), Ok(id));
    assert_eq!(shmget(key, region_len(16 << 10), 0o600), Ok(id));
    assert_eq!(shmget(key, 1, 0o600), Ok(id));
    assert_eq!(shm_stat(id).shm_segsz, len, "the segment keeps its size");
    r.signal(Signal::SIGINT);
    let r = r.finish();
    assert_eq!(r.status.code(), Some(130), "{}", r.stderr);
    s.assert_clean();
}
