//! IPv6 fixed headers (RFC 8200). Extension headers are not walked: the
//! payload starts right after the 40-byte header and [`Ipv6Repr`] reports
//! the first next header as it is.
//!
//! [`Ipv6Packet::check_len`] accepts version 6 and a payload length inside
//! the buffer (bytes after it are ignored). Traffic class and flow label
//! are ignored on parse and 0 on emit.

use std::net::Ipv6Addr;

use super::IpError;

/// An IPv6 header without extension headers.
pub const IPV6_HEADER_LEN: usize = 40;
/// The largest IPv6 payload without a jumbogram option.
pub const IPV6_MAX_PAYLOAD_LEN: usize = u16::MAX as usize;

mod field {
    pub(super) type Field = core::ops::Range<usize>;

    pub(super) const VER_TC_FLOW: Field = 0..4;
    pub(super) const PAYLOAD_LEN: Field = 4..6;
    pub(super) const NEXT_HEADER: usize = 6;
    pub(super) const HOP_LIMIT: usize = 7;
    pub(super) const SRC_ADDR: Field = 8..24;
    pub(super) const DST_ADDR: Field = 24..40;
}

/// A read/write view of an IPv6 packet.
///
/// Accessors index the buffer directly: call [`check_len`](Self::check_len)
/// (or build with [`new_checked`](Self::new_checked)) before using one on
/// untrusted bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }

    /// Wraps a buffer and runs [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, IpError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that every accessor, [`payload`](Self::payload) included, can
    /// run without panicking; a wrong version is reported before a wrong
    /// length.
    pub fn check_len(&self) -> Result<(), IpError> {
        let len = self.buffer.as_ref().len();
        if len < IPV6_HEADER_LEN {
            return Err(IpError::Truncated {
                version: 6,
                len,
                need: IPV6_HEADER_LEN,
            });
        }
        if self.version() != 6 {
            return Err(IpError::WrongVersion {
                expected: 6,
                found: self.version(),
            });
        }
        let payload_len = usize::from(self.payload_len());
        if IPV6_HEADER_LEN + payload_len > len {
            return Err(IpError::BadPayloadLength { payload_len, len });
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_TC_FLOW.start] >> 4
    }

    pub fn traffic_class(&self) -> u8 {
        ((self.ver_tc_flow() >> 20) & 0xff) as u8
    }

    pub fn flow_label(&self) -> u32 {
        self.ver_tc_flow() & 0x000f_ffff
    }

    pub fn payload_len(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::PAYLOAD_LEN];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    pub fn src_addr(&self) -> Ipv6Addr {
        Self::addr(&self.buffer.as_ref()[field::SRC_ADDR])
    }

    pub fn dst_addr(&self) -> Ipv6Addr {
        Self::addr(&self.buffer.as_ref()[field::DST_ADDR])
    }

    /// The bytes after the fixed header, up to the payload length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[IPV6_HEADER_LEN..IPV6_HEADER_LEN + usize::from(self.payload_len())]
    }

    fn ver_tc_flow(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VER_TC_FLOW];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    fn addr(bytes: &[u8]) -> Ipv6Addr {
        let mut octets = [0; 16];
        octets.copy_from_slice(bytes);
        Ipv6Addr::from(octets)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// Sets version, traffic class and flow label (20 bits) together.
    pub fn set_ver_tc_flow(&mut self, version: u8, traffic_class: u8, flow_label: u32) {
        let word = (u32::from(version & 0x0f) << 28)
            | (u32::from(traffic_class) << 20)
            | (flow_label & 0x000f_ffff);
        self.buffer.as_mut()[field::VER_TC_FLOW].copy_from_slice(&word.to_be_bytes());
    }

    pub fn set_payload_len(&mut self, value: u16) {
        self.buffer.as_mut()[field::PAYLOAD_LEN].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_next_header(&mut self, value: u8) {
        self.buffer.as_mut()[field::NEXT_HEADER] = value;
    }

    pub fn set_hop_limit(&mut self, value: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = value;
    }

    pub fn set_src_addr(&mut self, value: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&value.octets());
    }

    pub fn set_dst_addr(&mut self, value: Ipv6Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&value.octets());
    }

    /// Where the payload goes, up to the payload length.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = IPV6_HEADER_LEN + usize::from(self.payload_len());
        &mut self.buffer.as_mut()[IPV6_HEADER_LEN..end]
    }
}

/// An IPv6 fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv6Repr {
    pub src_addr: Ipv6Addr,
    pub dst_addr: Ipv6Addr,
    /// The first next header, such as 6 (TCP), 97 (EtherIP) or an
    /// extension header.
    pub next_header: u8,
    pub hop_limit: u8,
    /// The payload's length, extension headers included.
    pub payload_len: usize,
}

impl Ipv6Repr {
    /// Parses and checks an IPv6 header (see the module docs for what is
    /// accepted). Never panics, whatever the bytes.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Ipv6Packet<&T>) -> Result<Self, IpError> {
        packet.check_len()?;
        Ok(Ipv6Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            hop_limit: packet.hop_limit(),
            payload_len: usize::from(packet.payload_len()),
        })
    }

    /// The header length; the payload follows it.
    pub const fn buffer_len(&self) -> usize {
        IPV6_HEADER_LEN
    }

    /// Writes the header. The payload is the caller's to write, into
    /// [`Ipv6Packet::payload_mut`].
    ///
    /// # Panics
    ///
    /// If the buffer is shorter than [`buffer_len`](Self::buffer_len), or
    /// `payload_len` exceeds [`IPV6_MAX_PAYLOAD_LEN`]: both are caller bugs.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv6Packet<T>) {
        assert!(
            packet.buffer.as_ref().len() >= IPV6_HEADER_LEN,
            "IPv6 buffer must hold the {IPV6_HEADER_LEN}-byte header"
        );
        assert!(
            self.payload_len <= IPV6_MAX_PAYLOAD_LEN,
            "IPv6 payload of {} bytes exceeds {IPV6_MAX_PAYLOAD_LEN}",
            self.payload_len
        );
        packet.set_ver_tc_flow(6, 0, 0);
        packet.set_payload_len(self.payload_len as u16);
        packet.set_next_header(self.next_header);
        packet.set_hop_limit(self.hop_limit);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An ARP request in EtherIP (protocol 97) in IPv6 from 2001:db8::1 to
    /// 2001:db8::2, the same EtherIP packet as
    /// [`IPV4_ETHERIP_ARP`](crate::wire::ipv4::tests::IPV4_ETHERIP_ARP).
    pub(crate) fn ipv6_etherip_arp() -> Vec<u8> {
        #[rustfmt::skip]
        const IPV6_HEADER: [u8; 40] = [
            0x60, 0x00, 0x00, 0x00, // version 6, traffic class 0, flow 0
            0x00, 0x2c, 0x61, 0x40, // payload length 44, next header 97, hop limit 64
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02,
        ];
        let mut bytes = IPV6_HEADER.to_vec();
        bytes.extend_from_slice(&crate::wire::ipv4::tests::IPV4_ETHERIP_ARP[20..]);
        bytes
    }

    fn parse_v6(bytes: &[u8]) -> Result<Ipv6Repr, IpError> {
        Ipv6Repr::parse(&Ipv6Packet::new_checked(bytes)?)
    }

    fn etherip_repr() -> Ipv6Repr {
        Ipv6Repr {
            src_addr: "2001:db8::1".parse().unwrap(),
            dst_addr: "2001:db8::2".parse().unwrap(),
            next_header: 97,
            hop_limit: 64,
            payload_len: 44,
        }
    }

    #[test]
    fn parses_and_emits_ipv6_etherip_arp() {
        let bytes = ipv6_etherip_arp();
        assert_eq!(parse_v6(&bytes), Ok(etherip_repr()));
        let mut out = vec![0xaau8; bytes.len()];
        let mut packet = Ipv6Packet::new_unchecked(&mut out[..]);
        etherip_repr().emit(&mut packet);
        packet.payload_mut().copy_from_slice(&bytes[40..]);
        assert_eq!(out, bytes);
    }

    #[test]
    fn trailing_bytes_after_the_payload_length_are_ignored() {
        let mut bytes = ipv6_etherip_arp();
        bytes.extend_from_slice(&[0; 12]);
        assert_eq!(parse_v6(&bytes), Ok(etherip_repr()));
        let packet = Ipv6Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.payload().len(), 44);
    }

    #[test]
    fn ipv6_errors_name_the_problem() {
        let mut hop_by_hop = ipv6_etherip_arp();
        hop_by_hop[6] = 0;
        assert_eq!(parse_v6(&hop_by_hop).map(|r| r.next_header), Ok(0));
        let bytes = ipv6_etherip_arp();
        assert_eq!(
            parse_v6(&bytes[..83]),
            Err(IpError::BadPayloadLength {
                payload_len: 44,
                len: 83
            })
        );
        assert_eq!(
            parse_v6(&bytes[..39]),
            Err(IpError::Truncated {
                version: 6,
                len: 39,
                need: 40
            })
        );
        assert_eq!(
            parse_v6(&crate::wire::ipv4::tests::IPV4_ETHERIP_ARP),
            Err(IpError::WrongVersion {
                expected: 6,
                found: 4
            })
        );
    }

    proptest! {
        #[test]
        fn ipv6_emit_then_parse_round_trips(
            src in any::<[u8; 16]>(),
            dst in any::<[u8; 16]>(),
            next_header in any::<u8>(),
            hop_limit in any::<u8>(),
            payload in proptest::collection::vec(any::<u8>(), 0..1600),
        ) {
            let repr = Ipv6Repr {
                src_addr: src.into(),
                dst_addr: dst.into(),
                next_header,
                hop_limit,
                payload_len: payload.len(),
            };
            let mut buf = vec![0u8; repr.buffer_len() + payload.len()];
            let mut packet = Ipv6Packet::new_unchecked(&mut buf[..]);
            repr.emit(&mut packet);
            packet.payload_mut().copy_from_slice(&payload);
            let packet = Ipv6Packet::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(Ipv6Repr::parse(&packet), Ok(repr));
            prop_assert_eq!(packet.payload(), &payload[..]);
            prop_assert_eq!((packet.traffic_class(), packet.flow_label()), (0, 0));
        }

        #[test]
        fn ipv6_parse_of_arbitrary_bytes_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let checked = parse_v6(&bytes);
            prop_assert_eq!(&checked, &Ipv6Repr::parse(&Ipv6Packet::new_unchecked(&bytes[..])));
        }
    }
}
