//! Faults the pair must survive, explain, or at least clean up after (issue 12): the
//! object shrunk under a running stream (SIGBUS), a SIGBUS sent to a System V side, a
//! failure right after the kernel object exists, a creator pid the kernel recorded and
//! that a live process reuses, a peer that stops making progress, and flag values only
//! the program can check (exit status 2).
//!
//! Each test has its own `--name` and runtime directory and checks that nothing is left
//! in /dev/shm, `ipcs -m` or that directory. No test asserts a timing. The tests that need
//! root (a small tmpfs on /dev/shm, a private IPC namespace, a chosen pid) skip without it;
//! their mounts and namespaces are private to the command they run (`unshare`), so they
//! vanish with it, whatever happens to the test.

mod harness;

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};

use common::ring::region_len;
use harness::{pair, shm_stat, Proc, Scene, READER, WRITER};
use nix::sys::signal::Signal;

/// Sets this test process's soft core-file limit to 0 (children inherit it): the SIGBUS
/// deaths below are on purpose and should leave no core file.
fn no_core_files() {
    // SAFETY: getrlimit/setrlimit with a valid, writable rlimit struct we own.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_CORE, &mut lim), 0);
        lim.rlim_cur = 0;
        assert_eq!(libc::setrlimit(libc::RLIMIT_CORE, &lim), 0);
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Item 3, SIGBUS explained: `truncate -s 0` of the POSIX object under a running stream.
/// Both sides touch the header page all the time (`--wait spin`: no futex sleep in which
/// a side could miss it), so both die of SIGBUS, and each first says what happened and
/// which object. Exactly one of them unlinks the object (the other finds it gone already),
/// so nothing is left behind.
#[test]
fn posix_truncated_under_a_running_stream_both_sides_explain_the_sigbus() {
    no_core_files();
    let s = Scene::new("sigbus-trunc");
    let args = ["--mode", "stream", "--wait", "spin", "--capacity", "64K"];
    let mut rargs = args.to_vec();
    rargs.extend_from_slice(&["--timeout", "20"]);
    let mut wargs = rargs.clone();
    wargs.extend_from_slice(&["--count", "1e9"]);
    let mut r = s.reader(&rargs);
    r.wait_for("waiting up to");
    let mut w = s.writer(&wargs);
    w.wait_for("stream mode");
    r.wait_for("waiting for frames");
    let (wpid, rpid) = (w.pid(), r.pid());
    let path = s.posix_path();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    // What `truncate -s 0 /dev/shm/ipc-study-<uid>-<name>` does.
    nix::unistd::ftruncate(&f, 0).unwrap();
    drop(f);
    let (w, r) = (w.finish(), r.finish());
    let kname = common::runtime::kernel_name(&s.name);
    for (d, who) in [
        (&w, format!("shm-writer (pid {wpid})")),
        (&r, format!("shm-reader (pid {rpid})")),
    ] {
        assert_eq!(d.status.signal(), Some(libc::SIGBUS), "{}", d.stderr);
        assert!(
            d.stderr
                .contains(&format!("*** SIGBUS: {who} touched byte"))
                && d.stderr
                    .contains(&format!("of POSIX shared memory {kname} ("))
                && d.stderr.contains("the process dies of SIGBUS"),
            "{}",
            d.stderr
        );
    }
    let removed = format!("Removed {path} (unlink)");
    let removers: Vec<_> = [&w, &r]
        .into_iter()
        .filter(|d| d.stderr.contains(&removed))
        .collect();
    assert_eq!(
        removers.len(),
        1,
        "one side unlinks:\n{}\n{}",
        w.stderr,
        r.stderr
    );
    assert!(
        removers[0].stderr.contains(
            "The object is now 0 bytes, and 135168 were mapped: another process shrank it"
        ),
        "{}",
        removers[0].stderr
    );
    s.assert_clean();
}

/// Item 3 for System V: a segment cannot shrink, so the one SIGBUS a test can cause is
/// one sent with kill. The writer says what it got and which segment, removes it and dies
/// of SIGBUS; the reader, which survives, reports its peer gone.
#[test]
fn sysv_sigbus_is_explained_and_the_survivor_reports_the_peer_gone() {
    no_core_files();
    let s = Scene::new("sigbus-sysv");
    let args = [
        "--sysv",
        "--mode",
        "stream",
        "--capacity",
        "64K",
        "--timeout",
        "20",
    ];
    let mut wargs = args.to_vec();
    wargs.extend_from_slice(&["--count", "1e9"]);
    let mut r = s.reader(&args);
    r.wait_for("waiting up to");
    let id = s.sysv_id().unwrap();
    let mut w = s.writer(&wargs);
    w.wait_for("stream mode");
    r.wait_for("waiting for frames");
    let wpid = w.pid();
    w.signal(Signal::SIGBUS);
    let (w, r) = (w.finish(), r.finish());
    assert_eq!(w.status.signal(), Some(libc::SIGBUS), "{}", w.stderr);
    let key = shm::sysv_key(&s.name);
    assert!(
        w.stderr.contains(&format!(
            "*** SIGBUS: shm-writer (pid {wpid}) was sent SIGBUS by pid {} (kill): not a fault; nothing is wrong with System V segment key {key:#010x} (shmid {id})",
            std::process::id()
        )) && w.stderr.contains("Marked the segment for removal (IPC_RMID)"),
        "{}",
        w.stderr
    );
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("peer (pid {wpid}) is gone")),
        "{}",
        r.stderr
    );
    s.assert_clean();
}

/// A command for `exe` whose address space is limited to 256 MiB (RLIMIT_AS): enough to
/// run, too little to map a region of 512 MiB (`--capacity 256M`).
fn with_small_address_space(s: &Scene, exe: &str, args: &[&str]) -> Command {
    let mut c = s.cmd(exe, args);
    // SAFETY: the closure runs in the child between fork and exec and makes one
    // async-signal-safe system call (setrlimit); it allocates nothing.
    unsafe {
        c.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 256 << 20,
                rlim_max: 256 << 20,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    c
}

/// Item 4, POSIX: `shm_open` created the object and `ftruncate` sized it, then `mmap`
/// fails (ENOMEM: the address space is limited). The object is removed, narrated.
#[test]
fn posix_failure_after_the_create_removes_the_object() {
    let s = Scene::new("fail-posix");
    let mut c = with_small_address_space(&s, WRITER, &["--capacity", "256M", "--timeout", "2"]);
    let d = Proc::spawn("shm-writer", &mut c).finish();
    let kname = common::runtime::kernel_name(&s.name);
    assert_eq!(d.status.code(), Some(1), "{}", d.stderr);
    assert!(
        d.stderr.contains(&format!(
            "shm_open {kname} O_CREAT|O_EXCL|O_RDWR 0600: created"
        )) && d.stderr.contains(&format!(
            "error: mmap MAP_SHARED {} bytes",
            region_len(256 << 20)
        )) && d
            .stderr
            .contains(&format!("removed POSIX shared memory {kname}")),
        "{}",
        d.stderr
    );
    s.assert_clean();
}

/// Item 4, System V: `shmget` created the segment, then `shmat` fails (ENOMEM). The
/// segment is removed (`IPC_RMID`), narrated; `ipcs -m` shows nothing of ours.
#[test]
fn sysv_failure_after_the_create_removes_the_segment() {
    let s = Scene::new("fail-sysv");
    let args = ["--sysv", "--capacity", "256M", "--timeout", "2"];
    let mut c = with_small_address_space(&s, READER, &args);
    let d = Proc::spawn("shm-reader", &mut c).finish();
    assert_eq!(d.status.code(), Some(1), "{}", d.stderr);
    let key = shm::sysv_key(&s.name);
    assert!(
        d.stderr.contains("IPC_CREAT|IPC_EXCL 0600: created shmid")
            && d.stderr.contains("error: shmat shmid")
            && d.stderr
                .contains(&format!("removed System V segment key {key:#010x} (shmid")),
        "{}",
        d.stderr
    );
    s.assert_clean();
}

/// Runs `sh -c script exe args...` in private namespaces (`unshare` with `ns_flags`) and
/// returns what it printed: the script's mounts and sysctls end with it.
fn in_namespace(
    s: &Scene,
    ns_flags: &[&str],
    script: &str,
    exe: &str,
    args: &[&str],
) -> harness::Done {
    let mut c = Command::new("unshare");
    c.args(ns_flags)
        .args(["sh", "-c", script, exe, "--name", &s.name])
        .args(args)
        .env("IPC_STUDY_DIR", &s.dir)
        .stdin(Stdio::null());
    Proc::spawn("unshare", &mut c).finish()
}

/// A private /dev/shm of 4 MiB, 3 MiB of it taken by a file, then the command; prints its
/// status and what is left in that /dev/shm.
const SMALL_DEV_SHM: &str = "mount -t tmpfs -o size=4m,mode=1777 ipc-study-test /dev/shm || exit 99
[ \"$FILL\" = 1 ] && head -c 3145728 /dev/zero > /dev/shm/filler
\"$0\" \"$@\"; echo \"status=$?\"; echo left: $(ls -A /dev/shm)";

/// Item 4, POSIX, the size exceeds what /dev/shm can hold right now: `fallocate` fails
/// with ENOSPC after the object was created and mapped, and the object is removed. Without
/// the reservation the first store would have been SIGBUS.
#[test]
fn posix_full_dev_shm_is_an_error_and_the_object_is_removed() {
    if !is_root() {
        return common::testing::skip("needs root to mount a small tmpfs on a private /dev/shm");
    }
    let s = Scene::new("enospc");
    let mount = ["--mount", "--propagation", "private"];
    let script = format!("FILL=1; {SMALL_DEV_SHM}");
    let d = in_namespace(
        &s,
        &mount,
        &script,
        WRITER,
        &["--capacity", "1M", "--timeout", "2"],
    );
    let kname = common::runtime::kernel_name(&s.name);
    assert!(
        d.stdout.contains("status=1\nleft: filler\n"),
        "{}\n{}",
        d.stdout,
        d.stderr
    );
    assert!(
        d.stderr
            .contains(&format!("error: fallocate {kname} 2101248 bytes: ENOSPC"))
            && d.stderr
                .contains(&format!("removed POSIX shared memory {kname}")),
        "{}",
        d.stderr
    );
    s.assert_clean();
}

/// Item 9: the flag values only the program can check exit with status 2, before any
/// object exists: a --capacity larger than the tmpfs at /dev/shm (POSIX) or than
/// kernel.shmmax (System V, in a private IPC namespace), as clap's own checks do.
#[test]
fn a_capacity_beyond_the_kernels_limit_is_a_bad_flag() {
    if !is_root() {
        return common::testing::skip("needs root for a private /dev/shm and IPC namespace");
    }
    let s = Scene::new("cap-limit");
    let mount = ["--mount", "--propagation", "private"];
    let d = in_namespace(&s, &mount, SMALL_DEV_SHM, READER, &["--capacity", "4M"]);
    assert!(
        d.stdout.contains("status=2\nleft:\n"),
        "{}\n{}",
        d.stdout,
        d.stderr
    );
    assert!(
        d.stderr.contains(
            "--capacity 4194304 needs a region of 8392704 bytes (4 KiB header + 2 rings), more than the tmpfs at /dev/shm"
        ),
        "{}",
        d.stderr
    );
    let script = "echo 1048576 > /proc/sys/kernel/shmmax || exit 99
\"$0\" \"$@\"; echo \"status=$?\"; echo segments: $(ipcs -m | grep -c '^0x')";
    let d = in_namespace(
        &s,
        &["--ipc"],
        script,
        WRITER,
        &["--sysv", "--capacity", "1M"],
    );
    assert!(
        d.stdout.contains("status=2\nsegments: 0\n"),
        "{}\n{}",
        d.stdout,
        d.stderr
    );
    assert!(
        d.stderr
            .contains("--capacity 1048576 needs a region of 2101248 bytes")
            && d.stderr.contains("kernel.shmmax")
            && d.stderr.contains("1048576 bytes"),
        "{}",
        d.stderr
    );
    s.assert_clean();
}

/// Item 9: a --size that does not fit half a ring is the program's own check: exit 2.
#[test]
fn a_size_that_does_not_fit_the_ring_exits_2() {
    let s = Scene::new("size-cap");
    let w = s
        .writer(&["--mode", "pingpong", "--size", "64K", "--capacity", "64K"])
        .finish();
    assert_eq!(w.status.code(), Some(2), "{}", w.stderr);
    assert!(
        w.stderr
            .contains("--size 65536 does not fit --capacity 65536"),
        "{}",
        w.stderr
    );
    assert!(
        !w.stderr.contains("created"),
        "no object before the check: {}",
        w.stderr
    );
    s.assert_clean();
}

/// Starts a process (`sleep 30`) with pid `want` and a start time other than `was` (the
/// dead process's: start times count in clock ticks), by setting the kernel's last-pid
/// counter just below it (`/proc/sys/kernel/ns_last_pid`, root only); `None` if other
/// processes keep taking the number first.
fn spawn_with_pid(want: i32, was: u64) -> Option<std::process::Child> {
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (want - 1).to_string()).ok()?;
        let mut c = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = c.id() as i32;
        if pid == want && common::peer::start_time(pid).is_some_and(|t| t != was) {
            return Some(c);
        }
        let _ = c.kill();
        let _ = c.wait();
    }
    None
}

/// Item 1, System V: the kernel records the creator as a bare pid (`shm_cpid`), so its
/// facts alone are fooled when that pid is reused: `nattch` is 0, and a process with the
/// creator's pid is alive. Here the reuse is real: a `sleep` is started with the killed
/// creator's very pid. The verdict then falls to the header's record of the creator (pid
/// and start time), which the live process does not match: stale, replaced, and the pair
/// runs.
#[test]
fn a_reused_sysv_creator_pid_does_not_keep_a_stale_segment_alive() {
    if !is_root() {
        return common::testing::skip("needs root to choose a pid (/proc/sys/kernel/ns_last_pid)");
    }
    let s = Scene::new("reused-cpid");
    let mut r = s.reader(&["--sysv"]);
    r.wait_for("waiting up to");
    let dead = r.pid();
    let was = common::peer::start_time(dead).unwrap();
    r.kill9();
    let id = s.sysv_id().unwrap();
    let ds = shm_stat(id);
    assert_eq!((ds.shm_cpid, ds.shm_nattch), (dead, 0));
    let Some(mut imposter) = spawn_with_pid(dead, was) else {
        return common::testing::skip("other processes kept taking the pid to reuse");
    };
    assert!(
        common::peer::alive(dead),
        "pid {dead} names a live process again"
    );
    let (w, r) = pair(
        &s,
        &[
            "--sysv",
            "--mode",
            "stream",
            "--count",
            "100",
            "--timeout",
            "20",
        ],
        &["--sysv", "--mode", "stream", "--timeout", "20"],
        false,
    );
    let _ = imposter.kill();
    let _ = imposter.wait();
    assert!(w.ok() && r.ok(), "{}\n{}", w.stderr, r.stderr);
    assert!(
        w.stderr.contains(&format!(
            "System V segment key {:#010x} (shmid {id}) is stale: its creator (pid {dead}) is gone",
            shm::sysv_key(&s.name)
        )),
        "the live process with the creator's pid is not the creator:\n{}",
        w.stderr
    );
    s.assert_clean();
}

/// Item 1, bounded waits: a peer that is alive but makes no progress (stopped with
/// SIGSTOP) ends the other side's wait after --timeout, with the object removed. POSIX:
/// a stopped reader leaves the writer waiting for room; System V: a stopped writer leaves
/// the reader waiting for frames.
#[test]
fn a_stopped_peer_ends_the_wait_after_the_timeout() {
    for (flavour, stop_reader) in [(&[][..], true), (&["--sysv"][..], false)] {
        let s = Scene::new(&format!("stopped-{stop_reader}"));
        let mut args = vec!["--mode", "stream", "--capacity", "16K"];
        args.extend_from_slice(flavour);
        let (mut patient, mut quick) = (args.clone(), args.clone());
        patient.extend_from_slice(&["--timeout", "20"]);
        quick.extend_from_slice(&["--timeout", "1"]);
        let (stopped, waiter) = if stop_reader {
            let mut r = s.reader(&patient);
            r.wait_for("waiting up to");
            quick.extend_from_slice(&["--count", "1e9"]);
            let mut w = s.writer(&quick);
            w.wait_for("stream mode");
            r.wait_for("waiting for frames");
            (r, w)
        } else {
            patient.extend_from_slice(&["--count", "1e9"]);
            let mut w = s.writer(&patient);
            w.wait_for("waiting up to");
            let mut r = s.reader(&quick);
            r.wait_for("waiting for frames");
            w.wait_for("stream mode");
            (w, r)
        };
        stopped.signal(Signal::SIGSTOP);
        let d = waiter.finish();
        let _ = stopped.kill9();
        assert_eq!(d.status.code(), Some(1), "{}", d.stderr);
        assert!(
            d.stderr.contains("timed out after") && d.stderr.contains("removed "),
            "{}",
            d.stderr
        );
        s.assert_clean();
    }
}
