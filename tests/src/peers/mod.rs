//! The peers hinan is tested against and measured beside, one module per
//! daemon: how each is configured, started in a lab namespace and stopped.
//! The benchmarks and interop tests decide what to do with them.

use std::path::Path;

pub mod keepalived;
pub mod knot;
pub mod nsd;
pub mod tinc;
pub mod wireguard_go;

/// One zone an authoritative peer serves from a zone file, and where it listens.
#[derive(Debug, Clone, Copy)]
pub struct ServedZone<'a> {
    pub origin: &'a str,
    pub file: &'a Path,
    pub listen: &'a str,
    pub port: u16,
}
