//! IPv4 headers (RFC 791), options skipped unread.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version|  IHL  | DSCP/ECN      |          Total Length         |
//! |         Identification        |Flags|      Fragment Offset    |
//! |  Time to Live |    Protocol   |         Header Checksum       |
//! |                       Source Address                          |
//! |                    Destination Address                        |
//! |                    Options (IHL > 5)                          |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! [`Ipv4Packet::check_len`] accepts version 4, a header length of at least
//! 20 bytes inside the packet, and a total length covering the header and
//! inside the buffer; bytes after the total length (Ethernet padding,
//! WireGuard padding) are ignored. [`Ipv4Repr::parse`] also wants a correct
//! header checksum and no fragmentation (MF clear, offset 0); DSCP, ECN, the
//! identification and options are ignored. On emit, an [`Ipv4Repr`] has no
//! options, DSCP and ECN 0, identification 0 and DF set (an atomic datagram,
//! RFC 6864).

use std::net::Ipv4Addr;

use super::checksum::checksum;
use super::IpError;

/// An IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// The largest IPv4 payload (the total length field is 16 bits).
pub const IPV4_MAX_PAYLOAD_LEN: usize = u16::MAX as usize - IPV4_HEADER_LEN;

mod field {
    pub(super) type Field = core::ops::Range<usize>;

    pub(super) const VER_IHL: usize = 0;
    pub(super) const DSCP_ECN: usize = 1;
    pub(super) const LENGTH: Field = 2..4;
    pub(super) const IDENT: Field = 4..6;
    pub(super) const FLG_OFF: Field = 6..8;
    pub(super) const TTL: usize = 8;
    pub(super) const PROTOCOL: usize = 9;
    pub(super) const CHECKSUM: Field = 10..12;
    pub(super) const SRC_ADDR: Field = 12..16;
    pub(super) const DST_ADDR: Field = 16..20;

    pub(super) const FLAG_DF: u16 = 0x4000;
    pub(super) const FLAG_MF: u16 = 0x2000;
    pub(super) const OFFSET_MASK: u16 = 0x1fff;
}

/// A read/write view of an IPv4 packet.
///
/// Accessors index the buffer directly: call [`check_len`](Self::check_len)
/// (or build with [`new_checked`](Self::new_checked)) before using one on
/// untrusted bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Wraps a buffer and runs [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, IpError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that every accessor, [`payload`](Self::payload) included, can
    /// run without panicking. Field positions depend on the version, so a
    /// wrong version is reported before a wrong length.
    pub fn check_len(&self) -> Result<(), IpError> {
        let len = self.buffer.as_ref().len();
        if len < IPV4_HEADER_LEN {
            return Err(IpError::Truncated {
                version: 4,
                len,
                need: IPV4_HEADER_LEN,
            });
        }
        if self.version() != 4 {
            return Err(IpError::WrongVersion {
                expected: 4,
                found: self.version(),
            });
        }
        let header_len = self.header_len();
        if header_len < IPV4_HEADER_LEN {
            return Err(IpError::BadHeaderLength {
                ihl: self.buffer.as_ref()[field::VER_IHL] & 0x0f,
            });
        }
        if len < header_len {
            return Err(IpError::Truncated {
                version: 4,
                len,
                need: header_len,
            });
        }
        let total_len = usize::from(self.total_len());
        if total_len < header_len || total_len > len {
            return Err(IpError::BadTotalLength {
                total_len,
                header_len,
                len,
            });
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// The header length in bytes, options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    /// The length of header and payload.
    pub fn total_len(&self) -> u16 {
        self.read_u16(field::LENGTH)
    }

    pub fn ident(&self) -> u16 {
        self.read_u16(field::IDENT)
    }

    pub fn dont_frag(&self) -> bool {
        self.read_u16(field::FLG_OFF) & field::FLAG_DF != 0
    }

    pub fn more_frags(&self) -> bool {
        self.read_u16(field::FLG_OFF) & field::FLAG_MF != 0
    }

    /// The fragment offset in bytes.
    pub fn frag_offset(&self) -> usize {
        usize::from(self.read_u16(field::FLG_OFF) & field::OFFSET_MASK) * 8
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    pub fn checksum(&self) -> u16 {
        self.read_u16(field::CHECKSUM)
    }

    pub fn src_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::SRC_ADDR];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    pub fn dst_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::DST_ADDR];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// Whether the header, options included, sums to zero.
    pub fn verify_checksum(&self) -> bool {
        checksum(&self.buffer.as_ref()[..self.header_len()]) == 0
    }

    /// The bytes between the header (and its options) and the total length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }

    fn read_u16(&self, range: field::Field) -> u16 {
        let b = &self.buffer.as_ref()[range];
        u16::from_be_bytes([b[0], b[1]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    pub fn set_version(&mut self, value: u8) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (value << 4) | (*b & 0x0f);
    }

    /// Sets the header length in bytes; it must be a multiple of 4.
    pub fn set_header_len(&mut self, bytes: usize) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0xf0) | ((bytes / 4) as u8 & 0x0f);
    }

    pub fn set_dscp_ecn(&mut self, value: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = value;
    }

    pub fn set_total_len(&mut self, value: u16) {
        self.write_u16(field::LENGTH, value);
    }

    pub fn set_ident(&mut self, value: u16) {
        self.write_u16(field::IDENT, value);
    }

    /// Sets DF, MF and the fragment offset (in bytes, a multiple of 8).
    pub fn set_frag(&mut self, dont_frag: bool, more_frags: bool, offset: usize) {
        let mut value = ((offset / 8) as u16) & field::OFFSET_MASK;
        if dont_frag {
            value |= field::FLAG_DF;
        }
        if more_frags {
            value |= field::FLAG_MF;
        }
        self.write_u16(field::FLG_OFF, value);
    }

    pub fn set_hop_limit(&mut self, value: u8) {
        self.buffer.as_mut()[field::TTL] = value;
    }

    pub fn set_protocol(&mut self, value: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = value;
    }

    pub fn set_checksum(&mut self, value: u16) {
        self.write_u16(field::CHECKSUM, value);
    }

    pub fn set_src_addr(&mut self, value: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&value.octets());
    }

    pub fn set_dst_addr(&mut self, value: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&value.octets());
    }

    /// Computes the header checksum, options included, and writes it.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = checksum(&self.buffer.as_ref()[..self.header_len()]);
        self.set_checksum(sum);
    }

    /// Where the payload goes, up to the total length.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = self.header_len()..usize::from(self.total_len());
        &mut self.buffer.as_mut()[range]
    }

    fn write_u16(&mut self, range: field::Field, value: u16) {
        self.buffer.as_mut()[range].copy_from_slice(&value.to_be_bytes());
    }
}

/// An unfragmented IPv4 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Repr {
    pub src_addr: Ipv4Addr,
    pub dst_addr: Ipv4Addr,
    /// The payload's protocol number, such as 6 (TCP) or 97 (EtherIP).
    pub protocol: u8,
    /// The TTL.
    pub hop_limit: u8,
    /// The payload's length.
    pub payload_len: usize,
}

impl Ipv4Repr {
    /// Parses and checks an IPv4 header (see the module docs for what is
    /// accepted). Never panics, whatever the bytes.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Ipv4Packet<&T>) -> Result<Self, IpError> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            let header = &packet.buffer.as_ref()[..packet.header_len()];
            let mut zeroed = header.to_vec();
            zeroed[field::CHECKSUM].fill(0);
            return Err(IpError::BadChecksum {
                found: packet.checksum(),
                computed: checksum(&zeroed),
            });
        }
        if packet.more_frags() || packet.frag_offset() != 0 {
            return Err(IpError::Fragmented {
                offset: packet.frag_offset(),
                more: packet.more_frags(),
            });
        }
        Ok(Ipv4Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            protocol: packet.protocol(),
            hop_limit: packet.hop_limit(),
            payload_len: packet.payload().len(),
        })
    }

    /// The header length; the payload follows it.
    pub const fn buffer_len(&self) -> usize {
        IPV4_HEADER_LEN
    }

    /// Writes the header, checksum included. The payload is the caller's to
    /// write, into [`Ipv4Packet::payload_mut`] (the checksum does not cover
    /// it).
    ///
    /// # Panics
    ///
    /// If the buffer is shorter than [`buffer_len`](Self::buffer_len), or
    /// `payload_len` exceeds [`IPV4_MAX_PAYLOAD_LEN`]: both are caller bugs.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv4Packet<T>) {
        assert!(
            packet.buffer.as_ref().len() >= IPV4_HEADER_LEN,
            "IPv4 buffer must hold the {IPV4_HEADER_LEN}-byte header"
        );
        assert!(
            self.payload_len <= IPV4_MAX_PAYLOAD_LEN,
            "IPv4 payload of {} bytes exceeds {IPV4_MAX_PAYLOAD_LEN}",
            self.payload_len
        );
        packet.set_version(4);
        packet.set_header_len(IPV4_HEADER_LEN);
        packet.set_dscp_ecn(0);
        packet.set_total_len((IPV4_HEADER_LEN + self.payload_len) as u16);
        packet.set_ident(0);
        packet.set_frag(true, false, 0);
        packet.set_hop_limit(self.hop_limit);
        packet.set_protocol(self.protocol);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet.fill_checksum();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An ARP request in EtherIP (protocol 97) in IPv4 from 192.0.2.1 to
    /// 192.0.2.2, as RFC 3378 puts it on the wire and hinan's VPN puts it
    /// inside WireGuard: TTL 64, DF, identification 0; checksum 0xb659
    /// computed independently.
    #[rustfmt::skip]
    pub(crate) const IPV4_ETHERIP_ARP: [u8; 64] = [
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

    fn parse_v4(bytes: &[u8]) -> Result<Ipv4Repr, IpError> {
        Ipv4Repr::parse(&Ipv4Packet::new_checked(bytes)?)
    }

    fn etherip_repr() -> Ipv4Repr {
        Ipv4Repr {
            src_addr: Ipv4Addr::new(192, 0, 2, 1),
            dst_addr: Ipv4Addr::new(192, 0, 2, 2),
            protocol: 97,
            hop_limit: 64,
            payload_len: 44,
        }
    }

    #[test]
    fn parses_ipv4_etherip_arp() {
        let packet = Ipv4Packet::new_checked(&IPV4_ETHERIP_ARP[..]).unwrap();
        assert_eq!(Ipv4Repr::parse(&packet), Ok(etherip_repr()));
        assert!(packet.dont_frag());
        assert_eq!(packet.checksum(), 0xb659);
        assert_eq!(packet.payload(), &IPV4_ETHERIP_ARP[20..]);
    }

    #[test]
    fn emits_ipv4_etherip_arp() {
        let mut out = [0xaau8; 64];
        let mut packet = Ipv4Packet::new_unchecked(&mut out[..]);
        etherip_repr().emit(&mut packet);
        packet
            .payload_mut()
            .copy_from_slice(&IPV4_ETHERIP_ARP[20..]);
        assert_eq!(out, IPV4_ETHERIP_ARP);
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
        let packet = Ipv4Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.payload(), &IPV4_ETHERIP_ARP[20..]);
    }

    #[test]
    fn trailing_bytes_after_the_total_length_are_ignored() {
        // WireGuard peers that pad plaintext to 16 bytes leave zeros here,
        // and Ethernet pads short frames.
        let mut bytes = IPV4_ETHERIP_ARP.to_vec();
        bytes.extend_from_slice(&[0; 12]);
        assert_eq!(parse_v4(&bytes), Ok(etherip_repr()));
        let packet = Ipv4Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.payload(), &IPV4_ETHERIP_ARP[20..]);
    }

    #[test]
    fn ipv4_errors_name_the_problem() {
        let mut bad = IPV4_ETHERIP_ARP;
        bad[10] ^= 0xff;
        assert_eq!(
            parse_v4(&bad),
            Err(IpError::BadChecksum {
                found: 0x4959,
                computed: 0xb659
            })
        );

        let mut fragment = IPV4_ETHERIP_ARP;
        Ipv4Packet::new_unchecked(&mut fragment[..]).set_frag(false, true, 0);
        Ipv4Packet::new_unchecked(&mut fragment[..]).fill_checksum();
        assert_eq!(
            parse_v4(&fragment),
            Err(IpError::Fragmented {
                offset: 0,
                more: true
            })
        );

        let mut ihl4 = IPV4_ETHERIP_ARP;
        ihl4[0] = 0x44;
        assert_eq!(parse_v4(&ihl4), Err(IpError::BadHeaderLength { ihl: 4 }));

        assert_eq!(
            parse_v4(&IPV4_ETHERIP_ARP[..63]),
            Err(IpError::BadTotalLength {
                total_len: 64,
                header_len: 20,
                len: 63
            })
        );
        assert_eq!(
            parse_v4(&IPV4_ETHERIP_ARP[..19]),
            Err(IpError::Truncated {
                version: 4,
                len: 19,
                need: 20
            })
        );
        let mut v6 = IPV4_ETHERIP_ARP;
        v6[0] = 0x60;
        assert_eq!(
            parse_v4(&v6),
            Err(IpError::WrongVersion {
                expected: 4,
                found: 6
            })
        );
    }

    proptest! {
        #[test]
        fn ipv4_emit_then_parse_round_trips(
            src in any::<[u8; 4]>(),
            dst in any::<[u8; 4]>(),
            protocol in any::<u8>(),
            hop_limit in any::<u8>(),
            payload in proptest::collection::vec(any::<u8>(), 0..1600),
        ) {
            let repr = Ipv4Repr {
                src_addr: src.into(),
                dst_addr: dst.into(),
                protocol,
                hop_limit,
                payload_len: payload.len(),
            };
            let mut buf = vec![0u8; repr.buffer_len() + payload.len()];
            let mut packet = Ipv4Packet::new_unchecked(&mut buf[..]);
            repr.emit(&mut packet);
            packet.payload_mut().copy_from_slice(&payload);
            let packet = Ipv4Packet::new_checked(&buf[..]).unwrap();
            prop_assert!(packet.verify_checksum());
            prop_assert_eq!(Ipv4Repr::parse(&packet), Ok(repr));
            prop_assert_eq!(packet.payload(), &payload[..]);
        }

        #[test]
        fn ipv4_options_of_any_length_are_skipped(
            words in 0usize..=10,
            options in any::<[u8; 40]>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let header_len = IPV4_HEADER_LEN + 4 * words;
            let mut buf = vec![0u8; header_len + payload.len()];
            let mut packet = Ipv4Packet::new_unchecked(&mut buf[..]);
            Ipv4Repr {
                src_addr: Ipv4Addr::LOCALHOST,
                dst_addr: Ipv4Addr::BROADCAST,
                protocol: 97,
                hop_limit: 1,
                payload_len: 0,
            }
            .emit(&mut packet);
            packet.set_header_len(header_len);
            packet.set_total_len((header_len + payload.len()) as u16);
            buf[IPV4_HEADER_LEN..header_len].copy_from_slice(&options[..4 * words]);
            buf[header_len..].copy_from_slice(&payload);
            Ipv4Packet::new_unchecked(&mut buf[..]).fill_checksum();
            let packet = Ipv4Packet::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(parse_v4(&buf).map(|r| r.payload_len), Ok(payload.len()));
            prop_assert_eq!(packet.payload(), &payload[..]);
        }

        #[test]
        fn ipv4_parse_of_arbitrary_bytes_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let checked = parse_v4(&bytes);
            prop_assert_eq!(&checked, &Ipv4Repr::parse(&Ipv4Packet::new_unchecked(&bytes[..])));
        }

        #[test]
        fn ipv4_parse_of_corrupted_packets_never_panics(
            flips in proptest::collection::vec((0usize..64, any::<u8>()), 1..6),
            cut in 0usize..=64,
        ) {
            // Arbitrary bytes rarely pass the version check; start from a
            // valid packet so every later check sees corrupted input too.
            let mut bytes = IPV4_ETHERIP_ARP.to_vec();
            for (at, value) in flips {
                bytes[at] = value;
            }
            for data in [&bytes[..], &bytes[..cut]] {
                if let Ok(repr) = parse_v4(data) {
                    prop_assert!(IPV4_HEADER_LEN + repr.payload_len <= data.len());
                }
            }
        }
    }
}
