//! A campus's hypervisor through libvirt's API (the `virt` crate), never by
//! running `virsh`: what runs there, and live migration to another campus.
//!
//! [`Hypervisor`] is the seam the executor will drive; [`Libvirt`] is the
//! real one. Each call opens nothing new: a [`Libvirt`] holds one
//! connection to one libvirtd.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::virt_sys as sys;
use virt::connect::Connect;
use virt::domain::{Domain, JobStats, MigrateParameters};

use crate::shell::virt_sys::{self, LifecycleEvent, LifecycleWatch};

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
    #[error("no domain {name} at {uri}")]
    NoSuchDomain { uri: String, name: String },
    #[error("domain {name} at {uri} is {state}, not running: it cannot be live-migrated")]
    NotRunning {
        uri: String,
        name: String,
        state: DomainState,
    },
    #[error("live migration of {name} from {uri} was cancelled; the guest keeps running at {uri}")]
    Cancelled { uri: String, name: String },
    #[error("live migration of {name} from {uri} did not finish within {after:?} and was aborted; the guest keeps running at {uri}")]
    TimedOut {
        uri: String,
        name: String,
        after: Duration,
    },
    #[error("live migration of {name} from {uri} to {dest} failed ({cause}), and the guest is {state} at {uri}, not running: look at {dest} before restarting it")]
    LeftNotRunning {
        uri: String,
        name: String,
        dest: String,
        cause: String,
        state: String,
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
    /// The job running on it, if any: `migration out`, `migration in` or `job`.
    pub job: Option<String>,
}

/// How a live migration runs (from the inventory's migration policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationSettings {
    /// Where the migration stream goes (`tcp://HOST:PORT`,
    /// `VIR_MIGRATE_PARAM_URI`); libvirt picks from the destination's
    /// hostname if none.
    pub stream_uri: Option<String>,
    /// Cap on the stream, in MiB/s (`VIR_MIGRATE_PARAM_BANDWIDTH`).
    pub bandwidth_mib_s: Option<u64>,
    /// The longest pause of the guest libvirt may choose, in ms.
    pub max_downtime_ms: Option<u64>,
    /// Throttle a guest that dirties memory faster than the stream.
    pub auto_converge: bool,
    /// Post-copy allowed (`VIR_MIGRATE_POSTCOPY`): the job switches to
    /// post-copy once the first full pass of memory is done
    /// (`mem_iteration >= 2`) and it has not converged.
    pub post_copy: bool,
    /// XBZRLE compression of re-sent pages (`VIR_MIGRATE_COMPRESSED`).
    pub compression: bool,
    /// Parallel streams (`VIR_MIGRATE_PARALLEL`), when more than 1.
    pub parallel_connections: Option<u32>,
    /// QEMU's native TLS on the stream (`VIR_MIGRATE_TLS`).
    pub tls: bool,
    /// Abort the job when it runs longer.
    pub timeout: Option<Duration>,
    /// How often the job's stats are read.
    pub progress_every: Duration,
}

impl Default for MigrationSettings {
    fn default() -> Self {
        MigrationSettings {
            stream_uri: None,
            bandwidth_mib_s: None,
            max_downtime_ms: None,
            auto_converge: false,
            post_copy: false,
            compression: false,
            parallel_connections: None,
            tls: false,
            timeout: None,
            progress_every: Duration::from_millis(250),
        }
    }
}

/// The flags every live migration uses: the source's libvirtd connects to
/// the destination itself, the guest stays live, and the definition moves.
const BASE_FLAGS: u32 = sys::VIR_MIGRATE_PEER2PEER
    | sys::VIR_MIGRATE_LIVE
    | sys::VIR_MIGRATE_PERSIST_DEST
    | sys::VIR_MIGRATE_UNDEFINE_SOURCE;

/// The flags and typed parameters of `virDomainMigrateToURI3` for
/// `settings` (max downtime and the timeout are applied around the call).
pub fn migration_request(settings: &MigrationSettings) -> (u32, MigrateParameters) {
    let mut flags = BASE_FLAGS;
    for (on, flag) in [
        (settings.auto_converge, sys::VIR_MIGRATE_AUTO_CONVERGE),
        (settings.post_copy, sys::VIR_MIGRATE_POSTCOPY),
        (settings.compression, sys::VIR_MIGRATE_COMPRESSED),
        (settings.tls, sys::VIR_MIGRATE_TLS),
    ] {
        if on {
            flags |= flag;
        }
    }
    let parallel = settings.parallel_connections.filter(|&n| n > 1);
    if parallel.is_some() {
        flags |= sys::VIR_MIGRATE_PARALLEL;
    }
    let params = MigrateParameters {
        uri: settings.stream_uri.clone(),
        bandwidth: settings.bandwidth_mib_s,
        parallel_connections: parallel.map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
        ..Default::default()
    };
    (flags, params)
}

/// The URI the source's libvirtd dials for a peer-to-peer migration.
/// libvirt refuses a dconnuri without a host as "the same host" unless it
/// names both the unix transport and a socket
/// (`virDomainMigrateCheckNotLocal`), so `qemu:///system?socket=…` (a
/// local daemon, the unix transport implied) becomes
/// `qemu+unix:///system?socket=…`, which means the same. Others pass as
/// they are.
pub fn peer_uri(dest_uri: &str) -> String {
    match dest_uri.split_once(":///") {
        Some((scheme, rest)) if !scheme.contains('+') && dest_uri.contains("socket=") => {
            format!("{scheme}+unix:///{rest}")
        }
        _ => dest_uri.to_owned(),
    }
}

/// A running migration's stats (`virDomainGetJobStats` on the source),
/// bytes and ms.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobProgress {
    pub elapsed_ms: u64,
    pub data_total: u64,
    pub data_processed: u64,
    pub data_remaining: u64,
    /// Bytes/s, as libvirt reports it.
    pub mem_bps: u64,
    pub mem_iteration: u64,
    /// Pages/s.
    pub dirty_rate: u64,
    /// Switched to post-copy.
    pub post_copy: bool,
}

impl JobProgress {
    fn of(s: &JobStats, post_copy: bool) -> JobProgress {
        JobProgress {
            elapsed_ms: s.time_elapsed.unwrap_or(0),
            data_total: s.data_total.unwrap_or(0),
            data_processed: s.data_processed.unwrap_or(0),
            data_remaining: s.data_remaining.unwrap_or(0),
            mem_bps: s.mem_bps.unwrap_or(0),
            mem_iteration: s.mem_iteration.unwrap_or(0),
            dirty_rate: s.mem_dirty_rate.unwrap_or(0),
            post_copy,
        }
    }

    /// Whether a post-copy-allowed job should switch now: the first full
    /// pass is done and memory is still left to send.
    pub fn should_switch_to_post_copy(&self) -> bool {
        !self.post_copy && self.mem_iteration >= 2 && self.data_remaining > 0
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
    /// The job switched to post-copy.
    pub post_copy: bool,
}

/// Steers one migration from another thread.
#[derive(Debug, Clone, Default)]
pub struct MigrationControl {
    cancel: Arc<AtomicBool>,
}

impl MigrationControl {
    pub fn new() -> Self {
        Self::default()
    }
    /// Asks the migration to abort; it returns `Err(Cancelled)` soon after.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
}

/// A campus's hypervisor, as the executor sees it.
pub trait Hypervisor {
    /// Where it is reached.
    fn uri(&self) -> &str;
    /// Every domain it knows, running or not.
    fn domains(&self) -> Result<Vec<DomainReport>, HypervisorError>;
    /// One domain's report.
    fn domain(&self, name: &str) -> Result<DomainReport, HypervisorError>;
    /// Peer-to-peer live migration (`PEER2PEER | LIVE | PERSIST_DEST |
    /// UNDEFINE_SOURCE` via `virDomainMigrateToURI3`, dconnuri = `dest_uri`):
    /// this host's libvirtd connects to the destination itself. Blocks until
    /// done. Meanwhile a second thread reads the job's stats every
    /// `settings.progress_every` and calls `progress`; it aborts the job when
    /// `control` is cancelled (`Err(Cancelled)`) or past `settings.timeout`
    /// (`Err(TimedOut)`). On any failure the guest keeps running here
    /// (libvirt's rollback); if it does not, the error says so
    /// (`LeftNotRunning`).
    fn migrate(
        &self,
        name: &str,
        dest_uri: &str,
        settings: &MigrationSettings,
        control: &MigrationControl,
        progress: &(dyn Fn(&JobProgress) + Sync),
    ) -> Result<MigrationOutcome, HypervisorError>;
}

/// One connection to one libvirtd. `Sync`: virt's `Connect` and `Domain` are
/// `Send + Sync` (libvirt connections are thread-safe), so a migration can
/// block one thread while another reads the job's stats on the same
/// connection.
#[derive(Debug)]
pub struct Libvirt {
    uri: String,
    conn: Connect,
}

/// Why the stats thread aborted the job.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Cancelled,
    TimedOut(Duration),
}

impl Libvirt {
    /// Opens a connection. Registers libvirt's event loop first (once per
    /// process), so that [`Libvirt::watch_lifecycle`] works on it.
    pub fn open(uri: &str) -> Result<Libvirt, HypervisorError> {
        let connect = |e: virt::error::Error| HypervisorError::Connect {
            uri: uri.to_owned(),
            message: e.to_string(),
        };
        virt_sys::init_event_loop().map_err(connect)?;
        let conn = Connect::open(Some(uri)).map_err(connect)?;
        Ok(Libvirt {
            uri: uri.to_owned(),
            conn,
        })
    }

    /// Calls `on_event` (on libvirt's event thread; keep it short, e.g. a
    /// channel send) for every lifecycle event of every domain here (started,
    /// resumed, stopped, undefined…), until the watch is dropped.
    pub fn watch_lifecycle(
        &self,
        on_event: impl Fn(LifecycleEvent) + Send + Sync + 'static,
    ) -> Result<LifecycleWatch, HypervisorError> {
        virt_sys::watch_lifecycle(&self.conn, on_event)
            .map_err(self.call("registering for lifecycle events"))
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
            job: job_of(d),
        })
    }

    /// Whether a job (a migration) runs on domain `name` now.
    pub fn job_active(&self, name: &str) -> Result<bool, HypervisorError> {
        let d = self.lookup(name)?;
        let info = d
            .get_job_info()
            .map_err(self.call("reading a domain's job"))?;
        Ok(info.r#type != sys::VIR_DOMAIN_JOB_NONE as i32)
    }

    /// Resumes paused domain `name`.
    pub fn resume(&self, name: &str) -> Result<(), HypervisorError> {
        self.lookup(name)?
            .resume()
            .map(drop)
            .map_err(self.call("resuming a domain"))
    }

    /// Changes the bandwidth cap of domain `name`'s running migration.
    pub fn set_migration_bandwidth(&self, name: &str, mib_s: u64) -> Result<(), HypervisorError> {
        self.lookup(name)?
            .migrate_set_max_speed(mib_s, 0)
            .map(drop)
            .map_err(self.call("changing a migration's bandwidth"))
    }

    /// The stats thread: reads the job every `progress_every`, switches to
    /// post-copy when allowed and due, aborts on cancel or timeout. Returns
    /// why it aborted, if it did, and whether it switched to post-copy.
    fn steer(
        &self,
        domain: &Domain,
        settings: &MigrationSettings,
        control: &MigrationControl,
        progress: &(dyn Fn(&JobProgress) + Sync),
        done: &AtomicBool,
        start: Instant,
    ) -> (Option<Stop>, bool) {
        let tick = settings
            .progress_every
            .min(Duration::from_millis(50))
            .max(Duration::from_millis(1));
        let mut next_read = start + settings.progress_every;
        let mut post_copy = false;
        while !done.load(Ordering::SeqCst) {
            let stop = if control.is_cancelled() {
                Some(Stop::Cancelled)
            } else {
                settings
                    .timeout
                    .filter(|&t| start.elapsed() > t)
                    .map(Stop::TimedOut)
            };
            if let Some(stop) = stop {
                match virt_sys::abort_job(domain) {
                    Ok(()) => return (Some(stop), post_copy),
                    // The job may have just finished: the migration's own
                    // result says what happened.
                    Err(e) => {
                        tracing::warn!(uri = %self.uri, "aborting the migration job: {e}");
                        return (None, post_copy);
                    }
                }
            }
            if Instant::now() >= next_read {
                next_read += settings.progress_every;
                // Fails before the job starts and after it ends; skip those.
                if let Ok(stats) = virt_sys::job_stats(domain, 0) {
                    if stats.r#type != sys::VIR_DOMAIN_JOB_NONE as i32 {
                        let p = JobProgress::of(&stats, post_copy);
                        progress(&p);
                        if settings.post_copy && p.should_switch_to_post_copy() {
                            match virt_sys::start_post_copy(domain) {
                                Ok(()) => post_copy = true,
                                Err(e) => {
                                    tracing::warn!(uri = %self.uri, "switching to post-copy: {e}")
                                }
                            }
                        }
                    }
                }
            }
            std::thread::sleep(tick);
        }
        (None, post_copy)
    }

    /// The completed job's stats, read on the destination: after a
    /// peer-to-peer migration with `UNDEFINE_SOURCE` the source has
    /// forgotten the domain, while the destination keeps the incoming job's
    /// stats (downtime, bytes).
    fn completed_at(dest_uri: &str, name: &str) -> Option<JobStats> {
        let mut conn = Connect::open(Some(dest_uri)).ok()?;
        let stats = Domain::lookup_by_name(&conn, name)
            .ok()
            .and_then(|d| virt_sys::job_stats(&d, sys::VIR_DOMAIN_JOB_STATS_COMPLETED).ok());
        let _ = conn.close();
        stats
    }
}

/// The job running on `d`, in words (none when it has none or it cannot be read).
fn job_of(d: &Domain) -> Option<String> {
    let stats = virt_sys::job_stats(d, 0).ok()?;
    if stats.r#type == sys::VIR_DOMAIN_JOB_NONE as i32 {
        return None;
    }
    Some(
        match stats.operation.map(|o| o as u32) {
            Some(sys::VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT) => "migration out",
            Some(sys::VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN) => "migration in",
            _ => "job",
        }
        .to_string(),
    )
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

    fn domain(&self, name: &str) -> Result<DomainReport, HypervisorError> {
        self.report(&self.lookup(name)?)
    }

    fn migrate(
        &self,
        name: &str,
        dest_uri: &str,
        settings: &MigrationSettings,
        control: &MigrationControl,
        progress: &(dyn Fn(&JobProgress) + Sync),
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
        let (flags, params) = migration_request(settings);
        let start = Instant::now();
        let done = AtomicBool::new(false);
        let steered = Mutex::new((None, false));
        let result = std::thread::scope(|s| {
            s.spawn(|| {
                let r = self.steer(&domain, settings, control, progress, &done, start);
                *steered.lock().unwrap_or_else(|p| p.into_inner()) = r;
            });
            let r = domain.migrate_to_uri3(Some(&peer_uri(dest_uri)), params, flags);
            done.store(true, Ordering::SeqCst);
            r
        });
        let wall = start.elapsed();
        let (stop, post_copy) = *steered.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(()) => {
                let stats = Self::completed_at(dest_uri, name);
                Ok(MigrationOutcome {
                    wall,
                    downtime_ms: stats.as_ref().and_then(|s| s.downtime),
                    data_total: stats.as_ref().and_then(|s| s.data_total),
                    post_copy,
                })
            }
            Err(e) => {
                let here = self.lookup(name).and_then(|d| self.report(&d));
                let running = matches!(&here, Ok(r) if r.state == DomainState::Running);
                if !running {
                    return Err(HypervisorError::LeftNotRunning {
                        uri: self.uri.clone(),
                        name: name.to_owned(),
                        dest: dest_uri.to_owned(),
                        cause: e.to_string(),
                        state: match here {
                            Ok(r) => r.state.to_string(),
                            Err(HypervisorError::NoSuchDomain { .. }) => "gone".into(),
                            Err(other) => format!("unknown ({other})"),
                        },
                    });
                }
                Err(match stop {
                    Some(Stop::Cancelled) => HypervisorError::Cancelled {
                        uri: self.uri.clone(),
                        name: name.to_owned(),
                    },
                    Some(Stop::TimedOut(after)) => HypervisorError::TimedOut {
                        uri: self.uri.clone(),
                        name: name.to_owned(),
                        after,
                    },
                    None => HypervisorError::Call {
                        uri: self.uri.clone(),
                        what: format!("live migration of {name} to {dest_uri}"),
                        message: format!("{e}; the guest keeps running here"),
                    },
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_settings_ask_only_for_a_live_peer_to_peer_move() {
        let (flags, params) = migration_request(&MigrationSettings::default());
        assert_eq!(flags, BASE_FLAGS);
        assert!(params.uri.is_none() && params.bandwidth.is_none());
        assert!(params.parallel_connections.is_none());
        assert_eq!(
            MigrationSettings::default().progress_every,
            Duration::from_millis(250)
        );
    }

    #[test]
    fn every_setting_maps_to_its_flag_or_parameter() {
        let s = MigrationSettings {
            stream_uri: Some("tcp://10.0.0.2:49152".into()),
            bandwidth_mib_s: Some(50),
            auto_converge: true,
            post_copy: true,
            compression: true,
            parallel_connections: Some(4),
            tls: true,
            ..Default::default()
        };
        let (flags, params) = migration_request(&s);
        assert_eq!(
            flags,
            BASE_FLAGS
                | sys::VIR_MIGRATE_AUTO_CONVERGE
                | sys::VIR_MIGRATE_POSTCOPY
                | sys::VIR_MIGRATE_COMPRESSED
                | sys::VIR_MIGRATE_TLS
                | sys::VIR_MIGRATE_PARALLEL
        );
        assert_eq!(params.uri.as_deref(), Some("tcp://10.0.0.2:49152"));
        assert_eq!(params.bandwidth, Some(50));
        assert_eq!(params.parallel_connections, Some(4));
    }

    #[test]
    fn a_local_socket_is_dialled_over_the_unix_transport() {
        assert_eq!(
            peer_uri("qemu:///system?socket=/tmp/l/site-b/run/libvirt/libvirt-sock"),
            "qemu+unix:///system?socket=/tmp/l/site-b/run/libvirt/libvirt-sock"
        );
        for same in [
            "qemu+unix:///system?socket=/s",
            "qemu+tls://b1.example/system",
            "qemu+ssh://root@b1/system",
        ] {
            assert_eq!(peer_uri(same), same);
        }
    }

    #[test]
    fn one_parallel_connection_is_not_parallel() {
        let (flags, params) = migration_request(&MigrationSettings {
            parallel_connections: Some(1),
            ..Default::default()
        });
        assert_eq!(flags & sys::VIR_MIGRATE_PARALLEL, 0);
        assert!(params.parallel_connections.is_none());
    }

    #[test]
    fn post_copy_starts_after_the_first_pass_and_only_once() {
        let mut p = JobProgress {
            mem_iteration: 1,
            data_remaining: 1 << 20,
            ..Default::default()
        };
        assert!(!p.should_switch_to_post_copy());
        p.mem_iteration = 2;
        assert!(p.should_switch_to_post_copy());
        p.data_remaining = 0;
        assert!(!p.should_switch_to_post_copy(), "it converged");
        p.data_remaining = 1;
        p.post_copy = true;
        assert!(!p.should_switch_to_post_copy(), "already switched");
    }

    #[test]
    fn cancel_and_timeout_errors_say_the_guest_stays() {
        let e = HypervisorError::TimedOut {
            uri: "qemu:///a".into(),
            name: "lms1".into(),
            after: Duration::from_secs(30),
        };
        assert_eq!(
            e.to_string(),
            "live migration of lms1 from qemu:///a did not finish within 30s and was aborted; the guest keeps running at qemu:///a"
        );
        let c = MigrationControl::new();
        let seen = c.clone();
        assert!(!seen.is_cancelled());
        c.cancel();
        assert!(seen.is_cancelled());
    }
}
