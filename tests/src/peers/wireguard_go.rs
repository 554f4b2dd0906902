//! wireguard-go (Debian's userspace WireGuard, L3 over TUN) between two
//! campuses, as the peer of hinan's L2 VPN. Each end gets its own interface
//! name: wireguard-go's UAPI sockets live in /var/run/wireguard, shared by
//! every namespace.

use std::ffi::OsStr;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::lab::daemon::{address_device, run_tag, wait_while_running, Daemon};
use crate::lab::run::RunDir;
use crate::lab::sys::{self, ip, run_in};
use crate::lab::Campus;

/// A WireGuard key pair from `wg genkey` / `wg pubkey`.
#[derive(Debug, Clone)]
pub struct WgKeys {
    pub private: String,
    pub public: String,
}

pub fn keys() -> Result<WgKeys> {
    let private = sys::run("wg", &["genkey"])
        .context("`wg genkey` (wireguard-tools; `.ci/deps.sh bench` installs it)")?
        .trim()
        .to_string();
    let public = sys::run_with_input("wg", &["pubkey"], Some(&format!("{private}\n")))?
        .trim()
        .to_string();
    Ok(WgKeys { private, public })
}

/// wireguard-go at campuses `a` and `b`, each the other's only peer over the
/// WAN, with `inside[0]` and `inside[1]` (a /24) on A's and B's interface.
pub fn start(
    run: &mut RunDir,
    dir: &Path,
    a: &Campus,
    b: &Campus,
    inside: [Ipv4Addr; 2],
) -> Result<Vec<Daemon>> {
    const PORT: u16 = 51821;
    let tag = run_tag(run);
    let keys = [keys()?, keys()?];
    let mut daemons = Vec::new();
    for (me, peer, mine, theirs) in [(a, b, 0usize, 1usize), (b, a, 1, 0)] {
        let dev = format!("wgb{tag}{}", me.name);
        let key_file = dir.join(format!("{}.key", me.name));
        fs::write(&key_file, format!("{}\n", keys[mine].private))?;
        let sock = PathBuf::from(format!("/var/run/wireguard/{dev}.sock"));
        let mut d = Daemon::start(
            run,
            &me.ns,
            &format!("vpnbench/wireguard-go/{}", me.name),
            OsStr::new("env"),
            &[
                // Debian's build refuses to start where the kernel module could be used.
                "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1",
                "LOG_LEVEL=error",
                "wireguard-go",
                "-f",
                &dev,
            ],
            &dir.join(format!("wireguard-go-{}.log", me.name)),
        )
        .context("starting wireguard-go (`.ci/deps.sh bench` installs it)")?;
        // wireguard-go removes its UAPI socket on SIGTERM, not after SIGKILL.
        d.leaves.push(sock.clone());
        wait_while_running(
            &format!("wireguard-go's UAPI socket {}", sock.display()),
            Duration::from_secs(10),
            Duration::from_millis(20),
            &[&d],
            || sock.exists().then_some(()),
        )?;
        run_in(
            &me.ns,
            "wg",
            &[
                "set",
                &dev,
                "private-key",
                &key_file.to_string_lossy(),
                "listen-port",
                &PORT.to_string(),
                "peer",
                &keys[theirs].public,
                "endpoint",
                &format!("{}:{PORT}", peer.public_ip),
                "allowed-ips",
                &format!("{}/32", inside[theirs]),
            ],
        )?;
        ip(&me.ns, &["link", "set", &dev, "mtu", "1420"])?;
        address_device(&me.ns, &dev, inside[mine], &d)?;
        daemons.push(d);
    }
    Ok(daemons)
}
