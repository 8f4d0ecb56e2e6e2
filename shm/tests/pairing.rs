//! Process tests of how the two programs agree (issue 10): the reader follows the writer's
//! Hello, a reader flag that contradicts it is refused naming both values, a second
//! reader or writer is refused naming the one already there, a peer of the other flavour
//! is pointed out, a full ring is narrated as it happens, and each program's `--help`
//! lists only its own flags. Every test has its own `--name` and checks that nothing is
//! left in /dev/shm, `ipcs -m` or its runtime directory. No test asserts a timing.

mod harness;

use harness::{assert_verified, pair, Done, LivePair, Scene, READER, WRITER};
use nix::sys::signal::Signal;

/// The flags a program's `--help` lists, in order.
fn flags_in_help(exe: &str) -> (Vec<String>, String) {
    let out = std::process::Command::new(exe)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let flags = help
        .lines()
        .filter_map(|l| {
            let t = l
                .trim_start()
                .trim_start_matches("-q, ")
                .trim_start_matches("-h, ");
            let flag = t.strip_prefix("--")?.split([' ', '=']).next()?;
            Some(format!("--{flag}"))
        })
        .collect();
    (flags, help)
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
    for flavour in [&[][..], &["--sysv"][..]] {
        let s = Scene::new(&format!("follow-stream-{}", flavour.len()));
        let mut rargs = vec!["--json", "--capacity", "64K", "--timeout", "20"];
        rargs.extend_from_slice(flavour);
        let mut wargs = rargs.clone();
        wargs.extend_from_slice(&["--mode", "stream", "--count", "2000", "--size", "1000"]);
        let (w, r) = pair(&s, &wargs, &rargs, flavour.is_empty());
        assert_verified(&w, &r);
        let rr = r.any_report();
        assert_eq!(rr.mode, "stream");
        assert_eq!((rr.count, rr.bytes, rr.warmup), (2000, 2000 * 1000, 200));
        assert!(
            r.stderr.contains("the writer's Hello: shm-writer")
                && r.stderr
                    .contains("runs --mode stream --size 1000 --count 2000 --warmup 200")
                && r.stderr.contains("capacity 65536 B")
                && r.stderr.contains("this reader follows it"),
            "{}",
            r.stderr
        );
        s.assert_clean();
    }
}

#[test]
fn a_reader_without_flags_follows_a_pingpong_writer() {
    let s = Scene::new("follow-pingpong");
    let rargs = ["--json", "--timeout", "20"];
    let mut wargs = rargs.to_vec();
    wargs.extend_from_slice(&["--mode", "pingpong", "--count", "300", "--size", "100"]);
    let (w, r) = pair(&s, &wargs, &rargs, true);
    assert_verified(&w, &r);
    let (wr, rr) = (w.any_report(), r.any_report());
    assert_eq!((wr.count, wr.latency_kind.as_str()), (300, "round_trip"));
    assert_eq!((rr.mode.as_str(), rr.count), ("pingpong", 300));
    assert!(r.stderr.contains("this reader follows it"), "{}", r.stderr);
    s.assert_clean();
}

/// A reader given its own `--wait` runs it: each side of a ring waits its own way.
#[test]
fn a_reader_with_its_own_wait_runs_it_and_says_so() {
    let s = Scene::new("own-wait");
    let wargs = [
        "--json", "--mode", "stream", "--count", "500", "--wait", "spin",
    ];
    let (w, r) = pair(&s, &wargs, &["--json", "--wait", "block"], false);
    assert_verified(&w, &r);
    assert_eq!(
        (w.any_report().wait, r.any_report().wait),
        ("spin".into(), "block".into())
    );
    assert!(
        r.stderr
            .contains("this reader waits block (--wait), the writer spin"),
        "{}",
        r.stderr
    );
    s.assert_clean();
}

/// A mismatch: the reader exits 1 naming both values and the fix, the writer exits 1
/// saying the reader left right after its Hello, and nothing is left.
fn refused(s: &Scene, wargs: &[&str], rargs: &[&str], says: &[&str]) {
    let (w, r) = pair(s, wargs, rargs, false);
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
    s.assert_clean();
}

#[test]
fn a_reader_with_another_mode_is_refused_naming_both() {
    let s = Scene::new("mismatch-mode");
    refused(
        &s,
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
    let s = Scene::new("mismatch-size");
    refused(
        &s,
        &[
            "--sysv",
            "--mode",
            "stream",
            "--size",
            "4096",
            "--timeout",
            "20",
        ],
        &["--sysv", "--size", "16", "--timeout", "20"],
        &[
            "runs --mode stream --size 4096",
            "started with --size 16",
            "restart the reader without --size, or with --size 4096",
        ],
    );
}

/// A second program of a role already in a pair is refused with that one's pid; the
/// pair goes on to the end, verified, and the refused one leaves the object alone.
fn second_is_refused(flavour: &[&str], role: &str) {
    let s = Scene::new(&format!("second-{role}"));
    let mut p = LivePair::start(&s, flavour);
    p.send("before", 0);
    let mut args = vec!["--timeout", "5"];
    args.extend_from_slice(flavour);
    let (second, first_pid, how) = if role == "reader" {
        (
            s.reader(&args).finish(),
            p.r.pid(),
            "it was created by a reader, shm-reader",
        )
    } else {
        (
            s.writer(&args).finish(),
            p.w.pid(),
            "a writer attached to it, shm-writer",
        )
    };
    assert_eq!(second.status.code(), Some(1), "{}", second.stderr);
    let error = line_with(&second, "error: ");
    assert!(
        error.contains(&format!("already has a {role}: {how} (pid {first_pid})"))
            && error.contains("stop that one, or use another --name"),
        "{error}"
    );
    assert!(!second.stderr.contains("removed"), "{}", second.stderr);
    p.send("after", 1);
    let (w, r) = p.finish();
    assert_verified(&w, &r);
    assert_eq!(r.any_report().count, 2);
    s.assert_clean();
}

#[test]
fn a_second_reader_is_refused_with_the_first_ones_pid() {
    second_is_refused(&[], "reader");
}

#[test]
fn a_second_writer_is_refused_with_the_first_ones_pid() {
    second_is_refused(&["--sysv"], "writer");
}

/// Two sides of different flavours both create, wait and time out; each names the other
/// flavour's object under the same name, in its narration and in its final error.
fn the_other_flavour_is_named(writer_sysv: bool) {
    let s = Scene::new(&format!("flavour-{writer_sysv}"));
    let (mut wargs, mut rargs) = (vec!["--timeout", "4"], vec!["--timeout", "1.5"]);
    if writer_sysv {
        wargs.push("--sysv");
    } else {
        rargs.push("--sysv");
    }
    let (w, r) = pair(&s, &wargs, &rargs, false);
    let (sysv, posix) = if writer_sysv { (&w, &r) } else { (&r, &w) };
    let (sysv_peer, posix_peer) = if writer_sysv {
        ("reader", "writer")
    } else {
        ("writer", "reader")
    };
    assert_eq!(posix.status.code(), Some(1), "{}", posix.stderr);
    assert_eq!(sysv.status.code(), Some(1), "{}", sysv.stderr);
    let key = format!("{:#010x}", shm::sysv_key(&s.name));
    let seen_by_posix = format!("a System V segment for --name {} exists (key {key}", s.name);
    let ask_posix = format!("is the {posix_peer} running with --sysv?");
    let seen_by_sysv = format!("a POSIX shared memory object for --name {}", s.name);
    let ask_sysv = format!("is the {sysv_peer} running without --sysv?");
    // The side started second finds the first one's object at once, in its waiting line;
    // the first finds the second's while it waits.
    let (second, second_saw) = if writer_sysv {
        (posix, &seen_by_posix)
    } else {
        (sysv, &seen_by_sysv)
    };
    assert!(
        line_with(second, "waiting up to").contains(second_saw.as_str()),
        "{}",
        second.stderr
    );
    for (d, saw, ask) in [
        (posix, &seen_by_posix, &ask_posix),
        (sysv, &seen_by_sysv, &ask_sysv),
    ] {
        let error = line_with(d, "error: no ");
        assert!(error.contains(ask.as_str()), "{error}");
        assert!(
            error.contains(saw.as_str()) || error.contains(&saw.replace(" exists (", " existed (")),
            "{error}"
        );
    }
    s.assert_clean();
}

#[test]
fn a_posix_reader_and_a_sysv_writer_name_each_other() {
    the_other_flavour_is_named(true);
}

#[test]
fn a_sysv_reader_and_a_posix_writer_name_each_other() {
    the_other_flavour_is_named(false);
}

/// P6's analogue for a ring: a stopped reader leaves ring 0 full; the writer says so
/// half a second into the wait and again when the reader goes on, and the pair ends
/// verified with every line.
#[test]
fn a_stopped_reader_is_narrated_as_a_full_ring() {
    let s = Scene::new("full");
    let mut p = LivePair::start(&s, &["--capacity", "4K"]);
    p.r.signal(Signal::SIGSTOP);
    // 100 lines of 100 bytes: a 4 KiB ring holds about 20 of them.
    let line = format!("{}\n", "x".repeat(100));
    p.w.write_stdin(line.repeat(100).as_bytes());
    p.w.wait_for("reserve() has been blocked for");
    p.r.signal(Signal::SIGCONT);
    p.w.wait_for("reserve() blocked for");
    let (w, r) = p.finish();
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
    s.assert_clean();
}

#[test]
fn help_lists_only_each_programs_flags_and_the_default_name() {
    let all = [
        "--mode",
        "--count",
        "--size",
        "--warmup",
        "--name",
        "--timeout",
        "--json",
        "--quiet",
        "--sysv",
        "--capacity",
        "--wait",
    ];
    // Only the writer chooses loans (--zero-copy, --verify): the reader follows its Hello.
    let mut writer = all.to_vec();
    writer.extend_from_slice(&["--zero-copy", "--verify", "--help"]);
    let mut reader = all.to_vec();
    reader.push("--help");
    for (exe, want) in [(WRITER, writer), (READER, reader)] {
        let (flags, help) = flags_in_help(exe);
        assert_eq!(flags, want, "{help}");
        assert!(help.contains("[default: shm]"), "{help}");
        assert!(!help.contains("per mechanism"), "{help}");
    }
    let (_, help) = flags_in_help(READER);
    assert!(
        help.contains("Check that the writer runs this mode [default: follow the writer]"),
        "{help}"
    );
    assert!(
        help.contains("[default: as the writer's Hello says]"),
        "{help}"
    );
    assert!(
        !help.contains("[default: 100000]"),
        "a reader's --count is a check: {help}"
    );
    let (_, help) = flags_in_help(WRITER);
    assert!(
        help.contains("(seq only with --zero-copy;") && help.contains("[default: full]"),
        "{help}"
    );
}
