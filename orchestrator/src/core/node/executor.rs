//! What one appliance does about the replicated moves: claim the pending
//! moves of its site (at most `max_parallel` at once), drive them through
//! the shell ([`Effect::Migrate`]), report their progress and outcome,
//! abort cancelled ones, and take over the moves of an executor it sees
//! down. Decisions are the state's ([`crate::core::moves`]); this only
//! proposes them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Effect, Node, NodeError};
use crate::core::detect::PeerHealth;
use crate::core::moves::{
    self, Encryption, MigrationPolicy, Move, MoveId, MovePhase, MoveProgress, MoveResult,
};
use crate::core::state::{ClusterState, Command, NodeId, VmId};

/// Progress is committed at most this often per move ("a few times a second").
const PROGRESS_EVERY: Duration = Duration::from_millis(300);
/// A hand-over not committed this long is proposed again.
const HAND_OVER_RETRY: Duration = Duration::from_secs(2);

/// Everything the shell needs to run one live migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationOrder {
    pub id: MoveId,
    pub vm: VmId,
    pub source_host: String,
    pub source_uri: String,
    pub dest_host: String,
    pub dest_uri: String,
    /// Where the stream goes (`tcp://ADDRESS`; libvirt picks the port).
    pub stream_uri: Option<String>,
    pub bandwidth_mib_s: Option<u64>,
    /// Post-copy may be used for this move.
    pub post_copy: bool,
    /// How migrations run (the inventory's `[migration]` table).
    pub policy: MigrationPolicy,
}

impl MigrationOrder {
    /// The order for move `m`, or why it cannot run.
    pub fn of(state: &ClusterState, m: &Move) -> Result<MigrationOrder, String> {
        let host = |name: &str| {
            state
                .hosts
                .get(name)
                .ok_or_else(|| format!("host {name} is no longer in the inventory"))
        };
        let (src, dst) = (host(&m.from_host)?, host(&m.to_host)?);
        for h in [src, dst] {
            if h.libvirt_uri.is_empty() {
                return Err(format!(
                    "host {} has no libvirt_uri in the inventory",
                    h.name
                ));
            }
        }
        let p = &state.migration;
        let stream_uri = match p.encryption {
            Encryption::Vpn if dst.migration_address.is_empty() => {
                return Err(format!(
                    "host {} has no migration_address: with encryption = \"vpn\" the stream must go to its address inside the VPN, never in the clear",
                    dst.name
                ))
            }
            _ if dst.migration_address.is_empty() => None,
            _ => Some(match dst.migration_address.parse::<std::net::Ipv6Addr>() {
                Ok(v6) => format!("tcp://[{v6}]"),
                Err(_) => format!("tcp://{}", dst.migration_address),
            }),
        };
        Ok(MigrationOrder {
            id: m.id.clone(),
            vm: m.vm.clone(),
            source_host: src.name.clone(),
            source_uri: src.libvirt_uri.clone(),
            dest_host: dst.name.clone(),
            dest_uri: dst.libvirt_uri.clone(),
            stream_uri,
            bandwidth_mib_s: m.bandwidth_mib_s,
            post_copy: m.post_copy,
            policy: p.clone(),
        })
    }
}

/// The executor's local bookkeeping (not replicated).
#[derive(Debug, Default)]
pub(super) struct Executor {
    /// Moves this appliance proposed to start, in this run.
    claimed: BTreeSet<MoveId>,
    /// Moves handed to the shell (migrating or resolving).
    driving: BTreeSet<MoveId>,
    /// Moves whose abort was handed to the shell.
    aborting: BTreeSet<MoveId>,
    /// When progress of a move was last proposed.
    progress_at: BTreeMap<MoveId, Duration>,
    /// Hand-overs proposed, and when.
    handing: BTreeMap<MoveId, Duration>,
    /// The bandwidth each driven move's migration was given.
    speed: BTreeMap<MoveId, Option<u64>>,
}

impl Node {
    /// A running migration's stats, from the shell. Committed at most every
    /// [`PROGRESS_EVERY`] per move.
    pub fn migration_progress(
        &mut self,
        id: &str,
        progress: MoveProgress,
        now: super::Now,
    ) -> Result<Vec<Effect>, NodeError> {
        self.now = now;
        let due = self
            .exec
            .progress_at
            .get(id)
            .is_none_or(|at| now.mono.saturating_sub(*at) >= PROGRESS_EVERY);
        if self.exec.driving.contains(id) && due {
            self.exec.progress_at.insert(id.to_string(), now.mono);
            self.report(
                format!("move/{id}/progress"),
                Command::ReportMoveProgress {
                    id: id.to_string(),
                    by: self.cfg.me,
                    progress,
                },
            );
            self.repropose();
        }
        self.finish()
    }

    /// How a migration the shell ran (or resolved) ended: committed, proposed
    /// again until it is.
    pub fn migration_done(
        &mut self,
        id: &str,
        result: MoveResult,
        now: super::Now,
    ) -> Result<Vec<Effect>, NodeError> {
        self.now = now;
        let what = match &result {
            MoveResult::Done { .. } => "done".to_string(),
            MoveResult::Failed { reason } => format!("failed: {reason}"),
            MoveResult::Cancelled { reason } => format!("cancelled: {reason}"),
        };
        let vm = self.state().moves.get(id).map(|m| m.vm.clone());
        self.record("move", None, None, vm, format!("move {id} {what}"));
        self.pending.remove(&format!("move/{id}/progress"));
        self.report(
            format!("move/{id}/finish"),
            Command::FinishMove {
                id: id.to_string(),
                by: self.cfg.me,
                result,
            },
        );
        self.repropose();
        self.finish()
    }

    /// The appliance that drives a move from `site` now: the lowest-numbered
    /// live campus appliance there.
    fn executor_at(&self, site: &str) -> Option<NodeId> {
        let live = self.live_set();
        let mut at: Vec<NodeId> = self
            .cfg
            .peers
            .iter()
            .filter(|p| !p.witness && p.site == site)
            .map(|p| p.id)
            .collect();
        if !self.cfg.witness && self.cfg.site == site {
            at.push(self.cfg.me);
        }
        at.into_iter().filter(|id| live.contains(id)).min()
    }

    /// Who takes over move `m` from its executor, which is down: a live
    /// appliance at the source site, else at the destination, else any live
    /// campus appliance; the lowest-numbered of the first such group.
    fn heir_of(&self, m: &Move, gone: NodeId) -> Option<NodeId> {
        let live = self.live_set();
        let mut campus: Vec<(NodeId, &str)> = self
            .cfg
            .peers
            .iter()
            .filter(|p| !p.witness)
            .map(|p| (p.id, p.site.as_str()))
            .collect();
        if !self.cfg.witness {
            campus.push((self.cfg.me, self.cfg.site.as_str()));
        }
        campus.retain(|(id, _)| *id != gone && live.contains(id));
        let pick = |site: Option<&str>| {
            campus
                .iter()
                .filter(|(_, s)| site.is_none_or(|want| *s == want))
                .map(|(id, _)| *id)
                .min()
        };
        pick(Some(&m.from_site))
            .or_else(|| pick(Some(&m.to_site)))
            .or_else(|| pick(None))
    }

    /// Proposes and hands to the shell what the moves in the state call for.
    pub(super) fn drive_moves(&mut self) {
        if self.cfg.witness {
            return;
        }
        let me = self.cfg.me;
        let now = self.now.mono;
        let active: Vec<Move> = moves::active(self.state()).cloned().collect();
        // Forget moves that ended or went elsewhere.
        let mine: BTreeSet<MoveId> = active
            .iter()
            .filter(|m| m.phase == MovePhase::Running && m.executor == Some(me))
            .map(|m| m.id.clone())
            .collect();
        let pending_ids: BTreeSet<MoveId> = active.iter().map(|m| m.id.clone()).collect();
        self.exec.driving.retain(|id| mine.contains(id));
        self.exec.aborting.retain(|id| mine.contains(id));
        self.exec.progress_at.retain(|id, _| mine.contains(id));
        self.exec.speed.retain(|id, _| mine.contains(id));
        self.exec.claimed.retain(|id| pending_ids.contains(id));
        self.exec.handing.retain(|id, _| pending_ids.contains(id));

        let max_parallel = self.state().migration.max_parallel.max(1) as usize;
        let mut busy = active
            .iter()
            .filter(|m| m.from_site == self.cfg.site && m.phase == MovePhase::Running)
            .count()
            + active
                .iter()
                .filter(|m| m.phase == MovePhase::Pending && self.exec.claimed.contains(&m.id))
                .count();
        for m in &active {
            match m.phase {
                MovePhase::Pending => {
                    if self.exec.claimed.contains(&m.id)
                        || busy >= max_parallel
                        || self.executor_at(&m.from_site) != Some(me)
                    {
                        continue;
                    }
                    busy += 1;
                    self.exec.claimed.insert(m.id.clone());
                    self.report(
                        format!("move/{}/start", m.id),
                        Command::StartMove {
                            id: m.id.clone(),
                            executor: me,
                        },
                    );
                }
                MovePhase::Running if m.executor == Some(me) => {
                    match self.exec.speed.get(&m.id) {
                        Some(had) if *had != m.bandwidth_mib_s => {
                            if let Some(mib_s) = m.bandwidth_mib_s {
                                self.out.push(Effect::SetMigrationBandwidth {
                                    id: m.id.clone(),
                                    mib_s,
                                });
                            }
                        }
                        _ => {}
                    }
                    self.exec.speed.insert(m.id.clone(), m.bandwidth_mib_s);
                    if !self.exec.driving.contains(&m.id) {
                        self.exec.driving.insert(m.id.clone());
                        match MigrationOrder::of(self.state(), m) {
                            Err(reason) => {
                                self.report(
                                    format!("move/{}/finish", m.id),
                                    Command::FinishMove {
                                        id: m.id.clone(),
                                        by: me,
                                        result: MoveResult::Failed { reason },
                                    },
                                );
                            }
                            Ok(order) if self.exec.claimed.contains(&m.id) => {
                                let detail = format!(
                                    "move {}: live-migrating {} from {} to {}",
                                    m.id, m.vm, order.source_host, order.dest_host
                                );
                                self.record("move", None, None, Some(m.vm.clone()), detail);
                                self.out.push(Effect::Migrate(order));
                            }
                            Ok(order) => {
                                let detail = format!(
                                    "move {}: taken over; finding where {} runs",
                                    m.id, m.vm
                                );
                                self.record("move", None, None, Some(m.vm.clone()), detail);
                                self.out.push(Effect::ResolveMove(order));
                            }
                        }
                    }
                    if m.cancel_requested && self.exec.aborting.insert(m.id.clone()) {
                        self.out.push(Effect::AbortMigration { id: m.id.clone() });
                    }
                }
                MovePhase::Running => {
                    let Some(exec) = m.executor else { continue };
                    let gone = match self.cfg.peers.iter().find(|p| p.id == exec) {
                        None => true,
                        Some(_) => matches!(self.health_of(exec), PeerHealth::Down),
                    };
                    let recent = self
                        .exec
                        .handing
                        .get(&m.id)
                        .is_some_and(|at| now.saturating_sub(*at) < HAND_OVER_RETRY);
                    if !gone || recent || self.heir_of(m, exec) != Some(me) {
                        continue;
                    }
                    self.exec.handing.insert(m.id.clone(), now);
                    self.exec.claimed.remove(&m.id);
                    self.report(
                        format!("move/{}/hand-over", m.id),
                        Command::HandOverMove {
                            id: m.id.clone(),
                            from: exec,
                            to: me,
                            why: format!("appliance {exec} is down, as appliance {me} sees it"),
                        },
                    );
                }
                _ => {}
            }
        }
        self.repropose();
    }
}
