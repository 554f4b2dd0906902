//! The heartbeat wire format: one UDP datagram per heartbeat, per path.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                  magic "HINANHB" (7 bytes) ...                |
//! +                                               +-+-+-+-+-+-+-+-+
//! |                  ...                          |   version = 1 |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       sender NodeId (u64)                     |
//! +                                                               +
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                      receiver NodeId (u64)                    |
//! +                                                               +
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                        sequence (u64)                         |
//! +                                                               +
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |    path id    |  multiplier   |   tx interval, microseconds   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |   ... (u32)                   |  authenticator (32 bytes):    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+                               +
//! |  HMAC-SHA256 over bytes 0..38, filled in by the shell         |
//! +                              ...                              +
//! |                                                               |
//! +                               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! All integers are big-endian. Version 1 datagrams are exactly
//! [`PACKET_LEN`] (70) bytes. The first 8 bytes (magic and version) stay where
//! they are in every future version, so an old appliance can always say
//! "version 2 is not supported" instead of "garbage".
//!
//! The receiver field lets a receiver drop a heartbeat that was captured on
//! the way to another appliance and replayed to it (cluster keys may be
//! shared). The sender's interval and multiplier ride along, as in BFD, so an
//! operator can be told that two appliances disagree about their timers.
//!
//! This module does not compute the MAC: [`HeartbeatRepr::emit`] zeroes the
//! authenticator, and the shell fills it with HMAC-SHA256 over
//! [`HeartbeatPacket::authenticated_bytes`] and checks it on receipt with
//! [`HeartbeatPacket::authenticator`] before the detector hears of the packet.

use super::{NodeId, PathId};

/// The first seven bytes of every heartbeat.
pub const MAGIC: [u8; 7] = *b"HINANHB";
/// The only version this build speaks.
pub const VERSION: u8 = 1;
/// Magic plus version: the part every version shares.
pub const HEADER_LEN: usize = field::VERSION + 1;
/// Length of the authenticator (an HMAC-SHA256 tag).
pub const AUTHENTICATOR_LEN: usize = 32;
/// Length of a version 1 heartbeat.
pub const PACKET_LEN: usize = field::AUTHENTICATOR.end;

mod field {
    pub(super) type Field = core::ops::Range<usize>;

    pub(super) const MAGIC: Field = 0..7;
    pub(super) const VERSION: usize = 7;
    pub(super) const SENDER: Field = 8..16;
    pub(super) const RECEIVER: Field = 16..24;
    pub(super) const SEQ: Field = 24..32;
    pub(super) const PATH: usize = 32;
    pub(super) const MULTIPLIER: usize = 33;
    pub(super) const TX_INTERVAL: Field = 34..38;
    pub(super) const AUTHENTICATOR: Field = 38..70;
}

/// Why a datagram is not a heartbeat this build accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("heartbeat rejected: {len} bytes is shorter than the {need}-byte header")]
    Truncated { len: usize, need: usize },
    #[error("heartbeat rejected: magic {found:02x?} is not \"HINANHB\" (not a hinan heartbeat, or another service on this port)")]
    BadMagic { found: [u8; 7] },
    #[error("heartbeat rejected: version {version} is not supported (this build speaks version {VERSION}); run the same hinan release on every appliance")]
    UnsupportedVersion { version: u8 },
    #[error(
        "heartbeat rejected: {len} bytes, but a version {VERSION} heartbeat is exactly {expected}"
    )]
    WrongLength { len: usize, expected: usize },
}

/// A read/write view of a heartbeat datagram.
///
/// Accessors index the buffer directly: call [`check_len`](Self::check_len)
/// (or build with [`new_checked`](Self::new_checked)) before using one on
/// untrusted bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> HeartbeatPacket<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        HeartbeatPacket { buffer }
    }

    /// Wraps a buffer and runs [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that every accessor can run without panicking.
    ///
    /// Field positions depend on the version, so this also checks the magic
    /// and version, and reports a wrong version before a wrong length: a
    /// version 2 datagram is "unsupported", not "truncated".
    pub fn check_len(&self) -> Result<(), WireError> {
        let data = self.buffer.as_ref();
        if data.len() < HEADER_LEN {
            return Err(WireError::Truncated {
                len: data.len(),
                need: HEADER_LEN,
            });
        }
        let mut found = [0; 7];
        found.copy_from_slice(&data[field::MAGIC]);
        if found != MAGIC {
            return Err(WireError::BadMagic { found });
        }
        if data[field::VERSION] != VERSION {
            return Err(WireError::UnsupportedVersion {
                version: data[field::VERSION],
            });
        }
        if data.len() != PACKET_LEN {
            return Err(WireError::WrongLength {
                len: data.len(),
                expected: PACKET_LEN,
            });
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn magic(&self) -> &[u8] {
        &self.buffer.as_ref()[field::MAGIC]
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }

    pub fn sender(&self) -> NodeId {
        self.read_u64(field::SENDER)
    }

    pub fn receiver(&self) -> NodeId {
        self.read_u64(field::RECEIVER)
    }

    pub fn seq(&self) -> u64 {
        self.read_u64(field::SEQ)
    }

    pub fn path(&self) -> PathId {
        PathId(self.buffer.as_ref()[field::PATH])
    }

    pub fn multiplier(&self) -> u8 {
        self.buffer.as_ref()[field::MULTIPLIER]
    }

    pub fn tx_interval_us(&self) -> u32 {
        let mut b = [0; 4];
        b.copy_from_slice(&self.buffer.as_ref()[field::TX_INTERVAL]);
        u32::from_be_bytes(b)
    }

    /// The bytes the authenticator covers: everything before it.
    pub fn authenticated_bytes(&self) -> &[u8] {
        &self.buffer.as_ref()[..field::AUTHENTICATOR.start]
    }

    /// The authenticator as received (or as the shell wrote it).
    pub fn authenticator(&self) -> &[u8] {
        &self.buffer.as_ref()[field::AUTHENTICATOR]
    }

    fn read_u64(&self, range: field::Field) -> u64 {
        let mut b = [0; 8];
        b.copy_from_slice(&self.buffer.as_ref()[range]);
        u64::from_be_bytes(b)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> HeartbeatPacket<T> {
    /// Writes the magic and the version this build speaks.
    pub fn set_header(&mut self) {
        let data = self.buffer.as_mut();
        data[field::MAGIC].copy_from_slice(&MAGIC);
        data[field::VERSION] = VERSION;
    }

    pub fn set_sender(&mut self, value: NodeId) {
        self.buffer.as_mut()[field::SENDER].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_receiver(&mut self, value: NodeId) {
        self.buffer.as_mut()[field::RECEIVER].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_seq(&mut self, value: u64) {
        self.buffer.as_mut()[field::SEQ].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_path(&mut self, value: PathId) {
        self.buffer.as_mut()[field::PATH] = value.0;
    }

    pub fn set_multiplier(&mut self, value: u8) {
        self.buffer.as_mut()[field::MULTIPLIER] = value;
    }

    pub fn set_tx_interval_us(&mut self, value: u32) {
        self.buffer.as_mut()[field::TX_INTERVAL].copy_from_slice(&value.to_be_bytes());
    }

    /// Where the shell writes the HMAC-SHA256 tag after [`HeartbeatRepr::emit`].
    pub fn authenticator_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::AUTHENTICATOR]
    }
}

/// A heartbeat's contents, apart from its authenticator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HeartbeatRepr {
    pub sender: NodeId,
    /// The appliance this heartbeat is meant for; a receiver drops others.
    pub receiver: NodeId,
    pub path: PathId,
    /// Increases by one per heartbeat the sender sends on this path, so the
    /// shell can drop replays and count loss.
    pub seq: u64,
    /// The sender's heartbeat interval, in microseconds.
    pub tx_interval_us: u32,
    /// The sender's detection multiplier.
    pub multiplier: u8,
}

impl HeartbeatRepr {
    /// Parses a heartbeat, checking it first. Never panics, whatever the bytes.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &HeartbeatPacket<&T>) -> Result<Self, WireError> {
        packet.check_len()?;
        Ok(HeartbeatRepr {
            sender: packet.sender(),
            receiver: packet.receiver(),
            path: packet.path(),
            seq: packet.seq(),
            tx_interval_us: packet.tx_interval_us(),
            multiplier: packet.multiplier(),
        })
    }

    /// The datagram length, authenticator included.
    pub const fn buffer_len(&self) -> usize {
        PACKET_LEN
    }

    /// Writes the heartbeat and zeroes the authenticator, which the shell
    /// then fills in.
    ///
    /// # Panics
    ///
    /// If the buffer is not exactly [`buffer_len`](Self::buffer_len) bytes:
    /// that is a bug in the caller, not bad input.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut HeartbeatPacket<T>) {
        assert_eq!(
            packet.buffer.as_ref().len(),
            self.buffer_len(),
            "heartbeat buffer must be exactly buffer_len() bytes"
        );
        packet.set_header();
        packet.set_sender(self.sender);
        packet.set_receiver(self.receiver);
        packet.set_seq(self.seq);
        packet.set_path(self.path);
        packet.set_multiplier(self.multiplier);
        packet.set_tx_interval_us(self.tx_interval_us);
        packet.authenticator_mut().fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A heartbeat from node 0x0102030405060708 to node 0x1112131415161718 on
    /// the tunnel path, seq 0x2122232425262728, 20 ms x 12, with an
    /// authenticator of 0xa0..=0xbf as a shell would have filled it.
    #[rustfmt::skip]
    const BYTES: [u8; PACKET_LEN] = [
        b'H', b'I', b'N', b'A', b'N', b'H', b'B', 0x01,
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
        0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18,
        0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28,
        0x01, 0x0c, 0x00, 0x00, 0x4e, 0x20,
        0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,
        0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf,
        0xb0, 0xb1, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7,
        0xb8, 0xb9, 0xba, 0xbb, 0xbc, 0xbd, 0xbe, 0xbf,
    ];

    fn repr() -> HeartbeatRepr {
        HeartbeatRepr {
            sender: 0x0102_0304_0506_0708,
            receiver: 0x1112_1314_1516_1718,
            path: PathId::TUNNEL,
            seq: 0x2122_2324_2526_2728,
            tx_interval_us: 20_000,
            multiplier: 12,
        }
    }

    fn parse_bytes(bytes: &[u8]) -> Result<HeartbeatRepr, WireError> {
        HeartbeatRepr::parse(&HeartbeatPacket::new_checked(bytes)?)
    }

    #[test]
    fn parses_fixed_bytes() {
        let packet = HeartbeatPacket::new_checked(&BYTES[..]).unwrap();
        assert_eq!(HeartbeatRepr::parse(&packet), Ok(repr()));
        assert_eq!(packet.authenticated_bytes(), &BYTES[..38]);
        let tag: Vec<u8> = (0xa0..=0xbf).collect();
        assert_eq!(packet.authenticator(), &tag[..]);
    }

    #[test]
    fn emits_fixed_bytes_with_zeroed_authenticator() {
        let mut buf = [0xffu8; PACKET_LEN];
        let mut packet = HeartbeatPacket::new_unchecked(&mut buf[..]);
        repr().emit(&mut packet);
        assert_eq!(packet.authenticator(), &[0u8; AUTHENTICATOR_LEN][..]);
        // What the shell does next: sign the authenticated bytes.
        let tag: Vec<u8> = (0xa0..=0xbf).collect();
        packet.authenticator_mut().copy_from_slice(&tag);
        assert_eq!(buf, BYTES);
    }

    #[test]
    fn rejects_an_unknown_version_before_its_length() {
        let mut v2 = BYTES.to_vec();
        v2[7] = 2;
        v2.extend_from_slice(&[0; 10]);
        let err = parse_bytes(&v2).unwrap_err();
        assert_eq!(err, WireError::UnsupportedVersion { version: 2 });
        assert!(err.to_string().contains("version 2 is not supported"));
    }

    #[test]
    fn rejects_bad_magic_short_and_long_input() {
        let mut bad = BYTES;
        bad[0] = b'X';
        assert!(matches!(parse_bytes(&bad), Err(WireError::BadMagic { .. })));
        assert_eq!(
            parse_bytes(&BYTES[..5]),
            Err(WireError::Truncated { len: 5, need: 8 })
        );
        assert_eq!(
            parse_bytes(&BYTES[..69]),
            Err(WireError::WrongLength {
                len: 69,
                expected: 70
            })
        );
        let mut long = BYTES.to_vec();
        long.push(0);
        assert_eq!(
            parse_bytes(&long),
            Err(WireError::WrongLength {
                len: 71,
                expected: 70
            })
        );
    }

    fn header_ok(bytes: &[u8]) -> bool {
        bytes.len() >= 8 && bytes[..8] == *b"HINANHB\x01"
    }

    fn any_repr() -> impl Strategy<Value = HeartbeatRepr> {
        (
            any::<u64>(),
            any::<u64>(),
            any::<u8>(),
            any::<u64>(),
            any::<u32>(),
            any::<u8>(),
        )
            .prop_map(
                |(sender, receiver, path, seq, tx_interval_us, multiplier)| HeartbeatRepr {
                    sender,
                    receiver,
                    path: PathId(path),
                    seq,
                    tx_interval_us,
                    multiplier,
                },
            )
    }

    proptest! {
        #[test]
        fn emit_then_parse_round_trips(repr in any_repr(), tag in any::<[u8; 32]>()) {
            let mut buf = vec![0u8; repr.buffer_len()];
            let mut packet = HeartbeatPacket::new_unchecked(&mut buf[..]);
            repr.emit(&mut packet);
            packet.authenticator_mut().copy_from_slice(&tag);
            let packet = HeartbeatPacket::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(HeartbeatRepr::parse(&packet), Ok(repr));
            prop_assert_eq!(packet.authenticator(), &tag[..]);
            prop_assert_eq!(packet.authenticated_bytes().len(), PACKET_LEN - AUTHENTICATOR_LEN);
        }

        #[test]
        fn parse_of_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let checked = parse_bytes(&bytes);
            let unchecked = HeartbeatRepr::parse(&HeartbeatPacket::new_unchecked(&bytes[..]));
            prop_assert_eq!(&checked, &unchecked);
            // Only a well-formed header of the right length is accepted.
            let well_formed = bytes.len() == PACKET_LEN && bytes[..8] == *b"HINANHB\x01";
            prop_assert_eq!(checked.is_ok(), well_formed);
        }

        #[test]
        fn parse_of_corrupted_heartbeats_never_panics(
            flips in proptest::collection::vec((0..PACKET_LEN, any::<u8>()), 1..8),
            cut in 0..=PACKET_LEN,
        ) {
            // Arbitrary bytes rarely get past the magic; start from a valid
            // heartbeat so the field accessors run on corrupted input too.
            let mut bytes = BYTES;
            for (at, value) in flips {
                bytes[at] = value;
            }
            prop_assert_eq!(parse_bytes(&bytes[..cut]).is_ok(), cut == PACKET_LEN && header_ok(&bytes));
            let result = parse_bytes(&bytes);
            prop_assert_eq!(result.is_ok(), header_ok(&bytes));
        }
    }
}
