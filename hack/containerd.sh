#!/usr/bin/env bash
# A private containerd 1.6 for the demo and the end-to-end tests: its own root, state, sockets,
# config and log under DIR, so it never touches (or depends on) a system containerd.
#
#   hack/containerd.sh start DIR   start it (idempotent: reuses a live one), wait for its socket
#   hack/containerd.sh stop DIR    stop it by PID, end shims it left behind (by PID), unmount DIR
#   hack/containerd.sh env DIR     print CONTAINERD_ADDRESS=... for `ctr`
#
# containerd resolves runtime io.containerd.kata-cc.v2 to containerd-shim-kata-cc-v2 on its PATH;
# the release build dir goes first on PATH. KATA_CC_CONFIG_PATH (default build/configuration.toml)
# is inherited by the shims containerd starts.
# Environment: CONTAINERD_START_TIMEOUT (seconds, default 30), CONTAINERD_STOP_TIMEOUT (default 20),
#              CONTAINERD_BIN (default containerd), CONTAINERD_LOG_LEVEL (default info).
#
# CRI mode (CONTAINERD_CRI=1; default off: ctr only, CRI plugin disabled): the CRI plugin serves
# runtime.v1 on the same socket, with the runtime handlers `kata-cc` (options.ConfigPath = the
# kata-cc config above) and `runc` (the default; baselines), netns mounts under DIR/state, CNI
# plugins from /usr/lib/cni and a private network (DIR/cni/net.d): a bridge of its own,
# `kcc-<8 hex of DIR>`, that is the pods' gateway (isGateway: the host holds the first address of
# the subnet on it, so the host reaches pod IPs and pods reach the host; pods get a default route
# through it), a free 10.x.y.0/24 claimed for this DIR (host-local addresses under DIR/cni/ipam),
# and `portmap` for hostPort mappings. No masquerading: no traffic leaves the host.
#   CONTAINERD_SANDBOX_IMAGE  the pause image ref (required with CRI; CRI pulls it when absent)
#   CONTAINERD_PLAIN_HTTP_REGISTRY  HOST:PORT of a registry spoken to over plain HTTP (a
#                             loopback test registry): DIR/certs.d/HOST:PORT/hosts.toml
# DIR/cri.env names the network (CNI_BRIDGE, CNI_NETWORK, CNI_SUBNET, CNI_GATEWAY) for the harness.
# What the network changes on the host and who undoes it: CNI DEL (StopPodSandbox) removes a
# pod's veth, address reservation and portmap rules; `stop` deletes the bridge, libcni's result
# cache files of the network in /var/lib/cni/results (libcni's cache dir is fixed), and portmap
# rules of the network a killed run left. Host-wide state is shared by every private containerd
# with CRI on this host and kept in KATA_CC_CNI_STATE (default /run/kata-cc-cni, under a lock):
# the subnet claims (so two concurrent runs never pick the same subnet) and the host's values
# before the first of them started: net.ipv4.ip_forward (the bridge plugin turns it on for a
# gateway) and whether portmap's top-level chains (CNI-HOSTPORT-DNAT, -SETMARK, -MASQ in the nat
# table) existed. The last one to stop restores ip_forward and removes those chains if they were
# not there before and no rule is left in CNI-HOSTPORT-DNAT.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
RUNTIME_TYPE=io.containerd.kata-cc.v2
usage() { echo "usage: $0 start|stop|env DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
CMD=$1
mkdir -p "$2"
DIR=$(cd "$2" && pwd)
PIDFILE=$DIR/containerd.pid
SOCK=$DIR/containerd.sock
LOG=$DIR/containerd.log

alive() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

# The CRI network of this DIR (names derived from DIR, so two private containerds never share one).
CNI_CACHE=/var/lib/cni/results
SHARED=${KATA_CC_CNI_STATE:-/run/kata-cc-cni}
cri_names() {
  local h
  h=$(printf '%s' "$DIR" | sha256sum | cut -c1-8)
  CNI_BRIDGE=kcc-$h
  CNI_NETWORK=kata-cc-$h
}

# Runs "$@" holding the lock of the shared state (released when the command ends or exits).
with_shared_lock() {
  local fd rc=0
  mkdir -p "$SHARED/subnets"
  exec {fd}>"$SHARED/lock"
  flock -w 60 "$fd" || { echo "containerd.sh: no lock on $SHARED/lock within 60s" >&2; exit 1; }
  "$@" || rc=$?
  flock -u "$fd"
  exec {fd}>&-
  return "$rc"
}

# Whether the subnet claim dir $1 belongs to another private containerd that still runs (or that
# claimed it in the last 5 minutes and may still be starting).
claim_live() {
  local owner pid
  owner=$(cat "$1/owner" 2>/dev/null) || return 1
  [ "$owner" != "$DIR" ] || return 1
  pid=$(cat "$owner/containerd.pid" 2>/dev/null) || pid=
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then return 0; fi
  [ -n "$(find "$1/owner" -mmin -5 2>/dev/null)" ]
}

# (Under the lock.) The host's values before the first private network, recorded once.
record_host_state() {
  [ -f "$SHARED/host.orig" ] && return 0
  local fwd chains=absent
  fwd=$(cat /proc/sys/net/ipv4/ip_forward)
  if iptables -w -t nat -S CNI-HOSTPORT-DNAT >/dev/null 2>&1; then chains=present; fi
  printf 'IP_FORWARD=%s\nHOSTPORT_CHAINS=%s\n' "$fwd" "$chains" >"$SHARED/host.orig"
}

# (Under the lock.) Claims a 10.x.y.0/24 that no route of the host covers and no other live
# private containerd claimed, from a start derived from DIR; prints its first three octets.
claim_subnet() {
  local h a b i net c
  h=$((16#$(printf '%s' "$DIR" | sha256sum | cut -c9-12)))
  record_host_state
  for ((i = 0; i < 256; i++)); do
    a=$((200 + (h + i) / 256 % 50))
    b=$(((h + i) % 256))
    net=10.$a.$b
    c=$SHARED/subnets/$net.0
    if [ -d "$c" ] && claim_live "$c"; then continue; fi
    if [ -n "$(ip -4 route show to match "$net.1" | grep -v '^default' || true)" ]; then continue; fi
    rm -rf "$c"
    mkdir -p "$c"
    printf '%s\n' "$DIR" >"$c/owner"
    echo "$net"
    return 0
  done
  echo "containerd.sh: no free 10.x.y.0/24 for the CRI network" >&2
  return 1
}

# Deletes the rules of a nat chain listing (`iptables -S` lines) that match $1 (a glob).
delete_nat_rules() {
  local pattern=$1 listing=$2 line
  while IFS= read -r line; do
    case "$line" in
      -A\ *) ;;
      *) continue ;;
    esac
    # shellcheck disable=SC2254
    case "$line" in $pattern) ;; *) continue ;; esac
    # The listing is iptables' own shell-quoted output (comments carry quotes).
    eval "iptables -w -t nat -D ${line#-A }" || echo "containerd.sh: could not delete nat rule: $line" >&2
  done <<<"$listing"
}

# portmap's per-pod rules of this network (CNI DEL removes them; a killed run may not have):
# the jumps from CNI-HOSTPORT-DNAT (commented `dnat name: "<network>" ...`) and their CNI-DN-
# chains.
sweep_portmap() {
  command -v iptables >/dev/null || return 0
  local listing chain
  listing=$(iptables -w -t nat -S CNI-HOSTPORT-DNAT 2>/dev/null) || return 0
  for chain in $(grep -F "$CNI_NETWORK" <<<"$listing" | grep -o 'CNI-DN-[0-9a-f]*' | sort -u || true); do
    delete_nat_rules "*-j $chain*" "$listing"
    iptables -w -t nat -F "$chain" 2>/dev/null || true
    iptables -w -t nat -X "$chain" 2>/dev/null || true
  done
}

# (Under the lock, after this DIR's claim is gone.) If no other private network is live: the
# host's ip_forward and portmap's top-level chains back to what they were before the first.
restore_host_state() {
  local c live=0 IP_FORWARD HOSTPORT_CHAINS listing chain
  for c in "$SHARED"/subnets/*; do
    [ -d "$c" ] || continue
    if claim_live "$c"; then live=1; else rm -rf "$c"; fi
  done
  [ "$live" = 0 ] && [ -f "$SHARED/host.orig" ] || return 0
  # shellcheck disable=SC1091
  . "$SHARED/host.orig"
  if [ "${IP_FORWARD:-1}" = 0 ] && [ "$(cat /proc/sys/net/ipv4/ip_forward)" != 0 ]; then
    echo 0 >/proc/sys/net/ipv4/ip_forward
  fi
  if [ "${HOSTPORT_CHAINS:-present}" = absent ] && command -v iptables >/dev/null &&
    listing=$(iptables -w -t nat -S CNI-HOSTPORT-DNAT 2>/dev/null) &&
    ! grep -q '^-A' <<<"$listing"; then
    for chain in PREROUTING OUTPUT POSTROUTING; do
      delete_nat_rules "*-j CNI-HOSTPORT-*" "$(iptables -w -t nat -S "$chain" 2>/dev/null || true)"
    done
    for chain in CNI-HOSTPORT-DNAT CNI-HOSTPORT-SETMARK CNI-HOSTPORT-MASQ; do
      iptables -w -t nat -F "$chain" 2>/dev/null || true
      iptables -w -t nat -X "$chain" 2>/dev/null || true
    done
  fi
  rm -f "$SHARED/host.orig"
  rmdir "$SHARED/subnets" 2>/dev/null || true
}

# (Under the lock.) Releases this DIR's subnet claim, its leftover portmap rules, then the host.
release_network() {
  local c
  for c in "$SHARED"/subnets/*; do
    if [ -d "$c" ] && [ "$(cat "$c/owner" 2>/dev/null)" = "$DIR" ]; then rm -rf "$c"; fi
  done
  sweep_portmap
  restore_host_state
}

# Writes the CNI network and registry hosts of CRI mode; prints the CRI plugin's config section.
cri_config() {
  local kata_config=$1 image=${CONTAINERD_SANDBOX_IMAGE:-} net
  [ -n "$image" ] || { echo "containerd.sh: CONTAINERD_CRI=1 needs CONTAINERD_SANDBOX_IMAGE" >&2; exit 1; }
  command -v flock >/dev/null || { echo "containerd.sh: flock (util-linux) is required" >&2; exit 1; }
  cri_names
  net=$(with_shared_lock claim_subnet)
  mkdir -p "$DIR/cni/net.d" "$DIR/cni/ipam" "$DIR/certs.d"
  rm -f "$DIR"/cni/net.d/*
  # The default route's gateway is the range's gateway, the bridge's address (bridge fills it in).
  cat >"$DIR/cni/net.d/10-$CNI_NETWORK.conflist" <<NET
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CNI_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": false,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$net.0/24", "gateway": "$net.1" }]],
        "routes": [{ "dst": "0.0.0.0/0" }],
        "dataDir": "$DIR/cni/ipam"
      }
    },
    {
      "type": "portmap",
      "capabilities": { "portMappings": true }
    }
  ]
}
NET
  printf 'CNI_BRIDGE=%s\nCNI_NETWORK=%s\nCNI_SUBNET=%s\nCNI_GATEWAY=%s\n' \
    "$CNI_BRIDGE" "$CNI_NETWORK" "$net.0/24" "$net.1" >"$DIR/cri.env"
  if [ -n "${CONTAINERD_PLAIN_HTTP_REGISTRY:-}" ]; then
    local r=$CONTAINERD_PLAIN_HTTP_REGISTRY
    mkdir -p "$DIR/certs.d/$r"
    cat >"$DIR/certs.d/$r/hosts.toml" <<HOSTS
server = "http://$r"

[host."http://$r"]
  capabilities = ["pull", "resolve"]
HOSTS
  fi
  # CRI gives every pause oom_score_adj -998; runc cannot lower a process's score without
  # CAP_SYS_RESOURCE, which some hosts' root lacks (sandboxed build machines): then CRI raises
  # the score to containerd's own (kata-cc's pause in the VM then gets that score too; genpolicy's
  # rules do not look at it).
  local restrict_oom=false
  if [ $((0x$(awk '/^CapEff:/ {print $2}' /proc/self/status) >> 24 & 1)) = 0 ]; then restrict_oom=true; fi
  cat <<CFG
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$image"
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = $restrict_oom
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    # kata-cc reads the layer blobs from the content store.
    discard_unpacked_layers = false
    # Setting one runtime drops the default table: runc stays the default handler.
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-cc]
      runtime_type = "$RUNTIME_TYPE"
      privileged_without_host_devices = true
      # Without these the policy and init-data annotations never reach the shim.
      pod_annotations = ["io.katacontainers.*"]
      container_annotations = ["io.katacontainers.*", "io.kubernetes.container.terminationMessage*"]
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-cc.options]
        ConfigPath = "$kata_config"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$DIR/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$DIR/certs.d"
CFG
}

# The pod sandbox ids CRI still keeps (its per-sandbox dirs).
cri_sandboxes() {
  local d
  for d in "$DIR"/root/io.containerd.grpc.v1.cri/sandboxes/* "$DIR"/state/io.containerd.grpc.v1.cri/sandboxes/*; do
    if [ -d "$d" ]; then basename "$d"; fi
  done | sort -u
}

# After containerd stopped: the bridge of the CRI network, libcni's cache files of it and of the
# loopback network of pods CRI still had (`cni-loopback-<sandbox id>-lo`), portmap rules left of
# it, its subnet claim, and the host's shared state when it was the last. SANDBOXES: the ids
# cri_sandboxes listed before the stop.
cri_cleanup() {
  [ -f "$DIR/cri.env" ] || return 0
  local CNI_BRIDGE CNI_NETWORK CNI_SUBNET CNI_GATEWAY f id
  # shellcheck disable=SC1091
  . "$DIR/cri.env"
  if ip link show "$CNI_BRIDGE" >/dev/null 2>&1; then
    ip link delete "$CNI_BRIDGE" || echo "containerd.sh: could not delete link $CNI_BRIDGE" >&2
  fi
  for f in "$CNI_CACHE/$CNI_NETWORK"-*; do
    if [ -e "$f" ]; then rm -f "$f"; fi
  done
  for id in ${SANDBOXES:-}; do
    rm -f "$CNI_CACHE/cni-loopback-$id-lo"
  done
  with_shared_lock release_network
  rm -f "$DIR/cri.env"
}

# PIDs of the shims this containerd started (found by their -address argument, ended by PID).
shim_pids() {
  local p cmd
  for p in /proc/[0-9]*; do
    cmd=$( { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null) || continue
    case "$cmd" in
      containerd-shim*" -address $SOCK "*|*/containerd-shim*" -address $SOCK "*) echo "${p#/proc/}" ;;
    esac
  done
}

# Mount points under DIR, deepest first.
mounts_under() {
  awk -v d="$DIR/" '{ mp=$5; gsub(/\\040/, " ", mp); if (index(mp, d) == 1) print mp }' /proc/self/mountinfo | sort -r
}

start() {
  if alive; then
    echo "containerd: already running (pid $(cat "$PIDFILE")) at $SOCK"
    return 0
  fi
  local bin=${CONTAINERD_BIN:-containerd}
  command -v "$bin" >/dev/null || { echo "containerd.sh: $bin not found (run: make deps)" >&2; exit 1; }
  mkdir -p "$DIR/root" "$DIR/state" "$DIR/opt"
  rm -f "$SOCK" "$SOCK.ttrpc"
  local cfg=${KATA_CC_CONFIG_PATH:-$REPO/build/configuration.toml} disabled cri=""
  if [ "${CONTAINERD_CRI:-0}" = 1 ]; then
    # What a killed earlier run of this DIR left first (its bridge, cache files).
    SANDBOXES=$(cri_sandboxes) cri_cleanup
    disabled='[]'
    cri=$(cri_config "$cfg")
  else
    # No CNI or kubelet here: ctr drives containerd directly.
    disabled='["io.containerd.grpc.v1.cri"]'
  fi
  cat >"$DIR/config.toml" <<EOF
# Generated by hack/containerd.sh: a private containerd for kata-cc demos and tests.
version = 2
root = "$DIR/root"
state = "$DIR/state"
disabled_plugins = $disabled

[grpc]
  address = "$SOCK"

[ttrpc]
  address = "$SOCK.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "$DIR/opt"

$cri
EOF
  # setsid: containerd must not die with the caller's terminal or process group.
  PATH="$REPO/target/x86_64-unknown-linux-gnu/release:$PATH" KATA_CC_CONFIG_PATH="$cfg" \
    setsid "$bin" --config "$DIR/config.toml" --log-level "${CONTAINERD_LOG_LEVEL:-info}" \
    </dev/null >"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
  local timeout=${CONTAINERD_START_TIMEOUT:-30} waited=0
  while :; do
    if [ -S "$SOCK" ] && ctr --address "$SOCK" version >/dev/null 2>&1; then break; fi
    if ! alive; then
      echo "containerd.sh: containerd exited during start; last lines of $LOG:" >&2
      tail -n 20 "$LOG" >&2
      rm -f "$PIDFILE"
      exit 1
    fi
    if [ "$waited" -ge $((timeout * 10)) ]; then
      echo "containerd.sh: no socket $SOCK after ${timeout}s; last lines of $LOG:" >&2
      tail -n 20 "$LOG" >&2
      stop
      exit 1
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  # (The listing is read whole first: grep -q closing the pipe early would fail it under pipefail.)
  if [ -n "$cri" ] && ! grep -Eq '^io\.containerd\.grpc\.v1[[:space:]]+cri[[:space:]].*[[:space:]]ok[[:space:]]*$' <<<"$(ctr --address "$SOCK" plugins ls 2>/dev/null)"; then
    echo "containerd.sh: the CRI plugin did not load; its lines in $LOG:" >&2
    grep 'grpc.v1.cri' "$LOG" | tail -n 5 >&2
    stop
    exit 1
  fi
  echo "containerd: pid $(cat "$PIDFILE"), socket $SOCK, log $LOG, kata-cc config $cfg${cri:+, CRI on}"
}

# Every task and container this containerd still has, removed through its API (so shims stop
# their VMs themselves), each step bounded by a timeout.
remove_all() {
  local c="timeout 30 ctr --address $SOCK" ns id
  for ns in $($c namespaces ls -q 2>/dev/null); do
    for id in $($c -n "$ns" tasks ls -q 2>/dev/null); do
      $c -n "$ns" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
      $c -n "$ns" tasks delete -f "$id" >/dev/null 2>&1 || true
    done
    for id in $($c -n "$ns" containers ls -q 2>/dev/null); do
      $c -n "$ns" containers delete "$id" >/dev/null 2>&1 || true
    done
  done
}

# PIDs of every descendant of the given PIDs (read from /proc, parents first).
descendants() {
  local want=" $* " p ppid more=1
  while [ $more = 1 ]; do
    more=0
    for p in /proc/[0-9]*; do
      ppid=$(awk '{print $4}' "$p/stat" 2>/dev/null) || continue
      if [[ "$want" == *" $ppid "* && "$want" != *" ${p#/proc/} "* ]]; then
        want="$want${p#/proc/} "; more=1
      fi
    done
  done
  echo "$want"
}

stop() {
  local timeout=${CONTAINERD_STOP_TIMEOUT:-20} pid i SANDBOXES
  SANDBOXES=$(cri_sandboxes)
  if alive && [ -S "$SOCK" ]; then remove_all; fi
  if alive; then
    pid=$(cat "$PIDFILE")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout * 10; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "containerd.sh: containerd $pid ignored SIGTERM for ${timeout}s, killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$PIDFILE"
  # Shims outlive containerd by design; a stopped private containerd must not leave any.
  local pids
  pids=$(shim_pids)
  # shellcheck disable=SC2086
  [ -n "$pids" ] && pids=$(descendants $pids)
  if [ -n "${pids// /}" ]; then
    echo "containerd.sh: ending leftover shim processes: $pids" >&2
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      local left=""
      for pid in $pids; do kill -0 "$pid" 2>/dev/null && left="$left $pid"; done
      [ -z "$left" ] && break
      sleep 0.1
    done
    if [ -n "${left:-}" ]; then
      # shellcheck disable=SC2086
      kill -KILL $left 2>/dev/null || true
    fi
  fi
  local mp
  while read -r mp; do
    [ -n "$mp" ] || continue
    umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || echo "containerd.sh: could not unmount $mp" >&2
  done < <(mounts_under)
  cri_cleanup
  rm -f "$SOCK" "$SOCK.ttrpc"
  echo "containerd: stopped ($DIR)"
}

case "$CMD" in
  start) start ;;
  stop) stop ;;
  env) echo "CONTAINERD_ADDRESS=$SOCK" ;;
  *) usage ;;
esac
