//! The EtherIP header (RFC 3378): two bytes in front of an Ethernet frame.
//!
//! ```text
//!  0                   1
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |VERSION|       RESERVED        |   VERSION = 3, RESERVED = 0
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Ethernet frame: destination MAC, source MAC, EtherType, ...  |
//! ```
//!
//! The only valid header is therefore the two bytes `0x30 0x00`. The Ethernet
//! frame follows without a frame check sequence. RFC 3378 carries the packet
//! directly in IPv4 or IPv6 with protocol number 97; see [`crate::ip`] for
//! that header, which hinan also uses to carry EtherIP through WireGuard.
//!
//! # The reversed-nibble header of old FreeBSD
//!
//! FreeBSD 6.1 to 7.2 declared the header as a C bit-field that put the
//! version in the *low* nibble of the first byte on little-endian machines, so
//! its `gif(4)` interfaces on a bridge sent `0x03 0x00`. Later FreeBSD sends
//! `0x30 0x00`, accepts both by default (`accept_rev_ethip_ver`) and sends the
//! old form on request (`send_rev_ethip_ver`).
//!
//! [`EtherIpRepr::parse`] takes a [`Compat`]:
//!
//! | header bytes | [`Compat::Strict`] | [`Compat::ReversedNibble`] |
//! |---|---|---|
//! | `0x30 0x00` | accepted | accepted |
//! | `0x03 0x00` | [`EtherIpError::ReversedHeader`] | accepted |
//! | anything else | rejected | rejected |
//!
//! Both forms parse to the same [`EtherIpRepr`] (version 3), and
//! [`EtherIpRepr::emit`] always writes the RFC form. FreeBSD's own lenient
//! check (a 3 in either nibble of the first byte, second byte ignored) is
//! deliberately not copied: other bytes are not something any known
//! implementation sends.

/// The only EtherIP version (RFC 3378, section 3).
pub const VERSION: u8 = 3;
/// The length of the EtherIP header.
pub const HEADER_LEN: usize = field::PAYLOAD.start;
/// The header as RFC 3378 writes it.
pub const RFC_HEADER: [u8; HEADER_LEN] = [0x30, 0x00];
/// The header as FreeBSD 6.1 to 7.2 wrote it (see the module docs).
pub const REVERSED_HEADER: [u8; HEADER_LEN] = [0x03, 0x00];
/// The IP protocol number (and IPv6 next header) of EtherIP.
pub const IP_PROTOCOL: u8 = 97;
/// An Ethernet header: destination and source MAC, EtherType.
pub const ETHERNET_HEADER_LEN: usize = 14;

mod field {
    pub(super) type Field = core::ops::Range<usize>;
    pub(super) type Rest = core::ops::RangeFrom<usize>;

    /// Version (high nibble of byte 0) and 12 reserved bits.
    pub(super) const VERSION_RESERVED: Field = 0..2;
    pub(super) const PAYLOAD: Rest = 2..;
}

/// Which EtherIP headers a parser accepts, besides the RFC's `0x30 0x00`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Compat {
    /// Only `0x30 0x00`, as RFC 3378 requires.
    #[default]
    Strict,
    /// `0x30 0x00` and also `0x03 0x00`, the header of FreeBSD 6.1 to 7.2
    /// `gif(4)`, or of later FreeBSD with `send_rev_ethip_ver`.
    ReversedNibble,
}

/// Why bytes are not an EtherIP packet this parser accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtherIpError {
    #[error("EtherIP packet rejected: {len} bytes is shorter than the 2-byte EtherIP header")]
    Truncated { len: usize },
    #[error("EtherIP packet rejected: version {version} is not supported (RFC 3378 defines only version 3)")]
    UnsupportedVersion { version: u8 },
    #[error("EtherIP packet rejected: reserved bits are {reserved:#05x}, RFC 3378 requires zero")]
    ReservedNotZero { reserved: u16 },
    #[error("EtherIP packet rejected: header 0x03 0x00 is the reversed form of FreeBSD 6.1-7.2 gif(4) (or send_rev_ethip_ver); enable the reversed-nibble compatibility option for this peer to accept it")]
    ReversedHeader,
    #[error("EtherIP packet rejected: the Ethernet frame inside is {len} bytes, shorter than a 14-byte Ethernet header")]
    FrameTooShort { len: usize },
}

/// A read/write view of an EtherIP packet: the header and the Ethernet frame.
///
/// Accessors index the buffer directly: call [`check_len`](Self::check_len)
/// (or build with [`new_checked`](Self::new_checked)) before using one on
/// untrusted bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtherIpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EtherIpPacket<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        EtherIpPacket { buffer }
    }

    /// Wraps a buffer and runs [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, EtherIpError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that every accessor can run without panicking: the buffer holds
    /// at least the header. It does not look at the header's contents.
    pub fn check_len(&self) -> Result<(), EtherIpError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(EtherIpError::Truncated { len });
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The high nibble of the first byte: 3 in an RFC 3378 header, 0 in the
    /// reversed form.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION_RESERVED.start] >> 4
    }

    /// The 12 bits after the version: 0 in an RFC 3378 header, `0x300` in the
    /// reversed form.
    pub fn reserved(&self) -> u16 {
        self.header_word() & 0x0fff
    }

    /// Whether the header is the reversed form `0x03 0x00`.
    pub fn is_reversed(&self) -> bool {
        self.buffer.as_ref()[field::VERSION_RESERVED] == REVERSED_HEADER
    }

    /// The Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }

    fn header_word(&self) -> u16 {
        let data = self.buffer.as_ref();
        u16::from_be_bytes([data[0], data[1]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EtherIpPacket<T> {
    /// Writes the version nibble, keeping the reserved bits.
    ///
    /// Only the low four bits of `value` fit.
    pub fn set_version(&mut self, value: u8) {
        let data = self.buffer.as_mut();
        data[0] = (value << 4) | (data[0] & 0x0f);
    }

    /// Writes the 12 reserved bits, keeping the version.
    pub fn set_reserved(&mut self, value: u16) {
        let data = self.buffer.as_mut();
        let word = (u16::from(data[0] >> 4) << 12) | (value & 0x0fff);
        data[field::VERSION_RESERVED].copy_from_slice(&word.to_be_bytes());
    }

    /// Where the Ethernet frame goes.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// An EtherIP header's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EtherIpRepr {
    pub version: u8,
}

impl Default for EtherIpRepr {
    fn default() -> Self {
        EtherIpRepr::RFC3378
    }
}

impl EtherIpRepr {
    /// The header RFC 3378 defines, and the only one [`parse`](Self::parse)
    /// returns.
    pub const RFC3378: EtherIpRepr = EtherIpRepr { version: VERSION };

    /// Parses and checks the header (see the module docs for what each
    /// [`Compat`] accepts), and checks that the payload can be an Ethernet
    /// frame. Never panics, whatever the bytes.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &EtherIpPacket<&T>,
        compat: Compat,
    ) -> Result<Self, EtherIpError> {
        packet.check_len()?;
        if packet.is_reversed() {
            if compat != Compat::ReversedNibble {
                return Err(EtherIpError::ReversedHeader);
            }
        } else {
            if packet.version() != VERSION {
                return Err(EtherIpError::UnsupportedVersion {
                    version: packet.version(),
                });
            }
            if packet.reserved() != 0 {
                return Err(EtherIpError::ReservedNotZero {
                    reserved: packet.reserved(),
                });
            }
        }
        let len = packet.payload().len();
        if len < ETHERNET_HEADER_LEN {
            return Err(EtherIpError::FrameTooShort { len });
        }
        Ok(EtherIpRepr::RFC3378)
    }

    /// The header length. The Ethernet frame follows it.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header in the RFC form: the version and zero reserved bits.
    /// The frame is the caller's to write, into
    /// [`EtherIpPacket::payload_mut`].
    ///
    /// # Panics
    ///
    /// If the buffer is shorter than [`buffer_len`](Self::buffer_len): that
    /// is a bug in the caller, not bad input.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut EtherIpPacket<T>) {
        assert!(
            packet.buffer.as_ref().len() >= self.buffer_len(),
            "EtherIP buffer must hold the {HEADER_LEN}-byte header"
        );
        packet.set_version(self.version);
        packet.set_reserved(0);
    }
}

/// Writes an EtherIP header and `frame` into the start of `out`, and returns
/// the written part.
///
/// Fails if `frame` is shorter than an Ethernet header. `out` too short for
/// both is a caller bug.
///
/// # Panics
///
/// If `out` is shorter than `HEADER_LEN + frame.len()`.
pub fn wrap_frame<'a>(frame: &[u8], out: &'a mut [u8]) -> Result<&'a mut [u8], EtherIpError> {
    if frame.len() < ETHERNET_HEADER_LEN {
        return Err(EtherIpError::FrameTooShort { len: frame.len() });
    }
    let total = HEADER_LEN + frame.len();
    assert!(
        out.len() >= total,
        "EtherIP buffer of {} bytes cannot hold {total}",
        out.len()
    );
    let mut packet = EtherIpPacket::new_unchecked(&mut out[..total]);
    EtherIpRepr::RFC3378.emit(&mut packet);
    packet.payload_mut().copy_from_slice(frame);
    Ok(&mut out[..total])
}

/// Checks an EtherIP packet and returns the Ethernet frame inside.
pub fn unwrap_frame(packet: &[u8], compat: Compat) -> Result<&[u8], EtherIpError> {
    let view = EtherIpPacket::new_checked(packet)?;
    EtherIpRepr::parse(&view, compat)?;
    Ok(&packet[field::PAYLOAD])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An ARP request, "who has 10.0.0.2? tell 10.0.0.1", broadcast by a QEMU
    /// guest NIC (52:54:00:12:34:56), without FCS and without padding to 60
    /// bytes, as it leaves a TAP device.
    #[rustfmt::skip]
    pub(crate) const ARP_REQUEST: [u8; 42] = [
        // Ethernet: broadcast destination, source, EtherType ARP.
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56,
        0x08, 0x06,
        // ARP: Ethernet/IPv4, hlen 6, plen 4, request.
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01,
        // Sender 52:54:00:12:34:56 at 10.0.0.1.
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x0a, 0x00, 0x00, 0x01,
        // Target unknown, at 10.0.0.2.
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x02,
    ];

    /// [`ARP_REQUEST`] behind an RFC 3378 header.
    fn etherip_arp(header: [u8; 2]) -> Vec<u8> {
        let mut bytes = header.to_vec();
        bytes.extend_from_slice(&ARP_REQUEST);
        bytes
    }

    fn parse_bytes(bytes: &[u8], compat: Compat) -> Result<EtherIpRepr, EtherIpError> {
        EtherIpRepr::parse(&EtherIpPacket::new_checked(bytes)?, compat)
    }

    #[test]
    fn rfc3378_header_is_0x30_0x00() {
        let mut buf = [0xffu8; 2];
        EtherIpRepr::RFC3378.emit(&mut EtherIpPacket::new_unchecked(&mut buf[..]));
        assert_eq!(buf, [0x30, 0x00]);
        assert_eq!(buf, RFC_HEADER);

        let packet = EtherIpPacket::new_unchecked(&RFC_HEADER[..]);
        assert_eq!(packet.version(), 3);
        assert_eq!(packet.reserved(), 0);
        assert!(!packet.is_reversed());
    }

    #[test]
    fn parses_an_etherip_packet_carrying_arp() {
        let bytes = etherip_arp(RFC_HEADER);
        let packet = EtherIpPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            EtherIpRepr::parse(&packet, Compat::Strict),
            Ok(EtherIpRepr { version: 3 })
        );
        assert_eq!(packet.payload(), &ARP_REQUEST[..]);
        assert_eq!(unwrap_frame(&bytes, Compat::Strict), Ok(&ARP_REQUEST[..]));
    }

    #[test]
    fn wraps_an_arp_frame_into_fixed_bytes() {
        let mut out = [0u8; 64];
        let written = wrap_frame(&ARP_REQUEST, &mut out).unwrap();
        assert_eq!(written.len(), 44);
        assert_eq!(&written[..], &etherip_arp([0x30, 0x00])[..]);
    }

    #[test]
    fn reversed_header_needs_the_compat_option() {
        let bytes = etherip_arp([0x03, 0x00]);
        let packet = EtherIpPacket::new_checked(&bytes[..]).unwrap();
        assert!(packet.is_reversed());
        assert_eq!(packet.version(), 0);
        assert_eq!(packet.reserved(), 0x300);

        let err = parse_bytes(&bytes, Compat::Strict).unwrap_err();
        assert_eq!(err, EtherIpError::ReversedHeader);
        assert!(err.to_string().contains("reversed-nibble compatibility"));

        assert_eq!(
            parse_bytes(&bytes, Compat::ReversedNibble),
            Ok(EtherIpRepr::RFC3378)
        );
        assert_eq!(
            unwrap_frame(&bytes, Compat::ReversedNibble),
            Ok(&ARP_REQUEST[..])
        );
        // Re-emitting writes the RFC form.
        let mut out = [0u8; 2];
        EtherIpRepr::RFC3378.emit(&mut EtherIpPacket::new_unchecked(&mut out[..]));
        assert_eq!(out, RFC_HEADER);
    }

    #[test]
    fn compat_accepts_nothing_else() {
        // Byte-swapped, other nibbles, other versions: rejected either way.
        for header in [[0x00, 0x03], [0x00, 0x30], [0x33, 0x00], [0x13, 0x00]] {
            let bytes = etherip_arp(header);
            for compat in [Compat::Strict, Compat::ReversedNibble] {
                assert!(
                    parse_bytes(&bytes, compat).is_err(),
                    "{header:02x?} accepted with {compat:?}"
                );
            }
        }
    }

    #[test]
    fn unknown_version_and_reserved_bits_are_reported() {
        let v4 = etherip_arp([0x40, 0x00]);
        let err = parse_bytes(&v4, Compat::ReversedNibble).unwrap_err();
        assert_eq!(err, EtherIpError::UnsupportedVersion { version: 4 });
        assert!(err.to_string().contains("version 4 is not supported"));

        let reserved = etherip_arp([0x30, 0x01]);
        let err = parse_bytes(&reserved, Compat::Strict).unwrap_err();
        assert_eq!(err, EtherIpError::ReservedNotZero { reserved: 1 });
        assert!(err.to_string().contains("0x001"));
    }

    #[test]
    fn short_input_is_rejected() {
        assert_eq!(
            parse_bytes(&[0x30], Compat::Strict),
            Err(EtherIpError::Truncated { len: 1 })
        );
        assert_eq!(
            unwrap_frame(&[], Compat::Strict),
            Err(EtherIpError::Truncated { len: 0 })
        );
        let bytes = etherip_arp(RFC_HEADER);
        assert_eq!(
            parse_bytes(&bytes[..15], Compat::Strict),
            Err(EtherIpError::FrameTooShort { len: 13 })
        );
        assert_eq!(
            wrap_frame(&ARP_REQUEST[..13], &mut [0u8; 64]),
            Err(EtherIpError::FrameTooShort { len: 13 })
        );
    }

    #[test]
    fn setters_keep_the_other_field() {
        let mut buf = [0u8; 2];
        let mut packet = EtherIpPacket::new_unchecked(&mut buf[..]);
        packet.set_reserved(0xabc);
        packet.set_version(0x5);
        assert_eq!(packet.version(), 5);
        assert_eq!(packet.reserved(), 0xabc);
        packet.set_reserved(0x123);
        assert_eq!(packet.version(), 5);
        assert_eq!(buf, [0x51, 0x23]);
    }

    proptest! {
        #[test]
        fn emit_then_parse_round_trips(
            frame in proptest::collection::vec(any::<u8>(), ETHERNET_HEADER_LEN..1600),
            compat in prop_oneof![Just(Compat::Strict), Just(Compat::ReversedNibble)],
        ) {
            let repr = EtherIpRepr::RFC3378;
            let mut buf = vec![0u8; repr.buffer_len() + frame.len()];
            let mut packet = EtherIpPacket::new_unchecked(&mut buf[..]);
            repr.emit(&mut packet);
            packet.payload_mut().copy_from_slice(&frame);
            let packet = EtherIpPacket::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(EtherIpRepr::parse(&packet, compat), Ok(repr));
            prop_assert_eq!(packet.payload(), &frame[..]);

            let mut out = vec![0u8; buf.len()];
            prop_assert_eq!(&wrap_frame(&frame, &mut out).unwrap()[..], &buf[..]);
            prop_assert_eq!(unwrap_frame(&buf, compat), Ok(&frame[..]));
        }

        #[test]
        fn header_fields_survive_a_round_trip(version in 0u8..16, reserved in 0u16..0x1000) {
            // The view keeps any value, so an unknown version reaches the
            // error message intact.
            let mut buf = [0u8; HEADER_LEN + ETHERNET_HEADER_LEN];
            let mut packet = EtherIpPacket::new_unchecked(&mut buf[..]);
            packet.set_version(version);
            packet.set_reserved(reserved);
            prop_assert_eq!(packet.version(), version);
            prop_assert_eq!(packet.reserved(), reserved);
            let result = parse_bytes(&buf, Compat::ReversedNibble);
            let expected = match (version, reserved) {
                (3, 0) | (0, 0x300) => Ok(EtherIpRepr::RFC3378),
                (3, _) => Err(EtherIpError::ReservedNotZero { reserved }),
                _ => Err(EtherIpError::UnsupportedVersion { version }),
            };
            prop_assert_eq!(result, expected);
        }

        #[test]
        fn parse_of_arbitrary_bytes_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            compat in prop_oneof![Just(Compat::Strict), Just(Compat::ReversedNibble)],
        ) {
            let checked = parse_bytes(&bytes, compat);
            let unchecked = EtherIpRepr::parse(&EtherIpPacket::new_unchecked(&bytes[..]), compat);
            prop_assert_eq!(&checked, &unchecked);
            let header_ok = bytes.len() >= 2
                && (bytes[..2] == RFC_HEADER
                    || (compat == Compat::ReversedNibble && bytes[..2] == REVERSED_HEADER));
            prop_assert_eq!(checked.is_ok(), header_ok && bytes.len() >= HEADER_LEN + ETHERNET_HEADER_LEN);
            prop_assert_eq!(unwrap_frame(&bytes, compat).is_ok(), checked.is_ok());
        }
    }
}
