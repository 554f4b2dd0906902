//! The real checks behind [`crate::core::monitor`]: ICMP echo over a raw socket,
//! TCP connect, and HTTP/1.0 GET. Each is bounded by its timeout and returns
//! the round-trip time or an error an operator can read.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use thiserror::Error;

mod http;
mod icmp;
mod tcp;

pub use http::http_get;
use http::parse_status_line;
pub use icmp::icmp_echo;
use icmp::{icmp_from, EchoRepr};
pub use tcp::tcp_connect;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::monitor::MonitorConfig;
    use hinan_dataplane::wire::checksum;
    use std::mem;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::Mutex;
    use tokio::time::Instant;

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
        let checksum = checksum(&unreachable);
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
        let total = (d.len() + payload.len()) as u16;
        d[2..4].copy_from_slice(&total.to_be_bytes());
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
