#!/usr/bin/env bash
# The kata-cc demo: a Kubernetes Pod manifest (examples/demo-pod.yaml: RuntimeClass
# kata-cc-isolation, two containers with limits, a ConfigMap volume, an emptyDir, an agent policy
# annotation) run through containerd's CRI with kata-cc's runtime handler. No kubelet exists on
# this machine: kata-cc-demo (tests/src/bin/kata-cc-demo.rs) plays its part over CRI, with a
# private containerd (CRI on) and a loopback registry, both under build/demo. It prints what the
# pod sees inside its VM, the containers' CRI logs and execs' output, then removes the pod and
# checks that nothing is left. Run by `make demo` after deps, build and image; everything it
# starts is stopped on exit, also on Ctrl-C.
#
# Environment: KATA_CC_DEMO_MANIFEST (default examples/demo-pod.yaml),
#              KATA_CC_BUILD_DIR (the guest image and config of `make image`, default build/),
#              KATA_CC_E2E_TIMEOUT, KATA_CC_E2E_CTR_TIMEOUT, KATA_CC_E2E_GRACE (seconds: a pod or
#              container start, a quick CRI call, the teardown; as in the tests).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
RELEASE=$REPO/target/x86_64-unknown-linux-gnu/release
DEMO=$REPO/build/demo
BUILD=${KATA_CC_BUILD_DIR:-$REPO/build}
MANIFEST=${KATA_CC_DEMO_MANIFEST:-$REPO/examples/demo-pod.yaml}

die() { echo "demo: $*" >&2; exit 1; }
for b in kata-cc-demo kata-cc-pause containerd-shim-kata-cc-v2; do
  [ -x "$RELEASE/$b" ] || die "$RELEASE/$b missing: run make build"
done
[ -f "$BUILD/guest/manifest.json" ] || die "$BUILD/guest missing: run make image"
[ -f "$BUILD/configuration.toml" ] || die "$BUILD/configuration.toml missing: run make image"
[ -f "$MANIFEST" ] || die "$MANIFEST: no such manifest"

# What an interrupted run leaves: its containerd (stopped by PID, shims and mounts with it) and
# its registry (found through /proc by its config path, ended by PID).
cleanup() {
  local rc=$? p cmd
  if [ -f "$DEMO/containerd/containerd.pid" ]; then
    bash "$REPO/hack/containerd.sh" stop "$DEMO/containerd" >/dev/null || rc=1
  fi
  for p in /proc/[0-9]*; do
    cmd=$( { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null) || continue
    case "$cmd" in
      *" $DEMO/registry/config.yml"*) kill "${p#/proc/}" 2>/dev/null || true ;;
    esac
  done
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$DEMO"
"$RELEASE/kata-cc-demo" "$MANIFEST" --dir "$DEMO"
