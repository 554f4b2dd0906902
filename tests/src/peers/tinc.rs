//! tinc 1.0 in switch mode (L2 over TAP) between two campuses, as the peer
//! of hinan's L2 VPN.

use std::ffi::OsStr;
use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context, Result};

use crate::lab::daemon::{address_device, run_tag, Daemon};
use crate::lab::run::RunDir;
use crate::lab::sys;
use crate::lab::Campus;

/// tinc 1.0 in switch mode: one config directory per campus with its RSA key
/// pair (generated non-interactively) and both host files; A connects to B.
/// `inside[0]` and `inside[1]` (a /24) go on A's and B's TAP device.
pub fn start(
    run: &mut RunDir,
    dir: &Path,
    a: &Campus,
    b: &Campus,
    inside: [Ipv4Addr; 2],
) -> Result<Vec<Daemon>> {
    const PORT: u16 = 655;
    let tag = run_tag(run);
    let conf = |c: &Campus| dir.join(format!("tinc-{}", c.name));
    for (me, peer) in [(a, b), (b, a)] {
        let d = conf(me);
        fs::create_dir_all(d.join("hosts"))?;
        let mut text = format!(
            "Name = {}\nMode = switch\nInterface = tnb{tag}{}\nAddressFamily = ipv4\nBindToAddress = {}\nPort = {PORT}\n",
            me.name, me.name, me.public_ip
        );
        if me.index == 0 {
            text.push_str(&format!("ConnectTo = {}\n", peer.name));
        }
        fs::write(d.join("tinc.conf"), text)?;
        fs::write(
            d.join("hosts").join(&me.name),
            format!("Address = {}\nPort = {PORT}\n", me.public_ip),
        )?;
        sys::run("tincd", &["-c", &d.to_string_lossy(), "-K2048"])
            .context("generating tinc's keys (`tincd -K`; `.ci/deps.sh bench` installs tinc)")?;
    }
    for (me, peer) in [(a, b), (b, a)] {
        fs::copy(
            conf(me).join("hosts").join(&me.name),
            conf(peer).join("hosts").join(&me.name),
        )?;
    }
    let mut daemons = Vec::new();
    for me in [b, a] {
        let d = conf(me);
        let daemon = Daemon::start(
            run,
            &me.ns,
            &format!("vpnbench/tincd/{}", me.name),
            OsStr::new("tincd"),
            &[
                "-c",
                &d.to_string_lossy(),
                "-D",
                &format!("--pidfile={}", d.join("tinc.pid").display()),
            ],
            &dir.join(format!("tincd-{}.log", me.name)),
        )
        .context("starting tincd (`.ci/deps.sh bench` installs tinc)")?;
        let dev = format!("tnb{tag}{}", me.name);
        let side = if me.index == 0 { 0 } else { 1 };
        address_device(&me.ns, &dev, inside[side], &daemon)?;
        daemons.push(daemon);
    }
    Ok(daemons)
}
