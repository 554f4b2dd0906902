//! DNS over UDP: one worker per socket, reading and writing batches; cached
//! answers are served without taking the authority's lock.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use socket2::{Domain, SockAddr, Socket, Type};

use super::sys::{RecvBatch, SendBatch};
use super::{now_unix, Shared};
use crate::authority::Transport;
use crate::rrl::{truncated, RateLimiter, Verdict};

pub(super) const BATCH: usize = 32;
pub(super) const BUF: usize = 4096;

/// A UDP socket bound to `addr` that shares the port with the other workers'
/// (`SO_REUSEPORT`); close-on-exec, as socket2 makes every socket.
pub(super) fn reuseport_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    sock.set_reuse_port(true)?;
    sock.set_reuse_address(true)?;
    sock.bind(&SockAddr::from(addr))?;
    Ok(sock.into())
}

pub(super) fn udp_worker(shared: &Arc<Shared>, sock: &UdpSocket) {
    let mut rx = RecvBatch::new();
    let mut tx = SendBatch::new();
    let mut rrl = RateLimiter::new(shared.rrl.0, shared.rrl.1);
    while !shared.stop.load(Ordering::Relaxed) {
        let n = match rx.recv(sock) {
            Ok(n) if n > 0 => n,
            _ => continue,
        };
        let now = if rrl.enabled() { now_unix() } else { 0 };
        let mut out = 0;
        let cache = shared.cache.read().unwrap_or_else(|e| e.into_inner());
        let mut slow = Vec::new();
        for i in 0..n {
            if let Some(m) = cache.lookup(rx.packet(i), tx.buf_mut(out)) {
                tx.set(out, m, rx.source(i));
                out += 1;
            } else {
                slow.push(i);
            }
        }
        drop(cache);
        for i in slow {
            let Some(src) = rx.source(i).as_socket() else {
                continue;
            };
            for m in shared.answer(rx.packet(i), src.ip(), Transport::Udp) {
                if m.len() > BUF || out >= BATCH {
                    continue;
                }
                tx.buf_mut(out)[..m.len()].copy_from_slice(&m);
                tx.set(out, m.len(), rx.source(i));
                out += 1;
            }
        }
        if rrl.enabled() {
            let mut kept = 0;
            for j in 0..out {
                let Some(dst) = tx.dest(j).as_socket() else {
                    continue;
                };
                let verdict = rrl.check(dst.ip(), now);
                let bytes = match verdict {
                    Verdict::Send => tx.packet(j).to_vec(),
                    Verdict::Truncate => match truncated(tx.packet(j)) {
                        Some(t) => t,
                        None => continue,
                    },
                    Verdict::Drop => continue,
                };
                let dest = tx.dest(j).clone();
                tx.buf_mut(kept)[..bytes.len()].copy_from_slice(&bytes);
                tx.set(kept, bytes.len(), &dest);
                kept += 1;
            }
            out = kept;
        }
        tx.send(sock, out);
    }
}
