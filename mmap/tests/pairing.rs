//! Process tests of how the two ring programs agree (issue 10): the reader follows the
//! writer's Hello, a reader flag that contradicts it is refused naming both values, a
//! second reader or writer is refused naming the one already there, a full ring is
//! narrated as it happens, and each program's `--help` lists only its own flags with the
//! real defaults. Every test has its own `--name` and runtime directory and checks that
//! nothing is left in it. No test asserts a timing.

mod util;

use std::io::Write;
use std::process::ChildStdin;

use nix::sys::signal::Signal;
use util::{Done, DoneExt, Proc, TestDir, READER, WRITER};

/// Runs a pair to the end, the writer first; returns (writer, reader).
fn pair(dir: &TestDir, wargs: &[&str], rargs: &[&str]) -> (Done, Done) {
    let w = dir.spawn(WRITER, wargs, None);
    dir.wait_for(&dir.file());
    let r = dir.spawn(READER, rargs, None);
    (w.finish(), r.finish())
}

/// The reader verified, and the writer only where it checked something (Pongs).
fn assert_verified(w: &Done, r: &Done) {
    w.assert_ok("writer");
    r.assert_ok("reader");
    let (wr, rr) = (w.any_report(), r.any_report());
    assert!(rr.verified && rr.verified_by == "reader", "{rr:?}");
    assert_eq!(wr.verified, wr.mode == "pingpong", "{wr:?}");
}

/// A text pair kept open: the writer (the creator) types what the test writes.
fn live_text_pair(dir: &TestDir, args: &[&str]) -> (Proc, ChildStdin, Proc) {
    let mut args = args.to_vec();
    args.extend_from_slice(&["--json", "--timeout", "20"]);
    let (mut w, stdin) = dir.spawn_typing(WRITER, &args);
    w.wait_for("waiting for a reader to open it");
    let mut r = dir.spawn(READER, &args, None);
    r.wait_for("the writer's Hello");
    w.wait_for("type a line");
    (w, stdin, r)
}

/// The one line of `d.stderr` that contains `needle`.
fn line_with<'a>(d: &'a Done, needle: &str) -> &'a str {
    d.stderr
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{}", d.stderr))
}

#[test]
fn a_reader_without_flags_follows_a_stream_writer() {
    let dir = TestDir::new("follow_stream");
    let rargs = ["--json", "--capacity", "64K", "--timeout", "20"];
    let mut wargs = rargs.to_vec();
    wargs.extend_from_slice(&["--mode", "stream", "--count", "2000", "--size", "1000"]);
    let (w, r) = pair(&dir, &wargs, &rargs);
    assert_verified(&w, &r);
    let rr = r.any_report();
    assert_eq!(rr.mode, "stream");
    assert_eq!((rr.count, rr.bytes, rr.warmup), (2000, 2000 * 1000, 200));
    assert!(
        r.stderr.contains("the writer's Hello: mmap-writer")
            && r.stderr
                .contains("runs --mode stream --size 1000 --count 2000 --warmup 200")
            && r.stderr.contains("capacity 65536 B")
            && r.stderr.contains("this reader follows it"),
        "{}",
        r.stderr
    );
    dir.finish();
}

#[test]
fn a_reader_without_flags_follows_a_pingpong_writer() {
    let dir = TestDir::new("follow_pingpong");
    let rargs = ["--json", "--timeout", "20"];
    let mut wargs = rargs.to_vec();
    wargs.extend_from_slice(&["--mode", "pingpong", "--count", "300", "--size", "100"]);
    let (w, r) = pair(&dir, &wargs, &rargs);
    assert_verified(&w, &r);
    let (wr, rr) = (w.any_report(), r.any_report());
    assert_eq!((wr.count, wr.latency_kind.as_str()), (300, "round_trip"));
    assert_eq!((rr.mode.as_str(), rr.count), ("pingpong", 300));
    dir.finish();
}

/// A text reader started without flags shows its maps (F1, F4) once the Hello said text.
#[test]
fn a_reader_without_flags_follows_a_text_writer() {
    let dir = TestDir::new("follow_text");
    let w = dir.spawn(WRITER, &["--timeout", "20"], Some(b"hello\n"));
    dir.wait_for(&dir.file());
    let r = dir
        .spawn(READER, &["--json", "--timeout", "20"], None)
        .finish();
    w.finish().assert_ok("writer");
    r.assert_ok("reader");
    assert!(r.stdout.contains(": hello"), "{}", r.stdout);
    assert!(r.stderr.contains("runs --mode text"), "{}", r.stderr);
    assert!(r.stderr.contains("/proc/self/maps: "), "{}", r.stderr);
    assert_eq!(r.any_report().mode, "text");
    dir.finish();
}

/// A reader given its own `--wait` runs it: each side of a ring waits its own way.
#[test]
fn a_reader_with_its_own_wait_runs_it_and_says_so() {
    let dir = TestDir::new("own_wait");
    let wargs = [
        "--json", "--mode", "stream", "--count", "500", "--wait", "spin",
    ];
    let (w, r) = pair(&dir, &wargs, &["--json", "--wait", "block"]);
    assert_verified(&w, &r);
    assert_eq!(w.any_report().wait, "spin");
    assert_eq!(r.any_report().wait, "block");
    assert!(
        r.stderr
            .contains("this reader waits block (--wait), the writer spin"),
        "{}",
        r.stderr
    );
    dir.finish();
}

/// A mismatch: the reader exits 1 naming both values and the fix, the writer exits 1
/// saying the reader left right after its Hello, and nothing is left.
fn refused(test: &str, wargs: &[&str], rargs: &[&str], says: &[&str]) {
    let dir = TestDir::new(test);
    let (w, r) = pair(&dir, wargs, rargs);
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    let error = line_with(&r, "error: ");
    for part in says {
        assert!(error.contains(part), "{part:?} not in: {error}");
    }
    assert_eq!(w.status.code(), Some(1), "{}", w.stderr);
    assert!(
        line_with(&w, "error: ").contains("is gone right after this writer's Hello"),
        "{}",
        w.stderr
    );
    dir.finish();
}

#[test]
fn a_reader_with_another_mode_is_refused_naming_both() {
    refused(
        "mismatch_mode",
        &["--mode", "stream", "--timeout", "20"],
        &["--mode", "pingpong", "--timeout", "20"],
        &[
            "runs --mode stream --size 64",
            "started with --mode pingpong",
            "restart the reader without --mode, or with --mode stream",
        ],
    );
}

#[test]
fn a_reader_with_another_size_is_refused_naming_both() {
    refused(
        "mismatch_size",
        &["--mode", "stream", "--size", "4096", "--timeout", "20"],
        &["--size", "16", "--timeout", "20"],
        &[
            "runs --mode stream --size 4096",
            "started with --size 16",
            "restart the reader without --size, or with --size 4096",
        ],
    );
}

/// A second program of a role already in a pair is refused with that one's pid; the
/// pair goes on to the end, verified, and the refused one leaves the file alone.
fn second_is_refused(role: &str) {
    let dir = TestDir::new(&format!("second_{role}"));
    let (w, mut typing, mut r) = live_text_pair(&dir, &[]);
    typing.write_all(b"before\n").unwrap();
    r.wait_for("): before");
    let (second, first_pid, how) = if role == "reader" {
        let d = dir.spawn(READER, &["--timeout", "5"], None).finish();
        (d, r.pid(), "a reader attached to it, mmap-reader")
    } else {
        let d = dir.spawn(WRITER, &["--timeout", "5"], None).finish();
        (d, w.pid(), "it was created by a writer, mmap-writer")
    };
    assert_eq!(second.status.code(), Some(1), "{}", second.stderr);
    let error = line_with(&second, "error: ");
    assert!(
        error.contains(&format!("already has a {role}: {how} (pid {first_pid})"))
            && error.contains("stop that one, or use another --name/--path"),
        "{error}"
    );
    assert!(
        dir.file().exists(),
        "the refused {role} left the file alone"
    );
    typing.write_all(b"after\n").unwrap();
    drop(typing);
    let (w, r) = (w.finish(), r.finish());
    assert_verified(&w, &r);
    assert_eq!(r.any_report().count, 2);
    dir.finish();
}

#[test]
fn a_second_reader_is_refused_with_the_first_ones_pid() {
    second_is_refused("reader");
}

#[test]
fn a_second_writer_is_refused_with_the_first_ones_pid() {
    second_is_refused("writer");
}

/// P6's analogue for a ring: a stopped reader leaves ring 0 full; the writer says so
/// half a second into the wait and again when the reader goes on, and the pair ends
/// verified with every line.
#[test]
fn a_stopped_reader_is_narrated_as_a_full_ring() {
    let dir = TestDir::new("full");
    let (mut w, mut typing, r) = live_text_pair(&dir, &["--capacity", "4K"]);
    r.signal(Signal::SIGSTOP);
    // 100 lines of 100 bytes: a 4 KiB ring holds about 20 of them.
    let line = format!("{}\n", "x".repeat(100));
    typing.write_all(line.repeat(100).as_bytes()).unwrap();
    w.wait_for("reserve() has been blocked for");
    r.signal(Signal::SIGCONT);
    w.wait_for("reserve() blocked for");
    drop(typing);
    let (w, r) = (w.finish(), r.finish());
    assert_verified(&w, &r);
    assert_eq!(r.any_report().count, 100);
    assert!(
        line_with(&w, "has been blocked for")
            .contains("the ring is full (P6's analogue for a ring"),
        "{}",
        w.stderr
    );
    assert!(
        w.any_report()
            .notes
            .iter()
            .any(|n| n.starts_with("reserve() waited")),
        "{:?}",
        w.any_report().notes
    );
    dir.finish();
}

/// The flags a program's `--help` lists, in order, and the help itself.
fn help_of(dir: &TestDir, exe: &str) -> (Vec<String>, String) {
    let out = dir.spawn_raw(exe, &["--help"]).finish();
    out.assert_ok("--help");
    let flags = out
        .stdout
        .lines()
        // Option lines are indented; the text after the options is not.
        .filter(|l| l.starts_with("  "))
        .filter_map(|l| {
            let t = l
                .trim_start()
                .trim_start_matches("-q, ")
                .trim_start_matches("-h, ");
            let flag = t.strip_prefix("--")?.split([' ', '=']).next()?;
            Some(format!("--{flag}"))
        })
        .collect();
    (flags, out.stdout)
}

#[test]
fn help_lists_only_each_programs_flags_and_the_real_defaults() {
    let dir = TestDir::new("help");
    let shared = [
        "--mode",
        "--count",
        "--size",
        "--warmup",
        "--name",
        "--timeout",
        "--json",
        "--quiet",
        "--path",
        "--capacity",
        "--sync",
        "--populate",
        "--wait",
    ];
    // Only the writer chooses loans (--zero-copy, --verify): the reader follows its Hello.
    let mut writer = shared.to_vec();
    writer.extend_from_slice(&[
        "--zero-copy",
        "--verify",
        "--bulk",
        "--file-size",
        "--demo-truncate",
        "--help",
    ]);
    let mut reader = shared.to_vec();
    reader.extend_from_slice(&[
        "--bulk",
        "--compare-read",
        "--keep",
        "--offset",
        "--length",
        "--help",
    ]);
    let runtime = dir.path.display().to_string();
    for (exe, want) in [(WRITER, writer), (READER, reader)] {
        let (flags, help) = help_of(&dir, exe);
        assert_eq!(flags, want, "{help}");
        assert!(
            help.contains("[default: mmap, with --bulk mmap-bulk]"),
            "{help}"
        );
        assert!(
            help.contains(&format!("i.e. {runtime}/mmap.map]")),
            "{help}"
        );
        assert!(!help.contains("per mechanism"), "{help}");
    }
    let (_, help) = help_of(&dir, READER);
    assert!(
        help.contains("Check that the writer runs this mode [default: follow the writer]"),
        "{help}"
    );
    assert!(
        help.contains("[default: as the writer's Hello says]"),
        "{help}"
    );
    let (_, help) = help_of(&dir, WRITER);
    assert!(
        help.contains("(seq only with --zero-copy;") && help.contains("[default: full]"),
        "{help}"
    );
    // Flags of the ring modes are refused with --bulk, before anything is made.
    let d = dir
        .spawn(WRITER, &["--bulk", "--mode", "stream"], None)
        .finish();
    assert_eq!(d.status.code(), Some(2), "{}", d.stderr);
    assert!(
        d.stderr.contains("'--bulk' cannot be used with '--mode"),
        "{}",
        d.stderr
    );
    dir.finish();
}
