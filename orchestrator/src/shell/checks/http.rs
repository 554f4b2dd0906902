//! The HTTP check: `GET` over HTTP/1.0 and a strict read of the status line.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout_at, Instant};

use super::tcp::connect;
use super::CheckError;

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

/// The status code of `HTTP/1.x SSS reason`, without the line ending.
pub(super) fn parse_status_line(line: &[u8]) -> Option<u16> {
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
