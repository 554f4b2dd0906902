//! Real DNS peers for the DNS tests: Knot DNS as a secondary of hinan, and
//! `kdig`. Knot runs as a child of the test (not a daemon), with its own
//! configuration, storage and log in a temporary directory, on loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::sys;

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

/// A TSIG key as Knot and BIND name it.
#[derive(Debug, Clone)]
pub struct TsigKey {
    pub name: String,
    pub secret_b64: String,
}

/// Knot DNS, secondary for one zone whose primary is hinan.
#[derive(Debug)]
pub struct KnotSecondary {
    child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
    _dir: TempDir,
}

impl KnotSecondary {
    /// Starts `knotd` on 127.0.0.1 (a free port), secondary for `zone` from
    /// `primary`, transfers signed with `key`, NOTIFY accepted from 127.0.0.1.
    pub fn start(zone: &str, primary: SocketAddr, key: &TsigKey) -> Result<KnotSecondary> {
        if !sys::have("knotd") {
            bail!("knotd is missing: apt-get install knot (make test installs it)");
        }
        let dir = TempDir::new("knot")?;
        let port = free_port()?;
        let d = dir.0.display();
        let conf = format!(
            r#"server:
    rundir: "{d}"
    listen: 127.0.0.1@{port}
log:
  - target: "{d}/knot.log"
    any: info
database:
    storage: "{d}"
key:
  - id: {kname}
    algorithm: hmac-sha256
    secret: {secret}
remote:
  - id: hinan
    address: {pip}@{pport}
    key: {kname}
acl:
  - id: notify-from-hinan
    address: {pip}
    action: notify
template:
  - id: default
    storage: "{d}"
    zonefile-sync: -1
    zonefile-load: none
    journal-content: none
zone:
  - domain: {zone}
    master: hinan
    acl: notify-from-hinan
"#,
            kname = key.name,
            secret = key.secret_b64,
            pip = primary.ip(),
            pport = primary.port(),
        );
        let conf_path = dir.0.join("knot.conf");
        std::fs::write(&conf_path, conf)?;
        let log = dir.0.join("knot.log");
        let child = Command::new("knotd")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting knotd")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let knot = KnotSecondary {
            child,
            addr,
            log,
            _dir: dir,
        };
        Ok(knot)
    }

    /// Knot's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until Knot answers `name` with `want` (polling every 20 ms).
    pub fn wait_answer(&self, name: &str, want: &str, limit: Duration) -> Result<Duration> {
        let start = std::time::Instant::now();
        sys::wait_for(
            &format!("Knot to answer {name} with {want}"),
            limit,
            Duration::from_millis(20),
            || {
                Ok(addresses(self.addr, name, false)?
                    .iter()
                    .any(|a| a == want)
                    .then_some(()))
            },
        )?;
        Ok(start.elapsed())
    }
}

impl Drop for KnotSecondary {
    fn drop(&mut self) {
        // Our own child, by its PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, text)?;
    Ok(p)
}
