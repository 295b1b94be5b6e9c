#!/usr/bin/env bash
# The kata-cc demo: one container in its own VM, through a private containerd and `ctr`.
# Run by `make demo` after deps, build and image; everything it starts is stopped on exit.
#
# Environment: KATA_CC_DEMO_TIMEOUT (seconds for the container run, default 600),
#              KATA_CC_CONFIG_PATH (default build/configuration.toml).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
RELEASE=$REPO/target/x86_64-unknown-linux-gnu/release
DEMO=$REPO/build/demo
CD_DIR=$DEMO/containerd
NS=kata-cc-demo
IMAGE=localhost/kata-cc-demo/busybox:latest
RUNTIME=io.containerd.kata-cc.v2
TIMEOUT=${KATA_CC_DEMO_TIMEOUT:-600}
export KATA_CC_CONFIG_PATH=${KATA_CC_CONFIG_PATH:-$REPO/build/configuration.toml}

die() { echo "demo: $*" >&2; exit 1; }
[ -x "$RELEASE/containerd-shim-kata-cc-v2" ] || die "$RELEASE/containerd-shim-kata-cc-v2 missing: run make build"
[ -f "$REPO/build/guest/manifest.json" ] || die "build/guest missing: run make image"
[ -f "$KATA_CC_CONFIG_PATH" ] || die "$KATA_CC_CONFIG_PATH missing: run make image"

mkdir -p "$DEMO"
cleanup() {
  local rc=$?
  bash "$REPO/hack/containerd.sh" stop "$CD_DIR" >/dev/null || rc=1
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== starting a private containerd in $CD_DIR"
bash hack/containerd.sh start "$CD_DIR"
CTR=(ctr --address "$CD_DIR/containerd.sock" --namespace "$NS")

echo "== building and importing a small local OCI image (busybox-static)"
bash hack/oci-image.sh "$DEMO/busybox.tar" "$IMAGE"
"${CTR[@]}" images import "$DEMO/busybox.tar" >/dev/null

ID=kata-cc-demo-$$
# 512 MiB and 1.5 CPUs: the VM gets 2048 + 512 MiB and ceil(1 + 1.5) = 3 vCPUs.
echo "== ctr run --rm --runtime $RUNTIME --memory-limit 536870912 --cpus 1.5 $IMAGE $ID ..."
START=$(date +%s)
set +e
# shellcheck disable=SC2016 # the $(...) are for the container's shell
OUT=$(timeout --signal=KILL "$TIMEOUT" "${CTR[@]}" run --rm --runtime "$RUNTIME" \
  --memory-limit 536870912 --cpus 1.5 "$IMAGE" "$ID" \
  sh -c 'echo "kernel=$(uname -r)"; echo "memtotal_kb=$(grep MemTotal /proc/meminfo | tr -s " " | cut -d" " -f2)";
         echo "nproc=$(nproc)"; echo "hostname=$(hostname)"; echo "Hello from a container in a kata-cc VM."' 2>&1)
RC=$?
set -e
END=$(date +%s)
# shellcheck disable=SC2001
echo "$OUT" | sed 's/^/   | /'
[ "$RC" = 0 ] || die "the container run failed (exit $RC); containerd log: $CD_DIR/containerd.log"

val() { echo "$OUT" | sed -n "s/^$1=//p" | tr -d '\r' | head -n1; }
GUEST_KERNEL=$(val kernel)
MEM_KB=$(val memtotal_kb)
NPROC=$(val nproc)
HOST_KERNEL=$(uname -r)
cat <<SUMMARY

== summary
   host kernel:   $HOST_KERNEL ($(nproc) CPUs, $(awk '/MemTotal/ {printf "%d MiB", $2/1024}' /proc/meminfo))
   guest kernel:  $GUEST_KERNEL (from build/guest: $(jq -r .kernel.version build/guest/manifest.json))
   guest memory:  MemTotal $((MEM_KB / 1024)) MiB (VM sized 2048 + 512 = 2560 MiB; the guest kernel keeps a little)
   guest vCPUs:   $NPROC (ceil(1 + 1.5) = 3)
   run time:      $((END - START)) s (VM boot included)
SUMMARY
[ "$GUEST_KERNEL" != "$HOST_KERNEL" ] || die "the container saw the host kernel: it did not run in the VM"
echo "== done; stopping containerd and cleaning up"
