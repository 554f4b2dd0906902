//! Simulated libvirt hosts for the moves: where each VM runs, and the
//! migration jobs the appliances start, abort and resolve on them. A job
//! outlives the appliance that started it (as a libvirt job outlives its
//! client), takes a random time, and fails or succeeds at random. The
//! checks: no VM is ever migrated by two jobs at once, and once the cluster
//! is healed and its moves have ended, every appliance's state says each VM
//! runs where the hosts say it runs.

use super::*;
use crate::core::inventory::Inventory;
use crate::core::moves::{self, Intent, MoveResult};
use crate::core::node::MigrationOrder;
use crate::core::state::{ClusterState, Host, VmSpec, WanLink};

#[derive(Debug, Default)]
pub(super) struct Hypervisors {
    /// VM → the host it runs on.
    runs_on: BTreeMap<String, String>,
    jobs: Vec<Job>,
    resolves: Vec<Resolve>,
    stats: MoveStats,
}

/// What the moves came to in one schedule.
#[derive(Debug, Clone, Default)]
pub struct MoveStats {
    pub plans: u64,
    pub migrations: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub resolved: u64,
    pub results_lost: u64,
}

#[derive(Debug)]
struct Job {
    order: MigrationOrder,
    node: NodeId,
    incarnation: u64,
    ends_ms: u64,
    succeeds: bool,
    cancelled: bool,
}

#[derive(Debug)]
struct Resolve {
    order: MigrationOrder,
    node: NodeId,
    incarnation: u64,
    at_ms: u64,
}

fn host_name(id: NodeId) -> String {
    format!("h{id}")
}

impl Sim {
    fn incarnation(&self, id: NodeId) -> u64 {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .map_or(0, |n| n.incarnation)
    }

    /// Node `id` starts the migration of `order`.
    pub(super) fn migrate(&mut self, id: NodeId, order: MigrationOrder) -> Result<(), Violation> {
        let incarnation = self.incarnation(id);
        let (took, succeeds) = (300 + self.rng.below(3000), self.rng.chance(0.8));
        let now = self.now_ms;
        let Some(hv) = self.hv.as_mut() else {
            return Ok(());
        };
        if let Some(j) = hv.jobs.iter().find(|j| j.order.vm == order.vm) {
            let what = format!(
                "two migrations of {} at once: {} by node {} and {} by node {id}",
                order.vm, j.order.id, j.node, order.id
            );
            return Err(self.violation(what));
        }
        hv.stats.migrations += 1;
        // libvirt refuses a domain that is not at the source.
        let here = hv.runs_on.get(&order.vm) == Some(&order.source_host);
        hv.jobs.push(Job {
            order,
            node: id,
            incarnation,
            ends_ms: now + if here { took } else { 5 },
            succeeds: here && succeeds,
            cancelled: false,
        });
        Ok(())
    }

    pub(super) fn abort(&mut self, move_id: &str) {
        let now = self.now_ms;
        if let Some(hv) = self.hv.as_mut() {
            for j in hv.jobs.iter_mut().filter(|j| j.order.id == move_id) {
                j.cancelled = true;
                j.ends_ms = j.ends_ms.min(now + 20);
            }
        }
    }

    pub(super) fn resolve(&mut self, id: NodeId, order: MigrationOrder) {
        let incarnation = self.incarnation(id);
        let at_ms = self.now_ms + 50;
        if let Some(hv) = self.hv.as_mut() {
            hv.resolves.push(Resolve {
                order,
                node: id,
                incarnation,
                at_ms,
            });
        }
    }

    /// Ends the jobs and resolutions that are due, and tells their nodes
    /// (if the node that asked still runs, in the same incarnation).
    pub(super) fn run_hypervisors(&mut self) -> Result<(), Violation> {
        let now = self.now_ms;
        let Some(hv) = self.hv.as_mut() else {
            return Ok(());
        };
        let mut tell: Vec<(NodeId, u64, String, MoveResult)> = Vec::new();
        let (due, running): (Vec<Job>, Vec<Job>) =
            hv.jobs.drain(..).partition(|j| j.ends_ms <= now);
        hv.jobs = running;
        for j in due {
            let result = if j.cancelled {
                hv.stats.cancelled += 1;
                MoveResult::Cancelled {
                    reason: "aborted".into(),
                }
            } else if j.succeeds {
                hv.stats.succeeded += 1;
                hv.runs_on
                    .insert(j.order.vm.clone(), j.order.dest_host.clone());
                MoveResult::Done {
                    downtime_ms: Some(100),
                    data_total: None,
                    wall_ms: 1000,
                }
            } else {
                hv.stats.failed += 1;
                MoveResult::Failed {
                    reason: format!("simulated failure; {} stays", j.order.vm),
                }
            };
            tell.push((j.node, j.incarnation, j.order.id, result));
        }
        let mut later = Vec::new();
        for r in hv.resolves.drain(..) {
            if r.at_ms > now {
                later.push(r);
                continue;
            }
            if hv.jobs.iter().any(|j| j.order.vm == r.order.vm) {
                later.push(Resolve {
                    at_ms: now + 200,
                    ..r
                });
                continue;
            }
            hv.stats.resolved += 1;
            let result = if hv.runs_on.get(&r.order.vm) == Some(&r.order.dest_host) {
                MoveResult::Done {
                    downtime_ms: None,
                    data_total: None,
                    wall_ms: 0,
                }
            } else {
                MoveResult::Failed {
                    reason: "its executor stopped; the VM stays".into(),
                }
            };
            tell.push((r.node, r.incarnation, r.order.id, result));
        }
        hv.resolves = later;
        for (id, incarnation, move_id, result) in tell {
            let at = self.now();
            let alive = self.incarnation(id) == incarnation;
            let Some(node) = self
                .nodes
                .iter_mut()
                .find(|n| n.id == id)
                .and_then(|n| n.node.as_mut())
                .filter(|_| alive)
            else {
                if let Some(hv) = self.hv.as_mut() {
                    hv.stats.results_lost += 1;
                }
                continue;
            };
            let effects = node.migration_done(&move_id, result, at);
            self.effects(id, effects)?;
        }
        Ok(())
    }

    /// The inventory of a moves schedule: site `s<i>` with host `h<i>` per
    /// node, `per_site` VMs at each, a WAN link between every two sites.
    fn moves_inventory(&self, per_site: usize) -> Inventory {
        let ids = self.ids();
        let mut inv = Inventory::default();
        for &id in &ids {
            inv.sites.push(Site {
                id: site_name(id),
                location: None,
                witness: false,
            });
            inv.hosts.push(Host {
                name: host_name(id),
                site: site_name(id),
                cpu_mhz: 64_000,
                memory_mib: 64 * 1024,
                libvirt_uri: format!("sim://{}", host_name(id)),
                migration_address: format!("10.70.0.{id}"),
            });
            for k in 0..per_site {
                let n = inv.vms.len();
                inv.vms.push(Vm {
                    id: format!("v{n}"),
                    mac: format!("52:54:00:70:01:{n:02x}"),
                    ip: format!("10.70.1.{}", n + 10),
                    priority: k as u32,
                    site: site_name(id),
                    host: host_name(id),
                    storage: StorageMode::Shared,
                    check: VmCheck::default(),
                    spec: VmSpec {
                        vcpus: 1,
                        cpu_mhz: 1000,
                        memory_mib: 1024 * (1 + k as u64),
                        domain_xml: String::new(),
                        home_site: site_name(id),
                        home_host: None,
                    },
                });
            }
        }
        for (i, &a) in ids.iter().enumerate() {
            for &b in &ids[i + 1..] {
                inv.wan.push(WanLink {
                    between: [site_name(a), site_name(b)],
                    mbit: 1000,
                    migration_share: 0.5,
                });
            }
        }
        inv
    }

    /// A running node's state.
    fn any_state(&self) -> Option<&ClusterState> {
        self.nodes
            .iter()
            .filter_map(|n| n.node.as_ref())
            .map(Node::state)
            .next()
    }

    /// Proposes `command` at `id`, ignoring a refusal (the schedule goes on).
    fn try_propose(&mut self, id: NodeId, command: Command) -> Result<(), Violation> {
        if self.node(id).is_none() {
            return Ok(());
        }
        self.call(
            id,
            Request::Propose {
                command,
                timeout_ms: Some(PROPOSE_TIMEOUT_MS),
            },
        )
        .map(drop)
    }

    /// Checks that every running node records each VM where it runs.
    fn check_locations(&self) -> Result<(), Violation> {
        let Some(hv) = &self.hv else { return Ok(()) };
        for n in self.nodes.iter().filter_map(|n| n.node.as_ref()) {
            let s = n.state();
            if let Some(m) = moves::active(s).next() {
                return Err(self.violation(format!(
                    "node {}: move {} of {} is still {} after healing",
                    n.id(),
                    m.id,
                    m.vm,
                    m.phase
                )));
            }
            for (vm, host) in &hv.runs_on {
                let recorded = s.vms.get(vm).map(|v| v.host.as_str());
                if recorded != Some(host.as_str()) {
                    return Err(self.violation(format!(
                        "node {}: the state has {vm} on {recorded:?}, it runs on {host}",
                        n.id()
                    )));
                }
            }
        }
        Ok(())
    }
}

/// One random schedule of moves (evacuations, migrations, cancels) under
/// partitions, loss, crashes and restarts, then healing, every move's end,
/// and the checks above.
pub fn moves_schedule(seed: u64, duration_ms: u64) -> Result<MoveStats, Violation> {
    let mut rng = Rng::new(seed ^ 0x0e0e);
    let n = if rng.chance(0.5) { 3 } else { 5 };
    let mut sim = Sim::new(seed, n);
    sim.enable_detection(&[])?;
    let inv = sim.moves_inventory(2);
    sim.hv = Some(Hypervisors {
        runs_on: inv
            .vms
            .iter()
            .map(|v| (v.id.clone(), v.host.clone()))
            .collect(),
        ..Default::default()
    });
    let vms: Vec<String> = inv.vms.iter().map(|v| v.id.clone()).collect();
    let leader = sim
        .leader()
        .ok_or_else(|| sim.violation("no leader for the inventory".into()))?;
    sim.try_propose(leader, Command::ApplyInventory(inv))?;
    let end = sim.now_ms() + 10_000;
    while sim.any_state().is_none_or(|s| s.vms.len() != vms.len()) {
        if sim.now_ms() >= end {
            return Err(sim.violation("the inventory did not apply within 10 s".into()));
        }
        sim.run_until(sim.now_ms() + 50)?;
    }
    let ids = sim.ids();
    let pick = |rng: &mut Rng, n: usize| rng.below(n as u64) as usize;
    while sim.now_ms() < duration_ms {
        let step = sim.now_ms() + 100 + rng.below(400);
        sim.run_until(step)?;
        let at = ids[pick(&mut rng, n)];
        match rng.below(100) {
            0..=24 => {
                let intent = if rng.chance(0.4) {
                    Intent::Evacuate {
                        site: site_name(ids[pick(&mut rng, n)]),
                    }
                } else {
                    Intent::Migrate {
                        vm: vms[pick(&mut rng, vms.len())].clone(),
                        to_site: site_name(ids[pick(&mut rng, n)]),
                        to_host: None,
                    }
                };
                if let Some(hv) = sim.hv.as_mut() {
                    hv.stats.plans += 1;
                }
                let reason = "simulated operator".to_string();
                sim.try_propose(at, Command::PlanMoves { intent, reason })?;
            }
            25..=32 => {
                let active: Vec<String> = sim
                    .any_state()
                    .map(|s| moves::active(s).map(|m| m.id.clone()).collect())
                    .unwrap_or_default();
                if !active.is_empty() {
                    let id = active[pick(&mut rng, active.len())].clone();
                    sim.try_propose(at, Command::CancelMove { id })?;
                }
            }
            33..=39 => {
                let k = 1 + pick(&mut rng, n / 2);
                let mut shuffled = ids.clone();
                for i in (1..shuffled.len()).rev() {
                    shuffled.swap(i, pick(&mut rng, i + 1));
                }
                let minority: BTreeSet<NodeId> = shuffled[..k].iter().copied().collect();
                let majority: BTreeSet<NodeId> = shuffled[k..].iter().copied().collect();
                sim.partition(vec![minority, majority]);
            }
            40..=47 => sim.heal(),
            48..=51 => sim.loss = [0.0, 0.05, 0.2][pick(&mut rng, 3)],
            52..=56 => sim.crash(at),
            57..=66 => sim.restart(at),
            _ => {}
        }
    }
    sim.heal();
    sim.loss = 0.0;
    for id in ids {
        sim.restart(id);
    }
    // Every move ends once the cluster is whole (the longest job is 3.3 s;
    // a hand-over needs detection; re-plans add a try each).
    // Proposals made during the schedule may still commit (their callers
    // retry them for a minute), and plan more moves: idle is when nothing
    // moves after the cluster has settled.
    let end = sim.now_ms() + 120_000;
    let idle = |sim: &Sim| {
        sim.hv.as_ref().is_some_and(|h| h.jobs.is_empty())
            && sim
                .nodes
                .iter()
                .filter_map(|n| n.node.as_ref())
                .all(|n| moves::active(n.state()).next().is_none())
    };
    loop {
        sim.run_until(sim.now_ms() + 200)?;
        if idle(&sim) {
            sim.settle(30_000)?;
            let waiting: usize = sim
                .nodes
                .iter()
                .filter_map(|n| n.node.as_ref())
                .map(Node::waiting)
                .sum();
            if idle(&sim) && waiting == 0 {
                break;
            }
        }
        if sim.now_ms() >= end {
            let what = sim
                .any_state()
                .and_then(|s| moves::active(s).next().cloned())
                .map(|m| format!("{} of {} {} under {:?}", m.id, m.vm, m.phase, m.executor))
                .unwrap_or_default();
            return Err(sim.violation(format!("moves did not end within 120 s of healing: {what}")));
        }
    }
    sim.settle(30_000)?;
    sim.check_converged()?;
    sim.check_locations()?;
    Ok(sim.hv.map(|h| h.stats).unwrap_or_default())
}
