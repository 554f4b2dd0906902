//! Processes the lab started, remembered by PID *and* start time, so that a
//! clean-up never kills a process that merely reused a recorded PID.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One process the lab started (directly, or through a daemon's pidfile).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRecord {
    /// What it is, e.g. `a/libvirtd` or `a/qemu/lms1`.
    pub role: String,
    pub pid: i32,
    /// Start time in clock ticks since boot (field 22 of `/proc/PID/stat`).
    pub start: u64,
}

impl ProcRecord {
    /// Records the running process `pid`; `None` if it is gone.
    pub fn of(role: &str, pid: i32) -> Option<ProcRecord> {
        start_time(pid).map(|start| ProcRecord {
            role: role.to_string(),
            pid,
            start,
        })
    }

    /// Records the process named by a pidfile; `None` if the file is missing or the process gone.
    pub fn from_pidfile(role: &str, pidfile: &Path) -> Option<ProcRecord> {
        let text = fs::read_to_string(pidfile).ok()?;
        let pid: i32 = text.trim().parse().ok()?;
        ProcRecord::of(role, pid)
    }

    /// Whether this very process (same PID, same start time) is still alive.
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start) && !is_zombie(self.pid)
    }

    /// Sends SIGTERM, waits up to `grace`, then SIGKILL. Only ever signals the
    /// recorded process, never one that reused its PID.
    pub fn stop(&self, grace: Duration) {
        reap(self.pid);
        if !self.alive() {
            return;
        }
        signal(self.pid, libc::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < grace {
            reap(self.pid);
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.alive() {
            signal(self.pid, libc::SIGKILL);
        }
        let start = Instant::now();
        while self.alive() && start.elapsed() < Duration::from_secs(5) {
            reap(self.pid);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Field 22 of `/proc/PID/stat`: the start time in clock ticks.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(19)?.parse().ok()
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s[s.rfind(')')? + 2..].to_string();
            after.chars().next()
        })
        .is_some_and(|state| state == 'Z' || state == 'X')
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Reaps `pid` if it is our own exited child; harmless otherwise.
fn reap(pid: i32) {
    let mut status = 0;
    // SAFETY: waitpid with WNOHANG on a single PID only reads into `status`.
    unsafe {
        libc::waitpid(pid, &mut status, libc::WNOHANG);
    }
}

/// The inode of a network namespace file (`/run/netns/NAME` or `/proc/PID/ns/net`).
pub fn netns_inode(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .ino())
}

/// PIDs of every process whose network namespace is one of `inodes`.
pub fn processes_in_netns(inodes: &[u64]) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(link) = fs::read_link(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        let link = link.to_string_lossy().into_owned();
        let ino = link
            .strip_prefix("net:[")
            .and_then(|s| s.strip_suffix(']'))
            .and_then(|s| s.parse::<u64>().ok());
        if ino.is_some_and(|i| inodes.contains(&i)) && !is_zombie(pid) {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            found.push((pid, comm.trim().to_string()));
        }
    }
    found
}
