//! One test per claim of the note (F1-F7), named after it. No timing assertions: the
//! figures are printed by the programs and measured by the bench crate.

mod util;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use util::{DoneExt, ProcExt, TestDir, READER, WRITER};

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
    assert!(w
        .any_report()
        .notes
        .iter()
        .any(|n| n.starts_with("msync(MS_SYNC) of")));
    dir.spawn(READER, &["--bulk"], None)
        .finish()
        .assert_ok("reader");
    dir.finish();
}

/// F6: a 64-bit process maps far more than 4 GiB: a sparse 5 GiB file, touched at its end.
#[test]
fn claim_f6_a_64_bit_process_maps_more_than_4_gib() {
    if usize::BITS < 64 {
        println!("skipped: a 32-bit build cannot map 5 GiB, which is the claim");
        return;
    }
    let dir = TestDir::new("f6");
    let p = dir.path.join("big.map");
    let len: u64 = 5 << 30;
    let (f, owned) = mmap::rendezvous::create_file(&p, len).unwrap();
    match mmap::Map::open(&f, &p, len as usize, false) {
        Ok(m) => {
            let mut last = [1u8; 8];
            // A hole in a sparse file reads as zeros; no disk space is used.
            m.read_bytes(len as usize - 8, &mut last).unwrap();
            assert_eq!(last, [0; 8]);
        }
        Err(e) => {
            println!("skipped: mmap of 5 GiB refused here ({e:#}); is ulimit -v set?");
        }
    }
    drop(f);
    owned.remove().unwrap();
    dir.finish();
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
    let _ = std::fs::remove_file(dir.file());
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
