//! The L2 VPN benchmark: hinan's two tunnels beside wireguard-go and tinc, on
//! the lab's campus-to-campus path, in one run (`hinan-bench vpn`).
//!
//! ```text
//!   campus A (hl-ID-a)          WAN router (hl-ID-wan)          campus B (hl-ID-b)
//!   iperf3 client  -- tunnel endpoint -- wan0 ==== to-a | to-b ==== wan0 -- tunnel endpoint -- iperf3 -s
//! ```
//!
//! The layout is the lab's WAN-only one ([`LabSpec::wan_only`]): no Open
//! vSwitch and no libvirtd, so nothing but the tunnel, the WAN router and the
//! load generator competes for the two cores. Each tunnel runs alone: it is
//! started, checked with a ping over its inside addresses, measured, stopped.
//! The bare WAN path (no tunnel, iperf3 to B's `wan0`) is the reference row.
//!
//! Cells: iperf3 TCP with 1 and 4 streams (receiver's Gbit/s), and small-frame
//! packet rate: iperf3 UDP with an 18-byte payload (`-l 18 -b 0`), which
//! makes a 64-byte Ethernet frame with FCS on an L2 tunnel (18 bytes, plus 8
//! UDP, 20 IP, 14 Ethernet and 4 FCS); L3 tunnels and the bare path carry the same UDP
//! payload. Each cell runs `trials` times (rounds of 1 stream, 4 streams,
//! UDP) and reports the median. The rounds go through every tunnel in turn
//! (each started afresh, with new keys, and stopped after its round), so
//! that the load other work puts on the machine falls on all rows alike.
//!
//! Note on the WAN: the lab turns tx checksum offload (and with it TSO) off on
//! its veths, because Open vSwitch's userspace datapath needs that. This
//! layout has no Open vSwitch, so by default the benchmark turns them back on
//! for the A-WAN-B veths (`wan_offloads`), as a NIC would have them: without
//! them the bare path drops from about 13 to about 3 Gbit/s here, and a tunnel
//! that sends UDP GSO batches pays for software checksums and segmentation.

use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::bench::stats::median;
use crate::lab::daemon::{address_device, wait_while_running, Daemon};
use crate::lab::run::RunDir;
use crate::lab::sys::{self, run_in};
use crate::lab::vpn::{self, MeshOptions, SegmentLink, VpnSite};
use crate::lab::{Campus, Lab, LabSpec};
use crate::peers::{tinc, wireguard_go};

/// The iperf3 port in campus B.
pub const IPERF_PORT: u16 = 5201;
/// UDP payload of the packet-rate cell: a 64-byte Ethernet frame on an L2 tunnel.
pub const SMALL_PAYLOAD: usize = 18;
/// hinan's TAP device name (the same in both campus namespaces).
pub const HINAN_TAP: &str = "hvb0";

/// One row of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tunnel {
    /// hinan, RFC 3378 EtherIP directly in IP protocol 97.
    HinanRaw,
    /// hinan, EtherIP in an inner IP header inside WireGuard.
    HinanWireguard,
    /// Debian's wireguard-go (L3, TUN).
    WireguardGo,
    /// Debian's tinc 1.0 in switch mode (L2, TAP).
    TincSwitch,
    /// No tunnel: iperf3 straight across the WAN.
    Bare,
}

impl Tunnel {
    pub const ALL: [Tunnel; 5] = [
        Tunnel::HinanRaw,
        Tunnel::HinanWireguard,
        Tunnel::WireguardGo,
        Tunnel::TincSwitch,
        Tunnel::Bare,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tunnel::HinanRaw => "hinan-raw",
            Tunnel::HinanWireguard => "hinan-wireguard",
            Tunnel::WireguardGo => "wireguard-go",
            Tunnel::TincSwitch => "tinc-switch",
            Tunnel::Bare => "bare",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Tunnel::HinanRaw => "hinan EtherIP raw (IP proto 97), TAP",
            Tunnel::HinanWireguard => "hinan EtherIP-in-WireGuard, TAP",
            Tunnel::WireguardGo => "wireguard-go (L3, TUN, MTU 1420)",
            Tunnel::TincSwitch => "tinc 1.0 switch mode (L2, TAP)",
            Tunnel::Bare => "bare WAN path, no tunnel",
        }
    }

    /// The inside subnet's third octet (10.99.x.0/24 style), one per tunnel
    /// so that a leftover address can never carry another row's traffic.
    fn inside(self, side: u8) -> Ipv4Addr {
        let net = match self {
            Tunnel::HinanRaw => 99,
            Tunnel::HinanWireguard => 99,
            Tunnel::WireguardGo => 98,
            Tunnel::TincSwitch => 97,
            Tunnel::Bare => 0,
        };
        Ipv4Addr::new(10, net, 0, side)
    }

    /// The inside addresses of campus A's and B's ends.
    fn inside_pair(self) -> [Ipv4Addr; 2] {
        [self.inside(1), self.inside(2)]
    }
}

impl fmt::Display for Tunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Tunnel {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Tunnel> {
        Tunnel::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .with_context(|| {
                format!(
                    "unknown tunnel '{s}' (known: {})",
                    Tunnel::ALL.map(Tunnel::name).join(", ")
                )
            })
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct VpnBenchSpec {
    pub tunnels: Vec<Tunnel>,
    pub trials: usize,
    pub secs: u64,
    /// Turn tx checksum offload and TSO back on for the WAN veths between A
    /// and B (the lab turns them off for Open vSwitch, which this layout does
    /// not run): a veth's defaults, like a NIC's.
    pub wan_offloads: bool,
    /// hinan's `offload = true`: virtio headers and TSO on its TAP. Right here,
    /// where the kernel stack itself uses the TAP (iperf3 runs on it); never
    /// for a TAP on an Open vSwitch userspace bridge.
    pub hinan_offload: bool,
}

/// Medians and raw trials of one number.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cell {
    pub trials: Vec<f64>,
    pub median: Option<f64>,
}

impl Cell {
    fn push(&mut self, v: f64) {
        self.trials.push(v);
        self.median = median(&self.trials);
    }
}

/// One row: a tunnel's numbers, or why it has none.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub tunnel: Tunnel,
    pub description: String,
    /// iperf3 TCP, 1 stream, Gbit/s at the receiver.
    pub tcp1_gbps: Cell,
    /// iperf3 TCP, 4 streams, Gbit/s at the receiver.
    pub tcp4_gbps: Cell,
    /// iperf3 UDP with an 18-byte payload: packets per second received.
    pub small_pps: Cell,
    /// The same trials' loss, in percent of packets sent.
    pub small_loss_pct: Cell,
    /// Set when the row could not be measured (in full).
    pub error: Option<String>,
}

impl Row {
    fn new(t: Tunnel) -> Row {
        Row {
            tunnel: t,
            description: t.describe().to_string(),
            tcp1_gbps: Cell::default(),
            tcp4_gbps: Cell::default(),
            small_pps: Cell::default(),
            small_loss_pct: Cell::default(),
            error: None,
        }
    }
}

/// A tunnel's median over wireguard-go's, per column.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ratio {
    pub tunnel: Tunnel,
    pub tcp1: Option<f64>,
    pub tcp4: Option<f64>,
    pub small_pps: Option<f64>,
}

/// The whole run, as written by `--json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VpnReport {
    pub kernel: String,
    pub iperf3: String,
    pub trials: usize,
    pub secs: u64,
    pub wan_offloads: bool,
    pub hinan_offload: bool,
    pub small_payload: usize,
    pub rows: Vec<Row>,
    /// Every tunnel's medians over wireguard-go's.
    pub vs_wireguard_go: Vec<Ratio>,
    /// hinan EtherIP-in-WireGuard over wireguard-go, TCP 1 and 4 streams (target ≥ 2).
    pub target_ratio_tcp1: Option<f64>,
    pub target_ratio_tcp4: Option<f64>,
}

/// Target of the issue: hinan EtherIP-in-WireGuard ≥ 2× wireguard-go's throughput.
pub const TARGET_VS_WIREGUARD_GO: f64 = 2.0;

/// Builds the WAN-only lab, measures every tunnel of `spec`, tears the lab down.
/// Calls `progress` with a line of text as it goes.
pub fn run(spec: &VpnBenchSpec, progress: &mut dyn FnMut(&str)) -> Result<VpnReport> {
    let mut lab = Lab::up(&LabSpec::wan_only())?;
    let result = run_in_lab(&mut lab, spec, progress);
    let problems = lab.teardown();
    let report = result?;
    if !problems.is_empty() {
        bail!("clean-up problems: {}", problems.join("; "));
    }
    Ok(report)
}

fn run_in_lab(
    lab: &mut Lab,
    spec: &VpnBenchSpec,
    progress: &mut dyn FnMut(&str),
) -> Result<VpnReport> {
    let a = lab.campus("a")?.clone();
    let b = lab.campus("b")?.clone();
    if spec.wan_offloads {
        let wan = lab.topo.wan_ns.clone();
        for (ns, dev) in [
            (&a.ns, "wan0"),
            (&b.ns, "wan0"),
            (&wan, "to-a"),
            (&wan, "to-b"),
        ] {
            run_in(
                ns,
                "ethtool",
                &["-K", dev, "tx", "on", "tso", "on", "gso", "on"],
            )
            .with_context(|| format!("turning offloads back on for {dev} in {ns}"))?;
        }
    }
    let mut rows: Vec<Row> = spec.tunnels.iter().map(|&t| Row::new(t)).collect();
    // Rounds of every tunnel in turn (each started afresh and stopped after
    // its round), so that the load other work puts on the machine falls on
    // all of them alike.
    for round in 1..=spec.trials {
        for row in rows.iter_mut().filter(|r| r.error.is_none()) {
            if crate::lab::interrupt::requested() {
                bail!("interrupted");
            }
            let t = row.tunnel;
            progress(&format!("round {round}: {t}: {}", t.describe()));
            if let Err(e) = measure_tunnel(lab, &a, &b, t, round, row, spec, progress) {
                progress(&format!("  {t}: {e:#}"));
                row.error = Some(format!("{e:#}"));
            }
            if crate::lab::interrupt::requested() {
                bail!("interrupted");
            }
        }
    }
    let wg = rows
        .iter()
        .find(|r| r.tunnel == Tunnel::WireguardGo)
        .cloned();
    let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) if y > 0.0 => Some(x / y),
        _ => None,
    };
    let vs = rows
        .iter()
        .map(|r| Ratio {
            tunnel: r.tunnel,
            tcp1: ratio(
                r.tcp1_gbps.median,
                wg.as_ref().and_then(|w| w.tcp1_gbps.median),
            ),
            tcp4: ratio(
                r.tcp4_gbps.median,
                wg.as_ref().and_then(|w| w.tcp4_gbps.median),
            ),
            small_pps: ratio(
                r.small_pps.median,
                wg.as_ref().and_then(|w| w.small_pps.median),
            ),
        })
        .collect::<Vec<_>>();
    let target = vs.iter().find(|r| r.tunnel == Tunnel::HinanWireguard);
    Ok(VpnReport {
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        iperf3: iperf3_version(),
        trials: spec.trials,
        secs: spec.secs,
        wan_offloads: spec.wan_offloads,
        hinan_offload: spec.hinan_offload,
        small_payload: SMALL_PAYLOAD,
        target_ratio_tcp1: target.and_then(|r| r.tcp1),
        target_ratio_tcp4: target.and_then(|r| r.tcp4),
        vs_wireguard_go: vs,
        rows,
    })
}

/// One round of tunnel `t`: start it, ping through it, one trial of each
/// cell, stop it.
#[allow(clippy::too_many_arguments)]
fn measure_tunnel(
    lab: &mut Lab,
    a: &Campus,
    b: &Campus,
    t: Tunnel,
    round: usize,
    row: &mut Row,
    spec: &VpnBenchSpec,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    let dir = lab.run.path.join(format!("vpn-{t}-{round}"));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let started = Instant::now();
    let endpoints = match t {
        Tunnel::Bare => Vec::new(),
        Tunnel::WireguardGo => wireguard_go::start(&mut lab.run, &dir, a, b, t.inside_pair())?,
        Tunnel::TincSwitch => tinc::start(&mut lab.run, &dir, a, b, t.inside_pair())?,
        Tunnel::HinanRaw | Tunnel::HinanWireguard => {
            start_hinan(&mut lab.run, &dir, a, b, t, spec.hinan_offload)?
        }
    };
    let server = if t == Tunnel::Bare {
        b.public_ip
    } else {
        t.inside(2)
    };
    wait_ping(&a.ns, server, &endpoints).with_context(|| {
        format!(
            "{t} does not carry a ping from A to {server}{}",
            logs(&endpoints)
        )
    })?;
    progress(&format!(
        "  up and answering pings after {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    let iperf = Daemon::start(
        &mut lab.run,
        &b.ns,
        &format!("vpnbench/{t}/iperf3-server"),
        OsStr::new("iperf3"),
        &["-s", "-p", &IPERF_PORT.to_string()],
        &dir.join("iperf3-server.log"),
    )?;
    sys::wait_for(
        "the iperf3 server in B to listen",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || Ok(listening_tcp(&b.ns, IPERF_PORT).then_some(())),
    )?;
    for test in [Test::Tcp(1), Test::Tcp(4), Test::Small] {
        if crate::lab::interrupt::requested() {
            bail!("interrupted");
        }
        for d in endpoints.iter().chain(std::iter::once(&iperf)) {
            if !d.running() {
                bail!("{} exited; its log:\n{}", d.rec.role, d.log_tail(20));
            }
        }
        let out = iperf_client(&a.ns, server, test, spec.secs)
            .with_context(|| format!("{t}, {test}, round {round}"))?;
        match (test, out) {
            (Test::Tcp(1), IperfResult::Tcp { gbps }) => row.tcp1_gbps.push(gbps),
            (Test::Tcp(_), IperfResult::Tcp { gbps }) => row.tcp4_gbps.push(gbps),
            (Test::Small, IperfResult::Udp { pps, loss_pct }) => {
                row.small_pps.push(pps);
                row.small_loss_pct.push(loss_pct);
            }
            (_, other) => bail!("iperf3 gave {other:?} for {test}"),
        }
        progress(&format!("  {test}: {}", out_text(row, test)));
    }
    drop(iperf);
    drop(endpoints);
    Ok(())
}

fn out_text(row: &Row, test: Test) -> String {
    let last = |c: &Cell| c.trials.last().copied().unwrap_or(f64::NAN);
    match test {
        Test::Tcp(1) => format!("{:.3} Gbit/s", last(&row.tcp1_gbps)),
        Test::Tcp(_) => format!("{:.3} Gbit/s", last(&row.tcp4_gbps)),
        Test::Small => format!(
            "{:.0} pps received, {:.1} % lost",
            last(&row.small_pps),
            last(&row.small_loss_pct)
        ),
    }
}

/// One iperf3 measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Test {
    /// TCP with this many parallel streams.
    Tcp(u32),
    /// UDP, [`SMALL_PAYLOAD`] bytes, unlimited rate.
    Small,
}

impl fmt::Display for Test {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Test::Tcp(1) => write!(f, "TCP 1 stream"),
            Test::Tcp(n) => write!(f, "TCP {n} streams"),
            Test::Small => write!(f, "UDP {SMALL_PAYLOAD}-byte payload"),
        }
    }
}

/// What iperf3's JSON says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum IperfResult {
    Tcp { gbps: f64 },
    Udp { pps: f64, loss_pct: f64 },
}

/// The iperf3 client's arguments for `test` toward `server`.
pub fn iperf_args(server: Ipv4Addr, test: Test, secs: u64) -> Vec<String> {
    let mut args: Vec<String> = [
        "-c",
        &server.to_string(),
        "-p",
        &IPERF_PORT.to_string(),
        "-t",
        &secs.to_string(),
        "-J",
        "--connect-timeout",
        "3000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    match test {
        Test::Tcp(n) => args.extend(["-P".to_string(), n.to_string()]),
        Test::Small => args.extend(
            ["-u", "-b", "0", "-l", &SMALL_PAYLOAD.to_string()]
                .iter()
                .map(|s| s.to_string()),
        ),
    }
    args
}

fn iperf_client(ns: &str, server: Ipv4Addr, test: Test, secs: u64) -> Result<IperfResult> {
    let limit = (secs + 20).to_string();
    let mut args = vec![
        "netns".to_string(),
        "exec".into(),
        ns.into(),
        "timeout".into(),
        limit,
        "iperf3".into(),
    ];
    args.extend(iperf_args(server, test, secs));
    let out = std::process::Command::new("ip")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .context("starting iperf3 (is it installed? `.ci/deps.sh bench` installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_iperf_json(&text).with_context(|| {
        format!(
            "iperf3 {} ({}){}",
            args[5..].join(" "),
            out.status,
            match String::from_utf8_lossy(&out.stderr).trim() {
                "" => String::new(),
                e => format!(": {e}"),
            }
        )
    })
}

/// Reads iperf3's `-J` output: the receiver's rate for TCP; for UDP the
/// packets that arrived per second (sent minus lost, over the test's length)
/// and the loss the server reported.
pub fn parse_iperf_json(text: &str) -> Result<IperfResult> {
    let v: serde_json::Value = serde_json::from_str(text).context("iperf3 did not print JSON")?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {e}");
    }
    let end = v.get("end").context("iperf3's JSON has no 'end' section")?;
    let udp = v
        .pointer("/start/test_start/protocol")
        .and_then(|p| p.as_str())
        == Some("UDP");
    if udp {
        let sum = end.get("sum").context("iperf3's UDP JSON has no end.sum")?;
        let num = |k: &str| -> Result<f64> {
            sum.get(k)
                .and_then(|x| x.as_f64())
                .with_context(|| format!("iperf3's UDP end.sum has no number '{k}'"))
        };
        let packets = num("packets")?;
        let lost = num("lost_packets")?;
        let secs = num("seconds")?;
        if secs <= 0.0 || packets <= 0.0 {
            bail!("iperf3 sent no UDP packets ({packets} in {secs} s)");
        }
        Ok(IperfResult::Udp {
            pps: (packets - lost).max(0.0) / secs,
            loss_pct: 100.0 * lost / packets,
        })
    } else {
        let bps = end
            .pointer("/sum_received/bits_per_second")
            .and_then(|x| x.as_f64())
            .context("iperf3's TCP JSON has no end.sum_received.bits_per_second")?;
        Ok(IperfResult::Tcp { gbps: bps / 1e9 })
    }
}

fn iperf3_version() -> String {
    sys::run("iperf3", &["--version"])
        .ok()
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "iperf3 (version unknown)".into())
}

/// Whether something in `ns` listens on TCP `port`.
fn listening_tcp(ns: &str, port: u16) -> bool {
    run_in(ns, "ss", &["-Htln", &format!("sport = :{port}")])
        .map(|s| !s.trim().is_empty())
        .unwrap_or(false)
}

/// Pings `to` from `ns` until it answers (at most 15 s): brings up tunnels
/// that set up on the first packet (the WireGuard handshake, tinc's meta connection).
fn wait_ping(ns: &str, to: Ipv4Addr, daemons: &[Daemon]) -> Result<()> {
    let daemons: Vec<&Daemon> = daemons.iter().collect();
    wait_while_running(
        &format!("a ping from {ns} to {to} to be answered"),
        Duration::from_secs(15),
        Duration::from_millis(100),
        &daemons,
        || {
            run_in(ns, "ping", &["-c", "1", "-W", "1", &to.to_string()])
                .ok()
                .map(|_| ())
        },
    )
}

fn logs(daemons: &[Daemon]) -> String {
    daemons
        .iter()
        .map(|d| format!("\n--- {} log:\n{}", d.rec.role, d.log_tail(15)))
        .collect()
}

/// hinan's two endpoints, configured by the lab's own mesh writer
/// ([`vpn::write_mesh`], keys from `hinan vpn genkey`) with the TAP
/// [`HINAN_TAP`], started as `hinan -c FILE vpn run --status-socket PATH`.
fn start_hinan(
    run: &mut RunDir,
    dir: &Path,
    a: &Campus,
    b: &Campus,
    t: Tunnel,
    offload: bool,
) -> Result<Vec<Daemon>> {
    let bin = vpn::hinan_bin()?;
    let link = match t {
        Tunnel::HinanRaw => SegmentLink::VpnRaw,
        _ => SegmentLink::VpnWireGuard,
    };
    let sites: Vec<VpnSite> = [a, b]
        .iter()
        .map(|c| VpnSite {
            name: c.name.clone(),
            ns: c.ns.clone(),
            public_ip: c.public_ip,
            dir: dir.join(format!("hinan-{}", c.name)),
        })
        .collect();
    let mut opts = MeshOptions::new(link);
    opts.tap = HINAN_TAP.to_string();
    opts.offload = offload;
    vpn::write_mesh(&sites, &opts).context("writing hinan's [vpn] tables")?;
    let mut daemons = Vec::new();
    for (i, site) in sites.iter().enumerate() {
        let (config, socket) = (site.config(), site.status_socket());
        let mut d = Daemon::start(
            run,
            &site.ns,
            &format!("vpnbench/{t}/{}", site.name),
            bin.as_os_str(),
            &[
                OsStr::new("-c"),
                config.as_os_str(),
                OsStr::new("vpn"),
                OsStr::new("run"),
                OsStr::new("--status-socket"),
                socket.as_os_str(),
            ],
            &site.log(),
        )
        .with_context(|| format!("starting `{} vpn run`", bin.display()))?;
        d.leaves.push(socket);
        address_device(&site.ns, HINAN_TAP, t.inside(i as u8 + 1), &d).with_context(|| {
            format!(
                "`hinan -c {} vpn run` at campus {}",
                config.display(),
                site.name
            )
        })?;
        daemons.push(d);
    }
    Ok(daemons)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_tcp_result_at_the_receiver() {
        let json = r#"{"start":{"test_start":{"protocol":"TCP"}},
            "end":{"sum_sent":{"bits_per_second":2.5e9},"sum_received":{"bits_per_second":2.4e9}}}"#;
        assert_eq!(
            parse_iperf_json(json).unwrap(),
            IperfResult::Tcp { gbps: 2.4 }
        );
    }

    #[test]
    fn reads_received_packets_and_loss_of_a_udp_result() {
        let json = r#"{"start":{"test_start":{"protocol":"UDP"}},
            "end":{"sum":{"seconds":5.0,"packets":1000000,"lost_packets":250000}}}"#;
        assert_eq!(
            parse_iperf_json(json).unwrap(),
            IperfResult::Udp {
                pps: 150000.0,
                loss_pct: 25.0
            }
        );
    }

    #[test]
    fn iperf_errors_and_garbage_are_errors_not_panics() {
        let e = parse_iperf_json(r#"{"start":{},"end":{},"error":"unable to connect to server"}"#)
            .unwrap_err();
        assert!(format!("{e:#}").contains("unable to connect"));
        for bad in [
            "",
            "{",
            "[]",
            "{\"end\":7}",
            r#"{"start":{"test_start":{"protocol":"UDP"}},"end":{"sum":{"packets":"x"}}}"#,
        ] {
            assert!(parse_iperf_json(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn udp_cell_asks_for_the_64_byte_frame_payload_at_any_rate() {
        let args = iperf_args(Ipv4Addr::new(10, 99, 0, 2), Test::Small, 5).join(" ");
        assert!(args.contains("-u -b 0 -l 18"), "{args}");
        assert!(args.contains("-c 10.99.0.2 -p 5201 -t 5 -J"), "{args}");
        // 18 bytes of payload + UDP 8 + IPv4 20 + Ethernet 14 + FCS 4.
        assert_eq!(SMALL_PAYLOAD + 8 + 20 + 14 + 4, 64);
    }

    #[test]
    fn tunnel_names_round_trip() {
        for t in Tunnel::ALL {
            assert_eq!(t.name().parse::<Tunnel>().unwrap(), t);
        }
        assert!("ipsec".parse::<Tunnel>().is_err());
    }
}
