//! The rtnetlink watcher sees, in a lab namespace, the changes benchmarks time
//! failovers by: an address appearing and a link going down. Needs root.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use hinan_lab::lab::rtnl::{RtnlEvent, RtnlWatch};
use hinan_lab::lab::sys::ip;
use hinan_lab::{Lab, LabSpec};

#[test]
fn reports_an_added_address_and_a_link_going_down_in_the_namespace() {
    let lab = Lab::up(&LabSpec {
        hypervisors: false,
        ..LabSpec::default()
    })
    .expect("the lab comes up");
    let b = lab.campus("b").unwrap().clone();
    let wan = lab.topo.wan_ns.clone();
    let at_b = RtnlWatch::start(&b.ns).unwrap();
    let at_wan = RtnlWatch::start(&wan).unwrap();

    let before = Instant::now();
    ip(&b.ns, &["addr", "add", "198.18.200.9/32", "dev", "wan0"]).unwrap();
    let (at, _) = at_b
        .wait_for(Duration::from_secs(2), |e| {
            matches!(e, RtnlEvent::Addr { added: true, addr, prefix_len: 32, .. }
                if *addr == Ipv4Addr::new(198, 18, 200, 9))
        })
        .unwrap()
        .expect("the new address was reported");
    assert!(at >= before && at <= Instant::now());
    // Changes in other namespaces are not reported here.
    assert!(at_wan
        .drain()
        .iter()
        .all(|(_, e)| !matches!(e, RtnlEvent::Addr { .. })));

    ip(&wan, &["link", "set", "to-b", "down"]).unwrap();
    let seen = at_wan
        .wait_for(
            Duration::from_secs(2),
            |e| matches!(e, RtnlEvent::Link { name, up: false, .. } if name == "to-b"),
        )
        .unwrap();
    assert!(seen.is_some(), "the link going down was not reported");
    // B's end of the veth loses its carrier but stays administratively up.
    let carrier_lost = at_b
        .wait_for(Duration::from_secs(2), |e| {
            matches!(e, RtnlEvent::Link { name, up: true, lower_up: false, .. } if name == "wan0")
        })
        .unwrap();
    assert!(
        carrier_lost.is_some(),
        "B's wan0 did not report carrier loss"
    );
}
