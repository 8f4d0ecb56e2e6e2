//! Faults: a peer killed with kill -9, stale files, hostile headers and indices.

mod util;

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use common::ring::{self, offsets};
use util::{DoneExt, ProcExt, TestDir, READER, WRITER};

const ENDLESS: [&str; 8] = [
    "--mode",
    "stream",
    "--count",
    "1000000000",
    "--size",
    "1K",
    "--timeout",
    "20",
];

#[test]
fn writer_killed_reader_notices_and_exits_nonzero() {
    let dir = TestDir::new("kill_writer");
    let r = dir.spawn(READER, &ENDLESS, None);
    dir.wait_for(&dir.file());
    let w = dir.spawn(WRITER, &ENDLESS, None);
    std::thread::sleep(Duration::from_millis(400));
    w.kill9();
    // The reader checks the writer's pid every 100 ms while it waits.
    let r = r.wait_within(Duration::from_secs(10));
    assert!(!r.ok(), "{}", r.stderr);
    assert!(r.stderr.contains("is gone"), "{}", r.stderr);
    // Gone without End: the run failed, and the error says so.
    assert!(r.stderr.contains("without sending End"), "{}", r.stderr);
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    dir.finish();
}

#[test]
fn reader_killed_writer_notices_and_exits_nonzero() {
    let dir = TestDir::new("kill_reader");
    let w = dir.spawn(WRITER, &ENDLESS, None);
    dir.wait_for(&dir.file());
    let r = dir.spawn(READER, &ENDLESS, None);
    std::thread::sleep(Duration::from_millis(400));
    r.kill9();
    let w = w.wait_within(Duration::from_secs(10));
    assert!(!w.ok(), "{}", w.stderr);
    assert!(w.stderr.contains("is gone"), "{}", w.stderr);
    assert!(w.stderr.contains("messages; stopping"), "{}", w.stderr);
    assert_eq!(w.status.code(), Some(1), "{}", w.stderr);
    dir.finish();
}

#[test]
fn text_writer_notices_a_dead_reader_at_the_next_line() {
    use std::io::Write;
    let dir = TestDir::new("text_dead_reader");
    let (w, mut typing) = dir.spawn_typing(WRITER, &[]);
    dir.wait_for(&dir.file());
    let r = dir.spawn(READER, &[], None);
    let f = std::fs::File::open(dir.file()).unwrap();
    let t = std::time::Instant::now();
    let mut pid = [0u8; 4];
    while u32::from_le_bytes(pid) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the reader never attached"
        );
        std::thread::sleep(Duration::from_millis(5));
        f.read_exact_at(&mut pid, offsets::OPENER_PID as u64)
            .unwrap();
    }
    drop(f);
    r.kill9();
    // The ring has room, so nothing would block: the writer checks the reader per line (and
    // before its Hello, so it may have noticed already and gone: then the line finds no one).
    match typing.write_all(b"anyone there?\n") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.unwrap(),
    }
    let w = w.wait_within(Duration::from_secs(10));
    drop(typing);
    assert_eq!(w.status.code(), Some(1), "{}", w.stderr);
    assert!(w.stderr.contains("is gone"), "{}", w.stderr);
    dir.finish();
}

#[test]
fn a_stale_ring_file_of_a_killed_run_is_replaced() {
    let dir = TestDir::new("stale_ring");
    // A writer that created the file and waits for a reader, killed: its file stays.
    let w = dir.spawn(WRITER, &["--mode", "stream", "--count", "100"], None);
    dir.wait_for(&dir.file());
    std::thread::sleep(Duration::from_millis(200));
    w.kill9();
    assert!(dir.file().exists(), "kill -9 leaves the file behind");
    let args = ["--mode", "stream", "--count", "100", "--timeout", "20"];
    let r = dir.spawn(READER, &args, None);
    std::thread::sleep(Duration::from_millis(200));
    let w = dir.spawn(WRITER, &args, None).finish();
    let r = r.finish();
    w.assert_ok("writer");
    r.assert_ok("reader");
    assert!(
        r.stderr.contains("is stale") && r.stderr.contains("is gone"),
        "{}",
        r.stderr
    );
    dir.finish();
}

/// Writes a ring header for the default capacity into a new file of the right length.
fn forge_ring_file(path: &Path, creator_pid: u32, role: u32) -> std::fs::File {
    let cap = ring::DEFAULT_CAPACITY;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.set_len(ring::region_len(cap) as u64).unwrap();
    let mut h = [0u8; 64];
    h[0..8].copy_from_slice(&ring::RING_MAGIC.to_le_bytes());
    h[8..12].copy_from_slice(&ring::RING_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&1u32.to_le_bytes());
    h[16..24].copy_from_slice(&(cap as u64).to_le_bytes());
    h[24..32].copy_from_slice(&(ring::region_len(cap) as u64).to_le_bytes());
    h[32..40].copy_from_slice(&7u64.to_le_bytes());
    h[40..44].copy_from_slice(&creator_pid.to_le_bytes());
    h[48..52].copy_from_slice(&role.to_le_bytes());
    f.write_all_at(&h, 0).unwrap();
    f
}

#[test]
fn a_hostile_header_is_a_clean_error() {
    let dir = TestDir::new("hostile_header");
    // A "live" creator (this test process) with a role that is neither writer nor reader.
    forge_ring_file(&dir.file(), std::process::id(), 9);
    let r = dir
        .spawn(READER, &["--mode", "stream", "--timeout", "5"], None)
        .finish();
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("corrupt shared region") && r.stderr.contains("creator_role 9"),
        "{}",
        r.stderr
    );
    std::fs::remove_file(dir.file()).unwrap();

    // Not a ring at all: refused, and never removed (it may be somebody's data).
    std::fs::write(dir.file(), vec![0xAB; 8192]).unwrap();
    let w = dir
        .spawn(WRITER, &["--mode", "stream", "--timeout", "5"], None)
        .finish();
    assert_eq!(w.status.code(), Some(1));
    assert!(w.stderr.contains("not a ring file"), "{}", w.stderr);
    assert!(dir.file().exists());
    std::fs::remove_file(dir.file()).unwrap();
    dir.finish();
}

#[test]
fn a_scribbled_index_is_a_clean_error() {
    let dir = TestDir::new("hostile_index");
    // We pose as the creating writer; the reader attaches and waits for frames.
    let f = forge_ring_file(&dir.file(), std::process::id(), 1);
    let r = dir.spawn(
        READER,
        &["--mode", "stream", "--wait", "block", "--timeout", "10"],
        None,
    );
    let t = std::time::Instant::now();
    let mut pid = [0u8; 4];
    while u32::from_le_bytes(pid) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the reader never attached"
        );
        std::thread::sleep(Duration::from_millis(5));
        f.read_exact_at(&mut pid, offsets::OPENER_PID as u64)
            .unwrap();
    }
    // A producer index that is not a multiple of 64 and more than the ring holds.
    f.write_all_at(
        &(ring::DEFAULT_CAPACITY as u64 * 3 + 5).to_le_bytes(),
        offsets::head(0) as u64,
    )
    .unwrap();
    let r = r.wait_within(Duration::from_secs(10));
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("corrupt shared region"), "{}", r.stderr);
    drop(f);
    dir.finish();
}

#[test]
fn a_symlink_in_place_of_the_file_is_refused() {
    let dir = TestDir::new("symlink");
    let target = dir.path.join("elsewhere");
    std::fs::write(&target, b"x").unwrap();
    std::os::unix::fs::symlink(&target, dir.file()).unwrap();
    let w = dir
        .spawn(WRITER, &["--mode", "stream", "--timeout", "2"], None)
        .finish();
    assert_eq!(w.status.code(), Some(1));
    assert!(w.stderr.contains("symlink"), "{}", w.stderr);
    std::fs::remove_file(dir.file()).unwrap();
    std::fs::remove_file(&target).unwrap();
    dir.finish();
}

#[test]
fn sigterm_removes_what_the_program_owns_and_exits_130() {
    let dir = TestDir::new("sigterm");
    let w = dir.spawn(WRITER, &["--mode", "stream", "--timeout", "20"], None);
    dir.wait_for(&dir.file());
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: sending SIGTERM to our own child process, whose pid we hold.
    unsafe { libc::kill(w.pid(), libc::SIGTERM) };
    let w = w.wait_within(Duration::from_secs(10));
    assert_eq!(w.status.code(), Some(130), "{}", w.stderr);
    assert!(!dir.file().exists(), "the signal thread removed the file");
    dir.finish();
}

/// Liveness by identity: a ring file left by a killed writer whose recorded creator pid now
/// names a live, unrelated process (simulated: a `sleep` child's pid written into the
/// header, the dead writer's start time left as recorded) is still judged stale and
/// replaced; a pid alone would have kept it "alive" and the new pair would have failed.
#[test]
fn a_reused_creator_pid_does_not_keep_a_stale_ring_file_alive() {
    use std::os::unix::fs::FileExt;
    let dir = TestDir::new("reused_pid");
    let w = dir.spawn(WRITER, &["--mode", "stream", "--count", "100"], None);
    dir.wait_for(&dir.file());
    std::thread::sleep(Duration::from_millis(200));
    w.kill9();
    let mut unrelated = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = unrelated.id();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.file())
        .unwrap();
    file.write_all_at(
        &pid.to_le_bytes(),
        common::ring::offsets::CREATOR_PID as u64,
    )
    .unwrap();
    drop(file);
    let args = ["--mode", "stream", "--count", "100", "--timeout", "20"];
    let r = dir.spawn(READER, &args, None);
    std::thread::sleep(Duration::from_millis(200));
    let w = dir.spawn(WRITER, &args, None).finish();
    let r = r.finish();
    let _ = unrelated.kill();
    let _ = unrelated.wait();
    w.assert_ok("writer");
    r.assert_ok("reader");
    assert!(
        r.stderr
            .contains(&format!("its creator (pid {pid}) is gone")),
        "the live pid with another start time is not the creator:\n{}",
        r.stderr
    );
    dir.finish();
}
