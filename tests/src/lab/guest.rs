//! The tiny guest that stands in for an LMS: Debian's cloud kernel plus a
//! busybox initramfs that configures its virtio NIC from the kernel command line
//! and serves HTTP. Built from Debian packages, cached, rebuilt only when missing
//! or when its recipe (this file's init script and module list) changes.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::lab::sys;

/// Kernel modules the initramfs loads, in order (they are `=m` in Debian's cloud kernel).
const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
];

/// `/init` of the guest. Parameters come from the kernel command line:
/// `lms_ip=10.70.0.10/24 lms_gw=10.70.0.1 lms_name=lms1`, and optionally
/// `hinan.fill=MiB hinan.dirty=MiB` (its memory workload, see
/// [`crate::VmSpec`]). `GET /cgi-bin/mem` reports the workload:
/// `fill_mib=160 filled_mib=160 dirty_mib=8 fill_started=… fill_done=…`,
/// `dirty_passes=N` and lines of /proc/meminfo.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs dev /dev 2>/dev/null
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m.ko; done
for kv in $(cat /proc/cmdline); do case $kv in lms_*=*) eval "${kv%%=*}='${kv#*=}'";; esac; done
hostname "${lms_name:-lms}"
ip link set lo up
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do [ -e /sys/class/net/eth0 ] && break; sleep 0.1; done
ip link set eth0 up
ip addr add "${lms_ip:-10.70.0.10/24}" dev eth0
[ -n "$lms_gw" ] && ip route add default via "$lms_gw"
echo "<html><body><h1>LMS ${lms_name:-lms}</h1></body></html>" > /www/index.html
dd if=/dev/urandom of=/www/big bs=1k count=${lms_bigkb:-1024} 2>/dev/null
md5sum /www/big | cut -d' ' -f1 > /www/big.md5
cat /proc/sys/kernel/random/boot_id > /www/bootid
cat > /www/cgi-bin/info <<'CGI'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
echo "host=$(hostname) bootid=$(cat /www/bootid) uptime=$(cut -d' ' -f1 /proc/uptime)"
CGI
cat > /www/cgi-bin/stream <<'CGI'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
read up rest < /proc/uptime; end=$(( ${up%.*} + ${QUERY_STRING:-30} )); i=0
while :; do read up rest < /proc/uptime; [ ${up%.*} -ge $end ] && break; i=$((i+1)); echo "$i $up"; usleep 100000; done
echo "DONE $i"
CGI
cat > /www/cgi-bin/stop-httpd <<'CGI'
#!/bin/sh
# Stops the HTTP service 200 ms from now for QUERY_STRING seconds (default 5),
# so that monitors can be shown to notice a failed service.
printf 'Content-Type: text/plain\r\n\r\nstopping\n'
( usleep 200000; killall httpd; sleep ${QUERY_STRING:-5}; httpd -p 80 -h /www ) </dev/null >/dev/null 2>&1 &
CGI
cat > /www/cgi-bin/mem <<'CGI'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
cat /run/mem-report
echo "dirty_passes=$(cat /run/dirty-passes 2>/dev/null || echo 0)"
grep -E '^(MemTotal|MemFree|Shmem):' /proc/meminfo | tr -s ' ' | sed 's/: /=/; s/ kB/kB/'
CGI
chmod +x /www/cgi-bin/*
# Memory that holds real data: hinan.fill=MiB of random (incompressible,
# non-zero) bytes kept resident in a tmpfs, before the service answers; and
# hinan.dirty=MiB of them rewritten in a loop, 1 MiB every 250 ms (4 MiB/s),
# so that live migrations have pages to resend yet still converge.
fill=0; dirty=0
for kv in $(cat /proc/cmdline); do case $kv in hinan.fill=*) fill=${kv#*=};; hinan.dirty=*) dirty=${kv#*=};; esac; done
case "$fill" in ''|*[!0-9]*) fill=0;; esac
case "$dirty" in ''|*[!0-9]*) dirty=0;; esac
[ "$dirty" -gt "$fill" ] && dirty=$fill
t0=$(cut -d' ' -f1 /proc/uptime)
if [ "$fill" -gt 0 ]; then
  mkdir -p /dev/shm
  mount -t tmpfs -o size=$((fill + 1))m tmpfs /dev/shm
  dd if=/dev/urandom of=/dev/shm/fill bs=1M count=$fill 2>/dev/null
fi
filled=$(( $(stat -c %s /dev/shm/fill 2>/dev/null || echo 0) / 1048576 ))
echo "fill_mib=$fill filled_mib=$filled dirty_mib=$dirty fill_started=$t0 fill_done=$(cut -d' ' -f1 /proc/uptime)" > /run/mem-report
if [ "$dirty" -gt 0 ]; then
  ( n=0; while :; do i=0; while [ $i -lt $dirty ]; do
      dd if=/dev/urandom of=/dev/shm/fill bs=1M count=1 seek=$i conv=notrunc 2>/dev/null
      usleep 250000; i=$((i+1)); done; n=$((n+1)); echo $n > /run/dirty-passes; done ) </dev/null >/dev/null 2>&1 &
fi
httpd -p 80 -h /www
echo "LMS-READY $(hostname) ip=${lms_ip} filled_mib=$filled uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/console
while :; do setsid cttyhack sh </dev/console >/dev/console 2>&1 || sleep 1; done
"#;

/// A built guest: kernel and initramfs paths.
#[derive(Debug, Clone)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// Where guest images are cached (`$HINAN_LAB_CACHE`, default `/var/cache/hinan-lab`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("HINAN_LAB_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/hinan-lab"))
}

/// Returns the cached guest, building it first if it is missing.
/// Safe to call from several processes at once (an flock serialises builders).
pub fn ensure() -> Result<GuestImage> {
    let cache = cache_dir();
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let kpkg = kernel_package()?;
    let mut h = DefaultHasher::new();
    (INIT, MODULES, &kpkg).hash(&mut h);
    let dir = cache.join(format!("guest-{:016x}", h.finish()));
    let image = GuestImage {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.gz"),
    };
    if image.kernel.exists() && image.initrd.exists() {
        return Ok(image);
    }
    let lock = fs::File::create(cache.join("build.lock"))?;
    // SAFETY: flock on a file descriptor we own; blocks until the lock is ours.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("cannot lock {}", cache.join("build.lock").display());
    }
    if image.kernel.exists() && image.initrd.exists() {
        return Ok(image);
    }
    let tmp = cache.join(format!("build-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    let built =
        build(&tmp, &kpkg).with_context(|| format!("building the lab guest in {}", tmp.display()));
    if let Err(e) = built {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let out = tmp.join("out");
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&out, &dir)?;
    let _ = fs::remove_dir_all(&tmp);
    Ok(image)
}

/// The versioned kernel package `linux-image-cloud-amd64` depends on.
fn kernel_package() -> Result<String> {
    let find = || -> Result<Option<String>> {
        let out = sys::run("apt-cache", &["depends", "linux-image-cloud-amd64"])?;
        Ok(out
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with("linux-image-"))
            .map(str::to_string))
    };
    if let Ok(Some(p)) = find() {
        return Ok(p);
    }
    sys::run("apt-get", &["update", "-qq"])?;
    find()?.context(
        "apt-cache knows no linux-image-cloud-amd64 (is a Debian amd64 mirror configured?)",
    )
}

fn download(dir: &Path, pkg: &str) -> Result<PathBuf> {
    let fetch = || {
        std::process::Command::new("apt-get")
            .args(["download", "-qq", pkg])
            .current_dir(dir)
            .output()
    };
    let mut out = fetch()?;
    if !out.status.success() {
        sys::run("apt-get", &["update", "-qq"])?;
        out = fetch()?;
    }
    if !out.status.success() {
        bail!(
            "apt-get download {pkg} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb"))
        })
        .with_context(|| format!("apt-get download {pkg} left no .deb"))
}

fn build(tmp: &Path, kpkg: &str) -> Result<()> {
    let kver = kpkg.trim_start_matches("linux-image-");
    let kdeb = download(tmp, kpkg)?;
    let bdeb = download(tmp, "busybox-static")?;
    let kx = tmp.join("k");
    let bx = tmp.join("bb");
    sys::run(
        "dpkg-deb",
        &["-x".as_ref(), kdeb.as_os_str(), kx.as_os_str()],
    )?;
    sys::run(
        "dpkg-deb",
        &["-x".as_ref(), bdeb.as_os_str(), bx.as_os_str()],
    )?;
    let out = tmp.join("out");
    let root = tmp.join("rootfs");
    for d in [
        "bin",
        "sbin",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "www/cgi-bin",
        "lib/modules",
        "run",
    ] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::create_dir_all(&out)?;
    fs::copy(kx.join(format!("boot/vmlinuz-{kver}")), out.join("vmlinuz"))
        .with_context(|| format!("no vmlinuz-{kver} in {kpkg}"))?;
    let busybox = bx.join("bin/busybox");
    fs::copy(&busybox, root.join("bin/busybox"))?;
    let moddir = kx.join(format!("lib/modules/{kver}"));
    for m in MODULES {
        let found =
            find_module(&moddir, m)?.with_context(|| format!("module {m} is not in {kpkg}"))?;
        let dest = root.join(format!("lib/modules/{m}.ko"));
        let name = found.to_string_lossy();
        if name.ends_with(".xz") {
            let data = sys::run_bytes("xz", &["-dc".as_ref(), found.as_os_str()])?;
            fs::write(&dest, data)?;
        } else if name.ends_with(".zst") {
            let data = sys::run_bytes("zstd", &["-dqc".as_ref(), found.as_os_str()])?;
            fs::write(&dest, data)?;
        } else {
            fs::copy(&found, &dest)?;
        }
    }
    fs::write(root.join("lib/modules/order"), MODULES.join(" "))?;
    fs::write(root.join("init"), INIT)?;
    fs::set_permissions(root.join("init"), fs::Permissions::from_mode(0o755))?;
    // Debian has no `cpio` binary by default; busybox's does newc.
    let script = format!(
        "cd '{}' && find . | '{}' cpio -o -H newc 2>/dev/null | gzip -1 > '{}'",
        root.display(),
        busybox.display(),
        out.join("initrd.gz").display()
    );
    sys::run("sh", &["-c", &script])?;
    Ok(())
}

fn find_module(dir: &Path, name: &str) -> Result<Option<PathBuf>> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            if let Some(p) = find_module(&path, name)? {
                return Ok(Some(p));
            }
        } else if let Some(file) = path.file_name().and_then(|n| n.to_str()) {
            if file == format!("{name}.ko")
                || file == format!("{name}.ko.xz")
                || file == format!("{name}.ko.zst")
            {
                return Ok(Some(path));
            }
        }
    }
    Ok(None)
}
