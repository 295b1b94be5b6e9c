#!/usr/bin/env bash
# Installs every host dependency kata-cc needs. Idempotent and quick when all is present.
# The backports suite is added by reusing the URI of the machine's own Debian source.
set -euo pipefail

VHOST_DEVICE_VSOCK_VERSION=0.3.0
KERNEL_SERIES=6.12
need_root() { [ "$(id -u)" = 0 ] || { echo "deps.sh: must run as root (apt-get)" >&2; exit 1; }; }
log() { echo "deps: $*"; }

have_pkgs() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || return 1
  done
}

# Finds the URI of the existing Debian main archive (the source that carries "bookworm").
debian_uri() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '
      /^URIs:/ { uri=$2 }
      /^Suites:/ { for (i=2;i<=NF;i++) if ($i=="bookworm") hit=1 }
      /^$/ { if (hit && uri) { print uri; exit } uri=""; hit=0 }
      END { if (hit && uri) print uri }' "$f"
  done | head -n1
  [ -f /etc/apt/sources.list ] && awk '$1=="deb" && $3=="bookworm" {print $2; exit}' /etc/apt/sources.list || true
}

add_backports() {
  local list=/etc/apt/sources.list.d/kata-cc-backports.sources
  [ -f "$list" ] && return 0
  local uri
  uri=$(debian_uri | head -n1)
  [ -n "$uri" ] || { echo "deps.sh: no existing Debian bookworm apt source found to derive backports from" >&2; exit 1; }
  log "adding bookworm-backports from $uri"
  cat >"$list" <<SRC
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  APT_UPDATED=0
}

# The Debian docker-registry service: stopped if running, not started at boot.
registry_service_off() {
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
  else
    # No systemd running: drop the unit's enablement links, and the sysv links if any.
    command -v deb-systemd-helper >/dev/null && deb-systemd-helper disable docker-registry.service >/dev/null 2>&1 || true
    if [ -x /etc/init.d/docker-registry ]; then
      /etc/init.d/docker-registry stop >/dev/null 2>&1 || true
      update-rc.d docker-registry disable >/dev/null 2>&1 || true
    fi
  fi
}

apt_update_once() {
  if [ "$APT_UPDATED" != 2 ]; then apt-get update -qq; APT_UPDATED=2; fi
}

APT_UPDATED=1
need_root
export DEBIAN_FRONTEND=noninteractive

BASE_PKGS=(containerd runc busybox-static binutils cpio erofs-utils e2fsprogs cryptsetup-bin kmod libseccomp-dev
           protobuf-compiler socat jq python3 zstd)
qemu_ok() {
  command -v qemu-system-x86_64 >/dev/null || return 1
  local v
  v=$(qemu-system-x86_64 --version | awk 'NR==1{print $4}')
  [ "$(printf '%s\n9.1\n' "$v" | sort -V | head -n1)" = 9.1 ]
}

add_backports
if ! have_pkgs "${BASE_PKGS[@]}" || ! qemu_ok; then
  if [ "$APT_UPDATED" = 0 ] || [ ! -f /var/lib/apt/lists/lock ] || ! apt-cache policy qemu-system-x86 | grep -q backports; then
    apt-get update -qq; APT_UPDATED=2
  fi
  log "installing ${BASE_PKGS[*]} qemu-system-x86 (backports)"
  apt-get install -y -qq --no-install-recommends "${BASE_PKGS[@]}" >/dev/null
  apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 qemu-system-data ovmf >/dev/null
fi
qemu_ok || { echo "deps.sh: qemu-system-x86_64 >= 9.1 is required, found $(qemu-system-x86_64 --version | head -n1)" >&2; exit 1; }

# Kubernetes-path test deps: CNI plugins (/usr/lib/cni; pulls iptables) for containerd's CRI
# plugin, and Debian's docker-registry, which the tests start themselves on a loopback port. The
# package's own service must not run: a policy-rc.d (unless the machine has one) keeps its
# postinst from starting it, and it is disabled afterwards.
K8S_PKGS=(containernetworking-plugins docker-registry)
if ! have_pkgs "${K8S_PKGS[@]}"; then
  apt_update_once
  log "installing ${K8S_PKGS[*]} (the registry service stays stopped and disabled)"
  OWN_POLICY=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# kata-cc deps.sh: no service starts during this install\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    OWN_POLICY=1
  fi
  rc=0
  apt-get install -y -qq --no-install-recommends "${K8S_PKGS[@]}" >/dev/null || rc=$?
  [ -n "$OWN_POLICY" ] && rm -f /usr/sbin/policy-rc.d
  [ "$rc" = 0 ] || { echo "deps.sh: apt-get install ${K8S_PKGS[*]} failed" >&2; exit 1; }
  registry_service_off
fi

# vhost-device-vsock: the vsock backend when /dev/vhost-vsock is absent.
if ! command -v vhost-device-vsock >/dev/null || ! vhost-device-vsock --version 2>/dev/null | grep -q "$VHOST_DEVICE_VSOCK_VERSION"; then
  log "cargo install vhost-device-vsock $VHOST_DEVICE_VSOCK_VERSION"
  cargo install --locked --quiet --version "$VHOST_DEVICE_VSOCK_VERSION" vhost-device-vsock
  install -m 0755 "$HOME/.cargo/bin/vhost-device-vsock" /usr/local/bin/vhost-device-vsock
fi

# The guest kernel is built from Debian's source with Debian's cloud config (hack/kernel.sh,
# `make kernel`): the source, the config and the build tools.
KERNEL_PKGS=(linux-source-$KERNEL_SERIES linux-config-$KERNEL_SERIES bc bison flex libelf-dev libssl-dev make gcc xz-utils)
kernel_pkgs_match() {
  # The config must be the source's version (both come from the same Debian upload).
  have_pkgs "${KERNEL_PKGS[@]}" &&
    [ "$(dpkg-query -W -f='${Version}' "linux-source-$KERNEL_SERIES")" = "$(dpkg-query -W -f='${Version}' "linux-config-$KERNEL_SERIES")" ]
}
if ! kernel_pkgs_match; then
  apt_update_once
  log "installing ${KERNEL_PKGS[*]}"
  apt-get install -y -qq --no-install-recommends "${KERNEL_PKGS[@]}" >/dev/null
  kernel_pkgs_match || { echo "deps.sh: linux-source-$KERNEL_SERIES and linux-config-$KERNEL_SERIES are not the same version after install" >&2; exit 1; }
fi
# sev-snp-measure: the reference the SNP measurement tests compare against (pinned).
SEV_SNP_MEASURE_VERSION=0.0.13
# (pip show fails when the package is missing, hence `|| true` under pipefail; its output is
# read whole: `| grep -q` would make pip die of SIGPIPE.)
have_version=$(python3 -m pip show sev-snp-measure 2>/dev/null | awk '$1 == "Version:" {print $2}') || true
if [ "$have_version" != "$SEV_SNP_MEASURE_VERSION" ] || ! command -v sev-snp-measure >/dev/null; then
  log "pip install sev-snp-measure==$SEV_SNP_MEASURE_VERSION"
  python3 -m pip install --quiet "sev-snp-measure==$SEV_SNP_MEASURE_VERSION"
fi
log "ok"
