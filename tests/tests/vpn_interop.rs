//! hinan's L2 VPN against independent implementations, in the lab's WAN:
//!
//! * Debian's `tshark` decodes hinan's raw packets as RFC 3378 EtherIP
//!   carrying the very frame that entered hinan's TAP device;
//! * Debian's `wireguard-go` completes WireGuard handshakes with hinan (each
//!   side initiating once) and carries EtherIP both ways: what hinan sends
//!   comes out of wireguard-go's TUN device intact (decoded by tshark there),
//!   and EtherIP injected on the wireguard-go side arrives at hinan's bridge
//!   and on its TAP device.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hinan_lab::lab::capture::{tshark_fields, Capture};
use hinan_lab::lab::netns;
use hinan_lab::lab::sys::{self, ip};
use hinan_lab::lab::vpn::{self, keypair, MeshOptions, VpnSite, LAB_TAP, WG_PORT};
use hinan_lab::lab::SegmentLink;
use hinan_lab::{Lab, LabSpec};

fn mac_of(ns: &str, dev: &str) -> String {
    let out = ip(ns, &["-o", "link", "show", dev]).unwrap();
    out.split("link/ether ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no MAC in {out}"))
        .to_owned()
}

fn tap_address(site: &VpnSite, addr: &str) {
    ip(&site.ns, &["addr", "add", addr, "dev", LAB_TAP]).unwrap();
    ip(&site.ns, &["link", "set", LAB_TAP, "up"]).unwrap();
}

fn scratch(lab: &Lab, name: &str) -> PathBuf {
    let dir = lab.campus("a").unwrap().dir.join("captures");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn tshark_decodes_hinans_raw_etherip_with_the_frame_inside() {
    let mut lab = Lab::up(&LabSpec::wan_only()).expect("the lab comes up");
    let sites = lab.vpn_sites();
    vpn::write_mesh(&sites, &MeshOptions::new(SegmentLink::VpnRaw)).unwrap();
    for site in &sites {
        let rec = vpn::start_endpoint(site, LAB_TAP, None).unwrap();
        lab.record(rec).unwrap();
    }
    let (a, b) = (&sites[0], &sites[1]);
    tap_address(a, "10.99.0.1/24");
    tap_address(b, "10.99.0.2/24");

    let wan_file = scratch(&lab, "wan.pcap");
    let tap_file = scratch(&lab, "tap.pcap");
    let wan = Capture::start(&a.ns, "wan0", "proto 97", &wan_file).unwrap();
    let tap = Capture::start(&a.ns, LAB_TAP, "icmp", &tap_file).unwrap();
    let ping = sys::run_in(
        &a.ns,
        "ping",
        &["-c", "3", "-i", "0.2", "-W", "2", "10.99.0.2"],
    );
    let (wan_file, tap_file) = (wan.finish(), tap.finish());
    ping.expect("ping crosses the raw EtherIP tunnel");

    let fields = [
        "ip.proto",
        "ip.src",
        "ip.dst",
        "etherip.ver",
        "eth.src",
        "eth.dst",
        "icmp.type",
        "icmp.seq",
        "data.data",
    ];
    let outer = tshark_fields(&wan_file, "etherip && icmp.type == 8", &fields).unwrap();
    let inner = tshark_fields(
        &tap_file,
        "icmp.type == 8",
        &["eth.src", "eth.dst", "icmp.seq", "data.data"],
    )
    .unwrap();
    assert!(
        outer.len() >= 3,
        "tshark found {} EtherIP echo requests on the WAN: {outer:?}",
        outer.len()
    );
    assert_eq!(outer.len(), inner.len(), "WAN {outer:?} vs TAP {inner:?}");
    let (mac_a, mac_b) = (mac_of(&a.ns, LAB_TAP), mac_of(&b.ns, LAB_TAP));
    for (o, i) in outer.iter().zip(&inner) {
        // Outer layer first, inner second, as tshark lists repeated fields.
        assert_eq!(o[0].split(',').next(), Some("97"), "outer protocol: {o:?}");
        assert_eq!(o[1], format!("{},10.99.0.1", a.public_ip), "{o:?}");
        assert_eq!(o[2], format!("{},10.99.0.2", b.public_ip), "{o:?}");
        assert_eq!(o[3], "3", "EtherIP version: {o:?}");
        let eth_src: Vec<&str> = o[4].split(',').collect();
        let eth_dst: Vec<&str> = o[5].split(',').collect();
        assert_eq!(eth_src.len(), 2, "two Ethernet layers: {o:?}");
        assert_eq!(
            (eth_src[1], eth_dst[1]),
            (mac_a.as_str(), mac_b.as_str()),
            "inner Ethernet: {o:?}"
        );
        // The very frame that entered the TAP: same addresses, sequence and payload.
        assert_eq!(
            (eth_src[1], eth_dst[1], o[7].as_str(), o[8].as_str()),
            (i[0].as_str(), i[1].as_str(), i[2].as_str(), i[3].as_str())
        );
    }
    let problems = lab.teardown();
    assert!(problems.is_empty(), "{problems:?}");
}

/// A frame the test sends from the wireguard-go side: broadcast, a local
/// experimental EtherType, and a marker payload.
fn marker_frame(marker: &str) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x42]);
    f.extend_from_slice(&0x88b5u16.to_be_bytes());
    f.extend_from_slice(marker.as_bytes());
    while f.len() < 60 {
        f.push(0);
    }
    f
}

/// Sends `EtherIP | frame` in IP protocol 97 to `to` from namespace `ns`
/// (there, the route to `to` leads into wireguard-go's TUN device).
fn inject_etherip(ns: &str, to: Ipv4Addr, frame: Vec<u8>) {
    netns::run_in(ns, move || {
        use socket2::{Domain, Protocol, SockAddr, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(97)))?;
        let mut packet = vec![0x30, 0x00];
        packet.extend_from_slice(&frame);
        socket
            .send_to(&packet, &SockAddr::from(std::net::SocketAddrV4::new(to, 0)))
            .map_err(|e| anyhow::anyhow!("sendto {to}: {e}"))?;
        Ok(())
    })
    .unwrap();
}

#[test]
fn wireguard_go_and_hinan_handshake_and_carry_etherip_both_ways() {
    let mut lab = Lab::up(&LabSpec::wan_only()).expect("the lab comes up");
    let sites = lab.vpn_sites();
    let (a, b) = (sites[0].clone(), sites[1].clone());
    let hinan_keys = keypair().unwrap();
    let wg_private = sys::run("wg", &["genkey"]).unwrap().trim().to_owned();
    let wg_public = sys::run_with_input("wg", &["pubkey"], Some(&wg_private))
        .unwrap()
        .trim()
        .to_owned();

    // hinan at A.
    std::fs::create_dir_all(&a.dir).unwrap();
    std::fs::write(
        a.config(),
        format!(
            "[vpn]\ntap = \"{LAB_TAP}\"\ntransport = \"wireguard\"\nlocal = \"{}:{WG_PORT}\"\n\
             private_key = \"{}\"\ntunnel_local = \"10.255.0.1\"\n\n\
             [[vpn.peer]]\nname = \"wireguard-go\"\nendpoint = \"{}:{WG_PORT}\"\n\
             public_key = \"{wg_public}\"\ntunnel_address = \"10.255.0.2\"\n",
            a.public_ip, hinan_keys.private, b.public_ip
        ),
    )
    .unwrap();

    // wireguard-go at B, its UAPI socket named uniquely on this machine.
    let wg_if = format!("wgi{}", std::process::id() % 100_000);
    std::fs::create_dir_all(&b.dir).unwrap();
    let key_file = b.dir.join("wg.key");
    std::fs::write(&key_file, &wg_private).unwrap();
    let wg_log = b.dir.join("wireguard-go.log");
    let pid = sys::spawn_daemon_in(
        &b.ns,
        "wireguard-go".as_ref(),
        &["-f", wg_if.as_str()],
        &wg_log,
    )
    .unwrap();
    lab.record(hinan_lab::lab::procs::ProcRecord::of("b/wireguard-go", pid as i32).unwrap())
        .unwrap();
    sys::wait_for(
        "wireguard-go's TUN device",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || Ok(ip(&b.ns, &["link", "show", &wg_if]).ok().map(drop)),
    )
    .unwrap();
    sys::run_in(
        &b.ns,
        "wg",
        &[
            "set",
            &wg_if,
            "private-key",
            key_file.to_str().unwrap(),
            "listen-port",
            &WG_PORT.to_string(),
            "peer",
            &hinan_keys.public,
            "endpoint",
            &format!("{}:{WG_PORT}", a.public_ip),
            "allowed-ips",
            "10.255.0.1/32",
        ],
    )
    .unwrap();
    ip(&b.ns, &["addr", "add", "10.255.0.2/24", "dev", &wg_if]).unwrap();
    ip(&b.ns, &["link", "set", &wg_if, "up"]).unwrap();

    let mut rec = vpn::start_endpoint(&a, LAB_TAP, None).unwrap();
    lab.record(rec.clone()).unwrap();
    tap_address(&a, "10.99.0.1/24");

    // 1. wireguard-go initiates: EtherIP injected at B reaches hinan's TAP.
    let marker = format!("hinan-interop-{}", std::process::id());
    let tap_file = scratch(&lab, "wg-tap.pcap");
    let tap_cap = Capture::start(&a.ns, LAB_TAP, "ether proto 0x88b5", &tap_file).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut arrived = false;
    while !arrived && Instant::now() < deadline {
        inject_etherip(&b.ns, Ipv4Addr::new(10, 255, 0, 1), marker_frame(&marker));
        std::thread::sleep(Duration::from_millis(300));
        let status = vpn::status(&a).unwrap();
        arrived = status["local_port"]["tx_frames"].as_u64().unwrap_or(0) > 0
            && status["peers"][0]["rx_packets"].as_u64().unwrap_or(0) > 0;
    }
    let tap_file = tap_cap.finish();
    assert!(
        arrived,
        "no injected frame reached hinan's bridge: {}",
        vpn::status(&a).unwrap()
    );
    let seen = tshark_fields(
        &tap_file,
        "eth.type == 0x88b5",
        &["eth.src", "eth.dst", "data.data"],
    )
    .unwrap();
    let want_hex: String = marker.bytes().map(|b| format!("{b:02x}")).collect();
    assert!(
        seen.iter().any(|f| f[0] == "02:00:00:00:00:42"
            && f[1] == "ff:ff:ff:ff:ff:ff"
            && f[2].starts_with(&want_hex)),
        "the injected frame is not on hinan's TAP as sent: {seen:?}"
    );
    let handshakes = sys::run_in(&b.ns, "wg", &["show", &wg_if, "latest-handshakes"]).unwrap();
    assert!(
        handshakes
            .split_whitespace()
            .nth(1)
            .is_some_and(|t| t != "0"),
        "wireguard-go reports no handshake: {handshakes}"
    );

    // 2. hinan sends: its EtherIP comes out of wireguard-go's TUN intact.
    let capture_dir = scratch(&lab, "");
    let check_tun = |what: &str| {
        let tun_file = capture_dir.join(format!("wg-tun-{what}.pcap"));
        let cap = Capture::start(&b.ns, &wg_if, "proto 97", &tun_file).unwrap();
        // ARP for an absent host: broadcast frames hinan floods to its peer.
        let _ = sys::run_in(
            &a.ns,
            "ping",
            &["-c", "2", "-i", "0.3", "-W", "1", "10.99.0.77"],
        );
        let tun_file = cap.finish();
        let got = tshark_fields(
            &tun_file,
            "etherip && arp",
            &[
                "ip.src",
                "ip.dst",
                "etherip.ver",
                "eth.src",
                "arp.src.proto_ipv4",
                "arp.dst.proto_ipv4",
            ],
        )
        .unwrap();
        let mac_a = mac_of(&a.ns, LAB_TAP);
        assert!(
            got.iter().any(|f| f[0] == "10.255.0.1"
                && f[1] == "10.255.0.2"
                && f[2] == "3"
                && f[3] == mac_a
                && f[4] == "10.99.0.1"
                && f[5] == "10.99.0.77"),
            "{what}: no intact EtherIP ARP from hinan on wireguard-go's TUN: {got:?}"
        );
    };
    check_tun("same-session");

    // 3. hinan initiates: a fresh hinan process (no session) sends first.
    rec.stop(Duration::from_secs(2));
    sys::wait_for(
        "the old TAP to go",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || Ok(ip(&a.ns, &["link", "show", LAB_TAP]).is_err().then_some(())),
    )
    .unwrap();
    rec = vpn::start_endpoint(&a, LAB_TAP, None).unwrap();
    lab.record(rec).unwrap();
    tap_address(&a, "10.99.0.1/24");
    check_tun("hinan-initiated");
    let status = vpn::status(&a).unwrap();
    assert!(
        status["peers"][0]["last_handshake_secs"].as_f64().is_some(),
        "hinan reports no handshake: {status}"
    );

    let problems = lab.teardown();
    assert!(problems.is_empty(), "{problems:?}");
}
