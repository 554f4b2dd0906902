//! The appliance's configuration file (TOML, unknown keys rejected).
//!
//! ```toml
//! [appliance]
//! id = 1                      # Raft id, nonzero, unique in the consortium
//! name = "hinan-a"
//! site = "a"
//! witness = false             # a witness votes and stores state, no dataplane
//! data_dir = "/var/lib/hinan" # the Raft log (redb)
//! control_socket = "/run/hinan/control.sock"
//!
//! [cluster]
//! listen = "198.18.0.2:7400"  # Raft transport (mutual TLS)
//! cert = "/etc/hinan/hinan-a.crt"
//! key = "/etc/hinan/hinan-a.key"
//! heartbeat_port = 7401
//! heartbeat_key = "/etc/hinan/heartbeat.key"   # shared secret, HMAC-SHA256
//! detect_interval_ms = 20
//! detect_multiplier = 12
//! paths = { wan = "198.18.0.2" }                # this appliance's heartbeat addresses
//!
//! [[peer]]
//! id = 2
//! name = "hinan-b"
//! site = "b"
//! address = "198.18.1.2:7400"
//! cert_sha256 = "…64 hex digits…"               # pinned: `hinan keygen` prints it
//! paths = { wan = "198.18.1.2", segment = "10.70.0.3" }
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::core::state::NodeId;

/// A configuration error an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub appliance: ApplianceConfig,
    pub cluster: ClusterConfig,
    #[serde(default, rename = "peer")]
    pub peers: Vec<PeerConfig>,
    /// Authoritative DNS (`hinan_dns::config` documents the table); none if absent.
    #[serde(default)]
    pub dns: Option<hinan_dns::DnsConfig>,
    /// The L2 VPN endpoint (`hinan_vpn::config` documents the table); none
    /// if absent. Its peers are named after their sites, so that a MAC move
    /// names the campus a VM went to.
    #[serde(default)]
    pub vpn: Option<hinan_vpn::config::VpnConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplianceConfig {
    pub id: NodeId,
    pub name: String,
    pub site: String,
    #[serde(default)]
    pub witness: bool,
    pub data_dir: PathBuf,
    pub control_socket: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default = "default_heartbeat_port")]
    pub heartbeat_port: u16,
    pub heartbeat_key: PathBuf,
    /// Heartbeat interval. Default 20 ms.
    #[serde(default = "default_interval")]
    pub detect_interval_ms: u64,
    /// Missed heartbeats before a path is down. Default 12 (240 ms).
    #[serde(default = "default_multiplier")]
    pub detect_multiplier: u32,
    /// A path that went down must be heard this long before it is up again;
    /// the hold doubles on each flap within a minute. Default 1000 ms.
    #[serde(default = "default_hold")]
    pub damping_hold_ms: u64,
    /// The longest hold. Default 32000 ms.
    #[serde(default = "default_max_hold")]
    pub damping_max_hold_ms: u64,
    /// This appliance's address on each heartbeat path, by path name.
    pub paths: BTreeMap<String, IpAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: NodeId,
    pub name: String,
    pub site: String,
    #[serde(default)]
    pub witness: bool,
    pub address: SocketAddr,
    pub cert_sha256: String,
    pub paths: BTreeMap<String, IpAddr>,
}

fn default_heartbeat_port() -> u16 {
    7401
}
fn default_interval() -> u64 {
    20
}
fn default_multiplier() -> u32 {
    12
}
fn default_hold() -> u64 {
    1000
}
fn default_max_hold() -> u64 {
    32_000
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and checks configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: describe_toml_error(text, &e),
        })?;
        cfg.check().map_err(|message| ConfigError::Invalid {
            path: origin.to_string(),
            message,
        })?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), String> {
        if self.appliance.id == 0 {
            return Err("appliance.id must be nonzero".into());
        }
        let mut ids = vec![self.appliance.id];
        let mut pins = Vec::new();
        for p in &self.peers {
            if p.id == 0 {
                return Err(format!("peer {}: id must be nonzero", p.name));
            }
            if pins.contains(&p.cert_sha256.to_lowercase()) {
                return Err(format!(
                    "peer {} ({}): cert_sha256 is the same as another peer's",
                    p.id, p.name
                ));
            }
            pins.push(p.cert_sha256.to_lowercase());
            if ids.contains(&p.id) {
                return Err(format!(
                    "peer id {} is used twice (or is this appliance's own id)",
                    p.id
                ));
            }
            ids.push(p.id);
            if p.cert_sha256.len() != 64 || !p.cert_sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(format!(
                    "peer {} ({}): cert_sha256 must be 64 hex digits (as `hinan keygen` prints)",
                    p.id, p.name
                ));
            }
            if p.paths.is_empty() {
                return Err(format!("peer {} ({}): no heartbeat paths", p.id, p.name));
            }
        }
        if self.cluster.paths.is_empty() {
            return Err("cluster.paths is empty: name at least one heartbeat path".into());
        }
        if self.cluster.detect_interval_ms == 0
            || !(2..=255).contains(&self.cluster.detect_multiplier)
        {
            return Err("detect_interval_ms must be > 0 and detect_multiplier 2 to 255".into());
        }
        for p in &self.peers {
            if !p.paths.keys().any(|k| self.cluster.paths.contains_key(k)) {
                return Err(format!(
                    "peer {} ({}) shares no heartbeat path with this appliance (its paths: {})",
                    p.id,
                    p.name,
                    p.paths.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Every voter's id, this appliance's included, sorted.
    pub fn voters(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.peers.iter().map(|p| p.id).collect();
        v.push(self.appliance.id);
        v.sort_unstable();
        v
    }

    /// Path names in a fixed order; a path's index is its wire id.
    pub fn path_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.cluster.paths.keys().cloned().collect();
        for p in &self.peers {
            names.extend(p.paths.keys().cloned());
        }
        names.sort();
        names.dedup();
        names
    }
}

/// A TOML error with its line and column.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let line = text[..span.start].matches('\n').count() + 1;
            let col = span.start - text[..span.start].rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
            format!("line {line}, column {col}: {}", e.message())
        }
        None => e.message().to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A whole, valid appliance configuration (other modules' tests add
    /// their tables to it).
    pub(crate) const GOOD: &str = r#"
[appliance]
id = 1
name = "hinan-a"
site = "a"
data_dir = "/var/lib/hinan"
control_socket = "/run/hinan/control.sock"

[cluster]
listen = "198.18.0.2:7400"
cert = "/etc/hinan/a.crt"
key = "/etc/hinan/a.key"
heartbeat_key = "/etc/hinan/hb.key"
paths = { wan = "198.18.0.2" }

[[peer]]
id = 2
name = "hinan-b"
site = "b"
address = "198.18.1.2:7400"
cert_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
paths = { wan = "198.18.1.2", segment = "10.70.0.3" }
"#;

    #[test]
    fn a_good_config_parses_with_defaults() {
        let c = Config::parse(GOOD, "test").unwrap();
        assert_eq!(c.voters(), vec![1, 2]);
        assert_eq!(c.cluster.detect_interval_ms, 20);
        assert_eq!(c.cluster.detect_multiplier, 12);
        assert_eq!(
            c.path_names(),
            vec!["segment".to_string(), "wan".to_string()]
        );
    }

    #[test]
    fn the_vpn_table_rides_in_the_appliance_config_and_its_errors_name_the_line() {
        let with_vpn = format!(
            "{GOOD}\n[vpn]\ntap = \"hv0\"\ntransport = \"raw\"\nlocal = \"198.18.0.2\"\n\n\
             [[vpn.peer]]\nname = \"b\"\nendpoint = \"198.18.1.2\"\n"
        );
        let c = Config::parse(&with_vpn, "hinan.toml").unwrap();
        let vpn = c.vpn.expect("the [vpn] table").resolve(None).unwrap();
        assert_eq!(vpn.peers[0].name, "b");
        let bad = with_vpn.replace("endpoint =", "endpiont =");
        let e = Config::parse(&bad, "hinan.toml").unwrap_err().to_string();
        // toml names the peer's table (its header) or the key itself.
        let line_of = |needle: &str| bad.lines().position(|l| l.contains(needle)).unwrap() + 1;
        let (table, key) = (line_of("[[vpn.peer]]"), line_of("endpiont"));
        assert!(
            (e.contains(&format!("line {table},")) || e.contains(&format!("line {key},")))
                && e.contains("endpiont"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let bad = GOOD.replace("site = \"a\"", "site = \"a\"\nsiet = \"b\"");
        let e = Config::parse(&bad, "hinan.toml").unwrap_err().to_string();
        assert!(e.contains("hinan.toml: line 6"), "{e}");
        assert!(e.contains("siet"), "{e}");
    }

    #[test]
    fn semantic_errors_say_what_to_fix() {
        let bad = GOOD.replace(
            "cert_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"",
            "cert_sha256 = \"abc\"",
        );
        let e = Config::parse(&bad, "x").unwrap_err().to_string();
        assert!(e.contains("64 hex digits"), "{e}");
        let bad = GOOD.replace("id = 2", "id = 1");
        let e = Config::parse(&bad, "x").unwrap_err().to_string();
        assert!(e.contains("used twice"), "{e}");
    }
}
