//! hinan's orchestrator: the cluster of appliances (replicated state, failure
//! detection, service monitors), alert intake, the evacuation planner, the
//! libvirt executor, fencing and the operator API.
//!
//! So far it holds the service monitors: [`monitor`] decides which appliance
//! watches which VM and when a VM has failed, [`checks`] runs the real checks.

pub mod checks;
pub mod monitor;
