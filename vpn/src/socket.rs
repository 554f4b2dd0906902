//! The sockets that carry tunnel packets between campuses: a raw IP socket
//! for protocol 97 (RFC 3378) and a UDP socket for WireGuard, both read and
//! written in batches.
//!
//! * Receiving uses `recvmmsg`; on UDP, `UDP_GRO` lets the kernel hand over
//!   several datagrams of one flow in one buffer, split again here by the
//!   segment size it reports.
//! * Sending on UDP uses `UDP_SEGMENT` (GSO): a run of equally sized
//!   datagrams to one peer leaves in one `sendmsg`.
//! * Outer packets may be fragmented (`IP_PMTUDISC_DONT`): a frame larger
//!   than the path allows still crosses, as two fragments, rather than being
//!   dropped. TCP avoids this because the bridge clamps the MSS of SYNs.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use hinan_dataplane::wire::Ipv4Packet;
use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, Socket, Type};

/// The IP protocol number of EtherIP.
pub const IPPROTO_ETHERIP: i32 = 97;
/// Largest buffer one received message may fill (a GRO batch or a
/// reassembled IP packet).
pub const RECV_BUF_LEN: usize = 65_536;
/// Most datagrams one GSO send may carry (the kernel's UDP_MAX_SEGMENTS).
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Socket buffers asked for; as root, above the sysctl limits.
const SOCKET_BUF: usize = 8 << 20;

/// What socket2 does not offer: the `*BUFFORCE` buffer sizes, path MTU
/// discovery and UDP GRO are set through dataplane's one raw `setsockopt`.
/// socket2 has no `recvmmsg`/`sendmmsg` nor a `UDP_SEGMENT` cmsg either, so
/// the batched sends and receives below stay on libc too; everything else
/// (opening, binding, addresses, timeouts, plain buffer sizes) goes through
/// socket2.
mod sys {
    pub(super) const SOL_UDP: i32 = 17;
    pub(super) const UDP_SEGMENT: i32 = 103;
    pub(super) const UDP_GRO: i32 = 104;

    pub(super) use hinan_dataplane::sys::setsockopt;
}

/// Which kind of tunnel socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// IP protocol 97; IPv4 reads include the IP header.
    Raw,
    /// UDP with GSO and GRO.
    Udp,
}

/// A bound tunnel socket.
#[derive(Debug)]
pub struct TunnelSocket {
    socket: Socket,
    kind: SocketKind,
    local: SocketAddr,
    gso: bool,
}

impl AsRawFd for TunnelSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl TunnelSocket {
    /// Opens and binds the socket. Reads time out after `read_timeout` so
    /// the reading thread can notice a shutdown.
    pub fn bind(kind: SocketKind, local: SocketAddr, read_timeout: Duration) -> io::Result<Self> {
        let (ty, proto) = match kind {
            SocketKind::Raw => (Type::RAW, Protocol::from(IPPROTO_ETHERIP)),
            SocketKind::Udp => (Type::DGRAM, Protocol::UDP),
        };
        // socket2 opens it with SOCK_CLOEXEC.
        let socket = Socket::new(Domain::for_address(local), ty, Some(proto))?;
        socket.bind(&SockAddr::from(local))?;
        let raw = socket.as_raw_fd();
        let force = |name| sys::setsockopt(raw, libc::SOL_SOCKET, name, SOCKET_BUF as i32);
        if force(libc::SO_RCVBUFFORCE).is_err() {
            socket.set_recv_buffer_size(SOCKET_BUF)?;
        }
        if force(libc::SO_SNDBUFFORCE).is_err() {
            socket.set_send_buffer_size(SOCKET_BUF)?;
        }
        if local.is_ipv4() {
            sys::setsockopt(
                raw,
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_DONT,
            )?;
        } else {
            sys::setsockopt(
                raw,
                libc::IPPROTO_IPV6,
                libc::IPV6_MTU_DISCOVER,
                libc::IP_PMTUDISC_DONT,
            )?;
        }
        socket.set_read_timeout(Some(read_timeout))?;
        let mut gso = false;
        if kind == SocketKind::Udp {
            // Both are optimisations; an old kernel without them still works.
            let _ = sys::setsockopt(raw, sys::SOL_UDP, sys::UDP_GRO, 1i32);
            gso = true;
        }
        let local = if local.port() == 0 && kind == SocketKind::Udp {
            socket
                .local_addr()
                .ok()
                .and_then(|addr| addr.as_socket())
                .unwrap_or(local)
        } else {
            local
        };
        Ok(TunnelSocket {
            socket,
            kind,
            local,
            gso,
        })
    }

    pub fn kind(&self) -> SocketKind {
        self.kind
    }

    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// Sends one datagram (UDP) or one protocol-97 payload (raw; the kernel
    /// adds the IP header).
    pub fn send_to(&self, bufs: &[&[u8]], to: SocketAddr) -> io::Result<()> {
        self.send_segments(bufs, to, None)
    }

    /// Sends `data`, consecutive datagrams of `segment` bytes (the last may be
    /// shorter), to `to` in one call: UDP GSO when there is more than one.
    pub fn send_batch(&self, data: &[u8], segment: usize, to: SocketAddr) -> io::Result<()> {
        if data.len() <= segment || !self.gso {
            if data.len() <= segment {
                return self.send_to(&[data], to);
            }
            for chunk in data.chunks(segment) {
                self.send_to(&[chunk], to)?;
            }
            return Ok(());
        }
        match self.send_segments(&[data], to, Some(segment as u16)) {
            Err(e)
                if e.raw_os_error() == Some(libc::EIO)
                    || e.raw_os_error() == Some(libc::EINVAL) =>
            {
                // No GSO on this route (or device): one datagram at a time.
                for chunk in data.chunks(segment) {
                    self.send_to(&[chunk], to)?;
                }
                Ok(())
            }
            other => other,
        }
    }

    /// Sends the datagrams laid end to end in `data`, of lengths `lens`, to
    /// `to` with `sendmmsg`.
    pub fn send_many(&self, data: &[u8], lens: &[usize], to: SocketAddr) -> io::Result<()> {
        let addr = SockAddr::from(to);
        let mut iovs = Vec::with_capacity(lens.len());
        let mut at = 0;
        for &len in lens {
            let chunk = data.get(at..at + len).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "datagram lengths exceed the data",
                )
            })?;
            iovs.push(libc::iovec {
                iov_base: chunk.as_ptr() as *mut libc::c_void,
                iov_len: len,
            });
            at += len;
        }
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: all-zero mmsghdr is valid; pointers set here outlive the call.
                let mut m: libc::mmsghdr = unsafe { zeroed() };
                // The kernel only reads the name of a message it sends.
                m.msg_hdr.msg_name = addr.as_ptr().cast_mut().cast();
                m.msg_hdr.msg_namelen = addr.len();
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let mut sent = 0;
        while sent < msgs.len() {
            // SAFETY: msgs[sent..] point at live buffers for the call.
            let ret = unsafe {
                libc::sendmmsg(
                    self.socket.as_raw_fd(),
                    msgs[sent..].as_mut_ptr(),
                    (msgs.len() - sent) as libc::c_uint,
                    0,
                )
            };
            if ret < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    // A full buffer drops the rest, as a router would.
                    Some(libc::ENOBUFS) | Some(libc::EAGAIN) => return Ok(()),
                    _ => return Err(err),
                }
            }
            sent += ret as usize;
        }
        Ok(())
    }

    fn send_segments(&self, bufs: &[&[u8]], to: SocketAddr, gso: Option<u16>) -> io::Result<()> {
        let addr = SockAddr::from(to);
        let mut iov: [libc::iovec; 4] =
            // SAFETY: all-zero iovecs are valid (and unused past iov_len).
            unsafe { zeroed() };
        let n = bufs.len().min(iov.len());
        for (slot, buf) in iov.iter_mut().zip(bufs) {
            slot.iov_base = buf.as_ptr() as *mut libc::c_void;
            slot.iov_len = buf.len();
        }
        // Room for one cmsg with a u16.
        let mut control = [0u64; 4];
        // SAFETY: all-zero msghdr is valid; pointers set below outlive the call.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_name = addr.as_ptr().cast_mut().cast();
        msg.msg_namelen = addr.len();
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = n;
        if let Some(segment) = gso {
            // SAFETY: CMSG_SPACE of a u16 fits the 32-byte control buffer.
            unsafe {
                msg.msg_control = control.as_mut_ptr().cast();
                msg.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = sys::SOL_UDP;
                (*cmsg).cmsg_type = sys::UDP_SEGMENT;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment);
            }
        }
        loop {
            // SAFETY: msg points at live buffers for the call.
            let ret = unsafe { libc::sendmsg(self.socket.as_raw_fd(), &msg, 0) };
            if ret >= 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                // A full socket buffer drops the packet, as a router would.
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) => return Ok(()),
                _ => return Err(err),
            }
        }
    }
}

/// One received message: its source and where its datagrams lie.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub from: SocketAddr,
    pub len: usize,
    /// GRO: the datagrams in the buffer are this long (the last may be
    /// shorter); 0 when the buffer is one datagram.
    pub segment: usize,
}

/// The source address the kernel wrote into `name` (`len` bytes of it), with
/// the IPv6 scope id; `None` for a family other than IPv4 or IPv6.
fn received_from(name: SockAddrStorage, len: libc::socklen_t) -> Option<SocketAddr> {
    // SAFETY: `name` is zeroed storage into which the kernel wrote at most
    // `len` bytes of a socket address.
    unsafe { SockAddr::new(name, len) }.as_socket()
}

/// Buffers for `recvmmsg`.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    names: Vec<SockAddrStorage>,
    controls: Vec<[u64; 8]>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    got: Vec<Received>,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("slots", &self.bufs.len())
            .field("got", &self.got)
            .finish()
    }
}

// SAFETY: the raw pointers in iovs/msgs point into this struct's own buffers
// and are rebuilt before every use.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    pub fn new(slots: usize, buf_len: usize) -> RecvBatch {
        RecvBatch {
            bufs: (0..slots).map(|_| vec![0; buf_len]).collect(),
            names: (0..slots).map(|_| SockAddrStorage::zeroed()).collect(),
            controls: vec![[0; 8]; slots],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                slots
            ],
            // SAFETY: as above.
            msgs: vec![unsafe { zeroed() }; slots],
            got: Vec::with_capacity(slots),
        }
    }

    /// Receives up to one batch; blocks until at least one message arrives
    /// or the socket's read timeout passes (then `Ok(0)`).
    pub fn recv(&mut self, socket: &TunnelSocket) -> io::Result<usize> {
        let n = self.bufs.len();
        for i in 0..n {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: self.bufs[i].len(),
            };
            let hdr = &mut self.msgs[i].msg_hdr;
            hdr.msg_name = (&mut self.names[i] as *mut SockAddrStorage).cast();
            hdr.msg_namelen = self.names[i].size_of();
            hdr.msg_iov = &mut self.iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = self.controls[i].as_mut_ptr().cast();
            hdr.msg_controllen = size_of::<[u64; 8]>();
            hdr.msg_flags = 0;
            self.msgs[i].msg_len = 0;
        }
        self.got.clear();
        // SAFETY: every msghdr points at live buffers of this batch.
        let ret = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.msgs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if ret < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
                _ => Err(err),
            };
        }
        for i in 0..ret as usize {
            let name = std::mem::replace(&mut self.names[i], SockAddrStorage::zeroed());
            let Some(from) = received_from(name, self.msgs[i].msg_hdr.msg_namelen) else {
                continue;
            };
            let mut segment = 0;
            let hdr = &self.msgs[i].msg_hdr;
            // SAFETY: the kernel filled msg_controllen bytes of cmsgs.
            unsafe {
                let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
                while !cmsg.is_null() {
                    if (*cmsg).cmsg_level == sys::SOL_UDP && (*cmsg).cmsg_type == sys::UDP_GRO {
                        segment =
                            std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>()) as usize;
                    }
                    cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
                }
            }
            self.got.push(Received {
                from,
                len: self.msgs[i].msg_len as usize,
                segment,
            });
        }
        Ok(self.got.len())
    }

    /// The messages of the last [`recv`](Self::recv) with their bytes.
    pub fn messages(&self) -> impl Iterator<Item = (Received, &[u8])> + '_ {
        self.got
            .iter()
            .zip(&self.bufs)
            .map(|(r, buf)| (*r, &buf[..r.len]))
    }
}

/// Splits a received message into its datagrams (GRO) or yields it whole.
pub fn datagrams(msg: &[u8], segment: usize) -> impl Iterator<Item = &[u8]> {
    let size = if segment == 0 {
        msg.len().max(1)
    } else {
        segment
    };
    msg.chunks(size)
}

/// The source of a raw IPv4 read, which includes the IP header, and the
/// protocol-97 payload after it; `None` if the header is unreadable. The
/// header checksum is the kernel's to check.
pub fn strip_ipv4_header(packet: &[u8]) -> Option<(IpAddr, &[u8])> {
    let ip = Ipv4Packet::new_checked(packet).ok()?;
    let payload = packet.get(ip.header_len()..usize::from(ip.total_len()))?;
    Some((IpAddr::V4(ip.src_addr()), payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn sockaddr_round_trip() {
        for text in [
            "198.18.1.2:51820",
            "[2001:db8::1]:7",
            "0.0.0.0:0",
            "[fe80::1%3]:51820",
        ] {
            let sa: SocketAddr = text.parse().unwrap();
            let name = SockAddr::from(sa);
            let len = name.len();
            assert_eq!(received_from(name.as_storage(), len), Some(sa));
        }
    }

    #[test]
    fn ipv4_header_stripped() {
        let mut p = vec![
            0x45, 0, 0, 24, 0, 0, 0x40, 0, 64, 97, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        p.extend_from_slice(&[0x30, 0, 0xaa, 0xbb, 0xcc]);
        let (src, payload) = strip_ipv4_header(&p).unwrap();
        assert_eq!(src, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(payload, &[0x30, 0, 0xaa, 0xbb]);
        assert!(strip_ipv4_header(&p[..10]).is_none());
        assert!(strip_ipv4_header(&[0x60]).is_none());
        assert!(strip_ipv4_header(&[]).is_none());
        let mut bad = p.clone();
        bad[0] = 0x44;
        assert!(strip_ipv4_header(&bad).is_none());
    }

    #[test]
    fn raw_etherip_on_loopback_carries_the_payload_behind_an_ipv4_header() {
        // Needs root or CAP_NET_RAW, as the VPN does.
        let timeout = Duration::from_millis(500);
        let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let socket = TunnelSocket::bind(SocketKind::Raw, local, timeout).unwrap();
        let payload = [0x30, 0x00, 0xde, 0xad, 0xbe, 0xef];
        socket
            .send_to(&[&payload[..2], &payload[2..]], local)
            .unwrap();
        let mut batch = RecvBatch::new(4, RECV_BUF_LEN);
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let mut got = None;
        while got.is_none() && std::time::Instant::now() < deadline {
            batch.recv(&socket).unwrap();
            got = batch.messages().find_map(|(r, msg)| {
                strip_ipv4_header(msg).map(|(src, p)| (r.from, src, p.to_vec()))
            });
        }
        let (from, src, got) = got.expect("the datagram came back");
        assert_eq!(from.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(src, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(got, payload);
    }

    #[test]
    fn gro_split() {
        let msg = [0u8; 10];
        assert_eq!(
            datagrams(&msg, 4).map(<[u8]>::len).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        assert_eq!(datagrams(&msg, 0).count(), 1);
        assert_eq!(datagrams(&[], 0).count(), 0);
    }

    #[test]
    fn sendmmsg_sends_each_datagram() {
        let timeout = Duration::from_millis(500);
        let a =
            TunnelSocket::bind(SocketKind::Udp, "127.0.0.1:0".parse().unwrap(), timeout).unwrap();
        let b =
            TunnelSocket::bind(SocketKind::Udp, "127.0.0.1:0".parse().unwrap(), timeout).unwrap();
        let data: Vec<u8> = (0..60u8).collect();
        a.send_many(&data, &[10, 30, 20], b.local()).unwrap();
        let mut batch = RecvBatch::new(8, RECV_BUF_LEN);
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while got.len() < 3 && std::time::Instant::now() < deadline {
            batch.recv(&b).unwrap();
            got.extend(batch.messages().map(|(_, m)| m.to_vec()));
        }
        assert_eq!(
            got,
            vec![
                data[..10].to_vec(),
                data[10..40].to_vec(),
                data[40..].to_vec()
            ]
        );
        assert!(a.send_many(&data, &[100], b.local()).is_err());
    }

    #[test]
    fn udp_gso_on_loopback() {
        let timeout = Duration::from_millis(500);
        let a =
            TunnelSocket::bind(SocketKind::Udp, "127.0.0.1:0".parse().unwrap(), timeout).unwrap();
        let b =
            TunnelSocket::bind(SocketKind::Udp, "127.0.0.1:0".parse().unwrap(), timeout).unwrap();
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        a.send_batch(&data, 300, b.local()).unwrap();
        let mut batch = RecvBatch::new(8, RECV_BUF_LEN);
        let mut sizes = Vec::new();
        let mut bytes = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while bytes.len() < data.len() && std::time::Instant::now() < deadline {
            batch.recv(&b).unwrap();
            for (r, msg) in batch.messages() {
                assert_eq!(r.from, a.local());
                for d in datagrams(msg, r.segment) {
                    sizes.push(d.len());
                    bytes.extend_from_slice(d);
                }
            }
        }
        assert_eq!(sizes, vec![300, 300, 300, 100]);
        assert_eq!(bytes, data);
    }
}
