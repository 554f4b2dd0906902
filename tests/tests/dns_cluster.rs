//! End to end: every appliance of the real cluster serves the LMS name; the
//! guest live-migrates from campus A to campus B across hinan's L2 VPN, the
//! VPN's bridges see its MAC arrive at B and the appliances commit its new
//! location, and the answer changes at every appliance. Boots the guest, so
//! it runs alone (.ci/nextest.toml).

use std::time::{Duration, Instant};

use hinan_lab::lab::cluster::Cluster;
use hinan_lab::lab::{guest, sys};
use hinan_lab::{Lab, LabSpec, VmSpec};
use hinan_orchestrator::core::state::StorageMode;

const NAME: &str = "lms.univ-a.example";

const DNS: &str = r#"
[dns]
listen = ["0.0.0.0:53"]
udp_threads = 1
fallback = ["192.0.2.80"]

[[dns.zone]]
origin = "univ-a.example"
ns = ["ns1.univ-a.example"]
"#;

/// The addresses appliance at `site` answers for the LMS, asked with kdig in its namespace.
fn answer(cluster: &Cluster, site: &str) -> Vec<String> {
    cluster.get(site).unwrap().dns_answer(NAME)
}

fn wait_answer(cluster: &Cluster, site: &str, want: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = answer(cluster, site);
        if got == [want] {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{site} answers {got:?}, not {want}, after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_live_migration_changes_the_answer_at_every_appliance_once_the_vpn_sees_it() {
    let image = guest::ensure().expect("the guest image builds");
    let mut lab = Lab::up(&LabSpec {
        witness: true,
        ..LabSpec::default()
    })
    .expect("the lab comes up");
    let cluster = lab
        .start_cluster(DNS)
        .expect("the appliances agree on a leader");
    let sites = ["a", "b", "w"];
    let public = |c: &str| lab.campus(c).unwrap().public_ip.to_string();
    let (addr_a, addr_b) = (public("a"), public("b"));

    let vm = VmSpec::default();
    lab.start_vm("a", &vm, &image)
        .expect("the guest starts at A");
    if let Err(e) = lab.wait_http(&vm.url(), Duration::from_secs(90)) {
        panic!("{e:#}\nconsole at A:\n{}", lab.console_tail("a", &vm.name));
    }

    // Publish the LMS: its VM at A, a public address at each campus.
    let a = cluster.get("a").unwrap();
    a.register_lab_vm(&vm, StorageMode::Shared)
        .expect("sites and VM committed");
    a.publish_lab_vm(NAME, &vm, &[("a", &addr_a), ("b", &addr_b)])
        .expect("service committed");

    // Before: every appliance sends users to campus A.
    for site in sites {
        wait_answer(&cluster, site, &addr_a, Duration::from_secs(5));
    }

    // The VM moves to B. No one tells the cluster: the L2 VPN's bridges see
    // the VM's MAC arrive at B, and the appliances commit its new location.
    let migration = lab
        .migrate_vm(&vm.name, "a", "b")
        .expect("live migration A -> B");
    let migrated = Instant::now();
    assert_eq!(lab.where_running(&vm.name).unwrap().as_deref(), Some("b"));
    sys::wait_for(
        "the VM's new location committed from the VPN's MAC move",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            let state = cluster.get("w")?.state()?;
            Ok((state.vms[&vm.name].site == "b").then_some(()))
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}\nevents at A: {:?}\nevents at B: {:?}",
            cluster.get("a").unwrap().events(0),
            cluster.get("b").unwrap().events(0)
        )
    });
    let committed = Instant::now();
    eprintln!(
        "location committed {:?} after the migration finished",
        committed - migrated
    );
    let moved_events: Vec<String> = ["a", "b"]
        .iter()
        .flat_map(|s| cluster.get(s).unwrap().events(0).unwrap_or_default())
        .filter(|e| e.kind == "vm-moved")
        .map(|e| e.detail)
        .collect();
    assert!(
        !moved_events.is_empty(),
        "no appliance recorded the VM's move"
    );
    let reply_index = cluster.get("w").unwrap().state().unwrap().applied;
    let mut worst = Duration::ZERO;
    for site in sites {
        cluster
            .get(site)
            .unwrap()
            .wait_applied(reply_index, Duration::from_secs(5))
            .expect("applied everywhere");
        worst = worst.max(wait_answer(&cluster, site, &addr_b, Duration::from_secs(2)));
    }
    eprintln!(
        "migration {:.2} s; every appliance answered B {:?} after the commit was seen (slowest poll {:?})",
        migration.wall.as_secs_f64(),
        committed.elapsed(),
        worst
    );
    for site in sites {
        assert_eq!(
            answer(&cluster, site),
            [addr_b.as_str()],
            "{site} after the move"
        );
    }
    let problems = lab.teardown();
    assert!(problems.is_empty(), "teardown problems: {problems:?}");
}
