//! The real checks behind [`crate::monitor`]: ICMP echo over a raw socket,
//! TCP connect, and HTTP/1.0 GET. Each is bounded by its timeout and returns
//! the round-trip time or an error an operator can read.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use thiserror::Error;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use crate::core::monitor::{CheckKind, ServiceCheck, VmId, VmTarget};

/// Why one check failed.
#[derive(Debug, Error)]
pub enum CheckError {
    #[error("cannot open a raw ICMP socket (it needs root or CAP_NET_RAW): {0}")]
    IcmpSocket(io::Error),
    #[error("cannot send an ICMP echo request to {addr}: {error}")]
    IcmpSend { addr: Ipv4Addr, error: io::Error },
    #[error("cannot receive ICMP echo replies from {addr}: {error}")]
    IcmpReceive { addr: Ipv4Addr, error: io::Error },
    #[error("no ICMP echo reply from {addr} within {timeout:?}")]
    NoEchoReply { addr: Ipv4Addr, timeout: Duration },
    #[error("TCP connection to {addr} failed: {error}")]
    Connect { addr: SocketAddr, error: io::Error },
    #[error("no TCP connection to {addr} within {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("HTTP exchange with {addr} failed: {error}")]
    HttpIo { addr: SocketAddr, error: io::Error },
    #[error("no HTTP status line from {addr} within {timeout:?}")]
    HttpTimeout { addr: SocketAddr, timeout: Duration },
    #[error("malformed HTTP response from {addr}: {detail}")]
    MalformedResponse { addr: SocketAddr, detail: String },
    #[error("HTTP {got}, expected {expected}")]
    UnexpectedStatus { got: u16, expected: u16 },
    #[error("HTTP check misconfigured: {0}")]
    InvalidRequest(String),
}

/// A failed check of a named VM, as an operator reads it:
/// "service check of lms1 failed: HTTP 503, expected 200".
#[derive(Debug, Error)]
#[error("{kind} check of {vm} failed: {error}")]
pub struct CheckFailed {
    pub vm: VmId,
    pub kind: CheckKind,
    pub error: CheckError,
}

/// The result of [`run_check`]: the round-trip time, or why it failed.
#[derive(Debug)]
pub struct CheckOutcome {
    pub kind: CheckKind,
    pub result: Result<Duration, CheckError>,
}

impl CheckOutcome {
    /// What [`crate::core::monitor::Monitor::on_result`] takes.
    pub fn is_ok(&self) -> bool {
        self.result.is_ok()
    }

    /// Names the VM in the error, for logs and the audit trail.
    pub fn into_result(self, vm: &str) -> Result<Duration, CheckFailed> {
        let kind = self.kind;
        self.result.map_err(|error| CheckFailed {
            vm: vm.to_string(),
            kind,
            error,
        })
    }
}

/// Runs one check of `target`: ICMP echo for [`CheckKind::Network`], its
/// [`ServiceCheck`] for [`CheckKind::Service`]. HTTP checks send the VM's
/// address (with the port unless it is 80) as the `Host` header.
pub async fn run_check(target: &VmTarget, kind: CheckKind, timeout: Duration) -> CheckOutcome {
    let result = match (kind, &target.service) {
        (CheckKind::Network, _) => icmp_echo(target.addr, timeout).await,
        (CheckKind::Service, ServiceCheck::Tcp { port }) => {
            tcp_connect(SocketAddr::from((target.addr, *port)), timeout).await
        }
        (
            CheckKind::Service,
            ServiceCheck::Http {
                port,
                path,
                expect_status,
            },
        ) => {
            let host = match port {
                80 => target.addr.to_string(),
                _ => format!("{}:{port}", target.addr),
            };
            let addr = SocketAddr::from((target.addr, *port));
            http_get(addr, &host, path, *expect_status, timeout).await
        }
    };
    CheckOutcome { kind, result }
}

/// Accepts a TCP connection to `addr` within `timeout`.
pub async fn tcp_connect(addr: SocketAddr, timeout: Duration) -> Result<Duration, CheckError> {
    let start = Instant::now();
    connect(addr, start + timeout, timeout).await?;
    Ok(start.elapsed())
}

async fn connect(
    addr: SocketAddr,
    deadline: Instant,
    timeout: Duration,
) -> Result<TcpStream, CheckError> {
    timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| CheckError::ConnectTimeout { addr, timeout })?
        .map_err(|error| CheckError::Connect { addr, error })
}

/// The longest status line we wait for; a health endpoint's is about 20 bytes.
const MAX_STATUS_LINE: usize = 1024;

/// Sends `GET path HTTP/1.0` with `Host: host` to `addr` and succeeds when the
/// status line arrives within `timeout` and carries `expect_status`. The body
/// is not read.
pub async fn http_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    expect_status: u16,
    timeout: Duration,
) -> Result<Duration, CheckError> {
    if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_whitespace() || b < 0x20) {
        return Err(CheckError::InvalidRequest(format!(
            "path {path:?} must start with '/' and hold no spaces or control characters"
        )));
    }
    if host.is_empty() || host.bytes().any(|b| b.is_ascii_whitespace() || b < 0x20) {
        return Err(CheckError::InvalidRequest(format!(
            "host {host:?} must be non-empty and hold no spaces or control characters"
        )));
    }
    let start = Instant::now();
    let deadline = start + timeout;
    let mut stream = connect(addr, deadline, timeout).await?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: hinan-monitor\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    let exchange = async {
        stream.write_all(request.as_bytes()).await?;
        let mut head = Vec::with_capacity(128);
        let mut chunk = [0u8; 256];
        loop {
            if let Some(end) = head.iter().position(|&b| b == b'\n') {
                head.truncate(end);
                if head.last() == Some(&b'\r') {
                    head.pop();
                }
                return Ok(Some(head));
            }
            if head.len() > MAX_STATUS_LINE {
                return Ok(None);
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(Some(head));
            }
            head.extend_from_slice(&chunk[..n]);
        }
    };
    let line = timeout_at(deadline, exchange)
        .await
        .map_err(|_| CheckError::HttpTimeout { addr, timeout })?
        .map_err(|error| CheckError::HttpIo { addr, error })?
        .ok_or_else(|| CheckError::MalformedResponse {
            addr,
            detail: format!("no status line in the first {MAX_STATUS_LINE} bytes"),
        })?;
    let got = parse_status_line(&line).ok_or_else(|| CheckError::MalformedResponse {
        addr,
        detail: if line.is_empty() {
            "connection closed before a status line".to_string()
        } else {
            format!(
                "{:?} is not an HTTP status line",
                String::from_utf8_lossy(&line)
            )
        },
    })?;
    if got != expect_status {
        return Err(CheckError::UnexpectedStatus {
            got,
            expected: expect_status,
        });
    }
    Ok(start.elapsed())
}

/// Entry point for the fuzz targets: every parser here of bytes a VM sends back.
#[doc(hidden)]
pub fn fuzz_untrusted(data: &[u8]) {
    if let Some(icmp) = icmp_from(data, Ipv4Addr::new(10, 70, 0, 10)) {
        let _ = EchoRepr::parse(icmp);
    }
    if let Some(echo) = EchoRepr::parse(data) {
        // 0x0000 and 0xffff are both a valid zero checksum: compare the fields.
        let again = echo.emit();
        assert_eq!(
            EchoRepr::parse(&again),
            Some(echo),
            "a parsed echo re-emits to the same echo"
        );
    }
    let _ = parse_status_line(data);
}

/// The status code of `HTTP/1.x SSS reason`, without the line ending.
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let (&minor, rest) = rest.split_first()?;
    let rest = rest.strip_prefix(b" ")?;
    if !minor.is_ascii_digit() || rest.len() < 3 || rest.get(3).is_some_and(|&b| b != b' ') {
        return None;
    }
    let code = &rest[..3];
    if !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(code.iter().fold(0u16, |n, &d| n * 10 + u16::from(d - b'0')))
}

/// An ICMP echo request or reply (RFC 792).
#[derive(Debug, Clone, PartialEq, Eq)]
struct EchoRepr<'a> {
    reply: bool,
    ident: u16,
    seq_no: u16,
    data: &'a [u8],
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
    fn parse(icmp: &'a [u8]) -> Option<Self> {
        if icmp.len() < ICMP_HEADER_LEN || internet_checksum(icmp) != 0 || icmp[1] != 0 {
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

    fn buffer_len(&self) -> usize {
        ICMP_HEADER_LEN + self.data.len()
    }

    fn emit(&self) -> Vec<u8> {
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
        let checksum = internet_checksum(&buf);
        buf[2..4].copy_from_slice(&checksum.to_be_bytes());
        buf
    }
}

/// The RFC 1071 checksum; 0 over a message that carries a correct one.
fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The ICMP message inside an IPv4 datagram from `from`, as a raw socket
/// returns it; `None` for anything else.
fn icmp_from(datagram: &[u8], from: Ipv4Addr) -> Option<&[u8]> {
    let header_len = usize::from(datagram.first()? & 0x0f) * 4;
    let version = datagram[0] >> 4;
    if version != 4 || header_len < 20 || datagram.len() < header_len {
        return None;
    }
    let protocol = datagram[9];
    let source = Ipv4Addr::new(datagram[12], datagram[13], datagram[14], datagram[15]);
    (protocol == libc::IPPROTO_ICMP as u8 && source == from).then(|| &datagram[header_len..])
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
    fd: AsyncFd<OwnedFd>,
}

impl RawIcmpSocket {
    fn connect(addr: Ipv4Addr) -> Result<Self, CheckError> {
        // SAFETY: socket(2) takes no pointers; a non-negative result is a new
        // descriptor that nothing else owns.
        let raw = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::IPPROTO_ICMP,
            )
        };
        if raw < 0 {
            return Err(CheckError::IcmpSocket(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a valid descriptor owned by no one else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let filter: u32 = !(1 << ICMP_ECHO_REPLY);
        // SAFETY: the option value points at a live u32 of the given length.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_RAW,
                ICMP_FILTER,
                (&filter as *const u32).cast(),
                mem::size_of::<u32>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(CheckError::IcmpSocket(io::Error::last_os_error()));
        }
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(addr).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: the address points at a live sockaddr_in of the given length.
        let rc = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&sin as *const libc::sockaddr_in).cast(),
                mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            // Connecting a raw socket only looks up the route.
            let error = io::Error::last_os_error();
            return Err(CheckError::IcmpSend { addr, error });
        }
        // SAFETY: the OwnedFd keeps this descriptor open, and always returns
        // it, for as long as the AsyncFd owns it.
        let fd = unsafe { AsyncFd::register(fd) }
            .map_err(|e| CheckError::IcmpSocket(e.into_parts().1))?;
        Ok(Self { fd })
    }

    async fn send(&self, message: &[u8]) -> io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            let sent = guard.try_io(|fd| {
                // SAFETY: the buffer is live and `message.len()` bytes long.
                let n = unsafe {
                    libc::send(fd.as_raw_fd(), message.as_ptr().cast(), message.len(), 0)
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match sent {
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
        loop {
            let mut guard = self.fd.readable().await?;
            let received = guard.try_io(|fd| {
                // SAFETY: the buffer is live and `buf.len()` bytes long.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match received {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::monitor::MonitorConfig;
    use std::sync::Arc;
    use tokio::net::TcpListener;
    use tokio::sync::Mutex;

    /// The first echo request of Windows `ping` (identifier 1, sequence 1),
    /// as every capture of it shows.
    const WINDOWS_PING: &[u8] = b"\x08\x00\x4d\x5a\x00\x01\x00\x01abcdefghijklmnopqrstuvwabcdefghi";

    #[test]
    fn echo_request_matches_a_windows_ping_capture() {
        let repr = EchoRepr {
            reply: false,
            ident: 1,
            seq_no: 1,
            data: b"abcdefghijklmnopqrstuvwabcdefghi",
        };
        assert_eq!(repr.emit(), WINDOWS_PING);
        assert_eq!(repr.buffer_len(), WINDOWS_PING.len());
        assert_eq!(EchoRepr::parse(WINDOWS_PING), Some(repr));
    }

    #[test]
    fn echo_emit_then_parse_round_trips() {
        let mut state = 0x1234_5678_u64;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            state >> 33
        };
        for round in 0..2000 {
            let data: Vec<u8> = (0..next() % 70).map(|_| next() as u8).collect();
            let repr = EchoRepr {
                reply: round % 2 == 0,
                ident: next() as u16,
                seq_no: next() as u16,
                data: &data,
            };
            let bytes = repr.emit();
            assert_eq!(EchoRepr::parse(&bytes), Some(repr.clone()), "round {round}");
            // Any damage to a byte breaks the checksum or the type.
            let mut damaged = bytes.clone();
            let at = next() as usize % damaged.len();
            damaged[at] ^= 1 << (next() % 8);
            assert_ne!(EchoRepr::parse(&damaged), Some(repr), "round {round}");
        }
    }

    #[test]
    fn echo_parse_rejects_what_is_not_a_well_formed_echo() {
        for len in 0..WINDOWS_PING.len() {
            // Cut anywhere: never a panic; too short or a bad checksum.
            assert_eq!(EchoRepr::parse(&WINDOWS_PING[..len]), None, "{len} bytes");
        }
        let mut unreachable = WINDOWS_PING.to_vec();
        unreachable[0] = 3;
        unreachable[2..4].copy_from_slice(&[0, 0]);
        let checksum = internet_checksum(&unreachable);
        unreachable[2..4].copy_from_slice(&checksum.to_be_bytes());
        assert_eq!(
            EchoRepr::parse(&unreachable),
            None,
            "destination unreachable"
        );
    }

    fn ipv4_datagram(header_words: u8, protocol: u8, source: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut d = vec![0u8; usize::from(header_words) * 4];
        d[0] = 0x40 | header_words;
        d[9] = protocol;
        d[12..16].copy_from_slice(&source);
        d.extend_from_slice(payload);
        d
    }

    #[test]
    fn icmp_from_takes_only_icmp_from_the_checked_address() {
        let peer = Ipv4Addr::new(127, 0, 0, 1);
        let plain = ipv4_datagram(5, 1, [127, 0, 0, 1], WINDOWS_PING);
        assert_eq!(icmp_from(&plain, peer), Some(WINDOWS_PING));
        let with_options = ipv4_datagram(6, 1, [127, 0, 0, 1], WINDOWS_PING);
        assert_eq!(icmp_from(&with_options, peer), Some(WINDOWS_PING));
        let other_host = ipv4_datagram(5, 1, [127, 0, 0, 2], WINDOWS_PING);
        assert_eq!(icmp_from(&other_host, peer), None);
        let udp = ipv4_datagram(5, 17, [127, 0, 0, 1], WINDOWS_PING);
        assert_eq!(icmp_from(&udp, peer), None);
        let bad_ihl = ipv4_datagram(4, 1, [127, 0, 0, 1], WINDOWS_PING);
        assert_eq!(icmp_from(&bad_ihl, peer), None);
        for len in 0..20 {
            assert_eq!(icmp_from(&plain[..len], peer), None, "{len} bytes");
        }
    }

    #[test]
    fn status_lines_parse_strictly() {
        let cases: [(&[u8], Option<u16>); 9] = [
            (b"HTTP/1.1 200 OK\r", Some(200)),
            (b"HTTP/1.0 503 Service Unavailable", Some(503)),
            (b"HTTP/1.1 204", Some(204)),
            (b"HTTP/2 200", None),
            (b"HTTP/1.1 20 OK", None),
            (b"HTTP/1.1 2000", None),
            (b"HTTP/1.1 2x0 OK", None),
            (b"SSH-2.0-OpenSSH_9.2", None),
            (b"", None),
        ];
        for (line, expected) in cases {
            assert_eq!(
                parse_status_line(line),
                expected,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

    #[tokio::test]
    async fn icmp_echo_to_loopback_gets_its_reply() {
        let rtt = icmp_echo(LOOPBACK, Duration::from_secs(1))
            .await
            .expect("127.0.0.1 answers pings (tests run as root)");
        assert!(rtt < Duration::from_secs(1), "{rtt:?}");
    }

    #[tokio::test]
    async fn concurrent_echoes_each_match_their_own_reply() {
        let pings = (0..16).map(|_| icmp_echo(LOOPBACK, Duration::from_secs(1)));
        let handles: Vec<_> = pings.map(tokio::spawn).collect();
        for handle in handles {
            handle.await.expect("task").expect("reply");
        }
    }

    /// Runs `f` on a thread of its own in a fresh network namespace, which
    /// disappears with the thread: only that namespace's loopback is touched.
    fn in_fresh_netns<T: Send + 'static>(
        loopback_up: bool,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        std::thread::spawn(move || {
            let host_ns = std::fs::read_link("/proc/thread-self/ns/net").expect("netns link");
            // SAFETY: unshare takes no pointers; it moves only this thread.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET): {}",
                io::Error::last_os_error()
            );
            let own_ns = std::fs::read_link("/proc/thread-self/ns/net").expect("netns link");
            assert_ne!(host_ns, own_ns, "the thread has a namespace of its own");
            if loopback_up {
                set_loopback_up().expect("bring lo up");
            }
            f()
        })
        .join()
        .expect("netns thread")
    }

    fn set_loopback_up() -> io::Result<()> {
        // SAFETY: socket(2) takes no pointers.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor owned by no one else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ifreq is plain data; all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { mem::zeroed() };
        for (dst, &src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = src as libc::c_char;
        }
        // SAFETY: `req` is a live ifreq, as SIOCGIFFLAGS and SIOCSIFFLAGS
        // expect; the flags member is the one both use.
        unsafe {
            if libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) < 0 {
                return Err(io::Error::last_os_error());
            }
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    const IGNORE_ECHO: &str = "/proc/sys/net/ipv4/icmp_echo_ignore_all";

    #[test]
    fn icmp_echo_times_out_when_nothing_answers() {
        let host_setting = std::fs::read_to_string(IGNORE_ECHO).expect("sysctl");
        let (result, elapsed) = in_fresh_netns(true, || {
            // Only this namespace's kernel stops answering pings.
            std::fs::write(IGNORE_ECHO, "1").expect("set sysctl in the namespace");
            assert_eq!(std::fs::read_to_string(IGNORE_ECHO).expect("sysctl"), "1\n");
            let start = std::time::Instant::now();
            let result = block_on(icmp_echo(LOOPBACK, Duration::from_millis(300)));
            (result, start.elapsed())
        });
        assert_eq!(
            std::fs::read_to_string(IGNORE_ECHO).expect("sysctl"),
            host_setting
        );
        let error = result.expect_err("nobody answers");
        assert!(matches!(error, CheckError::NoEchoReply { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            "no ICMP echo reply from 127.0.0.1 within 300ms"
        );
        assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    }

    #[test]
    fn icmp_echo_fails_at_once_when_the_network_is_unreachable() {
        // A fresh namespace's loopback is down: nothing routes anywhere.
        let (result, elapsed) = in_fresh_netns(false, || {
            let start = std::time::Instant::now();
            let result = block_on(icmp_echo(LOOPBACK, Duration::from_secs(5)));
            (result, start.elapsed())
        });
        let error = result.expect_err("no route");
        match &error {
            CheckError::IcmpSend { error, .. } => {
                assert_eq!(error.raw_os_error(), Some(libc::ENETUNREACH), "{error}")
            }
            other => panic!("{other:?}"),
        }
        assert!(
            error
                .to_string()
                .starts_with("cannot send an ICMP echo request to 127.0.0.1: "),
            "{error}"
        );
        assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    }

    /// A port nothing listens on: bound, then released.
    async fn closed_port() -> SocketAddr {
        let listener = TcpListener::bind((LOOPBACK, 0)).await.expect("bind");
        listener.local_addr().expect("addr")
    }

    #[tokio::test]
    async fn tcp_connect_succeeds_against_a_listener() {
        let listener = TcpListener::bind((LOOPBACK, 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let rtt = tcp_connect(addr, Duration::from_secs(1))
            .await
            .expect("accepted");
        assert!(rtt < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn tcp_connect_to_a_closed_port_is_refused() {
        let addr = closed_port().await;
        let error = tcp_connect(addr, Duration::from_secs(1))
            .await
            .expect_err("refused");
        match &error {
            CheckError::Connect { error, .. } => {
                assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused)
            }
            other => panic!("{other:?}"),
        }
        assert!(
            error
                .to_string()
                .starts_with(&format!("TCP connection to {addr} failed: ")),
            "{error}"
        );
    }

    /// Serves `response` to one connection and hands back the request.
    async fn serve_once(response: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind((LOOPBACK, 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut request = Vec::new();
            let mut buf = [0u8; 512];
            while !request.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            stream.write_all(response).await.expect("write");
            String::from_utf8(request).expect("ASCII request")
        });
        (addr, server)
    }

    fn http_target(port: u16, expect_status: u16) -> VmTarget {
        VmTarget {
            addr: LOOPBACK,
            service: ServiceCheck::Http {
                port,
                path: "/login/index.php".into(),
                expect_status,
            },
            config: MonitorConfig::default(),
        }
    }

    #[tokio::test]
    async fn http_check_passes_on_the_expected_status_with_a_proper_request() {
        let (addr, server) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        let target = http_target(addr.port(), 200);
        let outcome = run_check(&target, CheckKind::Service, Duration::from_secs(1)).await;
        assert!(outcome.is_ok(), "{outcome:?}");
        let request = server.await.expect("server");
        assert_eq!(
            request,
            format!(
                "GET /login/index.php HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\
                 User-Agent: hinan-monitor\r\nAccept: */*\r\nConnection: close\r\n\r\n",
                addr.port()
            )
        );
    }

    #[tokio::test]
    async fn http_check_reports_an_unexpected_status_to_the_operator() {
        let (addr, _server) = serve_once(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        let target = http_target(addr.port(), 200);
        let outcome = run_check(&target, CheckKind::Service, Duration::from_secs(1)).await;
        assert!(!outcome.is_ok());
        let failure = outcome.into_result("lms1").expect_err("503");
        assert_eq!(
            failure.to_string(),
            "service check of lms1 failed: HTTP 503, expected 200"
        );
    }

    #[tokio::test]
    async fn http_check_times_out_on_a_server_that_never_answers() {
        let listener = TcpListener::bind((LOOPBACK, 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let held = Arc::new(Mutex::new(Vec::new()));
        let holder = Arc::clone(&held);
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            holder.lock().await.push(stream);
        });
        let start = Instant::now();
        let error = http_get(addr, "lms1", "/", 200, Duration::from_millis(200))
            .await
            .expect_err("silent");
        assert!(matches!(error, CheckError::HttpTimeout { .. }), "{error:?}");
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert_eq!(
            error.to_string(),
            format!("no HTTP status line from {addr} within 200ms")
        );
        assert_eq!(held.lock().await.len(), 1, "the server did accept");
    }

    #[tokio::test]
    async fn http_check_rejects_what_is_not_http() {
        let (addr, _server) = serve_once(b"SSH-2.0-OpenSSH_9.2\r\n").await;
        let error = http_get(addr, "lms1", "/", 200, Duration::from_secs(1))
            .await
            .expect_err("not HTTP");
        assert_eq!(
            error.to_string(),
            format!(
                "malformed HTTP response from {addr}: \"SSH-2.0-OpenSSH_9.2\" is not an HTTP status line"
            )
        );

        let (addr, _server) = serve_once(b"").await;
        let error = http_get(addr, "lms1", "/", 200, Duration::from_secs(1))
            .await
            .expect_err("closed");
        assert_eq!(
            error.to_string(),
            format!("malformed HTTP response from {addr}: connection closed before a status line")
        );
    }

    #[tokio::test]
    async fn http_check_refuses_paths_and_hosts_that_would_forge_headers() {
        // The port is closed: a connection attempt would fail differently.
        let addr = closed_port().await;
        for (host, path) in [
            ("lms1", "/ HTTP/1.0\r\nX-Forged: 1"),
            ("lms1", "login"),
            ("lms1\r\nX-Forged: 1", "/"),
            ("", "/"),
        ] {
            let error = http_get(addr, host, path, 200, Duration::from_secs(1))
                .await
                .expect_err("invalid");
            assert!(matches!(error, CheckError::InvalidRequest(_)), "{error:?}");
        }
    }

    #[tokio::test]
    async fn run_check_uses_the_target_address_for_both_kinds() {
        let listener = TcpListener::bind((LOOPBACK, 0)).await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let target = VmTarget {
            addr: LOOPBACK,
            service: ServiceCheck::Tcp { port },
            config: MonitorConfig::default(),
        };
        let timeout = Duration::from_secs(1);
        let network = run_check(&target, CheckKind::Network, timeout).await;
        assert_eq!(network.kind, CheckKind::Network);
        assert!(network.is_ok(), "{network:?}");
        assert!(run_check(&target, CheckKind::Service, timeout)
            .await
            .is_ok());
        drop(listener);
        let refused = run_check(&target, CheckKind::Service, timeout).await;
        let failure = refused.into_result("lms2").expect_err("closed");
        assert!(
            failure.to_string().starts_with(&format!(
                "service check of lms2 failed: TCP connection to 127.0.0.1:{port} failed: "
            )),
            "{failure}"
        );
    }
}
