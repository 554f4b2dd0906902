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
use crate::lab::Lab;

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
        let rec = self
            .run
            .manifest
            .processes
            .iter()
            .find(|p| p.role == a.role() && p.alive())
            .cloned()
            .with_context(|| format!("{} is not running", a.name))?;
        if signal == libc::SIGTERM {
            rec.stop(Duration::from_secs(5));
        } else {
            // SAFETY: kill(2) on the PID the lab recorded for this very process.
            unsafe {
                libc::kill(rec.pid, signal);
            }
            rec.stop(Duration::from_secs(5));
        }
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

/// Writes an inventory of the lab into `dir` (`inventory.toml`, and the
/// `lms1.xml` it names): campuses a and b with hosts a1 and b1 reached at
/// `libvirt_uris`, the witness w, and `vm` at a1. Returns the file's path.
pub fn write_lab_inventory(
    dir: &Path,
    libvirt_uris: [&str; 2],
    vm: &crate::VmSpec,
) -> Result<PathBuf> {
    fs::create_dir_all(dir)?;
    fs::write(
        dir.join("lms1.xml"),
        "<domain type='qemu'><name>lms1</name></domain>",
    )?;
    let text = format!(
        r#"[[site]]
id = "a"
latitude = 35.68
longitude = 139.76

[[site]]
id = "b"
latitude = 34.69
longitude = 135.50

[[site]]
id = "w"
latitude = 36.0
longitude = 138.0
witness = true

[[host]]
id = "a1"
site = "a"
cpu_mhz = 8000
memory_mib = 16384
libvirt_uri = "{}"

[[host]]
id = "b1"
site = "b"
cpu_mhz = 8000
memory_mib = 16384
libvirt_uri = "{}"

[[vm]]
id = "{}"
mac = "{}"
ip = "{}"
priority = 1
site = "a"
host = "a1"
vcpus = 1
cpu_mhz = 1000
memory_mib = {}
storage = "shared"
domain_xml = "lms1.xml"
"#,
        libvirt_uris[0], libvirt_uris[1], vm.name, vm.mac, vm.ip, vm.memory_mib
    );
    let path = dir.join("inventory.toml");
    fs::write(&path, text)?;
    Ok(path)
}
