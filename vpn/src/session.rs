//! One WireGuard peer, sans IO: Ethernet frames in and out on one side, UDP
//! payloads on the other.
//!
//! [`Session`] wraps boringtun's `noise::Tunn` (not its `device` module,
//! which owns sockets and a TUN device). Outgoing frames become
//! `IP(protocol 97) | EtherIP | frame` (see [`crate::ip`]) before `Tunn`
//! encrypts them, because `Tunn` only carries IPv4 and IPv6 packets; incoming
//! packets are taken apart the same way and only Ethernet frames come out.
//!
//! Every call borrows the caller's output buffer and returns an [`Action`]
//! that points into it; the shell sends, delivers or logs, and does the I/O.
//!
//! # What the shell must do
//!
//! * Send every [`Action::SendToPeer`] to the peer's UDP endpoint.
//! * After a [`decapsulate`](Session::decapsulate) that returned
//!   `SendToPeer`, call [`send_queued`](Session::send_queued) until it
//!   returns [`Action::Nothing`]: frames queued while the handshake ran leave
//!   that way.
//! * Call [`tick`](Session::tick) about every 250 ms (boringtun's own device
//!   does), to retry handshakes, rekey, and send keepalives.
//!
//! # Time and randomness are not injected
//!
//! Unlike hinan's other cores, this one does not take the time as an
//! argument: `Tunn` reads a monotonic clock (CLOCK_BOOTTIME on Linux) on
//! every call, the wall clock for the handshake's TAI64N timestamp, and the
//! OS random generator for ephemeral keys, and boringtun 0.7 offers no way to
//! pass them in (only a process-wide mock clock behind a cargo feature).
//! So the tests here exercise handshakes and data, but not the timers
//! (rekey after 120 s, expiry after 180 s), which need real time to pass.
//!
//! # Key rotation
//!
//! A `Session` is bound to one static key pair and one peer public key. To
//! rotate keys, build a new `Session` and drop the old one; the next frame
//! starts a fresh handshake. A handshake from the old key is then rejected
//! with `WrongKey`, and data from old sessions with `NoCurrentSession` or
//! `WrongIndex`.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::{Tunn, TunnResult};
pub use boringtun::x25519::{PublicKey, StaticSecret};

use crate::etherip::Compat;
use crate::ip::{self, IpError, TunnelAddrs};
use crate::mtu::WIREGUARD_DATA_OVERHEAD;

/// The smallest output buffer any call accepts: room for a handshake
/// initiation (148 bytes). Data needs more; see [`Session::out_len`].
pub const MIN_OUT_LEN: usize = 148;

/// What the shell does after a call.
#[derive(Debug)]
pub enum Action<'a> {
    /// Send these bytes to the peer as one UDP datagram.
    SendToPeer(&'a [u8]),
    /// Write this Ethernet frame to the bridged segment.
    DeliverFrame(&'a [u8]),
    /// Nothing to do: a keepalive arrived, a frame waits for the handshake,
    /// or no timer fired.
    Nothing,
    /// The input was dropped; log it (rate-limited: the network chooses how
    /// often this happens).
    Error(SessionError),
}

/// Why a session dropped a datagram or a frame.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("WireGuard: {}", describe(.0))]
    WireGuard(WireGuardError),
    #[error("decrypted packet from the peer dropped: {0}")]
    NotEtherIp(IpError),
    #[error("frame not sent: {0}")]
    Frame(IpError),
    #[error("output buffer of {have} bytes is too small: this call needs {need}")]
    BufferTooSmall { need: usize, have: usize },
}

fn describe(error: &WireGuardError) -> &'static str {
    use WireGuardError::*;
    match error {
        DestinationBufferTooSmall => "output buffer too small (a bug in hinan)",
        IncorrectPacketLength => "message has the wrong length",
        UnexpectedPacket => "message does not fit the handshake state",
        WrongPacketType => "unknown message type",
        WrongIndex => "data for a session index this peer does not have (stale after a rekey, or forged)",
        WrongKey => "handshake from a key other than the peer's configured public key",
        InvalidTai64nTimestamp => "handshake timestamp is malformed",
        WrongTai64nTimestamp => "handshake is not newer than the last one from this peer (a replay, or the peer's clock went back)",
        InvalidMac => "handshake MAC does not match (not meant for this key, or corrupted)",
        InvalidAeadTag => "decryption failed (wrong session key, or the packet was altered)",
        InvalidCounter => "data counter outside the replay window",
        DuplicateCounter => "data counter already seen (a replay)",
        InvalidPacket => "not a WireGuard message",
        NoCurrentSession => "no session for this data yet (handshake not complete, or keys rotated)",
        LockFailed => "internal lock failed",
        ConnectionExpired => "no handshake completed in time; the session expired (is the peer reachable?)",
        UnderLoad => "handshake dropped: too many handshakes this second",
    }
}

/// One peer's WireGuard session carrying Ethernet frames.
pub struct Session {
    tunn: Tunn,
    tunnel: TunnelAddrs,
    /// The IP packet being encrypted; `Tunn` cannot encrypt in place.
    plaintext: Vec<u8>,
    /// The longest plaintext handed to `Tunn`, which may sit in its queue.
    longest_plaintext: usize,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("tunnel", &self.tunnel)
            .field("longest_plaintext", &self.longest_plaintext)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session with one peer. Nothing is sent until the first frame or
    /// tick.
    ///
    /// * `preshared_key`: WireGuard's optional symmetric key.
    /// * `persistent_keepalive`: seconds between keepalives, to hold NAT
    ///   mappings open.
    /// * `index`: this session's 24-bit identifier, unique among the
    ///   appliance's sessions; boringtun shifts it left by 8 bits for its
    ///   session counter, so the top 8 bits are lost.
    /// * `tunnel`: the inner IP header's addresses and version. The peer's
    ///   packets may use either IP version; their addresses are not checked.
    pub fn new(
        static_private: StaticSecret,
        peer_public: PublicKey,
        preshared_key: Option<[u8; 32]>,
        persistent_keepalive: Option<u16>,
        index: u32,
        tunnel: TunnelAddrs,
    ) -> Self {
        Session {
            tunn: Tunn::new(
                static_private,
                peer_public,
                preshared_key,
                persistent_keepalive,
                index,
                None,
            ),
            tunnel,
            plaintext: Vec::new(),
            longest_plaintext: 0,
        }
    }

    /// The inner IP header's addresses.
    pub fn tunnel(&self) -> TunnelAddrs {
        self.tunnel
    }

    /// The output buffer [`encapsulate`](Self::encapsulate) needs for a frame
    /// of `frame_len` bytes.
    pub fn out_len(&self, frame_len: usize) -> usize {
        (self.tunnel.overhead() + frame_len + WIREGUARD_DATA_OVERHEAD).max(MIN_OUT_LEN)
    }

    /// Encrypts an Ethernet frame for the peer.
    ///
    /// Without a session yet, the frame is queued (boringtun keeps up to 256)
    /// and the result is a handshake initiation to send, or
    /// [`Action::Nothing`] if one is already under way. `out` must hold
    /// [`out_len`](Self::out_len) bytes.
    pub fn encapsulate<'a>(&mut self, frame: &[u8], out: &'a mut [u8]) -> Action<'a> {
        let need = self.out_len(frame.len());
        if out.len() < need {
            return Action::Error(SessionError::BufferTooSmall {
                need,
                have: out.len(),
            });
        }
        let len = self.tunnel.overhead() + frame.len();
        if self.plaintext.len() < len {
            self.plaintext.resize(len, 0);
        }
        let plaintext = match self.tunnel.wrap_frame(frame, &mut self.plaintext) {
            Ok(packet) => packet,
            Err(e) => return Action::Error(SessionError::Frame(e)),
        };
        self.longest_plaintext = self.longest_plaintext.max(plaintext.len());
        from_tunn(self.tunn.encapsulate(plaintext, out))
    }

    /// Sends the next frame queued during a handshake, if there is one and a
    /// session now exists. Call it after [`decapsulate`](Self::decapsulate)
    /// returns [`Action::SendToPeer`], until it returns [`Action::Nothing`].
    pub fn send_queued<'a>(&mut self, out: &'a mut [u8]) -> Action<'a> {
        let need = (self.longest_plaintext + WIREGUARD_DATA_OVERHEAD).max(MIN_OUT_LEN);
        if out.len() < need {
            return Action::Error(SessionError::BufferTooSmall {
                need,
                have: out.len(),
            });
        }
        // An empty datagram is boringtun's way of asking for the queue.
        from_tunn(self.tunn.decapsulate(None, &[], out))
    }

    /// Handles one UDP payload from `from`, the peer's address, which the
    /// cookie mechanism uses under load. `out` must hold at least as many
    /// bytes as `datagram`, and [`MIN_OUT_LEN`].
    pub fn decapsulate<'a>(
        &mut self,
        from: IpAddr,
        datagram: &[u8],
        out: &'a mut [u8],
    ) -> Action<'a> {
        if datagram.is_empty() {
            // Not a WireGuard message, and boringtun would read it as
            // send_queued.
            return Action::Error(SessionError::WireGuard(WireGuardError::InvalidPacket));
        }
        let need = datagram.len().max(MIN_OUT_LEN);
        if out.len() < need {
            return Action::Error(SessionError::BufferTooSmall {
                need,
                have: out.len(),
            });
        }
        from_tunn(self.tunn.decapsulate(Some(from), datagram, out))
    }

    /// Runs the timers: handshake retries, rekeying, keepalives. Returns
    /// [`Action::Error`] with `ConnectionExpired` when the peer has not
    /// completed a handshake in time. `out` must hold [`MIN_OUT_LEN`] bytes.
    pub fn tick<'a>(&mut self, out: &'a mut [u8]) -> Action<'a> {
        if out.len() < MIN_OUT_LEN {
            return Action::Error(SessionError::BufferTooSmall {
                need: MIN_OUT_LEN,
                have: out.len(),
            });
        }
        from_tunn(self.tunn.update_timers(out))
    }

    /// Starts a handshake now, as after a key change, unless one is under
    /// way; with `force`, sends a new initiation even then. `out` must hold
    /// [`MIN_OUT_LEN`] bytes.
    pub fn initiate_handshake<'a>(&mut self, out: &'a mut [u8], force: bool) -> Action<'a> {
        if out.len() < MIN_OUT_LEN {
            return Action::Error(SessionError::BufferTooSmall {
                need: MIN_OUT_LEN,
                have: out.len(),
            });
        }
        from_tunn(self.tunn.format_handshake_initiation(out, force))
    }

    /// Time since the current session's handshake, or `None` without one.
    pub fn time_since_last_handshake(&self) -> Option<Duration> {
        self.tunn.time_since_last_handshake()
    }
}

fn from_tunn(result: TunnResult<'_>) -> Action<'_> {
    match result {
        TunnResult::Done => Action::Nothing,
        TunnResult::Err(e) => Action::Error(SessionError::WireGuard(e)),
        TunnResult::WriteToNetwork(datagram) => Action::SendToPeer(datagram),
        TunnResult::WriteToTunnelV4(packet, _) | TunnResult::WriteToTunnelV6(packet, _) => {
            match ip::unwrap_frame(packet, Compat::Strict) {
                Ok(frame) => Action::DeliverFrame(frame),
                Err(e) => Action::Error(SessionError::NotEtherIp(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etherip::tests::ARP_REQUEST;
    use crate::mtu::{IpVersion, Transport, ETHERNET_PATH_MTU, UDP_HEADER_LEN};
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const A_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
    const B_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2));

    /// The ARP reply to [`ARP_REQUEST`]: 10.0.0.2 is at 52:54:00:ab:cd:ef.
    #[rustfmt::skip]
    const ARP_REPLY: [u8; 42] = [
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x52, 0x54, 0x00, 0xab, 0xcd, 0xef, 0x08, 0x06,
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02,
        0x52, 0x54, 0x00, 0xab, 0xcd, 0xef, 0x0a, 0x00, 0x00, 0x02,
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x0a, 0x00, 0x00, 0x01,
    ];

    fn secret(seed: u8) -> StaticSecret {
        StaticSecret::from([seed; 32])
    }

    fn public(seed: u8) -> PublicKey {
        PublicKey::from(&secret(seed))
    }

    fn v4_tunnel(local: u8, peer: u8) -> TunnelAddrs {
        TunnelAddrs::V4 {
            local: Ipv4Addr::new(169, 254, 97, local),
            peer: Ipv4Addr::new(169, 254, 97, peer),
        }
    }

    fn v6_tunnel(local: u16, peer: u16) -> TunnelAddrs {
        TunnelAddrs::V6 {
            local: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0x97, local),
            peer: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0x97, peer),
        }
    }

    /// A session from key `seed` to key `peer_seed`.
    fn session(seed: u8, peer_seed: u8, index: u32, tunnel: TunnelAddrs) -> Session {
        Session::new(secret(seed), public(peer_seed), None, None, index, tunnel)
    }

    fn pair(tunnel_a: TunnelAddrs, tunnel_b: TunnelAddrs) -> (Session, Session) {
        (session(1, 2, 1, tunnel_a), session(2, 1, 2, tunnel_b))
    }

    /// What one side saw while datagrams flew.
    #[derive(Debug, Default)]
    struct Seen {
        frames: Vec<Vec<u8>>,
        errors: Vec<String>,
    }

    /// Feeds one datagram to `to`, then drains its queue as the shell must;
    /// returns the datagrams it sends back.
    fn receive(to: &mut Session, from: IpAddr, datagram: &[u8], seen: &mut Seen) -> Vec<Vec<u8>> {
        let mut out = vec![0u8; 2048];
        let mut replies = Vec::new();
        match to.decapsulate(from, datagram, &mut out) {
            Action::SendToPeer(d) => {
                replies.push(d.to_vec());
                loop {
                    match to.send_queued(&mut out) {
                        Action::SendToPeer(d) => replies.push(d.to_vec()),
                        Action::Nothing => break,
                        other => panic!("send_queued returned {other:?}"),
                    }
                }
            }
            Action::DeliverFrame(f) => seen.frames.push(f.to_vec()),
            Action::Nothing => {}
            Action::Error(e) => seen.errors.push(e.to_string()),
        }
        replies
    }

    /// Carries datagrams between `a` and `b`, starting with `to_b`, until
    /// neither has anything more to send.
    fn pump(a: &mut Session, b: &mut Session, to_b: Vec<Vec<u8>>) -> (Seen, Seen) {
        let (mut seen_a, mut seen_b) = (Seen::default(), Seen::default());
        let (mut to_a, mut to_b) = (Vec::new(), to_b);
        while !to_a.is_empty() || !to_b.is_empty() {
            for d in std::mem::take(&mut to_b) {
                to_a.extend(receive(b, A_ADDR, &d, &mut seen_b));
            }
            for d in std::mem::take(&mut to_a) {
                to_b.extend(receive(a, B_ADDR, &d, &mut seen_a));
            }
        }
        (seen_a, seen_b)
    }

    fn send(from: &mut Session, frame: &[u8]) -> Vec<Vec<u8>> {
        let mut out = vec![0u8; 2048];
        match from.encapsulate(frame, &mut out) {
            Action::SendToPeer(d) => vec![d.to_vec()],
            Action::Nothing => vec![],
            other => panic!("encapsulate returned {other:?}"),
        }
    }

    /// Sends `frame` from `a` to `b` (handshaking if needed) and returns
    /// what each side saw.
    fn carry(a: &mut Session, b: &mut Session, frame: &[u8]) -> (Seen, Seen) {
        let datagrams = send(a, frame);
        pump(a, b, datagrams)
    }

    fn handshaken(tunnel_a: TunnelAddrs, tunnel_b: TunnelAddrs) -> (Session, Session) {
        let (mut a, mut b) = pair(tunnel_a, tunnel_b);
        let (seen_a, seen_b) = carry(&mut a, &mut b, &ARP_REQUEST);
        assert_eq!(seen_b.frames, vec![ARP_REQUEST.to_vec()]);
        assert!(seen_a.errors.is_empty() && seen_b.errors.is_empty());
        (a, b)
    }

    #[test]
    fn two_sessions_handshake_and_carry_frames_both_ways() {
        let (mut a, mut b) = pair(v4_tunnel(1, 2), v4_tunnel(2, 1));
        assert!(a.time_since_last_handshake().is_none());

        // The first frame waits in A's queue while the handshake runs.
        let first = send(&mut a, &ARP_REQUEST);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].len(), 148, "a handshake initiation");
        let (seen_a, seen_b) = pump(&mut a, &mut b, first);
        assert_eq!(seen_b.frames, vec![ARP_REQUEST.to_vec()]);
        assert!(seen_a.frames.is_empty());
        assert!(seen_a.errors.is_empty() && seen_b.errors.is_empty());
        assert!(a.time_since_last_handshake().is_some());

        // The reply goes straight out as data, in one datagram.
        let reply = send(&mut b, &ARP_REPLY);
        assert_eq!(reply.len(), 1);
        assert_eq!(reply[0].len(), 32 + 20 + 2 + ARP_REPLY.len());
        let mut seen_a = Seen::default();
        assert!(receive(&mut a, B_ADDR, &reply[0], &mut seen_a).is_empty());
        assert_eq!(seen_a.frames, vec![ARP_REPLY.to_vec()]);

        // And more frames both ways, without a new handshake.
        for i in 0..20u8 {
            let mut frame = ARP_REQUEST;
            frame[41] = i;
            let (_, seen_b) = carry(&mut a, &mut b, &frame);
            assert_eq!(seen_b.frames, vec![frame.to_vec()]);
            let (_, seen_a) = carry(&mut b, &mut a, &frame);
            assert_eq!(seen_a.frames, vec![frame.to_vec()]);
        }
        // No timer is due right after a handshake.
        assert!(matches!(a.tick(&mut [0; 256]), Action::Nothing));
        assert!(matches!(b.tick(&mut [0; 256]), Action::Nothing));
    }

    #[test]
    fn inner_ipv6_and_ipv4_peers_understand_each_other() {
        let (mut a, mut b) = handshaken(v6_tunnel(1, 2), v4_tunnel(2, 1));
        let (_, seen_b) = carry(&mut a, &mut b, &ARP_REPLY);
        assert_eq!(seen_b.frames, vec![ARP_REPLY.to_vec()]);
        let (_, seen_a) = carry(&mut b, &mut a, &ARP_REQUEST);
        assert_eq!(seen_a.frames, vec![ARP_REQUEST.to_vec()]);
    }

    #[test]
    fn a_handshake_from_the_wrong_key_is_rejected() {
        let (mut a, mut b) = handshaken(v4_tunnel(1, 2), v4_tunnel(2, 1));
        // Mallory knows B's public key, but B expects A's.
        let mut mallory = session(66, 2, 7, v4_tunnel(1, 2));
        let init = send(&mut mallory, &ARP_REPLY);
        let mut seen_b = Seen::default();
        assert!(receive(&mut b, A_ADDR, &init[0], &mut seen_b).is_empty());
        assert!(seen_b.frames.is_empty());
        assert_eq!(seen_b.errors.len(), 1);
        assert!(
            seen_b.errors[0].contains("other than the peer's configured public key"),
            "{:?}",
            seen_b.errors
        );
        // A's session with B is untouched.
        let (_, seen_b) = carry(&mut a, &mut b, &ARP_REPLY);
        assert_eq!(seen_b.frames, vec![ARP_REPLY.to_vec()]);
    }

    #[test]
    fn forged_replayed_and_foreign_data_is_rejected() {
        let (mut a, mut b) = handshaken(v4_tunnel(1, 2), v4_tunnel(2, 1));
        let data = send(&mut a, &ARP_REPLY).remove(0);
        let mut out = vec![0u8; 2048];

        let mut tampered = data.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(matches!(
            b.decapsulate(A_ADDR, &tampered, &mut out),
            Action::Error(SessionError::WireGuard(WireGuardError::InvalidAeadTag))
        ));
        assert!(matches!(
            b.decapsulate(A_ADDR, &data, &mut out),
            Action::DeliverFrame(f) if f == ARP_REPLY
        ));
        assert!(matches!(
            b.decapsulate(A_ADDR, &data, &mut out),
            Action::Error(SessionError::WireGuard(WireGuardError::DuplicateCounter))
        ));

        // Data from a session between two other keys, sent to B.
        let (mut c, mut d) = (
            session(3, 4, 1, v4_tunnel(3, 4)),
            session(4, 3, 2, v4_tunnel(4, 3)),
        );
        carry(&mut c, &mut d, &ARP_REQUEST);
        let foreign = send(&mut c, &ARP_REQUEST).remove(0);
        assert!(matches!(
            b.decapsulate(A_ADDR, &foreign, &mut out),
            Action::Error(SessionError::WireGuard(_))
        ));
    }

    #[test]
    fn rotated_keys_carry_frames_after_a_new_handshake() {
        let (mut a, _b) = handshaken(v4_tunnel(1, 2), v4_tunnel(2, 1));
        let old_data = send(&mut a, &ARP_REPLY).remove(0);

        // A gets key 11; B is told A's new public key. Both replace their
        // sessions, with new indexes.
        let mut a2 = session(11, 2, 3, v4_tunnel(1, 2));
        let mut b2 = session(2, 11, 4, v4_tunnel(2, 1));
        let (seen_a, seen_b) = carry(&mut a2, &mut b2, &ARP_REQUEST);
        assert_eq!(seen_b.frames, vec![ARP_REQUEST.to_vec()]);
        assert!(seen_a.errors.is_empty() && seen_b.errors.is_empty());
        let (_, seen_a) = carry(&mut b2, &mut a2, &ARP_REPLY);
        assert_eq!(seen_a.frames, vec![ARP_REPLY.to_vec()]);

        // The old key no longer gets in, by handshake or by old data.
        let mut out = vec![0u8; 2048];
        let mut stale = session(1, 2, 5, v4_tunnel(1, 2));
        let init = send(&mut stale, &ARP_REQUEST).remove(0);
        assert!(matches!(
            b2.decapsulate(A_ADDR, &init, &mut out),
            Action::Error(SessionError::WireGuard(WireGuardError::WrongKey))
        ));
        assert!(matches!(
            b2.decapsulate(A_ADDR, &old_data, &mut out),
            Action::Error(SessionError::WireGuard(_))
        ));
    }

    /// A plain WireGuard peer (boringtun's `Tunn` itself, standing in for
    /// wireguard-go) sending an ordinary IP packet: decrypted, but not
    /// delivered, because it is not EtherIP. Its EtherIP packets are.
    #[test]
    fn only_etherip_leaves_the_session() {
        let mut b = session(2, 1, 2, v4_tunnel(2, 1));
        let mut plain = Tunn::new(secret(1), public(2), None, None, 9, None);
        let mut out = vec![0u8; 2048];
        let init = match plain.format_handshake_initiation(&mut out, false) {
            TunnResult::WriteToNetwork(d) => d.to_vec(),
            _ => panic!("no handshake initiation"),
        };
        let mut seen_b = Seen::default();
        let response = receive(&mut b, A_ADDR, &init, &mut seen_b).remove(0);
        let keepalive = match plain.decapsulate(None, &response, &mut out) {
            TunnResult::WriteToNetwork(d) => d.to_vec(),
            _ => panic!("no keepalive"),
        };
        assert!(receive(&mut b, A_ADDR, &keepalive, &mut seen_b).is_empty());

        // An IPv4/UDP packet, 10.0.0.1:5678 -> 10.0.0.2:23.
        let mut udp = [
            0x45, 0x00, 0x00, 0x20, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 10, 0, 0, 1,
            10, 0, 0, 2, 0x16, 0x2e, 0x00, 0x17, 0x00, 0x0c, 0x00, 0x00, 0, 1, 2, 3,
        ];
        hinan_dataplane::wire::Ipv4Packet::new_unchecked(&mut udp[..]).fill_checksum();
        let data = match plain.encapsulate(&udp, &mut out) {
            TunnResult::WriteToNetwork(d) => d.to_vec(),
            _ => panic!("no data"),
        };
        let mut out_b = vec![0u8; 2048];
        match b.decapsulate(A_ADDR, &data, &mut out_b) {
            Action::Error(SessionError::NotEtherIp(e)) => {
                assert_eq!(e, IpError::NotEtherIp { protocol: 17 })
            }
            other => panic!("expected NotEtherIp, got {other:?}"),
        }

        let mut packet = vec![0u8; 100];
        let len = v6_tunnel(1, 2)
            .wrap_frame(&ARP_REQUEST, &mut packet)
            .unwrap()
            .len();
        let data = match plain.encapsulate(&packet[..len], &mut out) {
            TunnResult::WriteToNetwork(d) => d.to_vec(),
            _ => panic!("no data"),
        };
        assert!(matches!(
            b.decapsulate(A_ADDR, &data, &mut out_b),
            Action::DeliverFrame(f) if f == ARP_REQUEST
        ));
    }

    #[test]
    fn small_buffers_and_runt_frames_are_errors_not_panics() {
        let (mut a, mut b) = handshaken(v4_tunnel(1, 2), v4_tunnel(2, 1));
        let frame = vec![0x11u8; 1000];
        let need = a.out_len(frame.len());
        assert_eq!(need, 20 + 2 + 1000 + 32);
        let mut short = vec![0u8; need - 1];
        match a.encapsulate(&frame, &mut short) {
            Action::Error(SessionError::BufferTooSmall { need: n, have }) => {
                assert_eq!((n, have), (need, need - 1))
            }
            other => panic!("{other:?}"),
        }
        match a.encapsulate(&ARP_REQUEST[..10], &mut [0u8; 256]) {
            Action::Error(e) => assert!(e
                .to_string()
                .contains("shorter than a 14-byte Ethernet header")),
            other => panic!("{other:?}"),
        }
        let data = send(&mut a, &frame).remove(0);
        assert!(matches!(
            b.decapsulate(A_ADDR, &data, &mut vec![0u8; data.len() - 1]),
            Action::Error(SessionError::BufferTooSmall { .. })
        ));
        assert!(matches!(
            b.decapsulate(A_ADDR, &data, &mut vec![0u8; data.len()]),
            Action::DeliverFrame(f) if f == &frame[..]
        ));
        assert!(matches!(
            b.decapsulate(A_ADDR, &[], &mut [0u8; 256]),
            Action::Error(SessionError::WireGuard(WireGuardError::InvalidPacket))
        ));
        assert!(matches!(
            a.tick(&mut [0u8; MIN_OUT_LEN - 1]),
            Action::Error(SessionError::BufferTooSmall { .. })
        ));
        assert!(matches!(
            a.send_queued(&mut [0u8; 100]),
            Action::Error(SessionError::BufferTooSmall { .. })
        ));
    }

    /// The MTU table in [`crate::mtu`], checked against real datagrams: the
    /// largest frame for each transport makes a datagram that, with its UDP
    /// and outer IP headers, fills a 1500-byte path exactly.
    #[test]
    fn wireguard_datagrams_fill_a_1500_byte_path_exactly() {
        for (inner, tunnel_a, tunnel_b) in [
            (IpVersion::V4, v4_tunnel(1, 2), v4_tunnel(2, 1)),
            (IpVersion::V6, v6_tunnel(1, 2), v6_tunnel(2, 1)),
        ] {
            let (mut a, mut b) = handshaken(tunnel_a, tunnel_b);
            for outer in [IpVersion::V4, IpVersion::V6] {
                let transport = Transport::WireGuard { outer, inner };
                let max = transport.max_frame_len(ETHERNET_PATH_MTU).unwrap();
                let frame = vec![0xa5u8; max];
                let datagram = send(&mut a, &frame).remove(0);
                assert_eq!(
                    outer.header_len() + UDP_HEADER_LEN + datagram.len(),
                    ETHERNET_PATH_MTU,
                    "{transport:?}"
                );
                let mut out = vec![0u8; 2048];
                assert!(matches!(
                    b.decapsulate(A_ADDR, &datagram, &mut out),
                    Action::DeliverFrame(f) if f == &frame[..]
                ));
                let bigger = send(&mut a, &vec![0xa5u8; max + 1]).remove(0);
                assert_eq!(bigger.len(), datagram.len() + 1);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn decapsulate_of_arbitrary_bytes_never_panics_nor_delivers(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            message_type in 0u8..6,
        ) {
            let (_, mut b) = pair(v4_tunnel(1, 2), v4_tunnel(2, 1));
            let mut out = vec![0u8; 512];
            // Also try each WireGuard message type, so the bytes get past
            // the type check.
            let mut typed = bytes.clone();
            if typed.len() >= 4 {
                typed[..4].copy_from_slice(&[message_type, 0, 0, 0]);
            }
            for datagram in [&bytes, &typed] {
                let action = b.decapsulate(A_ADDR, datagram, &mut out);
                prop_assert!(!matches!(action, Action::DeliverFrame(_)), "{:?}", action);
            }
        }
    }
}
