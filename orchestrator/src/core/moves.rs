//! Moves of VMs between sites: the replicated plan the executor drives.
//!
//! An operator's intent (`hinan migrate`, `hinan evacuate`, `hinan
//! failback`; later the alert planner's) becomes a [`Plan`] of [`Move`]s when
//! the log commits it: [`plan`] is a pure function of the replicated state,
//! so every appliance computes the same moves, placed by
//! [`crate::core::placement::place`]. A move then runs through its phases by
//! further commands, each decided here and applied in log order:
//!
//! ```text
//! pending ──start──▶ running ──finish──▶ done | failed | cancelled
//!    └──────cancel──────────────────────────────────────▲
//! ```
//!
//! * the appliance at the source site claims a pending move (at most
//!   `max_parallel` at once from one site) and drives it; the claim sets the
//!   migration's bandwidth, a share of the WAN link's `migration_share`, so
//!   that heartbeats and Raft always keep room;
//! * progress (libvirt's job stats) is committed a few times a second;
//! * a failed move leaves the VM at its source (libvirt's rollback) and is
//!   re-planned to another host if one fits, up to `retries` times;
//! * a running move whose appliance dies is handed over to another
//!   appliance, which finds out where the VM runs and finishes the move.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::placement::{place, HostCapacity, Load, VmDemand};
use crate::core::state::{ClusterState, NodeId, SiteId, VmId, WanLink};

pub type MoveId = String;

/// Finished moves kept in the state (the oldest are dropped beyond this).
const KEPT_FINISHED: usize = 1000;
/// Plans kept in the state.
const KEPT_PLANS: usize = 200;
/// The longest reason a plan keeps.
const MAX_REASON: usize = 1024;

/// Where a move is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MovePhase {
    Pending,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl MovePhase {
    pub fn is_active(self) -> bool {
        matches!(self, MovePhase::Pending | MovePhase::Running)
    }
}

impl std::fmt::Display for MovePhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MovePhase::Pending => "pending",
            MovePhase::Running => "running",
            MovePhase::Done => "done",
            MovePhase::Failed => "failed",
            MovePhase::Cancelled => "cancelled",
        })
    }
}

/// A running migration's progress, from libvirt's job stats (bytes, ms).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveProgress {
    pub elapsed_ms: u64,
    pub data_total: u64,
    pub data_processed: u64,
    pub data_remaining: u64,
    /// Bytes per second, as libvirt measures the stream.
    pub mem_bps: u64,
    pub mem_iteration: u64,
    pub post_copy: bool,
}

impl MoveProgress {
    /// How much of the memory is across, in percent (0–100): the part not
    /// remaining. (Sent bytes overshoot the total when a guest dirties pages
    /// that are sent again.)
    pub fn percent(&self) -> u64 {
        match self.data_total {
            0 => 0,
            total => (total.saturating_sub(self.data_remaining) * 100) / total,
        }
    }
}

/// One VM's move from one host to another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Move {
    pub id: MoveId,
    pub plan: String,
    pub vm: VmId,
    pub from_site: SiteId,
    pub from_host: String,
    pub to_site: SiteId,
    pub to_host: String,
    /// Why it was planned (the operator's command, the alert…).
    pub reason: String,
    pub phase: MovePhase,
    /// The appliance driving it (once running).
    pub executor: Option<NodeId>,
    /// 1 for the first try; a re-plan after a failure counts up.
    pub attempt: u32,
    /// An operator asked to cancel it; its executor aborts the job.
    pub cancel_requested: bool,
    pub progress: Option<MoveProgress>,
    /// The migration's cap, set when it starts.
    pub bandwidth_mib_s: Option<u64>,
    /// Post-copy may be used (only when the source will outlive it).
    pub post_copy: bool,
    /// The sites a re-plan may choose from.
    pub scope: Vec<SiteId>,
    /// Hosts already tried and failed: a re-plan avoids them.
    pub failed_hosts: Vec<String>,
    /// How it ended, in words.
    pub outcome: String,
    /// How it ended, as its executor reported it.
    #[serde(default)]
    pub result: Option<MoveResult>,
    /// Log index of the entry that planned it (orders the moves).
    pub planned_at: u64,
}

/// A set of moves decided together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub id: String,
    pub reason: String,
    /// The alert that caused it, if any.
    pub alert: Option<String>,
    pub moves: Vec<MoveId>,
    /// VMs the plan could not place, each with why.
    pub unplaced: Vec<String>,
    pub planned_at: u64,
}

/// How live migrations run, from the inventory's `[migration]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MigrationPolicy {
    /// The longest pause of the guest libvirt may choose.
    pub max_downtime_ms: u64,
    /// Throttle a guest that dirties memory faster than the stream.
    pub auto_converge: bool,
    /// Allow post-copy when the first pass does not converge (operator moves only).
    pub post_copy: bool,
    /// XBZRLE compression of re-sent pages.
    pub compression: bool,
    /// Parallel migration connections (1: one stream).
    pub parallel_connections: u32,
    /// A migration running longer is aborted, and the VM stays at its source.
    pub timeout_s: u64,
    /// Migrations at once from one site.
    pub max_parallel: u32,
    /// How the stream is encrypted on the WAN.
    pub encryption: Encryption,
    /// Re-plans to another host after a failed migration.
    pub retries: u32,
}

impl Default for MigrationPolicy {
    fn default() -> Self {
        MigrationPolicy {
            max_downtime_ms: 300,
            auto_converge: true,
            post_copy: false,
            compression: false,
            parallel_connections: 1,
            timeout_s: 900,
            max_parallel: 2,
            encryption: Encryption::Vpn,
            retries: 1,
        }
    }
}

/// How migration streams are kept secret on the WAN.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encryption {
    /// The stream goes to the destination host's `migration_address` on the
    /// service segment, so it crosses the WAN inside hinan's WireGuard tunnel.
    #[default]
    Vpn,
    /// libvirt's own TLS (`VIR_MIGRATE_TLS`; needs certificates on the hosts).
    Tls,
}

/// What an operator (or the alert planner) wants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Intent {
    /// Move one VM to a site, on a given host or where placement says.
    Migrate {
        vm: VmId,
        to_site: SiteId,
        to_host: Option<String>,
    },
    /// Move every VM off a site.
    Evacuate { site: SiteId },
    /// Bring every VM away from home back to its home site.
    Failback,
}

/// How a move ended, as its executor reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum MoveResult {
    /// libvirt at the destination reports the domain running.
    Done {
        downtime_ms: Option<u64>,
        data_total: Option<u64>,
        wall_ms: u64,
    },
    /// It did not move; the VM runs at its source (or `reason` says otherwise).
    Failed {
        reason: String,
    },
    Cancelled {
        reason: String,
    },
}

/// Why an intent or a move command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

fn refuse<T>(msg: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal(msg.into()))
}

/// The WAN link between two sites, if the inventory declares one.
pub fn link<'a>(state: &'a ClusterState, a: &str, b: &str) -> Option<&'a WanLink> {
    state.wan.iter().find(|w| {
        (w.between[0] == a && w.between[1] == b) || (w.between[0] == b && w.between[1] == a)
    })
}

/// The moves not finished yet, oldest first.
///
/// Called by every appliance after every input (Raft messages included), so
/// it sorts only the unfinished moves, not the up to 1000 finished ones kept.
pub fn active(state: &ClusterState) -> impl Iterator<Item = &Move> {
    in_order(state.moves.values().filter(|m| m.phase.is_active())).into_iter()
}

/// Every move kept, in the order planned.
pub fn ordered(state: &ClusterState) -> Vec<&Move> {
    in_order(state.moves.values())
}

fn in_order<'a>(moves: impl Iterator<Item = &'a Move>) -> Vec<&'a Move> {
    let mut v: Vec<&Move> = moves.collect();
    v.sort_by_key(|m| (m.planned_at, seq(&m.id)));
    v
}

/// The newest move of `vm`, if any is kept.
pub fn latest(state: &ClusterState, vm: &str) -> Option<Move> {
    ordered(state)
        .into_iter()
        .rev()
        .find(|m| m.vm == vm)
        .cloned()
}

/// The numeric part of a move id (`m12` → 12), to order moves of one plan.
fn seq(id: &str) -> u64 {
    id.trim_start_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .unwrap_or(0)
}

fn active_move_of<'a>(state: &'a ClusterState, vm: &str) -> Option<&'a Move> {
    state
        .moves
        .values()
        .find(|m| m.vm == vm && m.phase.is_active())
}

/// Each host's reserved load: the VMs recorded on it that are not moving,
/// plus the destinations of moves in progress.
fn loads(state: &ClusterState) -> BTreeMap<String, Load> {
    let mut out: BTreeMap<String, Load> = BTreeMap::new();
    let add = |out: &mut BTreeMap<String, Load>, host: &str, vm: &VmId| {
        let Some(v) = state.vms.get(vm) else { return };
        let l = out.entry(host.to_string()).or_default();
        l.cpu_mhz = l.cpu_mhz.saturating_add(v.spec.cpu_mhz);
        l.memory_mib = l.memory_mib.saturating_add(v.spec.memory_mib);
    };
    for v in state.vms.values() {
        if !v.host.is_empty() && active_move_of(state, &v.id).is_none() {
            add(&mut out, &v.host, &v.id);
        }
    }
    for m in state.moves.values().filter(|m| m.phase.is_active()) {
        add(&mut out, &m.to_host, &m.vm);
    }
    out
}

fn hosts_at(state: &ClusterState, sites: &[SiteId], avoid: &[String]) -> Vec<HostCapacity> {
    state
        .hosts
        .values()
        .filter(|h| sites.contains(&h.site) && !avoid.contains(&h.name))
        .filter(|h| state.sites.get(&h.site).is_some_and(|s| !s.witness))
        .map(|h| HostCapacity {
            id: h.name.clone(),
            cpu_mhz: h.cpu_mhz,
            memory_mib: h.memory_mib,
        })
        .collect()
}

fn demand(state: &ClusterState, vm: &VmId) -> Option<VmDemand> {
    state.vms.get(vm).map(|v| VmDemand {
        id: v.id.clone(),
        priority: v.priority,
        cpu_mhz: v.spec.cpu_mhz,
        memory_mib: v.spec.memory_mib,
    })
}

/// A plan and its moves, to be stored by [`store`].
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub plan: Plan,
    pub moves: Vec<Move>,
}

/// Turns `intent` into moves against `state`; `index` is the committing
/// entry's, `reason` the operator's words. Pure: the same state and intent
/// give the same plan on every appliance.
pub fn plan(
    state: &ClusterState,
    intent: &Intent,
    reason: &str,
    index: u64,
) -> Result<Planned, Refusal> {
    if reason.len() > MAX_REASON {
        return refuse(format!(
            "the reason is {} bytes; at most {MAX_REASON} are kept",
            reason.len()
        ));
    }
    let plan_id = format!("p{}", state.next_id + 1);
    let mut next = state.next_id + 1;
    let mut new_move = |vm: &VmId, to_host: &str, scope: Vec<SiteId>| -> Move {
        next += 1;
        let v = &state.vms[vm];
        let to_site = state.hosts[to_host].site.clone();
        Move {
            id: format!("m{next}"),
            plan: plan_id.clone(),
            vm: vm.clone(),
            from_site: v.site.clone(),
            from_host: v.host.clone(),
            to_site,
            to_host: to_host.to_string(),
            reason: reason.to_string(),
            phase: MovePhase::Pending,
            executor: None,
            attempt: 1,
            cancel_requested: false,
            progress: None,
            bandwidth_mib_s: None,
            post_copy: state.migration.post_copy,
            scope,
            failed_hosts: Vec::new(),
            outcome: String::new(),
            result: None,
            planned_at: index,
        }
    };
    let running = loads(state);
    let mut moves = Vec::new();
    let mut unplaced = Vec::new();
    match intent {
        Intent::Migrate {
            vm,
            to_site,
            to_host,
        } => {
            let Some(v) = state.vms.get(vm) else {
                return refuse(format!("unknown VM '{vm}'"));
            };
            need_campus(state, to_site)?;
            if let Some(m) = active_move_of(state, vm) {
                return refuse(format!(
                    "VM {vm} is already moving ({}: {} → {}, {})",
                    m.id, m.from_site, m.to_site, m.phase
                ));
            }
            if let Some(h) = to_host {
                match state.hosts.get(h) {
                    None => return refuse(format!("unknown host '{h}'")),
                    Some(host) if &host.site != to_site => {
                        return refuse(format!("host {h} is at site {}, not {to_site}", host.site))
                    }
                    Some(_) => {}
                }
            }
            if v.host.is_empty() {
                return refuse(format!(
                    "VM {vm}: the host it runs on is not known yet (no hypervisor at site {} has reported it running)",
                    v.site
                ));
            }
            let here = &v.site == to_site && to_host.as_ref().is_none_or(|h| *h == v.host);
            if here {
                return refuse(format!(
                    "VM {vm} already runs at site {to_site} on {}",
                    v.host
                ));
            }
            need_link(state, &v.site, to_site)?;
            let mut avoid = vec![v.host.clone()];
            avoid.retain(|h| !h.is_empty());
            let mut candidates = hosts_at(state, std::slice::from_ref(to_site), &avoid);
            if let Some(h) = to_host {
                candidates.retain(|c| &c.id == h);
            }
            if candidates.is_empty() {
                return refuse(format!("site {to_site} has no host to run VM {vm} on"));
            }
            let d = demand(state, vm).into_iter().collect::<Vec<_>>();
            let p = place(&d, &candidates, &running);
            match (p.assigned.get(vm), p.unplaced.first()) {
                (Some(host), _) => moves.push(new_move(vm, host, vec![to_site.clone()])),
                (None, Some(u)) => return refuse(u.to_string()),
                (None, None) => return refuse(format!("VM {vm} could not be placed")),
            }
        }
        Intent::Evacuate { site } => {
            need_campus(state, site)?;
            let scope: Vec<SiteId> = state
                .sites
                .values()
                .filter(|s| !s.witness && &s.id != site && link(state, site, &s.id).is_some())
                .map(|s| s.id.clone())
                .collect();
            let mut vms = Vec::new();
            for v in state.vms.values().filter(|v| &v.site == site) {
                match active_move_of(state, &v.id) {
                    Some(m) => unplaced.push(format!("VM {} is already moving ({})", v.id, m.id)),
                    None if v.host.is_empty() => {
                        unplaced.push(format!("VM {}: the host it runs on is not known yet", v.id))
                    }
                    None => vms.extend(demand(state, &v.id)),
                }
            }
            if vms.is_empty() && unplaced.is_empty() {
                return refuse(format!("no VM runs at site {site}: nothing to evacuate"));
            }
            if scope.is_empty() {
                return refuse(format!(
                    "site {site} has no [[wan]] link to another campus in the inventory: nowhere to evacuate to"
                ));
            }
            let p = place(&vms, &hosts_at(state, &scope, &[]), &running);
            // In placement order: the important VMs first.
            let mut order: Vec<&VmDemand> = vms.iter().collect();
            order.sort_by(|a, b| {
                a.priority
                    .cmp(&b.priority)
                    .then(b.memory_mib.cmp(&a.memory_mib))
                    .then(a.id.cmp(&b.id))
            });
            for d in order {
                if let Some(host) = p.assigned.get(&d.id) {
                    moves.push(new_move(&d.id, host, scope.clone()));
                }
            }
            unplaced.extend(p.unplaced.iter().map(|u| u.to_string()));
        }
        Intent::Failback => {
            let mut load = running;
            let mut away: Vec<&crate::core::state::Vm> = state
                .vms
                .values()
                .filter(|v| !v.spec.home_site.is_empty() && v.site != v.spec.home_site)
                .collect();
            // Pinned VMs first, then by priority, size and id.
            away.sort_by(|a, b| {
                b.spec
                    .home_host
                    .is_some()
                    .cmp(&a.spec.home_host.is_some())
                    .then(a.priority.cmp(&b.priority))
                    .then(b.spec.memory_mib.cmp(&a.spec.memory_mib))
                    .then(a.id.cmp(&b.id))
            });
            if away.is_empty() {
                return refuse("every VM is at its home site: nothing to bring back");
            }
            for v in away {
                if let Some(m) = active_move_of(state, &v.id) {
                    unplaced.push(format!("VM {} is already moving ({})", v.id, m.id));
                    continue;
                }
                if v.host.is_empty() {
                    unplaced.push(format!("VM {}: the host it runs on is not known yet", v.id));
                    continue;
                }
                let home = v.spec.home_site.clone();
                if link(state, &v.site, &home).is_none() {
                    unplaced.push(format!(
                        "VM {}: no [[wan]] link between {} and {home}",
                        v.id, v.site
                    ));
                    continue;
                }
                let mut candidates = hosts_at(state, std::slice::from_ref(&home), &[]);
                if let Some(h) = &v.spec.home_host {
                    candidates.retain(|c| &c.id == h);
                }
                let d: Vec<VmDemand> = demand(state, &v.id).into_iter().collect();
                let p = place(&d, &candidates, &load);
                match p.assigned.get(&v.id) {
                    Some(host) => {
                        load = p.load;
                        moves.push(new_move(&v.id, host, vec![home]));
                    }
                    None => unplaced.extend(p.unplaced.iter().map(|u| u.to_string())),
                }
            }
        }
    }
    Ok(Planned {
        plan: Plan {
            id: plan_id,
            reason: reason.to_string(),
            alert: None,
            moves: moves.iter().map(|m| m.id.clone()).collect(),
            unplaced,
            planned_at: index,
        },
        moves,
    })
}

fn need_campus(state: &ClusterState, site: &str) -> Result<(), Refusal> {
    match state.sites.get(site) {
        None => refuse(format!("unknown site '{site}'")),
        Some(s) if s.witness => refuse(format!("site {site} is a witness: it runs no VMs")),
        Some(_) => Ok(()),
    }
}

fn need_link(state: &ClusterState, a: &str, b: &str) -> Result<(), Refusal> {
    if a == b || link(state, a, b).is_some() {
        return Ok(());
    }
    refuse(format!(
        "no [[wan]] link between {a} and {b} in the inventory: hinan caps migrations below the link's bandwidth, so it needs it declared"
    ))
}

/// Stores a plan and its moves, and says what was decided, for the audit log.
pub fn store(state: &mut ClusterState, p: Planned) -> String {
    state.next_id += 1 + p.moves.len() as u64;
    let mut what = format!("plan {} ({}): ", p.plan.id, p.plan.reason);
    if p.moves.is_empty() {
        what.push_str("no moves");
    }
    let lines: Vec<String> = p
        .moves
        .iter()
        .map(|m| {
            format!(
                "{} moves {} {}/{} → {}/{}",
                m.id, m.vm, m.from_site, m.from_host, m.to_site, m.to_host
            )
        })
        .collect();
    what.push_str(&lines.join("; "));
    if !p.plan.unplaced.is_empty() {
        what.push_str(&format!("; not moved: {}", p.plan.unplaced.join("; ")));
    }
    for m in p.moves {
        state.moves.insert(m.id.clone(), m);
    }
    state.plans.insert(p.plan.id.clone(), p.plan);
    prune(state);
    what
}

/// The bandwidth a migration starting now on the link `from`–`to` may use, in
/// MiB/s: the link's migration share, split among the migrations that will
/// share it (at most `max_parallel`). At least 1 MiB/s.
pub fn bandwidth_for(state: &ClusterState, m: &Move) -> Option<u64> {
    let l = link(state, &m.from_site, &m.to_site)?;
    let sharing = state
        .moves
        .values()
        .filter(|o| o.phase.is_active() && o.id != m.id)
        .filter(|o| {
            (o.from_site == m.from_site && o.to_site == m.to_site)
                || (o.from_site == m.to_site && o.to_site == m.from_site)
        })
        .count() as u64
        + 1;
    let sharing = sharing.min(u64::from(state.migration.max_parallel.max(1)));
    Some(mib_s(l.mbit as f64 * l.migration_share / sharing as f64))
}

/// Mbit/s → whole MiB/s, rounded down, at least 1.
fn mib_s(mbit: f64) -> u64 {
    ((mbit * 1e6 / 8.0 / 1048576.0).floor() as u64).max(1)
}

/// `executor` starts pending move `id`: it runs, at the bandwidth its link allows.
pub fn start(state: &mut ClusterState, id: &str, executor: NodeId) -> Result<String, Refusal> {
    let m = get(state, id)?;
    if m.phase != MovePhase::Pending {
        return refuse(format!("move {id} is {}, not pending", m.phase));
    }
    if !state.appliances.contains_key(&executor) && !state.appliances.is_empty() {
        return refuse(format!("unknown appliance {executor}"));
    }
    let bw = bandwidth_for(state, m);
    let l = link(state, &m.from_site, &m.to_site).cloned();
    // Moves already running on the link give up what this one takes.
    let (from, to) = (m.from_site.clone(), m.to_site.clone());
    let mut slowed = Vec::new();
    if let Some(bw) = bw {
        for o in state.moves.values_mut().filter(|o| {
            o.phase == MovePhase::Running
                && ((o.from_site == from && o.to_site == to)
                    || (o.from_site == to && o.to_site == from))
                && o.bandwidth_mib_s.is_some_and(|b| b > bw)
        }) {
            o.bandwidth_mib_s = Some(bw);
            slowed.push(o.id.clone());
        }
    }
    let m = state.moves.get_mut(id).expect("checked");
    m.phase = MovePhase::Running;
    m.executor = Some(executor);
    m.bandwidth_mib_s = bw;
    let cap = match (bw, l) {
        (Some(bw), Some(l)) => format!(
            "capped at {bw} MiB/s (the WAN {}–{} is {} Mbit/s, migrations may use {:.0} % of it)",
            l.between[0],
            l.between[1],
            l.mbit,
            l.migration_share * 100.0
        ),
        _ => "within one site: uncapped".to_string(),
    };
    let slowed = if slowed.is_empty() {
        String::new()
    } else {
        format!("; {} slowed to the same share", slowed.join(", "))
    };
    Ok(format!(
        "move {id} started by appliance {executor}: {} {}/{} → {}/{}, attempt {}, {cap}{slowed}",
        m.vm, m.from_site, m.from_host, m.to_site, m.to_host, m.attempt
    ))
}

/// Records a running move's progress (not audited: it is frequent).
pub fn progress(
    state: &mut ClusterState,
    id: &str,
    by: NodeId,
    p: &MoveProgress,
) -> Result<(), Refusal> {
    let m = running_by(state, id, by)?;
    m.progress = Some(p.clone());
    Ok(())
}

/// The executor reports how move `id` ended. A failed move is re-planned to
/// another host when one fits and retries are left.
pub fn finish(
    state: &mut ClusterState,
    id: &str,
    by: NodeId,
    result: &MoveResult,
    index: u64,
) -> Result<String, Refusal> {
    running_by(state, id, by)?;
    let m = state.moves.get_mut(id).expect("checked");
    m.result = Some(result.clone());
    let mut what = match result {
        MoveResult::Done {
            downtime_ms,
            data_total,
            wall_ms,
        } => {
            m.phase = MovePhase::Done;
            m.outcome = format!(
                "live-migrated in {:.1} s, downtime {}, guest memory {}",
                *wall_ms as f64 / 1000.0,
                downtime_ms.map_or("unknown".into(), |d| format!("{d} ms")),
                data_total.map_or("unknown".into(), |d| format!(
                    "{:.1} MiB",
                    d as f64 / 1048576.0
                ))
            );
            format!(
                "move {id} done: {} runs at site {} on {} ({})",
                m.vm, m.to_site, m.to_host, m.outcome
            )
        }
        MoveResult::Failed { reason } => {
            m.phase = MovePhase::Failed;
            m.outcome = reason.clone();
            format!("move {id} of {} failed: {reason}", m.vm)
        }
        MoveResult::Cancelled { reason } => {
            m.phase = MovePhase::Cancelled;
            m.outcome = reason.clone();
            format!("move {id} of {} cancelled: {reason}", m.vm)
        }
    };
    let m = m.clone();
    match result {
        MoveResult::Done { .. } => {
            if let Some(v) = state.vms.get_mut(&m.vm) {
                v.site = m.to_site.clone();
                v.host = m.to_host.clone();
            }
        }
        MoveResult::Failed { .. } => what.push_str(&format!("; {}", replan(state, &m, index))),
        MoveResult::Cancelled { .. } => {}
    }
    prune(state);
    Ok(what)
}

/// After move `m` failed: another host in its scope, if one fits and
/// retries are left. Says what was decided.
fn replan(state: &mut ClusterState, m: &Move, index: u64) -> String {
    let stays = format!("{} stays at site {} on {}", m.vm, m.from_site, m.from_host);
    if m.attempt > state.migration.retries {
        return format!("{stays}: no retries left ({} tried)", m.attempt);
    }
    let Some(v) = state.vms.get(&m.vm) else {
        return format!("{} is no longer in the inventory", m.vm);
    };
    let mut avoid = m.failed_hosts.clone();
    avoid.push(m.to_host.clone());
    avoid.push(v.host.clone());
    let candidates = hosts_at(state, &m.scope, &avoid);
    let d: Vec<VmDemand> = demand(state, &m.vm).into_iter().collect();
    let p = place(&d, &candidates, &loads(state));
    let Some(host) = p.assigned.get(&m.vm) else {
        return format!("{stays}: no other host fits");
    };
    state.next_id += 1;
    let mut again = m.clone();
    again.id = format!("m{}", state.next_id);
    again.to_host = host.clone();
    again.to_site = state.hosts[host].site.clone();
    again.from_site = v.site.clone();
    again.from_host = v.host.clone();
    again.phase = MovePhase::Pending;
    again.executor = None;
    again.attempt += 1;
    again.cancel_requested = false;
    again.progress = None;
    again.bandwidth_mib_s = None;
    again.failed_hosts = avoid;
    again.failed_hosts.retain(|h| !h.is_empty() && *h != v.host);
    again.outcome = String::new();
    again.result = None;
    again.reason = format!("re-planned after {} failed ({})", m.id, m.reason);
    again.planned_at = index;
    let what = format!(
        "re-planned as {}: {} → {}/{}",
        again.id, m.vm, again.to_site, again.to_host
    );
    if let Some(plan) = state.plans.get_mut(&m.plan) {
        plan.moves.push(again.id.clone());
    }
    state.moves.insert(again.id.clone(), again);
    what
}

/// An operator cancels move `id`, or every unfinished move of plan `id`.
pub fn cancel(state: &mut ClusterState, id: &str) -> Result<String, Refusal> {
    let ids: Vec<MoveId> = match state.plans.get(id) {
        Some(plan) => plan
            .moves
            .iter()
            .filter(|m| state.moves.get(*m).is_some_and(|m| m.phase.is_active()))
            .cloned()
            .collect(),
        None => vec![get(state, id)?.id.clone()],
    };
    let mut said = Vec::new();
    for mid in ids {
        let m = state.moves.get_mut(&mid).expect("listed");
        match m.phase {
            MovePhase::Pending => {
                m.phase = MovePhase::Cancelled;
                m.outcome = "cancelled by an operator before it started".into();
                said.push(format!(
                    "move {mid} of {} cancelled before it started",
                    m.vm
                ));
            }
            MovePhase::Running => {
                m.cancel_requested = true;
                said.push(format!(
                    "move {mid} of {}: cancel requested, appliance {} aborts it",
                    m.vm,
                    m.executor.unwrap_or_default()
                ));
            }
            phase => return refuse(format!("move {mid} is {phase} already")),
        }
    }
    if said.is_empty() {
        return refuse(format!("plan {id} has no unfinished move"));
    }
    Ok(said.join("; "))
}

/// Appliance `to` takes over running move `id` from `from`, which it sees
/// down. Only one hand-over of a given executor applies.
pub fn hand_over(
    state: &mut ClusterState,
    id: &str,
    from: NodeId,
    to: NodeId,
    why: &str,
) -> Result<String, Refusal> {
    let m = get(state, id)?;
    if m.phase != MovePhase::Running || m.executor != Some(from) {
        return refuse(format!(
            "move {id} is {} under appliance {:?}, not running under {from}",
            m.phase, m.executor
        ));
    }
    let m = state.moves.get_mut(id).expect("checked");
    m.executor = Some(to);
    Ok(format!(
        "move {id} of {} handed over from appliance {from} to {to}: {why}",
        m.vm
    ))
}

fn get<'a>(state: &'a ClusterState, id: &str) -> Result<&'a Move, Refusal> {
    state
        .moves
        .get(id)
        .ok_or_else(|| Refusal(format!("no move or plan '{id}'")))
}

fn running_by<'a>(
    state: &'a mut ClusterState,
    id: &str,
    by: NodeId,
) -> Result<&'a mut Move, Refusal> {
    let m = state
        .moves
        .get_mut(id)
        .ok_or_else(|| Refusal(format!("no move '{id}'")))?;
    if m.phase != MovePhase::Running {
        return refuse(format!("move {id} is {}, not running", m.phase));
    }
    if m.executor != Some(by) {
        return refuse(format!(
            "move {id} is driven by appliance {}, not {by}",
            m.executor.unwrap_or_default()
        ));
    }
    Ok(m)
}

/// Drops the oldest finished moves and plans beyond what is kept.
fn prune(state: &mut ClusterState) {
    let mut finished: Vec<(u64, u64, MoveId)> = state
        .moves
        .values()
        .filter(|m| !m.phase.is_active())
        .map(|m| (m.planned_at, seq(&m.id), m.id.clone()))
        .collect();
    if finished.len() > KEPT_FINISHED {
        finished.sort();
        for (_, _, id) in &finished[..finished.len() - KEPT_FINISHED] {
            state.moves.remove(id);
        }
    }
    if state.plans.len() > KEPT_PLANS {
        let mut plans: Vec<(u64, String)> = state
            .plans
            .values()
            .map(|p| (p.planned_at, p.id.clone()))
            .collect();
        plans.sort();
        for (_, id) in &plans[..plans.len() - KEPT_PLANS] {
            let keep = state.plans[id]
                .moves
                .iter()
                .any(|m| state.moves.get(m).is_some_and(|m| m.phase.is_active()));
            if !keep {
                state.plans.remove(id);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::core::inventory::Inventory;
    use crate::core::state::{Command, Host, Site, StorageMode, Vm, VmCheck, VmSpec};
    use proptest::prelude::*;

    /// An inventory of campuses a, b, c and witness w; `hosts` as (name,
    /// site, MiB) with 16000 MHz, `libvirt_uri` `qemu:///NAME` and migration
    /// addresses 10.70.0.2, .3, … in order; `vms` as (id, host, MiB) with
    /// 1000 MHz, at home where they start; a 100 Mbit/s WAN link (half for
    /// migrations) between every two campuses.
    pub(crate) fn inventory(hosts: &[(&str, &str, u64)], vms: &[(&str, &str, u64)]) -> Inventory {
        let mut inv = Inventory::default();
        for id in ["a", "b", "c", "w"] {
            inv.sites.push(Site {
                id: id.into(),
                location: None,
                witness: id == "w",
            });
        }
        for (i, (name, site, mem)) in hosts.iter().enumerate() {
            inv.hosts.push(Host {
                name: name.to_string(),
                site: site.to_string(),
                cpu_mhz: 16000,
                memory_mib: *mem,
                libvirt_uri: format!("qemu:///{name}"),
                migration_address: format!("10.70.0.{}", 2 + i),
            });
        }
        for (i, (id, host, mem)) in vms.iter().enumerate() {
            let site = hosts
                .iter()
                .find(|h| h.0 == *host)
                .expect("a listed host")
                .1;
            inv.vms.push(Vm {
                id: id.to_string(),
                mac: format!("52:54:00:70:00:{:02x}", 0x10 + i),
                ip: format!("10.70.0.{}", 10 + i),
                priority: 1,
                site: site.to_string(),
                host: host.to_string(),
                storage: StorageMode::Shared,
                check: VmCheck::default(),
                spec: VmSpec {
                    vcpus: 1,
                    cpu_mhz: 1000,
                    memory_mib: *mem,
                    domain_xml: String::new(),
                    home_site: site.to_string(),
                    home_host: None,
                },
            });
        }
        for (a, b) in [("a", "b"), ("a", "c"), ("b", "c")] {
            inv.wan.push(WanLink {
                between: [a.into(), b.into()],
                mbit: 100,
                migration_share: 0.5,
            });
        }
        inv
    }

    fn state(hosts: &[(&str, &str, u64)], vms: &[(&str, &str, u64)]) -> ClusterState {
        let mut s = ClusterState::default();
        let apply = Command::ApplyInventory(inventory(hosts, vms));
        let ch = s.apply(1, &crate::core::state::tests::p(apply));
        assert_eq!(ch.rejected, None);
        s
    }

    fn lab() -> ClusterState {
        state(
            &[("a1", "a", 4096), ("b1", "b", 4096), ("c1", "c", 4096)],
            &[
                ("lms1", "a1", 1024),
                ("lms2", "a1", 512),
                ("lms3", "a1", 256),
            ],
        )
    }

    fn planned(s: &mut ClusterState, intent: Intent) -> Result<Vec<Move>, Refusal> {
        let p = plan(s, &intent, "test", 10)?;
        let moves = p.moves.clone();
        store(s, p);
        Ok(moves)
    }

    fn migrate(vm: &str, site: &str, host: Option<&str>) -> Intent {
        Intent::Migrate {
            vm: vm.into(),
            to_site: site.into(),
            to_host: host.map(String::from),
        }
    }

    #[test]
    fn an_evacuation_spreads_the_vms_over_the_other_campuses_largest_first() {
        let mut s = lab();
        let moves = planned(&mut s, Intent::Evacuate { site: "a".into() }).unwrap();
        let got: Vec<(&str, &str)> = moves
            .iter()
            .map(|m| (m.vm.as_str(), m.to_host.as_str()))
            .collect();
        assert_eq!(got, [("lms1", "b1"), ("lms2", "c1"), ("lms3", "c1")]);
        assert!(moves
            .iter()
            .all(|m| m.phase == MovePhase::Pending && m.from_host == "a1"));
        // Ids are handed out in order, after the plan's.
        assert_eq!(s.plans["p1"].moves, ["m2", "m3", "m4"]);
        // The same state gives the same plan.
        assert_eq!(
            plan(&lab(), &Intent::Evacuate { site: "a".into() }, "test", 10)
                .unwrap()
                .moves,
            moves
        );
    }

    #[test]
    fn what_fits_nowhere_is_named_and_capacity_counts_moves_in_flight() {
        let mut s = state(
            &[("a1", "a", 8192), ("b1", "b", 1024)],
            &[("big", "a1", 2048), ("small", "a1", 768)],
        );
        s.wan
            .retain(|w| w.between == ["a".to_string(), "b".to_string()]);
        planned(&mut s, Intent::Evacuate { site: "a".into() }).unwrap();
        let p = &s.plans["p1"];
        assert_eq!(p.moves.len(), 1);
        assert!(
            p.unplaced[0].starts_with("VM big fits on no host"),
            "{:?}",
            p.unplaced
        );
        // b1 has 256 MiB left while `small` is on its way there.
        let e = planned(&mut s, migrate("big", "b", None)).unwrap_err();
        assert!(e.0.contains("fits on no host"), "{e}");
    }

    #[test]
    fn refusals_say_why_and_store_nothing() {
        let mut s = lab();
        let cases = [
            (migrate("nope", "b", None), "unknown VM 'nope'"),
            (migrate("lms1", "x", None), "unknown site 'x'"),
            (migrate("lms1", "w", None), "site w is a witness"),
            (migrate("lms1", "a", Some("a1")), "already runs at site a"),
            (
                migrate("lms1", "b", Some("c1")),
                "host c1 is at site c, not b",
            ),
            (
                Intent::Evacuate { site: "b".into() },
                "no VM runs at site b",
            ),
            (Intent::Failback, "every VM is at its home site"),
        ];
        for (intent, want) in cases {
            let e = plan(&s, &intent, "test", 10).unwrap_err();
            assert!(e.0.contains(want), "{intent:?}: {e}");
        }
        s.wan.clear();
        let e = plan(&s, &migrate("lms1", "b", None), "t", 10).unwrap_err();
        assert!(e.0.contains("no [[wan]] link between a and b"), "{e}");
        assert!(s.moves.is_empty() && s.plans.is_empty());
    }

    #[test]
    fn a_vm_moves_once_at_a_time() {
        let mut s = lab();
        planned(&mut s, migrate("lms1", "b", None)).unwrap();
        let e = plan(&s, &migrate("lms1", "c", None), "t", 11).unwrap_err();
        assert!(e.0.contains("already moving (m2"), "{e}");
        planned(&mut s, Intent::Evacuate { site: "a".into() }).unwrap();
        assert!(s.plans["p3"]
            .unplaced
            .iter()
            .any(|u| u.contains("lms1 is already moving")));
    }

    #[test]
    fn a_move_runs_finishes_and_the_vm_is_where_it_went() {
        let mut s = lab();
        let m = planned(&mut s, migrate("lms1", "b", None))
            .unwrap()
            .remove(0);
        let said = start(&mut s, &m.id, 1).unwrap();
        assert!(said.contains("capped at 5 MiB/s"), "{said}");
        assert!(start(&mut s, &m.id, 2).is_err(), "started twice");
        let p = MoveProgress {
            data_total: 100,
            data_processed: 40,
            data_remaining: 60,
            ..Default::default()
        };
        assert!(
            progress(&mut s, &m.id, 2, &p).is_err(),
            "progress from a stranger"
        );
        progress(&mut s, &m.id, 1, &p).unwrap();
        assert_eq!(s.moves[&m.id].progress.as_ref().unwrap().percent(), 40);
        let done = MoveResult::Done {
            downtime_ms: Some(120),
            data_total: Some(100),
            wall_ms: 3000,
        };
        assert!(finish(&mut s, &m.id, 2, &done, 12).is_err());
        let said = finish(&mut s, &m.id, 1, &done, 12).unwrap();
        assert!(said.contains("lms1 runs at site b on b1"), "{said}");
        assert_eq!(
            (s.vms["lms1"].site.as_str(), s.vms["lms1"].host.as_str()),
            ("b", "b1")
        );
        // Failback brings it home.
        let back = planned(&mut s, Intent::Failback).unwrap();
        assert_eq!(
            (back[0].vm.as_str(), back[0].to_host.as_str()),
            ("lms1", "a1")
        );
    }

    #[test]
    fn a_failed_move_is_replanned_to_another_host_then_gives_up() {
        let mut s = lab();
        let moves = planned(&mut s, Intent::Evacuate { site: "a".into() }).unwrap();
        let m = &moves[0];
        start(&mut s, &m.id, 1).unwrap();
        let fail = MoveResult::Failed {
            reason: "destination libvirt went away".into(),
        };
        let said = finish(&mut s, &m.id, 1, &fail, 20).unwrap();
        assert!(said.contains("re-planned as m5: lms1 → c/c1"), "{said}");
        assert_eq!(
            s.vms["lms1"].site, "a",
            "a failed move leaves the VM at its source"
        );
        let again = s.moves["m5"].clone();
        assert_eq!((again.attempt, again.phase), (2, MovePhase::Pending));
        start(&mut s, "m5", 1).unwrap();
        let said = finish(&mut s, "m5", 1, &fail, 21).unwrap();
        assert!(said.contains("no retries left"), "{said}");
    }

    #[test]
    fn cancel_stops_a_pending_move_at_once_and_asks_a_running_one() {
        let mut s = lab();
        planned(&mut s, Intent::Evacuate { site: "a".into() }).unwrap();
        start(&mut s, "m2", 1).unwrap();
        cancel(&mut s, "m3").unwrap();
        assert_eq!(s.moves["m3"].phase, MovePhase::Cancelled);
        let said = cancel(&mut s, "p1").unwrap();
        assert!(said.contains("m2 of lms1: cancel requested"), "{said}");
        assert!(s.moves["m2"].cancel_requested);
        assert_eq!(s.moves["m4"].phase, MovePhase::Cancelled);
        assert!(cancel(&mut s, "m3").is_err());
        assert!(cancel(&mut s, "nope").is_err());
    }

    #[test]
    fn one_hand_over_of_an_executor_applies() {
        let mut s = lab();
        planned(&mut s, migrate("lms1", "b", None)).unwrap();
        start(&mut s, "m2", 1).unwrap();
        hand_over(&mut s, "m2", 1, 2, "down").unwrap();
        assert!(hand_over(&mut s, "m2", 1, 3, "down").is_err());
        assert_eq!(s.moves["m2"].executor, Some(2));
    }

    #[test]
    fn parallel_migrations_on_one_link_share_its_migration_bandwidth() {
        let mut s = lab();
        planned(&mut s, migrate("lms1", "b", None)).unwrap();
        planned(&mut s, migrate("lms2", "b", None)).unwrap();
        // 100 Mbit/s × 0.5 / 2 migrations = 25 Mbit/s = 2.98 MiB/s → 2.
        assert_eq!(bandwidth_for(&s, &s.moves["m2"].clone()), Some(2));
        // The first alone gets the link's whole share; the second's start
        // slows it to the same.
        cancel(&mut s, "m4").unwrap();
        start(&mut s, "m2", 1).unwrap();
        assert_eq!(s.moves["m2"].bandwidth_mib_s, Some(5));
        planned(&mut s, migrate("lms2", "b", None)).unwrap();
        let said = start(&mut s, "m6", 1).unwrap();
        assert!(said.contains("m2 slowed to the same share"), "{said}");
        assert_eq!(s.moves["m2"].bandwidth_mib_s, Some(2));
        assert_eq!(s.moves["m6"].bandwidth_mib_s, Some(2));
    }

    proptest! {
        /// Whatever runs where, an evacuation never overfills a host: what
        /// stays plus what arrives fits each host's memory.
        #[test]
        fn an_evacuation_never_overfills_a_host(
            mems in proptest::collection::vec(64u64..3000, 1..12),
            hosts in proptest::collection::vec(512u64..8192, 3..6),
        ) {
            let names: Vec<String> = (0..hosts.len()).map(|i| format!("h{i}")).collect();
            let sites = ["a", "b", "c"];
            let hs: Vec<(&str, &str, u64)> = names
                .iter()
                .zip(&hosts)
                .enumerate()
                .map(|(i, (n, m))| (n.as_str(), sites[i % 3], *m))
                .collect();
            let vm_names: Vec<String> = (0..mems.len()).map(|i| format!("v{i}")).collect();
            // Each VM on the host with the most room left, as far as it fits.
            let mut left: Vec<u64> = hosts.clone();
            let mut vs = Vec::new();
            for (n, m) in vm_names.iter().zip(&mems) {
                let (i, _) = left.iter().enumerate().max_by_key(|(_, l)| **l).unwrap();
                if left[i] >= *m {
                    left[i] -= m;
                    vs.push((n.as_str(), names[i].as_str(), *m));
                }
            }
            let mut s = state(&hs, &vs);
            if planned(&mut s, Intent::Evacuate { site: "a".into() }).is_ok() {
                let mut used: BTreeMap<String, u64> = BTreeMap::new();
                for v in s.vms.values() {
                    let host = match active_move_of(&s, &v.id) {
                        Some(m) => m.to_host.clone(),
                        None => v.host.clone(),
                    };
                    *used.entry(host).or_default() += v.spec.memory_mib;
                }
                for (h, u) in used {
                    prop_assert!(u <= s.hosts[&h].memory_mib, "{h}: {u} MiB");
                }
                prop_assert!(s.moves.values().all(|m| m.to_site != "a"));
            }
        }
    }
}
