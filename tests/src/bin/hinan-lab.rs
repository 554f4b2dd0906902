//! `hinan-lab`: builds, shows, impairs and removes the two-campus lab, and runs
//! the demo that `make demo` shows.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use hinan_lab::lab::cluster::LabInventory;
use hinan_lab::lab::vm::MigrateOptions;
use hinan_lab::lab::wan::{self, LinkImpairment};
use hinan_lab::lab::SegmentLink;
use hinan_lab::lab::{guest, run};
use hinan_lab::{Lab, LabSpec, Probe, ProbeSpec, VmSpec};

/// The id of the lab `hinan-lab up` builds and the other commands act on.
const CLI_LAB: &str = "lab";

#[derive(Debug, Parser)]
#[command(
    name = "hinan-lab",
    version,
    about = "The hinan two-campus lab on one machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the lab and leave it running (remove it with `down`).
    Up {
        /// Number of campuses.
        #[arg(long, default_value_t = 2)]
        campuses: usize,
        /// Add a witness site on the WAN.
        #[arg(long)]
        witness: bool,
        /// Do not boot the LMS guest at campus A.
        #[arg(long)]
        no_vm: bool,
        /// How the campus segments are joined: wireguard (hinan's EtherIP in
        /// WireGuard), raw (hinan's raw EtherIP) or veth (a direct wire).
        #[arg(long, default_value = "wireguard")]
        segment: SegmentLink,
    },
    /// Remove every lab on this machine, including ones left by crashed runs.
    Down,
    /// Show the lab: namespaces, addresses, VMs, impairments, processes.
    Status,
    /// Live-migrate an LMS guest to another campus.
    Migrate {
        /// Destination campus (default: the next one).
        #[arg(long)]
        to: Option<String>,
        /// The guest (`lms1`, `lms2`, …).
        #[arg(long, default_value = "lms1")]
        name: String,
        /// Stream to the destination's service-segment address (through
        /// hinan's VPN) instead of its public address.
        #[arg(long)]
        over_segment: bool,
    },
    /// Guests besides the LMS that `up` boots.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Write an inventory of the lab (every campus as a site with host X1,
    /// the witness, every WAN pair, the guests given) for `hinan apply`.
    Inventory {
        /// Directory to write `inventory.toml` and the guests' domain XML into.
        #[arg(long)]
        dir: std::path::PathBuf,
        /// A guest, `lmsN:MEMORY:FILL:DIRTY@CAMPUS` (e.g. `lms2:256:160:8@a`); repeatable.
        #[arg(long = "vm")]
        vms: Vec<String>,
        /// Capacity of each WAN link, Mbit/s.
        #[arg(long, default_value_t = 100)]
        mbit: u64,
        /// Share of a WAN link migrations may use.
        #[arg(long, default_value_t = 0.5)]
        migration_share: f64,
        /// A `[migration]` setting, `KEY=TOML-VALUE` (e.g. `max_downtime_ms=300`); repeatable.
        #[arg(long = "migration")]
        migration: Vec<String>,
    },
    /// Set impairments on a WAN link (a, b, …, w, cl); no option clears them.
    Impair {
        link: String,
        #[arg(long, default_value_t = 0)]
        delay_ms: u32,
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        #[arg(long)]
        down: bool,
        /// Bandwidth toward the link, in Mbit/s (a token bucket; unlimited if absent).
        #[arg(long)]
        rate_mbit: Option<u32>,
    },
    /// Cut (or with --heal, restore) everything between two WAN links.
    Partition {
        x: String,
        y: String,
        #[arg(long)]
        heal: bool,
    },
    /// Remove every WAN impairment.
    Heal,
    /// Probe a URL from the client namespace and print the report as JSON.
    Probe {
        #[arg(long, default_value = "http://10.70.0.10/")]
        url: String,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 50)]
        interval_ms: u64,
    },
    /// Build the lab, boot the LMS at A, probe it, live-migrate it to B, report, tear down.
    Demo {
        /// Write the probe's full report (JSON) here.
        #[arg(long)]
        probe_json: Option<std::path::PathBuf>,
    },
    /// Benchmark: live migrations back and forth under the client probe; medians.
    BenchMigration {
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Write every run and the medians (JSON) here.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// (internal) The WAN delay relay, run by the lab inside the WAN namespace.
    #[command(hide = true)]
    WanDelay {
        #[arg(long)]
        dev: String,
        #[arg(long)]
        delay_ms: u64,
    },
}

#[derive(Debug, Subcommand)]
enum VmCommand {
    /// Boot guest `lmsN` (MAC 52:54:00:70:00:(0x10+N-1), IP 10.70.0.(10+N-1))
    /// at a campus and wait until the client gets HTTP 200 from it.
    Start {
        /// `lms2`, `lms3`, … (`lms1` is the guest `up` boots).
        #[arg(long)]
        name: String,
        /// Campus to start it at.
        #[arg(long, default_value = "a")]
        campus: String,
        /// Guest memory in MiB (128–384 under TCG).
        #[arg(long, default_value_t = 128)]
        memory: u32,
        /// MiB of random data the guest keeps resident.
        #[arg(long, default_value_t = 0)]
        fill: u32,
        /// MiB of the filled data it rewrites, 4 MiB/s.
        #[arg(long, default_value_t = 0)]
        dirty: u32,
    },
}

/// `lmsN` → N (1–200).
fn lms_number(name: &str) -> Result<u8> {
    name.strip_prefix("lms")
        .and_then(|n| n.parse::<u8>().ok())
        .filter(|n| (1..=200).contains(n))
        .with_context(|| format!("a lab guest is called lms1 … lms200, not '{name}'"))
}

fn vm_start(name: &str, campus: &str, memory: u32, fill: u32, dirty: u32) -> Result<()> {
    let mut lab = Lab::open(CLI_LAB)?;
    let vm = VmSpec::lms(lms_number(name)?, memory, fill, dirty);
    vm.check()?;
    if let Some(at) = lab.where_running(&vm.name)? {
        bail!("{} is running at campus {at} already", vm.name);
    }
    let result = boot_vm(&mut lab, campus, &vm);
    lab.detach();
    let boot = result?;
    println!(
        "{} ({}, {} MiB, {} MiB filled, {} MiB dirtied) answers HTTP at campus {campus}, {:.1} s after `virsh start`",
        vm.name,
        vm.ip,
        vm.memory_mib,
        vm.fill_mib,
        vm.dirty_mib,
        boot.as_secs_f64()
    );
    Ok(())
}

/// `lms2:256:160:8@a` → the guest and its campus.
fn parse_vm(text: &str) -> Result<(VmSpec, String)> {
    let bad = || {
        format!("a guest is lmsN:MEMORY:FILL:DIRTY@CAMPUS (e.g. lms2:256:160:8@a), not '{text}'")
    };
    let (spec, campus) = text.split_once('@').with_context(bad)?;
    let parts: Vec<&str> = spec.split(':').collect();
    let [name, memory, fill, dirty] = parts[..] else {
        bail!(bad());
    };
    let mib = |s: &str| s.parse::<u32>().with_context(bad);
    let vm = VmSpec::lms(lms_number(name)?, mib(memory)?, mib(fill)?, mib(dirty)?);
    vm.check()?;
    Ok((vm, campus.to_string()))
}

fn inventory(
    dir: &std::path::Path,
    vms: &[String],
    mbit: u64,
    migration_share: f64,
    migration: &[String],
) -> Result<()> {
    let lab = Lab::open(CLI_LAB)?;
    let mut inv = LabInventory::of_lab(&lab.topo, mbit, migration_share);
    if !vms.is_empty() {
        let image = guest::ensure()?;
        for text in vms {
            let (vm, campus) = parse_vm(text)?;
            lab.campus(&campus)?;
            inv = inv.vm(&lab.topo, &vm, &campus, &image);
        }
    }
    for kv in migration {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("a migration setting is KEY=VALUE, not '{kv}'"))?;
        inv = inv.migration(k.trim(), v.trim());
    }
    let path = inv.write(dir)?;
    lab.detach();
    println!("{}", path.display());
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Up {
            campuses,
            witness,
            no_vm,
            segment,
        } => up(campuses, witness, no_vm, segment),
        Command::Down => down(),
        Command::Status => {
            print!("{}", Lab::open(CLI_LAB)?.status());
            Ok(())
        }
        Command::Migrate {
            to,
            name,
            over_segment,
        } => migrate(to, &name, over_segment),
        Command::Vm(VmCommand::Start {
            name,
            campus,
            memory,
            fill,
            dirty,
        }) => vm_start(&name, &campus, memory, fill, dirty),
        Command::Inventory {
            dir,
            vms,
            mbit,
            migration_share,
            migration,
        } => inventory(&dir, &vms, mbit, migration_share, &migration),
        Command::Impair {
            link,
            delay_ms,
            loss,
            down,
            rate_mbit,
        } => {
            let mut lab = Lab::open(CLI_LAB)?;
            let mut want = lab.wan_state();
            want.set_link(
                &link,
                LinkImpairment {
                    delay_ms,
                    loss_pct: loss,
                    down,
                    rate_mbit,
                },
            );
            wan::apply(&mut lab, &want)?;
            println!("wan: {}", want.describe());
            lab.detach();
            Ok(())
        }
        Command::Partition { x, y, heal } => {
            let mut lab = Lab::open(CLI_LAB)?;
            let mut want = lab.wan_state();
            want.partition(&x, &y, !heal);
            wan::apply(&mut lab, &want)?;
            println!("wan: {}", want.describe());
            lab.detach();
            Ok(())
        }
        Command::Heal => {
            let mut lab = Lab::open(CLI_LAB)?;
            wan::apply(&mut lab, &Default::default())?;
            println!("wan: unimpaired");
            lab.detach();
            Ok(())
        }
        Command::Probe {
            url,
            seconds,
            interval_ms,
        } => {
            let lab = Lab::open(CLI_LAB)?;
            let mut spec = ProbeSpec::new(&url);
            spec.interval = Duration::from_millis(interval_ms.max(1));
            let probe = Probe::start(&lab.topo.client.ns, spec)?;
            std::thread::sleep(Duration::from_secs(seconds));
            let report = probe.stop()?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            lab.detach();
            Ok(())
        }
        Command::Demo { probe_json } => demo(probe_json),
        Command::BenchMigration { runs, json } => bench_migration(runs, json),
        Command::WanDelay { dev, delay_ms } => {
            hinan_lab::lab::delay::run_relay(&dev, Duration::from_millis(delay_ms))
        }
    }
}

fn up(campuses: usize, witness: bool, no_vm: bool, segment: SegmentLink) -> Result<()> {
    if run::base_dir().join(CLI_LAB).exists() {
        bail!("the lab is up already; see `hinan-lab status`, or remove it with `hinan-lab down`");
    }
    let spec = LabSpec {
        id: Some(CLI_LAB.into()),
        campuses,
        witness,
        persistent: true,
        segment,
        ..LabSpec::default()
    };
    eprintln!("building {campuses} campuses (the first libvirtd answer takes about 10 s)…");
    let mut lab = Lab::up(&spec)?;
    if !no_vm {
        if let Err(e) = boot_lms(&mut lab, &VmSpec::default()) {
            lab.teardown();
            return Err(e);
        }
    }
    print!("{}", lab.status());
    lab.detach();
    Ok(())
}

fn down() -> Result<()> {
    let runs = run::all_runs();
    for r in &runs {
        let problems = r.teardown();
        println!("removed lab {}", r.manifest.id);
        for p in problems {
            println!("  problem: {p}");
        }
    }
    for what in run::reap_stale() {
        println!("removed {what}");
    }
    if runs.is_empty() {
        println!("no lab was up");
    }
    Ok(())
}

fn migrate(to: Option<String>, name: &str, over_segment: bool) -> Result<()> {
    let mut lab = Lab::open(CLI_LAB)?;
    let from = lab
        .where_running(name)?
        .with_context(|| format!("{name} is not running anywhere"))?;
    let to = match to {
        Some(t) => t,
        None => {
            let names: Vec<String> = lab.topo.campuses.iter().map(|c| c.name.clone()).collect();
            let here = names.iter().position(|n| *n == from).unwrap_or(0);
            names
                .get((here + 1) % names.len())
                .filter(|n| **n != from)
                .cloned()
                .context("the lab has only one campus")?
        }
    };
    let opts = MigrateOptions {
        over_segment,
        auto_converge: true,
        extra: Vec::new(),
    };
    let m = lab.migrate_vm_with(name, &from, &to, &opts);
    lab.detach();
    let m = m?;
    println!(
        "migrated {} from {} to {} in {:.2} s",
        name,
        m.from,
        m.to,
        m.wall.as_secs_f64()
    );
    print!("{}", m.job_info);
    Ok(())
}

/// Boots the LMS guest at campus A and waits until the client gets HTTP 200.
fn boot_lms(lab: &mut Lab, vm: &VmSpec) -> Result<Duration> {
    boot_vm(lab, "a", vm)
}

/// Boots `vm` at `campus` and waits until the client gets HTTP 200.
fn boot_vm(lab: &mut Lab, campus: &str, vm: &VmSpec) -> Result<Duration> {
    eprintln!("preparing the guest image (cached after the first build)…");
    let image = guest::ensure()?;
    let start = Instant::now();
    lab.start_vm(campus, vm, &image)?;
    lab.wait_http(&vm.url(), Duration::from_secs(180))
        .with_context(|| {
            format!(
                "{} never answered; its console:\n{}",
                vm.name,
                lab.console_tail(campus, &vm.name)
            )
        })?;
    Ok(start.elapsed())
}

fn interrupted() -> Result<()> {
    if hinan_lab::lab::interrupt::requested() {
        bail!("interrupted");
    }
    Ok(())
}

fn watch(probe: &Probe, seconds: u64, label: &str) -> Result<()> {
    for _ in 0..seconds {
        std::thread::sleep(Duration::from_secs(1));
        interrupted()?;
        let (ok, failed) = probe.counts();
        println!("  [{label}] probe: {ok} ok, {failed} failed");
    }
    Ok(())
}

fn demo(probe_json: Option<std::path::PathBuf>) -> Result<()> {
    hinan_lab::lab::interrupt::install();
    println!("hinan demo: two campuses, one LMS guest, a live migration under a client probe\n");
    println!("step 1: building campus A and campus B (namespaces, Open vSwitch, libvirtd, hinan's L2 VPN each)…");
    let t = Instant::now();
    let mut lab = Lab::up(&LabSpec::default())?;
    println!("  done in {:.1} s", t.elapsed().as_secs_f64());
    print!("{}", lab.status());
    interrupted()?;

    let vm = VmSpec::default();
    println!(
        "\nstep 2: booting the LMS guest {} ({}) at campus A…",
        vm.name, vm.ip
    );
    let boot = boot_lms(&mut lab, &vm)?;
    println!(
        "  answering HTTP {:.1} s after `virsh start`",
        boot.as_secs_f64()
    );
    interrupted()?;

    println!(
        "\nstep 3: the client probes {} every 50 ms (through campus A's edge)",
        vm.url()
    );
    let probe = Probe::start(&lab.topo.client.ns, ProbeSpec::new(&vm.url()))?;
    watch(&probe, 3, "before")?;

    println!(
        "\nstep 4: live migration A -> B with libvirt (stream over the WAN to {})…",
        lab.campus("b")?.public_ip
    );
    let m = lab.migrate_vm(&vm.name, "a", "b")?;
    println!("  migration finished in {:.2} s", m.wall.as_secs_f64());
    for line in m.job_info.lines().filter(|l| {
        l.contains("downtime") || l.contains("Time elapsed") || l.contains("Data processed")
    }) {
        println!(
            "  {}",
            line.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }
    watch(&probe, 3, "after")?;
    let report = probe.stop()?;

    println!("\nstep 5: result");
    let at_a = lab.campus("a")?.domstate(&vm.name)?;
    let at_b = lab.campus("b")?.domstate(&vm.name)?;
    println!(
        "  libvirtd at A reports: {}",
        at_a.as_deref().unwrap_or("not defined")
    );
    println!(
        "  libvirtd at B reports: {}",
        at_b.as_deref().unwrap_or("not defined")
    );
    println!("  probe: {}", report.summary());
    println!(
        "  longest outage: {:.0} ms, failed requests: {}",
        report.longest_outage_ms, report.failed
    );
    for site in lab.vpn_sites() {
        let status = hinan_lab::lab::vpn::status(&site)?;
        let peer = &status["peers"][0];
        println!(
            "  hinan vpn at {}: {} frames out to {}, {} in; last handshake {:.1} s ago",
            site.name,
            peer["tx_packets"],
            peer["name"].as_str().unwrap_or("?"),
            peer["rx_packets"],
            peer["last_handshake_secs"].as_f64().unwrap_or(f64::NAN)
        );
        for event in status["recent_events"].as_array().into_iter().flatten() {
            if event[1]["mac"] == vm.mac.as_str() {
                println!(
                    "    MAC {} moved from {} to {} (the guest, {:.1} s after the VPN started)",
                    vm.mac,
                    event[1]["from"].as_str().unwrap_or("?"),
                    event[1]["to"].as_str().unwrap_or("?"),
                    event[0].as_f64().unwrap_or(f64::NAN)
                );
            }
        }
    }
    if let Some(path) = probe_json {
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
        println!("  full probe report: {}", path.display());
    }

    println!("\nstep 6: tearing the lab down");
    let footprint = lab.footprint();
    let mut problems = lab.teardown();
    problems.extend(footprint.leftovers());
    if !problems.is_empty() {
        bail!("clean-up problems: {}", problems.join("; "));
    }
    println!(
        "  removed {} namespaces and their bridges, {} daemons and VMs (checked: none is left)",
        footprint.namespaces.len(),
        footprint.processes.len()
    );
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `Total downtime: 148 ms` from `virsh domjobinfo --completed`.
fn downtime_ms(job_info: &str) -> Option<f64> {
    job_info
        .lines()
        .find(|l| l.trim_start().starts_with("Total downtime:"))?
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// One live migration of `hinan-lab bench-migration`.
#[derive(Debug, serde::Serialize)]
struct MigrationRun {
    from: String,
    to: String,
    wall_s: f64,
    /// QEMU's "Total downtime" from the job info; `None` if it was not reported.
    qemu_downtime_ms: Option<f64>,
    probe_longest_outage_ms: f64,
    probe_failed: u64,
}

/// What `hinan-lab bench-migration --json` writes.
#[derive(Debug, serde::Serialize)]
struct MigrationReport {
    runs: Vec<MigrationRun>,
    median_wall_s: f64,
    median_qemu_downtime_ms: f64,
    median_probe_longest_outage_ms: f64,
    median_probe_failed: f64,
}

fn bench_migration(runs: usize, json: Option<std::path::PathBuf>) -> Result<()> {
    let mut lab = Lab::up(&LabSpec::default())?;
    let vm = VmSpec::default();
    boot_lms(&mut lab, &vm)?;
    println!("run  from->to  wall_s  qemu_downtime_ms  probe_longest_outage_ms  probe_failed");
    let (mut wall, mut down, mut outage, mut failed) = (vec![], vec![], vec![], vec![]);
    let mut rows = Vec::new();
    for i in 0..runs {
        let (from, to) = if i % 2 == 0 { ("a", "b") } else { ("b", "a") };
        let probe = Probe::start(&lab.topo.client.ns, ProbeSpec::new(&vm.url()))?;
        std::thread::sleep(Duration::from_secs(1));
        let m = lab.migrate_vm(&vm.name, from, to)?;
        std::thread::sleep(Duration::from_secs(2));
        let r = probe.stop()?;
        let d = downtime_ms(&m.job_info).unwrap_or(f64::NAN);
        println!(
            "{:>3}  {from}->{to}      {:>6.2}  {:>16.0}  {:>23.0}  {:>12}",
            i + 1,
            m.wall.as_secs_f64(),
            d,
            r.longest_outage_ms,
            r.failed
        );
        rows.push(MigrationRun {
            from: from.into(),
            to: to.into(),
            wall_s: m.wall.as_secs_f64(),
            qemu_downtime_ms: d.is_finite().then_some(d),
            probe_longest_outage_ms: r.longest_outage_ms,
            probe_failed: r.failed as u64,
        });
        wall.push(m.wall.as_secs_f64());
        down.push(d);
        outage.push(r.longest_outage_ms);
        failed.push(r.failed as f64);
    }
    let report = MigrationReport {
        runs: rows,
        median_wall_s: median(wall),
        median_qemu_downtime_ms: median(down),
        median_probe_longest_outage_ms: median(outage),
        median_probe_failed: median(failed),
    };
    println!(
        "median over {runs} runs: wall {:.2} s, QEMU downtime {:.0} ms, probe longest outage {:.0} ms, failed probes {:.0}",
        report.median_wall_s,
        report.median_qemu_downtime_ms,
        report.median_probe_longest_outage_ms,
        report.median_probe_failed
    );
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    let problems = lab.teardown();
    if !problems.is_empty() {
        bail!("clean-up problems: {}", problems.join("; "));
    }
    Ok(())
}
