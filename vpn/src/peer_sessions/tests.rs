//! Two real `PeerSessions` (real boringtun crypto) passing datagrams in
//! memory, in virtual time.

use super::*;
use crate::etherip::tests::ARP_REQUEST;
use boringtun::noise::Tunn;
use std::net::Ipv4Addr;

const A_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
const B_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2));
/// A's number for its peer B, and B's for A: different on purpose.
const A_TUNNEL: TunnelId = TunnelId(3);
const B_TUNNEL: TunnelId = TunnelId(7);
const TICK: Duration = Duration::from_millis(100);

fn secret(seed: u8) -> StaticSecret {
    StaticSecret::from([seed; 32])
}

fn public(seed: u8) -> [u8; 32] {
    PublicKey::from(&secret(seed)).to_bytes()
}

/// A session from key `local` to key `peer`.
fn keys(local: u8, peer: u8) -> SessionKeys {
    SessionKeys {
        local: secret(local),
        peer: public(peer),
        preshared_key: None,
        persistent_keepalive: None,
        tunnel: TunnelAddrs::V4 {
            local: Ipv4Addr::new(169, 254, 97, local),
            peer: Ipv4Addr::new(169, 254, 97, peer),
        },
    }
}

/// A frame numbered `n`.
fn frame(n: u8) -> Vec<u8> {
    let mut f = ARP_REQUEST.to_vec();
    f[41] = n;
    f
}

fn is_initiation(d: &[u8]) -> bool {
    d.len() == 148 && d[0] == 1
}

/// One appliance with one peer, and what it saw.
struct Side {
    keys: LocalKeys,
    peer: PeerSessions,
    addr: IpAddr,
    delivered: Vec<Vec<u8>>,
    /// Datagrams that named no session of the peer.
    refused: usize,
    errors: Vec<String>,
    rotations_complete: usize,
}

impl Side {
    fn new(local: u8, peer: u8, tunnel: TunnelId, addr: IpAddr) -> Side {
        Side {
            keys: LocalKeys::new(Some(secret(local))),
            peer: PeerSessions::new(tunnel, keys(local, peer)),
            addr,
            delivered: Vec::new(),
            refused: 0,
            errors: Vec::new(),
            rotations_complete: 0,
        }
    }

    /// A reload with a new local key `local` (and peer key `peer`), as the
    /// endpoint does it.
    fn rotate_local(&mut self, local: u8, peer: u8) {
        self.keys
            .rotate(Some(secret(local)), self.peer.rotation_unfinished());
        self.peer.rotate(keys(local, peer));
    }

    /// The generation a datagram is for, as the endpoint routes it.
    fn route(&self, datagram: &[u8]) -> Option<u8> {
        let packet = Tunn::parse_incoming_packet(datagram).ok()?;
        match &packet {
            Packet::HandshakeInit(init) => {
                let who = self.keys.initiator(init)?;
                self.peer.generation_for(&who)
            }
            other => {
                let index = SessionIndex::of_packet(other)?;
                (index.tunnel == self.peer.tunnel()).then_some(index.generation)
            }
        }
    }

    /// Takes one datagram from the peer at `from`; returns the replies.
    fn receive(&mut self, now: Instant, from: IpAddr, datagram: &[u8]) -> Vec<Vec<u8>> {
        let mut out = vec![0u8; 2048];
        let mut replies = Vec::new();
        let Some(generation) = self.route(datagram) else {
            self.refused += 1;
            return replies;
        };
        match self
            .peer
            .decapsulate(now, generation, from, datagram, &mut out)
        {
            None => self.refused += 1,
            Some(Received { action, roam }) => match action {
                Action::DeliverFrame(f) => {
                    assert!(roam, "a delivered frame proves its source");
                    self.delivered.push(f.to_vec())
                }
                Action::SendToPeer(d) => replies.push(d.to_vec()),
                Action::Nothing => {}
                Action::Error(e) => {
                    assert!(!roam, "an error proves nothing");
                    self.errors.push(e.to_string())
                }
            },
        }
        let queued = self.peer.queued_pending();
        while let Some(d) = self.peer.poll_queued(&mut out) {
            assert!(
                queued,
                "poll_queued gave a frame queued_pending did not announce"
            );
            replies.push(d.to_vec());
        }
        replies
    }

    /// Sends a frame; returns the datagrams that leave.
    fn send(&mut self, now: Instant, frame: &[u8]) -> Vec<Vec<u8>> {
        let mut out = vec![0u8; self.peer.out_len(frame.len())];
        let mut sent = Vec::new();
        match self.peer.encapsulate(now, frame, &mut out) {
            Action::SendToPeer(d) => sent.push(d.to_vec()),
            Action::Nothing => {}
            other => panic!("encapsulate returned {other:?}"),
        }
        let mut handshake = [0u8; 256];
        if let Some(d) = self.peer.poll_handshake(&mut handshake) {
            sent.push(d.to_vec());
        }
        sent
    }

    /// Runs the timers; returns the datagrams that leave.
    fn tick(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let mut out = vec![0u8; 2048];
        let mut sent = Vec::new();
        while let Some(action) = self.peer.poll_timers(now, &mut out) {
            match action {
                TimerAction::SendToPeer(d) => sent.push(d.to_vec()),
                TimerAction::RotationComplete => self.rotations_complete += 1,
                TimerAction::Error(e) => self.errors.push(e.to_string()),
            }
        }
        sent
    }
}

/// Carries datagrams both ways until neither side has more to send.
fn pump(a: &mut Side, b: &mut Side, now: Instant, to_b: Vec<Vec<u8>>, to_a: Vec<Vec<u8>>) {
    let (mut to_a, mut to_b) = (to_a, to_b);
    while !to_a.is_empty() || !to_b.is_empty() {
        for d in std::mem::take(&mut to_b) {
            to_a.extend(b.receive(now, a.addr, &d));
        }
        for d in std::mem::take(&mut to_a) {
            to_b.extend(a.receive(now, b.addr, &d));
        }
    }
}

/// A sends `frame` to B (and B to A with `reverse`), both ways delivered.
fn exchange(a: &mut Side, b: &mut Side, now: Instant, n: u8) {
    let sent = a.send(now, &frame(n));
    pump(a, b, now, sent, vec![]);
    assert_eq!(b.delivered.last(), Some(&frame(n)), "A to B, frame {n}");
    let sent = b.send(now, &frame(n + 100));
    pump(a, b, now, vec![], sent);
    assert_eq!(
        a.delivered.last(),
        Some(&frame(n + 100)),
        "B to A, frame {n}"
    );
}

/// A (key 1) and B (key 2) after a first handshake at `t0`.
fn handshaken(t0: Instant) -> (Side, Side) {
    let mut a = Side::new(1, 2, A_TUNNEL, A_ADDR);
    let mut b = Side::new(2, 1, B_TUNNEL, B_ADDR);
    exchange(&mut a, &mut b, t0, 0);
    assert!(
        a.errors.is_empty() && b.errors.is_empty(),
        "{a_e:?} {b_e:?}",
        a_e = a.errors,
        b_e = b.errors
    );
    (a, b)
}

/// The session a data datagram is for, by its receiver index.
fn index_of(datagram: &[u8]) -> SessionIndex {
    let packet = Tunn::parse_incoming_packet(datagram).expect("a WireGuard message");
    SessionIndex::of_packet(&packet).expect("not an initiation")
}

/// Ticks `side` every 100 ms from `from` to `until` (inclusive), dropping
/// what it sends; returns when (after `from`) it sent initiations.
fn tick_alone(side: &mut Side, from: Instant, until: Instant) -> Vec<Duration> {
    let mut initiations = Vec::new();
    let mut now = from;
    while now <= until {
        for d in side.tick(now) {
            if is_initiation(&d) {
                initiations.push(now - from);
            }
        }
        now += TICK;
    }
    initiations
}

#[test]
fn rotation_on_both_sides_keeps_frames_flowing_on_the_old_session_until_the_new_is_up() {
    let t0 = Instant::now();
    let (mut a, mut b) = handshaken(t0);

    // A gets key 11; B does not know yet.
    let t1 = t0 + Duration::from_secs(1);
    a.rotate_local(11, 2);
    assert!(a.peer.rotation_unfinished());
    assert_eq!(
        a.peer.sending_generation(),
        0,
        "the old session still encrypts"
    );
    let sent = a.send(t1, &frame(1));
    assert_eq!(
        sent.len(),
        2,
        "data on the old session and the new session's initiation"
    );
    assert_eq!(
        index_of(&sent[0]),
        SessionIndex {
            tunnel: B_TUNNEL,
            generation: 0
        }
    );
    assert!(is_initiation(&sent[1]));
    pump(&mut a, &mut b, t1, sent, vec![]);
    assert_eq!(b.delivered.last(), Some(&frame(1)));
    assert_eq!(b.refused, 1, "B does not know key 11 yet");
    let sent = b.send(t1, &frame(2));
    pump(&mut a, &mut b, t1, vec![], sent);
    assert_eq!(a.delivered.last(), Some(&frame(2)));

    // A keeps asking, every 3 s after the first tick, while B ignores it.
    let retries = tick_alone(&mut a, t1 + TICK, t1 + Duration::from_secs(4));
    assert_eq!(retries, [Duration::ZERO, Duration::from_secs(3)]);
    assert_eq!(a.peer.sending_generation(), 0);

    // B learns A's new key; its next frame brings both new sessions up.
    let t2 = t1 + Duration::from_secs(5);
    b.peer.rotate(keys(2, 11));
    assert_eq!(b.peer.sending_generation(), 0);
    let sent = b.send(t2, &frame(3));
    assert_eq!(sent.len(), 2);
    pump(&mut a, &mut b, t2, vec![], sent);
    assert_eq!(
        a.delivered.last(),
        Some(&frame(3)),
        "sent on the old session"
    );
    assert!(
        a.errors.is_empty() && b.errors.is_empty(),
        "{:?} {:?}",
        a.errors,
        b.errors
    );
    for side in [&a, &b] {
        assert_eq!(side.peer.generation(), 1);
        assert_eq!(
            side.peer.sending_generation(),
            1,
            "the new session encrypts"
        );
        assert!(!side.peer.rotation_unfinished() && side.peer.rotating());
    }
    let sent = a.send(t2, &frame(4));
    assert_eq!(
        index_of(&sent[0]),
        SessionIndex {
            tunnel: B_TUNNEL,
            generation: 1
        }
    );
    pump(&mut a, &mut b, t2, sent, vec![]);
    assert_eq!(b.delivered.last(), Some(&frame(4)));
    exchange(&mut a, &mut b, t2, 5);

    // After the grace period, both forget the old session.
    tick_alone(&mut a, t2, t2 + ROTATION_GRACE);
    tick_alone(&mut b, t2, t2 + ROTATION_GRACE);
    for side in [&a, &b] {
        assert_eq!(side.rotations_complete, 1);
        assert!(!side.peer.rotating());
    }
    exchange(&mut a, &mut b, t2 + ROTATION_GRACE, 6);
    assert!(
        a.errors.is_empty() && b.errors.is_empty(),
        "{:?} {:?}",
        a.errors,
        b.errors
    );
}

#[test]
fn a_second_rotation_before_the_peer_learns_keeps_the_working_session() {
    let t0 = Instant::now();
    let (mut a, mut b) = handshaken(t0);
    let t1 = t0 + Duration::from_secs(1);
    a.rotate_local(11, 2);
    let sent = a.send(t1, &frame(1));
    pump(&mut a, &mut b, t1, sent, vec![]);
    assert_eq!(b.delivered.last(), Some(&frame(1)));

    // Key 12 replaces key 11, which was never used.
    a.rotate_local(12, 2);
    assert_eq!(a.peer.generation(), 2);
    assert_eq!(
        a.peer.sending_generation(),
        0,
        "generation 0 still carries frames"
    );
    exchange(&mut a, &mut b, t1, 2);
    let refused = b.refused;
    assert!(
        refused >= 2,
        "B refused both initiations, for keys 11 and 12"
    );

    // Initiations still made for key 1 are A's; for key 11 no longer.
    let mut out = [0u8; 256];
    for (seed, known) in [(1, true), (11, false), (12, true)] {
        let mut stale = Session::new(
            secret(2),
            PublicKey::from(public(seed)),
            None,
            None,
            9,
            keys(2, seed).tunnel,
        );
        let Action::SendToPeer(init) = stale.initiate_handshake(&mut out, false) else {
            panic!("no initiation")
        };
        let Ok(Packet::HandshakeInit(init)) = Tunn::parse_incoming_packet(init) else {
            panic!("not an initiation")
        };
        let who = a.keys.initiator(&init);
        assert_eq!(who.is_some(), known, "initiation for key {seed}");
        if let Some(who) = who {
            assert_eq!(who.local.to_bytes(), public(seed));
            assert_eq!(who.peer, public(2));
        }
    }

    // B learns key 12: generation 2 comes up at A, 1 at B.
    let t2 = t1 + Duration::from_secs(2);
    b.peer.rotate(keys(2, 12));
    let sent = b.send(t2, &frame(3));
    pump(&mut a, &mut b, t2, vec![], sent);
    assert_eq!(a.delivered.last(), Some(&frame(3)));
    assert_eq!(a.peer.sending_generation(), 2);
    assert_eq!(b.peer.sending_generation(), 1);
    let sent = a.send(t2, &frame(4));
    assert_eq!(
        index_of(&sent[0]),
        SessionIndex {
            tunnel: B_TUNNEL,
            generation: 1
        }
    );
    pump(&mut a, &mut b, t2, sent, vec![]);
    assert_eq!(b.delivered.last(), Some(&frame(4)));
    exchange(&mut a, &mut b, t2, 5);
    assert!(
        a.errors.is_empty() && b.errors.is_empty(),
        "{:?} {:?}",
        a.errors,
        b.errors
    );
}

#[test]
fn a_handshake_is_retried_every_second_while_frames_wait_then_they_all_arrive() {
    let t0 = Instant::now();
    let mut a = Side::new(1, 2, A_TUNNEL, A_ADDR);
    let mut b = Side::new(2, 1, B_TUNNEL, B_ADDR);

    // The path is down: a frame every 100 ms for 3.5 s, all datagrams lost.
    let mut initiations = Vec::new();
    let mut sent_frames = Vec::new();
    for step in 0..60u32 {
        let now = t0 + TICK * step;
        let mut out = Vec::new();
        if step <= 35 {
            let f = frame(step as u8);
            out.extend(a.send(now, &f));
            sent_frames.push(f);
        }
        out.extend(a.tick(now));
        for d in out {
            assert!(
                is_initiation(&d),
                "only initiations leave without a session"
            );
            initiations.push(now - t0);
        }
    }
    let secs = |s: &[u64]| {
        s.iter()
            .map(|&s| Duration::from_secs(s))
            .collect::<Vec<_>>()
    };
    // The first frame's own, the first paced one, then one a second while
    // frames wait and for one second after the last (at 3.5 s).
    assert_eq!(initiations, secs(&[0, 0, 1, 2, 3, 4]));

    // The path is back; the next frame's wait brings the next retry.
    let t1 = t0 + Duration::from_secs(6);
    let last = frame(200);
    let mut out = a.send(t1, &last);
    sent_frames.push(last);
    assert!(out.is_empty(), "a handshake is under way");
    out.extend(a.tick(t1));
    assert_eq!(out.len(), 1);
    assert!(is_initiation(&out[0]));
    pump(&mut a, &mut b, t1, out, vec![]);
    assert_eq!(b.delivered, sent_frames, "every waiting frame, in order");
    assert!(
        a.errors.is_empty() && b.errors.is_empty(),
        "{:?} {:?}",
        a.errors,
        b.errors
    );
    // Up: no more initiations.
    assert!(tick_alone(&mut a, t1 + TICK, t1 + Duration::from_secs(5)).is_empty());
}

#[test]
fn the_old_session_decrypts_for_the_grace_period_then_is_refused() {
    let t0 = Instant::now();
    let (mut a, mut b) = handshaken(t0);
    // Two frames on the old session, still in flight during the rotation.
    let late: Vec<Vec<u8>> = (10..12).flat_map(|n| a.send(t0, &frame(n))).collect();
    assert_eq!(late.len(), 2);

    let t1 = t0 + Duration::from_secs(1);
    a.rotate_local(11, 2);
    b.peer.rotate(keys(2, 11));
    exchange(&mut a, &mut b, t1, 1);
    assert_eq!(b.peer.sending_generation(), 1);
    assert!(b.peer.rotating() && !b.peer.rotation_unfinished());

    // 5 s into the grace period, the first late frame still gets in.
    let t2 = t1 + Duration::from_secs(5);
    assert!(b.receive(t2, A_ADDR, &late[0]).is_empty());
    assert_eq!(b.delivered.last(), Some(&frame(10)));
    assert!(tick_alone(&mut b, t1, t1 + ROTATION_GRACE - TICK).is_empty());
    assert_eq!(b.rotations_complete, 0);
    tick_alone(&mut b, t1 + ROTATION_GRACE, t1 + ROTATION_GRACE);
    assert_eq!(b.rotations_complete, 1);

    // After it, the second is refused: no session has its generation.
    assert_eq!(index_of(&late[1]).generation, 0);
    let refused = b.refused;
    assert!(b.receive(t1 + ROTATION_GRACE, A_ADDR, &late[1]).is_empty());
    assert_eq!(b.refused, refused + 1);
    assert_eq!(b.delivered.last(), Some(&frame(10)), "nothing delivered");
    assert!(b.errors.is_empty(), "{:?}", b.errors);
}

#[test]
fn a_receiver_index_names_the_peer_and_the_session_generation() {
    let index = SessionIndex {
        tunnel: TunnelId(0x1234),
        generation: 0xab,
    };
    assert_eq!(index.local_index(), 0x12_34ab);
    // boringtun adds its own 8-bit counter below.
    assert_eq!(SessionIndex::from_receiver_index(0x1234_ab05), index);
    assert_eq!(
        SessionIndex::from_receiver_index(u32::MAX),
        SessionIndex {
            tunnel: TunnelId(0xffff),
            generation: 0xff
        }
    );

    let t0 = Instant::now();
    let (mut a, mut b) = handshaken(t0);
    let to_b = a.send(t0, &frame(1)).remove(0);
    let to_a = b.send(t0, &frame(2)).remove(0);
    assert_eq!(
        index_of(&to_b),
        SessionIndex {
            tunnel: B_TUNNEL,
            generation: 0
        }
    );
    assert_eq!(
        index_of(&to_a),
        SessionIndex {
            tunnel: A_TUNNEL,
            generation: 0
        }
    );

    // A generation the peer does not have: dropped, and nothing consumed.
    let mut out = vec![0u8; 2048];
    assert!(b.peer.decapsulate(t0, 5, A_ADDR, &to_b, &mut out).is_none());
    assert!(matches!(
        b.peer.decapsulate(t0, 0, A_ADDR, &to_b, &mut out),
        Some(Received { action: Action::DeliverFrame(f), roam: true }) if f == frame(1)
    ));
    // A tunnel B does not number A with: no route.
    let mut foreign = to_a.clone();
    foreign[6] ^= 0x01;
    assert_eq!(index_of(&foreign).tunnel, TunnelId(A_TUNNEL.0 ^ 1));
    assert_eq!(a.route(&foreign), None);
    assert_eq!(a.route(&to_a), Some(0));

    // After a rotation, data names generation 1.
    a.rotate_local(11, 2);
    b.peer.rotate(keys(2, 11));
    exchange(&mut a, &mut b, t0, 3);
    let to_b = a.send(t0, &frame(4)).remove(0);
    assert_eq!(
        index_of(&to_b),
        SessionIndex {
            tunnel: B_TUNNEL,
            generation: 1
        }
    );
    assert_eq!(b.route(&to_b), Some(1));
}
