//! Each appliance reads its campus's libvirt through the API and commits what
//! really runs there: the guest shows as running on host a1 at campus A, and
//! after a live migration on b1 at campus B, in the state every appliance
//! holds. Needs root, Open vSwitch and libvirt (installed by `make test`).

use std::time::{Duration, Instant};

use hinan_lab::lab::cluster::{write_lab_inventory, Appliance};
use hinan_lab::lab::{guest, MIGRATION_PORT};
use hinan_lab::{Lab, LabSpec, VmSpec};
use hinan_orchestrator::shell::libvirt::{
    Hypervisor, Libvirt, MigrationControl, MigrationSettings,
};

fn runs_on(w: &Appliance, host: &str, vm: &str) -> bool {
    w.state()
        .ok()
        .and_then(|s| s.domains.get(host).cloned())
        .is_some_and(|d| d.iter().any(|d| d.name == vm && d.is_running()))
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} not within {limit:?}");
}

#[test]
fn what_runs_on_each_campus_is_read_from_libvirt_and_replicated() {
    let image = guest::ensure().expect("the guest image builds");
    let mut lab = Lab::up(&LabSpec {
        witness: true,
        ..LabSpec::default()
    })
    .expect("the lab comes up");
    let cluster = lab.start_cluster("").expect("the cluster has a leader");
    let vm = VmSpec::default();
    lab.start_vm("a", &vm, &image)
        .expect("the guest starts at A");
    let (a, b) = (
        lab.campus("a").unwrap().clone(),
        lab.campus("b").unwrap().clone(),
    );
    let file = write_lab_inventory(
        &lab.run.path.join("inventory"),
        [&a.libvirt_uri(), &b.libvirt_uri()],
        &vm,
    )
    .unwrap();
    let (ok, _, err) = cluster
        .get("a")
        .unwrap()
        .cli(&["apply", &file.to_string_lossy()])
        .unwrap();
    assert!(ok, "{err}");

    // The witness has no hypervisor; it holds what A's appliance read.
    let w = cluster.get("w").unwrap().clone();
    let seen = wait_until(
        "lms1 running on a1 in W's state",
        Duration::from_secs(15),
        || runs_on(&w, "a1", &vm.name),
    );
    eprintln!("lms1 on a1 in the replicated state {seen:?} after the inventory");
    assert!(
        !runs_on(&w, "b1", &vm.name),
        "B reports a guest it does not run"
    );

    let (hv_a, hv_b) = (
        Libvirt::open(&a.libvirt_uri()).unwrap(),
        Libvirt::open(&b.libvirt_uri()).unwrap(),
    );
    let settings = MigrationSettings {
        stream_uri: Some(format!("tcp://{}:{MIGRATION_PORT}", b.public_ip)),
        ..Default::default()
    };
    hv_a.migrate(
        &vm.name,
        hv_b.uri(),
        &settings,
        &MigrationControl::new(),
        &|_| {},
    )
    .expect("live migration A -> B");
    lab.adopt_vm("b", &vm.name).unwrap();
    let moved = wait_until(
        "lms1 running on b1, gone from a1",
        Duration::from_secs(15),
        || runs_on(&w, "b1", &vm.name) && !runs_on(&w, "a1", &vm.name),
    );
    eprintln!("lms1 on b1 in the replicated state {moved:?} after the migration");
}
