//! Processes the lab starts in a namespace for benchmarks and interop
//! tests (peer daemons, hinan's own endpoints, load generators): recorded in
//! the run's manifest, stopped by PID when dropped, with their logs.

use std::ffi::OsStr;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::lab::procs::ProcRecord;
use crate::lab::run::RunDir;
use crate::lab::sys::{self, ip};

/// A process a benchmark started in a namespace: recorded in the run's
/// manifest (so a crashed run is cleaned up by the next lab), stopped by PID
/// when dropped.
#[derive(Debug)]
pub struct Daemon {
    pub rec: ProcRecord,
    pub log: PathBuf,
    /// Files it leaves behind when killed, removed after it stops.
    pub leaves: Vec<PathBuf>,
}

impl Daemon {
    /// Starts `program args…` in `ns` (own session, output to `log`).
    pub fn start<S: AsRef<OsStr>>(
        run: &mut RunDir,
        ns: &str,
        role: &str,
        program: &OsStr,
        args: &[S],
        log: &Path,
    ) -> Result<Daemon> {
        let pid = sys::spawn_daemon_in(ns, program, args, log)?;
        let rec = ProcRecord::of(role, pid as i32).with_context(|| {
            format!(
                "{} exited at once; its log:\n{}",
                program.to_string_lossy(),
                tail(log, 15)
            )
        })?;
        run.add_process(rec.clone())?;
        Ok(Daemon {
            rec,
            log: log.to_path_buf(),
            leaves: Vec::new(),
        })
    }

    /// Whether it still runs (an exited child is reaped here).
    pub fn running(&self) -> bool {
        let mut status = 0;
        // SAFETY: waitpid with WNOHANG on one PID only writes `status`.
        unsafe {
            libc::waitpid(self.rec.pid, &mut status, libc::WNOHANG);
        }
        self.rec.alive()
    }

    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }

    /// SIGTERM, then SIGKILL after 3 s.
    pub fn stop(&self) {
        self.rec.stop(Duration::from_secs(3));
        for f in &self.leaves {
            let _ = fs::remove_file(f);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `probe` every `step` until it gives a value or `limit` passes, like
/// [`sys::wait_for`], but fails at once, with its log, when one of `daemons` exits.
pub fn wait_while_running<T>(
    what: &str,
    limit: Duration,
    step: Duration,
    daemons: &[&Daemon],
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T> {
    sys::wait_for(what, limit, step, || {
        if let Some(d) = daemons.iter().find(|d| !d.running()) {
            return Ok(Some(Err(anyhow::anyhow!(
                "{} exited while waiting for {what}; its log:\n{}",
                d.rec.role,
                d.log_tail(20)
            ))));
        }
        Ok(probe().map(Ok))
    })?
}

/// Waits for device `dev` in `ns` (created by a daemon), gives it `addr/24`, brings it up.
pub fn address_device(ns: &str, dev: &str, addr: Ipv4Addr, daemon: &Daemon) -> Result<()> {
    wait_while_running(
        &format!("{} to create {dev} in {ns}", daemon.rec.role),
        Duration::from_secs(10),
        Duration::from_millis(20),
        &[daemon],
        || ip(ns, &["link", "show", dev]).ok().map(|_| ()),
    )?;
    ip(ns, &["addr", "add", &format!("{addr}/24"), "dev", dev])?;
    ip(ns, &["link", "set", dev, "up"])?;
    Ok(())
}

/// The run's short id: interface names that must be unique on the machine
/// (wireguard-go's UAPI sockets in /var/run/wireguard are shared by all namespaces).
pub fn run_tag(run: &RunDir) -> String {
    run.manifest.id.chars().take(6).collect()
}
