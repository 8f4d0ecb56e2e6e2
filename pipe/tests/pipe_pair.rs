//! Process-level tests of pipe-writer and pipe-reader: every mode, both launch styles,
//! each claim P1-P6 that a program can check, and the ways a run can go wrong.
//! Anonymous pipes have no name, so these tests cannot leave an object behind; each child
//! runs under the harness deadline.

mod harness;

use std::io::Write;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::frame::{encode_header, Fields, Kind, HEADER_LEN};
use harness::{shell_pair, Proc, READER, WRITER};
use nix::sys::signal::Signal;

fn spawn_writer(args: &[&str], stdin: &[u8]) -> harness::Done {
    let mut cmd = Command::new(WRITER);
    cmd.arg("--spawn").args(args).stdin(Stdio::piped());
    let mut p = Proc::spawn("pipe-writer --spawn", &mut cmd);
    p.write_stdin(stdin);
    p.finish()
}

#[test]
fn text_mode_in_a_shell_pipeline_delivers_each_line() {
    let (mut w, r) = shell_pair(&[], &["--json"]);
    w.write_stdin(b"hello\nsecond line\n");
    let wd = w.finish();
    let rd = r.finish();
    assert!(wd.status.success(), "{}", wd.stderr);
    assert!(rd.status.success(), "{}", rd.stderr);
    assert!(
        rd.stdout.contains("#0 (5 B") && rd.stdout.contains(": hello"),
        "{}",
        rd.stdout
    );
    assert!(
        rd.stdout.contains("#1 (11 B") && rd.stdout.contains(": second line"),
        "{}",
        rd.stdout
    );
    let rep = rd.report("reader", false);
    assert!(rep.verified);
    assert_eq!((rep.count, rep.bytes), (2, 16));
}

#[test]
fn stream_mode_in_a_shell_pipeline_is_verified_on_both_sides() {
    let args = [
        "--mode", "stream", "--count", "3000", "--size", "4K", "--json",
    ];
    let (w, r) = shell_pair(&args, &["--mode", "stream", "--json"]);
    let wd = w.finish();
    let rd = r.finish();
    assert!(
        wd.status.success() && rd.status.success(),
        "{}\n{}",
        wd.stderr,
        rd.stderr
    );
    // In shell mode stdout is the pipe, so the writer reports on stderr.
    let wr = wd.report("writer", true);
    let rr = rd.report("reader", false);
    assert!(rr.verified);
    assert_eq!((wr.count, rr.count), (3000, 3000));
    assert_eq!(rr.bytes, 3000 * 4096);
    assert_eq!(rr.warmup, 300);
    // Both sides name mechanism, flavour and wait strategy the same way (typed Setup).
    for rep in [&wr, &rr] {
        let named = (
            rep.mechanism.as_str(),
            rep.flavour.as_str(),
            rep.wait.as_str(),
        );
        assert_eq!(named, ("pipe", "shell", "block"), "{rep:?}");
    }
}

#[test]
fn spawn_mode_runs_text_stream_and_pingpong() {
    let d = spawn_writer(&["--json"], b"one\ntwo\nthree\n");
    assert!(d.status.success(), "{}", d.stderr);
    assert_eq!(d.report("reader", false).count, 3);
    assert_eq!(d.report("writer", false).count, 3);

    let d = spawn_writer(
        &[
            "--mode",
            "stream",
            "--count",
            "2000",
            "--size",
            "64K",
            "--pipe-size",
            "256K",
            "--json",
        ],
        b"",
    );
    assert!(d.status.success(), "{}", d.stderr);
    let rr = d.report("reader", false);
    assert!(
        rr.verified && rr.count == 2000 && rr.bytes == 2000 * 65536,
        "{rr:?}"
    );
    assert!(d
        .report("writer", false)
        .notes
        .iter()
        .any(|n| n == "pipe capacity 262144 bytes"));

    let d = spawn_writer(
        &[
            "--mode", "pingpong", "--count", "500", "--size", "100", "--json",
        ],
        b"",
    );
    assert!(d.status.success(), "{}", d.stderr);
    let wr = d.report("writer", false);
    assert!(wr.verified && wr.count == 500);
    assert_eq!(wr.latency_kind, "round_trip");
    assert_eq!((wr.flavour.as_str(), wr.wait.as_str()), ("spawn", "block"));
    let lat = wr.latency_ns.expect("round trips were timed");
    assert!(
        lat.min > 0 && lat.min <= lat.p50 && lat.p50 <= lat.max,
        "{lat:?}"
    );
    assert_eq!(d.report("reader", false).count, 500);
}

/// P1: `a | b` gives two siblings with the same parent (here: this test process).
#[test]
fn claim_p1_shell_siblings_share_a_ppid() {
    let (mut w, r) = shell_pair(&[], &["--json"]);
    let mut r = r;
    w.write_stdin(b"first\n");
    // Once the first message is printed, the reader has already looked at the pipe's ends.
    r.wait_for("first");
    let wd = w.finish();
    let rd = r.finish();
    assert!(wd.status.success() && rd.status.success());
    let rep = rd.report("reader", false);
    let me = std::process::id();
    let reader_note = rep
        .notes
        .iter()
        .find(|n| n.starts_with("reader pid"))
        .expect("reader note");
    let writer_note = rep
        .notes
        .iter()
        .find(|n| n.starts_with("writer pid"))
        .expect("the reader found the writer");
    assert!(
        reader_note.ends_with(&format!("ppid {me}")),
        "{reader_note}"
    );
    assert!(
        writer_note.ends_with(&format!("ppid {me}")),
        "{writer_note}"
    );
    assert!(
        rd.stderr.contains("share parent pid") && rd.stderr.contains("(P1)"),
        "{}",
        rd.stderr
    );
}

/// P2: 20 000 small messages arrive in the order sent; the reader checks every seq.
#[test]
fn claim_p2_messages_arrive_in_fifo_order() {
    let d = spawn_writer(
        &[
            "--mode", "stream", "--count", "20000", "--size", "16", "--warmup", "0", "--json",
        ],
        b"",
    );
    assert!(d.status.success(), "{}", d.stderr);
    let rr = d.report("reader", false);
    assert!(
        rr.verified,
        "a message was missing, repeated or out of order"
    );
    assert_eq!(rr.count, 20000);
}

/// P3: each end of a pipe works one way only: the kernel refuses the other direction.
#[test]
fn claim_p3_each_end_is_one_way() {
    let (r, w) = nix::unistd::pipe().unwrap();
    assert_eq!(nix::unistd::write(&r, b"x"), Err(nix::errno::Errno::EBADF));
    let mut buf = [0u8; 1];
    assert_eq!(
        nix::unistd::read(&w, &mut buf),
        Err(nix::errno::Errno::EBADF)
    );
    // The right directions work.
    assert_eq!(nix::unistd::write(&w, b"x"), Ok(1));
    assert_eq!(nix::unistd::read(&r, &mut buf), Ok(1));
}

/// P4: in spawn mode the reader is the writer's child.
#[test]
fn claim_p4_spawn_mode_reader_is_the_writers_child() {
    let d = spawn_writer(&["--mode", "pingpong", "--count", "10", "--json"], b"");
    assert!(d.status.success(), "{}", d.stderr);
    let writer_pid = d
        .report("writer", false)
        .notes
        .iter()
        .find_map(|n| n.strip_prefix("writer pid ").map(str::to_string))
        .expect("writer pid note");
    let rr = d.report("reader", false);
    assert!(
        rr.notes
            .iter()
            .any(|n| n.ends_with(&format!("ppid {writer_pid}")) && n.starts_with("reader pid")),
        "{:?}",
        rr.notes
    );
    assert!(d.stderr.contains("is this reader's parent"), "{}", d.stderr);
}

/// P5: a shell pipeline cannot do pingpong (one pipe); spawn mode makes two and can.
#[test]
fn claim_p5_two_way_needs_two_pipes() {
    let (w, r) = shell_pair(&["--mode", "pingpong"], &["--mode", "pingpong"]);
    let wd = w.finish();
    let rd = r.finish();
    assert_eq!(wd.status.code(), Some(1));
    assert!(wd.stderr.contains("two pipes (P5)"), "{}", wd.stderr);
    assert_eq!(rd.status.code(), Some(1));
    assert!(
        rd.stderr.contains("second pipe for the answers (P5)"),
        "{}",
        rd.stderr
    );
    let d = spawn_writer(&["--mode", "pingpong", "--count", "50"], b"");
    assert!(d.status.success(), "{}", d.stderr);
}

/// P6 at the system-call level: a pipe holds exactly its capacity; one more byte blocks
/// the writer until the reader makes room.
#[test]
fn claim_p6_writer_blocks_when_pipe_is_full() {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let (r, w) = nix::unistd::pipe().unwrap();
    let cap = common::stream::capacity(w.as_fd()).unwrap();
    // Fill it without blocking: writes succeed until exactly `cap` bytes are queued.
    fcntl(&w, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
    let chunk = vec![7u8; 4096];
    let mut queued = 0;
    loop {
        match nix::unistd::write(&w, &chunk) {
            Ok(n) => queued += n,
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(queued, cap, "a full pipe holds its capacity");
    // A blocking write now waits...
    fcntl(&w, FcntlArg::F_SETFL(OFlag::empty())).unwrap();
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let n = nix::unistd::write(&w, b"one more").unwrap();
        tx.send(n).unwrap();
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "write returned although the pipe was full"
    );
    // ...until the reader reads a page, and then it completes.
    let mut page = vec![0u8; 4096];
    assert_eq!(nix::unistd::read(&r, &mut page).unwrap(), 4096);
    assert_eq!(rx.recv_timeout(Duration::from_secs(20)).unwrap(), 8);
    t.join().unwrap();
}

/// P6 as the program shows it: with the reader stopped, the writer says the pipe is full.
#[test]
fn claim_p6_writer_narrates_a_full_pipe() {
    let (mut w, r) = shell_pair(
        &[
            "--mode", "stream", "--count", "200", "--size", "4K", "--json",
        ],
        &["--mode", "stream", "--json"],
    );
    r.signal(Signal::SIGSTOP);
    w.wait_for("the pipe is full: write() would block");
    r.signal(Signal::SIGCONT);
    let wd = w.finish();
    let rd = r.finish();
    assert!(
        wd.status.success() && rd.status.success(),
        "{}\n{}",
        wd.stderr,
        rd.stderr
    );
    let note = wd
        .report("writer", true)
        .notes
        .into_iter()
        .find(|n| n.contains("found the pipe full"))
        .unwrap();
    assert!(!note.contains("full 0 times"), "{note}");
    assert!(rd.report("reader", false).verified);
}

#[test]
fn reader_killed_makes_the_writer_report_epipe() {
    let (mut w, mut r) = shell_pair(
        &["--mode", "stream", "--count", "1e9", "--size", "4K"],
        &["--mode", "stream"],
    );
    r.wait_for("reading from the pipe");
    w.wait_for("pipe capacity");
    r.signal(Signal::SIGKILL);
    let rd = r.finish();
    assert!(!rd.status.success());
    let wd = w.finish();
    assert_eq!(wd.status.code(), Some(1), "{}", wd.stderr);
    assert!(
        wd.stderr.contains("reader closed the pipe after"),
        "{}",
        wd.stderr
    );
}

#[test]
fn writer_killed_mid_stream_fails_the_reader() {
    let (mut w, r) = shell_pair(
        &["--mode", "stream", "--count", "1e9", "--size", "60000"],
        &["--mode", "stream"],
    );
    w.wait_for("pipe capacity");
    std::thread::sleep(Duration::from_millis(100));
    w.signal(Signal::SIGKILL);
    let _ = w.finish();
    let rd = r.finish();
    assert_eq!(rd.status.code(), Some(1), "{}", rd.stderr);
    assert!(
        rd.stderr.contains("truncated stream") || rd.stderr.contains("without sending End"),
        "{}",
        rd.stderr
    );
}

/// Feeds bytes to a reader's stdin as if a writer had sent them, then closes.
fn reader_fed(bytes: &[u8]) -> harness::Done {
    let mut cmd = Command::new(READER);
    cmd.args(["--mode", "stream"]).stdin(Stdio::piped());
    let mut p = Proc::spawn("pipe-reader", &mut cmd);
    p.write_stdin(bytes);
    p.finish()
}

fn frame(seq: u64, payload: &[u8]) -> Vec<u8> {
    let f = Fields {
        kind: Kind::Data,
        flags: 0,
        nonce: 42,
        seq,
        sent_ns: 1,
    };
    let mut v = encode_header(f, payload).unwrap().to_vec();
    v.extend_from_slice(payload);
    v
}

#[test]
fn a_writer_gone_mid_frame_is_a_truncated_stream() {
    let mut bytes = frame(0, &0u64.to_le_bytes());
    let second = frame(1, &[1u8; 1000]);
    bytes.extend_from_slice(&second[..HEADER_LEN + 300]);
    let d = reader_fed(&bytes);
    assert_eq!(d.status.code(), Some(1));
    assert!(
        d.stderr.contains("truncated stream")
            && d.stderr.contains("340 of 1040 bytes")
            && d.stderr.contains("after 1 whole messages"),
        "{}",
        d.stderr
    );
}

#[test]
fn garbage_and_corrupt_frames_are_refused_with_their_reason() {
    let d = reader_fed(b"this is not a frame at all, just text\n");
    assert_eq!(d.status.code(), Some(1));
    assert!(d.stderr.contains("not an ipc-study frame"), "{}", d.stderr);

    let mut huge = frame(0, b"x");
    huge[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
    let d = reader_fed(&huge);
    assert_eq!(d.status.code(), Some(1));
    assert!(
        d.stderr
            .contains("4294967295 bytes exceeds the limit of 16777216"),
        "{}",
        d.stderr
    );

    let mut bad = frame(0, b"12345678");
    *bad.last_mut().unwrap() ^= 0xff;
    let d = reader_fed(&bad);
    assert_eq!(d.status.code(), Some(1));
    assert!(d.stderr.contains("is corrupt: checksum"), "{}", d.stderr);
}

#[test]
fn ctrl_c_ends_both_sides_with_status_130() {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(WRITER);
    // Its own process group, like a terminal's foreground job: Ctrl-C reaches both.
    cmd.arg("--spawn").stdin(Stdio::piped()).process_group(0);
    let mut p = Proc::spawn("pipe-writer --spawn", &mut cmd);
    p.write_stdin(b"before the interrupt\n");
    p.wait_for("before the interrupt");
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(p.pid()), Signal::SIGINT).unwrap();
    let d = p.finish();
    assert_eq!(d.status.code(), Some(130), "{}", d.stderr);
    assert!(d.stderr.contains("interrupted by SIGINT"), "{}", d.stderr);
}

#[test]
fn bad_flag_values_name_the_flag_and_the_limit() {
    for (args, needle) in [
        (vec!["--count", "0"], "--count"),
        (vec!["--size", "17MiB"], "16 MiB"),
        (vec!["--mode", "sideways"], "--mode"),
        (vec!["--timeout=0"], "--timeout"),
    ] {
        let out = Command::new(WRITER)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let out = Command::new(WRITER)
        .args(["--spawn", "--pipe-size", "1K"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--pipe-size 1024 is out of range: 4096 to"),
        "{err}"
    );
    let out = Command::new(READER)
        .args(["--back-fd", "1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--back-fd 1"));
}

#[test]
fn an_oversized_text_line_is_refused_and_earlier_lines_survive() {
    // 17 MiB line: more than any frame may carry.
    let mut input = b"short line\n".to_vec();
    input.extend(std::iter::repeat_n(b'a', 17 << 20));
    input.push(b'\n');
    let (mut w, r) = shell_pair(&[], &["--json"]);
    let mut stdin = w.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let wd = w.finish();
    let rd = r.finish();
    let _ = feeder.join();
    assert_eq!(wd.status.code(), Some(1));
    assert!(wd.stderr.contains("line 2 is 17825792 bytes; the largest message this mechanism carries is 16777216 bytes"), "{}", wd.stderr);
    assert!(rd.status.success(), "{}", rd.stderr);
    assert_eq!(rd.report("reader", false).count, 1);
}
