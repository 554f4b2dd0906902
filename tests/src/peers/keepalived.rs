//! keepalived as a peer: VRRP between campus A (master) and campus B
//! (backup), the daemons hinan's failure detector is compared against
//! ([`crate::bench::keepalived`] times the takeover).
//!
//! # Setup
//!
//! One keepalived 2.x per campus, started with `ip netns exec` in that
//! campus's namespace, VRRP subsystem only, in the foreground, with its own
//! configuration, pidfiles and log in the campus directory. Both are recorded
//! with the lab, so a crashed run is cleaned up by the next lab.
//!
//! * A: `state MASTER`, priority 150; B: `state BACKUP`, priority 100.
//! * Unicast VRRP between the campuses' WAN addresses (198.18.0.2 and
//!   198.18.1.2); the adverts cross the lab's WAN router.
//! * The virtual address is [`VIP`], 198.18.200.1/32, on `wan0`. The campuses
//!   sit on different routed /24s, not on one L2 segment, so no client could
//!   follow the address by gratuitous ARP: moving it across a routed WAN
//!   needs a route announcement, which is hinan's job (DNS, SDN), not VRRP's.
//!   The address is only the visible sign of keepalived's decision "the
//!   master is gone, I take over", and it is taken from a range that neither
//!   campus's link uses, so that holding it means nothing else. That decision
//!   is what hinan's failure detector is compared against.
//!
//! # Settings
//!
//! * [`Settings::DEFAULT`]: VRRPv2, `advert_int 1` (keepalived's default).
//!   The backup's Master_Down_Interval is 3 × 1 s + (256 − 100)/256 × 1 s
//!   = 3.61 s.
//! * [`Settings::FASTEST`]: VRRPv3, `advert_int 0.01`: keepalived 2.2.7 reads
//!   the interval in steps of 10 ms and rejects anything below 0.01, and
//!   VRRPv3 carries it in centiseconds. Master_Down_Interval 36.1 ms.
//!

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::lab::procs::ProcRecord;
use crate::lab::sys;
use crate::lab::{Campus, Lab};

/// The virtual address the master holds (see the module documentation).
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 1);
/// The VRRP virtual router id.
pub const VRID: u8 = 51;
pub const MASTER_PRIORITY: u8 = 150;
pub const BACKUP_PRIORITY: u8 = 100;
/// The interface VRRP runs on and the VIP is put on, at each campus.
pub const INTERFACE: &str = "wan0";

/// VRRP timing settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Settings {
    pub name: &'static str,
    /// VRRP version (2 or 3).
    pub version: u8,
    /// Advertisement interval, in centiseconds (keepalived's resolution).
    pub advert_int_cs: u32,
}

impl Settings {
    /// keepalived's defaults: VRRPv2, one advert per second.
    pub const DEFAULT: Settings = Settings {
        name: "default",
        version: 2,
        advert_int_cs: 100,
    };
    /// The fastest keepalived 2.2.7 accepts: VRRPv3, one advert per 10 ms.
    pub const FASTEST: Settings = Settings {
        name: "fastest",
        version: 3,
        advert_int_cs: 1,
    };

    pub fn advert_int(&self) -> Duration {
        Duration::from_millis(u64::from(self.advert_int_cs) * 10)
    }

    /// RFC 5798's Skew_Time for a router of `priority`: (256 − priority)/256 of an advert interval.
    pub fn skew(&self, priority: u8) -> Duration {
        self.advert_int() * (256 - u32::from(priority)) / 256
    }

    /// RFC 5798's Master_Down_Interval: 3 advert intervals plus the skew.
    pub fn master_down_interval(&self, priority: u8) -> Duration {
        self.advert_int() * 3 + self.skew(priority)
    }

    /// How long a trial waits for the backup to take over before calling it a timeout.
    pub fn takeover_limit(&self) -> Duration {
        self.master_down_interval(BACKUP_PRIORITY) + Duration::from_secs(2)
    }

    /// How long the pair may take to settle with A as master: A starting up
    /// (one advert plus skew), or A coming back from fault (a full down
    /// interval), then B hearing it, with room for a loaded machine.
    pub fn settle_limit(&self) -> Duration {
        self.master_down_interval(MASTER_PRIORITY) * 3 + Duration::from_secs(5)
    }

    /// `advert_int` as keepalived reads it: seconds with up to two decimals.
    fn advert_int_text(&self) -> String {
        let (s, cs) = (self.advert_int_cs / 100, self.advert_int_cs % 100);
        if cs == 0 {
            s.to_string()
        } else {
            format!("{s}.{cs:02}")
        }
    }
}

impl FromStr for Settings {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Settings> {
        match s {
            "default" => Ok(Settings::DEFAULT),
            "fastest" => Ok(Settings::FASTEST),
            _ => bail!("unknown keepalived settings '{s}' (known: default, fastest)"),
        }
    }
}

/// Which side of the pair an instance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Master,
    Backup,
}

impl Role {
    pub fn priority(self) -> u8 {
        match self {
            Role::Master => MASTER_PRIORITY,
            Role::Backup => BACKUP_PRIORITY,
        }
    }

    fn state(self) -> &'static str {
        match self {
            Role::Master => "MASTER",
            Role::Backup => "BACKUP",
        }
    }
}

/// The keepalived configuration of one side: unicast VRRP from `own` to `peer`.
pub fn config(settings: &Settings, role: Role, own: Ipv4Addr, peer: Ipv4Addr) -> String {
    format!(
        "# Written by hinan-bench for one VRRP benchmark run.
global_defs {{
    router_id hinan-bench-{role}
    vrrp_version {version}
}}

vrrp_instance bench {{
    state {state}
    interface {INTERFACE}
    virtual_router_id {VRID}
    priority {priority}
    advert_int {advert}
    unicast_src_ip {own}
    unicast_peer {{
        {peer}
    }}
    virtual_ipaddress {{
        {VIP}/32 dev {INTERFACE}
    }}
}}
",
        role = role.state().to_lowercase(),
        version = settings.version,
        state = role.state(),
        priority = role.priority(),
        advert = settings.advert_int_text(),
    )
}

/// One keepalived (parent and VRRP child) running in a campus's namespace.
#[derive(Debug)]
pub struct Keepalived {
    pub ns: String,
    pub role: Role,
    dir: PathBuf,
    child: Option<Child>,
    pub parent: ProcRecord,
    pub vrrp: ProcRecord,
}

impl Keepalived {
    /// Starts keepalived at `campus` and waits until its VRRP child runs.
    pub fn start(
        lab: &mut Lab,
        campus: &Campus,
        role: Role,
        settings: &Settings,
        peer: Ipv4Addr,
    ) -> Result<Keepalived> {
        let dir = campus.dir.join("keepalived");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let cfg = dir.join("keepalived.conf");
        fs::write(&cfg, config(settings, role, campus.public_ip, peer))?;
        let pid = dir.join("keepalived.pid");
        let vrrp_pid = dir.join("vrrp.pid");
        for f in [&pid, &vrrp_pid] {
            let _ = fs::remove_file(f);
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("keepalived.log"))?;
        let path = |p: &Path| p.display().to_string();
        let child = Command::new("ip")
            .args(["netns", "exec", &campus.ns, "keepalived"])
            // VRRP only, in the foreground, logging in detail to the console
            // (our log file) and not to syslog; every file in the campus directory.
            .args(["--vrrp", "--dont-fork", "--log-console", "--log-detail"])
            .args(["--no-syslog", "--dont-respawn"])
            .args(["-f", &path(&cfg), "-p", &path(&pid), "-r", &path(&vrrp_pid)])
            .args(["-c", &path(&dir.join("checkers.pid"))])
            .args(["-b", &path(&dir.join("bfd.pid"))])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting keepalived (is it installed? `.ci/deps.sh bench` installs it)")?;
        // `ip netns exec` execs keepalived in place: the child is keepalived's parent process.
        let who = format!("{}/keepalived", campus.name);
        let parent = ProcRecord::of(&who, child.id() as i32)
            .with_context(|| format!("keepalived at {} exited at once", campus.name))?;
        lab.record(parent.clone())?;
        let mut me = Keepalived {
            ns: campus.ns.clone(),
            role,
            dir,
            child: Some(child),
            vrrp: parent.clone(),
            parent,
        };
        let vrrp = sys::wait_for(
            &format!("keepalived's VRRP child at {}", campus.name),
            Duration::from_secs(10),
            Duration::from_millis(10),
            || {
                if me.parent_exited() {
                    bail!("keepalived exited; its log:\n{}", me.log_tail(20));
                }
                Ok(ProcRecord::from_pidfile(&format!("{who}-vrrp"), &vrrp_pid)
                    .filter(|r| r.pid != me.parent.pid))
            },
        )?;
        lab.record(vrrp.clone())?;
        me.vrrp = vrrp;
        Ok(me)
    }

    fn parent_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// `kill -9` of keepalived's parent process, as a crash of the daemon.
    /// Returns the instant right before the signal. Its VRRP child, whose
    /// parent-death signal is SIGTERM, then leaves the way keepalived always
    /// leaves: with a priority-0 advert.
    pub fn kill9(&mut self) -> Instant {
        let at = Instant::now();
        signal(&self.parent, libc::SIGKILL);
        at
    }

    /// Freezes the VRRP child and the parent (`SIGSTOP`): they send nothing
    /// more, and nothing tells the backup. Returns the instant right before.
    pub fn freeze(&self) -> Instant {
        let at = Instant::now();
        signal(&self.vrrp, libc::SIGSTOP);
        signal(&self.parent, libc::SIGSTOP);
        at
    }

    pub fn thaw(&self) {
        signal(&self.parent, libc::SIGCONT);
        signal(&self.vrrp, libc::SIGCONT);
    }

    /// Waits until both processes are gone (after [`Keepalived::kill9`]).
    pub fn wait_gone(&mut self, limit: Duration) -> Result<()> {
        sys::wait_for(
            "keepalived to exit",
            limit,
            Duration::from_millis(10),
            || {
                let _ = self.parent_exited();
                Ok((!self.parent.alive() && !self.vrrp.alive()).then_some(()))
            },
        )
    }

    /// Stops both processes (SIGTERM, then SIGKILL after a grace period) and reaps the parent.
    pub fn stop(&mut self) {
        self.thaw();
        self.parent.stop(Duration::from_secs(5));
        self.vrrp.stop(Duration::from_secs(2));
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("keepalived.log")
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal(rec: &ProcRecord, sig: i32) {
    if rec.alive() {
        // SAFETY: kill(2) has no memory-safety preconditions; the record
        // was checked to still name the process we started.
        unsafe {
            libc::kill(rec.pid, sig);
        }
    }
}

/// Whether `ns` has the VIP on its VRRP interface now.
pub fn holds_vip(ns: &str) -> Result<bool> {
    let out = sys::ip(ns, &["-4", "-o", "addr", "show", "dev", INTERFACE])?;
    Ok(has_addr(&out, VIP))
}

/// Whether `ip -o addr show` output lists `addr` (as `addr/len`).
pub fn has_addr(ip_o_addr: &str, addr: Ipv4Addr) -> bool {
    let want = format!("{addr}/");
    ip_o_addr.split_whitespace().any(|w| w.starts_with(&want))
}

/// keepalived's version line (`Keepalived v2.2.7 (01/16,2022)`).
pub fn version() -> Result<String> {
    let out = Command::new("keepalived")
        .arg("--version")
        .output()
        .context("running keepalived --version")?;
    // keepalived prints its version on stderr.
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .find(|l| l.starts_with("Keepalived"))
        .unwrap_or("keepalived (unknown version)")
        .trim()
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_down_interval_follows_rfc_5798() {
        let d = Settings::DEFAULT.master_down_interval(BACKUP_PRIORITY);
        assert_eq!(d, Duration::from_micros(3_609_375));
        let f = Settings::FASTEST.master_down_interval(BACKUP_PRIORITY);
        assert_eq!(f, Duration::from_nanos(36_093_750));
    }

    #[test]
    fn config_has_the_side_specific_values() {
        let c = config(
            &Settings::FASTEST,
            Role::Master,
            Ipv4Addr::new(198, 18, 0, 2),
            Ipv4Addr::new(198, 18, 1, 2),
        );
        for want in [
            "vrrp_version 3",
            "state MASTER",
            "priority 150",
            "advert_int 0.01",
            "unicast_src_ip 198.18.0.2",
            "        198.18.1.2\n",
            "198.18.200.1/32 dev wan0",
        ] {
            assert!(c.contains(want), "missing {want:?} in\n{c}");
        }
        let d = config(
            &Settings::DEFAULT,
            Role::Backup,
            Ipv4Addr::new(198, 18, 1, 2),
            Ipv4Addr::new(198, 18, 0, 2),
        );
        assert!(d.contains("advert_int 1\n") && d.contains("vrrp_version 2"));
        assert!(d.contains("state BACKUP") && d.contains("priority 100"));
    }

    #[test]
    fn finds_the_vip_in_ip_o_addr_output() {
        let out = "3: wan0    inet 198.18.1.2/24 scope global wan0\\       valid_lft forever preferred_lft forever\n\
                   3: wan0    inet 198.18.200.1/32 scope global wan0\\       valid_lft forever preferred_lft forever\n";
        assert!(has_addr(out, VIP));
        assert!(!has_addr(out, Ipv4Addr::new(198, 18, 200, 10)));
        assert!(!has_addr("", VIP));
    }
}
