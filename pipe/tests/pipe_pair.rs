//! Process-level tests of pipe-writer and pipe-reader: every mode, both launch styles,
//! each claim P1-P6 that a program can check, and the ways a run can go wrong.
//! Anonymous pipes have no name, so these tests cannot leave an object behind; each child
//! runs under the harness deadline.

mod harness;

use std::fs;
use std::io::Write;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::cli::Mode;
use common::frame::{encode_header, Fields, Kind, HEADER_LEN};
use common::hello::Hello;
use common::setup::Wait;
use common::testing::DEADLINE;
use harness::{kernel, pipeline, shell_pair, Proc, TestDir, READER, WRITER};
use nix::errno::Errno;
use nix::fcntl::OFlag;
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

/// P1 as the note puts it, which is a coincidence of how shells run pipelines: `a | b`
/// gives two siblings with the same parent (here: this test process).
#[test]
fn claim_p1_coincidence_shell_siblings_share_a_ppid() {
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

/// P1, the correction: what the two ends share is the pipe's descriptors, not a parent.
/// The writer is a grandchild (`sh -c 'pipe-writer &'`) whose parent exits before the
/// reader even starts: the kernel re-parents it (to init or a subreaper), so writer and
/// reader share no PPID, and the line still arrives through the pipe it inherited.
#[test]
fn claim_p1_a_writer_whose_parent_exited_still_talks_through_the_inherited_pipe() {
    // The pipe is this test's (std's Command makes it): sh's stdout, inherited by the writer.
    // A background job's stdin would be /dev/null, so sh hands its stdin over as fd 3.
    let script = r#"exec 3<&0; "$0" --json <&3 3<&- & echo "background writer pid $!" >&2"#;
    let mut sh = Command::new("sh");
    sh.args(["-c", script, WRITER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut sh = sh.spawn().expect("spawn sh");
    let read_end = sh.stdout.take().expect("sh stdout");
    let sh_pid = sh.id() as i32;
    let mut sh = Proc::adopt("sh -c 'pipe-writer &'", sh);
    sh.wait_for("background writer pid ");
    let writer = kernel::Orphan::new(
        sh.stderr_now()
            .lines()
            .find_map(|l| l.strip_prefix("background writer pid "))
            .and_then(|p| p.trim().parse().ok())
            .expect("the writer's pid"),
    );
    // The intermediate is gone (reaped here) before the reader starts.
    assert!(sh.child.wait().unwrap().success());
    let me = std::process::id() as i32;
    let writer_ppid = kernel::ppid(writer.pid);
    assert!(
        writer_ppid != me && writer_ppid != sh_pid,
        "the writer was not re-parented: ppid {writer_ppid}"
    );
    let mut r = Command::new(READER);
    r.arg("--json").stdin(Stdio::from(read_end));
    let mut r = Proc::spawn("pipe-reader", &mut r);
    sh.write_stdin(b"through an inherited pipe\n");
    r.wait_for("through an inherited pipe");
    // The kernel's view: the writer's stdout and the reader's stdin are one pipe, one end
    // each, and the two processes have different parents.
    let (w_end, r_end) = (kernel::fd(writer.pid, 1), kernel::fd(r.pid(), 0));
    assert!(w_end.target.starts_with("pipe:["), "{w_end:?}");
    assert_eq!(w_end.target, r_end.target, "not the same pipe");
    assert_eq!((w_end.access, r_end.access), (1, 0), "{w_end:?} {r_end:?}");
    assert_eq!(kernel::ppid(r.pid()), me);
    assert_ne!(kernel::ppid(writer.pid), kernel::ppid(r.pid()));
    // Ctrl-D for the writer: End, close, and the reader finishes.
    sh.close_stdin();
    writer.wait_gone();
    let rd = r.finish();
    let shd = sh.finish();
    assert!(rd.status.success(), "{}", rd.stderr);
    let rep = rd.report("reader", false);
    assert!(rep.verified && rep.count == 1, "{rep:?}");
    assert!(
        rep.notes
            .contains(&format!("writer pid {} ppid {writer_ppid}", writer.pid)),
        "{:?}",
        rep.notes
    );
    assert!(
        rd.stderr.contains("have different parents"),
        "{}",
        rd.stderr
    );
    // A stream writer checks nothing itself: its report leaves that to the reader.
    let wr = shd.report("writer", true);
    assert!(!wr.verified && wr.verified_by == "reader", "{}", shd.stderr);
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

/// P2 in the bytes themselves: this test reads the pipe with its own `read` calls and finds
/// every frame in the order it was written (seq 0, 1, 2, ..., then End).
#[test]
fn claim_p2_the_bytes_read_are_the_frames_in_the_order_written() {
    let mut cmd = Command::new(WRITER);
    cmd.args(["--mode", "stream", "--count", "20000", "--size", "16"])
        .args(["--warmup", "0", "--quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn pipe-writer");
    let mut pipe = child.stdout.take().expect("the pipe's read end");
    let w = Proc::adopt("pipe-writer", child);
    let frames = kernel::read_frames(&mut pipe);
    assert_eq!(frames.len(), 20002);
    // The Hello comes first and says what follows.
    let (hello, payload) = &frames[0];
    assert_eq!((hello.kind, hello.seq), (Kind::Hello, 0));
    let hello = Hello::decode(payload).unwrap();
    assert_eq!(
        (hello.mode, hello.size, hello.count, hello.warmup),
        (Mode::Stream, 16, 20000, 0)
    );
    let frames = &frames[1..];
    for (i, (h, payload)) in frames[..20000].iter().enumerate() {
        assert_eq!(
            (h.kind, h.seq),
            (Kind::Data, i as u64),
            "frame {i} out of order"
        );
        assert_eq!(
            payload[..8],
            (i as u64).to_le_bytes(),
            "frame {i}'s payload"
        );
    }
    let (end, payload) = &frames[20000];
    assert_eq!((end.kind, end.seq), (Kind::End, 20000));
    assert_eq!(common::frame::parse_end(payload), Some((20000, 20000 * 16)));
    assert!(w.finish().status.success());
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

/// P4 in the kernel's tables: while `pipe-writer --spawn` runs, its child pipe-reader holds
/// the read end of a pipe whose write end the parent holds, and each holds only its own
/// end (the parent closed the read end it gave away, or the child could never see EOF).
#[test]
fn claim_p4_the_child_holds_the_read_end_and_the_parent_only_the_write_end() {
    let mut cmd = Command::new(WRITER);
    cmd.args(["--spawn", "--json"]).stdin(Stdio::piped());
    let mut w = Proc::spawn("pipe-writer --spawn", &mut cmd);
    w.write_stdin(b"from parent to child\n");
    w.wait_for("from parent to child");
    let children = kernel::children(w.pid());
    assert_eq!(children.len(), 1, "{children:?}");
    let child = children[0];
    let stdin = kernel::fd(child, 0);
    assert!(
        stdin.target.starts_with("pipe:[") && stdin.access == 0,
        "{stdin:?}"
    );
    let ends = |pid: i32| -> Vec<u32> {
        kernel::fds(pid)
            .into_iter()
            .filter(|l| l.target == stdin.target)
            .map(|l| l.access)
            .collect()
    };
    assert_eq!(
        ends(w.pid()),
        vec![1],
        "the parent's ends of {}",
        stdin.target
    );
    assert_eq!(
        ends(child),
        vec![0, 0],
        "the child's ends (fd 0 and its dup)"
    );
    w.close_stdin();
    let d = w.finish();
    assert!(d.status.success(), "{}", d.stderr);
    assert_eq!(d.report("reader", false).count, 1);
}

/// P5: a shell pipeline cannot do pingpong (one pipe); spawn mode makes two and can.
#[test]
fn claim_p5_two_way_needs_two_pipes() {
    let (w, r) = shell_pair(&["--mode", "pingpong"], &["--mode", "pingpong"]);
    let wd = w.finish();
    let rd = r.finish();
    // Two flags that contradict each other (pingpong, and no --spawn or --back-fd): a bad
    // flag value, exit 2 (it was 1 before issue 12).
    assert_eq!(wd.status.code(), Some(2), "{}", wd.stderr);
    assert!(
        wd.stderr.contains("--mode pingpong needs --spawn") && wd.stderr.contains("two pipes (P5)"),
        "{}",
        wd.stderr
    );
    assert_eq!(rd.status.code(), Some(2), "{}", rd.stderr);
    assert!(
        rd.stderr.contains("--mode pingpong needs --back-fd")
            && rd.stderr.contains("second pipe for the answers (P5)"),
        "{}",
        rd.stderr
    );
    let d = spawn_writer(&["--mode", "pingpong", "--count", "50"], b"");
    assert!(d.status.success(), "{}", d.stderr);
}

/// P5, the kernel's reason: a process that writes on a pipe and then reads from the same
/// pipe reads back its own message (the peer finds nothing); with two pipes the message
/// stays on the way there and the answer comes on the way back.
#[test]
fn claim_p5_one_pipe_both_ways_reads_back_its_own_message() {
    use nix::unistd::{pipe2, read, write};
    let mut buf = [0u8; 64];
    // One pipe, both ends held, as by a process that would talk and listen on it.
    let (r, w) = pipe2(OFlag::O_NONBLOCK).unwrap();
    assert_eq!(write(&w, b"ping from A"), Ok(11));
    let n = read(&r, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"ping from A", "A read back its own message");
    assert_eq!(
        read(&r, &mut buf),
        Err(Errno::EAGAIN),
        "and nothing is left for B"
    );
    // Two pipes: A writes on `there` and listens on `back`; its own message is not there.
    let (there_r, there_w) = pipe2(OFlag::O_NONBLOCK).unwrap();
    let (back_r, back_w) = pipe2(OFlag::O_NONBLOCK).unwrap();
    assert_eq!(write(&there_w, b"ping from A"), Ok(11));
    assert_eq!(read(&back_r, &mut buf), Err(Errno::EAGAIN));
    // B reads the ping from `there` and answers on `back`, which A reads.
    let n = read(&there_r, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"ping from A");
    assert_eq!(write(&back_w, b"pong from B"), Ok(11));
    let n = read(&back_r, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"pong from B");
}

/// P5 in spawn mode, from the reader's side: a shell stands in for pipe-reader, looks at
/// what it inherited, then `exec`s the real reader. Its stdin (the way there) and
/// `--back-fd` (the way back) are two different pipes, one end each: read and write.
#[test]
fn claim_p5_spawn_pingpong_gives_the_reader_two_different_pipes() {
    let look = r#"eval "back=\${$#}"; for fd in 0 $back; do echo "fd $fd $(readlink /proc/$$/fd/$fd) $(grep flags: /proc/$$/fdinfo/$fd)" >&2; done; exec "$0" "$@""#;
    let d = spawn_writer(
        &[
            "--mode",
            "pingpong",
            "--count",
            "20",
            "--json",
            "--reader-exe",
            "/bin/sh",
            "--reader-arg=-c",
            &format!("--reader-arg={look}"),
            &format!("--reader-arg={READER}"),
        ],
        b"",
    );
    assert!(d.status.success(), "{}", d.stderr);
    assert!(d.report("writer", false).verified);
    let seen: Vec<(String, u32)> = d
        .stderr
        .lines()
        .filter(|l| l.starts_with("fd "))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let flags = u32::from_str_radix(f[4], 8).unwrap();
            (f[2].to_string(), flags & 3)
        })
        .collect();
    assert_eq!(seen.len(), 2, "{}", d.stderr);
    let ((there, there_mode), (back, back_mode)) = (&seen[0], &seen[1]);
    assert!(
        there.starts_with("pipe:[") && back.starts_with("pipe:["),
        "{seen:?}"
    );
    assert_ne!(there, back, "both directions on one pipe");
    assert_eq!((*there_mode, *back_mode), (0, 1), "{seen:?}");
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
        tx.send(nix::unistd::gettid().as_raw() as i64).unwrap();
        let n = nix::unistd::write(&w, b"one more").unwrap();
        tx.send(n as i64).unwrap();
    });
    // The kernel says the thread sleeps inside write(2), and the write has not returned.
    let tid = rx.recv().unwrap() as i32;
    kernel::wait_until_blocked_in(tid, &[libc::SYS_write], "write on a full pipe");
    assert!(
        rx.try_recv().is_err(),
        "write returned although the pipe was full"
    );
    // ...until the reader reads a page, and then it completes.
    let mut page = vec![0u8; 4096];
    assert_eq!(nix::unistd::read(&r, &mut page).unwrap(), 4096);
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), 8);
    t.join().unwrap();
}

/// P6, the note's own case: `read` on an empty pipe sleeps in the kernel until a write
/// comes; once every write end is closed it returns 0 (end of file) instead of blocking.
#[test]
fn claim_p6_read_blocks_on_an_empty_pipe_until_a_write() {
    let (r, w) = nix::unistd::pipe().unwrap();
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        tx.send(nix::unistd::gettid().as_raw()).unwrap();
        let mut buf = [0u8; 64];
        let n = nix::unistd::read(&r, &mut buf).unwrap();
        (r, buf[..n].to_vec())
    });
    let tid = rx.recv().unwrap();
    kernel::wait_until_blocked_in(tid, &[libc::SYS_read], "read on an empty pipe");
    assert!(!t.is_finished(), "read returned from an empty pipe");
    assert_eq!(nix::unistd::write(&w, b"wake up"), Ok(7));
    let (r, got) = t.join().unwrap();
    assert_eq!(got, b"wake up");
    drop(w);
    let mut buf = [0u8; 8];
    assert_eq!(
        nix::unistd::read(&r, &mut buf),
        Ok(0),
        "no writer left: end of file"
    );
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
        .find(|n| n.contains("for room (the pipe was full, P6)"))
        .unwrap();
    assert!(
        note.starts_with("write() waited ") && !note.contains("waited 0 times"),
        "{note}"
    );
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
    frame_of(Kind::Data, seq, payload)
}

fn frame_of(kind: Kind, seq: u64, payload: &[u8]) -> Vec<u8> {
    let f = Fields {
        kind,
        flags: 0,
        nonce: 42,
        seq,
        sent_ns: 1,
    };
    let mut v = encode_header(f, payload).unwrap().to_vec();
    v.extend_from_slice(payload);
    v
}

/// The Hello a stream writer of session 42 sends first: frames before it are skipped.
fn hello_frame() -> Vec<u8> {
    let hello = Hello {
        program: "a test".into(),
        version: common::hello::VERSION.into(),
        mode: Mode::Stream,
        size: 8,
        count: 1,
        warmup: 0,
        flavour: "shell".into(),
        wait: Wait::Block,
        capacity: 0,
        verify: common::hello::Verify::Full,
        zero_copy: false,
    };
    frame_of(Kind::Hello, 0, &hello.encode())
}

#[test]
fn a_writer_gone_mid_frame_is_a_truncated_stream() {
    let mut bytes = hello_frame();
    bytes.extend_from_slice(&frame(0, &0u64.to_le_bytes()));
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
    // A terminal's Ctrl-C leaves stdin open; `finish` closes it, which must not reach the
    // writer before its own signal thread has taken the interrupt (under load it could:
    // end of input, End, EPIPE from the reader already gone, exit 1).
    p.wait_for(&format!("[pipe-writer {}] interrupted by SIGINT", p.pid()));
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
    // A value only the program can check exits 2, as clap's own checks do (README).
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--pipe-size 1024 is out of range: 4096 to"),
        "{err}"
    );
    // The upper limit comes from /proc, and the message says so.
    let max: usize = fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // (--pipe-size takes up to 4 GiB, so any pipe-max-size the kernel allows is checked
    // by the program, which names it.)
    let above = (max + 1).to_string();
    let (code, err) = run_alone(WRITER, &["--spawn", "--pipe-size", &above]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "--pipe-size {above} is out of range: 4096 to {max} bytes (/proc/sys/fs/pipe-max-size)"
        )),
        "{err}"
    );
}

/// Runs one program with no peer, stdin empty; returns its exit status and stderr.
fn run_alone(bin: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null());
    let d = Proc::spawn(bin.rsplit('/').next().unwrap_or(bin), &mut cmd).finish();
    (d.status.code(), d.stderr)
}

/// Issue 12: every value only the program can check (after clap) is a bad flag value,
/// exit 2 like clap's own, with a message naming the flag and the limit, before any pipe
/// exists. (`--back-fd 1` exited 1 before issue 12.)
#[test]
fn values_only_the_program_can_check_exit_2_and_name_the_flag() {
    let cases: [(&str, &[&str], &[&str]); 5] = [
        (
            READER,
            &["--back-fd", "1"],
            &["--back-fd 1: must be 3 or more", "standard streams"],
        ),
        (
            READER,
            &["--back-fd", "100000"],
            &["--back-fd 100000: no such open descriptor (EBADF)"],
        ),
        (
            READER,
            &["--mode", "pingpong"],
            &["--mode pingpong needs --back-fd", "(P5)"],
        ),
        (
            WRITER,
            &["--mode", "pingpong"],
            &["--mode pingpong needs --spawn", "two pipes (P5)"],
        ),
        (
            WRITER,
            &["--spawn", "--reader-exe", "/nonexistent/pipe-reader"],
            &["--reader-exe /nonexistent/pipe-reader: no such file"],
        ),
    ];
    for (bin, args, needles) in cases {
        let (code, err) = run_alone(bin, args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{args:?}: no {n:?} in {err}");
        }
        // Refused at the start: no run began.
        assert!(
            !err.contains("reading from the pipe") && !err.contains("started pipe-reader"),
            "{args:?}: {err}"
        );
    }
    // An open descriptor that is not a pipe: the shell opens /dev/null as fd 7 and names
    // it as the way back.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "exec \"$0\" --back-fd 7 7</dev/null", READER])
        .stdin(Stdio::null());
    let d = Proc::spawn("sh -c pipe-reader", &mut cmd).finish();
    assert_eq!(d.status.code(), Some(2), "{}", d.stderr);
    assert!(
        d.stderr
            .contains("--back-fd 7: the descriptor is not a pipe"),
        "{}",
        d.stderr
    );
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

/// The kernel's limit for an unprivileged pipe, `/proc/sys/fs/pipe-max-size`.
fn pipe_max_size() -> usize {
    fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Issue 10: `pipe-writer --mode stream | pipe-reader` used to print 110,000 lines of
/// binary payload (the reader ran text mode). The reader now follows the writer's Hello:
/// stream mode, verified, and nothing on stdout but its report.
#[test]
fn a_reader_without_flags_follows_a_stream_writer() {
    let wargs = ["--mode", "stream", "--count", "3000", "--size", "4K"];
    let (w, r) = shell_pair(&wargs, &[]);
    let (wd, rd) = (w.finish(), r.finish());
    assert!(wd.ok() && rd.ok(), "{}\n{}", wd.stderr, rd.stderr);
    let cap = wd
        .stderr
        .lines()
        .find_map(|l| l.split_once("pipe capacity: ")?.1.split_once(' '))
        .map(|(n, _)| n.to_string())
        .expect("the writer's capacity line");
    for needle in [
        "the writer's Hello: pipe-writer ",
        " runs --mode stream --size 4096 --count 3000 --warmup 300 (shell, waits: block, ",
        &format!("capacity {cap} B)"),
        "; this reader follows it",
    ] {
        assert!(
            rd.stderr.contains(needle),
            "no {needle:?} in:\n{}",
            rd.stderr
        );
    }
    assert!(
        rd.stdout.starts_with(
            "pipe-reader stream (pipe shell, wait: block): 3000 messages x 4096 B, verified"
        ),
        "{}",
        rd.stdout
    );
    // Its report and nothing else: no message was printed as a line of text.
    assert!(
        rd.stdout.len() < 2000 && !rd.stdout.contains("#0 ("),
        "{} bytes on stdout:\n{}",
        rd.stdout.len(),
        rd.stdout
    );
}

/// Spawn mode starts pipe-reader with no mode flags: a shell stands in for it, prints the
/// arguments it was given, then runs the real reader, which follows the pingpong Hello.
#[test]
fn spawn_mode_starts_the_reader_without_mode_flags_and_it_follows_pingpong() {
    let look = r#"echo "reader argv: $*" >&2; exec "$0" "$@""#;
    let d = spawn_writer(
        &[
            "--mode",
            "pingpong",
            "--count",
            "30",
            "--size",
            "100",
            "--json",
            "--reader-exe",
            "/bin/sh",
            "--reader-arg=-c",
            &format!("--reader-arg={look}"),
            &format!("--reader-arg={READER}"),
        ],
        b"",
    );
    assert!(d.ok(), "{}", d.stderr);
    let argv = d
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("reader argv: "))
        .expect("the reader's arguments");
    for given in ["--spawned", "--json", "--back-fd "] {
        assert!(argv.contains(given), "{argv}");
    }
    for not_given in [
        "--mode",
        "--size",
        "--count",
        "--warmup",
        "--timeout",
        "--name",
    ] {
        assert!(!argv.contains(not_given), "{argv}");
    }
    assert!(
        d.stderr
            .contains("runs --mode pingpong --size 100 --count 30 --warmup 3 (spawn, ")
            && d.stderr.contains("; this reader follows it"),
        "{}",
        d.stderr
    );
    let rr = d.report("reader", false);
    assert_eq!((rr.mode.as_str(), rr.count), ("pingpong", 30), "{rr:?}");
    let wr = d.report("writer", false);
    assert!(wr.verified && wr.count == 30, "{wr:?}");
}

/// A reader flag that contradicts the writer's Hello: the reader says both values and the
/// fix and exits 1; the writer finds the pipe closed and exits 1 too. Both directions:
/// a pingpong reader (given a way back, its own stdout as fd 3, so that its flags pass the
/// start check) with a stream writer, and a stream reader spawned by a pingpong writer.
#[test]
fn a_mode_mismatch_is_named_by_the_reader_and_ends_both() {
    let mut r = Command::new("sh");
    r.args([
        "-c",
        r#"exec "$0" --mode pingpong --back-fd 3 3>&1"#,
        READER,
    ]);
    let mut w = Command::new(WRITER);
    w.args(["--mode", "stream", "--count", "1e6", "--size", "4K"]);
    let (w, r) = pipeline(w, r);
    let (wd, rd) = (w.finish(), r.finish());
    assert_eq!(rd.status.code(), Some(1), "{}", rd.stderr);
    for needle in [
        "error: the writer (pipe-writer) runs --mode stream --size 4096 --count 1000000 --warmup 10000",
        "this reader was started with --mode pingpong",
        "restart the reader without --mode, or with --mode stream",
    ] {
        assert!(rd.stderr.contains(needle), "no {needle:?} in:\n{}", rd.stderr);
    }
    assert!(!rd.stderr.contains("verified"), "{}", rd.stderr);
    assert_eq!(wd.status.code(), Some(1), "{}", wd.stderr);
    assert!(
        wd.stderr.contains("error: reader closed the pipe"),
        "{}",
        wd.stderr
    );

    let d = spawn_writer(
        &[
            "--mode",
            "pingpong",
            "--count",
            "50",
            "--reader-arg=--mode",
            "--reader-arg=stream",
        ],
        b"",
    );
    assert_eq!(d.status.code(), Some(1), "{}", d.stderr);
    for needle in [
        "runs --mode pingpong --size 64 --count 50 --warmup 5",
        "this reader was started with --mode stream",
        "restart the reader without --mode, or with --mode pingpong",
        "error: reader closed the pipe",
    ] {
        assert!(d.stderr.contains(needle), "no {needle:?} in:\n{}", d.stderr);
    }
}

/// `pipe-reader --size 16 --count 10` used to be ignored; now both are checks, and a
/// writer of 4096-byte messages is refused with both values and the fix.
#[test]
fn a_size_mismatch_is_named_by_the_reader_and_ends_both() {
    let (w, r) = shell_pair(
        &["--mode", "stream", "--count", "1e6", "--size", "4096"],
        &["--size", "16", "--count", "10"],
    );
    let (wd, rd) = (w.finish(), r.finish());
    assert_eq!(rd.status.code(), Some(1), "{}", rd.stderr);
    for needle in [
        "the writer (pipe-writer) runs --mode stream --size 4096 --count 1000000 --warmup 10000",
        "this reader was started with --size 16 --count 10",
        "restart the reader without --size --count, or with --size 4096 --count 1000000",
    ] {
        assert!(
            rd.stderr.contains(needle),
            "no {needle:?} in:\n{}",
            rd.stderr
        );
    }
    assert_eq!(wd.status.code(), Some(1), "{}", wd.stderr);
    assert!(
        wd.stderr.contains("error: reader closed the pipe"),
        "{}",
        wd.stderr
    );
}

/// The long flags a program's `--help` lists, and the help text.
fn help(bin: &str) -> (std::collections::BTreeSet<String>, String) {
    let d = Proc::spawn(
        "--help",
        Command::new(bin).arg("--help").stdin(Stdio::null()),
    )
    .finish();
    assert!(d.ok(), "{}", d.stderr);
    let flags = d
        .stdout
        .lines()
        .filter(|l| l.trim_start().starts_with('-'))
        .filter_map(|l| l.split_whitespace().find(|t| t.starts_with("--")))
        .map(|t| t.trim_end_matches(',').to_string())
        .collect();
    (flags, d.stdout)
}

/// Issue 10, flags per role: each program lists only the flags that act on it (no
/// `--name` or `--timeout`: an anonymous pipe is inherited, not met), with real defaults.
#[test]
fn help_lists_only_each_programs_flags_with_real_defaults() {
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    let (flags, text) = help(WRITER);
    assert_eq!(
        flags,
        set(&[
            "--mode",
            "--count",
            "--size",
            "--warmup",
            "--json",
            "--quiet",
            "--spawn",
            "--pipe-size",
            "--splice",
            "--help"
        ]),
        "{text}"
    );
    for default in ["[default: text]", "[default: 100000]", "[default: 64]"] {
        assert!(text.contains(default), "no {default} in:\n{text}");
    }
    let (flags, text) = help(READER);
    assert_eq!(
        flags,
        set(&[
            "--mode",
            "--count",
            "--size",
            "--warmup",
            "--json",
            "--quiet",
            "--back-fd",
            "--max-size",
            "--help"
        ]),
        "{text}"
    );
    assert_eq!(
        text.matches("[default: follow the writer]").count(),
        4,
        "{text}"
    );
    assert!(text.contains("[default: 16MiB]"), "{text}");
    // Flags that would do nothing here are refused, not silently accepted.
    for (bin, flag) in [
        (WRITER, "--name"),
        (WRITER, "--timeout"),
        (READER, "--name"),
        (READER, "--timeout"),
    ] {
        let (code, err) = run_alone(bin, &[flag, "x"]);
        assert_eq!(code, Some(2), "{bin} {flag}: {err}");
        assert!(
            err.contains(&format!("unexpected argument '{flag}'")),
            "{err}"
        );
    }
}

/// `--pipe-size` is checked by the program against the kernel's limit, and the error names
/// that limit (it said "16 MiB", the message size limit, before issue 10).
#[test]
fn a_pipe_size_above_pipe_max_size_names_the_kernel_limit() {
    let max = pipe_max_size();
    if max >= 100 << 20 {
        return common::testing::skip("pipe-max-size is 100 MiB or more here");
    }
    for args in [
        &["--pipe-size", "100M"][..],
        &["--spawn", "--pipe-size", "100M"],
    ] {
        let (code, err) = run_alone(WRITER, args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "--pipe-size 104857600 is out of range: 4096 to {max} bytes (/proc/sys/fs/pipe-max-size)"
            )),
            "{args:?}: {err}"
        );
        assert!(!err.contains("16 MiB"), "{err}");
    }
}

/// P6 as it happens (issue 10): the reader of a long stream is stopped; half a second
/// into its wait the writer says it is blocked and why; the reader is resumed and the
/// writer says how long the wait lasted; the pair still completes, verified.
#[test]
fn claim_p6_a_stopped_reader_is_narrated_while_the_writer_waits() {
    let (mut w, r) = shell_pair(
        &[
            "--mode", "stream", "--count", "20000", "--size", "4K", "--json",
        ],
        &["--json"],
    );
    r.signal(Signal::SIGSTOP);
    w.wait_for("write() has been blocked for ");
    assert!(
        w.stderr_now()
            .contains(": the pipe is full (P6); the reader is not taking anything"),
        "{}",
        w.stderr_now()
    );
    r.signal(Signal::SIGCONT);
    w.wait_for(": the pipe was full (P6); going on");
    let (wd, rd) = (w.finish(), r.finish());
    assert!(wd.ok() && rd.ok(), "{}\n{}", wd.stderr, rd.stderr);
    assert!(wd.stderr.contains("write() blocked for "), "{}", wd.stderr);
    let rr = rd.report("reader", false);
    assert!(rr.verified && rr.count == 20000, "{rr:?}");
    let notes = wd.report("writer", true).notes;
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("write() waited ")
                && n.contains("(the pipe was full, P6): longest ")),
        "{notes:?}"
    );
}

/// Issue 10: a holder of the pipe is shown by the name it was run by (`argv[0]`), not by
/// the kernel's 15-byte `comm`. The writer runs through a symbolic link with a long name.
#[test]
fn a_holder_of_the_pipe_is_shown_by_its_program_name_not_the_cut_comm() {
    let d = TestDir::new("pipe", "argv0");
    fs::create_dir_all(&d.path).unwrap();
    let name = "pipe-writer-by-a-much-longer-name";
    std::os::unix::fs::symlink(WRITER, d.join(name)).unwrap();
    let mut r = Command::new(READER);
    r.arg("--json");
    let (mut w, mut r) = pipeline(Command::new(d.join(name)), r);
    w.write_stdin(b"named\n");
    r.wait_for("named");
    let wpid = w.pid();
    w.close_stdin();
    let (wd, rd) = (w.finish(), r.finish());
    assert!(wd.ok() && rd.ok(), "{}\n{}", wd.stderr, rd.stderr);
    assert!(
        rd.stderr.contains(&format!(
            "the write end is held by pid {wpid} ({name}), whose parent"
        )),
        "{}",
        rd.stderr
    );
    assert!(!rd.stderr.contains("(pipe-writer-by-)"), "{}", rd.stderr);
}

/// Issue 13 item 3, `--splice`: the sizes and pipe sizes a spliced stream is checked at.
/// 64 B frames fill one slot each (the most frames in the pipe at once, the largest K),
/// 4 KiB + header two, 64 KiB + 1 B just over a default pipe, 1 MiB sixteen pipes' worth;
/// `--pipe-size 4096` is a one-slot pipe: the writer waits on nearly every vmsplice, and
/// each buffer is rebuilt with the pipe as full as it gets. (size, count)
const SPLICE_CASES: [(usize, &str); 4] = [
    (64, "3000"),
    (4096, "1000"),
    (65537, "200"),
    (1 << 20, "20"),
];

/// K as the writer must have chosen it, from the capacity its report states.
fn splice_buffers(capacity: usize, size: usize) -> usize {
    pipe::splice::buffers_needed(capacity, HEADER_LEN + size, pipe::splice::page_size())
}

/// Checks one spliced stream: the reader verified every message, and the writer said at
/// start and in its report that it lent its frames from K buffers (K from its capacity).
fn assert_spliced(
    wd: &harness::Done,
    rd: &harness::Done,
    wr: common::timing::Report,
    size: usize,
    count: &str,
) {
    let case = format!("size {size}, count {count}");
    assert!(wd.ok() && rd.ok(), "{case}\n{}\n{}", wd.stderr, rd.stderr);
    let rr = rd.report("reader", false);
    let n: u64 = count.parse().unwrap();
    assert!(
        rr.verified && rr.count == n && rr.bytes == n * size as u64,
        "{case}: {rr:?}"
    );
    let cap: usize = wr
        .notes
        .iter()
        .find_map(|n| {
            n.strip_prefix("pipe capacity ")?
                .strip_suffix(" bytes")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{case}: no capacity in {:?}", wr.notes));
    let k = splice_buffers(cap, size);
    let lent = format!("vmsplice: frames lent to the pipe from {k} rotating buffers of ");
    assert!(
        wr.notes.iter().any(|n| n.starts_with(&lent)
            && n.ends_with("(no copy into the pipe; the reader's read() copies out)")),
        "{case}: {:?}",
        wr.notes
    );
    assert!(wd.stderr.contains(&format!("--splice: frames are lent to the pipe with vmsplice(2), not copied, from {k} buffers of ")), "{case}: {}", wd.stderr);
    assert!(
        !wr.notes
            .iter()
            .any(|n| n.starts_with("write:") || n.starts_with("write()")),
        "{case}: {:?}",
        wr.notes
    );
}

#[test]
fn splice_stream_in_spawn_mode_arrives_verified_at_every_size() {
    for pipe_size in [None, Some("4096")] {
        for (size, count) in SPLICE_CASES {
            let size_s = size.to_string();
            let mut args = vec![
                "--mode", "stream", "--splice", "--size", &size_s, "--count", count, "--json",
            ];
            args.extend(pipe_size.iter().flat_map(|p| ["--pipe-size", p]));
            let d = spawn_writer(&args, b"");
            // Spawn mode: both reports on the writer's stdout, the reader's narration on its stderr.
            assert_spliced(&d, &d, d.report("writer", false), size, count);
        }
    }
}

#[test]
fn splice_stream_in_a_shell_pipeline_arrives_verified_at_every_size() {
    for pipe_size in [None, Some("4096")] {
        for (size, count) in SPLICE_CASES {
            let size_s = size.to_string();
            let mut args = vec![
                "--mode", "stream", "--splice", "--size", &size_s, "--count", count, "--json",
            ];
            args.extend(pipe_size.iter().flat_map(|p| ["--pipe-size", p]));
            let (w, r) = shell_pair(&args, &["--json"]);
            let (wd, rd) = (w.finish(), r.finish());
            // Shell mode: stdout is the pipe, so the writer reports on stderr.
            let wr = wd.report("writer", true);
            assert_spliced(&wd, &rd, wr, size, count);
        }
    }
}

/// `--splice` with the reader stopped: the pipe fills with frames lent from all K buffers,
/// the writer waits in poll and says so (as vmsplice()), and when the reader resumes every
/// frame it reads is intact: no buffer was rebuilt while the pipe held its pages.
#[test]
fn splice_a_stopped_reader_leaves_every_lent_frame_intact() {
    let (mut w, r) = shell_pair(
        &[
            "--mode", "stream", "--splice", "--count", "20000", "--size", "64", "--json",
        ],
        &["--json"],
    );
    r.signal(Signal::SIGSTOP);
    w.wait_for("vmsplice() has been blocked for ");
    assert!(
        w.stderr_now()
            .contains(": the pipe is full (P6); the reader is not taking anything"),
        "{}",
        w.stderr_now()
    );
    r.signal(Signal::SIGCONT);
    w.wait_for("vmsplice() blocked for ");
    let (wd, rd) = (w.finish(), r.finish());
    assert!(wd.ok() && rd.ok(), "{}\n{}", wd.stderr, rd.stderr);
    let rr = rd.report("reader", false);
    assert!(rr.verified && rr.count == 20000, "{rr:?}");
    let notes = wd.report("writer", true).notes;
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("vmsplice() waited ") && n.contains("(the pipe was full, P6)")),
        "{notes:?}"
    );
}

/// `--splice` is for stream mode: text and pingpong are refused as a bad flag (exit 2)
/// naming the flag and the mode, before any pipe or child exists.
#[test]
fn splice_outside_stream_mode_is_a_bad_flag_naming_the_mode() {
    for (args, mode) in [
        (&["--splice"][..], "text"),
        (&["--spawn", "--splice"][..], "text"),
        (
            &["--spawn", "--mode", "pingpong", "--splice"][..],
            "pingpong",
        ),
    ] {
        let (code, err) = run_alone(WRITER, args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "--splice works with --mode stream only, and this run is --mode {mode}"
            )),
            "{args:?}: {err}"
        );
        assert!(
            !err.contains("started pipe-reader") && !err.contains("stdout is"),
            "{args:?}: {err}"
        );
    }
}

/// What `--splice` has to guard against, at the system-call level: `vmsplice` lends the
/// pipe the writer's page, so a change made after the call (and before the reader reads)
/// is what the reader gets; `write` copied, so a change after it is not.
#[test]
fn splice_lends_the_page_so_a_change_after_vmsplice_is_what_the_reader_reads() {
    use nix::fcntl::{vmsplice, SpliceFFlags};
    let (r, w) = nix::unistd::pipe().unwrap();
    let mut buf = vec![b'a'; 4096];
    let n = vmsplice(
        &w,
        &[std::io::IoSlice::new(&buf)],
        SpliceFFlags::SPLICE_F_NONBLOCK,
    )
    .unwrap();
    assert_eq!(n, 4096);
    buf.fill(b'b');
    let mut got = vec![0u8; 4096];
    assert_eq!(nix::unistd::read(&r, &mut got).unwrap(), 4096);
    assert!(
        got.iter().all(|&c| c == b'b'),
        "the pipe held a reference to the page, not a copy"
    );
    // write(2) copies: the change after it stays ours.
    assert_eq!(nix::unistd::write(&w, &buf).unwrap(), 4096);
    buf.fill(b'c');
    assert_eq!(nix::unistd::read(&r, &mut got).unwrap(), 4096);
    assert!(
        got.iter().all(|&c| c == b'b'),
        "write copied the bytes into the pipe"
    );
}
