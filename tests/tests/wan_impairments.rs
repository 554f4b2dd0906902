//! The lab's WAN impairments act as specified: a partition stops everything
//! between two sites, loss drops about the share set, delay adds about the
//! delay set to the round-trip time. Needs root, nftables and iputils ping.
//! Each test builds its own lab with unique names, so they run in parallel.

use std::time::Duration;

use hinan_lab::lab::wan::{self, ping, LinkImpairment, WanState};
use hinan_lab::{Lab, LabSpec};

fn wan_lab() -> Lab {
    Lab::up(&LabSpec::wan_only()).expect("the lab comes up")
}

#[test]
fn partition_between_a_and_b_stops_everything_between_them_only() {
    let mut lab = wan_lab();
    let (a, b) = (
        lab.campus("a").unwrap().clone(),
        lab.campus("b").unwrap().clone(),
    );
    let fast = Duration::from_millis(20);
    assert_eq!(
        ping(&a.ns, &b.public_ip.to_string(), 10, fast)
            .unwrap()
            .received,
        10
    );

    let mut want = WanState::default();
    want.partition("a", "b", true);
    wan::apply(&mut lab, &want).unwrap();
    let ab = ping(&a.ns, &b.public_ip.to_string(), 20, fast).unwrap();
    let ba = ping(&b.ns, &a.public_ip.to_string(), 20, fast).unwrap();
    assert_eq!(
        (ab.received, ba.received),
        (0, 0),
        "packets crossed the partition"
    );
    // Only A-B is cut: both still reach the client.
    let cl = lab.topo.client.ip.to_string();
    assert_eq!(ping(&a.ns, &cl, 10, fast).unwrap().received, 10);
    assert_eq!(ping(&b.ns, &cl, 10, fast).unwrap().received, 10);

    wan::apply(&mut lab, &WanState::default()).unwrap();
    assert_eq!(
        ping(&a.ns, &b.public_ip.to_string(), 10, fast)
            .unwrap()
            .received,
        10,
        "the partition did not heal"
    );

    // A cut link (down) isolates the site from everyone.
    let mut want = WanState::default();
    want.set_link(
        "b",
        LinkImpairment {
            down: true,
            ..Default::default()
        },
    );
    wan::apply(&mut lab, &want).unwrap();
    assert_eq!(
        ping(&a.ns, &b.public_ip.to_string(), 10, fast)
            .unwrap()
            .received,
        0
    );
    assert_eq!(
        ping(&lab.topo.client.ns, &b.public_ip.to_string(), 10, fast)
            .unwrap()
            .received,
        0
    );
}

#[test]
fn ten_percent_loss_loses_about_ten_percent_of_probes() {
    let mut lab = wan_lab();
    let b = lab.campus("b").unwrap().public_ip.to_string();
    let mut want = WanState::default();
    want.set_link(
        "b",
        LinkImpairment {
            loss_pct: 10.0,
            ..Default::default()
        },
    );
    wan::apply(&mut lab, &want).unwrap();
    // 1000 probes: the binomial standard deviation is 0.95 points, so the
    // tolerance of +-4 points is over four deviations wide.
    let stats = ping(&lab.topo.client.ns, &b, 1000, Duration::from_millis(2)).unwrap();
    let loss = stats.loss_pct();
    eprintln!(
        "10 % loss set: {} of {} probes lost ({loss:.1} %)",
        stats.sent - stats.received,
        stats.sent
    );
    assert_eq!(stats.sent, 1000);
    assert!(
        (6.0..=14.0).contains(&loss),
        "loss {loss:.1} % is not 10 +- 4 %"
    );

    wan::apply(&mut lab, &WanState::default()).unwrap();
    let clean = ping(&lab.topo.client.ns, &b, 200, Duration::from_millis(2)).unwrap();
    assert_eq!(clean.received, 200, "loss remained after clearing it");
}

#[test]
fn twenty_ms_delay_raises_the_round_trip_by_about_twenty_ms() {
    let mut lab = wan_lab();
    let b = lab.campus("b").unwrap().public_ip.to_string();
    let cl = lab.topo.client.ns.clone();
    let step = Duration::from_millis(20);
    let base = ping(&cl, &b, 30, step)
        .unwrap()
        .median_rtt_ms()
        .expect("replies");

    let mut want = WanState::default();
    want.set_link(
        "b",
        LinkImpairment {
            delay_ms: 20,
            ..Default::default()
        },
    );
    wan::apply(&mut lab, &want).unwrap();
    let stats = ping(&cl, &b, 30, step).unwrap();
    assert_eq!(stats.received, 30, "the delay relay lost packets");
    let delayed = stats.median_rtt_ms().unwrap();
    let rise = delayed - base;
    eprintln!(
        "median RTT {base:.2} ms -> {delayed:.2} ms with 20 ms delay set (rise {rise:.2} ms)"
    );
    assert!(
        (18.0..=30.0).contains(&rise),
        "RTT rose by {rise:.2} ms, not about 20 ms"
    );

    // Back to normal once cleared, and the relay process is gone.
    let relay = lab
        .footprint()
        .processes
        .into_iter()
        .find(|p| p.role == "wan/delay-b")
        .expect("relay recorded");
    wan::apply(&mut lab, &WanState::default()).unwrap();
    let after = ping(&cl, &b, 30, step).unwrap().median_rtt_ms().unwrap();
    assert!(
        after < base + 5.0,
        "RTT stayed at {after:.2} ms after clearing the delay"
    );
    assert!(
        !relay.alive(),
        "the delay relay still runs after the delay was cleared"
    );
}

/// Bytes per second of one TCP stream from namespace `from` to `to`:`port`
/// (a listener in namespace `to_ns`), sent for `secs`, as the receiver saw it.
fn tcp_throughput(from: &str, to_ns: &str, to: std::net::Ipv4Addr, secs: f64) -> f64 {
    use hinan_lab::lab::netns;
    use std::io::{Read, Write};
    use std::net::{SocketAddrV4, TcpListener, TcpStream};
    use std::time::Instant;
    let addr = SocketAddrV4::new(to, 47_001);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = netns::spawn_in(to_ns, move || {
        let listener = TcpListener::bind(addr)?;
        ready_tx.send(()).ok();
        let (mut stream, _) = listener.accept()?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = vec![0u8; 1 << 16];
        let (mut total, mut first) = (0u64, None);
        loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            first.get_or_insert_with(Instant::now);
            total += n as u64;
        }
        let elapsed = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
        Ok(total as f64 / elapsed.max(1e-3))
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the receiver listens");
    netns::run_in(from, move || {
        let mut stream = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5))?;
        let chunk = vec![0x5au8; 1 << 16];
        let end = Instant::now() + Duration::from_secs_f64(secs);
        while Instant::now() < end {
            stream.write_all(&chunk)?;
        }
        Ok(())
    })
    .expect("the sender sends");
    receiver
        .join()
        .expect("the receiver thread")
        .expect("the receiver receives")
}

#[test]
fn a_rate_limit_caps_the_bandwidth_toward_a_link_and_lifts() {
    let mut lab = wan_lab();
    let b = lab.campus("b").unwrap().clone();
    let client = lab.topo.client.ns.clone();
    let mut want = WanState::default();
    want.set_link(
        "b",
        LinkImpairment {
            rate_mbit: Some(20),
            ..Default::default()
        },
    );
    wan::apply(&mut lab, &want).unwrap();
    let limited = tcp_throughput(&client, &b.ns, b.public_ip, 3.0) * 8.0 / 1e6;
    assert!(
        (12.0..=22.0).contains(&limited),
        "20 Mbit/s toward b gave {limited:.1} Mbit/s"
    );
    wan::apply(&mut lab, &WanState::default()).unwrap();
    let free = tcp_throughput(&client, &b.ns, b.public_ip, 1.0) * 8.0 / 1e6;
    assert!(free > 200.0, "unlimited toward b gave {free:.1} Mbit/s");
    eprintln!("toward b: {limited:.1} Mbit/s at 20 Mbit/s, {free:.0} Mbit/s unlimited");
}
