//! The receive direction of the offloads: merging consecutive TCP segments
//! of one flow back into super-frames, like Linux GRO.

use super::{Family, TcpLayout, MAX_IP_PACKET};
use super::{GsoType, HdrFlags, VirtioNetHdr, VirtioNetHdrRepr, VIRTIO_NET_HDR_LEN};
use crate::wire::tcp::flags;
use crate::wire::{Ipv4Packet, TcpPacket, IPV4_HEADER_LEN, TCP_CHECKSUM_AT};

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
                let psh = layout.tcp(frame).flags() & flags::PSH != 0;
                if psh {
                    let at = VIRTIO_NET_HDR_LEN + flow.layout.l4;
                    let mut held = TcpPacket::new_unchecked(&mut flow.buf[at..]);
                    held.set_flags(held.flags() | flags::PSH);
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
        let tcp = layout.tcp(frame);
        self.flows.push(Flow {
            buf,
            layout,
            next_seq: tcp.seq_number().wrapping_add(payload.len() as u32),
            seg_size: payload.len(),
            segments: 1,
            closed: tcp.flags() & flags::PSH != 0,
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
            layout.tcp_mut(frame).set_checksum(partial);
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
                csum_offset: TCP_CHECKSUM_AT as u16,
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
    let tcp = layout.tcp(frame);
    if tcp.flags() & !flags::PSH != flags::ACK || layout.payload == layout.end {
        return false;
    }
    if layout.family == Family::V4 {
        let ip = Ipv4Packet::new_unchecked(&frame[layout.l3..layout.l4]);
        if ip.header_len() != IPV4_HEADER_LEN || !ip.verify_checksum() {
            return false;
        }
    }
    tcp.verify_checksum(layout.pseudo_header(frame, layout.end - layout.l4))
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
        || layout.tcp(frame).seq_number() != flow.next_seq
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
    use crate::offload::segment;
    use crate::offload::test_frames::*;
    use proptest::prelude::*;

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
                flags: flags::ACK | flags::PSH,
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
        let mut corrupt = a(3000, 1000, flags::ACK);
        *corrupt.last_mut().unwrap() ^= 1;
        let frames = vec![
            a(1000, 1000, flags::ACK),
            b(50, 500),
            a(2000, 1000, flags::ACK),
            arp.clone(),
            b(550, 500),
            corrupt.clone(),
            a(4000, 1000, flags::ACK),
            a(5000, 1000, flags::ACK | flags::PSH),
            a(6000, 1000, flags::ACK),
            b(2000, 500),
            ack.clone(),
            a(7000, 1000, flags::ACK),
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
            let spec = Spec { v6, vlan, seq, flags: flags::ACK, ..V4 };
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
}
