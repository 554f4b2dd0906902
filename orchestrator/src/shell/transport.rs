//! The Raft transport between appliances: length-prefixed Raft messages over
//! mutual TLS (see [`crate::tls`]). Each appliance keeps one outbound
//! connection per peer and accepts inbound ones; a message is only taken from
//! the peer whose pinned certificate authenticated the connection. Lost
//! connections are redialled; messages that cannot be sent are dropped, which
//! Raft tolerates.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use raft::prelude::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::core::replica::{decode_message, encode_message};
use crate::core::state::NodeId;
use crate::shell::tls::{self, Identity, Pin};

/// Largest frame taken from a peer.
const MAX_FRAME: usize = 16 << 20;
/// Queue per peer; beyond it messages are dropped.
const QUEUE: usize = 4096;

/// One peer to talk to.
#[derive(Debug, Clone)]
pub struct Peer {
    pub id: NodeId,
    pub address: SocketAddr,
    pub pin: Pin,
}

/// Sending side handles, one per peer.
#[derive(Debug, Clone)]
pub struct Transport {
    out: BTreeMap<NodeId, mpsc::Sender<Vec<u8>>>,
}

impl Transport {
    /// Starts listening on `listen` and dialling `peers`; inbound messages go to `inbound`.
    pub async fn start(
        me: NodeId,
        listen: SocketAddr,
        identity: &Identity,
        peers: &[Peer],
        inbound: mpsc::Sender<Message>,
    ) -> Result<Transport, std::io::Error> {
        let pins: BTreeMap<Pin, NodeId> = peers.iter().map(|p| (p.pin, p.id)).collect();
        let server = tls::server_config(identity, &pins).map_err(std::io::Error::other)?;
        let listener = TcpListener::bind(listen).await?;
        tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(server),
            pins,
            inbound,
        ));
        let mut out = BTreeMap::new();
        for p in peers {
            let cfg = tls::client_config(identity, p.pin).map_err(std::io::Error::other)?;
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(dial_loop(me, p.clone(), TlsConnector::from(cfg), rx));
            out.insert(p.id, tx);
        }
        Ok(Transport { out })
    }

    /// Queues `msg` for its destination; drops it if that peer's queue is full.
    pub fn send(&self, msg: &Message) {
        if let Some(tx) = self.out.get(&msg.to) {
            let _ = tx.try_send(encode_message(msg));
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    pins: BTreeMap<Pin, NodeId>,
    inbound: mpsc::Sender<Message>,
) {
    loop {
        let Ok((tcp, from)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        set_user_timeout(&tcp);
        let (acceptor, pins, inbound) = (acceptor.clone(), pins.clone(), inbound.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(5), acceptor.accept(tcp)).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::warn!(%from, "rejected a cluster connection: {e}");
                    return;
                }
                Err(_) => return,
            };
            let Some(peer) = tls::peer_of(tls.get_ref().1, &pins) else {
                return;
            };
            let (mut rd, _wr) = tokio::io::split(tls);
            while let Ok(frame) = read_frame(&mut rd).await {
                match decode_message(&frame) {
                    // Only the authenticated peer may speak for itself.
                    Ok(m) if m.from == peer => {
                        if inbound.send(m).await.is_err() {
                            return;
                        }
                    }
                    Ok(m) => {
                        tracing::warn!("peer {peer} sent a message claiming to be from {}", m.from)
                    }
                    Err(e) => {
                        tracing::warn!("undecodable Raft message from peer {peer}: {e}");
                        return;
                    }
                }
            }
        });
    }
}

async fn dial_loop(
    me: NodeId,
    peer: Peer,
    connector: TlsConnector,
    mut rx: mpsc::Receiver<Vec<u8>>,
) {
    let name = rustls::pki_types::ServerName::try_from("hinan-peer").expect("a valid DNS name");
    let mut backoff = Duration::from_millis(50);
    loop {
        let conn = async {
            let tcp = TcpStream::connect(peer.address).await?;
            tcp.set_nodelay(true)?;
            set_user_timeout(&tcp);
            connector.connect(name.clone(), tcp).await
        };
        let mut stream = match tokio::time::timeout(Duration::from_secs(2), conn).await {
            Ok(Ok(s)) => {
                backoff = Duration::from_millis(50);
                s
            }
            _ => {
                // Drop what queued up meanwhile: Raft resends what matters.
                while rx.try_recv().is_ok() {}
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
                continue;
            }
        };
        tracing::info!(me, peer = peer.id, "connected to peer {}", peer.id);
        while let Some(frame) = rx.recv().await {
            if let Err(e) = write_frame(&mut stream, &frame).await {
                tracing::info!(
                    me,
                    peer = peer.id,
                    "connection to peer {} lost: {e}",
                    peer.id
                );
                break;
            }
        }
        if rx.is_closed() {
            return;
        }
    }
}

/// Data unacknowledged for this long aborts the connection. Without it a
/// connection across a partition stalls in TCP's retransmission backoff
/// (minutes) after the partition heals; with it the dialler reconnects.
const USER_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1000);

fn set_user_timeout(tcp: &TcpStream) {
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(USER_TIMEOUT)) {
        tracing::warn!("cannot set TCP_USER_TIMEOUT: {e}");
    }
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Vec<u8>> {
    let len = r.read_u32().await? as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "frame of {len} bytes is over the limit"
        )));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> std::io::Result<()> {
    w.write_u32(frame.len() as u32).await?;
    w.write_all(frame).await?;
    w.flush().await
}
