//! Whether the peer process is still there, and whether it is still the same process.

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

/// The program a process runs, as a learner typed it: the file name of its `argv[0]`
/// (`/proc/<pid>/cmdline`), falling back to `/proc/<pid>/comm`, which the kernel cuts to
/// 15 bytes (`named-pipe-writ`). `None` once the process is gone.
pub fn program_name(pid: i32) -> Option<String> {
    if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
        let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
        let base = argv0.rsplit(|&b| b == b'/').next().unwrap_or_default();
        if !base.is_empty() {
            return Some(String::from_utf8_lossy(base).into_owned());
        }
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.trim_end().to_string())
}

/// A process as a peer records it: its pid *and* its start time, because a pid is reused
/// once its process has exited, and an unrelated process that got the same number must not
/// keep a dead pair "alive".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The process id.
    pub pid: i32,
    /// When it started, in clock ticks after boot: field 22 of `/proc/<pid>/stat`
    /// (`starttime`, proc(5)); 0 when unknown (an older record that has only a pid).
    pub start: u64,
}

impl Identity {
    /// This process.
    pub fn me() -> Identity {
        let pid = std::process::id() as i32;
        Identity {
            pid,
            start: start_time(pid).unwrap_or(0),
        }
    }

    /// The process with this pid now (its start time read from /proc), if there is one.
    pub fn of(pid: i32) -> Option<Identity> {
        Some(Identity {
            pid,
            start: start_time(pid)?,
        })
    }

    /// True while the process this identity names is alive: a process with the pid
    /// exists, is not a zombie, and (when the start time is recorded) started at that
    /// time. A reused pid, alive but started later, is *not* this process.
    pub fn alive(self) -> bool {
        if !alive(self.pid) {
            return false;
        }
        self.start == 0 || start_time(self.pid).is_none_or(|now| now == self.start)
    }
}

/// Field 22 of `/proc/<pid>/stat`: the process's start time in clock ticks after boot.
/// The fields after the command name (field 2, in parentheses, which may hold spaces and
/// parentheses itself) are counted from the last ')'.
pub fn start_time(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    // After ')': field 3 (state) is the first; starttime is field 22, the 20th.
    after.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::{alive, program_name, Identity};

    #[test]
    fn program_name_is_argv0_not_the_cut_comm() {
        let me = program_name(std::process::id() as i32).unwrap();
        let exe = std::env::current_exe().unwrap();
        assert_eq!(me, exe.file_name().unwrap().to_string_lossy());
        assert!(
            me.len() > 15,
            "a test binary's name is longer than comm keeps: {me}"
        );
    }

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

    #[test]
    fn a_reused_pid_is_not_the_recorded_process() {
        let me = Identity::me();
        assert!(me.start > 0, "a start time is read from /proc/self/stat");
        assert!(me.alive());
        assert_eq!(Identity::of(me.pid), Some(me));
        // The same pid with another start time: an unrelated process that got the
        // number after the recorded one exited.
        let reused = Identity {
            start: me.start + 1,
            ..me
        };
        assert!(!reused.alive());
        // A record with no start time (an older one) falls back to the pid alone.
        assert!(Identity { start: 0, ..me }.alive());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = Identity::of(child.id() as i32);
        child.wait().unwrap();
        assert!(gone.is_none_or(|g| !g.alive()));
    }
}
