//! M5, many kinds of communication: several writers and several typed readers on one
//! System V queue at the same time (`--shared`), run as real processes. What is checked:
//! every writer's session arrives at the one reader of its type, whole and once (the
//! readers' per-session verification against the writers' own counts and nonces), several
//! writers reach one reader (many to one), the queue outlives the first members to leave
//! and is removed by the last (`msgctl(IPC_STAT)` on its msqid), and nothing is left behind.

mod harness;

use harness::{Done, Env, Proc};
use msgqueue::SysvQueue;
use nix::sys::signal::Signal;

fn ok(d: &Done, who: &str) {
    assert!(
        d.status.success(),
        "{who} failed ({}):\n{}",
        d.status,
        d.stderr
    );
}

/// A writer's session nonce, as it narrates it when it joins.
fn nonce_of(writer: &Done) -> String {
    writer
        .stderr
        .split("joined with session ")
        .nth(1)
        .and_then(|s| s.get(..16))
        .unwrap_or_else(|| panic!("no session in:\n{}", writer.stderr))
        .to_string()
}

/// The sessions a reader's report lists: (nonce, messages, verified).
fn sessions_of(reader: &Done) -> Vec<(String, u64, bool)> {
    let r = reader.report("reader", false);
    r.notes
        .iter()
        .filter_map(|n| {
            let rest = n.strip_prefix("session ")?;
            let nonce = rest.get(..16)?.to_string();
            let count = rest.split(": ").nth(1)?.split(' ').next()?.parse().ok()?;
            Some((nonce, count, n.ends_with("End's totals matched")))
        })
        .collect()
}

/// The msqid of the shared queue, from a member's narration.
fn msqid_of(d: &Done) -> i32 {
    harness::msqids_in(&d.stderr)[0]
}

/// Whether the kernel still has queue `id` (`msgctl(IPC_STAT)`); removed is EINVAL.
fn exists(id: i32) -> bool {
    match (SysvQueue { id, key: 0 }).stat() {
        Ok(_) => true,
        Err(e) => {
            assert_eq!(
                e.raw_os_error(),
                Some(libc::EINVAL),
                "IPC_STAT msqid {id}: {e}"
            );
            false
        }
    }
}

#[test]
fn claim_m5_several_writers_and_typed_readers_at_once_each_message_exactly_once() {
    let env = Env::new("m5-stream");
    let w = |t: &'static str, count: &'static str, size: &'static str| {
        let args = [
            "--shared", "--mode", "stream", "--type", t, "--count", count, "--size", size, "--json",
        ];
        env.writer(&args)
    };
    // Five processes started together, writers first. Writer A alone sends far more bytes
    // than the queue holds (msg_qbytes = kernel.msgmnb), so it can only finish while a
    // reader takes its messages: writers and readers run at the same time.
    let msgmnb: u64 = std::fs::read_to_string("/proc/sys/kernel/msgmnb")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    if 3300 * (40 + 100) <= 4 * msgmnb {
        return common::testing::skip(&format!(
            "kernel.msgmnb = {msgmnb}: the queue would hold writer A's whole session"
        ));
    }
    let procs: Vec<(&str, Proc)> = vec![
        ("writer A type 1", w("1", "3000", "100")),
        (
            "reader type 2",
            env.reader(&["--shared", "--mode", "stream", "--type", "2", "--json"]),
        ),
        ("writer B type 1", w("1", "2000", "37")),
        ("writer C type 2", w("2", "2500", "256")),
        (
            "reader type 1",
            env.reader(&[
                "--shared",
                "--mode",
                "stream",
                "--type",
                "1",
                "--writers",
                "2",
                "--json",
            ]),
        ),
    ];
    let done: Vec<(&str, Done)> = procs.into_iter().map(|(l, p)| (l, p.finish())).collect();
    for (label, d) in &done {
        ok(d, label);
    }
    let (a, r2, b, c, r1) = (&done[0].1, &done[1].1, &done[2].1, &done[3].1, &done[4].1);
    let mut want1 = vec![(nonce_of(a), 3000, true), (nonce_of(b), 2000, true)];
    let mut got1 = sessions_of(r1);
    want1.sort();
    got1.sort();
    // Type 1's reader got both type-1 writers' sessions, each whole and verified; type 2's
    // reader got writer C's and nothing else: dispatch by type, many to one, once each.
    assert_eq!(got1, want1, "{}", r1.stderr);
    assert_eq!(
        sessions_of(r2),
        [(nonce_of(c), 2500, true)],
        "{}",
        r2.stderr
    );
    let (rep1, rep2) = (r1.report("reader", false), r2.report("reader", false));
    assert!(rep1.verified && rep2.verified);
    assert_eq!((rep1.count, rep1.bytes), (5000, 3000 * 100 + 2000 * 37));
    assert_eq!((rep2.count, rep2.bytes), (2500, 2500 * 256));
    // One queue for all five, removed by exactly one of them: the last to leave.
    let id = msqid_of(a);
    assert!(done
        .iter()
        .all(|(_, d)| harness::msqids_in(&d.stderr).contains(&id)));
    let last: Vec<&str> = done
        .iter()
        .filter(|(_, d)| d.stderr.contains("the last one out: msgctl(IPC_RMID)"))
        .map(|(l, _)| *l)
        .collect();
    assert_eq!(last.len(), 1, "{last:?}");
    assert!(!exists(id));
    let stderrs: Vec<&str> = done.iter().map(|(_, d)| d.stderr.as_str()).collect();
    env.assert_clean(&stderrs);
}

#[test]
fn claim_m5_two_writers_reach_one_reader_while_a_third_pair_runs_and_the_last_out_removes_the_queue(
) {
    let env = Env::new("m5-text");
    let mut r1 = env.reader(&["--shared", "--type", "1", "--writers", "2", "--json"]);
    r1.wait_for("polls msgrcv");
    let mut r2 = env.reader(&["--shared", "--type", "2", "--json"]);
    r2.wait_for("polls msgrcv");
    let mut ws: Vec<Proc> = ["1", "1", "2"]
        .iter()
        .map(|t| {
            let mut w = env.writer(&["--shared", "--type", t]);
            w.wait_for("joined with session");
            w
        })
        .collect();
    let pids: Vec<i32> = ws.iter().map(Proc::pid).collect();
    // Lines go to the three writers in turn, and each is printed by its reader before the
    // next is typed: all five processes run at once, and reader 1 shows the two writers'
    // lines interleaved in the order they were typed.
    let mut rs = [r1, r2];
    for (w, r, text) in [
        (0, 0, "a0"),
        (1, 0, "b0"),
        (2, 1, "c0"),
        (0, 0, "a1"),
        (1, 0, "b1"),
        (2, 1, "c1"),
    ] {
        ws[w].write_stdin(format!("{text}\n").as_bytes());
        rs[r].wait_for(&format!(": {text}"));
    }
    let [r1, r2] = rs;
    let c = ws.pop().unwrap();
    // Writer C and reader 2 finish first: the queue stays for the three still running.
    let (cd, r2d) = (c.finish(), r2.finish());
    ok(&cd, "writer C");
    ok(&r2d, "reader 2");
    let id = msqid_of(&r2d);
    assert!(
        exists(id),
        "removed before the last member left:\n{}",
        r2d.stderr
    );
    assert!(r2d.stderr.contains("still using it"), "{}", r2d.stderr);
    let done: Vec<Done> = ws.into_iter().map(Proc::finish).collect();
    let r1d = r1.finish();
    for d in done.iter().chain([&r1d]) {
        ok(d, "writer or reader 1");
    }
    assert!(!exists(id), "the last one out must remove the queue");
    let lines = |d: &Done| -> Vec<String> {
        d.stdout
            .lines()
            .filter(|l| l.starts_with('['))
            .map(String::from)
            .collect()
    };
    let tag = |pid: i32, seq: u32, text: &str| {
        (format!("[type 1, writer {pid}] #{seq} "), text.to_string())
    };
    let got: Vec<(String, String)> = lines(&r1d)
        .iter()
        .map(|l| {
            (
                l.split("(").next().unwrap().to_string(),
                l.rsplit(": ").next().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            tag(pids[0], 0, "a0"),
            tag(pids[1], 0, "b0"),
            tag(pids[0], 1, "a1"),
            tag(pids[1], 1, "b1")
        ],
        "{}",
        r1d.stdout
    );
    let r2_lines = lines(&r2d);
    assert_eq!(r2_lines.len(), 2, "{}", r2d.stdout);
    assert!(r2_lines
        .iter()
        .all(|l| l.starts_with(&format!("[type 2, writer {}] ", pids[2]))));
    assert!(r1d.report("reader", false).verified && r2d.report("reader", false).verified);
    env.assert_clean(&[
        &cd.stderr,
        &r2d.stderr,
        &r1d.stderr,
        &done[0].stderr,
        &done[1].stderr,
    ]);
}

#[test]
fn claim_m5_finished_sessions_wait_in_the_queue_for_their_readers() {
    let env = Env::new("m5-later");
    let mut one = env.writer(&["--shared", "--type", "1"]);
    one.write_stdin(b"for type one\n");
    let one = one.finish();
    let mut two = env.writer(&["--shared", "--type", "2"]);
    two.write_stdin(b"for type two\n");
    let two = two.finish();
    ok(&one, "writer 1");
    ok(&two, "writer 2");
    // Both writers have exited; their sessions (a Hello, a line and End each) are in the
    // kernel (M1).
    let id = msqid_of(&two);
    assert!(two.stderr.contains("wait in the queue"), "{}", two.stderr);
    assert_eq!((SysvQueue { id, key: 0 }).stat().unwrap().qnum, 6);
    let r2 = env.reader(&["--shared", "--type", "2"]).finish();
    ok(&r2, "reader 2");
    assert!(
        r2.stdout.contains(": for type two") && !r2.stdout.contains("type one"),
        "{}",
        r2.stdout
    );
    // Writer 1's session is still whole in the queue: the reader of type 2 leaves it.
    assert_eq!((SysvQueue { id, key: 0 }).stat().unwrap().qnum, 3);
    let r1 = env.reader(&["--shared", "--type", "1"]).finish();
    ok(&r1, "reader 1");
    assert!(r1.stdout.contains(": for type one"), "{}", r1.stdout);
    assert!(!exists(id));
    env.assert_clean(&[&one.stderr, &two.stderr, &r1.stderr, &r2.stderr]);
}

#[test]
fn claim_m5_a_killed_writer_fails_only_its_own_reader_and_nothing_is_left() {
    let env = Env::new("m5-kill");
    let mut r1 = env.reader(&["--shared", "--type", "1"]);
    r1.wait_for("polls msgrcv");
    let mut r2 = env.reader(&["--shared", "--type", "2", "--json"]);
    r2.wait_for("polls msgrcv");
    let mut w1 = env.writer(&["--shared", "--type", "1"]);
    w1.write_stdin(b"before the kill\n");
    r1.wait_for(": before the kill");
    let mut w2 = env.writer(&["--shared", "--type", "2"]);
    w2.write_stdin(b"unaffected\n");
    r2.wait_for(": unaffected");
    let w1d = w1.kill9();
    let r1d = r1.finish();
    assert!(!r1d.status.success());
    assert!(
        r1d.stderr.contains("died without finishing"),
        "{}",
        r1d.stderr
    );
    // The other pair goes on, and its last member removes the queue.
    let (w2d, r2d) = (w2.finish(), r2.finish());
    ok(&w2d, "writer 2");
    ok(&r2d, "reader 2");
    assert!(r2d.report("reader", false).verified);
    env.assert_clean(&[&w1d.stderr, &r1d.stderr, &w2d.stderr, &r2d.stderr]);
}

#[test]
fn claim_m5_one_reader_per_type_and_bad_shared_flags_are_refused() {
    let env = Env::new("m5-flags");
    let mut r = env.reader(&["--shared", "--type", "3"]);
    r.wait_for("polls msgrcv");
    let second = env.reader(&["--shared", "--type", "3"]).finish();
    assert!(!second.status.success());
    assert!(
        second.stderr.contains("already takes type 3"),
        "{}",
        second.stderr
    );
    for (args, needle) in [
        (&["--shared", "--posix"][..], "POSIX queue cannot select"),
        (&["--shared", "--mode", "pingpong"][..], "pingpong"),
        (&["--shared", "--type", "-2"][..], "one type from 1 to 99"),
        (&["--writers", "2"][..], "--shared"),
    ] {
        let d = env.reader(args).finish();
        // A bad flag value: exit 2, like the values clap checks itself.
        assert!(
            d.status.code() == Some(2) && d.stderr.contains(needle),
            "{args:?}: {}",
            d.stderr
        );
        assert!(
            !d.stderr.contains("msgget"),
            "refused before any queue: {}",
            d.stderr
        );
    }
    r.signal(Signal::SIGINT);
    let rd = r.finish();
    assert_eq!(rd.status.code(), Some(130), "{}", rd.stderr);
    env.assert_clean(&[&rd.stderr, &second.stderr]);
}
