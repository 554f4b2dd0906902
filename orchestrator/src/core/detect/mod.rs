//! BFD-style failure detection between appliances: a sans-IO core.
//!
//! Every appliance sends a heartbeat to every peer on every path (the WAN
//! now, the tunnel later) once per [`DetectorConfig::interval`]. A path whose
//! heartbeats stop for the detection time (`interval * multiplier`) is down.
//! A peer with some paths down is [`PeerHealth::Degraded`] (a link is down);
//! a peer with every path down is [`PeerHealth::Down`] (the site is down).
//!
//! The [`Detector`] never reads a clock, opens a socket or sleeps. The shell
//! (or a simulator with virtual time) passes `now`, a monotonic
//! [`Duration`] since an arbitrary origin, into every call, and:
//!
//! * calls [`Detector::heartbeats_due`] and, when it says so, sends one
//!   heartbeat on each of [`Detector::paths`], built by
//!   [`Detector::heartbeat`] and authenticated (see [`wire`]);
//! * calls [`Detector::on_heartbeat`] for each received heartbeat whose
//!   authenticator, receiver and sequence number it has checked;
//! * calls [`Detector::poll`] at [`Detector::next_deadline`] (and after
//!   heartbeats) and acts on the returned [`DetectorEvent`]s.
//!
//! # Peers never heard
//!
//! A peer that has not been heard on any path since [`Detector::add_peer`] is
//! [`PeerHealth::Unknown`] and produces no events, however long that lasts:
//! without ever having seen it, the detector cannot tell "dead" from "not yet
//! installed", and a `SiteDown` for a site that was never up would start an
//! evacuation of nothing. Callers that need a verdict on such a peer read
//! [`Detector::health`]. Once any path of a peer is up, its other paths get a
//! detection time to be heard before they are reported down.

pub mod wire;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

pub use wire::{HeartbeatPacket, HeartbeatRepr, WireError};

pub use crate::core::state::NodeId;

/// One network path between two appliances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathId(pub u8);

impl PathId {
    /// The campus WAN.
    pub const WAN: PathId = PathId(0);
    /// The VPN tunnel between sites.
    pub const TUNNEL: PathId = PathId(1);
}

impl fmt::Display for PathId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PathId::WAN => f.write_str("wan"),
            PathId::TUNNEL => f.write_str("tunnel"),
            PathId(n) => write!(f, "path {n}"),
        }
    }
}

/// How long a path that went down must be heard before it counts as up.
///
/// A path that went down comes back only after it has been heard
/// continuously for a hold time. "Continuously" means with no silence as long
/// as the detection time, the same rule that would have taken an up path
/// down. The hold time is `initial_hold * 2^level`, capped at `max_hold`:
///
/// * an outage that starts less than `flap_window` after the path came back
///   from the previous outage is a flap, and raises the level by one;
/// * otherwise the level falls by one for every whole `flap_window` the path
///   stayed up, down to zero.
///
/// The first outage of a path is held for `initial_hold`. A path that was
/// never up is not held: it is up as soon as it is heard.
///
/// Defaults: `initial_hold` 1 s (about 50 heartbeats heard without a gap
/// before traffic moves back), doubling to at most `max_hold` 32 s after five
/// flaps in a row, and a `flap_window` of 60 s, so a link that goes down once
/// a minute or more often stays held at 32 s, while one that was stable for
/// five minutes is back to 1 s.
/// A zero `initial_hold` turns damping off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damping {
    pub initial_hold: Duration,
    pub max_hold: Duration,
    pub flap_window: Duration,
}

impl Default for Damping {
    fn default() -> Self {
        Damping {
            initial_hold: Duration::from_secs(1),
            max_hold: Duration::from_secs(32),
            flap_window: Duration::from_secs(60),
        }
    }
}

impl Damping {
    fn hold(&self, level: u32) -> Duration {
        1u32.checked_shl(level)
            .and_then(|factor| self.initial_hold.checked_mul(factor))
            .map_or(self.max_hold, |hold| hold.min(self.max_hold))
    }
}

/// Timers of the failure detector.
///
/// # Why 20 ms x 12
///
/// The detection time is `interval * multiplier` = 240 ms by default.
///
/// *No false downs.* A path is declared down after 240 ms without a
/// heartbeat. With one heartbeat every 20 ms that takes 11 lost heartbeats in
/// a row; the 12th arrives just as the timer fires, so count it as lost too
/// for a safe bound: 11 losses. In the soak every link loses 5 % and a
/// heartbeat may cross two links, so a heartbeat is lost with
/// p = 1 - 0.95² ≈ 10 %, independently. A given run of 11 losses has
/// probability 0.1^11 = 1e-11. A path carries 600 s / 20 ms = 30 000
/// heartbeats in 10 minutes, each of which can start such a run, so a path
/// sees at most 30 000 * 1e-11 = 3e-7 false downs per soak; a cluster of 8
/// appliances (8 * 7 * 2 = 112 directed paths) sees 3.4e-5. Bursty loss breaks the
/// independence assumption; see the damping and `SiteDown` needing every path.
///
/// *Detection within 300 ms.* A dead peer's last heartbeat arrived somewhere
/// in the 20 ms before it died (earlier if that one was lost too), and the
/// path goes down 240 ms after it: 220-240 ms after the death, median about
/// 230 ms, plus one-way latency. The test
/// `median_detection_of_a_dead_peer_is_under_300ms` measures it.
///
/// *Alternatives rejected.* 50 ms x 5 (250 ms) trips on 4 losses:
/// 12 000 * 1e-4 = 1.2 false downs per path per soak. 30 ms x 8 (240 ms)
/// trips on 7: 2e-3 per path, 0.2 per cluster soak. 10 ms x 24 is as safe as
/// 20 ms x 12 for twice the packets.
///
/// *Cost.* 50 heartbeats/s of 98 bytes on the wire (70 + UDP/IPv4) per path
/// per peer: 39 kbit/s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetectorConfig {
    /// Time between two heartbeats on one path.
    pub interval: Duration,
    /// How many intervals of silence take a path down.
    pub multiplier: u32,
    pub damping: Damping,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            interval: Duration::from_millis(20),
            multiplier: 12,
            damping: Damping::default(),
        }
    }
}

impl DetectorConfig {
    /// How long a path may be silent before it is down.
    pub fn detection_time(&self) -> Duration {
        self.interval.saturating_mul(self.multiplier)
    }

    /// Checks the values the detector and the wire format can work with.
    /// The detector does not panic on an invalid config, but its behaviour
    /// is only meaningful for a valid one: check at config load.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let max_interval = Duration::from_micros(u64::from(u32::MAX));
        if self.interval.is_zero() || self.interval > max_interval {
            return Err(ConfigError::Interval(self.interval));
        }
        if !(2..=u32::from(u8::MAX)).contains(&self.multiplier) {
            return Err(ConfigError::Multiplier(self.multiplier));
        }
        if self.damping.initial_hold > self.damping.max_hold {
            return Err(ConfigError::HoldOrder {
                initial: self.damping.initial_hold,
                max: self.damping.max_hold,
            });
        }
        if self.damping.flap_window.is_zero() {
            return Err(ConfigError::ZeroFlapWindow);
        }
        Ok(())
    }
}

/// A detector config that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("detector interval {0:?} is invalid: it must be above zero and at most 4294 s (sent in microseconds as a u32)")]
    Interval(Duration),
    #[error("detector multiplier {0} is invalid: it must be between 2 and 255 (with 1, a single lost heartbeat takes a path down)")]
    Multiplier(u32),
    #[error("damping initial_hold {initial:?} is longer than max_hold {max:?}")]
    HoldOrder { initial: Duration, max: Duration },
    #[error("damping flap_window must be above zero")]
    ZeroFlapWindow,
}

/// A change the detector saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DetectorEvent {
    /// A path went silent for the detection time, or a path never heard
    /// stayed silent for a detection time after its peer came up.
    PathDown { peer: NodeId, path: PathId },
    /// A path was heard for the first time, or was heard continuously for
    /// its hold time after going down.
    PathUp { peer: NodeId, path: PathId },
    /// The last path of a peer that was up went down: the site is
    /// unreachable. Follows that path's `PathDown`.
    SiteDown { peer: NodeId },
    /// A peer with no path up got one, including the first time it is heard.
    /// Follows that path's `PathUp`.
    SiteUp { peer: NodeId },
}

/// How a peer looks from here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerHealth {
    /// Every path is up (or, right after the peer came up, not yet due).
    Up,
    /// Some paths are up, these are down: a link is down.
    Degraded { down: Vec<PathId> },
    /// The peer was up once and now no path is up: the site is down.
    Down,
    /// Never heard on any path, or not a peer of this detector.
    Unknown,
}

/// The failure detector for one appliance: all its peers and paths.
#[derive(Debug)]
pub struct Detector {
    cfg: DetectorConfig,
    local: NodeId,
    peers: BTreeMap<NodeId, Peer>,
    events: Vec<DetectorEvent>,
    /// When heartbeats are next due; `None` while there are no peers.
    next_heartbeats: Option<Duration>,
}

#[derive(Debug)]
struct Peer {
    paths: BTreeMap<PathId, Path>,
    ever_up: bool,
}

impl Peer {
    fn reachable(&self) -> bool {
        self.paths
            .values()
            .any(|p| matches!(p.state, PathState::Up { .. }))
    }
}

#[derive(Debug)]
struct Path {
    state: PathState,
    /// Damping level: the hold time is `initial_hold * 2^flap_level`.
    flap_level: u32,
}

#[derive(Debug, Clone, Copy)]
enum PathState {
    /// Never heard. Once the peer is up, silence counts from `since`.
    Unknown { since: Duration },
    Up {
        last_heard: Duration,
        up_since: Duration,
        /// Came up from an outage (not from first contact), so going down
        /// within the flap window is a flap.
        after_outage: bool,
    },
    Down {
        hold: Duration,
        /// The path was up before this outage (not merely never heard).
        was_up: bool,
        /// The current stretch of continuous heartbeats, if any.
        run: Option<Run>,
    },
}

#[derive(Debug, Clone, Copy)]
struct Run {
    start: Duration,
    last_heard: Duration,
}

impl Path {
    fn new(now: Duration) -> Self {
        Path {
            state: PathState::Unknown { since: now },
            flap_level: 0,
        }
    }

    /// When this path changes state next if nothing is heard, if ever.
    fn next_change(&self, detect: Duration, peer_ever_up: bool) -> Option<Duration> {
        match self.state {
            PathState::Unknown { since } => peer_ever_up.then(|| since.saturating_add(detect)),
            PathState::Up { last_heard, .. } => Some(last_heard.saturating_add(detect)),
            PathState::Down {
                hold,
                run: Some(run),
                ..
            } => Some(
                run.start
                    .saturating_add(hold)
                    .min(run.last_heard.saturating_add(detect)),
            ),
            PathState::Down { run: None, .. } => None,
        }
    }
}

/// What one timer or heartbeat did to a path.
enum Change {
    None,
    Up,
    /// `was_up`: the path was up until now (not merely never heard).
    Down {
        was_up: bool,
    },
}

impl Detector {
    /// A detector for the appliance `local`. `cfg` should have passed
    /// [`DetectorConfig::validate`].
    pub fn new(cfg: DetectorConfig, local: NodeId) -> Self {
        Detector {
            cfg,
            local,
            peers: BTreeMap::new(),
            events: Vec::new(),
            next_heartbeats: None,
        }
    }

    pub fn local(&self) -> NodeId {
        self.local
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    /// Starts watching `peer` on `paths`. Heartbeats become due at once.
    ///
    /// For a peer already watched, this sets its paths: paths already known
    /// keep their state and damping, new ones start as never heard, missing
    /// ones are dropped (a `SiteDown` follows if that leaves no path up).
    /// `local` is never a peer.
    pub fn add_peer(&mut self, peer: NodeId, paths: &[PathId], now: Duration) {
        if peer == self.local {
            return;
        }
        self.advance(now);
        let entry = self.peers.entry(peer).or_insert_with(|| Peer {
            paths: BTreeMap::new(),
            ever_up: false,
        });
        let was_reachable = entry.reachable();
        entry.paths.retain(|id, _| paths.contains(id));
        for &path in paths {
            entry.paths.entry(path).or_insert_with(|| Path::new(now));
        }
        if was_reachable && !entry.reachable() {
            self.events.push(DetectorEvent::SiteDown { peer });
        }
        if self.next_heartbeats.is_none() {
            self.next_heartbeats = Some(now);
        }
    }

    /// Stops watching `peer`. Its events not yet polled are dropped too.
    pub fn remove_peer(&mut self, peer: NodeId) {
        self.peers.remove(&peer);
        self.events.retain(|e| event_peer(e) != peer);
        if self.peers.is_empty() {
            self.next_heartbeats = None;
        }
    }

    /// Records a heartbeat from `peer` on `path`, received at `now`.
    ///
    /// The caller has checked the authenticator, that the heartbeat is
    /// addressed to `local`, and its sequence number. Heartbeats from peers
    /// or on paths this detector does not watch are ignored.
    pub fn on_heartbeat(&mut self, peer: NodeId, path: PathId, now: Duration) {
        // Timers that expired before this heartbeat fire first: a heartbeat
        // after a long silence ends an outage, it does not hide it.
        self.advance(now);
        let detect = self.cfg.detection_time();
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let Some(session) = p.paths.get_mut(&path) else {
            return;
        };
        let change = match &mut session.state {
            PathState::Unknown { .. } => {
                session.state = PathState::Up {
                    last_heard: now,
                    up_since: now,
                    after_outage: false,
                };
                Change::Up
            }
            PathState::Up { last_heard, .. } => {
                *last_heard = (*last_heard).max(now);
                Change::None
            }
            PathState::Down { hold, was_up, run } => {
                let run = match run {
                    Some(run) if now < run.last_heard.saturating_add(detect) => {
                        run.last_heard = run.last_heard.max(now);
                        *run
                    }
                    _ => *run.insert(Run {
                        start: now,
                        last_heard: now,
                    }),
                };
                if now >= run.start.saturating_add(*hold) {
                    session.state = PathState::Up {
                        last_heard: run.last_heard,
                        up_since: now,
                        after_outage: *was_up,
                    };
                    Change::Up
                } else {
                    Change::None
                }
            }
        };
        self.record(peer, path, change, now);
    }

    /// Brings the detector to `now` and returns what changed since the last
    /// poll, oldest first.
    pub fn poll(&mut self, now: Duration) -> Vec<DetectorEvent> {
        self.advance(now);
        std::mem::take(&mut self.events)
    }

    /// The earliest time at which [`poll`](Self::poll) or
    /// [`heartbeats_due`](Self::heartbeats_due) has something new to say if
    /// no heartbeat arrives. `None` when there are no peers.
    pub fn next_deadline(&self) -> Option<Duration> {
        let detect = self.cfg.detection_time();
        self.peers
            .values()
            .flat_map(|peer| {
                peer.paths
                    .values()
                    .filter_map(move |p| p.next_change(detect, peer.ever_up))
            })
            .chain(self.next_heartbeats)
            .min()
    }

    /// The peer's health as of the last `poll`, `on_heartbeat` or `add_peer`.
    pub fn health(&self, peer: NodeId) -> PeerHealth {
        let Some(p) = self.peers.get(&peer) else {
            return PeerHealth::Unknown;
        };
        if !p.ever_up {
            return PeerHealth::Unknown;
        }
        if !p.reachable() {
            return PeerHealth::Down;
        }
        let down: Vec<PathId> = p
            .paths
            .iter()
            .filter(|(_, s)| matches!(s.state, PathState::Down { .. }))
            .map(|(id, _)| *id)
            .collect();
        if down.is_empty() {
            PeerHealth::Up
        } else {
            PeerHealth::Degraded { down }
        }
    }

    /// True once per interval: the caller then sends one heartbeat on each
    /// of [`paths`](Self::paths). After a stall (the caller came late by
    /// more than an interval) the schedule restarts from `now` rather than
    /// sending a burst.
    pub fn heartbeats_due(&mut self, now: Duration) -> bool {
        let Some(due) = self.next_heartbeats else {
            return false;
        };
        if now < due {
            return false;
        }
        let next = due.saturating_add(self.cfg.interval);
        self.next_heartbeats = Some(if next <= now {
            now.saturating_add(self.cfg.interval)
        } else {
            next
        });
        true
    }

    /// Every (peer, path) pair this detector watches, in order.
    pub fn paths(&self) -> impl Iterator<Item = (NodeId, PathId)> + '_ {
        self.peers
            .iter()
            .flat_map(|(&peer, p)| p.paths.keys().map(move |&path| (peer, path)))
    }

    /// The heartbeat to send to `peer` on `path`, carrying this detector's
    /// timers. The shell numbers them per path.
    pub fn heartbeat(&self, peer: NodeId, path: PathId, seq: u64) -> HeartbeatRepr {
        HeartbeatRepr {
            sender: self.local,
            receiver: peer,
            path,
            seq,
            tx_interval_us: u32::try_from(self.cfg.interval.as_micros()).unwrap_or(u32::MAX),
            multiplier: u8::try_from(self.cfg.multiplier).unwrap_or(u8::MAX),
        }
    }

    /// Fires every timer due at or before `now`, in time order, so that a
    /// caller that polls late still gets the events in the order they
    /// happened.
    fn advance(&mut self, now: Duration) {
        let detect = self.cfg.detection_time();
        loop {
            let due = self
                .peers
                .iter()
                .flat_map(|(&id, peer)| {
                    peer.paths.iter().filter_map(move |(&path, p)| {
                        p.next_change(detect, peer.ever_up).map(|t| (t, id, path))
                    })
                })
                .filter(|&(t, ..)| t <= now)
                .min();
            let Some((at, peer, path)) = due else {
                return;
            };
            self.fire(peer, path, at);
        }
    }

    /// Applies the timer of `peer`'s `path` that expires at `at`. Every
    /// branch leaves the path with no deadline or a later one, so
    /// [`advance`](Self::advance) terminates.
    fn fire(&mut self, peer: NodeId, path: PathId, at: Duration) {
        let detect = self.cfg.detection_time();
        let damping = &self.cfg.damping;
        let Some(session) = self
            .peers
            .get_mut(&peer)
            .and_then(|p| p.paths.get_mut(&path))
        else {
            return;
        };
        let change = match session.state {
            PathState::Unknown { .. } => {
                session.state = PathState::Down {
                    hold: Duration::ZERO,
                    was_up: false,
                    run: None,
                };
                Change::Down { was_up: false }
            }
            PathState::Up {
                up_since,
                after_outage,
                ..
            } => {
                let stable = at.saturating_sub(up_since);
                if after_outage && stable < damping.flap_window {
                    if damping.hold(session.flap_level) < damping.max_hold {
                        session.flap_level += 1;
                    }
                } else {
                    let windows = stable.as_nanos() / damping.flap_window.as_nanos().max(1);
                    let windows = u32::try_from(windows).unwrap_or(u32::MAX);
                    session.flap_level = session.flap_level.saturating_sub(windows);
                }
                session.state = PathState::Down {
                    hold: damping.hold(session.flap_level),
                    was_up: true,
                    run: None,
                };
                Change::Down { was_up: true }
            }
            PathState::Down {
                hold,
                was_up,
                run: Some(run),
            } => {
                if at >= run.last_heard.saturating_add(detect) {
                    // Silence broke the run: the hold starts over when the
                    // path is heard again.
                    session.state = PathState::Down {
                        hold,
                        was_up,
                        run: None,
                    };
                    Change::None
                } else {
                    session.state = PathState::Up {
                        last_heard: run.last_heard,
                        up_since: at,
                        after_outage: was_up,
                    };
                    Change::Up
                }
            }
            PathState::Down { run: None, .. } => Change::None,
        };
        self.record(peer, path, change, at);
    }

    /// Queues the events for a path change and the site change it causes.
    fn record(&mut self, peer: NodeId, path: PathId, change: Change, at: Duration) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        match change {
            Change::None => {}
            Change::Up => {
                self.events.push(DetectorEvent::PathUp { peer, path });
                let others_up = p
                    .paths
                    .iter()
                    .any(|(&id, s)| id != path && matches!(s.state, PathState::Up { .. }));
                if !others_up {
                    self.events.push(DetectorEvent::SiteUp { peer });
                }
                if !p.ever_up {
                    p.ever_up = true;
                    // The other paths get a full detection time from now to
                    // be heard before they are reported down.
                    for s in p.paths.values_mut() {
                        if let PathState::Unknown { since } = &mut s.state {
                            *since = at;
                        }
                    }
                }
            }
            Change::Down { was_up } => {
                self.events.push(DetectorEvent::PathDown { peer, path });
                if was_up && !p.reachable() {
                    self.events.push(DetectorEvent::SiteDown { peer });
                }
            }
        }
    }
}

fn event_peer(event: &DetectorEvent) -> NodeId {
    match *event {
        DetectorEvent::PathDown { peer, .. }
        | DetectorEvent::PathUp { peer, .. }
        | DetectorEvent::SiteDown { peer }
        | DetectorEvent::SiteUp { peer } => peer,
    }
}

#[cfg(test)]
mod tests;
