//! TCP headers (RFC 9293), as far as the MSS clamp and the offloads read and
//! patch them: ports, sequence and acknowledgment numbers, data offset,
//! flags, window, checksum and the options between them and the payload.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          Source Port          |       Destination Port        |
//! |                        Sequence Number                        |
//! |                    Acknowledgment Number                      |
//! |  Data |       |C|E|U|A|P|R|S|F|                               |
//! | Offset| Rsrvd |W|C|R|C|S|S|Y|I|            Window             |
//! |           Checksum            |         Urgent Pointer        |
//! |                    Options (data offset > 5)                  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! The view spans one segment, header and payload: give it the IP payload.

use super::checksum::Checksum;

/// A TCP header without options.
pub const TCP_HEADER_LEN: usize = 20;
/// The offset of the checksum in a TCP header (a virtio-net `csum_offset`).
pub const TCP_CHECKSUM_AT: usize = field::CHECKSUM.start;

/// The bits of the flags byte.
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// TCP option kinds the dataplane reads.
pub mod option {
    pub const END: u8 = 0;
    pub const NOP: u8 = 1;
    pub const MSS: u8 = 2;
    /// The length of an MSS option, kind and length bytes included.
    pub const MSS_LEN: u8 = 4;
}

mod field {
    pub(super) type Field = core::ops::Range<usize>;

    pub(super) const SRC_PORT: Field = 0..2;
    pub(super) const DST_PORT: Field = 2..4;
    pub(super) const SEQ_NUM: Field = 4..8;
    pub(super) const ACK_NUM: Field = 8..12;
    pub(super) const DATA_OFFSET: usize = 12;
    pub(super) const FLAGS: usize = 13;
    pub(super) const WINDOW: Field = 14..16;
    pub(super) const CHECKSUM: Field = 16..18;
    pub(super) const URGENT: Field = 18..20;
}

/// Why bytes are not a TCP segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TcpError {
    #[error("TCP segment rejected: {len} bytes is shorter than the {TCP_HEADER_LEN}-byte header")]
    Truncated { len: usize },
    #[error("TCP segment rejected: data offset of {header_len} bytes does not fit between {TCP_HEADER_LEN} and the {len}-byte segment")]
    BadDataOffset { header_len: usize, len: usize },
}

/// A read/write view of a TCP segment.
///
/// Accessors index the buffer directly: call [`check_len`](Self::check_len)
/// (or build with [`new_checked`](Self::new_checked)) before using one on
/// untrusted bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }

    /// Wraps a buffer and runs [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, TcpError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that every accessor, [`options`](Self::options) and
    /// [`payload`](Self::payload) included, can run without panicking.
    pub fn check_len(&self) -> Result<(), TcpError> {
        let len = self.buffer.as_ref().len();
        if len < TCP_HEADER_LEN {
            return Err(TcpError::Truncated { len });
        }
        let header_len = self.header_len();
        if header_len < TCP_HEADER_LEN || header_len > len {
            return Err(TcpError::BadDataOffset { header_len, len });
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn src_port(&self) -> u16 {
        self.read_u16(field::SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        self.read_u16(field::DST_PORT)
    }

    pub fn seq_number(&self) -> u32 {
        self.read_u32(field::SEQ_NUM)
    }

    pub fn ack_number(&self) -> u32 {
        self.read_u32(field::ACK_NUM)
    }

    /// The header length in bytes (the data offset), options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFFSET] >> 4) * 4
    }

    /// The flags byte; test it against [`flags`].
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    pub fn syn(&self) -> bool {
        self.flags() & flags::SYN != 0
    }

    pub fn window_len(&self) -> u16 {
        self.read_u16(field::WINDOW)
    }

    pub fn checksum(&self) -> u16 {
        self.read_u16(field::CHECKSUM)
    }

    pub fn urgent_at(&self) -> u16 {
        self.read_u16(field::URGENT)
    }

    /// The options: the bytes between the fixed header and the payload.
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[TCP_HEADER_LEN..self.header_len()]
    }

    /// The bytes after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    /// Whether the segment sums to zero with the pseudo-header sum `pseudo`
    /// (see [`pseudo_header_v4`](super::checksum::pseudo_header_v4)).
    pub fn verify_checksum(&self, mut pseudo: Checksum) -> bool {
        pseudo.add(self.buffer.as_ref()).fold() == 0xffff
    }

    fn read_u16(&self, range: field::Field) -> u16 {
        let b = &self.buffer.as_ref()[range];
        u16::from_be_bytes([b[0], b[1]])
    }

    fn read_u32(&self, range: field::Field) -> u32 {
        let b = &self.buffer.as_ref()[range];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    pub fn set_seq_number(&mut self, value: u32) {
        self.buffer.as_mut()[field::SEQ_NUM].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_flags(&mut self, value: u8) {
        self.buffer.as_mut()[field::FLAGS] = value;
    }

    pub fn set_checksum(&mut self, value: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&value.to_be_bytes());
    }

    /// Computes the checksum over the whole segment and `pseudo`, the
    /// pseudo-header sum, and writes it.
    pub fn fill_checksum(&mut self, mut pseudo: Checksum) {
        self.set_checksum(0);
        let sum = pseudo.add(self.buffer.as_ref()).finish();
        self.set_checksum(sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::checksum::pseudo_header_v4;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    /// A SYN 192.0.2.1:40000 -> 192.0.2.2:5201, seq 0x01020304, window
    /// 64240, options MSS 1460, NOP, NOP, SACK permitted; checksum computed
    /// independently (0x4f93).
    #[rustfmt::skip]
    const SYN: [u8; 28] = [
        0x9c, 0x40, 0x14, 0x51, // ports
        0x01, 0x02, 0x03, 0x04, // seq
        0x00, 0x00, 0x00, 0x00, // ack
        0x70, 0x02, 0xfa, 0xf0, // data offset 7, SYN, window
        0x4f, 0x93, 0x00, 0x00, // checksum, urgent
        0x02, 0x04, 0x05, 0xb4, 0x01, 0x01, 0x04, 0x02,
    ];

    fn pseudo(len: usize) -> Checksum {
        pseudo_header_v4(
            Ipv4Addr::new(192, 0, 2, 1),
            Ipv4Addr::new(192, 0, 2, 2),
            6,
            len,
        )
    }

    #[test]
    fn reads_a_syn() {
        let tcp = TcpPacket::new_checked(&SYN[..]).unwrap();
        assert_eq!((tcp.src_port(), tcp.dst_port()), (40000, 5201));
        assert_eq!((tcp.seq_number(), tcp.ack_number()), (0x0102_0304, 0));
        assert_eq!(tcp.header_len(), 28);
        assert!(tcp.syn());
        assert_eq!(tcp.flags(), flags::SYN);
        assert_eq!(tcp.window_len(), 64240);
        assert_eq!(tcp.urgent_at(), 0);
        assert_eq!(tcp.options(), &SYN[20..]);
        assert!(tcp.payload().is_empty());
        assert_eq!(tcp.checksum(), 0x4f93);
        assert!(tcp.verify_checksum(pseudo(28)));
    }

    #[test]
    fn patches_in_place_and_refills_the_checksum() {
        let mut seg = SYN.to_vec();
        seg.extend_from_slice(b"data");
        let mut tcp = TcpPacket::new_unchecked(&mut seg[..]);
        tcp.set_seq_number(0xffff_fff0);
        tcp.set_flags(flags::ACK | flags::PSH);
        assert!(!tcp.verify_checksum(pseudo(32)));
        tcp.fill_checksum(pseudo(32));
        assert!(tcp.verify_checksum(pseudo(32)));
        assert_eq!(tcp.seq_number(), 0xffff_fff0);
        assert_eq!(tcp.payload(), b"data");
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(
            TcpPacket::new_checked(&SYN[..19]),
            Err(TcpError::Truncated { len: 19 })
        );
        assert_eq!(
            TcpPacket::new_checked(&SYN[..27]),
            Err(TcpError::BadDataOffset {
                header_len: 28,
                len: 27
            })
        );
        let mut short = SYN;
        short[12] = 4 << 4;
        assert_eq!(
            TcpPacket::new_checked(&short[..]),
            Err(TcpError::BadDataOffset {
                header_len: 16,
                len: 28
            })
        );
    }

    proptest! {
        #[test]
        fn checked_views_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(tcp) = TcpPacket::new_checked(&bytes[..]) {
                prop_assert_eq!(
                    TCP_HEADER_LEN + tcp.options().len() + tcp.payload().len(),
                    bytes.len()
                );
                let _ = (tcp.seq_number(), tcp.window_len(), tcp.verify_checksum(pseudo(bytes.len())));
            }
        }
    }
}
