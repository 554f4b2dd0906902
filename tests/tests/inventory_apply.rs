//! `hinan apply` against a real cluster: a dry run changes nothing, an apply
//! commits the inventory everywhere, a second apply changes nothing, and a
//! bad file is refused with its line, changing nothing. Needs root and
//! network namespaces.

use std::time::Duration;

use hinan_lab::lab::cluster::{write_lab_inventory, Appliance};
use hinan_lab::{Lab, LabSpec, VmSpec};

/// How many inventories the cluster has committed, as `a` sees it.
fn applies(a: &Appliance) -> usize {
    a.state()
        .unwrap()
        .audit
        .iter()
        .filter(|e| e.what.starts_with("inventory applied"))
        .count()
}

#[test]
fn an_inventory_is_applied_once_everywhere_and_a_bad_one_changes_nothing() {
    let mut lab = Lab::up(&LabSpec {
        hypervisors: false,
        witness: true,
        ..LabSpec::default()
    })
    .expect("the lab comes up");
    let cluster = lab.start_cluster("").expect("the cluster has a leader");
    let (a, b) = (
        cluster.get("a").unwrap().clone(),
        cluster.get("b").unwrap().clone(),
    );
    let dir = lab.run.path.join("inventory");
    let file = write_lab_inventory(&dir, ["qemu:///system"; 2], &VmSpec::default()).unwrap();
    let inventory = std::fs::read_to_string(&file).unwrap();
    let file = file.to_string_lossy().into_owned();
    let hinan = |a: &Appliance, args: &[&str]| a.cli(args).unwrap();

    let (ok, out, err) = hinan(&a, &["apply", &file, "--dry-run"]);
    assert!(ok, "dry run failed: {err}");
    assert!(
        out.contains("lms1"),
        "the dry run names no change of lms1: {out}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let state = a.state().unwrap();
    assert!(
        state.vms.is_empty() && state.hosts.is_empty(),
        "a dry run committed something"
    );
    assert_eq!(applies(&a), 0);

    let (ok, out, err) = hinan(&a, &["apply", &file]);
    assert!(ok, "apply failed: {out}{err}");
    let mut everywhere = false;
    for _ in 0..100 {
        if b.state()
            .unwrap()
            .vms
            .get("lms1")
            .is_some_and(|v| v.spec.memory_mib == 128)
        {
            everywhere = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(everywhere, "B never saw the inventory's lms1");
    let (ok, vms, _) = hinan(&b, &["vms", "--json"]);
    assert!(ok && vms.contains("\"lms1\""), "hinan vms at B: {vms}");

    assert_eq!(applies(&a), 1);
    let (ok, out, err) = hinan(&a, &["apply", &file]);
    assert!(ok, "the second apply failed: {err}");
    assert!(out.contains("nothing to change"), "{out}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(applies(&a), 1, "a second apply committed");

    // An unknown key, and a VM that fits no host: refused, nothing applied.
    let bad = inventory.replace(
        "storage = \"shared\"",
        "storage = \"shared\"\ncolour = \"red\"",
    );
    let line = bad.lines().position(|l| l.starts_with("colour")).unwrap() + 1;
    std::fs::write(dir.join("bad.toml"), &bad).unwrap();
    let bad_file = dir.join("bad.toml").to_string_lossy().into_owned();
    let (ok, out, err) = hinan(&a, &["apply", &bad_file]);
    assert!(!ok, "a bad inventory was accepted: {out}");
    assert!(err.contains(&format!("bad.toml:{line}:")), "{err}");
    let huge = inventory.replace("memory_mib = 128", "memory_mib = 65536");
    std::fs::write(dir.join("huge.toml"), &huge).unwrap();
    let huge_file = dir.join("huge.toml").to_string_lossy().into_owned();
    let (ok, _, err) = hinan(&a, &["apply", &huge_file]);
    assert!(!ok && err.contains("lms1"), "{err}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(applies(&a), 1, "a refused apply committed");
    assert_eq!(b.state().unwrap().vms["lms1"].spec.memory_mib, 128);
}
