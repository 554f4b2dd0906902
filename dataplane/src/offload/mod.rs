//! The virtio-net header a TAP device puts in front of each frame when it is
//! opened with `IFF_VNET_HDR`, and the software halves of the offloads it
//! negotiates: [`segment()`] splits the TCP super-frames (TSO) and completes the
//! partial checksums the kernel hands us, and [`Coalescer`] merges
//! consecutive TCP segments of one flow back into super-frames (like Linux
//! GRO) so that one `write` to the TAP carries up to 64 KiB.
//!
//! * `virtio.rs`: [`VirtioNetHdr`] and [`VirtioNetHdrRepr`], the 10-byte
//!   header in front of each frame;
//! * `segment.rs`: [`segment()`], [`segment_read`] and [`complete_checksum`],
//!   the transmit direction;
//! * `coalesce.rs`: [`Coalescer`], the receive direction.
//!
//! Both directions read the frame's headers once into a `TcpLayout`, through
//! the [`wire`](crate::wire) views.

mod coalesce;
mod segment;
#[cfg(test)]
mod test_frames;
mod virtio;

pub use self::coalesce::{Coalescer, CoalescerStats};
pub use self::segment::{complete_checksum, segment, segment_read};
pub use self::virtio::{GsoType, HdrFlags, VirtioNetHdr, VirtioNetHdrRepr, VIRTIO_NET_HDR_LEN};

use crate::wire::checksum::{pseudo_header_v4, pseudo_header_v6};
use crate::wire::{ethertype, ip_protocol, Checksum, EthernetFrame, EthernetRepr, FrameError};
use crate::wire::{IpError, Ipv4Packet, Ipv6Packet, TcpError, TcpPacket, IPV6_HEADER_LEN};

/// The largest IPv4 total length or IPv6 payload length: the ceiling of a
/// super-frame without BIG TCP.
pub const MAX_IP_PACKET: usize = 65_535;

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
    #[error("offloaded frame dropped: {0}")]
    Ip(#[from] IpError),
    #[error("offloaded frame dropped: {0}")]
    Tcp(#[from] TcpError),
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

fn malformed(reason: &'static str) -> OffloadError {
    OffloadError::Malformed { reason }
}

impl TcpLayout {
    /// Reads the headers of a TCP frame strictly: IPv4 without fragments,
    /// IPv6 without extension headers, lengths that agree with the frame.
    fn parse(frame: &[u8]) -> Result<TcpLayout, OffloadError> {
        let eth = EthernetRepr::parse(&EthernetFrame::new_checked(frame)?)?;
        let l3 = eth.buffer_len();
        let ip = &frame[l3..];
        let (family, l4, end) = match eth.ethertype {
            ethertype::IPV4 => {
                let ip = Ipv4Packet::new_checked(ip)?;
                if ip.protocol() != ip_protocol::TCP {
                    return Err(malformed("not TCP"));
                }
                if ip.more_frags() || ip.frag_offset() != 0 {
                    return Err(malformed("IPv4 fragment"));
                }
                let end = l3 + usize::from(ip.total_len());
                (Family::V4, l3 + ip.header_len(), end)
            }
            ethertype::IPV6 => {
                let ip = Ipv6Packet::new_checked(ip)?;
                if ip.next_header() != ip_protocol::TCP {
                    return Err(malformed("not TCP right after the IPv6 header"));
                }
                let l4 = l3 + IPV6_HEADER_LEN;
                (Family::V6, l4, l4 + usize::from(ip.payload_len()))
            }
            _ => return Err(malformed("neither IPv4 nor IPv6")),
        };
        let tcp = TcpPacket::new_checked(&frame[l4..end])?;
        Ok(TcpLayout {
            family,
            l3,
            l4,
            payload: l4 + tcp.header_len(),
            end,
        })
    }

    /// The TCP segment of `frame`, whose layout this is.
    fn tcp<'a>(&self, frame: &'a [u8]) -> TcpPacket<&'a [u8]> {
        TcpPacket::new_unchecked(&frame[self.l4..self.end])
    }

    fn tcp_mut<'a>(&self, frame: &'a mut [u8]) -> TcpPacket<&'a mut [u8]> {
        TcpPacket::new_unchecked(&mut frame[self.l4..self.end])
    }

    /// Rewrites the IP length fields (and the IPv4 header checksum) for a
    /// packet whose TCP segment (header and payload) is `tcp_len` bytes.
    fn set_ip_lengths(&self, frame: &mut [u8], tcp_len: usize, ipv4_id: Option<u16>) {
        let header = &mut frame[self.l3..self.l4];
        match self.family {
            Family::V4 => {
                let mut ip = Ipv4Packet::new_unchecked(header);
                ip.set_total_len((ip.header_len() + tcp_len) as u16);
                if let Some(id) = ipv4_id {
                    ip.set_ident(id);
                }
                ip.fill_checksum();
            }
            Family::V6 => Ipv6Packet::new_unchecked(header).set_payload_len(tcp_len as u16),
        }
    }

    /// The pseudo-header sum for a TCP segment of `tcp_len` bytes.
    fn pseudo_header(&self, frame: &[u8], tcp_len: usize) -> Checksum {
        let header = &frame[self.l3..self.l4];
        match self.family {
            Family::V4 => {
                let ip = Ipv4Packet::new_unchecked(header);
                pseudo_header_v4(ip.src_addr(), ip.dst_addr(), ip_protocol::TCP, tcp_len)
            }
            Family::V6 => {
                let ip = Ipv6Packet::new_unchecked(header);
                pseudo_header_v6(ip.src_addr(), ip.dst_addr(), ip_protocol::TCP, tcp_len)
            }
        }
    }

    /// Computes and stores the full TCP checksum of the packet.
    fn fill_tcp_checksum(&self, frame: &mut [u8]) {
        let pseudo = self.pseudo_header(frame, self.end - self.l4);
        self.tcp_mut(frame).fill_checksum(pseudo);
    }
}
