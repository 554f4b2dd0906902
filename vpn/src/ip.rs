//! The IPv4 and IPv6 headers in front of EtherIP (protocol 97).
//!
//! RFC 3378 sends EtherIP straight inside IP. hinan needs the same header for
//! a second reason: boringtun's `noise::Tunn` only carries IPv4 and IPv6
//! packets, so an Ethernet frame crosses WireGuard as
//! `IP(protocol 97) | EtherIP | Ethernet frame`, exactly the packet RFC 3378
//! would put on the wire. [`TunnelAddrs::wrap_frame`] and [`unwrap_frame`]
//! build and take apart that stack.
//!
//! These are not general-purpose IP parsers. [`Ipv4Repr::parse`] and
//! [`Ipv6Repr::parse`] accept only unfragmented packets with protocol (next
//! header) 97 and report anything else by number in the error. On parse:
//!
//! * IPv4: version 4, header length at least 20 bytes and inside the packet,
//!   total length covering the header and inside the buffer (bytes after it,
//!   such as WireGuard padding, are ignored), a correct header checksum, no
//!   fragmentation (MF clear, offset 0). Options are skipped unread; DSCP,
//!   ECN and the identification are ignored.
//! * IPv6: version 6, payload length inside the buffer (bytes after it are
//!   ignored), next header 97. Extension headers are not supported: a packet
//!   with one is reported as "next header N is not EtherIP". Traffic class
//!   and flow label are ignored.
//!
//! On emit, IPv4 has no options, DSCP and ECN 0, identification 0 and DF set
//! (an atomic datagram, RFC 6864), and IPv6 has traffic class and flow label
//! 0. Inside WireGuard nothing routes these headers; their addresses only
//! matter to a peer that filters by them, like a wireguard-go peer checking
//! its allowed IPs.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::etherip::{self, Compat, EtherIpError, ETHERNET_HEADER_LEN, IP_PROTOCOL};

/// An IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// An IPv6 header without extension headers.
pub const IPV6_HEADER_LEN: usize = 40;
/// The TTL or hop limit hinan emits.
pub const DEFAULT_HOP_LIMIT: u8 = 64;
/// The largest IPv4 payload (the total length field is 16 bits).
pub const IPV4_MAX_PAYLOAD_LEN: usize = u16::MAX as usize - IPV4_HEADER_LEN;
/// The largest IPv6 payload without a jumbogram option.
pub const IPV6_MAX_PAYLOAD_LEN: usize = u16::MAX as usize;

mod v4field {
    pub(super) type Field = core::ops::Range<usize>;

    pub(super) const VER_IHL: usize = 0;
    pub(super) const DSCP_ECN: usize = 1;
    pub(super) const LENGTH: Field = 2..4;
    pub(super) const IDENT: Field = 4..6;
    pub(super) const FLG_OFF: Field = 6..8;
    pub(super) const TTL: usize = 8;
    pub(super) const PROTOCOL: usize = 9;
    pub(super) const CHECKSUM: Field = 10..12;
    pub(super) const SRC_ADDR: Field = 12..16;
    pub(super) const DST_ADDR: Field = 16..20;

    pub(super) const FLAG_DF: u16 = 0x4000;
    pub(super) const FLAG_MF: u16 = 0x2000;
    pub(super) const OFFSET_MASK: u16 = 0x1fff;
}

mod v6field {
    pub(super) type Field = core::ops::Range<usize>;

    pub(super) const VER_TC_FLOW: Field = 0..4;
    pub(super) const PAYLOAD_LEN: Field = 4..6;
    pub(super) const NEXT_HEADER: usize = 6;
    pub(super) const HOP_LIMIT: usize = 7;
    pub(super) const SRC_ADDR: Field = 8..24;
    pub(super) const DST_ADDR: Field = 24..40;
}

/// Why bytes are not an IP packet carrying EtherIP, or why a frame cannot be
/// wrapped into one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpError {
    #[error("packet rejected: it is empty")]
    Empty,
    #[error("packet rejected: IP version {version} is neither 4 nor 6")]
    UnknownVersion { version: u8 },
    #[error("IPv{version} packet rejected: {len} bytes is shorter than the {need}-byte header")]
    Truncated {
        version: u8,
        len: usize,
        need: usize,
    },
    #[error("IPv{expected} packet rejected: the version field says {found}")]
    WrongVersion { expected: u8, found: u8 },
    #[error("IPv4 packet rejected: header length {ihl} words is below the minimum of 5")]
    BadHeaderLength { ihl: u8 },
    #[error("IPv4 packet rejected: total length {total_len} does not fit a {header_len}-byte header in a {len}-byte packet")]
    BadTotalLength {
        total_len: usize,
        header_len: usize,
        len: usize,
    },
    #[error(
        "IPv6 packet rejected: payload length {payload_len} does not fit in a {len}-byte packet"
    )]
    BadPayloadLength { payload_len: usize, len: usize },
    #[error(
        "IPv4 packet rejected: header checksum {found:#06x} is wrong (computed {computed:#06x})"
    )]
    BadChecksum { found: u16, computed: u16 },
    #[error("IPv4 packet rejected: it is a fragment (offset {offset} bytes, more fragments: {more}); EtherIP packets must arrive whole, so lower the inner MTU")]
    Fragmented { offset: usize, more: bool },
    #[error("IP packet rejected: protocol {protocol} is not EtherIP (97)")]
    NotEtherIp { protocol: u8 },
    #[error("frame not wrapped: {len} bytes of EtherIP does not fit in one IPv{version} packet (at most {max})")]
    TooLarge { version: u8, len: usize, max: usize },
    #[error("frame not wrapped: the buffer holds {have} bytes, the packet needs {need}")]
    BufferTooSmall { need: usize, have: usize },
    #[error(transparent)]
    EtherIp(#[from] EtherIpError),
}

/// The Internet checksum (RFC 1071) of `data`: the one's complement of the
/// one's complement sum of its 16-bit big-endian words, an odd last byte
/// padded with zero. A header with a correct checksum field sums to zero.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut words = data.chunks_exact(2);
    for word in &mut words {
        sum += u32::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A read/write view of an IPv4 packet.
///
/// Accessors index the buffer directly: call [`check_len`](Self::check_len)
/// (or build with [`new_checked`](Self::new_checked)) before using one on
/// untrusted bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Wraps a buffer and runs [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, IpError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that every accessor, [`payload`](Self::payload) included, can
    /// run without panicking. Field positions depend on the version, so a
    /// wrong version is reported before a wrong length.
    pub fn check_len(&self) -> Result<(), IpError> {
        let len = self.buffer.as_ref().len();
        if len < IPV4_HEADER_LEN {
            return Err(IpError::Truncated {
                version: 4,
                len,
                need: IPV4_HEADER_LEN,
            });
        }
        if self.version() != 4 {
            return Err(IpError::WrongVersion {
                expected: 4,
                found: self.version(),
            });
        }
        let header_len = self.header_len();
        if header_len < IPV4_HEADER_LEN {
            return Err(IpError::BadHeaderLength {
                ihl: self.buffer.as_ref()[v4field::VER_IHL] & 0x0f,
            });
        }
        if len < header_len {
            return Err(IpError::Truncated {
                version: 4,
                len,
                need: header_len,
            });
        }
        let total_len = usize::from(self.total_len());
        if total_len < header_len || total_len > len {
            return Err(IpError::BadTotalLength {
                total_len,
                header_len,
                len,
            });
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[v4field::VER_IHL] >> 4
    }

    /// The header length in bytes, options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[v4field::VER_IHL] & 0x0f) * 4
    }

    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[v4field::DSCP_ECN]
    }

    /// The length of header and payload.
    pub fn total_len(&self) -> u16 {
        self.read_u16(v4field::LENGTH)
    }

    pub fn ident(&self) -> u16 {
        self.read_u16(v4field::IDENT)
    }

    pub fn dont_frag(&self) -> bool {
        self.read_u16(v4field::FLG_OFF) & v4field::FLAG_DF != 0
    }

    pub fn more_frags(&self) -> bool {
        self.read_u16(v4field::FLG_OFF) & v4field::FLAG_MF != 0
    }

    /// The fragment offset in bytes.
    pub fn frag_offset(&self) -> usize {
        usize::from(self.read_u16(v4field::FLG_OFF) & v4field::OFFSET_MASK) * 8
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[v4field::TTL]
    }

    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[v4field::PROTOCOL]
    }

    pub fn checksum(&self) -> u16 {
        self.read_u16(v4field::CHECKSUM)
    }

    pub fn src_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[v4field::SRC_ADDR];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    pub fn dst_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[v4field::DST_ADDR];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// Whether the header, options included, sums to zero.
    pub fn verify_checksum(&self) -> bool {
        checksum(&self.buffer.as_ref()[..self.header_len()]) == 0
    }

    /// The bytes between the header (and its options) and the total length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }

    fn read_u16(&self, range: v4field::Field) -> u16 {
        let b = &self.buffer.as_ref()[range];
        u16::from_be_bytes([b[0], b[1]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    pub fn set_version(&mut self, value: u8) {
        let b = &mut self.buffer.as_mut()[v4field::VER_IHL];
        *b = (value << 4) | (*b & 0x0f);
    }

    /// Sets the header length in bytes; it must be a multiple of 4.
    pub fn set_header_len(&mut self, bytes: usize) {
        let b = &mut self.buffer.as_mut()[v4field::VER_IHL];
        *b = (*b & 0xf0) | ((bytes / 4) as u8 & 0x0f);
    }

    pub fn set_dscp_ecn(&mut self, value: u8) {
        self.buffer.as_mut()[v4field::DSCP_ECN] = value;
    }

    pub fn set_total_len(&mut self, value: u16) {
        self.write_u16(v4field::LENGTH, value);
    }

    pub fn set_ident(&mut self, value: u16) {
        self.write_u16(v4field::IDENT, value);
    }

    /// Sets DF, MF and the fragment offset (in bytes, a multiple of 8).
    pub fn set_frag(&mut self, dont_frag: bool, more_frags: bool, offset: usize) {
        let mut value = ((offset / 8) as u16) & v4field::OFFSET_MASK;
        if dont_frag {
            value |= v4field::FLAG_DF;
        }
        if more_frags {
            value |= v4field::FLAG_MF;
        }
        self.write_u16(v4field::FLG_OFF, value);
    }

    pub fn set_hop_limit(&mut self, value: u8) {
        self.buffer.as_mut()[v4field::TTL] = value;
    }

    pub fn set_protocol(&mut self, value: u8) {
        self.buffer.as_mut()[v4field::PROTOCOL] = value;
    }

    pub fn set_checksum(&mut self, value: u16) {
        self.write_u16(v4field::CHECKSUM, value);
    }

    pub fn set_src_addr(&mut self, value: Ipv4Addr) {
        self.buffer.as_mut()[v4field::SRC_ADDR].copy_from_slice(&value.octets());
    }

    pub fn set_dst_addr(&mut self, value: Ipv4Addr) {
        self.buffer.as_mut()[v4field::DST_ADDR].copy_from_slice(&value.octets());
    }

    /// Computes the header checksum, options included, and writes it.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = checksum(&self.buffer.as_ref()[..self.header_len()]);
        self.set_checksum(sum);
    }

    /// Where the payload goes, up to the total length.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = self.header_len()..usize::from(self.total_len());
        &mut self.buffer.as_mut()[range]
    }

    fn write_u16(&mut self, range: v4field::Field, value: u16) {
        self.buffer.as_mut()[range].copy_from_slice(&value.to_be_bytes());
    }
}

/// An IPv4 header carrying EtherIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Repr {
    pub src_addr: Ipv4Addr,
    pub dst_addr: Ipv4Addr,
    /// The TTL.
    pub hop_limit: u8,
    /// The EtherIP packet's length.
    pub payload_len: usize,
}

impl Ipv4Repr {
    /// Parses and checks an IPv4 header (see the module docs for what is
    /// accepted). Never panics, whatever the bytes.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Ipv4Packet<&T>) -> Result<Self, IpError> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            let header = &packet.buffer.as_ref()[..packet.header_len()];
            let mut zeroed = header.to_vec();
            zeroed[v4field::CHECKSUM].fill(0);
            return Err(IpError::BadChecksum {
                found: packet.checksum(),
                computed: checksum(&zeroed),
            });
        }
        if packet.more_frags() || packet.frag_offset() != 0 {
            return Err(IpError::Fragmented {
                offset: packet.frag_offset(),
                more: packet.more_frags(),
            });
        }
        if packet.protocol() != IP_PROTOCOL {
            return Err(IpError::NotEtherIp {
                protocol: packet.protocol(),
            });
        }
        Ok(Ipv4Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            hop_limit: packet.hop_limit(),
            payload_len: packet.payload().len(),
        })
    }

    /// The header length; the payload follows it.
    pub const fn buffer_len(&self) -> usize {
        IPV4_HEADER_LEN
    }

    /// Writes the header, checksum included. The payload is the caller's to
    /// write, into [`Ipv4Packet::payload_mut`] (the checksum does not cover
    /// it).
    ///
    /// # Panics
    ///
    /// If the buffer is shorter than [`buffer_len`](Self::buffer_len), or
    /// `payload_len` exceeds [`IPV4_MAX_PAYLOAD_LEN`]: both are caller bugs.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv4Packet<T>) {
        assert!(
            packet.buffer.as_ref().len() >= IPV4_HEADER_LEN,
            "IPv4 buffer must hold the {IPV4_HEADER_LEN}-byte header"
        );
        assert!(
            self.payload_len <= IPV4_MAX_PAYLOAD_LEN,
            "IPv4 payload of {} bytes exceeds {IPV4_MAX_PAYLOAD_LEN}",
            self.payload_len
        );
        packet.set_version(4);
        packet.set_header_len(IPV4_HEADER_LEN);
        packet.set_dscp_ecn(0);
        packet.set_total_len((IPV4_HEADER_LEN + self.payload_len) as u16);
        packet.set_ident(0);
        packet.set_frag(true, false, 0);
        packet.set_hop_limit(self.hop_limit);
        packet.set_protocol(IP_PROTOCOL);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet.fill_checksum();
    }
}

/// A read/write view of an IPv6 packet.
///
/// Accessors index the buffer directly: call [`check_len`](Self::check_len)
/// (or build with [`new_checked`](Self::new_checked)) before using one on
/// untrusted bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }

    /// Wraps a buffer and runs [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, IpError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that every accessor, [`payload`](Self::payload) included, can
    /// run without panicking; a wrong version is reported before a wrong
    /// length.
    pub fn check_len(&self) -> Result<(), IpError> {
        let len = self.buffer.as_ref().len();
        if len < IPV6_HEADER_LEN {
            return Err(IpError::Truncated {
                version: 6,
                len,
                need: IPV6_HEADER_LEN,
            });
        }
        if self.version() != 6 {
            return Err(IpError::WrongVersion {
                expected: 6,
                found: self.version(),
            });
        }
        let payload_len = usize::from(self.payload_len());
        if IPV6_HEADER_LEN + payload_len > len {
            return Err(IpError::BadPayloadLength { payload_len, len });
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[v6field::VER_TC_FLOW.start] >> 4
    }

    pub fn traffic_class(&self) -> u8 {
        ((self.ver_tc_flow() >> 20) & 0xff) as u8
    }

    pub fn flow_label(&self) -> u32 {
        self.ver_tc_flow() & 0x000f_ffff
    }

    pub fn payload_len(&self) -> u16 {
        let b = &self.buffer.as_ref()[v6field::PAYLOAD_LEN];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[v6field::NEXT_HEADER]
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[v6field::HOP_LIMIT]
    }

    pub fn src_addr(&self) -> Ipv6Addr {
        Self::addr(&self.buffer.as_ref()[v6field::SRC_ADDR])
    }

    pub fn dst_addr(&self) -> Ipv6Addr {
        Self::addr(&self.buffer.as_ref()[v6field::DST_ADDR])
    }

    /// The bytes after the fixed header, up to the payload length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[IPV6_HEADER_LEN..IPV6_HEADER_LEN + usize::from(self.payload_len())]
    }

    fn ver_tc_flow(&self) -> u32 {
        let b = &self.buffer.as_ref()[v6field::VER_TC_FLOW];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    fn addr(bytes: &[u8]) -> Ipv6Addr {
        let mut octets = [0; 16];
        octets.copy_from_slice(bytes);
        Ipv6Addr::from(octets)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// Sets version, traffic class and flow label (20 bits) together.
    pub fn set_ver_tc_flow(&mut self, version: u8, traffic_class: u8, flow_label: u32) {
        let word = (u32::from(version & 0x0f) << 28)
            | (u32::from(traffic_class) << 20)
            | (flow_label & 0x000f_ffff);
        self.buffer.as_mut()[v6field::VER_TC_FLOW].copy_from_slice(&word.to_be_bytes());
    }

    pub fn set_payload_len(&mut self, value: u16) {
        self.buffer.as_mut()[v6field::PAYLOAD_LEN].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_next_header(&mut self, value: u8) {
        self.buffer.as_mut()[v6field::NEXT_HEADER] = value;
    }

    pub fn set_hop_limit(&mut self, value: u8) {
        self.buffer.as_mut()[v6field::HOP_LIMIT] = value;
    }

    pub fn set_src_addr(&mut self, value: Ipv6Addr) {
        self.buffer.as_mut()[v6field::SRC_ADDR].copy_from_slice(&value.octets());
    }

    pub fn set_dst_addr(&mut self, value: Ipv6Addr) {
        self.buffer.as_mut()[v6field::DST_ADDR].copy_from_slice(&value.octets());
    }

    /// Where the payload goes, up to the payload length.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = IPV6_HEADER_LEN + usize::from(self.payload_len());
        &mut self.buffer.as_mut()[IPV6_HEADER_LEN..end]
    }
}

/// An IPv6 header carrying EtherIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv6Repr {
    pub src_addr: Ipv6Addr,
    pub dst_addr: Ipv6Addr,
    pub hop_limit: u8,
    /// The EtherIP packet's length.
    pub payload_len: usize,
}

impl Ipv6Repr {
    /// Parses and checks an IPv6 header (see the module docs for what is
    /// accepted). Never panics, whatever the bytes.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Ipv6Packet<&T>) -> Result<Self, IpError> {
        packet.check_len()?;
        if packet.next_header() != IP_PROTOCOL {
            return Err(IpError::NotEtherIp {
                protocol: packet.next_header(),
            });
        }
        Ok(Ipv6Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            hop_limit: packet.hop_limit(),
            payload_len: usize::from(packet.payload_len()),
        })
    }

    /// The header length; the payload follows it.
    pub const fn buffer_len(&self) -> usize {
        IPV6_HEADER_LEN
    }

    /// Writes the header. The payload is the caller's to write, into
    /// [`Ipv6Packet::payload_mut`].
    ///
    /// # Panics
    ///
    /// If the buffer is shorter than [`buffer_len`](Self::buffer_len), or
    /// `payload_len` exceeds [`IPV6_MAX_PAYLOAD_LEN`]: both are caller bugs.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv6Packet<T>) {
        assert!(
            packet.buffer.as_ref().len() >= IPV6_HEADER_LEN,
            "IPv6 buffer must hold the {IPV6_HEADER_LEN}-byte header"
        );
        assert!(
            self.payload_len <= IPV6_MAX_PAYLOAD_LEN,
            "IPv6 payload of {} bytes exceeds {IPV6_MAX_PAYLOAD_LEN}",
            self.payload_len
        );
        packet.set_ver_tc_flow(6, 0, 0);
        packet.set_payload_len(self.payload_len as u16);
        packet.set_next_header(IP_PROTOCOL);
        packet.set_hop_limit(self.hop_limit);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
    }
}

/// The addresses of the IP header in front of EtherIP, and with them the IP
/// version: the tunnel addresses inside WireGuard, or the outer addresses of
/// raw RFC 3378 EtherIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunnelAddrs {
    V4 { local: Ipv4Addr, peer: Ipv4Addr },
    V6 { local: Ipv6Addr, peer: Ipv6Addr },
}

impl TunnelAddrs {
    /// IP header plus EtherIP header: what [`wrap_frame`](Self::wrap_frame)
    /// puts in front of a frame.
    pub const fn overhead(&self) -> usize {
        let ip = match self {
            TunnelAddrs::V4 { .. } => IPV4_HEADER_LEN,
            TunnelAddrs::V6 { .. } => IPV6_HEADER_LEN,
        };
        ip + etherip::HEADER_LEN
    }

    /// Writes `IP(local -> peer, protocol 97) | EtherIP | frame` into the
    /// start of `out` and returns the written part.
    pub fn wrap_frame<'a>(&self, frame: &[u8], out: &'a mut [u8]) -> Result<&'a [u8], IpError> {
        if frame.len() < ETHERNET_HEADER_LEN {
            return Err(EtherIpError::FrameTooShort { len: frame.len() }.into());
        }
        let payload_len = etherip::HEADER_LEN + frame.len();
        let (version, max) = match self {
            TunnelAddrs::V4 { .. } => (4, IPV4_MAX_PAYLOAD_LEN),
            TunnelAddrs::V6 { .. } => (6, IPV6_MAX_PAYLOAD_LEN),
        };
        if payload_len > max {
            return Err(IpError::TooLarge {
                version,
                len: payload_len,
                max,
            });
        }
        let need = self.overhead() + frame.len();
        if out.len() < need {
            return Err(IpError::BufferTooSmall {
                need,
                have: out.len(),
            });
        }
        let out = &mut out[..need];
        let etherip = match *self {
            TunnelAddrs::V4 { local, peer } => {
                let repr = Ipv4Repr {
                    src_addr: local,
                    dst_addr: peer,
                    hop_limit: DEFAULT_HOP_LIMIT,
                    payload_len,
                };
                let mut packet = Ipv4Packet::new_unchecked(&mut out[..]);
                repr.emit(&mut packet);
                &mut out[IPV4_HEADER_LEN..]
            }
            TunnelAddrs::V6 { local, peer } => {
                let repr = Ipv6Repr {
                    src_addr: local,
                    dst_addr: peer,
                    hop_limit: DEFAULT_HOP_LIMIT,
                    payload_len,
                };
                let mut packet = Ipv6Packet::new_unchecked(&mut out[..]);
                repr.emit(&mut packet);
                &mut out[IPV6_HEADER_LEN..]
            }
        };
        etherip::wrap_frame(frame, etherip)?;
        Ok(out)
    }
}

/// Checks an IPv4 or IPv6 packet carrying EtherIP, and returns the Ethernet
/// frame inside. The IP version comes from the first nibble; the addresses
/// are not checked.
pub fn unwrap_frame(packet: &[u8], compat: Compat) -> Result<&[u8], IpError> {
    let Some(first) = packet.first() else {
        return Err(IpError::Empty);
    };
    let payload = match first >> 4 {
        4 => {
            let view = Ipv4Packet::new_checked(packet)?;
            Ipv4Repr::parse(&view)?;
            let (start, end) = (view.header_len(), usize::from(view.total_len()));
            &packet[start..end]
        }
        6 => {
            let view = Ipv6Packet::new_checked(packet)?;
            let repr = Ipv6Repr::parse(&view)?;
            &packet[IPV6_HEADER_LEN..IPV6_HEADER_LEN + repr.payload_len]
        }
        version => return Err(IpError::UnknownVersion { version }),
    };
    Ok(etherip::unwrap_frame(payload, compat)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etherip::tests::ARP_REQUEST;
    use proptest::prelude::*;

    /// [`ARP_REQUEST`] in EtherIP in IPv4 from 192.0.2.1 to 192.0.2.2: what
    /// RFC 3378 puts on the wire, and what hinan puts inside WireGuard. TTL
    /// 64, DF, identification 0; checksum 0xb659 computed independently.
    #[rustfmt::skip]
    const IPV4_ETHERIP_ARP: [u8; 64] = [
        0x45, 0x00, 0x00, 0x40, // version 4, IHL 5, total length 64
        0x00, 0x00, 0x40, 0x00, // ident 0, DF
        0x40, 0x61, 0xb6, 0x59, // TTL 64, protocol 97, checksum
        0xc0, 0x00, 0x02, 0x01, // 192.0.2.1
        0xc0, 0x00, 0x02, 0x02, // 192.0.2.2
        0x30, 0x00,             // EtherIP version 3
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08, 0x06,
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01,
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x0a, 0x00, 0x00, 0x01,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x02,
    ];

    /// The same EtherIP packet in IPv6 from 2001:db8::1 to 2001:db8::2.
    #[rustfmt::skip]
    const IPV6_HEADER: [u8; 40] = [
        0x60, 0x00, 0x00, 0x00, // version 6, traffic class 0, flow 0
        0x00, 0x2c, 0x61, 0x40, // payload length 44, next header 97, hop limit 64
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02,
    ];

    fn ipv6_etherip_arp() -> Vec<u8> {
        let mut bytes = IPV6_HEADER.to_vec();
        bytes.extend_from_slice(&IPV4_ETHERIP_ARP[20..]);
        bytes
    }

    fn v4_addrs() -> TunnelAddrs {
        TunnelAddrs::V4 {
            local: Ipv4Addr::new(192, 0, 2, 1),
            peer: Ipv4Addr::new(192, 0, 2, 2),
        }
    }

    fn v6_addrs() -> TunnelAddrs {
        TunnelAddrs::V6 {
            local: "2001:db8::1".parse().unwrap(),
            peer: "2001:db8::2".parse().unwrap(),
        }
    }

    fn parse_v4(bytes: &[u8]) -> Result<Ipv4Repr, IpError> {
        Ipv4Repr::parse(&Ipv4Packet::new_checked(bytes)?)
    }

    fn parse_v6(bytes: &[u8]) -> Result<Ipv6Repr, IpError> {
        Ipv6Repr::parse(&Ipv6Packet::new_checked(bytes)?)
    }

    #[test]
    fn checksum_matches_the_rfc1071_worked_example() {
        // The IPv4 header of a UDP packet 192.168.0.1 -> 192.168.0.199 whose
        // checksum, 0xb861, is the usual textbook example.
        let header: [u8; 20] = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&header), 0xb861);
        let mut filled = header;
        filled[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(checksum(&filled), 0);
        // Odd length: the last byte is the high half of a zero-padded word.
        assert_eq!(checksum(&[0x01]), !0x0100);
    }

    #[test]
    fn parses_ipv4_etherip_arp() {
        let packet = Ipv4Packet::new_checked(&IPV4_ETHERIP_ARP[..]).unwrap();
        assert_eq!(
            Ipv4Repr::parse(&packet),
            Ok(Ipv4Repr {
                src_addr: Ipv4Addr::new(192, 0, 2, 1),
                dst_addr: Ipv4Addr::new(192, 0, 2, 2),
                hop_limit: 64,
                payload_len: 44,
            })
        );
        assert!(packet.dont_frag());
        assert_eq!(packet.checksum(), 0xb659);
        assert_eq!(
            unwrap_frame(&IPV4_ETHERIP_ARP, Compat::Strict),
            Ok(&ARP_REQUEST[..])
        );
    }

    #[test]
    fn emits_ipv4_etherip_arp() {
        let mut out = [0xaau8; 100];
        let written = v4_addrs().wrap_frame(&ARP_REQUEST, &mut out).unwrap();
        assert_eq!(written, &IPV4_ETHERIP_ARP[..]);
    }

    #[test]
    fn parses_and_emits_ipv6_etherip_arp() {
        let bytes = ipv6_etherip_arp();
        assert_eq!(
            parse_v6(&bytes),
            Ok(Ipv6Repr {
                src_addr: "2001:db8::1".parse().unwrap(),
                dst_addr: "2001:db8::2".parse().unwrap(),
                hop_limit: 64,
                payload_len: 44,
            })
        );
        assert_eq!(unwrap_frame(&bytes, Compat::Strict), Ok(&ARP_REQUEST[..]));
        let mut out = [0u8; 100];
        assert_eq!(
            v6_addrs().wrap_frame(&ARP_REQUEST, &mut out).unwrap(),
            &bytes[..]
        );
    }

    #[test]
    fn ipv4_options_are_skipped() {
        // IHL 6: NOP, NOP, NOP, End of options; checksum 0xb354 over 24 bytes.
        let mut bytes = IPV4_ETHERIP_ARP[..20].to_vec();
        bytes[0] = 0x46;
        bytes[3] = 68;
        bytes[10..12].copy_from_slice(&[0xb3, 0x54]);
        bytes.extend_from_slice(&[0x01, 0x01, 0x01, 0x00]);
        bytes.extend_from_slice(&IPV4_ETHERIP_ARP[20..]);
        assert_eq!(parse_v4(&bytes).unwrap().payload_len, 44);
        assert_eq!(unwrap_frame(&bytes, Compat::Strict), Ok(&ARP_REQUEST[..]));
    }

    #[test]
    fn trailing_bytes_after_the_ip_length_are_ignored() {
        // WireGuard peers that pad plaintext to 16 bytes leave zeros here.
        let mut v4 = IPV4_ETHERIP_ARP.to_vec();
        v4.extend_from_slice(&[0; 12]);
        assert_eq!(unwrap_frame(&v4, Compat::Strict), Ok(&ARP_REQUEST[..]));
        let mut v6 = ipv6_etherip_arp();
        v6.extend_from_slice(&[0; 12]);
        assert_eq!(unwrap_frame(&v6, Compat::Strict), Ok(&ARP_REQUEST[..]));
    }

    #[test]
    fn ipv4_errors_name_the_problem() {
        let mut bad = IPV4_ETHERIP_ARP;
        bad[10] ^= 0xff;
        assert_eq!(
            parse_v4(&bad),
            Err(IpError::BadChecksum {
                found: 0x4959,
                computed: 0xb659
            })
        );

        let mut udp = IPV4_ETHERIP_ARP;
        udp[9] = 17;
        Ipv4Packet::new_unchecked(&mut udp[..]).fill_checksum();
        let err = parse_v4(&udp).unwrap_err();
        assert_eq!(err, IpError::NotEtherIp { protocol: 17 });
        assert!(err.to_string().contains("protocol 17 is not EtherIP"));

        let mut fragment = IPV4_ETHERIP_ARP;
        Ipv4Packet::new_unchecked(&mut fragment[..]).set_frag(false, true, 0);
        Ipv4Packet::new_unchecked(&mut fragment[..]).fill_checksum();
        assert_eq!(
            parse_v4(&fragment),
            Err(IpError::Fragmented {
                offset: 0,
                more: true
            })
        );

        let mut ihl4 = IPV4_ETHERIP_ARP;
        ihl4[0] = 0x44;
        assert_eq!(parse_v4(&ihl4), Err(IpError::BadHeaderLength { ihl: 4 }));

        assert_eq!(
            parse_v4(&IPV4_ETHERIP_ARP[..63]),
            Err(IpError::BadTotalLength {
                total_len: 64,
                header_len: 20,
                len: 63
            })
        );
        assert_eq!(
            parse_v4(&IPV4_ETHERIP_ARP[..19]),
            Err(IpError::Truncated {
                version: 4,
                len: 19,
                need: 20
            })
        );
        assert_eq!(
            parse_v4(&ipv6_etherip_arp()),
            Err(IpError::WrongVersion {
                expected: 4,
                found: 6
            })
        );
    }

    #[test]
    fn ipv6_errors_name_the_problem() {
        let mut hop_by_hop = ipv6_etherip_arp();
        hop_by_hop[6] = 0;
        assert_eq!(
            parse_v6(&hop_by_hop),
            Err(IpError::NotEtherIp { protocol: 0 })
        );
        let bytes = ipv6_etherip_arp();
        assert_eq!(
            parse_v6(&bytes[..83]),
            Err(IpError::BadPayloadLength {
                payload_len: 44,
                len: 83
            })
        );
        assert_eq!(
            parse_v6(&IPV4_ETHERIP_ARP),
            Err(IpError::WrongVersion {
                expected: 6,
                found: 4
            })
        );
    }

    #[test]
    fn unwrap_dispatches_on_the_version_and_checks_etherip() {
        assert_eq!(unwrap_frame(&[], Compat::Strict), Err(IpError::Empty));
        assert_eq!(
            unwrap_frame(&[0x50; 40], Compat::Strict),
            Err(IpError::UnknownVersion { version: 5 })
        );
        let mut reversed = IPV4_ETHERIP_ARP;
        reversed[20] = 0x03;
        assert_eq!(
            unwrap_frame(&reversed, Compat::Strict),
            Err(IpError::EtherIp(EtherIpError::ReversedHeader))
        );
        assert_eq!(
            unwrap_frame(&reversed, Compat::ReversedNibble),
            Ok(&ARP_REQUEST[..])
        );
    }

    #[test]
    fn wrap_refuses_what_does_not_fit() {
        let mut out = [0u8; 64];
        assert_eq!(
            v4_addrs().wrap_frame(&ARP_REQUEST, &mut out[..63]),
            Err(IpError::BufferTooSmall { need: 64, have: 63 })
        );
        assert_eq!(
            v4_addrs().wrap_frame(&ARP_REQUEST[..10], &mut out),
            Err(IpError::EtherIp(EtherIpError::FrameTooShort { len: 10 }))
        );
        let jumbo = vec![0u8; IPV4_MAX_PAYLOAD_LEN - 1];
        let mut big = vec![0u8; 70_000];
        assert_eq!(
            v4_addrs().wrap_frame(&jumbo, &mut big),
            Err(IpError::TooLarge {
                version: 4,
                len: IPV4_MAX_PAYLOAD_LEN + 1,
                max: IPV4_MAX_PAYLOAD_LEN
            })
        );
        assert!(v4_addrs()
            .wrap_frame(&jumbo[..IPV4_MAX_PAYLOAD_LEN - 2], &mut big)
            .is_ok());
        let jumbo6 = vec![0u8; IPV6_MAX_PAYLOAD_LEN - 1];
        assert!(matches!(
            v6_addrs().wrap_frame(&jumbo6, &mut big),
            Err(IpError::TooLarge { version: 6, .. })
        ));
    }

    fn any_addrs() -> impl Strategy<Value = TunnelAddrs> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<[u8; 4]>()).prop_map(|(l, p)| TunnelAddrs::V4 {
                local: l.into(),
                peer: p.into()
            }),
            (any::<[u8; 16]>(), any::<[u8; 16]>()).prop_map(|(l, p)| TunnelAddrs::V6 {
                local: l.into(),
                peer: p.into()
            }),
        ]
    }

    proptest! {
        #[test]
        fn ipv4_emit_then_parse_round_trips(
            src in any::<[u8; 4]>(),
            dst in any::<[u8; 4]>(),
            hop_limit in any::<u8>(),
            payload in proptest::collection::vec(any::<u8>(), 0..1600),
        ) {
            let repr = Ipv4Repr {
                src_addr: src.into(),
                dst_addr: dst.into(),
                hop_limit,
                payload_len: payload.len(),
            };
            let mut buf = vec![0u8; repr.buffer_len() + payload.len()];
            let mut packet = Ipv4Packet::new_unchecked(&mut buf[..]);
            repr.emit(&mut packet);
            packet.payload_mut().copy_from_slice(&payload);
            let packet = Ipv4Packet::new_checked(&buf[..]).unwrap();
            prop_assert!(packet.verify_checksum());
            prop_assert_eq!(Ipv4Repr::parse(&packet), Ok(repr));
            prop_assert_eq!(packet.payload(), &payload[..]);
        }

        #[test]
        fn ipv4_options_of_any_length_are_skipped(
            words in 0usize..=10,
            options in any::<[u8; 40]>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let header_len = IPV4_HEADER_LEN + 4 * words;
            let mut buf = vec![0u8; header_len + payload.len()];
            let mut packet = Ipv4Packet::new_unchecked(&mut buf[..]);
            Ipv4Repr {
                src_addr: Ipv4Addr::LOCALHOST,
                dst_addr: Ipv4Addr::BROADCAST,
                hop_limit: 1,
                payload_len: 0,
            }
            .emit(&mut packet);
            packet.set_header_len(header_len);
            packet.set_total_len((header_len + payload.len()) as u16);
            buf[IPV4_HEADER_LEN..header_len].copy_from_slice(&options[..4 * words]);
            buf[header_len..].copy_from_slice(&payload);
            Ipv4Packet::new_unchecked(&mut buf[..]).fill_checksum();
            let packet = Ipv4Packet::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(parse_v4(&buf).map(|r| r.payload_len), Ok(payload.len()));
            prop_assert_eq!(packet.payload(), &payload[..]);
        }

        #[test]
        fn ipv6_emit_then_parse_round_trips(
            src in any::<[u8; 16]>(),
            dst in any::<[u8; 16]>(),
            hop_limit in any::<u8>(),
            payload in proptest::collection::vec(any::<u8>(), 0..1600),
        ) {
            let repr = Ipv6Repr {
                src_addr: src.into(),
                dst_addr: dst.into(),
                hop_limit,
                payload_len: payload.len(),
            };
            let mut buf = vec![0u8; repr.buffer_len() + payload.len()];
            let mut packet = Ipv6Packet::new_unchecked(&mut buf[..]);
            repr.emit(&mut packet);
            packet.payload_mut().copy_from_slice(&payload);
            let packet = Ipv6Packet::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(Ipv6Repr::parse(&packet), Ok(repr));
            prop_assert_eq!(packet.payload(), &payload[..]);
            prop_assert_eq!((packet.traffic_class(), packet.flow_label()), (0, 0));
        }

        #[test]
        fn wrap_then_unwrap_round_trips(
            addrs in any_addrs(),
            frame in proptest::collection::vec(any::<u8>(), ETHERNET_HEADER_LEN..1600),
        ) {
            let mut out = vec![0u8; 1700];
            let len = addrs.wrap_frame(&frame, &mut out).unwrap().len();
            prop_assert_eq!(len, addrs.overhead() + frame.len());
            prop_assert_eq!(unwrap_frame(&out[..len], Compat::Strict), Ok(&frame[..]));
        }

        #[test]
        fn parse_of_arbitrary_bytes_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let v4 = parse_v4(&bytes);
            prop_assert_eq!(&v4, &Ipv4Repr::parse(&Ipv4Packet::new_unchecked(&bytes[..])));
            let v6 = parse_v6(&bytes);
            prop_assert_eq!(&v6, &Ipv6Repr::parse(&Ipv6Packet::new_unchecked(&bytes[..])));
            let _ = unwrap_frame(&bytes, Compat::ReversedNibble);
        }

        #[test]
        fn parse_of_corrupted_packets_never_panics(
            v6 in any::<bool>(),
            flips in proptest::collection::vec((0usize..84, any::<u8>()), 1..6),
            cut in 0usize..=84,
        ) {
            // Arbitrary bytes rarely pass the version check; start from a
            // valid packet so every later check sees corrupted input too.
            let mut bytes = if v6 { ipv6_etherip_arp() } else { IPV4_ETHERIP_ARP.to_vec() };
            for (at, value) in flips {
                if at < bytes.len() {
                    bytes[at] = value;
                }
            }
            let cut = cut.min(bytes.len());
            for data in [&bytes[..], &bytes[..cut]] {
                if let Ok(frame) = unwrap_frame(data, Compat::ReversedNibble) {
                    prop_assert!(frame.len() >= ETHERNET_HEADER_LEN);
                }
                let _ = parse_v4(data);
                let _ = parse_v6(data);
            }
        }
    }
}
