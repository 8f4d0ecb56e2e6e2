//! Bulk mode (F2, F3): a large file written through a map, verified by a later reader.

mod util;

use std::os::unix::fs::FileExt;

use util::{DoneExt, TestDir, READER, WRITER};

#[test]
fn writer_then_reader_later_with_compare_read() {
    let dir = TestDir::new("bulk_later");
    let w = dir
        .spawn(
            WRITER,
            &["--mode", "bulk", "--file-size", "4M", "--json"],
            None,
        )
        .finish();
    w.assert_ok("writer");
    let wr = w.any_report();
    assert_eq!(
        (wr.mode.as_str(), wr.bytes, wr.count),
        ("bulk", 4 << 20, 64)
    );
    // The writer only stores the blocks; the reader is the one that checks them.
    assert!(!wr.verified && wr.verified_by == "reader", "{wr:?}");
    assert!(dir.file().exists(), "the data outlives the writer (F2)");
    let r = dir
        .spawn(READER, &["--bulk", "--compare-read", "--json"], None)
        .finish();
    r.assert_ok("reader");
    let rr = r.any_report();
    assert!(rr.verified && rr.verified_by == "reader");
    assert_eq!(rr.bytes, 4 << 20);
    assert!(
        rr.notes.iter().any(|n| n.starts_with("through the map")),
        "{:?}",
        rr.notes
    );
    assert!(
        rr.notes.iter().any(|n| n.starts_with("with read()")),
        "{:?}",
        rr.notes
    );
    assert!(r.stderr.contains("has exited"), "{}", r.stderr);
    // Neither side spins: the writer waits for no one, the reader sleeps between looks.
    assert_eq!((wr.wait.as_str(), rr.wait.as_str()), ("block", "block"));
    assert_eq!(
        (wr.mechanism.as_str(), rr.flavour.as_str()),
        ("mmap", wr.flavour.as_str())
    );
    dir.finish();
}

#[test]
fn reader_first_waits_for_the_completion_marker() {
    let dir = TestDir::new("bulk_reader_first");
    let r = dir.spawn(READER, &["--mode=bulk", "--json", "--timeout", "30"], None);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let w = dir
        .spawn(WRITER, &["--mode", "bulk", "--file-size", "32M"], None)
        .finish();
    w.assert_ok("writer");
    let r = r.finish();
    r.assert_ok("reader");
    assert!(r.stderr.contains("waiting for"), "{}", r.stderr);
    assert_eq!(r.any_report().bytes, 32 << 20);
    dir.finish();
}

#[test]
fn keep_leaves_the_file_for_another_reader() {
    let dir = TestDir::new("bulk_keep");
    dir.spawn(WRITER, &["--bulk", "--file-size", "1M"], None)
        .finish()
        .assert_ok("writer");
    dir.spawn(READER, &["--bulk", "--keep"], None)
        .finish()
        .assert_ok("reader 1");
    assert!(dir.file().exists());
    dir.spawn(READER, &["--bulk"], None)
        .finish()
        .assert_ok("reader 2");
    dir.finish();
}

#[test]
fn a_corrupted_block_fails_verification_with_its_place() {
    let dir = TestDir::new("bulk_corrupt");
    dir.spawn(WRITER, &["--bulk", "--file-size", "1M"], None)
        .finish()
        .assert_ok("writer");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.file())
        .unwrap();
    // Block 3 starts at 4096 + 3 * 65536; flip a byte 800 bytes in (its complement, so it
    // changes whatever the pattern had there).
    let at = 4096 + 3 * 65536 + 800;
    let mut was = [0u8];
    std::fs::File::open(dir.file())
        .unwrap()
        .read_exact_at(&mut was, at)
        .unwrap();
    f.write_all_at(&[!was[0]], at).unwrap();
    let r = dir.spawn(READER, &["--bulk"], None).finish();
    assert!(!r.ok());
    assert!(r.stderr.contains("block 3"), "{}", r.stderr);
    dir.finish();
}

#[test]
fn a_hostile_header_is_refused_cleanly() {
    let dir = TestDir::new("bulk_hostile");
    dir.spawn(WRITER, &["--bulk", "--file-size", "1M"], None)
        .finish()
        .assert_ok("writer");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.file())
        .unwrap();
    // data_len at offset 24: claim far more data than the file holds.
    f.write_all_at(&(1u64 << 39).to_le_bytes(), 24).unwrap();
    let r = dir.spawn(READER, &["--bulk"], None).finish();
    assert!(!r.ok());
    assert!(
        r.status.code() == Some(1),
        "an error exit, not a signal: {:?}",
        r.status
    );
    assert!(
        r.stderr.contains("SIGBUS (F7)"),
        "length checked before mapping: {}",
        r.stderr
    );
    // The reader took the completed file over, so its error path removed it.
    assert!(!dir.file().exists());
    // A magic that is not ours: the writer refuses to replace what it did not make.
    std::fs::write(dir.file(), b"not a bulk file, somebody's data").unwrap();
    let w = dir
        .spawn(WRITER, &["--bulk", "--file-size", "1M"], None)
        .finish();
    assert!(!w.ok());
    assert!(w.stderr.contains("not ours to replace"), "{}", w.stderr);
    assert!(dir.file().exists());
    std::fs::remove_file(dir.file()).unwrap();
    dir.finish();
}

#[test]
fn writer_killed_midway_leaves_a_stale_file_that_is_detected() {
    let dir = TestDir::new("bulk_killed");
    // 1 GiB on the runtime dir's file system, killed long before it is done.
    let w = dir.spawn(WRITER, &["--bulk", "--file-size", "1G"], None);
    dir.wait_for(&dir.file());
    std::thread::sleep(std::time::Duration::from_millis(300));
    w.kill9();
    // A reader sees the dead writer pid with no completion marker: error, file removed.
    let r = dir
        .spawn(READER, &["--bulk", "--timeout", "10"], None)
        .finish();
    assert!(!r.ok());
    assert!(r.stderr.contains("died before finishing"), "{}", r.stderr);
    // And a writer replaces a stale file with a narrated line.
    let w = dir.spawn(WRITER, &["--bulk", "--file-size", "1G"], None);
    dir.wait_for(&dir.file());
    std::thread::sleep(std::time::Duration::from_millis(100));
    w.kill9();
    let w = dir
        .spawn(WRITER, &["--bulk", "--file-size", "1M"], None)
        .finish();
    w.assert_ok("writer after a killed one");
    assert!(w.stderr.contains("is stale"), "{}", w.stderr);
    dir.spawn(READER, &["--bulk"], None)
        .finish()
        .assert_ok("reader");
    dir.finish();
}

/// A stale bulk file: writer pid `pid` recorded with state 0 (being written), the rest of
/// the header (the start time of the writer that made it) left as that writer wrote it.
fn mark_unfinished_by(path: &std::path::Path, pid: u32) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&0u32.to_le_bytes(), 12).unwrap();
    f.write_all_at(&pid.to_le_bytes(), 16).unwrap();
}

/// An unrelated live process whose start time differs from `recorded` (a reused pid: the
/// same number, another process). Spawned again until the clock tick differs.
fn unrelated_process(recorded: u64) -> std::process::Child {
    for _ in 0..1000 {
        let mut c = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        match common::peer::start_time(c.id() as i32) {
            Some(s) if s != recorded => return c,
            _ => {
                let _ = c.kill();
                let _ = c.wait();
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
    panic!("no process with another start time than {recorded}");
}

/// Liveness by identity in bulk mode: a file left unfinished by a writer that has exited,
/// whose recorded pid now names a live unrelated process (simulated: a `sleep` child's pid
/// written over the writer's, the writer's own start time kept), is stale. The reader
/// removes it at once instead of waiting for a marker that never comes, and a new writer
/// replaces it instead of refusing it as "being filled right now".
#[test]
fn a_reused_writer_pid_does_not_keep_a_stale_bulk_file_alive() {
    let dir = TestDir::new("bulk_reused_pid");
    let made = || {
        dir.spawn(WRITER, &["--bulk", "--file-size", "1M"], None)
            .finish()
            .assert_ok("writer");
        let mut h = [0u8; 56];
        std::fs::File::open(dir.file())
            .unwrap()
            .read_exact_at(&mut h, 0)
            .unwrap();
        u64::from_le_bytes(h[48..56].try_into().unwrap())
    };
    let recorded = made();
    assert_ne!(recorded, 0, "the writer records its start time");
    let mut other = unrelated_process(recorded);
    mark_unfinished_by(&dir.file(), other.id());
    let r = dir
        .spawn(READER, &["--bulk", "--timeout", "20"], None)
        .finish();
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "the writer (pid {}) died before finishing",
            other.id()
        )) && r.stderr.contains("removed it as stale")
            && !r.stderr.contains("timed out"),
        "a live pid with another start time is not the writer:\n{}",
        r.stderr
    );
    assert!(!dir.file().exists());
    // The same for the next writer: it replaces the file instead of refusing it.
    let recorded = made();
    let _ = other.kill();
    let _ = other.wait();
    let mut other = unrelated_process(recorded);
    mark_unfinished_by(&dir.file(), other.id());
    let w = dir
        .spawn(WRITER, &["--bulk", "--file-size", "1M"], None)
        .finish();
    let _ = other.kill();
    let _ = other.wait();
    w.assert_ok("writer after a stale file with a reused pid");
    assert!(w.stderr.contains("is stale: writer pid"), "{}", w.stderr);
    dir.spawn(READER, &["--bulk"], None)
        .finish()
        .assert_ok("reader");
    dir.finish();
}

/// A bulk file of another format version (1: the pid without a start time) is ours by its
/// magic: a writer replaces it; a reader refuses it and leaves it.
#[test]
fn a_bulk_file_of_another_format_version_is_replaced_by_a_writer() {
    let dir = TestDir::new("bulk_version");
    dir.spawn(WRITER, &["--bulk", "--file-size", "1M"], None)
        .finish()
        .assert_ok("writer");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.file())
        .unwrap();
    f.write_all_at(&1u32.to_le_bytes(), 8).unwrap();
    drop(f);
    let r = dir.spawn(READER, &["--bulk"], None).finish();
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("bulk format version 1"), "{}", r.stderr);
    assert!(dir.file().exists(), "refused, not removed");
    let w = dir
        .spawn(WRITER, &["--bulk", "--file-size", "1M"], None)
        .finish();
    w.assert_ok("writer");
    assert!(
        w.stderr.contains("holds a bulk format version 1") && w.stderr.contains("replacing it"),
        "{}",
        w.stderr
    );
    dir.spawn(READER, &["--bulk"], None)
        .finish()
        .assert_ok("reader");
    dir.finish();
}
