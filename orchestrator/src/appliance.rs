//! The appliance's shell: sockets, timers and the control socket around the
//! sans-IO cores (the Raft replica and the failure detector). One task owns
//! the cores; everything else talks to it through channels.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::heartbeat::HealthView;
use hinan_orchestrator::config::Config;
use hinan_orchestrator::control::{
    AppliedReply, EventRecord, PeerView, ProposeReply, Request, Response, StatusReply,
};
use hinan_orchestrator::detect::{DetectorEvent, PathId, PeerHealth};
use hinan_orchestrator::logstore::LogStore;
use hinan_orchestrator::monitor::{
    assign_watchers, CheckKind, Monitor, MonitorConfig, MonitorEvent, ServiceCheck, VmTarget,
};
use hinan_orchestrator::replica::{
    Output, ProposalId, ProposeError, Replica, ELECTION_TICKS, TICK,
};
use hinan_orchestrator::state::{Command, Health, NodeId, Proposal, VmCheck};
use hinan_orchestrator::tls::{self, Identity};
use hinan_orchestrator::transport::{self, Transport};
use hinan_orchestrator::watch::StateFeed;
use hinan_vpn::endpoint::{Endpoint, MacLocation, VpnEvent};
use raft::prelude::Message;
use ring::hmac;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

/// Events kept for `Events` requests.
const EVENT_LOG: usize = 10_000;
/// How long a health report may stay uncommitted before it is proposed again.
const REPROPOSE: Duration = Duration::from_secs(2);

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

struct CheckDone {
    vm: String,
    kind: CheckKind,
    ok: bool,
    detail: String,
}

struct ControlCall {
    req: Request,
    reply: oneshot::Sender<Response>,
}

struct Waiter {
    reply: oneshot::Sender<Response>,
    start: Instant,
    deadline: Instant,
    /// Proposed again as is when leadership changes before it commits.
    proposal: Proposal,
    /// (term, leader) when last proposed, and when.
    under: (u64, Option<NodeId>),
    tried: Instant,
}

/// A proposal not committed this long after its last try is proposed again:
/// a forwarded proposal lost with a connection is never resent by Raft.
const RETRY_AFTER: Duration = Duration::from_millis(1000);

struct PendingReport {
    command: Command,
    proposal: Option<(ProposalId, Instant)>,
}

/// Runs the appliance until it is killed.
pub async fn run(cfg: Config, vpn: Option<hinan_vpn::config::Settings>) -> Result<()> {
    let me = cfg.appliance.id;
    let identity = Identity::load(&cfg.cluster.cert, &cfg.cluster.key)?;
    let secret = std::fs::read(&cfg.cluster.heartbeat_key).with_context(|| {
        format!(
            "reading the heartbeat key {}",
            cfg.cluster.heartbeat_key.display()
        )
    })?;
    if secret.len() < 16 {
        bail!(
            "the heartbeat key {} is shorter than 16 bytes",
            cfg.cluster.heartbeat_key.display()
        );
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, &secret);
    std::fs::create_dir_all(&cfg.appliance.data_dir)
        .with_context(|| format!("creating {}", cfg.appliance.data_dir.display()))?;
    let store = LogStore::open(&cfg.appliance.data_dir.join("raft.redb"))?;
    let incarnation = unix_us();
    let election = ELECTION_TICKS + (incarnation ^ me.wrapping_mul(7919)) as usize % ELECTION_TICKS;
    let mut replica = Replica::new(me, &cfg.voters(), store, incarnation, election)?;

    // Raft transport.
    let mut peers = Vec::new();
    for p in &cfg.peers {
        let pin = tls::parse_pin(&p.cert_sha256).context("pin checked by the config")?;
        peers.push(transport::Peer {
            id: p.id,
            address: p.address,
            pin,
        });
    }
    let (raft_tx, mut raft_rx) = mpsc::channel::<Message>(4096);
    let net = Transport::start(me, cfg.cluster.listen, &identity, &peers, raft_tx)
        .await
        .with_context(|| format!("listening for the cluster on {}", cfg.cluster.listen))?;

    // Heartbeats and the failure detector run on a thread of their own.
    // Sequence numbers start at the boot time in µs, so that they keep
    // growing across restarts and receivers can drop replays.
    let path_names = cfg.path_names();
    let (mut det_rx, health) = crate::heartbeat::start(&cfg, key, unix_us())?;

    // Control socket.
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<ControlCall>(64);
    let sock_path = &cfg.appliance.control_socket;
    if let Some(dir) = sock_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(sock_path);
    let listener = UnixListener::bind(sock_path)
        .with_context(|| format!("binding the control socket {}", sock_path.display()))?;
    tokio::spawn(serve_control(listener, ctl_tx));

    // Service monitors: every campus appliance (not the witness) may watch VMs.
    let mut eligible: Vec<NodeId> = cfg
        .peers
        .iter()
        .filter(|p| !p.witness)
        .map(|p| p.id)
        .collect();
    if !cfg.appliance.witness {
        eligible.push(me);
    }
    eligible.sort_unstable();
    let mut monitor = Monitor::new(me);
    let (check_tx, mut check_rx) = mpsc::channel::<CheckDone>(1024);

    tracing::info!(id = me, name = %cfg.appliance.name, "appliance running");
    let mut shell = Shell {
        cfg: &cfg,
        me,
        net,
        waiters: HashMap::new(),
        waiter_of: HashMap::new(),
        next_waiter: 0,
        fatal: None,
        events: VecDeque::new(),
        event_seq: 0,
        pending: BTreeMap::new(),
        path_names: path_names.clone(),
        incarnation,
        requests: 0,
        vms_changed: true,
        live_changed: true,
        apply_waiters: Vec::new(),
        member_waiters: Vec::new(),
        feed: StateFeed::new(replica.state()),
        last_check_error: HashMap::new(),
    };
    // Authoritative DNS whose answers follow the replicated state.
    let _dns = match &cfg.dns {
        Some(d) => Some(hinan_orchestrator::dns::start(
            d,
            &cfg.appliance.data_dir,
            &cfg.appliance.control_socket,
            shell.feed.subscribe(),
        )?),
        None => None,
    };
    // The campus's L2 VPN endpoint, whose MAC moves locate VMs.
    let (vpn_tx, mut vpn_rx) = mpsc::unbounded_channel::<VpnEvent>();
    let _vpn = match vpn {
        Some(settings) => {
            let tx = vpn_tx.clone();
            Some(Endpoint::start(
                settings,
                Box::new(move |e| {
                    let _ = tx.send(e);
                }),
            )?)
        }
        None => None,
    };
    let mut raft_tick = tokio::time::interval(TICK);
    raft_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let origin = Instant::now();
    loop {
        let check_deadline = monitor
            .next_deadline()
            .map(|d| tokio::time::Instant::from_std(origin + d))
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(1));
        if shell.vms_changed {
            shell.vms_changed = false;
            let events = monitor.set_assignments(assignments(&replica, &eligible));
            shell.monitored(&mut replica, events);
        }
        if shell.live_changed {
            shell.live_changed = false;
            let events = monitor.set_live(live_set(me, &cfg, &health));
            shell.monitored(&mut replica, events);
        }
        tokio::select! {
            _ = raft_tick.tick() => {
                let out = replica.tick()?;
                shell.handle(&mut replica, out);
                shell.repropose(&mut replica);
                shell.retry_waiters(&mut replica);
                shell.expire_waiters(&replica);
            }
            e = det_rx.recv() => {
                let Some(e) = e else {
                    bail!("the heartbeat thread stopped: without heartbeats the other appliances would fail this site over");
                };
                let mut events = vec![e];
                while let Ok(more) = det_rx.try_recv() {
                    events.push(more);
                }
                shell.detected(&mut replica, &health, events);
            }
            Some(m) = raft_rx.recv() => {
                let out = replica.step(m)?;
                shell.handle(&mut replica, out);
            }
            Some(call) = ctl_rx.recv() => {
                shell.control(&mut replica, &health, &monitor, call);
            }
            Some(event) = vpn_rx.recv() => {
                let VpnEvent::MacMoved { mac, from, to, .. } = event;
                shell.mac_moved(&mut replica, &mac, &from, &to);
            }
            _ = tokio::time::sleep_until(check_deadline) => {
                for req in monitor.due(origin.elapsed()) {
                    let tx = check_tx.clone();
                    tokio::spawn(async move {
                        let outcome = hinan_orchestrator::checks::run_check(&req.target, req.kind, req.timeout).await;
                        let detail = match &outcome.result {
                            Ok(_) => String::new(),
                            Err(e) => e.to_string(),
                        };
                        let _ = tx.send(CheckDone { vm: req.vm, kind: req.kind, ok: outcome.is_ok(), detail }).await;
                    });
                }
            }
            Some(done) = check_rx.recv() => {
                let events = monitor.on_result(&done.vm, done.kind, done.ok, origin.elapsed());
                if !done.ok {
                    shell.last_check_error.insert(done.vm.clone(), done.detail);
                }
                shell.monitored(&mut replica, events);
            }
        }
        if let Some(why) = shell.fatal.take() {
            bail!("stopping: {why}");
        }
    }
}

struct Shell<'a> {
    cfg: &'a Config,
    me: NodeId,
    net: Transport,
    /// Control-socket proposals waiting to commit, by waiter id; a waiter
    /// may have been proposed under several proposal ids (retries), any of
    /// which completes it.
    waiters: HashMap<u64, Waiter>,
    waiter_of: HashMap<ProposalId, u64>,
    next_waiter: u64,
    /// A failure after which the appliance must stop (the log could not be written).
    fatal: Option<String>,
    events: VecDeque<EventRecord>,
    event_seq: u64,
    pending: BTreeMap<String, PendingReport>,
    path_names: Vec<String>,
    incarnation: u64,
    requests: u64,
    vms_changed: bool,
    live_changed: bool,
    /// (index, deadline, reply) of `WaitApplied` requests.
    apply_waiters: Vec<(u64, Instant, oneshot::Sender<Response>)>,
    /// (voter, add, deadline, reply) of `Membership` requests.
    member_waiters: Vec<(NodeId, bool, Instant, oneshot::Sender<Response>)>,
    /// Where reconcilers follow the applied state.
    feed: StateFeed,
    last_check_error: HashMap<String, String>,
}

impl Shell<'_> {
    fn handle(&mut self, replica: &mut Replica, out: Output) {
        for m in &out.messages {
            self.net.send(m);
        }
        if !out.changes.is_empty() {
            self.feed.publish(replica.state());
        }
        if !self.member_waiters.is_empty() {
            let voters = replica.voters();
            let now = Instant::now();
            for (id, add, deadline, reply) in std::mem::take(&mut self.member_waiters) {
                if voters.contains(&id) == add {
                    let _ = reply.send(Response::ok(&voters));
                } else if deadline <= now {
                    let _ = reply.send(Response::err(format!(
                        "the membership change was not applied in time (voters now {voters:?})"
                    )));
                } else {
                    self.member_waiters.push((id, add, deadline, reply));
                }
            }
        }
        if !self.apply_waiters.is_empty() {
            let applied = replica.state().applied;
            let now = Instant::now();
            for (index, deadline, reply) in std::mem::take(&mut self.apply_waiters) {
                if applied >= index {
                    let _ = reply.send(Response::ok(AppliedReply {
                        applied,
                        at_unix_us: unix_us(),
                    }));
                } else if deadline <= now {
                    let _ = reply.send(Response::err(format!(
                        "index {index} not applied here yet (applied {applied})"
                    )));
                } else {
                    self.apply_waiters.push((index, deadline, reply));
                }
            }
        }
        if out.changes.iter().any(|c| {
            matches!(
                c.command,
                Command::PutVm(_) | Command::RemoveVm { .. } | Command::SetVmLocation { .. }
            )
        }) {
            self.vms_changed = true;
        }
        for (pid, index, rejected) in out.completed {
            let done = self.waiter_of.remove(&pid).and_then(|wid| {
                self.waiter_of.retain(|_, w| *w != wid);
                self.waiters.remove(&wid)
            });
            if let Some(w) = done {
                let resp = match rejected {
                    None => Response::ok(ProposeReply {
                        index,
                        latency_us: w.start.elapsed().as_micros() as u64,
                    }),
                    Some(why) => {
                        Response::err(format!("committed at index {index} but rejected: {why}"))
                    }
                };
                let _ = w.reply.send(resp);
            }
            self.pending
                .retain(|_, p| p.proposal.map(|(id, _)| id) != Some(pid));
        }
    }

    fn proposal(&mut self, command: Command, request: Option<String>) -> Proposal {
        Proposal {
            by: self.me,
            at_unix_ms: unix_us() / 1000,
            command,
            request,
        }
    }

    /// Proposes `p`; the caller records the proposal id, then hands the output
    /// to [`Self::handle`] (with a single voter it may already hold the commit).
    fn propose_as_is(
        &mut self,
        replica: &mut Replica,
        p: &Proposal,
    ) -> Result<(ProposalId, Output), String> {
        replica.propose(p).map_err(|e| {
            if matches!(e, ProposeError::Storage(_)) {
                self.fatal = Some(e.to_string());
            }
            e.to_string()
        })
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
    fn repropose(&mut self, replica: &mut Replica) {
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.proposal.is_none_or(|(_, at)| at.elapsed() > REPROPOSE))
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            let p = self.proposal(self.pending[&k].command.clone(), None);
            if let Ok((pid, out)) = self.propose_as_is(replica, &p) {
                if let Some(pending) = self.pending.get_mut(&k) {
                    pending.proposal = Some((pid, Instant::now()));
                }
                self.handle(replica, out);
            }
        }
    }

    /// A proposal forwarded to a leader that then died, or over a connection
    /// that broke, is lost: propose it again (its request id keeps it from
    /// applying twice), once per leader change or second without a commit.
    fn retry_waiters(&mut self, replica: &mut Replica) {
        let st = replica.status();
        let now_under = (st.term, st.leader);
        if now_under.1.is_none() {
            return;
        }
        let stale: Vec<u64> = self
            .waiters
            .iter()
            .filter(|(_, w)| w.under != now_under || w.tried.elapsed() > RETRY_AFTER)
            .map(|(id, _)| *id)
            .collect();
        for wid in stale {
            let Some(p) = self.waiters.get(&wid).map(|w| w.proposal.clone()) else {
                continue;
            };
            if let Some(w) = self.waiters.get_mut(&wid) {
                w.under = now_under;
                w.tried = Instant::now();
            }
            if let Ok((pid, out)) = self.propose_as_is(replica, &p) {
                self.waiter_of.insert(pid, wid);
                self.handle(replica, out);
            }
        }
    }

    fn expire_waiters(&mut self, replica: &Replica) {
        let now = Instant::now();
        let expired: Vec<u64> = self
            .waiters
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.waiter_of.retain(|_, w| *w != id);
            if let Some(w) = self.waiters.remove(&id) {
                let st = replica.status();
                let why = match st.leader {
                    None => "no leader is reachable: this appliance is cut off from a majority of the voters".to_string(),
                    Some(l) if l == self.me => "this appliance leads but a majority of voters did not acknowledge it".to_string(),
                    Some(l) => format!("leader {l} did not commit it in time (is a majority reachable?)"),
                };
                let _ = w.reply.send(Response::err(format!(
                    "not committed within {} ms (it may still commit later): {why}",
                    (w.deadline - w.start).as_millis()
                )));
            }
        }
    }

    fn record(&mut self, kind: &str, peer: Option<NodeId>, path: Option<String>, detail: String) {
        self.event_seq += 1;
        tracing::info!(kind, ?peer, ?path, "{detail}");
        self.events.push_back(EventRecord {
            seq: self.event_seq,
            at_unix_us: unix_us(),
            kind: kind.to_string(),
            peer,
            path,
            detail,
        });
        while self.events.len() > EVENT_LOG {
            self.events.pop_front();
        }
    }

    fn site_of(&self, peer: NodeId) -> String {
        self.cfg
            .peers
            .iter()
            .find(|p| p.id == peer)
            .map(|p| p.site.clone())
            .unwrap_or_default()
    }

    fn path_name(&self, path: PathId) -> String {
        self.path_names
            .get(path.0 as usize)
            .cloned()
            .unwrap_or_else(|| format!("path{}", path.0))
    }

    fn detected(&mut self, replica: &mut Replica, health: &HealthView, events: Vec<DetectorEvent>) {
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
            self.record(
                kind,
                Some(peer),
                path_name.clone(),
                format!(
                    "appliance {peer} (site {site}) {kind}{}",
                    path_name
                        .as_deref()
                        .map(|p| format!(" on {p}"))
                        .unwrap_or_default()
                ),
            );
            if let Some(name) = path_name {
                let up = kind == "path-up";
                self.report(
                    format!("link/{peer}/{name}"),
                    Command::ReportLinkHealth {
                        observer: self.me,
                        peer,
                        path: name,
                        up,
                    },
                );
            }
            let health = match health_of(health, peer) {
                PeerHealth::Up => Health::Up,
                PeerHealth::Degraded { .. } => Health::Degraded,
                PeerHealth::Down | PeerHealth::Unknown => Health::Down,
            };
            self.report(
                format!("site/{site}"),
                Command::ReportSiteHealth {
                    observer: self.me,
                    site,
                    health,
                },
            );
        }
        self.repropose(replica);
    }

    fn monitored(&mut self, replica: &mut Replica, events: Vec<MonitorEvent>) {
        for e in events {
            match e {
                MonitorEvent::TookOver { vm, from } => {
                    self.record(
                        "took-over",
                        Some(from),
                        None,
                        format!("watching {vm} as P2: its P1 {from} is gone"),
                    );
                }
                MonitorEvent::VmFailed { vm, by, reason } => {
                    let why = self.last_check_error.get(&vm).cloned().unwrap_or_default();
                    let reason = format!("{reason}: {why}");
                    self.record("vm-failed", None, None, format!("{vm} failed: {reason}"));
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
                    self.record("vm-recovered", None, None, format!("{vm} recovered"));
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
        self.repropose(replica);
    }

    /// The VPN's bridge saw `mac` move from port `from` to port `to`: at this
    /// campus ("local") or behind the tunnel to a peer named after its site.
    /// If it is a VM's MAC and the VM is recorded elsewhere, its new
    /// location is committed (retried until it is). Returns what was done.
    fn mac_moved(
        &mut self,
        replica: &mut Replica,
        mac: &str,
        from: &MacLocation,
        to: &MacLocation,
    ) -> String {
        let site = match to {
            MacLocation::Local => self.cfg.appliance.site.clone(),
            MacLocation::Peer(site) => site.clone(),
        };
        let state = replica.state();
        let Some(vm) = state.vms.values().find(|v| v.mac.eq_ignore_ascii_case(mac)) else {
            return format!("MAC {mac} belongs to no VM");
        };
        if !state.sites.contains_key(&site) {
            return format!("{} moved behind '{to}', which is no site", vm.id);
        }
        if vm.site == site {
            return format!("{} is already at site {site}", vm.id);
        }
        let (id, from_site) = (vm.id.clone(), vm.site.clone());
        self.record(
            "vm-moved",
            None,
            None,
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
        self.repropose(replica);
        format!("{id} now at site {site}: committing")
    }

    fn control(
        &mut self,
        replica: &mut Replica,
        health: &HealthView,
        monitor: &Monitor,
        call: ControlCall,
    ) {
        let resp = match call.req {
            Request::Status => {
                let peers = self
                    .cfg
                    .peers
                    .iter()
                    .map(|p| {
                        let health = health_of(health, p.id);
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
                                .keys()
                                .filter(|n| self.cfg.cluster.paths.contains_key(*n))
                                .map(|n| {
                                    let id = PathId(
                                        self.path_names.iter().position(|x| x == n).unwrap_or(0)
                                            as u8,
                                    );
                                    (n.clone(), !all_down && !down.contains(&id))
                                })
                                .collect(),
                        }
                    })
                    .collect();
                Response::ok(StatusReply {
                    name: self.cfg.appliance.name.clone(),
                    site: self.cfg.appliance.site.clone(),
                    raft: replica.status(),
                    peers,
                    watching: replica
                        .state()
                        .vms
                        .keys()
                        .filter(|v| monitor.is_watching(v))
                        .cloned()
                        .collect(),
                })
            }
            Request::State => Response::ok(replica.state()),
            Request::WaitApplied { index, timeout_ms } => {
                let deadline = Instant::now() + Duration::from_millis(timeout_ms.unwrap_or(3000));
                self.apply_waiters.push((index, deadline, call.reply));
                self.handle(replica, Output::default());
                return;
            }
            Request::Membership {
                id,
                add,
                timeout_ms,
            } => {
                let voters = replica.voters();
                let known = id == self.me || self.cfg.peers.iter().any(|p| p.id == id);
                if add && !known {
                    Response::err(format!(
                        "appliance {id} is not a [[peer]] in this appliance's configuration: add it there (on every appliance) first"
                    ))
                } else if !add && voters.iter().all(|v| *v == id) {
                    Response::err(format!("removing {id} would leave no voters"))
                } else if voters.contains(&id) == add {
                    Response::ok(voters)
                } else {
                    match replica.propose_membership(id, add) {
                        Ok(out) => {
                            let deadline =
                                Instant::now() + Duration::from_millis(timeout_ms.unwrap_or(5000));
                            self.member_waiters.push((id, add, deadline, call.reply));
                            self.handle(replica, out);
                            return;
                        }
                        Err(e) => Response::err(e),
                    }
                }
            }
            Request::VpnMacMoved { mac, from, to } => {
                Response::ok(self.mac_moved(replica, &mac, &from, &to))
            }
            Request::Events { since } => {
                let list: Vec<&EventRecord> =
                    self.events.iter().filter(|e| e.seq > since).collect();
                Response::ok(list)
            }
            Request::Propose {
                command,
                timeout_ms,
            } => {
                let start = Instant::now();
                self.requests += 1;
                let request = format!("{}-{}-{}", self.me, self.incarnation, self.requests);
                let proposal = self.proposal(command, Some(request));
                let st = replica.status();
                match self.propose_as_is(replica, &proposal) {
                    Ok((pid, out)) => {
                        self.next_waiter += 1;
                        let wid = self.next_waiter;
                        self.waiter_of.insert(pid, wid);
                        self.waiters.insert(
                            wid,
                            Waiter {
                                reply: call.reply,
                                start,
                                deadline: start + Duration::from_millis(timeout_ms.unwrap_or(3000)),
                                proposal,
                                under: (st.term, st.leader),
                                tried: Instant::now(),
                            },
                        );
                        self.handle(replica, out);
                        return;
                    }
                    Err(e) => Response::err(e),
                }
            }
        };
        let _ = call.reply.send(resp);
    }
}

async fn serve_control(listener: UnixListener, calls: mpsc::Sender<ControlCall>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: do not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            let (rd, mut wr) = stream.into_split();
            // A request is a line of JSON; a connection may send 1 MiB in all.
            let mut lines = BufReader::new(rd.take(1 << 20)).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let resp = match serde_json::from_str::<Request>(&line) {
                    Ok(req) => {
                        let (tx, rx) = oneshot::channel();
                        if calls.send(ControlCall { req, reply: tx }).await.is_err() {
                            return;
                        }
                        rx.await
                            .unwrap_or_else(|_| Response::err("the appliance is shutting down"))
                    }
                    Err(e) => Response::err(format!("bad request: {e}")),
                };
                let mut out = serde_json::to_vec(&resp).unwrap_or_default();
                out.push(b'\n');
                if wr.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Watchers and targets of every VM in the state.
fn assignments(
    replica: &Replica,
    eligible: &[NodeId],
) -> BTreeMap<String, (hinan_orchestrator::monitor::Watchers, VmTarget)> {
    let vms = &replica.state().vms;
    let ids: Vec<String> = vms.keys().cloned().collect();
    let watchers = assign_watchers(&ids, eligible);
    let mut out = BTreeMap::new();
    for (id, w) in watchers {
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
        out.insert(
            id,
            (
                w,
                VmTarget {
                    addr,
                    service,
                    config: MonitorConfig::default(),
                },
            ),
        );
    }
    out
}

/// This appliance and the peers the detector sees on at least one path.
fn health_of(view: &HealthView, peer: NodeId) -> PeerHealth {
    view.lock()
        .ok()
        .and_then(|v| v.get(&peer).cloned())
        .unwrap_or(PeerHealth::Unknown)
}

fn live_set(me: NodeId, cfg: &Config, health: &HealthView) -> std::collections::BTreeSet<NodeId> {
    let mut live: std::collections::BTreeSet<NodeId> = cfg
        .peers
        .iter()
        .filter(|p| {
            matches!(
                health_of(health, p.id),
                PeerHealth::Up | PeerHealth::Degraded { .. }
            )
        })
        .map(|p| p.id)
        .collect();
    live.insert(me);
    live
}
