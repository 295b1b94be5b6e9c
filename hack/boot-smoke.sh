#!/usr/bin/env bash
# Boots the baked guest image under QEMU and proves two things:
#   (a) the rootfs verifies, PID 1 is handed to /sbin/kata-cc-agent and it answers on vsock
#       port 1024 through vhost-device-vsock (hybrid vsock "CONNECT 1024" -> "OK ...");
#   (b) a copy of rootfs.img with one flipped data byte makes the init print
#       "kata-cc: rootfs did not verify" and QEMU exit by itself, without the agent.
#
#   hack/boot-smoke.sh [--payload agent|vsock|shell] [--image DIR] [--timeout S] [--no-tamper]
#
# Payloads: agent = the real agent (target/.../kata-cc-agent, image baked into build/guest);
# vsock = hack/guest/vsock-test-agent.c built static (listens on vsock 1024, answers, powers off);
# shell = hack/guest/test-agent (prints a marker, powers off; no vsock). Default: agent if built,
# else vsock (shell if there is no C compiler). Test payload images go to build/smoke/guest.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HACK=$ROOT/hack
# shellcheck source=hack/guest/vm-lib.sh
. "$HACK/guest/vm-lib.sh"
AGENT_BIN=$ROOT/target/x86_64-unknown-linux-gnu/guest/kata-cc-agent
PAYLOAD=
IMAGE=
IMAGE_GIVEN=0
TIMEOUT=${KATA_CC_BOOT_TIMEOUT:-120}
TAMPER=1
MARKER='kata-cc-test-agent: started'
VERIFY_FAIL='kata-cc: rootfs did not verify'

die() { echo "boot-smoke: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --payload) [ $# -ge 2 ] || die "--payload needs agent|vsock|shell"; PAYLOAD=$2; shift 2 ;;
    --image) [ $# -ge 2 ] || die "--image needs a directory"; IMAGE=$2; IMAGE_GIVEN=1; shift 2 ;;
    --timeout) [ $# -ge 2 ] || die "--timeout needs seconds"; TIMEOUT=$2; shift 2 ;;
    --no-tamper) TAMPER=0; shift ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
case "$TIMEOUT" in ''|*[!0-9]*) die "--timeout must be whole seconds, got '$TIMEOUT'" ;; esac
if [ -z "$PAYLOAD" ]; then
  if [ -x "$AGENT_BIN" ]; then PAYLOAD=agent
  elif command -v gcc >/dev/null; then PAYLOAD=vsock
  else PAYLOAD=shell; fi
fi

SMOKE=$ROOT/build/smoke
mkdir -p "$SMOKE"
case "$PAYLOAD" in
  agent)
    [ -x "$AGENT_BIN" ] || die "agent $AGENT_BIN not built (cargo build --profile guest -p kata-cc-guest)"
    IMAGE=${IMAGE:-$ROOT/build/guest}
    [ "$IMAGE_GIVEN" = 1 ] || bash "$HACK/bake-image.sh" --agent "$AGENT_BIN" --out "$IMAGE" ;;
  vsock)
    gcc -static -O2 -Wall -o "$SMOKE/vsock-test-agent" "$HACK/guest/vsock-test-agent.c"
    IMAGE=${IMAGE:-$SMOKE/guest}
    [ "$IMAGE_GIVEN" = 1 ] || bash "$HACK/bake-image.sh" --agent "$SMOKE/vsock-test-agent" --out "$IMAGE" --no-config ;;
  shell)
    IMAGE=${IMAGE:-$SMOKE/guest}
    [ "$IMAGE_GIVEN" = 1 ] || bash "$HACK/bake-image.sh" --agent "$HACK/guest/test-agent" --out "$IMAGE" --no-config ;;
  *) die "--payload must be agent, vsock or shell, got '$PAYLOAD'" ;;
esac
for f in vmlinuz initrd.img rootfs.img cmdline manifest.json; do
  [ -f "$IMAGE/$f" ] || die "$IMAGE/$f missing: bake the image first (hack/bake-image.sh)"
done

STATES=()
cleanup() {
  local s
  for s in "${STATES[@]}"; do vm_stop "$s"; rm -rf "$s"; done
}
trap cleanup EXIT

PASS=0
FAIL=0
ok() { PASS=$((PASS + 1)); echo "PASS: $*"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL: $*"; }
show_console() { echo "---- guest console ($1) ----"; cat "$1/console.log"; echo "----"; }

# One hybrid-vsock handshake; prints what the backend (and guest) answered.
vsock_probe() {
  { printf 'CONNECT 1024\n'; sleep 2; } | timeout 5 socat -t 1 - "UNIX-CONNECT:$1/vsock.sock" 2>/dev/null || true
}

# ---- (a) the good image boots to the agent ----
S=$(mktemp -d "$SMOKE/vm.XXXXXX"); STATES+=("$S")
WITH_VSOCK=vsock
[ "$PAYLOAD" = shell ] && WITH_VSOCK=
vm_start "$S" "$IMAGE" "$IMAGE/rootfs.img" "$WITH_VSOCK"
if [ "$PAYLOAD" = shell ]; then
  if ms=$(vm_wait_console "$S" "$MARKER" "$TIMEOUT"); then
    ok "rootfs verified, test agent started as PID 1 after ${ms} ms"
    echo "boot time to agent: ${ms} ms"
  else
    bad "test agent marker '$MARKER' not seen"; show_console "$S"
  fi
else
  deadline=$(($(now_ms) + TIMEOUT * 1000))
  reply=
  while [ "$(now_ms)" -lt "$deadline" ] && vm_running "$S"; do
    reply=$(vsock_probe "$S")
    case "$reply" in OK*) break ;; esac
    sleep 0.5
  done
  ms=$(($(now_ms) - $(cat "$S/start_ms")))
  case "$reply" in
    OK*)
      ok "agent answered on vsock port 1024 after ${ms} ms: $(echo "$reply" | head -n1)"
      echo "boot time to vsock answer: ${ms} ms (includes up to 0.5 s polling)"
      [ "$PAYLOAD" = vsock ] && echo "$reply" | grep -q 'hello over vsock' &&
        ok "payload data arrived over vsock" ;;
    *) bad "no answer on vsock port 1024 within ${TIMEOUT}s (last reply: '${reply}')"; show_console "$S" ;;
  esac
  grep -q "$VERIFY_FAIL" "$S/console.log" && bad "good image reported '$VERIFY_FAIL'"
fi
vm_stop "$S"

# ---- (b) one flipped byte in the data area stops the boot ----
if [ "$TAMPER" = 1 ]; then
  S=$(mktemp -d "$SMOKE/vm.XXXXXX"); STATES+=("$S")
  hashoff=$(jq -r .rootfs.hash_offset "$IMAGE/manifest.json")
  cp "$IMAGE/rootfs.img" "$S/rootfs.img"
  flip_byte "$S/rootfs.img" $((hashoff / 2))
  vm_start "$S" "$IMAGE" "$S/rootfs.img"
  if vm_wait_exit "$S" "$TIMEOUT"; then
    if grep -q "$VERIFY_FAIL" "$S/console.log" && ! grep -q "$MARKER" "$S/console.log"; then
      ok "tampered rootfs (byte $((hashoff / 2)) flipped): '$(grep -m1 "$VERIFY_FAIL" "$S/console.log")', QEMU exited by itself (status $(cat "$S/qemu.rc"))"
    else
      bad "tampered rootfs: no '$VERIFY_FAIL' line, or the agent started"; show_console "$S"
    fi
  else
    bad "tampered rootfs: QEMU still running after ${TIMEOUT}s"; show_console "$S"
  fi
fi

echo "$PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
