//! The appliance core in virtual time: real nodes (real Raft replicas on
//! in-memory stores) wired by a harness that delivers, delays or drops their
//! messages.

use std::collections::{BTreeMap, VecDeque};

use super::*;
use crate::core::control::ProposeReply;
use crate::core::replica::TICK;
use crate::core::state::{Site, StorageMode, Vm};
use crate::shell::logstore::LogStore;

fn site(id: NodeId) -> String {
    ["", "a", "b", "c"][id as usize].to_string()
}

fn node(id: NodeId, voters: &[NodeId]) -> Node {
    let replica = Replica::new(id, voters, LogStore::in_memory(), 1, 10 + id as usize).unwrap();
    let peers = voters
        .iter()
        .filter(|&&p| p != id)
        .map(|&p| PeerInfo {
            id: p,
            name: format!("n{p}"),
            site: site(p),
            witness: false,
            paths: vec!["wan".into()],
        })
        .collect();
    let cfg = NodeConfig {
        me: id,
        name: format!("n{id}"),
        site: site(id),
        witness: false,
        peers,
        path_names: vec!["wan".into()],
        incarnation: 1,
    };
    Node::new(cfg, replica)
}

/// Nodes, the messages between them, the replies they gave, and a filter
/// that drops messages.
struct Cluster {
    nodes: BTreeMap<NodeId, Node>,
    now: Duration,
    wire: VecDeque<Message>,
    replies: BTreeMap<CallId, Vec<Response>>,
    next_call: CallId,
    drop: Box<dyn FnMut(&Message) -> bool>,
    /// Migration effects, with the node that gave them.
    orders: Vec<(NodeId, Effect)>,
    /// The node whose effects `take` receives.
    from: NodeId,
}

impl Cluster {
    fn new(n: u64) -> Cluster {
        let voters: Vec<NodeId> = (1..=n).collect();
        Cluster {
            nodes: voters.iter().map(|&id| (id, node(id, &voters))).collect(),
            now: Duration::ZERO,
            wire: VecDeque::new(),
            replies: BTreeMap::new(),
            next_call: 0,
            drop: Box::new(|_| false),
            orders: Vec::new(),
            from: 0,
        }
    }

    fn at(&self) -> Now {
        Now {
            mono: self.now,
            unix_us: 1_700_000_000_000_000 + self.now.as_micros() as u64,
        }
    }

    fn take(&mut self, effects: Result<Vec<Effect>, NodeError>) {
        for e in effects.expect("no storage error in memory") {
            match e {
                Effect::Send(m) => self.wire.push_back(m),
                Effect::Reply { call, response } => {
                    self.replies.entry(call).or_default().push(response)
                }
                Effect::Migrate(_)
                | Effect::AbortMigration { .. }
                | Effect::ResolveMove(_)
                | Effect::SetMigrationBandwidth { .. } => self.orders.push((self.from, e)),
                Effect::Applied(_) | Effect::Check(_) => {}
            }
        }
    }

    /// Delivers every message in flight (and those they cause).
    fn deliver(&mut self) {
        let at = self.at();
        let mut budget = 10_000;
        while let Some(m) = self.wire.pop_front() {
            budget -= 1;
            assert!(budget > 0, "messages never stop");
            if (self.drop)(&m) {
                continue;
            }
            self.from = m.to;
            if let Some(n) = self.nodes.get_mut(&m.to) {
                let effects = n.step(m, at);
                self.take(effects);
            }
        }
    }

    /// Advances virtual time by `d` in ticks, delivering as it goes.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += TICK;
            let at = self.at();
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.from = id;
                let effects = self.nodes.get_mut(&id).unwrap().tick(at);
                self.take(effects);
                self.deliver();
            }
        }
    }

    /// Hands node `id` one input (`f` calls the node) and delivers what follows.
    fn input(
        &mut self,
        id: NodeId,
        f: impl FnOnce(&mut Node, Now) -> Result<Vec<Effect>, NodeError>,
    ) {
        let at = self.at();
        self.from = id;
        let effects = f(self.nodes.get_mut(&id).unwrap(), at);
        self.take(effects);
        self.deliver();
    }

    fn control(&mut self, at_node: NodeId, req: Request) -> CallId {
        self.next_call += 1;
        let call = self.next_call;
        let at = self.at();
        self.from = at_node;
        let effects = self.nodes.get_mut(&at_node).unwrap().control(call, req, at);
        self.take(effects);
        self.deliver();
        call
    }

    fn propose(&mut self, at_node: NodeId, command: Command, timeout_ms: u64) -> CallId {
        self.control(
            at_node,
            Request::Propose {
                command,
                timeout_ms: Some(timeout_ms),
            },
        )
    }

    fn leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .find(|n| n.replica().is_leader())
            .map(Node::id)
    }

    fn state(&self, id: NodeId) -> &ClusterState {
        self.nodes[&id].state()
    }
}

fn note(text: &str) -> Command {
    Command::Note { text: text.into() }
}

fn notes(state: &ClusterState, text: &str) -> usize {
    state
        .audit
        .iter()
        .filter(|a| a.what == format!("note: {text}"))
        .count()
}

fn lms1(site: &str) -> Command {
    Command::PutVm(Vm {
        id: "lms1".into(),
        mac: "52:54:00:70:00:10".into(),
        ip: "10.70.0.10".into(),
        priority: 1,
        site: site.into(),
        host: String::new(),
        storage: StorageMode::Shared,
        check: VmCheck::default(),
        spec: Default::default(),
    })
}

fn put_site(id: &str) -> Command {
    Command::PutSite(Site {
        id: id.into(),
        location: None,
        witness: false,
    })
}

/// A three-node cluster with a leader, campuses a, b and c, and lms1 at a.
fn with_lms1_at_a() -> Cluster {
    let mut c = Cluster::new(3);
    c.run(Duration::from_secs(3));
    let leader = c.leader().expect("a leader within 3 s");
    for cmd in [put_site("a"), put_site("b"), put_site("c"), lms1("a")] {
        c.propose(leader, cmd, 3000);
    }
    c.run(Duration::from_millis(200));
    assert!(c
        .nodes
        .keys()
        .all(|&id| c.state(id).vms.contains_key("lms1")));
    c
}

#[test]
fn a_lone_voter_answers_a_proposal_with_its_index_at_once() {
    let mut c = Cluster::new(1);
    c.run(Duration::from_secs(2));
    let call = c.propose(1, note("hello"), 3000);
    let reply = &c.replies[&call];
    assert_eq!(reply.len(), 1, "one answer per call");
    assert!(reply[0].ok, "{:?}", reply[0].error);
    let r: ProposeReply = serde_json::from_value(reply[0].result.clone().unwrap()).unwrap();
    assert_eq!(r.index, c.state(1).applied);
    assert_eq!(notes(c.state(1), "hello"), 1);
}

#[test]
fn a_proposal_without_a_leader_is_refused_and_one_not_committed_expires_with_the_reason() {
    let mut c = Cluster::new(3);
    // Node 1 hears nobody and nobody hears it: it knows no leader.
    c.drop = Box::new(|m| m.from == 1 || m.to == 1);
    c.run(Duration::from_secs(2));
    let call = c.propose(1, note("refused"), 1500);
    let e = c.replies[&call][0].error.clone().unwrap();
    assert!(e.contains("no leader is reachable"), "{e}");

    // A follower whose forwarded proposals never reach the leader.
    c.drop = Box::new(|m| m.get_msg_type() == raft::prelude::MessageType::MsgPropose);
    c.run(Duration::from_secs(3));
    let leader = c.leader().expect("a leader once healed");
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let call = c.propose(follower, note("lost"), 1500);
    c.run(Duration::from_millis(1400));
    assert!(
        !c.replies.contains_key(&call),
        "answered before its deadline"
    );
    c.run(Duration::from_millis(200));
    let reply = &c.replies[&call];
    assert_eq!(reply.len(), 1);
    let e = reply[0].error.as_deref().unwrap();
    assert!(e.contains("not committed within 1500 ms"), "{e}");
    assert!(
        e.contains(&format!("leader {leader} did not commit it in time")),
        "{e}"
    );
    assert_eq!(notes(c.state(leader), "lost"), 0);
}

#[test]
fn a_forwarded_proposal_that_is_lost_is_retried_and_applied_once() {
    let mut c = Cluster::new(3);
    c.run(Duration::from_secs(3));
    let leader = c.leader().unwrap();
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    // The follower's first forwarded proposal is lost on the way.
    let mut lost = 0;
    c.drop = Box::new(move |m| {
        if m.from == follower
            && m.get_msg_type() == raft::prelude::MessageType::MsgPropose
            && lost == 0
        {
            lost += 1;
            return true;
        }
        false
    });
    let call = c.propose(follower, note("retried"), 5000);
    c.run(Duration::from_millis(500));
    assert!(!c.replies.contains_key(&call), "committed although lost");
    assert_eq!(notes(c.state(leader), "retried"), 0);
    // Retried after a second without a commit.
    c.run(Duration::from_millis(1000));
    let reply = &c.replies[&call];
    assert_eq!(reply.len(), 1, "one answer");
    assert!(reply[0].ok, "{:?}", reply[0].error);
    // A second retry would be a duplicate: the request id applies it once.
    c.run(Duration::from_secs(2));
    for id in 1..=3 {
        assert_eq!(notes(c.state(id), "retried"), 1, "node {id}");
    }
}

#[test]
fn wait_applied_answers_once_the_index_is_applied_or_at_its_deadline() {
    let mut c = Cluster::new(1);
    c.run(Duration::from_secs(2));
    let next = c.state(1).applied + 1;
    let waiting = c.control(
        1,
        Request::WaitApplied {
            index: next,
            timeout_ms: Some(1000),
        },
    );
    let never = c.control(
        1,
        Request::WaitApplied {
            index: next + 100,
            timeout_ms: Some(1000),
        },
    );
    assert!(c.replies.is_empty(), "nothing was applied yet");
    c.propose(1, note("x"), 3000);
    assert!(c.replies[&waiting][0].ok);
    assert!(!c.replies.contains_key(&never));
    c.run(Duration::from_millis(1100));
    let e = c.replies[&never][0].error.clone().unwrap();
    assert!(e.contains("not applied here yet"), "{e}");
}

#[test]
fn membership_changes_that_would_break_the_cluster_are_refused() {
    let mut c = Cluster::new(1);
    c.run(Duration::from_secs(2));
    let last = c.control(
        1,
        Request::Membership {
            id: 1,
            add: false,
            timeout_ms: None,
        },
    );
    let e = c.replies[&last][0].error.clone().unwrap();
    assert!(e.contains("would leave no voters"), "{e}");
    let stranger = c.control(
        1,
        Request::Membership {
            id: 9,
            add: true,
            timeout_ms: None,
        },
    );
    let e = c.replies[&stranger][0].error.clone().unwrap();
    assert!(e.contains("not a [[peer]]"), "{e}");
    assert_eq!(c.nodes[&1].replica().voters(), vec![1]);
}

#[test]
fn a_vms_mac_seen_at_another_campus_commits_its_new_location() {
    let mut c = with_lms1_at_a();
    let at_b = 2;
    let at = c.at();
    // Unknown MACs and moves to where the VM already is change nothing.
    let before = c.state(1).applied;
    let fx = c.nodes.get_mut(&1).unwrap().mac_moved(
        "52:54:00:99:99:99",
        &MacLocation::Peer("b".into()),
        &MacLocation::Local,
        at,
    );
    c.take(fx);
    let fx = c.nodes.get_mut(&1).unwrap().mac_moved(
        "52:54:00:70:00:10",
        &MacLocation::Peer("b".into()),
        &MacLocation::Local,
        at,
    );
    c.take(fx);
    c.deliver();
    c.run(Duration::from_millis(200));
    assert_eq!(c.state(1).vms["lms1"].site, "a");
    assert_eq!(
        c.state(1).applied,
        before,
        "an unknown MAC or no move committed something"
    );
    // B's VPN sees the VM's MAC arrive locally (any case).
    let fx = c.nodes.get_mut(&at_b).unwrap().mac_moved(
        "52:54:00:70:00:10".to_uppercase().as_str(),
        &MacLocation::Peer("a".into()),
        &MacLocation::Local,
        at,
    );
    c.take(fx);
    c.deliver();
    c.run(Duration::from_millis(200));
    for id in 1..=3 {
        assert_eq!(c.state(id).vms["lms1"].site, "b", "node {id}");
    }
    let moved: Vec<&EventRecord> = c.nodes[&at_b]
        .events_since(0)
        .filter(|e| e.kind == "vm-moved")
        .collect();
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].vm.as_deref(), Some("lms1"));
    // A peer that names no site is refused in words.
    let call = c.control(
        1,
        Request::VpnMacMoved {
            mac: "52:54:00:70:00:10".into(),
            from: MacLocation::Local,
            to: MacLocation::Peer("atlantis".into()),
        },
    );
    let said: String = serde_json::from_value(c.replies[&call][0].result.clone().unwrap()).unwrap();
    assert!(said.contains("which is no site"), "{said}");
}

#[test]
fn p2_takes_over_when_the_detector_loses_p1_and_gives_back_when_it_returns() {
    let mut c = with_lms1_at_a();
    let w = c.nodes[&1].watchers()["lms1"];
    let p2 = w.p2.unwrap();
    let all_up = |except: Option<NodeId>| -> BTreeMap<NodeId, PeerHealth> {
        (1..=3)
            .filter(|&p| p != p2)
            .map(|p| {
                (
                    p,
                    if Some(p) == except {
                        PeerHealth::Down
                    } else {
                        PeerHealth::Up
                    },
                )
            })
            .collect()
    };
    let at = c.at();
    let fx = c
        .nodes
        .get_mut(&p2)
        .unwrap()
        .detected(vec![], all_up(None), at);
    c.take(fx);
    // Health is taken with the events; with every peer up P2 stays idle.
    let fx = c.nodes.get_mut(&p2).unwrap().detected(
        vec![DetectorEvent::SiteUp { peer: w.p1 }],
        all_up(None),
        at,
    );
    c.take(fx);
    assert!(!c.nodes[&p2].is_watching("lms1"));
    assert!(c.nodes[&p2].live_set().contains(&w.p1));
    // (At its start P2 had heard nobody yet and watched for a moment.)
    let seen = c.nodes[&p2].events_since(0).last().map_or(0, |e| e.seq);
    let fx = c.nodes.get_mut(&p2).unwrap().detected(
        vec![DetectorEvent::SiteDown { peer: w.p1 }],
        all_up(Some(w.p1)),
        at,
    );
    c.take(fx);
    assert!(c.nodes[&p2].is_watching("lms1"), "P2 did not take over");
    assert!(!c.nodes[&p2].live_set().contains(&w.p1));
    let took: Vec<&EventRecord> = c.nodes[&p2]
        .events_since(seen)
        .filter(|e| e.kind == "took-over")
        .collect();
    assert_eq!(took.len(), 1);
    assert_eq!(
        (took[0].peer, took[0].vm.as_deref()),
        (Some(w.p1), Some("lms1"))
    );
    let fx = c.nodes.get_mut(&p2).unwrap().detected(
        vec![DetectorEvent::SiteUp { peer: w.p1 }],
        all_up(None),
        at,
    );
    c.take(fx);
    assert!(
        !c.nodes[&p2].is_watching("lms1"),
        "P2 kept watching beside P1"
    );
}

#[test]
fn health_reports_are_coalesced_per_subject_and_committed_until_they_are() {
    let mut c = with_lms1_at_a();
    let observer = 3;
    let peer = 1;
    // The observer is cut off: its reports cannot commit.
    c.drop = Box::new(move |m| m.from == observer || m.to == observer);
    let at = c.at();
    let down: BTreeMap<NodeId, PeerHealth> = [(1, PeerHealth::Down), (2, PeerHealth::Up)].into();
    let up: BTreeMap<NodeId, PeerHealth> = [(1, PeerHealth::Up), (2, PeerHealth::Up)].into();
    let fx = c.nodes.get_mut(&observer).unwrap().detected(
        vec![DetectorEvent::SiteDown { peer }],
        down,
        at,
    );
    c.take(fx);
    let fx =
        c.nodes
            .get_mut(&observer)
            .unwrap()
            .detected(vec![DetectorEvent::SiteUp { peer }], up, at);
    c.take(fx);
    assert_eq!(
        c.nodes[&observer].pending.len(),
        1,
        "one report per subject"
    );
    c.run(Duration::from_secs(1));
    assert_eq!(c.state(1).site_health_seen_by(observer, "a"), None);
    // Healed: proposed again until committed; the newest view wins.
    c.drop = Box::new(|_| false);
    c.run(Duration::from_secs(5));
    for id in 1..=3 {
        assert_eq!(
            c.state(id).site_health_seen_by(observer, "a"),
            Some(Health::Up),
            "node {id}"
        );
    }
    assert!(
        c.nodes[&observer].pending.is_empty(),
        "the committed report is still pending"
    );
    assert!(
        !c.state(1).audit.iter().any(|a| a
            .what
            .contains(&format!("appliance {observer} sees site a Down"))),
        "the superseded view was committed"
    );
}

mod moves {
    //! The executor: claims, orders to the shell, progress, cancel, failure
    //! and hand-over, through real Raft.

    use super::*;
    use crate::core::moves::{Intent, MovePhase, MoveProgress, MoveResult};

    fn inventory(vms: &[(&str, u64)]) -> Command {
        let hosts = [("a1", "a", 4096), ("b1", "b", 4096), ("c1", "c", 4096)];
        let vms: Vec<(&str, &str, u64)> = vms.iter().map(|(id, mem)| (*id, "a1", *mem)).collect();
        Command::ApplyInventory(crate::core::moves::tests::inventory(&hosts, &vms))
    }

    fn setup(vms: &[(&str, u64)]) -> Cluster {
        let mut c = Cluster::new(3);
        c.run(Duration::from_secs(3));
        let leader = c.leader().expect("a leader");
        c.propose(leader, inventory(vms), 3000);
        c.run(Duration::from_millis(200));
        assert_eq!(c.state(3).vms.len(), vms.len());
        c
    }

    fn plan(c: &mut Cluster, intent: Intent) {
        let call = c.propose(
            2,
            Command::PlanMoves {
                intent,
                reason: "test".into(),
            },
            3000,
        );
        c.run(Duration::from_millis(300));
        let r = &c.replies[&call][0];
        assert!(r.ok, "{:?}", r.error);
    }

    /// The migrations ordered so far: (node, move id).
    fn migrations(c: &Cluster) -> Vec<(NodeId, String)> {
        c.orders
            .iter()
            .filter_map(|(n, e)| match e {
                Effect::Migrate(o) => Some((*n, o.id.clone())),
                _ => None,
            })
            .collect()
    }

    fn done(c: &mut Cluster, node: NodeId, id: &str, result: MoveResult) {
        c.input(node, |n, at| n.migration_done(id, result, at));
        c.run(Duration::from_millis(300));
    }

    fn ok() -> MoveResult {
        MoveResult::Done {
            downtime_ms: Some(150),
            data_total: Some(1 << 27),
            wall_ms: 4000,
        }
    }

    #[test]
    fn the_source_sites_appliance_drives_a_move_and_commits_its_progress_and_the_new_location() {
        let mut c = setup(&[("lms1", 1024)]);
        plan(
            &mut c,
            Intent::Migrate {
                vm: "lms1".into(),
                to_site: "b".into(),
                to_host: None,
            },
        );
        // Only node 1 (site a) drives it, once.
        let orders: Vec<&MigrationOrder> = c
            .orders
            .iter()
            .map(|(n, e)| match e {
                Effect::Migrate(o) => {
                    assert_eq!(*n, 1);
                    o
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(orders.len(), 1);
        let o = orders[0].clone();
        assert_eq!(
            (o.source_uri.as_str(), o.dest_uri.as_str()),
            ("qemu:///a1", "qemu:///b1")
        );
        assert_eq!(
            o.stream_uri.as_deref(),
            Some("tcp://10.70.0.3"),
            "into the VPN"
        );
        assert_eq!(o.bandwidth_mib_s, Some(5), "100 Mbit/s × 0.5");
        let m = &c.state(3).moves[&o.id];
        assert_eq!((m.phase, m.executor), (MovePhase::Running, Some(1)));

        let p = MoveProgress {
            data_total: 1000,
            data_processed: 250,
            data_remaining: 750,
            ..Default::default()
        };
        c.input(1, |n, at| n.migration_progress(&o.id, p, at));
        c.run(Duration::from_millis(300));
        assert_eq!(
            c.state(2).moves[&o.id].progress.as_ref().unwrap().percent(),
            25
        );

        done(&mut c, 1, &o.id, ok());
        for id in 1..=3 {
            let s = c.state(id);
            assert_eq!(s.moves[&o.id].phase, MovePhase::Done);
            assert_eq!(
                (s.vms["lms1"].site.as_str(), s.vms["lms1"].host.as_str()),
                ("b", "b1")
            );
        }
        let audit: Vec<&str> = c.state(3).audit.iter().map(|a| a.what.as_str()).collect();
        assert!(
            audit
                .iter()
                .any(|a| a.contains("plan p1 (test): m2 moves lms1 a/a1 → b/b1")),
            "{audit:?}"
        );
        assert!(audit.iter().any(
            |a| a.contains("move m2 started by appliance 1") && a.contains("capped at 5 MiB/s")
        ));
        assert!(audit
            .iter()
            .any(|a| a.contains("move m2 done: lms1 runs at site b on b1")));
        assert_eq!(migrations(&c).len(), 1, "driven once");
    }

    #[test]
    fn at_most_max_parallel_run_at_once_and_the_rest_follow() {
        let mut c = setup(&[("v1", 512), ("v2", 512), ("v3", 512)]);
        plan(&mut c, Intent::Evacuate { site: "a".into() });
        let first = migrations(&c);
        assert_eq!(first.len(), 2, "max_parallel is 2: {first:?}");
        done(&mut c, 1, &first[0].1, ok());
        let after = migrations(&c);
        assert_eq!(after.len(), 3, "the third starts when one ends");
        let hosts: Vec<String> = c
            .state(1)
            .moves
            .values()
            .map(|m| m.to_host.clone())
            .collect();
        assert!(
            hosts.contains(&"b1".to_string()) && hosts.contains(&"c1".to_string()),
            "spread: {hosts:?}"
        );
    }

    #[test]
    fn a_cancel_reaches_the_executor_and_a_failure_is_replanned() {
        let mut c = setup(&[("lms1", 1024)]);
        plan(&mut c, Intent::Evacuate { site: "a".into() });
        let (_, id) = migrations(&c)[0].clone();
        // Fails: re-planned to the other campus, driven again.
        let fail = MoveResult::Failed {
            reason: "b1's libvirt went away; lms1 still runs at a1".into(),
        };
        done(&mut c, 1, &id, fail);
        let s = c.state(2);
        assert_eq!(s.vms["lms1"].site, "a");
        let again = migrations(&c);
        assert_eq!(again.len(), 2, "{again:?}");
        let second = again[1].1.clone();
        assert_eq!(s.moves[&second].to_host, "c1");
        assert_eq!(s.moves[&second].attempt, 2);
        // Cancelled while running: node 1 is told to abort, once.
        c.propose(3, Command::CancelMove { id: second.clone() }, 3000);
        c.run(Duration::from_millis(300));
        let aborts: Vec<&Effect> = c
            .orders
            .iter()
            .filter(|(n, e)| *n == 1 && matches!(e, Effect::AbortMigration { .. }))
            .map(|(_, e)| e)
            .collect();
        assert_eq!(aborts.len(), 1);
        done(
            &mut c,
            1,
            &second,
            MoveResult::Cancelled {
                reason: "aborted".into(),
            },
        );
        let s = c.state(3);
        assert_eq!(s.moves[&second].phase, MovePhase::Cancelled);
        assert_eq!(s.vms["lms1"].site, "a");
    }

    #[test]
    fn a_move_whose_executor_dies_is_handed_over_and_resolved() {
        let mut c = setup(&[("lms1", 1024)]);
        plan(
            &mut c,
            Intent::Migrate {
                vm: "lms1".into(),
                to_site: "b".into(),
                to_host: None,
            },
        );
        let (_, id) = migrations(&c)[0].clone();
        // Node 1 dies; node 2 (the destination's) and node 3 see it down.
        c.drop = Box::new(|m| m.from == 1 || m.to == 1);
        for (me, other) in [(2, 3), (3, 2)] {
            let seen: BTreeMap<NodeId, PeerHealth> =
                [(1, PeerHealth::Down), (other, PeerHealth::Up)].into();
            c.input(me, |n, at| n.detected(vec![], seen, at));
        }
        c.run(Duration::from_secs(4));
        let m = &c.state(2).moves[&id];
        assert_eq!(
            m.executor,
            Some(2),
            "node 2, at the destination, takes over"
        );
        let resolves: Vec<NodeId> = c
            .orders
            .iter()
            .filter(|(_, e)| matches!(e, Effect::ResolveMove(_)))
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(resolves, [2], "one resolver, node 2");
        done(&mut c, 2, &id, ok());
        assert_eq!(c.state(3).vms["lms1"].site, "b");
        assert!(c
            .state(3)
            .audit
            .iter()
            .any(|a| a.what.contains("handed over from appliance 1 to 2")));
    }
}
