//! LMS guests in the lab: their libvirt definition, start, and live migration
//! between campuses with libvirt.

use std::fs;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::lab::guest::GuestImage;
use crate::lab::procs::ProcRecord;
use crate::lab::{Lab, MIGRATION_PORT, SEGMENT_GATEWAY};

/// One LMS guest.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub name: String,
    pub mac: String,
    pub ip: Ipv4Addr,
    pub memory_mib: u32,
}

impl Default for VmSpec {
    fn default() -> Self {
        VmSpec {
            name: "lms1".into(),
            mac: "52:54:00:70:00:10".into(),
            ip: Ipv4Addr::new(10, 70, 0, 10),
            // The Debian cloud kernel needs at least 80 MiB.
            memory_mib: 128,
        }
    }
}

impl VmSpec {
    pub fn url(&self) -> String {
        format!("http://{}/", self.ip)
    }

    /// The libvirt domain XML. Every campus's bridge is called `br0`, so the
    /// same definition is valid wherever the VM runs.
    pub fn domain_xml(&self, image: &GuestImage, virt_type: &str) -> String {
        format!(
            r#"<domain type='{virt_type}'>
  <name>{name}</name>
  <memory unit='MiB'>{mem}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 quiet lms_ip={ip}/24 lms_gw={gw} lms_name={name}</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <interface type='bridge'>
      <mac address='{mac}'/>
      <source bridge='br0'/>
      <virtualport type='openvswitch'/>
      <model type='virtio'/>
      <driver name='qemu'>
        <host csum='off' gso='off' tso4='off' tso6='off' ecn='off' ufo='off'/>
        <guest csum='off' tso4='off' tso6='off' ecn='off' ufo='off'/>
      </driver>
      <rom enabled='no'/>
    </interface>
    <serial type='pty'><log file='/var/log/libvirt/qemu/{name}-console.log' append='on'/></serial>
    <console type='pty'/>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"#,
            name = self.name,
            mem = self.memory_mib,
            kernel = image.kernel.display(),
            initrd = image.initrd.display(),
            ip = self.ip,
            gw = SEGMENT_GATEWAY,
            mac = self.mac,
        )
    }
}

/// How a live migration went.
#[derive(Debug, Clone)]
pub struct Migration {
    pub from: String,
    pub to: String,
    pub wall: Duration,
    /// When `virsh migrate` returned (wall clock, to compare with appliances' event times).
    pub returned_at: std::time::SystemTime,
    /// `virsh domjobinfo --completed` at the destination, as printed.
    pub job_info: String,
}

impl Lab {
    /// Defines and starts `vm` at campus `campus`.
    pub fn start_vm(&mut self, campus: &str, vm: &VmSpec, image: &GuestImage) -> Result<()> {
        let c = self.campus(campus)?.clone();
        let xml = c.dir.join(format!("{}.xml", vm.name));
        fs::write(&xml, vm.domain_xml(image, &self.topo.virt_type))?;
        c.virsh(&["define", &xml.to_string_lossy()])?;
        c.virsh(&["start", &vm.name])
            .with_context(|| format!("starting {} at campus {campus}", vm.name))?;
        self.record_qemu(campus, &vm.name)?;
        Ok(())
    }

    /// Live-migrates `name` from campus `from` to campus `to` with libvirt; the
    /// migration stream crosses the WAN to `to`'s public address.
    pub fn migrate_vm(&mut self, name: &str, from: &str, to: &str) -> Result<Migration> {
        let src = self.campus(from)?.clone();
        let dst = self.campus(to)?.clone();
        if src.domstate(name)?.as_deref() != Some("running") {
            bail!("{name} is not running at campus {from}");
        }
        let dest_uri = dst.libvirt_uri();
        let migrate_uri = format!("tcp://{}:{MIGRATION_PORT}", dst.public_ip);
        let start = Instant::now();
        src.virsh(&[
            "migrate",
            "--live",
            "--persistent",
            "--undefinesource",
            name,
            &dest_uri,
            "--migrateuri",
            &migrate_uri,
        ])
        .with_context(|| format!("live migration of {name} from {from} to {to}"))?;
        let wall = start.elapsed();
        let returned_at = std::time::SystemTime::now();
        self.record_qemu(to, name)?;
        let job_info = dst
            .virsh(&["domjobinfo", "--completed", name])
            .unwrap_or_default();
        Ok(Migration {
            from: from.into(),
            to: to.into(),
            wall,
            returned_at,
            job_info,
        })
    }

    /// The campus where `name` is running, if any.
    pub fn where_running(&self, name: &str) -> Result<Option<String>> {
        for c in &self.topo.campuses {
            if c.hypervisor && c.domstate(name)?.as_deref() == Some("running") {
                return Ok(Some(c.name.clone()));
            }
        }
        Ok(None)
    }

    /// The last lines of a VM's serial console at a campus (for error reports).
    pub fn console_tail(&self, campus: &str, name: &str) -> String {
        let Ok(c) = self.campus(campus) else {
            return String::new();
        };
        let text = fs::read_to_string(c.dir.join(format!("log/qemu/{name}-console.log")))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Records the QEMU process of `name` at `campus` for clean-up, after
    /// something other than the lab (hinan's executor) moved it there.
    pub fn adopt_vm(&mut self, campus: &str, name: &str) -> Result<()> {
        self.record_qemu(campus, name)
    }

    fn record_qemu(&mut self, campus: &str, name: &str) -> Result<()> {
        let c = self.campus(campus)?.clone();
        let pidfile = c.dir.join(format!("run/libvirt/qemu/{name}.pid"));
        if let Some(rec) = ProcRecord::from_pidfile(&format!("{campus}/qemu/{name}"), &pidfile) {
            self.record(rec)?;
        }
        Ok(())
    }
}
