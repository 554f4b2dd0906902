//! The wire formats the dataplane (and the VPN above it) read and write, in
//! the smoltcp style: a `Packet<T: AsRef<[u8]>>` view with named field
//! ranges and `check_len`, and where a header is built from values, a
//! `Repr` with `parse`, `buffer_len` and `emit`. Views patch fields in
//! place, which the bridge's MSS clamp and the offloads need on every frame.
//!
//! * [`ethernet`]: Ethernet II with up to two VLAN tags;
//! * [`ipv4`] and [`ipv6`]: IP headers;
//! * [`tcp`]: the TCP fields the MSS clamp and the offloads read and patch;
//! * [`checksum`](mod@checksum): the one RFC 1071 checksum, its RFC 1624 update and the
//!   pseudo-headers.
//!
//! The virtio-net header lives with the offloads that use it:
//! [`crate::offload::VirtioNetHdr`].

pub mod checksum;
pub mod ethernet;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;

pub use self::checksum::{checksum, Checksum};
pub use self::ethernet::{
    ethertype, EthernetFrame, EthernetRepr, FrameError, MacAddress, Tpid, VlanId, VlanTag,
    VlanTags, ETHERNET_HEADER_LEN, MAX_VLAN_TAGS, VLAN_TAG_LEN,
};
pub use self::ipv4::{Ipv4Packet, Ipv4Repr, IPV4_HEADER_LEN, IPV4_MAX_PAYLOAD_LEN};
pub use self::ipv6::{Ipv6Packet, Ipv6Repr, IPV6_HEADER_LEN, IPV6_MAX_PAYLOAD_LEN};
pub use self::tcp::{TcpError, TcpPacket, TCP_CHECKSUM_AT, TCP_HEADER_LEN};

/// IP protocol numbers (IPv4 protocol, IPv6 next header) the dataplane
/// looks at.
pub mod ip_protocol {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const IPV6_HOP_BY_HOP: u8 = 0;
    pub const IPV6_ROUTING: u8 = 43;
    pub const IPV6_DESTINATION_OPTIONS: u8 = 60;
}

/// The TTL or hop limit hinan emits.
pub const DEFAULT_HOP_LIMIT: u8 = 64;

/// Why bytes are not an IPv4 or IPv6 packet hinan reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpError {
    #[error("IPv{version} packet rejected: {len} bytes is shorter than the {need}-byte header")]
    Truncated {
        version: u8,
        len: usize,
        need: usize,
    },
    #[error("IPv{expected} packet rejected: the version field says {found}")]
    WrongVersion { expected: u8, found: u8 },
    #[error("IPv4 packet rejected: header length {ihl} words is below the minimum of 5")]
    BadHeaderLength { ihl: u8 },
    #[error("IPv4 packet rejected: total length {total_len} does not fit a {header_len}-byte header in a {len}-byte packet")]
    BadTotalLength {
        total_len: usize,
        header_len: usize,
        len: usize,
    },
    #[error(
        "IPv6 packet rejected: payload length {payload_len} does not fit in a {len}-byte packet"
    )]
    BadPayloadLength { payload_len: usize, len: usize },
    #[error(
        "IPv4 packet rejected: header checksum {found:#06x} is wrong (computed {computed:#06x})"
    )]
    BadChecksum { found: u16, computed: u16 },
    #[error("IPv4 packet rejected: it is a fragment (offset {offset} bytes, more fragments: {more}); packets must arrive whole, so lower the inner MTU")]
    Fragmented { offset: usize, more: bool },
}
