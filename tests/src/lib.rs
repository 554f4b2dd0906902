//! The hinan lab: real campuses on one machine, built from network namespaces,
//! Open vSwitch (userspace datapath), one libvirtd per campus, a tiny KVM/TCG
//! guest, a WAN with impairments, and a client probe. Used by the end-to-end
//! tests, the benchmarks and the `hinan-lab` CLI.
//!
//! Everything a lab creates is recorded in its run directory and removed when
//! the [`Lab`] is dropped, by `hinan-lab down`, or by the next lab that starts
//! after a crash. Processes are stopped by recorded PID and start time only.

pub mod capture;
pub mod cluster;
pub mod clusterbench;
pub mod delay;
pub mod dnsbench;
pub mod dnslab;
pub mod guest;
pub mod interrupt;
pub mod keepalived;
pub mod lab;
pub mod netns;
pub mod probe;
pub mod procs;
pub mod rtnl;
pub mod run;
pub mod stats;
pub mod sys;
pub mod vm;
pub mod vpn;
pub mod vpnbench;
pub mod wan;

pub use lab::{Campus, Lab, LabSpec, Topology};
pub use probe::{Probe, ProbeReport, ProbeSpec};
pub use vm::VmSpec;
pub use wan::{LinkImpairment, WanState};
