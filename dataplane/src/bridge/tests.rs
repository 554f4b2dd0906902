use super::*;
use crate::wire::{ethertype, Tpid, VlanTag, VlanTags, ETHERNET_HEADER_LEN};
use proptest::prelude::*;

const HOST_A: MacAddress = MacAddress([0x52, 0x54, 0x00, 0x00, 0x00, 0x0a]);
const HOST_B: MacAddress = MacAddress([0x52, 0x54, 0x00, 0x00, 0x00, 0x0b]);
const HOST_C: MacAddress = MacAddress([0x52, 0x54, 0x00, 0x00, 0x00, 0x0c]);
const VM: MacAddress = MacAddress([0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc]);
const T1: PortId = PortId::Tunnel(TunnelId(1));
const T2: PortId = PortId::Tunnel(TunnelId(2));
const T3: PortId = PortId::Tunnel(TunnelId(3));

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn config(tunnels: &[u16]) -> BridgeConfig {
    BridgeConfig {
        tunnels: tunnels
            .iter()
            .map(|&id| TunnelConfig {
                id: TunnelId(id),
                mss_clamp: None,
            })
            .collect(),
        ..BridgeConfig::default()
    }
}

fn bridge(tunnels: &[u16]) -> Bridge {
    Bridge::new(config(tunnels)).unwrap()
}

fn dot1q(vid: u16) -> VlanTags {
    VlanTags::Single(VlanTag {
        tpid: Tpid::Dot1Q,
        pcp: 0,
        dei: false,
        vid,
    })
}

fn frame_with(
    dst: MacAddress,
    src: MacAddress,
    tags: VlanTags,
    ty: u16,
    payload: &[u8],
) -> Vec<u8> {
    let repr = EthernetRepr {
        dst_addr: dst,
        src_addr: src,
        tags,
        ethertype: ty,
    };
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
    buf.extend_from_slice(payload);
    buf
}

/// An untagged frame with a 46-byte payload (a minimum-size frame).
fn frame(dst: MacAddress, src: MacAddress) -> Vec<u8> {
    frame_with(dst, src, VlanTags::Untagged, 0x88b5, &[0x5a; 46])
}

fn ports(forwards: &[Forward<'_>]) -> Vec<PortId> {
    forwards.iter().map(|f| f.port).collect()
}

fn events(bridge: &mut Bridge) -> Vec<BridgeEvent> {
    bridge.drain_events().collect()
}

#[test]
fn learns_sources_and_forwards_known_unicast_to_one_port() {
    let mut br = bridge(&[1, 2]);
    // B (behind T1) talks first: A is unknown, so the frame floods to local only.
    let f = frame(HOST_A, HOST_B);
    assert_eq!(ports(&br.input(T1, &f, secs(0))), [PortId::Local]);
    assert_eq!(br.lookup(VlanId::UNTAGGED, HOST_B, secs(0)), Some(T1));
    // A answers from local: B is known behind T1, so only T1 gets it, unchanged.
    let reply = frame(HOST_B, HOST_A);
    let out = br.input(PortId::Local, &reply, secs(1));
    assert_eq!(ports(&out), [T1]);
    assert!(matches!(out[0].frame, Cow::Borrowed(b) if b == &reply[..]));
    // And now A is known behind local.
    assert_eq!(ports(&br.input(T1, &f, secs(2))), [PortId::Local]);
    assert_eq!(br.port_counters(T1).unwrap().flooded, 1);
    assert_eq!(br.port_counters(PortId::Local).unwrap().flooded, 0);
    assert_eq!(
        br.macs(secs(2)).collect::<Vec<_>>(),
        [
            (VlanId::UNTAGGED, HOST_A, PortId::Local),
            (VlanId::UNTAGGED, HOST_B, T1)
        ]
    );
    assert!(events(&mut br).is_empty());
}

#[test]
fn floods_broadcast_multicast_and_unknown_unicast_to_every_other_port() {
    let mut br = bridge(&[1, 2, 3]);
    let everyone_else = [T1, T2, T3];
    let arp = frame_with(
        MacAddress::BROADCAST,
        HOST_A,
        VlanTags::Untagged,
        ethertype::ARP,
        &[0; 28],
    );
    assert_eq!(
        ports(&br.input(PortId::Local, &arp, secs(0))),
        everyone_else
    );
    let mdns = frame(MacAddress([0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb]), HOST_A);
    assert_eq!(
        ports(&br.input(PortId::Local, &mdns, secs(0))),
        everyone_else
    );
    let unknown = frame(HOST_C, HOST_A);
    assert_eq!(
        ports(&br.input(PortId::Local, &unknown, secs(0))),
        everyone_else
    );
    // A multicast destination is never "learned": even with HOST_A behind
    // local, a frame to a group address still floods.
    assert_eq!(
        ports(&br.input(T2, &mdns_from(HOST_B), secs(1))),
        [PortId::Local]
    );

    let local = br.port_counters(PortId::Local).unwrap();
    assert_eq!((local.rx_frames, local.flooded, local.tx_frames), (3, 3, 1));
    let t1 = br.port_counters(T1).unwrap();
    assert_eq!(
        (t1.tx_frames, t1.tx_bytes),
        (3, (arp.len() + mdns.len() + unknown.len()) as u64)
    );
}

fn mdns_from(src: MacAddress) -> Vec<u8> {
    frame(MacAddress([0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb]), src)
}

#[test]
fn learned_mac_ages_out_and_unicast_floods_again() {
    let mut br = bridge(&[1, 2]);
    br.input(T1, &frame(HOST_A, HOST_B), secs(0));
    let to_b = frame(HOST_B, HOST_A);
    // Just before the default 300 s age: still known.
    assert_eq!(ports(&br.input(PortId::Local, &to_b, secs(299))), [T1]);
    assert_eq!(br.lookup(VlanId::UNTAGGED, HOST_B, secs(300)), None);
    // At 300 s since B was last heard, B is forgotten and floods.
    assert_eq!(ports(&br.input(PortId::Local, &to_b, secs(300))), [T1, T2]);
    // Traffic from B refreshes it.
    br.input(T1, &frame(HOST_A, HOST_B), secs(400));
    assert_eq!(ports(&br.input(PortId::Local, &to_b, secs(699))), [T1]);
    assert_eq!(ports(&br.input(PortId::Local, &to_b, secs(700))), [T1, T2]);
    assert_eq!(
        br.macs(secs(700)).count(),
        1,
        "only HOST_A, refreshed at 700 s"
    );
    // A sweep (at least once per MAC age) frees what lookups already ignore.
    br.input(PortId::Local, &to_b, secs(1000));
    assert_eq!(br.macs.len(), 1);
}

#[test]
fn configurable_mac_age() {
    let mut br = Bridge::new(BridgeConfig {
        mac_age: secs(10),
        ..config(&[1])
    })
    .unwrap();
    br.input(T1, &frame(HOST_A, HOST_B), secs(0));
    assert_eq!(
        br.lookup(VlanId::UNTAGGED, HOST_B, Duration::from_millis(9_999)),
        Some(T1)
    );
    assert_eq!(br.lookup(VlanId::UNTAGGED, HOST_B, secs(10)), None);
}

#[test]
fn split_horizon_keeps_tunnel_frames_off_other_tunnels() {
    let mut br = bridge(&[1, 2, 3]);
    // Floods from a tunnel reach the campus only.
    let arp = frame_with(
        MacAddress::BROADCAST,
        HOST_B,
        VlanTags::Untagged,
        ethertype::ARP,
        &[0; 28],
    );
    assert_eq!(ports(&br.input(T1, &arp, secs(0))), [PortId::Local]);
    // C is learned behind T2; unicast from T1 to C goes nowhere.
    br.input(T2, &frame(HOST_A, HOST_C), secs(1));
    assert!(br.input(T1, &frame(HOST_C, HOST_B), secs(2)).is_empty());
    let t1 = br.port_counters(T1).unwrap();
    assert_eq!((t1.dropped_split_horizon, t1.tx_frames), (1, 0));
    assert_eq!(br.port_counters(T2).unwrap().tx_frames, 0);
    // The campus still reaches every tunnel.
    assert_eq!(
        ports(&br.input(PortId::Local, &frame(HOST_C, HOST_A), secs(3))),
        [T2]
    );
}

#[test]
fn hub_mode_forwards_between_tunnels() {
    let mut br = Bridge::new(BridgeConfig {
        hub: true,
        ..config(&[1, 2, 3])
    })
    .unwrap();
    let arp = frame_with(
        MacAddress::BROADCAST,
        HOST_B,
        VlanTags::Untagged,
        ethertype::ARP,
        &[0; 28],
    );
    assert_eq!(ports(&br.input(T1, &arp, secs(0))), [PortId::Local, T2, T3]);
    br.input(T2, &frame(HOST_A, HOST_C), secs(1));
    assert_eq!(ports(&br.input(T1, &frame(HOST_C, HOST_B), secs(2))), [T2]);
    assert_eq!(br.port_counters(T1).unwrap().dropped_split_horizon, 0);
}

#[test]
fn unicast_to_a_mac_behind_the_ingress_port_is_filtered() {
    let mut br = bridge(&[1]);
    br.input(PortId::Local, &frame(HOST_B, HOST_A), secs(0));
    assert!(br
        .input(PortId::Local, &frame(HOST_A, HOST_C), secs(1))
        .is_empty());
    assert_eq!(br.port_counters(PortId::Local).unwrap().filtered, 1);
}

#[test]
fn mac_move_emits_exactly_one_event() {
    let mut br = bridge(&[1, 2]);
    // The VM runs at this campus.
    br.input(PortId::Local, &frame(MacAddress::BROADCAST, VM), secs(0));
    assert!(
        events(&mut br).is_empty(),
        "first sighting is learning, not a move"
    );
    // It migrated to the campus behind T1 and sends a gratuitous ARP there.
    let garp = frame_with(
        MacAddress::BROADCAST,
        VM,
        VlanTags::Untagged,
        ethertype::ARP,
        &[0; 28],
    );
    br.input(T1, &garp, secs(10));
    for t in 11..20 {
        br.input(T1, &frame(HOST_A, VM), secs(t));
    }
    assert_eq!(
        events(&mut br),
        [BridgeEvent::MacMoved {
            vlan: VlanId::UNTAGGED,
            mac: VM,
            from: PortId::Local,
            to: T1
        }]
    );
    assert_eq!(br.lookup(VlanId::UNTAGGED, VM, secs(20)), Some(T1));
    // Traffic to the VM now goes through T1.
    assert_eq!(
        ports(&br.input(PortId::Local, &frame(VM, HOST_A), secs(20))),
        [T1]
    );
    // It moves on to T2: one more event, from T1.
    br.input(T2, &garp, secs(30));
    br.input(T2, &garp, secs(31));
    assert_eq!(
        br.poll_event(),
        Some(BridgeEvent::MacMoved {
            vlan: VlanId::UNTAGGED,
            mac: VM,
            from: T1,
            to: T2
        })
    );
    assert_eq!(br.poll_event(), None);
    // A MAC that had aged out is learned afresh, not moved.
    br.input(PortId::Local, &garp, secs(31 + 300));
    assert_eq!(br.poll_event(), None);
    assert_eq!(
        br.lookup(VlanId::UNTAGGED, VM, secs(331)),
        Some(PortId::Local)
    );
}

#[test]
fn flapping_mac_cannot_grow_the_event_queue() {
    let mut br = bridge(&[1]);
    let f = frame(MacAddress::BROADCAST, VM);
    for i in 0..(MAX_PENDING_EVENTS as u64 + 11) {
        let port = if i % 2 == 0 { PortId::Local } else { T1 };
        br.input(port, &f, Duration::from_millis(i));
    }
    assert_eq!(events(&mut br).len(), MAX_PENDING_EVENTS);
    assert_eq!(br.counters().events_dropped, 10);
}

#[test]
fn flood_rate_limit_drops_and_counts_the_excess() {
    let mut br = Bridge::new(BridgeConfig {
        flood_limit: Some(FloodLimit {
            frames_per_second: 10,
            burst: 5,
        }),
        ..config(&[1])
    })
    .unwrap();
    let arp = frame_with(
        MacAddress::BROADCAST,
        HOST_A,
        VlanTags::Untagged,
        ethertype::ARP,
        &[0; 28],
    );
    let t0 = secs(100);
    let flooded: Vec<bool> = (0..8)
        .map(|_| !br.input(PortId::Local, &arp, t0).is_empty())
        .collect();
    assert_eq!(flooded, [true, true, true, true, true, false, false, false]);
    // 10 per second: one token every 100 ms.
    assert!(br
        .input(PortId::Local, &arp, t0 + Duration::from_millis(99))
        .is_empty());
    assert!(!br
        .input(PortId::Local, &arp, t0 + Duration::from_millis(100))
        .is_empty());
    assert!(br
        .input(PortId::Local, &arp, t0 + Duration::from_millis(100))
        .is_empty());
    let c = br.port_counters(PortId::Local).unwrap();
    assert_eq!((c.flooded, c.dropped_rate_limit, c.rx_frames), (6, 5, 11));
    // Known unicast is not limited, and other ports have their own buckets.
    br.input(T1, &frame(HOST_A, HOST_B), t0);
    for _ in 0..20 {
        assert_eq!(
            ports(&br.input(PortId::Local, &frame(HOST_B, HOST_A), t0)),
            [T1]
        );
    }
    assert_eq!(ports(&br.input(T1, &arp_from(HOST_B), t0)), [PortId::Local]);
    // After a long silence the bucket is full again, and no fuller.
    let later = t0 + secs(3600);
    let passed = (0..8)
        .filter(|_| !br.input(PortId::Local, &arp, later).is_empty())
        .count();
    assert_eq!(passed, 5);
}

fn arp_from(src: MacAddress) -> Vec<u8> {
    frame_with(
        MacAddress::BROADCAST,
        src,
        VlanTags::Untagged,
        ethertype::ARP,
        &[0; 28],
    )
}

#[test]
fn default_flood_limit_is_2000_burst_then_1000_per_second() {
    let mut br = bridge(&[1]);
    let arp = arp_from(HOST_A);
    let passed = (0..2500)
        .filter(|_| !br.input(PortId::Local, &arp, secs(5)).is_empty())
        .count();
    assert_eq!(passed, 2000);
    let passed = (0..2500)
        .filter(|_| {
            !br.input(PortId::Local, &arp, Duration::from_millis(5_500))
                .is_empty()
        })
        .count();
    assert_eq!(passed, 500);
}

#[test]
fn vlans_are_isolated_and_tags_preserved() {
    let mut br = bridge(&[1, 2]);
    // The same MAC on VLAN 10 behind local and on VLAN 20 behind T1.
    let on_10 = frame_with(
        MacAddress::BROADCAST,
        VM,
        dot1q(10),
        ethertype::ARP,
        &[0; 28],
    );
    let on_20 = frame_with(
        MacAddress::BROADCAST,
        VM,
        dot1q(20),
        ethertype::ARP,
        &[0; 28],
    );
    br.input(PortId::Local, &on_10, secs(0));
    let out = br.input(T1, &on_20, secs(1));
    assert_eq!(ports(&out), [PortId::Local]);
    assert_eq!(&out[0].frame[..], &on_20[..], "tag kept byte for byte");
    assert!(events(&mut br).is_empty(), "two VLANs, two MACs: no move");
    let v10 = VlanId::new(10).unwrap();
    let v20 = VlanId::new(20).unwrap();
    assert_eq!(br.lookup(v10, VM, secs(1)), Some(PortId::Local));
    assert_eq!(br.lookup(v20, VM, secs(1)), Some(T1));
    assert_eq!(br.lookup(VlanId::UNTAGGED, VM, secs(1)), None);
    // Unicast to the MAC goes where it lives in that VLAN.
    let to_vm_10 = frame_with(VM, HOST_B, dot1q(10), 0x0800, &[0x45; 40]);
    assert_eq!(ports(&br.input(T2, &to_vm_10, secs(2))), [PortId::Local]);
    let to_vm_20 = frame_with(VM, HOST_A, dot1q(20), 0x0800, &[0x45; 40]);
    let out = br.input(PortId::Local, &to_vm_20, secs(2));
    assert_eq!(ports(&out), [T1]);
    assert_eq!(&out[0].frame[..], &to_vm_20[..]);
    // Untagged traffic to it is unknown unicast.
    assert_eq!(
        ports(&br.input(PortId::Local, &frame(VM, HOST_A), secs(2))),
        [T1, T2]
    );
    // A priority tag (VID 0) is the untagged VLAN.
    let prio = frame_with(HOST_A, HOST_C, dot1q(0), 0x0800, &[0x45; 40]);
    assert_eq!(ports(&br.input(T1, &prio, secs(3))), [PortId::Local]);
    assert_eq!(br.lookup(VlanId::UNTAGGED, HOST_C, secs(3)), Some(T1));
}

#[test]
fn malformed_frames_are_dropped_and_counted() {
    let mut br = bridge(&[1]);
    let good = frame(MacAddress::BROADCAST, HOST_A);
    let tagged = frame_with(MacAddress::BROADCAST, HOST_A, dot1q(10), 0x0800, &[]);
    let reserved_vid = frame_with(MacAddress::BROADCAST, HOST_A, dot1q(4095), 0x0800, &[0; 46]);
    let group_source = frame(HOST_B, MacAddress([0x01, 0, 0x5e, 0, 0, 1]));
    let zero_source = frame(HOST_B, MacAddress([0; 6]));
    let bad: [&[u8]; 7] = [
        &[],
        &good[..1],
        &good[..13],
        &tagged[..17], // the tag is cut before its EtherType
        &reserved_vid,
        &group_source,
        &zero_source,
    ];
    for f in bad {
        assert!(br.input(PortId::Local, f, secs(0)).is_empty(), "{f:02x?}");
    }
    let c = br.port_counters(PortId::Local).unwrap();
    assert_eq!((c.dropped_malformed, c.rx_frames), (7, 7));
    assert_eq!(br.macs(secs(0)).count(), 0, "nothing learned from them");
    // The shortest readable frame is the bare 14-byte header.
    assert_eq!(ports(&br.input(PortId::Local, &good[..14], secs(0))), [T1]);
    assert_eq!(ports(&br.input(PortId::Local, &tagged, secs(0))), [T1]);
}

#[test]
fn link_local_control_frames_stay_on_their_link() {
    let mut br = bridge(&[1]);
    let bpdu = frame(MacAddress([0x01, 0x80, 0xc2, 0, 0, 0]), HOST_A);
    let lldp = frame(MacAddress([0x01, 0x80, 0xc2, 0, 0, 0x0e]), HOST_A);
    assert!(br.input(PortId::Local, &bpdu, secs(0)).is_empty());
    assert!(br.input(T1, &lldp, secs(0)).is_empty());
    assert_eq!(
        br.port_counters(PortId::Local).unwrap().dropped_link_local,
        1
    );
    assert_eq!(br.port_counters(T1).unwrap().dropped_link_local, 1);
}

#[test]
fn unknown_tunnel_is_counted_and_remove_tunnel_forgets_its_macs() {
    let mut br = bridge(&[1, 2]);
    assert!(br.input(T3, &frame(HOST_A, HOST_B), secs(0)).is_empty());
    assert_eq!(br.counters().unknown_port, 1);
    assert_eq!(br.port_counters(T3), None);

    br.input(T1, &frame(HOST_A, HOST_B), secs(0));
    assert!(br.remove_tunnel(TunnelId(1)));
    assert!(!br.remove_tunnel(TunnelId(1)));
    assert_eq!(br.tunnels().collect::<Vec<_>>(), [TunnelId(2)]);
    assert_eq!(br.lookup(VlanId::UNTAGGED, HOST_B, secs(1)), None);
    assert_eq!(
        ports(&br.input(PortId::Local, &frame(HOST_B, HOST_A), secs(1))),
        [T2]
    );

    br.add_tunnel(TunnelConfig {
        id: TunnelId(3),
        mss_clamp: None,
    })
    .unwrap();
    assert_eq!(
        ports(&br.input(PortId::Local, &frame(HOST_B, HOST_A), secs(2))),
        [T2, T3]
    );
}

#[test]
fn full_mac_table_stops_learning_but_still_forwards() {
    let mut br = Bridge::new(BridgeConfig {
        max_macs: 2,
        mac_age: secs(60),
        ..config(&[1])
    })
    .unwrap();
    br.input(PortId::Local, &frame(HOST_C, HOST_A), secs(0));
    br.input(PortId::Local, &frame(HOST_C, HOST_B), secs(0));
    assert_eq!(
        ports(&br.input(T1, &frame(HOST_A, VM), secs(1))),
        [PortId::Local]
    );
    assert_eq!(br.lookup(VlanId::UNTAGGED, VM, secs(1)), None);
    assert_eq!(br.counters().macs_not_learned, 1);
    // Known MACs still move and refresh when the table is full.
    br.input(T1, &frame(HOST_C, HOST_B), secs(2));
    assert_eq!(br.lookup(VlanId::UNTAGGED, HOST_B, secs(2)), Some(T1));
    // Once A ages out there is room again.
    br.input(T1, &frame(HOST_A, VM), secs(61));
    assert_eq!(br.lookup(VlanId::UNTAGGED, VM, secs(61)), Some(T1));
}

#[test]
fn config_is_checked() {
    let err = |c: BridgeConfig| Bridge::new(c).unwrap_err();
    assert_eq!(
        err(BridgeConfig {
            mac_age: Duration::ZERO,
            ..config(&[])
        }),
        ConfigError::ZeroMacAge
    );
    assert_eq!(
        err(BridgeConfig {
            flood_limit: Some(FloodLimit {
                frames_per_second: 0,
                burst: 10
            }),
            ..config(&[])
        }),
        ConfigError::EmptyFloodLimit {
            frames_per_second: 0,
            burst: 10
        }
    );
    assert_eq!(
        err(BridgeConfig {
            max_macs: 0,
            ..config(&[])
        }),
        ConfigError::ZeroMaxMacs
    );
    assert_eq!(err(config(&[4, 5, 4])), ConfigError::DuplicateTunnel(4));
    let mut tiny = config(&[7]);
    tiny.tunnels[0].mss_clamp = Some(MssClamp {
        ipv4: 1360,
        ipv6: 40,
    });
    let e = err(tiny);
    assert_eq!(
        e,
        ConfigError::MssTooSmall {
            tunnel: 7,
            family: "IPv6",
            mss: 40
        }
    );
    assert_eq!(
        e.to_string(),
        "bridge config rejected: tunnel 7's IPv6 MSS clamp 40 is below 88, which would stall every TCP connection through it"
    );
    let defaults = BridgeConfig::default();
    assert_eq!(defaults.mac_age, secs(300));
    assert_eq!(
        defaults.flood_limit,
        Some(FloodLimit {
            frames_per_second: 1000,
            burst: 2000
        })
    );
    assert!(!defaults.hub);
    assert!(Bridge::new(BridgeConfig {
        flood_limit: None,
        ..config(&[1])
    })
    .is_ok());
}

// --- MSS clamping -----------------------------------------------------------

const CLAMP_1400: MssClamp = MssClamp::for_ip_mtu(1400); // 1360 / 1340

fn clamped_bridge(clamps: &[(u16, Option<MssClamp>)], hub: bool) -> Bridge {
    Bridge::new(BridgeConfig {
        hub,
        tunnels: clamps
            .iter()
            .map(|&(id, mss_clamp)| TunnelConfig {
                id: TunnelId(id),
                mss_clamp,
            })
            .collect(),
        ..BridgeConfig::default()
    })
    .unwrap()
}

/// A TCP header with `options` (padded with EOL to a multiple of 4).
fn tcp_header(flags: u8, options: &[u8]) -> Vec<u8> {
    let mut tcp = vec![
        0xc3, 0x50, // source port 50000
        0x01, 0xbb, // destination port 443
        0x12, 0x34, 0x56, 0x78, // sequence
        0x00, 0x00, 0x00, 0x00, // acknowledgement
        0x00, flags, // data offset (below), flags
        0xfa, 0xf0, // window
        0x00, 0x00, // checksum (below)
        0x00, 0x00, // urgent pointer
    ];
    tcp.extend_from_slice(options);
    while tcp.len() % 4 != 0 {
        tcp.push(0);
    }
    tcp[12] = ((tcp.len() / 4) as u8) << 4;
    tcp
}

const SYN: u8 = 0x02;
const SYN_ACK: u8 = 0x12;
const ACK: u8 = 0x10;

/// Linux's SYN options: MSS, SACK permitted, timestamps, NOP, window scale.
fn linux_syn_options(mss: u16) -> Vec<u8> {
    let mut o = vec![2, 4];
    o.extend_from_slice(&mss.to_be_bytes());
    o.extend_from_slice(&[4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7]);
    o
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn sum16(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

const V4_SRC: [u8; 4] = [192, 0, 2, 10];
const V4_DST: [u8; 4] = [198, 51, 100, 20];
const V6_SRC: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a,
];
const V6_DST: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x14,
];

fn pseudo_v4(src: &[u8], dst: &[u8], len: usize) -> u32 {
    sum16(src) + sum16(dst) + 6 + len as u32
}

fn pseudo_v6(src: &[u8], dst: &[u8], len: usize) -> u32 {
    sum16(src) + sum16(dst) + len as u32 + 6
}

/// An IPv4 packet around `tcp`, both checksums computed from scratch.
fn ipv4(mut tcp: Vec<u8>) -> Vec<u8> {
    let total = 20 + tcp.len();
    let mut ip = vec![0x45, 0x00];
    ip.extend_from_slice(&(total as u16).to_be_bytes());
    ip.extend_from_slice(&[0x1c, 0x46, 0x40, 0x00, 0x40, 6, 0, 0]);
    ip.extend_from_slice(&V4_SRC);
    ip.extend_from_slice(&V4_DST);
    let c = !fold(sum16(&ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let c = !fold(pseudo_v4(&V4_SRC, &V4_DST, tcp.len()) + sum16(&tcp));
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&tcp);
    ip
}

/// An IPv6 packet around `tcp` behind `ext` (extension headers, whose first
/// byte chains to TCP), the TCP checksum computed from scratch.
fn ipv6(mut tcp: Vec<u8>, first_next_header: u8, ext: &[u8]) -> Vec<u8> {
    let mut ip = vec![0x60, 0x00, 0x00, 0x00];
    ip.extend_from_slice(&((ext.len() + tcp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[first_next_header, 64]);
    ip.extend_from_slice(&V6_SRC);
    ip.extend_from_slice(&V6_DST);
    ip.extend_from_slice(ext);
    let c = !fold(pseudo_v6(&V6_SRC, &V6_DST, tcp.len()) + sum16(&tcp));
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&tcp);
    ip
}

/// Recomputes the TCP checksum of the segment at `tcp_at` in `frame` from
/// scratch and returns (as carried, as recomputed).
fn tcp_checksums(frame: &[u8], l3_at: usize) -> (u16, u16) {
    let l3 = &frame[l3_at..];
    let (pseudo, tcp) = match l3[0] >> 4 {
        4 => {
            let total = usize::from(u16::from_be_bytes([l3[2], l3[3]]));
            let hl = usize::from(l3[0] & 0xf) * 4;
            let tcp = &l3[hl..total];
            (pseudo_v4(&l3[12..16], &l3[16..20], tcp.len()), tcp)
        }
        6 => {
            let end = 40 + usize::from(u16::from_be_bytes([l3[4], l3[5]]));
            // Walk the extension headers the tests use.
            let (mut next, mut at) = (l3[6], 40);
            while next != 6 {
                next = l3[at];
                at += (usize::from(l3[at + 1]) + 1) * 8;
            }
            let tcp = &l3[at..end];
            (pseudo_v6(&l3[8..24], &l3[24..40], tcp.len()), tcp)
        }
        v => panic!("IP version {v}"),
    };
    let carried = u16::from_be_bytes([tcp[16], tcp[17]]);
    let mut zeroed = tcp.to_vec();
    zeroed[16..18].fill(0);
    (carried, !fold(pseudo + sum16(&zeroed)))
}

fn mss_at(frame: &[u8], value_at: usize) -> u16 {
    u16::from_be_bytes([frame[value_at], frame[value_at + 1]])
}

/// Bytes that differ between two frames of the same length.
fn diff(a: &[u8], b: &[u8]) -> Vec<usize> {
    assert_eq!(a.len(), b.len());
    (0..a.len()).filter(|&i| a[i] != b[i]).collect()
}

#[test]
fn mss_clamp_on_ipv4_syn_with_checksum_recomputed() {
    let mut br = clamped_bridge(&[(1, Some(CLAMP_1400))], false);
    let syn = frame_with(
        HOST_B,
        HOST_A,
        VlanTags::Untagged,
        ethertype::IPV4,
        &ipv4(tcp_header(SYN, &linux_syn_options(1460))),
    );
    let (carried, computed) = tcp_checksums(&syn, 14);
    assert_eq!(carried, computed, "the test's own SYN is valid");
    let mss_value_at = 14 + 20 + 20 + 2;
    assert_eq!(mss_at(&syn, mss_value_at), 1460);

    let out = br.input(PortId::Local, &syn, secs(0));
    assert_eq!(ports(&out), [T1]);
    let clamped = &out[0].frame;
    assert_eq!(mss_at(clamped, mss_value_at), 1360);
    let (carried, computed) = tcp_checksums(clamped, 14);
    assert_eq!(carried, computed, "checksum updated incrementally");
    let checksum_at = 14 + 20 + 16;
    let may_change = [checksum_at, checksum_at + 1, mss_value_at, mss_value_at + 1];
    let changed = diff(&syn, clamped);
    assert!(changed.contains(&(mss_value_at + 1)), "{changed:?}");
    assert!(
        changed.iter().all(|i| may_change.contains(i)),
        "{changed:?}"
    );
    assert_eq!(br.port_counters(T1).unwrap().mss_clamped, 1);

    // The SYN-ACK coming back from the tunnel is clamped too.
    let syn_ack = frame_with(
        HOST_A,
        HOST_B,
        VlanTags::Untagged,
        ethertype::IPV4,
        &ipv4(tcp_header(SYN_ACK, &linux_syn_options(1460))),
    );
    let out = br.input(T1, &syn_ack, secs(0));
    assert_eq!(ports(&out), [PortId::Local]);
    assert_eq!(mss_at(&out[0].frame, mss_value_at), 1360);
    let (carried, computed) = tcp_checksums(&out[0].frame, 14);
    assert_eq!(carried, computed);
    assert_eq!(br.port_counters(PortId::Local).unwrap().mss_clamped, 1);

    // Already small enough, or not a SYN: passed through untouched.
    for segment in [
        tcp_header(SYN, &linux_syn_options(1200)),
        tcp_header(ACK, &linux_syn_options(1460)),
        tcp_header(SYN, &[1, 1, 4, 2]),
    ] {
        let f = frame_with(
            HOST_B,
            HOST_A,
            VlanTags::Untagged,
            ethertype::IPV4,
            &ipv4(segment),
        );
        let out = br.input(PortId::Local, &f, secs(1));
        assert!(matches!(out[0].frame, Cow::Borrowed(b) if b == &f[..]));
    }
}

#[test]
fn mss_clamp_at_an_odd_offset_and_with_ethernet_padding() {
    let mut br = clamped_bridge(&[(1, Some(CLAMP_1400))], false);
    // One NOP first puts the MSS value at an odd offset in the TCP header,
    // across two checksum words. Padding after the packet must be ignored.
    let mut options = vec![1];
    options.extend_from_slice(&linux_syn_options(8960));
    let mut syn = frame_with(
        HOST_B,
        HOST_A,
        VlanTags::Untagged,
        ethertype::IPV4,
        &ipv4(tcp_header(SYN, &options)),
    );
    syn.extend_from_slice(&[0xee; 6]);
    let out = br.input(PortId::Local, &syn, secs(0));
    let value_at = 14 + 20 + 20 + 3;
    assert_eq!(mss_at(&out[0].frame, value_at), 1360);
    let (carried, computed) = tcp_checksums(&out[0].frame, 14);
    assert_eq!(carried, computed);
    assert_eq!(&out[0].frame[syn.len() - 6..], &[0xee; 6]);
}

#[test]
fn mss_clamp_on_ipv6_syn_inside_a_vlan_tag() {
    let mut br = clamped_bridge(&[(1, Some(CLAMP_1400))], false);
    let l3_at = 18;
    let syn = frame_with(
        HOST_B,
        HOST_A,
        dot1q(42),
        ethertype::IPV6,
        &ipv6(tcp_header(SYN, &linux_syn_options(1440)), 6, &[]),
    );
    let out = br.input(PortId::Local, &syn, secs(0));
    assert_eq!(ports(&out), [T1]);
    let value_at = l3_at + 40 + 20 + 2;
    assert_eq!(mss_at(&syn, value_at), 1440);
    assert_eq!(mss_at(&out[0].frame, value_at), 1340);
    let (carried, computed) = tcp_checksums(&out[0].frame, l3_at);
    assert_eq!(carried, computed);
    assert_eq!(&out[0].frame[..18], &syn[..18], "tag untouched");

    // Behind a hop-by-hop header (PadN) and a destination options header.
    let ext = [
        60, 0, 1, 4, 0, 0, 0, 0, // hop-by-hop -> destination options, PadN
        6, 0, 1, 4, 0, 0, 0, 0, // destination options -> TCP, PadN
    ];
    let syn = frame_with(
        HOST_B,
        HOST_A,
        dot1q(42),
        ethertype::IPV6,
        &ipv6(tcp_header(SYN, &linux_syn_options(1440)), 0, &ext),
    );
    let out = br.input(PortId::Local, &syn, secs(1));
    let value_at = l3_at + 40 + 16 + 20 + 2;
    assert_eq!(mss_at(&out[0].frame, value_at), 1340);
    let (carried, computed) = tcp_checksums(&out[0].frame, l3_at);
    assert_eq!(carried, computed);

    // A fragment header: left alone.
    let frag = [6, 0, 0, 0, 0, 0, 0, 1];
    let f = frame_with(
        HOST_B,
        HOST_A,
        dot1q(42),
        ethertype::IPV6,
        &ipv6(tcp_header(SYN, &linux_syn_options(1440)), 44, &frag),
    );
    let out = br.input(PortId::Local, &f, secs(2));
    assert!(matches!(out[0].frame, Cow::Borrowed(_)));
}

#[test]
fn flooded_syn_gets_each_tunnels_clamp_and_hub_uses_the_tighter() {
    let small = MssClamp {
        ipv4: 1200,
        ipv6: 1180,
    };
    let mut br = clamped_bridge(&[(1, Some(CLAMP_1400)), (2, Some(small)), (3, None)], true);
    let syn = frame_with(
        HOST_B,
        HOST_A,
        VlanTags::Untagged,
        ethertype::IPV4,
        &ipv4(tcp_header(SYN, &linux_syn_options(1460))),
    );
    let value_at = 14 + 20 + 20 + 2;
    // Unknown unicast: flooded, each copy clamped for its tunnel.
    let out = br.input(PortId::Local, &syn, secs(0));
    let got: Vec<(PortId, u16)> = out
        .iter()
        .map(|f| (f.port, mss_at(&f.frame, value_at)))
        .collect();
    assert_eq!(got, [(T1, 1360), (T2, 1200), (T3, 1460)]);
    assert!(matches!(out[2].frame, Cow::Borrowed(_)));
    for f in &out {
        let (carried, computed) = tcp_checksums(&f.frame, 14);
        assert_eq!(carried, computed, "{}", f.port);
    }
    // Hub: T1 to T2 crosses both tunnels and gets the tighter clamp; T1 to
    // local gets T1's; T3 has none, so T1 to T3 gets T1's.
    let syn_from_b = frame_with(
        HOST_C,
        HOST_B,
        VlanTags::Untagged,
        ethertype::IPV4,
        &ipv4(tcp_header(SYN, &linux_syn_options(1460))),
    );
    let out = br.input(T1, &syn_from_b, secs(1));
    let got: Vec<(PortId, u16)> = out
        .iter()
        .map(|f| (f.port, mss_at(&f.frame, value_at)))
        .collect();
    assert_eq!(got, [(PortId::Local, 1360), (T2, 1200), (T3, 1360)]);
}

#[test]
fn truncated_ip_and_tcp_are_forwarded_unclamped() {
    let mut br = clamped_bridge(&[(1, Some(CLAMP_1400))], false);
    let packet = ipv4(tcp_header(SYN, &linux_syn_options(1460)));
    let full = frame_with(HOST_B, HOST_A, VlanTags::Untagged, ethertype::IPV4, &packet);
    for cut in 14..full.len() {
        let out = br.input(PortId::Local, &full[..cut], secs(0));
        assert_eq!(ports(&out), [T1], "cut at {cut}");
        assert!(matches!(out[0].frame, Cow::Borrowed(b) if b == &full[..cut]));
    }
    // A lying IHL, total length or data offset: forwarded as is.
    for (at, value) in [
        (14, 0x4f),
        (14, 0x44),
        (16, 0xff),
        (14 + 20 + 12, 0xf0),
        (14 + 20 + 12, 0x10),
    ] {
        let mut f = full.clone();
        f[at] = value;
        let out = br.input(PortId::Local, &f, secs(0));
        assert!(
            matches!(out[0].frame, Cow::Borrowed(_)),
            "byte {at} = {value:#x}"
        );
    }
}

#[test]
fn bridge_between_memory_devices_with_a_lossy_tunnel() {
    use crate::device::{FrameDevice, LossyDevice, MemoryDevice};
    use std::num::NonZeroU64;

    // The campus TAP and one tunnel, as a shell would drive them.
    let (mut campus_host, mut campus_port) = MemoryDevice::pair(1500);
    let (tunnel_end, mut peer) = MemoryDevice::pair(1500);
    let mut tunnel_port = LossyDevice::new(tunnel_end, NonZeroU64::new(4).unwrap());
    let mut br = bridge(&[1]);
    let mut buf = [0u8; 1518];

    let mut pump = |br: &mut Bridge,
                    campus: &mut MemoryDevice,
                    tunnel: &mut LossyDevice<MemoryDevice>,
                    now| {
        while let Some(len) = campus.recv(&mut buf).unwrap() {
            for f in br.input(PortId::Local, &buf[..len], now) {
                assert_eq!(f.port, T1);
                tunnel.send(&f.frame).unwrap();
            }
        }
        while let Some(len) = tunnel.recv(&mut buf).unwrap() {
            for f in br.input(T1, &buf[..len], now) {
                assert_eq!(f.port, PortId::Local);
                campus.send(&f.frame).unwrap();
            }
        }
    };

    for i in 0..8u8 {
        campus_host
            .send(&frame_with(
                HOST_B,
                HOST_A,
                VlanTags::Untagged,
                0x88b5,
                &[i; 46],
            ))
            .unwrap();
    }
    peer.send(&frame(HOST_A, HOST_B)).unwrap();
    pump(&mut br, &mut campus_port, &mut tunnel_port, secs(0));

    // The peer got six of eight frames (every fourth lost), in order.
    let mut got = Vec::new();
    let mut rx = [0u8; 1518];
    while let Some(len) = peer.recv(&mut rx).unwrap() {
        got.push(rx[14]);
        assert_eq!(len, 60);
    }
    assert_eq!(got, [0, 1, 2, 4, 5, 6]);
    assert_eq!(tunnel_port.dropped(), 2);
    // The peer's frame reached the campus host, and both MACs are learned.
    assert_eq!(campus_host.recv(&mut rx).unwrap(), Some(60));
    assert_eq!(&rx[..12], &[&HOST_A.0[..], &HOST_B.0[..]].concat()[..]);
    assert_eq!(
        br.lookup(VlanId::UNTAGGED, HOST_A, secs(0)),
        Some(PortId::Local)
    );
    assert_eq!(br.lookup(VlanId::UNTAGGED, HOST_B, secs(0)), Some(T1));
    assert_eq!(
        br.port_counters(T1).unwrap().tx_frames,
        8,
        "the bridge handed over all eight"
    );
}

// --- properties -------------------------------------------------------------

fn any_port() -> impl Strategy<Value = PortId> {
    prop_oneof![
        Just(PortId::Local),
        (0u16..5).prop_map(|id| PortId::Tunnel(TunnelId(id))),
    ]
}

/// Frames that are often readable: a few known MACs, sometimes tagged, then
/// arbitrary bytes (some of them IPv4/IPv6 headers of SYNs, mostly garbage).
fn any_frame() -> impl Strategy<Value = Vec<u8>> {
    let mac = prop_oneof![
        Just(HOST_A),
        Just(HOST_B),
        Just(VM),
        Just(MacAddress::BROADCAST),
        any::<[u8; 6]>().prop_map(MacAddress),
    ];
    let structured = (
        mac.clone(),
        mac,
        prop_oneof![Just(VlanTags::Untagged), (0u16..4096).prop_map(dot1q)],
        prop_oneof![Just(ethertype::IPV4), Just(ethertype::IPV6), any::<u16>()],
        proptest::collection::vec(any::<u8>(), 0..120),
    )
        .prop_map(|(dst, src, tags, ty, payload)| frame_with(dst, src, tags, ty, &payload));
    prop_oneof![structured, proptest::collection::vec(any::<u8>(), 0..80),]
}

proptest! {
    #[test]
    fn arbitrary_frames_never_panic_and_obey_split_horizon(
        hub in any::<bool>(),
        inputs in proptest::collection::vec((any_port(), any_frame(), 0u64..5_000), 1..40),
    ) {
        let mut br = Bridge::new(BridgeConfig {
            hub,
            tunnels: (1..=3)
                .map(|id| TunnelConfig { id: TunnelId(id), mss_clamp: Some(MssClamp { ipv4: 536, ipv6: 516 }) })
                .collect(),
            ..BridgeConfig::default()
        }).unwrap();
        let mut now = Duration::ZERO;
        let mut out = Vec::new();
        for (port, frame, step_ms) in &inputs {
            now += Duration::from_millis(*step_ms);
            br.input_into(*port, frame, now, &mut out);
            let known_port = matches!(port, PortId::Local | PortId::Tunnel(TunnelId(1..=3)));
            if !known_port || frame.len() < ETHERNET_HEADER_LEN {
                prop_assert!(out.is_empty());
            }
            for f in &out {
                prop_assert_ne!(f.port, *port);
                if !hub && port.is_tunnel() {
                    prop_assert_eq!(f.port, PortId::Local);
                }
                prop_assert_eq!(f.frame.len(), frame.len());
                // Only an MSS value and a checksum (four bytes at most) change.
                prop_assert!(diff(frame, &f.frame).len() <= 4);
            }
            for event in br.drain_events() {
                let BridgeEvent::MacMoved { from, to, .. } = event;
                prop_assert_ne!(from, to);
                prop_assert_eq!(to, *port);
            }
        }
        let rx: u64 = [PortId::Local, T1, T2, T3].iter().map(|&p| br.port_counters(p).unwrap().rx_frames).sum();
        prop_assert_eq!(rx + br.counters().unknown_port, inputs.len() as u64);
    }

    #[test]
    fn clamped_syns_keep_a_valid_checksum(
        v6 in any::<bool>(),
        tagged in any::<bool>(),
        nops in 0usize..4,
        mss in any::<u16>(),
        clamp in 88u16..9000,
        flags in prop_oneof![Just(SYN), Just(SYN_ACK)],
        payload in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut br = clamped_bridge(&[(1, Some(MssClamp { ipv4: clamp, ipv6: clamp }))], false);
        let mut options = vec![1; nops];
        options.extend_from_slice(&linux_syn_options(mss));
        let mut segment = tcp_header(flags, &options);
        segment.extend_from_slice(&payload);
        let (packet, ty) = if v6 {
            (ipv6(segment, 6, &[]), ethertype::IPV6)
        } else {
            (ipv4(segment), ethertype::IPV4)
        };
        let tags = if tagged { dot1q(7) } else { VlanTags::Untagged };
        let syn = frame_with(HOST_B, HOST_A, tags, ty, &packet);
        let l3_at = if tagged { 18 } else { 14 };
        let value_at = l3_at + if v6 { 40 } else { 20 } + 20 + nops + 2;

        let out = br.input(PortId::Local, &syn, secs(0));
        prop_assert_eq!(out.len(), 1);
        let f = &out[0].frame;
        prop_assert_eq!(mss_at(f, value_at), mss.min(clamp));
        prop_assert_eq!(matches!(f, Cow::Owned(_)), mss > clamp);
        // RFC 1624's equation 3 never yields 0xffff, nor does a computation
        // from scratch, so the two agree bit for bit.
        let (carried, computed) = tcp_checksums(f, l3_at);
        prop_assert_eq!(carried, computed);
    }
}
