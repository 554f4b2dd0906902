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
//!
//! The socket is `netlink-sys`'s and the messages are read by
//! `netlink-packet-route` (the rust-netlink family, as `rtnetlink` is built on).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use netlink_packet_core::{NetlinkBuffer, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::sys::socket::{setsockopt, sockopt::ReceiveTimeout};
use nix::sys::time::TimeVal;

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

fn address_event(added: bool, msg: &AddressMessage) -> Option<RtnlEvent> {
    if msg.header.family != AddressFamily::Inet {
        return None;
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on
    // point-to-point links and equals IFA_LOCAL elsewhere.
    let pick = |local: bool| {
        msg.attributes.iter().find_map(|a| match (a, local) {
            (AddressAttribute::Local(IpAddr::V4(v4)), true)
            | (AddressAttribute::Address(IpAddr::V4(v4)), false) => Some(*v4),
            _ => None,
        })
    };
    let addr = pick(true).or_else(|| pick(false))?;
    Some(RtnlEvent::Addr {
        added,
        ifindex: msg.header.index,
        addr,
        prefix_len: msg.header.prefix_len,
    })
}

fn link_event(deleted: bool, msg: &LinkMessage) -> RtnlEvent {
    let name = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default();
    RtnlEvent::Link {
        ifindex: msg.header.index,
        name,
        up: msg.header.flags.contains(LinkFlags::Up),
        lower_up: msg.header.flags.contains(LinkFlags::LowerUp),
        deleted,
    }
}

/// The link and IPv4 address events in one datagram from a route netlink
/// socket. Other messages, and messages whose body does not parse, are
/// skipped; parsing stops at the first malformed header, and never panics.
pub fn parse(buf: &[u8]) -> Vec<RtnlEvent> {
    let mut events = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        // Checks that the header fits and that its length covers the header
        // and lies within the datagram.
        let Ok(header) = NetlinkBuffer::new_checked(&buf[at..]) else {
            break;
        };
        let len = header.length() as usize;
        if let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[at..at + len]) {
            let event = match &msg.payload {
                NetlinkPayload::InnerMessage(m) => match m {
                    RouteNetlinkMessage::NewAddress(a) => address_event(true, a),
                    RouteNetlinkMessage::DelAddress(a) => address_event(false, a),
                    RouteNetlinkMessage::NewLink(l) => Some(link_event(false, l)),
                    RouteNetlinkMessage::DelLink(l) => Some(link_event(true, l)),
                    _ => None,
                },
                _ => None,
            };
            events.extend(event);
        }
        // Messages are 4-byte aligned within a datagram.
        at += (len + 3) & !3;
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
                let n = sock.recv(&mut &mut buf[..], 0);
                let at = Instant::now();
                let n = match n {
                    Ok(n) => n.min(buf.len()),
                    Err(err) => match err.raw_os_error() {
                        Some(libc::EAGAIN | libc::EINTR) => continue,
                        Some(libc::ENOBUFS) => {
                            let _ = tx.send((at, RtnlEvent::Overrun));
                            continue;
                        }
                        _ => return Err(err).context("receiving from the rtnetlink socket"),
                    },
                };
                for event in parse(&buf[..n]) {
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
fn subscribe() -> Result<Socket> {
    let mut sock = Socket::new(NETLINK_ROUTE).context("opening a NETLINK_ROUTE socket")?;
    sock.bind(&SocketAddr::new(0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR))
        .context("binding the rtnetlink socket")?;
    setsockopt(&sock, ReceiveTimeout, &TimeVal::new(0, 100_000))
        .context("setting the rtnetlink socket's receive timeout")?;
    sock.set_rx_buf_sz(1usize << 20)
        .context("sizing the rtnetlink socket's receive buffer")?;
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Written by hand from <linux/netlink.h> and <linux/rtnetlink.h>, so the
    // parser is checked against the kernel's layout, not against itself.
    const NLMSG_HDR_LEN: usize = 16;
    const IFADDRMSG_LEN: usize = 8;
    const RTATTR_HDR_LEN: usize = 4;
    const RTM_NEWLINK: u16 = 16;
    const RTM_NEWADDR: u16 = 20;
    const RTM_DELADDR: u16 = 21;
    const IFA_ADDRESS: u16 = 1;
    const IFA_LOCAL: u16 = 2;
    const IFLA_IFNAME: u16 = 3;

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
