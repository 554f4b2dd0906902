//! The control socket (a Unix socket, so only local root reaches it): the
//! client the `hinan` CLI and the lab tests use, and the appliance's server.
//! The messages are [`crate::core::control`]'s.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub use crate::core::control::*;

/// Errors talking to an appliance.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the appliance at {path}: {source} (is `hinan run` running?)")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("talking to the appliance: {0}")]
    Io(#[from] std::io::Error),
    #[error("the appliance answered something unreadable: {0}")]
    Decode(String),
    #[error("{0}")]
    Refused(String),
}

/// Sends one request and returns the `result` of a successful answer.
pub fn call(
    socket: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<serde_json::Value, ControlError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| ControlError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(req).map_err(|e| ControlError::Decode(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    let resp: Response = serde_json::from_str(&answer)
        .map_err(|e| ControlError::Decode(format!("{e}: {answer}")))?;
    if resp.ok {
        Ok(resp.result.unwrap_or(serde_json::Value::Null))
    } else {
        Err(ControlError::Refused(
            resp.error.unwrap_or_else(|| "refused".into()),
        ))
    }
}

/// [`call`], decoding the result as `T`.
pub fn call_as<T: serde::de::DeserializeOwned>(
    socket: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<T, ControlError> {
    let v = call(socket, req, timeout)?;
    serde_json::from_value(v).map_err(|e| ControlError::Decode(e.to_string()))
}
