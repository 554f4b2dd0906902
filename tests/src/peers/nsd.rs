//! NSD as a peer: an authoritative server of a zone file, the DNS
//! benchmark's second peer beside Knot.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

use crate::lab::daemon::Daemon;
use crate::lab::run::RunDir;
use crate::lab::sys;
use crate::peers::ServedZone;

/// NSD without response rate limiting (it would throttle the load), with
/// `servers` processes sharing the port, every file in `dir`.
pub fn config(dir: &Path, zone: &ServedZone<'_>, servers: usize) -> String {
    let d = dir.display();
    let ServedZone {
        origin,
        listen,
        port,
        ..
    } = zone;
    format!(
        "server:\n    ip-address: {listen}\n    port: {port}\n    server-count: {servers}\n    reuseport: yes\n\
         \x20   username: \"\"\n    chroot: \"\"\n    database: \"\"\n    zonesdir: \"{d}\"\n\
         \x20   pidfile: \"{d}/nsd.pid\"\n    xfrdfile: \"{d}/xfrd.state\"\n    zonelistfile: \"{d}/zone.list\"\n\
         \x20   xfrdir: \"{d}\"\n    rrl-ratelimit: 0\n    verbosity: 1\n\
         remote-control:\n    control-enable: no\n\
         zone:\n    name: {origin}\n    zonefile: \"{}\"\n",
        zone.file.display()
    )
}

/// Starts `nsd` in `ns` (foreground, checked with `nsd-checkconf` first) for
/// `zone` with `servers` processes, its files in `dir`, its output in `log`,
/// recorded in `run` as `role`.
pub fn start(
    run: &mut RunDir,
    ns: &str,
    role: &str,
    dir: &Path,
    zone: &ServedZone<'_>,
    servers: usize,
    log: &Path,
) -> Result<Daemon> {
    let conf = dir.join("nsd.conf");
    fs::write(&conf, config(dir, zone, servers))?;
    sys::run("nsd-checkconf", &[conf.as_os_str()])
        .context("nsd-checkconf rejects the generated configuration")?;
    Daemon::start(
        run,
        ns,
        role,
        OsStr::new("nsd"),
        &[OsStr::new("-d"), OsStr::new("-c"), conf.as_os_str()],
        log,
    )
    .context("starting nsd (`.ci/deps.sh bench` installs it)")
}

/// nsd's version line.
pub fn version() -> Option<String> {
    sys::version_line("nsd", &["-v"])
}
