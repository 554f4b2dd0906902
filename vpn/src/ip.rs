//! The IPv4 and IPv6 headers in front of EtherIP (protocol 97).
//!
//! RFC 3378 sends EtherIP straight inside IP. hinan needs the same header for
//! a second reason: boringtun's `noise::Tunn` only carries IPv4 and IPv6
//! packets, so an Ethernet frame crosses WireGuard as
//! `IP(protocol 97) | EtherIP | Ethernet frame`, exactly the packet RFC 3378
//! would put on the wire. [`TunnelAddrs::wrap_frame`] and [`unwrap_frame`]
//! build and take apart that stack with `hinan_dataplane::wire`'s IP views.
//!
//! [`unwrap_frame`] accepts what [`Ipv4Repr::parse`] and [`Ipv6Repr::parse`]
//! accept (whole packets, a correct IPv4 header checksum, trailing bytes
//! such as WireGuard padding ignored) carrying protocol (next header) 97,
//! and reports anything else by number in the error. IPv6 extension headers
//! are not supported: a packet with one is reported as "next header N is
//! not EtherIP".
//!
//! On emit, IPv4 has no options, DSCP and ECN 0, identification 0 and DF set
//! (an atomic datagram, RFC 6864), and IPv6 has traffic class and flow label
//! 0. Inside WireGuard nothing routes these headers; their addresses only
//! matter to a peer that filters by them, like a wireguard-go peer checking
//! its allowed IPs.

use std::net::{Ipv4Addr, Ipv6Addr};

use hinan_dataplane::wire::{
    self, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, DEFAULT_HOP_LIMIT, IPV4_HEADER_LEN,
    IPV4_MAX_PAYLOAD_LEN, IPV6_HEADER_LEN, IPV6_MAX_PAYLOAD_LEN,
};

use crate::etherip::Compat;
use crate::etherip::{self, EtherIpError, ETHERNET_HEADER_LEN, IP_PROTOCOL};

/// Why bytes are not an IP packet carrying EtherIP, or why a frame cannot be
/// wrapped into one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpError {
    #[error("packet rejected: it is empty")]
    Empty,
    #[error("packet rejected: IP version {version} is neither 4 nor 6")]
    UnknownVersion { version: u8 },
    #[error(transparent)]
    Header(#[from] wire::IpError),
    #[error("IP packet rejected: protocol {protocol} is not EtherIP (97)")]
    NotEtherIp { protocol: u8 },
    #[error("frame not wrapped: {len} bytes of EtherIP does not fit in one IPv{version} packet (at most {max})")]
    TooLarge { version: u8, len: usize, max: usize },
    #[error("frame not wrapped: the buffer holds {have} bytes, the packet needs {need}")]
    BufferTooSmall { need: usize, have: usize },
    #[error(transparent)]
    EtherIp(#[from] EtherIpError),
}

/// The addresses of the IP header in front of EtherIP, and with them the IP
/// version: the tunnel addresses inside WireGuard, or the outer addresses of
/// raw RFC 3378 EtherIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunnelAddrs {
    V4 { local: Ipv4Addr, peer: Ipv4Addr },
    V6 { local: Ipv6Addr, peer: Ipv6Addr },
}

impl TunnelAddrs {
    /// IP header plus EtherIP header: what [`wrap_frame`](Self::wrap_frame)
    /// puts in front of a frame.
    pub const fn overhead(&self) -> usize {
        let ip = match self {
            TunnelAddrs::V4 { .. } => IPV4_HEADER_LEN,
            TunnelAddrs::V6 { .. } => IPV6_HEADER_LEN,
        };
        ip + etherip::HEADER_LEN
    }

    /// Writes `IP(local -> peer, protocol 97) | EtherIP | frame` into the
    /// start of `out` and returns the written part.
    pub fn wrap_frame<'a>(&self, frame: &[u8], out: &'a mut [u8]) -> Result<&'a [u8], IpError> {
        if frame.len() < ETHERNET_HEADER_LEN {
            return Err(EtherIpError::FrameTooShort { len: frame.len() }.into());
        }
        let payload_len = etherip::HEADER_LEN + frame.len();
        let (version, max) = match self {
            TunnelAddrs::V4 { .. } => (4, IPV4_MAX_PAYLOAD_LEN),
            TunnelAddrs::V6 { .. } => (6, IPV6_MAX_PAYLOAD_LEN),
        };
        if payload_len > max {
            return Err(IpError::TooLarge {
                version,
                len: payload_len,
                max,
            });
        }
        let need = self.overhead() + frame.len();
        if out.len() < need {
            return Err(IpError::BufferTooSmall {
                need,
                have: out.len(),
            });
        }
        let out = &mut out[..need];
        let etherip = match *self {
            TunnelAddrs::V4 { local, peer } => {
                let repr = Ipv4Repr {
                    src_addr: local,
                    dst_addr: peer,
                    protocol: IP_PROTOCOL,
                    hop_limit: DEFAULT_HOP_LIMIT,
                    payload_len,
                };
                let mut packet = Ipv4Packet::new_unchecked(&mut out[..]);
                repr.emit(&mut packet);
                &mut out[IPV4_HEADER_LEN..]
            }
            TunnelAddrs::V6 { local, peer } => {
                let repr = Ipv6Repr {
                    src_addr: local,
                    dst_addr: peer,
                    next_header: IP_PROTOCOL,
                    hop_limit: DEFAULT_HOP_LIMIT,
                    payload_len,
                };
                let mut packet = Ipv6Packet::new_unchecked(&mut out[..]);
                repr.emit(&mut packet);
                &mut out[IPV6_HEADER_LEN..]
            }
        };
        etherip::wrap_frame(frame, etherip)?;
        Ok(out)
    }
}

/// Checks an IPv4 or IPv6 packet carrying EtherIP, and returns the Ethernet
/// frame inside. The IP version comes from the first nibble; the addresses
/// are not checked.
pub fn unwrap_frame(packet: &[u8], compat: Compat) -> Result<&[u8], IpError> {
    let Some(first) = packet.first() else {
        return Err(IpError::Empty);
    };
    let (protocol, payload) = match first >> 4 {
        4 => {
            let view = Ipv4Packet::new_checked(packet)?;
            let repr = Ipv4Repr::parse(&view)?;
            let start = view.header_len();
            (repr.protocol, &packet[start..start + repr.payload_len])
        }
        6 => {
            let repr = Ipv6Repr::parse(&Ipv6Packet::new_checked(packet)?)?;
            let end = IPV6_HEADER_LEN + repr.payload_len;
            (repr.next_header, &packet[IPV6_HEADER_LEN..end])
        }
        version => return Err(IpError::UnknownVersion { version }),
    };
    if protocol != IP_PROTOCOL {
        return Err(IpError::NotEtherIp { protocol });
    }
    Ok(etherip::unwrap_frame(payload, compat)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etherip::tests::ARP_REQUEST;
    use proptest::prelude::*;

    /// [`ARP_REQUEST`] in EtherIP in IPv4 from 192.0.2.1 to 192.0.2.2: what
    /// RFC 3378 puts on the wire, and what hinan puts inside WireGuard. TTL
    /// 64, DF, identification 0; checksum 0xb659 computed independently.
    #[rustfmt::skip]
    const IPV4_ETHERIP_ARP: [u8; 64] = [
        0x45, 0x00, 0x00, 0x40, // version 4, IHL 5, total length 64
        0x00, 0x00, 0x40, 0x00, // ident 0, DF
        0x40, 0x61, 0xb6, 0x59, // TTL 64, protocol 97, checksum
        0xc0, 0x00, 0x02, 0x01, // 192.0.2.1
        0xc0, 0x00, 0x02, 0x02, // 192.0.2.2
        0x30, 0x00,             // EtherIP version 3
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08, 0x06,
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01,
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x0a, 0x00, 0x00, 0x01,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x02,
    ];

    /// The same EtherIP packet in IPv6 from 2001:db8::1 to 2001:db8::2.
    #[rustfmt::skip]
    const IPV6_HEADER: [u8; 40] = [
        0x60, 0x00, 0x00, 0x00, // version 6, traffic class 0, flow 0
        0x00, 0x2c, 0x61, 0x40, // payload length 44, next header 97, hop limit 64
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02,
    ];

    fn ipv6_etherip_arp() -> Vec<u8> {
        let mut bytes = IPV6_HEADER.to_vec();
        bytes.extend_from_slice(&IPV4_ETHERIP_ARP[20..]);
        bytes
    }

    fn v4_addrs() -> TunnelAddrs {
        TunnelAddrs::V4 {
            local: Ipv4Addr::new(192, 0, 2, 1),
            peer: Ipv4Addr::new(192, 0, 2, 2),
        }
    }

    fn v6_addrs() -> TunnelAddrs {
        TunnelAddrs::V6 {
            local: "2001:db8::1".parse().unwrap(),
            peer: "2001:db8::2".parse().unwrap(),
        }
    }

    fn parse_v4(bytes: &[u8]) -> Result<Ipv4Repr, wire::IpError> {
        Ipv4Repr::parse(&Ipv4Packet::new_checked(bytes)?)
    }

    fn parse_v6(bytes: &[u8]) -> Result<Ipv6Repr, wire::IpError> {
        Ipv6Repr::parse(&Ipv6Packet::new_checked(bytes)?)
    }

    #[test]
    fn parses_ipv4_etherip_arp() {
        let packet = Ipv4Packet::new_checked(&IPV4_ETHERIP_ARP[..]).unwrap();
        assert_eq!(
            Ipv4Repr::parse(&packet),
            Ok(Ipv4Repr {
                src_addr: Ipv4Addr::new(192, 0, 2, 1),
                dst_addr: Ipv4Addr::new(192, 0, 2, 2),
                protocol: IP_PROTOCOL,
                hop_limit: 64,
                payload_len: 44,
            })
        );
        assert!(packet.dont_frag());
        assert_eq!(packet.checksum(), 0xb659);
        assert_eq!(
            unwrap_frame(&IPV4_ETHERIP_ARP, Compat::Strict),
            Ok(&ARP_REQUEST[..])
        );
    }

    #[test]
    fn emits_ipv4_etherip_arp() {
        let mut out = [0xaau8; 100];
        let written = v4_addrs().wrap_frame(&ARP_REQUEST, &mut out).unwrap();
        assert_eq!(written, &IPV4_ETHERIP_ARP[..]);
    }

    #[test]
    fn parses_and_emits_ipv6_etherip_arp() {
        let bytes = ipv6_etherip_arp();
        assert_eq!(
            parse_v6(&bytes),
            Ok(Ipv6Repr {
                src_addr: "2001:db8::1".parse().unwrap(),
                dst_addr: "2001:db8::2".parse().unwrap(),
                next_header: IP_PROTOCOL,
                hop_limit: 64,
                payload_len: 44,
            })
        );
        assert_eq!(unwrap_frame(&bytes, Compat::Strict), Ok(&ARP_REQUEST[..]));
        let mut out = [0u8; 100];
        assert_eq!(
            v6_addrs().wrap_frame(&ARP_REQUEST, &mut out).unwrap(),
            &bytes[..]
        );
    }

    #[test]
    fn ipv4_options_are_skipped() {
        // IHL 6: NOP, NOP, NOP, End of options; checksum 0xb354 over 24 bytes.
        let mut bytes = IPV4_ETHERIP_ARP[..20].to_vec();
        bytes[0] = 0x46;
        bytes[3] = 68;
        bytes[10..12].copy_from_slice(&[0xb3, 0x54]);
        bytes.extend_from_slice(&[0x01, 0x01, 0x01, 0x00]);
        bytes.extend_from_slice(&IPV4_ETHERIP_ARP[20..]);
        assert_eq!(parse_v4(&bytes).unwrap().payload_len, 44);
        assert_eq!(unwrap_frame(&bytes, Compat::Strict), Ok(&ARP_REQUEST[..]));
    }

    #[test]
    fn trailing_bytes_after_the_ip_length_are_ignored() {
        // WireGuard peers that pad plaintext to 16 bytes leave zeros here.
        let mut v4 = IPV4_ETHERIP_ARP.to_vec();
        v4.extend_from_slice(&[0; 12]);
        assert_eq!(unwrap_frame(&v4, Compat::Strict), Ok(&ARP_REQUEST[..]));
        let mut v6 = ipv6_etherip_arp();
        v6.extend_from_slice(&[0; 12]);
        assert_eq!(unwrap_frame(&v6, Compat::Strict), Ok(&ARP_REQUEST[..]));
    }

    #[test]
    fn ipv4_errors_name_the_problem() {
        let mut bad = IPV4_ETHERIP_ARP;
        bad[10] ^= 0xff;
        assert_eq!(
            parse_v4(&bad),
            Err(wire::IpError::BadChecksum {
                found: 0x4959,
                computed: 0xb659
            })
        );
        // unwrap_frame reports the header's own error, message and all.
        let err = unwrap_frame(&bad, Compat::Strict).unwrap_err();
        assert_eq!(err, IpError::Header(parse_v4(&bad).unwrap_err()));
        assert!(err.to_string().contains("header checksum 0x4959 is wrong"));

        let mut udp = IPV4_ETHERIP_ARP;
        udp[9] = 17;
        Ipv4Packet::new_unchecked(&mut udp[..]).fill_checksum();
        assert_eq!(parse_v4(&udp).map(|r| r.protocol), Ok(17));
        let err = unwrap_frame(&udp, Compat::Strict).unwrap_err();
        assert_eq!(err, IpError::NotEtherIp { protocol: 17 });
        assert!(err.to_string().contains("protocol 17 is not EtherIP"));

        let mut fragment = IPV4_ETHERIP_ARP;
        Ipv4Packet::new_unchecked(&mut fragment[..]).set_frag(false, true, 0);
        Ipv4Packet::new_unchecked(&mut fragment[..]).fill_checksum();
        assert_eq!(
            parse_v4(&fragment),
            Err(wire::IpError::Fragmented {
                offset: 0,
                more: true
            })
        );

        let mut ihl4 = IPV4_ETHERIP_ARP;
        ihl4[0] = 0x44;
        assert_eq!(
            parse_v4(&ihl4),
            Err(wire::IpError::BadHeaderLength { ihl: 4 })
        );

        assert_eq!(
            parse_v4(&IPV4_ETHERIP_ARP[..63]),
            Err(wire::IpError::BadTotalLength {
                total_len: 64,
                header_len: 20,
                len: 63
            })
        );
        assert_eq!(
            parse_v4(&IPV4_ETHERIP_ARP[..19]),
            Err(wire::IpError::Truncated {
                version: 4,
                len: 19,
                need: 20
            })
        );
        assert_eq!(
            parse_v4(&ipv6_etherip_arp()),
            Err(wire::IpError::WrongVersion {
                expected: 4,
                found: 6
            })
        );
    }

    #[test]
    fn ipv6_errors_name_the_problem() {
        let mut hop_by_hop = ipv6_etherip_arp();
        hop_by_hop[6] = 0;
        assert_eq!(
            unwrap_frame(&hop_by_hop, Compat::Strict),
            Err(IpError::NotEtherIp { protocol: 0 })
        );
        let bytes = ipv6_etherip_arp();
        assert_eq!(
            parse_v6(&bytes[..83]),
            Err(wire::IpError::BadPayloadLength {
                payload_len: 44,
                len: 83
            })
        );
        assert_eq!(
            parse_v6(&IPV4_ETHERIP_ARP),
            Err(wire::IpError::WrongVersion {
                expected: 6,
                found: 4
            })
        );
    }

    #[test]
    fn unwrap_dispatches_on_the_version_and_checks_etherip() {
        assert_eq!(unwrap_frame(&[], Compat::Strict), Err(IpError::Empty));
        assert_eq!(
            unwrap_frame(&[0x50; 40], Compat::Strict),
            Err(IpError::UnknownVersion { version: 5 })
        );
        let mut reversed = IPV4_ETHERIP_ARP;
        reversed[20] = 0x03;
        assert_eq!(
            unwrap_frame(&reversed, Compat::Strict),
            Err(IpError::EtherIp(EtherIpError::ReversedHeader))
        );
        assert_eq!(
            unwrap_frame(&reversed, Compat::ReversedNibble),
            Ok(&ARP_REQUEST[..])
        );
    }

    #[test]
    fn wrap_refuses_what_does_not_fit() {
        let mut out = [0u8; 64];
        assert_eq!(
            v4_addrs().wrap_frame(&ARP_REQUEST, &mut out[..63]),
            Err(IpError::BufferTooSmall { need: 64, have: 63 })
        );
        assert_eq!(
            v4_addrs().wrap_frame(&ARP_REQUEST[..10], &mut out),
            Err(IpError::EtherIp(EtherIpError::FrameTooShort { len: 10 }))
        );
        let jumbo = vec![0u8; IPV4_MAX_PAYLOAD_LEN - 1];
        let mut big = vec![0u8; 70_000];
        assert_eq!(
            v4_addrs().wrap_frame(&jumbo, &mut big),
            Err(IpError::TooLarge {
                version: 4,
                len: IPV4_MAX_PAYLOAD_LEN + 1,
                max: IPV4_MAX_PAYLOAD_LEN
            })
        );
        assert!(v4_addrs()
            .wrap_frame(&jumbo[..IPV4_MAX_PAYLOAD_LEN - 2], &mut big)
            .is_ok());
        let jumbo6 = vec![0u8; IPV6_MAX_PAYLOAD_LEN - 1];
        assert!(matches!(
            v6_addrs().wrap_frame(&jumbo6, &mut big),
            Err(IpError::TooLarge { version: 6, .. })
        ));
    }

    fn any_addrs() -> impl Strategy<Value = TunnelAddrs> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<[u8; 4]>()).prop_map(|(l, p)| TunnelAddrs::V4 {
                local: l.into(),
                peer: p.into()
            }),
            (any::<[u8; 16]>(), any::<[u8; 16]>()).prop_map(|(l, p)| TunnelAddrs::V6 {
                local: l.into(),
                peer: p.into()
            }),
        ]
    }

    proptest! {
        #[test]
        fn wrap_then_unwrap_round_trips(
            addrs in any_addrs(),
            frame in proptest::collection::vec(any::<u8>(), ETHERNET_HEADER_LEN..1600),
        ) {
            let mut out = vec![0u8; 1700];
            let len = addrs.wrap_frame(&frame, &mut out).unwrap().len();
            prop_assert_eq!(len, addrs.overhead() + frame.len());
            prop_assert_eq!(unwrap_frame(&out[..len], Compat::Strict), Ok(&frame[..]));
        }

        #[test]
        fn parse_of_arbitrary_bytes_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            if let Ok(frame) = unwrap_frame(&bytes, Compat::ReversedNibble) {
                prop_assert!(frame.len() >= ETHERNET_HEADER_LEN);
            }
        }

        #[test]
        fn parse_of_corrupted_packets_never_panics(
            v6 in any::<bool>(),
            flips in proptest::collection::vec((0usize..84, any::<u8>()), 1..6),
            cut in 0usize..=84,
        ) {
            // Arbitrary bytes rarely pass the version check; start from a
            // valid packet so every later check sees corrupted input too.
            let mut bytes = if v6 { ipv6_etherip_arp() } else { IPV4_ETHERIP_ARP.to_vec() };
            for (at, value) in flips {
                if at < bytes.len() {
                    bytes[at] = value;
                }
            }
            let cut = cut.min(bytes.len());
            for data in [&bytes[..], &bytes[..cut]] {
                if let Ok(frame) = unwrap_frame(data, Compat::ReversedNibble) {
                    prop_assert!(frame.len() >= ETHERNET_HEADER_LEN);
                }
            }
        }
    }
}
