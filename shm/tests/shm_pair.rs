//! Process-level tests of shm-writer and shm-reader: every mode, both flavours, both start
//! orders, every wait strategy, and the faults (a peer killed with -9, a hostile or bogus
//! object, a stale one, another user's one). The claim tests (S1-S5) are in `claims.rs`.
//! Each test has its own `--name` and runtime directory and checks that nothing is left
//! in /dev/shm, `ipcs -m` or that directory. No test asserts a timing.

mod harness;

use std::os::unix::fs::FileExt;
use std::process::Stdio;

use common::ring::{offsets, region_len};
use harness::{assert_verified, pair, Scene, WRITER};
use nix::sys::signal::Signal;

fn stream_and_pingpong(flavour: &[&str], wait: &str, reader_first: bool) {
    let tag = format!("sp-{}-{wait}-{reader_first}", flavour.len());
    let s = Scene::new(&tag);
    let mut common = vec![
        "--json",
        "--wait",
        wait,
        "--capacity",
        "64K",
        "--timeout",
        "20",
    ];
    common.extend_from_slice(flavour);
    let mut wargs = common.clone();
    wargs.extend_from_slice(&["--mode", "stream", "--count", "3000", "--size", "3000"]);
    let mut rargs = common.clone();
    rargs.extend_from_slice(&["--mode", "stream"]);
    let (w, r) = pair(&s, &wargs, &rargs, reader_first);
    assert_verified(&w, &r);
    let rr = r.any_report();
    assert_eq!((rr.count, rr.bytes, rr.warmup), (3000, 3000 * 3000, 300));
    assert_eq!(rr.wait, wait);
    assert_eq!(
        rr.flavour,
        if flavour.is_empty() { "posix" } else { "sysv" }
    );
    s.assert_clean();

    let mut wargs = common.clone();
    wargs.extend_from_slice(&["--mode", "pingpong", "--count", "500", "--size", "100"]);
    let mut rargs = common;
    rargs.extend_from_slice(&["--mode", "pingpong"]);
    let (w, r) = pair(&s, &wargs, &rargs, !reader_first);
    assert_verified(&w, &r);
    let wr = w.any_report();
    assert_eq!((wr.count, wr.latency_kind.as_str()), (500, "round_trip"));
    assert!(wr.latency_ns.is_some());
    s.assert_clean();
}

#[test]
fn posix_stream_and_pingpong_spin() {
    stream_and_pingpong(&[], "spin", false);
}

#[test]
fn posix_stream_and_pingpong_block() {
    stream_and_pingpong(&[], "block", true);
}

#[test]
fn posix_stream_and_pingpong_adaptive() {
    stream_and_pingpong(&[], "adaptive", false);
}

#[test]
fn sysv_stream_and_pingpong_spin() {
    stream_and_pingpong(&["--sysv"], "spin", true);
}

#[test]
fn sysv_stream_and_pingpong_block() {
    stream_and_pingpong(&["--sysv"], "block", false);
}

#[test]
fn sysv_stream_and_pingpong_adaptive() {
    stream_and_pingpong(&["--sysv"], "adaptive", true);
}

fn text_mode(flavour: &[&str], reader_first: bool) {
    let s = Scene::new(&format!("text-{}-{reader_first}", flavour.len()));
    let mut wcmd = s.cmd(WRITER, flavour);
    wcmd.stdin(Stdio::piped());
    let mut rargs = vec!["--json"];
    rargs.extend_from_slice(flavour);
    let (w, r) = if reader_first {
        let mut r = s.reader(&rargs);
        r.wait_for("waiting up to");
        let mut w = harness::Proc::spawn("shm-writer", &mut wcmd);
        w.write_stdin(b"hello\nshared memory\n");
        (w.finish(), r.finish())
    } else {
        let mut w = harness::Proc::spawn("shm-writer", &mut wcmd);
        w.write_stdin(b"hello\nshared memory\n");
        w.wait_for("waiting up to");
        let r = s.reader(&rargs);
        (w.finish(), r.finish())
    };
    assert!(w.ok(), "{}", w.stderr);
    assert!(r.ok(), "{}", r.stderr);
    assert!(
        r.stdout.contains("#0 (5 B") && r.stdout.contains(": hello"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("#1 (13 B") && r.stdout.contains(": shared memory"),
        "{}",
        r.stdout
    );
    let rep = r.any_report();
    assert!(rep.verified);
    assert_eq!((rep.count, rep.bytes), (2, 18));
    s.assert_clean();
}

#[test]
fn text_mode_posix_writer_first() {
    text_mode(&[], false);
}

#[test]
fn text_mode_sysv_reader_first() {
    text_mode(&["--sysv"], true);
}

#[test]
fn bad_flags_are_refused_before_any_object_exists() {
    let s = Scene::new("flags");
    let w = s.writer(&["--capacity", "3000"]).finish();
    assert_eq!(w.status.code(), Some(2));
    assert!(
        w.stderr.contains("--capacity") && w.stderr.contains("power of two"),
        "{}",
        w.stderr
    );
    let w = s
        .writer(&["--mode", "stream", "--size", "64K", "--capacity", "128K"])
        .finish();
    // The program's own check (after clap's), a bad flag value all the same: status 2.
    assert_eq!(w.status.code(), Some(2), "{}", w.stderr);
    assert!(
        w.stderr
            .contains("--size 65536 does not fit --capacity 131072"),
        "{}",
        w.stderr
    );
    assert!(w.stderr.contains("--capacity 262144"), "{}", w.stderr);
    s.assert_clean();
}

#[test]
fn a_lone_side_times_out_and_cleans_up() {
    let s = Scene::new("lone");
    let r = s.reader(&["--timeout", "0.3"]).finish();
    assert!(!r.ok());
    assert!(r.stderr.contains("no writer opened"), "{}", r.stderr);
    s.assert_clean();
}

fn kill_one_side(flavour: &[&str], kill_writer: bool) {
    let s = Scene::new(&format!("kill-{}-{kill_writer}", flavour.len()));
    let mut args = vec!["--mode", "stream", "--timeout", "20", "--capacity", "64K"];
    args.extend_from_slice(flavour);
    let mut wargs = args.clone();
    wargs.extend_from_slice(&["--count", "1e9", "--size", "64"]);
    let mut r = s.reader(&args);
    r.wait_for("waiting up to");
    let mut w = s.writer(&wargs);
    w.wait_for("stream mode");
    r.wait_for("waiting for frames");
    std::thread::sleep(std::time::Duration::from_millis(100));
    let (victim, survivor) = if kill_writer { (w, r) } else { (r, w) };
    let victim_pid = victim.pid();
    victim.kill9();
    let d = survivor.finish();
    assert!(!d.ok(), "the survivor must fail:\n{}", d.stderr);
    assert!(
        d.stderr
            .contains(&format!("peer (pid {victim_pid}) is gone")),
        "{}",
        d.stderr
    );
    s.assert_clean();
}

#[test]
fn kill9_writer_posix_reader_notices() {
    kill_one_side(&[], true);
}

#[test]
fn kill9_reader_posix_writer_notices() {
    kill_one_side(&[], false);
}

#[test]
fn kill9_writer_sysv_reader_notices() {
    kill_one_side(&["--sysv"], true);
}

#[test]
fn kill9_reader_sysv_writer_notices() {
    kill_one_side(&["--sysv"], false);
}

/// A run killed with -9 leaves its object; the next run finds it stale and replaces it.
fn stale_is_replaced(flavour: &[&str]) {
    let s = Scene::new(&format!("stale-{}", flavour.len()));
    let mut r = s.reader(flavour);
    r.wait_for("waiting up to");
    r.kill9();
    let left = if flavour.is_empty() {
        std::path::Path::new(&s.posix_path()).exists()
    } else {
        s.sysv_id().is_some()
    };
    assert!(left, "kill -9 leaves the object behind");
    let mut wargs = vec!["--mode", "stream", "--count", "100"];
    wargs.extend_from_slice(flavour);
    let mut rargs = vec!["--mode", "stream"];
    rargs.extend_from_slice(flavour);
    let (w, r) = pair(&s, &wargs, &rargs, false);
    assert!(w.ok() && r.ok(), "{}\n{}", w.stderr, r.stderr);
    assert!(w.stderr.contains("is stale"), "{}", w.stderr);
    s.assert_clean();
}

#[test]
fn stale_posix_object_is_replaced() {
    stale_is_replaced(&[]);
}

#[test]
fn stale_sysv_segment_is_replaced() {
    stale_is_replaced(&["--sysv"]);
}

/// An object left by a run that died while creating it (no size, or a size but no header
/// and no creator pid) is judged by the rule shm shares with mmap (`common::ring::judge`):
/// not ready at first, stale after `SETUP_GRACE`, then replaced with a narrated line.
#[test]
fn half_created_objects_are_replaced_after_the_grace() {
    let s = Scene::new("half");
    for len in [0, region_len(64 << 10)] {
        std::fs::write(s.posix_path(), vec![0u8; len]).unwrap();
        let args = [
            "--json",
            "--mode",
            "stream",
            "--capacity",
            "64K",
            "--timeout",
            "20",
        ];
        let mut wargs = args.to_vec();
        wargs.extend_from_slice(&["--count", "100"]);
        let (w, r) = pair(&s, &wargs, &args, false);
        assert_verified(&w, &r);
        assert!(
            w.stderr
                .contains("exists but its creator has not published the header yet"),
            "{}",
            w.stderr
        );
        let why = if len == 0 {
            "it has no header after"
        } else {
            "it has no creator pid after"
        };
        assert!(
            w.stderr.contains("is stale: ") && w.stderr.contains(why),
            "{}",
            w.stderr
        );
        s.assert_clean();
    }
}

/// A non-empty object smaller than a header page was never one of ours (a creator sizes
/// its object in one call): refused, and left alone, however long it has been there.
#[test]
fn too_small_object_is_refused() {
    let s = Scene::new("small");
    std::fs::write(s.posix_path(), vec![0u8; 100]).unwrap();
    let r = s.reader(&["--timeout", "2"]).finish();
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("is 100 bytes, too small to be an ipc-study ring; refusing"),
        "{}",
        r.stderr
    );
    assert!(
        std::path::Path::new(&s.posix_path()).exists(),
        "not ours: left alone"
    );
    std::fs::remove_file(s.posix_path()).unwrap();
    s.assert_clean();
}

/// A bogus object under our name (not a ring) is refused, and left alone.
#[test]
fn hostile_bogus_object_is_refused() {
    let s = Scene::new("bogus");
    std::fs::write(s.posix_path(), vec![0xa5u8; region_len(1 << 20)]).unwrap();
    let r = s.reader(&["--timeout", "2"]).finish();
    assert!(!r.ok());
    assert!(
        r.stderr.contains("corrupt shared region") && r.stderr.contains("refusing"),
        "{}",
        r.stderr
    );
    assert!(
        std::path::Path::new(&s.posix_path()).exists(),
        "not ours: left alone"
    );
    std::fs::remove_file(s.posix_path()).unwrap();
    s.assert_clean();
}

/// Garbage written into the indices while the reader waits: a clean error, no hang.
#[test]
fn hostile_scribble_while_the_reader_waits() {
    let s = Scene::new("scribble");
    let mut r = s.reader(&["--timeout", "20", "--wait", "block"]);
    r.wait_for("waiting up to");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(s.posix_path())
        .unwrap();
    // Pose as the writer (a live pid: this test), then publish an impossible index.
    f.write_at(
        &std::process::id().to_le_bytes(),
        offsets::OPENER_PID as u64,
    )
    .unwrap();
    r.wait_for("waiting for frames");
    f.write_at(&(1u64 << 40).to_le_bytes(), offsets::head(0) as u64)
        .unwrap();
    let d = r.finish();
    assert_eq!(d.status.code(), Some(1), "{}", d.stderr);
    assert!(
        d.stderr
            .contains("corrupt shared region: ring 0 producer index 1099511627776"),
        "{}",
        d.stderr
    );
    s.assert_clean();
}

/// An object that another user owns is refused (needs root to make one).
#[test]
fn another_users_object_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        return common::testing::skip("needs root to chown an object to another user");
    }
    let s = Scene::new("foreign");
    std::fs::write(s.posix_path(), b"").unwrap();
    nix::unistd::chown(
        s.posix_path().as_str(),
        Some(nix::unistd::Uid::from_raw(65534)),
        None,
    )
    .unwrap();
    let w = s.writer(&["--timeout", "2"]).finish();
    assert!(!w.ok());
    assert!(w.stderr.contains("belongs to uid 65534"), "{}", w.stderr);
    std::fs::remove_file(s.posix_path()).unwrap();
    s.assert_clean();
}

/// Ctrl-C while waiting for the peer: the object is removed and the status is 130.
#[test]
fn ctrl_c_removes_what_each_side_owns() {
    let s = Scene::new("sigint");
    for flavour in [&[][..], &["--sysv"][..]] {
        let mut w = s.writer(flavour);
        w.wait_for("waiting up to");
        w.signal(Signal::SIGINT);
        let d = w.finish();
        assert_eq!(d.status.code(), Some(130), "{}", d.stderr);
        assert!(d.stderr.contains("removed"), "{}", d.stderr);
        s.assert_clean();
    }
}

/// A System V segment under our key that another user owns is refused, and left alone.
#[test]
fn another_users_sysv_segment_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        return common::testing::skip("needs root to give a segment to another user");
    }
    let s = Scene::new("foreign-sysv");
    let key = shm::sysv_key(&s.name);
    // SAFETY: shmget/shmctl with integers and a valid shmid_ds we own.
    let id = unsafe {
        let id = libc::shmget(key, region_len(1 << 20), libc::IPC_CREAT | 0o600);
        assert!(id >= 0);
        let mut ds: libc::shmid_ds = std::mem::zeroed();
        assert_eq!(libc::shmctl(id, libc::IPC_STAT, &mut ds), 0);
        ds.shm_perm.uid = 65534;
        assert_eq!(libc::shmctl(id, libc::IPC_SET, &mut ds), 0);
        id
    };
    let w = s.writer(&["--sysv", "--timeout", "2"]).finish();
    assert!(!w.ok());
    assert!(w.stderr.contains("belongs to uid 65534"), "{}", w.stderr);
    assert_eq!(s.sysv_id(), Some(id), "not ours: left alone");
    // SAFETY: IPC_RMID takes no buffer.
    unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
    s.assert_clean();
}

/// Liveness by identity: the header of a region left by a killed run records a creator
/// whose pid now names a live, unrelated process (simulated: the pid of a `sleep` child is
/// written into it, with the dead creator's start time left as recorded). The pid alone
/// would keep the pair "alive"; pid and start time together say it is stale, so the next
/// pair replaces it and runs.
#[test]
fn a_reused_creator_pid_does_not_keep_a_stale_region_alive() {
    use std::os::unix::fs::FileExt;
    let s = Scene::new("reused-pid");
    let mut r = s.reader(&[]);
    r.wait_for("waiting up to");
    r.kill9();
    let mut unrelated = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(s.posix_path())
        .unwrap();
    let pid = unrelated.id();
    file.write_all_at(
        &pid.to_le_bytes(),
        common::ring::offsets::CREATOR_PID as u64,
    )
    .unwrap();
    drop(file);
    let (w, r) = pair(
        &s,
        &["--mode", "stream", "--count", "100"],
        &["--mode", "stream"],
        false,
    );
    let _ = unrelated.kill();
    let _ = unrelated.wait();
    assert!(w.ok() && r.ok(), "{}\n{}", w.stderr, r.stderr);
    assert!(
        w.stderr
            .contains(&format!("its creator (pid {pid}) is gone")),
        "the live pid with another start time is not the creator:\n{}",
        w.stderr
    );
    s.assert_clean();
}
