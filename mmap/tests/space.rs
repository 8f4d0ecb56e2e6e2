//! Room on the file system and failures right after the file is created: a file system
//! without room for the file is refused before anything is created or mapped (a store into
//! a map of a full file system would be SIGBUS); a step that fails once the file exists
//! removes it; nothing is left either way.

mod util;

use std::os::unix::process::CommandExt;

use common::ring::{region_len, DEFAULT_CAPACITY};
use util::{TestDir, READER, WRITER};

/// Ring mode on a 1 MiB tmpfs (root): a ring of the default capacity needs two rings and a
/// page (8 MiB + 4 KiB), so both programs are refused before creating the file, with exit
/// status 2 (the size flag asks for more than this file system has) and a message naming
/// the file system, its free bytes and the need. The bulk writer is refused the same way.
/// Nothing is left.
#[test]
fn ring_mode_on_a_small_tmpfs_is_refused_before_mapping_naming_fs_free_and_need() {
    let dir = TestDir::new("room_tmpfs");
    let fs = match util::Tmpfs::mount(&dir, "1m") {
        Ok(fs) => fs,
        Err(why) => return common::testing::skip(&why),
    };
    let need = region_len(DEFAULT_CAPACITY);
    let fs_name = format!("the tmpfs file system mounted at {}", fs.at.display());
    for exe in [WRITER, READER] {
        let p = dir
            .spawn(exe, &["--mode", "stream", "--timeout", "5"], None)
            .finish();
        assert_eq!(p.status.code(), Some(2), "{exe}: {}", p.stderr);
        assert!(
            p.stderr.contains(&format!("{fs_name} has "))
                && p.stderr.contains(" bytes free, and the ring file ")
                && p.stderr.contains(&format!("{need} bytes) needs {need}"))
                && p.stderr.contains("smaller --capacity"),
            "{exe}: {}",
            p.stderr
        );
        assert!(
            !p.stderr
                .contains(&format!("created {}", dir.file().display())),
            "nothing created: {}",
            p.stderr
        );
        dir.assert_empty();
    }
    let w = dir
        .spawn(WRITER, &["--bulk", "--file-size", "4M"], None)
        .finish();
    assert_eq!(w.status.code(), Some(2), "{}", w.stderr);
    assert!(
        w.stderr.contains(&format!("{fs_name} has "))
            && w.stderr.contains(&format!("needs {}", 4096 + (4 << 20))),
        "{}",
        w.stderr
    );
    dir.assert_empty();
}

/// Sets `RLIMIT_FSIZE` (`ulimit -f`) of the child to `bytes`: `ftruncate` past it fails.
fn file_size_limit(bytes: u64) -> impl FnMut() -> std::io::Result<()> {
    move || {
        let lim = libc::rlimit {
            rlim_cur: bytes,
            rlim_max: bytes,
        };
        // SAFETY: setrlimit(2) on a valid struct; async-signal-safe, as pre_exec requires.
        if unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Sets `RLIMIT_AS` (`ulimit -v`) of the child to `bytes`: a larger `mmap` fails.
fn address_space_limit(bytes: u64) -> impl FnMut() -> std::io::Result<()> {
    move || {
        let lim = libc::rlimit {
            rlim_cur: bytes,
            rlim_max: bytes,
        };
        // SAFETY: as in `file_size_limit`.
        if unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A failure right after the file is created: with `ulimit -f` of 64 KiB the `open`
/// succeeds and the `ftruncate` that sizes the file fails (EFBIG). The programs ignore
/// SIGXFSZ, so that is an error, whose path removes the file just created (instead of the
/// signal killing the process and leaving a 0-byte file). Ring writer and reader (each
/// the creator here) and the bulk writer.
#[test]
fn a_failure_right_after_create_removes_the_file() {
    let dir = TestDir::new("fail_after_create");
    let runs: [(&str, &[&str]); 3] = [
        (WRITER, &["--mode", "stream", "--timeout", "5"]),
        (READER, &["--mode", "stream", "--timeout", "5"]),
        (WRITER, &["--bulk", "--file-size", "1M"]),
    ];
    for (exe, args) in runs {
        let p = dir
            .spawn_with(exe, args, |c| {
                // SAFETY: the closure only calls setrlimit, async-signal-safe.
                unsafe { c.pre_exec(file_size_limit(64 << 10)) };
            })
            .finish();
        assert_eq!(
            p.status.code(),
            Some(1),
            "{exe} {args:?}: {:?}\n{}",
            p.status,
            p.stderr
        );
        assert!(
            p.stderr
                .contains(&format!("error: ftruncate {}", dir.file().display()))
                && p.stderr.contains("File too large"),
            "{exe} {args:?}: {}",
            p.stderr
        );
        assert!(
            p.stderr
                .contains(&format!("removed mapped file {}", dir.file().display())),
            "{}",
            p.stderr
        );
        dir.assert_empty();
    }
    dir.finish();
}

/// A refused second step: the bulk file is created and sized, then `mmap` of 1 GiB fails
/// under `ulimit -v` of 512 MiB (ENOMEM). The error path removes the file.
#[test]
fn a_refused_mmap_right_after_create_removes_the_bulk_file() {
    let dir = TestDir::new("mmap_refused");
    let w = dir
        .spawn_with(WRITER, &["--bulk", "--file-size", "1G"], |c| {
            // SAFETY: the closure only calls setrlimit, async-signal-safe.
            unsafe { c.pre_exec(address_space_limit(512 << 20)) };
        })
        .finish();
    assert_eq!(w.status.code(), Some(1), "{:?}\n{}", w.status, w.stderr);
    assert!(
        w.stderr
            .contains(&format!("created {}", dir.file().display()))
            && w.stderr.contains("error: mmap ")
            && w.stderr.contains("Cannot allocate memory"),
        "{}",
        w.stderr
    );
    dir.finish();
}

/// Without root: a `--file-size` larger than the test directory's file system has free is
/// refused with status 2, naming the file system, before any file exists.
#[test]
fn a_file_size_larger_than_the_free_space_is_a_bad_flag_value() {
    let dir = TestDir::new("room_disk");
    std::fs::create_dir_all(&dir.path).unwrap();
    let st = nix::sys::statvfs::statvfs(&dir.path).unwrap();
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    if free > 1 << 40 {
        return common::testing::skip("more than 1 TiB free here: --file-size cannot exceed it");
    }
    let w = dir
        .spawn(WRITER, &["--bulk", "--file-size", "1024G"], None)
        .finish();
    assert_eq!(w.status.code(), Some(2), "{}", w.stderr);
    assert!(
        w.stderr.contains("file system mounted at")
            && w.stderr.contains(" bytes free, and the bulk file ")
            && w.stderr.contains(&format!("needs {}", (1u64 << 40) + 4096)),
        "{}",
        w.stderr
    );
    dir.finish();
}
