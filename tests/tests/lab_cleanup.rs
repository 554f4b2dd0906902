//! Clean-up: a lab removes everything it made when dropped, and a lab left by a
//! crashed run (its owner gone, never dropped) is found and removed by the next
//! lab that starts, processes included, killed by recorded PID.

use std::process::Command;

use hinan_lab::lab::procs::ProcRecord;
use hinan_lab::lab::run::RunDir;
use hinan_lab::lab::wan::{self, LinkImpairment, WanState};
use hinan_lab::{Lab, LabSpec};

fn wan_lab() -> Lab {
    Lab::up(&LabSpec::wan_only()).expect("the lab comes up")
}

#[test]
fn dropping_a_lab_removes_its_namespaces_and_processes() {
    let mut lab = wan_lab();
    let mut want = WanState::default();
    want.set_link(
        "a",
        LinkImpairment {
            delay_ms: 5,
            ..Default::default()
        },
    );
    wan::apply(&mut lab, &want).unwrap();
    let footprint = lab.footprint();
    assert!(
        footprint.namespaces.len() >= 4,
        "{:?}",
        footprint.namespaces
    );
    assert!(footprint.processes.iter().any(|p| p.role == "wan/delay-a"));
    drop(lab);
    let left = footprint.leftovers();
    assert!(left.is_empty(), "left after drop: {left:?}");
}

#[test]
fn a_crashed_run_is_removed_by_the_next_lab() {
    let mut crashed = wan_lab();
    let mut want = WanState::default();
    want.set_link(
        "b",
        LinkImpairment {
            delay_ms: 5,
            ..Default::default()
        },
    );
    wan::apply(&mut crashed, &want).unwrap();
    let footprint = crashed.footprint();
    assert!(
        footprint
            .processes
            .iter()
            .any(|p| p.role == "wan/delay-b" && p.alive()),
        "the relay should run"
    );

    // Make the run look like one whose owner died without dropping it: its
    // owner becomes a process that has exited, and the handle is forgotten.
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id() as i32;
    let gone = ProcRecord::of("owner", pid);
    child.wait().unwrap();
    let mut run = RunDir::open(&footprint.run_dir).unwrap();
    run.manifest.owner = gone.or(Some(ProcRecord {
        role: "owner".into(),
        pid,
        start: 0,
    }));
    run.save().unwrap();
    std::mem::forget(crashed);

    let next = wan_lab();
    let left = footprint.leftovers();
    assert!(
        left.is_empty(),
        "the next lab left these of the crashed run: {left:?}"
    );
    // The new lab itself is intact: its namespaces still exist.
    let own = next.footprint();
    assert!(own
        .namespaces
        .iter()
        .all(|n| hinan_lab::lab::run::netns_exists(n)));
}
