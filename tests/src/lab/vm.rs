//! LMS guests in the lab: their libvirt definition, start, and live migration
//! between campuses with libvirt.

use std::fs;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::lab::guest::GuestImage;
use crate::lab::procs::ProcRecord;
use crate::lab::{Lab, MIGRATION_PORT, SEGMENT_GATEWAY};

/// The memory the guest's kernel, initramfs and service need beside its
/// filled memory (the Debian cloud kernel alone needs about 80 MiB).
pub const GUEST_BASE_MIB: u32 = 88;

/// One LMS guest.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub name: String,
    pub mac: String,
    pub ip: Ipv4Addr,
    pub memory_mib: u32,
    /// MiB of random, incompressible data the guest keeps resident from boot
    /// on (written before its HTTP service answers); 0 for none.
    pub fill_mib: u32,
    /// MiB of the filled data the guest rewrites in a loop, 4 MiB/s; 0 for
    /// an idle guest. At most `fill_mib`.
    pub dirty_mib: u32,
}

impl Default for VmSpec {
    fn default() -> Self {
        VmSpec::lms(1, 128, 0, 0)
    }
}

impl VmSpec {
    /// Guest `lmsN` (N = 1…200): MAC 52:54:00:70:00:(0x10+N-1), IP
    /// 10.70.0.(10+N-1), so `lms(1, 128, 0, 0)` is [`VmSpec::default`].
    pub fn lms(n: u8, memory_mib: u32, fill_mib: u32, dirty_mib: u32) -> VmSpec {
        assert!(
            (1..=200).contains(&n),
            "lms guests are numbered 1 to 200, not {n}"
        );
        let k = n - 1;
        VmSpec {
            name: format!("lms{n}"),
            mac: format!("52:54:00:70:00:{:02x}", 0x10 + k),
            ip: Ipv4Addr::new(10, 70, 0, 10 + k),
            memory_mib,
            fill_mib,
            dirty_mib,
        }
    }

    /// Refuses a workload the guest cannot hold.
    pub fn check(&self) -> Result<()> {
        if self.dirty_mib > self.fill_mib {
            bail!(
                "{}: dirty_mib {} is more than fill_mib {} (the guest rewrites part of what it filled)",
                self.name,
                self.dirty_mib,
                self.fill_mib
            );
        }
        if self.fill_mib + GUEST_BASE_MIB > self.memory_mib {
            bail!(
                "{}: filling {} MiB needs memory_mib of at least {} (the kernel and service need {GUEST_BASE_MIB} MiB), not {}",
                self.name,
                self.fill_mib,
                self.fill_mib + GUEST_BASE_MIB,
                self.memory_mib
            );
        }
        Ok(())
    }

    /// The workload's kernel command-line parameters (empty for an idle, unfilled guest).
    fn workload_args(&self) -> String {
        let mut args = String::new();
        if self.fill_mib > 0 {
            args.push_str(&format!(" hinan.fill={}", self.fill_mib));
        }
        if self.dirty_mib > 0 {
            args.push_str(&format!(" hinan.dirty={}", self.dirty_mib));
        }
        args
    }

    /// The guest's own report of its memory workload (`GET /cgi-bin/mem`).
    pub fn mem_url(&self) -> String {
        format!("http://{}/cgi-bin/mem", self.ip)
    }

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
    <cmdline>console=ttyS0 quiet lms_ip={ip}/24 lms_gw={gw} lms_name={name}{workload}</cmdline>
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
            workload = self.workload_args(),
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

/// How [`Lab::migrate_vm_with`] migrates.
#[derive(Debug, Clone, Default)]
pub struct MigrateOptions {
    /// Stream to the destination campus's address on the service segment
    /// (through hinan's VPN, as hinan's executor does) instead of its public
    /// address on the WAN.
    pub over_segment: bool,
    /// `virsh migrate --auto-converge`: QEMU throttles a guest that dirties
    /// memory faster than the stream carries it.
    pub auto_converge: bool,
    /// More `virsh migrate` arguments, verbatim.
    pub extra: Vec<String>,
}

impl Migration {
    /// A size from the job info (`Memory processed`, `Data total`…) in MiB.
    pub fn job_mib(&self, field: &str) -> Option<f64> {
        job_info_mib(&self.job_info, field)
    }
}

/// Field `field` of `virsh domjobinfo` output: its number and its unit
/// (`Memory processed:  162.345 MiB` → `(162.345, Some("MiB"))`).
pub fn job_info_field<'a>(job_info: &'a str, field: &str) -> Option<(f64, Option<&'a str>)> {
    let line = job_info.lines().find(|l| {
        l.trim_start()
            .strip_prefix(field)
            .is_some_and(|r| r.starts_with(':'))
    })?;
    let mut words = line.split(':').nth(1)?.split_whitespace();
    let value: f64 = words.next()?.parse().ok()?;
    Some((value, words.next()))
}

/// `Memory processed:  162.345 MiB` from `virsh domjobinfo` output, in MiB.
pub fn job_info_mib(job_info: &str, field: &str) -> Option<f64> {
    let (value, unit) = job_info_field(job_info, field)?;
    let scale = match unit.unwrap_or("B") {
        "B" | "bytes" => 1.0 / 1048576.0,
        "KiB" => 1.0 / 1024.0,
        "MiB" => 1.0,
        "GiB" => 1024.0,
        "TiB" => 1048576.0,
        _ => return None,
    };
    Some(value * scale)
}

impl Lab {
    /// Defines and starts `vm` at campus `campus`.
    pub fn start_vm(&mut self, campus: &str, vm: &VmSpec, image: &GuestImage) -> Result<()> {
        vm.check()?;
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
        self.migrate_vm_with(name, from, to, &MigrateOptions::default())
    }

    /// Live-migrates `name` from campus `from` to campus `to` with libvirt, as `opts` says.
    pub fn migrate_vm_with(
        &mut self,
        name: &str,
        from: &str,
        to: &str,
        opts: &MigrateOptions,
    ) -> Result<Migration> {
        let src = self.campus(from)?.clone();
        let dst = self.campus(to)?.clone();
        if src.domstate(name)?.as_deref() != Some("running") {
            bail!("{name} is not running at campus {from}");
        }
        let dest_uri = dst.libvirt_uri();
        let address = if opts.over_segment {
            dst.inside_ip
        } else {
            dst.public_ip
        };
        let migrate_uri = format!("tcp://{address}:{MIGRATION_PORT}");
        let mut args = vec![
            "migrate",
            "--live",
            "--persistent",
            "--undefinesource",
            name,
            &dest_uri,
            "--migrateuri",
            &migrate_uri,
        ];
        if opts.auto_converge {
            args.push("--auto-converge");
        }
        args.extend(opts.extra.iter().map(String::as_str));
        let start = Instant::now();
        src.virsh(&args)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lms1_is_the_default_guest_and_others_follow_it() {
        let d = VmSpec::default();
        let one = VmSpec::lms(1, 128, 0, 0);
        assert_eq!(
            (d.name.as_str(), d.mac.as_str(), d.ip, d.memory_mib),
            (
                "lms1",
                "52:54:00:70:00:10",
                Ipv4Addr::new(10, 70, 0, 10),
                128
            )
        );
        assert_eq!((one.name, one.mac, one.ip), (d.name, d.mac, d.ip));
        let three = VmSpec::lms(3, 256, 160, 8);
        assert_eq!(three.name, "lms3");
        assert_eq!(three.mac, "52:54:00:70:00:12");
        assert_eq!(three.ip, Ipv4Addr::new(10, 70, 0, 12));
    }

    #[test]
    fn the_workload_goes_on_the_kernel_command_line_only_when_there_is_one() {
        let image = GuestImage {
            kernel: "/k".into(),
            initrd: "/i".into(),
        };
        let idle = VmSpec::default().domain_xml(&image, "qemu");
        assert!(idle.contains("lms_name=lms1</cmdline>"), "{idle}");
        let busy = VmSpec::lms(2, 192, 96, 8).domain_xml(&image, "qemu");
        assert!(
            busy.contains("lms_name=lms2 hinan.fill=96 hinan.dirty=8</cmdline>"),
            "{busy}"
        );
        assert!(busy.contains("<memory unit='MiB'>192</memory>"), "{busy}");
    }

    #[test]
    fn impossible_workloads_are_refused() {
        assert!(VmSpec::lms(2, 256, 160, 8).check().is_ok());
        assert!(VmSpec::lms(2, 192, 160, 0).check().is_err());
        assert!(VmSpec::lms(2, 256, 8, 16).check().is_err());
    }

    #[test]
    fn job_info_sizes_are_read_in_mib() {
        let info = "Job type:         Completed\nMemory processed: 162.500 MiB\nData total:       1.250 GiB\nMemory remaining: 0.000 B\n";
        assert_eq!(job_info_mib(info, "Memory processed"), Some(162.5));
        assert_eq!(job_info_mib(info, "Data total"), Some(1280.0));
        assert_eq!(job_info_mib(info, "Memory remaining"), Some(0.0));
        assert_eq!(job_info_mib(info, "Data processed"), None);
    }
}
