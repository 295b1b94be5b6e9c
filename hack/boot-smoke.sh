#!/usr/bin/env bash
# Boots the baked guest image through the shim's own VM builder (`kata-cc boot-check`: the same
# QEMU command line, vsock backend and agent wait as a pod) and prints what the guest console
# says. Exits non-zero when the boot did not come to what was expected.
#
#   hack/boot-smoke.sh [--payload agent|shell] [--image DIR [--config PATH]] [--timeout S]
#                      [--tamper KIND]
#
# Payloads: agent (default) = the real agent (target/.../guest/kata-cc-agent, image baked into
# build/guest), which must answer Health.Check over vsock port 1024; shell = hack/guest/test-agent
# (image in build/smoke/guest), which must start as PID 1 on the verified rootfs and power off.
# --tamper data|hash-tree|wrong-root-hash|no-root-hash boots a changed copy instead: the guest
# must refuse it. --image boots an already baked DIR (not re-baked) with the runtime config
# --config (default build/configuration.toml) for QEMU and the vsock backend. The image checks of
# `make test` are tests/tests/image.rs (the same builder).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HACK=$ROOT/hack
AGENT_BIN=$ROOT/target/x86_64-unknown-linux-gnu/guest/kata-cc-agent
KATA_CC=${KATA_CC:-$ROOT/target/x86_64-unknown-linux-gnu/release/kata-cc}
PAYLOAD=agent
IMAGE=
CONFIG_GIVEN=
TIMEOUT=${KATA_CC_BOOT_TIMEOUT:-120}
TAMPER=()

die() { echo "boot-smoke: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --payload) [ $# -ge 2 ] || die "--payload needs agent|shell"; PAYLOAD=$2; shift 2 ;;
    --image) [ $# -ge 2 ] || die "--image needs a directory"; IMAGE=$2; shift 2 ;;
    --config) [ $# -ge 2 ] || die "--config needs a path"; CONFIG_GIVEN=$2; shift 2 ;;
    --timeout) [ $# -ge 2 ] || die "--timeout needs seconds"; TIMEOUT=$2; shift 2 ;;
    --tamper) [ $# -ge 2 ] || die "--tamper needs a kind"; TAMPER=(--tamper "$2"); shift 2 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
case "$TIMEOUT" in ''|*[!0-9]*) die "--timeout must be whole seconds, got '$TIMEOUT'" ;; esac
[ -x "$KATA_CC" ] || die "$KATA_CC not built: run make build (or set KATA_CC)"

case "$PAYLOAD" in
  agent)
    CONFIG=$ROOT/build/configuration.toml
    if [ -z "$IMAGE" ]; then
      [ -x "$AGENT_BIN" ] || die "agent $AGENT_BIN not built (cargo build --profile guest -p kata-cc-guest)"
      IMAGE=$ROOT/build/guest
      bash "$HACK/bake-image.sh" --agent "$AGENT_BIN" --out "$IMAGE" --config "$CONFIG"
    fi
    EXPECT=agent ;;
  shell)
    CONFIG=$ROOT/build/smoke/configuration.toml
    if [ -z "$IMAGE" ]; then
      IMAGE=$ROOT/build/smoke/guest
      bash "$HACK/bake-image.sh" --agent "$HACK/guest/test-agent" --out "$IMAGE" --config "$CONFIG"
    else
      CONFIG=$ROOT/build/configuration.toml
    fi
    EXPECT=payload ;;
  *) die "--payload must be agent or shell, got '$PAYLOAD'" ;;
esac
[ -z "$CONFIG_GIVEN" ] || { [ -n "$IMAGE" ] || die "--config needs --image"; CONFIG=$CONFIG_GIVEN; }
[ ${#TAMPER[@]} -eq 0 ] || EXPECT=refused
for f in vmlinuz initrd.img rootfs.img cmdline manifest.json; do
  [ -f "$IMAGE/$f" ] || die "$IMAGE/$f missing: bake the image first (hack/bake-image.sh)"
done
[ -f "$CONFIG" ] || die "$CONFIG missing: run make image"

exec "$KATA_CC" boot-check --config "$CONFIG" --guest "$IMAGE" --timeout "$TIMEOUT" \
  --expect "$EXPECT" "${TAMPER[@]}"
