//! Faults that a pid number alone, or a failure path that forgets what it created, would
//! get wrong (issue 12): a killed side's pid reused by an unrelated live process, a live
//! peer that makes no progress, and a runtime directory on a full file system after the
//! queue exists. Each test has its own runtime directory and name, runs every child under
//! the harness deadline, and checks that no queue, file or mount is left behind.
//!
//! A reused pid is simulated the way it happens: the record keeps the killed process's
//! start time, and its pid is replaced by the pid of a live unrelated process (a `sleep`
//! child), which `kill(pid, 0)` finds alive.

mod harness;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use common::peer::Identity;
use common::setup::Role;
use harness::{posix_or_skip, Done, Env, FLAVOURS};
use msgqueue::pairfile::{PairFile, Slot};

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

/// A live process unrelated to the pair (`sleep`), killed and reaped when dropped.
struct Unrelated(Child);

impl Unrelated {
    fn start() -> Unrelated {
        let child = Command::new("sleep")
            .arg("120")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep");
        Unrelated(child)
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Unrelated {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A live unrelated process, and the record a reused pid leaves: its pid with the start
/// time `dead_start` of the process that had the number before. (A real reuse always has
/// a later start time; one started within the same clock tick is replaced.)
fn reused(dead_start: u64) -> (Unrelated, Identity) {
    let t0 = Instant::now();
    loop {
        let u = Unrelated::start();
        let now = Identity::of(u.pid()).expect("sleep runs");
        if now.start != dead_start {
            assert!(common::peer::alive(u.pid()), "the pid alone looks alive");
            let record = Identity {
                pid: u.pid(),
                start: dead_start,
            };
            return (u, record);
        }
        assert!(
            t0.elapsed() < common::testing::DEADLINE,
            "clock ticks stand still"
        );
    }
}

/// The identity of a process that existed and is gone: `true`, run to its end.
fn a_dead_process() -> Identity {
    let mut c = Command::new("true").spawn().expect("spawn true");
    // Until it is reaped, its /proc entry (a zombie's) still holds the start time.
    let id = Identity::of(c.id() as i32).expect("true's /proc entry");
    c.wait().unwrap();
    id
}

/// Writes `slot` into `role`'s line of the pair file at `path` (created if missing).
fn record(path: &Path, role: Role, slot: Slot) {
    PairFile::open(path).unwrap().write(role, slot).unwrap();
}

fn private_dir(dir: &Path) {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(dir).unwrap();
}

/// A reader is killed, and its pid goes to an unrelated live process. The next reader is
/// not refused ("another reader (pid N) is using this queue"), takes the stale queue over,
/// and the pair runs and verifies.
#[test]
fn a_reused_pid_in_the_pair_file_does_not_keep_a_killed_reader_alive() {
    for (fi, flavour) in FLAVOURS.iter().enumerate() {
        if fi == 1 && !posix_or_skip("reused reader pid (POSIX part)") {
            continue;
        }
        let env = Env::new(&format!("reuse-reader-{fi}"));
        let mut r1 = env.reader(&with(flavour, &["--mode", "stream"]));
        r1.wait_for("waiting in ");
        let r1d = r1.kill9();
        let path = env.pair_file(fi == 1);
        let Slot::Running(dead) = PairFile::open(&path).unwrap().read(Role::Reader) else {
            panic!("the killed reader's line is not 'running'");
        };
        assert!(
            dead.start > 0,
            "the reader recorded its start time: {dead:?}"
        );
        let (other, record_) = reused(dead.start);
        record(&path, Role::Reader, Slot::Running(record_));
        let mut r2 = env.reader(&with(flavour, &["--mode", "stream", "--json"]));
        r2.wait_for("waiting in ");
        let wd = env
            .writer(&with(flavour, &["--mode", "stream", "--count", "300"]))
            .finish();
        let r2d = r2.finish();
        ok(&wd, "writer");
        ok(&r2d, "the next reader");
        let rep = r2d.report("reader", false);
        assert!(rep.verified && rep.count == 300, "{rep:?}");
        let pid = other.pid();
        assert!(
            r2d.stderr.contains(&format!(
                "reader pid {pid} as running, but pid {pid} is now another process"
            )) && r2d.stderr.contains("a reused pid"),
            "{}",
            r2d.stderr
        );
        assert!(!r2d.stderr.contains("another reader"), "{}", r2d.stderr);
        env.assert_clean(&[&r1d.stderr, &r2d.stderr, &wd.stderr]);
    }
}

/// A writer blocks in msgsnd (mq_timedsend) on a full queue; then the reader's line names
/// a killed reader whose pid an unrelated live process now has. The writer does not block
/// past --timeout: it finds the reader gone, says so and removes the queue.
#[test]
fn a_writer_on_a_full_queue_is_not_held_by_a_reused_reader_pid() {
    for (fi, flavour) in FLAVOURS.iter().enumerate() {
        if fi == 1 && !posix_or_skip("full queue, reused reader pid (POSIX part)") {
            continue;
        }
        let env = Env::new(&format!("reuse-full-{fi}"));
        let mut w = env.writer(&with(
            flavour,
            &["--mode", "stream", "--size", "4K", "--count", "1000000000"],
        ));
        w.wait_for("the queue is full");
        let (other, record_) = reused(a_dead_process().start);
        record(
            &env.pair_file(fi == 1),
            Role::Reader,
            Slot::Running(record_),
        );
        let wd = w.finish();
        assert_eq!(wd.status.code(), Some(1), "{}", wd.stderr);
        let said = format!("the reader (pid {}) died without finishing", other.pid());
        assert!(wd.stderr.contains(&said), "{}", wd.stderr);
        env.assert_clean(&[&wd.stderr]);
    }
}

/// A peer that is alive (the very process recorded) but makes no progress ends a stream
/// wait at --timeout, with a message that says so: the writer's send into a full queue,
/// and the reader's receive.
#[test]
fn a_live_peer_that_makes_no_progress_ends_the_wait_at_timeout() {
    for (fi, flavour) in FLAVOURS.iter().enumerate() {
        if fi == 1 && !posix_or_skip("stalled peer (POSIX part)") {
            continue;
        }
        for role in [Role::Writer, Role::Reader] {
            let env = Env::new(&format!("stalled-{fi}-{role}")).with_timeout("1");
            private_dir(&env.dir);
            // The peer's line names a live process that never sends nor receives.
            let stuck = Unrelated::start();
            let id = Identity::of(stuck.pid()).unwrap();
            record(&env.pair_file(fi == 1), role.peer(), Slot::Running(id));
            let args = with(flavour, &["--mode", "stream", "--size", "4K"]);
            let d = match role {
                Role::Writer => env.writer(&args).finish(),
                Role::Reader => env.reader(&args).finish(),
            };
            assert_eq!(d.status.code(), Some(1), "{role}: {}", d.stderr);
            let said = format!(
                "the {} (pid {}) is running but made no progress for --timeout (1s)",
                role.peer(),
                id.pid
            );
            assert!(d.stderr.contains(&said), "{role}: {}", d.stderr);
            env.assert_clean(&[&d.stderr]);
        }
    }
}

/// `--shared`: a reader of type 3 is killed and its pid goes to an unrelated live process.
/// The next reader of type 3 is not refused ("reader pid N already takes type 3"), and a
/// writer's session reaches it, verified.
#[test]
fn a_reused_pid_in_the_shared_registry_does_not_keep_a_killed_reader_alive() {
    let env = Env::new("reuse-shared");
    let base = ["--shared", "--type", "3", "--mode", "stream"];
    let mut r1 = env.reader(&base);
    r1.wait_for("polls msgrcv");
    let r1_pid = r1.pid();
    let r1d = r1.kill9();
    let path = env.registry();
    let text = std::fs::read_to_string(&path).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("reader {r1_pid} running ")))
        .unwrap_or_else(|| panic!("no line of reader {r1_pid}:\n{text}"));
    let dead: u64 = line
        .split_whitespace()
        .skip_while(|&t| t != "start")
        .nth(1)
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no start time in {line:?}"));
    let (other, _) = reused(dead);
    // The same line with the unrelated process's pid, padded to the same length.
    let new = line.replacen(&r1_pid.to_string(), &other.pid().to_string(), 1);
    let new = format!("{:<width$}", new.trim_end(), width = line.len());
    std::fs::write(&path, text.replacen(line, &new, 1)).unwrap();
    let mut r2 = env.reader(&with(&base, &["--json"]));
    r2.wait_for("polls msgrcv");
    let wd = env.writer(&with(&base, &["--count", "200"])).finish();
    let r2d = r2.finish();
    ok(&wd, "writer");
    ok(&r2d, "the next reader of type 3");
    let rep = r2d.report("reader", false);
    assert!(rep.verified && rep.count == 200, "{rep:?}");
    assert!(!r2d.stderr.contains("already takes"), "{}", r2d.stderr);
    env.assert_clean(&[&r1d.stderr, &r2d.stderr, &wd.stderr]);
}

/// A small tmpfs mounted for one test, filled to the last byte; unmounted and removed
/// when dropped, even when the test fails.
struct FullFs {
    mnt: PathBuf,
}

impl FullFs {
    /// `None` when it cannot be mounted here (not root, no tmpfs): the caller skips.
    fn mount(test: &str) -> Option<FullFs> {
        let mnt = std::env::temp_dir().join(format!(
            "ipc-study-test-msgqueue-{test}-{}-mnt",
            std::process::id()
        ));
        std::fs::create_dir_all(&mnt).ok()?;
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16k,mode=0700", "tmpfs"])
            .arg(&mnt)
            .stderr(Stdio::null())
            .status();
        if !matches!(st, Ok(s) if s.success()) {
            let _ = std::fs::remove_dir(&mnt);
            return None;
        }
        let fs = FullFs { mnt };
        // Fill it: 4 KiB at a time until the kernel says ENOSPC.
        use std::io::Write;
        let mut f = std::fs::File::create(fs.mnt.join("filler")).unwrap();
        let block = [0u8; 4096];
        let e = loop {
            if let Err(e) = f.write_all(&block) {
                break e;
            }
        };
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
        Some(fs)
    }

    /// A fresh private directory on the full file system (a directory takes no data
    /// block on tmpfs, and an empty file only an inode: a `pwrite` is what fails).
    fn dir(&self, name: &str) -> PathBuf {
        let d = self.mnt.join(name);
        private_dir(&d);
        d
    }
}

impl Drop for FullFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = std::fs::remove_dir_all(&self.mnt);
    }
}

/// The runtime directory is on a full file system: the queue is created, and then the
/// `pwrite` of this side's line in the pair file fails with ENOSPC. The side that created
/// the queue removes it and the 0-byte pair file: `ipcs -q`, /dev/mqueue and the directory
/// hold nothing of the run. Each flavour, each side first, and a `--shared` join.
#[test]
fn a_full_runtime_file_system_after_the_queue_exists_leaves_nothing() {
    if !nix::unistd::geteuid().is_root() {
        return common::testing::skip("needs root to mount a small tmpfs and fill it");
    }
    let Some(fs) = FullFs::mount("enospc") else {
        return common::testing::skip("cannot mount a tmpfs here (mount -t tmpfs failed)");
    };
    let mut runs: Vec<(String, Vec<&str>)> = Vec::new();
    for (fi, flavour) in FLAVOURS.iter().enumerate() {
        if fi == 1 && !posix_or_skip("full file system (POSIX part)") {
            continue;
        }
        for role in ["reader", "writer"] {
            runs.push((format!("{role}-{fi}"), with(flavour, &["--mode", "stream"])));
        }
    }
    runs.push(("shared".into(), vec!["--shared", "--type", "2"]));
    for (tag, args) in runs {
        let env = Env::in_dir(&format!("enospc-{tag}"), fs.dir(&tag));
        let d = if tag.starts_with("writer") {
            env.writer(&args).finish()
        } else {
            env.reader(&args).finish()
        };
        assert_eq!(d.status.code(), Some(1), "{tag}: {}", d.stderr);
        assert!(
            d.stderr.contains("No space left on device") && d.stderr.contains("pwrite"),
            "{tag}: {}",
            d.stderr
        );
        let created = if args.contains(&"--posix") {
            ": created (mode 600)"
        } else {
            "created queue msqid"
        };
        assert!(
            d.stderr.contains(created),
            "{tag}: the queue existed: {}",
            d.stderr
        );
        assert!(d.stderr.contains("removed"), "{tag}: {}", d.stderr);
        let in_mqueue = std::fs::read_dir("/dev/mqueue").map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().contains(&env.name))
                .count()
        });
        assert!(
            matches!(in_mqueue, Ok(0) | Err(_)),
            "{tag}: left in /dev/mqueue"
        );
        env.assert_clean(&[&d.stderr]);
    }
}
