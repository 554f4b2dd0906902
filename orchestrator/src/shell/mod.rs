//! I/O around the cores: the Raft transport (TLS), the log store on disk,
//! heartbeats, the service checks, the control socket, the DNS server task
//! and the appliance's `select!` loop.

pub mod appliance;
pub mod checks;
pub mod control;
pub mod dns;
pub mod executor;
pub mod heartbeat;
pub mod inventory;
pub mod libvirt;
pub mod logstore;
pub mod signals;
pub mod tls;
pub mod transport;
pub mod virt_sys;
pub mod watch;
