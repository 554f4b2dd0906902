//! The operators' inventory file: what hinan is responsible for.
//!
//! Pure: [`parse`] turns the file's text into a checked [`Inventory`] (each
//! refusal names `FILE:LINE`), [`diff`] says what applying it would change in
//! a [`ClusterState`], and [`plan_apply`] gives the one command that applies
//! it atomically ([`Command::ApplyInventory`]). The domain XML files are read
//! through the caller's `read` function (the shell's [`load`] reads them from
//! disk, beside the inventory).
//!
//! ```toml
//! [[site]]
//! id = "a"
//! latitude = 35.68
//! longitude = 139.76
//! witness = false             # default false; a witness site runs no VMs
//!
//! [[host]]
//! id = "a1"
//! site = "a"
//! cpu_mhz = 16000
//! memory_mib = 32768
//! libvirt_uri = "qemu+tls://a1.campus-a/system"
//! migration_address = "10.70.0.2"   # where migration streams to a1 go: its
//!                             # address on the service segment, inside the VPN
//!
//! [[vm]]
//! id = "lms1"
//! mac = "52:54:00:70:00:10"
//! ip = "10.70.0.10"
//! priority = 1                # lower is more important
//! site = "a"                  # home site
//! host = "a1"                 # optional home host (at the home site)
//! vcpus = 2
//! cpu_mhz = 4000              # reserved
//! memory_mib = 4096           # reserved
//! storage = "shared"          # "shared" | "replicated" | "local"
//! domain_xml = "lms1.xml"     # relative to this file, at most 1 MiB
//! check = { kind = "tcp", port = 443 }   # default: HTTP GET / on port 80 → 200
//!
//! [[service]]
//! hostname = "lms.univ-a.example"
//! vm = "lms1"
//! protocol = "tcp"            # default "tcp"; or "udp"
//! ports = [{ public = 443, private = 8443 }]
//! public_address = { a = "198.18.0.80", b = "198.18.1.80" }
//!
//! [[wan]]
//! between = ["a", "b"]
//! mbit = 1000
//! migration_share = 0.5       # default 0.5, in (0, 1]
//!
//! [migration]                 # every key optional; the defaults shown
//! max_downtime_ms = 300
//! auto_converge = true
//! post_copy = false           # switch to post-copy if the first pass does not converge
//! compression = false         # XBZRLE
//! parallel_connections = 1
//! timeout_s = 900             # abort (the VM stays at its source) when longer
//! max_parallel = 2            # migrations at once from one site
//! encryption = "vpn"          # "vpn": stream to migration_address; "tls": libvirt's TLS
//! retries = 1                 # re-plans to another host after a failure
//!
//! [areas]
//! "130000" = ["a"]            # area code (JMA, CAP geocode) → site ids
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::core::moves::MigrationPolicy;
use crate::core::state::{
    ClusterState, Command, Host, PortMap, Protocol, Service, Site, SiteId, StorageMode, Vm,
    VmCheck, VmSpec, WanLink,
};

/// The largest domain XML file accepted.
pub const MAX_DOMAIN_XML: usize = 1 << 20;
/// The largest inventory file accepted.
pub const MAX_INVENTORY: usize = 16 << 20;

/// A checked inventory, as replicated in [`Command::ApplyInventory`]. Each
/// VM's `site`/`host` are its home (its host empty when not pinned).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub sites: Vec<Site>,
    pub hosts: Vec<Host>,
    pub vms: Vec<Vm>,
    pub services: Vec<Service>,
    pub wan: Vec<WanLink>,
    pub areas: BTreeMap<String, Vec<SiteId>>,
    #[serde(default)]
    pub migration: MigrationPolicy,
}

/// One refusal: `FILE:LINE: message` (`FILE: message` when toml gives no place).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub file: String,
    /// 1-based.
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.file, l, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Every refusal of one file; nothing is applied when there is any.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Refused(pub Vec<Refusal>);

/// At most this many refusals are shown; the rest are counted.
const SHOWN_REFUSALS: usize = 50;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, r) in self.0.iter().take(SHOWN_REFUSALS).enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{r}")?;
        }
        if self.0.len() > SHOWN_REFUSALS {
            write!(f, "\n… and {} more", self.0.len() - SHOWN_REFUSALS)?;
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    site: Vec<RawSite>,
    #[serde(default)]
    host: Vec<RawHost>,
    #[serde(default)]
    vm: Vec<RawVm>,
    #[serde(default)]
    service: Vec<RawService>,
    #[serde(default)]
    wan: Vec<RawWan>,
    #[serde(default)]
    areas: BTreeMap<String, Spanned<Vec<String>>>,
    #[serde(default)]
    migration: Option<Spanned<MigrationPolicy>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    id: Spanned<String>,
    latitude: Spanned<f64>,
    longitude: f64,
    #[serde(default)]
    witness: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    id: Spanned<String>,
    site: Spanned<String>,
    cpu_mhz: u64,
    memory_mib: u64,
    libvirt_uri: String,
    #[serde(default)]
    migration_address: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVm {
    id: Spanned<String>,
    mac: Spanned<String>,
    ip: Spanned<String>,
    priority: u32,
    site: Spanned<String>,
    #[serde(default)]
    host: Option<Spanned<String>>,
    vcpus: u32,
    cpu_mhz: u64,
    memory_mib: u64,
    storage: StorageMode,
    domain_xml: Spanned<String>,
    #[serde(default)]
    check: VmCheck,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    hostname: Spanned<String>,
    vm: Spanned<String>,
    #[serde(default)]
    protocol: Protocol,
    ports: Spanned<Vec<PortMap>>,
    public_address: BTreeMap<String, Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWan {
    between: Spanned<Vec<String>>,
    mbit: u64,
    #[serde(default)]
    migration_share: Option<f64>,
}

/// 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    let at = at.min(text.len());
    text.as_bytes()[..at]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Collects refusals, each at the line of a span.
struct Checker<'a> {
    text: &'a str,
    file: &'a str,
    out: Vec<Refusal>,
}

impl Checker<'_> {
    fn refuse<T>(&mut self, at: &Spanned<T>, message: String) {
        self.out.push(Refusal {
            file: self.file.to_string(),
            line: Some(line_of(self.text, at.span().start)),
            message,
        });
    }
}

/// A MAC address as six colon-separated hex pairs.
fn valid_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Parses and checks inventory `text`; `file` names it in refusals and
/// `read(path)` gives the bytes of a domain XML file named in it (the path
/// as written, relative to the inventory), at most `MAX_DOMAIN_XML + 1` of them.
pub fn parse(
    text: &str,
    file: &str,
    read: &mut dyn FnMut(&str) -> std::io::Result<Vec<u8>>,
) -> Result<Inventory, Refused> {
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        Refused(vec![Refusal {
            file: file.to_string(),
            line: e.span().map(|s| line_of(text, s.start)),
            message: e.message().trim().to_string(),
        }])
    })?;
    let mut c = Checker {
        text,
        file,
        out: Vec::new(),
    };
    let mut inv = Inventory::default();

    let mut sites: BTreeMap<String, bool> = BTreeMap::new();
    for s in &raw.site {
        if sites.insert(s.id.get_ref().clone(), s.witness).is_some() {
            c.refuse(
                &s.id,
                format!("site '{}' is declared twice", s.id.get_ref()),
            );
        }
        if !(-90.0..=90.0).contains(s.latitude.get_ref())
            || !(-180.0..=180.0).contains(&s.longitude)
        {
            c.refuse(
                &s.latitude,
                format!(
                    "site '{}': latitude must be in [-90, 90] and longitude in [-180, 180]",
                    s.id.get_ref()
                ),
            );
        }
        inv.sites.push(Site {
            id: s.id.get_ref().clone(),
            location: Some((*s.latitude.get_ref(), s.longitude)),
            witness: s.witness,
        });
    }

    let mut hosts: BTreeMap<String, (String, u64, u64)> = BTreeMap::new();
    for h in &raw.host {
        if !sites.contains_key(h.site.get_ref()) {
            c.refuse(
                &h.site,
                format!(
                    "host '{}': unknown site '{}'",
                    h.id.get_ref(),
                    h.site.get_ref()
                ),
            );
        }
        let value = (h.site.get_ref().clone(), h.cpu_mhz, h.memory_mib);
        if hosts.insert(h.id.get_ref().clone(), value).is_some() {
            c.refuse(
                &h.id,
                format!("host '{}' is declared twice", h.id.get_ref()),
            );
        }
        inv.hosts.push(Host {
            name: h.id.get_ref().clone(),
            site: h.site.get_ref().clone(),
            cpu_mhz: h.cpu_mhz,
            memory_mib: h.memory_mib,
            libvirt_uri: h.libvirt_uri.clone(),
            migration_address: match &h.migration_address {
                Some(a) if a.get_ref().parse::<IpAddr>().is_err() => {
                    c.refuse(
                        a,
                        format!(
                            "host '{}': migration_address '{}' is not an IP address",
                            h.id.get_ref(),
                            a.get_ref()
                        ),
                    );
                    String::new()
                }
                Some(a) => a.get_ref().clone(),
                None => String::new(),
            },
        });
    }
    // Hosts that can run VMs: not at a witness site.
    let usable: Vec<(u64, u64)> = hosts
        .values()
        .filter(|(site, _, _)| sites.get(site) == Some(&false))
        .map(|&(_, cpu, mem)| (cpu, mem))
        .collect();

    let mut vm_ids = BTreeSet::new();
    let mut macs = BTreeSet::new();
    let mut pinned: BTreeMap<String, (u64, u64, Vec<String>)> = BTreeMap::new();
    for v in &raw.vm {
        let id = v.id.get_ref();
        if !vm_ids.insert(id.clone()) {
            c.refuse(&v.id, format!("vm '{id}' is declared twice"));
        }
        if !valid_mac(v.mac.get_ref()) {
            c.refuse(
                &v.mac,
                format!(
                    "vm '{id}': invalid MAC '{}' (six hex pairs, 52:54:00:…)",
                    v.mac.get_ref()
                ),
            );
        } else if !macs.insert(v.mac.get_ref().to_ascii_lowercase()) {
            c.refuse(
                &v.mac,
                format!("vm '{id}': MAC {} is used twice", v.mac.get_ref()),
            );
        }
        if v.ip.get_ref().parse::<IpAddr>().is_err() {
            c.refuse(
                &v.ip,
                format!("vm '{id}': invalid IP address '{}'", v.ip.get_ref()),
            );
        }
        match sites.get(v.site.get_ref()) {
            None => c.refuse(
                &v.site,
                format!("vm '{id}': unknown site '{}'", v.site.get_ref()),
            ),
            Some(true) => c.refuse(
                &v.site,
                format!(
                    "vm '{id}': site '{}' is a witness and runs no VMs",
                    v.site.get_ref()
                ),
            ),
            Some(false) => {}
        }
        if let Some(h) = &v.host {
            match hosts.get(h.get_ref()) {
                None => c.refuse(h, format!("vm '{id}': unknown host '{}'", h.get_ref())),
                Some((hsite, _, _)) if hsite != v.site.get_ref() => c.refuse(
                    h,
                    format!(
                        "vm '{id}': home host '{}' is at site '{hsite}', not at its home site '{}'",
                        h.get_ref(),
                        v.site.get_ref()
                    ),
                ),
                Some(_) => {
                    let e = pinned.entry(h.get_ref().clone()).or_default();
                    e.0 += v.cpu_mhz;
                    e.1 += v.memory_mib;
                    e.2.push(id.clone());
                }
            }
        }
        if !usable
            .iter()
            .any(|&(cpu, mem)| v.cpu_mhz <= cpu && v.memory_mib <= mem)
        {
            c.refuse(
                &v.id,
                format!(
                    "vm '{id}' fits no host: it reserves {} MHz and {} MiB, more than any non-witness host has",
                    v.cpu_mhz, v.memory_mib
                ),
            );
        }
        let xml = match read(v.domain_xml.get_ref()) {
            Err(e) => {
                c.refuse(
                    &v.domain_xml,
                    format!(
                        "vm '{id}': cannot read domain_xml '{}': {e}",
                        v.domain_xml.get_ref()
                    ),
                );
                String::new()
            }
            Ok(bytes) if bytes.len() > MAX_DOMAIN_XML => {
                c.refuse(
                    &v.domain_xml,
                    format!(
                        "vm '{id}': domain_xml '{}' is larger than 1 MiB",
                        v.domain_xml.get_ref()
                    ),
                );
                String::new()
            }
            Ok(bytes) => String::from_utf8(bytes).unwrap_or_else(|_| {
                c.refuse(
                    &v.domain_xml,
                    format!(
                        "vm '{id}': domain_xml '{}' is not UTF-8",
                        v.domain_xml.get_ref()
                    ),
                );
                String::new()
            }),
        };
        inv.vms.push(Vm {
            id: id.clone(),
            mac: v.mac.get_ref().clone(),
            ip: v.ip.get_ref().clone(),
            priority: v.priority,
            site: v.site.get_ref().clone(),
            host: v
                .host
                .as_ref()
                .map(|h| h.get_ref().clone())
                .unwrap_or_default(),
            storage: v.storage,
            check: v.check.clone(),
            spec: VmSpec {
                vcpus: v.vcpus,
                cpu_mhz: v.cpu_mhz,
                memory_mib: v.memory_mib,
                domain_xml: xml,
                home_site: v.site.get_ref().clone(),
                home_host: v.host.as_ref().map(|h| h.get_ref().clone()),
            },
        });
    }
    for (host, (cpu, mem, vms)) in &pinned {
        let (_, hcpu, hmem) = &hosts[host];
        if cpu > hcpu || mem > hmem {
            // Name the line of the last VM that overflowed it.
            let last = raw
                .vm
                .iter()
                .rev()
                .find(|v| v.host.as_ref().map(|h| h.get_ref()) == Some(host))
                .and_then(|v| v.host.as_ref());
            let msg = format!(
                "host '{host}' is over capacity: the VMs pinned to it ({}) reserve {cpu} MHz and {mem} MiB, it has {hcpu} MHz and {hmem} MiB",
                vms.join(", ")
            );
            if let Some(at) = last {
                c.refuse(at, msg);
            }
        }
    }

    let mut hostnames = BTreeSet::new();
    // (site, address, protocol, public port) → the service that took it.
    let mut taken: BTreeMap<(String, String, Protocol, u16), String> = BTreeMap::new();
    for s in &raw.service {
        let name = s.hostname.get_ref();
        if !hostnames.insert(name.to_ascii_lowercase()) {
            c.refuse(&s.hostname, format!("service '{name}' is declared twice"));
        }
        if !vm_ids.contains(s.vm.get_ref()) {
            c.refuse(
                &s.vm,
                format!("service '{name}': unknown vm '{}'", s.vm.get_ref()),
            );
        }
        if s.ports.get_ref().is_empty() {
            c.refuse(&s.ports, format!("service '{name}': no ports"));
        }
        for (site, addr) in &s.public_address {
            if !sites.contains_key(site) {
                c.refuse(addr, format!("service '{name}': unknown site '{site}'"));
            }
            if addr.get_ref().parse::<IpAddr>().is_err() {
                c.refuse(
                    addr,
                    format!(
                        "service '{name}': invalid address '{}' at site '{site}'",
                        addr.get_ref()
                    ),
                );
            }
            for p in s.ports.get_ref() {
                let key = (site.clone(), addr.get_ref().clone(), s.protocol, p.public);
                if let Some(other) = taken.insert(key, name.clone()) {
                    c.refuse(
                        &s.ports,
                        format!(
                            "service '{name}': {} port {} at {} (site '{site}') is already used by service '{other}'",
                            s.protocol, p.public, addr.get_ref()
                        ),
                    );
                }
            }
        }
        inv.services.push(Service {
            hostname: name.clone(),
            vm: s.vm.get_ref().clone(),
            ports: s.ports.get_ref().iter().map(|p| p.public).collect(),
            public_address: s
                .public_address
                .iter()
                .map(|(k, v)| (k.clone(), v.get_ref().clone()))
                .collect(),
            protocol: s.protocol,
            port_map: s.ports.get_ref().clone(),
        });
    }

    let mut pairs = BTreeSet::new();
    for w in &raw.wan {
        let b = w.between.get_ref();
        if b.len() != 2 || b[0] == b[1] {
            c.refuse(
                &w.between,
                "wan: between must name two different sites".into(),
            );
            continue;
        }
        for s in b {
            if !sites.contains_key(s) {
                c.refuse(&w.between, format!("wan: unknown site '{s}'"));
            }
        }
        let key = if b[0] < b[1] {
            (b[0].clone(), b[1].clone())
        } else {
            (b[1].clone(), b[0].clone())
        };
        if !pairs.insert(key) {
            c.refuse(
                &w.between,
                format!("wan {} – {} is declared twice", b[0], b[1]),
            );
        }
        let share = w.migration_share.unwrap_or(0.5);
        if !(share > 0.0 && share <= 1.0) {
            c.refuse(
                &w.between,
                format!(
                    "wan {} – {}: migration_share must be in (0, 1], not {share}",
                    b[0], b[1]
                ),
            );
        }
        if w.mbit == 0 {
            c.refuse(
                &w.between,
                format!("wan {} – {}: mbit must be > 0", b[0], b[1]),
            );
        }
        inv.wan.push(WanLink {
            between: [b[0].clone(), b[1].clone()],
            mbit: w.mbit,
            migration_share: share,
        });
    }

    for (code, list) in &raw.areas {
        for s in list.get_ref() {
            if !sites.contains_key(s) {
                c.refuse(list, format!("area '{code}': unknown site '{s}'"));
            }
        }
        inv.areas.insert(code.clone(), list.get_ref().clone());
    }

    if let Some(m) = &raw.migration {
        let p = m.get_ref();
        let bounds: [(&str, u64, u64, u64); 5] = [
            ("max_downtime_ms", p.max_downtime_ms, 1, 60_000),
            ("parallel_connections", p.parallel_connections.into(), 1, 64),
            ("timeout_s", p.timeout_s, 1, 86_400),
            ("max_parallel", p.max_parallel.into(), 1, 32),
            ("retries", p.retries.into(), 0, 10),
        ];
        for (key, value, lo, hi) in bounds {
            if !(lo..=hi).contains(&value) {
                c.refuse(
                    m,
                    format!("migration: {key} must be in {lo}..={hi}, not {value}"),
                );
            }
        }
        inv.migration = p.clone();
    }

    if c.out.is_empty() {
        Ok(inv)
    } else {
        c.out.sort_by_key(|r| r.line);
        Err(Refused(c.out))
    }
}

fn opt(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("(none)")
}

fn check_text(c: &VmCheck) -> String {
    match c {
        VmCheck::Tcp { port } => format!("tcp {port}"),
        VmCheck::Http {
            port,
            path,
            expect_status,
        } => format!("http {port} {path} → {expect_status}"),
    }
}

fn ports_text(s: &Service) -> String {
    format!("{} {}", s.protocol, port_list(s))
}

/// A service's ports as an operator reads them: `443→8443,80` (public→private
/// where they differ in the map, else the public ports).
pub fn port_list(s: &Service) -> String {
    let map: Vec<String> = if s.port_map.is_empty() {
        s.ports.iter().map(|p| p.to_string()).collect()
    } else {
        s.port_map
            .iter()
            .map(|p| format!("{}→{}", p.public, p.private))
            .collect()
    };
    map.join(",")
}

fn addresses_text(s: &Service) -> String {
    s.public_address
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn location_text(s: &Site) -> String {
    match s.location {
        Some((lat, lon)) => format!("{lat}, {lon}"),
        None => "(none)".into(),
    }
}

fn wan_key(w: &WanLink) -> (String, String) {
    let [a, b] = &w.between;
    if a < b {
        (a.clone(), b.clone())
    } else {
        (b.clone(), a.clone())
    }
}

/// What applying `inv` to `state` changes, one human-readable line each;
/// empty when nothing does (applying it again is a no-op). A VM's current
/// location is not compared: the inventory does not own it.
pub fn diff(inv: &Inventory, state: &ClusterState) -> Vec<String> {
    let mut out = Vec::new();
    macro_rules! field {
        ($kind:expr, $id:expr, $name:expr, $old:expr, $new:expr) => {
            if $old != $new {
                out.push(format!(
                    "change {} {} {} {} → {}",
                    $kind, $id, $name, $old, $new
                ));
            }
        };
    }

    let new_sites: BTreeMap<&str, &Site> = inv.sites.iter().map(|s| (s.id.as_str(), s)).collect();
    for s in &inv.sites {
        match state.sites.get(&s.id) {
            None => out.push(format!(
                "add site {} at {}{}",
                s.id,
                location_text(s),
                if s.witness { " (witness)" } else { "" }
            )),
            Some(o) => {
                field!("site", s.id, "location", location_text(o), location_text(s));
                field!("site", s.id, "witness", o.witness, s.witness);
            }
        }
    }
    for id in state.sites.keys() {
        if !new_sites.contains_key(id.as_str()) {
            out.push(format!("remove site {id}"));
        }
    }

    let new_hosts: BTreeSet<&str> = inv.hosts.iter().map(|h| h.name.as_str()).collect();
    for h in &inv.hosts {
        match state.hosts.get(&h.name) {
            None => out.push(format!(
                "add host {} at site {} ({} MHz, {} MiB)",
                h.name, h.site, h.cpu_mhz, h.memory_mib
            )),
            Some(o) => {
                field!("host", h.name, "site", o.site, h.site);
                field!("host", h.name, "cpu_mhz", o.cpu_mhz, h.cpu_mhz);
                field!("host", h.name, "memory_mib", o.memory_mib, h.memory_mib);
                field!("host", h.name, "libvirt_uri", o.libvirt_uri, h.libvirt_uri);
                field!(
                    "host",
                    h.name,
                    "migration_address",
                    o.migration_address,
                    h.migration_address
                );
            }
        }
    }
    for id in state.hosts.keys() {
        if !new_hosts.contains(id.as_str()) {
            out.push(format!("remove host {id}"));
        }
    }

    let new_vms: BTreeSet<&str> = inv.vms.iter().map(|v| v.id.as_str()).collect();
    for v in &inv.vms {
        match state.vms.get(&v.id) {
            None => out.push(format!(
                "add vm {} at site {} (priority {}, {} vCPUs, {} MHz, {} MiB)",
                v.id, v.site, v.priority, v.spec.vcpus, v.spec.cpu_mhz, v.spec.memory_mib
            )),
            Some(o) => {
                let (n, s) = (&v.spec, &o.spec);
                field!("vm", v.id, "mac", o.mac, v.mac);
                field!("vm", v.id, "ip", o.ip, v.ip);
                field!("vm", v.id, "priority", o.priority, v.priority);
                field!(
                    "vm",
                    v.id,
                    "storage",
                    format!("{:?}", o.storage).to_lowercase(),
                    format!("{:?}", v.storage).to_lowercase()
                );
                field!(
                    "vm",
                    v.id,
                    "check",
                    check_text(&o.check),
                    check_text(&v.check)
                );
                field!("vm", v.id, "home site", s.home_site, n.home_site);
                field!(
                    "vm",
                    v.id,
                    "home host",
                    opt(&s.home_host),
                    opt(&n.home_host)
                );
                field!("vm", v.id, "vcpus", s.vcpus, n.vcpus);
                field!("vm", v.id, "cpu_mhz", s.cpu_mhz, n.cpu_mhz);
                field!("vm", v.id, "memory_mib", s.memory_mib, n.memory_mib);
                if s.domain_xml != n.domain_xml {
                    out.push(format!(
                        "change vm {} domain XML ({} → {} bytes)",
                        v.id,
                        s.domain_xml.len(),
                        n.domain_xml.len()
                    ));
                }
            }
        }
    }
    for id in state.vms.keys() {
        if !new_vms.contains(id.as_str()) {
            out.push(format!("remove vm {id}"));
        }
    }

    let new_services: BTreeSet<&str> = inv.services.iter().map(|s| s.hostname.as_str()).collect();
    for s in &inv.services {
        match state.services.get(&s.hostname) {
            None => out.push(format!(
                "add service {} on vm {} ({}; {})",
                s.hostname,
                s.vm,
                ports_text(s),
                addresses_text(s)
            )),
            Some(o) => {
                field!("service", s.hostname, "vm", o.vm, s.vm);
                // Old states have `ports` alone: compare what each means.
                if ports_text(o) != ports_text(s) || o.ports != s.ports {
                    out.push(format!(
                        "change service {} ports {} → {}",
                        s.hostname,
                        ports_text(o),
                        ports_text(s)
                    ));
                }
                field!(
                    "service",
                    s.hostname,
                    "public_address",
                    addresses_text(o),
                    addresses_text(s)
                );
            }
        }
    }
    for id in state.services.keys() {
        if !new_services.contains(id.as_str()) {
            out.push(format!("remove service {id}"));
        }
    }

    let old_wan: BTreeMap<_, &WanLink> = state.wan.iter().map(|w| (wan_key(w), w)).collect();
    let new_wan: BTreeMap<_, &WanLink> = inv.wan.iter().map(|w| (wan_key(w), w)).collect();
    for (k, w) in &new_wan {
        let name = format!("{} – {}", k.0, k.1);
        match old_wan.get(k) {
            None => out.push(format!(
                "add wan {name} ({} Mbit/s, migrations {})",
                w.mbit, w.migration_share
            )),
            Some(o) => {
                field!("wan", name, "mbit", o.mbit, w.mbit);
                field!(
                    "wan",
                    name,
                    "migration_share",
                    o.migration_share,
                    w.migration_share
                );
            }
        }
    }
    for k in old_wan.keys() {
        if !new_wan.contains_key(k) {
            out.push(format!("remove wan {} – {}", k.0, k.1));
        }
    }

    for (code, list) in &inv.areas {
        match state.areas.get(code) {
            None => out.push(format!("add area {code} → {}", list.join(", "))),
            Some(o) => field!("area", code, "sites", o.join(", "), list.join(", ")),
        }
    }
    for code in state.areas.keys() {
        if !inv.areas.contains_key(code) {
            out.push(format!("remove area {code}"));
        }
    }
    if inv.migration != state.migration {
        out.push(format!("change migration policy → {:?}", inv.migration));
    }
    out
}

/// What `hinan apply` does: the changes, and the one command to propose
/// (none on a dry run or when nothing changes).
#[derive(Debug, Clone, PartialEq)]
pub struct ApplyPlan {
    pub changes: Vec<String>,
    pub command: Option<Command>,
}

/// Why an inventory cannot go into one command: its serialized size (the
/// domain XML mostly) exceeds what a proposal, and the control socket's
/// request line, may carry.
pub fn check_command_size(command: &Command) -> Result<(), String> {
    // Room for the control request's envelope around the command.
    let limit = crate::core::replica::MAX_PROPOSAL - 1024;
    let size = serde_json::to_vec(command)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > limit {
        Err(format!(
            "the inventory is {size} bytes as one command, more than the {limit} a proposal may carry (shorten the domain XML or split the inventory)"
        ))
    } else {
        Ok(())
    }
}

pub fn plan_apply(inv: &Inventory, state: &ClusterState, dry_run: bool) -> ApplyPlan {
    let changes = diff(inv, state);
    let command = (!dry_run && !changes.is_empty()).then(|| Command::ApplyInventory(inv.clone()));
    ApplyPlan { changes, command }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::state::StorageMode;
    use proptest::prelude::*;

    const EXAMPLE: &str = include_str!("../../examples/inventory.toml");

    fn example_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
    }

    /// Every domain XML file is a small one, except `big.xml` (over 1 MiB)
    /// and `missing.xml` (absent).
    fn fake_read(rel: &str) -> std::io::Result<Vec<u8>> {
        match rel {
            "missing.xml" => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "No such file or directory",
            )),
            "big.xml" => Ok(vec![b' '; MAX_DOMAIN_XML + 1]),
            _ => Ok(format!("<domain><name>{rel}</name></domain>").into_bytes()),
        }
    }

    fn parse_text(text: &str) -> Result<Inventory, Refused> {
        parse(text, "inv.toml", &mut fake_read)
    }

    /// The example with `from` replaced by `to` (which must occur once).
    fn edited(from: &str, to: &str) -> String {
        assert_eq!(EXAMPLE.matches(from).count(), 1, "{from}");
        EXAMPLE.replace(from, to)
    }

    /// 1-based line of the first line of `text` containing `needle` after the `nth` occurrence of `after`.
    fn line_in(text: &str, after: &str, nth: usize, needle: &str) -> usize {
        let start = text.match_indices(after).nth(nth).expect("anchor").0;
        let at = start + text[start..].find(needle).expect("needle");
        line_of(text, at)
    }

    /// Asserts `text` is refused with one refusal at `line` whose message contains `what`.
    fn refused_at(text: &str, line: usize, what: &str) {
        let e = parse_text(text).expect_err("accepted");
        let shown = e.to_string();
        assert!(
            e.0.iter()
                .any(|r| r.line == Some(line) && r.message.contains(what)),
            "wanted line {line} '{what}', got:\n{shown}"
        );
        assert!(shown.contains(&format!("inv.toml:{line}: ")), "{shown}");
    }

    use crate::shell::inventory::load;
    use std::path::Path;

    fn example() -> Inventory {
        load(&example_dir().join("inventory.toml")).expect("the example is good")
    }

    use crate::core::state::tests::p;

    #[test]
    fn the_example_parses_and_checks_with_defaults() {
        let inv = example();
        assert_eq!(inv.sites.len(), 3);
        assert!(inv.sites.iter().any(|s| s.id == "w" && s.witness));
        assert_eq!(inv.hosts.len(), 2);
        let lms = inv.vms.iter().find(|v| v.id == "lms1").unwrap();
        assert_eq!(lms.spec.home_host.as_deref(), Some("a1"));
        assert_eq!(lms.spec.cpu_mhz, 4000);
        assert!(lms.spec.domain_xml.contains("<name>lms1</name>"));
        let wiki = inv.vms.iter().find(|v| v.id == "wiki1").unwrap();
        assert_eq!(wiki.storage, StorageMode::Replicated);
        assert_eq!(wiki.host, "");
        let svc = inv
            .services
            .iter()
            .find(|s| s.hostname == "wiki.univ-b.example")
            .unwrap();
        assert_eq!(svc.protocol, Protocol::Tcp, "protocol defaults to tcp");
        let lms_svc = inv.services.iter().find(|s| s.vm == "lms1").unwrap();
        assert_eq!(lms_svc.ports, vec![443, 80]);
        assert_eq!(
            lms_svc.port_map[0],
            PortMap {
                public: 443,
                private: 8443
            }
        );
        let aw = inv.wan.iter().find(|w| w.between[1] == "w").unwrap();
        assert_eq!(aw.migration_share, 0.5, "migration_share defaults to 0.5");
        assert_eq!(inv.areas["130000"], vec!["a".to_string()]);
        let a1 = inv.hosts.iter().find(|h| h.name == "a1").unwrap();
        assert_eq!(a1.migration_address, "10.70.0.2");
        assert_eq!(inv.migration.max_parallel, 1);
        assert_eq!(inv.migration.max_downtime_ms, 300);
    }

    #[test]
    fn a_bad_migration_address_or_policy_is_refused_with_its_line() {
        let bad = edited(
            "migration_address = \"10.70.0.3\"",
            "migration_address = \"campus-b\"",
        );
        refused_at(
            &bad,
            line_in(&bad, "migration_address = \"campus-b", 0, "campus-b"),
            "migration_address 'campus-b' is not an IP address",
        );
        let bad = edited("max_parallel = 1", "max_parallel = 0");
        let e = parse_text(&bad).unwrap_err().to_string();
        let table = line_in(&bad, "[migration]", 0, "max_downtime");
        assert!(
            e.contains("max_parallel must be in 1..=32, not 0")
                && (table - 1..=table + 9).any(|l| e.contains(&format!("inv.toml:{l}: "))),
            "{e}"
        );
        let bad = edited("encryption = \"vpn\"", "encryption = \"none\"");
        let e = parse_text(&bad).unwrap_err().to_string();
        assert!(e.contains("none") && e.contains("vpn"), "{e}");
        let bad = edited("retries = 1", "retries = 1\nturbo = true");
        let e = parse_text(&bad).unwrap_err().to_string();
        assert!(e.contains("turbo"), "{e}");
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_line() {
        let bad = edited(
            "libvirt_uri = \"qemu+tls://b1",
            "libvrt_uri = \"qemu+tls://b1",
        );
        let e = parse_text(&bad).unwrap_err().to_string();
        // toml names the key itself or its table's header.
        let key = line_in(&bad, "libvrt_uri", 0, "libvrt_uri");
        let table = line_in(&bad, "id = \"b1\"", 0, "id") - 1;
        assert!(
            (e.contains(&format!("inv.toml:{key}: "))
                || e.contains(&format!("inv.toml:{table}: ")))
                && e.contains("libvrt_uri"),
            "{e}"
        );
        let bad = edited(
            "check = { kind = \"tcp\", port = 443 }",
            "check = { kind = \"tcp\", port = 443, timeout = 1 }",
        );
        let e = parse_text(&bad).unwrap_err().to_string();
        let line = line_in(&bad, "timeout", 0, "timeout");
        assert!(
            e.contains(&format!("inv.toml:{line}: ")) && e.contains("timeout"),
            "{e}"
        );
        let top = format!("{EXAMPLE}\n[extra]\nx = 1\n");
        let e = parse_text(&top).unwrap_err().to_string();
        assert!(e.contains("extra"), "{e}");
    }

    #[test]
    fn duplicate_ids_are_refused_at_the_second() {
        let bad = edited("id = \"b1\"", "id = \"a1\"");
        refused_at(
            &bad,
            line_in(&bad, "[[host]]", 1, "id"),
            "host 'a1' is declared twice",
        );
        let bad = edited("id = \"wiki1\"", "id = \"lms1\"");
        refused_at(
            &bad,
            line_in(&bad, "[[vm]]", 1, "id"),
            "vm 'lms1' is declared twice",
        );
        let bad = edited(
            "hostname = \"wiki.univ-b.example\"",
            "hostname = \"LMS.univ-a.example\"",
        );
        refused_at(
            &bad,
            line_in(&bad, "[[service]]", 1, "hostname"),
            "declared twice",
        );
        let bad = edited("id = \"w\"", "id = \"b\"");
        refused_at(
            &bad,
            line_in(&bad, "[[site]]", 2, "id"),
            "site 'b' is declared twice",
        );
    }

    #[test]
    fn unknown_sites_and_vms_are_refused() {
        let bad = edited(
            "site = \"b\"\ncpu_mhz = 16000",
            "site = \"c\"\ncpu_mhz = 16000",
        );
        refused_at(
            &bad,
            line_in(&bad, "[[host]]", 1, "site"),
            "host 'b1': unknown site 'c'",
        );
        let bad = edited("priority = 2\nsite = \"b\"", "priority = 2\nsite = \"z\"");
        refused_at(
            &bad,
            line_in(&bad, "[[vm]]", 1, "site"),
            "vm 'wiki1': unknown site 'z'",
        );
        let bad = edited("vm = \"wiki1\"", "vm = \"wiki2\"");
        refused_at(
            &bad,
            line_in(&bad, "[[service]]", 1, "vm ="),
            "unknown vm 'wiki2'",
        );
        let bad = edited("between = [\"a\", \"w\"]", "between = [\"a\", \"q\"]");
        refused_at(
            &bad,
            line_in(&bad, "[[wan]]", 1, "between"),
            "wan: unknown site 'q'",
        );
        let bad = edited("\"270000\" = [\"b\"]", "\"270000\" = [\"x\"]");
        refused_at(
            &bad,
            line_in(&bad, "270000", 0, "270000"),
            "area '270000': unknown site 'x'",
        );
        let bad = edited(
            "public_address = { a = \"198.18.0.81\"",
            "public_address = { c = \"198.18.0.81\"",
        );
        refused_at(
            &bad,
            line_in(&bad, "[[service]]", 1, "public_address"),
            "unknown site 'c'",
        );
        let bad = edited("host = \"a1\"", "host = \"a9\"");
        refused_at(
            &bad,
            line_in(&bad, "[[vm]]", 0, "host ="),
            "unknown host 'a9'",
        );
    }

    #[test]
    fn a_home_host_at_another_site_is_refused() {
        let bad = edited("host = \"a1\"", "host = \"b1\"");
        refused_at(
            &bad,
            line_in(&bad, "[[vm]]", 0, "host ="),
            "home host 'b1' is at site 'b', not at its home site 'a'",
        );
    }

    #[test]
    fn a_vm_that_fits_no_host_is_named() {
        // 20000 MHz exceeds both campus hosts; a huge witness host does not count.
        let bad = edited("cpu_mhz = 2000", "cpu_mhz = 20000");
        refused_at(
            &bad,
            line_in(&bad, "[[vm]]", 1, "id"),
            "vm 'wiki1' fits no host",
        );
        let with_witness_host = format!(
            "{bad}\n[[host]]\nid = \"w1\"\nsite = \"w\"\ncpu_mhz = 99000\nmemory_mib = 99000\nlibvirt_uri = \"qemu:///system\"\n"
        );
        refused_at(
            &with_witness_host,
            line_in(&with_witness_host, "[[vm]]", 1, "id"),
            "vm 'wiki1' fits no host",
        );
    }

    #[test]
    fn vms_pinned_beyond_a_hosts_capacity_are_refused() {
        // Each fits a1 alone; together they reserve 36864 MiB of its 32768.
        let bad = edited("memory_mib = 4096", "memory_mib = 18432")
            .replace("memory_mib = 2048", "memory_mib = 18432")
            .replace(
                "priority = 2\nsite = \"b\"",
                "priority = 2\nsite = \"a\"\nhost = \"a1\"",
            );
        let e = parse_text(&bad).unwrap_err();
        let line = line_in(&bad, "[[vm]]", 1, "host =");
        refused_at(&bad, line, "host 'a1' is over capacity");
        assert!(e.to_string().contains("lms1, wiki1"), "{e}");
    }

    #[test]
    fn a_public_port_collision_is_refused() {
        let bad = edited(
            "public_address = { a = \"198.18.0.81\"",
            "public_address = { a = \"198.18.0.80\"",
        );
        refused_at(
            &bad,
            line_in(&bad, "[[service]]", 1, "ports"),
            "tcp port 443 at 198.18.0.80 (site 'a') is already used by service 'lms.univ-a.example'",
        );
        // The same port over UDP does not collide.
        let udp = bad.replace("vm = \"wiki1\"\n", "vm = \"wiki1\"\nprotocol = \"udp\"\n");
        parse_text(&udp).expect("udp 443 beside tcp 443");
    }

    #[test]
    fn invalid_mac_and_ip_are_refused() {
        let bad = edited("mac = \"52:54:00:70:00:11\"", "mac = \"52:54:00:70:00\"");
        refused_at(&bad, line_in(&bad, "[[vm]]", 1, "mac"), "invalid MAC");
        let bad = edited("ip = \"10.70.0.11\"", "ip = \"10.70.0.300\"");
        refused_at(
            &bad,
            line_in(&bad, "[[vm]]", 1, "ip ="),
            "invalid IP address '10.70.0.300'",
        );
        let bad = edited("mac = \"52:54:00:70:00:11\"", "mac = \"52:54:00:70:00:10\"");
        refused_at(&bad, line_in(&bad, "[[vm]]", 1, "mac"), "used twice");
    }

    #[test]
    fn a_missing_or_huge_domain_xml_is_refused() {
        let bad = edited("domain_xml = \"wiki1.xml\"", "domain_xml = \"missing.xml\"");
        refused_at(
            &bad,
            line_in(&bad, "[[vm]]", 1, "domain_xml"),
            "cannot read domain_xml 'missing.xml'",
        );
        let bad = edited("domain_xml = \"wiki1.xml\"", "domain_xml = \"big.xml\"");
        refused_at(
            &bad,
            line_in(&bad, "[[vm]]", 1, "domain_xml"),
            "larger than 1 MiB",
        );
        // And from disk: a path that is not there beside the example.
        let dir = std::env::temp_dir().join(format!("hinan-inv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("inv.toml");
        std::fs::write(
            &file,
            edited("domain_xml = \"wiki1.xml\"", "domain_xml = \"nope.xml\""),
        )
        .unwrap();
        std::fs::write(dir.join("lms1.xml"), "<domain/>").unwrap();
        let e = load(&file).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(e.contains("cannot read domain_xml 'nope.xml'"), "{e}");
    }

    #[test]
    fn wan_share_out_of_range_is_refused() {
        let bad = edited("migration_share = 0.4", "migration_share = 1.5");
        refused_at(
            &bad,
            line_in(&bad, "[[wan]]", 0, "between"),
            "migration_share must be in (0, 1]",
        );
        let bad = edited("migration_share = 0.4", "migration_share = 0.0");
        refused_at(
            &bad,
            line_in(&bad, "[[wan]]", 0, "between"),
            "migration_share",
        );
    }

    #[test]
    fn every_refusal_is_reported_at_once() {
        let bad =
            edited("ip = \"10.70.0.11\"", "ip = \"x\"").replace("vm = \"wiki1\"", "vm = \"nope\"");
        let e = parse_text(&bad).unwrap_err();
        assert_eq!(e.0.len(), 2, "{e}");
    }

    #[test]
    fn applying_yields_the_objects_and_the_diff_of_the_same_input_is_empty() {
        let inv = example();
        let mut s = ClusterState::default();
        let first = plan_apply(&inv, &s, false);
        assert!(
            first
                .changes
                .contains(&"add host b1 at site b (16000 MHz, 32768 MiB)".to_string()),
            "{:#?}",
            first.changes
        );
        let ch = s.apply(1, &p(first.command.expect("a command")));
        assert_eq!(ch.rejected, None);
        assert_eq!(
            s.hosts["a1"].libvirt_uri,
            "qemu+tls://a1.campus-a.example/system"
        );
        assert_eq!(s.vms["lms1"].spec.memory_mib, 4096);
        assert_eq!(s.services["lms.univ-a.example"].port_map.len(), 2);
        assert_eq!(s.wan.len(), 2);
        assert_eq!(s.areas.len(), 2);
        assert!(s
            .audit
            .last()
            .unwrap()
            .what
            .starts_with("inventory applied: 3 sites"));
        let again = plan_apply(&inv, &s, false);
        assert_eq!(
            again,
            ApplyPlan {
                changes: vec![],
                command: None
            },
            "apply is idempotent"
        );
    }

    #[test]
    fn applying_keeps_a_vms_current_location_and_reports_changes() {
        let inv = example();
        let mut s = ClusterState::default();
        s.apply(1, &p(Command::ApplyInventory(inv.clone())));
        s.apply(
            2,
            &p(Command::SetVmLocation {
                vm: "lms1".into(),
                site: "b".into(),
                host: "b1".into(),
            }),
        );
        assert!(
            diff(&inv, &s).is_empty(),
            "a move is not an inventory change"
        );
        let mut changed = inv.clone();
        changed
            .vms
            .iter_mut()
            .find(|v| v.id == "lms1")
            .unwrap()
            .priority = 3;
        changed.services.retain(|x| x.vm != "wiki1");
        changed.vms.retain(|v| v.id != "wiki1");
        let d = diff(&changed, &s);
        assert_eq!(
            d,
            vec![
                "change vm lms1 priority 1 → 3".to_string(),
                "remove vm wiki1".to_string(),
                "remove service wiki.univ-b.example".to_string(),
            ]
        );
        s.apply(3, &p(Command::ApplyInventory(changed.clone())));
        assert_eq!(s.vms["lms1"].site, "b", "the VM stays where it runs");
        assert_eq!(s.vms["lms1"].host, "b1");
        assert_eq!(s.vms["lms1"].priority, 3);
        assert!(!s.vms.contains_key("wiki1"));
        assert!(diff(&changed, &s).is_empty());
    }

    #[test]
    fn an_inventory_that_drops_a_site_in_use_changes_nothing() {
        let inv = example();
        let mut s = ClusterState::default();
        s.apply(1, &p(Command::ApplyInventory(inv.clone())));
        s.apply(
            2,
            &p(Command::PutAppliance(crate::core::state::Appliance {
                id: 3,
                name: "hinan-w".into(),
                site: "w".into(),
            })),
        );
        let before = s.clone();
        let mut no_w = inv.clone();
        no_w.sites.retain(|x| x.id != "w");
        no_w.wan.retain(|w| w.between[1] != "w");
        let ch = s.apply(3, &p(Command::ApplyInventory(no_w)));
        assert!(ch.rejected.unwrap().contains("leaves out site 'w'"));
        assert_eq!(s.sites, before.sites);
        assert_eq!(s.wan, before.wan);
    }

    #[test]
    fn an_inconsistent_inventory_from_a_raw_request_is_rejected_whole() {
        let mut inv = example();
        inv.vms[0].site = "nowhere".into();
        let mut s = ClusterState::default();
        let ch = s.apply(1, &p(Command::ApplyInventory(inv)));
        assert_eq!(ch.rejected.as_deref(), Some("unknown site 'nowhere'"));
        assert!(s.sites.is_empty() && s.vms.is_empty());
    }

    #[test]
    fn an_inventory_too_large_for_one_proposal_is_refused_before_proposing() {
        let mut inv = example();
        assert_eq!(
            check_command_size(&Command::ApplyInventory(inv.clone())),
            Ok(())
        );
        for v in &mut inv.vms {
            v.spec.domain_xml = "x".repeat(600 << 10);
        }
        let e = check_command_size(&Command::ApplyInventory(inv)).unwrap_err();
        assert!(e.contains("more than"), "{e}");
    }

    #[test]
    fn a_dry_run_has_the_same_diff_and_no_command() {
        let inv = example();
        let s = ClusterState::default();
        let wet = plan_apply(&inv, &s, false);
        let dry = plan_apply(&inv, &s, true);
        assert_eq!(dry.changes, wet.changes);
        assert!(!dry.changes.is_empty());
        assert_eq!(dry.command, None);
        assert!(wet.command.is_some());
    }

    #[test]
    fn the_command_round_trips_through_json_and_old_states_still_load() {
        let c = Command::ApplyInventory(example());
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), c);
        // A VM and a host as logged before the inventory existed.
        let old_vm = r#"{"op":"put-vm","id":"v","mac":"52:54:00:00:00:01","ip":"10.0.0.1","priority":1,"site":"a","host":"h","storage":"shared"}"#;
        let Command::PutVm(v) = serde_json::from_str::<Command>(old_vm).unwrap() else {
            panic!("not a put-vm")
        };
        assert_eq!(v.spec, VmSpec::default());
        let old_state = r#"{"applied":0,"sites":{},"appliances":{},"hosts":{},"vms":{},"services":{},"site_health":{},"link_health":{},"vm_health":{},"alerts":[],"plans":{},"migrations":{},"audit":[]}"#;
        let s: ClusterState = serde_json::from_str(old_state).unwrap();
        assert!(s.wan.is_empty() && s.areas.is_empty());
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        let deep = format!("x = {}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse_text(&deep).is_err());
        let many = format!(
            "[areas]\n\"1\" = [{}]\n",
            (0..100_000)
                .map(|i| format!("\"s{i}\""))
                .collect::<Vec<_>>()
                .join(",")
        );
        let e = parse_text(&many).unwrap_err();
        assert!(e.0.len() >= 100_000);
        let shown = e.to_string();
        assert_eq!(shown.lines().count(), SHOWN_REFUSALS + 1);
        assert!(
            shown.ends_with(&format!("and {} more", e.0.len() - SHOWN_REFUSALS)),
            "{shown}"
        );
        assert!(parse_text("\u{0}\u{1}\u{ff}[[[").is_err());
        let wrong_types = edited("cpu_mhz = 4000", "cpu_mhz = -4");
        assert!(parse_text(&wrong_types).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
            let _ = parse_text(&text);
        }

        /// Any inventory derived from the example (VMs dropped, priorities
        /// and capacities changed), applied over any other, leaves an empty
        /// diff and every kept VM where it ran.
        #[test]
        fn apply_then_diff_is_empty_and_locations_stay(
            keep in proptest::collection::vec(any::<bool>(), 2),
            priorities in proptest::collection::vec(0u32..5, 2),
            mem in 20_000u64..64_000,
        ) {
            let base = example();
            let mut s = ClusterState::default();
            s.apply(1, &p(Command::ApplyInventory(base.clone())));
            s.apply(2, &p(Command::SetVmLocation { vm: "lms1".into(), site: "b".into(), host: "b1".into() }));
            let mut next = base.clone();
            for (v, prio) in next.vms.iter_mut().zip(&priorities) {
                v.priority = *prio;
            }
            let dropped: Vec<String> = next.vms.iter().zip(&keep).filter(|(_, k)| !**k).map(|(v, _)| v.id.clone()).collect();
            next.vms.retain(|v| !dropped.contains(&v.id));
            next.services.retain(|x| !dropped.contains(&x.vm));
            for h in &mut next.hosts {
                h.memory_mib = mem;
            }
            let plan = plan_apply(&next, &s, false);
            if let Some(c) = plan.command {
                let ch = s.apply(3, &p(c));
                prop_assert_eq!(ch.rejected, None);
            }
            prop_assert!(diff(&next, &s).is_empty(), "{:?}", diff(&next, &s));
            if let Some(v) = s.vms.get("lms1") {
                prop_assert_eq!(&v.site, "b");
                prop_assert_eq!(&v.host, "b1");
            }
            prop_assert_eq!(s.vms.len(), keep.iter().filter(|k| **k).count());
        }

        #[test]
        fn mutated_examples_never_panic(at in 0usize..2000, junk in "[\\[\\]=\"{},a-z0-9 \n.]{0,12}") {
            let at = at.min(EXAMPLE.len());
            let at = (0..=at).rev().find(|&i| EXAMPLE.is_char_boundary(i)).unwrap_or(0);
            let text = format!("{}{}{}", &EXAMPLE[..at], junk, &EXAMPLE[at..]);
            if let Err(e) = parse_text(&text) {
                prop_assert!(e.0.iter().all(|r| r.line.is_none_or(|l| l >= 1)));
            }
        }
    }
}
