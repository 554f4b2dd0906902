//! The transmit direction of the offloads: completing the partial checksums
//! the kernel hands us and splitting TCP super-frames (TSO) into frames that
//! fit a tunnel.

use super::{malformed, Family, OffloadError, TcpLayout};
use super::{GsoType, HdrFlags, VirtioNetHdr, VirtioNetHdrRepr, VIRTIO_NET_HDR_LEN};
use crate::wire::tcp::flags;
use crate::wire::{checksum, Ipv4Packet};

/// Offset of the checksum in a UDP header.
const UDP_CHECKSUM: usize = 6;

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
    let mut value = checksum(&frame[start..]);
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
///   (which must hold the headers plus `gso_size` bytes; [`MAX_IP_PACKET`](super::MAX_IP_PACKET)
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
    let ipv4_id = Ipv4Packet::new_unchecked(&frame[layout.l3..layout.l4]).ident();
    let tcp = layout.tcp(frame);
    let (seq, tcp_flags) = (tcp.seq_number(), tcp.flags());
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
        let mut seg_flags = tcp_flags;
        if i + 1 < count {
            seg_flags &= !(flags::FIN | flags::PSH);
        }
        if i > 0 {
            seg_flags &= !flags::CWR;
        }
        let mut tcp = seg_layout.tcp_mut(seg);
        tcp.set_seq_number(seq.wrapping_add((i * mss) as u32));
        tcp.set_flags(seg_flags);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::test_frames::*;

    #[test]
    fn splits_an_ipv4_super_frame_into_valid_segments() {
        let data = payload(3500);
        let spec = Spec {
            flags: flags::ACK | flags::PSH | flags::FIN | flags::CWR,
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
                flags::ACK | flags::CWR,
                flags::ACK,
                flags::ACK | flags::PSH | flags::FIN,
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
}
