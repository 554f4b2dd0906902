//! Deterministic simulation of the appliance cluster: many random schedules of
//! proposals, partitions, message loss, crashes and restarts, each checked for
//! Raft's safety properties and for convergence after healing. A failure prints
//! its seed; `HINAN_SIM_SEED=<seed> cargo test -p hinan-orchestrator --test simulation`
//! replays exactly that schedule.

use hinan_orchestrator::sim::{random_schedule, Sim};
use std::collections::BTreeSet;

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("HINAN_SIM_SEED") {
        return vec![s.parse().expect("HINAN_SIM_SEED is a number")];
    }
    let count: u64 = std::env::var("HINAN_SIM_SCHEDULES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    // A fresh base each run explores new schedules; the seed of any failure is printed.
    let base = std::env::var("HINAN_SIM_BASE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        });
    (0..count)
        .map(|i| base.wrapping_mul(1000).wrapping_add(i))
        .collect()
}

#[test]
fn random_schedules_keep_raft_safe_and_converge() {
    let seeds = seeds();
    let mut totals = hinan_orchestrator::sim::SimStats::default();
    let mut failures = Vec::new();
    for &seed in &seeds {
        match random_schedule(seed, 8_000) {
            Ok(s) => {
                totals.proposals += s.proposals;
                totals.acknowledged += s.acknowledged;
                totals.elections += s.elections;
                totals.crashes += s.crashes;
                totals.partitions += s.partitions;
            }
            Err(v) => {
                eprintln!("FAILED: {v}\n  replay: HINAN_SIM_SEED={seed} cargo test -p hinan-orchestrator --test simulation");
                failures.push(v);
            }
        }
    }
    eprintln!(
        "{} schedules: {} proposals ({} acknowledged), {} elections, {} crashes, {} partitions",
        seeds.len(),
        totals.proposals,
        totals.acknowledged,
        totals.elections,
        totals.crashes,
        totals.partitions
    );
    assert!(
        failures.is_empty(),
        "{} of {} schedules failed; first: {}",
        failures.len(),
        seeds.len(),
        failures[0]
    );
    if seeds.len() > 1 {
        assert!(
            totals.acknowledged > seeds.len() as u64,
            "schedules committed almost nothing: {totals:?}"
        );
        assert!(
            totals.partitions > 0 && totals.crashes > 0,
            "schedules exercised no faults: {totals:?}"
        );
    }
}

#[test]
fn the_minority_side_cannot_commit_and_catches_up_after_healing() {
    let mut sim = Sim::new(7, 3);
    sim.run_until(3_000).unwrap();
    let leader = sim.leader().expect("a leader within 3 s");
    let before = sim.replica(leader).unwrap().state().applied;
    // Isolate the leader: it is the minority now.
    let others: BTreeSet<u64> = sim.ids().into_iter().filter(|&i| i != leader).collect();
    sim.partition(vec![BTreeSet::from([leader]), others.clone()]);
    for _ in 0..5 {
        sim.propose(leader);
    }
    sim.run_until(6_000).unwrap();
    assert_eq!(
        sim.replica(leader).unwrap().state().applied,
        before,
        "the isolated old leader committed"
    );
    let new_leader = sim.leader().expect("the majority elects a leader");
    assert!(others.contains(&new_leader));
    assert!(sim.propose(new_leader), "the majority takes proposals");
    sim.run_until(7_000).unwrap();
    let majority_applied = sim.replica(new_leader).unwrap().state().applied;
    assert!(majority_applied > before, "the majority did not commit");
    sim.heal();
    sim.settle(10_000).unwrap();
    sim.check_converged().unwrap();
    assert!(sim.replica(leader).unwrap().state().applied >= majority_applied);
}

#[test]
fn a_crashed_node_recovers_from_its_log_and_catches_up() {
    let mut sim = Sim::new(11, 3);
    sim.run_until(3_000).unwrap();
    let leader = sim.leader().unwrap();
    for _ in 0..5 {
        sim.propose(leader);
    }
    sim.run_until(4_000).unwrap();
    let victim = sim.ids().into_iter().find(|&i| i != leader).unwrap();
    let applied = sim.replica(victim).unwrap().state().applied;
    assert!(applied >= 5);
    sim.crash(victim);
    for _ in 0..5 {
        sim.propose(leader);
    }
    sim.run_until(5_000).unwrap();
    sim.restart(victim);
    sim.settle(10_000).unwrap();
    sim.check_converged().unwrap();
    assert!(sim.replica(victim).unwrap().state().applied > applied);
}

#[test]
fn a_seed_replays_exactly() {
    let a = random_schedule(424242, 6_000).unwrap();
    let b = random_schedule(424242, 6_000).unwrap();
    assert_eq!(
        (
            a.proposals,
            a.acknowledged,
            a.elections,
            a.crashes,
            a.delivered,
            a.dropped
        ),
        (
            b.proposals,
            b.acknowledged,
            b.elections,
            b.crashes,
            b.delivered,
            b.dropped
        )
    );
}

#[test]
fn a_follower_forwards_proposals_after_a_partition_and_a_crash() {
    for seed in 0..20 {
        let mut sim = Sim::new(100 + seed, 3);
        sim.run_until(3_000).unwrap();
        let old = sim.leader().expect("a leader");
        let others: Vec<u64> = sim.ids().into_iter().filter(|&i| i != old).collect();
        sim.partition(vec![
            BTreeSet::from([old]),
            others.iter().copied().collect(),
        ]);
        sim.propose(old);
        sim.run_until(6_000).unwrap();
        let new = sim.leader().expect("a new leader");
        sim.propose(new);
        sim.run_until(7_000).unwrap();
        sim.heal();
        sim.settle(10_000).unwrap();
        let leader = sim.leader().unwrap();
        let victim = sim
            .ids()
            .into_iter()
            .find(|&i| i != leader && i != old)
            .unwrap_or(others[0]);
        if victim == leader {
            continue;
        }
        sim.crash(victim);
        let proposer = if old != leader {
            old
        } else {
            sim.ids()
                .into_iter()
                .find(|&i| i != leader && i != victim)
                .unwrap()
        };
        let before = sim.replica(proposer).unwrap().state().applied;
        assert!(sim.propose(proposer), "seed {seed}: the follower refused");
        sim.run_until(sim.now_ms() + 2_000).unwrap();
        let after = sim.replica(proposer).unwrap().state().applied;
        assert!(after > before, "seed {seed}: a forwarded proposal did not commit with 2 of 3 up (leader {leader}, proposer {proposer}, crashed {victim})");
    }
}

#[test]
fn voters_are_removed_and_added_at_run_time() {
    let mut sim = Sim::new(21, 3);
    sim.run_until(3_000).unwrap();
    let leader = sim.leader().unwrap();
    let gone = sim.ids().into_iter().find(|&i| i != leader).unwrap();
    assert!(sim.propose_membership(leader, gone, false));
    sim.run_until(4_000).unwrap();
    assert!(
        !sim.replica(leader).unwrap().voters().contains(&gone),
        "the voter was not removed"
    );
    // With two voters left, losing the removed one costs nothing.
    sim.crash(gone);
    let before = sim.replica(leader).unwrap().state().applied;
    assert!(sim.propose(leader));
    sim.run_until(5_000).unwrap();
    assert!(
        sim.replica(leader).unwrap().state().applied > before,
        "2 of 2 voters did not commit"
    );
    // Back in: it restarts from its log and catches up.
    let leader = sim.leader().unwrap();
    assert!(sim.propose_membership(leader, gone, true));
    sim.run_until(6_000).unwrap();
    sim.restart(gone);
    sim.settle(10_000).unwrap();
    sim.check_converged().unwrap();
    assert!(sim.replica(gone).unwrap().voters().contains(&gone));
}

mod detection {
    use super::*;
    use hinan_orchestrator::core::detect::DetectorEvent;

    const VMS: [&str; 6] = ["lms1", "lms2", "lms3", "lms4", "lms5", "lms6"];

    /// The appliances watching `vm` now.
    fn active_watchers(sim: &Sim, vm: &str) -> Vec<u64> {
        sim.ids()
            .into_iter()
            .filter(|&n| sim.is_watching(n, vm))
            .collect()
    }

    fn site_down_at(sim: &Sim, observer: u64, peer: u64, after: u64) -> Option<u64> {
        sim.detections
            .iter()
            .find(|(t, o, e)| {
                *t >= after && *o == observer && *e == DetectorEvent::SiteDown { peer }
            })
            .map(|(t, _, _)| *t)
    }

    #[test]
    fn a_crashed_appliance_is_reported_down_in_time_and_p2_takes_over() {
        for seed in 0..20 {
            let mut sim = Sim::new(500 + seed, 3);
            sim.enable_detection(&VMS).unwrap();
            sim.run_until(2_000).unwrap();
            assert!(
                sim.detections
                    .iter()
                    .all(|(_, _, e)| !matches!(e, DetectorEvent::SiteDown { .. })),
                "seed {seed}: a false site-down before any failure: {:?}",
                sim.detections
            );
            // Every VM has exactly one active watcher, its P1.
            for vm in VMS {
                let w = sim.watchers_of(vm).unwrap();
                let active = active_watchers(&sim, vm);
                assert_eq!(
                    active,
                    vec![w.p1],
                    "seed {seed}: {vm} watched by {active:?}"
                );
            }
            let victim = 1 + seed % 3;
            let t0 = sim.now_ms();
            sim.crash(victim);
            sim.run_until(t0 + 500).unwrap();
            for observer in sim.ids().into_iter().filter(|&n| n != victim) {
                let at = site_down_at(&sim, observer, victim, t0).unwrap_or_else(|| {
                    panic!("seed {seed}: {observer} never reported {victim} down")
                });
                // 240 ms after the last heartbeat heard, and a heartbeat sent just
                // before the crash may still arrive up to 10 ms (the simulated
                // network's largest delay) after it.
                assert!(
                    at - t0 <= 250,
                    "seed {seed}: {observer} reported {victim} down after {} ms",
                    at - t0
                );
            }
            // Its P1 VMs now have their P2 watching, within the same time.
            for vm in VMS {
                let w = sim.watchers_of(vm).unwrap();
                if w.p1 == victim {
                    let p2 = w.p2.unwrap();
                    assert!(
                        sim.is_watching(p2, vm),
                        "seed {seed}: P2 {p2} of {vm} did not take over"
                    );
                    let took = sim
                        .takeovers
                        .iter()
                        .find(|(t, by, v, from)| {
                            *t >= t0 && *by == p2 && v == vm && *from == victim
                        })
                        .expect("a takeover event");
                    assert!(
                        took.0 - t0 <= 250,
                        "seed {seed}: takeover after {} ms",
                        took.0 - t0
                    );
                } else {
                    assert!(
                        sim.is_watching(w.p1, vm),
                        "seed {seed}: {vm}'s live P1 stopped watching"
                    );
                    assert!(
                        !w.p2.is_some_and(|p2| sim.is_watching(p2, vm)),
                        "seed {seed}: {vm} watched twice"
                    );
                }
            }
            // Back: P1 resumes and P2 stands down.
            sim.restart(victim);
            sim.run_until(sim.now_ms() + 3_000).unwrap();
            for vm in VMS {
                let w = sim.watchers_of(vm).unwrap();
                let active = active_watchers(&sim, vm);
                assert_eq!(
                    active,
                    vec![w.p1],
                    "seed {seed}: after the restart {vm} is watched by {active:?}"
                );
            }
        }
    }

    #[test]
    fn five_percent_loss_raises_no_false_site_down() {
        let mut sim = Sim::new(77, 3);
        sim.loss = 0.05;
        sim.enable_detection(&VMS).unwrap();
        sim.run_until(120_000).unwrap();
        let downs: Vec<_> = sim
            .detections
            .iter()
            .filter(|(_, _, e)| {
                matches!(
                    e,
                    DetectorEvent::SiteDown { .. } | DetectorEvent::PathDown { .. }
                )
            })
            .collect();
        assert!(downs.is_empty(), "false downs under 5 % loss: {downs:?}");
        assert!(
            sim.stats.dropped > 1000,
            "the loss did not happen: {:?}",
            sim.stats
        );
    }

    #[test]
    fn a_partition_is_seen_from_both_sides_and_heals() {
        let mut sim = Sim::new(99, 3);
        sim.enable_detection(&VMS).unwrap();
        sim.run_until(2_000).unwrap();
        let t0 = sim.now_ms();
        sim.partition(vec![BTreeSet::from([1]), BTreeSet::from([2, 3])]);
        sim.run_until(t0 + 500).unwrap();
        assert!(site_down_at(&sim, 1, 2, t0).is_some() && site_down_at(&sim, 1, 3, t0).is_some());
        assert!(site_down_at(&sim, 2, 1, t0).is_some() && site_down_at(&sim, 3, 1, t0).is_some());
        assert!(site_down_at(&sim, 2, 3, t0).is_none(), "2 and 3 still talk");
        sim.heal();
        let t1 = sim.now_ms();
        sim.run_until(t1 + 3_000).unwrap();
        let up = sim
            .detections
            .iter()
            .any(|(t, o, e)| *t >= t1 && *o == 2 && *e == DetectorEvent::SiteUp { peer: 1 });
        assert!(up, "2 never saw 1 again after healing");
    }
}

#[test]
fn random_move_schedules_never_migrate_a_vm_twice_and_end_with_true_locations() {
    let seeds: Vec<u64> = seeds()
        .into_iter()
        .take(
            std::env::var("HINAN_SIM_MOVE_SCHEDULES")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(60),
        )
        .collect();
    let mut totals = hinan_orchestrator::sim::MoveStats::default();
    let mut failures = Vec::new();
    for &seed in &seeds {
        match hinan_orchestrator::sim::moves_schedule(seed, 15_000) {
            Ok(s) => {
                totals.plans += s.plans;
                totals.migrations += s.migrations;
                totals.succeeded += s.succeeded;
                totals.failed += s.failed;
                totals.cancelled += s.cancelled;
                totals.resolved += s.resolved;
                totals.results_lost += s.results_lost;
            }
            Err(v) => {
                eprintln!("FAILED: {v}\n  replay: HINAN_SIM_SEED={seed} cargo test -p hinan-orchestrator --test simulation random_move");
                failures.push(v);
            }
        }
    }
    eprintln!("{} move schedules: {totals:?}", seeds.len());
    assert!(
        failures.is_empty(),
        "{} of {} move schedules failed: {:?}",
        failures.len(),
        seeds.len(),
        failures.first()
    );
    if seeds.len() >= 20 {
        assert!(
            totals.succeeded > 0 && totals.failed > 0 && totals.resolved > 0,
            "the schedules exercised too little: {totals:?}"
        );
    }
}
