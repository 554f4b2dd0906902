//! `hinan-lab`: builds, shows, impairs and removes the two-campus lab, and runs
//! the demo that `make demo` shows.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use hinan_lab::lab::cluster::{Appliance, Cluster, LabInventory};
use hinan_lab::lab::vm::MigrateOptions;
use hinan_lab::lab::wan::{self, LinkImpairment};
use hinan_lab::lab::SegmentLink;
use hinan_lab::lab::{guest, run};
use hinan_lab::{Lab, LabSpec, Probe, ProbeReport, ProbeSpec, VmSpec};
use hinan_orchestrator::core::moves::Plan;
use hinan_orchestrator::core::state::ClusterState;

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
    /// Build three campuses and a witness with hinan's cluster, boot three
    /// guests at A, have hinan evacuate A under a client probe per guest, show
    /// its moves, audit log and the probes' reports, fail back, tear down.
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

/// The guests of the demo: different sizes, memory filled with random data
/// (the first also rewrites part of it while it moves).
fn demo_guests() -> Vec<VmSpec> {
    vec![
        VmSpec::lms(1, 192, 96, 4),
        VmSpec::lms(2, 160, 64, 0),
        VmSpec::lms(3, 128, 32, 0),
    ]
}

/// Capacity of each WAN link in the demo's inventory (and its token bucket).
const DEMO_WAN_MBIT: u64 = 200;
/// Share of a WAN link hinan's migrations may use.
const DEMO_MIGRATION_SHARE: f64 = 0.5;

/// `hinan -c CONFIG ARGS` for appliance `a`, printed as typed.
fn hinan_command(a: &Appliance, args: &[&str]) -> Result<std::process::Command> {
    println!("  $ hinan -c {} {}", a.config.display(), args.join(" "));
    let mut cmd = std::process::Command::new(hinan_lab::lab::cluster::hinan_binary()?);
    cmd.arg("-c")
        .arg(&a.config)
        .args(args)
        .stdin(std::process::Stdio::null());
    Ok(cmd)
}

/// Runs `hinan ARGS` at appliance `a` with its output straight on this
/// terminal, where it draws its progress bars; ends it if the demo is
/// interrupted.
fn hinan_live(a: &Appliance, args: &[&str]) -> Result<()> {
    let mut child = hinan_command(a, args)?.spawn().context("running hinan")?;
    loop {
        if let Some(status) = child.try_wait()? {
            // Ctrl-C reaches hinan too.
            interrupted()?;
            if !status.success() {
                bail!("`hinan {}` failed ({status})", args.join(" "));
            }
            return Ok(());
        }
        if hinan_lab::lab::interrupt::requested() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("interrupted");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `hinan ARGS` at appliance `a` and prints its output, indented.
fn hinan_show(a: &Appliance, args: &[&str]) -> Result<()> {
    let out = hinan_command(a, args)?.output().context("running hinan")?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("    {line}");
    }
    if !out.status.success() {
        bail!(
            "`hinan {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// One client probe per guest.
fn probe_guests(lab: &Lab, guests: &[VmSpec]) -> Result<Vec<(String, Probe)>> {
    guests
        .iter()
        .map(|g| {
            Ok((
                g.name.clone(),
                Probe::start(&lab.topo.client.ns, ProbeSpec::new(&g.url()))?,
            ))
        })
        .collect()
}

/// Prints each probe's counts once a second for `seconds`.
fn watch_guests(probes: &[(String, Probe)], seconds: u64) -> Result<()> {
    for _ in 0..seconds {
        std::thread::sleep(Duration::from_secs(1));
        interrupted()?;
        let counts: Vec<String> = probes
            .iter()
            .map(|(name, p)| {
                let (ok, failed) = p.counts();
                format!("{name} {ok} ok/{failed} failed")
            })
            .collect();
        println!("  probe: {}", counts.join(", "));
    }
    Ok(())
}

/// Stops the probes and prints one line per guest: where it runs now (as
/// hinan's state says) and what its probe saw.
fn report_guests(
    probes: Vec<(String, Probe)>,
    state: &ClusterState,
) -> Result<BTreeMap<String, ProbeReport>> {
    let mut reports = BTreeMap::new();
    for (name, probe) in probes {
        let r = probe.stop()?;
        let at = state.vms.get(&name).map_or("?", |v| v.site.as_str());
        println!(
            "  {name} (now at {at}): {} requests, {} failed, longest outage {:.0} ms",
            r.sent, r.failed, r.longest_outage_ms
        );
        reports.insert(name, r);
    }
    Ok(reports)
}

/// Tells the lab where each guest runs now that hinan moved them, so that
/// its QEMU is found and stopped on clean-up; returns "lms1 at b, …".
fn adopt_guests(lab: &mut Lab, guests: &[VmSpec], state: &ClusterState) -> Result<String> {
    let mut at = Vec::new();
    for g in guests {
        let site = &state
            .vms
            .get(&g.name)
            .with_context(|| format!("hinan's state has no {}", g.name))?
            .site;
        lab.adopt_vm(site, &g.name)?;
        let libvirt = lab.where_running(&g.name)?;
        if libvirt.as_deref() != Some(site.as_str()) {
            bail!(
                "hinan says {} is at {site}, libvirt runs it at {}",
                g.name,
                libvirt.as_deref().unwrap_or("no campus")
            );
        }
        at.push(format!("{} at {site}", g.name));
    }
    Ok(at.join(", "))
}

/// The state's plan made for `reason` (e.g. `operator: hinan evacuate a`), newest first.
fn plan_for<'s>(state: &'s ClusterState, reason: &str) -> Result<&'s Plan> {
    state
        .plans
        .values()
        .filter(|p| p.reason == reason)
        .max_by_key(|p| {
            p.moves
                .iter()
                .filter_map(|m| state.moves.get(m))
                .map(|m| m.planned_at)
                .max()
        })
        .with_context(|| format!("hinan's state has no plan for '{reason}'"))
}

/// The audit entries about `plan` and its moves, with their time since `since`.
fn print_audit(state: &ClusterState, cluster: &Cluster, plan: &Plan, since: SystemTime) {
    let since_ms = since
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let plan_mark = format!("plan {} ", plan.id);
    let move_marks: Vec<String> = plan.moves.iter().map(|m| format!("move {m} ")).collect();
    for e in &state.audit {
        if e.what.starts_with(&plan_mark) || move_marks.iter().any(|m| e.what.starts_with(m)) {
            let by = cluster
                .appliances
                .iter()
                .find(|a| a.id == e.by)
                .map_or_else(|| format!("appliance {}", e.by), |a| a.name.clone());
            println!(
                "  +{:>5.1} s  {by}: {}",
                e.at_unix_ms.saturating_sub(since_ms) as f64 / 1000.0,
                e.what
            );
        }
    }
}

/// What `hinan-lab demo --probe-json` writes: each phase's probe report per guest.
#[derive(Debug, serde::Serialize)]
struct DemoProbes {
    evacuate: BTreeMap<String, ProbeReport>,
    failback: BTreeMap<String, ProbeReport>,
}

fn demo(probe_json: Option<std::path::PathBuf>) -> Result<()> {
    hinan_lab::lab::interrupt::install();
    let result = demo_steps(probe_json);
    if hinan_lab::lab::interrupt::requested() {
        println!("\ninterrupted: the lab is torn down (namespaces, daemons and guests)");
    }
    result
}

fn demo_steps(probe_json: Option<std::path::PathBuf>) -> Result<()> {
    let started = Instant::now();
    println!("hinan demo: three campuses and a witness; hinan empties campus A of its guests");
    println!("by live migration while a client keeps using them, then brings them home.\n");

    println!("step 1: building campuses A, B and C and the witness W (namespaces, Open vSwitch,");
    println!(
        "        libvirtd at each campus, hinan's L2 VPN joining their segments over the WAN)…"
    );
    let t = Instant::now();
    let mut lab = Lab::up(&LabSpec {
        campuses: 3,
        witness: true,
        ..LabSpec::default()
    })?;
    println!("  done in {:.1} s", t.elapsed().as_secs_f64());
    print!("{}", lab.status());
    interrupted()?;

    println!("\nstep 2: starting a hinan appliance at A, B, C and W; they elect a leader and replicate one state…");
    let t = Instant::now();
    let cluster = lab.start_cluster("")?;
    let a = cluster.get("a")?.clone();
    let leader = a.status()?.raft.leader;
    let leader = cluster
        .appliances
        .iter()
        .find(|x| Some(x.id) == leader)
        .map_or("?".to_string(), |x| x.name.clone());
    println!(
        "  {} appliances agree on leader {leader} after {:.1} s",
        cluster.appliances.len(),
        t.elapsed().as_secs_f64()
    );
    interrupted()?;

    let guests = demo_guests();
    println!(
        "\nstep 3: booting three LMS guests at campus A, each filling its memory with random data…"
    );
    eprintln!("  preparing the guest image (cached after the first build)…");
    let image = guest::ensure()?;
    let t = Instant::now();
    for g in &guests {
        lab.start_vm("a", g, &image)?;
    }
    for g in &guests {
        lab.wait_http(&g.url(), Duration::from_secs(180))
            .with_context(|| {
                format!(
                    "{} never answered; its console:\n{}",
                    g.name,
                    lab.console_tail("a", &g.name)
                )
            })?;
        interrupted()?;
        println!(
            "  {} ({}, {} MiB, {} MiB filled{}) answers HTTP, {:.1} s after start",
            g.name,
            g.ip,
            g.memory_mib,
            g.fill_mib,
            if g.dirty_mib > 0 {
                format!(", rewriting {} MiB", g.dirty_mib)
            } else {
                String::new()
            },
            t.elapsed().as_secs_f64()
        );
    }

    println!(
        "\nstep 4: telling hinan about the lab: sites, hosts, the guests, WAN links of {DEMO_WAN_MBIT} Mbit/s of which migrations may use {:.0} %…",
        DEMO_MIGRATION_SHARE * 100.0
    );
    let mut inv = LabInventory::of_lab(&lab.topo, DEMO_WAN_MBIT, DEMO_MIGRATION_SHARE);
    for g in &guests {
        inv = inv.vm(&lab.topo, g, "a", &image);
    }
    let file = inv.write(&lab.run.path.join("inventory"))?;
    hinan_show(&a, &["apply", &file.to_string_lossy()])?;
    let mut limited = lab.wan_state();
    for c in &lab.topo.campuses {
        limited.set_link(
            &c.name,
            LinkImpairment {
                rate_mbit: Some(DEMO_WAN_MBIT as u32),
                ..Default::default()
            },
        );
    }
    wan::apply(&mut lab, &limited)?;
    println!("  the WAN really is that: {}", limited.describe());
    interrupted()?;

    println!("\nstep 5: the client requests each guest's page every 50 ms, entering through campus A's edge…");
    let probes = probe_guests(&lab, &guests)?;
    watch_guests(&probes, 3)?;

    println!(
        "\nstep 6: campus A must be emptied: an operator asks hinan to evacuate it (in a later"
    );
    println!("        version an alert will ask). hinan places each guest at B or C and live-migrates it");
    println!(
        "        through libvirt's API, the stream inside its VPN; watch the moves' progress:"
    );
    let evacuated_at = SystemTime::now();
    let t = Instant::now();
    hinan_live(&a, &["evacuate", "a", "--wait"])?;
    let took = t.elapsed();
    let s = a.state()?;
    let at = adopt_guests(&mut lab, &guests, &s)?;
    println!(
        "  campus A is empty after {:.1} s; libvirt runs {at}",
        took.as_secs_f64()
    );
    interrupted()?;

    println!("\nstep 7: every move hinan made, as its replicated state keeps them:");
    hinan_show(&a, &["moves", "--all"])?;

    println!("\nstep 8: the audit log says why each guest moved, who drove it and how it ended:");
    print_audit(
        &s,
        &cluster,
        plan_for(&s, "operator: hinan evacuate a")?,
        evacuated_at,
    );

    println!("\nstep 9: what the client saw of each guest while it moved:");
    watch_guests(&probes, 2)?;
    let evacuate = report_guests(probes, &a.state()?)?;

    println!("\nstep 10: campus A is back; hinan fails every guest back to its home site, under the probe again:");
    let probes = probe_guests(&lab, &guests)?;
    std::thread::sleep(Duration::from_secs(1));
    interrupted()?;
    let failback_at = SystemTime::now();
    let t = Instant::now();
    hinan_live(&a, &["failback", "--wait"])?;
    let took = t.elapsed();
    let s = a.state()?;
    let at = adopt_guests(&mut lab, &guests, &s)?;
    println!(
        "  home after {:.1} s; libvirt runs {at}",
        took.as_secs_f64()
    );
    print_audit(
        &s,
        &cluster,
        plan_for(&s, "operator: hinan failback")?,
        failback_at,
    );
    watch_guests(&probes, 2)?;
    let failback = report_guests(probes, &s)?;

    if let Some(path) = probe_json {
        let all = DemoProbes { evacuate, failback };
        std::fs::write(&path, serde_json::to_vec_pretty(&all)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("  every probe's full report: {}", path.display());
    }

    println!("\nstep 11: tearing the lab down");
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
    println!("\nthe demo took {:.0} s", started.elapsed().as_secs_f64());
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
