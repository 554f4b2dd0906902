//! The benchmarks behind `hinan-bench` and `make bench-…`: hinan beside its
//! peers, in one run on this machine, reported side by side.

pub mod cluster;
pub mod dns;
pub mod keepalived;
pub mod moves;
pub mod stats;
pub mod vpn;
