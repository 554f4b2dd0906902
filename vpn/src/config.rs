//! The `[vpn]` table of an appliance's configuration, checked and resolved
//! into what the endpoint runs with.
//!
//! ```toml
//! [vpn]
//! tap = "hv0"                  # TAP device hinan creates (or attaches to)
//! transport = "wireguard"      # or "raw" (RFC 3378, IP protocol 97)
//! local = "198.18.1.2:51820"   # raw: outer source address; wireguard: UDP socket
//! private_key_file = "/etc/hinan/wg.key"   # or private_key = "<base64>"
//! tunnel_local = "10.255.0.1"  # wireguard: source of the inner IP header
//!
//! [[vpn.peer]]
//! name = "campus-b"
//! endpoint = "198.18.2.2:51820"
//! public_key = "<base64>"
//! tunnel_address = "10.255.0.2"
//! ```
//!
//! Every field and its default is listed in README.md ("Configuration
//! reference", `[vpn]`).

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

use crate::mtu::{IpVersion, Transport};
use crate::session::{PublicKey, StaticSecret};

/// The WireGuard port when `local` or an endpoint gives none.
pub const DEFAULT_WIREGUARD_PORT: u16 = 51820;
/// The TAP device's MTU by default: a standard Ethernet segment, so guests
/// need no change. Larger frames than the path carries are sent as
/// fragmented outer packets; TCP avoids that through MSS clamping.
pub const DEFAULT_TAP_MTU: usize = 1500;

/// How frames cross between campuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// RFC 3378 EtherIP straight in IPv4/IPv6 with protocol 97, unencrypted.
    Raw,
    /// EtherIP in an IP header inside WireGuard over UDP.
    Wireguard,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Raw => "raw",
            TransportKind::Wireguard => "wireguard",
        })
    }
}

/// The `[vpn]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VpnConfig {
    /// TAP device name (at most 15 bytes).
    pub tap: String,
    /// TAP MTU; default [`DEFAULT_TAP_MTU`].
    #[serde(default)]
    pub mtu: Option<usize>,
    /// Offer checksum/TSO offload on the TAP (vnet headers): the kernel hands
    /// over 64 KB TCP frames and takes coalesced ones. Only for a TAP the
    /// kernel's own stack uses; never for a TAP on an OVS userspace bridge,
    /// which forwards partial checksums unfinished. Default off.
    #[serde(default)]
    pub offload: bool,
    pub transport: TransportKind,
    /// Raw: the outer source address. WireGuard: the UDP socket address
    /// (port [`DEFAULT_WIREGUARD_PORT`] if left out).
    pub local: String,
    /// WireGuard: this appliance's private key, base64 (as `wg genkey`).
    #[serde(default)]
    pub private_key: Option<String>,
    /// WireGuard: a file holding the private key, base64.
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// WireGuard: the source address of the inner IP header that carries
    /// EtherIP (a peer such as wireguard-go checks it against its allowed
    /// IPs).
    #[serde(default)]
    pub tunnel_local: Option<IpAddr>,
    /// Forward between tunnels too (hub and spoke). Default false: split
    /// horizon, for a full mesh.
    #[serde(default)]
    pub hub: bool,
    /// Seconds a learned MAC lives without traffic. Default 300.
    #[serde(default = "default_mac_age")]
    pub mac_age_secs: u64,
    /// Broadcast/unknown-unicast frames flooded per second per ingress port;
    /// 0 floods without limit. Default 1000.
    #[serde(default = "default_flood_rate")]
    pub flood_rate: u32,
    /// Flooded frames allowed back to back. Default 2000.
    #[serde(default = "default_flood_burst")]
    pub flood_burst: u32,
    /// Lower the MSS of TCP SYNs crossing a tunnel so segments fit the path
    /// unfragmented. Default true.
    #[serde(default = "default_true")]
    pub mss_clamp: bool,
    /// The path MTU between campuses, for the MSS clamp. Default 1500.
    #[serde(default = "default_path_mtu")]
    pub path_mtu: usize,
    /// Raw: also accept the nibble-reversed header of old FreeBSD `gif`.
    #[serde(default)]
    pub accept_reversed_header: bool,
    /// Extra TAP queues read by their own threads (multi-queue). Default 1.
    #[serde(default = "default_queues")]
    pub queues: usize,
    #[serde(default, rename = "peer")]
    pub peers: Vec<PeerConfig>,
}

/// One `[[vpn.peer]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub name: String,
    /// Raw: the peer's address. WireGuard: `address:port` (port 51820 if
    /// left out). Optional for WireGuard: a peer without one is reached once
    /// it has sent an authenticated packet.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// WireGuard: the peer's public key, base64.
    #[serde(default)]
    pub public_key: Option<String>,
    /// WireGuard: an optional preshared key, base64.
    #[serde(default)]
    pub preshared_key: Option<String>,
    /// WireGuard: the destination of the inner IP header.
    #[serde(default)]
    pub tunnel_address: Option<IpAddr>,
    /// WireGuard: seconds between keepalives (for NAT), off by default.
    #[serde(default)]
    pub persistent_keepalive: Option<u16>,
    /// Outer source addresses (CIDR) from which this peer's packets are
    /// accepted, and to which its endpoint may roam. Default: raw, only the
    /// endpoint's address; WireGuard, any (packets are authenticated).
    #[serde(default)]
    pub allowed_sources: Option<Vec<String>>,
}

fn default_mac_age() -> u64 {
    300
}
fn default_flood_rate() -> u32 {
    1000
}
fn default_flood_burst() -> u32 {
    2000
}
fn default_true() -> bool {
    true
}
fn default_path_mtu() -> usize {
    1500
}
fn default_queues() -> usize {
    1
}

/// Why a `[vpn]` table was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("vpn: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("vpn: the configuration has no [vpn] table")]
    NoVpnTable,
    #[error("vpn: cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("vpn: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

/// An address range of `allowed_sources`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("'{text}' is not an address or CIDR range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("'{text}': prefix length must be 0 to {max}"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn host(addr: IpAddr) -> Cidr {
        Cidr {
            addr,
            prefix: if addr.is_ipv4() { 32 } else { 128 },
        }
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.addr, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// A peer as the endpoint runs it.
#[derive(Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    /// Raw: port 0.
    pub endpoint: Option<SocketAddr>,
    pub public_key: Option<[u8; 32]>,
    pub preshared_key: Option<[u8; 32]>,
    pub tunnel_address: Option<IpAddr>,
    pub persistent_keepalive: Option<u16>,
    /// Empty: any source.
    pub allowed_sources: Vec<Cidr>,
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peer")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("public_key", &self.public_key.map(|k| encode_key(&k)))
            .field("preshared_key", &self.preshared_key.map(|_| "<secret>"))
            .field("tunnel_address", &self.tunnel_address)
            .field("persistent_keepalive", &self.persistent_keepalive)
            .field("allowed_sources", &self.allowed_sources)
            .finish()
    }
}

impl Peer {
    pub fn accepts_source(&self, addr: IpAddr) -> bool {
        self.allowed_sources.is_empty() || self.allowed_sources.iter().any(|c| c.contains(addr))
    }
}

/// The checked configuration.
#[derive(Clone)]
pub struct Settings {
    pub tap: String,
    pub mtu: usize,
    pub offload: bool,
    pub queues: usize,
    pub transport: TransportKind,
    /// Raw: port 0.
    pub local: SocketAddr,
    pub private_key: Option<[u8; 32]>,
    pub tunnel_local: Option<IpAddr>,
    pub hub: bool,
    pub mac_age: Duration,
    /// `None`: flood without limit.
    pub flood: Option<(u32, u32)>,
    /// The MSS ceiling (IPv4, IPv6) for SYNs crossing a tunnel.
    pub mss_clamp: Option<(u16, u16)>,
    pub accept_reversed_header: bool,
    pub peers: Vec<Peer>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("tap", &self.tap)
            .field("mtu", &self.mtu)
            .field("offload", &self.offload)
            .field("queues", &self.queues)
            .field("transport", &self.transport)
            .field("local", &self.local)
            .field("private_key", &self.private_key.map(|_| "<secret>"))
            .field("tunnel_local", &self.tunnel_local)
            .field("hub", &self.hub)
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// The transport's headers, for MTU arithmetic.
    pub fn transport_headers(&self) -> Transport {
        let outer = version_of(self.local.ip());
        match self.transport {
            TransportKind::Raw => Transport::Raw(outer),
            TransportKind::Wireguard => Transport::WireGuard {
                outer,
                inner: self.tunnel_local.map(version_of).unwrap_or(IpVersion::V4),
            },
        }
    }

    pub fn static_secret(&self) -> Option<StaticSecret> {
        self.private_key.map(StaticSecret::from)
    }

    pub fn public_key(&self) -> Option<PublicKey> {
        self.static_secret().map(|s| PublicKey::from(&s))
    }
}

fn version_of(addr: IpAddr) -> IpVersion {
    match addr {
        IpAddr::V4(_) => IpVersion::V4,
        IpAddr::V6(_) => IpVersion::V6,
    }
}

/// Reads the `[vpn]` table of a whole appliance configuration file (other
/// tables are left to their owners).
pub fn load_file(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut table: toml::Table = toml::from_str(&text)?;
    let vpn = table.remove("vpn").ok_or(ConfigError::NoVpnTable)?;
    let config: VpnConfig = vpn.try_into()?;
    config.resolve(path.parent())
}

/// Decodes a base64 WireGuard key.
pub fn decode_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64 ({e})"))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("{} bytes, a WireGuard key has 32", b.len()))
}

/// Encodes a WireGuard key as base64, as `wg` prints it.
pub fn encode_key(key: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

fn parse_socket(text: &str, default_port: u16, what: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Ok(sa);
    }
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, default_port))
        .map_err(|_| {
            invalid(format!(
                "{what} '{text}' is not an IP address (or address:port)"
            ))
        })
}

impl VpnConfig {
    /// Checks the table and reads key files (relative to `base`).
    pub fn resolve(&self, base: Option<&Path>) -> Result<Settings, ConfigError> {
        if self.tap.is_empty() || self.tap.len() > 15 || self.tap.contains(['/', ' ']) {
            return Err(invalid(format!(
                "tap '{}' is not a valid interface name (1 to 15 bytes, no '/' or spaces)",
                self.tap
            )));
        }
        let mtu = self.mtu.unwrap_or(DEFAULT_TAP_MTU);
        if !(576..=9000).contains(&mtu) {
            return Err(invalid(format!("mtu {mtu} is outside 576..=9000")));
        }
        if !(1..=16).contains(&self.queues) {
            return Err(invalid(format!("queues {} is outside 1..=16", self.queues)));
        }
        if self.mac_age_secs == 0 {
            return Err(invalid(
                "mac_age_secs must be above 0 (IEEE 802.1D uses 300)",
            ));
        }
        let wg = self.transport == TransportKind::Wireguard;
        let port = if wg { DEFAULT_WIREGUARD_PORT } else { 0 };
        let mut local = parse_socket(&self.local, port, "local")?;
        if !wg {
            if local.port() != 0 {
                return Err(invalid(format!(
                    "local '{}': raw EtherIP has no ports; give the address only",
                    self.local
                )));
            }
            local.set_port(0);
        }
        let private_key = match (&self.private_key, &self.private_key_file) {
            (Some(_), Some(_)) => {
                return Err(invalid("give private_key or private_key_file, not both"))
            }
            (Some(k), None) => {
                Some(decode_key(k).map_err(|e| invalid(format!("private_key: {e}")))?)
            }
            (None, Some(file)) => {
                let path = match base {
                    Some(b) if file.is_relative() => b.join(file),
                    _ => file.clone(),
                };
                let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                Some(
                    decode_key(&text).map_err(|e| {
                        invalid(format!("private_key_file {}: {e}", path.display()))
                    })?,
                )
            }
            (None, None) => None,
        };
        if wg && private_key.is_none() {
            return Err(invalid(
                "transport \"wireguard\" needs private_key or private_key_file (make one with `wg genkey`)",
            ));
        }
        if !wg && private_key.is_some() {
            return Err(invalid("transport \"raw\" has no keys; remove private_key"));
        }
        if wg && self.tunnel_local.is_none() {
            return Err(invalid(
                "transport \"wireguard\" needs tunnel_local, the inner IP header's source address",
            ));
        }
        if !wg && (self.tunnel_local.is_some()) {
            return Err(invalid("tunnel_local is for transport \"wireguard\" only"));
        }
        let mut names = BTreeSet::new();
        let mut peers = Vec::new();
        for p in &self.peers {
            if !names.insert(p.name.as_str()) {
                return Err(invalid(format!("peer '{}' is configured twice", p.name)));
            }
            peers.push(p.resolve(self.transport, local, self.tunnel_local)?);
        }
        if peers.len() > usize::from(u16::MAX) {
            return Err(invalid("too many peers"));
        }
        for (i, p) in peers.iter().enumerate() {
            if let Some(c) = p
                .allowed_sources
                .iter()
                .find(|c| c.addr.is_ipv4() != local.is_ipv4())
            {
                return Err(invalid(format!(
                    "peer '{}': allowed_sources entry {}/{} is not the IP version of local {}",
                    p.name, c.addr, c.prefix, local
                )));
            }
            for q in &peers[..i] {
                if !wg && p.endpoint.is_some() && p.endpoint == q.endpoint {
                    return Err(invalid(format!(
                        "peers '{}' and '{}' have the same endpoint; raw EtherIP tells peers apart by address",
                        q.name, p.name
                    )));
                }
                let overlap = p.allowed_sources.iter().find(|a| {
                    q.allowed_sources
                        .iter()
                        .any(|b| a.contains(b.addr) || b.contains(a.addr))
                });
                if let Some(a) = overlap {
                    return Err(invalid(format!(
                        "peers '{}' and '{}' have overlapping allowed_sources ({}/{}): a packet must belong to one peer",
                        q.name, p.name, a.addr, a.prefix
                    )));
                }
            }
        }
        let mut seen_keys = BTreeSet::new();
        for p in &peers {
            if let Some(k) = p.public_key {
                if !seen_keys.insert(k) {
                    return Err(invalid(format!(
                        "peer '{}' has the same public key as another peer",
                        p.name
                    )));
                }
            }
        }
        let settings = Settings {
            tap: self.tap.clone(),
            mtu,
            offload: self.offload,
            queues: self.queues,
            transport: self.transport,
            local,
            private_key,
            tunnel_local: self.tunnel_local,
            hub: self.hub,
            mac_age: Duration::from_secs(self.mac_age_secs),
            flood: (self.flood_rate > 0).then_some((self.flood_rate, self.flood_burst.max(1))),
            mss_clamp: None,
            accept_reversed_header: self.accept_reversed_header,
            peers,
        };
        let inner = settings
            .transport_headers()
            .inner_mtu(self.path_mtu)
            .filter(|m| *m >= 576)
            .ok_or_else(|| {
                invalid(format!(
                    "path_mtu {} leaves no room for frames after the tunnel's headers",
                    self.path_mtu
                ))
            })?;
        let clamp = self.mss_clamp.then(|| {
            let v4 = inner.min(mtu) - 40;
            let v6 = inner.min(mtu) - 60;
            (v4 as u16, v6 as u16)
        });
        Ok(Settings {
            mss_clamp: clamp,
            ..settings
        })
    }
}

impl PeerConfig {
    fn resolve(
        &self,
        transport: TransportKind,
        local: SocketAddr,
        tunnel_local: Option<IpAddr>,
    ) -> Result<Peer, ConfigError> {
        let name = &self.name;
        if name.is_empty() {
            return Err(invalid("a peer has an empty name"));
        }
        let wg = transport == TransportKind::Wireguard;
        let endpoint = match &self.endpoint {
            Some(e) => {
                let sa = parse_socket(e, if wg { DEFAULT_WIREGUARD_PORT } else { 0 }, "endpoint")
                    .map_err(|err| invalid(format!("peer '{name}': {err}")))?;
                if sa.is_ipv4() != local.is_ipv4() {
                    return Err(invalid(format!(
                        "peer '{name}': endpoint {e} and local {local} are not the same IP version"
                    )));
                }
                if !wg && sa.port() != 0 {
                    return Err(invalid(format!(
                        "peer '{name}': raw EtherIP has no ports; endpoint is an address"
                    )));
                }
                Some(sa)
            }
            None if wg => None,
            None => {
                return Err(invalid(format!(
                    "peer '{name}': raw EtherIP needs an endpoint address"
                )))
            }
        };
        let key = |field: &str, value: &Option<String>| -> Result<Option<[u8; 32]>, ConfigError> {
            value
                .as_deref()
                .map(|k| decode_key(k).map_err(|e| invalid(format!("peer '{name}': {field}: {e}"))))
                .transpose()
        };
        let public_key = key("public_key", &self.public_key)?;
        let preshared_key = key("preshared_key", &self.preshared_key)?;
        if wg {
            if public_key.is_none() {
                return Err(invalid(format!("peer '{name}': public_key is missing")));
            }
            let Some(addr) = self.tunnel_address else {
                return Err(invalid(format!("peer '{name}': tunnel_address is missing")));
            };
            if tunnel_local.is_some_and(|l| l.is_ipv4() != addr.is_ipv4()) {
                return Err(invalid(format!(
                    "peer '{name}': tunnel_address {addr} and tunnel_local are not the same IP version"
                )));
            }
        } else if public_key.is_some()
            || preshared_key.is_some()
            || self.tunnel_address.is_some()
            || self.persistent_keepalive.is_some()
        {
            return Err(invalid(format!(
                "peer '{name}': public_key, preshared_key, tunnel_address and persistent_keepalive are for transport \"wireguard\" only"
            )));
        }
        let allowed_sources = match &self.allowed_sources {
            Some(list) => list
                .iter()
                .map(|c| {
                    Cidr::parse(c)
                        .map_err(|e| invalid(format!("peer '{name}': allowed_sources: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?,
            None if wg => Vec::new(),
            None => endpoint.iter().map(|e| Cidr::host(e.ip())).collect(),
        };
        Ok(Peer {
            name: name.clone(),
            endpoint,
            public_key,
            preshared_key,
            tunnel_address: self.tunnel_address,
            persistent_keepalive: self.persistent_keepalive.filter(|k| *k > 0),
            allowed_sources,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const KEY_B: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        let table: toml::Table = toml::from_str(text)?;
        let config: VpnConfig = table
            .get("vpn")
            .cloned()
            .ok_or(ConfigError::NoVpnTable)?
            .try_into()?;
        config.resolve(None)
    }

    #[test]
    fn raw_defaults() {
        let s = parse(
            "[vpn]\ntap = \"hv0\"\ntransport = \"raw\"\nlocal = \"198.18.1.2\"\n\
             [[vpn.peer]]\nname = \"b\"\nendpoint = \"198.18.2.2\"\n",
        )
        .unwrap();
        assert_eq!(s.mtu, 1500);
        assert_eq!(s.local, "198.18.1.2:0".parse().unwrap());
        assert_eq!(
            s.peers[0].allowed_sources,
            vec![Cidr::parse("198.18.2.2/32").unwrap()]
        );
        assert!(s.peers[0].accepts_source("198.18.2.2".parse().unwrap()));
        assert!(!s.peers[0].accepts_source("198.18.2.3".parse().unwrap()));
        // 1500 − 20 − 2 − 14 = 1464 inner MTU, minus 40/60 for TCP/IP.
        assert_eq!(s.mss_clamp, Some((1424, 1404)));
        assert_eq!(s.flood, Some((1000, 2000)));
    }

    #[test]
    fn wireguard_keys_and_clamp() {
        let s = parse(&format!(
            "[vpn]\ntap = \"hv0\"\ntransport = \"wireguard\"\nlocal = \"198.18.1.2\"\n\
             private_key = \"{KEY_A}\"\ntunnel_local = \"10.255.0.1\"\n\
             [[vpn.peer]]\nname = \"b\"\nendpoint = \"198.18.2.2\"\npublic_key = \"{KEY_B}\"\n\
             tunnel_address = \"10.255.0.2\"\n"
        ))
        .unwrap();
        assert_eq!(s.local.port(), DEFAULT_WIREGUARD_PORT);
        assert_eq!(s.peers[0].endpoint.unwrap().port(), DEFAULT_WIREGUARD_PORT);
        assert!(s.peers[0].allowed_sources.is_empty());
        // 1404 inner MTU (WireGuard v4 / inner v4).
        assert_eq!(s.mss_clamp, Some((1364, 1344)));
        assert_eq!(encode_key(&s.private_key.unwrap()), KEY_A);
    }

    #[test]
    fn errors_name_the_problem() {
        let cases = [
            ("[vpn]\ntap = \"hv0\"\ntransport = \"raw\"\nlocal = \"198.18.1.2\"\nbogus = 1\n", "unknown field `bogus`"),
            ("[vpn]\ntap = \"a-very-long-name-indeed\"\ntransport = \"raw\"\nlocal = \"198.18.1.2\"\n", "not a valid interface name"),
            ("[vpn]\ntap = \"hv0\"\ntransport = \"wireguard\"\nlocal = \"198.18.1.2\"\n", "needs private_key"),
            ("[vpn]\ntap = \"hv0\"\ntransport = \"raw\"\nlocal = \"198.18.1.2:5\"\n", "no ports"),
            ("[vpn]\ntap = \"hv0\"\ntransport = \"raw\"\nlocal = \"198.18.1.2\"\n[[vpn.peer]]\nname = \"b\"\n", "needs an endpoint"),
            ("[vpn]\ntap = \"hv0\"\ntransport = \"raw\"\nlocal = \"198.18.1.2\"\n[[vpn.peer]]\nname = \"b\"\nendpoint = \"::1\"\n", "same IP version"),
            ("[vpn]\ntap = \"hv0\"\ntransport = \"raw\"\nlocal = \"198.18.1.2\"\n[[vpn.peer]]\nname = \"b\"\nendpoint = \"198.18.2.2\"\n[[vpn.peer]]\nname = \"b\"\nendpoint = \"198.18.3.2\"\n", "configured twice"),
            ("[vpn]\ntap = \"hv0\"\ntransport = \"raw\"\nlocal = \"198.18.1.2\"\n[[vpn.peer]]\nname = \"b\"\nendpoint = \"198.18.2.2\"\nallowed_sources = [\"10.0.0.0/33\"]\n", "prefix length"),
            ("[vpn]\ntap = \"hv0\"\ntransport = \"wireguard\"\nlocal = \"198.18.1.2\"\nprivate_key = \"abc\"\ntunnel_local = \"10.255.0.1\"\n", "private_key: not base64"),
            ("[vpn]\ntap = \"hv0\"\ntransport = \"raw\"\nlocal = \"198.18.1.2\"\n[[vpn.peer]]\nname = \"b\"\nendpoint = \"198.18.2.2\"\n[[vpn.peer]]\nname = \"c\"\nendpoint = \"198.18.2.2\"\n", "same endpoint"),
            ("[vpn]\ntap = \"hv0\"\ntransport = \"raw\"\nlocal = \"198.18.1.2\"\n[[vpn.peer]]\nname = \"b\"\nendpoint = \"198.18.2.2\"\nallowed_sources = [\"198.18.0.0/16\"]\n[[vpn.peer]]\nname = \"c\"\nendpoint = \"198.18.3.2\"\n", "overlapping allowed_sources"),
            ("[vpn]\ntap = \"hv0\"\ntransport = \"raw\"\nlocal = \"198.18.1.2\"\n[[vpn.peer]]\nname = \"b\"\nendpoint = \"198.18.2.2\"\nallowed_sources = [\"2001:db8::/32\"]\n", "not the IP version"),
        ];
        for (text, want) in cases {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(want), "{text}: {err} lacks {want}");
        }
    }

    #[test]
    fn the_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/vpn.toml");
        let s = load_file(&path).unwrap();
        assert_eq!(s.transport, TransportKind::Wireguard);
        assert_eq!(s.peers.len(), 2);
        assert_eq!(s.peers[1].persistent_keepalive, Some(25));
        assert_eq!(encode_key(&s.private_key.unwrap()), KEY_A);
    }

    #[test]
    fn cidr_contains() {
        let c = Cidr::parse("198.18.2.0/24").unwrap();
        assert!(c.contains("198.18.2.77".parse().unwrap()));
        assert!(!c.contains("198.18.3.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
        assert!(Cidr::parse("2001:db8::/32")
            .unwrap()
            .contains("2001:db8::5".parse().unwrap()));
    }
}
