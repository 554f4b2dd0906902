//! hinan's authoritative DNS, whose answers follow the VM's current campus.
//!
//! * [`authority::Authority`] is the sans-IO core: zones (static records from
//!   the configuration, dynamic service records from a [`view::ServiceView`]),
//!   SOA serials with a bounded change history, and the answer to every request
//!   as bytes: queries, AXFR, IXFR (RFC 1995), RFC 2136 updates, TSIG (RFC 8945).
//! * [`cache::AnswerCache`] is the fast path: answers to plain queries, keyed by
//!   the request's bytes, reused until the zones change.
//! * [`catalog`] puts the same answers behind hickory-server's zone-handler
//!   trait and `Catalog` (queries; transfers and updates stay on the core).
//! * [`server`] is the thin shell: UDP workers (`SO_REUSEPORT`, `recvmmsg`),
//!   TCP, NOTIFY with retries, the serial file.

pub mod authority;
pub mod cache;
pub mod catalog;
pub mod config;
pub mod rrl;
pub mod server;
pub mod view;

pub use authority::{Authority, DnsConfigError, Lookup, NotifyJob, Reply, Transport};
pub use config::DnsConfig;
/// The DNS message types this crate speaks (for callers building requests).
pub use hickory_proto;
pub use server::DnsServer;
pub use view::{ServiceAnswer, ServiceView};
