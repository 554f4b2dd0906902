//! Real DNS peers for the DNS tests: Knot DNS as a secondary of hinan, and
//! `kdig`. Knot runs as a child of the test (not a daemon), with its own
//! configuration, storage and log in a temporary directory, on loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::lab::sys;

/// A TCP/UDP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let port = udp.local_addr()?.port();
    drop(udp);
    Ok(port)
}

/// A temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<TempDir> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("hinan-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `kdig @server -p port args…`: its output (`+short` style answers are the caller's choice).
pub fn kdig(server: SocketAddr, args: &[&str]) -> Result<String> {
    let port = server.port().to_string();
    let at = format!("@{}", server.ip());
    let mut all = vec![at.as_str(), "-p", port.as_str(), "+time=2", "+retry=0"];
    all.extend_from_slice(args);
    sys::run("kdig", &all)
}

/// The A/AAAA addresses `kdig +short` prints for `name`.
pub fn addresses(server: SocketAddr, name: &str, tcp: bool) -> Result<Vec<String>> {
    let mut args = vec![name, "A", "+short"];
    if tcp {
        args.push("+tcp");
    }
    Ok(kdig(server, &args)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, text)?;
    Ok(p)
}
