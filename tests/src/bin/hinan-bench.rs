//! `hinan-bench`: benchmarks of peers in the lab, to set beside hinan's own
//! numbers. Today: keepalived's VRRP takeover time.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use serde::Serialize;

use hinan_lab::keepalived::{self, Combination, Failure, Jitter, Settings, Trial};
use hinan_lab::{Lab, LabSpec};

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
        /// output-drop, wan-output-drop (see `hinan_lab::keepalived::Failure`).
        #[arg(long, value_delimiter = ',', default_value = "kill9,link-cut")]
        failures: Vec<Failure>,
        /// Also write every trial as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Seed of the random pause before each failure (default: from the clock).
        #[arg(long)]
        seed: Option<u64>,
    },
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
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
        Command::Keepalived {
            trials,
            slow_trials,
            settings,
            failures,
            json,
            seed,
        } => bench_keepalived(trials, slow_trials, &settings, &failures, json, seed),
    }
}

fn bench_keepalived(
    trials: usize,
    slow_trials: usize,
    settings: &[Settings],
    failures: &[Failure],
    json: Option<PathBuf>,
    seed: Option<u64>,
) -> Result<()> {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
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
                if INTERRUPTED.load(Ordering::Relaxed) {
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
                let c = keepalived::run_combination(
                    &mut lab,
                    *s,
                    *f,
                    n,
                    &mut jitter,
                    print_trial,
                    &|| INTERRUPTED.load(Ordering::Relaxed),
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
