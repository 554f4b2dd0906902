//! Failure detection and P1/P2 service monitors, measured in the lab with the
//! real appliances (A and B at the campuses, W the witness), the real guest
//! at campus A, and two heartbeat paths between A and B (the WAN, and the
//! service segment, here on a line of its own beside the WAN).
//!
//! The detection trials restart A twenty times in a row; the cluster runs with
//! a 200 ms damping hold (400 ms at most) so that restarts are not held for
//! the default's growing 1–32 s. Detection itself uses the defaults
//! (20 ms × 12 = 240 ms).

use std::time::Duration;

use hinan_lab::bench::cluster::{self as clusterbench, unix_us};
use hinan_lab::bench::stats::{median, percentile};
use hinan_lab::lab::guest;
use hinan_lab::lab::probe::http_get;
use hinan_lab::lab::wan::{self, WanState};
use hinan_lab::lab::SegmentLink;
use hinan_lab::{Lab, LabSpec, VmSpec};
use hinan_orchestrator::core::state::StorageMode;

#[test]
fn site_and_link_faults_and_p1_p2_monitors() {
    let image = guest::ensure().expect("the guest image builds");
    // The segment path must be independent of the WAN for a single cut to
    // be a link fault: the veth star stands for a second line between the
    // campuses (over the VPN, the segment would share the WAN's fate).
    let mut lab = Lab::up(&LabSpec {
        witness: true,
        segment: SegmentLink::Veth,
        ..LabSpec::default()
    })
    .expect("the lab comes up");
    let vm = VmSpec::default();
    lab.start_vm("a", &vm, &image)
        .expect("the guest starts at A");
    lab.wait_http(&vm.url(), Duration::from_secs(90))
        .expect("the guest answers");
    let cluster = lab
        .start_cluster("damping_hold_ms = 200\ndamping_max_hold_ms = 400")
        .expect("the appliances agree on a leader");
    let (a, b, w) = (
        cluster.get("a").unwrap().clone(),
        cluster.get("b").unwrap().clone(),
        cluster.get("w").unwrap().clone(),
    );

    // --- Site fault: kill -9 A's appliance; B and W report A's site down.
    let trials = clusterbench::detection_trials(&mut lab, &cluster, "a", &["b", "w"], 20).unwrap();
    let (b_ms, w_ms) = (&trials["b"], &trials["w"]);
    let (mb, mw) = (median(b_ms).unwrap(), median(w_ms).unwrap());
    eprintln!(
        "site-down detection over 20 trials: B median {mb:.0} ms p99 {:.0} ms; W median {mw:.0} ms p99 {:.0} ms",
        percentile(b_ms, 99.0).unwrap(),
        percentile(w_ms, 99.0).unwrap()
    );
    assert!(
        mb < 300.0 && mw < 300.0,
        "median detection not under 300 ms: B {b_ms:?} W {w_ms:?}"
    );

    // --- Link fault: cut only the WAN between A and B; the segment path stays.
    let (sb, sw) = (b.last_event().unwrap(), w.last_event().unwrap());
    let mut cut = WanState::default();
    cut.partition("a", "b", true);
    wan::apply(&mut lab, &cut).unwrap();
    let e = b
        .wait_event(sb, "path-down", Some(a.id), Duration::from_secs(3))
        .expect("B sees the WAN path to A down");
    assert_eq!(e.path.as_deref(), Some("wan"));
    std::thread::sleep(Duration::from_millis(600));
    let peer_a = b
        .status()
        .unwrap()
        .peers
        .into_iter()
        .find(|p| p.id == a.id)
        .unwrap();
    assert_eq!(
        peer_a.health, "degraded",
        "B should see a link fault to A: {peer_a:?}"
    );
    assert_eq!(peer_a.paths.get("segment"), Some(&true));
    assert!(
        b.events(sb).unwrap().iter().all(|e| e.kind != "site-down"),
        "a single cut path was reported as a site fault"
    );
    assert!(w
        .events(sw)
        .unwrap()
        .iter()
        .all(|e| e.kind != "site-down" && e.kind != "path-down"));
    wan::apply(&mut lab, &WanState::default()).unwrap();
    b.wait_event(sb, "path-up", Some(a.id), Duration::from_secs(5))
        .expect("the WAN path comes back");

    // --- P1/P2: register the sites and the VM; one campus appliance watches it.
    cluster
        .wait_leader(&["a", "b", "w"], Duration::from_secs(10))
        .unwrap();
    a.register_lab_vm(&vm, StorageMode::Local)
        .expect("sites and VM registered");
    let watchers = || -> Vec<String> {
        [&a, &b, &w]
            .iter()
            .filter(|x| {
                x.status()
                    .map(|s| s.watching.contains(&vm.name))
                    .unwrap_or(false)
            })
            .map(|x| x.site.clone())
            .collect()
    };
    let p1 = hinan_lab::lab::sys::wait_for(
        "one watcher",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            let ws = watchers();
            Ok((ws.len() == 1).then(|| ws[0].clone()))
        },
    )
    .unwrap();
    assert_ne!(p1, "w", "the witness runs no dataplane and watches nothing");
    let (p1, p2) = if p1 == "a" {
        (a.clone(), b.clone())
    } else {
        (b.clone(), a.clone())
    };

    // The guest's HTTP service fails: its watcher declares it failed.
    let s1 = p1.last_event().unwrap();
    let (status, _) = http_get(
        &lab.topo.client.ns,
        &format!("http://{}/cgi-bin/stop-httpd?3", vm.ip),
        Duration::from_secs(3),
    )
    .expect("the guest takes the stop request");
    assert_eq!(status, 200);
    let stopped_at = unix_us() + 200_000;
    let failed = p1
        .wait_event(s1, "vm-failed", None, Duration::from_secs(5))
        .expect("P1 declares the VM failed");
    eprintln!(
        "HTTP service failure detected by P1 ({}) {:.0} ms after it stopped: {}",
        p1.site,
        failed.at_unix_us.saturating_sub(stopped_at) as f64 / 1000.0,
        failed.detail
    );
    hinan_lab::lab::sys::wait_for(
        "the failure in the replicated state",
        Duration::from_secs(3),
        Duration::from_millis(20),
        || {
            Ok(p2
                .state()?
                .vm_health
                .get(&vm.name)
                .filter(|h| !h.0 && h.2 == p1.id)
                .map(|_| ()))
        },
    )
    .unwrap();
    p1.wait_event(failed.seq, "vm-recovered", None, Duration::from_secs(10))
        .expect("the VM recovers");

    // The P1 watcher is killed: P2 takes over within one detection interval.
    let s2 = p2.last_event().unwrap();
    let t0 = unix_us();
    lab.kill_appliance(&p1, libc::SIGKILL).unwrap();
    let took = p2
        .wait_event(s2, "took-over", Some(p1.id), Duration::from_secs(3))
        .expect("P2 takes over");
    let took_ms = took.at_unix_us.saturating_sub(t0) as f64 / 1000.0;
    eprintln!(
        "P2 ({}) took over {took_ms:.0} ms after P1 was killed",
        p2.site
    );
    assert!(
        took_ms < 300.0,
        "P2 took over after {took_ms:.0} ms, not within one detection interval"
    );
    assert!(p2.status().unwrap().watching.contains(&vm.name));

    let footprint = lab.footprint();
    assert!(lab.teardown().is_empty());
    assert!(
        footprint.leftovers().is_empty(),
        "{:?}",
        footprint.leftovers()
    );
}
