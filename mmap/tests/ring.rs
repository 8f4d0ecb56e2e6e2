//! Ring modes between the real binaries: every mode, every wait strategy, both start orders.

mod util;

use util::{DoneExt, TestDir, READER, WRITER};

#[derive(Clone, Copy, PartialEq)]
enum First {
    Writer,
    Reader,
}

/// Runs one pair to the end and checks both reports.
fn pair(test: &str, mode: &str, wait: &str, first: First, count: &str, size: &str) {
    let dir = TestDir::new(test);
    let args = [
        "--mode",
        mode,
        "--wait",
        wait,
        "--count",
        count,
        "--size",
        size,
        "--json",
        "--timeout",
        "20",
    ];
    let (w, r) = if first == First::Writer {
        let w = dir.spawn(WRITER, &args, None);
        dir.wait_for(&dir.file());
        (w, dir.spawn(READER, &args, None))
    } else {
        let r = dir.spawn(READER, &args, None);
        dir.wait_for(&dir.file());
        (dir.spawn(WRITER, &args, None), r)
    };
    let (w, r) = (w.finish(), r.finish());
    w.assert_ok("writer");
    r.assert_ok("reader");
    let (wr, rr) = (w.any_report(), r.any_report());
    // The reader verifies; a writer says "verified" only for what it checked (Pongs).
    assert!(rr.verified && rr.verified_by == "reader");
    match mode {
        "pingpong" => assert!(wr.verified && wr.verified_by == "writer", "{wr:?}"),
        _ => assert!(!wr.verified && wr.verified_by == "reader", "{wr:?}"),
    }
    assert_eq!(rr.mechanism, "mmap");
    assert_eq!(rr.mode, mode);
    assert_eq!(rr.wait, wait);
    assert_eq!(rr.count, count.parse::<u64>().unwrap());
    let created = if first == First::Writer { &wr } else { &rr };
    assert!(
        created.notes.iter().any(|n| n.contains("created here")),
        "{:?}",
        created.notes
    );
    dir.finish();
}

macro_rules! matrix {
    ($($name:ident: $mode:literal, $wait:literal, $first:expr, $count:literal, $size:literal;)*) => {
        $(#[test] fn $name() { pair(stringify!($name), $mode, $wait, $first, $count, $size); })*
    };
}

matrix! {
    stream_spin_writer_first: "stream", "spin", First::Writer, "2000", "1K";
    stream_spin_reader_first: "stream", "spin", First::Reader, "2000", "1K";
    stream_block_writer_first: "stream", "block", First::Writer, "5000", "4K";
    stream_block_reader_first: "stream", "block", First::Reader, "5000", "4K";
    stream_adaptive_writer_first: "stream", "adaptive", First::Writer, "5000", "64K";
    stream_adaptive_reader_first: "stream", "adaptive", First::Reader, "5000", "64K";
    pingpong_spin_writer_first: "pingpong", "spin", First::Writer, "300", "64";
    pingpong_spin_reader_first: "pingpong", "spin", First::Reader, "300", "64";
    pingpong_block_writer_first: "pingpong", "block", First::Writer, "2000", "64";
    pingpong_block_reader_first: "pingpong", "block", First::Reader, "2000", "64";
    pingpong_adaptive_writer_first: "pingpong", "adaptive", First::Writer, "2000", "1K";
    pingpong_adaptive_reader_first: "pingpong", "adaptive", First::Reader, "2000", "1K";
}

fn text(test: &str, first: First) {
    let dir = TestDir::new(test);
    let input = b"hello\nmapped world\n";
    let (w, r) = if first == First::Writer {
        let w = dir.spawn(WRITER, &[], Some(input));
        dir.wait_for(&dir.file());
        (w, dir.spawn(READER, &[], None))
    } else {
        let r = dir.spawn(READER, &[], None);
        dir.wait_for(&dir.file());
        (dir.spawn(WRITER, &[], Some(input)), r)
    };
    let (w, r) = (w.finish(), r.finish());
    w.assert_ok("writer");
    r.assert_ok("reader");
    assert!(r.stdout.contains("#0 (5 B"), "{}", r.stdout);
    assert!(r.stdout.contains(": mapped world"), "{}", r.stdout);
    dir.finish();
}

#[test]
fn text_writer_first() {
    text("text_writer_first", First::Writer);
}

#[test]
fn text_reader_first() {
    text("text_reader_first", First::Reader);
}

/// `--path` puts the file anywhere, e.g. on tmpfs; the report names the file system.
#[test]
fn path_on_tmpfs_and_sync_reports_msync() {
    let dir = TestDir::new("path_tmpfs");
    let shm = std::path::Path::new("/dev/shm");
    let target = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        dir.path.clone()
    };
    let file = target.join(format!("ipc-study-test-mmap-{}.map", std::process::id()));
    let f = file.to_str().unwrap();
    let args = [
        "--mode", "stream", "--count", "300", "--path", f, "--json", "--sync",
    ];
    let w = dir.spawn_raw(WRITER, &args);
    let r = dir.spawn_raw(READER, &args);
    let (w, r) = (w.finish(), r.finish());
    w.assert_ok("writer");
    r.assert_ok("reader");
    let wr = w.any_report();
    if shm.is_dir() {
        assert_eq!(wr.flavour, "tmpfs");
    }
    assert!(
        wr.notes
            .iter()
            .any(|n| n.contains("msync(MS_SYNC) after each publish")),
        "{:?}",
        wr.notes
    );
    assert!(!file.exists(), "the reader removes the file");
    dir.finish();
}

/// Both sides must agree on the capacity; the second one is refused before mapping, and
/// exits 2: its --capacity is a bad flag value against the file (the program's own check).
/// The writer has the default capacity, which the message names.
#[test]
fn capacity_mismatch_is_refused_before_mapping() {
    let dir = TestDir::new("capacity");
    let w = dir.spawn(
        WRITER,
        &["--mode", "stream", "--count", "10", "--timeout", "5"],
        None,
    );
    dir.wait_for(&dir.file());
    let r = dir
        .spawn(
            READER,
            &["--mode", "stream", "--capacity", "64K", "--timeout", "5"],
            None,
        )
        .finish();
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("--capacity {}", common::ring::DEFAULT_CAPACITY))
            && r.stderr.contains("--capacity 65536"),
        "{}",
        r.stderr
    );
    let w = w.finish();
    assert!(!w.ok(), "the writer times out waiting for a reader");
    assert!(w.stderr.contains("timed out"), "{}", w.stderr);
    dir.finish();
}

/// Two writers: the second is refused (the ring has one producer per direction).
#[test]
fn a_second_writer_is_refused() {
    let dir = TestDir::new("two_writers");
    let w1 = dir.spawn(
        WRITER,
        &["--mode", "stream", "--count", "10", "--timeout", "3"],
        None,
    );
    dir.wait_for(&dir.file());
    std::thread::sleep(std::time::Duration::from_millis(100));
    let w2 = dir
        .spawn(
            WRITER,
            &["--mode", "stream", "--count", "10", "--timeout", "3"],
            None,
        )
        .finish();
    assert!(!w2.ok());
    assert!(w2.stderr.contains("created by a writer"), "{}", w2.stderr);
    assert!(!w1.finish().ok());
    dir.finish();
}

/// Bad flag values are refused before any file exists, with exit status 2.
#[test]
fn a_size_larger_than_half_the_ring_is_refused_first() {
    let dir = TestDir::new("size_limit");
    let w = dir
        .spawn(
            WRITER,
            &["--mode", "stream", "--size", "64K", "--capacity", "64K"],
            None,
        )
        .finish();
    assert_eq!(w.status.code(), Some(2), "{}", w.stderr);
    assert!(w.stderr.contains("--capacity"), "{}", w.stderr);
    dir.finish();
}

/// A `--path` that cannot name the file (its directory does not exist, it is a directory,
/// it ends in `..`) is a bad flag value: exit status 2 with the flag named, before any
/// file exists, in every mode (ring, bulk, the F7 demonstration) and on both sides.
#[test]
fn a_bad_path_exits_2_before_anything_is_created() {
    let dir = TestDir::new("bad_path");
    std::fs::create_dir_all(&dir.path).unwrap();
    let missing = dir.path.join("no-such-dir").join("x.map");
    let missing = missing.to_str().unwrap();
    let a_dir = dir.path.to_str().unwrap();
    let dotdot = format!("{a_dir}/..");
    let runs: [(&str, Vec<&str>, &str); 6] = [
        (
            WRITER,
            vec!["--mode", "stream", "--path", missing],
            "does not exist",
        ),
        (
            READER,
            vec!["--mode", "stream", "--path", missing],
            "does not exist",
        ),
        (READER, vec!["--path", a_dir], "is a directory"),
        (
            WRITER,
            vec!["--bulk", "--file-size", "1M", "--path", missing],
            "does not exist",
        ),
        (READER, vec!["--bulk", "--path", &dotdot], "names no file"),
        (
            WRITER,
            vec!["--demo-truncate", "--path", missing],
            "does not exist",
        ),
    ];
    for (exe, args, why) in runs {
        let p = dir.spawn_raw(exe, &args).finish();
        assert_eq!(p.status.code(), Some(2), "{exe} {args:?}: {}", p.stderr);
        assert!(
            p.stderr.contains("error: --path ") && p.stderr.contains(why),
            "{exe} {args:?}: {}",
            p.stderr
        );
        assert!(
            !p.stderr.contains("] created "),
            "nothing created: {}",
            p.stderr
        );
    }
    dir.finish();
}
