//! hinan's L2 VPN in the lab: one `hinan vpn run` per campus edge namespace,
//! a full mesh of tunnels over the WAN, its TAP device a port of the
//! campus's OVS bridge (or, for throughput tests, a plain interface).

use std::ffi::OsStr;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::lab::procs::ProcRecord;
use crate::lab::sys;

/// The TAP device each endpoint creates in the lab.
pub const LAB_TAP: &str = "hv0";
/// The WireGuard UDP port in the lab.
pub const WG_PORT: u16 = 51820;

/// How the campus segments are joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum SegmentLink {
    /// hinan's EtherIP straight in IP (RFC 3378), unencrypted.
    VpnRaw,
    /// hinan's EtherIP inside WireGuard (the default).
    #[default]
    VpnWireGuard,
    /// A veth star from campus A: a direct wire beside the WAN, for tests
    /// that need a second path independent of it.
    Veth,
}

impl SegmentLink {
    /// The `transport` value of the `[vpn]` table, if this is the VPN.
    pub fn transport(self) -> Option<&'static str> {
        match self {
            SegmentLink::VpnRaw => Some("raw"),
            SegmentLink::VpnWireGuard => Some("wireguard"),
            SegmentLink::Veth => None,
        }
    }
}

impl fmt::Display for SegmentLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SegmentLink::VpnRaw => "raw",
            SegmentLink::VpnWireGuard => "wireguard",
            SegmentLink::Veth => "veth",
        })
    }
}

impl FromStr for SegmentLink {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "raw" => Ok(SegmentLink::VpnRaw),
            "wireguard" | "wg" => Ok(SegmentLink::VpnWireGuard),
            "veth" => Ok(SegmentLink::Veth),
            other => bail!("unknown segment link '{other}': use raw, wireguard or veth"),
        }
    }
}

/// One endpoint of the mesh.
#[derive(Debug, Clone)]
pub struct VpnSite {
    pub name: String,
    pub ns: String,
    /// The address tunnels run between.
    pub public_ip: Ipv4Addr,
    /// Where its config, key, log and status socket live.
    pub dir: PathBuf,
}

impl VpnSite {
    pub fn config(&self) -> PathBuf {
        self.dir.join("vpn.toml")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("vpn.log")
    }
    pub fn status_socket(&self) -> PathBuf {
        self.dir.join("vpn.sock")
    }
    fn tunnel_ip(index: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 255, 0, index as u8 + 1)
    }
}

/// Options for the mesh's configuration files.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    pub link: SegmentLink,
    pub tap: String,
    /// TSO/checksum offload on the TAP; never for a TAP on OVS.
    pub offload: bool,
    /// Extra lines for every `[vpn]` table.
    pub extra: String,
}

impl MeshOptions {
    pub fn new(link: SegmentLink) -> MeshOptions {
        MeshOptions {
            link,
            tap: LAB_TAP.to_owned(),
            offload: false,
            extra: String::new(),
        }
    }
}

/// A WireGuard key pair in base64.
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub private: String,
    pub public: String,
}

/// Makes a key pair with `hinan vpn genkey` / `pubkey`.
pub fn keypair() -> Result<KeyPair> {
    let bin = hinan_bin()?;
    let bin = bin.to_str().context("hinan path is not UTF-8")?;
    let private = sys::run(bin, &["vpn", "genkey"])?.trim().to_owned();
    let public = sys::run_with_input(bin, &["vpn", "pubkey"], Some(&private))?
        .trim()
        .to_owned();
    Ok(KeyPair { private, public })
}

pub fn hinan_bin() -> Result<PathBuf> {
    sys::workspace_binary("hinan", "HINAN_BIN", "hinan-orchestrator")
}

/// Writes every site's `vpn.toml`: a full mesh. Returns the key pairs (for
/// WireGuard) in site order.
pub fn write_mesh(sites: &[VpnSite], opts: &MeshOptions) -> Result<Vec<Option<KeyPair>>> {
    let Some(transport) = opts.link.transport() else {
        bail!("segment link {} is not the VPN", opts.link);
    };
    let keys: Vec<Option<KeyPair>> = sites
        .iter()
        .map(|_| {
            if opts.link == SegmentLink::VpnWireGuard {
                keypair().map(Some)
            } else {
                Ok(None)
            }
        })
        .collect::<Result<_>>()?;
    for (i, site) in sites.iter().enumerate() {
        std::fs::create_dir_all(&site.dir)?;
        let text = mesh_config(sites, &keys, i, transport, opts);
        std::fs::write(site.config(), text)?;
    }
    Ok(keys)
}

/// One site's `[vpn]` table in a full mesh.
pub fn mesh_config(
    sites: &[VpnSite],
    keys: &[Option<KeyPair>],
    me: usize,
    transport: &str,
    opts: &MeshOptions,
) -> String {
    let site = &sites[me];
    let wg = keys[me].is_some();
    let mut text = format!(
        "[vpn]\ntap = \"{}\"\ntransport = \"{transport}\"\noffload = {}\n",
        opts.tap, opts.offload
    );
    if let Some(k) = &keys[me] {
        text += &format!(
            "local = \"{}:{WG_PORT}\"\nprivate_key = \"{}\"\ntunnel_local = \"{}\"\n",
            site.public_ip,
            k.private,
            VpnSite::tunnel_ip(me)
        );
    } else {
        text += &format!("local = \"{}\"\n", site.public_ip);
    }
    text += &opts.extra;
    for (j, other) in sites.iter().enumerate() {
        if j == me {
            continue;
        }
        text += &format!("\n[[vpn.peer]]\nname = \"{}\"\n", other.name);
        match &keys[j] {
            Some(k) if wg => {
                text += &format!(
                    "endpoint = \"{}:{WG_PORT}\"\npublic_key = \"{}\"\ntunnel_address = \"{}\"\n",
                    other.public_ip,
                    k.public,
                    VpnSite::tunnel_ip(j)
                );
            }
            _ => text += &format!("endpoint = \"{}\"\n", other.public_ip),
        }
    }
    text
}

/// Starts `hinan vpn run` at a site and waits for its TAP device. Returns
/// the process record for the caller's manifest. With `appliance`, the
/// endpoint tells the appliance on that control socket of MAC moves.
pub fn start_endpoint(site: &VpnSite, tap: &str, appliance: Option<&Path>) -> Result<ProcRecord> {
    let bin = hinan_bin()?;
    let config = site.config();
    let socket = site.status_socket();
    let mut args: Vec<&OsStr> = vec![
        "-c".as_ref(),
        config.as_os_str(),
        "vpn".as_ref(),
        "run".as_ref(),
        "--status-socket".as_ref(),
        socket.as_os_str(),
    ];
    if let Some(appliance) = appliance {
        args.push("--appliance-socket".as_ref());
        args.push(appliance.as_os_str());
    }
    let pid = sys::spawn_daemon_in(&site.ns, bin.as_os_str(), &args, &site.log())?;
    let rec = ProcRecord::of(&format!("vpn-{}", site.name), pid as i32).with_context(|| {
        format!(
            "hinan vpn at {} exited at once:\n{}",
            site.name,
            tail(&site.log())
        )
    })?;
    sys::wait_for(
        &format!("the VPN endpoint at {} to create {tap}", site.name),
        Duration::from_secs(10),
        Duration::from_millis(20),
        || Ok(sys::ip(&site.ns, &["link", "show", tap]).ok().map(drop)),
    )
    .with_context(|| format!("hinan vpn log at {}:\n{}", site.name, tail(&site.log())))?;
    Ok(rec)
}

/// A running endpoint's status (`hinan vpn status`), as JSON.
pub fn status(site: &VpnSite) -> Result<serde_json::Value> {
    let bin = hinan_bin()?;
    let socket = site.status_socket();
    let out = sys::run(
        bin.to_str().context("hinan path is not UTF-8")?,
        &[
            "vpn",
            "status",
            "--status-socket",
            socket.to_str().context("path")?,
        ],
    )?;
    serde_json::from_str(&out).context("hinan vpn status printed no JSON")
}

/// The last lines of a log, for error messages.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
