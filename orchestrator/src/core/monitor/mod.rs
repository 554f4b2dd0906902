//! Service monitors: which appliance watches which VM, and the pure core that
//! turns check results into "VM failed" and "VM recovered" decisions.
//!
//! Every VM has a priority-1 (P1) and a priority-2 (P2) watcher among the live
//! appliances ([`assign_watchers`]). Only the active watcher checks a VM: P1
//! while it is live, P2 while P1 is gone ([`active_watcher`]).
//!
//! [`Monitor`] is the state machine of one appliance. It reads no clock and
//! does no I/O: the caller passes the time (`now`, a [`Duration`] since any
//! fixed origin), runs the [`CheckRequest`]s that [`Monitor::due`] returns
//! (see [`crate::shell::checks::run_check`]) and feeds each result back through
//! [`Monitor::on_result`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use thiserror::Error;

pub use crate::core::state::{NodeId, VmId};

mod watchers;
pub use watchers::{active_watcher, assign_watchers, Watchers};

/// How a service is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceCheck {
    /// A TCP connection to `port` is accepted.
    Tcp { port: u16 },
    /// `GET path` over HTTP/1.0 to `port` answers `expect_status`.
    Http {
        port: u16,
        path: String,
        expect_status: u16,
    },
}

/// Timing and thresholds of a VM's checks.
///
/// The defaults (interval 200 ms, timeout 500 ms, 3 failures, 1 success) declare
/// a VM that refuses connections failed after about 0.6 s, and one that no
/// longer answers at all after about 1.5 s: a check in flight is not repeated,
/// so a silent VM costs one timeout per check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorConfig {
    /// Time between the starts of two checks of one kind. Default 200 ms.
    pub interval: Duration,
    /// How long one check may take before it counts as failed. Default 500 ms.
    pub timeout: Duration,
    /// Consecutive failed checks of one kind that declare the VM failed.
    /// Default 3; 0 counts as 1.
    pub failures_to_declare: u32,
    /// Consecutive successes of every check kind that declare a failed VM
    /// recovered. Default 1: a VM that answers both checks is serving, and the
    /// `failures_to_declare` streak it needs to fail again already damps
    /// flapping. 0 counts as 1.
    pub successes_to_recover: u32,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(500),
            failures_to_declare: 3,
            successes_to_recover: 1,
        }
    }
}

/// A [`MonitorConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidMonitorConfig {
    #[error("monitor interval must be longer than zero")]
    ZeroInterval,
    #[error("monitor timeout must be longer than zero")]
    ZeroTimeout,
    #[error("failures_to_declare must be at least 1")]
    ZeroFailures,
    #[error("successes_to_recover must be at least 1")]
    ZeroSuccesses,
}

impl MonitorConfig {
    /// Rejects values that would check in a busy loop or never decide.
    pub fn validate(&self) -> Result<(), InvalidMonitorConfig> {
        if self.interval.is_zero() {
            return Err(InvalidMonitorConfig::ZeroInterval);
        }
        if self.timeout.is_zero() {
            return Err(InvalidMonitorConfig::ZeroTimeout);
        }
        if self.failures_to_declare == 0 {
            return Err(InvalidMonitorConfig::ZeroFailures);
        }
        if self.successes_to_recover == 0 {
            return Err(InvalidMonitorConfig::ZeroSuccesses);
        }
        Ok(())
    }
}

/// What is checked for one VM and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmTarget {
    /// The VM's address on the service segment; the network check pings it
    /// and the service check connects to it.
    pub addr: Ipv4Addr,
    pub service: ServiceCheck,
    pub config: MonitorConfig,
}

/// The two checks every watched VM gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CheckKind {
    /// ICMP echo to the VM's address: is the VM on the network?
    Network,
    /// The VM's [`ServiceCheck`]: does it serve?
    Service,
}

impl CheckKind {
    const ALL: [CheckKind; 2] = [CheckKind::Network, CheckKind::Service];
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckKind::Network => "network",
            CheckKind::Service => "service",
        })
    }
}

/// A check the caller must run now and report through [`Monitor::on_result`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRequest {
    pub vm: VmId,
    pub kind: CheckKind,
    pub target: VmTarget,
    pub timeout: Duration,
}

/// Why a VM was declared failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureReason {
    pub kind: CheckKind,
    pub consecutive_failures: u32,
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} consecutive {} checks failed",
            self.consecutive_failures, self.kind
        )
    }
}

/// A decision of the monitor, for the audit log and the evacuation planner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorEvent {
    /// `by` saw `failures_to_declare` consecutive failed checks of the VM.
    VmFailed {
        vm: VmId,
        by: NodeId,
        reason: FailureReason,
    },
    /// `by` saw a VM it had declared failed pass every check again.
    VmRecovered { vm: VmId, by: NodeId },
    /// This appliance, the VM's P2, now checks the VM because `from` (its P1)
    /// is no longer live.
    TookOver { vm: VmId, from: NodeId },
}

/// Schedule and streak of one kind of check of one VM.
#[derive(Debug, Clone, Copy, Default)]
struct CheckState {
    /// When the next check may start; zero means at the next [`Monitor::due`].
    next_due: Duration,
    /// When the check in flight started.
    in_flight_since: Option<Duration>,
    failures: u32,
    successes: u32,
}

#[derive(Debug, Clone)]
struct WatchedVm {
    watchers: Watchers,
    target: VmTarget,
    /// Whether this appliance is the active watcher. Checks and streaks exist
    /// only while it is; becoming active starts from a clean slate.
    active: bool,
    network: CheckState,
    service: CheckState,
    failed: bool,
}

impl WatchedVm {
    fn new(watchers: Watchers, target: VmTarget) -> Self {
        Self {
            watchers,
            target,
            active: false,
            network: CheckState::default(),
            service: CheckState::default(),
            failed: false,
        }
    }

    fn check(&mut self, kind: CheckKind) -> &mut CheckState {
        match kind {
            CheckKind::Network => &mut self.network,
            CheckKind::Service => &mut self.service,
        }
    }

    fn reset(&mut self) {
        self.network = CheckState::default();
        self.service = CheckState::default();
        self.failed = false;
    }

    /// A check whose result has not come back within timeout plus interval is
    /// taken as lost (the shell bounds every check by its timeout), so a lost
    /// result cannot stop the monitoring of a VM.
    fn lost_after(&self, since: Duration) -> Duration {
        since + self.target.config.timeout + self.target.config.interval
    }
}

/// The service monitor of one appliance.
#[derive(Debug, Clone)]
pub struct Monitor {
    local: NodeId,
    live: BTreeSet<NodeId>,
    vms: BTreeMap<VmId, WatchedVm>,
}

impl Monitor {
    /// A monitor for appliance `local`, watching nothing yet.
    pub fn new(local: NodeId) -> Self {
        Self {
            local,
            live: BTreeSet::new(),
            vms: BTreeMap::new(),
        }
    }

    pub fn local(&self) -> NodeId {
        self.local
    }

    /// Replaces the VMs and their watchers. A VM whose watchers and target
    /// are unchanged keeps its schedule and streaks; any other starts afresh.
    pub fn set_assignments(
        &mut self,
        assignments: BTreeMap<VmId, (Watchers, VmTarget)>,
    ) -> Vec<MonitorEvent> {
        let mut previous = std::mem::take(&mut self.vms);
        for (vm, (watchers, target)) in assignments {
            let watched = match previous.remove(&vm) {
                Some(old) if old.watchers == watchers && old.target == target => old,
                _ => WatchedVm::new(watchers, target),
            };
            self.vms.insert(vm, watched);
        }
        self.refresh_roles()
    }

    /// Replaces the set of live appliances, as the failure detector sees it.
    pub fn set_live(&mut self, live: BTreeSet<NodeId>) -> Vec<MonitorEvent> {
        self.live = live;
        self.refresh_roles()
    }

    /// Whether this appliance is the active watcher of `vm`.
    pub fn is_watching(&self, vm: &str) -> bool {
        self.vms.get(vm).is_some_and(|w| w.active)
    }

    /// Whether this appliance has declared `vm` failed and not yet recovered.
    pub fn is_failed(&self, vm: &str) -> bool {
        self.vms.get(vm).is_some_and(|w| w.failed)
    }

    fn refresh_roles(&mut self) -> Vec<MonitorEvent> {
        let mut events = Vec::new();
        for (vm, watched) in &mut self.vms {
            let active = active_watcher(&watched.watchers, &self.live) == Some(self.local);
            if active == watched.active {
                continue;
            }
            watched.active = active;
            watched.reset();
            if active && watched.watchers.p1 != self.local {
                events.push(MonitorEvent::TookOver {
                    vm: vm.clone(),
                    from: watched.watchers.p1,
                });
            }
        }
        events
    }

    /// The checks to start now: only for VMs this appliance actively watches,
    /// at most one of each kind in flight per VM.
    pub fn due(&mut self, now: Duration) -> Vec<CheckRequest> {
        let mut requests = Vec::new();
        for (vm, watched) in self.vms.iter_mut().filter(|(_, w)| w.active) {
            for kind in CheckKind::ALL {
                let check = *watched.check(kind);
                let idle = match check.in_flight_since {
                    None => true,
                    Some(since) => now >= watched.lost_after(since),
                };
                if idle && now >= check.next_due {
                    let interval = watched.target.config.interval;
                    let state = watched.check(kind);
                    state.in_flight_since = Some(now);
                    state.next_due = now + interval;
                    requests.push(CheckRequest {
                        vm: vm.clone(),
                        kind,
                        target: watched.target.clone(),
                        timeout: watched.target.config.timeout,
                    });
                }
            }
        }
        requests
    }

    /// Takes the result of a check from [`Monitor::due`]. Results for a VM this
    /// appliance no longer watches, or for a check not in flight, are ignored.
    pub fn on_result(
        &mut self,
        vm: &str,
        kind: CheckKind,
        ok: bool,
        now: Duration,
    ) -> Vec<MonitorEvent> {
        let local = self.local;
        let Some(watched) = self.vms.get_mut(vm).filter(|w| w.active) else {
            return Vec::new();
        };
        let config = watched.target.config;
        let state = watched.check(kind);
        if state.in_flight_since.take().is_none() {
            return Vec::new();
        }
        // A check that outlived the interval is followed at once, and the
        // deadline we report never lies in the past.
        state.next_due = state.next_due.max(now);
        if ok {
            state.failures = 0;
            state.successes = state.successes.saturating_add(1);
        } else {
            state.successes = 0;
            state.failures = state.failures.saturating_add(1);
        }
        let failures = state.failures;
        if !watched.failed && failures >= config.failures_to_declare.max(1) {
            watched.failed = true;
            return vec![MonitorEvent::VmFailed {
                vm: vm.to_string(),
                by: local,
                reason: FailureReason {
                    kind,
                    consecutive_failures: failures,
                },
            }];
        }
        let needed = config.successes_to_recover.max(1);
        if watched.failed
            && watched.network.successes >= needed
            && watched.service.successes >= needed
        {
            watched.failed = false;
            return vec![MonitorEvent::VmRecovered {
                vm: vm.to_string(),
                by: local,
            }];
        }
        Vec::new()
    }

    /// When [`Monitor::due`] will next have something to return, if ever.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.vms
            .values()
            .filter(|w| w.active)
            .flat_map(|w| {
                [w.network, w.service]
                    .into_iter()
                    .map(move |c| match c.in_flight_since {
                        Some(since) => w.lost_after(since),
                        None => c.next_due,
                    })
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(service: ServiceCheck) -> VmTarget {
        VmTarget {
            // TEST-NET-1: the core never sends anything anywhere.
            addr: Ipv4Addr::new(192, 0, 2, 10),
            service,
            config: MonitorConfig::default(),
        }
    }

    fn http_target() -> VmTarget {
        target(ServiceCheck::Http {
            port: 80,
            path: "/login/index.php".into(),
            expect_status: 200,
        })
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn live(nodes: &[NodeId]) -> BTreeSet<NodeId> {
        nodes.iter().copied().collect()
    }

    /// Node `local` of a cluster {1, 2, 3}: lms1 has P1 1 and P2 2, lms2 has
    /// P1 2 and P2 3.
    fn monitor(local: NodeId, config: MonitorConfig) -> Monitor {
        let mut m = Monitor::new(local);
        let mut lms1 = http_target();
        lms1.config = config;
        let mut lms2 = target(ServiceCheck::Tcp { port: 443 });
        lms2.config = config;
        let assignments = BTreeMap::from([
            ("lms1".to_string(), (Watchers { p1: 1, p2: Some(2) }, lms1)),
            ("lms2".to_string(), (Watchers { p1: 2, p2: Some(3) }, lms2)),
        ]);
        assert!(m.set_assignments(assignments).is_empty());
        assert!(m.set_live(live(&[1, 2, 3])).is_empty());
        m
    }

    fn due_for(m: &mut Monitor, now: Duration) -> Vec<(VmId, CheckKind)> {
        m.due(now).into_iter().map(|r| (r.vm, r.kind)).collect()
    }

    /// Runs the checks due at `now` for `vm`, answering `network` and
    /// `service`; returns what the monitor decided.
    fn round(
        m: &mut Monitor,
        vm: &str,
        now: Duration,
        network: bool,
        service: bool,
    ) -> Vec<MonitorEvent> {
        let requests: Vec<CheckRequest> = m.due(now).into_iter().filter(|r| r.vm == vm).collect();
        assert_eq!(requests.len(), 2, "both checks of {vm} due at {now:?}");
        requests
            .into_iter()
            .flat_map(|r| {
                let ok = match r.kind {
                    CheckKind::Network => network,
                    CheckKind::Service => service,
                };
                m.on_result(vm, r.kind, ok, now + ms(1))
            })
            .collect()
    }

    #[test]
    fn only_the_active_watcher_gets_due_checks() {
        let config = MonitorConfig::default();
        let (mut m1, mut m2, mut m3) = (monitor(1, config), monitor(2, config), monitor(3, config));
        let lms1 = |kind| ("lms1".to_string(), kind);
        let lms2 = |kind| ("lms2".to_string(), kind);
        assert_eq!(
            due_for(&mut m1, ms(0)),
            [lms1(CheckKind::Network), lms1(CheckKind::Service)]
        );
        assert_eq!(
            due_for(&mut m2, ms(0)),
            [lms2(CheckKind::Network), lms2(CheckKind::Service)]
        );
        assert_eq!(due_for(&mut m3, ms(0)), []);
        assert_eq!(m3.next_deadline(), None);
        let request = &monitor(1, config).due(ms(0))[1];
        assert_eq!(request.target, http_target());
        assert_eq!(request.timeout, ms(500));
    }

    #[test]
    fn checks_repeat_every_interval_one_at_a_time() {
        let mut m = monitor(1, MonitorConfig::default());
        assert_eq!(m.next_deadline(), Some(ms(0)));
        assert_eq!(m.due(ms(0)).len(), 2);
        assert_eq!(m.due(ms(50)).len(), 0, "checks in flight are not repeated");
        assert!(m
            .on_result("lms1", CheckKind::Network, true, ms(30))
            .is_empty());
        assert!(m
            .on_result("lms1", CheckKind::Service, true, ms(40))
            .is_empty());
        assert_eq!(m.next_deadline(), Some(ms(200)));
        assert_eq!(m.due(ms(199)).len(), 0);
        assert_eq!(m.due(ms(200)).len(), 2);

        // A check that outlives the interval is followed as soon as it ends.
        assert!(m
            .on_result("lms1", CheckKind::Network, false, ms(700))
            .is_empty());
        assert_eq!(m.next_deadline(), Some(ms(700)));
        assert_eq!(
            due_for(&mut m, ms(700)),
            [("lms1".into(), CheckKind::Network)]
        );
    }

    #[test]
    fn a_lost_result_does_not_stop_the_checks() {
        let mut m = monitor(1, MonitorConfig::default());
        assert_eq!(m.due(ms(0)).len(), 2);
        // Timeout (500 ms) plus interval (200 ms) later, both are sent again.
        assert_eq!(m.next_deadline(), Some(ms(700)));
        assert_eq!(m.due(ms(699)).len(), 0);
        assert_eq!(m.due(ms(700)).len(), 2);
    }

    #[test]
    fn p2_takes_over_within_one_interval_after_p1_leaves() {
        let config = MonitorConfig::default();
        let mut m2 = monitor(2, config);
        let mut now = ms(0);
        while now < ms(1000) {
            assert!(m2.due(now).iter().all(|r| r.vm == "lms2"));
            now += ms(10);
        }
        let left_at = now;
        assert_eq!(
            m2.set_live(live(&[2, 3])),
            [MonitorEvent::TookOver {
                vm: "lms1".into(),
                from: 1
            }]
        );
        assert!(m2.is_watching("lms1"));
        let deadline = m2.next_deadline().expect("lms1 is due");
        assert!(deadline <= left_at + config.interval, "{deadline:?}");
        let first: Vec<CheckRequest> = m2
            .due(left_at)
            .into_iter()
            .filter(|r| r.vm == "lms1")
            .collect();
        assert_eq!(first.len(), 2);

        // P1 comes back: P2 stops and ignores results still in flight.
        assert!(m2.set_live(live(&[1, 2, 3])).is_empty());
        assert!(!m2.is_watching("lms1"));
        for r in first {
            assert!(m2
                .on_result("lms1", r.kind, false, left_at + ms(5))
                .is_empty());
        }
        assert!(m2.due(left_at + ms(1000)).iter().all(|r| r.vm == "lms2"));
    }

    #[test]
    fn p2_takes_over_at_assignment_when_p1_is_already_gone() {
        let mut m = Monitor::new(2);
        assert!(m.set_live(live(&[2, 3])).is_empty());
        let events = m.set_assignments(BTreeMap::from([(
            "lms1".to_string(),
            (Watchers { p1: 1, p2: Some(2) }, http_target()),
        )]));
        assert_eq!(
            events,
            [MonitorEvent::TookOver {
                vm: "lms1".into(),
                from: 1
            }]
        );
        // Nobody watches a VM whose P1 and P2 are both gone.
        assert_eq!(
            active_watcher(&Watchers { p1: 1, p2: Some(2) }, &live(&[3])),
            None
        );
        assert_eq!(
            active_watcher(&Watchers { p1: 1, p2: None }, &live(&[2])),
            None
        );
    }

    #[test]
    fn n_consecutive_failures_declare_a_vm_failed_and_n_minus_one_do_not() {
        for n in 1..=6 {
            let config = MonitorConfig {
                failures_to_declare: n,
                ..MonitorConfig::default()
            };
            let mut m = monitor(1, config);
            let mut now = ms(0);
            for _ in 1..n {
                assert!(
                    round(&mut m, "lms1", now, true, false).is_empty(),
                    "N = {n}"
                );
                now += config.interval;
            }
            assert!(!m.is_failed("lms1"));
            assert_eq!(
                round(&mut m, "lms1", now, true, false),
                [MonitorEvent::VmFailed {
                    vm: "lms1".into(),
                    by: 1,
                    reason: FailureReason {
                        kind: CheckKind::Service,
                        consecutive_failures: n
                    }
                }],
                "N = {n}"
            );
            assert!(m.is_failed("lms1"));
            now += config.interval;
            assert!(
                round(&mut m, "lms1", now, true, false).is_empty(),
                "declared once"
            );
        }
    }

    #[test]
    fn a_success_breaks_the_failure_streak() {
        let mut m = monitor(1, MonitorConfig::default());
        let outcomes = [false, false, true, false, false, true, false, false];
        for (i, ok) in outcomes.into_iter().enumerate() {
            let now = ms(200 * i as u64);
            assert!(round(&mut m, "lms1", now, ok, true).is_empty(), "round {i}");
        }
        assert!(!m.is_failed("lms1"));
    }

    #[test]
    fn a_failed_vm_recovers_when_both_checks_pass() {
        let mut m = monitor(1, MonitorConfig::default());
        for i in 0..3 {
            round(&mut m, "lms1", ms(200 * i), false, false);
        }
        assert!(m.is_failed("lms1"));
        assert!(round(&mut m, "lms1", ms(600), true, false).is_empty());
        assert_eq!(
            round(&mut m, "lms1", ms(800), true, true),
            [MonitorEvent::VmRecovered {
                vm: "lms1".into(),
                by: 1
            }]
        );
        assert!(!m.is_failed("lms1"));
    }

    #[test]
    fn recovery_can_require_several_successes() {
        let config = MonitorConfig {
            successes_to_recover: 3,
            ..MonitorConfig::default()
        };
        let mut m = monitor(1, config);
        for i in 0..3 {
            round(&mut m, "lms1", ms(200 * i), true, false);
        }
        assert!(m.is_failed("lms1"));
        assert!(round(&mut m, "lms1", ms(600), true, true).is_empty());
        assert!(round(&mut m, "lms1", ms(800), true, true).is_empty());
        assert_eq!(round(&mut m, "lms1", ms(1000), true, true).len(), 1);
        assert!(!m.is_failed("lms1"));
    }

    #[test]
    fn reassigning_the_same_vm_keeps_its_streak_and_a_new_target_resets_it() {
        let mut m = monitor(1, MonitorConfig::default());
        round(&mut m, "lms1", ms(0), false, true);
        round(&mut m, "lms1", ms(200), false, true);
        let same = BTreeMap::from([(
            "lms1".to_string(),
            (Watchers { p1: 1, p2: Some(2) }, http_target()),
        )]);
        assert!(m.set_assignments(same.clone()).is_empty());
        assert_eq!(round(&mut m, "lms1", ms(400), false, true).len(), 1);

        let mut m = monitor(1, MonitorConfig::default());
        round(&mut m, "lms1", ms(0), false, true);
        round(&mut m, "lms1", ms(200), false, true);
        let mut moved = same;
        moved.get_mut("lms1").expect("lms1").1.addr = Ipv4Addr::new(192, 0, 2, 11);
        assert!(m.set_assignments(moved).is_empty());
        assert!(round(&mut m, "lms1", ms(400), false, true).is_empty());
        assert!(!m.is_watching("lms2"), "a VM no longer assigned is dropped");
    }

    #[test]
    fn zero_thresholds_act_as_one_and_fail_validation() {
        let config = MonitorConfig {
            failures_to_declare: 0,
            ..MonitorConfig::default()
        };
        assert_eq!(config.validate(), Err(InvalidMonitorConfig::ZeroFailures));
        let mut m = monitor(1, config);
        assert_eq!(round(&mut m, "lms1", ms(0), false, true).len(), 1);

        assert_eq!(MonitorConfig::default().validate(), Ok(()));
        let zero_interval = MonitorConfig {
            interval: Duration::ZERO,
            ..MonitorConfig::default()
        };
        assert_eq!(
            zero_interval.validate().map_err(|e| e.to_string()),
            Err("monitor interval must be longer than zero".to_string())
        );
    }

    #[test]
    fn failure_reason_reads_as_a_sentence() {
        let reason = FailureReason {
            kind: CheckKind::Network,
            consecutive_failures: 3,
        };
        assert_eq!(reason.to_string(), "3 consecutive network checks failed");
    }
}
