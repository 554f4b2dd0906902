//! hinan's L2 VPN: the EtherIP (RFC 3378) wire format, and WireGuard sessions
//! through boringtun's sans-IO `noise` module.
//!
//! Nothing is implemented here yet: the L2 VPN issue fills this crate. Until then
//! the lab joins the campus segments with a plain veth pair.
