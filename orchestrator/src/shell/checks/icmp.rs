//! The network check: one ICMP echo (RFC 792) over a raw socket, matched to
//! its reply by identifier, sequence number and payload.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hinan_dataplane::wire::{checksum, ip_protocol, Ipv4Packet};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

use super::CheckError;

/// An ICMP echo request or reply (RFC 792).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct EchoRepr<'a> {
    pub(super) reply: bool,
    pub(super) ident: u16,
    pub(super) seq_no: u16,
    pub(super) data: &'a [u8],
}

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_HEADER_LEN: usize = 8;
/// `ICMP_FILTER` from linux/icmp.h: a raw socket option (level `SOL_RAW`)
/// whose bit `1 << type` drops ICMP messages of that type.
const ICMP_FILTER: libc::c_int = 1;

impl<'a> EchoRepr<'a> {
    /// Parses an ICMP message (no IP header). Anything but a well-formed echo
    /// with a correct checksum is `None`.
    pub(super) fn parse(icmp: &'a [u8]) -> Option<Self> {
        if icmp.len() < ICMP_HEADER_LEN || checksum(icmp) != 0 || icmp[1] != 0 {
            return None;
        }
        let reply = match icmp[0] {
            ICMP_ECHO_REPLY => true,
            ICMP_ECHO_REQUEST => false,
            _ => return None,
        };
        Some(Self {
            reply,
            ident: u16::from_be_bytes([icmp[4], icmp[5]]),
            seq_no: u16::from_be_bytes([icmp[6], icmp[7]]),
            data: &icmp[ICMP_HEADER_LEN..],
        })
    }

    pub(super) fn buffer_len(&self) -> usize {
        ICMP_HEADER_LEN + self.data.len()
    }

    pub(super) fn emit(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.buffer_len());
        buf.push(if self.reply {
            ICMP_ECHO_REPLY
        } else {
            ICMP_ECHO_REQUEST
        });
        buf.push(0);
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&self.ident.to_be_bytes());
        buf.extend_from_slice(&self.seq_no.to_be_bytes());
        buf.extend_from_slice(self.data);
        let checksum = checksum(&buf);
        buf[2..4].copy_from_slice(&checksum.to_be_bytes());
        buf
    }
}

/// The ICMP message inside an IPv4 datagram from `from`, as a raw socket
/// returns it; `None` for anything else.
pub(super) fn icmp_from(datagram: &[u8], from: Ipv4Addr) -> Option<&[u8]> {
    let ip = Ipv4Packet::new_checked(datagram).ok()?;
    (ip.protocol() == ip_protocol::ICMP && ip.src_addr() == from)
        .then(|| &datagram[ip.header_len()..usize::from(ip.total_len())])
}

/// Makes every echo request of this process distinct, so concurrent checks
/// (and other pingers on the host) never take each other's replies.
static ECHO_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Sends one ICMP echo request to `addr` and waits up to `timeout` for the
/// matching reply (same identifier, sequence number and payload). Needs root
/// or `CAP_NET_RAW`: it uses a raw socket.
pub async fn icmp_echo(addr: Ipv4Addr, timeout: Duration) -> Result<Duration, CheckError> {
    let start = Instant::now();
    match tokio::time::timeout_at(start + timeout, echo(addr, start)).await {
        Ok(result) => result,
        Err(_) => Err(CheckError::NoEchoReply { addr, timeout }),
    }
}

async fn echo(addr: Ipv4Addr, start: Instant) -> Result<Duration, CheckError> {
    let socket = RawIcmpSocket::connect(addr)?;
    let count = ECHO_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut token = [0u8; 16];
    token[..8].copy_from_slice(b"hinan-mn");
    token[8..].copy_from_slice(&count.to_be_bytes());
    let request = EchoRepr {
        reply: false,
        ident: std::process::id() as u16,
        seq_no: count as u16,
        data: &token,
    };
    socket
        .send(&request.emit())
        .await
        .map_err(|error| CheckError::IcmpSend { addr, error })?;
    let mut buf = [0u8; 1500];
    loop {
        let n = socket
            .recv(&mut buf)
            .await
            .map_err(|error| CheckError::IcmpReceive { addr, error })?;
        let reply = icmp_from(&buf[..n], addr).and_then(EchoRepr::parse);
        if reply.is_some_and(|r| {
            r == EchoRepr {
                reply: true,
                ..request
            }
        }) {
            return Ok(start.elapsed());
        }
    }
}

/// A non-blocking raw IPv4 ICMP socket connected to one address, so the
/// kernel hands it only that address's ICMP and, by filter, only echo replies.
#[derive(Debug)]
struct RawIcmpSocket {
    fd: AsyncFd<Socket>,
}

impl RawIcmpSocket {
    fn connect(addr: Ipv4Addr) -> Result<Self, CheckError> {
        let socket = Socket::new(
            Domain::IPV4,
            Type::RAW.nonblocking().cloexec(),
            Some(Protocol::ICMPV4),
        )
        .map_err(CheckError::IcmpSocket)?;
        set_icmp_filter(&socket, !(1 << ICMP_ECHO_REPLY)).map_err(CheckError::IcmpSocket)?;
        // Connecting a raw socket only looks up the route.
        socket
            .connect(&SockAddr::from(SocketAddrV4::new(addr, 0)))
            .map_err(|error| CheckError::IcmpSend { addr, error })?;
        // SAFETY: the Socket keeps this descriptor open, and always returns
        // it, for as long as the AsyncFd owns it.
        let fd = unsafe { AsyncFd::register(socket) }
            .map_err(|e| CheckError::IcmpSocket(e.into_parts().1))?;
        Ok(Self { fd })
    }

    async fn send(&self, message: &[u8]) -> io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| fd.get_ref().send(message)) {
                Ok(Ok(n)) if n == message.len() => return Ok(()),
                Ok(Ok(n)) => {
                    return Err(io::Error::other(format!(
                        "sent {n} of {} bytes",
                        message.len()
                    )))
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        use std::io::Read;
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| fd.get_ref().read(buf)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

/// `ICMP_FILTER` (linux/icmp.h): a raw-socket option that drops the ICMP
/// types whose bits are set. socket2 has no setter for it.
fn set_icmp_filter(socket: &Socket, drop_types: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    hinan_dataplane::sys::setsockopt(socket.as_raw_fd(), libc::SOL_RAW, ICMP_FILTER, drop_types)
}
