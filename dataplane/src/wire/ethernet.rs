//! Ethernet II headers with up to two VLAN tags, as far as a learning bridge
//! reads them.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                  destination MAC (6 bytes) ...                |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |           ...                 |   source MAC (6 bytes) ...    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                           ...                                 |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | EtherType, or TPID 0x8100/0x88a8 |PCP|D|        VID           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | (a second tag, then) EtherType   |  payload ...
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Frames arrive from a TAP device or a tunnel without preamble, FCS or
//! padding guarantees, so the shortest frame is the 14-byte header alone.
//! The bridge forwards frames byte for byte: tags are read, never stripped
//! or added.

use core::fmt;

/// Destination, source and EtherType.
pub const ETHERNET_HEADER_LEN: usize = field::ETHERTYPE.end;
/// TPID plus tag control information.
pub const VLAN_TAG_LEN: usize = 4;
/// Tags parsed before the EtherType: an 802.1ad service tag and an 802.1Q
/// customer tag. A third TPID is taken as the EtherType.
pub const MAX_VLAN_TAGS: usize = 2;

/// EtherType values the dataplane looks at.
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const IPV6: u16 = 0x86dd;
}

mod field {
    pub(super) type Field = core::ops::Range<usize>;

    pub(super) const DESTINATION: Field = 0..6;
    pub(super) const SOURCE: Field = 6..12;
    pub(super) const ETHERTYPE: Field = 12..14;
}

/// Why bytes are not an Ethernet frame the bridge can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame dropped: {len} bytes is shorter than the {need} bytes its Ethernet header and VLAN tags take")]
    Truncated { len: usize, need: usize },
}

/// A 48-bit IEEE 802 MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddress(pub [u8; 6]);

impl MacAddress {
    pub const BROADCAST: MacAddress = MacAddress([0xff; 6]);

    /// Reads an address from the first six bytes of `bytes`.
    ///
    /// # Panics
    /// If `bytes` is shorter than six bytes.
    pub fn from_bytes(bytes: &[u8]) -> MacAddress {
        let mut mac = [0; 6];
        mac.copy_from_slice(&bytes[..6]);
        MacAddress(mac)
    }

    /// Group addresses: multicast, and broadcast, which is one of them.
    pub const fn is_multicast(self) -> bool {
        self.0[0] & 0x01 != 0
    }

    pub fn is_broadcast(self) -> bool {
        self == Self::BROADCAST
    }

    pub fn is_zero(self) -> bool {
        self.0 == [0; 6]
    }

    /// 01-80-C2-00-00-00 to -0F: STP, pause frames, LACP, 802.1X, LLDP.
    /// IEEE 802.1D bridges never forward these (they belong to one link).
    pub fn is_link_local_reserved(self) -> bool {
        self.0[..5] == [0x01, 0x80, 0xc2, 0x00, 0x00] && self.0[5] <= 0x0f
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The VLAN a frame belongs to for MAC learning: the VID of its outermost
/// tag, or [`VlanId::UNTAGGED`] for untagged and priority-tagged (VID 0)
/// frames, which IEEE 802.1Q treats alike.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct VlanId(u16);

impl VlanId {
    pub const UNTAGGED: VlanId = VlanId(0);
    /// VID 4095 is reserved; a bridge drops frames that carry it.
    pub const RESERVED: u16 = 0xfff;

    /// A VID from 0 (untagged) to 4094; `None` for anything else.
    pub const fn new(vid: u16) -> Option<VlanId> {
        if vid < Self::RESERVED {
            Some(VlanId(vid))
        } else {
            None
        }
    }

    pub const fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for VlanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Self::UNTAGGED {
            f.write_str("untagged")
        } else {
            write!(f, "vlan {}", self.0)
        }
    }
}

impl fmt::Debug for VlanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The tag protocol identifier in front of a VLAN tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tpid {
    /// 0x8100, IEEE 802.1Q customer tag.
    Dot1Q,
    /// 0x88a8, IEEE 802.1ad service tag (QinQ).
    Dot1Ad,
}

impl Tpid {
    pub const fn from_ethertype(value: u16) -> Option<Tpid> {
        match value {
            0x8100 => Some(Tpid::Dot1Q),
            0x88a8 => Some(Tpid::Dot1Ad),
            _ => None,
        }
    }

    pub const fn ethertype(self) -> u16 {
        match self {
            Tpid::Dot1Q => 0x8100,
            Tpid::Dot1Ad => 0x88a8,
        }
    }
}

/// One VLAN tag: TPID and tag control information.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VlanTag {
    pub tpid: Tpid,
    /// Priority code point, 0..=7.
    pub pcp: u8,
    /// Drop eligible indicator.
    pub dei: bool,
    /// VLAN identifier, 0..=4095 (0 means priority-tagged only, 4095 is
    /// reserved; both survive a parse and emit unchanged).
    pub vid: u16,
}

impl VlanTag {
    fn from_tci(tpid: Tpid, tci: u16) -> VlanTag {
        VlanTag {
            tpid,
            pcp: (tci >> 13) as u8,
            dei: tci & 0x1000 != 0,
            vid: tci & 0x0fff,
        }
    }

    fn tci(self) -> u16 {
        (u16::from(self.pcp & 0x7) << 13) | (u16::from(self.dei) << 12) | (self.vid & 0x0fff)
    }
}

/// The VLAN tags in front of the EtherType.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VlanTags {
    Untagged,
    Single(VlanTag),
    Double { outer: VlanTag, inner: VlanTag },
}

impl VlanTags {
    pub const fn outer(&self) -> Option<VlanTag> {
        match *self {
            VlanTags::Untagged => None,
            VlanTags::Single(tag) | VlanTags::Double { outer: tag, .. } => Some(tag),
        }
    }

    pub const fn count(&self) -> usize {
        match self {
            VlanTags::Untagged => 0,
            VlanTags::Single(_) => 1,
            VlanTags::Double { .. } => 2,
        }
    }
}

/// A read/write view of an Ethernet II frame.
///
/// Accessors index the buffer directly: call [`check_len`](Self::check_len)
/// (or build with [`new_checked`](Self::new_checked)) before using one on
/// untrusted bytes. VLAN tags are read by [`EthernetRepr::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// Wraps a buffer and runs [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, FrameError> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// Checks that the fixed header is there: every accessor of this view
    /// can then run without panicking.
    pub fn check_len(&self) -> Result<(), FrameError> {
        let len = self.buffer.as_ref().len();
        if len < ETHERNET_HEADER_LEN {
            return Err(FrameError::Truncated {
                len,
                need: ETHERNET_HEADER_LEN,
            });
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn dst_addr(&self) -> MacAddress {
        MacAddress::from_bytes(&self.buffer.as_ref()[field::DESTINATION])
    }

    pub fn src_addr(&self) -> MacAddress {
        MacAddress::from_bytes(&self.buffer.as_ref()[field::SOURCE])
    }

    /// The EtherType field at bytes 12..14: a TPID if the frame is tagged.
    pub fn outer_ethertype(&self) -> u16 {
        self.read_u16(field::ETHERTYPE.start)
    }

    fn read_u16(&self, at: usize) -> u16 {
        let data = self.buffer.as_ref();
        u16::from_be_bytes([data[at], data[at + 1]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    pub fn set_dst_addr(&mut self, addr: MacAddress) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&addr.0);
    }

    pub fn set_src_addr(&mut self, addr: MacAddress) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&addr.0);
    }

    fn write_u16(&mut self, at: usize, value: u16) {
        self.buffer.as_mut()[at..at + 2].copy_from_slice(&value.to_be_bytes());
    }
}

/// The parsed header of an Ethernet frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EthernetRepr {
    pub dst_addr: MacAddress,
    pub src_addr: MacAddress,
    pub tags: VlanTags,
    /// The EtherType after the tags. It may itself be a TPID only after two
    /// tags (a third tag is not parsed); [`emit`](Self::emit) otherwise
    /// writes a frame that parses differently.
    pub ethertype: u16,
}

impl EthernetRepr {
    /// Reads the header and up to [`MAX_VLAN_TAGS`] tags.
    pub fn parse<T: AsRef<[u8]>>(frame: &EthernetFrame<T>) -> Result<EthernetRepr, FrameError> {
        frame.check_len()?;
        let len = frame.buffer.as_ref().len();
        let mut at = field::ETHERTYPE.start;
        let mut tags = [None; MAX_VLAN_TAGS];
        for slot in &mut tags {
            let Some(tpid) = Tpid::from_ethertype(frame.read_u16(at)) else {
                break;
            };
            let need = at + VLAN_TAG_LEN + 2;
            if len < need {
                return Err(FrameError::Truncated { len, need });
            }
            *slot = Some(VlanTag::from_tci(tpid, frame.read_u16(at + 2)));
            at += VLAN_TAG_LEN;
        }
        let tags = match tags {
            [None, _] => VlanTags::Untagged,
            [Some(tag), None] => VlanTags::Single(tag),
            [Some(outer), Some(inner)] => VlanTags::Double { outer, inner },
        };
        Ok(EthernetRepr {
            dst_addr: frame.dst_addr(),
            src_addr: frame.src_addr(),
            tags,
            ethertype: frame.read_u16(at),
        })
    }

    /// Header length, tags included: where the payload starts.
    pub const fn buffer_len(&self) -> usize {
        ETHERNET_HEADER_LEN + VLAN_TAG_LEN * self.tags.count()
    }

    /// The VLAN this frame is learned in. `None` for the reserved VID 4095.
    pub fn vlan(&self) -> Option<VlanId> {
        match self.tags.outer() {
            None => Some(VlanId::UNTAGGED),
            Some(tag) => VlanId::new(tag.vid),
        }
    }

    /// Writes the header into the first [`buffer_len`](Self::buffer_len)
    /// bytes of `frame`.
    ///
    /// # Panics
    /// If the buffer is shorter than [`buffer_len`](Self::buffer_len).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut EthernetFrame<T>) {
        frame.set_dst_addr(self.dst_addr);
        frame.set_src_addr(self.src_addr);
        let mut at = field::ETHERTYPE.start;
        let tags = match self.tags {
            VlanTags::Untagged => [None, None],
            VlanTags::Single(tag) => [Some(tag), None],
            VlanTags::Double { outer, inner } => [Some(outer), Some(inner)],
        };
        for tag in tags.into_iter().flatten() {
            frame.write_u16(at, tag.tpid.ethertype());
            frame.write_u16(at + 2, tag.tci());
            at += VLAN_TAG_LEN;
        }
        frame.write_u16(at, self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An ARP request (who-has 192.0.2.1 tell 192.0.2.2) on VLAN 100 with
    /// priority 5, as tcpdump -xx shows it, cut after the EtherType.
    const TAGGED_ARP: [u8; 18] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // broadcast
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // source
        0x81, 0x00, 0xa0, 0x64, // 802.1Q, PCP 5, VID 100
        0x08, 0x06, // ARP
    ];

    /// A QinQ frame: S-tag 0x88a8 VID 10, C-tag 0x8100 VID 4095 with DEI,
    /// then IPv6.
    const QINQ: [u8; 22] = [
        0x33, 0x33, 0x00, 0x00, 0x00, 0x01, // IPv6 all-nodes multicast
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // source
        0x88, 0xa8, 0x00, 0x0a, // S-tag VID 10
        0x81, 0x00, 0x1f, 0xff, // C-tag DEI, VID 4095
        0x86, 0xdd, // IPv6
    ];

    #[test]
    fn parses_a_tagged_arp_request() {
        let repr = EthernetRepr::parse(&EthernetFrame::new_unchecked(&TAGGED_ARP[..])).unwrap();
        assert_eq!(repr.dst_addr, MacAddress::BROADCAST);
        assert_eq!(
            repr.src_addr,
            MacAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56])
        );
        assert_eq!(
            repr.tags,
            VlanTags::Single(VlanTag {
                tpid: Tpid::Dot1Q,
                pcp: 5,
                dei: false,
                vid: 100
            })
        );
        assert_eq!(repr.ethertype, ethertype::ARP);
        assert_eq!(repr.buffer_len(), 18);
        assert_eq!(repr.vlan(), VlanId::new(100));
        assert_eq!(repr.src_addr.to_string(), "52:54:00:12:34:56");

        let mut out = [0u8; 18];
        repr.emit(&mut EthernetFrame::new_unchecked(&mut out[..]));
        assert_eq!(out, TAGGED_ARP);
    }

    #[test]
    fn parses_qinq_and_keeps_the_reserved_vid() {
        let repr = EthernetRepr::parse(&EthernetFrame::new_unchecked(&QINQ[..])).unwrap();
        let VlanTags::Double { outer, inner } = repr.tags else {
            panic!("expected two tags, got {:?}", repr.tags);
        };
        assert_eq!((outer.tpid, outer.vid), (Tpid::Dot1Ad, 10));
        assert_eq!(
            (inner.tpid, inner.vid, inner.dei),
            (Tpid::Dot1Q, 4095, true)
        );
        assert_eq!(repr.ethertype, ethertype::IPV6);
        assert_eq!(repr.vlan(), VlanId::new(10), "learned in the outer VLAN");
        assert!(repr.dst_addr.is_multicast() && !repr.dst_addr.is_broadcast());

        let mut out = [0u8; 22];
        repr.emit(&mut EthernetFrame::new_unchecked(&mut out[..]));
        assert_eq!(out, QINQ);
    }

    #[test]
    fn a_cut_tag_is_truncated_not_a_panic() {
        for cut in 0..TAGGED_ARP.len() {
            let result = EthernetRepr::parse(&EthernetFrame::new_unchecked(&TAGGED_ARP[..cut]));
            let need = if cut < ETHERNET_HEADER_LEN { 14 } else { 18 };
            assert_eq!(result, Err(FrameError::Truncated { len: cut, need }));
        }
    }

    #[test]
    fn reserved_vid_has_no_vlan_and_priority_tag_is_untagged() {
        let mut frame = TAGGED_ARP;
        frame[14..16].copy_from_slice(&0xafffu16.to_be_bytes());
        let repr = EthernetRepr::parse(&EthernetFrame::new_unchecked(&frame[..])).unwrap();
        assert_eq!(repr.vlan(), None);
        frame[14..16].copy_from_slice(&0xa000u16.to_be_bytes());
        let repr = EthernetRepr::parse(&EthernetFrame::new_unchecked(&frame[..])).unwrap();
        assert_eq!(repr.vlan(), Some(VlanId::UNTAGGED));
    }

    #[test]
    fn link_local_reserved_addresses() {
        let stp = MacAddress([0x01, 0x80, 0xc2, 0, 0, 0]);
        let lldp = MacAddress([0x01, 0x80, 0xc2, 0, 0, 0x0e]);
        let not = MacAddress([0x01, 0x80, 0xc2, 0, 0, 0x10]);
        assert!(stp.is_link_local_reserved() && lldp.is_link_local_reserved());
        assert!(!not.is_link_local_reserved() && !MacAddress::BROADCAST.is_link_local_reserved());
    }

    fn any_tag() -> impl Strategy<Value = VlanTag> {
        (any::<bool>(), 0u8..8, any::<bool>(), 0u16..4096).prop_map(|(ad, pcp, dei, vid)| VlanTag {
            tpid: if ad { Tpid::Dot1Ad } else { Tpid::Dot1Q },
            pcp,
            dei,
            vid,
        })
    }

    fn any_repr() -> impl Strategy<Value = EthernetRepr> {
        let tags = prop_oneof![
            Just(VlanTags::Untagged),
            any_tag().prop_map(VlanTags::Single),
            (any_tag(), any_tag()).prop_map(|(outer, inner)| VlanTags::Double { outer, inner }),
        ];
        (any::<[u8; 6]>(), any::<[u8; 6]>(), tags, any::<u16>())
            .prop_filter(
                "a TPID after fewer than two tags is another tag",
                |(_, _, tags, ty)| {
                    tags.count() == MAX_VLAN_TAGS || Tpid::from_ethertype(*ty).is_none()
                },
            )
            .prop_map(|(dst, src, tags, ethertype)| EthernetRepr {
                dst_addr: MacAddress(dst),
                src_addr: MacAddress(src),
                tags,
                ethertype,
            })
    }

    proptest! {
        #[test]
        fn emit_then_parse_round_trips(repr in any_repr(), payload in proptest::collection::vec(any::<u8>(), 0..32)) {
            let mut buf = vec![0u8; repr.buffer_len()];
            repr.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
            buf.extend_from_slice(&payload);
            let parsed = EthernetRepr::parse(&EthernetFrame::new_checked(&buf[..]).unwrap());
            prop_assert_eq!(parsed, Ok(repr));
        }

        #[test]
        fn parse_of_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(repr) = EthernetRepr::parse(&EthernetFrame::new_unchecked(&bytes[..])) {
                prop_assert!(repr.buffer_len() <= bytes.len());
            } else {
                prop_assert!(bytes.len() < ETHERNET_HEADER_LEN + VLAN_TAG_LEN * MAX_VLAN_TAGS);
            }
        }
    }
}
