//! hinan's orchestrator: the cluster of appliances (replicated state, failure
//! detection, service monitors), alert intake, the evacuation planner, the
//! libvirt executor, fencing and the operator API.
//!
//! The cores here are sans-IO: [`replica::Replica`] (Raft plus the state
//! machine) takes ticks and messages and returns what to send and apply. The
//! `hinan` binary's shell drives them over sockets; the simulator in the tests
//! drives the same code with virtual time.

pub mod checks;
pub mod config;
pub mod control;
pub mod detect;
pub mod dns;
pub mod logstore;
pub mod monitor;
pub mod replica;
pub mod sim;
pub mod state;
pub mod tls;
pub mod transport;
pub mod watch;
