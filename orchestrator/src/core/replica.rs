//! One appliance's replica of the cluster state: raft-rs's `RawNode` (a
//! sans-IO Raft: we feed it ticks and messages and it hands back what to
//! persist, send and apply) plus the state machine. No clock, no sockets: the
//! shell and the simulator drive it identically.
//!
//! Why raft-rs: it is the Raft of TiKV, long in production, and its core is a
//! plain state machine driven by `tick()` and `step()`. That lets the
//! deterministic simulator run the very same code with virtual time, seeded
//! loss and crashes, which an engine with its own async runtime and timers
//! (openraft) would not without a runtime of its own.

use std::collections::BTreeMap;

use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, ConfState, Entry, EntryType, Message};
use raft::{Config, RawNode, StateRole};
use serde::{Deserialize, Serialize};

use crate::core::state::{ClusterState, NodeId, Proposal, StateChange};
use crate::shell::logstore::{LogStore, LogStoreError};

/// Raft timing, in ticks. The shell ticks every [`TICK`].
pub const TICK: std::time::Duration = std::time::Duration::from_millis(50);
/// The shortest election timeout, in ticks (0.5 s); callers choose 10–20 per run.
pub const ELECTION_TICKS: usize = 10;
const HEARTBEAT_TICKS: usize = 1;

/// Why a proposal could not be taken or did not commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error(
        "cannot commit: no leader is reachable from appliance {me} (it reaches {reachable} of {voters} voters; a majority of {majority} is needed)"
    )]
    NoLeader {
        me: NodeId,
        reachable: usize,
        voters: usize,
        majority: usize,
    },
    #[error("the proposal was dropped: {0}")]
    Dropped(String),
    #[error("the state machine rejected it: {0}")]
    Rejected(String),
    #[error("the Raft log cannot be written: {0}")]
    Storage(String),
}

/// The largest command taken, serialized: it must fit a transport frame.
pub const MAX_PROPOSAL: usize = 1 << 20;

/// A proposal's id, unique per appliance run.
pub type ProposalId = u64;

/// What the core wants done after an input.
#[derive(Debug, Default)]
pub struct Output {
    /// Raft messages to send, each to `msg.to`.
    pub messages: Vec<Message>,
    /// Entries applied, in order.
    pub changes: Vec<StateChange>,
    /// This appliance's proposals that were applied: (id, log index, rejection).
    pub completed: Vec<(ProposalId, u64, Option<String>)>,
}

/// A snapshot of the replica's Raft status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RaftStatus {
    pub id: NodeId,
    pub role: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub commit: u64,
    pub applied: u64,
    pub voters: Vec<NodeId>,
    /// On a leader: each voter's replication progress, `id:matched/next(state)`.
    #[serde(default)]
    pub progress: Vec<String>,
    pub last_index: u64,
}

/// Context stored beside each proposed entry: who proposed it, which proposal.
#[derive(Debug, Serialize, Deserialize)]
struct EntryContext {
    node: NodeId,
    proposal: ProposalId,
    /// The proposing replica's incarnation, so ids of an earlier run never match.
    incarnation: u64,
}

/// One appliance's replica.
pub struct Replica {
    id: NodeId,
    incarnation: u64,
    node: RawNode<LogStore>,
    store: LogStore,
    state: ClusterState,
    next_proposal: ProposalId,
    /// Ticks so far, and the tick each peer was last heard at.
    ticks: u64,
    heard: BTreeMap<NodeId, u64>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("id", &self.id)
            .field("status", &self.status())
            .finish()
    }
}

impl Replica {
    /// Starts a replica on `store`. A blank store is initialised with `voters`
    /// (every appliance of a new consortium starts with the same list).
    /// `incarnation` must differ between runs of the same appliance (e.g. boot time).
    /// `election_ticks` (at least 10) is this run's election timeout: the caller
    /// picks it at random per run, so that raft-rs itself draws no random numbers
    /// and a seeded simulation replays exactly.
    pub fn new(
        id: NodeId,
        voters: &[NodeId],
        store: LogStore,
        incarnation: u64,
        election_ticks: usize,
    ) -> Result<Replica, LogStoreError> {
        if store.is_blank() {
            let mut cs = ConfState::default();
            cs.voters = voters.to_vec();
            store.set_conf_state(&cs)?;
        }
        let cfg = Config {
            id,
            election_tick: ELECTION_TICKS,
            min_election_tick: election_ticks.max(ELECTION_TICKS),
            max_election_tick: election_ticks.max(ELECTION_TICKS) + 1,
            heartbeat_tick: HEARTBEAT_TICKS,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            applied: 0,
            ..Default::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let node = RawNode::new(&cfg, store.clone(), &logger)
            .map_err(|e| LogStoreError::Corrupt(e.to_string()))?;
        Ok(Replica {
            id,
            incarnation,
            node,
            store,
            state: ClusterState::default(),
            next_proposal: 1,
            ticks: 0,
            heard: BTreeMap::new(),
        })
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The applied state (reads are served from here).
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    pub fn store(&self) -> &LogStore {
        &self.store
    }

    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    pub fn status(&self) -> RaftStatus {
        let r = &self.node.raft;
        RaftStatus {
            id: self.id,
            role: format!("{:?}", r.state).to_lowercase(),
            term: r.term,
            leader: (r.leader_id != 0).then_some(r.leader_id),
            commit: r.raft_log.committed,
            applied: self.state.applied,
            voters: self.voters(),
            progress: if r.state == StateRole::Leader {
                r.prs()
                    .iter()
                    .map(|(id, p)| {
                        format!(
                            "{id}:{}/{}({:?},paused={})",
                            p.matched, p.next_idx, p.state, p.paused
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            },
            last_index: r.raft_log.last_index(),
        }
    }

    pub fn voters(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.node.raft.prs().conf().voters().ids().iter().collect();
        v.sort_unstable();
        v
    }

    /// Advances Raft's clock by one tick ([`TICK`]).
    pub fn tick(&mut self) -> Result<Output, LogStoreError> {
        self.ticks += 1;
        self.node.tick();
        self.drain()
    }

    /// Takes a Raft message from a peer.
    pub fn step(&mut self, msg: Message) -> Result<Output, LogStoreError> {
        self.heard.insert(msg.from, self.ticks);
        // A message for another node or an old incarnation is simply ignored by raft-rs.
        let _ = self.node.step(msg);
        self.drain()
    }

    /// Proposes a command; it completes (in some later [`Output::completed`])
    /// once committed and applied, or never if leadership is lost meanwhile.
    pub fn propose(&mut self, proposal: &Proposal) -> Result<(ProposalId, Output), ProposeError> {
        if !self.leader_reachable() {
            return Err(self.no_leader());
        }
        let id = self.next_proposal;
        self.next_proposal += 1;
        let ctx = serde_json::to_vec(&EntryContext {
            node: self.id,
            proposal: id,
            incarnation: self.incarnation,
        })
        .map_err(|e| ProposeError::Dropped(e.to_string()))?;
        let data =
            serde_json::to_vec(proposal).map_err(|e| ProposeError::Dropped(e.to_string()))?;
        self.node.propose(ctx, data).map_err(|e| match e {
            raft::Error::ProposalDropped => self.no_leader(),
            other => ProposeError::Dropped(other.to_string()),
        })?;
        let out = self
            .drain()
            .map_err(|e| ProposeError::Storage(e.to_string()))?;
        Ok((id, out))
    }

    /// Proposes adding (`add`) or removing a voter.
    pub fn propose_membership(&mut self, node: NodeId, add: bool) -> Result<Output, ProposeError> {
        if !self.leader_reachable() {
            return Err(self.no_leader());
        }
        let mut cc = ConfChange::default();
        cc.node_id = node;
        cc.set_change_type(if add {
            ConfChangeType::AddNode
        } else {
            ConfChangeType::RemoveNode
        });
        self.node
            .propose_conf_change(vec![], cc)
            .map_err(|e| ProposeError::Dropped(e.to_string()))?;
        self.drain()
            .map_err(|e| ProposeError::Storage(e.to_string()))
    }

    /// Whether `peer` was heard from within the last election timeout.
    fn heard_recently(&self, peer: NodeId) -> bool {
        peer == self.id
            || self
                .heard
                .get(&peer)
                .is_some_and(|&t| self.ticks.saturating_sub(t) <= ELECTION_TICKS as u64)
    }

    /// A follower forwards proposals to its leader only while it hears from
    /// it: a proposal queued toward an unreachable leader could otherwise
    /// commit long after its caller was told it failed.
    fn leader_reachable(&self) -> bool {
        let leader = self.node.raft.leader_id;
        leader != 0 && self.heard_recently(leader)
    }

    fn no_leader(&self) -> ProposeError {
        let voters = self.voters();
        let reachable = voters.iter().filter(|v| self.heard_recently(**v)).count();
        ProposeError::NoLeader {
            me: self.id,
            reachable,
            voters: voters.len(),
            majority: voters.len() / 2 + 1,
        }
    }

    /// Handles everything raft-rs has ready: persist, then send, then apply.
    fn drain(&mut self) -> Result<Output, LogStoreError> {
        let mut out = Output::default();
        while self.node.has_ready() {
            let mut ready = self.node.ready();
            // A leader may send before persisting (Raft thesis 10.2.1).
            out.messages.extend(ready.take_messages());
            if !ready.snapshot().is_empty() {
                return Err(LogStoreError::Corrupt(
                    "a snapshot arrived, but this log is never compacted".into(),
                ));
            }
            self.apply(ready.take_committed_entries(), &mut out)?;
            self.store.append(ready.entries())?;
            if let Some(hs) = ready.hs() {
                self.store.set_hardstate(hs)?;
            }
            out.messages.extend(ready.take_persisted_messages());
            let mut light = self.node.advance(ready);
            if let Some(commit) = light.commit_index() {
                self.store.set_commit(commit)?;
            }
            out.messages.extend(light.take_messages());
            self.apply(light.take_committed_entries(), &mut out)?;
            self.node.advance_apply();
        }
        Ok(out)
    }

    fn apply(&mut self, entries: Vec<Entry>, out: &mut Output) -> Result<(), LogStoreError> {
        for e in entries {
            if e.index <= self.state.applied {
                continue;
            }
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    if e.data.is_empty() {
                        // The empty entry a new leader commits first.
                        self.state.applied = e.index;
                        continue;
                    }
                    let proposal: Proposal = match serde_json::from_slice(&e.data) {
                        Ok(p) => p,
                        Err(err) => {
                            // Written by this software; unreadable means a newer
                            // version wrote it. Skipping it would fork the state.
                            return Err(LogStoreError::Corrupt(format!(
                                "entry {} cannot be read: {err}",
                                e.index
                            )));
                        }
                    };
                    let change = self.state.apply(e.index, &proposal);
                    if let Ok(ctx) = serde_json::from_slice::<EntryContext>(&e.context) {
                        if ctx.node == self.id && ctx.incarnation == self.incarnation {
                            out.completed
                                .push((ctx.proposal, e.index, change.rejected.clone()));
                        }
                    }
                    out.changes.push(change);
                }
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&e.data).map_err(|err| {
                        LogStoreError::Corrupt(format!("entry {}: {err}", e.index))
                    })?;
                    // A change raft-rs refuses (say, removing the last voter) is
                    // refused the same way by every replica: skip it.
                    if let Ok(cs) = self.node.apply_conf_change(&cc) {
                        self.store.set_conf_state(&cs)?;
                    }
                    self.state.applied = e.index;
                }
                EntryType::EntryConfChangeV2 => {
                    return Err(LogStoreError::Corrupt(format!(
                        "entry {} is a joint membership change, which hinan never proposes",
                        e.index
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Encodes a Raft message for the wire.
pub fn encode_message(m: &Message) -> Vec<u8> {
    m.write_to_bytes().unwrap_or_default()
}

/// Decodes a Raft message from the wire.
pub fn decode_message(bytes: &[u8]) -> Result<Message, String> {
    Message::parse_from_bytes(bytes).map_err(|e| e.to_string())
}
