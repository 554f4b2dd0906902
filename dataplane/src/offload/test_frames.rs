//! Frames for the offload tests: TCP super-frames and segments built byte by
//! byte, checked with a slow RFC 1071 sum that shares no code with
//! `wire::checksum`.

use proptest::prelude::*;

use super::MAX_IP_PACKET;
use super::{segment, Coalescer, CoalescerStats, Family, OffloadError, TcpLayout};
use super::{GsoType, HdrFlags, VirtioNetHdr, VirtioNetHdrRepr};
use crate::wire::tcp::flags;

pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn any_repr() -> impl Strategy<Value = VirtioNetHdrRepr> {
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
pub(crate) fn rfc1071(parts: &[&[u8]]) -> u16 {
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

pub(crate) const MAC_A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xa];
pub(crate) const MAC_B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xb];
/// TCP options: NOP, NOP, timestamps.
pub(crate) const TS_OPTIONS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0x12, 0x34, 0, 0, 0x56, 0x78];

#[derive(Clone, Copy)]
pub(crate) struct Spec {
    pub(crate) v6: bool,
    pub(crate) vlan: bool,
    pub(crate) src_port: u16,
    pub(crate) seq: u32,
    pub(crate) flags: u8,
    pub(crate) ipv4_id: u16,
    /// Four bytes of IPv4 options (NOP, NOP, NOP, end of list).
    pub(crate) ip_options: bool,
}

pub(crate) const V4: Spec = Spec {
    v6: false,
    vlan: false,
    src_port: 40000,
    seq: 0xffff_f000,
    flags: flags::ACK,
    ipv4_id: 0xfffe,
    ip_options: false,
};

/// Ethernet (+ VLAN) + IP + TCP with timestamps + `payload`, checksums
/// complete unless `partial`, in which case the TCP checksum field holds
/// the pseudo-header sum as a TSO or CHECKSUM_PARTIAL frame does.
pub(crate) fn tcp_frame(spec: Spec, payload: &[u8], partial: bool) -> Vec<u8> {
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

pub(crate) fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

pub(crate) fn gso_hdr(spec: Spec, gso_size: u16) -> VirtioNetHdrRepr {
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

pub(crate) fn split(hdr: &VirtioNetHdrRepr, frame: &[u8]) -> Result<Vec<Vec<u8>>, OffloadError> {
    let mut frame = frame.to_vec();
    let mut scratch = vec![0u8; MAX_IP_PACKET + 64];
    let mut out = Vec::new();
    let n = segment(hdr, &mut frame, &mut scratch, |s| out.push(s.to_vec()))?;
    assert_eq!(n, out.len());
    Ok(out)
}

/// Checks a segment on its own, with the slow checksum: returns its
/// layout.
pub(crate) fn assert_valid(frame: &[u8]) -> TcpLayout {
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

pub(crate) fn coalesce(frames: &[Vec<u8>], max_flows: usize) -> (Vec<Vec<u8>>, CoalescerStats) {
    let mut c = Coalescer::new(max_flows);
    let mut out = Vec::new();
    for f in frames {
        c.push(f, |o| out.push(o.to_vec()));
    }
    c.flush(|o| out.push(o.to_vec()));
    assert!(c.is_empty());
    (out, c.stats())
}

pub(crate) fn hdr_of(out: &[u8]) -> VirtioNetHdrRepr {
    VirtioNetHdrRepr::parse(&VirtioNetHdr::new_checked(out).unwrap()).unwrap()
}

pub(crate) fn any_vnet_hdr_bytes() -> impl Strategy<Value = VirtioNetHdrRepr> {
    (any_repr(), 0u16..200, 0u16..40, 0usize..6).prop_map(|(r, start, off, g)| VirtioNetHdrRepr {
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
    })
}
