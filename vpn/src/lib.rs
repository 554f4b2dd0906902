//! hinan's L2 VPN: the EtherIP (RFC 3378) wire format, WireGuard sessions
//! through boringtun's sans-IO `noise` module, and the endpoint that joins
//! `hinan_dataplane`'s bridge and TAP device to the tunnels.
//!
//! The pure cores that join two campus segments at layer 2:
//!
//! * [`etherip`]: the two-byte EtherIP header in front of an Ethernet frame,
//!   with a compatibility option for old FreeBSD's reversed header;
//! * [`ip`]: wrapping a frame as `IP(protocol 97) | EtherIP | frame` and
//!   back, on the wire (RFC 3378) and inside WireGuard, which only carries
//!   IP; the IPv4 and IPv6 headers themselves are `hinan_dataplane::wire`'s;
//! * [`mtu`]: how large the bridged segment's MTU may be for each transport;
//! * [`session`]: one WireGuard peer as a state machine that turns frames
//!   into datagrams and back, borrowing the caller's buffers;
//! * [`peer_sessions`]: a peer's current and previous sessions: key rotation
//!   that keeps the old session until the new one is up (also across a
//!   second change), handshake pacing while frames wait, the old session's
//!   linger, and which session a receiver index names;
//! * [`config`]: the `[vpn]` configuration table, checked and resolved.
//!
//! The shell around them:
//!
//! * [`socket`]: the raw protocol-97 and UDP tunnel sockets, read and
//!   written in batches (`recvmmsg`/`sendmmsg`, UDP GSO and GRO);
//! * [`endpoint`]: the threads that move frames between the campus TAP, the
//!   bridge and the tunnel socket, driving each peer's [`peer_sessions`].
//!
//! `vpn` sits on `hinan_dataplane` (wire formats, TAP, bridge, offloads, MSS
//! clamp) and on no other hinan crate.

pub mod config;
pub mod endpoint;
pub mod etherip;
pub mod ip;
pub mod mtu;
pub mod peer_sessions;
pub mod session;
pub mod socket;
