//! The processes behind a container: the `tapnet run` that owns it (its
//! *client*) and the command it runs. The daemon watches the client with a
//! pidfd and reaps the container when it is gone (also when that happened
//! while the daemon was down), and stops the command's process group when
//! the container is removed, as `docker rm -f` does.
//!
//! A process is named by its PID *and* its start time (field 22 of
//! `/proc/PID/stat`), so a PID reused by another process is never taken for
//! it (and never signalled).

use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// A process, as of when it was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRef {
    pub pid: u32,
    /// Start time in clock ticks after boot.
    pub start: u64,
}

impl ProcRef {
    /// The process `pid` as it is now, if it exists.
    pub fn of(pid: u32) -> Option<ProcRef> {
        start_time(pid).map(|start| ProcRef { pid, start })
    }

    /// Whether this very process still exists (not just its PID).
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start)
    }
}

/// Field 22 of /proc/PID/stat (after the command name, which may contain
/// spaces and parentheses: parse from the last ')'); None for a process
/// that has exited (a zombie its parent has not waited for is gone too).
fn start_time(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    // rest starts at field 3 (state); start time is field 22
    let mut f = rest.split_whitespace();
    if matches!(f.next()?, "Z" | "X" | "x") {
        return None;
    }
    f.nth(18)?.parse().ok()
}

/// A pidfd for `p`: readable once the process exits. Fails if it is
/// already gone (or its PID was reused).
pub fn pidfd(p: &ProcRef) -> io::Result<OwnedFd> {
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, p.pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // opened after a reuse of the PID: not ours
    if !p.alive() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "process gone"));
    }
    Ok(fd)
}

/// The parent PID and process group of `pid` (fields 4 and 5).
pub fn parent_and_group(pid: u32) -> Option<(u32, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut f = s[s.rfind(')')? + 1..].split_whitespace();
    let _state = f.next()?;
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// The live (not zombie) processes whose process group is `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| start_time(pid).is_some())
        .filter(|&pid| parent_and_group(pid).is_some_and(|(_, g)| g == pgid))
        .collect()
}

/// Stops the command `p` and the rest of its process group (the command
/// leads one when `run` had no terminal): SIGTERM, then SIGKILL after
/// `grace`. The group's other members are found by scanning /proc (the
/// leader may be gone already, e.g. killed with its run), never signalled
/// through a group id that could have been reused, and only if
/// `same_ns(pid)` says they are in the container's network namespace.
/// PIDs 0 and 1 are never signalled. Returns whether anything ran.
pub fn stop(p: &ProcRef, grace: Duration, same_ns: impl Fn(u32) -> bool) -> bool {
    if p.pid <= 1 {
        return false;
    }
    let targets = || -> Vec<u32> {
        let mut t: Vec<u32> = group_members(p.pid)
            .into_iter()
            .filter(|&pid| pid > 1 && same_ns(pid))
            .collect();
        if p.alive() && !t.contains(&p.pid) {
            t.push(p.pid);
        }
        t
    };
    let first = targets();
    if first.is_empty() {
        return false;
    }
    for pid in &first {
        unsafe { libc::kill(*pid as libc::pid_t, libc::SIGTERM) };
    }
    let t0 = Instant::now();
    while t0.elapsed() < grace && !targets().is_empty() {
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in targets() {
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_a_process_by_pid_and_start() {
        let me = ProcRef::of(std::process::id()).expect("this process");
        assert!(me.alive());
        let other = ProcRef {
            pid: me.pid,
            start: me.start + 1,
        };
        assert!(!other.alive(), "same PID, another start: not the same");
        assert!(pidfd(&me).is_ok());
        assert!(pidfd(&other).is_err());
    }

    #[test]
    fn stops_a_group() {
        use std::os::unix::process::CommandExt;
        let mut c = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30"])
            .process_group(0)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let p = ProcRef::of(c.id()).unwrap();
        assert!(stop(&p, Duration::from_secs(2), |_| true));
        let _ = c.wait();
        assert!(!p.alive());
        // nothing of its group left running (a zombie waiting for its new
        // parent to reap it is not running)
        let running = || {
            std::fs::read_dir("/proc")
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
                .any(|st| {
                    let rest = &st[st.rfind(')').unwrap() + 1..];
                    let f: Vec<&str> = rest.split_whitespace().collect();
                    f[0] != "Z" && f[2] == p.pid.to_string()
                })
        };
        let t0 = Instant::now();
        while running() && t0.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!running(), "a member of the group survived");
        assert!(!stop(&p, Duration::from_secs(1), |_| true), "already gone");
        assert!(!stop(&ProcRef { pid: 1, start: 0 }, Duration::ZERO, |_| {
            true
        }));
    }
}
