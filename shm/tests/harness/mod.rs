//! The shm tests' harness: `common::testing` (every child under a deadline, output
//! collected, waiting for narration) plus [`Scene`]: each test's own name and runtime
//! directory, and the check at the end that nothing is left in /dev/shm, `ipcs -m` or it.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};

pub use common::testing::{Done, Proc};

use common::ring::offsets;

pub const WRITER: &str = env!("CARGO_BIN_EXE_shm-writer");
pub const READER: &str = env!("CARGO_BIN_EXE_shm-reader");

/// One test's private rendezvous: a unique `--name` and runtime directory.
pub struct Scene {
    pub name: String,
    pub dir: PathBuf,
}

impl Scene {
    pub fn new(tag: &str) -> Scene {
        let name = format!("t{}-{tag}", std::process::id());
        let dir = std::env::temp_dir().join(format!("ipc-study-shm-test-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        Scene { name, dir }
    }

    /// A command for `exe` with this scene's name and directory.
    pub fn cmd(&self, exe: &str, args: &[&str]) -> Command {
        let mut c = Command::new(exe);
        c.args(["--name", &self.name])
            .args(args)
            .env("IPC_STUDY_DIR", &self.dir)
            .stdin(Stdio::null());
        c
    }

    pub fn writer(&self, args: &[&str]) -> Proc {
        Proc::spawn("shm-writer", &mut self.cmd(WRITER, args))
    }

    pub fn reader(&self, args: &[&str]) -> Proc {
        Proc::spawn("shm-reader", &mut self.cmd(READER, args))
    }

    /// `/dev/shm/ipc-study-<uid>-<name>`.
    pub fn posix_path(&self) -> String {
        shm::posix_path(&self.name)
    }

    /// The System V segment id for our key, if one exists.
    pub fn sysv_id(&self) -> Option<i32> {
        // SAFETY: shmget takes integers only.
        let id = unsafe { libc::shmget(shm::sysv_key(&self.name), 0, 0) };
        (id >= 0).then_some(id)
    }

    /// Fails the test if anything of ours is left.
    pub fn assert_clean(&self) {
        assert!(
            !std::path::Path::new(&self.posix_path()).exists(),
            "{} was left behind",
            self.posix_path()
        );
        assert_eq!(self.sysv_id(), None, "a System V segment was left behind");
        let left: Vec<_> = std::fs::read_dir(&self.dir).unwrap().collect();
        assert!(left.is_empty(), "runtime dir not empty: {left:?}");
    }

    /// Removes leftovers of a failed test, so one failure does not cascade.
    fn scrub(&self) {
        let _ = std::fs::remove_file(self.posix_path());
        if let Some(id) = self.sysv_id() {
            // SAFETY: IPC_RMID takes no buffer.
            unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
        }
    }
}

/// Runs a pair, `first` started and waiting before `second`; returns (writer, reader).
pub fn pair(s: &Scene, wargs: &[&str], rargs: &[&str], reader_first: bool) -> (Done, Done) {
    if reader_first {
        let mut r = s.reader(rargs);
        r.wait_for("waiting up to");
        let w = s.writer(wargs);
        (w.finish(), r.finish())
    } else {
        let mut w = s.writer(wargs);
        w.wait_for("waiting up to");
        let r = s.reader(rargs);
        (w.finish(), r.finish())
    }
}

pub fn assert_verified(w: &Done, r: &Done) {
    assert!(w.ok(), "writer failed:\n{}", w.stderr);
    assert!(r.ok(), "reader failed:\n{}", r.stderr);
    let (wr, rr) = (w.any_report(), r.any_report());
    assert!(rr.verified && rr.verified_by == "reader", "{rr:?}");
    // A writer says "verified" only where it checked something: a pingpong writer's
    // Pongs; a stream or text writer leaves it to the reader.
    if wr.mode == "pingpong" {
        assert!(wr.verified && wr.verified_by == "writer", "{wr:?}");
    } else {
        assert!(!wr.verified && wr.verified_by == "reader", "{wr:?}");
    }
}

/// A text-mode pair that stays paired for as long as the test likes: the reader created
/// the object, the writer opened it and waits for a line on its stdin.
pub struct LivePair {
    pub w: Proc,
    pub r: Proc,
}

impl LivePair {
    /// Starts the reader (the creator), then the writer, both with `--json`; returns once
    /// both are paired.
    pub fn start(s: &Scene, args: &[&str]) -> LivePair {
        let mut args = args.to_vec();
        args.extend_from_slice(&["--timeout", "20", "--json"]);
        let mut r = s.reader(&args);
        r.wait_for("waiting up to");
        let mut wcmd = s.cmd(WRITER, &args);
        wcmd.stdin(Stdio::piped());
        let mut w = Proc::spawn("shm-writer", &mut wcmd);
        w.wait_for("type a line");
        r.wait_for("waiting for frames");
        // The writer's first frame, the Hello, has been taken: ring 0 holds nothing now.
        r.wait_for("the writer's Hello");
        LivePair { w, r }
    }

    /// Sends `line` and waits until the reader has printed it (message number `seq`).
    pub fn send(&mut self, line: &str, seq: u64) {
        self.w.write_stdin(format!("{line}\n").as_bytes());
        self.r.wait_for(&format!("#{seq} ("));
    }

    /// Ends the writer's input (Ctrl-D) and collects both: (writer, reader).
    pub fn finish(self) -> (Done, Done) {
        (self.w.finish(), self.r.finish())
    }
}

/// Bytes of ring 0 the writer's Hello takes (header, payload, rounded up to 64): the
/// fixed 32 bytes, then the program, version and flavour, each after its length byte.
pub fn hello_record(flavour: &str) -> u64 {
    let payload =
        32 + (1 + "shm-writer".len()) + (1 + common::hello::VERSION.len()) + 1 + flavour.len();
    common::ring::record_len(payload) as u64
}

/// One line of `/proc/<pid>/maps`: `start-end perms offset dev inode path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsLine {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub offset: u64,
    /// (major, minor) of the device, printed in hex by the kernel.
    pub dev: (u64, u64),
    pub inode: u64,
    pub path: String,
}

/// The lines of `/proc/<pid>/maps` whose path satisfies `want`.
pub fn maps_of(pid: i32, want: impl Fn(&str) -> bool) -> Vec<MapsLine> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let hex = |s: &str| u64::from_str_radix(s, 16).unwrap();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 6 {
                return None;
            }
            let (start, end) = f[0].split_once('-').unwrap();
            let (maj, min) = f[3].split_once(':').unwrap();
            Some(MapsLine {
                start: hex(start),
                end: hex(end),
                perms: f[1].to_string(),
                offset: hex(f[2]),
                dev: (hex(maj), hex(min)),
                inode: f[4].parse().unwrap(),
                path: f[5..].join(" "),
            })
        })
        .filter(|m| want(&m.path))
        .collect()
}

/// The one mapping of `pid` whose path satisfies `want` (fails the test otherwise).
pub fn the_mapping(pid: i32, want: impl Fn(&str) -> bool) -> MapsLine {
    let lines = maps_of(pid, want);
    assert_eq!(
        lines.len(),
        1,
        "pid {pid}: expected one such mapping: {lines:?}"
    );
    lines.into_iter().next().unwrap()
}

/// The name `/proc/<pid>/maps` gives a System V segment: `/SYSV` and the key in 8 hex digits.
pub fn sysv_maps_name(key: libc::key_t) -> String {
    format!("/SYSV{key:08x}")
}

/// `shmctl(id, IPC_STAT)`: the kernel's record of a segment, or the errno.
pub fn try_shm_stat(id: i32) -> Result<libc::shmid_ds, i32> {
    // SAFETY: shmid_ds is plain integers: all-zero is valid; IPC_STAT fills it in.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: `ds` is a valid, writable shmid_ds.
    if unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) } == 0 {
        Ok(ds)
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

/// `shmctl(id, IPC_STAT)`: the kernel's record of a segment (fails the test if none).
pub fn shm_stat(id: i32) -> libc::shmid_ds {
    try_shm_stat(id).unwrap_or_else(|e| panic!("shmctl IPC_STAT {id}: errno {e}"))
}

/// `shmctl(id, IPC_RMID)`: 0, or -1 if there is no such segment.
pub fn rmid(id: i32) -> i32 {
    // SAFETY: IPC_RMID takes no buffer (null is allowed).
    unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) }
}

/// `shmget(key, size, flags)`: the id, or the errno.
pub fn shmget(key: libc::key_t, size: usize, flags: libc::c_int) -> Result<i32, i32> {
    // SAFETY: shmget takes integers only.
    let id = unsafe { libc::shmget(key, size, flags) };
    if id < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    } else {
        Ok(id)
    }
}

/// Reads a little-endian `u64` at `at` of the POSIX object `path` (pread: the test is a
/// third process looking at the same pages).
pub fn read_u64(path: &str, at: usize) -> u64 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, at as u64).unwrap();
    u64::from_le_bytes(b)
}

/// Reads a little-endian `u32` at `at` of the POSIX object `path`.
pub fn read_u32(path: &str, at: usize) -> u32 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut b = [0u8; 4];
    f.read_exact_at(&mut b, at as u64).unwrap();
    u32::from_le_bytes(b)
}

/// Ring `d`'s `head` and `tail` in the POSIX object `path`.
pub fn indices(path: &str, d: usize) -> (u64, u64) {
    (
        read_u64(path, offsets::head(d)),
        read_u64(path, offsets::tail(d)),
    )
}

impl Drop for Scene {
    fn drop(&mut self) {
        self.scrub();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
