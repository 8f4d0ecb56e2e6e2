//! The runtime directory where pairs meet, and the names of kernel objects.
//!
//! Default rendezvous files (FIFOs, Unix sockets, mapped files, ftok key files) live in a
//! per-user directory: `$IPC_STUDY_DIR` if set (tests use it), else
//! `$XDG_RUNTIME_DIR/ipc-study`, else `/tmp/ipc-study-<uid>`. It is created mode 0700 and
//! checked before use: a directory that another user owns, that is a symlink, or that
//! others can write into would let them swap our FIFO or socket for theirs.
//!
//! Objects the kernel names outside the file system (POSIX shm and mq names) carry
//! `ipc-study` and the uid instead: `/ipc-study-1000-shm`.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::unistd::geteuid;

/// Environment variable that overrides the runtime directory.
pub const DIR_ENV: &str = "IPC_STUDY_DIR";

/// The runtime directory, created 0700 if missing and checked to be ours and private.
pub fn runtime_dir() -> Result<PathBuf> {
    let dir = dir_path();
    ensure_private_dir(&dir)?;
    Ok(dir)
}

/// Where the runtime directory is, without creating or checking it (for `--help`, which
/// shows default paths and must create nothing).
pub fn dir_path() -> PathBuf {
    match std::env::var_os(DIR_ENV) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(x) if !x.is_empty() => Path::new(&x).join("ipc-study"),
            _ => PathBuf::from(format!("/tmp/ipc-study-{}", geteuid())),
        },
    }
}

/// Creates `dir` with mode 0700 if it does not exist, then checks owner, type and mode.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => crate::narrate!("created runtime dir {} (mode 0700)", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("mkdir {}", dir.display())),
    }
    // lstat, not stat: a symlink planted at this path must not be followed.
    let meta = fs::symlink_metadata(dir).with_context(|| format!("lstat {}", dir.display()))?;
    if !meta.file_type().is_dir() {
        bail!("runtime dir {} exists but is not a directory (a symlink or a file); remove it or set {DIR_ENV}", dir.display());
    }
    let me = geteuid().as_raw();
    if meta.uid() != me {
        bail!(
            "runtime dir {} belongs to uid {}, not to you (uid {me}); refusing to use it (set {DIR_ENV} to a directory of yours)",
            dir.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o077 != 0 {
        // Ours but open to others: close it rather than refuse, and say so.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod 0700 {}", dir.display()))?;
        crate::warn!(
            "runtime dir {} was mode {:o}; set it to 0700 so other users cannot replace files in it",
            dir.display(),
            meta.mode() & 0o777
        );
    }
    Ok(())
}

/// A path in the runtime directory.
pub fn runtime_path(name: &str) -> Result<PathBuf> {
    Ok(runtime_dir()?.join(name))
}

/// A name for an object the kernel keeps outside the file system (`shm_open`, `mq_open`):
/// `/ipc-study-<uid>-<name>`.
pub fn kernel_name(name: &str) -> String {
    format!("/ipc-study-{}-{name}", geteuid())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("ipc-study-unit-{tag}-{}", std::process::id()))
    }

    #[test]
    fn creates_a_private_directory() {
        let d = scratch("create");
        ensure_private_dir(&d).unwrap();
        let m = fs::metadata(&d).unwrap();
        assert_eq!(m.mode() & 0o777, 0o700);
        fs::remove_dir(&d).unwrap();
    }

    #[test]
    fn closes_a_directory_open_to_others() {
        let d = scratch("open");
        fs::create_dir(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
        ensure_private_dir(&d).unwrap();
        assert_eq!(fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        fs::remove_dir(&d).unwrap();
    }

    #[test]
    fn refuses_a_symlink_or_a_file() {
        let f = scratch("file");
        fs::write(&f, b"x").unwrap();
        let err = ensure_private_dir(&f).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
        let l = scratch("link");
        std::os::unix::fs::symlink("/tmp", &l).unwrap();
        assert!(ensure_private_dir(&l).is_err());
        fs::remove_file(&f).unwrap();
        fs::remove_file(&l).unwrap();
    }

    #[test]
    fn refuses_another_users_directory() {
        if !geteuid().is_root() {
            eprintln!("skipped: needs root to chown a directory to another user");
            return;
        }
        let d = scratch("owner");
        fs::create_dir(&d).unwrap();
        nix::unistd::chown(&d, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let err = ensure_private_dir(&d).unwrap_err().to_string();
        assert!(err.contains("belongs to uid 65534"), "{err}");
        fs::remove_dir(&d).unwrap();
    }
}
