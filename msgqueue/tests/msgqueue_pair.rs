//! Process-level tests of msgqueue-writer and msgqueue-reader: every mode in both flavours
//! and both start orders, the claims M1-M6 that a program can show, and the faults (a side
//! killed, a stale queue, the queue removed under a running reader). Each test has its own
//! runtime directory and name, runs every child under the harness deadline and checks
//! that no queue and no file is left behind.

mod harness;

use std::time::Duration;

use harness::{posix_or_skip, Done, Env, FLAVOURS};
use nix::sys::signal::Signal;

/// Runs a pair; `reader_first` decides the start order. Returns (writer, reader).
fn pair(env: &Env, w: &[&str], r: &[&str], reader_first: bool, stdin: &[u8]) -> (Done, Done) {
    if reader_first {
        let mut rd = env.reader(r);
        rd.wait_for("waiting in ");
        let mut wr = env.writer(w);
        wr.write_stdin(stdin);
        let wd = wr.finish();
        (wd, rd.finish())
    } else {
        let mut wr = env.writer(w);
        wr.write_stdin(stdin);
        // The writer runs ahead: in text mode it finishes, in stream mode it fills the
        // queue and blocks (M6), in pingpong it waits for the first reply.
        wr.wait_for("the session starts");
        let rd = env.reader(r);
        (wr.finish(), rd.finish())
    }
}

fn ok(d: &Done, who: &str) {
    assert!(
        d.status.success(),
        "{who} failed ({}):\n{}",
        d.status,
        d.stderr
    );
}

fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    base.iter().chain(extra).copied().collect()
}

#[test]
fn every_mode_both_flavours_both_orders() {
    for (fi, flavour) in FLAVOURS.iter().enumerate() {
        if fi == 1 && !posix_or_skip("every_mode_both_flavours_both_orders (POSIX part)") {
            continue;
        }
        for mode in ["text", "stream", "pingpong"] {
            for reader_first in [true, false] {
                let env = Env::new(&format!("modes-{fi}-{mode}-{reader_first}"));
                let common = ["--mode", mode, "--json"];
                let w = with(
                    &with(&common, flavour),
                    &["--count", "3000", "--size", "8152"],
                );
                let w: Vec<&str> = if mode == "text" {
                    with(&common, flavour)
                } else {
                    w
                };
                let r = with(&common, flavour);
                let (wd, rd) = pair(&env, &w, &r, reader_first, b"alpha\nbeta\n");
                ok(&wd, "writer");
                ok(&rd, "reader");
                let rr = rd.report("reader", false);
                assert!(rr.verified, "{mode} {flavour:?}: {}", rd.stderr);
                if mode == "text" {
                    assert_eq!(rr.count, 2);
                    let tag = if fi == 0 { "[type 1]" } else { "[priority 0]" };
                    assert!(
                        rd.stdout.contains(&format!("{tag} #0 (5 B")),
                        "{}",
                        rd.stdout
                    );
                    assert!(rd.stdout.contains(": beta"), "{}", rd.stdout);
                } else {
                    assert_eq!((rr.count, rr.bytes), (3000, 3000 * 8152));
                    assert_eq!(wd.report("writer", false).count, 3000);
                }
                env.assert_clean(&[&wd.stderr, &rd.stderr]);
            }
        }
    }
}

#[test]
fn claim_m1_messages_outlive_the_writer() {
    let env = Env::new("m1");
    let mut w = env.writer(&[]);
    w.write_stdin(b"kept by the kernel\n");
    let wd = w.finish();
    ok(&wd, "writer");
    // The writer has exited; its queue and message are still there (ipcs -q).
    let key = &harness::keys_in(&wd.stderr)[0];
    let ipcs = String::from_utf8_lossy(
        &std::process::Command::new("ipcs")
            .arg("-q")
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    let line = ipcs
        .lines()
        .find(|l| l.starts_with(key.as_str()))
        .unwrap_or_else(|| panic!("{key} not in\n{ipcs}"));
    assert_eq!(
        line.split_whitespace().nth(5),
        Some("3"),
        "the Hello, the message and End should be queued: {line}"
    );
    assert_eq!(
        line.split_whitespace().nth(3),
        Some("600"),
        "created mode 0600: {line}"
    );
    let rd = env.reader(&[]).finish();
    ok(&rd, "reader");
    assert!(rd.stdout.contains(": kept by the kernel"), "{}", rd.stdout);
    assert!(
        rd.stderr
            .contains("finished its session and exited: the kernel kept them (M1)"),
        "{}",
        rd.stderr
    );
    env.assert_clean(&[&wd.stderr, &rd.stderr]);
}

#[test]
fn claim_m2_each_send_is_one_whole_message() {
    // Lines of different lengths come out as the same messages, never split or joined.
    let env = Env::new("m2");
    let lines = ["a", "bb", "a much longer line than the others", "", "z"];
    let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let (wd, rd) = pair(&env, &[], &["--json"], true, input.as_bytes());
    ok(&wd, "writer");
    ok(&rd, "reader");
    for (i, l) in lines.iter().enumerate() {
        assert!(
            rd.stdout.contains(&format!("#{i} ({} B", l.len())),
            "{i}: {}",
            rd.stdout
        );
    }
    env.assert_clean(&[&wd.stderr, &rd.stderr]);
}

#[test]
fn claim_m3_fifo_order_within_a_type_and_a_priority() {
    for (fi, flavour) in FLAVOURS.iter().enumerate() {
        if fi == 1 && !posix_or_skip("claim_m3 (POSIX part)") {
            continue;
        }
        let env = Env::new(&format!("m3-{fi}"));
        let input: String = (0..8).map(|i| format!("line {i}\n")).collect();
        // Writer first and done: all eight wait in the queue, then come out in the order sent.
        let mut w = env.writer(flavour);
        w.write_stdin(input.as_bytes());
        let wd = w.finish();
        let rd = env.reader(flavour).finish();
        ok(&wd, "writer");
        ok(&rd, "reader");
        let seqs: Vec<_> = rd
            .stdout
            .lines()
            .filter_map(|l| l.split(" #").nth(1))
            .map(|s| s.split(' ').next().unwrap().to_string())
            .collect();
        assert_eq!(
            seqs,
            (0..8).map(|i| i.to_string()).collect::<Vec<_>>(),
            "{}",
            rd.stdout
        );
        env.assert_clean(&[&wd.stderr, &rd.stderr]);
    }
}

/// Lines of types 1, 2, 3, 2, 1 sent before any reader starts.
const TYPED: &[u8] = b"1: one-a\n2: two-a\n3: three\n2: two-b\n1: one-b\n";

fn printed(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|l| l.starts_with('['))
        .map(|l| l.rsplit(": ").next().unwrap().to_string())
        .collect()
}

#[test]
fn claim_m4_a_reader_takes_only_its_type_and_the_rest_stay_queued() {
    let env = Env::new("m4-select");
    let mut w = env.writer(&[]);
    w.write_stdin(TYPED);
    let wd = w.finish();
    ok(&wd, "writer");
    let r2 = env.reader(&["--type", "2"]).finish();
    ok(&r2, "reader --type 2");
    assert_eq!(printed(&r2.stdout), ["two-a", "two-b"], "{}", r2.stdout);
    assert!(r2.stdout.contains("[type 2] #1"), "{}", r2.stdout);
    assert!(
        r2.stderr.contains("remain in the queue (M4)"),
        "{}",
        r2.stderr
    );
    // A second reader finds the others still there, in their order.
    let r0 = env.reader(&[]).finish();
    ok(&r0, "reader --type 0");
    assert_eq!(
        printed(&r0.stdout),
        ["one-a", "three", "one-b"],
        "{}",
        r0.stdout
    );
    env.assert_clean(&[&wd.stderr, &r2.stderr, &r0.stderr]);
}

#[test]
fn claim_m4_a_negative_type_takes_the_lowest_type_first() {
    let env = Env::new("m4-negative");
    let mut w = env.writer(&[]);
    w.write_stdin(TYPED);
    let wd = w.finish();
    ok(&wd, "writer");
    // -2: the lowest type <= 2 first: both type 1, then both type 2; type 3 stays.
    let r = env.reader(&["--type", "-2"]).finish();
    ok(&r, "reader --type -2");
    assert_eq!(
        printed(&r.stdout),
        ["one-a", "one-b", "two-a", "two-b"],
        "{}",
        r.stdout
    );
    let rest = env.reader(&["--type", "-3"]).finish();
    ok(&rest, "reader --type -3");
    assert_eq!(printed(&rest.stdout), ["three"], "{}", rest.stdout);
    env.assert_clean(&[&wd.stderr, &r.stderr, &rest.stderr]);
}

#[test]
fn claim_m4_pingpong_uses_two_types_on_one_queue() {
    let env = Env::new("m4-pingpong");
    let args = ["--mode", "pingpong", "--count", "200", "--json"];
    let (wd, rd) = pair(&env, &args, &["--mode", "pingpong", "--json"], true, b"");
    ok(&wd, "writer");
    ok(&rd, "reader");
    assert!(
        wd.stderr.contains("requests are type 1, replies type 101"),
        "{}",
        wd.stderr
    );
    assert_eq!(wd.report("writer", false).count, 200);
    env.assert_clean(&[&wd.stderr, &rd.stderr]);
}

#[test]
fn claim_m4_posix_has_priorities_highest_first_instead_of_types() {
    if !posix_or_skip("claim_m4_posix_has_priorities_highest_first_instead_of_types") {
        return;
    }
    let env = Env::new("m4-posix");
    let mut w = env.writer(&["--posix"]);
    w.write_stdin(b"0: low\n9: high\n5: middle\n9: high-b\n");
    let wd = w.finish();
    ok(&wd, "writer");
    let rd = env.reader(&["--posix"]).finish();
    ok(&rd, "reader");
    assert_eq!(
        printed(&rd.stdout),
        ["high", "high-b", "middle", "low"],
        "{}",
        rd.stdout
    );
    assert!(rd.stdout.contains("[priority 9] #1"), "{}", rd.stdout);
    // POSIX cannot select: --type is refused, with the reason.
    let e = env.reader(&["--posix", "--type", "2"]).finish();
    assert!(
        !e.status.success() && e.stderr.contains("cannot select"),
        "{}",
        e.stderr
    );
    env.assert_clean(&[&wd.stderr, &rd.stderr]);
}

#[test]
fn claim_m6_limits_are_printed_and_an_oversize_is_refused() {
    for (fi, flavour) in FLAVOURS.iter().enumerate() {
        let env = Env::new(&format!("m6-size-{fi}"));
        let sysctl = if fi == 0 {
            "kernel.msgmax"
        } else {
            "fs.mqueue.msgsize_max"
        };
        let limit: usize = std::fs::read_to_string(if fi == 0 {
            "/proc/sys/kernel/msgmax"
        } else {
            "/proc/sys/fs/mqueue/msgsize_max"
        })
        .unwrap()
        .trim()
        .parse()
        .unwrap();
        let too_big = (limit.min(64 * 1024) - 40 + 1).to_string();
        let d = env
            .writer(&with(flavour, &["--mode", "stream", "--size", &too_big]))
            .finish();
        // A bad flag value: exit 2, like the values clap checks itself.
        assert_eq!(d.status.code(), Some(2), "{}", d.stderr);
        assert!(
            d.stderr.contains(sysctl) && d.stderr.contains("--size"),
            "{}",
            d.stderr
        );
        assert!(
            !d.stderr.contains("msgget") && !d.stderr.contains("mq_open"),
            "refused before any queue exists: {}",
            d.stderr
        );
        // The largest size that fits works, and the start shows the limits.
        let fits = (limit.min(64 * 1024) - 40).to_string();
        if fi == 1 && !posix_or_skip("claim_m6 oversize (POSIX run)") {
            continue;
        }
        let w = with(
            flavour,
            &["--mode", "stream", "--size", &fits, "--count", "50"],
        );
        let r = with(flavour, &["--mode", "stream"]);
        let (wd, rd) = pair(&env, &w, &r, true, b"");
        ok(&wd, "writer");
        ok(&rd, "reader");
        assert!(
            wd.stderr
                .contains(&format!("limit (M6): {sysctl} = {limit}")),
            "{}",
            wd.stderr
        );
        env.assert_clean(&[&wd.stderr, &rd.stderr, &d.stderr]);
    }
}

#[test]
fn claim_m6_a_full_queue_blocks_or_with_nowait_fails_with_eagain() {
    for (fi, flavour) in FLAVOURS.iter().enumerate() {
        if fi == 1 && !posix_or_skip("claim_m6 full queue (POSIX part)") {
            continue;
        }
        let env = Env::new(&format!("m6-full-{fi}"));
        // No reader: --nowait turns the full queue into EAGAIN, and the writer that created
        // the queue removes it.
        let d = env
            .writer(&with(
                flavour,
                &[
                    "--mode", "stream", "--size", "4K", "--count", "100", "--nowait",
                ],
            ))
            .finish();
        assert!(!d.status.success());
        assert!(
            d.stderr.contains("EAGAIN") && d.stderr.contains("--nowait"),
            "{}",
            d.stderr
        );
        env.assert_clean(&[&d.stderr]);
        // Without --nowait the writer says it blocks, and a late reader unblocks it.
        let mut w = env.writer(&with(
            flavour,
            &["--mode", "stream", "--size", "4K", "--count", "100"],
        ));
        w.wait_for("the queue is full");
        let rd = env
            .reader(&with(flavour, &["--mode", "stream", "--json"]))
            .finish();
        let wd = w.finish();
        ok(&wd, "writer");
        ok(&rd, "reader");
        assert!(rd.report("reader", false).verified);
        env.assert_clean(&[&wd.stderr, &rd.stderr]);
    }
}

#[test]
fn a_killed_writer_is_noticed_and_the_queue_removed() {
    for (fi, flavour) in FLAVOURS.iter().enumerate() {
        if fi == 1 && !posix_or_skip("killed writer (POSIX part)") {
            continue;
        }
        let env = Env::new(&format!("kill-writer-{fi}"));
        let mut rd = env.reader(&with(flavour, &["--mode", "pingpong"]));
        rd.wait_for("waiting in ");
        let mut w = env.writer(&with(
            flavour,
            &["--mode", "pingpong", "--count", "1000000000"],
        ));
        w.wait_for("the session starts");
        std::thread::sleep(Duration::from_millis(200));
        w.signal(Signal::SIGKILL);
        let wd = w.finish();
        let rd = rd.finish();
        assert!(!rd.status.success());
        assert!(
            rd.stderr.contains("died without finishing"),
            "{}",
            rd.stderr
        );
        env.assert_clean(&[&wd.stderr, &rd.stderr]);
    }
}

#[test]
fn a_killed_reader_is_noticed_and_the_queue_removed() {
    for (fi, flavour) in FLAVOURS.iter().enumerate() {
        if fi == 1 && !posix_or_skip("killed reader (POSIX part)") {
            continue;
        }
        let env = Env::new(&format!("kill-reader-{fi}"));
        for mode in ["stream", "pingpong"] {
            let mut rd = env.reader(&with(flavour, &["--mode", mode]));
            rd.wait_for("waiting in ");
            let mut w = env.writer(&with(
                flavour,
                &["--mode", mode, "--count", "1000000000", "--size", "4K"],
            ));
            w.wait_for("the session starts");
            std::thread::sleep(Duration::from_millis(200));
            rd.signal(Signal::SIGKILL);
            let rd = rd.finish();
            let wd = w.finish();
            assert!(!wd.status.success());
            assert!(
                wd.stderr.contains("died without finishing"),
                "{mode}: {}",
                wd.stderr
            );
            env.assert_clean(&[&wd.stderr, &rd.stderr]);
        }
    }
}

#[test]
fn a_stale_queue_of_a_killed_run_is_detected_and_its_leftovers_counted() {
    for (fi, flavour) in FLAVOURS.iter().enumerate() {
        if fi == 1 && !posix_or_skip("stale queue (POSIX part)") {
            continue;
        }
        for reader_first in [true, false] {
            let env = Env::new(&format!("stale-{fi}-{reader_first}"));
            // Run A: a writer alone fills the queue (seq 0 included), then is killed.
            let mut a = env.writer(&with(
                flavour,
                &["--mode", "stream", "--size", "1K", "--count", "1000"],
            ));
            a.wait_for("the queue is full");
            a.signal(Signal::SIGKILL);
            let ad = a.finish();
            // Run B finds A's messages, discards and counts them, and runs clean.
            let w = with(flavour, &["--mode", "stream", "--count", "500", "--json"]);
            let r = with(flavour, &["--mode", "stream", "--json"]);
            let (wd, rd) = pair(&env, &w, &r, reader_first, b"");
            ok(&wd, "writer");
            ok(&rd, "reader");
            let (first, rep) = if reader_first {
                (&rd, rd.report("reader", false))
            } else {
                (&wd, wd.report("writer", false))
            };
            assert!(
                first
                    .stderr
                    .contains("killed before it finished: stale; discarded"),
                "{}",
                first.stderr
            );
            assert!(rep.stale_skipped > 0, "{rep:?}");
            let rr = rd.report("reader", false);
            assert!(rr.verified && rr.count == 500, "{rr:?}");
            env.assert_clean(&[&ad.stderr, &wd.stderr, &rd.stderr]);
        }
    }
}

#[test]
fn a_queue_removed_under_a_waiting_reader_is_reported_as_eidrm() {
    let env = Env::new("eidrm");
    let mut rd = env.reader(&["--mode", "stream"]);
    rd.wait_for("waiting in msgrcv");
    // Removed while msgrcv sleeps in it (not just before the call): the kernel says EIDRM.
    harness::wait_in_syscall(rd.pid(), libc::SYS_msgrcv);
    let err = rd.stderr_now();
    let id: i32 = err
        .split("created queue msqid ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    msgqueue::SysvQueue::remove(id).unwrap();
    let d = rd.finish();
    assert!(!d.status.success());
    assert!(
        d.stderr.contains("EIDRM") && d.stderr.contains("removed"),
        "{}",
        d.stderr
    );
    // The name is the errno's: EIDRM is 43, and the message quotes the kernel's text for it.
    assert!(
        d.stderr.contains("msgrcv: EIDRM: ") && d.stderr.contains("(os error 43)"),
        "{}",
        d.stderr
    );
    env.assert_clean(&[&d.stderr]);
}

#[test]
fn a_queue_removed_between_two_calls_is_reported_as_einval_not_eidrm() {
    // A typed reader polls msgrcv(IPC_NOWAIT): it is never inside msgrcv when the queue
    // goes, so its next call finds no such msqid: EINVAL (22), and the message says so.
    let env = Env::new("einval");
    let mut w = env.writer(&[]);
    w.write_stdin(b"2: first\n");
    w.wait_for("the session starts");
    let mut r = env.reader(&["--type", "2"]);
    r.wait_for(": first");
    let id = harness::msqids_in(&r.stderr_now())[0];
    msgqueue::SysvQueue::remove(id).unwrap();
    let rd = r.finish();
    let wd = w.finish();
    assert!(!rd.status.success());
    assert!(
        rd.stderr.contains("msgrcv: EINVAL: msqid") && rd.stderr.contains("(os error 22)"),
        "{}",
        rd.stderr
    );
    assert!(!rd.stderr.contains("EIDRM"), "{}", rd.stderr);
    env.assert_clean(&[&wd.stderr, &rd.stderr]);
}

#[test]
fn two_typed_readers_at_once_without_shared_the_second_is_refused_and_told_of_shared() {
    // One-to-one mode has one reader at a time (two would remove the queue under each
    // other); several at once is --shared (M5).
    let env = Env::new("two-readers");
    let mut w = env.writer(&[]);
    w.write_stdin(b"1: one\n2: two\n");
    w.wait_for("the session starts");
    let mut r1 = env.reader(&["--type", "1"]);
    r1.wait_for(": one");
    let r2 = env.reader(&["--type", "2"]).finish();
    assert!(!r2.status.success());
    assert!(
        r2.stderr.contains("another reader (pid") && r2.stderr.contains("--shared"),
        "{}",
        r2.stderr
    );
    // The first reader is unharmed; a reader of type 2 after it gets its message.
    let wd = w.finish();
    let r1d = r1.finish();
    ok(&wd, "writer");
    ok(&r1d, "reader --type 1");
    let r3 = env.reader(&["--type", "2"]).finish();
    ok(&r3, "the next reader");
    assert!(r3.stdout.contains(": two"), "{}", r3.stdout);
    env.assert_clean(&[&wd.stderr, &r1d.stderr, &r2.stderr, &r3.stderr]);
}

#[test]
fn another_users_queue_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        return common::testing::skip("needs root to give a queue to another user");
    }
    let env = Env::new("owner");
    let key = 0x5eed_0000 | (std::process::id() as i32 & 0xffff);
    let (q, created) = msgqueue::SysvQueue::create_or_open(key).unwrap();
    assert!(created);
    q.set_owner(65534).unwrap();
    let d = env.writer(&["--key", &format!("{key:#x}")]).finish();
    msgqueue::SysvQueue::remove(q.id).unwrap();
    assert!(!d.status.success());
    assert!(
        d.stderr.contains("belongs to uid 65534") && d.stderr.contains("refusing"),
        "{}",
        d.stderr
    );
    let _ = std::fs::remove_dir_all(&env.dir);
}

#[test]
fn ctrl_c_on_the_reader_removes_the_queue() {
    for (fi, flavour) in FLAVOURS.iter().enumerate() {
        if fi == 1 && !posix_or_skip("ctrl-c (POSIX part)") {
            continue;
        }
        let env = Env::new(&format!("sigint-{fi}"));
        let mut rd = env.reader(flavour);
        rd.wait_for("waiting in ");
        rd.signal(Signal::SIGINT);
        let d = rd.finish();
        assert_eq!(d.status.code(), Some(130), "{}", d.stderr);
        assert!(d.stderr.contains("removed the queue"), "{}", d.stderr);
        env.assert_clean(&[&d.stderr]);
    }
}

/// Every bad flag value exits 2, whether clap checks it (a range, a parse) or the program
/// does (two flags that contradict each other, a size above a limit read from /proc:
/// `common::cli::bad_flag`), before any queue or file exists.
#[test]
fn bad_flags_are_refused_before_anything_exists() {
    let env = Env::new("flags");
    let too_big = (64 * 1024).to_string();
    for (args, needle) in [
        (&["--type", "0"][..], "--type"),
        (&["--type", "100"][..], "--type"),
        (&["--posix", "--type", "2"][..], "System V"),
        (&["--posix", "--key", "7"][..], "System V"),
        (&["--priority", "3"][..], "POSIX"),
        (&["--priority", "32768", "--posix"][..], "--priority"),
        (&["--key", "0"][..], "IPC_PRIVATE"),
        (&["--key", "zz"][..], "not a key"),
        (&["--mode", "stream", "--type", "2"][..], "text mode"),
        (&["--mode", "stream", "--size", &too_big][..], "--size"),
        (
            &["--posix", "--size", &too_big][..],
            "fs.mqueue.msgsize_max",
        ),
        (&["--shared", "--posix"][..], "--shared is System V"),
        (&["--shared", "--mode", "pingpong"][..], "pingpong"),
        (&["--shared", "--priority", "3"][..], "--priority is POSIX"),
    ] {
        let d = env.writer(args).finish();
        assert_eq!(d.status.code(), Some(2), "{args:?}: {}", d.stderr);
        assert!(d.stderr.contains(needle), "{args:?}: {}", d.stderr);
        assert!(
            !d.stderr.contains("msgget") && !d.stderr.contains("mq_open"),
            "{args:?}: refused before any queue exists: {}",
            d.stderr
        );
    }
    for (args, needle) in [
        (&["--type", "-100"][..], "--type"),
        (&["--posix", "--type", "2"][..], "cannot select"),
        (&["--mode", "pingpong", "--type", "2"][..], "text mode"),
        (&["--shared", "--type", "0"][..], "one type from 1 to 99"),
    ] {
        let d = env.reader(args).finish();
        assert_eq!(d.status.code(), Some(2), "{args:?}: {}", d.stderr);
        assert!(d.stderr.contains(needle), "{args:?}: {}", d.stderr);
    }
    env.assert_clean(&[]);
}

#[test]
fn ctrl_c_on_a_writer_alone_removes_the_queue_it_created() {
    for (fi, flavour) in FLAVOURS.iter().enumerate() {
        if fi == 1 && !posix_or_skip("ctrl-c writer (POSIX part)") {
            continue;
        }
        let env = Env::new(&format!("sigint-w-{fi}"));
        // Writer first, no reader: it created the queue, fills it and blocks (M6).
        let mut w = env.writer(&with(flavour, &["--mode", "stream", "--size", "4K"]));
        w.wait_for("the queue is full");
        w.signal(Signal::SIGINT);
        let d = w.finish();
        assert_eq!(d.status.code(), Some(130), "{}", d.stderr);
        env.assert_clean(&[&d.stderr]);
    }
}

#[test]
fn another_users_posix_queue_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        return common::testing::skip("needs root to give a queue to another user");
    }
    if !posix_or_skip("another_users_posix_queue_is_refused") {
        return;
    }
    use nix::mqueue::{mq_open, MQ_OFlag, MqAttr};
    use nix::sys::stat::Mode;
    let env = Env::new("owner-posix");
    let name = env.posix_names()[0].clone();
    let attr = MqAttr::new(0, 4, 128, 0);
    let q = mq_open(
        name.as_str(),
        MQ_OFlag::O_CREAT | MQ_OFlag::O_EXCL | MQ_OFlag::O_RDWR,
        Mode::S_IRUSR | Mode::S_IWUSR,
        Some(&attr),
    )
    .unwrap();
    // On Linux a queue descriptor is a file descriptor: fchown gives the queue away.
    nix::unistd::fchown(&q, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let d = env.writer(&["--posix"]).finish();
    msgqueue::posix_unlink(&name).unwrap();
    assert!(!d.status.success());
    assert!(
        d.stderr.contains("belongs to uid 65534") && d.stderr.contains("refusing"),
        "{}",
        d.stderr
    );
    let _ = std::fs::remove_dir_all(&env.dir);
}

#[test]
fn a_typed_reader_notices_a_killed_writer() {
    let env = Env::new("typed-kill");
    let mut w = env.writer(&[]);
    w.write_stdin(b"2: first\n");
    w.wait_for("the session starts");
    let mut r = env.reader(&["--type", "2"]);
    r.wait_for("first");
    w.signal(Signal::SIGKILL);
    let wd = w.finish();
    let rd = r.finish();
    assert!(!rd.status.success());
    assert!(
        rd.stderr.contains("died without finishing"),
        "{}",
        rd.stderr
    );
    env.assert_clean(&[&wd.stderr, &rd.stderr]);
}

/// A writer with no reader sends a stream into the queue and exits 0, but its report does
/// not say "verified": nobody has checked those messages yet. The reader that comes later
/// takes them and verifies them.
#[test]
fn a_stream_writer_alone_reports_sent_not_verified() {
    let env = Env::new("sent-only");
    let wd = env.writer(&["--mode", "stream", "--count", "5"]).finish();
    ok(&wd, "writer");
    assert!(
        wd.stdout.contains("sent (the reader verifies them)") && !wd.stdout.contains(", verified"),
        "{}",
        wd.stdout
    );
    let rd = env.reader(&["--mode", "stream"]).finish();
    ok(&rd, "reader");
    assert!(rd.stdout.contains(", verified"), "{}", rd.stdout);
    env.assert_clean(&[&wd.stderr, &rd.stderr]);
}
