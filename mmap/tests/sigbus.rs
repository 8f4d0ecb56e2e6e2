//! SIGBUS explained on every mapping (ring and bulk, writer and reader): the dying side
//! names the file, says how it was lost (cut under the map, or no room on the file
//! system) and removes it if it owns it; the survivor says what it finds of the file.
//!
//! Who faults is made certain, not left to timing: a side touches a data page only when
//! it moves a frame (text mode: one per typed line), or is stopped (SIGSTOP) while the
//! test cuts the file and continued (SIGCONT) to touch it.

mod util;

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use common::ring::{offsets, region_len, DEFAULT_CAPACITY};
use nix::sys::signal::Signal;
use util::{cut, read_u64, wait_for_quickly, wait_stopped, DoneExt, ProcExt, TestDir};
use util::{READER, WRITER};

const RING_LEN: u64 = region_len(DEFAULT_CAPACITY) as u64;

fn died_of_sigbus(d: &util::Done) -> bool {
    d.status.signal() == Some(libc::SIGBUS)
}

/// Ring writer: the file is cut to its header page; the next line typed makes the writer
/// store into a data page that is gone. It dies of SIGBUS saying which file, that it was
/// cut (its length now and when mapped), and that it removed it; the reader notices the
/// dead writer and says the file was cut and is removed.
///
/// A waiting reader polls the stamp of its next record, in a data page, each time it
/// wakes, and checks its peer once per sleep slice: so it is stopped while asleep, kept
/// stopped through the cut and the writer's death and past its slice, and continued.
/// Its next act is then the peer check, never a poll of the lost page (which, before this
/// ordering, a reader slowed by a loaded machine sometimes made first, dying of SIGBUS).
#[test]
fn ring_writer_killed_by_sigbus_names_the_file_and_the_reader_says_it_was_cut() {
    let dir = TestDir::new("sigbus_ring_writer");
    let (mut w, mut typing) = dir.spawn_typing(WRITER, &[]);
    w.wait_for("waiting for a reader to open it");
    let mut r = dir.spawn(READER, &[], None);
    w.wait_for("opened the file and attached");
    r.wait_for("both sides wait");
    common::testing::kernel::wait_until_process_blocked_in(
        r.pid(),
        &[libc::SYS_futex],
        "the reader waiting for the writer's first line",
    );
    r.signal(Signal::SIGSTOP);
    wait_stopped(r.pid());
    cut(&dir.file(), 4096);
    typing.write_all(b"into a page that is gone\n").unwrap();
    let w = w.wait_within(Duration::from_secs(10));
    drop(typing);
    std::thread::sleep(common::ring::SLEEP_SLICE + Duration::from_millis(50));
    r.signal(Signal::SIGCONT);
    let r = r.wait_within(Duration::from_secs(10));
    let file = dir.file().display().to_string();
    assert!(died_of_sigbus(&w), "{:?}\n{}", w.status, w.stderr);
    assert!(
        w.stderr.contains("*** SIGBUS")
            && w.stderr.contains(&format!("the ring file {file}"))
            && w.stderr
                .contains(&format!("is 4096 bytes now and was {RING_LEN} when mapped"))
            && w.stderr.contains("Removed it (this process owned it)"),
        "the dying writer explains and cleans up:\n{}",
        w.stderr
    );
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("is gone")
            && r.stderr
                .contains(&format!("{file} is 4096 bytes now and was {RING_LEN}"))
            && r.stderr.contains("the file is removed already"),
        "the surviving reader says what happened to the file:\n{}",
        r.stderr
    );
    dir.finish();
}

/// Ring reader: stopped once it took the writer's Hello, a frame published into a data
/// page, the file cut, the reader continued: its copy out of the lost page is SIGBUS, explained, the file removed. The
/// writer's check before its next line finds the reader gone and the file cut.
#[test]
fn ring_reader_killed_by_sigbus_names_the_file_and_the_writer_says_it_was_cut() {
    let dir = TestDir::new("sigbus_ring_reader");
    let (mut w, mut typing) = dir.spawn_typing(WRITER, &[]);
    w.wait_for("waiting for a reader to open it");
    let mut r = dir.spawn(READER, &[], None);
    r.wait_for("the writer's Hello");
    r.signal(Signal::SIGSTOP);
    wait_stopped(r.pid());
    let hello = read_u64(&dir.file(), offsets::head(0) as u64);
    typing.write_all(b"one line\n").unwrap();
    // Published: the producer index of ring 0 moved past the frame.
    let t = std::time::Instant::now();
    while read_u64(&dir.file(), offsets::head(0) as u64) == hello {
        assert!(t.elapsed() < Duration::from_secs(10), "never published");
        std::thread::sleep(Duration::from_millis(2));
    }
    cut(&dir.file(), 4096);
    r.signal(Signal::SIGCONT);
    let r = r.wait_within(Duration::from_secs(10));
    let file = dir.file().display().to_string();
    assert!(died_of_sigbus(&r), "{:?}\n{}", r.status, r.stderr);
    assert!(
        r.stderr.contains("*** SIGBUS")
            && r.stderr.contains(&format!("the ring file {file}"))
            && r.stderr.contains("it was cut (truncated) under the map")
            && r.stderr.contains("Removed it (this process owned it)"),
        "the dying reader explains and cleans up:\n{}",
        r.stderr
    );
    typing.write_all(b"anyone there?\n").unwrap();
    let w = w.wait_within(Duration::from_secs(10));
    drop(typing);
    assert_eq!(w.status.code(), Some(1), "{}", w.stderr);
    assert!(
        w.stderr.contains("is gone")
            && w.stderr
                .contains(&format!("{file} is 4096 bytes now and was {RING_LEN}"))
            && w.stderr.contains("the file is removed already"),
        "the surviving writer says what happened to the file:\n{}",
        w.stderr
    );
    dir.finish();
}

/// Bulk writer: stopped while filling, the file cut to 0 bytes, continued: its next store
/// is SIGBUS, explained, and the file (its own until complete) removed. A reader waiting
/// for the completion marker stops waiting: the writer it saw is dead and the file gone.
#[test]
fn bulk_writer_killed_by_sigbus_removes_its_file_and_a_waiting_reader_says_so() {
    let dir = TestDir::new("sigbus_bulk_writer");
    let mut r = dir.spawn(READER, &["--bulk", "--timeout", "60"], None);
    let w = dir.spawn(WRITER, &["--bulk", "--file-size", "256M"], None);
    wait_for_quickly(&w, "filling ");
    w.signal(Signal::SIGSTOP);
    wait_stopped(w.pid());
    if read_u64(&dir.file(), 12) as u32 != 0 {
        // The writer finished 256 MiB before SIGSTOP reached it: the scenario could not be
        // set up this time (a fast machine). Let the pair finish, clean, and say so.
        w.signal(Signal::SIGCONT);
        let _ = (
            w.wait_within(Duration::from_secs(20)),
            r.wait_within(Duration::from_secs(60)),
        );
        let _ = std::fs::remove_file(dir.file());
        dir.finish();
        return common::testing::skip("the writer finished before SIGSTOP reached it");
    }
    r.wait_for("is still filling the file");
    cut(&dir.file(), 0);
    w.signal(Signal::SIGCONT);
    let w = w.wait_within(Duration::from_secs(20));
    let r = r.wait_within(Duration::from_secs(20));
    let file = dir.file().display().to_string();
    assert!(died_of_sigbus(&w), "{:?}\n{}", w.status, w.stderr);
    assert!(
        w.stderr.contains(&format!("the bulk file {file}"))
            && w.stderr.contains("The file is 0 bytes now and was")
            && w.stderr.contains("Removed it (this process owned it)"),
        "the dying writer explains and cleans up:\n{}",
        w.stderr
    );
    // Usually the file is gone when the reader next looks; if it looked between the cut
    // and the unlink, it finds it cut short with its writer dead, and removes it itself.
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("{file} is gone, and its writer (pid "))
            || r.stderr.contains("the file was cut short"),
        "the waiting reader stops waiting and says why:\n{}",
        r.stderr
    );
    assert!(r.stderr.contains("died before finishing"), "{}", r.stderr);
    dir.finish();
}

/// Bulk reader: stopped once it has mapped the complete file, the file cut to 0 bytes,
/// continued: its next load is SIGBUS, explained, and the file (its own: no `--keep`)
/// removed.
#[test]
fn bulk_reader_killed_by_sigbus_names_the_file_and_removes_it() {
    let dir = TestDir::new("sigbus_bulk_reader");
    dir.spawn(WRITER, &["--bulk", "--file-size", "512M", "-q"], None)
        .finish()
        .assert_ok("writer");
    let r = dir.spawn(READER, &["--bulk"], None);
    wait_for_quickly(&r, "/proc/self/maps: ");
    r.signal(Signal::SIGSTOP);
    wait_stopped(r.pid());
    if r.stderr_now().contains("through the map (mmap + loads)") {
        // The reader verified 512 MiB before SIGSTOP reached it: the scenario could not be
        // set up this time. Let it finish, clean, and say so.
        r.signal(Signal::SIGCONT);
        let _ = r.wait_within(Duration::from_secs(20));
        let _ = std::fs::remove_file(dir.file());
        dir.finish();
        return common::testing::skip("the reader verified the file before SIGSTOP reached it");
    }
    cut(&dir.file(), 0);
    r.signal(Signal::SIGCONT);
    let r = r.wait_within(Duration::from_secs(20));
    let file = dir.file().display().to_string();
    assert!(died_of_sigbus(&r), "{:?}\n{}", r.status, r.stderr);
    assert!(
        r.stderr.contains(&format!("the bulk file {file}"))
            && r.stderr.contains("it was cut (truncated) under the map")
            && r.stderr.contains("Removed it (this process owned it)"),
        "the dying reader explains and cleans up:\n{}",
        r.stderr
    );
    dir.finish();
}

/// A full file system under a live ring (root: a small tmpfs): both sides passed the room
/// check, the writer's Hello took the first data page, then the test fills the tmpfs; the
/// next line, longer than what is left of that page, makes the writer store into a data
/// page tmpfs cannot supply. The writer dies of SIGBUS saying the file was not cut, so
/// the file system had no room, and removes the file; the reader says the same from the
/// free bytes it finds.
#[test]
fn ring_on_a_tmpfs_that_fills_up_sigbus_is_explained_as_no_room() {
    let dir = TestDir::new("sigbus_full");
    let fs = match util::Tmpfs::mount(&dir, "4m") {
        Ok(fs) => fs,
        Err(why) => return common::testing::skip(&why),
    };
    // A 1 MiB ring (a 2 MiB file) in the 4 MiB tmpfs, whatever the default capacity.
    let ring = ["--capacity", "1M"];
    let (mut w, mut typing) = dir.spawn_typing(WRITER, &ring);
    w.wait_for("waiting for a reader to open it");
    let mut r = dir.spawn(READER, &ring, None);
    w.wait_for("opened the file and attached");
    r.wait_for("the writer's Hello");
    let filler = fs.fill("filler");
    let line = format!("{}\n", "no room for this page ".repeat(250));
    typing.write_all(line.as_bytes()).unwrap();
    let w = w.wait_within(Duration::from_secs(10));
    drop(typing);
    let r = r.wait_within(Duration::from_secs(10));
    std::fs::remove_file(&filler).unwrap();
    let file = dir.file().display().to_string();
    assert!(died_of_sigbus(&w), "{:?}\n{}", w.status, w.stderr);
    assert!(
        w.stderr.contains(&format!("the ring file {file}"))
            && w.stderr
                .contains("so it was not cut: the file system had no room for the page")
            && w.stderr.contains("Removed it (this process owned it)"),
        "{}",
        w.stderr
    );
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("bytes that no page backs yet, and the tmpfs file system mounted at")
            && r.stderr.contains("the file is removed already"),
        "{}",
        r.stderr
    );
    // Checked while mounted; then `fs` is unmounted before `dir` is removed.
    dir.assert_empty();
}
