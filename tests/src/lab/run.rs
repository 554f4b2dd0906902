//! A lab run's directory and manifest: what it created (namespaces, processes),
//! so that `hinan-lab down`, a test's drop, or the next run after a crash can
//! remove exactly that and nothing else.
//!
//! Layout: `$HINAN_LAB_DIR` (default `/tmp/hinan-lab`) holds one directory per
//! run, named by the run id. Every namespace of run `ID` is called `hl-ID-*`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::lab::procs::{self, ProcRecord};
use crate::lab::sys;

/// Prefix of every network namespace the lab creates.
pub const NETNS_PREFIX: &str = "hl-";

/// Where run directories live.
pub fn base_dir() -> PathBuf {
    std::env::var_os("HINAN_LAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/hinan-lab"))
}

/// What a run created. Written before anything is created and updated as it goes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub id: String,
    /// The process that owns the run. A run whose owner died and that is not
    /// `persistent` is stale and is removed by the next lab that starts.
    pub owner: Option<ProcRecord>,
    /// Created by `hinan-lab up`: outlives its owner until `hinan-lab down`.
    pub persistent: bool,
    pub created_unix: u64,
    pub namespaces: Vec<String>,
    pub processes: Vec<ProcRecord>,
    /// Directories of libvirt sites (for VMs still defined there).
    pub libvirt_sockets: Vec<PathBuf>,
    /// Directories whose `*.pid` files name QEMU processes started for the run.
    pub qemu_pid_dirs: Vec<PathBuf>,
}

/// A run directory and its manifest.
#[derive(Debug)]
pub struct RunDir {
    pub path: PathBuf,
    pub manifest: Manifest,
}

impl RunDir {
    /// Creates the directory of a new run `id`.
    pub fn create(id: &str, persistent: bool) -> Result<RunDir> {
        let path = base_dir().join(id);
        if path.exists() {
            anyhow::bail!(
                "a lab run '{id}' already exists at {}; run `hinan-lab down` to remove it",
                path.display()
            );
        }
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        let manifest = Manifest {
            id: id.to_string(),
            owner: ProcRecord::of("owner", std::process::id() as i32),
            persistent,
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            namespaces: Vec::new(),
            processes: Vec::new(),
            libvirt_sockets: Vec::new(),
            qemu_pid_dirs: Vec::new(),
        };
        let run = RunDir { path, manifest };
        run.save()?;
        Ok(run)
    }

    /// Opens an existing run directory.
    pub fn open(path: &Path) -> Result<RunDir> {
        let file = path.join("manifest.json");
        let text =
            fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        let manifest =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
        Ok(RunDir {
            path: path.to_path_buf(),
            manifest,
        })
    }

    pub fn save(&self) -> Result<()> {
        let file = self.path.join("manifest.json");
        let tmp = self.path.join("manifest.json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(&self.manifest)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &file).with_context(|| format!("renaming to {}", file.display()))?;
        Ok(())
    }

    /// The name of this run's namespace `suffix`.
    pub fn netns_name(&self, suffix: &str) -> String {
        format!("{NETNS_PREFIX}{}-{suffix}", self.manifest.id)
    }

    pub fn add_namespace(&mut self, name: &str) -> Result<()> {
        self.manifest.namespaces.push(name.to_string());
        self.save()
    }

    pub fn add_process(&mut self, rec: ProcRecord) -> Result<()> {
        self.manifest.processes.retain(|p| p.role != rec.role);
        self.manifest.processes.push(rec);
        self.save()
    }

    /// Whether the run is stale: not persistent and its owner is gone.
    pub fn is_stale(&self) -> bool {
        !self.manifest.persistent && !self.manifest.owner.as_ref().is_some_and(ProcRecord::alive)
    }

    /// Removes everything the run created: VMs, then processes (newest first),
    /// then namespaces, then the directory. Goes on past errors and reports them.
    pub fn teardown(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for sock in &self.manifest.libvirt_sockets {
            if sock.exists() {
                destroy_all_domains(sock, &mut problems);
            }
        }
        for dir in &self.manifest.qemu_pid_dirs {
            for rec in pidfiles_in(dir, "qemu") {
                rec.stop(Duration::from_secs(3));
            }
        }
        for rec in self.manifest.processes.iter().rev() {
            rec.stop(Duration::from_secs(5));
            if rec.alive() {
                problems.push(format!("{} (pid {}) did not exit", rec.role, rec.pid));
            }
        }
        let mut names: Vec<String> = self.manifest.namespaces.clone();
        let prefix = format!("{NETNS_PREFIX}{}-", self.manifest.id);
        names.extend(list_netns().into_iter().filter(|n| n.starts_with(&prefix)));
        names.sort();
        names.dedup();
        for ns in names.iter().rev() {
            if netns_exists(ns) {
                if let Err(e) = sys::run("ip", &["netns", "delete", ns]) {
                    problems.push(format!("{e:#}"));
                }
            }
        }
        if std::env::var_os("HINAN_LAB_KEEP").is_none() {
            if let Err(e) = fs::remove_dir_all(&self.path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    problems.push(format!("removing {}: {e}", self.path.display()));
                }
            }
        }
        problems
    }
}

/// Every run directory under [`base_dir`].
pub fn all_runs() -> Vec<RunDir> {
    let Ok(dir) = fs::read_dir(base_dir()) else {
        return Vec::new();
    };
    let mut runs = Vec::new();
    for entry in dir.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        match RunDir::open(&path) {
            Ok(run) => runs.push(run),
            // A directory without a manifest is being created right now, or is
            // left from a run that crashed before writing one (and then owns
            // nothing but the directory): remove it once it is a minute old.
            Err(_) => {
                let old = fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > Duration::from_secs(60));
                if old {
                    let _ = fs::remove_dir_all(&path);
                }
            }
        }
    }
    runs
}

/// Removes stale runs (owner gone, not persistent), and `hl-*` namespaces that
/// belong to no run at all. Returns what it removed.
pub fn reap_stale() -> Vec<String> {
    let mut removed = Vec::new();
    let runs = all_runs();
    for run in runs.iter().filter(|r| r.is_stale()) {
        removed.push(format!("stale run {}", run.manifest.id));
        run.teardown();
    }
    for ns in list_netns() {
        // `hl-ID-SUFFIX`: a namespace whose run directory is gone belongs to no
        // run (looked up now, so a run being built meanwhile keeps its own).
        let Some(id) = ns
            .strip_prefix(NETNS_PREFIX)
            .and_then(|rest| rest.rsplit_once('-'))
            .map(|(id, _)| id)
        else {
            continue;
        };
        if !base_dir().join(id).exists() && sys::run("ip", &["netns", "delete", &ns]).is_ok() {
            removed.push(format!("orphan namespace {ns}"));
        }
    }
    removed
}

/// Names of all network namespaces in `/run/netns`.
pub fn list_netns() -> Vec<String> {
    fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Live processes named by `*.pid` files in `dir` whose command name starts with `role`
/// (libvirt keeps its own `driver.pid` beside the QEMU pidfiles).
pub fn pidfiles_in(dir: &Path, role: &str) -> Vec<ProcRecord> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
        .filter_map(|e| ProcRecord::from_pidfile(role, &e.path()))
        .filter(|r| {
            fs::read_to_string(format!("/proc/{}/comm", r.pid)).is_ok_and(|c| c.starts_with(role))
        })
        .collect()
}

fn destroy_all_domains(sock: &Path, problems: &mut Vec<String>) {
    let uri = format!("qemu:///system?socket={}", sock.display());
    let names = match sys::run(
        "timeout",
        &["20", "virsh", "-q", "-c", &uri, "list", "--all", "--name"],
    ) {
        Ok(out) => out,
        Err(e) => {
            problems.push(format!("listing VMs at {}: {e:#}", sock.display()));
            return;
        }
    };
    for name in names.lines().map(str::trim).filter(|n| !n.is_empty()) {
        let _ = sys::run(
            "timeout",
            &["20", "virsh", "-q", "-c", &uri, "destroy", name],
        );
        let _ = sys::run(
            "timeout",
            &["20", "virsh", "-q", "-c", &uri, "undefine", name],
        );
    }
}

/// Network-namespace inodes of a run's namespaces (for leak checks).
pub fn netns_inodes(names: &[String]) -> Vec<u64> {
    names
        .iter()
        .filter_map(|n| procs::netns_inode(&Path::new("/run/netns").join(n)).ok())
        .collect()
}
