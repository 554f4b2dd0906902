//! How much of a path's MTU is left for the IP packets inside the bridged
//! Ethernet segment ("inner MTU"), per transport.
//!
//! Every byte in front of the inner IP packet comes off the path MTU:
//!
//! | transport | outer IP | UDP | WireGuard | inner IP | EtherIP | Ethernet | inner MTU, 1500-byte path |
//! |---|---|---|---|---|---|---|---|
//! | raw EtherIP over IPv4 (RFC 3378) | 20 | – | – | – | 2 | 14 | [1464](INNER_MTU_RAW_IPV4) |
//! | raw EtherIP over IPv6 (RFC 3378) | 40 | – | – | – | 2 | 14 | [1444](INNER_MTU_RAW_IPV6) |
//! | WireGuard over IPv4, inner IPv4 | 20 | 8 | 32 | 20 | 2 | 14 | [1404](INNER_MTU_WIREGUARD_IPV4_INNER_IPV4) |
//! | WireGuard over IPv4, inner IPv6 | 20 | 8 | 32 | 40 | 2 | 14 | [1384](INNER_MTU_WIREGUARD_IPV4_INNER_IPV6) |
//! | WireGuard over IPv6, inner IPv4 | 40 | 8 | 32 | 20 | 2 | 14 | [1384](INNER_MTU_WIREGUARD_IPV6_INNER_IPV4) |
//! | WireGuard over IPv6, inner IPv6 | 40 | 8 | 32 | 40 | 2 | 14 | [1364](INNER_MTU_WIREGUARD_IPV6_INNER_IPV6) |
//!
//! * Raw EtherIP has one IP header: the RFC 3378 packet is the outer packet.
//! * The 32 WireGuard bytes are the data message header (type 4, receiver
//!   index 4, counter 8) and the 16-byte Poly1305 tag. boringtun 0.7 does not
//!   pad the plaintext to a multiple of 16 (the WireGuard paper allows
//!   padding, wireguard-go and the kernel do it up to their MTU), so the
//!   datagram is exactly `32 + inner packet` bytes; the session tests check
//!   this against emitted datagrams.
//! * "inner IP" is the header [`crate::ip`] puts in front of EtherIP because
//!   boringtun only carries IP packets.
//! * The Ethernet header has no FCS in EtherIP. The largest frame a TAP
//!   device may hand over is the inner MTU plus 14 ([`Transport::max_frame_len`]).
//!   Each 802.1Q tag a bridged frame carries takes another 4 bytes
//!   ([`VLAN_TAG_LEN`]) out of the inner MTU.

use crate::etherip::{self, ETHERNET_HEADER_LEN};
use hinan_dataplane::wire::{IPV4_HEADER_LEN, IPV6_HEADER_LEN};

/// The path MTU the table and the constants assume: plain Ethernet.
pub const ETHERNET_PATH_MTU: usize = 1500;
/// A UDP header.
pub const UDP_HEADER_LEN: usize = 8;
/// A WireGuard data message's header (16) and Poly1305 tag (16).
pub const WIREGUARD_DATA_OVERHEAD: usize = 32;
/// One 802.1Q VLAN tag inside a bridged frame.
pub const VLAN_TAG_LEN: usize = 4;

/// IP version of a header in the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpVersion {
    V4,
    V6,
}

impl IpVersion {
    /// The header length without options or extension headers.
    pub const fn header_len(self) -> usize {
        match self {
            IpVersion::V4 => IPV4_HEADER_LEN,
            IpVersion::V6 => IPV6_HEADER_LEN,
        }
    }
}

/// How bridged frames travel between sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// RFC 3378: EtherIP straight in IP with protocol 97.
    Raw(IpVersion),
    /// WireGuard over UDP over `outer`, EtherIP in an `inner` IP header.
    WireGuard { outer: IpVersion, inner: IpVersion },
}

impl Transport {
    /// Every byte a packet on the path carries in front of the inner IP
    /// packet, the bridged frame's Ethernet header included.
    pub const fn overhead(self) -> usize {
        let tunnel = match self {
            Transport::Raw(outer) => outer.header_len(),
            Transport::WireGuard { outer, inner } => {
                outer.header_len() + UDP_HEADER_LEN + WIREGUARD_DATA_OVERHEAD + inner.header_len()
            }
        };
        tunnel + etherip::HEADER_LEN + ETHERNET_HEADER_LEN
    }

    /// The largest IP packet inside a bridged frame that crosses a path of
    /// `path_mtu` bytes unfragmented, or `None` if not even headers fit.
    pub const fn inner_mtu(self, path_mtu: usize) -> Option<usize> {
        path_mtu.checked_sub(self.overhead())
    }

    /// The largest Ethernet frame (without FCS or VLAN tag) that crosses a
    /// path of `path_mtu` bytes unfragmented.
    pub const fn max_frame_len(self, path_mtu: usize) -> Option<usize> {
        match self.inner_mtu(path_mtu) {
            Some(mtu) => Some(mtu + ETHERNET_HEADER_LEN),
            None => None,
        }
    }
}

const fn on_ethernet(transport: Transport) -> usize {
    match transport.inner_mtu(ETHERNET_PATH_MTU) {
        Some(mtu) => mtu,
        None => panic!("headers exceed 1500 bytes"),
    }
}

/// Raw EtherIP over IPv4 on a 1500-byte path: 1500 − 20 − 2 − 14.
pub const INNER_MTU_RAW_IPV4: usize = on_ethernet(Transport::Raw(IpVersion::V4));
/// Raw EtherIP over IPv6 on a 1500-byte path: 1500 − 40 − 2 − 14.
pub const INNER_MTU_RAW_IPV6: usize = on_ethernet(Transport::Raw(IpVersion::V6));
/// WireGuard over IPv4, inner IPv4: 1500 − 20 − 8 − 32 − 20 − 2 − 14.
pub const INNER_MTU_WIREGUARD_IPV4_INNER_IPV4: usize = on_ethernet(Transport::WireGuard {
    outer: IpVersion::V4,
    inner: IpVersion::V4,
});
/// WireGuard over IPv4, inner IPv6: 1500 − 20 − 8 − 32 − 40 − 2 − 14.
pub const INNER_MTU_WIREGUARD_IPV4_INNER_IPV6: usize = on_ethernet(Transport::WireGuard {
    outer: IpVersion::V4,
    inner: IpVersion::V6,
});
/// WireGuard over IPv6, inner IPv4: 1500 − 40 − 8 − 32 − 20 − 2 − 14.
pub const INNER_MTU_WIREGUARD_IPV6_INNER_IPV4: usize = on_ethernet(Transport::WireGuard {
    outer: IpVersion::V6,
    inner: IpVersion::V4,
});
/// WireGuard over IPv6, inner IPv6: 1500 − 40 − 8 − 32 − 40 − 2 − 14.
pub const INNER_MTU_WIREGUARD_IPV6_INNER_IPV6: usize = on_ethernet(Transport::WireGuard {
    outer: IpVersion::V6,
    inner: IpVersion::V6,
});

// Even the smallest inner MTU carries IPv6, whose links need 1280 bytes.
const _: () = assert!(INNER_MTU_WIREGUARD_IPV6_INNER_IPV6 >= 1280);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etherip::Compat;
    use crate::ip::{unwrap_frame, TunnelAddrs};
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn inner_mtus_on_a_1500_byte_path() {
        assert_eq!(INNER_MTU_RAW_IPV4, 1464);
        assert_eq!(INNER_MTU_RAW_IPV6, 1444);
        assert_eq!(INNER_MTU_WIREGUARD_IPV4_INNER_IPV4, 1404);
        assert_eq!(INNER_MTU_WIREGUARD_IPV4_INNER_IPV6, 1384);
        assert_eq!(INNER_MTU_WIREGUARD_IPV6_INNER_IPV4, 1384);
        assert_eq!(INNER_MTU_WIREGUARD_IPV6_INNER_IPV6, 1364);
    }

    #[test]
    fn tiny_paths_have_no_inner_mtu() {
        let raw = Transport::Raw(IpVersion::V4);
        assert_eq!(raw.inner_mtu(36), Some(0));
        assert_eq!(raw.inner_mtu(35), None);
        assert_eq!(raw.max_frame_len(35), None);
        assert_eq!(raw.max_frame_len(1500), Some(1478));
    }

    /// Raw EtherIP: the packet [`TunnelAddrs::wrap_frame`] writes is the
    /// packet on the path, so the largest frame fills it exactly.
    #[test]
    fn raw_etherip_packets_fill_the_path_exactly() {
        let cases = [
            (
                IpVersion::V4,
                TunnelAddrs::V4 {
                    local: Ipv4Addr::new(192, 0, 2, 1),
                    peer: Ipv4Addr::new(192, 0, 2, 2),
                },
            ),
            (
                IpVersion::V6,
                TunnelAddrs::V6 {
                    local: Ipv6Addr::LOCALHOST,
                    peer: Ipv6Addr::LOCALHOST,
                },
            ),
        ];
        for (version, addrs) in cases {
            let transport = Transport::Raw(version);
            let frame = vec![0x5a; transport.max_frame_len(ETHERNET_PATH_MTU).unwrap()];
            assert_eq!(
                frame.len() - ETHERNET_HEADER_LEN,
                transport.inner_mtu(ETHERNET_PATH_MTU).unwrap()
            );
            let mut out = vec![0u8; 2000];
            let packet = addrs.wrap_frame(&frame, &mut out).unwrap();
            assert_eq!(packet.len(), ETHERNET_PATH_MTU, "{transport:?}");
            assert_eq!(unwrap_frame(packet, Compat::Strict), Ok(&frame[..]));
            // One byte more no longer fits.
            let frame = vec![0x5a; frame.len() + 1];
            let packet = addrs.wrap_frame(&frame, &mut out).unwrap();
            assert_eq!(packet.len(), ETHERNET_PATH_MTU + 1);
        }
    }
}
