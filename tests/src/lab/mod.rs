//! The lab itself: campuses built from network namespaces, Open vSwitch and
//! one libvirtd each, the WAN router with its impairments and delay lines,
//! the tiny guest, client probes, hinan's own appliances and VPN endpoints in
//! the lab, and the plumbing under them (processes, run directories,
//! rtnetlink, captures).

pub mod capture;
pub mod cluster;
pub mod daemon;
pub mod delay;
pub mod dnslab;
pub mod guest;
pub mod interrupt;
pub mod netns;
pub mod probe;
pub mod procs;
pub mod rtnl;
pub mod run;
pub mod sys;
pub mod topology;
pub mod vm;
pub mod vpn;
pub mod wan;

pub use topology::{
    Campus, Footprint, Lab, LabSpec, Topology, WanHost, MIGRATION_PORT, SEGMENT_GATEWAY,
    SEGMENT_PREFIX,
};
pub use vpn::SegmentLink;
