//! hinan's authoritative DNS server, built on `hickory-server`, whose answers
//! follow the VM's current campus.
//!
//! Nothing is implemented here yet: the DNS issue fills this crate.
