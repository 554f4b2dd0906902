//! The appliance core: everything one appliance decides, with no I/O.
//!
//! A [`Node`] owns the Raft [`Replica`] and the service [`Monitor`], and holds
//! what the shell used to keep beside them:
//!
//! * proposals from the control socket and their waiters, retried when a
//!   leader changes or a forwarded proposal is lost, and expired at their
//!   deadline;
//! * pending health reports, coalesced per subject and proposed again until
//!   they commit;
//! * the MAC-move rule that turns "the VPN saw this MAC at campus X" into a
//!   VM's new location;
//! * the watcher live set, computed here and only here ([`Node::live_set`]);
//! * the meaning of every control request.
//!
//! It takes the time ([`Now`]) and one input per call, and returns
//! [`Effect`]s: Raft messages to send, changes applied, replies to control
//! calls, checks to run. `hinan run` ([`crate::shell::appliance`]) feeds it
//! from sockets; the simulator feeds it from a virtual network. Both run this
//! same code.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use hinan_vpn::endpoint::MacLocation;
use raft::prelude::Message;

use crate::config::Config;
use crate::core::control::{
    AppliedReply, EventRecord, PeerView, ProposeReply, Request, Response, StatusReply,
};
use crate::core::detect::{DetectorEvent, PathId, PeerHealth};
use crate::core::monitor::{
    assign_watchers, CheckKind, CheckRequest, Monitor, MonitorConfig, MonitorEvent, ServiceCheck,
    VmTarget, Watchers,
};
use crate::core::replica::{Output, ProposalId, ProposeError, Replica};
use crate::core::state::{
    ClusterState, Command, Health, NodeId, Proposal, RunningDomain, SiteId, StateChange, VmCheck,
    VmId,
};

mod executor;
#[cfg(test)]
mod tests;

pub use executor::MigrationOrder;

/// Events kept for `Events` requests.
const EVENT_LOG: usize = 10_000;
/// How long a health report may stay uncommitted before it is proposed again.
const REPROPOSE: Duration = Duration::from_secs(2);
/// A proposal not committed this long after its last try is proposed again:
/// a forwarded proposal lost with a connection is never resent by Raft.
const RETRY_AFTER: Duration = Duration::from_millis(1000);
/// Deadlines of control requests that name none.
const PROPOSE_TIMEOUT_MS: u64 = 3000;
const APPLIED_TIMEOUT_MS: u64 = 3000;
const MEMBERSHIP_TIMEOUT_MS: u64 = 5000;

/// The time, as the caller's clock tells it: the core reads no clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time since any fixed origin (deadlines, retries, checks).
    pub mono: Duration,
    /// Wall-clock time in µs since the Unix epoch (proposals and records).
    pub unix_us: u64,
}

/// Identifies one control call, so that its reply reaches the right caller.
pub type CallId = u64;

/// What the caller must do after an input, in order.
#[derive(Debug)]
pub enum Effect {
    /// Send a Raft message to `msg.to`.
    Send(Message),
    /// These entries were applied: the state changed.
    Applied(Vec<StateChange>),
    /// Answer control call `call`.
    Reply { call: CallId, response: Response },
    /// Run this service check and hand its result to [`Node::check_done`].
    Check(CheckRequest),
    /// Drive this live migration; report with [`Node::migration_progress`]
    /// and [`Node::migration_done`].
    Migrate(MigrationOrder),
    /// Abort the running migration of this move (an operator cancelled it).
    AbortMigration { id: crate::core::moves::MoveId },
    /// Change the bandwidth cap of this move's running migration (another
    /// migration now shares its link).
    SetMigrationBandwidth {
        id: crate::core::moves::MoveId,
        mib_s: u64,
    },
    /// This move's first executor is gone: find out where its VM runs (after
    /// any migration job still running ends) and report with
    /// [`Node::migration_done`].
    ResolveMove(MigrationOrder),
}

/// An error after which the appliance must stop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("the Raft log could not be written: {0}")]
    Storage(String),
}

/// What a node knows of another appliance, from its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub id: NodeId,
    pub name: String,
    pub site: SiteId,
    /// A witness votes only: it watches no VM.
    pub witness: bool,
    /// The configured paths heartbeats run on to this peer.
    pub paths: Vec<String>,
}

/// A node's fixed facts: who it is and who its peers are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub me: NodeId,
    pub name: String,
    pub site: SiteId,
    pub witness: bool,
    pub peers: Vec<PeerInfo>,
    /// Path names; a path's index here is its [`PathId`].
    pub path_names: Vec<String>,
    /// Distinguishes this run's request ids from an earlier run's.
    pub incarnation: u64,
}

impl NodeConfig {
    /// The node of an appliance configuration.
    pub fn from_config(cfg: &Config, incarnation: u64) -> NodeConfig {
        NodeConfig {
            me: cfg.appliance.id,
            name: cfg.appliance.name.clone(),
            site: cfg.appliance.site.clone(),
            witness: cfg.appliance.witness,
            peers: cfg
                .peers
                .iter()
                .map(|p| PeerInfo {
                    id: p.id,
                    name: p.name.clone(),
                    site: p.site.clone(),
                    witness: p.witness,
                    paths: p
                        .paths
                        .keys()
                        .filter(|n| cfg.cluster.paths.contains_key(*n))
                        .cloned()
                        .collect(),
                })
                .collect(),
            path_names: cfg.path_names(),
            incarnation,
        }
    }

    /// The appliances that may watch VMs: every campus appliance, never a witness.
    fn eligible(&self) -> Vec<NodeId> {
        let mut eligible: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|p| !p.witness)
            .map(|p| p.id)
            .collect();
        if !self.witness {
            eligible.push(self.me);
        }
        eligible.sort_unstable();
        eligible
    }
}

/// A control proposal waiting to commit.
#[derive(Debug)]
struct Waiter {
    call: CallId,
    start: Duration,
    deadline: Duration,
    /// Proposed again as is when leadership changes before it commits.
    proposal: Proposal,
    /// (term, leader) when last proposed, and when.
    under: (u64, Option<NodeId>),
    tried: Duration,
}

#[derive(Debug)]
struct PendingReport {
    command: Command,
    proposal: Option<(ProposalId, Duration)>,
}

/// One appliance's decisions.
#[derive(Debug)]
pub struct Node {
    cfg: NodeConfig,
    eligible: Vec<NodeId>,
    replica: Replica,
    monitor: Monitor,
    now: Now,
    /// How the failure detector sees each peer, as of its last event.
    health: BTreeMap<NodeId, PeerHealth>,
    /// Control proposals waiting to commit, by waiter id; a waiter may have
    /// been proposed under several proposal ids (retries), any of which
    /// completes it.
    waiters: HashMap<u64, Waiter>,
    waiter_of: HashMap<ProposalId, u64>,
    next_waiter: u64,
    /// Health reports not committed yet, the newest per subject.
    pending: BTreeMap<String, PendingReport>,
    /// (index, deadline, call) of `WaitApplied` requests.
    apply_waiters: Vec<(u64, Duration, CallId)>,
    /// (voter, add, deadline, call) of `Membership` requests.
    member_waiters: Vec<(NodeId, bool, Duration, CallId)>,
    events: VecDeque<EventRecord>,
    event_seq: u64,
    requests: u64,
    vms_changed: bool,
    live_changed: bool,
    last_check_error: HashMap<VmId, String>,
    /// What this appliance does about the replicated moves.
    exec: executor::Executor,
    /// A failure after which the appliance must stop.
    fatal: Option<NodeError>,
    out: Vec<Effect>,
}

impl Node {
    pub fn new(cfg: NodeConfig, replica: Replica) -> Node {
        let monitor = Monitor::new(cfg.me);
        Node {
            eligible: cfg.eligible(),
            cfg,
            replica,
            monitor,
            now: Now::default(),
            health: BTreeMap::new(),
            waiters: HashMap::new(),
            waiter_of: HashMap::new(),
            next_waiter: 0,
            pending: BTreeMap::new(),
            apply_waiters: Vec::new(),
            member_waiters: Vec::new(),
            events: VecDeque::new(),
            event_seq: 0,
            requests: 0,
            vms_changed: true,
            live_changed: true,
            last_check_error: HashMap::new(),
            exec: executor::Executor::default(),
            fatal: None,
            out: Vec::new(),
        }
    }

    pub fn id(&self) -> NodeId {
        self.cfg.me
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    pub fn state(&self) -> &ClusterState {
        self.replica.state()
    }

    pub fn monitor(&self) -> &Monitor {
        &self.monitor
    }

    /// Whether this appliance checks `vm` now (as P1, or as P2 while P1 is gone).
    pub fn is_watching(&self, vm: &str) -> bool {
        self.monitor.is_watching(vm)
    }

    /// Recorded events after `since`, oldest first.
    pub fn events_since(&self, since: u64) -> impl Iterator<Item = &EventRecord> {
        self.events.iter().filter(move |e| e.seq > since)
    }

    /// The P1 and P2 of every VM in the state, as every appliance computes them.
    pub fn watchers(&self) -> BTreeMap<VmId, Watchers> {
        let ids: Vec<VmId> = self.state().vms.keys().cloned().collect();
        assign_watchers(&ids, &self.eligible)
    }

    /// This appliance and the peers the detector sees on at least one path:
    /// the appliances that count as present when deciding who watches a VM.
    pub fn live_set(&self) -> BTreeSet<NodeId> {
        let mut live: BTreeSet<NodeId> = self
            .cfg
            .peers
            .iter()
            .filter(|p| {
                matches!(
                    self.health_of(p.id),
                    PeerHealth::Up | PeerHealth::Degraded { .. }
                )
            })
            .map(|p| p.id)
            .collect();
        live.insert(self.cfg.me);
        live
    }

    /// Control proposals not committed (nor expired) yet.
    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }

    /// When [`Node::checks_due`] has something to run next.
    pub fn next_check_deadline(&self) -> Option<Duration> {
        self.monitor.next_deadline()
    }

    /// A Raft tick (every [`crate::core::replica::TICK`]): also proposes
    /// again what did not commit, and expires waiters past their deadline.
    pub fn tick(&mut self, now: Now) -> Result<Vec<Effect>, NodeError> {
        self.now = now;
        let out = storage(self.replica.tick())?;
        self.handle(out);
        self.repropose();
        self.retry_waiters();
        self.expire_waiters();
        self.finish()
    }

    /// A Raft message from a peer.
    pub fn step(&mut self, msg: Message, now: Now) -> Result<Vec<Effect>, NodeError> {
        self.now = now;
        let out = storage(self.replica.step(msg))?;
        self.handle(out);
        self.finish()
    }

    /// Failure-detector events, with the detector's view of every peer after them.
    pub fn detected(
        &mut self,
        events: Vec<DetectorEvent>,
        health: BTreeMap<NodeId, PeerHealth>,
        now: Now,
    ) -> Result<Vec<Effect>, NodeError> {
        self.now = now;
        self.health = health;
        if !events.is_empty() {
            self.live_changed = true;
        }
        for e in events {
            let (kind, peer, path) = match e {
                DetectorEvent::PathDown { peer, path } => ("path-down", peer, Some(path)),
                DetectorEvent::PathUp { peer, path } => ("path-up", peer, Some(path)),
                DetectorEvent::SiteDown { peer } => ("site-down", peer, None),
                DetectorEvent::SiteUp { peer } => ("site-up", peer, None),
            };
            let site = self.site_of(peer);
            let path_name = path.map(|p| self.path_name(p));
            let on = path_name
                .as_deref()
                .map(|p| format!(" on {p}"))
                .unwrap_or_default();
            self.record(
                kind,
                Some(peer),
                path_name.clone(),
                None,
                format!("appliance {peer} (site {site}) {kind}{on}"),
            );
            if let Some(name) = path_name {
                self.report(
                    format!("link/{peer}/{name}"),
                    Command::ReportLinkHealth {
                        observer: self.cfg.me,
                        peer,
                        path: name,
                        up: kind == "path-up",
                    },
                );
            }
            let health = match self.health_of(peer) {
                PeerHealth::Up => Health::Up,
                PeerHealth::Degraded { .. } => Health::Degraded,
                PeerHealth::Down | PeerHealth::Unknown => Health::Down,
            };
            self.report(
                format!("site/{site}"),
                Command::ReportSiteHealth {
                    observer: self.cfg.me,
                    site,
                    health,
                },
            );
        }
        self.repropose();
        self.finish()
    }

    /// The service checks due now, as [`Effect::Check`]s.
    pub fn checks_due(&mut self, now: Now) -> Vec<Effect> {
        self.now = now;
        self.monitor
            .due(now.mono)
            .into_iter()
            .map(Effect::Check)
            .collect()
    }

    /// The result of a check that [`Node::checks_due`] asked for.
    pub fn check_done(
        &mut self,
        vm: &str,
        kind: CheckKind,
        ok: bool,
        detail: String,
        now: Now,
    ) -> Result<Vec<Effect>, NodeError> {
        self.now = now;
        let events = self.monitor.on_result(vm, kind, ok, now.mono);
        if !ok {
            self.last_check_error.insert(vm.to_owned(), detail);
        }
        self.monitored(events);
        self.finish()
    }

    /// What `host`'s hypervisor holds now, read by the shell. Committed
    /// (the newest per host, proposed again until it is) when it differs from
    /// the replicated state; a VM running where the state does not expect it
    /// is named in the audit log.
    pub fn domains_seen(
        &mut self,
        host: &str,
        domains: Vec<RunningDomain>,
        now: Now,
    ) -> Result<Vec<Effect>, NodeError> {
        self.now = now;
        let known = self.state().domains.get(host) == Some(&domains);
        let pending = self.pending.contains_key(&format!("domains/{host}"));
        if !known || pending {
            self.report(
                format!("domains/{host}"),
                Command::ReportDomains {
                    observer: self.cfg.me,
                    host: host.to_owned(),
                    domains,
                },
            );
            self.repropose();
        }
        self.finish()
    }

    /// The VPN's bridge saw `mac` move from port `from` to `to`. If it is a
    /// VM's MAC and the VM is recorded at another site, its new location is
    /// committed (proposed again until it is).
    pub fn mac_moved(
        &mut self,
        mac: &str,
        from: &MacLocation,
        to: &MacLocation,
        now: Now,
    ) -> Result<Vec<Effect>, NodeError> {
        self.now = now;
        let what = self.locate(mac, from, to);
        tracing::debug!(mac, %from, %to, "MAC move: {what}");
        self.finish()
    }

    /// A request on the control socket; its answer comes back as an
    /// [`Effect::Reply`] for `call`, now or once it is decided.
    pub fn control(
        &mut self,
        call: CallId,
        req: Request,
        now: Now,
    ) -> Result<Vec<Effect>, NodeError> {
        self.now = now;
        let response = match req {
            Request::Status => Response::ok(self.status()),
            Request::State => Response::ok(self.replica.state()),
            Request::Events { since } => Response::ok(self.events_since(since).collect::<Vec<_>>()),
            Request::VpnMacMoved { mac, from, to } => Response::ok(self.locate(&mac, &from, &to)),
            Request::WaitApplied { index, timeout_ms } => {
                let deadline = now.mono + ms(timeout_ms.unwrap_or(APPLIED_TIMEOUT_MS));
                self.apply_waiters.push((index, deadline, call));
                self.answer_waiters();
                return self.finish();
            }
            Request::Membership {
                id,
                add,
                timeout_ms,
            } => match self.membership(id, add) {
                Ok(None) => {
                    let deadline = now.mono + ms(timeout_ms.unwrap_or(MEMBERSHIP_TIMEOUT_MS));
                    self.member_waiters.push((id, add, deadline, call));
                    self.answer_waiters();
                    return self.finish();
                }
                Ok(Some(voters)) => Response::ok(voters),
                Err(e) => Response::err(e),
            },
            Request::Propose {
                command,
                timeout_ms,
            } => match self.propose_for(call, command, timeout_ms) {
                Ok(()) => return self.finish(),
                Err(e) => Response::err(e),
            },
        };
        self.out.push(Effect::Reply { call, response });
        self.finish()
    }

    fn finish(&mut self) -> Result<Vec<Effect>, NodeError> {
        self.refresh();
        self.drive_moves();
        if let Some(e) = self.fatal.take() {
            return Err(e);
        }
        Ok(std::mem::take(&mut self.out))
    }

    /// Brings the monitor up to date with the VMs and the live set.
    fn refresh(&mut self) {
        if self.vms_changed {
            self.vms_changed = false;
            let events = self.monitor.set_assignments(self.assignments());
            self.monitored(events);
        }
        if self.live_changed {
            self.live_changed = false;
            let events = self.monitor.set_live(self.live_set());
            self.monitored(events);
        }
    }

    fn health_of(&self, peer: NodeId) -> PeerHealth {
        self.health
            .get(&peer)
            .cloned()
            .unwrap_or(PeerHealth::Unknown)
    }

    fn site_of(&self, peer: NodeId) -> SiteId {
        self.cfg
            .peers
            .iter()
            .find(|p| p.id == peer)
            .map(|p| p.site.clone())
            .unwrap_or_default()
    }

    fn path_name(&self, path: PathId) -> String {
        self.cfg
            .path_names
            .get(path.0 as usize)
            .cloned()
            .unwrap_or_else(|| format!("path{}", path.0))
    }

    fn handle(&mut self, out: Output) {
        self.out.extend(out.messages.into_iter().map(Effect::Send));
        if out.changes.iter().any(|c| {
            matches!(
                c.command,
                Command::PutVm(_)
                    | Command::RemoveVm { .. }
                    | Command::SetVmLocation { .. }
                    | Command::ApplyInventory(_)
                    | Command::FinishMove { .. }
            )
        }) {
            self.vms_changed = true;
        }
        if !out.changes.is_empty() {
            self.out.push(Effect::Applied(out.changes));
        }
        self.answer_waiters();
        for (pid, index, rejected) in out.completed {
            let done = self.waiter_of.remove(&pid).and_then(|wid| {
                self.waiter_of.retain(|_, w| *w != wid);
                self.waiters.remove(&wid)
            });
            if let Some(w) = done {
                let response = match rejected {
                    None => Response::ok(ProposeReply {
                        index,
                        latency_us: (self.now.mono.saturating_sub(w.start)).as_micros() as u64,
                    }),
                    Some(why) => {
                        Response::err(format!("committed at index {index} but rejected: {why}"))
                    }
                };
                self.out.push(Effect::Reply {
                    call: w.call,
                    response,
                });
            }
            self.pending
                .retain(|_, p| p.proposal.map(|(id, _)| id) != Some(pid));
        }
    }

    /// Answers `WaitApplied` and `Membership` requests that are decided.
    fn answer_waiters(&mut self) {
        let now = self.now.mono;
        if !self.member_waiters.is_empty() {
            let voters = self.replica.voters();
            for (id, add, deadline, call) in std::mem::take(&mut self.member_waiters) {
                let response = if voters.contains(&id) == add {
                    Response::ok(&voters)
                } else if deadline <= now {
                    Response::err(format!(
                        "the membership change was not applied in time (voters now {voters:?})"
                    ))
                } else {
                    self.member_waiters.push((id, add, deadline, call));
                    continue;
                };
                self.out.push(Effect::Reply { call, response });
            }
        }
        if !self.apply_waiters.is_empty() {
            let applied = self.replica.state().applied;
            for (index, deadline, call) in std::mem::take(&mut self.apply_waiters) {
                let response = if applied >= index {
                    Response::ok(AppliedReply {
                        applied,
                        at_unix_us: self.now.unix_us,
                    })
                } else if deadline <= now {
                    Response::err(format!(
                        "index {index} not applied here yet (applied {applied})"
                    ))
                } else {
                    self.apply_waiters.push((index, deadline, call));
                    continue;
                };
                self.out.push(Effect::Reply { call, response });
            }
        }
    }

    fn proposal(&self, command: Command, request: Option<String>) -> Proposal {
        Proposal {
            by: self.cfg.me,
            at_unix_ms: self.now.unix_us / 1000,
            command,
            request,
        }
    }

    /// Proposes `p`; the caller records the proposal id, then hands the output
    /// to [`Self::handle`] (with a single voter it may already hold the commit).
    fn propose_as_is(&mut self, p: &Proposal) -> Result<(ProposalId, Output), String> {
        self.replica.propose(p).map_err(|e| {
            if matches!(e, ProposeError::Storage(_)) {
                self.fatal = Some(NodeError::Storage(e.to_string()));
            }
            e.to_string()
        })
    }

    /// Proposes an operator's command for control call `call`, under a
    /// request id of its own so that retries apply it once.
    fn propose_for(
        &mut self,
        call: CallId,
        command: Command,
        timeout_ms: Option<u64>,
    ) -> Result<(), String> {
        let start = self.now.mono;
        self.requests += 1;
        let request = format!("{}-{}-{}", self.cfg.me, self.cfg.incarnation, self.requests);
        let proposal = self.proposal(command, Some(request));
        let st = self.replica.status();
        let (pid, out) = self.propose_as_is(&proposal)?;
        self.next_waiter += 1;
        let wid = self.next_waiter;
        self.waiter_of.insert(pid, wid);
        self.waiters.insert(
            wid,
            Waiter {
                call,
                start,
                deadline: start + ms(timeout_ms.unwrap_or(PROPOSE_TIMEOUT_MS)),
                proposal,
                under: (st.term, st.leader),
                tried: start,
            },
        );
        self.handle(out);
        Ok(())
    }

    /// Checks a membership change: `Ok(Some(voters))` when there is nothing
    /// to do, `Ok(None)` when it was proposed.
    fn membership(&mut self, id: NodeId, add: bool) -> Result<Option<Vec<NodeId>>, String> {
        let voters = self.replica.voters();
        let known = id == self.cfg.me || self.cfg.peers.iter().any(|p| p.id == id);
        if add && !known {
            return Err(format!(
                "appliance {id} is not a [[peer]] in this appliance's configuration: add it there (on every appliance) first"
            ));
        }
        if !add && voters.iter().all(|v| *v == id) {
            return Err(format!("removing {id} would leave no voters"));
        }
        if voters.contains(&id) == add {
            return Ok(Some(voters));
        }
        let out = self
            .replica
            .propose_membership(id, add)
            .map_err(|e| e.to_string())?;
        self.handle(out);
        Ok(None)
    }

    /// Queues a health report under `key`, replacing an older one not yet
    /// committed: only the newest view of a subject matters.
    fn report(&mut self, key: String, command: Command) {
        self.pending.insert(
            key,
            PendingReport {
                command,
                proposal: None,
            },
        );
    }

    /// Commits health reports that are not committed yet (the newest per subject).
    fn repropose(&mut self) {
        let now = self.now.mono;
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                p.proposal
                    .is_none_or(|(_, at)| now.saturating_sub(at) > REPROPOSE)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            let p = self.proposal(self.pending[&k].command.clone(), None);
            if let Ok((pid, out)) = self.propose_as_is(&p) {
                if let Some(pending) = self.pending.get_mut(&k) {
                    pending.proposal = Some((pid, now));
                }
                self.handle(out);
            }
        }
    }

    /// A proposal forwarded to a leader that then died, or over a connection
    /// that broke, is lost: propose it again (its request id keeps it from
    /// applying twice), once per leader change or second without a commit.
    fn retry_waiters(&mut self) {
        let st = self.replica.status();
        let now_under = (st.term, st.leader);
        if now_under.1.is_none() {
            return;
        }
        let now = self.now.mono;
        let stale: Vec<u64> = self
            .waiters
            .iter()
            .filter(|(_, w)| w.under != now_under || now.saturating_sub(w.tried) > RETRY_AFTER)
            .map(|(id, _)| *id)
            .collect();
        for wid in stale {
            let Some(w) = self.waiters.get_mut(&wid) else {
                continue;
            };
            w.under = now_under;
            w.tried = now;
            let p = w.proposal.clone();
            if let Ok((pid, out)) = self.propose_as_is(&p) {
                self.waiter_of.insert(pid, wid);
                self.handle(out);
            }
        }
    }

    fn expire_waiters(&mut self) {
        let now = self.now.mono;
        let expired: Vec<u64> = self
            .waiters
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.waiter_of.retain(|_, w| *w != id);
            let Some(w) = self.waiters.remove(&id) else {
                continue;
            };
            let why = match self.replica.status().leader {
                None => "no leader is reachable: this appliance is cut off from a majority of the voters".to_string(),
                Some(l) if l == self.cfg.me => "this appliance leads but a majority of voters did not acknowledge it".to_string(),
                Some(l) => format!("leader {l} did not commit it in time (is a majority reachable?)"),
            };
            self.out.push(Effect::Reply {
                call: w.call,
                response: Response::err(format!(
                    "not committed within {} ms (it may still commit later): {why}",
                    (w.deadline - w.start).as_millis()
                )),
            });
        }
        self.answer_waiters();
    }

    fn record(
        &mut self,
        kind: &str,
        peer: Option<NodeId>,
        path: Option<String>,
        vm: Option<VmId>,
        detail: String,
    ) {
        self.event_seq += 1;
        tracing::info!(kind, ?peer, ?path, ?vm, "{detail}");
        self.events.push_back(EventRecord {
            seq: self.event_seq,
            at_unix_us: self.now.unix_us,
            kind: kind.to_string(),
            peer,
            path,
            vm,
            detail,
        });
        while self.events.len() > EVENT_LOG {
            self.events.pop_front();
        }
    }

    fn monitored(&mut self, events: Vec<MonitorEvent>) {
        if events.is_empty() {
            return;
        }
        for e in events {
            match e {
                MonitorEvent::TookOver { vm, from } => {
                    let detail = format!("watching {vm} as P2: its P1 {from} is gone");
                    self.record("took-over", Some(from), None, Some(vm), detail);
                }
                MonitorEvent::VmFailed { vm, by, reason } => {
                    let why = self.last_check_error.get(&vm).cloned().unwrap_or_default();
                    let reason = format!("{reason}: {why}");
                    let detail = format!("{vm} failed: {reason}");
                    self.record("vm-failed", None, None, Some(vm.clone()), detail);
                    self.report(
                        format!("vm/{vm}"),
                        Command::ReportVmHealth {
                            observer: by,
                            vm,
                            ok: false,
                            reason,
                        },
                    );
                }
                MonitorEvent::VmRecovered { vm, by } => {
                    let detail = format!("{vm} recovered");
                    self.record("vm-recovered", None, None, Some(vm.clone()), detail);
                    self.report(
                        format!("vm/{vm}"),
                        Command::ReportVmHealth {
                            observer: by,
                            vm,
                            ok: true,
                            reason: "all checks pass".into(),
                        },
                    );
                }
            }
        }
        self.repropose();
    }

    /// The MAC-move rule. Returns what was done, for the operator.
    fn locate(&mut self, mac: &str, from: &MacLocation, to: &MacLocation) -> String {
        let site = match to {
            MacLocation::Local => self.cfg.site.clone(),
            MacLocation::Peer(site) => site.clone(),
        };
        let state = self.replica.state();
        let Some(vm) = state.vms.values().find(|v| v.mac.eq_ignore_ascii_case(mac)) else {
            return format!("MAC {mac} belongs to no VM");
        };
        if !state.sites.contains_key(&site) {
            return format!("{} moved behind '{site}', which is no site", vm.id);
        }
        if vm.site == site {
            return format!("{} is already at site {site}", vm.id);
        }
        let (id, from_site) = (vm.id.clone(), vm.site.clone());
        self.record(
            "vm-moved",
            None,
            None,
            Some(id.clone()),
            format!("{id} (MAC {mac}) moved from {from} to {to}: from site {from_site} to {site}"),
        );
        self.report(
            format!("vm-location/{id}"),
            Command::SetVmLocation {
                vm: id.clone(),
                site: site.clone(),
                // The VPN sees the campus, not the hypervisor host.
                host: String::new(),
            },
        );
        self.repropose();
        format!("{id} now at site {site}: committing")
    }

    fn status(&self) -> StatusReply {
        let peers = self
            .cfg
            .peers
            .iter()
            .map(|p| {
                let health = self.health_of(p.id);
                let down: Vec<PathId> = match &health {
                    PeerHealth::Degraded { down } => down.clone(),
                    _ => Vec::new(),
                };
                let all_down = matches!(health, PeerHealth::Down | PeerHealth::Unknown);
                PeerView {
                    id: p.id,
                    name: p.name.clone(),
                    site: p.site.clone(),
                    health: match health {
                        PeerHealth::Up => "up",
                        PeerHealth::Degraded { .. } => "degraded",
                        PeerHealth::Down => "down",
                        PeerHealth::Unknown => "unknown",
                    }
                    .into(),
                    paths: p
                        .paths
                        .iter()
                        .map(|n| {
                            let id = PathId(
                                self.cfg.path_names.iter().position(|x| x == n).unwrap_or(0) as u8,
                            );
                            (n.clone(), !all_down && !down.contains(&id))
                        })
                        .collect(),
                }
            })
            .collect();
        StatusReply {
            name: self.cfg.name.clone(),
            site: self.cfg.site.clone(),
            raft: self.replica.status(),
            peers,
            watching: self
                .replica
                .state()
                .vms
                .keys()
                .filter(|v| self.monitor.is_watching(v))
                .cloned()
                .collect(),
        }
    }

    /// Watchers and check targets of every VM in the state.
    fn assignments(&self) -> BTreeMap<VmId, (Watchers, VmTarget)> {
        let vms = &self.replica.state().vms;
        let mut out = BTreeMap::new();
        for (id, w) in self.watchers() {
            let Some(vm) = vms.get(&id) else { continue };
            let Ok(addr) = vm.ip.parse() else {
                tracing::warn!("VM {id} has no IPv4 address to check ('{}')", vm.ip);
                continue;
            };
            let service = match &vm.check {
                VmCheck::Tcp { port } => ServiceCheck::Tcp { port: *port },
                VmCheck::Http {
                    port,
                    path,
                    expect_status,
                } => ServiceCheck::Http {
                    port: *port,
                    path: path.clone(),
                    expect_status: *expect_status,
                },
            };
            let target = VmTarget {
                addr,
                service,
                config: MonitorConfig::default(),
            };
            out.insert(id, (w, target));
        }
        out
    }
}

fn storage<T>(r: Result<T, impl std::fmt::Display>) -> Result<T, NodeError> {
    r.map_err(|e| NodeError::Storage(e.to_string()))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
