//! Runs the node's migration orders on libvirt, each on a thread of its own
//! (libvirt's calls block), and hands their progress and outcome back to the
//! appliance's loop as [`ExecEvent`]s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::core::moves::{Encryption, MoveId, MoveProgress, MoveResult};
use crate::core::node::MigrationOrder;
use crate::shell::libvirt::{
    DomainState, Hypervisor, HypervisorError, JobProgress, Libvirt, MigrationControl,
    MigrationSettings,
};

/// What a migration thread reports.
#[derive(Debug)]
pub enum ExecEvent {
    Progress { id: MoveId, progress: MoveProgress },
    Done { id: MoveId, result: MoveResult },
}

/// How long a resolver waits for a migration job it finds still running.
const RESOLVE_POLL: Duration = Duration::from_secs(1);

/// The migrations this appliance runs now.
#[derive(Debug, Clone)]
pub struct Executor {
    tx: mpsc::UnboundedSender<ExecEvent>,
    running: Arc<Mutex<HashMap<MoveId, MigrationControl>>>,
    /// Move → (VM, source URI) of the migrations running.
    orders: Arc<Mutex<HashMap<MoveId, (String, String)>>>,
}

impl Executor {
    pub fn new(tx: mpsc::UnboundedSender<ExecEvent>) -> Executor {
        Executor {
            tx,
            running: Arc::default(),
            orders: Arc::default(),
        }
    }

    /// Starts `order` on a thread of its own.
    pub fn migrate(&self, order: MigrationOrder) {
        let control = MigrationControl::new();
        if let Ok(mut r) = self.running.lock() {
            r.insert(order.id.clone(), control.clone());
        }
        if let Ok(mut o) = self.orders.lock() {
            o.insert(
                order.id.clone(),
                (order.vm.clone(), order.source_uri.clone()),
            );
        }
        let this = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("move-{}", order.id))
            .spawn(move || {
                let result = run(&order, &control, &this.tx);
                if let Ok(mut r) = this.running.lock() {
                    r.remove(&order.id);
                }
                if let Ok(mut o) = this.orders.lock() {
                    o.remove(&order.id);
                }
                let _ = this.tx.send(ExecEvent::Done {
                    id: order.id,
                    result,
                });
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start a migration thread: {e}");
        }
    }

    /// Aborts the running migration of move `id`, if this appliance runs it.
    pub fn abort(&self, id: &str) {
        match self.running.lock().ok().and_then(|r| r.get(id).cloned()) {
            Some(control) => control.cancel(),
            None => tracing::warn!(id, "cancel of a migration this appliance does not run"),
        }
    }

    /// Changes the cap of move `id`'s running migration.
    pub fn set_bandwidth(&self, id: &str, mib_s: u64) {
        let Some((vm, uri)) = self.orders.lock().ok().and_then(|o| o.get(id).cloned()) else {
            return;
        };
        std::thread::spawn(move || {
            let r = Libvirt::open(&uri).and_then(|l| l.set_migration_bandwidth(&vm, mib_s));
            if let Err(e) = r {
                tracing::warn!(%vm, "cannot change the migration's bandwidth to {mib_s} MiB/s: {e}");
            }
        });
    }

    /// Finds out where the VM of `order` runs, for a move whose first
    /// executor is gone, and reports the outcome.
    pub fn resolve(&self, order: MigrationOrder) {
        let tx = self.tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("resolve-{}", order.id))
            .spawn(move || {
                let result = resolve(&order);
                let _ = tx.send(ExecEvent::Done {
                    id: order.id,
                    result,
                });
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start a resolver thread: {e}");
        }
    }
}

/// The libvirt settings of an order.
pub fn settings(order: &MigrationOrder) -> MigrationSettings {
    let p = &order.policy;
    MigrationSettings {
        stream_uri: order.stream_uri.clone(),
        bandwidth_mib_s: order.bandwidth_mib_s,
        max_downtime_ms: Some(p.max_downtime_ms),
        auto_converge: p.auto_converge,
        post_copy: order.post_copy,
        compression: p.compression,
        parallel_connections: (p.parallel_connections > 1).then_some(p.parallel_connections),
        tls: p.encryption == Encryption::Tls,
        timeout: Some(Duration::from_secs(p.timeout_s)),
        ..MigrationSettings::default()
    }
}

fn progress_of(p: &JobProgress) -> MoveProgress {
    MoveProgress {
        elapsed_ms: p.elapsed_ms,
        data_total: p.data_total,
        data_processed: p.data_processed,
        data_remaining: p.data_remaining,
        mem_bps: p.mem_bps,
        mem_iteration: p.mem_iteration,
        post_copy: p.post_copy,
    }
}

fn failed(reason: impl Into<String>) -> MoveResult {
    MoveResult::Failed {
        reason: reason.into(),
    }
}

/// Live-migrates, then confirms at the destination; on failure, says where
/// the VM runs (libvirt keeps it at the source; a paused source is resumed).
fn run(
    order: &MigrationOrder,
    control: &MigrationControl,
    tx: &mpsc::UnboundedSender<ExecEvent>,
) -> MoveResult {
    let src = match Libvirt::open(&order.source_uri) {
        Ok(s) => s,
        Err(e) => return failed(format!("{e}; {} was not touched", order.vm)),
    };
    let start = Instant::now();
    let report = |p: &JobProgress| {
        let _ = tx.send(ExecEvent::Progress {
            id: order.id.clone(),
            progress: progress_of(p),
        });
    };
    let outcome = src.migrate(
        &order.vm,
        &order.dest_uri,
        &settings(order),
        control,
        &report,
    );
    match outcome {
        Ok(o) => match confirm_at(&order.dest_uri, &order.vm) {
            Ok(()) => MoveResult::Done {
                downtime_ms: o.downtime_ms,
                data_total: o.data_total,
                wall_ms: o.wall.as_millis() as u64,
            },
            Err(e) => failed(format!(
                "libvirt said the migration finished, but the destination does not show {} running: {e}",
                order.vm
            )),
        },
        Err(HypervisorError::Cancelled { .. }) => MoveResult::Cancelled {
            reason: format!(
                "aborted by an operator after {:.1} s; {}",
                start.elapsed().as_secs_f64(),
                at_source(&src, &order.vm, &order.source_host)
            ),
        },
        Err(e) => failed(format!(
            "{e}; {}",
            at_source(&src, &order.vm, &order.source_host)
        )),
    }
}

/// Whether libvirt at `uri` runs `vm`.
fn confirm_at(uri: &str, vm: &str) -> Result<(), HypervisorError> {
    let dest = Libvirt::open(uri)?;
    let d = dest.domain(vm)?;
    if d.state == DomainState::Running {
        Ok(())
    } else {
        Err(HypervisorError::NotRunning {
            uri: uri.to_string(),
            name: vm.to_string(),
            state: d.state,
        })
    }
}

/// Where the VM is after a failed migration, in words; resumes it at the
/// source if libvirt left it paused there.
fn at_source(src: &Libvirt, vm: &str, host: &str) -> String {
    match src.domain(vm) {
        Ok(d) if d.state == DomainState::Running => format!("{vm} still runs at {host}"),
        Ok(d) if d.state == DomainState::Paused => match src.resume(vm) {
            Ok(()) => format!("{vm} was left paused at {host} and was resumed"),
            Err(e) => format!("{vm} is paused at {host} and could not be resumed: {e}"),
        },
        Ok(d) => format!("{vm} is {} at {host}", d.state),
        Err(e) => format!("{vm} is not found at {host}: {e}"),
    }
}

/// A taken-over move: wait for a job still running at the source, then see
/// where the VM runs.
fn resolve(order: &MigrationOrder) -> MoveResult {
    let limit = Instant::now() + Duration::from_secs(order.policy.timeout_s);
    loop {
        if confirm_at(&order.dest_uri, &order.vm).is_ok() {
            return MoveResult::Done {
                downtime_ms: None,
                data_total: None,
                wall_ms: 0,
            };
        }
        let src = match Libvirt::open(&order.source_uri) {
            Ok(s) => s,
            Err(e) => {
                return failed(format!(
                    "the appliance driving it is gone, {} does not run at {}, and the source cannot be read: {e}",
                    order.vm, order.dest_host
                ))
            }
        };
        match src.job_active(&order.vm) {
            Ok(true) if Instant::now() < limit => {
                drop(src);
                std::thread::sleep(RESOLVE_POLL);
                continue;
            }
            Ok(true) => {
                return failed(format!(
                    "the appliance driving it is gone and its job at {} outlived the timeout",
                    order.source_host
                ))
            }
            _ => {}
        }
        return failed(format!(
            "the appliance driving it stopped before it finished; {}",
            at_source(&src, &order.vm, &order.source_host)
        ));
    }
}
