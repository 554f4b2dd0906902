//! Watching a namespace's addresses and links through rtnetlink, with the time
//! each change arrived.
//!
//! Benchmarks time failovers by the moment an address appears or a link goes
//! down. Polling `ip addr` every few milliseconds costs a process per poll and
//! still has the poll interval as its resolution. A route netlink socket
//! subscribed to `RTMGRP_LINK` and `RTMGRP_IPV4_IFADDR` gets the kernel's own
//! notification instead: a thread blocked in `recv` stamps it with
//! [`Instant::now`] as soon as it wakes, typically well under a millisecond
//! after the change.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

const NLMSG_HDR_LEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;
const RTATTR_HDR_LEN: usize = 4;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFLA_IFNAME: u16 = 3;

const IFF_UP: u32 = 0x1;
const IFF_LOWER_UP: u32 = 0x1_0000;

const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;

/// One change the kernel announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtnlEvent {
    /// An IPv4 address was added (`added`) or removed.
    Addr {
        added: bool,
        ifindex: u32,
        addr: Ipv4Addr,
        prefix_len: u8,
    },
    /// A link changed (or was deleted: `deleted`), with its flags after the change.
    Link {
        ifindex: u32,
        name: String,
        /// Administratively up (`IFF_UP`).
        up: bool,
        /// Carrier present (`IFF_LOWER_UP`).
        lower_up: bool,
        deleted: bool,
    },
    /// The socket's receive buffer overflowed (`ENOBUFS`): changes were lost.
    Overrun,
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The attributes `(type, payload)` in `buf`; stops at the first malformed one.
fn attributes(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + RTATTR_HDR_LEN <= buf.len() {
        let (Some(len), Some(kind)) = (u16_at(buf, at), u16_at(buf, at + 2)) else {
            break;
        };
        let len = usize::from(len);
        if len < RTATTR_HDR_LEN || at + len > buf.len() {
            break;
        }
        // The top two bits are the nested and byte-order flags.
        out.push((kind & 0x3fff, &buf[at + RTATTR_HDR_LEN..at + len]));
        at += align4(len);
    }
    out
}

fn parse_addr(added: bool, body: &[u8]) -> Option<RtnlEvent> {
    if body.len() < IFADDRMSG_LEN || i32::from(body[0]) != libc::AF_INET {
        return None;
    }
    let prefix_len = body[1];
    let ifindex = u32_at(body, 4)?;
    let attrs = attributes(&body[IFADDRMSG_LEN..]);
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on
    // point-to-point links and equals IFA_LOCAL elsewhere.
    let pick = |want: u16| {
        attrs
            .iter()
            .find(|(kind, data)| *kind == want && data.len() == 4)
            .map(|(_, data)| Ipv4Addr::new(data[0], data[1], data[2], data[3]))
    };
    let addr = pick(IFA_LOCAL).or_else(|| pick(IFA_ADDRESS))?;
    Some(RtnlEvent::Addr {
        added,
        ifindex,
        addr,
        prefix_len,
    })
}

fn parse_link(deleted: bool, body: &[u8]) -> Option<RtnlEvent> {
    if body.len() < IFINFOMSG_LEN {
        return None;
    }
    let ifindex = u32_at(body, 4)?;
    let flags = u32_at(body, 8)?;
    let name = attributes(&body[IFINFOMSG_LEN..])
        .into_iter()
        .find(|(kind, _)| *kind == IFLA_IFNAME)
        .map(|(_, data)| {
            let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
            String::from_utf8_lossy(&data[..end]).into_owned()
        })
        .unwrap_or_default();
    Some(RtnlEvent::Link {
        ifindex,
        name,
        up: flags & IFF_UP != 0,
        lower_up: flags & IFF_LOWER_UP != 0,
        deleted,
    })
}

/// The link and IPv4 address events in one datagram from a route netlink
/// socket. Other messages are skipped; parsing stops at the first malformed
/// header, and never panics.
pub fn parse(buf: &[u8]) -> Vec<RtnlEvent> {
    let mut events = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDR_LEN <= buf.len() {
        let (Some(len), Some(kind)) = (u32_at(buf, at), u16_at(buf, at + 4)) else {
            break;
        };
        let len = len as usize;
        if len < NLMSG_HDR_LEN || at + len > buf.len() {
            break;
        }
        let body = &buf[at + NLMSG_HDR_LEN..at + len];
        let event = match kind {
            RTM_NEWADDR => parse_addr(true, body),
            RTM_DELADDR => parse_addr(false, body),
            RTM_NEWLINK => parse_link(false, body),
            RTM_DELLINK => parse_link(true, body),
            _ => None,
        };
        events.extend(event);
        at += align4(len);
    }
    events
}

/// A thread in one network namespace that reports its link and IPv4 address
/// changes, each stamped with the instant it arrived. Stops when dropped.
#[derive(Debug)]
pub struct RtnlWatch {
    ns: String,
    events: Receiver<(Instant, RtnlEvent)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl RtnlWatch {
    /// Starts watching namespace `ns`; returns once the socket is subscribed,
    /// so no change made after this returns is missed.
    pub fn start(ns: &str) -> Result<RtnlWatch> {
        let (tx, events) = mpsc::channel();
        let (ready_tx, ready) = mpsc::sync_channel(1);
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = crate::lab::netns::spawn_in(ns, move || {
            let sock = match subscribe() {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("{e:#}")));
                    return Err(e);
                }
            };
            let mut buf = vec![0u8; 64 * 1024];
            while !stopping.load(Ordering::Relaxed) {
                // SAFETY: recv writes at most buf.len() bytes into buf, which we own.
                let n =
                    unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                let at = Instant::now();
                if n < 0 {
                    let err = std::io::Error::last_os_error();
                    match err.raw_os_error() {
                        Some(libc::EAGAIN | libc::EINTR) => continue,
                        Some(libc::ENOBUFS) => {
                            let _ = tx.send((at, RtnlEvent::Overrun));
                            continue;
                        }
                        _ => return Err(err).context("receiving from the rtnetlink socket"),
                    }
                }
                for event in parse(&buf[..n as usize]) {
                    if tx.send((at, event)).is_err() {
                        return Ok(());
                    }
                }
            }
            Ok(())
        });
        let started = ready
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| anyhow!("the rtnetlink watcher in {ns} did not start"))?;
        started.map_err(|e| anyhow!("watching rtnetlink in {ns}: {e}"))?;
        Ok(RtnlWatch {
            ns: ns.to_string(),
            events,
            stop,
            thread: Some(thread),
        })
    }

    /// Discards every event received so far.
    pub fn drain(&self) -> Vec<(Instant, RtnlEvent)> {
        self.events.try_iter().collect()
    }

    /// Waits until an event satisfies `want` or `limit` passes; events before
    /// it are consumed. Returns the instant the matching event arrived.
    pub fn wait_for(
        &self,
        limit: Duration,
        mut want: impl FnMut(&RtnlEvent) -> bool,
    ) -> Result<Option<(Instant, RtnlEvent)>> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok((at, RtnlEvent::Overrun)) => {
                    return Err(anyhow!(
                        "rtnetlink events in {} were lost (receive buffer overrun at {at:?})",
                        self.ns
                    ))
                }
                Ok((at, event)) if want(&event) => return Ok(Some((at, event))),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => return Ok(None),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(anyhow!("the rtnetlink watcher in {} stopped", self.ns))
                }
            }
        }
    }
}

impl Drop for RtnlWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A route netlink socket subscribed to link and IPv4 address changes, whose
/// `recv` wakes every 100 ms so the watcher can notice it should stop.
fn subscribe() -> Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the descriptor is owned right below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening a NETLINK_ROUTE socket");
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR;
    // SAFETY: addr is a valid sockaddr_nl and the length is its size.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("binding the rtnetlink socket");
    }
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    let rcvbuf: libc::c_int = 1 << 20;
    // SAFETY: both options take the pointed-to value by size; the values live across the calls.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&rcvbuf as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nlmsg(kind: u16, body: &[u8]) -> Vec<u8> {
        let len = (NLMSG_HDR_LEN + body.len()) as u32;
        let mut m = Vec::new();
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes()); // flags
        m.extend_from_slice(&0u32.to_ne_bytes()); // seq
        m.extend_from_slice(&0u32.to_ne_bytes()); // pid
        m.extend_from_slice(body);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn rtattr(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((RTATTR_HDR_LEN + data.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(data);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    fn ifaddrmsg(prefix_len: u8, ifindex: u32, addr: [u8; 4]) -> Vec<u8> {
        let mut b = vec![libc::AF_INET as u8, prefix_len, 0x80, 0];
        b.extend_from_slice(&ifindex.to_ne_bytes());
        b.extend(rtattr(IFA_ADDRESS, &addr));
        b.extend(rtattr(IFA_LOCAL, &addr));
        b.extend(rtattr(3, b"wan0\0")); // IFA_LABEL
        b
    }

    fn ifinfomsg(ifindex: u32, flags: u32, name: &str) -> Vec<u8> {
        let mut b = vec![0u8, 0];
        b.extend_from_slice(&1u16.to_ne_bytes()); // ARPHRD_ETHER
        b.extend_from_slice(&(ifindex as i32).to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes()); // change mask
        b.extend(rtattr(4, &1500u32.to_ne_bytes())); // IFLA_MTU
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        b.extend(rtattr(IFLA_IFNAME, &n));
        b
    }

    #[test]
    fn reads_an_added_vip_and_a_link_going_down_from_one_datagram() {
        let mut dgram = nlmsg(RTM_NEWADDR, &ifaddrmsg(32, 7, [198, 18, 200, 1]));
        // `ip link set to-a down`: IFF_BROADCAST|IFF_MULTICAST, neither UP nor LOWER_UP.
        dgram.extend(nlmsg(RTM_NEWLINK, &ifinfomsg(3, 0x1002, "to-a")));
        dgram.extend(nlmsg(RTM_DELADDR, &ifaddrmsg(32, 7, [198, 18, 200, 1])));
        assert_eq!(
            parse(&dgram),
            vec![
                RtnlEvent::Addr {
                    added: true,
                    ifindex: 7,
                    addr: Ipv4Addr::new(198, 18, 200, 1),
                    prefix_len: 32
                },
                RtnlEvent::Link {
                    ifindex: 3,
                    name: "to-a".into(),
                    up: false,
                    lower_up: false,
                    deleted: false
                },
                RtnlEvent::Addr {
                    added: false,
                    ifindex: 7,
                    addr: Ipv4Addr::new(198, 18, 200, 1),
                    prefix_len: 32
                },
            ]
        );
    }

    #[test]
    fn an_up_link_with_carrier_reads_as_up() {
        let dgram = nlmsg(RTM_NEWLINK, &ifinfomsg(3, 0x1_1043, "wan0"));
        assert!(matches!(
            parse(&dgram).as_slice(),
            [RtnlEvent::Link {
                up: true,
                lower_up: true,
                ..
            }]
        ));
    }

    #[test]
    fn skips_ipv6_addresses_and_other_messages() {
        let mut v6 = ifaddrmsg(64, 2, [0; 4]);
        v6[0] = libc::AF_INET6 as u8;
        let mut dgram = nlmsg(RTM_NEWADDR, &v6);
        dgram.extend(nlmsg(24, &[0u8; 12])); // RTM_NEWROUTE
        assert!(parse(&dgram).is_empty());
    }

    #[test]
    fn truncated_or_lying_input_never_panics() {
        let good = nlmsg(RTM_NEWADDR, &ifaddrmsg(32, 7, [198, 18, 200, 1]));
        for cut in 0..good.len() {
            let _ = parse(&good[..cut]);
        }
        // A header claiming more than the datagram holds, and attributes that lie.
        let mut lying = good.clone();
        lying[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(parse(&lying).is_empty());
        let mut bad_attr = good.clone();
        let attr_len_at = NLMSG_HDR_LEN + IFADDRMSG_LEN;
        bad_attr[attr_len_at..attr_len_at + 2].copy_from_slice(&2u16.to_ne_bytes());
        assert!(parse(&bad_attr).is_empty());
        let mut zero_len = good;
        zero_len[0..4].copy_from_slice(&0u32.to_ne_bytes());
        assert!(parse(&zero_len).is_empty());
    }
}
