//! Knot DNS as a peer: an authoritative primary serving a zone file (the DNS
//! benchmark's peer) and a secondary of a hinan zone, fed by AXFR/IXFR after
//! NOTIFY with TSIG (the interop tests).

use std::ffi::OsStr;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::lab::daemon::Daemon;
use crate::lab::dnslab::{addresses, free_port, TempDir};
use crate::lab::run::RunDir;
use crate::lab::sys;
use crate::peers::ServedZone;

/// Knot with its defaults (one UDP worker per CPU), everything in `dir`.
pub fn primary_config(dir: &Path, zone: &ServedZone<'_>) -> String {
    let d = dir.display();
    let ServedZone {
        origin,
        listen,
        port,
        ..
    } = zone;
    format!(
        "server:\n    rundir: \"{d}/run\"\n    listen: {listen}@{port}\n\
         database:\n    storage: \"{d}/storage\"\n\
         log:\n  - target: stderr\n    any: warning\n\
         zone:\n  - domain: {origin}\n    file: \"{}\"\n    storage: \"{d}/storage\"\n    zonefile-sync: -1\n    journal-content: none\n",
        zone.file.display()
    )
}

/// Starts `knotd` in `ns` as the primary of `zone`, its files in `dir`, its
/// output in `log`, recorded in `run` as `role`.
pub fn start_primary(
    run: &mut RunDir,
    ns: &str,
    role: &str,
    dir: &Path,
    zone: &ServedZone<'_>,
    log: &Path,
) -> Result<Daemon> {
    let conf = dir.join("knot.conf");
    fs::create_dir_all(dir.join("run"))?;
    fs::create_dir_all(dir.join("storage"))?;
    fs::write(&conf, primary_config(dir, zone))?;
    Daemon::start(
        run,
        ns,
        role,
        OsStr::new("knotd"),
        &[OsStr::new("-c"), conf.as_os_str()],
        log,
    )
    .context("starting knotd (`.ci/deps.sh bench` installs knot)")
}

/// knotd's version line.
pub fn version() -> Option<String> {
    sys::version_line("knotd", &["--version"])
}

/// A TSIG key as Knot and BIND name it.
#[derive(Debug, Clone)]
pub struct TsigKey {
    pub name: String,
    pub secret_b64: String,
}

/// Knot DNS, secondary for one zone whose primary is hinan.
#[derive(Debug)]
pub struct KnotSecondary {
    child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
    _dir: TempDir,
}

impl KnotSecondary {
    /// Starts `knotd` on 127.0.0.1 (a free port), secondary for `zone` from
    /// `primary`, transfers signed with `key`, NOTIFY accepted from 127.0.0.1.
    pub fn start(zone: &str, primary: SocketAddr, key: &TsigKey) -> Result<KnotSecondary> {
        if !sys::have("knotd") {
            bail!("knotd is missing: apt-get install knot (make test installs it)");
        }
        let dir = TempDir::new("knot")?;
        let port = free_port()?;
        let d = dir.0.display();
        let conf = format!(
            r#"server:
    rundir: "{d}"
    listen: 127.0.0.1@{port}
log:
  - target: "{d}/knot.log"
    any: info
database:
    storage: "{d}"
key:
  - id: {kname}
    algorithm: hmac-sha256
    secret: {secret}
remote:
  - id: hinan
    address: {pip}@{pport}
    key: {kname}
acl:
  - id: notify-from-hinan
    address: {pip}
    action: notify
template:
  - id: default
    storage: "{d}"
    zonefile-sync: -1
    zonefile-load: none
    journal-content: none
zone:
  - domain: {zone}
    master: hinan
    acl: notify-from-hinan
"#,
            kname = key.name,
            secret = key.secret_b64,
            pip = primary.ip(),
            pport = primary.port(),
        );
        let conf_path = dir.0.join("knot.conf");
        std::fs::write(&conf_path, conf)?;
        let log = dir.0.join("knot.log");
        let child = Command::new("knotd")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting knotd")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let knot = KnotSecondary {
            child,
            addr,
            log,
            _dir: dir,
        };
        Ok(knot)
    }

    /// Knot's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until Knot answers `name` with `want` (polling every 20 ms).
    pub fn wait_answer(&self, name: &str, want: &str, limit: Duration) -> Result<Duration> {
        let start = std::time::Instant::now();
        sys::wait_for(
            &format!("Knot to answer {name} with {want}"),
            limit,
            Duration::from_millis(20),
            || {
                Ok(addresses(self.addr, name, false)?
                    .iter()
                    .any(|a| a == want)
                    .then_some(()))
            },
        )?;
        Ok(start.elapsed())
    }
}

impl Drop for KnotSecondary {
    fn drop(&mut self) {
        // Our own child, by its PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
