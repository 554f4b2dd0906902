//! The heartbeat engine: BFD-style heartbeats on every path and the failure
//! detector, on a thread and runtime of their own. Raft's disk writes (fsync)
//! and everything else on the main loop can stall for longer than a detection
//! time; the heartbeats must not stall with them, or peers would see a live
//! appliance as down.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::core::detect::wire::{HeartbeatPacket, HeartbeatRepr, PACKET_LEN};
use crate::core::detect::{Damping, Detector, DetectorConfig, DetectorEvent, PathId, PeerHealth};
use crate::core::state::NodeId;
use anyhow::{Context, Result};
use ring::hmac;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// How each peer looks now, shared with the main loop.
pub type HealthView = Arc<Mutex<BTreeMap<NodeId, PeerHealth>>>;

struct Heard {
    peer: NodeId,
    path: PathId,
    seq: u64,
}

/// Starts the engine; detector events arrive on the returned channel.
pub fn start(
    cfg: &Config,
    key: hmac::Key,
    seq_start: u64,
) -> Result<(mpsc::UnboundedReceiver<DetectorEvent>, HealthView)> {
    let cfg = cfg.clone();
    let view: HealthView = Arc::new(Mutex::new(BTreeMap::new()));
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    let v = view.clone();
    std::thread::Builder::new()
        .name("heartbeats".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            rt.block_on(run(cfg, key, seq_start, events_tx, v, ready_tx));
        })?;
    ready_rx
        .recv()
        .context("the heartbeat thread died while starting")??;
    Ok((events_rx, view))
}

/// A path's wire id is its index among all path names.
pub fn path_id(names: &[String], name: &str) -> PathId {
    PathId(names.iter().position(|n| n == name).unwrap_or(0) as u8)
}

async fn run(
    cfg: Config,
    key: hmac::Key,
    mut seq: u64,
    events: mpsc::UnboundedSender<DetectorEvent>,
    view: HealthView,
    ready: std::sync::mpsc::Sender<Result<()>>,
) {
    let setup = async {
        let me = cfg.appliance.id;
        let names = cfg.path_names();
        let port = cfg.cluster.heartbeat_port;
        let mut peer_addr: BTreeMap<(NodeId, PathId), SocketAddr> = BTreeMap::new();
        for p in &cfg.peers {
            for (name, ip) in &p.paths {
                if cfg.cluster.paths.contains_key(name) {
                    peer_addr.insert((p.id, path_id(&names, name)), SocketAddr::new(*ip, port));
                }
            }
        }
        let (heard_tx, heard_rx) = mpsc::channel::<Heard>(4096);
        let mut sockets: BTreeMap<PathId, Arc<UdpSocket>> = BTreeMap::new();
        for (name, ip) in &cfg.cluster.paths {
            let sock = UdpSocket::bind(SocketAddr::new(*ip, port))
                .await
                .with_context(|| format!("binding heartbeat path {name} on {ip}:{port}"))?;
            let sock = Arc::new(sock);
            sockets.insert(path_id(&names, name), sock.clone());
            tokio::spawn(receive(
                sock,
                me,
                key.clone(),
                peer_addr.clone(),
                heard_tx.clone(),
            ));
        }
        let dcfg = DetectorConfig {
            interval: Duration::from_millis(cfg.cluster.detect_interval_ms),
            multiplier: cfg.cluster.detect_multiplier,
            damping: Damping {
                initial_hold: Duration::from_millis(cfg.cluster.damping_hold_ms),
                max_hold: Duration::from_millis(cfg.cluster.damping_max_hold_ms),
                ..Damping::default()
            },
        };
        dcfg.validate().context("detector settings")?;
        anyhow::Ok((dcfg, peer_addr, sockets, heard_rx, names))
    };
    let (dcfg, peer_addr, sockets, mut heard_rx, names) = match setup.await {
        Ok(s) => {
            let _ = ready.send(Ok(()));
            s
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let origin = Instant::now();
    let me = cfg.appliance.id;
    let interval = dcfg.interval;
    let mut detector = Detector::new(dcfg, me);
    for p in &cfg.peers {
        let paths: Vec<PathId> = p
            .paths
            .keys()
            .filter(|n| cfg.cluster.paths.contains_key(*n))
            .map(|n| path_id(&names, n))
            .collect();
        detector.add_peer(p.id, &paths, origin.elapsed());
    }
    let publish = |detector: &Detector, evs: Vec<DetectorEvent>| {
        if evs.is_empty() {
            return true;
        }
        if let Ok(mut v) = view.lock() {
            for p in &cfg.peers {
                v.insert(p.id, detector.health(p.id));
            }
        }
        evs.into_iter().all(|e| events.send(e).is_ok())
    };
    let mut last_seq: HashMap<(NodeId, PathId), u64> = HashMap::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; PACKET_LEN];
    loop {
        let deadline = detector
            .next_deadline()
            .map(|d| tokio::time::Instant::from_std(origin + d))
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(1));
        let evs = tokio::select! {
            _ = tick.tick() => {
                let now = origin.elapsed();
                if detector.heartbeats_due(now) {
                    seq += 1;
                    for (peer, path) in detector.paths().collect::<Vec<_>>() {
                        let (Some(sock), Some(to)) = (sockets.get(&path), peer_addr.get(&(peer, path))) else { continue };
                        let repr: HeartbeatRepr = detector.heartbeat(peer, path, seq);
                        let mut pkt = HeartbeatPacket::new_unchecked(&mut buf[..]);
                        repr.emit(&mut pkt);
                        let tag = hmac::sign(&key, pkt.authenticated_bytes());
                        pkt.authenticator_mut().copy_from_slice(tag.as_ref());
                        let _ = sock.try_send_to(&buf, *to);
                    }
                }
                detector.poll(now)
            }
            _ = tokio::time::sleep_until(deadline) => detector.poll(origin.elapsed()),
            Some(h) = heard_rx.recv() => {
                let last = last_seq.entry((h.peer, h.path)).or_insert(0);
                // A replayed or reordered heartbeat says nothing new.
                if h.seq > *last {
                    *last = h.seq;
                    detector.on_heartbeat(h.peer, h.path, origin.elapsed());
                }
                detector.poll(origin.elapsed())
            }
        };
        if !publish(&detector, evs) {
            return;
        }
    }
}

async fn receive(
    sock: Arc<UdpSocket>,
    me: NodeId,
    key: hmac::Key,
    peers: BTreeMap<(NodeId, PathId), SocketAddr>,
    heard: mpsc::Sender<Heard>,
) {
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(pkt) = HeartbeatPacket::new_checked(&buf[..n]) else {
            continue;
        };
        if hmac::verify(&key, pkt.authenticated_bytes(), pkt.authenticator()).is_err() {
            continue;
        }
        let Ok(repr) = HeartbeatRepr::parse(&pkt) else {
            continue;
        };
        if repr.receiver != me {
            continue;
        }
        // The sender must speak from its configured address on that path.
        let expected: Option<IpAddr> = peers.get(&(repr.sender, repr.path)).map(|a| a.ip());
        if expected != Some(from.ip()) {
            continue;
        }
        let _ = heard
            .send(Heard {
                peer: repr.sender,
                path: repr.path,
                seq: repr.seq,
            })
            .await;
    }
}
