#!/usr/bin/env bash
# Installs the Debian packages a make target needs, when any is missing.
# Idempotent and quiet: when everything is present it only runs dpkg-query.
# Usage: .ci/deps.sh test|demo|bench
set -euo pipefail

base=(
  iproute2 nftables ethtool iputils-ping curl tcpdump procps util-linux kmod
  openvswitch-switch
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
  qemu-system-x86 qemu-utils
  busybox-static gzip xz-utils zstd
  # The orchestrator reads and migrates domains through libvirt's C API (virt crate).
  libvirt-dev pkg-config
)
# Peers and decoders the VPN's interop tests run against.
vpn_interop=(tshark wireguard-go wireguard-tools)
# DNS interop tests: Knot as secondary, kdig, nsupdate.
dns=(knot knot-dnsutils bind9-dnsutils)
bench=(iperf3 keepalived wireguard-go wireguard-tools tinc knot knot-dnsutils nsd dnsperf)

case "${1:-test}" in
  test) want=("${base[@]}" "${vpn_interop[@]}" "${dns[@]}") ;;
  demo) want=("${base[@]}") ;;
  bench) want=("${base[@]}" "${vpn_interop[@]}" "${dns[@]}" "${bench[@]}") ;;
  *) echo "usage: $0 test|demo|bench" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "hinan: these Debian packages are missing and installing them needs root: ${missing[*]}" >&2
    exit 1
  fi
  echo "hinan: installing ${missing[*]}" >&2
  # Keep apt from starting the host's own libvirtd/ovs services: the lab runs its own daemons.
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  trap '[ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# libvirtd refuses to start without this user, even when QEMU runs as root.
getent passwd libvirt-qemu >/dev/null || useradd -r -M -s /usr/sbin/nologin libvirt-qemu
