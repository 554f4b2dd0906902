//! The TCP check: a connection accepted within the timeout.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use super::CheckError;

/// Accepts a TCP connection to `addr` within `timeout`.
pub async fn tcp_connect(addr: SocketAddr, timeout: Duration) -> Result<Duration, CheckError> {
    let start = Instant::now();
    connect(addr, start + timeout, timeout).await?;
    Ok(start.elapsed())
}

pub(super) async fn connect(
    addr: SocketAddr,
    deadline: Instant,
    timeout: Duration,
) -> Result<TcpStream, CheckError> {
    timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| CheckError::ConnectTimeout { addr, timeout })?
        .map_err(|error| CheckError::Connect { addr, error })
}
