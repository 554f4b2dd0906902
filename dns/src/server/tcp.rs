//! DNS over TCP: a thread per connection, length-prefixed messages.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{Shared, MAX_TCP};
use crate::authority::Transport;

pub(super) fn tcp_acceptor(shared: &Arc<Shared>, listener: &TcpListener) {
    while !shared.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                if shared.tcp_open.load(Ordering::Relaxed) >= MAX_TCP {
                    tracing::warn!(%peer, "DNS over TCP: too many connections, closing");
                    continue;
                }
                shared.tcp_open.fetch_add(1, Ordering::Relaxed);
                let shared = shared.clone();
                let spawned = std::thread::Builder::new()
                    .name("dns-tcp-conn".into())
                    .spawn(move || {
                        tcp_connection(&shared, stream, peer);
                        shared.tcp_open.fetch_sub(1, Ordering::Relaxed);
                    });
                if spawned.is_err() {
                    tracing::warn!(%peer, "DNS over TCP: cannot start a thread");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                tracing::warn!("DNS over TCP: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn tcp_connection(shared: &Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_nodelay(true);
    let mut len = [0u8; 2];
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    while !shared.stop.load(Ordering::Relaxed) {
        if stream.read_exact(&mut len).is_err() {
            return;
        }
        let n = usize::from(u16::from_be_bytes(len));
        if stream.read_exact(&mut buf[..n]).is_err() {
            return;
        }
        let replies = shared.answer(&buf[..n], peer.ip(), Transport::Tcp);
        if replies.is_empty() {
            // Nothing to say to this request (not a query): close, as a malformed stream.
            return;
        }
        for m in replies {
            let Ok(l) = u16::try_from(m.len()) else {
                return;
            };
            let mut framed = Vec::with_capacity(m.len() + 2);
            framed.extend_from_slice(&l.to_be_bytes());
            framed.extend_from_slice(&m);
            if stream.write_all(&framed).is_err() {
                return;
            }
        }
    }
}
