//! The virtio-net header a TAP device puts in front of each frame when it is
//! opened with `IFF_VNET_HDR`.
//!
//! ```text
//!  0               1               2               3
//! +---------------+---------------+-------------------------------+
//! |     flags     |   gso_type    |      hdr_len (LE u16)         |
//! +---------------+---------------+-------------------------------+
//! |      gso_size (LE u16)        |     csum_start (LE u16)       |
//! +-------------------------------+-------------------------------+
//! |     csum_offset (LE u16)      |  frame ...
//! +-------------------------------+
//! ```
//!
//! hinan uses the 10-byte `struct virtio_net_hdr` (the kernel's default
//! `TUNSETVNETHDRSZ`, as wireguard-go does). The 12-byte variant only adds
//! `num_buffers`, which means something for virtio's mergeable receive
//! buffers and nothing for a TAP. Fields are little-endian: a TAP uses the
//! host's byte order for legacy virtio headers unless `TUNSETVNETBE` is set,
//! and hinan runs on little-endian hosts (x86-64, arm64).

use super::OffloadError;

/// Length of the `struct virtio_net_hdr` hinan negotiates with the TAP.
pub const VIRTIO_NET_HDR_LEN: usize = 10;

mod field {
    pub(super) type Field = core::ops::Range<usize>;

    pub(super) const FLAGS: usize = 0;
    pub(super) const GSO_TYPE: usize = 1;
    pub(super) const HDR_LEN: Field = 2..4;
    pub(super) const GSO_SIZE: Field = 4..6;
    pub(super) const CSUM_START: Field = 6..8;
    pub(super) const CSUM_OFFSET: Field = 8..10;
}

/// The header's `flags` byte. Unknown bits survive a parse and emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct HdrFlags(pub u8);

impl HdrFlags {
    /// The checksum from `csum_start` to the end of the frame is still to be
    /// computed and stored at `csum_start + csum_offset`; that field holds
    /// the pseudo-header sum meanwhile.
    pub const NEEDS_CSUM: HdrFlags = HdrFlags(1);
    /// The checksum has been verified (receive direction only).
    pub const DATA_VALID: HdrFlags = HdrFlags(2);
    /// Receive segment coalescing information is present (virtio only).
    pub const RSC_INFO: HdrFlags = HdrFlags(4);

    pub const fn contains(self, other: HdrFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

/// What kind of super-frame the header announces, from the low seven bits of
/// `gso_type`. Unknown codes survive a round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum GsoType {
    /// Not a super-frame.
    #[default]
    None,
    TcpV4,
    /// UDP fragmentation offload (deprecated; never negotiated by hinan).
    Udp,
    TcpV6,
    /// UDP segmentation offload (never negotiated by hinan).
    UdpL4,
    Unknown(u8),
}

impl GsoType {
    /// The ECN bit of `gso_type`: the super-frame's first segment carries CWR.
    pub const ECN_BIT: u8 = 0x80;

    pub(crate) const fn from_code(code: u8) -> GsoType {
        match code {
            0 => GsoType::None,
            1 => GsoType::TcpV4,
            3 => GsoType::Udp,
            4 => GsoType::TcpV6,
            5 => GsoType::UdpL4,
            other => GsoType::Unknown(other),
        }
    }

    const fn code(self) -> u8 {
        match self {
            GsoType::None => 0,
            GsoType::TcpV4 => 1,
            GsoType::Udp => 3,
            GsoType::TcpV6 => 4,
            GsoType::UdpL4 => 5,
            GsoType::Unknown(code) => code & !Self::ECN_BIT,
        }
    }
}

/// A read/write view of a virtio-net header at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtioNetHdr<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VirtioNetHdr<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        VirtioNetHdr { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, OffloadError> {
        let hdr = Self::new_unchecked(buffer);
        hdr.check_len()?;
        Ok(hdr)
    }

    pub fn check_len(&self) -> Result<(), OffloadError> {
        let len = self.buffer.as_ref().len();
        if len < VIRTIO_NET_HDR_LEN {
            return Err(OffloadError::HeaderTruncated { len });
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn flags(&self) -> HdrFlags {
        HdrFlags(self.buffer.as_ref()[field::FLAGS])
    }

    /// The raw `gso_type` byte, ECN bit included.
    pub fn gso_type_raw(&self) -> u8 {
        self.buffer.as_ref()[field::GSO_TYPE]
    }

    pub fn hdr_len(&self) -> u16 {
        self.read_u16(field::HDR_LEN.start)
    }

    pub fn gso_size(&self) -> u16 {
        self.read_u16(field::GSO_SIZE.start)
    }

    pub fn csum_start(&self) -> u16 {
        self.read_u16(field::CSUM_START.start)
    }

    pub fn csum_offset(&self) -> u16 {
        self.read_u16(field::CSUM_OFFSET.start)
    }

    /// The frame after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[VIRTIO_NET_HDR_LEN..]
    }

    fn read_u16(&self, at: usize) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_le_bytes([b[at], b[at + 1]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VirtioNetHdr<T> {
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[VIRTIO_NET_HDR_LEN..]
    }

    fn write_u16(&mut self, at: usize, value: u16) {
        self.buffer.as_mut()[at..at + 2].copy_from_slice(&value.to_le_bytes());
    }
}

/// The parsed virtio-net header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VirtioNetHdrRepr {
    pub flags: HdrFlags,
    pub gso_type: GsoType,
    /// The ECN bit of `gso_type`.
    pub ecn: bool,
    /// Length of the headers in front of the payload. The kernel fills it
    /// loosely on read (it may cover more than the headers); hinan does not
    /// rely on it and computes header lengths from the frame.
    pub hdr_len: u16,
    /// Payload bytes per segment of a super-frame (the MSS for TCP).
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VirtioNetHdrRepr {
    /// The header of a plain frame: no offload, checksums complete.
    pub const PLAIN: VirtioNetHdrRepr = VirtioNetHdrRepr {
        flags: HdrFlags(0),
        gso_type: GsoType::None,
        ecn: false,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    pub fn parse<T: AsRef<[u8]>>(hdr: &VirtioNetHdr<T>) -> Result<VirtioNetHdrRepr, OffloadError> {
        hdr.check_len()?;
        let raw = hdr.gso_type_raw();
        Ok(VirtioNetHdrRepr {
            flags: hdr.flags(),
            gso_type: GsoType::from_code(raw & !GsoType::ECN_BIT),
            ecn: raw & GsoType::ECN_BIT != 0,
            hdr_len: hdr.hdr_len(),
            gso_size: hdr.gso_size(),
            csum_start: hdr.csum_start(),
            csum_offset: hdr.csum_offset(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        VIRTIO_NET_HDR_LEN
    }

    /// Writes the header into the first [`VIRTIO_NET_HDR_LEN`] bytes.
    ///
    /// # Panics
    /// If the buffer is shorter than [`VIRTIO_NET_HDR_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, hdr: &mut VirtioNetHdr<T>) {
        let buf = hdr.buffer.as_mut();
        buf[field::FLAGS] = self.flags.0;
        buf[field::GSO_TYPE] = self.gso_type.code() | if self.ecn { GsoType::ECN_BIT } else { 0 };
        hdr.write_u16(field::HDR_LEN.start, self.hdr_len);
        hdr.write_u16(field::GSO_SIZE.start, self.gso_size);
        hdr.write_u16(field::CSUM_START.start, self.csum_start);
        hdr.write_u16(field::CSUM_OFFSET.start, self.csum_offset);
    }

    /// The header as bytes, for a `writev` in front of a frame.
    pub fn to_bytes(&self) -> [u8; VIRTIO_NET_HDR_LEN] {
        let mut out = [0u8; VIRTIO_NET_HDR_LEN];
        self.emit(&mut VirtioNetHdr::new_unchecked(&mut out[..]));
        out
    }

    /// Whether the frame behind this header is something other than one
    /// complete frame: a super-frame, or one with a checksum left to fill.
    pub fn is_offloaded(&self) -> bool {
        self.gso_type != GsoType::None || self.flags.contains(HdrFlags::NEEDS_CSUM)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::test_frames::any_repr;
    use proptest::prelude::*;

    /// The header a TAP read returned on kernel 6.18 in front of an IPv4 TCP
    /// super-frame (dataplane/tests/tap.rs prints it): 1448-byte MSS,
    /// Ethernet + IPv4 + TCP with timestamps (66 bytes of headers), checksum
    /// partial at 34+16.
    const TSO4_HDR: [u8; 10] = [0x01, 0x01, 0x42, 0x00, 0xa8, 0x05, 0x22, 0x00, 0x10, 0x00];

    #[test]
    fn parses_and_emits_a_tso_header() {
        let repr =
            VirtioNetHdrRepr::parse(&VirtioNetHdr::new_checked(&TSO4_HDR[..]).unwrap()).unwrap();
        assert_eq!(
            repr,
            VirtioNetHdrRepr {
                flags: HdrFlags::NEEDS_CSUM,
                gso_type: GsoType::TcpV4,
                ecn: false,
                hdr_len: 66,
                gso_size: 1448,
                csum_start: 34,
                csum_offset: 16,
            }
        );
        assert!(repr.is_offloaded());
        assert_eq!(repr.to_bytes(), TSO4_HDR);
    }

    #[test]
    fn plain_header_is_all_zero_and_ecn_tcpv6_keeps_its_bit() {
        assert_eq!(VirtioNetHdrRepr::PLAIN.to_bytes(), [0; 10]);
        assert!(!VirtioNetHdrRepr::PLAIN.is_offloaded());
        let bytes = [0x02, 0x84, 0, 0, 0, 0, 0, 0, 0, 0];
        let repr = VirtioNetHdrRepr::parse(&VirtioNetHdr::new_unchecked(&bytes[..])).unwrap();
        assert_eq!(repr.gso_type, GsoType::TcpV6);
        assert!(repr.ecn && repr.flags.contains(HdrFlags::DATA_VALID));
        assert_eq!(repr.to_bytes(), bytes);
    }

    #[test]
    fn short_header_is_an_error() {
        for len in 0..VIRTIO_NET_HDR_LEN {
            assert_eq!(
                VirtioNetHdr::new_checked(&TSO4_HDR[..len]),
                Err(OffloadError::HeaderTruncated { len })
            );
        }
    }

    proptest! {
        #[test]
        fn header_emit_then_parse_round_trips(repr in any_repr()) {
            let bytes = repr.to_bytes();
            let parsed = VirtioNetHdrRepr::parse(&VirtioNetHdr::new_unchecked(&bytes[..]));
            prop_assert_eq!(parsed, Ok(repr));
        }
    }
}
