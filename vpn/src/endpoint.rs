//! The L2 VPN endpoint: the shell that joins the campus TAP device, the
//! learning bridge and the tunnel socket.
//!
//! Threads:
//!
//! * one per TAP queue reads frames from the campus segment, asks the
//!   [`Bridge`] where they go, encapsulates them per peer and sends them in
//!   batches (UDP GSO for WireGuard);
//! * one reads the tunnel socket in batches (`recvmmsg`, UDP GRO), finds the
//!   peer, decapsulates, asks the bridge, and writes frames to the TAP (or,
//!   in hub mode, on to other peers);
//! * one runs the timers: WireGuard handshakes, keepalives and rekeying,
//!   bridge events (MAC moves), and the end of key rotations.
//!
//! # Key rotation
//!
//! [`Endpoint::reload`] swaps keys without dropping the tunnel. A peer whose
//! keys changed gets a new WireGuard session; the old one stays as
//! "previous" and keeps carrying frames both ways until the new one has
//! completed a handshake (the other side may be reconfigured later), then
//! lingers [`ROTATION_GRACE`] for packets in flight. The decisions live in
//! the sans-IO [`PeerSessions`](crate::peer_sessions::PeerSessions); the
//! threads here only do its I/O. The bridge port, and with
//! it the MAC table, stays.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn};
use hinan_dataplane::bridge::{
    Bridge, BridgeConfig, BridgeEvent, FloodLimit, PortCounters, PortId, TunnelConfig, TunnelId,
};
use hinan_dataplane::mss::MssClamp;
use hinan_dataplane::offload::{self, Coalescer};
use hinan_dataplane::tap::{Tap, TapOptions, MAX_READ_LEN};
use serde::{Deserialize, Serialize};

use crate::config::{encode_key, Peer, Settings, TransportKind};
use crate::etherip::{self, Compat};
use crate::ip::TunnelAddrs;
use crate::peer_sessions::{
    LocalKeys, PeerSessions, Received, SessionIndex, SessionKeys, TimerAction,
};
use crate::session::{Action, PublicKey, SessionError};
use crate::socket::{self, RecvBatch, SocketKind, TunnelSocket, MAX_GSO_SEGMENTS, RECV_BUF_LEN};

pub use crate::peer_sessions::ROTATION_GRACE;
/// Timer period; boringtun's own device ticks every 250 ms.
const TICK: Duration = Duration::from_millis(100);
/// TCP flows merged at once on the way to the TAP.
const COALESCE_FLOWS: usize = 8;
/// Handshakes per second before cookies are required, for all peers
/// together (boringtun's device uses 100).
const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// How long blocking reads wait before checking for shutdown.
const READ_TIMEOUT: Duration = Duration::from_millis(100);
/// Output buffer per encapsulated frame.
const DATAGRAM_MAX: usize = 65_536;

/// Why the endpoint could not start or reload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    #[error("vpn: {0}")]
    Tap(#[from] hinan_dataplane::tap::TapError),
    #[error("vpn: cannot open the {kind} tunnel socket on {local}: {source}")]
    Socket {
        kind: &'static str,
        local: SocketAddr,
        source: io::Error,
    },
    #[error("vpn: {0}")]
    Bridge(#[from] hinan_dataplane::bridge::ConfigError),
    #[error("vpn: reload refused: {0} cannot change while running; restart the appliance")]
    NeedsRestart(&'static str),
    #[error("vpn: cannot start a thread: {0}")]
    Thread(io::Error),
}

/// Something the orchestrator wants to know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum VpnEvent {
    /// A MAC (a VM) now sends from behind `to`.
    MacMoved {
        vlan: u16,
        /// As `52:54:00:70:00:10`.
        mac: String,
        from: MacLocation,
        to: MacLocation,
    },
}

/// Which side of a bridge port a MAC sends from. Written (in JSON, TOML, on
/// the control socket) as `"local"` or the peer's name, so a peer named
/// "local" reads back as [`MacLocation::Local`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum MacLocation {
    /// This campus's segment (the TAP device).
    Local,
    /// Behind the tunnel to this peer; peers are named after their sites. A
    /// port whose peer was just removed is named `tunnel N`.
    Peer(String),
}

impl std::fmt::Display for MacLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MacLocation::Local => f.write_str("local"),
            MacLocation::Peer(name) => f.write_str(name),
        }
    }
}

impl From<String> for MacLocation {
    fn from(name: String) -> MacLocation {
        if name == "local" {
            MacLocation::Local
        } else {
            MacLocation::Peer(name)
        }
    }
}

impl From<MacLocation> for String {
    fn from(location: MacLocation) -> String {
        match location {
            MacLocation::Local => "local".to_owned(),
            MacLocation::Peer(name) => name,
        }
    }
}

/// Per-peer counters and state, for `hinan vpn status`.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    pub name: String,
    pub endpoint: Option<SocketAddr>,
    pub public_key: Option<String>,
    /// Seconds since the current WireGuard session's handshake.
    pub last_handshake_secs: Option<f64>,
    /// A key rotation is under way (the previous session still carries
    /// frames).
    pub rotating: bool,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Packets from this peer that failed to authenticate or parse.
    pub rx_errors: u64,
    pub bridge: PortStatus,
}

/// A bridge port's counters.
#[derive(Debug, Clone, Serialize)]
pub struct PortStatus {
    pub rx_frames: u64,
    pub tx_frames: u64,
    pub flooded: u64,
    pub dropped_rate_limit: u64,
    pub dropped_split_horizon: u64,
    pub dropped_malformed: u64,
    pub mss_clamped: u64,
}

impl From<PortCounters> for PortStatus {
    fn from(c: PortCounters) -> Self {
        PortStatus {
            rx_frames: c.rx_frames,
            tx_frames: c.tx_frames,
            flooded: c.flooded,
            dropped_rate_limit: c.dropped_rate_limit,
            dropped_split_horizon: c.dropped_split_horizon,
            dropped_malformed: c.dropped_malformed,
            mss_clamped: c.mss_clamped,
        }
    }
}

/// The endpoint's state, for `hinan vpn status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub tap: String,
    pub transport: String,
    pub local: SocketAddr,
    pub public_key: Option<String>,
    pub local_port: PortStatus,
    /// Packets on the tunnel socket from no configured peer.
    pub unknown_source: u64,
    pub macs_learned: usize,
    pub peers: Vec<PeerStatus>,
    /// The latest events (at most [`RECENT_EVENTS`]), oldest first, with the
    /// seconds since the endpoint started.
    pub recent_events: Vec<(f64, VpnEvent)>,
}

/// Events kept for [`Status::recent_events`].
pub const RECENT_EVENTS: usize = 32;

#[derive(Debug, Default)]
struct Counters {
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    rx_errors: AtomicU64,
}

impl Counters {
    fn add(pair: (&AtomicU64, &AtomicU64), bytes: usize) {
        pair.0.fetch_add(1, Ordering::Relaxed);
        pair.1.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

struct PeerState {
    id: TunnelId,
    config: RwLock<Peer>,
    endpoint: RwLock<Option<SocketAddr>>,
    wg: Option<Mutex<PeerSessions>>,
    counters: Counters,
}

impl PeerState {
    fn endpoint(&self) -> Option<SocketAddr> {
        *read(&self.endpoint)
    }

    /// Moves the endpoint to where an accepted packet came from (WireGuard
    /// roaming; for raw EtherIP within `allowed_sources`).
    fn roam(&self, from: SocketAddr) {
        if self.endpoint() != Some(from) && read(&self.config).accepts_source(from.ip()) {
            let mut ep = write(&self.endpoint);
            if *ep != Some(from) {
                tracing::info!(peer = %read(&self.config).name, old = ?*ep, new = %from, "peer endpoint moved");
                *ep = Some(from);
            }
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The peers, by tunnel id.
#[derive(Default)]
struct PeerTable {
    by_id: BTreeMap<TunnelId, Arc<PeerState>>,
}

impl PeerTable {
    fn get(&self, id: TunnelId) -> Option<&Arc<PeerState>> {
        self.by_id.get(&id)
    }

    fn by_name(&self, name: &str) -> Option<&Arc<PeerState>> {
        self.by_id.values().find(|p| read(&p.config).name == name)
    }

    fn by_source(&self, from: IpAddr) -> Option<&Arc<PeerState>> {
        // An exact endpoint first, then any peer allowing the source.
        self.by_id
            .values()
            .find(|p| p.endpoint().map(|e| e.ip()) == Some(from))
            .or_else(|| {
                self.by_id.values().find(|p| {
                    let config = read(&p.config);
                    !config.allowed_sources.is_empty() && config.accepts_source(from)
                })
            })
    }
}

struct Shared {
    settings: RwLock<Settings>,
    taps: Vec<Tap>,
    socket: TunnelSocket,
    bridge: Mutex<Bridge>,
    peers: RwLock<Arc<PeerTable>>,
    keys: RwLock<LocalKeys>,
    /// Checks mac1 (and cookies under load) of handshakes before routing.
    limiter: RwLock<Arc<RateLimiter>>,
    start: Instant,
    stop: AtomicBool,
    unknown_source: AtomicU64,
    events: Box<dyn Fn(VpnEvent) + Send + Sync>,
    recent: Mutex<std::collections::VecDeque<(f64, VpnEvent)>>,
    compat: Compat,
    offload: bool,
}

/// A running endpoint. Dropping it stops the threads and removes the TAP
/// device (if hinan created it).
pub struct Endpoint {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("tap", &read(&self.shared.settings).tap)
            .finish_non_exhaustive()
    }
}

fn tunnel_addrs(settings: &Settings, peer: &Peer) -> Option<TunnelAddrs> {
    match (settings.tunnel_local?, peer.tunnel_address?) {
        (IpAddr::V4(local), IpAddr::V4(peer)) => Some(TunnelAddrs::V4 { local, peer }),
        (IpAddr::V6(local), IpAddr::V6(peer)) => Some(TunnelAddrs::V6 { local, peer }),
        _ => None,
    }
}

fn session_keys(settings: &Settings, peer: &Peer) -> Option<SessionKeys> {
    Some(SessionKeys {
        local: settings.static_secret()?,
        peer: peer.public_key?,
        preshared_key: peer.preshared_key,
        persistent_keepalive: peer.persistent_keepalive,
        tunnel: tunnel_addrs(settings, peer)?,
    })
}

fn tunnel_config(settings: &Settings, id: TunnelId) -> TunnelConfig {
    TunnelConfig {
        id,
        mss_clamp: settings
            .mss_clamp
            .map(|(ipv4, ipv6)| MssClamp { ipv4, ipv6 }),
    }
}

fn peer_state(settings: &Settings, peer: &Peer, id: TunnelId) -> PeerState {
    let wg = match settings.transport {
        TransportKind::Raw => None,
        TransportKind::Wireguard => {
            session_keys(settings, peer).map(|keys| Mutex::new(PeerSessions::new(id, keys)))
        }
    };
    PeerState {
        id,
        config: RwLock::new(peer.clone()),
        endpoint: RwLock::new(peer.endpoint),
        wg,
        counters: Counters::default(),
    }
}

impl Endpoint {
    /// Opens the TAP device and the socket and starts the threads.
    /// `events` hears about MAC moves.
    pub fn start(
        settings: Settings,
        events: Box<dyn Fn(VpnEvent) + Send + Sync>,
    ) -> Result<Endpoint, EndpointError> {
        let taps = Tap::open(
            &settings.tap,
            &TapOptions {
                vnet_hdr: settings.offload,
                offloads: settings.offload,
                queues: settings.queues,
                mtu: Some(settings.mtu),
            },
        )?;
        for tap in &taps {
            tap.set_nonblocking(true).map_err(|source| {
                EndpointError::Tap(hinan_dataplane::tap::TapError::Configure {
                    name: settings.tap.clone(),
                    what: "set non-blocking mode",
                    hint: "",
                    source,
                })
            })?;
        }
        let kind = match settings.transport {
            TransportKind::Raw => SocketKind::Raw,
            TransportKind::Wireguard => SocketKind::Udp,
        };
        let socket = TunnelSocket::bind(kind, settings.local, READ_TIMEOUT).map_err(|source| {
            EndpointError::Socket {
                kind: if kind == SocketKind::Raw {
                    "raw IP protocol 97"
                } else {
                    "UDP"
                },
                local: settings.local,
                source,
            }
        })?;
        let mut table = PeerTable::default();
        let mut tunnels = Vec::new();
        for (i, peer) in settings.peers.iter().enumerate() {
            let id = TunnelId(i as u16);
            tunnels.push(tunnel_config(&settings, id));
            table
                .by_id
                .insert(id, Arc::new(peer_state(&settings, peer, id)));
        }
        let bridge = Bridge::new(BridgeConfig {
            mac_age: settings.mac_age,
            hub: settings.hub,
            flood_limit: settings.flood.map(|(frames_per_second, burst)| FloodLimit {
                frames_per_second,
                burst,
            }),
            tunnels,
            ..BridgeConfig::default()
        })?;
        let keys = LocalKeys::new(settings.static_secret());
        // Raw EtherIP has no keys; its limiter is never asked.
        let limiter_key = keys
            .current_public()
            .unwrap_or_else(|| PublicKey::from([0u8; 32]));
        let compat = if settings.accept_reversed_header {
            Compat::ReversedNibble
        } else {
            Compat::Strict
        };
        let offload = settings.offload;
        tracing::info!(
            tap = %settings.tap, transport = %settings.transport, local = %socket.local(),
            peers = settings.peers.len(), mtu = settings.mtu, offload,
            "vpn endpoint started"
        );
        let shared = Arc::new(Shared {
            settings: RwLock::new(settings),
            taps,
            socket,
            bridge: Mutex::new(bridge),
            peers: RwLock::new(Arc::new(table)),
            keys: RwLock::new(keys),
            limiter: RwLock::new(Arc::new(RateLimiter::new(
                &limiter_key,
                HANDSHAKE_RATE_LIMIT,
            ))),
            start: Instant::now(),
            stop: AtomicBool::new(false),
            unknown_source: AtomicU64::new(0),
            events,
            recent: Mutex::new(std::collections::VecDeque::new()),
            compat,
            offload,
        });
        let mut endpoint = Endpoint {
            shared: shared.clone(),
            threads: Vec::new(),
        };
        for queue in 0..shared.taps.len() {
            let s = shared.clone();
            endpoint.spawn(&format!("vpn-tap{queue}"), move || tap_reader(&s, queue))?;
        }
        let s = shared.clone();
        endpoint.spawn("vpn-net", move || net_reader(&s))?;
        let s = shared;
        endpoint.spawn("vpn-timers", move || timers(&s))?;
        Ok(endpoint)
    }

    fn spawn(
        &mut self,
        name: &str,
        f: impl FnOnce() + Send + 'static,
    ) -> Result<(), EndpointError> {
        let handle = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(f)
            .map_err(EndpointError::Thread)?;
        self.threads.push(handle);
        Ok(())
    }

    /// Applies a changed configuration: peers added, removed or changed,
    /// keys rotated, bridge limits. The TAP, transport and local address
    /// need a restart. Returns what changed, for the log.
    pub fn reload(&self, new: Settings) -> Result<Vec<String>, EndpointError> {
        let shared = &self.shared;
        let mut settings = write(&shared.settings);
        if new.tap != settings.tap
            || new.queues != settings.queues
            || new.offload != settings.offload
        {
            return Err(EndpointError::NeedsRestart(
                "the TAP device (tap, queues, offload)",
            ));
        }
        if new.transport != settings.transport || new.local != settings.local {
            return Err(EndpointError::NeedsRestart(
                "the transport or the local address",
            ));
        }
        if new.hub != settings.hub
            || new.mac_age != settings.mac_age
            || new.flood != settings.flood
            || new.mss_clamp != settings.mss_clamp
            || new.mtu != settings.mtu
            || new.accept_reversed_header != settings.accept_reversed_header
        {
            return Err(EndpointError::NeedsRestart(
                "the bridge (hub, mac_age_secs, flood_rate, flood_burst, mss_clamp, path_mtu, mtu, accept_reversed_header)",
            ));
        }
        let old_table = read(&shared.peers).clone();
        // Every check before any change: a refused reload changes nothing.
        let added = new
            .peers
            .iter()
            .filter(|p| old_table.by_name(&p.name).is_none())
            .count();
        let first_free = old_table
            .by_id
            .keys()
            .next_back()
            .map_or(0, |id| usize::from(id.0) + 1);
        if first_free + added > usize::from(u16::MAX) {
            return Err(EndpointError::NeedsRestart(
                "the peer numbering (too many peers added since start)",
            ));
        }
        let mut next_id = first_free as u16;
        let mut changes = Vec::new();
        let key_changed =
            new.private_key != settings.private_key || new.tunnel_local != settings.tunnel_local;
        if new.private_key != settings.private_key {
            let rotating = old_table.by_id.values().any(|p| {
                p.wg.as_ref()
                    .is_some_and(|wg| lock(wg).rotation_unfinished())
            });
            let mut keys = write(&shared.keys);
            keys.rotate(new.static_secret(), rotating);
            if let Some(public) = keys.current_public() {
                *write(&shared.limiter) = Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT));
            }
            changes.push("local private key rotated".to_owned());
        }
        let mut table = PeerTable::default();
        let mut bridge = lock(&shared.bridge);
        for peer in &new.peers {
            match old_table.by_name(&peer.name) {
                Some(state) => {
                    let old = read(&state.config).clone();
                    let peer_keys_changed = old.public_key != peer.public_key
                        || old.preshared_key != peer.preshared_key
                        || old.tunnel_address != peer.tunnel_address
                        || old.persistent_keepalive != peer.persistent_keepalive;
                    if let (true, Some(wg)) = (key_changed || peer_keys_changed, &state.wg) {
                        if let Some(keys) = session_keys(&new, peer) {
                            lock(wg).rotate(keys);
                        }
                        changes.push(format!("peer '{}': new session (keys changed)", peer.name));
                    }
                    if old.endpoint != peer.endpoint {
                        *write(&state.endpoint) = peer.endpoint;
                        changes.push(format!(
                            "peer '{}': endpoint {:?}",
                            peer.name, peer.endpoint
                        ));
                    }
                    if old != *peer {
                        *write(&state.config) = peer.clone();
                    }
                    table.by_id.insert(state.id, state.clone());
                }
                None => {
                    let id = TunnelId(next_id);
                    next_id += 1;
                    bridge.add_tunnel(tunnel_config(&new, id))?;
                    table.by_id.insert(id, Arc::new(peer_state(&new, peer, id)));
                    changes.push(format!("peer '{}' added", peer.name));
                }
            }
        }
        for (id, state) in &old_table.by_id {
            if !table.by_id.contains_key(id) {
                bridge.remove_tunnel(*id);
                changes.push(format!("peer '{}' removed", read(&state.config).name));
            }
        }
        drop(bridge);
        *write(&shared.peers) = Arc::new(table);
        *settings = new;
        Ok(changes)
    }

    pub fn status(&self) -> Status {
        let shared = &self.shared;
        let settings = read(&shared.settings);
        let bridge = lock(&shared.bridge);
        let table = read(&shared.peers).clone();
        let peers = table
            .by_id
            .values()
            .map(|p| {
                let config = read(&p.config);
                let (handshake, rotating) = match &p.wg {
                    Some(wg) => {
                        let wg = lock(wg);
                        (wg.last_handshake().map(|d| d.as_secs_f64()), wg.rotating())
                    }
                    None => (None, false),
                };
                PeerStatus {
                    name: config.name.clone(),
                    endpoint: p.endpoint(),
                    public_key: config.public_key.map(|k| encode_key(&k)),
                    last_handshake_secs: handshake,
                    rotating,
                    tx_packets: p.counters.tx_packets.load(Ordering::Relaxed),
                    tx_bytes: p.counters.tx_bytes.load(Ordering::Relaxed),
                    rx_packets: p.counters.rx_packets.load(Ordering::Relaxed),
                    rx_bytes: p.counters.rx_bytes.load(Ordering::Relaxed),
                    rx_errors: p.counters.rx_errors.load(Ordering::Relaxed),
                    bridge: bridge
                        .port_counters(PortId::Tunnel(p.id))
                        .unwrap_or_default()
                        .into(),
                }
            })
            .collect();
        Status {
            tap: settings.tap.clone(),
            transport: settings.transport.to_string(),
            local: shared.socket.local(),
            public_key: settings.public_key().map(|k| encode_key(k.as_bytes())),
            local_port: bridge
                .port_counters(PortId::Local)
                .unwrap_or_default()
                .into(),
            unknown_source: shared.unknown_source.load(Ordering::Relaxed),
            macs_learned: bridge.macs(now(shared)).count(),
            peers,
            recent_events: lock(&shared.recent).iter().cloned().collect(),
        }
    }

    /// Stops the threads and waits for them.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Outgoing datagrams gathered for one `sendmsg` (UDP GSO).
///
/// On UDP a batch is a GSO run: datagrams of one size (the last may be
/// shorter) to one peer. On a raw socket it is any datagrams to one peer,
/// sent with one `sendmmsg`.
struct TxBatch {
    buf: Vec<u8>,
    len: usize,
    segment: usize,
    count: usize,
    to: Option<SocketAddr>,
    /// Each datagram's length, for `sendmmsg`.
    lens: Vec<usize>,
}

impl TxBatch {
    fn new() -> TxBatch {
        TxBatch {
            buf: vec![0; MAX_GSO_SEGMENTS * 2048 + DATAGRAM_MAX],
            len: 0,
            segment: 0,
            count: 0,
            to: None,
            lens: Vec::with_capacity(MAX_GSO_SEGMENTS),
        }
    }

    fn flush(&mut self, socket: &TunnelSocket) {
        if let Some(to) = self.to.take() {
            let result = match socket.kind() {
                SocketKind::Udp => socket.send_batch(&self.buf[..self.len], self.segment, to),
                SocketKind::Raw => socket.send_many(&self.buf[..self.len], &self.lens, to),
            };
            if let Err(e) = result {
                tracing::debug!(%to, error = %e, "tunnel send failed");
            }
        }
        self.lens.clear();
        self.len = 0;
        self.count = 0;
        self.segment = 0;
    }

    /// Room for the next datagram to `to`, flushing first if it cannot join
    /// the batch.
    fn room(&mut self, socket: &TunnelSocket, to: SocketAddr, need: usize) -> &mut [u8] {
        let fits =
            self.to == Some(to) && self.count < MAX_GSO_SEGMENTS && self.len + need <= 65_000 - 100;
        if !fits {
            self.flush(socket);
        }
        let start = self.len;
        &mut self.buf[start..start + need]
    }

    /// Records a datagram of `len` bytes written at the start of the room.
    fn commit(&mut self, socket: &TunnelSocket, to: SocketAddr, len: usize) {
        if socket.kind() == SocketKind::Raw {
            self.to = Some(to);
            self.len += len;
            self.count += 1;
            self.lens.push(len);
            return;
        }
        if self.count > 0 && len > self.segment {
            // Longer than the run so far: it cannot ride along. Move it out.
            let start = self.len;
            let datagram = self.buf[start..start + len].to_vec();
            self.flush(socket);
            self.buf[..len].copy_from_slice(&datagram);
        }
        if self.count == 0 {
            self.segment = len;
            self.to = Some(to);
        }
        self.len += len;
        self.count += 1;
        if len < self.segment {
            // A shorter datagram ends a GSO run.
            self.flush(socket);
        }
    }
}

/// Sends one frame to one peer.
fn send_to_peer(shared: &Shared, peer: &PeerState, frame: &[u8], batch: &mut TxBatch) {
    match &peer.wg {
        None => {
            let Some(to) = peer.endpoint() else { return };
            let len = etherip::HEADER_LEN + frame.len();
            let room = batch.room(&shared.socket, to, len);
            room[..etherip::HEADER_LEN].copy_from_slice(&etherip::RFC_HEADER);
            room[etherip::HEADER_LEN..].copy_from_slice(frame);
            batch.commit(&shared.socket, to, len);
            Counters::add(
                (&peer.counters.tx_packets, &peer.counters.tx_bytes),
                frame.len(),
            );
        }
        Some(wg) => {
            let endpoint = peer.endpoint();
            let now = Instant::now();
            let mut wg = lock(wg);
            let need = wg.out_len(frame.len());
            let Some(to) = endpoint else {
                // No endpoint yet: boringtun queues the frame for when the
                // peer shows up; the handshake it asks for cannot go out.
                let mut scratch = vec![0u8; need];
                let _ = wg.encapsulate(now, frame, &mut scratch);
                return;
            };
            let room = batch.room(&shared.socket, to, need);
            match wg.encapsulate(now, frame, room) {
                Action::SendToPeer(datagram) => {
                    let len = datagram.len();
                    let is_data = len > 0 && room_is_data(&batch.buf[batch.len..batch.len + len]);
                    batch.commit(&shared.socket, to, len);
                    if is_data {
                        Counters::add(
                            (&peer.counters.tx_packets, &peer.counters.tx_bytes),
                            frame.len(),
                        );
                    }
                }
                Action::Nothing => {}
                Action::Error(e) => tracing::debug!(error = %e, "encapsulate failed"),
                Action::DeliverFrame(_) => {}
            }
            // A rotation's new session starts its handshake with the first
            // frame after the reload.
            if wg.handshake_pending() {
                let mut out = [0u8; 256];
                if let Some(d) = wg.poll_handshake(&mut out) {
                    let _ = shared.socket.send_to(&[d], to);
                }
            }
        }
    }
}

fn room_is_data(datagram: &[u8]) -> bool {
    datagram.first() == Some(&4)
}

fn now(shared: &Shared) -> Duration {
    shared.start.elapsed()
}

fn emit_events(shared: &Shared, bridge: &mut Bridge) {
    while let Some(event) = bridge.poll_event() {
        let BridgeEvent::MacMoved {
            vlan,
            mac,
            from,
            to,
        } = event
        else {
            continue;
        };
        let table = read(&shared.peers).clone();
        let name = |port: PortId| match port {
            PortId::Local => MacLocation::Local,
            PortId::Tunnel(id) => MacLocation::Peer(
                table
                    .get(id)
                    .map(|p| read(&p.config).name.clone())
                    .unwrap_or_else(|| format!("tunnel {}", id.0)),
            ),
        };
        let event = VpnEvent::MacMoved {
            vlan: vlan.get(),
            mac: mac
                .0
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":"),
            from: name(from),
            to: name(to),
        };
        tracing::info!(?event, "MAC moved");
        {
            let mut recent = lock(&shared.recent);
            if recent.len() == RECENT_EVENTS {
                recent.pop_front();
            }
            recent.push_back((now(shared).as_secs_f64(), event.clone()));
        }
        (shared.events)(event);
    }
}

/// Where frames for the campus segment go: straight to the TAP, or with
/// offloads through a [`Coalescer`] that merges TCP segments into
/// super-frames (flushed at the end of every batch).
struct LocalOut {
    coalescer: Option<Coalescer>,
}

impl LocalOut {
    fn new(shared: &Shared) -> LocalOut {
        LocalOut {
            coalescer: shared.offload.then(|| Coalescer::new(COALESCE_FLOWS)),
        }
    }

    fn send(&mut self, shared: &Shared, frame: &[u8]) {
        match &mut self.coalescer {
            Some(c) => c.push(frame, |bytes| write_tap_raw(shared, bytes)),
            None => write_tap(shared, frame),
        }
    }

    fn flush(&mut self, shared: &Shared) {
        if let Some(c) = &mut self.coalescer {
            c.flush(|bytes| write_tap_raw(shared, bytes));
        }
    }
}

/// Writes a virtio-net header and frame as they are.
fn write_tap_raw(shared: &Shared, bytes: &[u8]) {
    if let Err(e) = shared.taps[0].write(bytes) {
        tracing::debug!(error = %e, "TAP write failed");
    }
}

/// Forwards one frame received on `port` to wherever the bridge says.
fn forward(
    shared: &Shared,
    table: &PeerTable,
    port: PortId,
    frame: &[u8],
    batch: &mut TxBatch,
    local: &mut LocalOut,
) {
    let forwards = lock(&shared.bridge).input(port, frame, now(shared));
    for fwd in &forwards {
        match fwd.port {
            PortId::Local => local.send(shared, &fwd.frame),
            PortId::Tunnel(id) => {
                if let Some(peer) = table.get(id) {
                    send_to_peer(shared, peer, &fwd.frame, batch);
                }
            }
        }
    }
}

fn write_tap(shared: &Shared, frame: &[u8]) {
    if let Err(e) = shared.taps[0].write_frame(frame) {
        tracing::debug!(error = %e, "TAP write failed");
    }
}

fn tap_reader(shared: &Shared, queue: usize) {
    let tap = &shared.taps[queue];
    let mut buf = vec![0u8; MAX_READ_LEN];
    let mut scratch = vec![0u8; MAX_READ_LEN];
    let mut batch = TxBatch::new();
    let mut local = LocalOut::new(shared);
    while !shared.stop.load(Ordering::Relaxed) {
        if !wait_readable(tap.as_raw_fd(), READ_TIMEOUT) {
            batch.flush(&shared.socket);
            continue;
        }
        let table = read(&shared.peers).clone();
        // Drain what is waiting, then send the batch.
        for _ in 0..64 {
            let n = match tap.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(error = %e, "TAP read failed");
                    std::thread::sleep(READ_TIMEOUT);
                    break;
                }
            };
            if shared.offload {
                let result = offload::segment_read(&mut buf[..n], &mut scratch, |f| {
                    forward(shared, &table, PortId::Local, f, &mut batch, &mut local)
                });
                if let Err(e) = result {
                    tracing::debug!(error = %e, "TAP frame dropped");
                }
            } else {
                forward(
                    shared,
                    &table,
                    PortId::Local,
                    &buf[..n],
                    &mut batch,
                    &mut local,
                );
            }
        }
        batch.flush(&shared.socket);
    }
}

fn wait_readable(fd: i32, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let ret = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    ret > 0
}

fn net_reader(shared: &Shared) {
    let mut recv = RecvBatch::new(32, RECV_BUF_LEN);
    let mut out = vec![0u8; DATAGRAM_MAX];
    let mut batch = TxBatch::new();
    let mut local = LocalOut::new(shared);
    while !shared.stop.load(Ordering::Relaxed) {
        match recv.recv(&shared.socket) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "tunnel socket read failed");
                std::thread::sleep(READ_TIMEOUT);
                continue;
            }
        }
        let table = read(&shared.peers).clone();
        for (r, msg) in recv.messages() {
            match shared.socket.kind() {
                SocketKind::Raw => {
                    let (src, payload) = match r.from {
                        SocketAddr::V4(_) => match socket::strip_ipv4_header(msg) {
                            Some(x) => x,
                            None => continue,
                        },
                        SocketAddr::V6(a) => (IpAddr::V6(*a.ip()), msg),
                    };
                    let Some(peer) = table.by_source(src) else {
                        shared.unknown_source.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    match etherip::unwrap_frame(payload, shared.compat) {
                        Ok(frame) => {
                            Counters::add(
                                (&peer.counters.rx_packets, &peer.counters.rx_bytes),
                                frame.len(),
                            );
                            peer.roam(SocketAddr::new(src, 0));
                            forward(
                                shared,
                                &table,
                                PortId::Tunnel(peer.id),
                                frame,
                                &mut batch,
                                &mut local,
                            );
                        }
                        Err(_) => {
                            peer.counters.rx_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                SocketKind::Udp => {
                    for datagram in socket::datagrams(msg, r.segment) {
                        wg_datagram(
                            shared, &table, r.from, datagram, &mut out, &mut batch, &mut local,
                        );
                    }
                }
            }
        }
        local.flush(shared);
        batch.flush(&shared.socket);
    }
}

/// Finds the peer and session a WireGuard message belongs to.
fn wg_route(
    shared: &Shared,
    table: &PeerTable,
    from: SocketAddr,
    datagram: &[u8],
    out: &mut [u8],
) -> Option<(Arc<PeerState>, u8)> {
    // Handshakes: mac1 and, under load, the cookie are checked before any
    // expensive key agreement, as boringtun's own device does. The limiter
    // checks nothing else, so data and cookie replies skip it.
    let packet = if matches!(datagram.first(), Some(&MSG_INIT) | Some(&MSG_RESPONSE)) {
        match read(&shared.limiter).verify_packet(Some(from.ip()), datagram, out) {
            Ok(packet) => packet,
            Err(boringtun::noise::TunnResult::WriteToNetwork(cookie)) => {
                let _ = shared.socket.send_to(&[cookie], from);
                return None;
            }
            Err(_) => return None,
        }
    } else {
        Tunn::parse_incoming_packet(datagram).ok()?
    };
    match packet {
        Packet::HandshakeInit(init) => {
            let initiator = read(&shared.keys).initiator(&init)?;
            table.by_id.values().find_map(|peer| {
                let generation = lock(peer.wg.as_ref()?).generation_for(&initiator)?;
                Some((peer.clone(), generation))
            })
        }
        other => {
            let index = SessionIndex::of_packet(&other)?;
            Some((table.get(index.tunnel)?.clone(), index.generation))
        }
    }
}

/// WireGuard message types.
const MSG_INIT: u8 = 1;
const MSG_RESPONSE: u8 = 2;

fn wg_datagram(
    shared: &Shared,
    table: &PeerTable,
    from: SocketAddr,
    datagram: &[u8],
    out: &mut [u8],
    batch: &mut TxBatch,
    local: &mut LocalOut,
) {
    let Some((peer, generation)) = wg_route(shared, table, from, datagram, out) else {
        shared.unknown_source.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let Some(wg) = &peer.wg else { return };
    if !read(&peer.config).accepts_source(from.ip()) {
        // Outside the peer's allowed_sources: not taken, whatever it holds.
        peer.counters.rx_errors.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut guard = lock(wg);
    let Some(Received { action, roam }) =
        guard.decapsulate(Instant::now(), generation, from.ip(), datagram, out)
    else {
        peer.counters.rx_errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    match action {
        Action::DeliverFrame(frame) => {
            // The initiator's first data: a responder's queue may leave.
            let queued = guard.queued_pending();
            drop(guard);
            Counters::add(
                (&peer.counters.rx_packets, &peer.counters.rx_bytes),
                frame.len(),
            );
            debug_assert!(roam);
            peer.roam(from);
            forward(shared, table, PortId::Tunnel(peer.id), frame, batch, local);
            if queued {
                send_queued(shared, &mut lock(wg), out, from);
            }
        }
        Action::SendToPeer(reply) => {
            let _ = shared.socket.send_to(&[reply], from);
            send_queued(shared, &mut guard, out, from);
            drop(guard);
            if roam {
                peer.roam(from);
            }
        }
        Action::Nothing => {
            send_queued(shared, &mut guard, out, from);
            drop(guard);
            if roam {
                peer.roam(from);
            }
        }
        Action::Error(e) => {
            drop(guard);
            peer.counters.rx_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %read(&peer.config).name, error = %e, "tunnel packet rejected");
        }
    }
}

/// Sends the frames queued while a handshake ran, once a session can carry
/// them.
fn send_queued(shared: &Shared, wg: &mut PeerSessions, out: &mut [u8], to: SocketAddr) {
    while let Some(d) = wg.poll_queued(out) {
        let _ = shared.socket.send_to(&[d], to);
    }
}

fn timers(shared: &Shared) {
    let mut out = vec![0u8; 2048];
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(TICK);
        {
            let mut bridge = lock(&shared.bridge);
            emit_events(shared, &mut bridge);
        }
        read(&shared.limiter).reset_count();
        let table = read(&shared.peers).clone();
        for peer in table.by_id.values() {
            let Some(wg) = &peer.wg else { continue };
            let to = peer.endpoint();
            let mut wg = lock(wg);
            let now = Instant::now();
            while let Some(action) = wg.poll_timers(now, &mut out) {
                match action {
                    TimerAction::SendToPeer(d) => {
                        if let Some(to) = to {
                            let _ = shared.socket.send_to(&[d], to);
                        }
                    }
                    TimerAction::RotationComplete => {
                        tracing::info!(peer = %read(&peer.config).name, "key rotation complete");
                    }
                    TimerAction::Error(SessionError::WireGuard(e)) => {
                        tracing::trace!(peer = %read(&peer.config).name, error = ?e, "session timer");
                    }
                    TimerAction::Error(_) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status JSON and the control socket carry a MAC's location as
    /// "local" or the peer's name, as before it had a type.
    #[test]
    fn a_mac_location_is_written_as_local_or_the_peer_name() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Moved {
            from: MacLocation,
            to: MacLocation,
        }
        let moved = Moved {
            from: MacLocation::Local,
            to: MacLocation::Peer("b".to_owned()),
        };
        let text = toml::to_string(&moved).unwrap();
        assert_eq!(text, "from = \"local\"\nto = \"b\"\n");
        assert_eq!(toml::from_str::<Moved>(&text).unwrap(), moved);
        assert_eq!(moved.to.to_string(), "b");
        assert_eq!(MacLocation::Local.to_string(), "local");
    }
}
