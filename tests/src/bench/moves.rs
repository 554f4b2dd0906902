//! Moves driven by hinan beside the same live migration driven by `virsh`,
//! on a bandwidth-limited WAN (`hinan-bench moves`).
//!
//! The lab has campuses A and B and the witness W, with hinan's cluster and
//! VPN. The WAN sends at most `wan_rate_mbit` toward A and toward B (tbf), and
//! the inventory says the link A–B has `inventory_mbit` with
//! `migration_share` for migrations, so hinan caps a lone move at
//! `inventory_mbit × migration_share`, floored to whole MiB/s
//! ([`hinan_orchestrator::core::moves::bandwidth_for`]).
//!
//! Each round moves the guest A→B and back, once by each driver; the order
//! alternates, so each driver runs both directions:
//!
//! * **hinan**: `hinan migrate VM --to SITE --wait`, timed from the command's
//!   start until it returns (the move is done in the replicated state). The
//!   move's outcome gives libvirt's side: the executor's migration call,
//!   QEMU's downtime and the data libvirt counted.
//! * **virsh**: `virsh migrate` asking libvirt for what hinan's executor
//!   asks it for: the flags and parameters `shell::libvirt::migration_request`
//!   makes of `shell::executor::settings` for the order hinan would build for
//!   the same move ([`VirshMigration::of`]): live, peer to peer, persistent
//!   at the destination, undefined at the source, the policy's
//!   auto-converge, the cap of the hinan move before it, the stream to the
//!   destination's address on the service segment (`tcp://INSIDE_IP`, so
//!   both cross the WAN inside hinan's VPN), the same peer URI; and the
//!   policy's maximum downtime, set with `virsh migrate-setmaxdowntime`
//!   before the job as the executor sets it. (The executor's abort after
//!   the policy's `timeout_s` has no virsh equivalent; no run comes near
//!   it.) `virsh domjobinfo --completed` at the destination gives libvirt's
//!   side.
//!
//! Reported per run and as medians per driver: the wall time, libvirt's
//! migration time, downtime, data, and the achieved rate (data over
//! libvirt's migration time) against the cap. hinan's overhead is its wall
//! time over virsh's.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::bench::stats::median;
use crate::lab::cluster::{Appliance, LabInventory};
use crate::lab::guest;
use crate::lab::sys;
use crate::lab::vm::{job_info_field, job_info_mib};
use crate::lab::wan::{self, LinkImpairment, WanState};
use crate::lab::{Lab, LabSpec};
use crate::VmSpec;
use hinan_orchestrator::core::moves::MoveResult;
use hinan_orchestrator::core::moves::{self, Move, MovePhase};
use hinan_orchestrator::core::node::MigrationOrder;
use hinan_orchestrator::shell::executor;
use hinan_orchestrator::shell::libvirt::{migration_request, peer_uri};

/// How long one migration may take before the benchmark gives up on it.
const MIGRATION_LIMIT: Duration = Duration::from_secs(600);
/// How long hinan may take to see where a guest moved by virsh now runs.
const LOCATE_LIMIT: Duration = Duration::from_secs(60);

/// What `hinan-bench moves` runs.
#[derive(Debug, Clone)]
pub struct MovesBenchSpec {
    /// Rounds; each moves the guest A→B and back once per driver.
    pub runs: usize,
    /// tbf on the WAN toward A and toward B, Mbit/s.
    pub wan_rate_mbit: u32,
    /// The inventory's `mbit` of the link A–B.
    pub inventory_mbit: u64,
    /// The inventory's `migration_share` of the link A–B.
    pub migration_share: f64,
    pub guest: VmSpec,
}

impl Default for MovesBenchSpec {
    /// 100 Mbit/s, half for migrations: a 5 MiB/s cap, about 35 s for a
    /// 192 MiB guest with 96 MiB of random data (beside the kernel's and
    /// service's 88 MiB).
    fn default() -> Self {
        MovesBenchSpec {
            runs: 3,
            wan_rate_mbit: 100,
            inventory_mbit: 100,
            migration_share: 0.5,
            guest: VmSpec::lms(1, 192, 96, 0),
        }
    }
}

/// Who drove a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Driver {
    Hinan,
    Virsh,
}

impl Driver {
    pub fn name(self) -> &'static str {
        match self {
            Driver::Hinan => "hinan",
            Driver::Virsh => "virsh",
        }
    }
}

/// One live migration.
#[derive(Debug, Clone, Serialize)]
pub struct MoveRun {
    pub driver: Driver,
    pub round: usize,
    pub from: String,
    pub to: String,
    /// The command's start until it returned, s.
    pub wall_s: f64,
    /// libvirt's migration: hinan's executor timing its migration call (the
    /// move's outcome), or libvirt's `Time elapsed` for virsh; s.
    pub job_s: Option<f64>,
    /// `wall_s - job_s`: what the driver adds around libvirt's job.
    pub overhead_s: Option<f64>,
    /// QEMU's downtime, ms.
    pub downtime_ms: Option<f64>,
    /// libvirt's `data_total` (the move's outcome, or `Data total`), MiB.
    pub data_total_mib: Option<f64>,
    /// libvirt's `data_processed` (the move's last progress report, or
    /// `Data processed`), MiB; `None` if not reported.
    pub data_processed_mib: Option<f64>,
    /// The cap the migration ran with, MiB/s.
    pub cap_mib_s: u64,
    /// `data_total_mib / job_s`.
    pub achieved_mib_s: Option<f64>,
    /// `achieved_mib_s / cap_mib_s`.
    pub achieved_vs_cap: Option<f64>,
    /// `data_processed_mib / job_s`.
    pub processed_mib_s: Option<f64>,
    /// The hinan move's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub move_id: Option<String>,
    /// The move's outcome in words, or `virsh domjobinfo --completed`.
    pub libvirt_said: String,
}

/// Medians of one driver's runs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DriverSummary {
    pub runs: usize,
    pub wall_s: Option<f64>,
    pub job_s: Option<f64>,
    pub overhead_s: Option<f64>,
    pub downtime_ms: Option<f64>,
    pub data_total_mib: Option<f64>,
    pub data_processed_mib: Option<f64>,
    pub achieved_mib_s: Option<f64>,
    pub achieved_vs_cap: Option<f64>,
    pub processed_mib_s: Option<f64>,
}

impl DriverSummary {
    fn of(runs: &[&MoveRun]) -> DriverSummary {
        let m = |f: &dyn Fn(&MoveRun) -> Option<f64>| {
            median(&runs.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
        };
        DriverSummary {
            runs: runs.len(),
            wall_s: m(&|r| Some(r.wall_s)),
            job_s: m(&|r| r.job_s),
            overhead_s: m(&|r| r.overhead_s),
            downtime_ms: m(&|r| r.downtime_ms),
            data_total_mib: m(&|r| r.data_total_mib),
            data_processed_mib: m(&|r| r.data_processed_mib),
            achieved_mib_s: m(&|r| r.achieved_mib_s),
            achieved_vs_cap: m(&|r| r.achieved_vs_cap),
            processed_mib_s: m(&|r| r.processed_mib_s),
        }
    }
}

/// What `hinan-bench moves --json` writes.
#[derive(Debug, Clone, Serialize)]
pub struct MovesReport {
    pub guest: String,
    pub guest_memory_mib: u32,
    pub guest_fill_mib: u32,
    pub guest_dirty_mib: u32,
    pub wan_rate_mbit: u32,
    pub inventory_mbit: u64,
    pub migration_share: f64,
    /// The cap hinan gave its first move, MiB/s (virsh runs use the cap of
    /// the hinan move before them).
    pub cap_mib_s: Option<u64>,
    pub max_downtime_ms: u64,
    /// The `virsh migrate` arguments of the virsh runs (A→B), the cap and
    /// the addresses filled in.
    pub virsh_command: String,
    pub libvirt: String,
    pub runs: Vec<MoveRun>,
    pub hinan: DriverSummary,
    pub virsh: DriverSummary,
    /// Median wall time, hinan over virsh.
    pub wall_ratio_hinan_over_virsh: Option<f64>,
    /// Median libvirt migration time, hinan over virsh.
    pub job_ratio_hinan_over_virsh: Option<f64>,
    /// Why the benchmark stopped early, if it did (the runs before are kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Runs the benchmark in a lab of its own; `progress` gets a line per step.
/// A failure after the lab came up still returns the runs so far, with
/// `error` set.
pub fn run(spec: &MovesBenchSpec, progress: &mut dyn FnMut(&str)) -> Result<MovesReport> {
    if spec.runs == 0 {
        bail!("--runs must be at least 1");
    }
    spec.guest.check()?;
    let image = guest::ensure()?;
    let mut lab = Lab::up(&LabSpec {
        witness: true,
        ..LabSpec::default()
    })?;
    let mut report = MovesReport {
        guest: spec.guest.name.clone(),
        guest_memory_mib: spec.guest.memory_mib,
        guest_fill_mib: spec.guest.fill_mib,
        guest_dirty_mib: spec.guest.dirty_mib,
        wan_rate_mbit: spec.wan_rate_mbit,
        inventory_mbit: spec.inventory_mbit,
        migration_share: spec.migration_share,
        cap_mib_s: None,
        max_downtime_ms: 0,
        virsh_command: String::new(),
        libvirt: sys::version_line("virsh", &["--version"]).unwrap_or_default(),
        runs: Vec::new(),
        hinan: DriverSummary::default(),
        virsh: DriverSummary::default(),
        wall_ratio_hinan_over_virsh: None,
        job_ratio_hinan_over_virsh: None,
        error: None,
    };
    if let Err(e) = run_in_lab(&mut lab, spec, &image, &mut report, progress) {
        progress(&format!("stopped: {e:#}"));
        report.error = Some(format!("{e:#}"));
    }
    summarize(&mut report);
    let problems = lab.teardown();
    if !problems.is_empty() {
        let p = format!("clean-up problems: {}", problems.join("; "));
        report.error = Some(match report.error.take() {
            Some(e) => format!("{e}; {p}"),
            None => p,
        });
    }
    Ok(report)
}

fn summarize(report: &mut MovesReport) {
    let of =
        |d: Driver| -> Vec<&MoveRun> { report.runs.iter().filter(|r| r.driver == d).collect() };
    let (h, v) = (
        DriverSummary::of(&of(Driver::Hinan)),
        DriverSummary::of(&of(Driver::Virsh)),
    );
    let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) if y > 0.0 => Some(x / y),
        _ => None,
    };
    report.wall_ratio_hinan_over_virsh = ratio(h.wall_s, v.wall_s);
    report.job_ratio_hinan_over_virsh = ratio(h.job_s, v.job_s);
    report.hinan = h;
    report.virsh = v;
}

fn run_in_lab(
    lab: &mut Lab,
    spec: &MovesBenchSpec,
    image: &guest::GuestImage,
    report: &mut MovesReport,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    let cluster = lab.start_cluster("")?;
    let vm = &spec.guest;
    lab.start_vm("a", vm, image)?;
    if let Err(e) = lab.wait_http(&vm.url(), Duration::from_secs(180)) {
        bail!("{e:#}\nconsole at A:\n{}", lab.console_tail("a", &vm.name));
    }
    let a = cluster.get("a")?.clone();
    let inventory = LabInventory::of_lab(&lab.topo, spec.inventory_mbit, spec.migration_share)
        .vm(&lab.topo, vm, "a", image);
    let file = inventory.write(&lab.run.path.join("inventory"))?;
    hinan(&a, &["apply", &file.to_string_lossy()])?;
    let mut limited = WanState::default();
    for link in ["a", "b"] {
        limited.set_link(
            link,
            LinkImpairment {
                rate_mbit: Some(spec.wan_rate_mbit),
                ..Default::default()
            },
        );
    }
    wan::apply(lab, &limited)?;
    let policy = a.state()?.migration;
    report.max_downtime_ms = policy.max_downtime_ms;
    progress(&format!(
        "lab: A, B and witness W with hinan's cluster and VPN; WAN {}; inventory link a-b {} Mbit/s, \
         migration_share {}; policy: max downtime {} ms, auto-converge {}, compression {}, \
         {} connection(s); guest {} ({} MiB, {} MiB random data, {} MiB dirtied)",
        limited.describe(),
        spec.inventory_mbit,
        spec.migration_share,
        policy.max_downtime_ms,
        policy.auto_converge,
        policy.compression,
        policy.parallel_connections,
        vm.name,
        vm.memory_mib,
        vm.fill_mib,
        vm.dirty_mib,
    ));
    let mut last_hinan: Option<Move> = None;
    for round in 1..=spec.runs {
        // Each round starts and ends at A; the first driver goes A→B.
        let order = if round % 2 == 1 {
            [Driver::Hinan, Driver::Virsh]
        } else {
            [Driver::Virsh, Driver::Hinan]
        };
        for (driver, (from, to)) in order.into_iter().zip([("a", "b"), ("b", "a")]) {
            if crate::lab::interrupt::requested() {
                bail!("interrupted");
            }
            let run = match driver {
                Driver::Hinan => {
                    let (run, m) = by_hinan(lab, &a, vm, round, from, to)?;
                    report.cap_mib_s.get_or_insert(run.cap_mib_s);
                    last_hinan = Some(m);
                    run
                }
                Driver::Virsh => {
                    let m = last_hinan
                        .as_ref()
                        .context("no hinan move before the first virsh run")?;
                    let (run, command) = by_virsh(lab, &a, vm, m, round, from, to)?;
                    if report.virsh_command.is_empty() || from == "a" {
                        report.virsh_command = command;
                    }
                    run
                }
            };
            progress(&run_line(&run));
            report.runs.push(run);
            lab.wait_http(&vm.url(), Duration::from_secs(10))
                .with_context(|| format!("{} does not answer at {to} after the move", vm.name))?;
        }
    }
    Ok(())
}

/// One line of a run for the log.
pub fn run_line(r: &MoveRun) -> String {
    let f = |v: Option<f64>, d: usize| v.map_or("-".into(), |x| format!("{x:.d$}"));
    format!(
        "  round {} {:<5} {}->{}: wall {:>6} s  libvirt {:>6} s  overhead {:>5} s  downtime {:>4} ms  \
         data_total {:>6} MiB  processed {:>6} MiB  {:>5} MiB/s = {:>4}x the {} MiB/s cap",
        r.round,
        r.driver.name(),
        r.from,
        r.to,
        f(Some(r.wall_s), 2),
        f(r.job_s, 2),
        f(r.overhead_s, 2),
        f(r.downtime_ms, 0),
        f(r.data_total_mib, 1),
        f(r.data_processed_mib, 1),
        f(r.achieved_mib_s, 2),
        f(r.achieved_vs_cap, 2),
        r.cap_mib_s,
    )
}

/// Runs `hinan ARGS` at appliance `a`; fails with its output if it fails.
fn hinan(a: &Appliance, args: &[&str]) -> Result<String> {
    let (ok, out, err) = a.cli(args)?;
    if !ok {
        bail!("hinan {} failed:\n{out}\n{err}", args.join(" "));
    }
    Ok(out)
}

/// Waits until the state has `vm` at `site` on host `site`1 with no move
/// active (after a virsh migration, hinan learns the site from its VPN and
/// the host from the hypervisor's report).
fn wait_located(a: &Appliance, vm: &str, site: &str) -> Result<()> {
    let host = format!("{site}1");
    sys::wait_for(
        &format!("hinan's state to show {vm} at site {site} on {host}, no move active"),
        LOCATE_LIMIT,
        Duration::from_millis(200),
        || {
            let s = a.state()?;
            let v = s
                .vms
                .get(vm)
                .with_context(|| format!("no VM {vm} in the state"))?;
            let idle = !s.moves.values().any(|m| m.vm == vm && m.phase.is_active());
            Ok((v.site == site && v.host == host && idle).then_some(()))
        },
    )
}

fn by_hinan(
    lab: &mut Lab,
    a: &Appliance,
    vm: &VmSpec,
    round: usize,
    from: &str,
    to: &str,
) -> Result<(MoveRun, Move)> {
    wait_located(a, &vm.name, from)?;
    let start = Instant::now();
    let out = hinan(a, &["migrate", &vm.name, "--to", to, "--wait"])?;
    let wall = start.elapsed();
    lab.adopt_vm(to, &vm.name)?;
    let s = a.state()?;
    let m = moves::latest(&s, &vm.name).context("no move of the guest in the state")?;
    if m.phase != MovePhase::Done || m.to_site != to {
        bail!(
            "hinan migrate returned, but move {} to {} is {}: {}\n{out}",
            m.id,
            m.to_site,
            m.phase,
            m.outcome
        );
    }
    if lab.campus(to)?.domstate(&vm.name)?.as_deref() != Some("running") {
        bail!(
            "move {} is done, but {} does not run at {to}",
            m.id,
            vm.name
        );
    }
    let cap = m
        .bandwidth_mib_s
        .with_context(|| format!("move {} ran without a bandwidth cap", m.id))?;
    let (job_s, downtime_ms, data_total_mib) = match &m.result {
        Some(MoveResult::Done {
            downtime_ms,
            data_total,
            wall_ms,
        }) => (
            Some(*wall_ms as f64 / 1000.0),
            downtime_ms.map(|d| d as f64),
            data_total.map(|d| d as f64 / 1048576.0),
        ),
        _ => (None, None, None),
    };
    let processed = m
        .progress
        .as_ref()
        .filter(|p| p.data_processed > 0)
        .map(|p| p.data_processed as f64 / 1048576.0);
    let run = MoveRun::new(
        Driver::Hinan,
        round,
        (from, to),
        wall,
        Measured {
            job_s,
            downtime_ms,
            data_total_mib,
            data_processed_mib: processed,
        },
        cap,
        Some(m.id.clone()),
        m.outcome.clone(),
    );
    Ok((run, m))
}

fn by_virsh(
    lab: &mut Lab,
    a: &Appliance,
    vm: &VmSpec,
    hinan_move: &Move,
    round: usize,
    from: &str,
    to: &str,
) -> Result<(MoveRun, String)> {
    let src = lab.campus(from)?.clone();
    let dst = lab.campus(to)?.clone();
    if src.domstate(&vm.name)?.as_deref() != Some("running") {
        bail!("{} does not run at {from}", vm.name);
    }
    // The order hinan's executor would get for this move, at the cap of
    // the hinan move before it.
    let mv = Move {
        from_site: from.into(),
        from_host: format!("{from}1"),
        to_site: to.into(),
        to_host: format!("{to}1"),
        ..hinan_move.clone()
    };
    let order = MigrationOrder::of(&a.state()?, &mv).map_err(anyhow::Error::msg)?;
    let virsh = VirshMigration::of(&order)?;
    let src_uri = src.libvirt_uri();
    // hinan's executor sets the maximum downtime on the domain before the job.
    if let Some(ms) = virsh.max_downtime_ms {
        src.virsh(&["migrate-setmaxdowntime", &vm.name, &ms.to_string()])?;
    }
    let limit = MIGRATION_LIMIT.as_secs().to_string();
    let mut all = vec![limit.as_str(), "virsh", "-q", "-c", src_uri.as_str()];
    all.extend(virsh.args.iter().map(String::as_str));
    let start = Instant::now();
    sys::run("timeout", &all)
        .with_context(|| format!("virsh migrate of {} from {from} to {to}", vm.name))?;
    let wall = start.elapsed();
    lab.adopt_vm(to, &vm.name)?;
    let info = dst.virsh(&["domjobinfo", "--completed", &vm.name])?;
    let job = JobInfo(&info);
    Ok((
        MoveRun::new(
            Driver::Virsh,
            round,
            (from, to),
            wall,
            Measured {
                job_s: job.ms("Time elapsed").map(|ms| ms / 1000.0),
                downtime_ms: job.ms("Total downtime"),
                data_total_mib: job_info_mib(&info, "Data total"),
                data_processed_mib: job_info_mib(&info, "Data processed"),
            },
            order.bandwidth_mib_s.unwrap_or(0),
            None,
            info.trim().to_string(),
        ),
        format!(
            "virsh migrate-setmaxdowntime {} {}; virsh -c {src_uri} {}",
            vm.name,
            virsh
                .max_downtime_ms
                .map_or("-".into(), |ms| ms.to_string()),
            virsh.args.join(" ")
        ),
    ))
}

/// libvirt's `virDomainMigrateFlags` (stable ABI values) and the `virsh
/// migrate` options that set them.
const VIRSH_FLAGS: [(u32, &str); 9] = [
    (1 << 0, "--live"),
    (1 << 1, "--p2p"),
    (1 << 3, "--persistent"),
    (1 << 4, "--undefinesource"),
    (1 << 11, "--compressed"),
    (1 << 13, "--auto-converge"),
    (1 << 15, "--postcopy"),
    (1 << 16, "--tls"),
    (1 << 17, "--parallel"),
];

/// A `virsh migrate` that asks libvirt for what hinan's executor asks it
/// for: the flags and parameters of `shell::libvirt::migration_request` for
/// the executor's `settings` of `order`, to the same peer URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirshMigration {
    /// `virsh migrate …` arguments.
    pub args: Vec<String>,
    /// Set with `virsh migrate-setmaxdowntime` before, as the executor does.
    pub max_downtime_ms: Option<u64>,
}

impl VirshMigration {
    pub fn of(order: &MigrationOrder) -> Result<VirshMigration> {
        let settings = executor::settings(order);
        let (flags, params) = migration_request(&settings);
        let mut args = vec!["migrate".to_string()];
        let mut left = flags;
        for (bit, option) in VIRSH_FLAGS {
            if flags & bit != 0 {
                args.push(option.into());
                left &= !bit;
            }
        }
        if left != 0 {
            bail!("hinan's executor asks libvirt for migration flags {left:#x}, which the benchmark cannot give virsh");
        }
        if let Some(n) = params.parallel_connections {
            args.extend(["--parallel-connections".into(), n.to_string()]);
        }
        if let Some(b) = params.bandwidth {
            args.extend(["--bandwidth".into(), b.to_string()]);
        }
        if let Some(u) = &params.uri {
            args.extend(["--migrateuri".into(), u.clone()]);
        }
        args.extend([order.vm.clone(), peer_uri(&order.dest_uri)]);
        Ok(VirshMigration {
            args,
            max_downtime_ms: settings.max_downtime_ms,
        })
    }
}

/// libvirt's side of one migration.
struct Measured {
    job_s: Option<f64>,
    downtime_ms: Option<f64>,
    data_total_mib: Option<f64>,
    data_processed_mib: Option<f64>,
}

impl MoveRun {
    #[allow(clippy::too_many_arguments)]
    fn new(
        driver: Driver,
        round: usize,
        (from, to): (&str, &str),
        wall: Duration,
        m: Measured,
        cap_mib_s: u64,
        move_id: Option<String>,
        libvirt_said: String,
    ) -> MoveRun {
        let wall_s = wall.as_secs_f64();
        let per_s = |mib: Option<f64>| match (mib, m.job_s) {
            (Some(d), Some(t)) if t > 0.0 => Some(d / t),
            _ => None,
        };
        let achieved = per_s(m.data_total_mib);
        MoveRun {
            driver,
            round,
            from: from.into(),
            to: to.into(),
            wall_s,
            job_s: m.job_s,
            overhead_s: m.job_s.map(|j| wall_s - j),
            downtime_ms: m.downtime_ms,
            data_total_mib: m.data_total_mib,
            data_processed_mib: m.data_processed_mib,
            cap_mib_s,
            achieved_mib_s: achieved,
            achieved_vs_cap: achieved.map(|x| x / cap_mib_s as f64),
            processed_mib_s: per_s(m.data_processed_mib),
            move_id,
            libvirt_said,
        }
    }
}

/// `virsh domjobinfo` output.
struct JobInfo<'a>(&'a str);

impl JobInfo<'_> {
    /// A time field (`Time elapsed:  31234 ms`), in ms.
    fn ms(&self, field: &str) -> Option<f64> {
        let (value, unit) = job_info_field(self.0, field)?;
        match unit {
            Some("ms") | None => Some(value),
            Some("s") => Some(value * 1000.0),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_info_times_are_read_in_ms() {
        let info = "Job type:         Completed\nTime elapsed:     31234        ms\nTotal downtime:   250          ms\nData total:       192.250 MiB\n";
        let j = JobInfo(info);
        assert_eq!(j.ms("Time elapsed"), Some(31234.0));
        assert_eq!(j.ms("Total downtime"), Some(250.0));
        assert_eq!(j.ms("Setup time"), None);
    }

    #[test]
    fn virsh_asks_libvirt_for_what_hinans_executor_asks() {
        use hinan_orchestrator::core::moves::{Encryption, MigrationPolicy};
        let mut order = MigrationOrder {
            id: "m1".into(),
            vm: "lms1".into(),
            source_host: "a1".into(),
            source_uri: "qemu:///system?socket=/a".into(),
            dest_host: "b1".into(),
            dest_uri: "qemu:///system?socket=/b".into(),
            stream_uri: Some("tcp://10.70.0.3".into()),
            bandwidth_mib_s: Some(5),
            post_copy: false,
            policy: MigrationPolicy::default(),
        };
        let v = VirshMigration::of(&order).unwrap();
        assert_eq!(
            v.args.join(" "),
            "migrate --live --p2p --persistent --undefinesource --auto-converge \
             --bandwidth 5 --migrateuri tcp://10.70.0.3 lms1 qemu+unix:///system?socket=/b"
        );
        assert_eq!(v.max_downtime_ms, Some(300));
        order.policy = MigrationPolicy {
            compression: true,
            parallel_connections: 4,
            encryption: Encryption::Tls,
            auto_converge: false,
            ..MigrationPolicy::default()
        };
        order.post_copy = true;
        let v = VirshMigration::of(&order).unwrap();
        assert_eq!(
            v.args.join(" "),
            "migrate --live --p2p --persistent --undefinesource --compressed --postcopy --tls \
             --parallel --parallel-connections 4 --bandwidth 5 --migrateuri tcp://10.70.0.3 \
             lms1 qemu+unix:///system?socket=/b"
        );
    }

    #[test]
    fn rates_are_over_libvirts_time_and_against_the_cap() {
        let r = MoveRun::new(
            Driver::Virsh,
            1,
            ("a", "b"),
            Duration::from_secs(32),
            Measured {
                job_s: Some(30.0),
                downtime_ms: Some(200.0),
                data_total_mib: Some(150.0),
                data_processed_mib: Some(120.0),
            },
            5,
            None,
            String::new(),
        );
        assert_eq!(r.achieved_mib_s, Some(5.0));
        assert_eq!(r.achieved_vs_cap, Some(1.0));
        assert_eq!(r.processed_mib_s, Some(4.0));
        assert_eq!(r.overhead_s, Some(2.0));
    }
}
