//! One WireGuard peer's sessions across key rotations, sans IO.
//!
//! [`PeerSessions`] holds what the endpoint knows about one peer beyond a
//! single [`Session`]:
//!
//! * the **current** session and, during a key rotation, the **previous**
//!   one, each with a generation number;
//! * **rotation**: [`rotate`](PeerSessions::rotate) makes a new current
//!   session and keeps the old one, which carries frames both ways until the
//!   new one has completed a handshake (the other side may be reconfigured
//!   much later), then lingers [`ROTATION_GRACE`] for packets in flight. A
//!   second rotation before the first completes replaces only the new
//!   session: the one that works stays;
//! * **handshake pacing**: while frames wait and no session can carry them,
//!   an initiation leaves at most every [`HANDSHAKE_RETRY`]; an unfinished
//!   rotation asks again every [`ROTATION_RETRY`];
//! * **index routing**: each session's 24-bit local index is a
//!   [`SessionIndex`] (the peer's tunnel and the session's generation), so a
//!   handshake response, cookie reply or data packet names its peer and
//!   session. Initiations carry no index of ours; [`LocalKeys::initiator`]
//!   and [`PeerSessions::generation_for`] find theirs by key.
//!
//! Every call takes `now` and borrows the caller's output buffer; results are
//! [`Action`]s and [`TimerAction`]s for the shell to carry out. Calls that
//! may produce more than one datagram are followed by a `poll_*` call that the
//! shell repeats until it returns `None`.
//!
//! # Time
//!
//! The decisions made here (pacing, rotation retries, lingering) use only the
//! `now` passed in, so the tests run them in virtual time. boringtun's `Tunn`
//! inside each [`Session`] still reads the OS clock for its own timers
//! (rekeying, expiry, its 5 s handshake retry) and for the age of a session:
//! boringtun 0.7 has no way to pass the time in, only a process-wide mock
//! clock behind a cargo feature, which would change the clock of the real
//! endpoint too whenever the feature is unified into a build. Tests that run
//! in milliseconds never reach those timers.

use std::net::IpAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{HandshakeInit, Packet};
use hinan_dataplane::bridge::TunnelId;

use crate::ip::TunnelAddrs;
use crate::session::{Action, PublicKey, Session, SessionError, StaticSecret};

/// How long the previous session of a rotated peer still decrypts packets
/// once the new one is up.
pub const ROTATION_GRACE: Duration = Duration::from_secs(10);
/// WireGuard retries an unanswered handshake every 5 s (REKEY_TIMEOUT).
/// While frames wait for a peer without a usable session, hinan retries
/// every second instead, so a tunnel is back within about a second of the
/// path returning (a session younger than 180 s needs no handshake at all).
pub const HANDSHAKE_RETRY: Duration = Duration::from_secs(1);
/// How often the new session of an unfinished key rotation re-sends its
/// handshake initiation.
pub const ROTATION_RETRY: Duration = Duration::from_secs(3);
/// WireGuard's REJECT_AFTER_TIME: a session older than this carries nothing.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(180);

/// WireGuard's message types.
const MSG_INIT: u8 = 1;
const MSG_RESPONSE: u8 = 2;
const MSG_COOKIE: u8 = 3;
const MSG_DATA: u8 = 4;

/// Which peer and which of its sessions a local session index names.
///
/// The index is `tunnel << 8 | generation` (24 bits); boringtun shifts it
/// left by 8 bits for its own session counter, so the receiver index in a
/// packet is `tunnel << 16 | generation << 8 | counter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionIndex {
    pub tunnel: TunnelId,
    pub generation: u8,
}

impl SessionIndex {
    /// The 24-bit index given to [`Session::new`].
    pub fn local_index(self) -> u32 {
        (u32::from(self.tunnel.0) << 8) | u32::from(self.generation)
    }

    /// The session a packet's receiver index (as boringtun writes it) names.
    pub fn from_receiver_index(receiver: u32) -> SessionIndex {
        let index = receiver >> 8;
        SessionIndex {
            tunnel: TunnelId((index >> 8) as u16),
            generation: (index & 0xff) as u8,
        }
    }

    /// The session a handshake response, cookie reply or data packet is
    /// for; `None` for an initiation, which names only the sender's index.
    pub fn of_packet(packet: &Packet<'_>) -> Option<SessionIndex> {
        let receiver = match packet {
            Packet::HandshakeInit(_) => return None,
            Packet::HandshakeResponse(p) => p.receiver_idx,
            Packet::PacketCookieReply(p) => p.receiver_idx,
            Packet::PacketData(p) => p.receiver_idx,
        };
        Some(SessionIndex::from_receiver_index(receiver))
    }
}

/// Who sent a handshake initiation: the local key it was made for and the
/// sender's static public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Initiator {
    pub local: PublicKey,
    pub peer: [u8; 32],
}

/// The appliance's own WireGuard keys: the current one and, after a
/// rotation, the one before, which peers not yet reconfigured still use.
pub struct LocalKeys {
    current: Option<(StaticSecret, PublicKey)>,
    previous: Option<(StaticSecret, PublicKey)>,
}

impl std::fmt::Debug for LocalKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKeys")
            .field("current", &self.current.as_ref().map(|(_, p)| p))
            .field("previous", &self.previous.as_ref().map(|(_, p)| p))
            .finish()
    }
}

impl LocalKeys {
    pub fn new(current: Option<StaticSecret>) -> LocalKeys {
        LocalKeys {
            current: current.map(with_public),
            previous: None,
        }
    }

    pub fn current_public(&self) -> Option<PublicKey> {
        self.current.as_ref().map(|(_, p)| *p)
    }

    /// Makes `new` the current key. The old one becomes "previous", unless
    /// a rotation is still unfinished (`rotation_unfinished`: some peer's
    /// new session has not come up): then the key still in use stays
    /// previous, and the intermediate one, never used, is forgotten.
    pub fn rotate(&mut self, new: Option<StaticSecret>, rotation_unfinished: bool) {
        let current = self.current.take();
        if !rotation_unfinished || self.previous.is_none() {
            self.previous = current;
        }
        self.current = new.map(with_public);
    }

    /// Which of the local keys an initiation was made for, and by whom;
    /// `None` if it opens with neither.
    pub fn initiator(&self, init: &HandshakeInit<'_>) -> Option<Initiator> {
        [self.current.as_ref(), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find_map(|(secret, public)| {
                let half = parse_handshake_anon(secret, public, init).ok()?;
                Some(Initiator {
                    local: *public,
                    peer: half.peer_static_public,
                })
            })
    }
}

fn with_public(secret: StaticSecret) -> (StaticSecret, PublicKey) {
    let public = PublicKey::from(&secret);
    (secret, public)
}

/// What one WireGuard session is made of.
#[derive(Clone)]
pub struct SessionKeys {
    pub local: StaticSecret,
    pub peer: [u8; 32],
    pub preshared_key: Option<[u8; 32]>,
    pub persistent_keepalive: Option<u16>,
    pub tunnel: TunnelAddrs,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys")
            .field("local", &PublicKey::from(&self.local))
            .field("peer", &PublicKey::from(self.peer))
            .field("tunnel", &self.tunnel)
            .finish_non_exhaustive()
    }
}

/// A session with the keys it was made with.
struct Keyed {
    session: Session,
    generation: u8,
    local: PublicKey,
    peer: [u8; 32],
}

impl Keyed {
    fn new(tunnel: TunnelId, generation: u8, keys: SessionKeys) -> Keyed {
        let local = PublicKey::from(&keys.local);
        Keyed {
            session: Session::new(
                keys.local,
                PublicKey::from(keys.peer),
                keys.preshared_key,
                keys.persistent_keepalive,
                SessionIndex { tunnel, generation }.local_index(),
                keys.tunnel,
            ),
            generation,
            local,
            peer: keys.peer,
        }
    }

    fn is_up(&self) -> bool {
        self.session.time_since_last_handshake().is_some()
    }
}

/// The session before a key rotation.
struct Previous {
    keyed: Keyed,
    /// When the current session came up, if it has.
    superseded: Option<Instant>,
}

/// What [`PeerSessions::decapsulate`] made of a datagram.
#[derive(Debug)]
pub struct Received<'a> {
    pub action: Action<'a>,
    /// The datagram proved to come from the peer (a delivered frame, a
    /// keepalive, an answered or answering handshake; never a cookie reply,
    /// which only checks the public mac1): its source may become the peer's
    /// endpoint (WireGuard's roaming).
    pub roam: bool,
}

/// Where [`PeerSessions::poll_timers`] goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerStep {
    Rotation,
    Handshake,
    TickCurrent,
    TickPrevious,
    Done,
}

/// What a timer run asks of the shell.
#[derive(Debug)]
pub enum TimerAction<'a> {
    /// Send this datagram to the peer's endpoint.
    SendToPeer(&'a [u8]),
    /// The previous session of a rotation is gone: the rotation is complete.
    RotationComplete,
    /// A session's timer reported this (for example `ConnectionExpired`).
    Error(SessionError),
}

/// One peer's WireGuard sessions: current, previous during a key rotation,
/// and the pacing of handshakes.
pub struct PeerSessions {
    tunnel: TunnelId,
    current: Keyed,
    previous: Option<Previous>,
    /// The current session is new and has not asked for a handshake yet.
    kick: bool,
    /// When a frame last waited for this peer.
    last_send_attempt: Option<Instant>,
    /// When the last forced handshake initiation left.
    last_forced_handshake: Option<Instant>,
    /// The generation whose queued frames may leave now (set by
    /// `decapsulate`, drained by `poll_queued`).
    flush: Option<u8>,
    timer_step: TimerStep,
}

impl std::fmt::Debug for PeerSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerSessions")
            .field("tunnel", &self.tunnel)
            .field("generation", &self.current.generation)
            .field(
                "previous",
                &self.previous.as_ref().map(|p| p.keyed.generation),
            )
            .finish_non_exhaustive()
    }
}

impl PeerSessions {
    /// The sessions of the peer behind `tunnel`, starting with generation 0.
    /// Nothing is sent until the first frame or timer.
    pub fn new(tunnel: TunnelId, keys: SessionKeys) -> PeerSessions {
        PeerSessions {
            tunnel,
            current: Keyed::new(tunnel, 0, keys),
            previous: None,
            kick: false,
            last_send_attempt: None,
            last_forced_handshake: None,
            flush: None,
            timer_step: TimerStep::Rotation,
        }
    }

    pub fn tunnel(&self) -> TunnelId {
        self.tunnel
    }

    /// The current session's generation.
    pub fn generation(&self) -> u8 {
        self.current.generation
    }

    /// Starts a key rotation: a new current session with `keys`, the next
    /// generation. The old session stays as previous; if a rotation is
    /// already unfinished, the previous session (the one that works) stays
    /// and the unfinished new one is dropped. The new session's handshake
    /// starts with the next frame (see [`poll_handshake`](Self::poll_handshake)).
    pub fn rotate(&mut self, keys: SessionKeys) {
        let generation = self.current.generation.wrapping_add(1);
        let old = std::mem::replace(&mut self.current, Keyed::new(self.tunnel, generation, keys));
        self.kick = true;
        self.last_forced_handshake = None;
        if !self.rotation_unfinished() {
            self.previous = Some(Previous {
                keyed: old,
                superseded: None,
            });
        }
    }

    /// A rotation waits for its new session's first handshake.
    pub fn rotation_unfinished(&self) -> bool {
        self.previous
            .as_ref()
            .is_some_and(|p| p.superseded.is_none())
    }

    /// A previous session exists: the rotation is unfinished, or complete
    /// and lingering.
    pub fn rotating(&self) -> bool {
        self.previous.is_some()
    }

    /// Time since the current session's handshake (boringtun's clock), or
    /// `None` without one.
    pub fn last_handshake(&self) -> Option<Duration> {
        self.current.session.time_since_last_handshake()
    }

    /// The generation of the session that carries outgoing frames: the
    /// previous one while the current one has no handshake yet.
    pub fn sending_generation(&self) -> u8 {
        self.sending().generation
    }

    fn sending(&self) -> &Keyed {
        match &self.previous {
            Some(p) if !self.current.is_up() => &p.keyed,
            _ => &self.current,
        }
    }

    fn sending_mut(&mut self) -> &mut Keyed {
        let current_up = self.current.is_up();
        match &mut self.previous {
            Some(p) if !current_up => &mut p.keyed,
            _ => &mut self.current,
        }
    }

    fn keyed(&mut self, generation: u8) -> Option<&mut Keyed> {
        if generation == self.current.generation {
            return Some(&mut self.current);
        }
        match &mut self.previous {
            Some(p) if p.keyed.generation == generation => Some(&mut p.keyed),
            _ => None,
        }
    }

    /// The output buffer [`encapsulate`](Self::encapsulate) needs for a
    /// frame of `frame_len` bytes.
    pub fn out_len(&self, frame_len: usize) -> usize {
        self.sending().session.out_len(frame_len)
    }

    /// Encrypts a frame for the peer with the session that carries frames
    /// (see [`Session::encapsulate`]); without one it waits in that
    /// session's queue. Then call [`poll_handshake`](Self::poll_handshake).
    pub fn encapsulate<'a>(&mut self, now: Instant, frame: &[u8], out: &'a mut [u8]) -> Action<'a> {
        self.last_send_attempt = Some(now);
        self.sending_mut().session.encapsulate(frame, out)
    }

    /// [`poll_handshake`](Self::poll_handshake) has an initiation to give.
    pub fn handshake_pending(&self) -> bool {
        self.kick
    }

    /// The handshake initiation a rotation's new session sends with the
    /// first frame after [`rotate`](Self::rotate); boringtun's timers and
    /// [`poll_timers`](Self::poll_timers) retry it. `out` must hold
    /// [`crate::session::MIN_OUT_LEN`] bytes.
    pub fn poll_handshake<'a>(&mut self, out: &'a mut [u8]) -> Option<&'a [u8]> {
        if !std::mem::take(&mut self.kick) {
            return None;
        }
        match self.current.session.initiate_handshake(out, false) {
            Action::SendToPeer(d) => Some(d),
            _ => None,
        }
    }

    /// The generation of this peer's session an initiation belongs to, if
    /// any: the current session if made for the sender's key and the local
    /// key it used; else the previous session of an unfinished rotation if
    /// made with that local key, for the sender's key or (when the local key
    /// changed) for the key the current session expects.
    pub fn generation_for(&self, initiator: &Initiator) -> Option<u8> {
        let current = &self.current;
        if initiator.local == current.local && initiator.peer == current.peer {
            return Some(current.generation);
        }
        let previous = &self
            .previous
            .as_ref()
            .filter(|p| p.superseded.is_none())?
            .keyed;
        let peer_matches = initiator.peer == previous.peer
            || (previous.local != current.local && initiator.peer == current.peer);
        (initiator.local == previous.local && peer_matches).then_some(previous.generation)
    }

    /// Handles one datagram for the session of `generation` (from its
    /// [`SessionIndex`] or [`generation_for`](Self::generation_for)), from
    /// the peer's address `from`. `None`: this peer has no such session
    /// (stale, or forged); drop it.
    ///
    /// An initiation this session rejects is tried on the previous session
    /// of an unfinished rotation: the peer may not be reconfigured yet.
    /// Afterwards call [`poll_queued`](Self::poll_queued) until it returns
    /// `None` (after delivering a frame, which borrows `out`).
    pub fn decapsulate<'a>(
        &mut self,
        now: Instant,
        generation: u8,
        from: IpAddr,
        datagram: &[u8],
        out: &'a mut [u8],
    ) -> Option<Received<'a>> {
        let kind = datagram.first().copied();
        let is_init = kind == Some(MSG_INIT);
        let keyed = self.keyed(generation)?;
        let had_session = keyed.is_up();
        let placed = Placed::of(out, |out| keyed.session.decapsulate(from, datagram, out));
        let flush = match &placed {
            Placed::Deliver(_) => !had_session,
            Placed::Send(_) | Placed::Nothing => true,
            Placed::Error(_) => {
                let retry = is_init
                    && self.previous.as_ref().is_some_and(|p| {
                        p.keyed.generation != generation && p.superseded.is_none()
                    });
                if retry {
                    let previous = &mut self.previous.as_mut().expect("checked").keyed.session;
                    let retried = Placed::of(out, |out| previous.decapsulate(from, datagram, out));
                    if let Placed::Send(_) = retried {
                        return Some(Received {
                            action: retried.action(out),
                            roam: false,
                        });
                    }
                }
                return Some(Received {
                    action: placed.action(out),
                    roam: false,
                });
            }
        };
        // The initiator's first data lets a responder's queue leave; an
        // answered initiation does not: a responder may only send once the
        // initiator's first data arrived, and asking earlier would start a
        // handshake of its own that undoes the one under way.
        if flush && !is_init {
            self.flush = Some(generation);
        }
        self.note_current_up(now);
        let action = placed.action(out);
        let roam = match &action {
            Action::DeliverFrame(_) => true,
            Action::SendToPeer(reply) => {
                matches!(kind, Some(MSG_INIT | MSG_RESPONSE)) && reply.first() != Some(&MSG_COOKIE)
            }
            Action::Nothing => kind == Some(MSG_DATA),
            Action::Error(_) => false,
        };
        Some(Received { action, roam })
    }

    /// [`poll_queued`](Self::poll_queued) may have frames to give.
    pub fn queued_pending(&self) -> bool {
        self.flush.is_some()
    }

    /// The next frame queued while a handshake ran, now encrypted, if the
    /// last [`decapsulate`](Self::decapsulate) made a session able to carry
    /// it. Send each to where that datagram came from.
    pub fn poll_queued<'a>(&mut self, out: &'a mut [u8]) -> Option<&'a [u8]> {
        let generation = self.flush?;
        let sent = match self.keyed(generation) {
            Some(keyed) if keyed.is_up() => keyed.session.send_queued(out),
            _ => Action::Nothing,
        };
        match sent {
            Action::SendToPeer(d) => Some(d),
            _ => {
                self.flush = None;
                None
            }
        }
    }

    /// Marks when the current session of a rotation came up.
    fn note_current_up(&mut self, now: Instant) {
        let up = self.current.is_up();
        if let Some(p) = &mut self.previous {
            if up && p.superseded.is_none() {
                p.superseded = Some(now);
            }
        }
    }

    /// Runs the timers (about every 100 ms): the end of a rotation's
    /// lingering, paced handshake initiations, and both sessions' boringtun
    /// timers. Call it until it returns `None`; `out` must hold
    /// [`crate::session::MIN_OUT_LEN`] bytes.
    pub fn poll_timers<'a>(&mut self, now: Instant, out: &'a mut [u8]) -> Option<TimerAction<'a>> {
        loop {
            let step = self.timer_step;
            let placed = match step {
                TimerStep::Rotation => {
                    self.timer_step = TimerStep::Handshake;
                    self.note_current_up(now);
                    let lingered = self
                        .previous
                        .as_ref()
                        .and_then(|p| p.superseded)
                        .is_some_and(|t| now.saturating_duration_since(t) >= ROTATION_GRACE);
                    if lingered {
                        self.previous = None;
                        return Some(TimerAction::RotationComplete);
                    }
                    continue;
                }
                TimerStep::Handshake => {
                    self.timer_step = TimerStep::TickCurrent;
                    if !self.handshake_due(now) {
                        continue;
                    }
                    self.last_forced_handshake = Some(now);
                    let session = &mut self.current.session;
                    Placed::of(out, |out| session.initiate_handshake(out, true))
                }
                TimerStep::TickCurrent => {
                    self.timer_step = TimerStep::TickPrevious;
                    let session = &mut self.current.session;
                    Placed::of(out, |out| session.tick(out))
                }
                TimerStep::TickPrevious => {
                    self.timer_step = TimerStep::Done;
                    let Some(p) = &mut self.previous else {
                        continue;
                    };
                    let session = &mut p.keyed.session;
                    Placed::of(out, |out| session.tick(out))
                }
                TimerStep::Done => {
                    self.timer_step = TimerStep::Rotation;
                    return None;
                }
            };
            match placed {
                Placed::Send(_) => match placed.action(out) {
                    Action::SendToPeer(d) => return Some(TimerAction::SendToPeer(d)),
                    _ => unreachable!("a placed datagram stays one"),
                },
                // A forced initiation's error is boringtun's to report on
                // the next tick.
                Placed::Error(e) if step != TimerStep::Handshake => {
                    return Some(TimerAction::Error(e))
                }
                _ => {}
            }
        }
    }

    /// Whether a forced initiation is due: a rotation waiting for the
    /// other side keeps asking every few seconds until that side is
    /// reconfigured; a peer that frames wait for, every second.
    fn handshake_due(&self, now: Instant) -> bool {
        let since = |t: Instant| now.saturating_duration_since(t);
        let usable = self.last_handshake().is_some_and(|t| t < SESSION_LIFETIME);
        if usable {
            return false;
        }
        let forced_since = self.last_forced_handshake.map(since);
        if self.rotation_unfinished() {
            !self.kick && forced_since.is_none_or(|t| t >= ROTATION_RETRY)
        } else {
            let waiting = self
                .last_send_attempt
                .is_some_and(|t| since(t) < HANDSHAKE_RETRY);
            waiting && self.previous.is_none() && forced_since.is_none_or(|t| t >= HANDSHAKE_RETRY)
        }
    }
}

/// An [`Action`] with the place of its bytes in the output buffer instead of
/// a borrow of it, so that the buffer can be lent again when the call wrote
/// nothing worth keeping (the borrow checker cannot see that an error holds
/// no borrow).
enum Placed {
    Send(Range<usize>),
    Deliver(Range<usize>),
    Nothing,
    Error(SessionError),
}

impl Placed {
    fn of(out: &mut [u8], call: impl FnOnce(&mut [u8]) -> Action<'_>) -> Placed {
        let base = out.as_ptr() as usize;
        let place = |bytes: &[u8]| {
            let start = bytes.as_ptr() as usize - base;
            start..start + bytes.len()
        };
        match call(out) {
            Action::SendToPeer(d) => Placed::Send(place(d)),
            Action::DeliverFrame(f) => Placed::Deliver(place(f)),
            Action::Nothing => Placed::Nothing,
            Action::Error(e) => Placed::Error(e),
        }
    }

    fn action(self, out: &[u8]) -> Action<'_> {
        match self {
            Placed::Send(r) => Action::SendToPeer(&out[r]),
            Placed::Deliver(r) => Action::DeliverFrame(&out[r]),
            Placed::Nothing => Action::Nothing,
            Placed::Error(e) => Action::Error(e),
        }
    }
}

#[cfg(test)]
mod tests;
