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
