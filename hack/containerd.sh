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
# runtime.v1 on the same socket, with the runtime handler `kata-cc` (options.ConfigPath = the
# kata-cc config above), netns mounts under DIR/state, CNI plugins from /usr/lib/cni and a
# private network (DIR/cni/net.d: a bridge of its own, `kcc-<8 hex of DIR>`, and a free 10.x/24
# with host-local addresses under DIR/cni/ipam; no gateway, no masquerading, so CNI leaves no
# iptables rules and no ip_forward change behind).
#   CONTAINERD_SANDBOX_IMAGE  the pause image ref (required with CRI; CRI pulls it when absent)
#   CONTAINERD_PLAIN_HTTP_REGISTRY  HOST:PORT of a registry spoken to over plain HTTP (a
#                             loopback test registry): DIR/certs.d/HOST:PORT/hosts.toml
# `stop` also deletes that bridge and the libcni result cache files of that network in
# /var/lib/cni/results (libcni's cache dir is fixed; CNI DEL removes a pod's, stop the rest).
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
cri_names() {
  local h
  h=$(printf '%s' "$DIR" | sha256sum | cut -c1-8)
  CNI_BRIDGE=kcc-$h
  CNI_NETWORK=kata-cc-$h
}

# A 10.x.y.0/24 that no route of the host covers (the first free one from a start derived from DIR).
free_subnet() {
  local h a b i
  h=$((16#$(printf '%s' "$DIR" | sha256sum | cut -c9-12)))
  for ((i = 0; i < 256; i++)); do
    a=$((200 + (h + i) / 256 % 50))
    b=$(((h + i) % 256))
    if ! ip -4 route show to match "10.$a.$b.1" | grep -qv '^default'; then
      echo "10.$a.$b.0/24"
      return 0
    fi
  done
  echo "containerd.sh: no free 10.x.y.0/24 for the CRI network" >&2
  return 1
}

# Writes the CNI network and registry hosts of CRI mode; prints the CRI plugin's config section.
cri_config() {
  local kata_config=$1 image=${CONTAINERD_SANDBOX_IMAGE:-} subnet
  [ -n "$image" ] || { echo "containerd.sh: CONTAINERD_CRI=1 needs CONTAINERD_SANDBOX_IMAGE" >&2; exit 1; }
  cri_names
  subnet=$(free_subnet)
  mkdir -p "$DIR/cni/net.d" "$DIR/cni/ipam" "$DIR/certs.d"
  rm -f "$DIR"/cni/net.d/*
  cat >"$DIR/cni/net.d/10-$CNI_NETWORK.conflist" <<NET
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CNI_BRIDGE",
      "isGateway": false,
      "ipMasq": false,
      "hairpinMode": false,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$subnet" }]],
        "dataDir": "$DIR/cni/ipam"
      }
    }
  ]
}
NET
  printf 'CNI_BRIDGE=%s\nCNI_NETWORK=%s\n' "$CNI_BRIDGE" "$CNI_NETWORK" >"$DIR/cri.env"
  if [ -n "${CONTAINERD_PLAIN_HTTP_REGISTRY:-}" ]; then
    local r=$CONTAINERD_PLAIN_HTTP_REGISTRY
    mkdir -p "$DIR/certs.d/$r"
    cat >"$DIR/certs.d/$r/hosts.toml" <<HOSTS
server = "http://$r"

[host."http://$r"]
  capabilities = ["pull", "resolve"]
HOSTS
  fi
  cat <<CFG
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$image"
  netns_mounts_under_state_dir = true
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

# After containerd stopped: the bridge of the CRI network and libcni's cache files of it and of
# the loopback network of pods CRI still had (`cni-loopback-<sandbox id>-lo`). SANDBOXES: the
# ids cri_sandboxes listed before the stop.
cri_cleanup() {
  [ -f "$DIR/cri.env" ] || return 0
  local CNI_BRIDGE CNI_NETWORK f id
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
