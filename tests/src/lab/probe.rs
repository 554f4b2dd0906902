//! The client probe: from inside the client namespace, an HTTP GET every
//! `interval` (50 ms by default) against a name or an address. It records each
//! request's outcome and latency and reports the longest outage, the failure
//! count and the timeline, as JSON.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::lab::netns;

/// What to probe and how often.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    /// `http://HOST[:PORT]/PATH`; HOST is an address or a name resolved in the namespace.
    pub url: String,
    pub interval: Duration,
    /// A request that has not completed by then counts as failed.
    pub timeout: Duration,
}

impl ProbeSpec {
    pub fn new(url: &str) -> ProbeSpec {
        ProbeSpec {
            url: url.to_string(),
            interval: Duration::from_millis(50),
            timeout: Duration::from_secs(1),
        }
    }
}

/// One request's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeSample {
    /// When it was sent, in ms since the probe started.
    pub at_ms: f64,
    pub ok: bool,
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the probe saw.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeReport {
    pub url: String,
    pub interval_ms: f64,
    pub timeout_ms: f64,
    pub duration_ms: f64,
    pub sent: usize,
    pub ok: usize,
    pub failed: usize,
    /// Longest span in which no request succeeded: from the first failed
    /// request after a success to the next successful one (or the probe's end).
    pub longest_outage_ms: f64,
    /// Where that outage started, in ms since the probe started.
    pub longest_outage_from_ms: f64,
    /// Longest time between the sending of two consecutive successful requests.
    pub longest_gap_between_successes_ms: f64,
    pub timeline: Vec<ProbeSample>,
}

impl ProbeReport {
    /// Builds the report from samples in any order.
    pub fn from_samples(
        spec: &ProbeSpec,
        duration: Duration,
        mut samples: Vec<ProbeSample>,
    ) -> Self {
        samples.sort_by(|a, b| a.at_ms.total_cmp(&b.at_ms));
        let ok = samples.iter().filter(|s| s.ok).count();
        let mut longest = (0.0f64, 0.0f64);
        let mut outage_from: Option<f64> = None;
        let mut last_ok: Option<f64> = None;
        let mut gap = 0.0f64;
        for s in &samples {
            if s.ok {
                if let Some(from) = outage_from.take() {
                    if s.at_ms - from > longest.0 {
                        longest = (s.at_ms - from, from);
                    }
                }
                if let Some(prev) = last_ok {
                    gap = gap.max(s.at_ms - prev);
                }
                last_ok = Some(s.at_ms);
            } else if outage_from.is_none() {
                outage_from = Some(s.at_ms);
            }
        }
        let end = duration.as_secs_f64() * 1000.0;
        if let Some(from) = outage_from {
            if end - from > longest.0 {
                longest = (end - from, from);
            }
        }
        ProbeReport {
            url: spec.url.clone(),
            interval_ms: spec.interval.as_secs_f64() * 1000.0,
            timeout_ms: spec.timeout.as_secs_f64() * 1000.0,
            duration_ms: end,
            sent: samples.len(),
            ok,
            failed: samples.len() - ok,
            longest_outage_ms: longest.0,
            longest_outage_from_ms: longest.1,
            longest_gap_between_successes_ms: gap,
            timeline: samples,
        }
    }

    /// A one-line human summary.
    pub fn summary(&self) -> String {
        format!(
            "{} requests, {} ok, {} failed; longest outage {:.0} ms (from {:.0} ms); longest gap between successes {:.0} ms",
            self.sent,
            self.ok,
            self.failed,
            self.longest_outage_ms,
            self.longest_outage_from_ms,
            self.longest_gap_between_successes_ms
        )
    }
}

/// A running probe.
#[derive(Debug)]
pub struct Probe {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    handle: Option<JoinHandle<Result<ProbeReport>>>,
}

impl Probe {
    /// Starts probing from inside namespace `ns`.
    pub fn start(ns: &str, spec: ProbeSpec) -> Result<Probe> {
        let target = Target::parse(&spec.url)?;
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let handle = netns::spawn_in(ns, move || run(spec, target, s, o, f));
        Ok(Probe {
            stop,
            ok,
            failed,
            handle: Some(handle),
        })
    }

    /// Counts so far: (ok, failed).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// Stops sending, waits for requests in flight, and reports.
    pub fn stop(mut self) -> Result<ProbeReport> {
        self.stop.store(true, Ordering::Relaxed);
        let handle = self.handle.take().context("probe already stopped")?;
        handle
            .join()
            .map_err(|_| anyhow!("the probe thread panicked"))?
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// One GET from inside namespace `ns`: returns (status, body).
pub fn http_get(ns: &str, url: &str, timeout: Duration) -> Result<(u16, String)> {
    let target = Target::parse(url)?;
    netns::run_in(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            tokio::time::timeout(timeout, get(&target))
                .await
                .map_err(|_| anyhow!("no answer from {} within {timeout:?}", target.url))?
        })
    })
}

#[derive(Debug, Clone)]
struct Target {
    url: String,
    host: String,
    port: u16,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("probe URL '{url}' must start with http://"))?;
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h.trim_matches(|c| c == '[' || c == ']').to_string(),
                p.parse().with_context(|| format!("bad port in '{url}'"))?,
            ),
            _ => (hostport.to_string(), 80),
        };
        if host.is_empty() {
            bail!("probe URL '{url}' has no host");
        }
        Ok(Target {
            url: url.to_string(),
            host,
            port,
            path: path.to_string(),
        })
    }

    fn addr(&self) -> Result<SocketAddr> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .with_context(|| format!("resolving {}", self.host))?
            .next()
            .with_context(|| format!("{} has no address", self.host))
    }
}

async fn get(t: &Target) -> Result<(u16, String)> {
    let addr = t.addr()?;
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: hinan-lab-probe\r\nConnection: close\r\n\r\n",
        t.path, t.host
    );
    conn.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(4096);
    conn.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let status_line = text.lines().next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP response: '{status_line}'"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    Ok((status, body.to_string()))
}

fn run(
    spec: ProbeSpec,
    target: Target,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) -> Result<ProbeReport> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let mut samples = Vec::new();
        let mut ticker = tokio::time::interval(spec.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stop.load(Ordering::Relaxed) {
            ticker.tick().await;
            let sent = Instant::now();
            let (t, timeout) = (target.clone(), spec.timeout);
            let (ok, failed) = (ok.clone(), failed.clone());
            tasks.spawn(async move {
                let result = tokio::time::timeout(timeout, get(&t)).await;
                let latency = sent.elapsed();
                let error = match result {
                    Ok(Ok((200, _))) => None,
                    Ok(Ok((status, _))) => Some(format!("HTTP status {status}")),
                    Ok(Err(e)) => Some(format!("{e:#}")),
                    Err(_) => Some(format!("timeout after {timeout:?}")),
                };
                if error.is_none() {
                    ok.fetch_add(1, Ordering::Relaxed)
                } else {
                    failed.fetch_add(1, Ordering::Relaxed)
                };
                ProbeSample {
                    at_ms: sent.duration_since(start).as_secs_f64() * 1000.0,
                    ok: error.is_none(),
                    latency_ms: latency.as_secs_f64() * 1000.0,
                    error,
                }
            });
            while let Some(done) = tasks.try_join_next() {
                samples.push(done?);
            }
        }
        let duration = start.elapsed();
        while let Some(done) = tasks.join_next().await {
            samples.push(done?);
        }
        Ok(ProbeReport::from_samples(&spec, duration, samples))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: f64, ok: bool) -> ProbeSample {
        ProbeSample {
            at_ms: at,
            ok,
            latency_ms: 1.0,
            error: None,
        }
    }

    #[test]
    fn outage_spans_first_failure_to_next_success() {
        let spec = ProbeSpec::new("http://10.0.0.1/");
        let s = vec![
            sample(0.0, true),
            sample(50.0, false),
            sample(100.0, false),
            sample(150.0, true),
            sample(200.0, false),
            sample(250.0, true),
        ];
        let r = ProbeReport::from_samples(&spec, Duration::from_millis(300), s);
        assert_eq!((r.sent, r.ok, r.failed), (6, 3, 3));
        assert_eq!(r.longest_outage_ms, 100.0);
        assert_eq!(r.longest_outage_from_ms, 50.0);
        assert_eq!(r.longest_gap_between_successes_ms, 150.0);
    }

    #[test]
    fn outage_that_never_ends_runs_to_the_probe_end() {
        let spec = ProbeSpec::new("http://10.0.0.1/");
        let s = vec![sample(0.0, true), sample(50.0, false)];
        let r = ProbeReport::from_samples(&spec, Duration::from_millis(1000), s);
        assert_eq!(r.longest_outage_ms, 950.0);
    }

    #[test]
    fn no_failure_no_outage() {
        let spec = ProbeSpec::new("http://10.0.0.1/");
        let s = (0..10).map(|i| sample(i as f64 * 50.0, true)).collect();
        let r = ProbeReport::from_samples(&spec, Duration::from_millis(500), s);
        assert_eq!(r.longest_outage_ms, 0.0);
        assert_eq!(r.failed, 0);
    }

    #[test]
    fn urls_parse() {
        let t = Target::parse("http://lms.univ-a.example:8080/cgi-bin/info").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("lms.univ-a.example", 8080, "/cgi-bin/info")
        );
        let t = Target::parse("http://10.70.0.10").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("10.70.0.10", 80, "/")
        );
        assert!(Target::parse("ftp://x/").is_err());
        assert!(Target::parse("http:///x").is_err());
    }
}

/// What one long-lived TCP connection saw: the guest's `/cgi-bin/stream`
/// prints a numbered line every 100 ms and `DONE n` at the end.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamReport {
    /// Numbered lines received.
    pub lines: u64,
    /// The stream ended with `DONE n`, n matching the lines received.
    pub done: bool,
    /// Every line number followed the one before.
    pub in_order: bool,
    /// The longest wait between two lines.
    pub longest_gap_ms: f64,
    /// Why the connection ended early, if it did.
    pub error: Option<String>,
}

impl StreamReport {
    /// The connection lived to the end and lost nothing.
    pub fn survived(&self) -> bool {
        self.done && self.in_order && self.error.is_none()
    }
}

/// A long-lived TCP connection from inside a namespace, read on a thread of
/// its own.
#[derive(Debug)]
pub struct LongStream {
    handle: JoinHandle<Result<StreamReport>>,
}

impl LongStream {
    /// Opens `GET /cgi-bin/stream?SECS` to `addr` from namespace `ns`; the
    /// connection's first line has arrived when this returns.
    pub fn start(ns: &str, addr: SocketAddr, secs: u32) -> Result<LongStream> {
        use std::io::{BufRead, BufReader, Write};
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = netns::spawn_in(ns, move || {
            let started = (|| -> Result<BufReader<std::net::TcpStream>> {
                let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
                s.set_read_timeout(Some(Duration::from_secs(15)))?;
                write!(
                    s,
                    "GET /cgi-bin/stream?{secs} HTTP/1.0\r\nHost: {addr}\r\n\r\n"
                )?;
                Ok(BufReader::new(s))
            })();
            let mut reader = match started {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(format!("{e:#}")));
                    return Err(e);
                }
            };
            let mut report = StreamReport {
                lines: 0,
                done: false,
                in_order: true,
                longest_gap_ms: 0.0,
                error: None,
            };
            let mut last = Instant::now();
            let mut in_body = false;
            let mut line = String::new();
            let mut told = false;
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) => {
                        report
                            .error
                            .get_or_insert("connection closed before DONE".into());
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        report.error =
                            Some(format!("read failed after {} lines: {e}", report.lines));
                        break;
                    }
                }
                let text = line.trim();
                if !in_body {
                    in_body = text.is_empty();
                    continue;
                }
                let gap = last.elapsed().as_secs_f64() * 1000.0;
                last = Instant::now();
                if let Some(n) = text.strip_prefix("DONE ") {
                    report.done = n.parse::<u64>().ok() == Some(report.lines);
                    report.error = None;
                    break;
                }
                let n: u64 = text
                    .split(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                if report.lines > 0 {
                    report.longest_gap_ms = report.longest_gap_ms.max(gap);
                }
                report.in_order &= n == report.lines + 1;
                report.lines += 1;
                if !told {
                    told = true;
                    let _ = tx.send(Ok(()));
                }
            }
            if !told {
                let _ = tx.send(Err(report.error.clone().unwrap_or_default()));
            }
            Ok(report)
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(LongStream { handle }),
            Ok(Err(e)) => bail!("the long-lived connection to {addr} did not start: {e}"),
            Err(_) => bail!("no first line from {addr}/cgi-bin/stream within 10 s"),
        }
    }

    /// Waits for the stream to end.
    pub fn finish(self) -> Result<StreamReport> {
        self.handle
            .join()
            .map_err(|_| anyhow!("the stream reader panicked"))?
    }
}
