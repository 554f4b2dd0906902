//! A deterministic simulator of an appliance cluster: virtual time, a seeded
//! network that delays, loses, partitions and reorders messages, and crashes
//! that keep only what was written to the log store. It drives the real
//! [`Replica`] (raft-rs plus the state machine), not a model of it, and checks
//! Raft's safety properties as it goes. A failing seed replays exactly.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use raft::prelude::Message;

use crate::core::detect::{Detector, DetectorConfig, DetectorEvent, PathId, PeerHealth};
use crate::core::monitor::{
    assign_watchers, Monitor, MonitorConfig, MonitorEvent, ServiceCheck, VmTarget,
};
use crate::core::replica::{Output, ProposalId, Replica, ELECTION_TICKS, TICK};
use crate::core::state::{Command, NodeId, Proposal};
use crate::shell::logstore::LogStore;

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
    /// `None` while crashed.
    replica: Option<Replica>,
    /// What survives a crash.
    store: LogStore,
    incarnation: u64,
    /// Ticks are staggered per node.
    next_tick_ms: u64,
    /// The failure detector and the P1/P2 monitor, when detection is on (lost in a crash).
    watch: Option<Watching>,
}

#[derive(Debug)]
struct Watching {
    detector: Detector,
    monitor: Monitor,
    next_hb_ms: u64,
    hb_seq: u64,
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

/// A proposal the simulator made, and what became of it.
#[derive(Debug, Clone)]
struct Tracked {
    node: NodeId,
    incarnation: u64,
    id: ProposalId,
    text: String,
    /// Proposed while `node` was on the minority side of partition number N.
    from_minority: Option<u64>,
    acknowledged: bool,
}

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
    pub stats: SimStats,
    /// VMs watched when detection is on.
    vms: Option<Vec<String>>,
    last_detect_ms: Option<u64>,
    /// (time, observer, event) of every detector event.
    pub detections: Vec<(u64, NodeId, DetectorEvent)>,
    /// (time, new watcher, vm, old watcher) of every P2 takeover.
    pub takeovers: Vec<(u64, NodeId, String, NodeId)>,
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

impl Sim {
    /// A cluster of `n` appliances (ids 1..=n), all voters.
    pub fn new(seed: u64, n: usize) -> Sim {
        let mut rng = Rng::new(seed);
        let voters: Vec<NodeId> = (1..=n as u64).collect();
        let nodes = voters
            .iter()
            .map(|&id| {
                let store = LogStore::in_memory();
                let replica = Self::boot(&mut rng, id, &voters, &store, 1);
                SimNode {
                    id,
                    replica: Some(replica),
                    store,
                    incarnation: 1,
                    next_tick_ms: rng.below(TICK.as_millis() as u64),
                    watch: None,
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
            stats: SimStats::default(),
            vms: None,
            last_detect_ms: None,
            detections: Vec::new(),
            takeovers: Vec::new(),
        }
    }

    /// Turns on heartbeats, failure detectors and P1/P2 monitors (default
    /// settings) at every node, watching `vms`.
    pub fn enable_detection(&mut self, vms: &[&str]) {
        self.vms = Some(vms.iter().map(|v| v.to_string()).collect());
        for i in 0..self.nodes.len() {
            if self.nodes[i].replica.is_some() {
                self.nodes[i].watch = Some(self.watching(self.nodes[i].id, true));
            }
        }
    }

    /// A fresh detector and monitor for `id`; `assume_live` starts with every
    /// peer taken as live (a cluster start) instead of none (a restart).
    fn watching(&mut self, id: NodeId, assume_live: bool) -> Watching {
        let ids = self.ids();
        let now = std::time::Duration::from_millis(self.now_ms);
        let mut detector = Detector::new(DetectorConfig::default(), id);
        for &p in ids.iter().filter(|&&p| p != id) {
            detector.add_peer(p, &[PathId::WAN], now);
        }
        let vms = self.vms.clone().unwrap_or_default();
        let assigned = assign_watchers(&vms, &ids);
        let mut monitor = Monitor::new(id);
        monitor.set_assignments(
            assigned
                .into_iter()
                .map(|(vm, w)| {
                    let target = VmTarget {
                        addr: std::net::Ipv4Addr::new(10, 70, 0, 10),
                        service: ServiceCheck::Tcp { port: 80 },
                        config: MonitorConfig::default(),
                    };
                    (vm, (w, target))
                })
                .collect(),
        );
        let live: BTreeSet<NodeId> = if assume_live {
            ids.iter().copied().collect()
        } else {
            BTreeSet::from([id])
        };
        monitor.set_live(live);
        Watching {
            detector,
            monitor,
            next_hb_ms: self.now_ms + self.rng.below(20),
            hb_seq: 0,
        }
    }

    /// Whether `id` is the active watcher of `vm` now.
    pub fn is_watching(&self, id: NodeId, vm: &str) -> bool {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .and_then(|n| n.watch.as_ref())
            .is_some_and(|w| w.monitor.is_watching(vm))
    }

    /// The P1 and P2 of `vm`, as every node computes them.
    pub fn watchers_of(&self, vm: &str) -> Option<crate::core::monitor::Watchers> {
        let vms = self.vms.clone()?;
        assign_watchers(&vms, &self.ids()).remove(vm)
    }

    /// Runs heartbeats and detectors due at `now_ms` at node index `i`.
    fn detect(&mut self, i: usize) {
        let now_ms = self.now_ms;
        let now = std::time::Duration::from_millis(now_ms);
        let id = self.nodes[i].id;
        let peers: Vec<NodeId> = self.ids().into_iter().filter(|&p| p != id).collect();
        let Some(w) = self.nodes[i].watch.as_mut() else {
            return;
        };
        let mut sends = Vec::new();
        if w.next_hb_ms <= now_ms {
            w.next_hb_ms = now_ms + 20;
            if w.detector.heartbeats_due(now) {
                w.hb_seq += 1;
                sends.extend(peers.iter().copied());
            }
        }
        let events = w.detector.poll(now);
        let mut took = Vec::new();
        if !events.is_empty() {
            let mut live: BTreeSet<NodeId> = peers
                .iter()
                .copied()
                .filter(|&p| {
                    matches!(
                        w.detector.health(p),
                        PeerHealth::Up | PeerHealth::Degraded { .. }
                    )
                })
                .collect();
            live.insert(id);
            for e in w.monitor.set_live(live) {
                if let MonitorEvent::TookOver { vm, from } = e {
                    took.push((now_ms, id, vm, from));
                }
            }
        }
        self.detections
            .extend(events.into_iter().map(|e| (now_ms, id, e)));
        self.takeovers.extend(took);
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
    }

    fn boot(
        rng: &mut Rng,
        id: NodeId,
        voters: &[NodeId],
        store: &LogStore,
        incarnation: u64,
    ) -> Replica {
        let election = ELECTION_TICKS + rng.below(ELECTION_TICKS as u64) as usize;
        Replica::new(id, voters, store.clone(), incarnation, election)
            .unwrap_or_else(|e| panic!("replica {id} cannot start on its own store: {e}"))
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    pub fn replica(&self, id: NodeId) -> Option<&Replica> {
        self.nodes.iter().find(|n| n.id == id)?.replica.as_ref()
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
            if n.replica.take().is_some() {
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
        if self.nodes[i].replica.is_some() {
            return;
        }
        self.nodes[i].incarnation += 1;
        let (store, inc) = (self.nodes[i].store.clone(), self.nodes[i].incarnation);
        let replica = Self::boot(&mut self.rng, id, &voters, &store, inc);
        self.nodes[i].replica = Some(replica);
        if self.vms.is_some() {
            self.nodes[i].watch = Some(self.watching(id, false));
        }
    }

    /// Proposes a note at `id`; returns whether the replica took it.
    pub fn propose(&mut self, id: NodeId) -> bool {
        let text = format!("n{id}-{}", self.stats.proposals);
        let minority = self.in_minority(id);
        let Some(i) = self.nodes.iter().position(|n| n.id == id) else {
            return false;
        };
        let inc = self.nodes[i].incarnation;
        let Some(r) = self.nodes[i].replica.as_mut() else {
            return false;
        };
        let p = Proposal {
            request: None,
            by: id,
            at_unix_ms: 0,
            command: Command::Note { text: text.clone() },
        };
        self.stats.proposals += 1;
        match r.propose(&p) {
            Ok((pid, out)) => {
                self.proposals.push(Tracked {
                    node: id,
                    incarnation: inc,
                    id: pid,
                    text,
                    from_minority: minority.then_some(self.stats.partitions),
                    acknowledged: false,
                });
                let _ = self.handle(id, out);
                true
            }
            Err(_) => false,
        }
    }

    /// Proposes adding (`add`) or removing voter `node`, at appliance `at`.
    pub fn propose_membership(&mut self, at: NodeId, node: NodeId, add: bool) -> bool {
        let Some(r) = self
            .nodes
            .iter_mut()
            .find(|n| n.id == at)
            .and_then(|n| n.replica.as_mut())
        else {
            return false;
        };
        match r.propose_membership(node, add) {
            Ok(out) => {
                let _ = self.handle(at, out);
                true
            }
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
            if next_detect <= t && next_detect < next_msg.min(next_tick) {
                self.last_detect_ms = Some(t);
                for i in 0..self.nodes.len() {
                    self.detect(i);
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
                if let Some(r) = self.nodes[i].replica.as_mut() {
                    let out = r.tick().map_err(|e| Violation {
                        seed: self.seed,
                        at_ms: t,
                        what: format!("node {id}: {e}"),
                    })?;
                    self.handle(id, out)?;
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
            self.detect(i);
            return Ok(());
        }
        let Some(r) = self.nodes[i].replica.as_mut() else {
            self.stats.dropped += 1;
            return Ok(());
        };
        let msg = crate::core::replica::decode_message(&m.bytes).map_err(|e| Violation {
            seed: self.seed,
            at_ms: self.now_ms,
            what: format!("undecodable message: {e}"),
        })?;
        self.stats.delivered += 1;
        let out = r.step(msg).map_err(|e| Violation {
            seed: self.seed,
            at_ms: self.now_ms,
            what: format!("node {}: {e}", m.to),
        })?;
        self.handle(m.to, out)
    }

    fn handle(&mut self, id: NodeId, out: Output) -> Result<(), Violation> {
        for msg in out.messages {
            self.send(id, msg);
        }
        for change in &out.changes {
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
        let inc = self
            .nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.incarnation);
        for (pid, _index, _) in &out.completed {
            if let Some(p) = self
                .proposals
                .iter_mut()
                .find(|p| p.node == id && p.id == *pid && Some(p.incarnation) == inc)
            {
                if !p.acknowledged {
                    p.acknowledged = true;
                    self.stats.acknowledged += 1;
                }
            }
        }
        if let Some(r) = self
            .nodes
            .iter()
            .find(|n| n.id == id)
            .and_then(|n| n.replica.as_ref())
        {
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
        }
        Ok(())
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
            .filter_map(|n| n.replica.as_ref())
            .find(|r| r.is_leader() && !self.in_minority(r.id()))
            .map(Replica::id)
    }

    /// Checks that every running node has applied the same state, and that
    /// every acknowledged proposal is in it.
    pub fn check_converged(&self) -> Result<(), Violation> {
        let running: Vec<&Replica> = self
            .nodes
            .iter()
            .filter_map(|n| n.replica.as_ref())
            .collect();
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
            let running: Vec<&Replica> = self
                .nodes
                .iter()
                .filter_map(|n| n.replica.as_ref())
                .collect();
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
