//! Measurements of the appliance cluster in the lab, shared by the tests
//! (which assert on them) and `make bench` (which reports them).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use hinan_orchestrator::shell::control::EventRecord;
use serde::Serialize;

use crate::lab::cluster::{Appliance, Cluster};
use crate::lab::wan::{self, LinkImpairment, WanState};
use crate::lab::{sys, Lab};

pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Replication latencies, in ms.
#[derive(Debug, Clone, Default)]
pub struct Replication {
    /// From the request to its application at the proposing appliance (a majority stored it).
    pub commit_ms: Vec<f64>,
    /// From the request to its application at every appliance.
    pub everywhere_ms: Vec<f64>,
}

/// Commits `n` notes at `from` and times when each is applied at every appliance.
pub fn replication(cluster: &Cluster, from: &str, n: usize) -> Result<Replication> {
    let origin = cluster.get(from)?.clone();
    let mut out = Replication::default();
    for i in 0..n {
        let next = origin.status()?.raft.last_index + 1;
        // Waiters first, so each appliance answers the moment it applies.
        let waiters: Vec<_> = cluster
            .appliances
            .iter()
            .filter(|a| a.id != origin.id)
            .cloned()
            .map(|a: Appliance| {
                std::thread::spawn(move || a.wait_applied(next, Duration::from_secs(5)))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(2));
        let t0 = unix_us();
        let started = Instant::now();
        let reply = origin.note(&format!("bench-{i}"), Duration::from_secs(5))?;
        let commit = started.elapsed();
        let mut last = t0 + commit.as_micros() as u64;
        for w in waiters {
            let r = w
                .join()
                .map_err(|_| anyhow::anyhow!("a waiter panicked"))??;
            last = last.max(r.at_unix_us);
        }
        if reply.index != next {
            // Something else committed in between (a health report): the
            // waiters measured that entry, not ours. Measure again.
            continue;
        }
        out.commit_ms.push(commit.as_secs_f64() * 1000.0);
        out.everywhere_ms
            .push(last.saturating_sub(t0) as f64 / 1000.0);
    }
    Ok(out)
}

/// Fails `victim` `n` times with `fail` and undoes it with `restore`,
/// returning how long each observer took to report its site down, in ms,
/// from just before `fail`. Waits for every observer to see it up again
/// between trials.
fn fault_trials(
    lab: &mut Lab,
    cluster: &Cluster,
    victim: &str,
    observers: &[&str],
    n: usize,
    mut fail: impl FnMut(&mut Lab, &Appliance) -> Result<()>,
    mut restore: impl FnMut(&mut Lab, &Appliance) -> Result<()>,
) -> Result<BTreeMap<String, Vec<f64>>> {
    let v = cluster.get(victim)?.clone();
    let obs: Vec<Appliance> = observers
        .iter()
        .map(|o| cluster.get(o).cloned())
        .collect::<Result<_>>()?;
    let mut out: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for trial in 0..n {
        let since: Vec<u64> = obs.iter().map(|o| o.last_event()).collect::<Result<_>>()?;
        let t0 = unix_us();
        fail(lab, &v)?;
        for (o, s) in obs.iter().zip(&since) {
            let e = o
                .wait_event(*s, "site-down", Some(v.id), Duration::from_secs(3))
                .with_context(|| {
                    format!(
                        "trial {trial}: {} did not report {victim} down; its events: {:?}",
                        o.name,
                        o.events(s.saturating_sub(5))
                    )
                })?;
            out.entry(o.site.clone())
                .or_default()
                .push(e.at_unix_us.saturating_sub(t0) as f64 / 1000.0);
        }
        let since: Vec<u64> = obs.iter().map(|o| o.last_event()).collect::<Result<_>>()?;
        restore(lab, &v)?;
        for (o, s) in obs.iter().zip(&since) {
            o.wait_event(*s, "site-up", Some(v.id), Duration::from_secs(5))
                .with_context(|| format!("trial {trial}: {} never saw {victim} again", o.name))?;
        }
    }
    Ok(out)
}

/// Kills `victim`'s appliance with SIGKILL `n` times, restarting it in
/// between: how long each observer took to report its site down, in ms.
pub fn detection_trials(
    lab: &mut Lab,
    cluster: &Cluster,
    victim: &str,
    observers: &[&str],
    n: usize,
) -> Result<BTreeMap<String, Vec<f64>>> {
    fault_trials(
        lab,
        cluster,
        victim,
        observers,
        n,
        |lab, v| lab.kill_appliance(v, libc::SIGKILL),
        |lab, v| lab.start_appliance(cluster, v),
    )
}

/// Cuts `victim`'s WAN link `n` times (a silent site loss: nothing is sent,
/// the cable is gone), restoring it in between: how long each observer took
/// to report the site down, in ms, from just before the cut.
pub fn cut_trials(
    lab: &mut Lab,
    cluster: &Cluster,
    victim: &str,
    observers: &[&str],
    n: usize,
) -> Result<BTreeMap<String, Vec<f64>>> {
    let mut cut = WanState::default();
    cut.set_link(
        victim,
        LinkImpairment {
            down: true,
            ..Default::default()
        },
    );
    fault_trials(
        lab,
        cluster,
        victim,
        observers,
        n,
        |lab, _| wan::apply(lab, &cut),
        |lab, _| wan::apply(lab, &WanState::default()),
    )
}

/// What a soak saw.
#[derive(Debug, Clone, Default)]
pub struct Soak {
    pub duration: Duration,
    pub loss_pct: f64,
    /// Every path-down or site-down event any appliance recorded: all false,
    /// since nothing failed.
    pub false_downs: Vec<(String, EventRecord)>,
    /// Notes committed during the soak (the cluster kept working).
    pub commits: usize,
}

/// Runs the cluster for `duration` with `loss_pct` loss toward every WAN link,
/// committing a note every second, and collects every "down" event.
pub fn soak(lab: &mut Lab, cluster: &Cluster, loss_pct: f64, duration: Duration) -> Result<Soak> {
    let since: Vec<u64> = cluster
        .appliances
        .iter()
        .map(|a| a.last_event())
        .collect::<Result<_>>()?;
    let mut lossy = WanState::default();
    for link in lab.topo.link_names() {
        lossy.set_link(
            &link,
            LinkImpairment {
                loss_pct,
                ..Default::default()
            },
        );
    }
    wan::apply(lab, &lossy)?;
    let start = Instant::now();
    let mut commits = 0;
    let mut i = 0;
    while start.elapsed() < duration {
        std::thread::sleep(Duration::from_secs(1));
        let a = &cluster.appliances[i % cluster.appliances.len()];
        i += 1;
        if a.note(&format!("soak-{i}"), Duration::from_secs(3)).is_ok() {
            commits += 1;
        }
    }
    wan::apply(lab, &WanState::default())?;
    let mut false_downs = Vec::new();
    for (a, s) in cluster.appliances.iter().zip(since) {
        for e in a.events(s)? {
            if e.kind == "site-down" || e.kind == "path-down" {
                false_downs.push((a.name.clone(), e));
            }
        }
    }
    Ok(Soak {
        duration: start.elapsed(),
        loss_pct,
        false_downs,
        commits,
    })
}

/// One live migration of a published VM and how long the cluster took to
/// follow it (`hinan-bench location`). Times are in ms relative to `virsh
/// migrate` returning (negative: before libvirt reported the migration done),
/// except `answered_ms`.
#[derive(Debug, Clone, Serialize)]
pub struct LocationTrial {
    pub from: String,
    pub to: String,
    /// `virsh migrate`'s wall time.
    pub migration_s: f64,
    /// An appliance saw the VM's MAC arrive (its `vm-moved` event).
    pub seen_ms: Option<f64>,
    /// The observer's replicated state holds the VM at `to` (the move
    /// committed through Raft and applied there); polled every 5 ms from
    /// before the migration starts, by a thread of its own.
    pub committed_ms: f64,
    /// From the commit until every appliance, asked in turn with `kdig`
    /// every 5 ms, answers `name` with `to`'s public address.
    pub answered_ms: f64,
}

/// Live-migrates `vm` from `from` to `to` with nobody telling the cluster,
/// and times the VPN seeing the move, the commit of its new location at
/// `observer` and the DNS answer `want` for `name` at every appliance of
/// `sites`.
#[allow(clippy::too_many_arguments)]
pub fn location_after_migration(
    lab: &mut Lab,
    cluster: &Cluster,
    vm: &str,
    name: &str,
    (from, to): (&str, &str),
    observer: &str,
    sites: &[&str],
    want: &str,
) -> Result<LocationTrial> {
    let since: Vec<u64> = cluster
        .appliances
        .iter()
        .map(|a| a.last_event())
        .collect::<Result<_>>()?;
    let watcher = {
        let observer = cluster.get(observer)?.clone();
        let answering: Vec<Appliance> = sites
            .iter()
            .map(|s| cluster.get(s).cloned())
            .collect::<Result<_>>()?;
        let (vm, to, name, want) = (
            vm.to_owned(),
            to.to_owned(),
            name.to_owned(),
            want.to_owned(),
        );
        std::thread::spawn(move || -> Result<(u64, u64)> {
            sys::wait_for(
                &format!("{vm}'s location at {to} committed at {}", observer.site),
                Duration::from_secs(30),
                Duration::from_millis(5),
                || {
                    let state = observer.state()?;
                    Ok(state
                        .vms
                        .get(&vm)
                        .is_some_and(|v| v.site == to)
                        .then_some(()))
                },
            )?;
            let committed = unix_us();
            for a in &answering {
                sys::wait_for(
                    &format!("{} to answer {name} with {want}", a.site),
                    Duration::from_secs(5),
                    Duration::from_millis(5),
                    || Ok((a.dns_answer(&name) == [want.as_str()]).then_some(())),
                )?;
            }
            Ok((committed, unix_us()))
        })
    };
    let started_us = unix_us();
    let migration = lab.migrate_vm(vm, from, to)?;
    let (committed_us, answered_us) = watcher
        .join()
        .map_err(|_| anyhow::anyhow!("the location watcher panicked"))??;
    if lab.where_running(vm)?.as_deref() != Some(to) {
        bail!("{vm} does not run at {to} after the migration");
    }
    let returned_us = migration
        .returned_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i128)
        .unwrap_or(0);
    let ms_after_return = |unix_us: u64| (i128::from(unix_us) - returned_us) as f64 / 1000.0;
    let mut seen_us = None;
    for (a, &from_seq) in cluster.appliances.iter().zip(&since) {
        for e in a.events(from_seq)? {
            let this_move = e.seq > from_seq && e.at_unix_us >= started_us;
            if this_move && e.kind == "vm-moved" && e.detail.starts_with(&format!("{vm} ")) {
                seen_us = Some(seen_us.map_or(e.at_unix_us, |s: u64| s.min(e.at_unix_us)));
            }
        }
    }
    Ok(LocationTrial {
        from: from.into(),
        to: to.into(),
        migration_s: migration.wall.as_secs_f64(),
        seen_ms: seen_us.map(ms_after_return),
        committed_ms: ms_after_return(committed_us),
        answered_ms: (answered_us.saturating_sub(committed_us)) as f64 / 1000.0,
    })
}
