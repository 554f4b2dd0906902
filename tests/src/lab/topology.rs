//! The lab: real campuses on one machine.
//!
//! ```text
//!                    client ns  hl-ID-cl   wan0 198.18.100.2/24
//!                                  |
//!                               to-cl 198.18.100.1
//!      +------------------------ WAN ns hl-ID-wan (router, impairments) ----------------+
//!   to-a 198.18.0.1                       to-b 198.18.1.1                     to-w 198.18.99.1
//!      |                                     |                                   |
//!   wan0 198.18.0.2                       wan0 198.18.1.2                     wan0 198.18.99.2
//!   campus A  hl-ID-a                     campus B  hl-ID-b                   witness hl-ID-w
//!   in0 10.70.0.1 (gw), 10.70.0.2         in0 10.70.0.3                       (no dataplane)
//!   OVS br0 (netdev): in0-br, hv0         OVS br0: in0-br, hv0
//!   hinan vpn (TAP hv0) ==== EtherIP [in WireGuard] over the WAN ==== hinan vpn
//!   libvirtd + virtlogd, QEMU guests      libvirtd + virtlogd
//!             service segment 10.70.0.0/24, LMS VM 10.70.0.10 (gw 10.70.0.1)
//! ```
//!
//! Campus *i* (letters a, b, c…) has public address 198.18.*i*.2/24. The WAN
//! routes the service segment 10.70.0.0/24 to campus A, so the client reaches
//! the VM through A by plain routing wherever the VM runs. The segments are
//! one Ethernet through hinan's L2 VPN: a `hinan vpn run` per campus edge, its
//! TAP device `hv0` a port of the campus bridge, a full mesh of tunnels over
//! the WAN ([`SegmentLink`]: EtherIP in WireGuard by default, or raw EtherIP;
//! a veth star from A instead for tests that need a path beside the WAN).
//! Every campus runs its own ovsdb-server, ovs-vswitchd, virtlogd and
//! libvirtd inside its network namespace and a private mount namespace.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::lab::procs::ProcRecord;
use crate::lab::run::{self, RunDir};
use crate::lab::sys::{self, ip, run_in};
use crate::lab::vpn::SegmentLink;
use crate::lab::vpn::{self, MeshOptions, VpnSite};
use crate::lab::wan::{self, WanState};

/// The service segment shared by every campus.
pub const SEGMENT_PREFIX: &str = "10.70.0.0/24";
/// The first-hop gateway of the segment (at campus A until the SDN issue distributes it).
pub const SEGMENT_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 70, 0, 1);
/// The port QEMU receives live migrations on.
pub const MIGRATION_PORT: u16 = 49152;

/// What to build.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// Run id; generated when `None`. Namespaces are called `hl-ID-*`.
    pub id: Option<String>,
    /// Number of campuses (2 by default, at most 8).
    pub campuses: usize,
    /// Add a witness site: a namespace on the WAN with no dataplane.
    pub witness: bool,
    /// Start Open vSwitch and libvirtd at each campus (off for pure-WAN tests).
    pub hypervisors: bool,
    /// Outlive the process that built it (`hinan-lab up`), until `hinan-lab down`.
    pub persistent: bool,
    /// libvirt domain type: `qemu` (TCG) here; `kvm` on machines with VT-x or AMD-V.
    pub virt_type: String,
    /// How the campus segments are joined: hinan's VPN (WireGuard by
    /// default, or raw EtherIP), or a veth star.
    pub segment: SegmentLink,
}

impl LabSpec {
    /// Campuses, client and WAN only: no Open vSwitch, no libvirt (fast).
    pub fn wan_only() -> LabSpec {
        LabSpec {
            hypervisors: false,
            ..LabSpec::default()
        }
    }
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec {
            id: None,
            campuses: 2,
            witness: false,
            hypervisors: true,
            persistent: false,
            virt_type: std::env::var("HINAN_LAB_VIRT_TYPE").unwrap_or_else(|_| "qemu".into()),
            segment: SegmentLink::default(),
        }
    }
}

/// One campus edge.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Campus {
    pub index: usize,
    /// `a`, `b`, …
    pub name: String,
    pub ns: String,
    pub public_ip: Ipv4Addr,
    pub wan_gateway: Ipv4Addr,
    /// This campus's own address on the service segment.
    pub inside_ip: Ipv4Addr,
    /// Where its daemons keep their state (bind-mounted over /run, /etc/libvirt… in its mount namespace).
    pub dir: PathBuf,
    pub hypervisor: bool,
}

impl Campus {
    /// The libvirt URI of this campus's daemon, usable from the host.
    pub fn libvirt_uri(&self) -> String {
        format!(
            "qemu:///system?socket={}",
            self.dir.join("run/libvirt/libvirt-sock").display()
        )
    }

    /// Runs `virsh` against this campus.
    pub fn virsh(&self, args: &[&str]) -> Result<String> {
        let uri = self.libvirt_uri();
        let mut all = vec!["60", "virsh", "-q", "-c", uri.as_str()];
        all.extend_from_slice(args);
        sys::run("timeout", &all)
    }

    /// Runs `ovs-vsctl` against this campus's ovsdb.
    pub fn ovs_vsctl(&self, args: &[&str]) -> Result<String> {
        let db = format!(
            "--db=unix:{}",
            self.dir.join("run/openvswitch/db.sock").display()
        );
        let mut all = vec!["--timeout=20", db.as_str()];
        all.extend_from_slice(args);
        sys::run("ovs-vsctl", &all)
    }

    /// Runs `ovs-appctl` against this campus's ovs-vswitchd.
    pub fn ovs_appctl(&self, args: &[&str]) -> Result<String> {
        let dir = self.dir.join("run/openvswitch");
        let ctl = fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("ovs-vswitchd.") && n.ends_with(".ctl"))
            })
            .with_context(|| format!("no ovs-vswitchd control socket in {}", dir.display()))?;
        let target = ctl.to_string_lossy().into_owned();
        let mut all = vec!["-t", target.as_str()];
        all.extend_from_slice(args);
        sys::run("ovs-appctl", &all)
    }

    /// The state libvirt reports for domain `name` here, or `None` if it is not defined here.
    pub fn domstate(&self, name: &str) -> Result<Option<String>> {
        let all = self.virsh(&["list", "--all", "--name"])?;
        if !all.lines().any(|l| l.trim() == name) {
            return Ok(None);
        }
        Ok(Some(self.virsh(&["domstate", name])?.trim().to_string()))
    }
}

/// A host on the WAN that is not a campus: the client or the witness.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WanHost {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    pub wan_gateway: Ipv4Addr,
}

/// The lab's layout, saved in the run directory so other commands can find it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Topology {
    pub id: String,
    pub wan_ns: String,
    pub campuses: Vec<Campus>,
    pub client: WanHost,
    pub witness: Option<WanHost>,
    pub virt_type: String,
}

impl Topology {
    /// Address prefixes behind WAN link `link` (`a`, `b`, …, `w`, `cl`).
    pub fn link_prefixes(&self, link: &str) -> Result<Vec<String>> {
        if let Some(c) = self.campuses.iter().find(|c| c.name == link) {
            let mut p = vec![format!("198.18.{}.0/24", c.index)];
            if c.index == 0 {
                p.push(SEGMENT_PREFIX.to_string());
            }
            return Ok(p);
        }
        for h in [Some(&self.client), self.witness.as_ref()]
            .into_iter()
            .flatten()
        {
            if h.name == link {
                let o = h.ip.octets();
                return Ok(vec![format!("{}.{}.{}.0/24", o[0], o[1], o[2])]);
            }
        }
        bail!(
            "the lab has no WAN link '{link}' (links: {})",
            self.link_names().join(", ")
        )
    }

    /// Names of all WAN links.
    pub fn link_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.campuses.iter().map(|c| c.name.clone()).collect();
        names.extend(self.witness.iter().map(|w| w.name.clone()));
        names.push(self.client.name.clone());
        names
    }

    pub fn campus(&self, name: &str) -> Result<&Campus> {
        self.campuses
            .iter()
            .find(|c| c.name == name)
            .with_context(|| format!("the lab has no campus '{name}'"))
    }
}

/// A running lab. Dropping it tears it down unless it is persistent.
#[derive(Debug)]
pub struct Lab {
    pub run: RunDir,
    pub topo: Topology,
    finished: bool,
}

impl Lab {
    /// Builds a lab. On any error everything built so far is removed again.
    pub fn up(spec: &LabSpec) -> Result<Lab> {
        if !(1..=8).contains(&spec.campuses) {
            bail!("a lab has 1 to 8 campuses, not {}", spec.campuses);
        }
        check_tools(spec.hypervisors)?;
        run::reap_stale();
        let id = spec.id.clone().unwrap_or_else(new_id);
        let run = RunDir::create(&id, spec.persistent)?;
        let topo = plan(&run, spec);
        fs::write(
            run.path.join("topology.json"),
            serde_json::to_vec_pretty(&topo)?,
        )?;
        let mut lab = Lab {
            run,
            topo,
            finished: false,
        };
        if let Err(e) = lab.build(spec) {
            let problems = lab.teardown();
            if problems.is_empty() {
                return Err(e.context("building the lab failed; everything it built was removed"));
            }
            return Err(e.context(format!(
                "building the lab failed, and clean-up had problems: {}",
                problems.join("; ")
            )));
        }
        Ok(lab)
    }

    /// Opens the lab of run `id` built by another process (for `hinan-lab`).
    pub fn open(id: &str) -> Result<Lab> {
        let path = run::base_dir().join(id);
        let run = RunDir::open(&path).with_context(|| format!("no lab '{id}' is up"))?;
        let text = fs::read_to_string(path.join("topology.json"))?;
        Ok(Lab {
            run,
            topo: serde_json::from_str(&text)?,
            finished: false,
        })
    }

    /// Tears the lab down now; returns the problems met (empty when clean).
    pub fn teardown(&mut self) -> Vec<String> {
        self.finished = true;
        self.run.teardown()
    }

    /// Leaves a persistent lab running when this handle is dropped.
    pub fn detach(mut self) {
        self.finished = true;
    }

    pub fn campus(&self, name: &str) -> Result<&Campus> {
        self.topo.campus(name)
    }

    /// What the lab holds now, to check after teardown that none of it is left.
    pub fn footprint(&self) -> Footprint {
        Footprint {
            namespaces: self.run.manifest.namespaces.clone(),
            netns_inodes: run::netns_inodes(&self.run.manifest.namespaces),
            processes: self.recorded_processes(),
            run_dir: self.run.path.clone(),
        }
    }

    /// Processes the lab recorded (daemons and QEMU) that are alive now.
    pub fn recorded_processes(&self) -> Vec<ProcRecord> {
        let mut all: Vec<ProcRecord> = self.run.manifest.processes.clone();
        for dir in &self.run.manifest.qemu_pid_dirs {
            all.extend(run::pidfiles_in(dir, "qemu"));
        }
        all.retain(ProcRecord::alive);
        all
    }

    /// Records a process the caller started for this lab, so that teardown
    /// (or the next lab, after a crash) stops it by PID and start time.
    pub fn record(&mut self, rec: ProcRecord) -> Result<()> {
        self.run.add_process(rec)
    }

    /// The WAN impairments in force.
    pub fn wan_state(&self) -> WanState {
        WanState::load(&self.run.path).unwrap_or_default()
    }

    fn build(&mut self, spec: &LabSpec) -> Result<()> {
        let topo = self.topo.clone();
        let mut names = vec![topo.wan_ns.clone(), topo.client.ns.clone()];
        names.extend(topo.witness.iter().map(|w| w.ns.clone()));
        names.extend(topo.campuses.iter().map(|c| c.ns.clone()));
        for ns in &names {
            sys::run("ip", &["netns", "add", ns])?;
            self.run.add_namespace(ns)?;
            ip(ns, &["link", "set", "lo", "up"])?;
        }
        let wan = topo.wan_ns.as_str();
        sysctl(wan, "net.ipv4.ip_forward", "1")?;
        sysctl(wan, "net.ipv4.conf.all.rp_filter", "0")?;
        sysctl(wan, "net.ipv4.conf.default.rp_filter", "0")?;
        for c in &topo.campuses {
            wan_link(wan, &c.name, &c.ns, c.public_ip, c.wan_gateway)?;
            sysctl(&c.ns, "net.ipv4.ip_forward", "1")?;
        }
        for h in [Some(&topo.client), topo.witness.as_ref()]
            .into_iter()
            .flatten()
        {
            wan_link(wan, &h.name, &h.ns, h.ip, h.wan_gateway)?;
        }
        let a = &topo.campuses[0];
        ip(
            wan,
            &[
                "route",
                "add",
                SEGMENT_PREFIX,
                "via",
                &a.public_ip.to_string(),
            ],
        )?;
        wan::apply(self, &WanState::default())?;
        if spec.hypervisors {
            self.start_campus_daemons()?;
            self.build_segment(spec.segment)?;
        }
        Ok(())
    }

    fn start_campus_daemons(&mut self) -> Result<()> {
        let campuses = self.topo.campuses.clone();
        let uuid_base = std::process::id();
        for c in &campuses {
            for d in ["run", "lib", "log", "cache", "etc/qemu", "ovs"] {
                fs::create_dir_all(c.dir.join(d))?;
            }
            fs::write(
                c.dir.join("etc/libvirtd.conf"),
                format!(
                    "host_uuid = \"{:08x}-{:04x}-4000-8000-{:012x}\"\nlog_outputs = \"3:file:/var/log/libvirt/libvirtd.log\"\n",
                    uuid_base,
                    c.index,
                    0x4c4142_u64 + c.index as u64
                ),
            )?;
            fs::write(
                c.dir.join("etc/qemu.conf"),
                "user = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\nremember_owner = 0\nsecurity_driver = \"none\"\n",
            )?;
            for host_dir in [
                "/var/lib/libvirt",
                "/var/log/libvirt",
                "/var/cache/libvirt",
                "/etc/libvirt",
            ] {
                fs::create_dir_all(host_dir)?;
            }
            run_in(
                &c.ns,
                "unshare",
                &[
                    "-m",
                    "--propagation",
                    "private",
                    "sh",
                    "-ec",
                    &daemon_script(&c.dir),
                ],
            )
            .with_context(|| format!("starting the daemons of campus {}", c.name))?;
            for (role, file) in [
                ("ovsdb-server", "ovs/ovsdb-server.pid"),
                ("ovs-vswitchd", "ovs/ovs-vswitchd.pid"),
                ("virtlogd", "virtlogd.pid"),
                ("libvirtd", "libvirtd.pid"),
            ] {
                let rec = sys::wait_for(
                    &format!("{role} of campus {} to write its pidfile", c.name),
                    Duration::from_secs(10),
                    Duration::from_millis(50),
                    || {
                        Ok(ProcRecord::from_pidfile(
                            &format!("{}/{role}", c.name),
                            &c.dir.join(file),
                        ))
                    },
                )?;
                self.record(rec)?;
            }
            self.run
                .manifest
                .libvirt_sockets
                .push(c.dir.join("run/libvirt/libvirt-sock"));
            self.run
                .manifest
                .qemu_pid_dirs
                .push(c.dir.join("run/libvirt/qemu"));
            self.run.save()?;
        }
        // The first call to a fresh libvirtd waits for its QEMU capability probe
        // (about 8 s): wait for all campuses at once.
        let waits: Vec<_> = campuses
            .iter()
            .cloned()
            .map(|c| {
                std::thread::spawn(move || {
                    sys::wait_for(
                        &format!("libvirtd of campus {} to answer", c.name),
                        Duration::from_secs(90),
                        Duration::from_millis(200),
                        || Ok(c.virsh(&["version"]).ok().map(|_| ())),
                    )
                })
            })
            .collect();
        for w in waits {
            w.join()
                .map_err(|_| anyhow::anyhow!("a libvirtd wait panicked"))??;
        }
        Ok(())
    }

    fn build_segment(&mut self, link: SegmentLink) -> Result<()> {
        let topo = self.topo.clone();
        for c in &topo.campuses {
            c.ovs_vsctl(&[
                "add-br",
                "br0",
                "--",
                "set",
                "bridge",
                "br0",
                "datapath_type=netdev",
            ])?;
            ip(
                &c.ns,
                &[
                    "link", "add", "in0", "type", "veth", "peer", "name", "in0-br",
                ],
            )?;
            no_tx_offload(&c.ns, "in0")?;
            no_tx_offload(&c.ns, "in0-br")?;
            ip(&c.ns, &["link", "set", "in0-br", "up"])?;
            ip(&c.ns, &["link", "set", "in0", "up"])?;
            if c.index == 0 {
                ip(
                    &c.ns,
                    &[
                        "addr",
                        "add",
                        &format!("{SEGMENT_GATEWAY}/24"),
                        "dev",
                        "in0",
                    ],
                )?;
            }
            ip(
                &c.ns,
                &["addr", "add", &format!("{}/24", c.inside_ip), "dev", "in0"],
            )?;
            c.ovs_vsctl(&["add-port", "br0", "in0-br"])?;
        }
        if link == SegmentLink::Veth {
            return self.build_veth_star();
        }
        let sites = self.vpn_sites();
        vpn::write_mesh(&sites, &MeshOptions::new(link))?;
        for (site, c) in sites.iter().zip(&topo.campuses) {
            let appliance = crate::lab::cluster::control_socket(&self.run.path, &c.name);
            let rec = vpn::start_endpoint(site, vpn::LAB_TAP, Some(&appliance))?;
            self.record(rec)?;
            c.ovs_vsctl(&["add-port", "br0", vpn::LAB_TAP])?;
        }
        Ok(())
    }

    /// The VPN endpoint of each campus.
    pub fn vpn_sites(&self) -> Vec<VpnSite> {
        self.topo
            .campuses
            .iter()
            .map(|c| VpnSite {
                name: c.name.clone(),
                ns: c.ns.clone(),
                public_ip: c.public_ip,
                dir: c.dir.join("vpn"),
            })
            .collect()
    }

    /// A star of veth pairs from campus A to each other campus.
    fn build_veth_star(&mut self) -> Result<()> {
        let topo = self.topo.clone();
        let a = &topo.campuses[0];
        for c in &topo.campuses[1..] {
            let here = format!("seg-{}", c.name);
            let there = format!("seg-{}", a.name);
            sys::run(
                "ip",
                &[
                    "link", "add", &here, "netns", &a.ns, "type", "veth", "peer", "name", &there,
                    "netns", &c.ns,
                ],
            )?;
            for (ns, dev, campus) in [(&a.ns, &here, a), (&c.ns, &there, c)] {
                no_tx_offload(ns, dev)?;
                ip(ns, &["link", "set", dev, "up"])?;
                campus.ovs_vsctl(&["add-port", "br0", dev])?;
            }
        }
        Ok(())
    }

    /// Waits until `url` answers HTTP 200 from the client namespace; returns the time waited.
    pub fn wait_http(&self, url: &str, limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        sys::wait_for(
            &format!("{url} to answer from the client"),
            limit,
            Duration::from_millis(100),
            || {
                Ok(
                    match crate::lab::probe::http_get(
                        &self.topo.client.ns,
                        url,
                        Duration::from_millis(500),
                    ) {
                        Ok((200, _)) => Some(start.elapsed()),
                        _ => None,
                    },
                )
            },
        )
    }

    /// A human summary of the lab.
    pub fn status(&self) -> String {
        let mut out = format!(
            "lab {} (run dir {})\n",
            self.topo.id,
            self.run.path.display()
        );
        out.push_str(&format!(
            "  client {}: {} (gw {})\n",
            self.topo.client.ns, self.topo.client.ip, self.topo.client.wan_gateway
        ));
        if let Some(w) = &self.topo.witness {
            out.push_str(&format!("  witness {}: {}\n", w.ns, w.ip));
        }
        for c in &self.topo.campuses {
            out.push_str(&format!(
                "  campus {} ({}): public {} inside {}{}\n",
                c.name,
                c.ns,
                c.public_ip,
                c.inside_ip,
                if c.index == 0 {
                    format!(" + gateway {SEGMENT_GATEWAY}")
                } else {
                    String::new()
                }
            ));
            if c.hypervisor {
                match c.virsh(&["list", "--all"]) {
                    Ok(list) => {
                        for l in list.lines().filter(|l| !l.trim().is_empty()) {
                            out.push_str(&format!(
                                "    vm: {}\n",
                                l.split_whitespace().collect::<Vec<_>>().join(" ")
                            ));
                        }
                    }
                    Err(e) => out.push_str(&format!("    libvirtd: {e:#}\n")),
                }
            }
        }
        let wan = self.wan_state();
        out.push_str(&format!("  wan: {}\n", wan.describe()));
        let alive = self.recorded_processes();
        out.push_str(&format!(
            "  processes: {}\n",
            alive
                .iter()
                .map(|p| format!("{}={}", p.role, p.pid))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        out
    }
}

/// A lab's namespaces and processes, taken while it runs.
#[derive(Debug, Clone)]
pub struct Footprint {
    pub namespaces: Vec<String>,
    pub netns_inodes: Vec<u64>,
    pub processes: Vec<ProcRecord>,
    pub run_dir: PathBuf,
}

impl Footprint {
    /// Everything of the lab that still exists: namespaces, recorded processes,
    /// any process at all inside one of its network namespaces, its run directory.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for ns in &self.namespaces {
            if run::netns_exists(ns) {
                left.push(format!("namespace {ns}"));
            }
        }
        for p in &self.processes {
            if p.alive() {
                left.push(format!("process {} (pid {})", p.role, p.pid));
            }
        }
        for (pid, comm) in crate::lab::procs::processes_in_netns(&self.netns_inodes) {
            left.push(format!("process {comm} (pid {pid}) in a lab namespace"));
        }
        if self.run_dir.exists() && std::env::var_os("HINAN_LAB_KEEP").is_none() {
            left.push(format!("run directory {}", self.run_dir.display()));
        }
        left
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.finished && !self.run.manifest.persistent {
            let problems = self.teardown();
            for p in problems {
                eprintln!("hinan-lab clean-up: {p}");
            }
        }
    }
}

fn plan(run: &RunDir, spec: &LabSpec) -> Topology {
    let id = run.manifest.id.clone();
    let campuses = (0..spec.campuses)
        .map(|i| {
            let name = ((b'a' + i as u8) as char).to_string();
            Campus {
                index: i,
                ns: run.netns_name(&name),
                public_ip: Ipv4Addr::new(198, 18, i as u8, 2),
                wan_gateway: Ipv4Addr::new(198, 18, i as u8, 1),
                inside_ip: Ipv4Addr::new(10, 70, 0, 2 + i as u8),
                dir: run.path.join(format!("site-{name}")),
                hypervisor: spec.hypervisors,
                name,
            }
        })
        .collect();
    let host = |name: &str, net: u8| WanHost {
        name: name.to_string(),
        ns: run.netns_name(name),
        ip: Ipv4Addr::new(198, 18, net, 2),
        wan_gateway: Ipv4Addr::new(198, 18, net, 1),
    };
    Topology {
        id,
        wan_ns: run.netns_name("wan"),
        campuses,
        client: host("cl", 100),
        witness: spec.witness.then(|| host("w", 99)),
        virt_type: spec.virt_type.clone(),
    }
}

/// Joins `ns` to the WAN over a veth pair: `wan0` there, `to-NAME` in the WAN.
fn wan_link(wan: &str, name: &str, ns: &str, addr: Ipv4Addr, gw: Ipv4Addr) -> Result<()> {
    let outer = format!("to-{name}");
    sys::run(
        "ip",
        &[
            "link", "add", "wan0", "netns", ns, "type", "veth", "peer", "name", &outer, "netns",
            wan,
        ],
    )?;
    no_tx_offload(ns, "wan0")?;
    no_tx_offload(wan, &outer)?;
    ip(ns, &["addr", "add", &format!("{addr}/24"), "dev", "wan0"])?;
    ip(wan, &["addr", "add", &format!("{gw}/24"), "dev", &outer])?;
    ip(ns, &["link", "set", "wan0", "up"])?;
    ip(wan, &["link", "set", &outer, "up"])?;
    ip(ns, &["route", "add", "default", "via", &gw.to_string()])?;
    Ok(())
}

/// Open vSwitch's userspace datapath reads veths through AF_PACKET without
/// vnet headers, so partially checksummed packets would leave with bad
/// checksums: have the kernel complete checksums before the packet leaves.
fn no_tx_offload(ns: &str, dev: &str) -> Result<()> {
    run_in(ns, "ethtool", &["-K", dev, "tx", "off"]).map(|_| ())
}

fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    run_in(ns, "sysctl", &["-qw", &format!("{key}={value}")]).map(|_| ())
}

/// The shell run inside a campus's network namespace and private mount
/// namespace: bind the campus's own directories over the daemons' paths, then
/// start ovsdb-server, ovs-vswitchd, virtlogd and libvirtd with pidfiles.
fn daemon_script(dir: &Path) -> String {
    let s = dir.display();
    format!(
        r#"
mount --bind {s}/run /run
mount --bind {s}/lib /var/lib/libvirt
mount --bind {s}/log /var/log/libvirt
mount --bind {s}/cache /var/cache/libvirt
mount --bind {s}/etc /etc/libvirt
mkdir -p /run/libvirt /run/openvswitch /run/lock /var/lib/libvirt/qemu /var/log/libvirt/qemu
ovsdb-tool create {s}/ovs/conf.db /usr/share/openvswitch/vswitch.ovsschema
ovsdb-server {s}/ovs/conf.db --remote=punix:/run/openvswitch/db.sock --pidfile={s}/ovs/ovsdb-server.pid --detach --log-file={s}/ovs/ovsdb-server.log -vconsole:off
ovs-vsctl --no-wait init
ovs-vswitchd unix:/run/openvswitch/db.sock --pidfile={s}/ovs/ovs-vswitchd.pid --detach --log-file={s}/ovs/ovs-vswitchd.log -vconsole:off
virtlogd -d -p {s}/virtlogd.pid
libvirtd -d -p {s}/libvirtd.pid
"#
    )
}

fn check_tools(hypervisors: bool) -> Result<()> {
    let mut need = vec![
        "ip", "nft", "ethtool", "sysctl", "ping", "unshare", "timeout",
    ];
    if hypervisors {
        need.extend([
            "ovsdb-server",
            "ovsdb-tool",
            "ovs-vswitchd",
            "ovs-vsctl",
            "ovs-appctl",
            "libvirtd",
            "virtlogd",
            "virsh",
            "qemu-system-x86_64",
        ]);
    }
    let missing: Vec<&str> = need.into_iter().filter(|t| !sys::have(t)).collect();
    if !missing.is_empty() {
        bail!(
            "the lab needs {} (run `make test` or `.ci/deps.sh test` as root to install them)",
            missing.join(", ")
        );
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab needs root (network namespaces, Open vSwitch, libvirt)");
    }
    Ok(())
}

/// A short run id, unique on this machine.
fn new_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:05x}", (std::process::id() ^ nanos ^ (n << 12)) & 0xfffff)
}
