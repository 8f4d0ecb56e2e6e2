//! How much a queue holds (M6, `depth.rs`): `--queue-bytes` sets a System V queue's
//! `msg_qbytes` and `--queue-depth` a POSIX queue's `mq_maxmsg`, with `mq_msgsize` sized
//! from `--size`, in either start order; each is read back from the kernel here (IPC_STAT,
//! mq_getattr, /dev/mqueue's QSIZE line), while the pair runs. A value beyond a limit is
//! refused before any queue exists, naming the flag, the limit and its value; a queue that
//! cannot serve the writer is refused, and the waiting reader stops too. Every run is
//! verified and leaves nothing behind. Nothing here is timed.

mod harness;

use std::os::unix::process::CommandExt;

use harness::{posix_or_skip, Done, Env, Proc};
use msgqueue::SysvQueue;
use nix::mqueue::{mq_close, mq_getattr, mq_open, MQ_OFlag, MqAttr};
use nix::sys::stat::Mode;

fn ok(d: &Done, who: &str) {
    assert!(
        d.status.success(),
        "{who} failed ({}):\n{}",
        d.status,
        d.stderr
    );
}

fn verified(d: &Done) {
    ok(d, "reader");
    assert!(d.report("reader", false).verified, "{}", d.stderr);
}

fn sysctl(path: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The System V queue a program narrated ("msqid N"), as IPC_STAT reads it now.
fn stat_of(stderr: &str) -> msgqueue::QueueStat {
    let id = harness::msqids_in(stderr)[0];
    SysvQueue { id, key: 0 }.stat().unwrap()
}

/// `mq_getattr` of this test's main POSIX queue, opened read-only for the look.
fn attr_of(env: &Env) -> MqAttr {
    let name = env.posix_names()[0].clone();
    let q = mq_open(name.as_str(), MQ_OFlag::O_RDONLY, Mode::empty(), None).unwrap();
    let at = mq_getattr(&q).unwrap();
    mq_close(q).unwrap();
    at
}

/// The bytes queued, from `/dev/mqueue/<name>`'s `QSIZE:` line (None: not mounted).
fn qsize(env: &Env) -> Option<usize> {
    let file = format!("/dev/mqueue{}", env.posix_names()[0]);
    let text = std::fs::read_to_string(file).ok()?;
    let field = text.split_whitespace().find(|f| f.starts_with("QSIZE:"))?;
    field.trim_start_matches("QSIZE:").parse().ok()
}

fn has(d: &Done, needles: &[&str]) {
    for n in needles {
        assert!(d.stderr.contains(n), "{n:?} missing:\n{}", d.stderr);
    }
}

#[test]
fn queue_bytes_sets_msg_qbytes_in_either_start_order_and_the_hello_says_it() {
    // Writer first: msgget makes the queue, IPC_SET gives it 8192 bytes (under
    // kernel.msgmnb, so no privilege is needed), and it fills at two messages.
    let env = Env::new("qbytes-writer-first");
    let w = [
        "--mode",
        "stream",
        "--size",
        "4000",
        "--count",
        "300",
        "--queue-bytes",
        "8192",
        "--json",
    ];
    let mut wr = env.writer(&w);
    wr.wait_for("the queue is full");
    let st = stat_of(&wr.stderr_now());
    assert_eq!(st.qbytes, 8192, "IPC_STAT: {st:?}");
    assert!(st.cbytes <= 8192 && st.qnum >= 1, "{st:?}");
    let rd = env.reader(&["--json"]).finish();
    let wd = wr.finish();
    ok(&wd, "writer");
    verified(&rd);
    has(&rd, &["capacity 8192 B"]);
    let note = "the queue holds msg_qbytes = 8192 bytes (read back with msgctl IPC_STAT";
    assert!(wd
        .report("writer", false)
        .notes
        .iter()
        .any(|n| n.starts_with(note)));
    assert!(rd
        .report("reader", false)
        .notes
        .iter()
        .any(|n| n.starts_with(note)));
    env.assert_clean(&[&wd.stderr, &rd.stderr]);

    // Reader first: the reader makes the queue with kernel.msgmnb bytes, and the writer,
    // its owner too, changes it with IPC_SET (a text writer waits for input meanwhile).
    let env = Env::new("qbytes-reader-first");
    let mut rd = env.reader(&["--json"]);
    rd.wait_for("waiting in ");
    assert_eq!(
        stat_of(&rd.stderr_now()).qbytes as usize,
        sysctl("/proc/sys/kernel/msgmnb")
    );
    let mut wr = env.writer(&["--queue-bytes", "8192"]);
    wr.wait_for("recorded as writer");
    assert_eq!(stat_of(&rd.stderr_now()).qbytes, 8192);
    wr.write_stdin(b"one line\n");
    let (wd, rd) = (wr.finish(), rd.finish());
    ok(&wd, "writer");
    verified(&rd);
    has(&wd, &["msgctl(IPC_SET) msg_qbytes 8192 (--queue-bytes"]);
    has(&rd, &["capacity 8192 B"]);
    env.assert_clean(&[&wd.stderr, &rd.stderr]);
}

#[test]
fn queue_bytes_above_msgmnb_is_refused_naming_the_sysctl_unless_privileged() {
    let env = Env::new("qbytes-limit");
    let mnb = sysctl("/proc/sys/kernel/msgmnb");
    let big = (2 * mnb).to_string();
    let w = ["--mode", "stream", "--size", "4000", "--count", "100"];
    let w: Vec<&str> = w.iter().copied().chain(["--queue-bytes", &big]).collect();
    if !msgqueue::depth::privileged() {
        let d = env.writer(&w).finish();
        assert_eq!(d.status.code(), Some(2), "{}", d.stderr);
        has(
            &d,
            &[
                &format!("--queue-bytes {big}"),
                &format!("kernel.msgmnb = {mnb}"),
                "CAP_SYS_RESOURCE",
                "sysctl -w kernel.msgmnb",
            ],
        );
        assert!(
            !d.stderr.contains("msgget"),
            "before any queue: {}",
            d.stderr
        );
        env.assert_clean(&[&d.stderr]);
    } else {
        // With CAP_SYS_RESOURCE the kernel takes it (or says EPERM, naming the sysctl, in
        // a namespace that has the capability only locally).
        let mut wr = env.writer(&w);
        wr.wait_for("the queue");
        let rd = env.reader(&[]).finish();
        let wd = wr.finish();
        if wd.status.success() {
            verified(&rd);
            has(&rd, &[&format!("capacity {big} B")]);
        } else {
            has(&wd, &["EPERM", "kernel.msgmnb"]);
        }
        env.assert_clean(&[&wd.stderr, &rd.stderr]);
    }
    // Below one frame a msgsnd would wait forever: refused too.
    let d = env
        .writer(&[
            "--mode",
            "stream",
            "--size",
            "4000",
            "--queue-bytes",
            "4000",
        ])
        .finish();
    assert_eq!(d.status.code(), Some(2), "{}", d.stderr);
    has(&d, &["cannot hold one message", "4040 bytes"]);
    env.assert_clean(&[&d.stderr]);
}

#[test]
fn queue_depth_and_size_shape_a_posix_queue_made_by_either_side() {
    if !posix_or_skip("queue_depth_and_size_shape_a_posix_queue_made_by_either_side") {
        return;
    }
    let run = ["--posix", "--mode", "stream", "--size", "1000"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        run.iter().chain(extra).copied().collect()
    };
    // Writer first: it makes the queue 4 deep, for 1040-byte frames, and fills it.
    let env = Env::new("depth-writer-first");
    let mut wr = env.writer(&with(&["--count", "200", "--queue-depth", "4", "--json"]));
    wr.wait_for("the queue is full");
    let at = attr_of(&env);
    assert_eq!((at.maxmsg(), at.msgsize(), at.curmsgs()), (4, 1040, 4));
    if let Some(q) = qsize(&env) {
        // The Hello and three 1040-byte frames.
        assert!(q > 3 * 1040 && q < 4 * 1040, "QSIZE {q}");
    }
    let rd = env.reader(&["--posix", "--json"]).finish();
    let wd = wr.finish();
    ok(&wd, "writer");
    verified(&rd);
    let note = "the queue holds mq_maxmsg = 4 messages of mq_msgsize = 1040 bytes";
    assert!(wd
        .report("writer", false)
        .notes
        .iter()
        .any(|n| n.starts_with(note)));
    has(&rd, &["capacity 4160 B"]);
    env.assert_clean(&[&wd.stderr, &rd.stderr]);

    // Reader first, given the same flags (as the bench gives them): the reader makes it 4
    // deep, for the largest messages (its --size only checks the writer's Hello), and the
    // writer finds what it asks for.
    let env = Env::new("depth-reader-first");
    let mut rd = env.reader(&with(&["--queue-depth", "4", "--json"]));
    rd.wait_for("waiting in ");
    let largest = sysctl("/proc/sys/fs/mqueue/msgsize_max").min(64 * 1024);
    let at = attr_of(&env);
    assert_eq!((at.maxmsg(), at.msgsize()), (4, largest as i64));
    let wd = env
        .writer(&with(&["--count", "200", "--queue-depth", "4"]))
        .finish();
    let rd = rd.finish();
    ok(&wd, "writer");
    verified(&rd);
    let note = format!("the queue holds mq_maxmsg = 4 messages of mq_msgsize = {largest} bytes");
    assert!(rd
        .report("reader", false)
        .notes
        .iter()
        .any(|n| n.starts_with(&note)));
    env.assert_clean(&[&wd.stderr, &rd.stderr]);

    // Pingpong: both queues take the shape, and the replies go back sealed in place.
    let env = Env::new("depth-pingpong");
    let mut rd = env.reader(&["--posix", "--queue-depth", "2", "--mode", "pingpong"]);
    rd.wait_for("waiting in ");
    let wd = env
        .writer(&[
            "--posix",
            "--mode",
            "pingpong",
            "--count",
            "200",
            "--queue-depth",
            "2",
            "--json",
        ])
        .finish();
    let rd = rd.finish();
    ok(&wd, "writer");
    ok(&rd, "reader");
    assert!(wd.report("writer", false).verified, "{}", wd.stderr);
    env.assert_clean(&[&wd.stderr, &rd.stderr]);
}

#[test]
fn a_writer_refuses_a_live_readers_queue_of_another_depth_and_the_reader_stops_too() {
    if !posix_or_skip("a_writer_refuses_a_live_readers_queue_of_another_depth") {
        return;
    }
    let env = Env::new("depth-misfit");
    let mut rd = env.reader(&["--posix"]);
    rd.wait_for("waiting in ");
    let wd = env
        .writer(&["--posix", "--mode", "stream", "--queue-depth", "4"])
        .finish();
    let rd = rd.finish();
    assert_eq!(wd.status.code(), Some(1), "{}", wd.stderr);
    has(
        &wd,
        &[
            "its mq_maxmsg is 10, not --queue-depth 4",
            "give the reader the same --queue-depth",
        ],
    );
    assert!(!rd.status.success());
    has(&rd, &["refused this queue"]);
    assert!(!rd.stderr.contains("within --timeout"), "{}", rd.stderr);
    env.assert_clean(&[&wd.stderr, &rd.stderr]);
}

/// A queue of this test's name that no pair file accounts for, with a message in it.
fn leftover(env: &Env, maxmsg: i64, msgsize: i64) {
    let name = env.posix_names()[0].clone();
    let attr = MqAttr::new(0, maxmsg, msgsize, 0);
    let flags = MQ_OFlag::O_CREAT | MQ_OFlag::O_RDWR;
    let mode = Mode::S_IRUSR | Mode::S_IWUSR;
    let q = mq_open(name.as_str(), flags, mode, Some(&attr)).unwrap();
    nix::mqueue::mq_send(&q, b"stale", 0).unwrap();
    mq_close(q).unwrap();
}

#[test]
fn a_leftover_posix_queue_of_another_shape_is_made_anew_by_the_side_that_finds_it() {
    if !posix_or_skip("a_leftover_posix_queue_of_another_shape_is_made_anew") {
        return;
    }
    // The writer finds it: emptied, made anew 3 deep for 540-byte frames.
    let env = Env::new("depth-leftover");
    leftover(&env, 10, 8192);
    let w = [
        "--posix", "--mode", "stream", "--size", "500", "--count", "100",
    ];
    let mut wr = env.writer(&[&w[..], &["--queue-depth", "3", "--json"]].concat());
    wr.wait_for("the queue is full");
    let at = attr_of(&env);
    assert_eq!((at.maxmsg(), at.msgsize()), (3, 540));
    let rd = env.reader(&["--posix", "--json"]).finish();
    let wd = wr.finish();
    ok(&wd, "writer");
    verified(&rd);
    // Its message was discarded and counted first, as any stale message is.
    has(
        &wd,
        &["stale; discarded", "is a leftover of an earlier run"],
    );
    assert_eq!(wd.report("writer", false).stale_skipped, 1);
    env.assert_clean(&[&wd.stderr, &rd.stderr]);

    // The reader finds one (no writer recorded): made anew in its shape, 2 deep for the
    // largest messages, and the writer (same --queue-depth) is served.
    let env = Env::new("depth-leftover-reader");
    leftover(&env, 3, 540);
    let mut rd = env.reader(&["--posix", "--queue-depth", "2", "--json"]);
    rd.wait_for("waiting in ");
    let largest = sysctl("/proc/sys/fs/mqueue/msgsize_max").min(64 * 1024);
    let at = attr_of(&env);
    assert_eq!(
        (at.maxmsg(), at.msgsize(), at.curmsgs()),
        (2, largest as i64, 0)
    );
    let wd = env
        .writer(&[&w[..], &["--queue-depth", "2"]].concat())
        .finish();
    let rd = rd.finish();
    ok(&wd, "writer");
    verified(&rd);
    has(
        &rd,
        &["stale; discarded", "is a leftover of an earlier run"],
    );
    assert_eq!(rd.report("reader", false).stale_skipped, 1);
    env.assert_clean(&[&wd.stderr, &rd.stderr]);
}

#[test]
fn queue_depth_beyond_msg_max_or_rlimit_msgqueue_is_refused_before_anything_exists() {
    let env = Env::new("depth-limits");
    let msg_max = sysctl("/proc/sys/fs/mqueue/msg_max");
    let deeper = (msg_max + 1).to_string();
    if !msgqueue::depth::privileged() {
        for exe in [harness::WRITER, harness::READER] {
            let mut c = env.cmd(exe, &["--posix", "--queue-depth", &deeper]);
            let d = Proc::spawn("program", &mut c).finish();
            assert_eq!(d.status.code(), Some(2), "{}", d.stderr);
            has(
                &d,
                &[
                    &format!("--queue-depth {deeper}"),
                    &format!("fs.mqueue.msg_max = {msg_max}"),
                    "CAP_SYS_RESOURCE",
                ],
            );
            assert!(!d.stderr.contains("mq_open /"), "{}", d.stderr);
        }
    }
    // RLIMIT_MSGQUEUE (ulimit -q) of 20000 bytes cannot hold 3 messages of 8040 bytes.
    let mut c = env.cmd(
        harness::WRITER,
        &[
            "--posix",
            "--mode",
            "stream",
            "--size",
            "8000",
            "--queue-depth",
            "3",
        ],
    );
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // setrlimit, which is async-signal-safe, on a struct of its own.
    unsafe {
        c.pre_exec(|| {
            let r = libc::rlimit {
                rlim_cur: 20_000,
                rlim_max: 20_000,
            };
            if libc::setrlimit(libc::RLIMIT_MSGQUEUE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let d = Proc::spawn("msgqueue-writer", &mut c).finish();
    assert_eq!(d.status.code(), Some(2), "{}", d.stderr);
    has(
        &d,
        &["--queue-depth 3", "RLIMIT_MSGQUEUE = 20000", "ulimit -q"],
    );
    // Each flag belongs to its flavour, and to a pair.
    for (exe, args, needle) in [
        (
            harness::WRITER,
            &["--queue-depth", "4"][..],
            "--queue-bytes",
        ),
        (
            harness::WRITER,
            &["--posix", "--queue-bytes", "8K"][..],
            "--queue-depth",
        ),
        (
            harness::READER,
            &["--queue-depth", "4"][..],
            "--queue-bytes",
        ),
        (
            harness::WRITER,
            &["--shared", "--queue-bytes", "8K"][..],
            "--shared",
        ),
    ] {
        let d = Proc::spawn("program", &mut env.cmd(exe, args)).finish();
        assert_eq!(d.status.code(), Some(2), "{args:?}: {}", d.stderr);
        assert!(d.stderr.contains(needle), "{args:?}: {}", d.stderr);
    }
    env.assert_clean(&[]);
}
