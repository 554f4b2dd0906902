//! hinan appliances in the lab: one per campus edge namespace, plus one in the
//! witness namespace when the lab has a witness. Keys, pins and configuration
//! files are made here with the real `hinan keygen`; each appliance is the real
//! `hinan run`, started by PID and recorded like every other lab process.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use hinan_orchestrator::core::state::{
    ClusterState, Command as StateCommand, Service, Site, StorageMode, Vm, VmCheck,
};
use hinan_orchestrator::shell::control::{
    self, AppliedReply, EventRecord, ProposeReply, Request, StatusReply,
};

use crate::lab::procs::ProcRecord;
use crate::lab::sys;
use crate::lab::{Lab, Topology};

/// Raft transport port.
pub const RAFT_PORT: u16 = 7400;
/// Heartbeat port.
pub const HEARTBEAT_PORT: u16 = 7401;

/// One appliance of the lab cluster.
#[derive(Debug, Clone)]
pub struct Appliance {
    pub id: u64,
    pub name: String,
    /// Site name: `a`, `b`, … or `w` for the witness.
    pub site: String,
    pub ns: String,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub wan_ip: String,
    /// The service-segment address, when the site has a segment.
    pub segment_ip: Option<String>,
}

impl Appliance {
    fn role(&self) -> String {
        format!("{}/hinan", self.site)
    }

    /// Sends one control request and decodes its result; `wait` is how long
    /// the appliance may take to answer.
    fn ask<T: serde::de::DeserializeOwned>(&self, req: Request, wait: Duration) -> Result<T> {
        Ok(control::call_as(&self.socket, &req, wait)?)
    }

    /// The addresses this appliance's DNS server answers for `name` (type
    /// A), asked with `kdig` in its namespace; empty when it does not answer.
    pub fn dns_answer(&self, name: &str) -> Vec<String> {
        let out = sys::run_in(
            &self.ns,
            "kdig",
            &[
                &format!("@{}", self.wan_ip),
                name,
                "A",
                "+short",
                "+time=1",
                "+retry=0",
            ],
        )
        .unwrap_or_default();
        out.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    pub fn status(&self) -> Result<StatusReply> {
        self.ask(Request::Status, Duration::from_secs(5))
    }

    pub fn state(&self) -> Result<ClusterState> {
        self.ask(Request::State, Duration::from_secs(5))
    }

    pub fn events(&self, since: u64) -> Result<Vec<EventRecord>> {
        self.ask(Request::Events { since }, Duration::from_secs(5))
    }

    /// Commits a note here; `Err` carries the appliance's reason when it cannot.
    pub fn note(&self, text: &str, timeout: Duration) -> Result<ProposeReply> {
        let req = Request::Propose {
            command: StateCommand::Note {
                text: text.to_string(),
            },
            timeout_ms: Some(timeout.as_millis() as u64),
        };
        self.ask(req, timeout + Duration::from_secs(5))
    }

    /// Waits until this appliance has applied `index`; returns when it saw it.
    pub fn wait_applied(&self, index: u64, timeout: Duration) -> Result<AppliedReply> {
        let req = Request::WaitApplied {
            index,
            timeout_ms: Some(timeout.as_millis() as u64),
        };
        self.ask(req, timeout + Duration::from_secs(5))
    }

    /// Adds (`add`) or removes voter `id`; returns the voters afterwards.
    pub fn membership(&self, id: u64, add: bool) -> Result<Vec<u64>> {
        let req = Request::Membership {
            id,
            add,
            timeout_ms: Some(5000),
        };
        self.ask(req, Duration::from_secs(10))
    }

    /// Commits any command here.
    pub fn propose(&self, command: StateCommand) -> Result<ProposeReply> {
        let req = Request::Propose {
            command,
            timeout_ms: Some(5000),
        };
        self.ask(req, Duration::from_secs(10))
    }

    /// Commits the lab's sites (campuses A and B, witness W) and the guest
    /// `vm` running at campus A with `storage`.
    pub fn register_lab_vm(
        &self,
        vm: &crate::VmSpec,
        storage: StorageMode,
    ) -> Result<ProposeReply> {
        for site in ["a", "b", "w"] {
            self.propose(StateCommand::PutSite(Site {
                id: site.into(),
                location: None,
                witness: site == "w",
            }))
            .with_context(|| format!("registering site {site}"))?;
        }
        self.propose(StateCommand::PutVm(Vm {
            id: vm.name.clone(),
            mac: vm.mac.clone(),
            ip: vm.ip.to_string(),
            priority: 1,
            site: "a".into(),
            host: "a".into(),
            storage,
            check: VmCheck::default(),
            spec: Default::default(),
        }))
        .with_context(|| format!("registering VM {}", vm.name))
    }

    /// Publishes `vm` as `hostname` on port 80, at each campus's public
    /// address in `addresses` (site, address).
    pub fn publish_lab_vm(
        &self,
        hostname: &str,
        vm: &crate::VmSpec,
        addresses: &[(&str, &str)],
    ) -> Result<ProposeReply> {
        self.propose(StateCommand::PutService(Service {
            hostname: hostname.into(),
            vm: vm.name.clone(),
            ports: vec![80],
            public_address: addresses
                .iter()
                .map(|(site, addr)| (site.to_string(), addr.to_string()))
                .collect(),
            protocol: Default::default(),
            port_map: Vec::new(),
        }))
        .with_context(|| format!("publishing {hostname}"))
    }

    /// Runs the `hinan` CLI against this appliance's control socket:
    /// (whether it succeeded, its stdout, its stderr).
    pub fn cli(&self, args: &[&str]) -> Result<(bool, String, String)> {
        let out = std::process::Command::new(hinan_binary()?)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .context("running hinan")?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Waits for an event of `kind` about `peer` (any peer if `None`) recorded after `since`.
    pub fn wait_event(
        &self,
        since: u64,
        kind: &str,
        peer: Option<u64>,
        limit: Duration,
    ) -> Result<EventRecord> {
        sys::wait_for(
            &format!("a {kind} event at {}", self.name),
            limit,
            Duration::from_millis(5),
            || {
                Ok(self
                    .events(since)?
                    .into_iter()
                    .find(|e| e.kind == kind && (peer.is_none() || e.peer == peer)))
            },
        )
    }

    /// The sequence number of the newest event here.
    pub fn last_event(&self) -> Result<u64> {
        Ok(self.events(0)?.last().map(|e| e.seq).unwrap_or(0))
    }

    /// Whether this appliance has applied a note with `text`.
    pub fn has_note(&self, text: &str) -> Result<bool> {
        let want = format!("note: {text}");
        Ok(self.state()?.audit.iter().any(|a| a.what == want))
    }
}

/// The `hinan` binary.
pub fn hinan_binary() -> Result<PathBuf> {
    sys::workspace_binary("hinan", "HINAN_BIN", "hinan-orchestrator")
}

/// Where the appliance at `site` of the run in `run_dir` listens for
/// control requests (the lab's VPN endpoints tell it of MAC moves there).
pub fn control_socket(run_dir: &Path, site: &str) -> PathBuf {
    run_dir
        .join("hinan")
        .join(format!("hinan-{site}"))
        .join("control.sock")
}

/// The lab's appliances.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub appliances: Vec<Appliance>,
    pub bin: PathBuf,
}

impl Cluster {
    pub fn get(&self, site: &str) -> Result<&Appliance> {
        self.appliances
            .iter()
            .find(|a| a.site == site)
            .with_context(|| format!("no appliance at site {site}"))
    }

    /// Waits until every appliance in `sites` follows the same leader, one of them.
    pub fn wait_leader(&self, sites: &[&str], limit: Duration) -> Result<u64> {
        let ids: Vec<u64> = sites
            .iter()
            .filter_map(|s| self.get(s).ok())
            .map(|a| a.id)
            .collect();
        sys::wait_for(
            "a leader all agree on",
            limit,
            Duration::from_millis(50),
            || {
                let mut leader = None;
                for s in sites {
                    let st = match self.get(s)?.status() {
                        Ok(st) => st,
                        Err(_) => return Ok(None),
                    };
                    match (leader, st.raft.leader) {
                        (_, None) => return Ok(None),
                        (None, Some(l)) => leader = Some(l),
                        (Some(x), Some(l)) if x != l => return Ok(None),
                        _ => {}
                    }
                }
                Ok(leader.filter(|l| ids.contains(l)))
            },
        )
    }
}

impl Lab {
    /// Makes keys and configurations and starts an appliance at every campus
    /// (and at the witness). Waits until they agree on a leader. `extra` is
    /// added to each `[cluster]` section (e.g. `damping_hold_ms = 200`).
    pub fn start_cluster(&mut self, extra: &str) -> Result<Cluster> {
        let bin = hinan_binary()?;
        let dir = self.run.path.join("hinan");
        fs::create_dir_all(&dir)?;
        let hb_key = dir.join("heartbeat.key");
        sys::run(
            bin.to_str().unwrap_or("hinan"),
            &["heartbeat-key", &hb_key.to_string_lossy()],
        )?;
        let mut apps = Vec::new();
        let mut sites: Vec<(String, String, String, Option<String>)> = self
            .topo
            .campuses
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    c.ns.clone(),
                    c.public_ip.to_string(),
                    c.hypervisor.then(|| c.inside_ip.to_string()),
                )
            })
            .collect();
        if let Some(w) = &self.topo.witness {
            sites.push((w.name.clone(), w.ns.clone(), w.ip.to_string(), None));
        }
        for (i, (site, ns, wan_ip, segment_ip)) in sites.into_iter().enumerate() {
            let name = format!("hinan-{site}");
            let adir = dir.join(&name);
            fs::create_dir_all(&adir)?;
            apps.push(Appliance {
                id: i as u64 + 1,
                config: adir.join("hinan.toml"),
                socket: control_socket(&self.run.path, &site),
                data_dir: adir.join("data"),
                log: adir.join("hinan.log"),
                name,
                site,
                ns,
                wan_ip,
                segment_ip,
            });
        }
        let mut pins = BTreeMap::new();
        for a in &apps {
            let adir = a.config.parent().context("config dir")?;
            let pin = sys::run(
                bin.to_str().unwrap_or("hinan"),
                &[
                    "keygen",
                    "--name",
                    &a.name,
                    "--out-dir",
                    &adir.to_string_lossy(),
                ],
            )?;
            pins.insert(a.id, pin.trim().to_string());
        }
        for a in &apps {
            fs::write(&a.config, config_text(a, &apps, &pins, &hb_key, extra))?;
        }
        let cluster = Cluster {
            appliances: apps,
            bin,
        };
        for a in &cluster.appliances {
            self.start_appliance(&cluster, a)?;
        }
        let sites: Vec<&str> = cluster.appliances.iter().map(|a| a.site.as_str()).collect();
        cluster.wait_leader(&sites, Duration::from_secs(20))?;
        Ok(cluster)
    }

    /// Starts (or restarts) one appliance and waits for its control socket.
    pub fn start_appliance(&mut self, cluster: &Cluster, a: &Appliance) -> Result<()> {
        let _ = fs::remove_file(&a.socket);
        let args = [
            OsStr::new("--config"),
            a.config.as_os_str(),
            OsStr::new("run"),
        ];
        let pid = sys::spawn_daemon_in(&a.ns, cluster.bin.as_os_str(), &args, &a.log)?;
        let rec = ProcRecord::of(&a.role(), pid as i32).context("hinan exited at once")?;
        self.record(rec)?;
        sys::wait_for(
            &format!("{} to answer on its control socket", a.name),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || Ok(a.status().ok()),
        )
        .with_context(|| format!("{}'s log:\n{}", a.name, tail(&a.log)))?;
        Ok(())
    }

    /// Kills an appliance with `signal` (SIGKILL for a crash), by its recorded PID.
    pub fn kill_appliance(&mut self, a: &Appliance, signal: i32) -> Result<()> {
        self.kill_process(&a.role(), signal)
            .with_context(|| format!("{} is not running", a.name))
    }

    /// Sends `signal` to the live process the lab recorded as `role` (e.g.
    /// `b/libvirtd`), by its recorded PID, and waits for it to end
    /// (SIGTERM, then SIGKILL after 5 s).
    pub fn kill_process(&mut self, role: &str, signal: i32) -> Result<()> {
        let rec = self
            .run
            .manifest
            .processes
            .iter()
            .find(|p| p.role == role && p.alive())
            .cloned()
            .with_context(|| format!("no live process {role} is recorded"))?;
        if signal != libc::SIGTERM {
            // SAFETY: kill(2) on the PID the lab recorded for this very process.
            unsafe {
                libc::kill(rec.pid, signal);
            }
        }
        rec.stop(Duration::from_secs(5));
        Ok(())
    }
}

fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn config_text(
    me: &Appliance,
    all: &[Appliance],
    pins: &BTreeMap<u64, String>,
    hb_key: &Path,
    extra: &str,
) -> String {
    let paths = |a: &Appliance| match &a.segment_ip {
        Some(s) => format!("{{ wan = \"{}\", segment = \"{s}\" }}", a.wan_ip),
        None => format!("{{ wan = \"{}\" }}", a.wan_ip),
    };
    let adir = me
        .config
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut text = format!(
        r#"[appliance]
id = {id}
name = "{name}"
site = "{site}"
witness = {witness}
data_dir = "{data}"
control_socket = "{sock}"

[cluster]
listen = "{wan}:{RAFT_PORT}"
cert = "{dir}/{name}.crt"
key = "{dir}/{name}.key"
heartbeat_port = {HEARTBEAT_PORT}
heartbeat_key = "{hb}"
paths = {paths}
{extra}
"#,
        id = me.id,
        name = me.name,
        site = me.site,
        witness = me.site == "w",
        data = me.data_dir.display(),
        sock = me.socket.display(),
        wan = me.wan_ip,
        dir = adir.display(),
        hb = hb_key.display(),
        paths = paths(me),
        extra = extra,
    );
    for p in all.iter().filter(|p| p.id != me.id) {
        text.push_str(&format!(
            r#"
[[peer]]
id = {id}
name = "{name}"
site = "{site}"
witness = {witness}
address = "{wan}:{RAFT_PORT}"
cert_sha256 = "{pin}"
paths = {paths}
"#,
            id = p.id,
            name = p.name,
            site = p.site,
            witness = p.site == "w",
            wan = p.wan_ip,
            pin = pins.get(&p.id).cloned().unwrap_or_default(),
            paths = paths(p),
        ));
    }
    text
}

/// A site of a lab inventory.
#[derive(Debug, Clone, PartialEq)]
pub struct InventorySite {
    pub id: String,
    pub latitude: f64,
    pub longitude: f64,
    pub witness: bool,
}

/// A host of a lab inventory (one per campus: `a1`, `b1`, …).
#[derive(Debug, Clone, PartialEq)]
pub struct InventoryHost {
    pub id: String,
    pub site: String,
    pub cpu_mhz: u64,
    pub memory_mib: u64,
    pub libvirt_uri: String,
    /// Where migration streams to this host go (the campus's address on the
    /// service segment, so that they cross the WAN inside the VPN); not
    /// written when `None`.
    pub migration_address: Option<String>,
}

/// A guest of a lab inventory, at its start (home) site and host.
#[derive(Debug, Clone)]
pub struct InventoryVm {
    pub spec: crate::VmSpec,
    pub priority: u32,
    pub site: String,
    pub host: String,
    /// The text of its domain XML file (`<name>.xml` beside the inventory).
    pub domain_xml: String,
}

/// A WAN link of a lab inventory.
#[derive(Debug, Clone, PartialEq)]
pub struct InventoryWan {
    pub between: [String; 2],
    pub mbit: u64,
    pub migration_share: f64,
}

/// An inventory of a lab, written by [`LabInventory::write`]: what
/// `hinan apply` is given in the lab tests.
#[derive(Debug, Clone, Default)]
pub struct LabInventory {
    pub sites: Vec<InventorySite>,
    pub hosts: Vec<InventoryHost>,
    pub vms: Vec<InventoryVm>,
    pub wan: Vec<InventoryWan>,
    /// The `[migration]` table, `key = TOML value` verbatim (e.g.
    /// `("max_downtime_ms", "300")`, `("encryption", "\"vpn\"")`); no table when empty.
    pub migration: Vec<(String, String)>,
}

/// Where the lab's sites are, for the inventory: Tokyo, Osaka, Fukuoka,
/// Sapporo, Sendai, Nagoya, Hiroshima, Naha; the witness in Nagano.
const CAMPUS_PLACES: [(f64, f64); 8] = [
    (35.68, 139.76),
    (34.69, 135.50),
    (33.59, 130.40),
    (43.06, 141.35),
    (38.27, 140.87),
    (35.18, 136.91),
    (34.39, 132.46),
    (26.21, 127.68),
];
const WITNESS_PLACE: (f64, f64) = (36.0, 138.0);

impl LabInventory {
    /// The lab's campuses (site and host `X1` each: 8000 MHz, 4096 MiB, the
    /// campus's libvirtd, migrations to its service-segment address), its
    /// witness `w`, and a WAN link of `mbit` Mbit/s with `migration_share`
    /// between every pair of campuses. No guests yet: add them with [`Self::vm`].
    pub fn of_lab(topo: &Topology, mbit: u64, migration_share: f64) -> LabInventory {
        let mut inv = LabInventory::default();
        for c in &topo.campuses {
            let (latitude, longitude) = CAMPUS_PLACES[c.index % CAMPUS_PLACES.len()];
            inv.sites.push(InventorySite {
                id: c.name.clone(),
                latitude,
                longitude,
                witness: false,
            });
            inv.hosts.push(InventoryHost {
                id: format!("{}1", c.name),
                site: c.name.clone(),
                cpu_mhz: 8000,
                memory_mib: 4096,
                libvirt_uri: c.libvirt_uri(),
                migration_address: Some(c.inside_ip.to_string()),
            });
        }
        if let Some(w) = &topo.witness {
            inv.sites.push(InventorySite {
                id: w.name.clone(),
                latitude: WITNESS_PLACE.0,
                longitude: WITNESS_PLACE.1,
                witness: true,
            });
        }
        let campuses: Vec<&str> = topo.campuses.iter().map(|c| c.name.as_str()).collect();
        for (i, x) in campuses.iter().enumerate() {
            for y in &campuses[i + 1..] {
                inv.wan.push(InventoryWan {
                    between: [x.to_string(), y.to_string()],
                    mbit,
                    migration_share,
                });
            }
        }
        inv
    }

    /// Adds guest `vm` (priority 1) starting at campus `site`'s host, with
    /// its real domain XML for `image` and the lab's domain type.
    pub fn vm(
        mut self,
        topo: &Topology,
        vm: &crate::VmSpec,
        site: &str,
        image: &crate::lab::guest::GuestImage,
    ) -> LabInventory {
        self.vms.push(InventoryVm {
            spec: vm.clone(),
            priority: 1,
            site: site.into(),
            host: format!("{site}1"),
            domain_xml: vm.domain_xml(image, &topo.virt_type),
        });
        self
    }

    /// Sets host `host`'s memory (e.g. small, to force where guests go).
    pub fn host_memory(mut self, host: &str, memory_mib: u64) -> LabInventory {
        for h in self.hosts.iter_mut().filter(|h| h.id == host) {
            h.memory_mib = memory_mib;
        }
        self
    }

    /// Adds `key = value` (a TOML value, verbatim) to the `[migration]` table.
    pub fn migration(mut self, key: &str, value: &str) -> LabInventory {
        self.migration.push((key.into(), value.into()));
        self
    }

    /// The inventory's text.
    pub fn to_toml(&self) -> String {
        let q = toml_string;
        let mut t = String::new();
        for s in &self.sites {
            t.push_str(&format!(
                "[[site]]\nid = {}\nlatitude = {:?}\nlongitude = {:?}\n",
                q(&s.id),
                s.latitude,
                s.longitude
            ));
            if s.witness {
                t.push_str("witness = true\n");
            }
            t.push('\n');
        }
        for h in &self.hosts {
            t.push_str(&format!(
                "[[host]]\nid = {}\nsite = {}\ncpu_mhz = {}\nmemory_mib = {}\nlibvirt_uri = {}\n",
                q(&h.id),
                q(&h.site),
                h.cpu_mhz,
                h.memory_mib,
                q(&h.libvirt_uri)
            ));
            if let Some(m) = &h.migration_address {
                t.push_str(&format!("migration_address = {}\n", q(m)));
            }
            t.push('\n');
        }
        for v in &self.vms {
            t.push_str(&format!(
                "[[vm]]\nid = {}\nmac = {}\nip = {}\npriority = {}\nsite = {}\nhost = {}\nvcpus = 1\ncpu_mhz = 1000\nmemory_mib = {}\nstorage = \"shared\"\ndomain_xml = {}\n\n",
                q(&v.spec.name),
                q(&v.spec.mac),
                q(&v.spec.ip.to_string()),
                v.priority,
                q(&v.site),
                q(&v.host),
                v.spec.memory_mib,
                q(&format!("{}.xml", v.spec.name)),
            ));
        }
        for w in &self.wan {
            t.push_str(&format!(
                "[[wan]]\nbetween = [{}, {}]\nmbit = {}\nmigration_share = {:?}\n\n",
                q(&w.between[0]),
                q(&w.between[1]),
                w.mbit,
                w.migration_share
            ));
        }
        if !self.migration.is_empty() {
            t.push_str("[migration]\n");
            for (k, v) in &self.migration {
                t.push_str(&format!("{k} = {v}\n"));
            }
        }
        t
    }

    /// Writes `inventory.toml` and each guest's `<name>.xml` into `dir`;
    /// returns the inventory's path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for v in &self.vms {
            let xml = dir.join(format!("{}.xml", v.spec.name));
            fs::write(&xml, &v.domain_xml).with_context(|| format!("writing {}", xml.display()))?;
        }
        let path = dir.join("inventory.toml");
        fs::write(&path, self.to_toml()).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes the two-campus inventory of the first inventory tests into `dir`
/// (`inventory.toml`, and a stub `lms1.xml`): campuses a and b with hosts a1
/// and b1 (16 GiB each, no migration address) reached at `libvirt_uris`,
/// the witness w, and `vm` at a1; no WAN links. Returns the file's path.
/// [`LabInventory`] writes every lab's inventory.
pub fn write_lab_inventory(
    dir: &Path,
    libvirt_uris: [&str; 2],
    vm: &crate::VmSpec,
) -> Result<PathBuf> {
    let site = |id: &str, (latitude, longitude): (f64, f64), witness| InventorySite {
        id: id.into(),
        latitude,
        longitude,
        witness,
    };
    let host = |id: &str, site: &str, uri: &str| InventoryHost {
        id: id.into(),
        site: site.into(),
        cpu_mhz: 8000,
        memory_mib: 16384,
        libvirt_uri: uri.into(),
        migration_address: None,
    };
    LabInventory {
        sites: vec![
            site("a", CAMPUS_PLACES[0], false),
            site("b", CAMPUS_PLACES[1], false),
            site("w", WITNESS_PLACE, true),
        ],
        hosts: vec![
            host("a1", "a", libvirt_uris[0]),
            host("b1", "b", libvirt_uris[1]),
        ],
        vms: vec![InventoryVm {
            spec: vm.clone(),
            priority: 1,
            site: "a".into(),
            host: "a1".into(),
            domain_xml: format!("<domain type='qemu'><name>{}</name></domain>", vm.name),
        }],
        wan: Vec::new(),
        migration: Vec::new(),
    }
    .write(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::guest::GuestImage;
    use crate::lab::{Campus, WanHost};
    use crate::VmSpec;
    use std::net::Ipv4Addr;

    fn topology(campuses: usize) -> Topology {
        let host = |name: &str, net: u8| WanHost {
            name: name.into(),
            ns: format!("hl-t-{name}"),
            ip: Ipv4Addr::new(198, 18, net, 2),
            wan_gateway: Ipv4Addr::new(198, 18, net, 1),
        };
        Topology {
            id: "t".into(),
            wan_ns: "hl-t-wan".into(),
            campuses: (0..campuses)
                .map(|i| {
                    let name = ((b'a' + i as u8) as char).to_string();
                    Campus {
                        index: i,
                        ns: format!("hl-t-{name}"),
                        public_ip: Ipv4Addr::new(198, 18, i as u8, 2),
                        wan_gateway: Ipv4Addr::new(198, 18, i as u8, 1),
                        inside_ip: Ipv4Addr::new(10, 70, 0, 2 + i as u8),
                        dir: format!("/run/hinan-lab/t/site-{name}").into(),
                        hypervisor: true,
                        name,
                    }
                })
                .collect(),
            client: host("cl", 100),
            witness: Some(host("w", 99)),
            virt_type: "qemu".into(),
        }
    }

    fn image() -> GuestImage {
        GuestImage {
            kernel: "/cache/vmlinuz".into(),
            initrd: "/cache/initrd.gz".into(),
        }
    }

    fn table<'a>(v: &'a toml::Value, key: &str) -> &'a Vec<toml::Value> {
        v.get(key)
            .and_then(toml::Value::as_array)
            .unwrap_or_else(|| panic!("no [[{key}]] in {v}"))
    }

    #[test]
    fn three_campuses_give_sites_hosts_guests_every_wan_pair_and_migration_settings() {
        let topo = topology(3);
        let dir = std::env::temp_dir().join(format!("hinan-lab-inv-{}", std::process::id()));
        let big = VmSpec::lms(2, 256, 160, 0);
        let busy = VmSpec::lms(3, 192, 96, 8);
        let inv = LabInventory::of_lab(&topo, 100, 0.5)
            .vm(&topo, &big, "a", &image())
            .vm(&topo, &busy, "b", &image())
            .host_memory("c1", 512)
            .migration("max_downtime_ms", "300")
            .migration("auto_converge", "true")
            .migration("encryption", "\"vpn\"");
        let path = inv.write(&dir).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let v: toml::Value = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));

        let sites: Vec<(&str, bool)> = table(&v, "site")
            .iter()
            .map(|s| {
                (
                    s["id"].as_str().unwrap(),
                    s.get("witness")
                        .and_then(toml::Value::as_bool)
                        .unwrap_or(false),
                )
            })
            .collect();
        assert_eq!(
            sites,
            [("a", false), ("b", false), ("c", false), ("w", true)]
        );

        let hosts = table(&v, "host");
        assert_eq!(hosts.len(), 3, "{text}");
        for (h, c) in hosts.iter().zip(&topo.campuses) {
            assert_eq!(h["id"].as_str(), Some(format!("{}1", c.name).as_str()));
            assert_eq!(h["site"].as_str(), Some(c.name.as_str()));
            assert_eq!(h["cpu_mhz"].as_integer(), Some(8000));
            assert_eq!(h["libvirt_uri"].as_str(), Some(c.libvirt_uri().as_str()));
            assert_eq!(
                h["migration_address"].as_str(),
                Some(c.inside_ip.to_string().as_str())
            );
        }
        let memory: Vec<i64> = hosts
            .iter()
            .map(|h| h["memory_mib"].as_integer().unwrap())
            .collect();
        assert_eq!(memory, [4096, 4096, 512]);

        let vms = table(&v, "vm");
        assert_eq!(vms.len(), 2);
        for (vm, (spec, site)) in vms.iter().zip([(&big, "a"), (&busy, "b")]) {
            assert_eq!(vm["id"].as_str(), Some(spec.name.as_str()));
            assert_eq!(vm["mac"].as_str(), Some(spec.mac.as_str()));
            assert_eq!(vm["ip"].as_str(), Some(spec.ip.to_string().as_str()));
            assert_eq!(vm["site"].as_str(), Some(site));
            assert_eq!(vm["host"].as_str(), Some(format!("{site}1").as_str()));
            assert_eq!(vm["memory_mib"].as_integer(), Some(spec.memory_mib as i64));
            assert_eq!(vm["vcpus"].as_integer(), Some(1));
            assert_eq!(vm["cpu_mhz"].as_integer(), Some(1000));
            assert_eq!(vm["storage"].as_str(), Some("shared"));
            let file = dir.join(vm["domain_xml"].as_str().unwrap());
            let xml = fs::read_to_string(&file).unwrap();
            assert_eq!(xml, spec.domain_xml(&image(), "qemu"));
        }
        assert!(fs::read_to_string(dir.join("lms3.xml"))
            .unwrap()
            .contains("hinan.fill=96 hinan.dirty=8"));

        let pairs: Vec<(String, String, i64, f64)> = table(&v, "wan")
            .iter()
            .map(|w| {
                let b = w["between"].as_array().unwrap();
                (
                    b[0].as_str().unwrap().into(),
                    b[1].as_str().unwrap().into(),
                    w["mbit"].as_integer().unwrap(),
                    w["migration_share"].as_float().unwrap(),
                )
            })
            .collect();
        let want: Vec<(String, String, i64, f64)> = [("a", "b"), ("a", "c"), ("b", "c")]
            .iter()
            .map(|(x, y)| (x.to_string(), y.to_string(), 100, 0.5))
            .collect();
        assert_eq!(pairs, want);

        let m = v["migration"].as_table().unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m["max_downtime_ms"].as_integer(), Some(300));
        assert_eq!(m["auto_converge"].as_bool(), Some(true));
        assert_eq!(m["encryption"].as_str(), Some("vpn"));
        let _ = fs::remove_dir_all(&dir);
    }

    /// Until the orchestrator's parser knows `migration_address` and
    /// `[migration]`, everything else the writer produces must already be
    /// what it accepts.
    #[test]
    fn the_orchestrator_accepts_the_rest_of_the_inventory() {
        let topo = topology(3);
        let inv = LabInventory::of_lab(&topo, 1000, 0.25)
            .vm(&topo, &VmSpec::lms(2, 256, 160, 8), "c", &image())
            .migration("max_parallel", "1");
        let text: String = inv
            .to_toml()
            .split("[migration]")
            .next()
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("migration_address"))
            .map(|l| format!("{l}\n"))
            .collect();
        let xml = inv.vms[0].domain_xml.clone().into_bytes();
        let parsed =
            hinan_orchestrator::core::inventory::parse(&text, "inventory.toml", &mut |f| {
                assert_eq!(f, "lms2.xml");
                Ok(xml.clone())
            })
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(parsed.sites.len(), 4);
        assert_eq!(parsed.hosts.len(), 3);
        assert_eq!(parsed.wan.len(), 3);
        assert_eq!(parsed.vms[0].id, "lms2");
        assert_eq!(parsed.vms[0].host, "c1");
        assert_eq!(parsed.vms[0].spec.memory_mib, 256);
    }

    #[test]
    fn the_first_inventory_tests_keep_their_two_campus_file() {
        let dir = std::env::temp_dir().join(format!("hinan-lab-inv2-{}", std::process::id()));
        let path =
            write_lab_inventory(&dir, ["qemu:///a", "qemu:///b"], &VmSpec::default()).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let v: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(table(&v, "site").len(), 3);
        let hosts = table(&v, "host");
        assert_eq!(hosts[1]["libvirt_uri"].as_str(), Some("qemu:///b"));
        assert!(
            hosts.iter().all(|h| h.get("migration_address").is_none()),
            "{text}"
        );
        assert!(
            v.get("wan").is_none() && v.get("migration").is_none(),
            "{text}"
        );
        assert!(text.contains("memory_mib = 128"), "{text}");
        assert!(dir.join("lms1.xml").exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(toml_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
        let v: toml::Value =
            toml::from_str(&format!("k = {}", toml_string("a\"b\\c\n\u{1}"))).unwrap();
        assert_eq!(v["k"].as_str(), Some("a\"b\\c\n\u{1}"));
    }
}
