//! The learning bridge between the campus segment and the tunnels to the
//! other campuses.
//!
//! One [`PortId::Local`] port faces the campus service segment (a TAP device
//! in the shell); each [`PortId::Tunnel`] faces one peer appliance. The core
//! is a plain state machine: the shell passes every received frame to
//! [`Bridge::input`] with the current time and sends the returned
//! [`Forward`]s; it never reads a clock and never touches a device.
//!
//! What it does, as an IEEE 802.1D bridge would:
//!
//! * learns source MACs per VLAN, keyed by (outer VID, MAC), and forgets them
//!   after [`BridgeConfig::mac_age`] without traffic;
//! * forwards known unicast to one port and floods broadcast, multicast and
//!   unknown unicast to the others, with a token bucket per ingress port on
//!   flooding;
//! * never forwards a frame from one tunnel to another (split horizon: the
//!   peers form a full mesh, so every peer already heard it from the source)
//!   unless configured as a hub;
//! * reports a MAC that appears behind a different port
//!   ([`BridgeEvent::MacMoved`]): a VM that migrated;
//! * lowers the TCP MSS of SYNs that enter or leave a tunnel;
//! * drops frames it cannot read, and link-local control frames (STP, LACP,
//!   LLDP, pause), counting each.
//!
//! Frames are forwarded as they came, VLAN tags included; only a clamped MSS
//! and its checksum change.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

use crate::mss::{MssClamp, MssOption, MIN_MSS};
use crate::wire::{EthernetFrame, EthernetRepr, MacAddress, VlanId};

#[cfg(test)]
mod tests;

/// How long a learned MAC lives without traffic (IEEE 802.1D's default).
pub const DEFAULT_MAC_AGE: Duration = Duration::from_secs(300);
/// Flooding allowed per ingress port by default.
pub const DEFAULT_FLOOD_LIMIT: FloodLimit = FloodLimit {
    frames_per_second: 1000,
    burst: 2000,
};
/// MAC table capacity by default: far above a campus service segment, low
/// enough that a MAC flood cannot exhaust memory.
pub const DEFAULT_MAX_MACS: usize = 8192;
/// Events kept for [`Bridge::poll_event`] before new ones are dropped (and
/// counted), so a MAC flapping in a loop cannot grow memory.
pub const MAX_PENDING_EVENTS: usize = 1024;

/// A peer's tunnel, numbered by the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TunnelId(pub u16);

/// A bridge port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortId {
    /// The campus service segment.
    Local,
    /// The tunnel to one peer.
    Tunnel(TunnelId),
}

impl PortId {
    pub const fn is_tunnel(self) -> bool {
        matches!(self, PortId::Tunnel(_))
    }
}

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortId::Local => f.write_str("local"),
            PortId::Tunnel(TunnelId(id)) => write!(f, "tunnel {id}"),
        }
    }
}

/// A token bucket on flooded frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloodLimit {
    /// Refill rate.
    pub frames_per_second: u32,
    /// Bucket size: frames that may be flooded back to back.
    pub burst: u32,
}

/// One tunnel port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelConfig {
    pub id: TunnelId,
    /// The MSS ceiling for TCP SYNs entering or leaving this tunnel; `None`
    /// leaves them alone.
    pub mss_clamp: Option<MssClamp>,
}

/// Bridge settings. [`Default`] gives the documented defaults and no tunnels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    /// Default [`DEFAULT_MAC_AGE`] (300 s).
    pub mac_age: Duration,
    /// Forward between tunnels too (a hub-and-spoke topology). Default off.
    pub hub: bool,
    /// Default [`DEFAULT_FLOOD_LIMIT`] (1000 frames/s, burst 2000); `None`
    /// floods without limit.
    pub flood_limit: Option<FloodLimit>,
    /// Default [`DEFAULT_MAX_MACS`] (8192).
    pub max_macs: usize,
    /// Default none; see [`Bridge::add_tunnel`].
    pub tunnels: Vec<TunnelConfig>,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            mac_age: DEFAULT_MAC_AGE,
            hub: false,
            flood_limit: Some(DEFAULT_FLOOD_LIMIT),
            max_macs: DEFAULT_MAX_MACS,
            tunnels: Vec::new(),
        }
    }
}

/// Why a bridge configuration was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("bridge config rejected: mac_age must be above zero (IEEE 802.1D uses 300 s)")]
    ZeroMacAge,
    #[error("bridge config rejected: flood_limit needs frames_per_second and burst of at least 1 (got {frames_per_second}/s, burst {burst}); leave flood_limit out to flood without limit")]
    EmptyFloodLimit { frames_per_second: u32, burst: u32 },
    #[error("bridge config rejected: max_macs must be at least 1")]
    ZeroMaxMacs,
    #[error("bridge config rejected: tunnel {0} is configured twice")]
    DuplicateTunnel(u16),
    #[error("bridge config rejected: tunnel {tunnel}'s {family} MSS clamp {mss} is below {MIN_MSS}, which would stall every TCP connection through it")]
    MssTooSmall {
        tunnel: u16,
        family: &'static str,
        mss: u16,
    },
}

/// A frame to send, and the port to send it out of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward<'a> {
    pub port: PortId,
    /// The received frame, or a copy with a clamped MSS.
    pub frame: Cow<'a, [u8]>,
}

/// Something the orchestrator should hear about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BridgeEvent {
    /// A MAC learned (and not yet aged out) behind `from` sent a frame from
    /// `to`.
    MacMoved {
        vlan: VlanId,
        mac: MacAddress,
        from: PortId,
        to: PortId,
    },
}

/// Per-port counters. "rx" counts every frame handed to
/// [`Bridge::input`] on the port; "tx" every [`Forward`] out of it (the
/// bridge cannot know whether the device then took it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCounters {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames received here and flooded (broadcast, multicast, unknown
    /// unicast).
    pub flooded: u64,
    /// Frames received here that the flood limit dropped.
    pub dropped_rate_limit: u64,
    /// Unicast frames received on this tunnel for a MAC behind another
    /// tunnel, dropped by split horizon.
    pub dropped_split_horizon: u64,
    /// Frames received here that are not Ethernet the bridge can read: too
    /// short, a cut VLAN tag, VID 4095, a group or all-zero source MAC.
    pub dropped_malformed: u64,
    /// Frames received here for 01-80-C2-00-00-0X, which stay on their link.
    pub dropped_link_local: u64,
    /// Unicast frames received here for a MAC learned behind this same port.
    pub filtered: u64,
    /// Frames sent out of this port with a lowered MSS.
    pub mss_clamped: u64,
}

/// Counters that belong to no port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgeCounters {
    /// Frames passed to [`Bridge::input`] on a tunnel the bridge does not
    /// have (dropped).
    pub unknown_port: u64,
    /// Source MACs not learned because the table was full of live entries.
    pub macs_not_learned: u64,
    /// Events dropped because [`MAX_PENDING_EVENTS`] were waiting.
    pub events_dropped: u64,
}

/// The learning bridge. See the module documentation.
#[derive(Debug)]
pub struct Bridge {
    mac_age: Duration,
    hub: bool,
    flood_limit: Option<FloodLimit>,
    max_macs: usize,
    local: Port,
    tunnels: BTreeMap<TunnelId, Port>,
    macs: BTreeMap<(VlanId, MacAddress), MacEntry>,
    next_sweep: Duration,
    events: VecDeque<BridgeEvent>,
    counters: BridgeCounters,
}

#[derive(Debug)]
struct Port {
    counters: PortCounters,
    flood_bucket: TokenBucket,
    mss_clamp: Option<MssClamp>,
}

#[derive(Debug, Clone, Copy)]
struct MacEntry {
    port: PortId,
    last_seen: Duration,
}

impl Bridge {
    pub fn new(config: BridgeConfig) -> Result<Bridge, ConfigError> {
        if config.mac_age.is_zero() {
            return Err(ConfigError::ZeroMacAge);
        }
        if let Some(limit) = config.flood_limit {
            if limit.frames_per_second == 0 || limit.burst == 0 {
                return Err(ConfigError::EmptyFloodLimit {
                    frames_per_second: limit.frames_per_second,
                    burst: limit.burst,
                });
            }
        }
        if config.max_macs == 0 {
            return Err(ConfigError::ZeroMaxMacs);
        }
        let mut bridge = Bridge {
            mac_age: config.mac_age,
            hub: config.hub,
            flood_limit: config.flood_limit,
            max_macs: config.max_macs,
            local: Port::new(None, config.flood_limit),
            tunnels: BTreeMap::new(),
            macs: BTreeMap::new(),
            next_sweep: config.mac_age,
            events: VecDeque::new(),
            counters: BridgeCounters::default(),
        };
        for tunnel in config.tunnels {
            bridge.add_tunnel(tunnel)?;
        }
        Ok(bridge)
    }

    /// Adds a tunnel port (a peer joined).
    pub fn add_tunnel(&mut self, tunnel: TunnelConfig) -> Result<(), ConfigError> {
        if self.tunnels.contains_key(&tunnel.id) {
            return Err(ConfigError::DuplicateTunnel(tunnel.id.0));
        }
        if let Some(clamp) = tunnel.mss_clamp {
            for (family, mss) in [("IPv4", clamp.ipv4), ("IPv6", clamp.ipv6)] {
                if mss < MIN_MSS {
                    return Err(ConfigError::MssTooSmall {
                        tunnel: tunnel.id.0,
                        family,
                        mss,
                    });
                }
            }
        }
        self.tunnels
            .insert(tunnel.id, Port::new(tunnel.mss_clamp, self.flood_limit));
        Ok(())
    }

    /// Removes a tunnel port (a peer left) and forgets the MACs behind it.
    /// Returns whether it existed.
    pub fn remove_tunnel(&mut self, id: TunnelId) -> bool {
        let port = PortId::Tunnel(id);
        self.macs.retain(|_, entry| entry.port != port);
        self.tunnels.remove(&id).is_some()
    }

    /// The tunnel ports, in ascending order.
    pub fn tunnels(&self) -> impl Iterator<Item = TunnelId> + '_ {
        self.tunnels.keys().copied()
    }

    /// Takes one frame received on `port` at `now` and says where to send it.
    pub fn input<'a>(&mut self, port: PortId, frame: &'a [u8], now: Duration) -> Vec<Forward<'a>> {
        let mut out = Vec::new();
        self.input_into(port, frame, now, &mut out);
        out
    }

    /// [`input`](Self::input) into the caller's vector (cleared first), to
    /// reuse its allocation from frame to frame.
    pub fn input_into<'a>(
        &mut self,
        port: PortId,
        frame: &'a [u8],
        now: Duration,
        out: &mut Vec<Forward<'a>>,
    ) {
        out.clear();
        if now >= self.next_sweep {
            self.sweep(now);
        }
        let Some(ingress) = self.port_mut(port) else {
            self.counters.unknown_port += 1;
            return;
        };
        ingress.counters.rx_frames += 1;
        ingress.counters.rx_bytes += frame.len() as u64;

        let header = match EthernetRepr::parse(&EthernetFrame::new_unchecked(frame)) {
            Ok(header) => header,
            Err(_) => {
                ingress.counters.dropped_malformed += 1;
                return;
            }
        };
        let src = header.src_addr;
        let vlan = match header.vlan() {
            Some(vlan) if !src.is_multicast() && !src.is_zero() => vlan,
            _ => {
                ingress.counters.dropped_malformed += 1;
                return;
            }
        };
        if header.dst_addr.is_link_local_reserved() {
            ingress.counters.dropped_link_local += 1;
            return;
        }
        self.learn(vlan, src, port, now);

        let known = if header.dst_addr.is_multicast() {
            None
        } else {
            self.lookup(vlan, header.dst_addr, now)
        };
        let (hub, flood_limit) = (self.hub, self.flood_limit);
        let Some(ingress) = self.port_mut(port) else {
            return;
        };
        match known {
            Some(egress) if egress == port => {
                ingress.counters.filtered += 1;
            }
            Some(egress) if split_horizon_blocks(hub, port, egress) => {
                ingress.counters.dropped_split_horizon += 1;
            }
            Some(egress) => {
                let mss = MssOption::find(frame, header.ethertype, header.buffer_len());
                self.forward(port, egress, frame, mss, out);
            }
            None => {
                if let Some(limit) = flood_limit {
                    if !ingress.flood_bucket.take(limit, now) {
                        ingress.counters.dropped_rate_limit += 1;
                        return;
                    }
                }
                ingress.counters.flooded += 1;
                let mss = MssOption::find(frame, header.ethertype, header.buffer_len());
                let egresses: Vec<PortId> = self
                    .ports()
                    .filter(|&egress| egress != port && !split_horizon_blocks(hub, port, egress))
                    .collect();
                for egress in egresses {
                    self.forward(port, egress, frame, mss, out);
                }
            }
        }
    }

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<BridgeEvent> {
        self.events.pop_front()
    }

    /// All waiting events, oldest first.
    pub fn drain_events(&mut self) -> impl Iterator<Item = BridgeEvent> + '_ {
        self.events.drain(..)
    }

    /// Where `mac` on `vlan` was last seen, unless that is older than the MAC
    /// age at `now`.
    pub fn lookup(&self, vlan: VlanId, mac: MacAddress, now: Duration) -> Option<PortId> {
        self.macs
            .get(&(vlan, mac))
            .filter(|entry| self.is_live(entry, now))
            .map(|entry| entry.port)
    }

    /// The live MAC table at `now`, ordered by VLAN then MAC.
    pub fn macs(&self, now: Duration) -> impl Iterator<Item = (VlanId, MacAddress, PortId)> + '_ {
        self.macs
            .iter()
            .filter(move |(_, entry)| self.is_live(entry, now))
            .map(|(&(vlan, mac), entry)| (vlan, mac, entry.port))
    }

    /// A port's counters; `None` for a tunnel the bridge does not have.
    pub fn port_counters(&self, port: PortId) -> Option<PortCounters> {
        match port {
            PortId::Local => Some(self.local.counters),
            PortId::Tunnel(id) => self.tunnels.get(&id).map(|p| p.counters),
        }
    }

    pub fn counters(&self) -> BridgeCounters {
        self.counters
    }

    /// Local first, then tunnels in ascending order: the order of a flood.
    fn ports(&self) -> impl Iterator<Item = PortId> + '_ {
        std::iter::once(PortId::Local).chain(self.tunnels.keys().map(|&id| PortId::Tunnel(id)))
    }

    fn port_mut(&mut self, port: PortId) -> Option<&mut Port> {
        match port {
            PortId::Local => Some(&mut self.local),
            PortId::Tunnel(id) => self.tunnels.get_mut(&id),
        }
    }

    fn mss_clamp(&self, port: PortId) -> Option<MssClamp> {
        match port {
            PortId::Local => self.local.mss_clamp,
            PortId::Tunnel(id) => self.tunnels.get(&id).and_then(|p| p.mss_clamp),
        }
    }

    fn is_live(&self, entry: &MacEntry, now: Duration) -> bool {
        now.saturating_sub(entry.last_seen) < self.mac_age
    }

    fn learn(&mut self, vlan: VlanId, mac: MacAddress, port: PortId, now: Duration) {
        let key = (vlan, mac);
        let Some(entry) = self.macs.get(&key).copied() else {
            if self.macs.len() >= self.max_macs {
                self.sweep(now);
            }
            if self.macs.len() >= self.max_macs {
                self.counters.macs_not_learned += 1;
            } else {
                self.macs.insert(
                    key,
                    MacEntry {
                        port,
                        last_seen: now,
                    },
                );
            }
            return;
        };
        if entry.port != port && self.is_live(&entry, now) {
            self.push_event(BridgeEvent::MacMoved {
                vlan,
                mac,
                from: entry.port,
                to: port,
            });
        }
        self.macs.insert(
            key,
            MacEntry {
                port,
                last_seen: now,
            },
        );
    }

    fn push_event(&mut self, event: BridgeEvent) {
        if self.events.len() >= MAX_PENDING_EVENTS {
            self.counters.events_dropped += 1;
        } else {
            self.events.push_back(event);
        }
    }

    /// Frees aged entries. Lookups already ignore them; this bounds memory.
    fn sweep(&mut self, now: Duration) {
        let age = self.mac_age;
        self.macs
            .retain(|_, entry| now.saturating_sub(entry.last_seen) < age);
        self.next_sweep = now.saturating_add(age);
    }

    fn forward<'a>(
        &mut self,
        ingress: PortId,
        egress: PortId,
        frame: &'a [u8],
        mss: Option<MssOption>,
        out: &mut Vec<Forward<'a>>,
    ) {
        let clamp = match (self.mss_clamp(ingress), self.mss_clamp(egress)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let lowered = mss.zip(clamp).and_then(|(option, clamp)| {
            let value = option.clamped(clamp)?;
            let mut copy = frame.to_vec();
            option.rewrite(&mut copy, value);
            Some(copy)
        });
        let Some(port) = self.port_mut(egress) else {
            return;
        };
        port.counters.tx_frames += 1;
        port.counters.tx_bytes += frame.len() as u64;
        let frame = match lowered {
            Some(copy) => {
                port.counters.mss_clamped += 1;
                Cow::Owned(copy)
            }
            None => Cow::Borrowed(frame),
        };
        out.push(Forward {
            port: egress,
            frame,
        });
    }
}

/// Whether split horizon keeps a frame from `ingress` off `egress`: the
/// peers form a full mesh, so a frame from one tunnel has reached every other
/// peer directly already.
fn split_horizon_blocks(hub: bool, ingress: PortId, egress: PortId) -> bool {
    !hub && ingress.is_tunnel() && egress.is_tunnel()
}

impl Port {
    fn new(mss_clamp: Option<MssClamp>, flood_limit: Option<FloodLimit>) -> Port {
        Port {
            counters: PortCounters::default(),
            flood_bucket: TokenBucket::full(flood_limit),
            mss_clamp,
        }
    }
}

/// Tokens are counted in billionths so that refilling by elapsed nanoseconds
/// times frames per second stays in integers.
const NANOS_PER_TOKEN: u64 = 1_000_000_000;

#[derive(Debug)]
struct TokenBucket {
    credit: u64,
    last_refill: Duration,
}

impl TokenBucket {
    fn full(limit: Option<FloodLimit>) -> TokenBucket {
        TokenBucket {
            credit: limit.map_or(0, |l| u64::from(l.burst) * NANOS_PER_TOKEN),
            last_refill: Duration::ZERO,
        }
    }

    /// Refills up to `now` and takes one token if there is one.
    fn take(&mut self, limit: FloodLimit, now: Duration) -> bool {
        let capacity = u64::from(limit.burst) * NANOS_PER_TOKEN;
        // A clock that went back refills nothing.
        let elapsed = now.saturating_sub(self.last_refill).as_nanos();
        self.last_refill = self.last_refill.max(now);
        let refill = elapsed.saturating_mul(u128::from(limit.frames_per_second));
        let credit = (u128::from(self.credit) + refill).min(u128::from(capacity));
        // At most `capacity`, which came from a u64.
        self.credit = credit as u64;
        if self.credit >= NANOS_PER_TOKEN {
            self.credit -= NANOS_PER_TOKEN;
            true
        } else {
            false
        }
    }
}
