//! `mmap-writer --zero-copy` (issue 13, item 1): frames built where they lie in the mapped
//! file's ring 0 and read there, Pongs built in place in ring 1, with a plain
//! `mmap-reader` that follows the writer's Hello (its loans and its wait). Stream and
//! pingpong at 64 B, 4 KiB and 64 KiB, spin and block; `--verify seq` and what the reports
//! say about it; the flag refused without `--zero-copy`. Each test checks that nothing is
//! left in its runtime directory. No test asserts a timing.

mod util;

use common::testing::Done;
use util::{DoneExt, TestDir, READER, WRITER};

/// Payload sizes, each with a stream count and a pingpong count that keep a debug build
/// quick.
const SIZES: [(&str, u64, u64, u64); 3] = [
    ("64", 64, 2000, 300),
    ("4K", 4 << 10, 1000, 200),
    ("64K", 64 << 10, 200, 100),
];

/// Runs a pair to the end, the writer or the reader first (whichever creates the file).
fn pair(dir: &TestDir, wargs: &[&str], rargs: &[&str], reader_first: bool) -> (Done, Done) {
    if reader_first {
        let r = dir.spawn(READER, rargs, None);
        dir.wait_for(&dir.file());
        let w = dir.spawn(WRITER, wargs, None);
        (w.finish(), r.finish())
    } else {
        let w = dir.spawn(WRITER, wargs, None);
        dir.wait_for(&dir.file());
        let r = dir.spawn(READER, rargs, None);
        (w.finish(), r.finish())
    }
}

/// A zero-copy pair in `mode` at every size: the writer waits `wait`, the reader is given
/// no mode, size or wait and follows; both verified, both say zero-copy.
fn zero_copy(test: &str, wait: &str, mode: &str) {
    let dir = TestDir::new(test);
    for (i, (size, bytes, stream_n, pingpong_n)) in SIZES.into_iter().enumerate() {
        let count = if mode == "stream" {
            stream_n
        } else {
            pingpong_n
        }
        .to_string();
        let rargs = ["--json", "--timeout", "30"];
        let mut wargs = rargs.to_vec();
        wargs.extend_from_slice(&["--zero-copy", "--mode", mode, "--wait", wait]);
        wargs.extend_from_slice(&["--size", size, "--count", &count]);
        let (w, r) = pair(&dir, &wargs, &rargs, i % 2 == 1);
        w.assert_ok("writer");
        r.assert_ok("reader");
        let (wr, rr) = (w.any_report(), r.any_report());
        assert!(rr.verified && rr.verified_by == "reader", "{size}: {rr:?}");
        assert_eq!(wr.verified, mode == "pingpong", "{size}: {wr:?}");
        for rep in [&wr, &rr] {
            assert!(rep.zero_copy, "{size}: {rep:?}");
            assert_eq!(rep.verify, "full", "{size}");
            assert_eq!(
                rep.wait, wait,
                "{size}: the reader follows the writer's wait"
            );
            assert!(
                rep.notes.iter().any(|n| n.starts_with("zero-copy: ")),
                "{size}: {:?}",
                rep.notes
            );
        }
        assert_eq!((rr.mode.as_str(), rr.size_bytes), (mode, bytes), "{size}");
        assert_eq!(rr.count, count.parse::<u64>().unwrap(), "{size}");
        assert!(
            w.stderr
                .contains("zero-copy: frames are built where they lie in the ring and read there; no payload is copied"),
            "{}",
            w.stderr
        );
        let follows = "this reader follows, reading each one where it lies in ring 0";
        assert!(r.stderr.contains(follows), "{}", r.stderr);
        dir.assert_empty();
    }
    dir.finish();
}

#[test]
fn zero_copy_stream_spin() {
    zero_copy("zc_stream_spin", "spin", "stream");
}

#[test]
fn zero_copy_stream_block() {
    zero_copy("zc_stream_block", "block", "stream");
}

#[test]
fn zero_copy_pingpong_spin() {
    zero_copy("zc_pingpong_spin", "spin", "pingpong");
}

#[test]
fn zero_copy_pingpong_block() {
    zero_copy("zc_pingpong_block", "block", "pingpong");
}

/// With `--sync` the zero-copy writer still calls msync after each publish (F5).
#[test]
fn zero_copy_with_sync_still_msyncs() {
    let dir = TestDir::new("zc_sync");
    let wargs = [
        "--json",
        "--zero-copy",
        "--sync",
        "--mode",
        "stream",
        "--count",
        "50",
    ];
    let (w, r) = pair(&dir, &wargs, &["--json"], false);
    w.assert_ok("writer");
    r.assert_ok("reader");
    let wr = w.any_report();
    assert!(wr.zero_copy, "{wr:?}");
    // The Hello, 50 + 5 warm-up frames and End: each publish is followed by an msync.
    assert!(
        wr.notes
            .iter()
            .any(|n| n.starts_with("msync(MS_SYNC) after each publish (F5): 57 calls")),
        "{:?}",
        wr.notes
    );
    dir.finish();
}

/// `--verify seq`: the reports say "sequence, session and length checked" and never
/// ", verified" (no one read the payloads), and the notes say what was checked.
#[test]
fn verify_seq_reports_say_what_was_checked() {
    let dir = TestDir::new("zc_seq");
    for mode in ["stream", "pingpong"] {
        let wargs = [
            "--zero-copy",
            "--verify",
            "seq",
            "--mode",
            mode,
            "--size",
            "64K",
            "--count",
            "100",
            "--timeout",
            "30",
        ];
        let (w, r) = pair(&dir, &wargs, &["--timeout", "30"], mode == "pingpong");
        w.assert_ok("writer");
        r.assert_ok("reader");
        let checked = "sequence, session and length checked (payloads not read past their sequence number: --verify seq)";
        for (who, d) in [("writer", &w), ("reader", &r)] {
            assert!(!d.stdout.contains(", verified"), "{who}: {}", d.stdout);
            assert!(d.stdout.contains(", zero-copy)"), "{who}: {}", d.stdout);
            assert!(
                d.stdout
                    .contains("note         --verify seq: each timed frame's checksum covers its 40-byte header only"),
                "{who}: {}",
                d.stdout
            );
        }
        assert!(r.stdout.contains(checked), "{}", r.stdout);
        // A stream writer checks nothing itself; a pingpong writer checks each Pong.
        assert_eq!(
            w.stdout.contains(checked),
            mode == "pingpong",
            "{}",
            w.stdout
        );
        dir.assert_empty();
    }
    dir.finish();
}

/// `--verify seq` without `--zero-copy` is a bad flag (exit 2) naming both, before any
/// file exists; `--zero-copy` and `--verify` are ring flags, refused with `--bulk`.
#[test]
fn verify_seq_without_zero_copy_is_refused() {
    let dir = TestDir::new("zc_seq_refused");
    let w = dir
        .spawn(WRITER, &["--verify", "seq", "--mode", "stream"], None)
        .finish();
    assert_eq!(w.status.code(), Some(2), "{}", w.stderr);
    assert!(
        w.stderr.contains("error: --verify seq needs --zero-copy"),
        "{}",
        w.stderr
    );
    assert!(!w.stderr.contains("] created "), "{}", w.stderr);
    let b = dir.spawn(WRITER, &["--bulk", "--zero-copy"], None).finish();
    assert_eq!(b.status.code(), Some(2), "{}", b.stderr);
    assert!(b.stderr.contains("cannot be used with"), "{}", b.stderr);
    dir.finish();
}

/// A reader without `--wait` follows the writer's wait (here spin), and its report says
/// the wait it really ran.
#[test]
fn a_reader_without_wait_follows_a_spin_writer() {
    let dir = TestDir::new("follow_spin");
    let wargs = [
        "--json", "--mode", "pingpong", "--count", "200", "--wait", "spin",
    ];
    let (w, r) = pair(&dir, &wargs, &["--json"], true);
    w.assert_ok("writer");
    r.assert_ok("reader");
    assert_eq!(r.any_report().wait, "spin");
    assert!(
        r.stderr
            .contains("both sides wait spin: this reader follows the writer's Hello"),
        "{}",
        r.stderr
    );
    dir.finish();
}
