//! The virtio-net header a TAP device puts in front of each frame when it is
//! opened with `IFF_VNET_HDR`, and the software halves of the offloads it
//! negotiates: [`segment`] splits the TCP super-frames (TSO) and completes the
//! partial checksums the kernel hands us, and [`Coalescer`] merges
//! consecutive TCP segments of one flow back into super-frames (like Linux
//! GRO) so that one `write` to the TAP carries up to 64 KiB.
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

use crate::wire::{ethertype, EthernetFrame, EthernetRepr, FrameError};

/// Length of the `struct virtio_net_hdr` hinan negotiates with the TAP.
pub const VIRTIO_NET_HDR_LEN: usize = 10;

/// The largest IPv4 total length or IPv6 payload length: the ceiling of a
/// super-frame without BIG TCP.
pub const MAX_IP_PACKET: usize = 65_535;

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

    const fn from_code(code: u8) -> GsoType {
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

/// Why the offload code refused a header or frame. The kernel is the only
/// writer of these on the TAP side, but a frame that comes out of a tunnel
/// may be anything, so each error names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OffloadError {
    #[error("virtio-net header truncated: {len} bytes, need {VIRTIO_NET_HDR_LEN}")]
    HeaderTruncated { len: usize },
    #[error("offloaded frame dropped: {0}")]
    Ethernet(#[from] FrameError),
    #[error("offloaded frame dropped: {reason}")]
    Malformed { reason: &'static str },
    #[error("offloaded frame dropped: GSO type {gso_type:?} is not negotiated by hinan (only TCPv4 and TCPv6 are)")]
    UnsupportedGso { gso_type: GsoType },
    #[error(
        "offloaded frame dropped: checksum at {start}+{offset} lies outside the {len}-byte frame"
    )]
    ChecksumOutOfFrame {
        start: usize,
        offset: usize,
        len: usize,
    },
    #[error("segment of {need} bytes does not fit the {len}-byte scratch buffer")]
    BufferTooSmall { need: usize, len: usize },
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

/// One's complement sum (RFC 1071) of byte strings, added piece by piece.
/// Every piece but the last must have an even length.
#[derive(Debug, Clone, Copy, Default)]
struct Checksum(u64);

impl Checksum {
    fn add(&mut self, bytes: &[u8]) {
        // Sums native-endian 32-bit words: one's complement addition does not
        // care about byte order (RFC 1071, 2.B) as long as the final fold
        // swaps back, and 2^32 is congruent to 1 modulo 2^16 - 1.
        let mut chunks = bytes.chunks_exact(4);
        let mut acc = self.0;
        for chunk in &mut chunks {
            acc += u64::from(u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut tail = [0u8; 4];
            tail[..rest.len()].copy_from_slice(rest);
            acc += u64::from(u32::from_ne_bytes(tail));
        }
        self.0 = acc;
    }

    /// The folded sum, not complemented: what a partial checksum field holds.
    fn fold(self) -> u16 {
        let mut acc = self.0;
        while acc >> 16 != 0 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        u16::from_be(acc as u16)
    }

    /// The checksum field's value: the complement of the folded sum.
    fn finish(self) -> u16 {
        !self.fold()
    }
}

const PROTOCOL_TCP: u8 = 6;
const IPV4_MIN_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;
const TCP_MIN_HEADER: usize = 20;
/// Offset of the checksum in a TCP header.
const TCP_CHECKSUM: usize = 16;
/// Offset of the checksum in a UDP header.
const UDP_CHECKSUM: usize = 6;

mod tcp_flag {
    pub(super) const FIN: u8 = 0x01;
    pub(super) const PSH: u8 = 0x08;
    pub(super) const CWR: u8 = 0x80;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// Where the headers of an Ethernet + IPv4/IPv6 + TCP frame are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TcpLayout {
    family: Family,
    /// Start of the IP header (the Ethernet header and its tags end here).
    l3: usize,
    /// Start of the TCP header.
    l4: usize,
    /// Start of the TCP payload.
    payload: usize,
    /// End of the IP packet (Ethernet padding, if any, follows).
    end: usize,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn malformed(reason: &'static str) -> OffloadError {
    OffloadError::Malformed { reason }
}

impl TcpLayout {
    /// Reads the headers of a TCP frame strictly: IPv4 without fragments,
    /// IPv6 without extension headers, lengths that agree with the frame.
    fn parse(frame: &[u8]) -> Result<TcpLayout, OffloadError> {
        let eth = EthernetRepr::parse(&EthernetFrame::new_checked(frame)?)?;
        let l3 = eth.buffer_len();
        let (family, l4, end) = match eth.ethertype {
            ethertype::IPV4 => {
                let ip = &frame[l3..];
                if ip.len() < IPV4_MIN_HEADER {
                    return Err(malformed("IPv4 header truncated"));
                }
                let ihl = usize::from(ip[0] & 0x0f) * 4;
                if ip[0] >> 4 != 4 || ihl < IPV4_MIN_HEADER {
                    return Err(malformed("bad IPv4 version or header length"));
                }
                let total = usize::from(be16(ip, 2));
                if total < ihl + TCP_MIN_HEADER || total > ip.len() {
                    return Err(malformed("IPv4 total length disagrees with the frame"));
                }
                if ip[9] != PROTOCOL_TCP {
                    return Err(malformed("not TCP"));
                }
                if be16(ip, 6) & 0x3fff != 0 {
                    return Err(malformed("IPv4 fragment"));
                }
                (Family::V4, l3 + ihl, l3 + total)
            }
            ethertype::IPV6 => {
                let ip = &frame[l3..];
                if ip.len() < IPV6_HEADER {
                    return Err(malformed("IPv6 header truncated"));
                }
                if ip[0] >> 4 != 6 {
                    return Err(malformed("bad IPv6 version"));
                }
                if ip[6] != PROTOCOL_TCP {
                    return Err(malformed("not TCP right after the IPv6 header"));
                }
                let payload = usize::from(be16(ip, 4));
                if payload < TCP_MIN_HEADER || IPV6_HEADER + payload > ip.len() {
                    return Err(malformed("IPv6 payload length disagrees with the frame"));
                }
                (Family::V6, l3 + IPV6_HEADER, l3 + IPV6_HEADER + payload)
            }
            _ => return Err(malformed("neither IPv4 nor IPv6")),
        };
        let data_offset = usize::from(frame[l4 + 12] >> 4) * 4;
        if data_offset < TCP_MIN_HEADER || l4 + data_offset > end {
            return Err(malformed("bad TCP data offset"));
        }
        Ok(TcpLayout {
            family,
            l3,
            l4,
            payload: l4 + data_offset,
            end,
        })
    }

    /// Rewrites the IP length fields (and the IPv4 header checksum) for a
    /// packet whose TCP segment (header and payload) is `tcp_len` bytes.
    fn set_ip_lengths(&self, frame: &mut [u8], tcp_len: usize, ipv4_id: Option<u16>) {
        let l3 = self.l3;
        match self.family {
            Family::V4 => {
                let ihl = self.l4 - l3;
                let total = (ihl + tcp_len) as u16;
                frame[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
                if let Some(id) = ipv4_id {
                    frame[l3 + 4..l3 + 6].copy_from_slice(&id.to_be_bytes());
                }
                frame[l3 + 10..l3 + 12].fill(0);
                let mut sum = Checksum::default();
                sum.add(&frame[l3..self.l4]);
                frame[l3 + 10..l3 + 12].copy_from_slice(&sum.finish().to_be_bytes());
            }
            Family::V6 => {
                frame[l3 + 4..l3 + 6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
            }
        }
    }

    /// The pseudo-header sum for a TCP segment of `tcp_len` bytes.
    fn pseudo_header(&self, frame: &[u8], tcp_len: usize) -> Checksum {
        let mut sum = Checksum::default();
        match self.family {
            Family::V4 => sum.add(&frame[self.l3 + 12..self.l3 + 20]),
            Family::V6 => sum.add(&frame[self.l3 + 8..self.l3 + 40]),
        }
        sum.add(&[0, PROTOCOL_TCP]);
        sum.add(&(tcp_len as u32).to_be_bytes());
        sum
    }

    /// Computes and stores the full TCP checksum of the packet.
    fn fill_tcp_checksum(&self, frame: &mut [u8]) {
        let csum_at = self.l4 + TCP_CHECKSUM;
        frame[csum_at..csum_at + 2].fill(0);
        let mut sum = self.pseudo_header(frame, self.end - self.l4);
        sum.add(&frame[self.l4..self.end]);
        frame[csum_at..csum_at + 2].copy_from_slice(&sum.finish().to_be_bytes());
    }
}

/// Completes the checksum a NEEDS_CSUM header leaves open: the sum from
/// `csum_start` to the end of the frame, stored at `csum_start +
/// csum_offset`, whose field holds the pseudo-header sum meanwhile.
pub fn complete_checksum(hdr: &VirtioNetHdrRepr, frame: &mut [u8]) -> Result<(), OffloadError> {
    let start = usize::from(hdr.csum_start);
    let offset = usize::from(hdr.csum_offset);
    let at = start + offset;
    if at + 2 > frame.len() || offset % 2 == 1 {
        return Err(OffloadError::ChecksumOutOfFrame {
            start,
            offset,
            len: frame.len(),
        });
    }
    let mut sum = Checksum::default();
    sum.add(&frame[start..]);
    let mut value = sum.finish();
    // UDP sends a computed zero as all ones (zero means "no checksum"), as
    // the kernel's skb_checksum_help does.
    if value == 0 && offset == UDP_CHECKSUM {
        value = 0xffff;
    }
    frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
    Ok(())
}

/// Turns what a TAP read returned (header parsed into `hdr`, `frame` after
/// it) into plain, complete Ethernet frames and hands each to `out`:
///
/// * a plain frame goes out as it is;
/// * a NEEDS_CSUM frame gets its checksum completed in place;
/// * a TCPv4/TCPv6 super-frame is split into frames of at most
///   `hdr.gso_size` payload bytes, built one after the other in `scratch`
///   (which must hold the headers plus `gso_size` bytes; [`MAX_IP_PACKET`]
///   plus 32 always does): headers copied, IPv4 total length, identification
///   (+1 per segment) and header checksum, IPv6 payload length and TCP
///   sequence number fixed, FIN and PSH kept only on the last segment, CWR
///   only on the first, and the full TCP checksum computed.
///
/// Returns the number of frames handed out. Nothing is handed out when the
/// frame is refused.
pub fn segment<F: FnMut(&mut [u8])>(
    hdr: &VirtioNetHdrRepr,
    frame: &mut [u8],
    scratch: &mut [u8],
    mut out: F,
) -> Result<usize, OffloadError> {
    let family = match hdr.gso_type {
        GsoType::None => {
            if hdr.flags.contains(HdrFlags::NEEDS_CSUM) {
                complete_checksum(hdr, frame)?;
            }
            out(frame);
            return Ok(1);
        }
        GsoType::TcpV4 => Family::V4,
        GsoType::TcpV6 => Family::V6,
        other => return Err(OffloadError::UnsupportedGso { gso_type: other }),
    };
    let layout = TcpLayout::parse(frame)?;
    if layout.family != family {
        return Err(malformed("GSO type and IP version disagree"));
    }
    let mss = usize::from(hdr.gso_size);
    if mss == 0 {
        return Err(malformed("GSO super-frame with a segment size of 0"));
    }
    let headers = layout.payload;
    let payload = &frame[layout.payload..layout.end];
    if payload.is_empty() {
        // A pure ACK announced as a super-frame: one segment, as it is.
        let packet = &mut frame[..layout.end];
        layout.fill_tcp_checksum(packet);
        out(packet);
        return Ok(1);
    }
    let need = headers + mss.min(payload.len());
    if scratch.len() < need {
        return Err(OffloadError::BufferTooSmall {
            need,
            len: scratch.len(),
        });
    }
    let ipv4_id = be16(frame, layout.l3 + 4);
    let seq = be32(frame, layout.l4 + 4);
    let flags = frame[layout.l4 + 13];
    let count = payload.len().div_ceil(mss);
    scratch[..headers].copy_from_slice(&frame[..headers]);
    for (i, chunk) in payload.chunks(mss).enumerate() {
        let end = headers + chunk.len();
        let seg = &mut scratch[..end];
        seg[headers..].copy_from_slice(chunk);
        let tcp_len = end - layout.l4;
        let id = match family {
            Family::V4 => Some(ipv4_id.wrapping_add(i as u16)),
            Family::V6 => None,
        };
        let seg_layout = TcpLayout { end, ..layout };
        seg_layout.set_ip_lengths(seg, tcp_len, id);
        let seq = seq.wrapping_add((i * mss) as u32);
        seg[layout.l4 + 4..layout.l4 + 8].copy_from_slice(&seq.to_be_bytes());
        let mut seg_flags = flags;
        if i + 1 < count {
            seg_flags &= !(tcp_flag::FIN | tcp_flag::PSH);
        }
        if i > 0 {
            seg_flags &= !tcp_flag::CWR;
        }
        seg[layout.l4 + 13] = seg_flags;
        seg_layout.fill_tcp_checksum(seg);
        out(seg);
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The header the kernel's `virtio_net_hdr_from_skb` writes in front of
    /// an IPv4 TCP super-frame with a 1448-byte MSS: Ethernet + IPv4 + TCP
    /// with timestamps (66 bytes of headers), checksum partial at 34+16.
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

    fn any_repr() -> impl Strategy<Value = VirtioNetHdrRepr> {
        (
            any::<u8>(),
            any::<u8>(),
            any::<u16>(),
            any::<u16>(),
            any::<u16>(),
            any::<u16>(),
        )
            .prop_map(|(flags, gso, hdr_len, gso_size, csum_start, csum_offset)| {
                VirtioNetHdrRepr {
                    flags: HdrFlags(flags),
                    gso_type: GsoType::from_code(gso & !GsoType::ECN_BIT),
                    ecn: gso & GsoType::ECN_BIT != 0,
                    hdr_len,
                    gso_size,
                    csum_start,
                    csum_offset,
                }
            })
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
