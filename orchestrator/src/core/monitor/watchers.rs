//! Which appliance watches which VM: a P1 and a P2 per VM, balanced over the
//! eligible appliances and deterministic, so every appliance computes the
//! same placement from the same facts.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::core::state::{NodeId, VmId};

/// The appliances that watch one VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Watchers {
    pub p1: NodeId,
    /// `None` only when a single appliance was eligible.
    pub p2: Option<NodeId>,
}

/// Gives every VM a P1 and a P2 watcher among `eligible`, from scratch.
///
/// * Deterministic: duplicates are ignored and the order of either slice does
///   not matter.
/// * Balanced: the numbers of VMs that the eligible appliances hold as P1
///   differ by at most one, and so do the numbers they hold as P2.
/// * `p2 != Some(p1)`; `p2` is `None` only when one appliance is eligible.
/// * Mostly stable: each VM ranks the appliances by a rendezvous hash of (VM,
///   appliance), and the assignment is the one that best follows those
///   rankings within the balance bound (greedy over the pairs by weight, then
///   augmenting paths). When an appliance leaves, its VMs move; because the
///   quotas change, some others do too (about 5% of them change P1 with tens
///   of VMs or more, more with only a few VMs per appliance).
///
/// With no eligible appliance the map is empty: no VM is watched.
pub fn assign_watchers(vms: &[VmId], eligible: &[NodeId]) -> BTreeMap<VmId, Watchers> {
    rebalance_watchers(&BTreeMap::new(), vms, eligible)
}

/// Like [`assign_watchers`] (same guarantees), but a VM keeps its watchers
/// from `previous` whenever they are still eligible and balance allows.
///
/// When an appliance leaves, no other VM changes P1, and another VM's P2
/// changes only where balance forces it (the tests see that only with about
/// one VM per appliance, and then for one VM). A VM whose P1 left gets its P2
/// as P1 where balance allows (most of them), so the appliance that has taken
/// over keeps watching. When an appliance joins, only the VMs it takes as P1
/// change P1. Deterministic for a given `previous`.
///
/// The appliance itself only calls it through [`assign_watchers`], with no
/// previous placement: it places VMs over the *configured* campus appliances,
/// not the live ones, so losing an appliance changes no placement (its P2
/// takes over instead), and nothing replicates a placement in force. It stays
/// as the algorithm [`assign_watchers`] is built on, and for a run-time
/// membership change, where keeping bystanders in place would matter.
fn rebalance_watchers(
    previous: &BTreeMap<VmId, Watchers>,
    vms: &[VmId],
    eligible: &[NodeId],
) -> BTreeMap<VmId, Watchers> {
    let vms: Vec<&str> = vms
        .iter()
        .map(String::as_str)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let nodes: Vec<NodeId> = eligible
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if nodes.is_empty() {
        return BTreeMap::new();
    }
    let weights: Vec<Vec<u64>> = vms
        .iter()
        .map(|vm| nodes.iter().map(|&n| rendezvous_weight(vm, n)).collect())
        .collect();
    let index_of = |n: NodeId| nodes.binary_search(&n).ok();
    // Each VM's previous watchers, as indices into `nodes` where still eligible.
    let before: Vec<Previous> = vms
        .iter()
        .map(|vm| match previous.get(*vm) {
            Some(w) => Previous {
                p1: index_of(w.p1),
                p2: w.p2.and_then(index_of),
            },
            None => Previous::default(),
        })
        .collect();
    let mut picked = pick_watchers(&weights, nodes.len(), &before, true);
    if picked.broken_p2_claims > 0 {
        // Promoting P2s concentrates P1s, which can leave a node whose P2
        // places only VMs that already had a P2 can fill. Without promotion
        // the balance may allow keeping them.
        let unpromoted = pick_watchers(&weights, nodes.len(), &before, false);
        if unpromoted.broken_p2_claims < picked.broken_p2_claims {
            picked = unpromoted;
        }
    }
    vms.iter()
        .zip(picked.p1.iter().zip(picked.p2))
        .map(|(vm, (&first, second))| {
            let watchers = Watchers {
                p1: nodes[first],
                p2: second.map(|i| nodes[i]),
            };
            (vm.to_string(), watchers)
        })
        .collect()
}

/// A VM's previous watchers that are still eligible, as node indices.
#[derive(Debug, Clone, Copy, Default)]
struct Previous {
    p1: Option<usize>,
    p2: Option<usize>,
}

/// Node indices picked for every VM.
#[derive(Debug)]
struct Picked {
    p1: Vec<usize>,
    p2: Vec<Option<usize>>,
    /// VMs that kept their P1 but not their P2.
    broken_p2_claims: usize,
}

fn pick_watchers(weights: &[Vec<u64>], nodes: usize, before: &[Previous], promote: bool) -> Picked {
    // P1: the previous P1, else (when promoting) the previous P2, which has
    // taken over.
    let p1_claims: Vec<Option<Claim>> = before
        .iter()
        .map(|b| match (b.p1, b.p2) {
            (Some(n), _) => Some(Claim { tier: 1, node: n }),
            (None, Some(n)) if promote => Some(Claim { tier: 0, node: n }),
            _ => None,
        })
        .collect();
    let p1 = balanced_pick(weights, nodes, &vec![None; before.len()], &p1_claims);
    if nodes < 2 {
        return Picked {
            p1,
            p2: vec![None; before.len()],
            broken_p2_claims: 0,
        };
    }
    // P2: the previous P2, first for the VMs that kept their P1.
    let p2_claims: Vec<Option<Claim>> = before
        .iter()
        .zip(&p1)
        .map(|(b, &first)| {
            let n = b.p2.filter(|&n| n != first)?;
            let tier = u8::from(b.p1 == Some(first));
            Some(Claim { tier, node: n })
        })
        .collect();
    let excluded: Vec<Option<usize>> = p1.iter().copied().map(Some).collect();
    let p2 = balanced_pick(weights, nodes, &excluded, &p2_claims);
    let broken_p2_claims = p2_claims
        .iter()
        .zip(&p2)
        .filter(|(c, &second)| c.is_some_and(|c| c.tier > 0 && c.node != second))
        .count();
    Picked {
        p1,
        p2: p2.into_iter().map(Some).collect(),
        broken_p2_claims,
    }
}

/// A VM's wish to keep (or be promoted to) a node it already watches from.
/// Claims of a higher tier are honoured first, and their VMs are the last to
/// be moved when balance forces a move.
#[derive(Debug, Clone, Copy)]
struct Claim {
    tier: u8,
    node: usize,
}

/// The appliance that checks a VM now: P1 while it is live, else P2 while it
/// is live, else nobody.
pub fn active_watcher(w: &Watchers, live: &BTreeSet<NodeId>) -> Option<NodeId> {
    if live.contains(&w.p1) {
        Some(w.p1)
    } else {
        w.p2.filter(|p2| live.contains(p2))
    }
}

/// Rendezvous (highest random weight) score of `node` for `vm`. FNV-1a over the
/// name and splitmix64 finalizers: fixed across Rust releases and platforms,
/// unlike `std`'s hashers, so every appliance computes the same assignment.
fn rendezvous_weight(vm: &str, node: NodeId) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in vm.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    splitmix64(h ^ splitmix64(node))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Picks one of `nodes` node indices per VM so that every node gets `V / E` or
/// `V / E + 1` VMs, VM `v` never gets `excluded[v]`, as many `claims` as
/// balance allows are honoured, and the other VMs get highly weighted nodes.
///
/// Claims go first: each node takes up to `V / E` of its claimants, then the
/// `V % E` extra places go to leftover claimants on distinct nodes. That keeps
/// the largest number of claims any balanced assignment can keep. The other
/// VMs then fill every node to `V / E` and then take the remaining extra
/// places. Each of those two stages takes the (VM, node) pairs by falling
/// weight (the unique stable matching when both sides rank by the same
/// weights) and then moves VMs along augmenting paths for any VM the greedy
/// pass left out. A balanced assignment always exists when at most one node is
/// excluded per VM and there are at least two nodes, so the paths always end.
fn balanced_pick(
    weights: &[Vec<u64>],
    nodes: usize,
    excluded: &[Option<usize>],
    claims: &[Option<Claim>],
) -> Vec<usize> {
    let vms = weights.len();
    let allowed = |v: usize, n: usize| excluded[v] != Some(n);
    let mut assignment: Vec<Option<usize>> = vec![None; vms];
    let mut load = vec![0usize; nodes];
    let floor = vms / nodes;

    let mut claimants: Vec<(usize, usize, u8)> = claims
        .iter()
        .enumerate()
        .filter_map(|(v, c)| c.map(|c| (v, c.node, c.tier)))
        .filter(|&(v, n, _)| allowed(v, n))
        .collect();
    claimants.sort_by_key(|&(v, n, tier)| (Reverse((tier, weights[v][n])), v));
    let mut extras_left = vms % nodes;
    for pass in [0, 1] {
        for &(v, n, _) in &claimants {
            if assignment[v].is_some() {
                continue;
            }
            if load[n] < floor || (pass == 1 && load[n] == floor && extras_left > 0) {
                extras_left -= usize::from(load[n] == floor);
                assignment[v] = Some(n);
                load[n] += 1;
            }
        }
    }

    let protected: Vec<bool> = claims
        .iter()
        .map(|c| c.is_some_and(|c| c.tier > 0))
        .collect();
    let mut pairs: Vec<(Reverse<u64>, usize, usize)> = (0..vms)
        .flat_map(|v| (0..nodes).map(move |n| (Reverse(weights[v][n]), v, n)))
        .filter(|&(_, v, n)| allowed(v, n))
        .collect();
    pairs.sort_unstable();
    let preferences: Vec<Vec<usize>> = (0..vms)
        .map(|v| {
            let mut prefs: Vec<usize> = (0..nodes).filter(|&n| allowed(v, n)).collect();
            prefs.sort_by_key(|&n| (Reverse(weights[v][n]), n));
            prefs
        })
        .collect();
    for cap in [floor, floor + 1] {
        for &(_, v, n) in &pairs {
            if assignment[v].is_none() && load[n] < cap {
                assignment[v] = Some(n);
                load[n] += 1;
            }
        }
        for v in 0..vms {
            if load.iter().all(|&l| l >= cap) {
                break;
            }
            if assignment[v].is_none() {
                augment(v, cap, &preferences, &protected, &mut assignment, &mut load);
            }
        }
    }
    // Every VM is assigned by now (see above). Were one not, an unbalanced
    // watcher would still beat an unwatched VM or a crashed appliance.
    assignment
        .iter()
        .zip(&preferences)
        .map(|(n, prefs)| n.unwrap_or(prefs[0]))
        .collect()
}

/// Finds an augmenting path from the unassigned VM `start` to a node below
/// `cap` and moves every VM on it one step. Among the paths, it takes one that
/// moves the fewest `protected` VMs (a 0-1 breadth-first search over nodes).
/// Returns whether a path was found.
fn augment(
    start: usize,
    cap: usize,
    preferences: &[Vec<usize>],
    protected: &[bool],
    assignment: &mut [Option<usize>],
    load: &mut [usize],
) -> bool {
    let nodes = load.len();
    let mut cost = vec![usize::MAX; nodes];
    // The VM that moves into each node on the best path found so far.
    let mut mover: Vec<Option<usize>> = vec![None; nodes];
    let mut settled = vec![false; nodes];
    let mut queue = VecDeque::new();
    for &n in &preferences[start] {
        cost[n] = 0;
        mover[n] = Some(start);
        queue.push_back(n);
    }
    while let Some(n) = queue.pop_front() {
        if std::mem::replace(&mut settled[n], true) {
            continue;
        }
        if load[n] < cap {
            load[n] += 1;
            let mut node = n;
            while let Some(vm) = mover[node] {
                match assignment[vm].replace(node) {
                    Some(from) => node = from,
                    None => return true,
                }
            }
            unreachable!("every path starts at the unassigned VM");
        }
        for (w, _) in assignment
            .iter()
            .enumerate()
            .filter(|(_, a)| **a == Some(n))
        {
            let step = usize::from(protected[w]);
            for &m in &preferences[w] {
                if !settled[m] && cost[n] + step < cost[m] {
                    cost[m] = cost[n] + step;
                    mover[m] = Some(w);
                    if step == 0 {
                        queue.push_front(m);
                    } else {
                        queue.push_back(m);
                    }
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm_names(prefix: &str, count: usize) -> Vec<VmId> {
        (0..count).map(|i| format!("{prefix}-vm{i}")).collect()
    }

    /// Irregular appliance ids, so nothing depends on them being 1..=n.
    fn node_ids(seed: u64, count: u64) -> Vec<NodeId> {
        (0..count)
            .map(|i| splitmix64(seed * 1000 + i) % 10_000)
            .collect()
    }

    fn loads(
        map: &BTreeMap<VmId, Watchers>,
        nodes: &[NodeId],
        pick: impl Fn(&Watchers) -> Option<NodeId>,
    ) -> Vec<usize> {
        nodes
            .iter()
            .map(|&n| map.values().filter(|w| pick(w) == Some(n)).count())
            .collect()
    }

    fn spread(loads: &[usize]) -> usize {
        loads.iter().max().unwrap_or(&0) - loads.iter().min().unwrap_or(&0)
    }

    /// Every rule [`assign_watchers`] promises about one assignment.
    fn assert_valid(map: &BTreeMap<VmId, Watchers>, vms: &[VmId], nodes: &[NodeId]) {
        let case = format!("{} VMs on {} appliances", vms.len(), nodes.len());
        assert_eq!(map.keys().cloned().collect::<Vec<_>>(), vms, "{case}");
        for (vm, w) in map {
            assert!(nodes.contains(&w.p1), "{case}: {vm} P1 {w:?}");
            match w.p2 {
                None => assert_eq!(nodes.len(), 1, "{case}: {vm} has no P2"),
                Some(p2) => {
                    assert_ne!(p2, w.p1, "{case}: {vm}");
                    assert!(nodes.contains(&p2), "{case}: {vm} P2 {w:?}");
                }
            }
        }
        assert!(
            spread(&loads(map, nodes, |w| Some(w.p1))) <= 1,
            "{case}: P1"
        );
        if nodes.len() > 1 {
            assert!(spread(&loads(map, nodes, |w| w.p2)) <= 1, "{case}: P2");
        }
    }

    #[test]
    fn assignment_ignores_input_order_and_duplicates() {
        for v in 0..=40 {
            for e in 1..=7 {
                let vms = vm_names("ord", v);
                let nodes = node_ids(e, e);
                let expected = assign_watchers(&vms, &nodes);

                let mut shuffled_vms: Vec<VmId> = vms.iter().rev().cloned().collect();
                shuffled_vms.rotate_left(v / 3);
                shuffled_vms.extend(vms.iter().take(3).cloned());
                let mut shuffled_nodes = nodes.clone();
                shuffled_nodes.rotate_left(1);
                shuffled_nodes.push(nodes[0]);

                assert_eq!(assign_watchers(&shuffled_vms, &shuffled_nodes), expected);
            }
        }
    }

    #[test]
    fn assignment_is_balanced_with_distinct_p1_and_p2() {
        for seed in 0..3 {
            for e in 1..=9 {
                let nodes = node_ids(seed, e);
                for v in 0..=80 {
                    let mut vms = vm_names(&format!("bal{seed}"), v);
                    vms.sort();
                    assert_valid(&assign_watchers(&vms, &nodes), &vms, &nodes);
                }
            }
        }
    }

    #[test]
    fn a_lone_appliance_watches_everything_without_p2_and_none_watches_nothing() {
        let vms = vm_names("lone", 5);
        let map = assign_watchers(&vms, &[42]);
        assert!(map.values().all(|w| *w == Watchers { p1: 42, p2: None }));
        assert_eq!(map.len(), 5);
        assert!(assign_watchers(&vms, &[]).is_empty());
    }

    /// Of the VMs whose P1 and P2 both stay eligible when `gone` leaves: how
    /// many exist, how many change P1, how many change P1 or P2.
    fn bystander_moves(
        before: &BTreeMap<VmId, Watchers>,
        after: &BTreeMap<VmId, Watchers>,
        gone: NodeId,
    ) -> (usize, usize, usize) {
        let bystanders: Vec<(&VmId, &Watchers)> = before
            .iter()
            .filter(|(_, w)| w.p1 != gone && w.p2 != Some(gone))
            .collect();
        let p1_moved = bystanders
            .iter()
            .filter(|(vm, w)| after[*vm].p1 != w.p1)
            .count();
        let moved = bystanders
            .iter()
            .filter(|(vm, w)| after[*vm] != **w)
            .count();
        (bystanders.len(), p1_moved, moved)
    }

    #[test]
    fn assign_watchers_moves_few_bystanders_when_an_appliance_leaves() {
        let (mut bystanders, mut p1_moved, mut moved) = (0, 0, 0);
        for seed in 0..5 {
            for v in [10, 20, 30, 100, 300] {
                for e in 3..=8 {
                    let vms = vm_names(&format!("leave{seed}"), v);
                    let nodes = node_ids(seed, e);
                    let before = assign_watchers(&vms, &nodes);
                    for &gone in &nodes {
                        let rest: Vec<NodeId> =
                            nodes.iter().copied().filter(|&n| n != gone).collect();
                        let after = assign_watchers(&vms, &rest);
                        let mut sorted = vms.clone();
                        sorted.sort();
                        assert_valid(&after, &sorted, &rest);
                        let (b, p1, m) = bystander_moves(&before, &after, gone);
                        if v >= 100 {
                            let case = format!("{v} VMs, {e} appliances");
                            assert!(p1 * 100 <= b * 15, "{case}: {p1} of {b} changed P1");
                        }
                        bystanders += b;
                        p1_moved += p1;
                        moved += m;
                    }
                }
            }
        }
        // Measured: 5.1% change P1 and 10.5% change P1 or P2 (up to 13% of
        // the P1s in one case with 100 VMs). Plain rendezvous hashing would
        // move none but is not balanced; `rebalance_watchers` moves none.
        let p1_share = p1_moved as f64 / bystanders as f64;
        let share = moved as f64 / bystanders as f64;
        assert!(p1_share < 0.07, "{p1_share:.3} of bystanders changed P1");
        assert!(share < 0.14, "{share:.3} of bystanders changed watchers");
    }

    #[test]
    fn rebalance_keeps_every_bystander_when_an_appliance_leaves() {
        let (mut displaced_p1, mut promoted) = (0, 0);
        for seed in 0..3 {
            for e in 2..=8 {
                let nodes = node_ids(seed, e);
                for v in (0..=60).chain([100, 300]) {
                    let mut vms = vm_names(&format!("keep{seed}"), v);
                    vms.sort();
                    let before = assign_watchers(&vms, &nodes);
                    for &gone in &nodes {
                        let rest: Vec<NodeId> =
                            nodes.iter().copied().filter(|&n| n != gone).collect();
                        let after = rebalance_watchers(&before, &vms, &rest);
                        assert_valid(&after, &vms, &rest);
                        let (b, p1, m) = bystander_moves(&before, &after, gone);
                        // About one VM per appliance can leave a node whose P2
                        // place only a bystander may fill (3 VMs on 3
                        // appliances, say); the sweep sees at most one such.
                        let forced = usize::from(v <= e as usize + 1);
                        let case = format!("{v} VMs, {e} appliances, {gone} leaves");
                        assert_eq!(p1, 0, "{case}: {b} bystanders");
                        assert!(m <= forced, "{case}: {m} of {b} bystanders moved");
                        for (vm, w) in before.iter().filter(|(_, w)| w.p1 == gone) {
                            displaced_p1 += 1;
                            promoted += usize::from(Some(after[vm].p1) == w.p2);
                        }
                    }
                }
            }
        }
        // The appliance that took over mostly keeps the VM (measured: 85%);
        // balance forbids the rest.
        assert!(
            promoted * 10 >= displaced_p1 * 8,
            "{promoted} of {displaced_p1} P2s promoted"
        );
    }

    #[test]
    fn rebalance_moves_only_what_a_joining_appliance_takes() {
        for seed in 0..3 {
            for e in 1..=7 {
                let nodes = node_ids(seed, e);
                let newcomer = 10_000 + seed;
                let mut all = nodes.clone();
                all.push(newcomer);
                for v in (0..=40).chain([100, 300]) {
                    let mut vms = vm_names(&format!("join{seed}"), v);
                    vms.sort();
                    let before = assign_watchers(&vms, &nodes);
                    let after = rebalance_watchers(&before, &vms, &all);
                    assert_valid(&after, &vms, &all);
                    let p1_moves = vms
                        .iter()
                        .filter(|vm| after[*vm].p1 != before[*vm].p1)
                        .count();
                    let newcomer_p1 = after.values().filter(|w| w.p1 == newcomer).count();
                    assert_eq!(p1_moves, newcomer_p1, "{v} VMs, {e}+1 appliances");
                }
            }
        }
    }
}
