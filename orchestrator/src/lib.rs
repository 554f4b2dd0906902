//! hinan's orchestrator: the cluster of appliances (replicated state, failure
//! detection, service monitors), alert intake, the evacuation planner, the
//! libvirt executor, fencing and the operator API.
//!
//! The folders say what runs where:
//!
//! * [`core`]: pure, deterministic code that takes `now` and inputs and
//!   returns effects: the state machine, the Raft replica, the failure
//!   detector, the service monitors and the appliance [`core::node::Node`]
//!   that owns every decision of an appliance. The simulator ([`sim`], behind
//!   the `sim` feature) drives these very types.
//! * [`adapt`]: pure functions from the replicated state to each component's
//!   input (the DNS view).
//! * [`shell`]: I/O: sockets, timers, TLS, disk, the checks, the control
//!   socket, heartbeats, and the `select!` loop of `hinan run` that feeds the
//!   core.

pub mod adapt;
pub mod config;
pub mod core;
pub mod shell;
#[cfg(feature = "sim")]
pub mod sim;
