//! Packet captures in a lab namespace with `tcpdump`, decoded afterwards
//! with Debian's `tshark`: the independent witness of what hinan put on a
//! wire.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// A running `tcpdump -w`. Dropping it stops the capture.
#[derive(Debug)]
pub struct Capture {
    child: Option<Child>,
    path: PathBuf,
}

impl Capture {
    /// Captures on `iface` in namespace `ns` into `path`, with a BPF
    /// `filter` ("" for everything). Returns once tcpdump is listening.
    pub fn start(ns: &str, iface: &str, filter: &str, path: &Path) -> Result<Capture> {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            ns,
            "tcpdump",
            "--immediate-mode",
            "-Z",
            "root",
            "-n",
            "-U",
            "-i",
            iface,
            "-w",
        ])
        .arg(path);
        if !filter.is_empty() {
            cmd.args(filter.split_whitespace());
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tcpdump")?;
        let stderr = child.stderr.take().context("tcpdump stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stderr).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so tcpdump never blocks on a full pipe.
            for _ in lines {}
        });
        let mut capture = Capture {
            child: Some(child),
            path: path.to_owned(),
        };
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) if line.contains("listening on") => Ok(capture),
            Ok(line) => {
                capture.stop();
                bail!("tcpdump on {iface} in {ns} failed: {line}")
            }
            Err(_) => {
                capture.stop();
                bail!("tcpdump on {iface} in {ns} did not start within 10 s")
            }
        }
    }

    /// Stops the capture (by PID) and returns the file.
    pub fn finish(mut self) -> PathBuf {
        // Let packets still on their way through the kernel be written.
        std::thread::sleep(Duration::from_millis(200));
        self.stop();
        self.path.clone()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child by its PID.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Decodes `file` with tshark: the packets matching display filter
/// `filter`, one line each, the given fields separated by `|` (a field
/// that occurs in several layers lists them separated by `,`, outermost
/// first).
pub fn tshark_fields(file: &Path, filter: &str, fields: &[&str]) -> Result<Vec<Vec<String>>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r")
        .arg(file)
        .args(["-Y", filter, "-T", "fields", "-E", "separator=|"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd
        .output()
        .context("running tshark (Debian package tshark)")?;
    if !out.status.success() {
        bail!(
            "tshark -r {} failed: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split('|').map(str::to_owned).collect())
        .collect())
}
