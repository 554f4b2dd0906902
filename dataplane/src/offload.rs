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
    pub(super) const ACK: u8 = 0x10;
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
/// To cut smaller segments than the kernel chose (a tunnel whose inner MTU
/// is below the TAP's), lower `hdr.gso_size` before the call; frames that
/// are not super-frames are never split.
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

/// [`segment`] for a whole TAP read: parses the virtio-net header at the
/// front of `read` and splits the frame behind it.
pub fn segment_read<F: FnMut(&mut [u8])>(
    read: &mut [u8],
    scratch: &mut [u8],
    out: F,
) -> Result<usize, OffloadError> {
    let hdr = VirtioNetHdrRepr::parse(&VirtioNetHdr::new_checked(&*read)?)?;
    segment(&hdr, &mut read[VIRTIO_NET_HDR_LEN..], scratch, out)
}

/// Counters of what a [`Coalescer`] did, for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CoalescerStats {
    /// Frames given to [`Coalescer::push`].
    pub frames_in: u64,
    /// Frames handed out with a plain header: not TCP data, or a flow's
    /// lone segment.
    pub plain_out: u64,
    /// Super-frames handed out (two segments or more).
    pub super_frames_out: u64,
    /// Segments that went into those super-frames.
    pub segments_merged: u64,
}

/// One flow's super-frame under construction.
#[derive(Debug)]
struct Flow {
    /// [`VIRTIO_NET_HDR_LEN`] bytes left for the header, then the frame.
    buf: Vec<u8>,
    /// Offsets in the frame (after the header room).
    layout: TcpLayout,
    next_seq: u32,
    /// Payload bytes of the first segment: every segment but the last has
    /// exactly this many.
    seg_size: usize,
    segments: usize,
    /// A shorter segment or a PSH ended the run: nothing more may follow.
    closed: bool,
}

impl Flow {
    fn frame(&self) -> &[u8] {
        &self.buf[VIRTIO_NET_HDR_LEN..]
    }
}

/// The receive direction of the offloads, like Linux GRO: complete frames
/// with valid checksums go in, and consecutive in-order TCP segments of one
/// flow come out merged into one super-frame with a GSO virtio-net header,
/// ready for one write to a TAP opened with a virtio-net header.
///
/// Segments merge when their Ethernet, IP and TCP headers are the same
/// except for the IPv4 identification, lengths and checksums, the TCP
/// sequence number (which must follow on) and PSH; when they carry data
/// and no flag other than ACK and PSH; when IPv4 has no options and is not a
/// fragment, IPv6 has no extension headers; when their IP and TCP checksums
/// are valid; and when every segment but the last has the first one's
/// size. A segment with PSH, or a shorter one, ends its super-frame. Anything
/// else goes out alone with a plain header, after the super-frame of its own
/// flow, if any, so that every flow keeps its order.
///
/// Memory is bounded: at most `max_flows` super-frames of at most 64 KiB are
/// held; a new flow beyond that pushes out the oldest. Call
/// [`flush`](Self::flush) at the end of every batch of input: the
/// coalescer holds frames until then.
///
/// A super-frame goes out with `NEEDS_CSUM` and the pseudo-header sum in the
/// TCP checksum field, as the kernel's `virtio_net_hdr_to_skb` expects of a
/// GSO frame (wireguard-go writes the same); the IPv4 header checksum is
/// complete.
#[derive(Debug)]
pub struct Coalescer {
    flows: Vec<Flow>,
    spare: Vec<Vec<u8>>,
    max_flows: usize,
    plain: Vec<u8>,
    stats: CoalescerStats,
}

impl Coalescer {
    /// A coalescer that holds at most `max_flows` (at least one) flows.
    pub fn new(max_flows: usize) -> Coalescer {
        Coalescer {
            flows: Vec::new(),
            spare: Vec::new(),
            max_flows: max_flows.max(1),
            plain: Vec::new(),
            stats: CoalescerStats::default(),
        }
    }

    pub fn stats(&self) -> CoalescerStats {
        self.stats
    }

    /// Whether any frame waits for [`flush`](Self::flush).
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Takes one frame. `out` receives, as virtio-net header plus frame,
    /// whatever has to leave now; the rest waits for more segments or for
    /// [`flush`](Self::flush).
    pub fn push<F: FnMut(&[u8])>(&mut self, frame: &[u8], mut out: F) {
        self.stats.frames_in += 1;
        let layout = match TcpLayout::parse(frame) {
            Ok(layout) => layout,
            Err(_) => return self.emit_plain(frame, &mut out),
        };
        let found = self.flows.iter().position(|f| same_flow(f, frame, &layout));
        if !mergeable_segment(frame, &layout) {
            if let Some(i) = found {
                let flow = self.flows.remove(i);
                self.emit_flow(flow, &mut out);
            }
            return self.emit_plain(frame, &mut out);
        }
        let payload = &frame[layout.payload..layout.end];
        if let Some(i) = found {
            if can_append(&self.flows[i], frame, &layout) {
                let flow = &mut self.flows[i];
                flow.buf.extend_from_slice(payload);
                flow.next_seq = flow.next_seq.wrapping_add(payload.len() as u32);
                flow.segments += 1;
                let psh = frame[layout.l4 + 13] & tcp_flag::PSH != 0;
                if psh {
                    let at = VIRTIO_NET_HDR_LEN + flow.layout.l4 + 13;
                    flow.buf[at] |= tcp_flag::PSH;
                }
                flow.closed = psh || payload.len() < flow.seg_size;
                return;
            }
            let flow = self.flows.remove(i);
            self.emit_flow(flow, &mut out);
        } else if self.flows.len() >= self.max_flows {
            let oldest = self.flows.remove(0);
            self.emit_flow(oldest, &mut out);
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.resize(VIRTIO_NET_HDR_LEN, 0);
        buf.extend_from_slice(&frame[..layout.end]);
        let seq = be32(frame, layout.l4 + 4);
        self.flows.push(Flow {
            buf,
            layout,
            next_seq: seq.wrapping_add(payload.len() as u32),
            seg_size: payload.len(),
            segments: 1,
            closed: frame[layout.l4 + 13] & tcp_flag::PSH != 0,
        });
    }

    /// Hands out every super-frame under construction, oldest flow first.
    pub fn flush<F: FnMut(&[u8])>(&mut self, mut out: F) {
        let flows = std::mem::take(&mut self.flows);
        for flow in flows {
            self.emit_flow(flow, &mut out);
        }
    }

    fn emit_plain<F: FnMut(&[u8])>(&mut self, frame: &[u8], out: &mut F) {
        self.stats.plain_out += 1;
        self.plain.clear();
        self.plain
            .extend_from_slice(&VirtioNetHdrRepr::PLAIN.to_bytes());
        self.plain.extend_from_slice(frame);
        out(&self.plain);
    }

    fn emit_flow<F: FnMut(&[u8])>(&mut self, mut flow: Flow, out: &mut F) {
        let layout = flow.layout;
        if flow.segments == 1 {
            // The lone segment is the frame that came in, checksums intact.
            self.stats.plain_out += 1;
            let hdr = VirtioNetHdrRepr::PLAIN;
            hdr.emit(&mut VirtioNetHdr::new_unchecked(&mut flow.buf[..]));
        } else {
            self.stats.super_frames_out += 1;
            self.stats.segments_merged += flow.segments as u64;
            let frame = &mut flow.buf[VIRTIO_NET_HDR_LEN..];
            let end = frame.len();
            let tcp_len = end - layout.l4;
            let layout = TcpLayout { end, ..layout };
            layout.set_ip_lengths(frame, tcp_len, None);
            let partial = layout.pseudo_header(frame, tcp_len).fold();
            let at = layout.l4 + TCP_CHECKSUM;
            frame[at..at + 2].copy_from_slice(&partial.to_be_bytes());
            let hdr = VirtioNetHdrRepr {
                flags: HdrFlags::NEEDS_CSUM,
                gso_type: match layout.family {
                    Family::V4 => GsoType::TcpV4,
                    Family::V6 => GsoType::TcpV6,
                },
                ecn: false,
                hdr_len: layout.payload as u16,
                gso_size: flow.seg_size as u16,
                csum_start: layout.l4 as u16,
                csum_offset: TCP_CHECKSUM as u16,
            };
            hdr.emit(&mut VirtioNetHdr::new_unchecked(&mut flow.buf[..]));
        }
        out(&flow.buf);
        flow.buf.clear();
        self.spare.push(flow.buf);
    }
}

/// Whether `frame` is a TCP segment the coalescer may merge: data, only ACK
/// (and PSH), no IPv4 options, valid checksums.
fn mergeable_segment(frame: &[u8], layout: &TcpLayout) -> bool {
    let flags = frame[layout.l4 + 13];
    if flags & !tcp_flag::PSH != tcp_flag::ACK || layout.payload == layout.end {
        return false;
    }
    if layout.family == Family::V4 {
        if layout.l4 - layout.l3 != IPV4_MIN_HEADER {
            return false;
        }
        let mut sum = Checksum::default();
        sum.add(&frame[layout.l3..layout.l4]);
        if sum.fold() != 0xffff {
            return false;
        }
    }
    let tcp_len = layout.end - layout.l4;
    let mut sum = layout.pseudo_header(frame, tcp_len);
    sum.add(&frame[layout.l4..layout.end]);
    sum.fold() == 0xffff
}

/// Byte ranges of the IP header that identify a flow: addresses.
fn ip_addresses(layout: &TcpLayout) -> core::ops::Range<usize> {
    match layout.family {
        Family::V4 => layout.l3 + 12..layout.l3 + 20,
        Family::V6 => layout.l3 + 8..layout.l3 + 40,
    }
}

/// Same Ethernet header, IP addresses and TCP ports.
fn same_flow(flow: &Flow, frame: &[u8], layout: &TcpLayout) -> bool {
    let held = flow.frame();
    let l = &flow.layout;
    l.family == layout.family
        && l.l3 == layout.l3
        && held[..l.l3] == frame[..layout.l3]
        && held[ip_addresses(l)] == frame[ip_addresses(layout)]
        && held[l.l4..l.l4 + 4] == frame[layout.l4..layout.l4 + 4]
}

/// Whether `frame`, a mergeable segment of `flow`'s flow, can be appended.
fn can_append(flow: &Flow, frame: &[u8], layout: &TcpLayout) -> bool {
    let held = flow.frame();
    let l = &flow.layout;
    let payload = layout.end - layout.payload;
    let grown = match l.family {
        Family::V4 => held.len() - l.l3 + payload,
        Family::V6 => held.len() - l.l4 + payload,
    };
    if flow.closed
        || payload > flow.seg_size
        || grown > MAX_IP_PACKET
        || l.payload - l.l4 != layout.payload - layout.l4
        || be32(frame, layout.l4 + 4) != flow.next_seq
    {
        return false;
    }
    // IP fields other than lengths, identification and checksum.
    let ip_same = match l.family {
        Family::V4 => {
            held[l.l3..l.l3 + 2] == frame[layout.l3..layout.l3 + 2]
                && held[l.l3 + 6..l.l3 + 10] == frame[layout.l3 + 6..layout.l3 + 10]
        }
        Family::V6 => {
            held[l.l3..l.l3 + 4] == frame[layout.l3..layout.l3 + 4]
                && held[l.l3 + 6..l.l3 + 8] == frame[layout.l3 + 6..layout.l3 + 8]
        }
    };
    // TCP: acknowledgment, data offset, window, urgent pointer, options.
    let t = l.l4;
    let u = layout.l4;
    ip_same
        && held[t + 8..t + 13] == frame[u + 8..u + 13]
        && held[t + 14..t + 16] == frame[u + 14..u + 16]
        && held[t + 18..l.payload] == frame[u + 18..layout.payload]
}

#[cfg(test)]
mod tests {
    use super::*;
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

    /// RFC 1071 the slow way, 16 bits at a time: the independent check.
    fn rfc1071(parts: &[&[u8]]) -> u16 {
        let bytes: Vec<u8> = parts.concat();
        let mut sum: u32 = 0;
        for pair in bytes.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    const MAC_A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xa];
    const MAC_B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xb];
    /// TCP options: NOP, NOP, timestamps.
    const TS_OPTIONS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0x12, 0x34, 0, 0, 0x56, 0x78];

    #[derive(Clone, Copy)]
    struct Spec {
        v6: bool,
        vlan: bool,
        src_port: u16,
        seq: u32,
        flags: u8,
        ipv4_id: u16,
        /// Four bytes of IPv4 options (NOP, NOP, NOP, end of list).
        ip_options: bool,
    }

    const V4: Spec = Spec {
        v6: false,
        vlan: false,
        src_port: 40000,
        seq: 0xffff_f000,
        flags: tcp_flag::ACK,
        ipv4_id: 0xfffe,
        ip_options: false,
    };

    /// Ethernet (+ VLAN) + IP + TCP with timestamps + `payload`, checksums
    /// complete unless `partial`, in which case the TCP checksum field holds
    /// the pseudo-header sum as a TSO or CHECKSUM_PARTIAL frame does.
    fn tcp_frame(spec: Spec, payload: &[u8], partial: bool) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&MAC_B);
        f.extend_from_slice(&MAC_A);
        if spec.vlan {
            f.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
        }
        let tcp_len = 32 + payload.len();
        let pseudo: Vec<u8> = if spec.v6 {
            f.extend_from_slice(&[0x86, 0xdd]);
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(tcp_len as u16).to_be_bytes());
            f.extend_from_slice(&[6, 64]);
            let src = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
            let dst = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
            f.extend_from_slice(&src);
            f.extend_from_slice(&dst);
            [
                &src[..],
                &dst[..],
                &[0, 0],
                &(tcp_len as u16).to_be_bytes(),
                &[0, 6],
            ]
            .concat()
        } else {
            f.extend_from_slice(&[0x08, 0x00]);
            let l3 = f.len();
            let options: &[u8] = if spec.ip_options { &[1, 1, 1, 0] } else { &[] };
            f.extend_from_slice(&[0x45 + options.len() as u8 / 4, 0]);
            f.extend_from_slice(&((20 + options.len() + tcp_len) as u16).to_be_bytes());
            f.extend_from_slice(&spec.ipv4_id.to_be_bytes());
            f.extend_from_slice(&[0x40, 0, 64, 6, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2]);
            f.extend_from_slice(options);
            let c = rfc1071(&[&f[l3..]]);
            f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
            [
                &f[l3 + 12..l3 + 20],
                &[0, 6],
                &(tcp_len as u16).to_be_bytes(),
            ]
            .concat()
        };
        let l4 = f.len();
        f.extend_from_slice(&spec.src_port.to_be_bytes());
        f.extend_from_slice(&5201u16.to_be_bytes());
        f.extend_from_slice(&spec.seq.to_be_bytes());
        f.extend_from_slice(&0x0102_0304u32.to_be_bytes());
        f.extend_from_slice(&[0x80, spec.flags, 0x01, 0xf5, 0, 0, 0, 0]);
        f.extend_from_slice(&TS_OPTIONS);
        f.extend_from_slice(payload);
        let c = if partial {
            !rfc1071(&[&pseudo])
        } else {
            rfc1071(&[&pseudo, &f[l4..]])
        };
        f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        f
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn gso_hdr(spec: Spec, gso_size: u16) -> VirtioNetHdrRepr {
        let l3 = 14 + if spec.vlan { 4 } else { 0 };
        let l4 = l3
            + match (spec.v6, spec.ip_options) {
                (true, _) => 40,
                (false, options) => 20 + 4 * usize::from(options),
            };
        VirtioNetHdrRepr {
            flags: HdrFlags::NEEDS_CSUM,
            gso_type: if spec.v6 {
                GsoType::TcpV6
            } else {
                GsoType::TcpV4
            },
            ecn: false,
            hdr_len: (l4 + 32) as u16,
            gso_size,
            csum_start: l4 as u16,
            csum_offset: 16,
        }
    }

    fn split(hdr: &VirtioNetHdrRepr, frame: &[u8]) -> Result<Vec<Vec<u8>>, OffloadError> {
        let mut frame = frame.to_vec();
        let mut scratch = vec![0u8; MAX_IP_PACKET + 64];
        let mut out = Vec::new();
        let n = segment(hdr, &mut frame, &mut scratch, |s| out.push(s.to_vec()))?;
        assert_eq!(n, out.len());
        Ok(out)
    }

    /// Checks a segment on its own, with the slow checksum: returns its
    /// layout.
    fn assert_valid(frame: &[u8]) -> TcpLayout {
        let layout = TcpLayout::parse(frame).expect("segment parses");
        assert_eq!(layout.end, frame.len(), "no trailing bytes");
        let tcp_len = (layout.end - layout.l4) as u16;
        let pseudo = match layout.family {
            Family::V4 => {
                assert_eq!(
                    rfc1071(&[&frame[layout.l3..layout.l4]]),
                    0,
                    "IPv4 header checksum"
                );
                [
                    &frame[layout.l3 + 12..layout.l3 + 20],
                    &[0, 6],
                    &tcp_len.to_be_bytes(),
                ]
                .concat()
            }
            Family::V6 => [
                &frame[layout.l3 + 8..layout.l3 + 40],
                &[0, 0],
                &tcp_len.to_be_bytes(),
                &[0, 6],
            ]
            .concat(),
        };
        assert_eq!(rfc1071(&[&pseudo, &frame[layout.l4..]]), 0, "TCP checksum");
        layout
    }

    #[test]
    fn splits_an_ipv4_super_frame_into_valid_segments() {
        let data = payload(3500);
        let spec = Spec {
            flags: tcp_flag::ACK | tcp_flag::PSH | tcp_flag::FIN | tcp_flag::CWR,
            ..V4
        };
        let sup = tcp_frame(spec, &data, true);
        let segs = split(&gso_hdr(spec, 1448), &sup).unwrap();
        assert_eq!(segs.len(), 3);
        let mut joined = Vec::new();
        for (i, seg) in segs.iter().enumerate() {
            let l = assert_valid(seg);
            let len = [1448, 1448, 604][i];
            assert_eq!(l.end - l.payload, len);
            assert_eq!(be16(seg, l.l3 + 2) as usize, 20 + 32 + len);
            assert_eq!(be16(seg, l.l3 + 4), 0xfffe_u16.wrapping_add(i as u16));
            assert_eq!(
                be32(seg, l.l4 + 4),
                0xffff_f000_u32.wrapping_add(1448 * i as u32),
                "sequence numbers wrap"
            );
            let flags = [
                tcp_flag::ACK | tcp_flag::CWR,
                tcp_flag::ACK,
                tcp_flag::ACK | tcp_flag::PSH | tcp_flag::FIN,
            ][i];
            assert_eq!(seg[l.l4 + 13], flags, "flags of segment {i}");
            assert_eq!(seg[l.l4 + 20..l.payload], TS_OPTIONS);
            joined.extend_from_slice(&seg[l.payload..]);
        }
        assert_eq!(joined, data);
    }

    #[test]
    fn splits_a_tagged_ipv6_super_frame() {
        let data = payload(4000);
        let spec = Spec {
            v6: true,
            vlan: true,
            ..V4
        };
        let sup = tcp_frame(spec, &data, true);
        let segs = split(&gso_hdr(spec, 1000), &sup).unwrap();
        assert_eq!(segs.len(), 4);
        for seg in &segs {
            let l = assert_valid(seg);
            assert_eq!(l.l3, 18, "VLAN tag kept");
            assert_eq!(be16(seg, l.l3 + 4), 32 + 1000);
        }
    }

    #[test]
    fn segment_read_takes_the_header_from_the_front() {
        let sup = tcp_frame(V4, &payload(3000), true);
        let mut read = gso_hdr(V4, 1448).to_bytes().to_vec();
        read.extend_from_slice(&sup);
        let mut scratch = vec![0u8; 2000];
        let mut lens = Vec::new();
        let n = segment_read(&mut read, &mut scratch, |s| lens.push(assert_valid(s).end)).unwrap();
        assert_eq!((n, lens), (3, vec![66 + 1448, 66 + 1448, 66 + 104]));
        assert_eq!(
            segment_read(&mut read[..9], &mut scratch, |_| ()),
            Err(OffloadError::HeaderTruncated { len: 9 })
        );
    }

    #[test]
    fn ipv4_options_are_copied_into_every_segment_but_never_coalesced() {
        let spec = Spec {
            ip_options: true,
            ..V4
        };
        let segs = split(&gso_hdr(spec, 1000), &tcp_frame(spec, &payload(2500), true)).unwrap();
        assert_eq!(segs.len(), 3);
        for seg in &segs {
            let l = assert_valid(seg);
            assert_eq!(l.l4 - l.l3, 24);
            assert_eq!(seg[l.l3 + 20..l.l4], [1, 1, 1, 0]);
        }
        let (out, stats) = coalesce(&segs, 4);
        assert_eq!(stats.super_frames_out, 0);
        let plain: Vec<&[u8]> = out.iter().map(|o| &o[VIRTIO_NET_HDR_LEN..]).collect();
        assert_eq!(plain, segs.iter().map(|s| &s[..]).collect::<Vec<_>>());
    }

    #[test]
    fn completes_a_partial_checksum_in_place() {
        let spec = V4;
        let frame = tcp_frame(spec, &payload(100), true);
        let hdr = VirtioNetHdrRepr {
            gso_type: GsoType::None,
            gso_size: 0,
            ..gso_hdr(spec, 0)
        };
        let segs = split(&hdr, &frame).unwrap();
        assert_eq!(segs.len(), 1);
        assert_valid(&segs[0]);
        assert_eq!(segs[0], tcp_frame(spec, &payload(100), false));
    }

    #[test]
    fn a_udp_checksum_that_computes_to_zero_is_sent_as_all_ones() {
        let mut f = Vec::new();
        f.extend_from_slice(&MAC_B);
        f.extend_from_slice(&MAC_A);
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0x45, 0, 0, 32, 0, 1, 0x40, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&[192, 0, 2, 1, 192, 0, 2, 2]);
        // UDP 5000 -> 53, length 12, checksum field = pseudo-header sum.
        f.extend_from_slice(&[0x13, 0x88, 0, 53, 0, 12]);
        let pseudo = [&f[26..34], &[0, 17, 0, 12][..]].concat();
        f.extend_from_slice(&(!rfc1071(&[&pseudo])).to_be_bytes());
        f.extend_from_slice(&[0xab, 0xcd, 0, 0]);
        // Choose the last word so that the whole sum folds to 0xffff.
        let rest = !rfc1071(&[&f[34..]]);
        let last = 0xffff - rest;
        let at = f.len() - 2;
        f[at..].copy_from_slice(&last.to_be_bytes());
        let hdr = VirtioNetHdrRepr {
            flags: HdrFlags::NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 6,
            ..VirtioNetHdrRepr::PLAIN
        };
        let out = split(&hdr, &f).unwrap();
        assert_eq!(out[0][40..42], [0xff, 0xff]);
        // All ones is also a correct checksum: the sum with it folds to zero.
        assert_eq!(rfc1071(&[&pseudo, &out[0][34..]]), 0);
    }

    #[test]
    fn malformed_super_frames_are_errors_not_panics() {
        let spec = V4;
        let sup = tcp_frame(spec, &payload(3000), true);
        let hdr = gso_hdr(spec, 1448);
        for cut in 0..sup.len() {
            assert!(split(&hdr, &sup[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(
            split(&gso_hdr(spec, 0), &sup),
            Err(malformed("GSO super-frame with a segment size of 0"))
        );
        let v6 = gso_hdr(Spec { v6: true, ..spec }, 1448);
        assert_eq!(
            split(
                &VirtioNetHdrRepr {
                    csum_start: 34,
                    ..v6
                },
                &sup
            ),
            Err(malformed("GSO type and IP version disagree"))
        );
        let udp = VirtioNetHdrRepr {
            gso_type: GsoType::UdpL4,
            ..hdr
        };
        assert_eq!(
            split(&udp, &sup),
            Err(OffloadError::UnsupportedGso {
                gso_type: GsoType::UdpL4
            })
        );
        let plain = VirtioNetHdrRepr {
            gso_type: GsoType::None,
            csum_start: 3060,
            ..hdr
        };
        assert!(matches!(
            split(&plain, &sup),
            Err(OffloadError::ChecksumOutOfFrame { .. })
        ));
        let mut tiny = vec![0u8; 100];
        let mut frame = sup.clone();
        assert_eq!(
            segment(&hdr, &mut frame, &mut tiny, |_| ()),
            Err(OffloadError::BufferTooSmall {
                need: 66 + 1448,
                len: 100
            })
        );
    }

    fn coalesce(frames: &[Vec<u8>], max_flows: usize) -> (Vec<Vec<u8>>, CoalescerStats) {
        let mut c = Coalescer::new(max_flows);
        let mut out = Vec::new();
        for f in frames {
            c.push(f, |o| out.push(o.to_vec()));
        }
        c.flush(|o| out.push(o.to_vec()));
        assert!(c.is_empty());
        (out, c.stats())
    }

    fn hdr_of(out: &[u8]) -> VirtioNetHdrRepr {
        VirtioNetHdrRepr::parse(&VirtioNetHdr::new_checked(out).unwrap()).unwrap()
    }

    #[test]
    fn segments_coalesce_into_the_super_frame_they_came_from() {
        for spec in [
            V4,
            Spec {
                v6: true,
                vlan: true,
                ..V4
            },
        ] {
            let data = payload(10_000);
            let spec = Spec {
                flags: tcp_flag::ACK | tcp_flag::PSH,
                ..spec
            };
            let segs = split(&gso_hdr(spec, 1448), &tcp_frame(spec, &data, true)).unwrap();
            let (out, stats) = coalesce(&segs, 4);
            assert_eq!(out.len(), 1);
            assert_eq!(stats.super_frames_out, 1);
            assert_eq!(stats.segments_merged, 7);
            let hdr = hdr_of(&out[0]);
            assert_eq!(hdr, gso_hdr(spec, 1448));
            let sup = &out[0][VIRTIO_NET_HDR_LEN..];
            // What the kernel would do with it: split it again.
            let again = split(&hdr, sup).unwrap();
            assert_eq!(again, segs);
            // The partial checksum is the pseudo-header sum, as the kernel
            // expects it.
            let l = TcpLayout::parse(sup).unwrap();
            let mut expect = tcp_frame(spec, &data, true);
            expect[l.l3..l.l3 + 8].copy_from_slice(&sup[l.l3..l.l3 + 8]);
            if !spec.v6 {
                expect[l.l3 + 10..l.l3 + 12].copy_from_slice(&sup[l.l3 + 10..l.l3 + 12]);
                assert_eq!(rfc1071(&[&sup[l.l3..l.l4]]), 0);
            }
            assert_eq!(sup, &expect[..]);
        }
    }

    #[test]
    fn coalescer_keeps_flows_apart_and_in_order() {
        let a = |seq, len: usize, flags| tcp_frame(Spec { seq, flags, ..V4 }, &payload(len), false);
        let b = |seq, len: usize| {
            tcp_frame(
                Spec {
                    seq,
                    src_port: 40001,
                    ..V4
                },
                &payload(len),
                false,
            )
        };
        let ack = tcp_frame(V4, &[], false);
        let arp = {
            let mut f = vec![0xff; 6];
            f.extend_from_slice(&MAC_A);
            f.extend_from_slice(&[0x08, 0x06]);
            f.extend_from_slice(&[0; 28]);
            f
        };
        let mut corrupt = a(3000, 1000, tcp_flag::ACK);
        *corrupt.last_mut().unwrap() ^= 1;
        let frames = vec![
            a(1000, 1000, tcp_flag::ACK),
            b(50, 500),
            a(2000, 1000, tcp_flag::ACK),
            arp.clone(),
            b(550, 500),
            corrupt.clone(),
            a(4000, 1000, tcp_flag::ACK),
            a(5000, 1000, tcp_flag::ACK | tcp_flag::PSH),
            a(6000, 1000, tcp_flag::ACK),
            b(2000, 500),
            ack.clone(),
            a(7000, 1000, tcp_flag::ACK),
        ];
        let (out, stats) = coalesce(&frames, 2);
        let summary: Vec<(u16, u32, usize, u16)> = out
            .iter()
            .map(|o| {
                let frame = &o[VIRTIO_NET_HDR_LEN..];
                match TcpLayout::parse(frame) {
                    Ok(l) => (
                        be16(frame, l.l4),
                        be32(frame, l.l4 + 4),
                        l.end - l.payload,
                        hdr_of(o).gso_size,
                    ),
                    Err(_) => (0, 0, frame.len(), 0),
                }
            })
            .collect();
        assert_eq!(
            summary,
            [
                // ARP passes at once.
                (0, 0, 42, 0),
                // The corrupt segment flushes flow a, then goes alone.
                (40000, 1000, 2000, 1000),
                (40000, 3000, 1000, 0),
                // A sequence gap starts a new super-frame; PSH ends it.
                (40000, 4000, 2000, 1000),
                // Flow b: a gap (1050 != 2000) ends its super-frame.
                (40001, 50, 1000, 500),
                // The pure ACK is flow a's: a's pending segment goes first.
                (40000, 6000, 1000, 0),
                (40000, 0xffff_f000, 0, 0),
                // The flush: oldest flow first.
                (40001, 2000, 500, 0),
                (40000, 7000, 1000, 0),
            ]
        );
        assert_eq!(out[2][VIRTIO_NET_HDR_LEN..], corrupt[..]);
        assert_eq!(stats.frames_in, 12);
        assert_eq!(stats.super_frames_out, 3);
        assert_eq!(stats.segments_merged, 6);
    }

    fn any_vnet_hdr_bytes() -> impl Strategy<Value = VirtioNetHdrRepr> {
        (any_repr(), 0u16..200, 0u16..40, 0usize..6).prop_map(|(r, start, off, g)| {
            VirtioNetHdrRepr {
                csum_start: start,
                csum_offset: off,
                gso_type: [
                    GsoType::None,
                    GsoType::TcpV4,
                    GsoType::TcpV6,
                    GsoType::Udp,
                    GsoType::UdpL4,
                    GsoType::Unknown(9),
                ][g],
                ..r
            }
        })
    }

    proptest! {
        #[test]
        fn segment_and_coalesce_never_panic_on_arbitrary_bytes(
            hdr in any_vnet_hdr_bytes(),
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut frame = bytes.clone();
            let mut scratch = vec![0u8; 512];
            let _ = segment(&hdr, &mut frame, &mut scratch, |s| assert!(s.len() <= 512.max(bytes.len())));
            let mut c = Coalescer::new(2);
            c.push(&bytes, |_| ());
            c.push(&frame, |_| ());
            c.flush(|_| ());
        }

        #[test]
        fn mutated_super_frames_never_panic(
            len in 0usize..5000,
            gso in 1u16..3000,
            v6 in any::<bool>(),
            flips in proptest::collection::vec((0usize..120, any::<u8>()), 0..4),
        ) {
            let spec = Spec { v6, ..V4 };
            let mut sup = tcp_frame(spec, &payload(len), true);
            for (at, x) in flips {
                if let Some(b) = sup.get_mut(at) {
                    *b ^= x;
                }
            }
            if let Ok(segs) = split(&gso_hdr(spec, gso), &sup) {
                let (out, _) = coalesce(&segs, 1);
                for o in out {
                    let _ = split(&hdr_of(&o), &o[VIRTIO_NET_HDR_LEN..]);
                }
            }
        }

        #[test]
        fn split_then_coalesce_round_trips_the_payload(
            len in 1usize..20_000,
            gso in 1u16..2000,
            v6 in any::<bool>(),
            vlan in any::<bool>(),
            seq in any::<u32>(),
        ) {
            let spec = Spec { v6, vlan, seq, flags: tcp_flag::ACK, ..V4 };
            let data = payload(len);
            let segs = split(&gso_hdr(spec, gso), &tcp_frame(spec, &data, true)).unwrap();
            prop_assert_eq!(segs.len(), len.div_ceil(usize::from(gso)));
            for s in &segs {
                assert_valid(s);
            }
            let (out, _) = coalesce(&segs, 1);
            let mut joined = Vec::new();
            for o in &out {
                for s in split(&hdr_of(o), &o[VIRTIO_NET_HDR_LEN..]).unwrap() {
                    let l = assert_valid(&s);
                    joined.extend_from_slice(&s[l.payload..]);
                }
            }
            prop_assert_eq!(joined, data);
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
