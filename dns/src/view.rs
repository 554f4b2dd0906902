//! What the DNS needs from the replicated state: for each published service,
//! the addresses to answer now. The orchestrator computes it (only campuses
//! that are up, or the fallback); this crate never sees the cluster state.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// The services to answer for, at one version of the replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceView {
    /// The replicated state's version (Raft applied index): a floor for SOA
    /// serials, so that serials survive restarts without a file.
    pub version: u64,
    pub services: Vec<ServiceAnswer>,
    /// Operators' records by zone (origin lowercase, no final dot), in
    /// zone-file syntax: replicated RFC 2136 updates.
    pub zone_records: BTreeMap<String, Vec<String>>,
}

/// One service's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAnswer {
    /// Fully qualified, e.g. `lms.univ-a.example`.
    pub name: String,
    pub ttl: u32,
    /// A and AAAA records; empty answers NODATA.
    pub addresses: Vec<IpAddr>,
}
