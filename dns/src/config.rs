//! The `[dns]` table of hinan's configuration (TOML, unknown keys rejected).
//!
//! ```toml
//! [dns]
//! listen = ["198.18.0.2:53"]     # UDP and TCP on each; required
//! udp_threads = 2                # default: the number of CPUs
//! service_ttl = 10               # TTL of service A/AAAA answers (s); default 10
//! fallback = ["192.0.2.80"]      # answered when no campus of a service is up; default none
//! serial_file = "/var/lib/hinan/dns-serials"  # default: DATA_DIR/dns-serials in `hinan run`, none in `hinan dns serve`
//!
//! [[dns.key]]                    # TSIG keys (hmac-sha256 only)
//! name = "xfr.univ-a.example"
//! algorithm = "hmac-sha256"      # default
//! secret = "base64…"
//!
//! [[dns.zone]]
//! origin = "univ-a.example"
//! ns = ["ns1.univ-a.example"]    # NS records at the apex; the first is the SOA MNAME
//! admin = "hostmaster.univ-a.example"  # SOA RNAME; default hostmaster.<origin>
//! soa_ttl = 3600                 # defaults: 3600, 3600, 600, 604800, 60
//! refresh = 3600
//! retry = 600
//! expire = 604800
//! minimum = 60                   # negative-answer TTL
//! records = ["ns1 3600 IN A 198.18.0.2", "www IN CNAME lms"]   # zone-file lines, relative to origin; TTL default 3600
//! file = "/etc/hinan/univ-a.zone" # more records in zone-file syntax; default none
//! notify = ["198.18.0.10:53"]    # secondaries told by NOTIFY on every serial change
//! allow_transfer = ["198.18.0.10/32"]  # who may AXFR/IXFR; default nobody
//! transfer_key = "xfr.univ-a.example"  # if set, transfers also need this TSIG key
//! update_keys = ["ops.univ-a.example"] # RFC 2136 updates need one of these keys; default none (refused)
//!
//! [[dns.service]]                # per-service settings
//! name = "lms.univ-a.example"
//! ttl = 30                       # overrides service_ttl
//! addresses = ["198.18.0.80"]    # static answer, used only by `hinan dns serve` (no cluster)
//!
//! [dns.rrl]                      # response rate limiting per client /24 (IPv6 /56)
//! responses_per_second = 0       # 0 = off (default)
//! slip = 2                       # every slip-th limited answer is sent truncated; 0 = drop all
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Addresses served on UDP and TCP.
    pub listen: Vec<SocketAddr>,
    /// UDP worker threads (each with its own SO_REUSEPORT socket). Default: CPUs.
    #[serde(default)]
    pub udp_threads: Option<usize>,
    /// TTL of dynamic service records. Default 10 s.
    #[serde(default = "default_service_ttl")]
    pub service_ttl: u32,
    /// Answer for a service when none of its campuses is up. Default: none (NODATA).
    #[serde(default)]
    pub fallback: Vec<IpAddr>,
    /// Where the last SOA serial of each zone is kept across restarts.
    #[serde(default)]
    pub serial_file: Option<PathBuf>,
    #[serde(default, rename = "key")]
    pub keys: Vec<TsigKeyConfig>,
    #[serde(default, rename = "zone")]
    pub zones: Vec<ZoneConfig>,
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
    #[serde(default)]
    pub rrl: RrlConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TsigKeyConfig {
    pub name: String,
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    /// Base64, as `tsig-keygen`/`keymgr -t` print it.
    pub secret: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    pub origin: String,
    pub ns: Vec<String>,
    #[serde(default)]
    pub admin: Option<String>,
    #[serde(default = "default_soa_ttl")]
    pub soa_ttl: u32,
    #[serde(default = "default_refresh")]
    pub refresh: i32,
    #[serde(default = "default_retry")]
    pub retry: i32,
    #[serde(default = "default_expire")]
    pub expire: i32,
    #[serde(default = "default_minimum")]
    pub minimum: u32,
    #[serde(default)]
    pub records: Vec<String>,
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub notify: Vec<SocketAddr>,
    #[serde(default)]
    pub allow_transfer: Vec<String>,
    #[serde(default)]
    pub transfer_key: Option<String>,
    #[serde(default)]
    pub update_keys: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    #[serde(default)]
    pub ttl: Option<u32>,
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RrlConfig {
    #[serde(default)]
    pub responses_per_second: u32,
    #[serde(default = "default_slip")]
    pub slip: u32,
}

fn default_service_ttl() -> u32 {
    10
}
fn default_algorithm() -> String {
    "hmac-sha256".into()
}
fn default_soa_ttl() -> u32 {
    3600
}
fn default_refresh() -> i32 {
    3600
}
fn default_retry() -> i32 {
    600
}
fn default_expire() -> i32 {
    604_800
}
fn default_minimum() -> u32 {
    60
}
fn default_slip() -> u32 {
    2
}

impl DnsConfig {
    /// The TTL of service `name` (case-insensitive, trailing dot optional).
    pub fn ttl_of(&self, name: &str) -> u32 {
        let name = name.trim_end_matches('.');
        self.services
            .iter()
            .find(|s| s.name.trim_end_matches('.').eq_ignore_ascii_case(name))
            .and_then(|s| s.ttl)
            .unwrap_or(self.service_ttl)
    }
}
