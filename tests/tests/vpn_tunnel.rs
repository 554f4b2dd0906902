//! hinan's L2 VPN between two campus edges over the lab's WAN: recovery
//! after the WAN link is cut and restored, and key rotation on reload
//! without dropping the tunnel.

use std::time::{Duration, Instant};

use hinan_lab::lab::sys::{self, ip};
use hinan_lab::lab::vpn::{self, MeshOptions, VpnSite, LAB_TAP};
use hinan_lab::lab::wan::{self, LinkImpairment, WanState};
use hinan_lab::lab::SegmentLink;
use hinan_lab::{Lab, LabSpec};

/// A two-campus WAN with hinan's VPN at each edge, TAP addresses
/// 10.99.0.1 (A) and 10.99.0.2 (B).
fn vpn_lab(link: SegmentLink) -> (Lab, Vec<VpnSite>, Vec<hinan_lab::lab::procs::ProcRecord>) {
    let mut lab = Lab::up(&LabSpec::wan_only()).expect("the lab comes up");
    let sites = lab.vpn_sites();
    vpn::write_mesh(&sites, &MeshOptions::new(link)).unwrap();
    let mut recs = Vec::new();
    for (i, site) in sites.iter().enumerate() {
        let rec = vpn::start_endpoint(site, LAB_TAP, None).unwrap();
        lab.record(rec.clone()).unwrap();
        recs.push(rec);
        ip(
            &site.ns,
            &[
                "addr",
                "add",
                &format!("10.99.0.{}/24", i + 1),
                "dev",
                LAB_TAP,
            ],
        )
        .unwrap();
    }
    (lab, sites, recs)
}

fn ping_once(ns: &str, to: &str, wait: &str) -> bool {
    sys::run_in(ns, "ping", &["-c", "1", "-W", wait, to]).is_ok()
}

/// Cuts A's WAN link for `cut`, restores it, and returns how long after
/// the restoration the tunnel carried a ping again.
fn cut_and_measure(link: SegmentLink, cut: Duration) -> Duration {
    let (mut lab, sites, _) = vpn_lab(link);
    let a = sites[0].clone();
    assert!(
        ping_once(&a.ns, "10.99.0.2", "3"),
        "the tunnel never carried a ping"
    );

    let mut down = WanState::default();
    down.set_link(
        "a",
        LinkImpairment {
            down: true,
            ..LinkImpairment::default()
        },
    );
    wan::apply(&mut lab, &down).unwrap();
    // Traffic keeps trying during the cut, as users would.
    let until = Instant::now() + cut;
    let mut crossed = 0;
    while Instant::now() < until {
        crossed += u32::from(ping_once(&a.ns, "10.99.0.2", "1"));
    }
    assert_eq!(crossed, 0, "pings crossed a cut WAN link");

    wan::apply(&mut lab, &WanState::default()).unwrap();
    let restored = Instant::now();
    let deadline = restored + Duration::from_secs(10);
    let mut back = None;
    while Instant::now() < deadline {
        if ping_once(&a.ns, "10.99.0.2", "0.2") {
            back = Some(restored.elapsed());
            break;
        }
    }
    let back = back.unwrap_or_else(|| {
        panic!(
            "over {link}: no ping 10 s after the WAN link came back; A: {}",
            vpn::status(&a).unwrap()
        )
    });
    let problems = lab.teardown();
    assert!(problems.is_empty(), "{problems:?}");
    back
}

#[test]
fn wireguard_tunnel_recovers_within_2s_of_the_wan_returning() {
    let back = cut_and_measure(SegmentLink::VpnWireGuard, Duration::from_secs(6));
    eprintln!(
        "wireguard: tunnel back {:.0} ms after the WAN link",
        back.as_secs_f64() * 1e3
    );
    assert!(back < Duration::from_secs(2), "back after {back:?}");
}

#[test]
fn raw_etherip_tunnel_recovers_within_2s_of_the_wan_returning() {
    let back = cut_and_measure(SegmentLink::VpnRaw, Duration::from_secs(3));
    eprintln!(
        "raw: tunnel back {:.0} ms after the WAN link",
        back.as_secs_f64() * 1e3
    );
    assert!(back < Duration::from_secs(2), "back after {back:?}");
}

/// Replaces the `private_key = …` line (A) or the peer's `public_key = …`
/// line (B) of a site's config.
fn set_line(site: &VpnSite, key: &str, value: &str) {
    let text = std::fs::read_to_string(site.config()).unwrap();
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with(&format!("{key} = ")) {
                format!("{key} = \"{value}\"")
            } else {
                l.to_owned()
            }
        })
        .collect();
    std::fs::write(site.config(), out.join("\n") + "\n").unwrap();
}

fn hup(rec: &hinan_lab::lab::procs::ProcRecord) {
    // SAFETY: signalling a process this test started, checked by start time.
    assert!(rec.alive(), "{} is gone", rec.role);
    unsafe { libc::kill(rec.pid, libc::SIGHUP) };
}

type Pinger = std::thread::JoinHandle<anyhow::Result<hinan_lab::lab::wan::PingStats>>;

/// `count` pings from A to B, 20 ms apart, on a thread of their own.
fn pings(a: &VpnSite, count: u32) -> Pinger {
    let ns = a.ns.clone();
    std::thread::spawn(move || {
        hinan_lab::lab::wan::ping(&ns, "10.99.0.2", count, Duration::from_millis(20))
    })
}

/// Waits for the pings and returns how many were lost during `what`.
fn lost_pings(pinger: Pinger, what: &str) -> u32 {
    let stats = pinger.join().unwrap().unwrap();
    let lost = stats.sent - stats.received;
    eprintln!("{what}: {lost} of {} pings lost", stats.sent);
    lost
}

#[test]
fn key_rotation_on_reload_keeps_the_tunnel_up() {
    let (mut lab, sites, recs) = vpn_lab(SegmentLink::VpnWireGuard);
    let (a, b) = (sites[0].clone(), sites[1].clone());
    assert!(
        ping_once(&a.ns, "10.99.0.2", "3"),
        "the tunnel never carried a ping"
    );
    let old_public = vpn::status(&a).unwrap()["public_key"].clone();

    // 200 pings, 20 ms apart, span both reloads.
    let pinger = pings(&a, 200);
    std::thread::sleep(Duration::from_millis(500));
    let new = vpn::keypair().unwrap();
    // A rotates first; B still knows A's old key for a second.
    set_line(&a, "private_key", &new.private);
    hup(&recs[0]);
    std::thread::sleep(Duration::from_secs(1));
    set_line(&b, "public_key", &new.public);
    hup(&recs[1]);
    let lost = lost_pings(pinger, "the rotation");

    let status_a = vpn::status(&a).unwrap();
    let status_b = vpn::status(&b).unwrap();
    assert_eq!(
        status_a["public_key"],
        new.public.as_str(),
        "A did not take its new key"
    );
    assert_ne!(status_a["public_key"], old_public);
    assert_eq!(
        status_b["peers"][0]["public_key"],
        new.public.as_str(),
        "B does not know A's new key"
    );
    // The new sessions are up: both handshook after the rotation.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let sa = vpn::status(&a).unwrap();
        let sb = vpn::status(&b).unwrap();
        let fresh = |s: &serde_json::Value| {
            s["peers"][0]["last_handshake_secs"]
                .as_f64()
                .is_some_and(|t| t < 10.0)
        };
        if fresh(&sa) && fresh(&sb) && ping_once(&a.ns, "10.99.0.2", "1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no fresh session after the rotation: A {sa} B {sb}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        lost <= 4,
        "the rotation dropped the tunnel: {lost} pings lost"
    );
    // Once the rotation completes, A's previous session is gone.
    sys::wait_for(
        "the rotation to complete at A",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || Ok((vpn::status(&a)?["peers"][0]["rotating"] == false).then_some(())),
    )
    .unwrap();

    // A second rotation in which A changes its key twice before B hears of
    // either: the session still in use must survive the intermediate key.
    let pinger = pings(&a, 150);
    std::thread::sleep(Duration::from_millis(300));
    let middle = vpn::keypair().unwrap();
    set_line(&a, "private_key", &middle.private);
    hup(&recs[0]);
    std::thread::sleep(Duration::from_millis(500));
    let last = vpn::keypair().unwrap();
    set_line(&a, "private_key", &last.private);
    hup(&recs[0]);
    std::thread::sleep(Duration::from_millis(500));
    set_line(&b, "public_key", &last.public);
    hup(&recs[1]);
    let lost = lost_pings(pinger, "the double rotation");
    assert!(
        lost <= 4,
        "the double rotation dropped the tunnel: {lost} pings lost"
    );
    sys::wait_for(
        "the second rotation to complete",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let sa = vpn::status(&a)?;
            Ok(
                (sa["peers"][0]["rotating"] == false && sa["public_key"] == last.public.as_str())
                    .then_some(()),
            )
        },
    )
    .unwrap();
    assert!(
        ping_once(&a.ns, "10.99.0.2", "1"),
        "no ping after the second rotation"
    );
    let problems = lab.teardown();
    assert!(problems.is_empty(), "{problems:?}");
}
