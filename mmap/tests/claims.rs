//! One test per claim of the note (F1-F7), named after it. No timing assertions: the
//! figures are printed by the programs and measured by the bench crate.

mod util;

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::ring::{offsets, region_len, DEFAULT_CAPACITY};
use common::testing::skip;
use mmap::{cachestat, maps_file_range, CacheStat};
use util::{DoneExt, Proc, ProcExt, TestDir, READER, WRITER};

/// F1: the file is part of the process's memory: its line in /proc/self/maps, MAP_SHARED.
#[test]
fn claim_f1_the_file_appears_in_the_process_memory_map() {
    let dir = TestDir::new("f1");
    let w = dir.spawn(WRITER, &[], Some(b"one line\n"));
    dir.wait_for(&dir.file());
    let r = dir.spawn(READER, &[], None).finish();
    w.finish().assert_ok("writer");
    r.assert_ok("reader");
    let file = std::fs::canonicalize(&dir.path)
        .unwrap()
        .join(format!("{}.map", dir.name));
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains("/proc/self/maps") && l.contains(file.to_str().unwrap()))
        .unwrap_or_else(|| panic!("no maps line for the file:\n{}", r.stderr));
    assert!(line.contains(" rw-s "), "shared, writable: {line}");
    dir.finish();
}

/// The `/proc/self/maps` lines a program printed for `file`, as (perms, file range).
fn printed_maps_of(stderr: &str, file: &Path) -> Vec<(String, (u64, u64))> {
    let file = std::fs::canonicalize(file).unwrap();
    stderr
        .lines()
        .filter_map(|l| l.split_once("/proc/self/maps: ").map(|(_, m)| m))
        .filter(|m| m.split_whitespace().nth(5) == file.to_str())
        .map(|m| {
            let perms = m.split_whitespace().nth(1).unwrap().to_string();
            (perms, maps_file_range(m).unwrap())
        })
        .collect()
}

/// F1, "a part of a file": `mmap-reader --bulk --offset 1M --length 2M` maps only that
/// window. The kernel's maps line for the file has offset 0x100000 in its third column and
/// spans 2 MiB, and the bytes seen through it are the file's bytes at that offset (every
/// word of the pattern of those blocks checks; with the offset ignored they would not).
/// A bad value is refused naming the flag and the limit, and never costs the data.
#[test]
fn claim_f1_a_window_at_an_offset_is_mapped_and_shown_in_proc_maps() {
    let dir = TestDir::new("f1_window");
    dir.spawn(WRITER, &["--bulk", "--file-size", "8M"], None)
        .finish()
        .assert_ok("writer");
    let file_len = 4096 + (8u64 << 20);
    let r = dir
        .spawn(
            READER,
            &[
                "--bulk", "--offset", "1M", "--length", "2M", "--keep", "--json",
            ],
            None,
        )
        .finish();
    r.assert_ok("reader --offset 1M --length 2M");
    let maps = printed_maps_of(&r.stderr, &dir.file());
    assert_eq!(
        maps,
        [("r--s".to_string(), (1 << 20, 3 << 20))],
        "one read-only shared map of file bytes 1 MiB..3 MiB, no map of the whole file:\n{}",
        r.stderr
    );
    let rep = r.any_report();
    assert!(rep.verified);
    assert_eq!(rep.bytes, 2 << 20, "the window's bytes, not the file's");
    // Not a multiple of the page size: clap's error names the flag and the page size.
    let e = dir
        .spawn(READER, &["--bulk", "--offset", "5000"], None)
        .finish();
    assert_eq!(e.status.code(), Some(2), "{}", e.stderr);
    assert!(
        e.stderr.contains("--offset") && e.stderr.contains("page size (4096"),
        "{}",
        e.stderr
    );
    // Past the end of the file: the error names the flag and the file's length; a bad
    // flag value the program checks itself exits 2, as clap's own checks do.
    let e = dir
        .spawn(READER, &["--bulk", "--offset", "64M"], None)
        .finish();
    assert_eq!(e.status.code(), Some(2), "{}", e.stderr);
    assert!(
        e.stderr.contains("--offset 67108864") && e.stderr.contains(&format!("({file_len} bytes)")),
        "{}",
        e.stderr
    );
    let e = dir
        .spawn(
            READER,
            &["--bulk", "--offset", "8M", "--length", "1M"],
            None,
        )
        .finish();
    assert_eq!(e.status.code(), Some(2), "{}", e.stderr);
    assert!(
        e.stderr.contains("--length 1048576") && e.stderr.contains("at most 4096 fits"),
        "{}",
        e.stderr
    );
    assert!(
        dir.file().exists(),
        "a mistyped flag does not remove the data"
    );
    dir.spawn(READER, &["--bulk"], None)
        .finish()
        .assert_ok("reader of the whole file");
    dir.finish();
}

/// F1, the kernel's side: `mmap` of two pages at offset 3 pages of a six-page file maps
/// exactly those pages (their bytes, their offset in /proc/self/maps), and `mmap` refuses
/// an offset that is not a multiple of the page size with EINVAL.
#[test]
fn claim_f1_the_kernel_maps_a_page_aligned_window_and_refuses_other_offsets() {
    let dir = TestDir::new("f1_kernel");
    let page = mmap::page_size();
    let p = dir.path.join("pages.map");
    let (f, owned) = mmap::rendezvous::create_file(&p, 6 * page as u64).unwrap();
    for i in 0..6u8 {
        f.write_all_at(&vec![b'a' + i; page], (i as usize * page) as u64)
            .unwrap();
    }
    let m =
        mmap::Map::open_window(&f, &p, 3 * page as u64, 2 * page, 6 * page as u64, false).unwrap();
    let (mut first, mut last) = (vec![0u8; page], vec![0u8; page]);
    m.read_bytes(0, &mut first).unwrap();
    m.read_bytes(page, &mut last).unwrap();
    assert!(
        first.iter().all(|&b| b == b'd'),
        "the map starts at file page 3"
    );
    assert!(
        last.iter().all(|&b| b == b'e'),
        "and ends after file page 4"
    );
    assert!(
        m.read_bytes(2 * page, &mut [0u8; 1]).is_err(),
        "no third page"
    );
    let lines = mmap::maps_lines_for(&p).unwrap();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(
        maps_file_range(&lines[0]),
        Some((3 * page as u64, 5 * page as u64)),
        "{}",
        lines[0]
    );
    assert_eq!(
        lines[0].split_whitespace().nth(2),
        Some(format!("{:08x}", 3 * page).as_str())
    );
    drop(m);
    assert!(
        mmap::maps_lines_for(&p).unwrap().is_empty(),
        "munmap removed it"
    );
    // SAFETY: a plain mmap call with a null hint; it fails (checked), so nothing is mapped
    // and nothing is dereferenced. The descriptor is open.
    let rc = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            100,
        )
    };
    let errno = std::io::Error::last_os_error().raw_os_error();
    assert_eq!(
        (rc, errno),
        (libc::MAP_FAILED, Some(libc::EINVAL)),
        "offset 100"
    );
    drop(f);
    owned.remove().unwrap();
    dir.finish();
}

/// F2: large data through a file: the data outlives the process that wrote it.
#[test]
fn claim_f2_bulk_data_outlives_the_writer() {
    let dir = TestDir::new("f2");
    let w = dir
        .spawn(WRITER, &["--bulk", "--file-size", "16M"], None)
        .finish();
    w.assert_ok("writer");
    assert_eq!(
        std::fs::metadata(dir.file()).unwrap().len(),
        4096 + (16 << 20)
    );
    let r = dir.spawn(READER, &["--bulk", "--json"], None).finish();
    r.assert_ok("reader");
    assert!(r.stderr.contains("which has exited"), "{}", r.stderr);
    assert!(r.any_report().verified);
    dir.finish();
}

/// F3: measured, not asserted: the reader prints map and read() throughputs side by side.
#[test]
fn claim_f3_map_and_read_are_both_measured() {
    let dir = TestDir::new("f3");
    dir.spawn(WRITER, &["--bulk", "--file-size", "8M"], None)
        .finish()
        .assert_ok("writer");
    let r = dir
        .spawn(READER, &["--bulk", "--compare-read", "--json"], None)
        .finish();
    r.assert_ok("reader");
    let rr = r.any_report();
    let figures = rr
        .notes
        .iter()
        .find(|n| n.starts_with("read_bytes_per_s="))
        .unwrap_or_else(|| panic!("{:?}", rr.notes));
    let nums: Vec<f64> = figures
        .split_whitespace()
        .map(|kv| kv.split_once('=').unwrap().1.parse().unwrap())
        .collect();
    assert!(nums.iter().all(|&v| v > 0.0), "{figures}");
    println!("F3 on this machine: {figures}");
    dir.finish();
}

/// F4: the running program's own code is a mapping of its executable file.
#[test]
fn claim_f4_this_test_binary_is_mapped_from_its_file() {
    let exe = std::env::current_exe().unwrap();
    let lines = mmap::maps_lines_for(&exe).unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.split_whitespace().nth(1) == Some("r-xp")),
        "no r-xp mapping of {}: {lines:?}",
        exe.display()
    );
}

/// F5: another process sees stores through the page cache at once, with no msync; msync
/// only concerns the copy on the disk, and `--sync` reports what it costs.
#[test]
fn claim_f5_a_second_process_sees_stores_without_msync() {
    let dir = TestDir::new("f5");
    // Without --sync: the reader verifies every block right after the writer exits.
    dir.spawn(WRITER, &["--bulk", "--file-size", "8M"], None)
        .finish()
        .assert_ok("writer");
    dir.spawn(READER, &["--bulk"], None)
        .finish()
        .assert_ok("reader");
    // With --sync: the writer reports the msync it made.
    let w = dir
        .spawn(
            WRITER,
            &["--bulk", "--file-size", "8M", "--sync", "--json"],
            None,
        )
        .finish();
    w.assert_ok("writer --sync");
    let notes = w.any_report().notes;
    assert!(notes.iter().any(|n| n.starts_with("msync(MS_SYNC) of")));
    // Where the kernel counts dirty pages of a file on a disk: none left after the msync.
    if no_disk_copy_here(&dir).is_none() {
        let after = notes
            .iter()
            .find(|n| n.starts_with("cachestat after msync: "))
            .unwrap_or_else(|| panic!("{notes:?}"));
        assert!(after.contains(", 0 dirty"), "{after}");
    }
    dir.spawn(READER, &["--bulk"], None)
        .finish()
        .assert_ok("reader");
    dir.finish();
}

/// `cachestat` of ring 0's data area (where the writer's frames go) of a ring file.
fn ring0(file: &File) -> CacheStat {
    let off = offsets::data(0, DEFAULT_CAPACITY) as u64;
    cachestat(file, off, DEFAULT_CAPACITY as u64).expect("cachestat")
}

/// `msync(MS_SYNC)` of the ring file from the test's own map of it: it returns once the
/// dirty pages of the file's range are written; they stay in the cache, clean. (The map
/// must be of a file opened for writing: the kernel drops VM_SHARED from a map of a
/// read-only descriptor, and msync then writes nothing.)
fn msync_from_a_third_process(dir: &TestDir) {
    let rw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.file())
        .unwrap();
    let m = mmap::Map::create(&rw, &dir.file(), region_len(DEFAULT_CAPACITY), false).unwrap();
    m.sync().unwrap();
}

/// Why F5's kernel figures cannot be taken here, if they cannot: no `cachestat` (Linux
/// before 6.5), or a file system with no disk behind it (tmpfs: nothing is ever dirty).
fn no_disk_copy_here(dir: &TestDir) -> Option<String> {
    let probe = dir.path.join("probe");
    let f = File::create(&probe).unwrap();
    let why = if cachestat(&f, 0, 0).is_none() {
        Some("cachestat(2) is not available (Linux 6.5 or later is needed)".to_string())
    } else {
        let kind = mmap::fs_kind(&f);
        (kind == "tmpfs").then(|| {
            format!(
                "{} is on tmpfs: there is no disk copy to lag",
                dir.path.display()
            )
        })
    };
    drop(f);
    std::fs::remove_file(&probe).unwrap();
    why
}

/// A text-mode pair with both programs running: the writer created the file, the reader
/// attached. Returns (writer, its stdin, reader, the ring file opened read-only).
fn live_text_pair(
    dir: &TestDir,
    writer_args: &[&str],
) -> (Proc, std::process::ChildStdin, Proc, File) {
    let (mut w, stdin) = dir.spawn_typing(WRITER, writer_args);
    w.wait_for("waiting for a reader to open it");
    let mut r = dir.spawn(READER, &[], None);
    r.wait_for("and attached");
    w.wait_for("opened the file and attached");
    // The writer's first frame, its Hello, has come and been taken.
    r.wait_for("the writer's Hello");
    let file = File::open(dir.file()).unwrap();
    (w, stdin, r, file)
}

/// Types `line` into the writer and waits until the reader has printed it.
fn send_line(stdin: &mut std::process::ChildStdin, r: &mut Proc, line: &str) {
    stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
    stdin.flush().unwrap();
    r.wait_for(&format!("): {line}"));
}

/// F5, the reviewer's correction, with both processes alive: each line the writer stores
/// into the map is printed by the reader at once, while the writer still has the file
/// mapped, nobody called msync, and the kernel still counts the page dirty (`cachestat`:
/// newer than the disk copy, not evicted). It came through the page cache, not the disk.
/// Then an msync (here from a third process's map of the file) writes the dirty pages and
/// the count drops to 0 while the pages stay cached; the next store dirties one again.
#[test]
fn claim_f5_a_live_reader_sees_each_store_while_the_page_is_still_dirty() {
    let dir = TestDir::new("f5_live");
    if let Some(why) = no_disk_copy_here(&dir) {
        return skip(&why);
    }
    let (mut w, mut stdin, mut r, file) = live_text_pair(&dir, &[]);
    // The writer's Hello was its first store into ring 0: written back, ring 0 is clean.
    msync_from_a_third_process(&dir);
    assert_eq!(
        ring0(&file).dirty,
        0,
        "nothing but the Hello stored in ring 0 yet"
    );
    // A sync of the whole machine by some other program could clean the page between the
    // store and our look; a new line dirties it again, so one of a few tries must show it.
    let mut seen_dirty = None;
    for i in 0..5 {
        let line = format!("store {i}");
        send_line(&mut stdin, &mut r, &line);
        let c = ring0(&file);
        assert!(w.child.try_wait().unwrap().is_none() && r.child.try_wait().unwrap().is_none());
        let mut page = vec![0u8; 4096];
        file.read_exact_at(&mut page, offsets::data(0, DEFAULT_CAPACITY) as u64)
            .unwrap();
        let text = String::from_utf8_lossy(&page);
        assert!(text.contains(&line), "read() sees the same page-cache page");
        if c.dirty >= 1 {
            seen_dirty = Some(c);
            break;
        }
    }
    let c = seen_dirty.expect("the reader printed each line, but no page was ever dirty");
    assert!(c.cached >= c.dirty, "{c:?}: in the page cache, not evicted");
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", w.pid())).unwrap();
    let name = std::fs::canonicalize(dir.file()).unwrap();
    assert!(
        maps.contains(name.to_str().unwrap()),
        "the writer still has the file mapped"
    );
    // What msync changes: the copy on the disk.
    msync_from_a_third_process(&dir);
    let after = ring0(&file);
    assert_eq!(after.dirty, 0, "msync wrote the dirty pages: {after:?}");
    assert!(after.cached >= 1, "and left them cached: {after:?}");
    send_line(&mut stdin, &mut r, "after msync");
    assert!(
        ring0(&file).dirty >= 1,
        "a new store dirties the page again"
    );
    drop(stdin);
    w.finish().assert_ok("writer");
    r.finish().assert_ok("reader");
    dir.finish();
}

/// F5, `mmap-writer --sync`: the writer's own `msync(MS_SYNC)` after each publish leaves
/// no dirty page in ring 0 (within a generous deadline: the reader may print a line before
/// the writer's msync returns). Without msync the page would stay dirty until writeback,
/// 30 s by default (the test above).
#[test]
fn claim_f5_writer_sync_writes_each_message_to_the_disk_copy() {
    let dir = TestDir::new("f5_sync");
    if let Some(why) = no_disk_copy_here(&dir) {
        return skip(&why);
    }
    let (w, mut stdin, mut r, file) = live_text_pair(&dir, &["--sync"]);
    for i in 0..3 {
        send_line(&mut stdin, &mut r, &format!("synced {i}"));
        let t = Instant::now();
        while ring0(&file).dirty != 0 {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "still dirty: {:?}",
                ring0(&file)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(ring0(&file).cached >= 1);
    }
    drop(stdin);
    w.finish().assert_ok("writer --sync");
    r.finish().assert_ok("reader");
    dir.finish();
}

/// F6: a 64-bit process maps far more than 4 GiB: a sparse 5 GiB file, touched at its end.
#[test]
fn claim_f6_a_64_bit_process_maps_more_than_4_gib() {
    if usize::BITS < 64 {
        return skip("a 32-bit build cannot map 5 GiB, which is the claim");
    }
    let dir = TestDir::new("f6");
    let p = dir.path.join("big.map");
    let len: u64 = 5 << 30;
    let (f, owned) = mmap::rendezvous::create_file(&p, len).unwrap();
    let refused = match mmap::Map::open(&f, &p, len as usize, false) {
        Ok(m) => {
            let mut last = [1u8; 8];
            // A hole in a sparse file reads as zeros; no disk space is used.
            m.read_bytes(len as usize - 8, &mut last).unwrap();
            assert_eq!(last, [0; 8]);
            // 5 GiB of this process's addresses in one map: more than IA-32 has at all.
            let lines = mmap::maps_lines_for(&p).unwrap();
            let ranges: Vec<_> = lines.iter().filter_map(|l| maps_file_range(l)).collect();
            assert_eq!(ranges, [(0, len)], "{lines:?}");
            None
        }
        Err(e) => Some(format!("{e:#}")),
    };
    drop(f);
    owned.remove().unwrap();
    dir.finish();
    if let Some(e) = refused {
        skip(&format!(
            "mmap of 5 GiB refused here ({e}); is ulimit -v set?"
        ));
    }
}

/// F7: ftruncate succeeds on a mapped file; touching the map past the new end is SIGBUS.
#[test]
fn claim_f7_ftruncate_succeeds_while_mapped_and_access_past_the_end_is_sigbus() {
    let dir = TestDir::new("f7");
    let d = dir.spawn(WRITER, &["--demo-truncate"], None).finish();
    d.assert_ok("demo");
    assert!(
        d.stdout.contains("ftruncate on the mapped file: succeeded"),
        "{}",
        d.stdout
    );
    assert!(d.stdout.contains("killed by SIGBUS"), "{}", d.stdout);
    assert!(
        d.stderr.contains("*** SIGBUS"),
        "the handler explains it: {}",
        d.stderr
    );
    dir.finish();
}

/// F7 in a live pair: truncating the ring file under a running writer kills it with SIGBUS
/// (explained on stderr); the reader notices the dead writer and exits non-zero.
#[test]
fn claim_f7_truncating_a_live_ring_file_kills_with_sigbus() {
    let dir = TestDir::new("f7_live");
    let args = [
        "--mode",
        "stream",
        "--count",
        "1000000000",
        "--size",
        "4K",
        "--wait",
        "block",
        "--timeout",
        "20",
    ];
    let r = dir.spawn(READER, &args, None);
    dir.wait_for(&dir.file());
    let w = dir.spawn(WRITER, &args, None);
    std::thread::sleep(Duration::from_millis(400));
    // Keep only the header page: the data areas are now past the end of the file.
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.file())
        .unwrap()
        .set_len(4096)
        .unwrap();
    let w = w.wait_within(Duration::from_secs(10));
    let r = r.wait_within(Duration::from_secs(10));
    assert!(!w.ok() && !r.ok(), "both end in failure");
    // Whoever touched a data page first died of SIGBUS (usually the writer; the reader too
    // if it was copying a frame out); the other noticed its peer was gone.
    let sigbus = [&w, &r]
        .iter()
        .filter(|d| d.status.signal() == Some(libc::SIGBUS))
        .map(|d| d.stderr.contains("*** SIGBUS"))
        .collect::<Vec<_>>();
    assert!(
        !sigbus.is_empty(),
        "nobody died of SIGBUS: {:?} {:?}\n{}\n{}",
        w.status,
        r.status,
        w.stderr,
        r.stderr
    );
    assert!(
        sigbus.iter().all(|&explained| explained),
        "the handler explains it"
    );
    // The one that died of SIGBUS removed the file (it owned it); the survivor, if any,
    // removed it too: nothing is left.
    dir.finish();
}

/// F7 before mapping: a file of the wrong length is refused with an explanation.
#[test]
fn claim_f7_a_short_file_is_refused_before_mapping() {
    let dir = TestDir::new("f7_short");
    let w = dir.spawn(
        WRITER,
        &["--mode", "stream", "--count", "10", "--timeout", "3"],
        None,
    );
    dir.wait_for(&dir.file());
    std::thread::sleep(Duration::from_millis(100));
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.file())
        .unwrap()
        .set_len(8192)
        .unwrap();
    let r = dir
        .spawn(READER, &["--mode", "stream", "--timeout", "3"], None)
        .finish();
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("SIGBUS (F7)"), "{}", r.stderr);
    assert!(!w.finish().ok());
    dir.finish();
}

/// F7 after the fact: a ring file cut short whose processes are dead (killed by SIGKILL:
/// one killed by SIGBUS removes the file as it dies) is not refused by the next reader: its
/// header still names a creator pid that is gone, so it is judged stale, unlinked and
/// created anew at the right length, and the next pair works. (A short file whose creator
/// still runs is refused instead: the test above.)
#[test]
fn claim_f7_a_cut_ring_file_of_dead_processes_is_replaced_not_refused() {
    let dir = TestDir::new("f7_replaced");
    let mut w = dir.spawn(WRITER, &["--mode", "stream", "--count", "10"], None);
    w.wait_for("waiting for a reader to open it");
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.file())
        .unwrap()
        .set_len(4096)
        .unwrap();
    let killed = w.kill9();
    assert_eq!(killed.status.signal(), Some(libc::SIGKILL));
    assert_eq!(
        std::fs::metadata(dir.file()).unwrap().len(),
        4096,
        "left behind, cut short"
    );
    let mut r = dir.spawn(READER, &["--mode", "stream", "--count", "10"], None);
    r.wait_for("waiting for a writer to open it");
    let len = std::fs::metadata(dir.file()).unwrap().len();
    assert_eq!(
        len,
        region_len(DEFAULT_CAPACITY) as u64,
        "a new file, full length"
    );
    let w = dir
        .spawn(WRITER, &["--mode", "stream", "--count", "10"], None)
        .finish();
    w.assert_ok("the next writer");
    let r = r.finish();
    r.assert_ok("the next reader");
    assert!(
        r.stderr.contains("is stale: its creator (pid")
            && r.stderr.contains("removing it and creating a new one"),
        "{}",
        r.stderr
    );
    dir.finish();
}
