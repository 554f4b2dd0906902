//! The replicated state: the one source of truth every appliance holds.
//!
//! It changes only through typed [`Command`]s that the Raft log has committed,
//! applied in log order by [`ClusterState::apply`], a pure function. Reads are
//! served from each appliance's applied copy. Reconcilers (DNS, NAT, flows)
//! follow it through [`StateChange`]s on a watch stream.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::moves::{
    self, Intent, MigrationPolicy, Move, MoveId, MoveProgress, MoveResult, Plan, Refusal,
};

/// An appliance's Raft id (nonzero).
pub type NodeId = u64;
/// A campus (or the witness site), e.g. `a`.
pub type SiteId = String;
/// A VM's name, unique in the consortium, e.g. `lms1`.
pub type VmId = String;

/// A campus or a witness site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Site {
    pub id: SiteId,
    /// Latitude and longitude (degrees), matched against alert areas.
    pub location: Option<(f64, f64)>,
    /// A witness votes and stores state but runs no dataplane.
    pub witness: bool,
}

/// One hinan appliance, a voter in the Raft group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Appliance {
    pub id: NodeId,
    pub name: String,
    pub site: SiteId,
}

/// A hypervisor host at a site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    pub site: SiteId,
    pub cpu_mhz: u64,
    pub memory_mib: u64,
    /// How the site's appliance reaches the host's libvirt (e.g.
    /// `qemu+tls://b1.campus-b/system`); empty in states from before the inventory.
    #[serde(default)]
    pub libvirt_uri: String,
    /// Where migration streams to this host go (its address on the service
    /// segment, so that they cross the WAN inside the VPN); empty if undeclared.
    #[serde(default)]
    pub migration_address: String,
}

/// A domain as the hypervisor that holds it reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningDomain {
    pub name: String,
    /// libvirt's state in words (`running`, `paused`, `shut off`…).
    pub state: String,
    pub memory_kib: u64,
    /// The job running on it (`migration out`, `migration in`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

impl RunningDomain {
    pub fn is_running(&self) -> bool {
        self.state == "running"
    }
}

/// Where a VM's disk lives, which decides how it can be recovered elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StorageMode {
    Shared,
    Replicated,
    Local,
}

/// A VM under hinan's care.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vm {
    pub id: VmId,
    pub mac: String,
    pub ip: String,
    /// Lower is more important (moved first).
    pub priority: u32,
    pub site: SiteId,
    pub host: String,
    pub storage: StorageMode,
    /// How its watchers check its service.
    #[serde(default)]
    pub check: VmCheck,
    /// What the inventory declares about it (resources, home, domain XML);
    /// empty for a VM registered before the inventory (old logs).
    #[serde(default)]
    pub spec: VmSpec,
}

/// A VM's declared resources and home, as the inventory gives them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub vcpus: u32,
    /// Reserved CPU: Σ over a host's VMs ≤ the host's `cpu_mhz`.
    pub cpu_mhz: u64,
    /// Reserved memory: Σ over a host's VMs ≤ the host's `memory_mib`.
    pub memory_mib: u64,
    /// Its libvirt domain definition, so that it can be started anywhere.
    pub domain_xml: String,
    /// The site it belongs at (failback brings it there); empty if undeclared.
    pub home_site: SiteId,
    /// The host it belongs on, if the inventory pins one.
    pub home_host: Option<String>,
}

/// A VM's service check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum VmCheck {
    /// A TCP connection to `port` is accepted.
    Tcp { port: u16 },
    /// `GET path` answers `expect_status`.
    Http {
        port: u16,
        path: String,
        expect_status: u16,
    },
}

impl Default for VmCheck {
    fn default() -> Self {
        VmCheck::Http {
            port: 80,
            path: "/".into(),
            expect_status: 200,
        }
    }
}

/// A published service: users reach `hostname` at the public address of the
/// site where `vm` runs now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub hostname: String,
    pub vm: VmId,
    /// The public ports (the `public` side of `port_map` when the inventory set it).
    pub ports: Vec<u16>,
    pub public_address: BTreeMap<SiteId, String>,
    #[serde(default)]
    pub protocol: Protocol,
    /// Public port → the VM's private port; empty: each of `ports` maps to itself.
    #[serde(default)]
    pub port_map: Vec<PortMap>,
}

/// A published service's transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// One public port of a service and the VM's port behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMap {
    pub public: u16,
    pub private: u16,
}

/// The WAN between two sites, and how much of it migrations may use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WanLink {
    /// The two sites, in the inventory's order.
    pub between: [SiteId; 2],
    pub mbit: u64,
    /// The share of `mbit` migrations may use, in (0, 1].
    pub migration_share: f64,
}

/// Health of a site or a link as one appliance sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    Up,
    /// Some paths to it are down (a link fault).
    Degraded,
    /// Every path to it is down (a site fault).
    Down,
}

/// An emergency alert as taken in (the alert issue fills in its details).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: String,
    pub received_by: NodeId,
    pub summary: String,
}

/// One line of the append-only audit log: what was decided, by whom, why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub index: u64,
    pub at_unix_ms: u64,
    pub by: NodeId,
    pub what: String,
}

/// Every change to the state is one of these, proposed by an appliance and
/// applied once the log commits it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Command {
    PutSite(Site),
    RemoveSite {
        id: SiteId,
    },
    PutAppliance(Appliance),
    RemoveAppliance {
        id: NodeId,
    },
    PutHost(Host),
    PutVm(Vm),
    RemoveVm {
        id: VmId,
    },
    /// The VM now runs at `site` on `host` (after a migration or a restart).
    SetVmLocation {
        vm: VmId,
        site: SiteId,
        host: String,
    },
    PutService(Service),
    /// The operators' inventory: replaces the sites, hosts, VMs, services,
    /// WAN links and area map in one step. A VM already known keeps its
    /// current site and host (its location is not the inventory's).
    ApplyInventory(crate::core::inventory::Inventory),
    RemoveService {
        hostname: String,
    },
    /// `observer` sees site `site` in `health`.
    ReportSiteHealth {
        observer: NodeId,
        site: SiteId,
        health: Health,
    },
    /// `observer` sees path `path` to appliance `peer` up or down.
    ReportLinkHealth {
        observer: NodeId,
        peer: NodeId,
        path: String,
        up: bool,
    },
    /// What `host`'s hypervisor holds, as the appliance of its site reads it.
    ReportDomains {
        observer: NodeId,
        host: String,
        domains: Vec<RunningDomain>,
    },
    /// The active watcher of `vm` declares it failed or recovered.
    ReportVmHealth {
        observer: NodeId,
        vm: VmId,
        ok: bool,
        reason: String,
    },
    RecordAlert(Alert),
    /// An operator's (or the alert planner's) intent, planned into moves
    /// when it commits ([`moves::plan`]).
    PlanMoves {
        intent: Intent,
        reason: String,
    },
    /// `executor` starts driving pending move `id`.
    StartMove {
        id: MoveId,
        executor: NodeId,
    },
    /// A running move's progress, from its executor.
    ReportMoveProgress {
        id: MoveId,
        by: NodeId,
        progress: MoveProgress,
    },
    /// How a running move ended, from its executor.
    FinishMove {
        id: MoveId,
        by: NodeId,
        result: MoveResult,
    },
    /// Cancel a move, or every unfinished move of a plan.
    CancelMove {
        id: String,
    },
    /// `to` takes over running move `id` from `from`, which it sees down.
    HandOverMove {
        id: MoveId,
        from: NodeId,
        to: NodeId,
        why: String,
    },
    /// A free-form operator note for the audit log (also used by tests and benchmarks).
    Note {
        text: String,
    },
    /// The operators' records of DNS zone `zone` (RFC 2136 updates), in
    /// zone-file syntax with absolute names; they replace the previous set.
    SetZoneRecords {
        zone: String,
        records: Vec<String>,
    },
}

/// Who proposed a command and when, carried beside it in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub by: NodeId,
    /// Wall-clock time at the proposer (for the audit log only; never for decisions).
    pub at_unix_ms: u64,
    pub command: Command,
    /// A client's id for this request. A request proposed again (after a
    /// leader change lost the first try) is applied once only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
}

/// How many request ids the state remembers to drop duplicates.
const REMEMBERED_REQUESTS: usize = 10_000;

/// Why a committed command changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("unknown site '{0}'")]
    UnknownSite(SiteId),
    #[error("unknown VM '{0}'")]
    UnknownVm(VmId),
    #[error("unknown appliance {0}")]
    UnknownAppliance(NodeId),
    #[error("unknown host '{0}'")]
    UnknownHost(String),
    #[error("site '{0}' still has appliances, hosts or VMs")]
    SiteInUse(SiteId),
    #[error("the inventory leaves out site '{site}', where {what}")]
    InventoryDropsSite { site: SiteId, what: String },
    #[error("{0}")]
    Move(#[from] Refusal),
}

/// One applied entry, for watchers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateChange {
    pub index: u64,
    pub by: NodeId,
    pub command: Command,
    /// `None` when applied; the reason when the command was rejected (state unchanged).
    pub rejected: Option<String>,
}

/// The whole replicated state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Log index of the last applied entry: the state's version.
    pub applied: u64,
    pub sites: BTreeMap<SiteId, Site>,
    pub appliances: BTreeMap<NodeId, Appliance>,
    pub hosts: BTreeMap<String, Host>,
    pub vms: BTreeMap<VmId, Vm>,
    pub services: BTreeMap<String, Service>,
    /// site → observer → how that appliance sees the site.
    pub site_health: BTreeMap<SiteId, BTreeMap<NodeId, Health>>,
    /// observer → peer → path → whether that appliance reaches the peer on it.
    pub link_health: BTreeMap<NodeId, BTreeMap<NodeId, BTreeMap<String, bool>>>,
    /// vm → (ok, reason, observer).
    pub vm_health: BTreeMap<VmId, (bool, String, NodeId)>,
    /// host → the domains its hypervisor holds, as last reported.
    #[serde(default)]
    pub domains: BTreeMap<String, Vec<RunningDomain>>,
    pub alerts: Vec<Alert>,
    /// Plans of moves, by id (`p7`).
    #[serde(default)]
    pub plans: BTreeMap<String, Plan>,
    /// Every move, by id (`m8`): pending, running, and the latest finished.
    #[serde(default)]
    pub moves: BTreeMap<MoveId, Move>,
    /// The last plan or move id handed out.
    #[serde(default)]
    pub next_id: u64,
    /// How live migrations run (from the inventory).
    #[serde(default)]
    pub migration: MigrationPolicy,
    pub audit: Vec<AuditEntry>,
    /// Request ids applied lately, oldest first.
    #[serde(default)]
    pub recent_requests: std::collections::VecDeque<String>,
    /// DNS zone origin → the operators' records (from dynamic updates).
    #[serde(default)]
    pub zone_records: BTreeMap<String, Vec<String>>,
    /// WAN links between sites (from the inventory).
    #[serde(default)]
    pub wan: Vec<WanLink>,
    /// Area code (JMA area codes, CAP geocodes) → the sites in it (from the inventory).
    #[serde(default)]
    pub areas: BTreeMap<String, Vec<SiteId>>,
}

impl ClusterState {
    /// Applies committed entry `index`. Pure and deterministic: every appliance
    /// applying the same log reaches the same state.
    pub fn apply(&mut self, index: u64, p: &Proposal) -> StateChange {
        if let Some(req) = &p.request {
            if self.recent_requests.contains(req) {
                self.applied = index;
                return StateChange {
                    index,
                    by: p.by,
                    command: p.command.clone(),
                    rejected: None,
                };
            }
            self.recent_requests.push_back(req.clone());
            if self.recent_requests.len() > REMEMBERED_REQUESTS {
                self.recent_requests.pop_front();
            }
        }
        let result = self.apply_command(index, p);
        self.applied = index;
        let what = match &result {
            Ok(Some(text)) => Some(text.clone()),
            Ok(None) => None,
            Err(e) => Some(format!("rejected {}: {e}", command_name(&p.command))),
        };
        if let Some(what) = what {
            self.audit.push(AuditEntry {
                index,
                at_unix_ms: p.at_unix_ms,
                by: p.by,
                what,
            });
        }
        StateChange {
            index,
            by: p.by,
            command: p.command.clone(),
            rejected: result.err().map(|e| e.to_string()),
        }
    }

    /// Applies one command; returns the audit text when it is a decision worth recording.
    fn apply_command(&mut self, index: u64, p: &Proposal) -> Result<Option<String>, Rejected> {
        use Command::*;
        match &p.command {
            PutSite(s) => {
                self.sites.insert(s.id.clone(), s.clone());
                Ok(Some(format!("site {} configured", s.id)))
            }
            RemoveSite { id } => {
                let used = self.appliances.values().any(|a| &a.site == id)
                    || self.hosts.values().any(|h| &h.site == id)
                    || self.vms.values().any(|v| &v.site == id);
                if used {
                    return Err(Rejected::SiteInUse(id.clone()));
                }
                self.sites
                    .remove(id)
                    .ok_or_else(|| Rejected::UnknownSite(id.clone()))?;
                Ok(Some(format!("site {id} removed")))
            }
            PutAppliance(a) => {
                self.need_site(&a.site)?;
                self.appliances.insert(a.id, a.clone());
                Ok(Some(format!(
                    "appliance {} ({}) at site {}",
                    a.id, a.name, a.site
                )))
            }
            RemoveAppliance { id } => {
                self.appliances
                    .remove(id)
                    .ok_or(Rejected::UnknownAppliance(*id))?;
                Ok(Some(format!("appliance {id} removed")))
            }
            PutHost(h) => {
                self.need_site(&h.site)?;
                self.hosts.insert(h.name.clone(), h.clone());
                Ok(None)
            }
            PutVm(v) => {
                self.need_site(&v.site)?;
                self.vms.insert(v.id.clone(), v.clone());
                Ok(Some(format!("VM {} registered at site {}", v.id, v.site)))
            }
            RemoveVm { id } => {
                self.vms
                    .remove(id)
                    .ok_or_else(|| Rejected::UnknownVm(id.clone()))?;
                self.vm_health.remove(id);
                Ok(Some(format!("VM {id} removed")))
            }
            SetVmLocation { vm, site, host } => {
                self.need_site(site)?;
                let v = self
                    .vms
                    .get_mut(vm)
                    .ok_or_else(|| Rejected::UnknownVm(vm.clone()))?;
                let from = std::mem::replace(&mut v.site, site.clone());
                v.host = host.clone();
                Ok(Some(format!(
                    "VM {vm} now runs at site {site} on {host} (was at {from})"
                )))
            }
            PutService(s) => {
                if !self.vms.contains_key(&s.vm) {
                    return Err(Rejected::UnknownVm(s.vm.clone()));
                }
                self.services.insert(s.hostname.clone(), s.clone());
                Ok(None)
            }
            ApplyInventory(inv) => self.apply_inventory(inv),
            RemoveService { hostname } => {
                self.services.remove(hostname);
                Ok(None)
            }
            ReportSiteHealth {
                observer,
                site,
                health,
            } => {
                self.need_site(site)?;
                let old = self
                    .site_health
                    .entry(site.clone())
                    .or_default()
                    .insert(*observer, *health);
                Ok((old != Some(*health))
                    .then(|| format!("appliance {observer} sees site {site} {health:?}")))
            }
            ReportLinkHealth {
                observer,
                peer,
                path,
                up,
            } => {
                let old = self
                    .link_health
                    .entry(*observer)
                    .or_default()
                    .entry(*peer)
                    .or_default()
                    .insert(path.clone(), *up);
                Ok((old != Some(*up)).then(|| {
                    format!(
                        "appliance {observer} sees path {path} to appliance {peer} {}",
                        if *up { "up" } else { "down" }
                    )
                }))
            }
            ReportDomains {
                observer,
                host,
                domains,
            } => {
                let Some(site) = self.hosts.get(host).map(|h| h.site.clone()) else {
                    return Err(Rejected::UnknownHost(host.clone()));
                };
                let old = self.domains.insert(host.clone(), domains.clone());
                if old.as_ref() == Some(domains) {
                    return Ok(None);
                }
                // A VM that runs where the state does not expect it.
                let stray: Vec<String> = domains
                    .iter()
                    .filter(|d| d.is_running())
                    .filter_map(|d| self.vms.get(&d.name))
                    .filter(|vm| vm.site != site)
                    .map(|vm| {
                        format!(
                            "VM {} runs at host {host} (site {site}), recorded at site {}",
                            vm.id, vm.site
                        )
                    })
                    .collect();
                // A VM running on another host of its recorded site: that host is where it is.
                let mut found = Vec::new();
                for d in domains.iter().filter(|d| d.is_running()) {
                    if let Some(vm) = self.vms.get_mut(&d.name) {
                        if vm.site == site && vm.host != *host {
                            vm.host = host.clone();
                            found.push(format!("VM {} found running on host {host}", vm.id));
                        }
                    }
                }
                let running = domains.iter().filter(|d| d.is_running()).count();
                let stray = [stray, found].concat();
                Ok(Some(if stray.is_empty() {
                    format!(
                        "appliance {observer}: host {host} runs {running} of {} domains",
                        domains.len()
                    )
                } else {
                    format!("appliance {observer}: host {host}: {}", stray.join("; "))
                }))
            }
            ReportVmHealth {
                observer,
                vm,
                ok,
                reason,
            } => {
                if !self.vms.contains_key(vm) {
                    return Err(Rejected::UnknownVm(vm.clone()));
                }
                let old = self
                    .vm_health
                    .insert(vm.clone(), (*ok, reason.clone(), *observer));
                Ok((old.map(|o| o.0) != Some(*ok)).then(|| {
                    format!(
                        "appliance {observer} declares VM {vm} {}: {reason}",
                        if *ok { "recovered" } else { "failed" }
                    )
                }))
            }
            RecordAlert(a) => {
                self.alerts.push(a.clone());
                Ok(Some(format!(
                    "alert {} received by {}: {}",
                    a.id, a.received_by, a.summary
                )))
            }
            PlanMoves { intent, reason } => {
                let planned = moves::plan(self, intent, reason, index)?;
                Ok(Some(moves::store(self, planned)))
            }
            StartMove { id, executor } => Ok(Some(moves::start(self, id, *executor)?)),
            ReportMoveProgress { id, by, progress } => {
                moves::progress(self, id, *by, progress)?;
                Ok(None)
            }
            FinishMove { id, by, result } => Ok(Some(moves::finish(self, id, *by, result, index)?)),
            CancelMove { id } => Ok(Some(moves::cancel(self, id)?)),
            HandOverMove { id, from, to, why } => {
                Ok(Some(moves::hand_over(self, id, *from, *to, why)?))
            }
            SetZoneRecords { zone, records } => {
                let zone = zone.trim_end_matches('.').to_ascii_lowercase();
                let what = format!("dns zone {zone}: {} operator records", records.len());
                if records.is_empty() {
                    self.zone_records.remove(&zone);
                } else {
                    self.zone_records.insert(zone, records.clone());
                }
                Ok(Some(what))
            }
            Note { text } => Ok(Some(format!("note: {text}"))),
        }
    }

    /// Replaces the inventory's objects at once, or changes nothing.
    fn apply_inventory(
        &mut self,
        inv: &crate::core::inventory::Inventory,
    ) -> Result<Option<String>, Rejected> {
        let sites: BTreeMap<SiteId, Site> = inv
            .sites
            .iter()
            .map(|s| (s.id.clone(), s.clone()))
            .collect();
        let drops = |site: &str, what: String| {
            if sites.contains_key(site) {
                Ok(())
            } else {
                Err(Rejected::InventoryDropsSite {
                    site: site.to_string(),
                    what,
                })
            }
        };
        for a in self.appliances.values() {
            drops(&a.site, format!("appliance {} ({}) is", a.id, a.name))?;
        }
        // `hinan apply` checked all this; a raw control request may not have.
        for h in &inv.hosts {
            self.need_site_in(&sites, &h.site)?;
        }
        for v in &inv.vms {
            self.need_site_in(&sites, &v.site)?;
        }
        for svc in &inv.services {
            if !inv.vms.iter().any(|v| v.id == svc.vm) {
                return Err(Rejected::UnknownVm(svc.vm.clone()));
            }
        }
        let mut vms = BTreeMap::new();
        for v in &inv.vms {
            let mut v = v.clone();
            if let Some(old) = self.vms.get(&v.id) {
                drops(&old.site, format!("VM {} runs now", v.id))?;
                v.site = old.site.clone();
                v.host = old.host.clone();
            }
            vms.insert(v.id.clone(), v);
        }
        let removed: Vec<VmId> = self
            .vms
            .keys()
            .filter(|id| !vms.contains_key(*id))
            .cloned()
            .collect();
        for id in &removed {
            self.vm_health.remove(id);
        }
        self.sites = sites;
        self.hosts = inv
            .hosts
            .iter()
            .map(|h| (h.name.clone(), h.clone()))
            .collect();
        self.vms = vms;
        self.services = inv
            .services
            .iter()
            .map(|s| (s.hostname.clone(), s.clone()))
            .collect();
        self.wan = inv.wan.clone();
        self.migration = inv.migration.clone();
        self.areas = inv.areas.clone();
        Ok(Some(format!(
            "inventory applied: {} sites, {} hosts, {} VMs, {} services, {} WAN links, {} areas",
            self.sites.len(),
            self.hosts.len(),
            self.vms.len(),
            self.services.len(),
            self.wan.len(),
            self.areas.len()
        )))
    }

    fn need_site_in(&self, sites: &BTreeMap<SiteId, Site>, site: &str) -> Result<(), Rejected> {
        if sites.contains_key(site) {
            Ok(())
        } else {
            Err(Rejected::UnknownSite(site.to_string()))
        }
    }

    fn need_site(&self, site: &str) -> Result<(), Rejected> {
        if self.sites.contains_key(site) {
            Ok(())
        } else {
            Err(Rejected::UnknownSite(site.to_string()))
        }
    }

    /// The health of `site` as `observer` last reported it.
    pub fn site_health_seen_by(&self, observer: NodeId, site: &str) -> Option<Health> {
        self.site_health.get(site)?.get(&observer).copied()
    }
}

fn command_name(c: &Command) -> String {
    serde_json::to_value(c)
        .ok()
        .and_then(|v| v.get("op").and_then(|o| o.as_str()).map(str::to_string))
        .unwrap_or_else(|| "command".into())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A proposal of `command` by appliance 1, for tests.
    pub(crate) fn p(command: Command) -> Proposal {
        Proposal {
            by: 1,
            at_unix_ms: 0,
            command,
            request: None,
        }
    }

    fn site(id: &str) -> Command {
        Command::PutSite(Site {
            id: id.into(),
            location: None,
            witness: false,
        })
    }

    fn vm(id: &str, site: &str) -> Command {
        Command::PutVm(Vm {
            id: id.into(),
            mac: "52:54:00:70:00:10".into(),
            ip: "10.70.0.10".into(),
            priority: 1,
            site: site.into(),
            host: "h1".into(),
            storage: StorageMode::Shared,
            check: VmCheck::default(),
            spec: VmSpec::default(),
        })
    }

    #[test]
    fn a_hosts_domains_are_recorded_and_a_vm_running_off_its_site_is_named() {
        let mut s = ClusterState::default();
        let mut at = 0;
        let mut apply = |s: &mut ClusterState, c: Command| {
            at += 1;
            s.apply(at, &p(c))
        };
        for c in [site("a"), site("b"), vm("lms1", "a")] {
            assert_eq!(apply(&mut s, c).rejected, None);
        }
        let report = |host: &str, state: &str| Command::ReportDomains {
            observer: 2,
            host: host.into(),
            domains: vec![RunningDomain {
                name: "lms1".into(),
                state: state.into(),
                memory_kib: 131072,
                job: None,
            }],
        };
        let unknown = apply(&mut s, report("b1", "running"));
        assert_eq!(unknown.rejected.as_deref(), Some("unknown host 'b1'"));
        assert!(s.domains.is_empty(), "a rejected report was kept");
        for (id, site) in [("a1", "a"), ("b1", "b")] {
            let host = Host {
                name: id.into(),
                site: site.into(),
                cpu_mhz: 8000,
                memory_mib: 16384,
                libvirt_uri: String::new(),
                migration_address: String::new(),
            };
            assert_eq!(apply(&mut s, Command::PutHost(host)).rejected, None);
        }
        let audit = s.audit.len();
        apply(&mut s, report("a1", "running"));
        assert!(s.domains["a1"][0].is_running());
        // Registered on h1, found on a1 at the same site: a1 is where it is.
        assert_eq!(s.vms["lms1"].host, "a1");
        assert!(s
            .audit
            .last()
            .unwrap()
            .what
            .contains("VM lms1 found running on host a1"));
        assert_eq!(s.audit.len(), audit + 1);
        // The same report again changes nothing and says nothing.
        apply(&mut s, report("a1", "running"));
        assert_eq!(s.audit.len(), audit + 1);
        // Running at B while the state has it at A: named.
        apply(&mut s, report("b1", "running"));
        let last = &s.audit.last().unwrap().what;
        assert!(
            last.contains("VM lms1 runs at host b1 (site b), recorded at site a"),
            "{last}"
        );
        // Shut off at B: not a stray.
        apply(&mut s, report("b1", "shut off"));
        assert!(!s.audit.last().unwrap().what.contains("recorded at site"));
    }

    #[test]
    fn a_vm_moves_and_the_move_is_audited() {
        let mut s = ClusterState::default();
        s.apply(1, &p(site("a")));
        s.apply(2, &p(site("b")));
        s.apply(3, &p(vm("lms1", "a")));
        let ch = s.apply(
            4,
            &p(Command::SetVmLocation {
                vm: "lms1".into(),
                site: "b".into(),
                host: "h2".into(),
            }),
        );
        assert_eq!(ch.rejected, None);
        assert_eq!(s.vms["lms1"].site, "b");
        assert_eq!(s.applied, 4);
        assert!(s.audit.last().unwrap().what.contains("now runs at site b"));
    }

    #[test]
    fn bad_commands_are_rejected_and_change_nothing_but_the_version() {
        let mut s = ClusterState::default();
        s.apply(1, &p(site("a")));
        let before = s.vms.clone();
        let ch = s.apply(2, &p(vm("lms1", "nowhere")));
        assert_eq!(ch.rejected.as_deref(), Some("unknown site 'nowhere'"));
        assert_eq!(s.vms, before);
        assert_eq!(s.applied, 2);
        let ch = s.apply(
            3,
            &p(Command::SetVmLocation {
                vm: "x".into(),
                site: "a".into(),
                host: "h".into(),
            }),
        );
        assert_eq!(ch.rejected.as_deref(), Some("unknown VM 'x'"));
        s.apply(4, &p(vm("lms1", "a")));
        let ch = s.apply(5, &p(Command::RemoveSite { id: "a".into() }));
        assert!(ch.rejected.is_some(), "a site with a VM was removed");
    }

    #[test]
    fn same_log_same_state() {
        let log = [
            site("a"),
            site("b"),
            vm("v1", "a"),
            vm("v2", "b"),
            Command::RemoveVm { id: "v1".into() },
        ];
        let run = || {
            let mut s = ClusterState::default();
            for (i, c) in log.iter().enumerate() {
                s.apply(i as u64 + 1, &p(c.clone()));
            }
            serde_json::to_string(&s).unwrap()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn a_request_proposed_twice_applies_once() {
        let mut s = ClusterState::default();
        let note = Proposal {
            by: 1,
            at_unix_ms: 0,
            command: Command::Note { text: "x".into() },
            request: Some("1-7".into()),
        };
        s.apply(1, &note);
        s.apply(2, &note);
        assert_eq!(s.audit.iter().filter(|a| a.what == "note: x").count(), 1);
        assert_eq!(s.applied, 2);
    }

    #[test]
    fn zone_records_are_replaced_whole_and_an_empty_set_removes_the_zone() {
        let mut s = ClusterState::default();
        let set = |records: Vec<&str>| {
            p(Command::SetZoneRecords {
                zone: "Univ-A.example.".into(),
                records: records.into_iter().map(String::from).collect(),
            })
        };
        s.apply(1, &set(vec!["a.univ-a.example. 300 IN A 198.18.0.1"]));
        s.apply(2, &set(vec!["b.univ-a.example. 300 IN A 198.18.0.2"]));
        assert_eq!(
            s.zone_records["univ-a.example"],
            vec!["b.univ-a.example. 300 IN A 198.18.0.2".to_string()]
        );
        s.apply(3, &set(vec![]));
        assert!(s.zone_records.is_empty());
        assert!(s
            .audit
            .last()
            .unwrap()
            .what
            .contains("dns zone univ-a.example"));
    }

    #[test]
    fn health_reports_are_audited_only_when_they_change() {
        let mut s = ClusterState::default();
        s.apply(1, &p(site("a")));
        let report = |h| {
            p(Command::ReportSiteHealth {
                observer: 2,
                site: "a".into(),
                health: h,
            })
        };
        s.apply(2, &report(Health::Down));
        s.apply(3, &report(Health::Down));
        s.apply(4, &report(Health::Up));
        let health_lines = s
            .audit
            .iter()
            .filter(|a| a.what.contains("sees site a"))
            .count();
        assert_eq!(health_lines, 2);
        assert_eq!(s.site_health_seen_by(2, "a"), Some(Health::Up));
    }
}
