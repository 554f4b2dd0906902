//! A deterministic simulator of an appliance cluster: virtual time, a seeded
//! network that delays, loses, partitions and reorders messages, and crashes
//! that keep only what was written to the log store. Every appliance is the
//! real appliance core, [`Node`] (which owns the Raft [`Replica`] and the
//! service monitor), fed by the real failure [`Detector`]: the same code that
//! `hinan run` drives, not a model of it. The simulator checks Raft's safety
//! properties as it goes. A failing seed replays exactly. Service checks are
//! not simulated: the VMs' services never answer or fail here.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use raft::prelude::Message;

use crate::core::control::{ProposeReply, Request, Response};
use crate::core::detect::{Detector, DetectorConfig, DetectorEvent, PathId};
use crate::core::monitor::Watchers;
use crate::core::node::{CallId, Effect, Node, NodeConfig, NodeError, Now, PeerInfo};
use crate::core::replica::{Replica, ELECTION_TICKS, TICK};
use crate::core::state::{Command, NodeId, Site, StateChange, StorageMode, Vm, VmCheck};
use crate::shell::logstore::LogStore;

mod hypervisors;
use hypervisors::Hypervisors;
pub use hypervisors::{moves_schedule, MoveStats};

/// A small seeded PRNG (xorshift64*), so schedules replay without a rand crate.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// A safety violation found by the simulator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("seed {seed} at {at_ms} ms: {what}")]
pub struct Violation {
    pub seed: u64,
    pub at_ms: u64,
    pub what: String,
}

#[derive(Debug)]
struct SimNode {
    id: NodeId,
    /// The appliance core; `None` while crashed.
    node: Option<Node>,
    /// What survives a crash.
    store: LogStore,
    incarnation: u64,
    /// Ticks are staggered per node.
    next_tick_ms: u64,
    /// The failure detector, when detection is on (lost in a crash).
    watch: Option<Watching>,
    /// The last of the node's event records already looked at.
    seen_events: u64,
}

#[derive(Debug)]
struct Watching {
    detector: Detector,
    next_hb_ms: u64,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at_ms: u64,
    seq: u64,
    /// A heartbeat rather than a Raft message.
    heartbeat: bool,
    bytes: Vec<u8>,
    from: NodeId,
    to: NodeId,
}

/// A proposal the simulator made through a node's control API, and what
/// became of it.
#[derive(Debug, Clone)]
struct Tracked {
    call: CallId,
    text: String,
    /// Proposed while `node` was on the minority side of partition number N.
    from_minority: Option<u64>,
    acknowledged: bool,
}

/// How long the simulator's proposals wait for their commit (retried meanwhile).
const PROPOSE_TIMEOUT_MS: u64 = 60_000;

/// The cluster under simulation.
#[derive(Debug)]
pub struct Sim {
    pub seed: u64,
    rng: Rng,
    now_ms: u64,
    nodes: Vec<SimNode>,
    net: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    /// Message loss probability.
    pub loss: f64,
    /// Groups that can talk among themselves; empty means no partition.
    groups: Vec<BTreeSet<NodeId>>,
    /// Leader seen per term.
    leaders: BTreeMap<u64, NodeId>,
    /// Data committed at each index, as first applied anywhere.
    committed: BTreeMap<u64, String>,
    proposals: Vec<Tracked>,
    /// Control calls answered with an error, by call id.
    refused: BTreeMap<CallId, String>,
    pub stats: SimStats,
    /// Whether heartbeats and detectors run.
    detection: bool,
    last_detect_ms: Option<u64>,
    /// (time, observer, event) of every detector event.
    pub detections: Vec<(u64, NodeId, DetectorEvent)>,
    /// (time, new watcher, vm, old watcher) of every P2 takeover.
    pub takeovers: Vec<(u64, NodeId, String, NodeId)>,
    /// Simulated libvirt hosts, when moves are simulated.
    hv: Option<Hypervisors>,
}

/// What happened in a run (for the test's summary).
#[derive(Debug, Clone, Default)]
pub struct SimStats {
    pub proposals: u64,
    pub acknowledged: u64,
    pub elections: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub heartbeats: u64,
}

fn site_name(id: NodeId) -> String {
    format!("s{id}")
}

impl Sim {
    /// A cluster of `n` appliances (ids 1..=n), all voters, each at a campus
    /// of its own (`s1`, `s2`, …).
    pub fn new(seed: u64, n: usize) -> Sim {
        let mut rng = Rng::new(seed);
        let voters: Vec<NodeId> = (1..=n as u64).collect();
        let nodes = voters
            .iter()
            .map(|&id| {
                let store = LogStore::in_memory();
                let node = Self::boot(&mut rng, id, &voters, &store, 1);
                SimNode {
                    id,
                    node: Some(node),
                    store,
                    incarnation: 1,
                    next_tick_ms: rng.below(TICK.as_millis() as u64),
                    watch: None,
                    seen_events: 0,
                }
            })
            .collect();
        Sim {
            seed,
            rng,
            now_ms: 0,
            nodes,
            net: BinaryHeap::new(),
            seq: 0,
            loss: 0.0,
            groups: Vec::new(),
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            proposals: Vec::new(),
            refused: BTreeMap::new(),
            stats: SimStats::default(),
            detection: false,
            last_detect_ms: None,
            detections: Vec::new(),
            takeovers: Vec::new(),
            hv: None,
        }
    }

    /// Turns on heartbeats and failure detectors (default settings) at every
    /// node, and commits `vms` (one per campus in turn) to the replicated
    /// state through a node's control API, so that every node's monitor
    /// places and watches them. Runs until they are applied everywhere (at
    /// most 10 s of virtual time).
    pub fn enable_detection(&mut self, vms: &[&str]) -> Result<(), Violation> {
        self.detection = true;
        for i in 0..self.nodes.len() {
            if self.nodes[i].node.is_some() {
                self.nodes[i].watch = Some(self.watching(self.nodes[i].id));
            }
        }
        let end = self.now_ms + 10_000;
        let leader = loop {
            if let Some(l) = self.leader() {
                break l;
            }
            if self.now_ms >= end {
                return Err(self.violation("no leader to commit the VMs".into()));
            }
            self.run_until(self.now_ms + 50)?;
        };
        let ids = self.ids();
        let mut commands: Vec<Command> = ids
            .iter()
            .map(|&id| {
                Command::PutSite(Site {
                    id: site_name(id),
                    location: None,
                    witness: false,
                })
            })
            .collect();
        for (k, vm) in vms.iter().enumerate() {
            commands.push(Command::PutVm(Vm {
                id: vm.to_string(),
                mac: format!("52:54:00:70:00:{:02x}", k + 16),
                ip: format!("10.70.0.{}", k + 10),
                priority: k as u32,
                site: site_name(ids[k % ids.len()]),
                host: String::new(),
                storage: StorageMode::Shared,
                check: VmCheck::default(),
                spec: Default::default(),
            }));
        }
        let mut calls = Vec::new();
        for command in commands {
            calls.push(self.call(
                leader,
                Request::Propose {
                    command,
                    timeout_ms: Some(PROPOSE_TIMEOUT_MS),
                },
            )?);
        }
        while self.now_ms < end {
            self.run_until(self.now_ms + 50)?;
            let running: Vec<&Node> = self.nodes.iter().filter_map(|n| n.node.as_ref()).collect();
            if running
                .iter()
                .all(|n| vms.iter().all(|v| n.state().vms.contains_key(*v)))
            {
                return Ok(());
            }
            if let Some(why) = calls.iter().find_map(|c| self.refused.get(c)) {
                return Err(self.violation(format!("committing the VMs: {why}")));
            }
        }
        Err(self.violation("the VMs were not applied everywhere within 10 s".into()))
    }

    /// A fresh failure detector for `id`.
    fn watching(&mut self, id: NodeId) -> Watching {
        let now = std::time::Duration::from_millis(self.now_ms);
        let mut detector = Detector::new(DetectorConfig::default(), id);
        for p in self.ids().into_iter().filter(|&p| p != id) {
            detector.add_peer(p, &[PathId::WAN], now);
        }
        Watching {
            detector,
            next_hb_ms: self.now_ms + self.rng.below(20),
        }
    }

    fn now(&self) -> Now {
        Now {
            mono: std::time::Duration::from_millis(self.now_ms),
            unix_us: self.now_ms * 1000,
        }
    }

    fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)?.node.as_ref()
    }

    /// Whether `id` is the active watcher of `vm` now.
    pub fn is_watching(&self, id: NodeId, vm: &str) -> bool {
        self.node(id).is_some_and(|n| n.is_watching(vm))
    }

    /// The P1 and P2 of `vm`, as the running nodes compute them.
    pub fn watchers_of(&self, vm: &str) -> Option<Watchers> {
        let node = self.nodes.iter().find_map(|n| n.node.as_ref())?;
        node.watchers().remove(vm)
    }

    /// Runs heartbeats and detectors due at `now_ms` at node index `i`.
    fn detect(&mut self, i: usize) -> Result<(), Violation> {
        let now_ms = self.now_ms;
        let now = std::time::Duration::from_millis(now_ms);
        let id = self.nodes[i].id;
        let peers: Vec<NodeId> = self.ids().into_iter().filter(|&p| p != id).collect();
        let Some(w) = self.nodes[i].watch.as_mut() else {
            return Ok(());
        };
        let mut sends = Vec::new();
        if w.next_hb_ms <= now_ms {
            w.next_hb_ms = now_ms + 20;
            if w.detector.heartbeats_due(now) {
                sends.extend(peers.iter().copied());
            }
        }
        let events = w.detector.poll(now);
        let health = peers.iter().map(|&p| (p, w.detector.health(p))).collect();
        if !events.is_empty() {
            self.detections
                .extend(events.iter().cloned().map(|e| (now_ms, id, e)));
            let at = self.now();
            if let Some(node) = self.nodes[i].node.as_mut() {
                let effects = node.detected(events, health, at);
                self.effects(id, effects)?;
            }
        }
        for to in sends {
            self.stats.heartbeats += 1;
            if self.rng.chance(self.loss) {
                self.stats.dropped += 1;
                continue;
            }
            let delay = 1 + self.rng.below(10);
            self.seq += 1;
            self.net.push(Reverse(InFlight {
                at_ms: now_ms + delay,
                seq: self.seq,
                heartbeat: true,
                bytes: Vec::new(),
                from: id,
                to,
            }));
        }
        Ok(())
    }

    fn boot(
        rng: &mut Rng,
        id: NodeId,
        voters: &[NodeId],
        store: &LogStore,
        incarnation: u64,
    ) -> Node {
        let election = ELECTION_TICKS + rng.below(ELECTION_TICKS as u64) as usize;
        let replica = Replica::new(id, voters, store.clone(), incarnation, election)
            .unwrap_or_else(|e| panic!("replica {id} cannot start on its own store: {e}"));
        let cfg = NodeConfig {
            me: id,
            name: format!("n{id}"),
            site: site_name(id),
            witness: false,
            peers: voters
                .iter()
                .filter(|&&p| p != id)
                .map(|&p| PeerInfo {
                    id: p,
                    name: format!("n{p}"),
                    site: site_name(p),
                    witness: false,
                    paths: vec!["wan".into()],
                })
                .collect(),
            path_names: vec!["wan".into()],
            incarnation,
        };
        Node::new(cfg, replica)
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    pub fn replica(&self, id: NodeId) -> Option<&Replica> {
        self.node(id).map(Node::replica)
    }

    fn violation(&self, what: String) -> Violation {
        Violation {
            seed: self.seed,
            at_ms: self.now_ms,
            what,
        }
    }

    fn can_talk(&self, a: NodeId, b: NodeId) -> bool {
        self.groups.is_empty() || self.groups.iter().any(|g| g.contains(&a) && g.contains(&b))
    }

    /// Whether `id` is on a side of the partition without a majority.
    pub fn in_minority(&self, id: NodeId) -> bool {
        if self.groups.is_empty() {
            return false;
        }
        let n = self.nodes.len();
        self.groups
            .iter()
            .find(|g| g.contains(&id))
            .is_none_or(|g| g.len() * 2 <= n)
    }

    /// Splits the cluster into `groups` (nodes not named are alone).
    pub fn partition(&mut self, groups: Vec<BTreeSet<NodeId>>) {
        let mut groups = groups;
        for id in self.ids() {
            if !groups.iter().any(|g| g.contains(&id)) {
                groups.push(BTreeSet::from([id]));
            }
        }
        self.groups = groups;
        self.stats.partitions += 1;
    }

    pub fn heal(&mut self) {
        self.groups.clear();
    }

    /// Crashes `id`: everything not written to its log store is lost.
    pub fn crash(&mut self, id: NodeId) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.id == id) {
            n.watch = None;
            n.seen_events = 0;
            if n.node.take().is_some() {
                self.stats.crashes += 1;
            }
        }
    }

    /// Restarts a crashed node from its log store.
    pub fn restart(&mut self, id: NodeId) {
        let voters = self.ids();
        let Some(i) = self.nodes.iter().position(|n| n.id == id) else {
            return;
        };
        if self.nodes[i].node.is_some() {
            return;
        }
        self.nodes[i].incarnation += 1;
        let (store, inc) = (self.nodes[i].store.clone(), self.nodes[i].incarnation);
        let node = Self::boot(&mut self.rng, id, &voters, &store, inc);
        self.nodes[i].node = Some(node);
        if self.detection {
            self.nodes[i].watch = Some(self.watching(id));
        }
    }

    /// Makes control request `req` at node `id`; returns the call's id.
    fn call(&mut self, id: NodeId, req: Request) -> Result<CallId, Violation> {
        let call = self.next_call();
        self.call_as(id, call, req)?;
        Ok(call)
    }

    fn next_call(&mut self) -> CallId {
        self.seq += 1;
        self.seq
    }

    /// Makes control request `req` at node `id` as call `call`.
    fn call_as(&mut self, id: NodeId, call: CallId, req: Request) -> Result<(), Violation> {
        let at = self.now();
        if let Some(node) = self
            .nodes
            .iter_mut()
            .find(|n| n.id == id)
            .and_then(|n| n.node.as_mut())
        {
            let effects = node.control(call, req, at);
            self.effects(id, effects)?;
        }
        Ok(())
    }

    /// Proposes a note at `id` through its control API; returns whether the
    /// node took it (it was not refused at once).
    pub fn propose(&mut self, id: NodeId) -> bool {
        let text = format!("n{id}-{}", self.stats.proposals);
        let minority = self.in_minority(id);
        if self.node(id).is_none() {
            return false;
        }
        self.stats.proposals += 1;
        let req = Request::Propose {
            command: Command::Note { text: text.clone() },
            timeout_ms: Some(PROPOSE_TIMEOUT_MS),
        };
        // Tracked before the call: its reply may come at once.
        let call = self.next_call();
        self.proposals.push(Tracked {
            call,
            text,
            from_minority: minority.then_some(self.stats.partitions),
            acknowledged: false,
        });
        match self.call_as(id, call, req) {
            Ok(()) => !self.refused.contains_key(&call),
            Err(_) => false,
        }
    }

    /// Proposes adding (`add`) or removing voter `node`, at appliance `at`.
    pub fn propose_membership(&mut self, at: NodeId, node: NodeId, add: bool) -> bool {
        if self.node(at).is_none() {
            return false;
        }
        let req = Request::Membership {
            id: node,
            add,
            timeout_ms: Some(PROPOSE_TIMEOUT_MS),
        };
        match self.call(at, req) {
            Ok(call) => !self.refused.contains_key(&call),
            Err(_) => false,
        }
    }

    /// Runs until virtual time `until_ms`, checking invariants.
    pub fn run_until(&mut self, until_ms: u64) -> Result<(), Violation> {
        while self.now_ms < until_ms {
            let next_tick = self
                .nodes
                .iter()
                .map(|n| n.next_tick_ms)
                .min()
                .unwrap_or(until_ms);
            let next_msg = self
                .net
                .peek()
                .map(|Reverse(m)| m.at_ms)
                .unwrap_or(u64::MAX);
            let next_detect = self
                .nodes
                .iter()
                .filter_map(|n| n.watch.as_ref())
                .map(|w| {
                    let d = w
                        .detector
                        .next_deadline()
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(u64::MAX);
                    w.next_hb_ms.min(d)
                })
                .min()
                // A detector deadline already handled at this instant waits a millisecond.
                .map(|t| t.max(self.last_detect_ms.map_or(0, |l| l + 1)))
                .unwrap_or(u64::MAX);
            let t = next_tick.min(next_msg).min(next_detect).min(until_ms);
            self.now_ms = t;
            self.run_hypervisors()?;
            if next_detect <= t && next_detect < next_msg.min(next_tick) {
                self.last_detect_ms = Some(t);
                for i in 0..self.nodes.len() {
                    self.detect(i)?;
                }
            } else if next_msg <= t {
                let Reverse(m) = self.net.pop().expect("peeked");
                self.deliver(m)?;
            } else if next_tick <= t {
                let i = self
                    .nodes
                    .iter()
                    .position(|n| n.next_tick_ms == next_tick)
                    .expect("found");
                self.nodes[i].next_tick_ms += TICK.as_millis() as u64;
                let id = self.nodes[i].id;
                let at = self.now();
                if let Some(node) = self.nodes[i].node.as_mut() {
                    let effects = node.tick(at);
                    self.effects(id, effects)?;
                }
            }
        }
        Ok(())
    }

    fn deliver(&mut self, m: InFlight) -> Result<(), Violation> {
        if !self.can_talk(m.from, m.to) {
            self.stats.dropped += 1;
            return Ok(());
        }
        let Some(i) = self.nodes.iter().position(|n| n.id == m.to) else {
            return Ok(());
        };
        if m.heartbeat {
            let now = std::time::Duration::from_millis(self.now_ms);
            if let Some(w) = self.nodes[i].watch.as_mut() {
                w.detector.on_heartbeat(m.from, PathId::WAN, now);
            }
            return self.detect(i);
        }
        let at = self.now();
        let Some(node) = self.nodes[i].node.as_mut() else {
            self.stats.dropped += 1;
            return Ok(());
        };
        let msg = crate::core::replica::decode_message(&m.bytes).map_err(|e| Violation {
            seed: self.seed,
            at_ms: self.now_ms,
            what: format!("undecodable message: {e}"),
        })?;
        self.stats.delivered += 1;
        let effects = node.step(msg, at);
        self.effects(m.to, effects)
    }

    /// Carries out node `id`'s effects and checks the invariants they touch.
    fn effects(
        &mut self,
        id: NodeId,
        effects: Result<Vec<Effect>, NodeError>,
    ) -> Result<(), Violation> {
        let effects = effects.map_err(|e| self.violation(format!("node {id}: {e}")))?;
        for e in effects {
            match e {
                Effect::Send(msg) => self.send(id, msg),
                Effect::Applied(changes) => self.applied(id, &changes)?,
                Effect::Reply { call, response } => self.replied(call, response),
                // Service checks are not simulated.
                Effect::Check(_) => {}
                Effect::Migrate(order) => self.migrate(id, order)?,
                Effect::AbortMigration { id: mv } => self.abort(&mv),
                Effect::SetMigrationBandwidth { .. } => {}
                Effect::ResolveMove(order) => self.resolve(id, order),
            }
        }
        self.took_over(id);
        let Some(r) = self.replica(id) else {
            return Ok(());
        };
        if r.is_leader() {
            let term = r.status().term;
            match self.leaders.get(&term) {
                None => {
                    self.leaders.insert(term, id);
                    self.stats.elections += 1;
                }
                Some(&other) if other == id => {}
                Some(&other) => {
                    return Err(
                        self.violation(format!("two leaders in term {term}: {other} and {id}"))
                    )
                }
            }
        }
        Ok(())
    }

    fn applied(&mut self, id: NodeId, changes: &[StateChange]) -> Result<(), Violation> {
        for change in changes {
            let Command::Note { text } = &change.command else {
                continue;
            };
            match self.committed.get(&change.index) {
                None => {
                    self.committed.insert(change.index, text.clone());
                }
                Some(t) if t == text => {}
                Some(t) => {
                    return Err(self.violation(format!(
                        "node {id} applied '{text}' at index {} where '{t}' was committed",
                        change.index
                    )))
                }
            }
            if let Some(p) = self.proposals.iter().find(|p| &p.text == text) {
                if !self.groups.is_empty() && p.from_minority == Some(self.stats.partitions) {
                    return Err(self.violation(format!(
                        "'{text}', proposed on the minority side, committed during the partition"
                    )));
                }
            }
        }
        Ok(())
    }

    fn replied(&mut self, call: CallId, response: Response) {
        if !response.ok {
            self.refused
                .insert(call, response.error.unwrap_or_default());
            return;
        }
        let committed = response
            .result
            .and_then(|r| serde_json::from_value::<ProposeReply>(r).ok())
            .is_some();
        if let Some(p) = self.proposals.iter_mut().find(|p| p.call == call) {
            if committed && !p.acknowledged {
                p.acknowledged = true;
                self.stats.acknowledged += 1;
            }
        }
    }

    /// Collects the P2 takeovers that node `id` recorded.
    fn took_over(&mut self, id: NodeId) {
        let now_ms = self.now_ms;
        let Some(n) = self.nodes.iter_mut().find(|n| n.id == id) else {
            return;
        };
        let Some(node) = n.node.as_ref() else {
            return;
        };
        for e in node.events_since(n.seen_events) {
            n.seen_events = e.seq;
            if let (Some(from), Some(vm)) = (e.peer, &e.vm) {
                if e.kind == "took-over" {
                    self.takeovers.push((now_ms, id, vm.clone(), from));
                }
            }
        }
    }

    fn send(&mut self, from: NodeId, msg: Message) {
        if self.rng.chance(self.loss) {
            self.stats.dropped += 1;
            return;
        }
        let to = msg.to;
        let delay = 1 + self.rng.below(10);
        self.seq += 1;
        self.net.push(Reverse(InFlight {
            at_ms: self.now_ms + delay,
            seq: self.seq,
            heartbeat: false,
            bytes: crate::core::replica::encode_message(&msg),
            from,
            to,
        }));
    }

    /// The current leader that a majority follows, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|n| n.node.as_ref())
            .map(Node::replica)
            .find(|r| r.is_leader() && !self.in_minority(r.id()))
            .map(Replica::id)
    }

    fn running(&self) -> Vec<&Replica> {
        self.nodes
            .iter()
            .filter_map(|n| n.node.as_ref())
            .map(Node::replica)
            .collect()
    }

    /// Checks that every running node has applied the same state, and that
    /// every acknowledged proposal is in it.
    pub fn check_converged(&self) -> Result<(), Violation> {
        let running = self.running();
        let Some(first) = running.first() else {
            return Err(self.violation("no node is running".into()));
        };
        for r in &running[1..] {
            if r.state() != first.state() {
                return Err(self.violation(format!(
                    "nodes {} and {} differ after healing: applied {} vs {}",
                    first.id(),
                    r.id(),
                    first.state().applied,
                    r.state().applied
                )));
            }
        }
        let notes: BTreeSet<&str> = first
            .state()
            .audit
            .iter()
            .filter_map(|a| a.what.strip_prefix("note: "))
            .collect();
        for p in self.proposals.iter().filter(|p| p.acknowledged) {
            if !notes.contains(p.text.as_str()) {
                return Err(self.violation(format!("acknowledged proposal '{}' was lost", p.text)));
            }
        }
        Ok(())
    }

    /// Runs until every running node has applied the same index and the
    /// leader's commit, or `limit_ms` passes.
    pub fn settle(&mut self, limit_ms: u64) -> Result<(), Violation> {
        let end = self.now_ms + limit_ms;
        while self.now_ms < end {
            let step = self.now_ms + 100;
            self.run_until(step)?;
            let running = self.running();
            let Some(leader) = running.iter().find(|r| r.is_leader()) else {
                continue;
            };
            let commit = leader.status().commit;
            if running
                .iter()
                .all(|r| r.state().applied == commit && r.status().commit == commit)
                && running.iter().all(|r| r.state() == leader.state())
            {
                return Ok(());
            }
        }
        Err(self.violation(format!(
            "the cluster did not converge within {limit_ms} ms after healing"
        )))
    }
}

/// One random schedule: proposals, partitions, loss, crashes and restarts for
/// `duration_ms`, then healing and a convergence check.
pub fn random_schedule(seed: u64, duration_ms: u64) -> Result<SimStats, Violation> {
    let mut rng = Rng::new(seed ^ 0x5eed);
    let n = if rng.chance(0.5) { 3 } else { 5 };
    let mut sim = Sim::new(seed, n);
    let ids = sim.ids();
    while sim.now_ms() < duration_ms {
        let step = sim.now_ms() + 100 + rng.below(400);
        sim.run_until(step)?;
        match rng.below(100) {
            0..=49 => {
                let id = ids[rng.below(n as u64) as usize];
                sim.propose(id);
            }
            50..=59 => {
                // A minority split off, or an even-ish random split.
                let k = 1 + rng.below((n / 2) as u64) as usize;
                let mut shuffled = ids.clone();
                for i in (1..shuffled.len()).rev() {
                    shuffled.swap(i, rng.below(i as u64 + 1) as usize);
                }
                let minority: BTreeSet<NodeId> = shuffled[..k].iter().copied().collect();
                let majority: BTreeSet<NodeId> = shuffled[k..].iter().copied().collect();
                sim.partition(vec![minority, majority]);
            }
            60..=66 => sim.heal(),
            67..=71 => sim.loss = [0.0, 0.05, 0.2][rng.below(3) as usize],
            72..=76 => {
                let id = ids[rng.below(n as u64) as usize];
                sim.crash(id);
            }
            77..=84 => {
                let id = ids[rng.below(n as u64) as usize];
                sim.restart(id);
            }
            _ => {}
        }
    }
    sim.heal();
    sim.loss = 0.0;
    for id in ids.clone() {
        sim.restart(id);
    }
    sim.settle(30_000)?;
    // One more proposal must commit once healed.
    let leader = sim
        .leader()
        .ok_or_else(|| sim.violation("no leader after healing".into()))?;
    sim.propose(leader);
    sim.settle(10_000)?;
    sim.check_converged()?;
    Ok(sim.stats.clone())
}
