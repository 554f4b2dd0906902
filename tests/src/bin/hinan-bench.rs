//! `hinan-bench`: benchmarks in the lab, hinan beside the peers it must beat.
//! `cluster` measures hinan's appliances, `keepalived` keepalived's VRRP
//! takeover, and `compare` sets the two side by side with ratios. `vpn`
//! measures hinan's L2 VPN beside wireguard-go and tinc, `dns` hinan's DNS
//! server beside Knot and NSD, `moves` live migrations driven by hinan beside
//! the same ones driven by `virsh` on a bandwidth-limited WAN.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use serde::Serialize;

use hinan_lab::bench;
use hinan_lab::bench::keepalived::{self as keepalived_bench, Combination, Failure, Jitter, Trial};
use hinan_lab::bench::stats::{median, percentile};
use hinan_lab::peers::keepalived::{self, Settings};
use hinan_lab::{Lab, LabSpec, VmSpec};

#[derive(Debug, Parser)]
#[command(
    name = "hinan-bench",
    version,
    about = "Benchmarks of peers in the hinan lab"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// hinan's cluster (A, B and witness W): replication latency, failure
    /// detection (kill -9 of A's appliance, and a cut of A's WAN link), and a
    /// soak with loss toward every WAN link counting false "down" events.
    Cluster {
        #[arg(long, default_value_t = 200)]
        replications: usize,
        #[arg(long, default_value_t = 20)]
        trials: usize,
        #[arg(long, default_value_t = 600)]
        soak_secs: u64,
        #[arg(long, default_value_t = 5.0)]
        soak_loss: f64,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// How fast the cluster follows a live migration nobody announced: the
    /// guest moves between A and B (alternating), the VPN's bridges see its
    /// MAC move, the appliances commit its new location, and every
    /// appliance's DNS answer for the LMS changes. Boots the guest.
    Location {
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Live migrations driven by hinan (`hinan migrate VM --to SITE --wait`)
    /// beside `virsh migrate` with the flags hinan's executor gives libvirt,
    /// on a WAN limited to 100 Mbit/s toward A and B (the inventory's
    /// migration share gives a 5 MiB/s cap): wall times, hinan's overhead,
    /// downtime and data from libvirt, achieved rate against the cap.
    /// Boots the guest.
    Moves {
        /// Rounds; each moves the guest A->B and back once per driver.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Write every run and the medians (JSON) here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Prints hinan's detection beside keepalived's takeover, from the JSON
    /// files of `cluster --json` and `keepalived --json`, with ratios.
    Compare {
        cluster: PathBuf,
        keepalived: PathBuf,
    },
    /// keepalived's VRRP takeover time between campus A (master) and B (backup).
    ///
    /// For each settings × failure combination: fail A, time until B holds
    /// the VIP (rtnetlink in B's namespace), bring A back, repeat.
    Keepalived {
        /// Trials per combination.
        #[arg(long, default_value_t = 20)]
        trials: usize,
        /// At most this many trials for the `default` settings (about 8 s
        /// each, against well under 1 s for `fastest`).
        #[arg(long, default_value_t = 10)]
        slow_trials: usize,
        /// Settings to run: `default` (VRRPv2, advert_int 1) and/or
        /// `fastest` (VRRPv3, advert_int 0.01).
        #[arg(long, value_delimiter = ',', default_value = "default,fastest")]
        settings: Vec<Settings>,
        /// Failures to simulate: kill9, link-cut, sigstop, partition,
        /// output-drop, wan-output-drop (see `hinan_lab::bench::keepalived::Failure`).
        #[arg(long, value_delimiter = ',', default_value = "kill9,link-cut")]
        failures: Vec<Failure>,
        /// Also write every trial as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Seed of the random pause before each failure (default: from the clock).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// The L2 VPN between campus A and B over the lab's unimpaired WAN:
    /// iperf3 TCP (1 and 4 streams) and the 64-byte-frame packet rate through
    /// hinan EtherIP raw, hinan EtherIP-in-WireGuard, wireguard-go and tinc
    /// (switch mode), and the bare path; medians and ratios to wireguard-go.
    Vpn {
        /// Trials per cell (each a round of 1 stream, 4 streams, UDP).
        #[arg(long, default_value_t = 3)]
        trials: usize,
        /// Seconds per iperf3 trial (3 x 4 s x 3 cells x 5 rows: about 4 min).
        #[arg(long, default_value_t = 4)]
        secs: u64,
        /// Rows to measure: hinan-raw, hinan-wireguard, wireguard-go, tinc-switch, bare.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "hinan-raw,hinan-wireguard,wireguard-go,tinc-switch,bare"
        )]
        tunnels: Vec<bench::vpn::Tunnel>,
        /// Keep the lab's WAN veths without tx checksum offload and TSO (by
        /// default they are turned back on: this layout runs no Open vSwitch).
        #[arg(long)]
        no_wan_offloads: bool,
        /// Run hinan with `offload = false` (no virtio headers and TSO on its
        /// TAP, as on an OVS userspace bridge); by default on, since iperf3
        /// uses the TAP through the kernel stack here.
        #[arg(long)]
        no_hinan_offload: bool,
        /// Also write every trial as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Authoritative DNS: dnsperf against hinan, Knot and NSD serving the
    /// same zone on the same port, one at a time, with the same query mix
    /// (80 % hits, 20 % NXDOMAIN): QPS, average and p99 latency, loss, and
    /// hinan's QPS over Knot's and NSD's.
    Dns {
        /// dnsperf runs per server (QPS and average latency are medians).
        #[arg(long, default_value_t = 3)]
        trials: usize,
        /// Seconds per dnsperf run (3 x (8 + 3) s x 3 servers: about 2 min).
        #[arg(long, default_value_t = 8)]
        secs: u64,
        /// Seconds of each round's extra `dnsperf -v` run that gives p99 (0: none).
        #[arg(long, default_value_t = 3)]
        latency_secs: u64,
        /// dnsperf -c: clients (sockets).
        #[arg(long, default_value_t = 10)]
        clients: u32,
        /// dnsperf -T: threads.
        #[arg(long, default_value_t = 2)]
        threads: u32,
        /// dnsperf -q: queries outstanding at most.
        #[arg(long, default_value_t = 100)]
        outstanding: u32,
        /// NSD's server-count (default: CPUs, like Knot's and hinan's UDP workers).
        #[arg(long)]
        nsd_servers: Option<usize>,
        /// Servers to measure: hinan, knot, nsd.
        #[arg(long, value_delimiter = ',', default_value = "hinan,knot,nsd")]
        servers: Vec<bench::dns::Server>,
        /// Also write every run as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

#[derive(Debug, Serialize)]
struct Report {
    keepalived: String,
    kernel: String,
    vip: String,
    seed: u64,
    combinations: Vec<Combination>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Cluster {
            replications,
            trials,
            soak_secs,
            soak_loss,
            json,
        } => bench_cluster(replications, trials, soak_secs, soak_loss, json),
        Command::Location { runs, json } => bench_location(runs, json),
        Command::Moves { runs, json } => bench_moves(runs, json),
        Command::Compare {
            cluster,
            keepalived,
        } => compare(&cluster, &keepalived),
        Command::Keepalived {
            trials,
            slow_trials,
            settings,
            failures,
            json,
            seed,
        } => bench_keepalived(trials, slow_trials, &settings, &failures, json, seed),
        Command::Vpn {
            trials,
            secs,
            tunnels,
            no_wan_offloads,
            no_hinan_offload,
            json,
        } => bench_vpn(
            bench::vpn::VpnBenchSpec {
                tunnels,
                trials,
                secs,
                wan_offloads: !no_wan_offloads,
                hinan_offload: !no_hinan_offload,
            },
            json,
        ),
        Command::Dns {
            trials,
            secs,
            latency_secs,
            clients,
            threads,
            outstanding,
            nsd_servers,
            servers,
            json,
        } => bench_dns(
            bench::dns::DnsBenchSpec {
                servers,
                trials,
                secs,
                latency_secs,
                clients,
                threads,
                outstanding,
                nsd_servers: nsd_servers.unwrap_or_else(|| {
                    std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(1)
                }),
            },
            json,
        ),
    }
}

fn bench_moves(runs: usize, json: Option<PathBuf>) -> Result<()> {
    use hinan_lab::bench::moves::{self, Driver, DriverSummary, MovesBenchSpec};
    hinan_lab::lab::interrupt::install();
    let started = Instant::now();
    let spec = MovesBenchSpec {
        runs,
        ..MovesBenchSpec::default()
    };
    println!(
        "live migrations of {} ({} MiB, {} MiB random data) between campus A and B, inside hinan's VPN; \
         WAN tbf {} Mbit/s toward A and toward B; inventory link {} Mbit/s x migration_share {}; \
         {runs} rounds, each A->B and back once by hinan and once by virsh (order alternating)\n",
        spec.guest.name,
        spec.guest.memory_mib,
        spec.guest.fill_mib,
        spec.wan_rate_mbit,
        spec.inventory_mbit,
        spec.migration_share,
    );
    let report = moves::run(&spec, &mut |line| println!("{line}"))?;
    let f = |v: Option<f64>, d: usize| v.map_or("-".into(), |x| format!("{x:.d$}"));
    println!(
        "\nmedians   runs  wall_s  libvirt_s  overhead_s  downtime_ms  data_total_MiB  processed_MiB  MiB/s  x_cap"
    );
    for (d, s) in [
        (Driver::Hinan, &report.hinan),
        (Driver::Virsh, &report.virsh),
    ] {
        let s: &DriverSummary = s;
        println!(
            "{:<8} {:>5}  {:>6}  {:>9}  {:>10}  {:>11}  {:>14}  {:>13}  {:>5}  {:>5}",
            d.name(),
            s.runs,
            f(s.wall_s, 2),
            f(s.job_s, 2),
            f(s.overhead_s, 2),
            f(s.downtime_ms, 0),
            f(s.data_total_mib, 1),
            f(s.data_processed_mib, 1),
            f(s.achieved_mib_s, 2),
            f(s.achieved_vs_cap, 2),
        );
    }
    println!(
        "\nhinan / virsh: wall time {}x, libvirt's migration time {}x; cap {} MiB/s",
        f(report.wall_ratio_hinan_over_virsh, 3),
        f(report.job_ratio_hinan_over_virsh, 3),
        report.cap_mib_s.map_or("-".into(), |c| c.to_string()),
    );
    println!(
        "wall: the command's start until it returned; libvirt: hinan's executor timing its migration call \
         (the move's outcome) / virsh domjobinfo --completed 'Time elapsed'; MiB/s = data_total / libvirt time; \
         virsh ran: {}",
        report.virsh_command
    );
    let failed: Vec<String> = report.error.iter().cloned().collect();
    finish(
        started,
        json,
        &report,
        "moves benchmarks stopped early",
        1,
        failed,
    )
}

fn bench_dns(spec: bench::dns::DnsBenchSpec, json: Option<PathBuf>) -> Result<()> {
    hinan_lab::lab::interrupt::install();
    if spec.trials == 0 || spec.secs == 0 {
        bail!("--trials and --secs must be at least 1");
    }
    let started = Instant::now();
    println!(
        "authoritative DNS: zone {} on {}:{} in a namespace of its own, one server at a time; \
         dnsperf -c {} -T {} -q {}, {} rounds of {} s per server (medians), each + {} s with -v for p99; \
         mix {} % hits (A, AAAA), {} % NXDOMAIN; NSD server-count {}\n",
        bench::dns::ORIGIN,
        bench::dns::LISTEN,
        bench::dns::PORT,
        spec.clients,
        spec.threads,
        spec.outstanding,
        spec.trials,
        spec.secs,
        spec.latency_secs,
        100 - bench::dns::NXDOMAIN_PCT,
        bench::dns::NXDOMAIN_PCT,
        spec.nsd_servers,
    );
    let report = bench::dns::run(&spec, &mut |line| println!("{line}"))?;
    let knot = report
        .rows
        .iter()
        .find(|r| r.server == bench::dns::Server::Knot)
        .and_then(|r| r.qps);
    let nsd = report
        .rows
        .iter()
        .find(|r| r.server == bench::dns::Server::Nsd)
        .and_then(|r| r.qps);
    let f = |v: Option<f64>, digits: usize| {
        v.map(|x| format!("{x:.digits$}"))
            .unwrap_or_else(|| "-".into())
    };
    let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) if y > 0.0 => format!("{:.2}x", x / y),
        _ => "-".into(),
    };
    println!(
        "\n{:<7} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}   version",
        "server", "QPS", "avg ms", "p99 ms", "loss %", "/ knot", "/ nsd"
    );
    for r in &report.rows {
        println!(
            "{:<7} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}   {}",
            r.server.name(),
            f(r.qps, 0),
            f(r.avg_ms, 3),
            f(r.p99_ms, 3),
            f(r.loss_pct, 3),
            ratio(r.qps, knot),
            ratio(r.qps, nsd),
            r.version
        );
    }
    println!(
        "\ntarget: hinan >= 1.0x Knot's QPS with no loss: {}",
        match (report.target_met, report.hinan_vs_knot) {
            (Some(true), Some(x)) => format!("met ({x:.3}x)"),
            (Some(false), Some(x)) =>
                format!("NOT met ({x:.3}x; loss or wrong answers also fail it)"),
            _ => "not measured".into(),
        }
    );
    println!(
        "p99: nearest rank over every answer of each round's separate `dnsperf -v` run, median over rounds; {}",
        report.dnsperf
    );
    let failed: Vec<String> = report
        .rows
        .iter()
        .filter_map(|r| {
            r.error
                .as_ref()
                .map(|e| format!("{}: {e}", r.server))
                .or_else(|| {
                    (!r.problems.is_empty())
                        .then(|| format!("{}: wrong answers: {}", r.server, r.problems.join("; ")))
                })
        })
        .collect();
    finish(
        started,
        json,
        &report,
        "servers could not be measured (or answered wrongly)",
        report.rows.len(),
        failed,
    )
}

/// The end of a peer benchmark: its time, its JSON, and an error naming
/// the rows that could not be measured (after the others were printed).
fn finish<T: serde::Serialize>(
    started: Instant,
    json: Option<PathBuf>,
    report: &T,
    what: &str,
    rows: usize,
    failed: Vec<String>,
) -> Result<()> {
    println!("total {:.0} s", started.elapsed().as_secs_f64());
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_vec_pretty(report)?)?;
        println!("raw results: {}", path.display());
    }
    if !failed.is_empty() {
        bail!("{} of {rows} {what}:\n{}", failed.len(), failed.join("\n"));
    }
    Ok(())
}

fn bench_vpn(spec: bench::vpn::VpnBenchSpec, json: Option<PathBuf>) -> Result<()> {
    let (trials, secs) = (spec.trials, spec.secs);
    hinan_lab::lab::interrupt::install();
    if trials == 0 || secs == 0 {
        bail!("--trials and --secs must be at least 1");
    }
    let started = Instant::now();
    println!(
        "L2 VPN, campus A -> B over the lab's unimpaired WAN (WAN-only lab: no OVS, no libvirt; \
         WAN veth offloads {}; hinan TAP offload {}); iperf3 client in A, server in B; \
         {trials} x {secs} s per cell, medians\n",
        if spec.wan_offloads {
            "on"
        } else {
            "off, as in the full lab"
        },
        if spec.hinan_offload { "on" } else { "off" },
    );
    let report = bench::vpn::run(&spec, &mut |line| println!("{line}"))?;
    let f = |v: Option<f64>, digits: usize| {
        v.map(|x| format!("{x:.digits$}"))
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "\n{:<16} {:>12} {:>12} {:>14} {:>10}   ratio to wireguard-go (tcp1 / tcp4 / pps)",
        "tunnel", "tcp1 Gbit/s", "tcp4 Gbit/s", "64B frames pps", "64B loss %"
    );
    for (row, ratio) in report.rows.iter().zip(&report.vs_wireguard_go) {
        let r = |v: Option<f64>| v.map(|x| format!("{x:.2}x")).unwrap_or_else(|| "-".into());
        println!(
            "{:<16} {:>12} {:>12} {:>14} {:>10}   {} / {} / {}",
            row.tunnel.name(),
            f(row.tcp1_gbps.median, 3),
            f(row.tcp4_gbps.median, 3),
            f(row.small_pps.median, 0),
            f(row.small_loss_pct.median, 1),
            r(ratio.tcp1),
            r(ratio.tcp4),
            r(ratio.small_pps),
        );
    }
    let verdict = |x: Option<f64>| match x {
        Some(x) if x >= bench::vpn::TARGET_VS_WIREGUARD_GO => format!("{x:.3}x (met)"),
        Some(x) => format!("{x:.3}x (NOT met)"),
        None => "not measured".into(),
    };
    println!(
        "\ntarget: hinan EtherIP-in-WireGuard >= {:.0}x wireguard-go: TCP 1 stream {}, TCP 4 streams {}",
        bench::vpn::TARGET_VS_WIREGUARD_GO,
        verdict(report.target_ratio_tcp1),
        verdict(report.target_ratio_tcp4)
    );
    println!(
        "64B frames: iperf3 UDP, {}-byte payload, -b 0; pps = (sent - lost) / duration; {}",
        report.small_payload, report.iperf3
    );
    let failed: Vec<String> = report
        .rows
        .iter()
        .filter_map(|r| r.error.as_ref().map(|e| format!("{}: {e}", r.tunnel)))
        .collect();
    finish(
        started,
        json,
        &report,
        "rows could not be measured",
        report.rows.len(),
        failed,
    )
}

fn bench_keepalived(
    trials: usize,
    slow_trials: usize,
    settings: &[Settings],
    failures: &[Failure],
    json: Option<PathBuf>,
    seed: Option<u64>,
) -> Result<()> {
    hinan_lab::lab::interrupt::install();
    let seed = seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let mut jitter = Jitter::new(seed);
    let version = keepalived::version()?;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    println!(
        "{version} on Linux {kernel}: unicast VRRP between campus A (198.18.0.2, priority {}) \
         and B (198.18.1.2, priority {}) across the lab WAN; VIP {}/32 on wan0; seed {seed}",
        keepalived::MASTER_PRIORITY,
        keepalived::BACKUP_PRIORITY,
        keepalived::VIP
    );
    println!(
        "takeover = failure instant -> B's kernel announces the VIP on rtnetlink (sub-ms stamps)\n"
    );
    let started = Instant::now();
    let mut lab = Lab::up(&LabSpec {
        hypervisors: false,
        ..LabSpec::default()
    })?;
    let mut combos = Vec::new();
    let result = (|| -> Result<()> {
        for s in settings {
            let n = if *s == Settings::DEFAULT {
                trials.min(slow_trials)
            } else {
                trials
            };
            for f in failures {
                if hinan_lab::lab::interrupt::requested() {
                    bail!("interrupted");
                }
                println!(
                    "{} (VRRPv{}, advert_int {} ms, Master_Down_Interval {:.1} ms) x {f}{}: {n} trials",
                    s.name,
                    s.version,
                    s.advert_int().as_millis(),
                    s.master_down_interval(keepalived::BACKUP_PRIORITY).as_secs_f64() * 1000.0,
                    if f.silent() { " (silent)" } else { "" },
                );
                let c = keepalived_bench::run_combination(
                    &mut lab,
                    *s,
                    *f,
                    n,
                    &mut jitter,
                    print_trial,
                    &|| hinan_lab::lab::interrupt::requested(),
                )?;
                let error = c.error.clone();
                combos.push(c);
                if let Some(e) = error {
                    bail!("{} x {f} stopped early: {e}", s.name);
                }
            }
        }
        Ok(())
    })();
    let problems = lab.teardown();
    print_summary(&combos);
    println!("\ntotal {:.0} s", started.elapsed().as_secs_f64());
    if let Some(path) = json {
        let report = Report {
            keepalived: version,
            kernel,
            vip: format!("{}/32", keepalived::VIP),
            seed,
            combinations: combos,
        };
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
        println!("raw results: {}", path.display());
    }
    result?;
    if !problems.is_empty() {
        bail!("clean-up problems: {}", problems.join("; "));
    }
    Ok(())
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.1}"))
        .unwrap_or_else(|| "-".to_string())
}

fn print_trial(t: &Trial) {
    println!(
        "  trial {:>2}: takeover {:>8} ms   inject {:>5.1} ms   prio-0 advert {:<3}  spurious {}   restore {:>6.0} ms{}",
        t.trial,
        t.takeover_ms
            .map(|x| format!("{x:.1}"))
            .unwrap_or_else(|| "timeout".into()),
        t.inject_ms,
        if t.priority0_seen { "yes" } else { "no" },
        t.spurious_takeovers,
        t.restore_ms,
        t.drop_rule_packets
            .map(|n| format!("   drop rule matched {n} packets"))
            .unwrap_or_default(),
    );
}

fn print_summary(combos: &[Combination]) {
    if combos.is_empty() {
        return;
    }
    println!("\nsettings  failure         silent  trials  timeouts  median_ms  p99_ms  min_ms  max_ms  down_interval_ms  spurious");
    for c in combos {
        let s = &c.summary;
        println!(
            "{:<9} {:<15} {:<6}  {:>6}  {:>8}  {:>9}  {:>6}  {:>6}  {:>6}  {:>16.1}  {:>8}",
            c.settings.name,
            c.failure.name(),
            if c.silent { "yes" } else { "no" },
            s.trials,
            s.timeouts,
            fmt_ms(s.median_ms),
            fmt_ms(s.p99_ms),
            fmt_ms(s.min_ms),
            fmt_ms(s.max_ms),
            c.master_down_interval_ms,
            s.spurious_takeovers,
        );
    }
    println!("p99 is nearest-rank: with fewer than 100 trials it is the maximum.");
    for c in combos {
        if let Some(e) = &c.error {
            println!(
                "{} x {} stopped early: {e}",
                c.settings.name,
                c.failure.name()
            );
        }
    }
}

/// What `cluster` measured, in ms.
#[derive(Debug, Serialize, serde::Deserialize)]
struct ClusterReport {
    replication_commit_ms: Vec<f64>,
    replication_everywhere_ms: Vec<f64>,
    /// Observer site -> detection times after kill -9 of A's appliance.
    kill9_ms: std::collections::BTreeMap<String, Vec<f64>>,
    /// Observer site -> detection times after A's WAN link was cut.
    link_cut_ms: std::collections::BTreeMap<String, Vec<f64>>,
    soak_secs: f64,
    soak_loss_pct: f64,
    soak_false_downs: usize,
    soak_commits: usize,
}

fn line(label: &str, v: &[f64]) {
    println!(
        "  {label:<44} median {:>8} ms   p99 {:>8} ms   (n = {})",
        fmt_ms(median(v)),
        fmt_ms(percentile(v, 99.0)),
        v.len()
    );
}

/// What `hinan-bench location --json` writes.
#[derive(Debug, Serialize)]
struct LocationReport {
    trials: Vec<hinan_lab::bench::cluster::LocationTrial>,
    median_seen_ms: Option<f64>,
    median_committed_ms: Option<f64>,
    /// From the VPN seeing the MAC move to the commit at the observer.
    median_commit_after_seen_ms: Option<f64>,
    median_answered_ms: Option<f64>,
}

fn bench_location(runs: usize, json: Option<PathBuf>) -> Result<()> {
    use hinan_lab::bench::cluster::location_after_migration;
    use hinan_lab::lab::guest;
    use hinan_orchestrator::core::state::StorageMode;
    const NAME: &str = "lms.univ-a.example";
    const DNS: &str =
        "[dns]\nlisten = [\"0.0.0.0:53\"]\nudp_threads = 1\nfallback = [\"192.0.2.80\"]\n\n\
                       [[dns.zone]]\norigin = \"univ-a.example\"\nns = [\"ns1.univ-a.example\"]\n";
    hinan_lab::lab::interrupt::install();
    let started = Instant::now();
    let image = guest::ensure()?;
    let mut lab = Lab::up(&LabSpec {
        witness: true,
        ..LabSpec::default()
    })?;
    let cluster = lab.start_cluster(DNS)?;
    let sites = ["a", "b", "w"];
    let public = |c: &str| -> Result<String> { Ok(lab.campus(c)?.public_ip.to_string()) };
    let (addr_a, addr_b) = (public("a")?, public("b")?);
    let vm = VmSpec::default();
    lab.start_vm("a", &vm, &image)?;
    lab.wait_http(&vm.url(), Duration::from_secs(90))?;
    let a = cluster.get("a")?;
    a.register_lab_vm(&vm, StorageMode::Shared)?;
    a.publish_lab_vm(NAME, &vm, &[("a", &addr_a), ("b", &addr_b)])?;
    println!("hinan cluster at A, B and W; the LMS guest published as {NAME}, at A");
    println!("run  from->to  migration_s  seen_ms  committed_ms  answered_ms");
    println!("     (seen and committed: after virsh migrate returned, negative if before; answered: after the commit)");
    let mut trials = Vec::new();
    for i in 0..runs {
        if hinan_lab::lab::interrupt::requested() {
            bail!("interrupted");
        }
        let ((from, to), want) = if i % 2 == 0 {
            (("a", "b"), &addr_b)
        } else {
            (("b", "a"), &addr_a)
        };
        // Every appliance sends users to `from` before the move.
        let before = if want == &addr_b { &addr_a } else { &addr_b };
        for site in sites {
            let appliance = cluster.get(site)?;
            hinan_lab::lab::sys::wait_for(
                &format!("{site} to answer {NAME} with {before}"),
                Duration::from_secs(10),
                Duration::from_millis(20),
                || Ok((appliance.dns_answer(NAME) == [before.as_str()]).then_some(())),
            )?;
        }
        std::thread::sleep(Duration::from_secs(1));
        let t = location_after_migration(
            &mut lab,
            &cluster,
            &vm.name,
            NAME,
            (from, to),
            "w",
            &sites,
            want,
        )?;
        println!(
            "{:>3}  {from}->{to}      {:>11.2}  {:>7}  {:>12.1}  {:>11.1}",
            i + 1,
            t.migration_s,
            fmt_ms(t.seen_ms),
            t.committed_ms,
            t.answered_ms
        );
        trials.push(t);
    }
    let seen: Vec<f64> = trials.iter().filter_map(|t| t.seen_ms).collect();
    let committed: Vec<f64> = trials.iter().map(|t| t.committed_ms).collect();
    let commit_after_seen: Vec<f64> = trials
        .iter()
        .filter_map(|t| Some(t.committed_ms - t.seen_ms?))
        .collect();
    let answered: Vec<f64> = trials.iter().map(|t| t.answered_ms).collect();
    let report = LocationReport {
        median_seen_ms: median(&seen),
        median_committed_ms: median(&committed),
        median_commit_after_seen_ms: median(&commit_after_seen),
        median_answered_ms: median(&answered),
        trials,
    };
    line("MAC move seen, after virsh migrate returned", &seen);
    line(
        "location committed, after virsh migrate returned",
        &committed,
    );
    line(
        "location committed, after the MAC move was seen",
        &commit_after_seen,
    );
    line("then every appliance answered the new site", &answered);
    let problems = lab.teardown();
    let failed = if problems.is_empty() {
        vec![]
    } else {
        vec![format!("clean-up problems: {}", problems.join("; "))]
    };
    finish(started, json, &report, "clean-ups failed", 1, failed)
}

fn bench_cluster(
    replications: usize,
    trials: usize,
    soak_secs: u64,
    soak_loss: f64,
    json: Option<PathBuf>,
) -> Result<()> {
    use hinan_lab::bench::cluster as clusterbench;
    let started = Instant::now();
    let mut lab = Lab::up(&LabSpec {
        hypervisors: false,
        witness: true,
        ..LabSpec::default()
    })?;
    // Restarts in the trials come every second or so: a short damping hold
    // keeps the default's growing 1-32 s hold from slowing the trials down.
    // Detection itself runs with the defaults (20 ms x 12).
    let cluster = lab.start_cluster("damping_hold_ms = 200\ndamping_max_hold_ms = 400")?;
    println!("hinan cluster: appliances at A, B and the witness W, mutual TLS over the lab WAN");
    let r = clusterbench::replication(&cluster, "a", replications)?;
    line("replication: committed at A", &r.commit_ms);
    line("replication: applied at A, B and W", &r.everywhere_ms);
    let kill = clusterbench::detection_trials(&mut lab, &cluster, "a", &["b", "w"], trials)?;
    for (site, v) in &kill {
        line(
            &format!("detection, kill -9 of A, seen by {}", site.to_uppercase()),
            v,
        );
    }
    let cut = clusterbench::cut_trials(&mut lab, &cluster, "a", &["b", "w"], trials)?;
    for (site, v) in &cut {
        line(
            &format!(
                "detection, A's WAN link cut, seen by {}",
                site.to_uppercase()
            ),
            v,
        );
    }
    println!("  soak: {soak_secs} s with {soak_loss} % loss toward every WAN link…");
    let soak = clusterbench::soak(
        &mut lab,
        &cluster,
        soak_loss,
        Duration::from_secs(soak_secs),
    )?;
    println!(
        "  soak: {:.0} s, {} % loss: {} false down events (target 0), {} of the notes committed",
        soak.duration.as_secs_f64(),
        soak.loss_pct,
        soak.false_downs.len(),
        soak.commits
    );
    for (who, e) in &soak.false_downs {
        println!("    false: {who}: {} {}", e.kind, e.detail);
    }
    let report = ClusterReport {
        replication_commit_ms: r.commit_ms,
        replication_everywhere_ms: r.everywhere_ms,
        kill9_ms: kill,
        link_cut_ms: cut,
        soak_secs: soak.duration.as_secs_f64(),
        soak_loss_pct: soak.loss_pct,
        soak_false_downs: soak.false_downs.len(),
        soak_commits: soak.commits,
    };
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
        println!("raw results: {}", path.display());
    }
    let problems = lab.teardown();
    println!("total {:.0} s", started.elapsed().as_secs_f64());
    if !problems.is_empty() {
        bail!("clean-up problems: {}", problems.join("; "));
    }
    Ok(())
}

fn compare(cluster: &std::path::Path, keepalived: &std::path::Path) -> Result<()> {
    let c: ClusterReport = serde_json::from_slice(&std::fs::read(cluster)?)?;
    let k: serde_json::Value = serde_json::from_slice(&std::fs::read(keepalived)?)?;
    let all = |m: &std::collections::BTreeMap<String, Vec<f64>>| -> Vec<f64> {
        m.values().flatten().copied().collect()
    };
    let hinan_kill = median(&all(&c.kill9_ms));
    let hinan_cut = median(&all(&c.link_cut_ms));
    println!("failure detection, medians in ms (lower is better); ratio = keepalived / hinan");
    println!(
        "  {:<40} {:>10} {:>10} {:>8}",
        "", "hinan", "keepalived", "ratio"
    );
    for combo in k["combinations"].as_array().into_iter().flatten() {
        let settings = combo["settings"]["name"].as_str().unwrap_or("?");
        let failure = combo["failure"].as_str().unwrap_or("?");
        let theirs = combo["summary"]["median_ms"].as_f64();
        let ours = match failure {
            "kill9" => hinan_kill,
            "link-cut" => hinan_cut,
            _ => None,
        };
        let ratio = match (theirs, ours) {
            (Some(t), Some(o)) if o > 0.0 => format!("{:.2}x", t / o),
            _ => "-".into(),
        };
        println!(
            "  {:<40} {:>10} {:>10} {:>8}",
            format!("{failure}, keepalived {settings}"),
            fmt_ms(ours),
            fmt_ms(theirs),
            ratio
        );
    }
    Ok(())
}
