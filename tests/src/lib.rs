//! The hinan lab: real campuses on one machine, built from network namespaces,
//! Open vSwitch (userspace datapath), one libvirtd per campus, a tiny KVM/TCG
//! guest, a WAN with impairments, and a client probe. Used by the end-to-end
//! tests, the benchmarks and the `hinan-lab` CLI.
//!
//! Everything a lab creates is recorded in its run directory and removed when
//! the [`Lab`] is dropped, by `hinan-lab down`, or by the next lab that starts
//! after a crash. Processes are stopped by recorded PID and start time only.
//!
//! * [`lab`]: the lab itself and its plumbing.
//! * [`peers`]: the daemons hinan is compared with (Knot, NSD, keepalived,
//!   wireguard-go, tinc), one module each.
//! * [`bench`]: the benchmarks of `hinan-bench` and `make bench-…`.

pub mod bench;
pub mod lab;
pub mod peers;

pub use lab::probe::{Probe, ProbeReport, ProbeSpec};
pub use lab::vm::VmSpec;
pub use lab::wan::{LinkImpairment, WanState};
pub use lab::{Campus, Lab, LabSpec, Topology};
