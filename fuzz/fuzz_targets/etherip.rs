//! EtherIP packets and the IPv4/IPv6 headers around them arrive from the
//! network (raw RFC 3378) or from a WireGuard peer, which may run anything.
#![no_main]
use hinan_dataplane::wire::{Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr};
use hinan_vpn::etherip::{self, Compat, EtherIpPacket, EtherIpRepr};
use hinan_vpn::ip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for compat in [Compat::Strict, Compat::ReversedNibble] {
        if let Ok(frame) = etherip::unwrap_frame(data, compat) {
            // Re-wrapping writes the RFC header in front of the same frame.
            let mut buf = vec![0u8; etherip::HEADER_LEN + frame.len()];
            let wrapped = etherip::wrap_frame(frame, &mut buf).unwrap();
            assert_eq!(
                etherip::unwrap_frame(wrapped, Compat::Strict).unwrap(),
                frame
            );
        }
        if let Ok(packet) = EtherIpPacket::new_checked(data) {
            let _ = (packet.version(), packet.reserved(), packet.payload());
            let _ = EtherIpRepr::parse(&packet, compat);
        }
        if let Ok(frame) = ip::unwrap_frame(data, compat) {
            assert!(frame.len() >= etherip::ETHERNET_HEADER_LEN);
        }
    }

    if let Ok(packet) = Ipv4Packet::new_checked(data) {
        let _ = (packet.src_addr(), packet.dst_addr(), packet.payload());
        if let Ok(repr) = Ipv4Repr::parse(&packet) {
            let mut buf = vec![0u8; repr.buffer_len() + repr.payload_len];
            let mut out = Ipv4Packet::new_unchecked(&mut buf[..]);
            repr.emit(&mut out);
            out.payload_mut().copy_from_slice(packet.payload());
            let again = Ipv4Repr::parse(&Ipv4Packet::new_checked(&buf[..]).unwrap()).unwrap();
            assert_eq!(again, repr);
        }
    }

    if let Ok(packet) = Ipv6Packet::new_checked(data) {
        let _ = (
            packet.traffic_class(),
            packet.flow_label(),
            packet.payload(),
        );
        if let Ok(repr) = Ipv6Repr::parse(&packet) {
            let mut buf = vec![0u8; repr.buffer_len() + repr.payload_len];
            let mut out = Ipv6Packet::new_unchecked(&mut buf[..]);
            repr.emit(&mut out);
            out.payload_mut().copy_from_slice(packet.payload());
            let again = Ipv6Repr::parse(&Ipv6Packet::new_checked(&buf[..]).unwrap()).unwrap();
            assert_eq!(again, repr);
        }
    }
});
