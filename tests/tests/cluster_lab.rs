//! The appliance cluster in the lab: three real `hinan` processes (campus A,
//! campus B and the witness W) in their namespaces, talking mutual TLS over the
//! lab's WAN. Replication, partitions, crash recovery from disk.

use std::time::{Duration, Instant};

use hinan_lab::bench::cluster as clusterbench;
use hinan_lab::bench::stats::{median, percentile};
use hinan_lab::lab::cluster::Cluster;
use hinan_lab::lab::wan::{self, LinkImpairment, WanState};
use hinan_lab::{Lab, LabSpec};

fn wait_note(cluster: &Cluster, site: &str, text: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    let a = cluster.get(site).unwrap();
    while start.elapsed() < limit {
        if a.has_note(text).unwrap_or(false) {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("{text} did not reach {site} within {limit:?}");
}

#[test]
fn replication_partition_and_recovery_from_disk() {
    let mut lab = Lab::up(&LabSpec {
        hypervisors: false,
        witness: true,
        ..LabSpec::default()
    })
    .expect("the lab comes up");
    let cluster = lab
        .start_cluster("")
        .expect("three appliances agree on a leader");
    let (a, b, w) = (
        cluster.get("a").unwrap().clone(),
        cluster.get("b").unwrap().clone(),
        cluster.get("w").unwrap().clone(),
    );

    // A change committed at A is visible at B and W.
    let r = clusterbench::replication(&cluster, "a", 20).expect("A commits");
    assert!(r.commit_ms.len() >= 10, "too few clean samples: {r:?}");
    eprintln!(
        "replication of {} commits from A: committed median {:.1} ms p99 {:.1} ms; applied at A, B and W median {:.1} ms p99 {:.1} ms",
        r.commit_ms.len(),
        median(&r.commit_ms).unwrap(),
        percentile(&r.commit_ms, 99.0).unwrap(),
        median(&r.everywhere_ms).unwrap(),
        percentile(&r.everywhere_ms, 99.0).unwrap()
    );
    for site in ["b", "w"] {
        assert!(
            cluster.get(site).unwrap().has_note("bench-19").unwrap(),
            "{site} lacks A's change"
        );
    }

    // Partition A off: B and W keep or elect a leader and keep committing.
    let mut want = WanState::default();
    want.partition("a", "b", true);
    want.partition("a", "w", true);
    wan::apply(&mut lab, &want).unwrap();
    let leader = cluster
        .wait_leader(&["b", "w"], Duration::from_secs(10))
        .expect("B and W have a leader");
    assert_ne!(
        leader, a.id,
        "the cut-off appliance still leads the majority"
    );
    b.note("from-b-during-partition", Duration::from_secs(5))
        .expect("B commits during the partition");
    wait_note(
        &cluster,
        "w",
        "from-b-during-partition",
        Duration::from_secs(3),
    );
    // A refuses to commit, and says why.
    let err = a
        .note("from-a-during-partition", Duration::from_secs(2))
        .expect_err("A committed while cut off from the majority")
        .to_string();
    eprintln!("A refuses: {err}");
    assert!(
        err.contains("majority") || err.contains("no leader"),
        "A's refusal does not say why: {err}"
    );
    assert!(!a.has_note("from-b-during-partition").unwrap());
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !b.has_note("from-a-during-partition").unwrap()
            && !w.has_note("from-a-during-partition").unwrap(),
        "what A proposed while cut off was committed during the partition"
    );

    // Heal: A catches up.
    wan::apply(&mut lab, &WanState::default()).unwrap();
    wait_note(
        &cluster,
        "a",
        "from-b-during-partition",
        Duration::from_secs(10),
    );

    // kill -9 B; A and W go on; B restarts from its disk (while still cut
    // off, so what it has can only come from its own log) and then catches up.
    lab.kill_appliance(&b, libc::SIGKILL).unwrap();
    if let Err(e) = a.note("while-b-was-dead", Duration::from_secs(5)) {
        panic!(
            "A and W did not commit without B: {e:#}\nA: {:?}\nW: {:?}\nA sockets:\n{}\nW sockets:\n{}",
            a.status().map(|s| s.raft),
            w.status().map(|s| s.raft),
            hinan_lab::lab::sys::run_in(&a.ns, "ss", &["-tni"]).unwrap_or_default(),
            hinan_lab::lab::sys::run_in(&w.ns, "ss", &["-tni"]).unwrap_or_default(),
        );
    }
    let mut cut = WanState::default();
    cut.set_link(
        "b",
        LinkImpairment {
            down: true,
            ..Default::default()
        },
    );
    wan::apply(&mut lab, &cut).unwrap();
    lab.start_appliance(&cluster, &b).expect("B restarts");
    std::thread::sleep(Duration::from_millis(500));
    let st = b.state().unwrap();
    assert!(
        st.audit
            .iter()
            .any(|e| e.what == "note: from-b-during-partition")
            && st.audit.iter().any(|e| e.what == "note: bench-19"),
        "B did not recover its committed state from its disk (applied {})",
        st.applied
    );
    assert!(!b.has_note("while-b-was-dead").unwrap());
    wan::apply(&mut lab, &WanState::default()).unwrap();
    wait_note(&cluster, "b", "while-b-was-dead", Duration::from_secs(10));

    // Membership at run time: remove B; A and W (2 of 2) go on without it;
    // add it back and it catches up.
    let voters = a.membership(b.id, false).expect("B removed");
    assert_eq!(voters, vec![a.id, w.id]);
    lab.kill_appliance(&b, libc::SIGKILL).unwrap();
    w.note("two-voters", Duration::from_secs(5))
        .expect("A and W commit as the only voters");
    let voters = w.membership(b.id, true).expect("B added back");
    assert_eq!(voters, vec![a.id, b.id, w.id]);
    lab.start_appliance(&cluster, &b).unwrap();
    wait_note(&cluster, "b", "two-voters", Duration::from_secs(10));

    let (sa, sb, sw) = (a.state().unwrap(), b.state().unwrap(), w.state().unwrap());
    let applied = sa.applied.min(sb.applied).min(sw.applied);
    assert!(applied > 10);
    let footprint = lab.footprint();
    assert!(lab.teardown().is_empty());
    assert!(
        footprint.leftovers().is_empty(),
        "{:?}",
        footprint.leftovers()
    );
}

#[test]
fn a_lone_appliance_commits_at_once_and_keeps_its_last_voter() {
    let mut lab = Lab::up(&LabSpec {
        campuses: 1,
        ..LabSpec::wan_only()
    })
    .expect("the lab comes up");
    let cluster = lab
        .start_cluster("")
        .expect("a single appliance leads itself");
    let a = cluster.get("a").unwrap();
    // With one voter a proposal commits inside the call that makes it.
    let r = a
        .note("alone", Duration::from_secs(3))
        .expect("a lone voter commits");
    assert!(r.index > 0);
    assert!(a.has_note("alone").unwrap());
    let err = a
        .membership(a.id, false)
        .expect_err("removed the last voter")
        .to_string();
    assert!(err.contains("no voters"), "{err}");
    let err = a
        .membership(42, true)
        .expect_err("added an unknown appliance")
        .to_string();
    assert!(err.contains("not a [[peer]]"), "{err}");
    assert_eq!(a.status().unwrap().raft.voters, vec![a.id]);
}
