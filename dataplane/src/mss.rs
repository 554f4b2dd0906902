//! TCP MSS clamping for frames that enter or leave a tunnel.
//!
//! A tunnel's encapsulation eats into the path MTU, and hosts on a campus
//! segment think they have the full 1500 bytes. Rather than rely on ICMP
//! "packet too big" crossing firewalls, the bridge lowers the MSS option of
//! TCP SYN and SYN-ACK segments, as `iptables -j TCPMSS` does, so neither end
//! sends segments that would not fit.
//!
//! Only the MSS value and the TCP checksum change. The checksum is updated
//! incrementally (RFC 1624, equation 3) so a corrupt segment stays corrupt
//! and the receiver still drops it. Anything this module cannot read to the
//! end of the TCP options (fragments, extension headers other than
//! hop-by-hop, routing and destination options, truncated or lying lengths)
//! is left as it is.

use crate::wire::tcp::{option, TCP_CHECKSUM_AT, TCP_HEADER_LEN};
use crate::wire::{checksum, ethertype, ip_protocol, Ipv4Packet, Ipv6Packet, TcpPacket};
use crate::wire::{IPV4_HEADER_LEN, IPV6_HEADER_LEN};

/// IPv4 plus TCP headers without options.
const IPV4_OVERHEAD: u16 = (IPV4_HEADER_LEN + TCP_HEADER_LEN) as u16;
/// IPv6 plus TCP headers without options.
const IPV6_OVERHEAD: u16 = (IPV6_HEADER_LEN + TCP_HEADER_LEN) as u16;
/// Linux's TCP_MIN_MSS: a clamp below it would only break connections.
pub const MIN_MSS: u16 = 88;

/// The MSS ceilings for segments crossing one tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MssClamp {
    pub ipv4: u16,
    pub ipv6: u16,
}

impl MssClamp {
    /// The clamp for a tunnel that carries IP packets of up to `mtu` bytes
    /// (the Ethernet payload size left after encapsulation).
    pub const fn for_ip_mtu(mtu: u16) -> MssClamp {
        MssClamp {
            ipv4: mtu.saturating_sub(IPV4_OVERHEAD),
            ipv6: mtu.saturating_sub(IPV6_OVERHEAD),
        }
    }

    /// The tighter of two clamps, for a segment that crosses two tunnels.
    pub fn min(self, other: MssClamp) -> MssClamp {
        MssClamp {
            ipv4: self.ipv4.min(other.ipv4),
            ipv6: self.ipv6.min(other.ipv6),
        }
    }

    fn for_family(self, family: IpFamily) -> u16 {
        match family {
            IpFamily::V4 => self.ipv4,
            IpFamily::V6 => self.ipv6,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IpFamily {
    V4,
    V6,
}

/// Where the MSS option of a SYN sits in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MssOption {
    family: IpFamily,
    /// Offset of the two-byte MSS value in the frame.
    value_at: usize,
    /// Offset of the TCP checksum in the frame.
    checksum_at: usize,
    /// Whether the value starts at an odd offset from the TCP header, which
    /// puts it across two of the checksum's 16-bit words.
    odd: bool,
    pub(crate) value: u16,
}

impl MssOption {
    /// Finds the MSS option of a TCP SYN in `frame`, whose Ethernet header
    /// and tags take `l3_at` bytes and end with `ethertype`.
    pub(crate) fn find(frame: &[u8], ethertype: u16, l3_at: usize) -> Option<MssOption> {
        let l3 = frame.get(l3_at..)?;
        let (family, tcp_at, tcp_len) = match ethertype {
            ethertype::IPV4 => {
                let (at, len) = ipv4_tcp(l3)?;
                (IpFamily::V4, at, len)
            }
            ethertype::IPV6 => {
                let (at, len) = ipv6_tcp(l3)?;
                (IpFamily::V6, at, len)
            }
            _ => return None,
        };
        let tcp = l3.get(tcp_at..tcp_at + tcp_len)?;
        let option_at = syn_mss_option(tcp)?;
        let value_at = option_at + 2;
        Some(MssOption {
            family,
            value_at: l3_at + tcp_at + value_at,
            checksum_at: l3_at + tcp_at + TCP_CHECKSUM_AT,
            odd: value_at % 2 == 1,
            value: be16(tcp, value_at)?,
        })
    }

    /// The MSS this frame should carry after `clamp`, if lower than now.
    pub(crate) fn clamped(&self, clamp: MssClamp) -> Option<u16> {
        let ceiling = clamp.for_family(self.family);
        (ceiling < self.value).then_some(ceiling)
    }

    /// Writes `mss` into `frame` (the frame [`find`](Self::find) read) and
    /// updates the TCP checksum.
    pub(crate) fn rewrite(&self, frame: &mut [u8], mss: u16) {
        let old_checksum =
            u16::from_be_bytes([frame[self.checksum_at], frame[self.checksum_at + 1]]);
        // One's complement sums are byte-order independent: a field at an odd
        // offset adds its bytes swapped.
        let (old, new) = if self.odd {
            (self.value.swap_bytes(), mss.swap_bytes())
        } else {
            (self.value, mss)
        };
        let checksum = checksum::update(old_checksum, old, new);
        frame[self.value_at..self.value_at + 2].copy_from_slice(&mss.to_be_bytes());
        frame[self.checksum_at..self.checksum_at + 2].copy_from_slice(&checksum.to_be_bytes());
    }
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

/// The TCP segment's offset and length in an IPv4 packet: the first
/// fragment or a whole packet.
fn ipv4_tcp(packet: &[u8]) -> Option<(usize, usize)> {
    // Ethernet padding may follow the packet: the view trusts the total
    // length, but only as far as the frame goes.
    let ip = Ipv4Packet::new_checked(packet).ok()?;
    if ip.frag_offset() != 0 || ip.protocol() != ip_protocol::TCP {
        return None;
    }
    Some((ip.header_len(), ip.payload().len()))
}

/// The TCP segment's offset and length in an IPv6 packet, past hop-by-hop,
/// routing and destination options headers.
fn ipv6_tcp(packet: &[u8]) -> Option<(usize, usize)> {
    const MAX_EXTENSION_HEADERS: usize = 8;

    // A payload length of 0 means a jumbogram: not on a tunnel.
    let ip = Ipv6Packet::new_checked(packet).ok()?;
    let end = IPV6_HEADER_LEN + ip.payload().len();
    let mut next = ip.next_header();
    let mut at = IPV6_HEADER_LEN;
    for _ in 0..MAX_EXTENSION_HEADERS {
        match next {
            ip_protocol::TCP => return Some((at, end - at)),
            ip_protocol::IPV6_HOP_BY_HOP
            | ip_protocol::IPV6_ROUTING
            | ip_protocol::IPV6_DESTINATION_OPTIONS => {
                if at + 2 > end {
                    return None;
                }
                next = packet[at];
                at += (usize::from(packet[at + 1]) + 1) * 8;
                if at > end {
                    return None;
                }
            }
            _ => return None,
        }
    }
    None
}

/// The offset of the MSS option (its kind byte) in a TCP SYN segment.
fn syn_mss_option(segment: &[u8]) -> Option<usize> {
    let tcp = TcpPacket::new_checked(segment).ok()?;
    if !tcp.syn() {
        return None;
    }
    let options = tcp.options();
    let mut at = 0;
    while at < options.len() {
        match options[at] {
            option::END => return None,
            option::NOP => at += 1,
            kind => {
                let len = *options.get(at + 1)?;
                if len < 2 {
                    return None;
                }
                if kind == option::MSS {
                    return (len == option::MSS_LEN && at + 4 <= options.len())
                        .then_some(TCP_HEADER_LEN + at);
                }
                at += usize::from(len);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tcp::flags;

    #[test]
    fn clamp_for_ip_mtu() {
        assert_eq!(
            MssClamp::for_ip_mtu(1400),
            MssClamp {
                ipv4: 1360,
                ipv6: 1340
            }
        );
        assert_eq!(
            MssClamp::for_ip_mtu(1400).min(MssClamp {
                ipv4: 1200,
                ipv6: 1400
            }),
            MssClamp {
                ipv4: 1200,
                ipv6: 1340
            }
        );
    }

    #[test]
    fn options_walk_stops_on_lies() {
        let mut seg = [0u8; 28];
        seg[12] = 7 << 4; // 28-byte header
        seg[13] = flags::SYN;
        // NOP, NOP, MSS 1460, NOP, NOP, NOP, EOL
        seg[20..28].copy_from_slice(&[1, 1, 2, 4, 0x05, 0xb4, 1, 0]);
        assert_eq!(syn_mss_option(&seg), Some(22));
        seg[23] = 3; // MSS with a wrong length
        assert_eq!(syn_mss_option(&seg), None);
        seg[23] = 0; // zero-length option would loop forever
        assert_eq!(syn_mss_option(&seg), None);
        seg[20..28].copy_from_slice(&[1, 1, 1, 1, 1, 1, 2, 4]); // MSS runs past the header
        assert_eq!(syn_mss_option(&seg), None);
        seg[20..28].copy_from_slice(&[8, 10, 0, 0, 0, 0, 0, 0]); // timestamps past the end
        assert_eq!(syn_mss_option(&seg), None);
        seg[20..28].copy_from_slice(&[2, 4, 0x05, 0xb4, 0, 0, 0, 0]);
        seg[13] = 0x10; // ACK only
        assert_eq!(syn_mss_option(&seg), None);
        seg[13] = 0x12; // SYN-ACK
        assert_eq!(syn_mss_option(&seg), Some(20));
        seg[12] = 4 << 4; // header shorter than 20 bytes
        assert_eq!(syn_mss_option(&seg), None);
    }
}
