//! A campus's hypervisor through libvirt's API (the `virt` crate), never by
//! running `virsh`: what runs there, and live migration to another campus.
//!
//! [`Hypervisor`] is the seam the executor will drive; [`Libvirt`] is the
//! real one. Each call opens nothing new: a [`Libvirt`] holds one
//! connection to one libvirtd.

use std::time::{Duration, Instant};

use virt::connect::Connect;
use virt::domain::{Domain, MigrateParameters};
use virt::sys;

/// Why a hypervisor call failed, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HypervisorError {
    #[error("cannot reach libvirt at {uri}: {message}")]
    Connect { uri: String, message: String },
    #[error("libvirt at {uri}: {what}: {message}")]
    Call {
        uri: String,
        what: String,
        message: String,
    },
    #[error("migration of {name} at {uri} cancelled")]
    Cancelled { uri: String, name: String },
    #[error("no domain {name} at {uri}")]
    NoSuchDomain { uri: String, name: String },
    #[error("domain {name} at {uri} is {state}, not running: it cannot be live-migrated")]
    NotRunning {
        uri: String,
        name: String,
        state: DomainState,
    },
}

/// A domain's run state, as libvirt reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DomainState {
    Running,
    Blocked,
    Paused,
    ShuttingDown,
    ShutOff,
    Crashed,
    Suspended,
    Other(u32),
}

impl DomainState {
    fn of(state: sys::virDomainState) -> DomainState {
        match state {
            sys::VIR_DOMAIN_RUNNING => DomainState::Running,
            sys::VIR_DOMAIN_BLOCKED => DomainState::Blocked,
            sys::VIR_DOMAIN_PAUSED => DomainState::Paused,
            sys::VIR_DOMAIN_SHUTDOWN => DomainState::ShuttingDown,
            sys::VIR_DOMAIN_SHUTOFF => DomainState::ShutOff,
            sys::VIR_DOMAIN_CRASHED => DomainState::Crashed,
            sys::VIR_DOMAIN_PMSUSPENDED => DomainState::Suspended,
            other => DomainState::Other(other),
        }
    }
}

impl std::fmt::Display for DomainState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DomainState::Running => f.write_str("running"),
            DomainState::Blocked => f.write_str("blocked"),
            DomainState::Paused => f.write_str("paused"),
            DomainState::ShuttingDown => f.write_str("shutting down"),
            DomainState::ShutOff => f.write_str("shut off"),
            DomainState::Crashed => f.write_str("crashed"),
            DomainState::Suspended => f.write_str("suspended"),
            DomainState::Other(n) => write!(f, "in state {n}"),
        }
    }
}

/// What a hypervisor reports of one domain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DomainReport {
    pub name: String,
    pub state: DomainState,
    /// Memory the domain has now, in KiB.
    pub memory_kib: u64,
    pub vcpus: u32,
    /// Whether the domain is defined persistently (survives a stop).
    pub persistent: bool,
}

/// How a live migration runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationSettings {
    /// Where the migration stream goes (`tcp://HOST:PORT`); libvirt picks
    /// from the destination's hostname if none.
    pub stream_uri: Option<String>,
    /// Cap on the stream, in MiB/s.
    pub bandwidth_mib_s: Option<u64>,
    /// The longest pause of the guest libvirt may choose, in ms.
    pub max_downtime_ms: Option<u64>,
    /// Throttle a guest that dirties memory faster than the stream.
    pub auto_converge: bool,
    pub post_copy: bool,
    pub compression: bool,
    pub parallel_connections: Option<u32>,
    pub tls: bool,
    pub timeout: Option<Duration>,
    pub progress_every: Duration,
}

// TEMPORARY SHIM until the virt branch lands (replaced by it).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobProgress {
    pub elapsed_ms: u64,
    pub data_total: u64,
    pub data_processed: u64,
    pub data_remaining: u64,
    pub mem_bps: u64,
    pub mem_iteration: u64,
    pub dirty_rate: u64,
    pub post_copy: bool,
}
#[derive(Debug, Clone, Default)]
pub struct MigrationControl(std::sync::Arc<std::sync::atomic::AtomicBool>);
impl MigrationControl {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst)
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// What a finished live migration took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationOutcome {
    pub wall: Duration,
    /// The guest's pause as QEMU measured it, if libvirt reported it.
    pub downtime_ms: Option<u64>,
    /// Bytes of guest memory sent, if libvirt reported it.
    pub data_total: Option<u64>,
}

/// A campus's hypervisor, as the executor sees it.
pub trait Hypervisor {
    /// Where it is reached.
    fn uri(&self) -> &str;
    /// Every domain it knows, running or not.
    fn domains(&self) -> Result<Vec<DomainReport>, HypervisorError>;
    /// Live-migrates `name` to `dest`, which then holds it persistently;
    /// the source forgets it. Returns once it runs at `dest`.
    fn migrate(
        &self,
        name: &str,
        dest: &Self,
        settings: &MigrationSettings,
    ) -> Result<MigrationOutcome, HypervisorError>;
}

/// One connection to one libvirtd.
#[derive(Debug)]
pub struct Libvirt {
    uri: String,
    conn: Connect,
}

impl Libvirt {
    pub fn open(uri: &str) -> Result<Libvirt, HypervisorError> {
        let conn = Connect::open(Some(uri)).map_err(|e| HypervisorError::Connect {
            uri: uri.to_owned(),
            message: e.to_string(),
        })?;
        Ok(Libvirt {
            uri: uri.to_owned(),
            conn,
        })
    }

    fn call(&self, what: &str) -> impl Fn(virt::error::Error) -> HypervisorError + '_ {
        let what = what.to_owned();
        move |e| HypervisorError::Call {
            uri: self.uri.clone(),
            what: what.clone(),
            message: e.to_string(),
        }
    }

    fn lookup(&self, name: &str) -> Result<Domain, HypervisorError> {
        Domain::lookup_by_name(&self.conn, name).map_err(|_| HypervisorError::NoSuchDomain {
            uri: self.uri.clone(),
            name: name.to_owned(),
        })
    }

    fn report(&self, d: &Domain) -> Result<DomainReport, HypervisorError> {
        let info = d.get_info().map_err(self.call("reading a domain"))?;
        Ok(DomainReport {
            name: d.get_name().map_err(self.call("reading a domain's name"))?,
            state: DomainState::of(info.state),
            memory_kib: info.memory,
            vcpus: info.nr_virt_cpu,
            persistent: d.is_persistent().map_err(self.call("reading a domain"))?,
        })
    }

    /// One domain's report.
    pub fn domain(&self, name: &str) -> Result<DomainReport, HypervisorError> {
        self.report(&self.lookup(name)?)
    }

    /// Whether a job (a migration) runs on domain `name` now.
    pub fn job_active(&self, name: &str) -> Result<bool, HypervisorError> {
        let d = self.lookup(name)?;
        let info = d
            .get_job_info()
            .map_err(self.call("reading a domain's job"))?;
        Ok(info.r#type != sys::VIR_DOMAIN_JOB_NONE as i32)
    }

    /// Changes the bandwidth cap of domain `name`'s running migration.
    pub fn set_migration_bandwidth(&self, name: &str, mib_s: u64) -> Result<(), HypervisorError> {
        self.lookup(name)?
            .migrate_set_max_speed(mib_s, 0)
            .map(drop)
            .map_err(self.call("changing a migration's bandwidth"))
    }

    /// Resumes paused domain `name`.
    pub fn resume(&self, name: &str) -> Result<(), HypervisorError> {
        self.lookup(name)?
            .resume()
            .map(drop)
            .map_err(self.call("resuming a domain"))
    }

    pub fn migrate(
        &self,
        name: &str,
        dest_uri: &str,
        settings: &MigrationSettings,
        _control: &MigrationControl,
        _progress: &(dyn Fn(&JobProgress) + Sync),
    ) -> Result<MigrationOutcome, HypervisorError> {
        let dest = Libvirt::open(dest_uri)?;
        Hypervisor::migrate(self, name, &dest, settings)
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        // virt's Connect does not close itself.
        if let Err(e) = self.conn.close() {
            tracing::warn!(uri = %self.uri, "closing the libvirt connection: {e}");
        }
    }
}

impl Hypervisor for Libvirt {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn domains(&self) -> Result<Vec<DomainReport>, HypervisorError> {
        let all = self
            .conn
            .list_all_domains(0)
            .map_err(self.call("listing domains"))?;
        let mut out = all
            .iter()
            .map(|d| self.report(d))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn migrate(
        &self,
        name: &str,
        dest: &Libvirt,
        settings: &MigrationSettings,
    ) -> Result<MigrationOutcome, HypervisorError> {
        let domain = self.lookup(name)?;
        let state = self.report(&domain)?.state;
        if state != DomainState::Running {
            return Err(HypervisorError::NotRunning {
                uri: self.uri.clone(),
                name: name.to_owned(),
                state,
            });
        }
        if let Some(ms) = settings.max_downtime_ms {
            domain
                .migrate_set_max_downtime(ms, 0)
                .map_err(self.call("setting the maximum downtime"))?;
        }
        let params = MigrateParameters {
            uri: settings.stream_uri.clone(),
            bandwidth: settings.bandwidth_mib_s,
            ..Default::default()
        };
        let mut flags = sys::VIR_MIGRATE_LIVE
            | sys::VIR_MIGRATE_PERSIST_DEST
            | sys::VIR_MIGRATE_UNDEFINE_SOURCE;
        if settings.auto_converge {
            flags |= sys::VIR_MIGRATE_AUTO_CONVERGE;
        }
        let start = Instant::now();
        let moved = domain
            .migrate3(&dest.conn, params, flags)
            .map_err(self.call(&format!("live migration of {name} to {}", dest.uri)))?;
        let wall = start.elapsed();
        let stats = moved
            .get_job_stats(sys::VIR_DOMAIN_JOB_STATS_COMPLETED)
            .ok();
        Ok(MigrationOutcome {
            wall,
            downtime_ms: stats.as_ref().and_then(|s| s.downtime),
            data_total: stats.as_ref().and_then(|s| s.data_total),
        })
    }
}
