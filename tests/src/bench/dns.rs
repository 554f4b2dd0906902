//! The DNS benchmark: hinan's authoritative server beside Knot DNS and NSD,
//! in one run on this machine (`hinan-bench dns`).
//!
//! Each server in turn serves the same zone ([`ZONE`]) on 127.0.0.1:53 inside
//! a network namespace of the benchmark's own (`hl-ID-dns`), and `dnsperf`
//! in the same namespace sends it the same query file: 80 % hits (A and AAAA
//! of names that exist) and 20 % NXDOMAIN (names that do not). Before the
//! load, every distinct query of the mix is asked once with `kdig` and the
//! answer compared with the zone, so a server that answers wrongly (or
//! REFUSED, quickly) is flagged instead of winning.
//!
//! Per server: `trials` runs of `secs` seconds give QPS, average latency and
//! loss (medians of QPS and average; loss summed over the trials). The runs
//! go in rounds (hinan, Knot, NSD, hinan, …; each server started afresh for
//! its run and stopped after it), so that the load other work puts on the
//! machine falls on every server alike. dnsperf
//! 2.10 prints no percentiles, so each round has one more, shorter run with
//! `-v`, which prints every query's latency: p99 is the nearest rank over
//! all answers of that run, and the row reports the median over the rounds.
//! That run is kept apart because printing a line per query costs dnsperf
//! a few percent of its rate on these two shared cores.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::bench::stats::{median, percentile};
use crate::lab::daemon::{self, Daemon};
use crate::lab::run::{self, RunDir};
use crate::lab::sys::{self, ip, run_in};
use crate::peers::{knot, nsd, ServedZone};

/// The zone every server serves.
pub const ORIGIN: &str = "univ-a.example";
/// Where the servers listen inside the benchmark's namespace.
pub const LISTEN: &str = "127.0.0.1";
pub const PORT: u16 = 53;
/// TTL of every record but the SOA's.
pub const TTL: u32 = 300;

/// A name of the zone and its addresses. `service` names are what hinan
/// serves as `[[dns.service]]` (answers that follow the VM); the others are
/// plain records in every server.
#[derive(Debug, Clone, Copy)]
pub struct Name {
    pub label: &'static str,
    pub a: &'static str,
    pub aaaa: Option<&'static str>,
    pub service: bool,
}

pub const ZONE: [Name; 7] = [
    Name {
        label: "ns1",
        a: "10.70.0.53",
        aaaa: None,
        service: false,
    },
    Name {
        label: "www",
        a: "10.70.0.20",
        aaaa: Some("fd00:70::20"),
        service: false,
    },
    Name {
        label: "mail",
        a: "10.70.0.25",
        aaaa: None,
        service: false,
    },
    Name {
        label: "vpn",
        a: "198.18.0.2",
        aaaa: None,
        service: false,
    },
    Name {
        label: "lms",
        a: "10.70.0.10",
        aaaa: Some("fd00:70::10"),
        service: true,
    },
    Name {
        label: "moodle",
        a: "10.70.0.11",
        aaaa: Some("fd00:70::11"),
        service: true,
    },
    Name {
        label: "portal",
        a: "10.70.0.12",
        aaaa: Some("fd00:70::12"),
        service: true,
    },
];

/// SOA timers, the same for every server: refresh, retry, expire, minimum (negative TTL).
pub const SOA_TIMERS: (u32, u32, u32, u32) = (3600, 600, 604800, 60);
pub const SOA_TTL: u32 = 3600;

/// Share of NXDOMAIN queries in the mix, in percent.
pub const NXDOMAIN_PCT: usize = 20;

/// The zone file for Knot and NSD.
pub fn zone_file() -> String {
    let (refresh, retry, expire, minimum) = SOA_TIMERS;
    let mut z = format!(
        "$ORIGIN {ORIGIN}.\n$TTL {TTL}\n@ {SOA_TTL} IN SOA ns1.{ORIGIN}. hostmaster.{ORIGIN}. 1 {refresh} {retry} {expire} {minimum}\n@ {TTL} IN NS ns1.{ORIGIN}.\n"
    );
    for n in ZONE {
        z.push_str(&format!("{} {TTL} IN A {}\n", n.label, n.a));
        if let Some(v6) = n.aaaa {
            z.push_str(&format!("{} {TTL} IN AAAA {v6}\n", n.label));
        }
    }
    z
}

/// One query of the mix and the answer the zone gives to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub name: String,
    pub qtype: &'static str,
    /// `None`: NXDOMAIN.
    pub answer: Option<String>,
}

/// The query mix: 100 queries, every fifth an NXDOMAIN (20 distinct
/// nonexistent names, A and AAAA), the rest cycling through every A and
/// AAAA of the zone. dnsperf loops over the file in order.
pub fn query_mix() -> Vec<Query> {
    let mut hits = Vec::new();
    for n in ZONE {
        hits.push(Query {
            name: format!("{}.{ORIGIN}", n.label),
            qtype: "A",
            answer: Some(n.a.to_string()),
        });
        if let Some(v6) = n.aaaa {
            hits.push(Query {
                name: format!("{}.{ORIGIN}", n.label),
                qtype: "AAAA",
                answer: Some(v6.to_string()),
            });
        }
    }
    let every = 100 / NXDOMAIN_PCT;
    let (mut h, mut nx) = (0, 0);
    (0..100)
        .map(|i| {
            if i % every == every - 1 {
                nx += 1;
                Query {
                    name: format!("nx{nx}.{ORIGIN}"),
                    qtype: if nx % 2 == 0 { "AAAA" } else { "A" },
                    answer: None,
                }
            } else {
                h += 1;
                hits[(h - 1) % hits.len()].clone()
            }
        })
        .collect()
}

/// dnsperf's input file for `mix`.
pub fn query_file(mix: &[Query]) -> String {
    mix.iter()
        .map(|q| format!("{} {}\n", q.name, q.qtype))
        .collect()
}

/// The servers compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Server {
    Hinan,
    Knot,
    Nsd,
}

impl Server {
    pub const ALL: [Server; 3] = [Server::Hinan, Server::Knot, Server::Nsd];

    pub fn name(self) -> &'static str {
        match self {
            Server::Hinan => "hinan",
            Server::Knot => "knot",
            Server::Nsd => "nsd",
        }
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Server {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Server> {
        Server::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .with_context(|| format!("unknown DNS server '{s}' (known: hinan, knot, nsd)"))
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct DnsBenchSpec {
    pub servers: Vec<Server>,
    pub trials: usize,
    pub secs: u64,
    /// Seconds of the verbose run that gives p99 (0: no p99).
    pub latency_secs: u64,
    /// dnsperf `-c`, `-T`, `-q`.
    pub clients: u32,
    pub threads: u32,
    pub outstanding: u32,
    /// NSD's `server-count` (Knot and hinan use one UDP worker per CPU by default).
    pub nsd_servers: usize,
}

/// The numbers of one dnsperf run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PerfRun {
    pub sent: u64,
    pub completed: u64,
    pub lost: u64,
    pub qps: f64,
    pub avg_ms: f64,
    pub stddev_ms: f64,
    pub run_secs: f64,
    /// Response code -> count.
    pub rcodes: BTreeMap<String, u64>,
}

/// One server's row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerRow {
    pub server: Server,
    pub version: String,
    pub trials: Vec<PerfRun>,
    pub qps: Option<f64>,
    pub avg_ms: Option<f64>,
    /// Median over the rounds of the nearest-rank p99 of every answer's
    /// latency in that round's verbose run.
    pub p99_ms: Option<f64>,
    /// Each round's p99 and the number of answers it was taken from.
    pub p99_trials_ms: Vec<f64>,
    pub p99_samples: Vec<usize>,
    /// Lost over sent, all trials together, in percent.
    pub loss_pct: Option<f64>,
    pub lost: u64,
    /// Answers that differ from the zone, and response codes off the mix.
    pub problems: Vec<String>,
    pub error: Option<String>,
}

impl ServerRow {
    fn new(server: Server) -> ServerRow {
        ServerRow {
            server,
            version: String::new(),
            trials: Vec::new(),
            qps: None,
            avg_ms: None,
            p99_ms: None,
            p99_trials_ms: Vec::new(),
            p99_samples: Vec::new(),
            loss_pct: None,
            lost: 0,
            problems: Vec::new(),
            error: None,
        }
    }

    fn summarize(&mut self) {
        let qps: Vec<f64> = self.trials.iter().map(|t| t.qps).collect();
        let avg: Vec<f64> = self.trials.iter().map(|t| t.avg_ms).collect();
        self.qps = median(&qps);
        self.avg_ms = median(&avg);
        self.p99_ms = median(&self.p99_trials_ms);
        let sent: u64 = self.trials.iter().map(|t| t.sent).sum();
        self.lost = self.trials.iter().map(|t| t.lost).sum();
        self.loss_pct = (sent > 0).then(|| 100.0 * self.lost as f64 / sent as f64);
    }
}

/// The whole run, as written by `--json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DnsReport {
    pub dnsperf: String,
    pub kernel: String,
    pub cpus: usize,
    pub trials: usize,
    pub secs: u64,
    pub latency_secs: u64,
    pub clients: u32,
    pub threads: u32,
    pub outstanding: u32,
    pub nxdomain_pct: usize,
    pub rows: Vec<ServerRow>,
    /// hinan's median QPS over Knot's and NSD's.
    pub hinan_vs_knot: Option<f64>,
    pub hinan_vs_nsd: Option<f64>,
    /// hinan ≥ 1.0× Knot's QPS with no loss.
    pub target_met: Option<bool>,
}

/// Runs the benchmark in a namespace of its own; removes it (and every
/// server) on the way out, also after an error or Ctrl-C.
pub fn run(spec: &DnsBenchSpec, progress: &mut dyn FnMut(&str)) -> Result<DnsReport> {
    run::reap_stale();
    let id = format!("d{:04x}", (std::process::id() ^ nanos()) & 0xffff);
    let mut rd = RunDir::create(&id, false)?;
    let result = (|| {
        let ns = rd.netns_name("dns");
        sys::run("ip", &["netns", "add", &ns])?;
        rd.add_namespace(&ns)?;
        ip(&ns, &["link", "set", "lo", "up"])?;
        run_all(&mut rd, &ns, spec, progress)
    })();
    let problems = rd.teardown();
    let report = result?;
    if !problems.is_empty() {
        bail!("clean-up problems: {}", problems.join("; "));
    }
    Ok(report)
}

fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn run_all(
    rd: &mut RunDir,
    ns: &str,
    spec: &DnsBenchSpec,
    progress: &mut dyn FnMut(&str),
) -> Result<DnsReport> {
    let dir = rd.path.join("dns");
    fs::create_dir_all(&dir)?;
    let mix = query_mix();
    let qfile = dir.join("queries.txt");
    fs::write(&qfile, query_file(&mix))?;
    fs::write(dir.join("zone"), zone_file())?;
    let mut rows: Vec<ServerRow> = spec
        .servers
        .iter()
        .map(|&s| {
            let mut row = ServerRow::new(s);
            row.version = version(s);
            progress(&format!("{s}: {}", row.version));
            row
        })
        .collect();
    // Rounds of every server in turn, so that the machine's load at any
    // moment falls on all of them alike.
    for round in 1..=spec.trials {
        for row in rows.iter_mut().filter(|r| r.error.is_none()) {
            if crate::lab::interrupt::requested() {
                bail!("interrupted");
            }
            let s = row.server;
            if let Err(e) = measure(rd, ns, &dir, &qfile, &mix, spec, round, row, progress) {
                progress(&format!("  {s}: {e:#}"));
                row.error = Some(format!("{e:#}"));
            }
            if crate::lab::interrupt::requested() {
                bail!("interrupted");
            }
        }
    }
    for row in &mut rows {
        row.summarize();
    }
    let qps = |s: Server| rows.iter().find(|r| r.server == s).and_then(|r| r.qps);
    let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) if y > 0.0 => Some(x / y),
        _ => None,
    };
    let hinan_vs_knot = ratio(qps(Server::Hinan), qps(Server::Knot));
    let hinan = rows.iter().find(|r| r.server == Server::Hinan);
    let target_met = hinan_vs_knot
        .zip(hinan)
        .map(|(r, h)| r >= 1.0 && h.lost == 0 && h.problems.is_empty() && h.error.is_none());
    Ok(DnsReport {
        dnsperf: dnsperf_version(),
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        cpus: cpus(),
        trials: spec.trials,
        secs: spec.secs,
        latency_secs: spec.latency_secs,
        clients: spec.clients,
        threads: spec.threads,
        outstanding: spec.outstanding,
        nxdomain_pct: NXDOMAIN_PCT,
        hinan_vs_knot,
        hinan_vs_nsd: ratio(qps(Server::Hinan), qps(Server::Nsd)),
        target_met,
        rows,
    })
}

/// Round `round` of server `row.server`: start it, check its answers (first
/// round), one dnsperf run, one verbose run for p99, stop it.
#[allow(clippy::too_many_arguments)]
fn measure(
    rd: &mut RunDir,
    ns: &str,
    dir: &Path,
    qfile: &Path,
    mix: &[Query],
    spec: &DnsBenchSpec,
    round: usize,
    row: &mut ServerRow,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    let s = row.server;
    let sdir = dir.join(s.name());
    fs::create_dir_all(&sdir)?;
    let daemon = start(rd, ns, &sdir, &dir.join("zone"), s, spec)?;
    daemon::wait_while_running(
        &format!("{s} to answer the SOA query on {LISTEN}:{PORT}"),
        Duration::from_secs(15),
        Duration::from_millis(50),
        &[&daemon],
        || {
            kdig(ns, ORIGIN, "SOA")
                .ok()
                .filter(|a| a.status == "NOERROR")
                .map(|_| ())
        },
    )?;
    if round == 1 {
        row.problems = check_answers(ns, mix)?;
        for p in &row.problems {
            progress(&format!("  {s}: wrong answer: {p}"));
        }
    }
    let run = dnsperf(ns, qfile, spec, spec.secs, None)?;
    progress(&format!(
        "  round {round}: {:<5} {:>7.0} QPS, avg {:.3} ms, lost {} of {}",
        s.name(),
        run.qps,
        run.avg_ms,
        run.lost,
        run.sent
    ));
    if let Some(p) = mix_problem(&run) {
        progress(&format!("  {s}: {p}"));
        if !row.problems.contains(&p) {
            row.problems.push(p);
        }
    }
    row.trials.push(run);
    if !daemon.running() {
        bail!(
            "{s} exited during the load; its log:\n{}",
            daemon.log_tail(20)
        );
    }
    if spec.latency_secs > 0 && !crate::lab::interrupt::requested() {
        let out = dir.join(format!("{s}-verbose.txt"));
        dnsperf(ns, qfile, spec, spec.latency_secs, Some(&out))?;
        let text = fs::read_to_string(&out).unwrap_or_default();
        let _ = fs::remove_file(&out);
        let lat = verbose_latencies_ms(&text);
        let p99 = percentile(&lat, 99.0)
            .with_context(|| format!("`dnsperf -v` printed no latencies for {s}"))?;
        row.p99_trials_ms.push(p99);
        row.p99_samples.push(lat.len());
        progress(&format!(
            "  round {round}: {:<5} p99 {p99:.3} ms over {} answers of a {} s run with -v",
            s.name(),
            lat.len(),
            spec.latency_secs
        ));
    }
    drop(daemon);
    Ok(())
}

/// A problem when the response codes of a run are not the mix's: another
/// code than NOERROR and NXDOMAIN, or an NXDOMAIN share off by more than 1 point.
pub fn mix_problem(run: &PerfRun) -> Option<String> {
    let total: u64 = run.rcodes.values().sum();
    if total == 0 {
        return Some("no answers at all".into());
    }
    let others: Vec<String> = run
        .rcodes
        .iter()
        .filter(|(k, _)| *k != "NOERROR" && *k != "NXDOMAIN")
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    if !others.is_empty() {
        return Some(format!("response codes off the mix: {}", others.join(", ")));
    }
    let nx = *run.rcodes.get("NXDOMAIN").unwrap_or(&0) as f64 * 100.0 / total as f64;
    if (nx - NXDOMAIN_PCT as f64).abs() > 1.0 {
        return Some(format!(
            "NXDOMAIN share {nx:.1} %, the mix has {NXDOMAIN_PCT} %"
        ));
    }
    None
}

fn start(
    rd: &mut RunDir,
    ns: &str,
    sdir: &Path,
    zone: &Path,
    s: Server,
    spec: &DnsBenchSpec,
) -> Result<Daemon> {
    let log = sdir.join(format!("{s}.log"));
    let role = format!("dnsbench/{s}");
    let served = ServedZone {
        origin: ORIGIN,
        file: zone,
        listen: LISTEN,
        port: PORT,
    };
    match s {
        Server::Knot => knot::start_primary(rd, ns, &role, sdir, &served, &log),
        Server::Nsd => nsd::start(rd, ns, &role, sdir, &served, spec.nsd_servers, &log),
        Server::Hinan => {
            let bin = crate::lab::vpn::hinan_bin()?;
            let conf = sdir.join("hinan-dns.toml");
            fs::write(&conf, hinan_dns_config())?;
            Daemon::start(
                rd,
                ns,
                &role,
                bin.as_os_str(),
                &[
                    OsStr::new("dns"),
                    OsStr::new("serve"),
                    OsStr::new("--config"),
                    conf.as_os_str(),
                ],
                &log,
            )
            .with_context(|| format!("starting `{} dns serve`", bin.display()))
        }
    }
}

/// hinan's `[dns]` table for the same zone: the SOA and NS from the zone's
/// fields, plain names as records, service names as `[[dns.service]]` with
/// static addresses (what `hinan dns serve` answers without a cluster).
pub fn hinan_dns_config() -> String {
    let (refresh, retry, expire, minimum) = SOA_TIMERS;
    let mut records = vec![];
    for n in ZONE.iter().filter(|n| !n.service) {
        records.push(format!("  \"{} {TTL} IN A {}\",", n.label, n.a));
        if let Some(v6) = n.aaaa {
            records.push(format!("  \"{} {TTL} IN AAAA {v6}\",", n.label));
        }
    }
    let mut text = format!(
        "[dns]\nlisten = [\"{LISTEN}:{PORT}\"]\n\n[[dns.zone]]\norigin = \"{ORIGIN}\"\nns = [\"ns1.{ORIGIN}\"]\nadmin = \"hostmaster.{ORIGIN}\"\nsoa_ttl = {SOA_TTL}\nrefresh = {refresh}\nretry = {retry}\nexpire = {expire}\nminimum = {minimum}\nrecords = [\n{}\n]\n",
        records.join("\n")
    );
    for n in ZONE.iter().filter(|n| n.service) {
        let mut addrs = vec![format!("\"{}\"", n.a)];
        addrs.extend(n.aaaa.map(|v6| format!("\"{v6}\"")));
        text.push_str(&format!(
            "\n[[dns.service]]\nname = \"{}.{ORIGIN}\"\nttl = {TTL}\naddresses = [{}]\n",
            n.label,
            addrs.join(", ")
        ));
    }
    text.push_str("\n[dns.rrl]\nresponses_per_second = 0\n");
    text
}

/// What `kdig` printed for one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: String,
    /// (type, rdata) of the answer section.
    pub records: Vec<(String, String)>,
}

/// Reads kdig's default output: the status of the header line, the answer section.
pub fn parse_kdig(text: &str) -> Result<Answer> {
    let status = text
        .lines()
        .find_map(|l| {
            l.split_once("status: ")
                .map(|(_, r)| r.split(';').next().unwrap_or("").trim().to_string())
        })
        .context("kdig printed no header with a status")?;
    let mut records = Vec::new();
    let mut inside = false;
    for l in text.lines() {
        if l.starts_with(";; ANSWER SECTION") {
            inside = true;
            continue;
        }
        if inside {
            if l.trim().is_empty() || l.starts_with(";;") {
                break;
            }
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() >= 5 {
                records.push((f[3].to_string(), f[4..].join(" ")));
            }
        }
    }
    Ok(Answer { status, records })
}

fn kdig(ns: &str, name: &str, qtype: &str) -> Result<Answer> {
    let out = run_in(
        ns,
        "kdig",
        &[
            &format!("@{LISTEN}"),
            "-p",
            &PORT.to_string(),
            "+retry=1",
            "+timeout=1",
            name,
            qtype,
        ],
    )
    .context("kdig (`.ci/deps.sh bench` installs knot-dnsutils)")?;
    parse_kdig(&out)
}

/// Asks every distinct query of the mix once; returns what differs from the zone.
fn check_answers(ns: &str, mix: &[Query]) -> Result<Vec<String>> {
    let mut seen = Vec::new();
    let mut problems = Vec::new();
    for q in mix {
        if seen.contains(&(q.name.clone(), q.qtype)) {
            continue;
        }
        seen.push((q.name.clone(), q.qtype));
        let got = kdig(ns, &q.name, q.qtype)?;
        let ok = match &q.answer {
            None => got.status == "NXDOMAIN" && got.records.is_empty(),
            Some(want) => {
                got.status == "NOERROR"
                    && got.records.len() == 1
                    && got.records[0].0 == q.qtype
                    && got.records[0].1 == *want
            }
        };
        if !ok {
            problems.push(format!(
                "{} {}: got {} {:?}, want {}",
                q.name,
                q.qtype,
                got.status,
                got.records,
                q.answer.as_deref().unwrap_or("NXDOMAIN")
            ));
        }
    }
    Ok(problems)
}

fn dnsperf(
    ns: &str,
    qfile: &Path,
    spec: &DnsBenchSpec,
    secs: u64,
    verbose_to: Option<&Path>,
) -> Result<PerfRun> {
    let mut args: Vec<String> = [
        "netns",
        "exec",
        ns,
        "timeout",
        &(secs + 30).to_string(),
        "dnsperf",
        "-s",
        LISTEN,
        "-p",
        &PORT.to_string(),
        "-d",
        &qfile.to_string_lossy(),
        "-l",
        &secs.to_string(),
        "-c",
        &spec.clients.to_string(),
        "-T",
        &spec.threads.to_string(),
        "-q",
        &spec.outstanding.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut cmd = std::process::Command::new("ip");
    cmd.stdin(std::process::Stdio::null());
    if let Some(path) = verbose_to {
        args.push("-v".into());
        let f = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        cmd.stdout(f);
    } else {
        cmd.stdout(std::process::Stdio::piped());
    }
    let out = cmd
        .args(&args)
        .stderr(std::process::Stdio::piped())
        .output()
        .context("starting dnsperf (`.ci/deps.sh bench` installs it)")?;
    let text = match verbose_to {
        Some(path) => fs::read_to_string(path).unwrap_or_default(),
        None => String::from_utf8_lossy(&out.stdout).into_owned(),
    };
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            args[5..].join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_dnsperf(&text).with_context(|| format!("`{}`", args[5..].join(" ")))
}

/// Reads dnsperf's closing statistics.
pub fn parse_dnsperf(text: &str) -> Result<PerfRun> {
    let field = |key: &str| -> Option<&str> {
        text.lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix(key).map(str::trim))
    };
    let first_number = |key: &str| -> Result<f64> {
        field(key)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
            .filter(|x| x.is_finite())
            .with_context(|| format!("dnsperf printed no number after '{key}'"))
    };
    let mut rcodes = BTreeMap::new();
    if let Some(list) = field("Response codes:") {
        for part in list.split(',') {
            let mut it = part.split_whitespace();
            if let (Some(code), Some(n)) = (it.next(), it.next().and_then(|n| n.parse().ok())) {
                rcodes.insert(code.to_string(), n);
            }
        }
    }
    Ok(PerfRun {
        sent: first_number("Queries sent:")? as u64,
        completed: first_number("Queries completed:")? as u64,
        lost: first_number("Queries lost:")? as u64,
        qps: first_number("Queries per second:")?,
        avg_ms: first_number("Average Latency (s):")? * 1000.0,
        stddev_ms: first_number("Latency StdDev (s):")? * 1000.0,
        run_secs: first_number("Run time (s):")?,
        rcodes,
    })
}

/// Latencies (ms) of every answer in dnsperf `-v` output
/// (`> NOERROR lms.univ-a.example A 0.000104`); other lines are skipped.
pub fn verbose_latencies_ms(text: &str) -> Vec<f64> {
    text.lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .filter(|x| x.is_finite() && *x >= 0.0)
        .map(|s| s * 1000.0)
        .collect()
}

fn version(s: Server) -> String {
    match s {
        Server::Knot => knot::version(),
        Server::Nsd => nsd::version(),
        Server::Hinan => crate::lab::vpn::hinan_bin()
            .ok()
            .and_then(|b| sys::version_line(&b.to_string_lossy(), &["--version"])),
    }
    .unwrap_or_else(|| format!("{s} (version unknown)"))
}

fn dnsperf_version() -> String {
    let out = std::process::Command::new("dnsperf").arg("-h").output();
    out.ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            text.lines()
                .find(|l| l.starts_with("Version"))
                .map(|l| format!("dnsperf {}", l.trim_start_matches("Version").trim()))
        })
        .unwrap_or_else(|| "dnsperf".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DNSPERF: &str = "DNS Performance Testing Tool
Version 2.10.0

[Status] Command line: dnsperf -s 127.0.0.1 -p 5353 -d q -l 2 -c 4
[Status] Testing complete (time limit)

Statistics:

  Queries sent:         233394
  Queries completed:    233390 (100.00%)
  Queries lost:         4 (0.00%)

  Response codes:       NOERROR 155596 (66.67%), NXDOMAIN 77794 (33.33%)
  Average packet size:  request 36, response 68
  Run time (s):         2.000154
  Queries per second:   116688.015023

  Average Latency (s):  0.000293 (min 0.000012, max 0.002068)
  Latency StdDev (s):   0.000256
";

    #[test]
    fn reads_dnsperf_statistics() {
        let r = parse_dnsperf(DNSPERF).unwrap();
        assert_eq!((r.sent, r.completed, r.lost), (233394, 233390, 4));
        assert!((r.qps - 116688.015023).abs() < 1e-6);
        assert!((r.avg_ms - 0.293).abs() < 1e-9);
        assert!((r.stddev_ms - 0.256).abs() < 1e-9);
        assert_eq!(r.rcodes["NOERROR"], 155596);
        assert_eq!(r.rcodes["NXDOMAIN"], 77794);
    }

    #[test]
    fn truncated_or_garbage_dnsperf_output_is_an_error() {
        for bad in ["", "Queries sent: lots", &DNSPERF[..DNSPERF.len() / 2]] {
            assert!(parse_dnsperf(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn verbose_lines_give_latencies_and_p99() {
        let mut text = String::from("[Status] Sending queries\n");
        for i in 1..=100 {
            text.push_str(&format!("> NOERROR lms.univ-a.example A 0.{:06}\n", i * 10));
        }
        text.push_str("> NXDOMAIN nx1.univ-a.example A garbage\n[Timeout] Query timed out\n");
        let lat = verbose_latencies_ms(&text);
        assert_eq!(lat.len(), 100);
        assert!((percentile(&lat, 99.0).unwrap() - 0.99).abs() < 1e-9);
    }

    #[test]
    fn the_mix_is_80_percent_hits_20_percent_nxdomain() {
        let mix = query_mix();
        assert_eq!(mix.len(), 100);
        assert_eq!(mix.iter().filter(|q| q.answer.is_none()).count(), 20);
        // Every A and AAAA of the zone is asked.
        let zone = zone_file();
        for q in mix.iter().filter(|q| q.answer.is_some()) {
            let label = q.name.trim_end_matches(&format!(".{ORIGIN}"));
            let line = format!(
                "{label} {TTL} IN {} {}",
                q.qtype,
                q.answer.as_ref().unwrap()
            );
            assert!(zone.contains(&line), "{line} not in the zone");
        }
        let hits: std::collections::BTreeSet<_> = mix
            .iter()
            .filter(|q| q.answer.is_some())
            .map(|q| (q.name.clone(), q.qtype))
            .collect();
        assert_eq!(hits.len(), 11);
        assert!(query_file(&mix).starts_with("ns1.univ-a.example A\n"));
    }

    #[test]
    fn response_codes_off_the_mix_are_flagged() {
        let mut run = PerfRun::default();
        run.rcodes.insert("NOERROR".into(), 800);
        run.rcodes.insert("NXDOMAIN".into(), 200);
        assert_eq!(mix_problem(&run), None);
        run.rcodes.insert("REFUSED".into(), 5);
        assert!(mix_problem(&run).unwrap().contains("REFUSED 5"));
        run.rcodes.remove("REFUSED");
        run.rcodes.insert("NXDOMAIN".into(), 400);
        assert!(mix_problem(&run).unwrap().contains("NXDOMAIN share"));
    }

    #[test]
    fn reads_kdig_answers() {
        let text = ";; ->>HEADER<<- opcode: QUERY; status: NOERROR; id: 3022
;; Flags: qr aa rd; QUERY: 1; ANSWER: 1; AUTHORITY: 0; ADDITIONAL: 0

;; QUESTION SECTION:
;; lms.univ-a.example.\t\tIN\tAAAA

;; ANSWER SECTION:
lms.univ-a.example.\t300\tIN\tAAAA\tfd00:70::10

;; Received 64 B
";
        let a = parse_kdig(text).unwrap();
        assert_eq!(a.status, "NOERROR");
        assert_eq!(a.records, vec![("AAAA".into(), "fd00:70::10".into())]);
        assert!(parse_kdig("garbage").is_err());
    }

    #[test]
    fn hinan_config_has_every_name_of_the_zone() {
        let text = hinan_dns_config();
        for n in ZONE {
            assert!(text.contains(n.label), "{}", n.label);
            assert!(text.contains(n.a), "{}", n.a);
        }
        assert!(text.contains("listen = [\"127.0.0.1:53\"]"));
        assert!(text.contains("name = \"lms.univ-a.example\""));
        assert!(text.contains("\"www 300 IN AAAA fd00:70::20\""));
    }
}
