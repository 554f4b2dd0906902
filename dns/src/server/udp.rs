//! DNS over UDP: one worker per socket, reading and writing batches; cached
//! answers are served without taking the authority's lock.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::sys::{from_sockaddr, Batch};
use super::{now_unix, Shared};
use crate::authority::Transport;
use crate::rrl::{truncated, RateLimiter, Verdict};

pub(super) const BATCH: usize = 32;
pub(super) const BUF: usize = 4096;

pub(super) fn udp_worker(shared: &Arc<Shared>, sock: &UdpSocket) {
    let fd = sock.as_raw_fd();
    let mut rx = Batch::new();
    let mut tx = Batch::new();
    let mut rrl = RateLimiter::new(shared.rrl.0, shared.rrl.1);
    let storage_len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    while !shared.stop.load(Ordering::Relaxed) {
        for i in 0..BATCH {
            rx.arm(i, BUF, storage_len);
        }
        // SAFETY: every header points at live buffers and addresses in `rx`.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                rx.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            continue;
        }
        let now = if rrl.enabled() { now_unix() } else { 0 };
        let mut out = 0;
        let cache = shared.cache.read().unwrap_or_else(|e| e.into_inner());
        let mut slow = Vec::new();
        for i in 0..n as usize {
            let len = rx.hdrs[i].msg_len as usize;
            let (req, dst) = (&rx.bufs[i][..len], &mut tx.bufs[out]);
            if let Some(m) = cache.lookup(req, dst) {
                tx.addrs[out] = rx.addrs[i];
                tx.arm(out, m, rx.hdrs[i].msg_hdr.msg_namelen);
                out += 1;
            } else {
                slow.push(i);
            }
        }
        drop(cache);
        for i in slow {
            let len = rx.hdrs[i].msg_len as usize;
            let Some(src) = from_sockaddr(&rx.addrs[i]) else {
                continue;
            };
            for m in shared.answer(&rx.bufs[i][..len], src.ip(), Transport::Udp) {
                if m.len() > BUF || out >= BATCH {
                    continue;
                }
                tx.bufs[out][..m.len()].copy_from_slice(&m);
                tx.addrs[out] = rx.addrs[i];
                tx.arm(out, m.len(), rx.hdrs[i].msg_hdr.msg_namelen);
                out += 1;
            }
        }
        if rrl.enabled() {
            let mut kept = 0;
            for j in 0..out {
                let Some(dst) = from_sockaddr(&tx.addrs[j]) else {
                    continue;
                };
                let len = tx.iovs[j].iov_len;
                let verdict = rrl.check(dst.ip(), now);
                let bytes = match verdict {
                    Verdict::Send => tx.bufs[j][..len].to_vec(),
                    Verdict::Truncate => match truncated(&tx.bufs[j][..len]) {
                        Some(t) => t,
                        None => continue,
                    },
                    Verdict::Drop => continue,
                };
                let namelen = tx.hdrs[j].msg_hdr.msg_namelen;
                tx.addrs[kept] = tx.addrs[j];
                tx.bufs[kept][..bytes.len()].copy_from_slice(&bytes);
                tx.arm(kept, bytes.len(), namelen);
                kept += 1;
            }
            out = kept;
        }
        let mut sent = 0;
        while sent < out {
            // SAFETY: headers sent..out point at live buffers and addresses in `tx`.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    tx.hdrs[sent..].as_mut_ptr(),
                    (out - sent) as libc::c_uint,
                    0,
                )
            };
            if r <= 0 {
                break;
            }
            sent += r as usize;
        }
    }
}
