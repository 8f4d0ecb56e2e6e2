//! # common: what every ipc-study pair shares
//!
//! Six mechanisms, one set of rules. A writer and a reader of any mechanism exchange the
//! same [`frame`]s, run the same three modes from [`session`], print the same
//! [`timing::Report`], take the same flags from [`cli`], meet in the same [`runtime`]
//! directory and clean up through the same [`cleanup`] registry. So when the `bench`
//! runner puts a pipe next to shared memory, the only difference is the mechanism.
//!
//! | module       | what it holds                                                                |
//! |--------------|------------------------------------------------------------------------------|
//! | [`frame`]    | the 40-byte header, encoder, total decoder, the stream `Reassembler`         |
//! | [`setup`]    | who runs: role, mechanism, flavour, wait strategy, the flags                 |
//! | [`session`]  | text, stream and pingpong as state machines that do no I/O; verification     |
//! | [`stream`]   | byte streams: `writev` of a frame, `read` into the reassembler, pipe sizes   |
//! | [`timing`]   | CLOCK_MONOTONIC, HDR latency histogram, CPU time, the `Report`               |
//! | [`cli`]      | the shared flags and their limits; `start`, every program's entry point      |
//! | [`runtime`]  | the private runtime directory and kernel object names                        |
//! | [`cleanup`]  | the registry of owned objects and the Ctrl-C/SIGTERM thread                  |
//! | [`narrate`](mod@narrate) | `narrate!` and `warn!`: what a learner reads on stderr                       |
//! | [`peer`]     | is the peer process still alive?                                             |
//! | `testing`    | (feature `testing`) running the real binaries in tests, under a deadline      |
//! | [`ring`]     | the SPSC ring of frames over shared memory (`shm`, `mmap`): layout, waiting  |
//!
//! Read a pair in this order: the mechanism's `lib.rs` (how the two ends find each other),
//! its `writer.rs` and `reader.rs` (the system calls, top to bottom, and the loop that
//! moves the messages), then [`session`] (what the frames say and how they are checked).

pub mod cleanup;
pub mod cli;
pub mod frame;
pub mod narrate;
pub mod ring;
pub mod runtime;
pub mod session;
pub mod setup;
pub mod stream;
pub mod timing;

#[cfg(feature = "testing")]
pub mod testing;

/// Whether the peer process is still there.
pub mod peer {
    use nix::errno::Errno;
    use nix::sys::signal::kill;
    use nix::unistd::Pid;

    /// True when a process with this pid exists and has not exited. `kill(pid, 0)` sends no
    /// signal: it only checks that the process exists (EPERM: it exists but belongs to
    /// another user). A zombie passes that check, having exited but not yet been collected
    /// by its parent (a peer started by a test or a shell that has not waited yet), so its
    /// state letter in `/proc/<pid>/stat` is checked too. A pid can be reused after its
    /// process exits, so this says "probably alive"; together with a timeout it is enough
    /// to stop waiting for a peer that crashed.
    pub fn alive(pid: i32) -> bool {
        if pid <= 0 {
            return false;
        }
        if !matches!(kill(Pid::from_raw(pid), None), Ok(()) | Err(Errno::EPERM)) {
            return false;
        }
        // "pid (comm) S ...": the state letter follows the last ')'; comm may hold spaces.
        match std::fs::read(format!("/proc/{pid}/stat")) {
            Ok(stat) => {
                let state = stat
                    .iter()
                    .rposition(|&b| b == b')')
                    .and_then(|i| stat.get(i + 2));
                !matches!(state, Some(b'Z' | b'X'))
            }
            Err(_) => true,
        }
    }

    #[cfg(test)]
    mod tests {
        use super::alive;

        #[test]
        fn a_zombie_is_not_alive() {
            let mut child = std::process::Command::new("true").spawn().unwrap();
            let pid = child.id() as i32;
            // `true` exits at once; until it is waited for, it is a zombie.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while alive(pid) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "pid {pid} still alive"
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert!(
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok(),
                "still a zombie, not reaped"
            );
            child.wait().unwrap();
            assert!(alive(std::process::id() as i32));
            assert!(!alive(0) && !alive(-1));
        }
    }
}
