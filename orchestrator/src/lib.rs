//! hinan's orchestrator: the cluster of appliances (replicated state, failure
//! detection, service monitors), alert intake, the evacuation planner, the
//! libvirt executor, fencing and the operator API.
//!
//! The cluster issue fills this crate. So far it has the failure detector
//! ([`detect`]) and the `hinan` binary's entry point.

pub mod detect;
