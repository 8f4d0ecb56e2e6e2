//! `shm-writer --zero-copy` (issue 13, item 1): frames built where they lie in ring 0 and
//! read there, Pongs built in place in ring 1, with a plain `shm-reader` that follows the
//! writer's Hello (its loans and its wait). Every mode at 64 B, 4 KiB, 64 KiB and 1 MiB,
//! spin and block, both flavours; `--verify seq` and what the reports say about it; the
//! flag refused without `--zero-copy`. Each test checks that nothing is left behind. No
//! test asserts a timing.

mod harness;

use harness::{assert_verified, pair, Scene, WRITER};

/// Payload sizes, each with a stream count and a pingpong count that keep a debug build
/// quick (a 1 MiB frame needs a 4 MiB ring: a frame takes at most half of one).
const SIZES: [(&str, u64, u64, u64); 4] = [
    ("64", 64, 2000, 300),
    ("4K", 4 << 10, 1000, 200),
    ("64K", 64 << 10, 200, 100),
    ("1M", 1 << 20, 20, 10),
];

/// A zero-copy pair in `mode` at every size: the writer waits `wait`, the reader is given
/// no mode, size or wait and follows; both verified, both say zero-copy.
fn zero_copy(flavour: &[&str], wait: &str, mode: &str) {
    let s = Scene::new(&format!("zc-{}-{wait}-{mode}", flavour.len()));
    for (i, (size, bytes, stream_n, pingpong_n)) in SIZES.into_iter().enumerate() {
        let count = if mode == "stream" {
            stream_n
        } else {
            pingpong_n
        }
        .to_string();
        let mut rargs = vec!["--json", "--timeout", "30", "--capacity", "4M"];
        rargs.extend_from_slice(flavour);
        let mut wargs = rargs.clone();
        wargs.extend_from_slice(&["--zero-copy", "--mode", mode, "--wait", wait]);
        wargs.extend_from_slice(&["--size", size, "--count", &count]);
        let (w, r) = pair(&s, &wargs, &rargs, i % 2 == 1);
        assert_verified(&w, &r);
        let (wr, rr) = (w.any_report(), r.any_report());
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
        if mode == "pingpong" {
            assert!(wr.latency_ns.is_some(), "{size}: {wr:?}");
        }
        assert!(
            w.stderr
                .contains("zero-copy: frames are built where they lie in the ring and read there; no payload is copied"),
            "{}",
            w.stderr
        );
        let follows = "this reader follows, reading each one where it lies in ring 0";
        assert!(r.stderr.contains(follows), "{}", r.stderr);
        assert_eq!(
            r.stderr
                .contains("and building each Pong in place in ring 1"),
            mode == "pingpong",
            "{}",
            r.stderr
        );
        s.assert_clean();
    }
}

macro_rules! matrix {
    ($($name:ident: $flavour:expr, $wait:literal, $mode:literal;)*) => {
        $(#[test] fn $name() { zero_copy($flavour, $wait, $mode); })*
    };
}

matrix! {
    posix_stream_spin: &[], "spin", "stream";
    posix_stream_block: &[], "block", "stream";
    posix_pingpong_spin: &[], "spin", "pingpong";
    posix_pingpong_block: &[], "block", "pingpong";
    sysv_stream_spin: &["--sysv"], "spin", "stream";
    sysv_stream_block: &["--sysv"], "block", "stream";
    sysv_pingpong_spin: &["--sysv"], "spin", "pingpong";
    sysv_pingpong_block: &["--sysv"], "block", "pingpong";
}

/// `--verify seq`: the reports say "sequence, session and length checked" and never
/// ", verified" (no one read the payloads), in the reader's stream report and in the
/// pingpong writer's, and the notes say what was and was not checked.
#[test]
fn verify_seq_reports_say_what_was_checked() {
    let s = Scene::new("zc-seq");
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
        let (w, r) = pair(&s, &wargs, &["--timeout", "30"], false);
        assert!(w.ok(), "{}", w.stderr);
        assert!(r.ok(), "{}", r.stderr);
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
        assert!(
            r.stderr.contains("--zero-copy --verify seq"),
            "{}",
            r.stderr
        );
        s.assert_clean();
    }
}

/// `--verify seq` means something only for frames read in place: without `--zero-copy`
/// it is a bad flag (exit 2) naming both, refused before any object exists.
#[test]
fn verify_seq_without_zero_copy_is_refused() {
    let s = Scene::new("zc-seq-refused");
    for flavour in [&[][..], &["--sysv"][..]] {
        let mut args = vec!["--verify", "seq", "--mode", "stream"];
        args.extend_from_slice(flavour);
        let w = s.writer(&args).finish();
        assert_eq!(w.status.code(), Some(2), "{}", w.stderr);
        assert!(
            w.stderr.contains("error: --verify seq needs --zero-copy"),
            "{}",
            w.stderr
        );
        assert!(!w.stderr.contains("created"), "{}", w.stderr);
        s.assert_clean();
    }
    // --verify full is what the copying path does anyway: accepted.
    let (w, r) = pair(
        &s,
        &[
            "--json", "--verify", "full", "--mode", "stream", "--count", "50",
        ],
        &["--json"],
        true,
    );
    assert_verified(&w, &r);
    assert!(!r.any_report().zero_copy);
    s.assert_clean();
}

/// A reader without `--wait` follows the writer's wait (here spin), and its report says
/// the wait it really ran.
#[test]
fn a_reader_without_wait_follows_a_spin_writer() {
    let s = Scene::new("follow-spin");
    let wargs = [
        "--json", "--mode", "pingpong", "--count", "200", "--wait", "spin",
    ];
    let (w, r) = pair(&s, &wargs, &["--json"], true);
    assert_verified(&w, &r);
    assert_eq!(r.any_report().wait, "spin");
    assert!(
        r.stderr
            .contains("both sides wait spin: this reader follows the writer's Hello"),
        "{}",
        r.stderr
    );
    s.assert_clean();
}

/// Text mode with `--zero-copy`: lines are copied in from stdin (they come from there),
/// and the reader reads each one in place.
#[test]
fn zero_copy_text_mode_reads_lines_in_place() {
    let s = Scene::new("zc-text");
    let mut wcmd = s.cmd(WRITER, &["--zero-copy"]);
    wcmd.stdin(std::process::Stdio::piped());
    let mut w = harness::Proc::spawn("shm-writer", &mut wcmd);
    w.write_stdin(b"hello\nin place\n");
    w.wait_for("waiting up to");
    let r = s.reader(&["--json"]);
    let (w, r) = (w.finish(), r.finish());
    assert!(w.ok(), "{}", w.stderr);
    assert!(r.ok(), "{}", r.stderr);
    assert!(r.stdout.contains(": in place"), "{}", r.stdout);
    let rep = r.any_report();
    assert!(rep.verified && rep.zero_copy, "{rep:?}");
    assert_eq!(rep.count, 2);
    assert!(
        w.stderr
            .contains("text mode: each line is copied in from stdin"),
        "{}",
        w.stderr
    );
    s.assert_clean();
}
