//! hinan's L2 VPN: the EtherIP (RFC 3378) wire format, and WireGuard sessions
//! through boringtun's sans-IO `noise` module.
//!
//! This crate owns the pure cores that join two campus segments at layer 2:
//!
//! * [`etherip`]: the two-byte EtherIP header in front of an Ethernet frame,
//!   with a compatibility option for old FreeBSD's reversed header;
//! * [`ip`]: the IPv4 and IPv6 headers with protocol 97 that carry EtherIP,
//!   on the wire (RFC 3378) and inside WireGuard, which only carries IP;
//! * [`mtu`]: how large the bridged segment's MTU may be for each transport;
//! * [`session`]: one WireGuard peer as a state machine that turns frames
//!   into datagrams and back, borrowing the caller's buffers.
//!
//! No sockets and no TAP devices live here: the shell that reads frames from
//! TAP and datagrams from UDP, and the lab tests against real peers, are
//! still to come in the L2 VPN issue. Until then the lab joins the campus
//! segments with a plain veth pair.

pub mod config;
pub mod endpoint;
pub mod etherip;
pub mod ip;
pub mod mtu;
pub mod peer_sessions;
pub mod session;
pub mod socket;
