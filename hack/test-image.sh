#!/usr/bin/env bash
# Tests of the guest image bake (run by the Makefile): reproducibility, the manifest, and that the
# guest refuses a rootfs that does not verify. Boots real QEMU (TCG) with the real kernel and
# initrd; the agent is the stand-in hack/guest/test-agent so that these tests do not depend on the
# agent build. Prints "N passed, M failed" and exits non-zero on any failure.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HACK=$ROOT/hack
# shellcheck source=hack/guest/vm-lib.sh
. "$HACK/guest/vm-lib.sh"
TIMEOUT=${KATA_CC_BOOT_TIMEOUT:-120}
MARKER='kata-cc-test-agent: started'
VERIFY_FAIL='kata-cc: rootfs did not verify'

mkdir -p "$ROOT/build"
T=$(mktemp -d "$ROOT/build/test-image.XXXXXX")
STATES=()
cleanup() {
  local s
  for s in "${STATES[@]}"; do vm_stop "$s"; done
  rm -rf "$T"
}
trap cleanup EXIT

PASS=0
FAIL=0
ok() { PASS=$((PASS + 1)); echo "PASS: $*"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL: $*"; }
sha() { sha256sum <"$1" | cut -d' ' -f1; }

bake() { bash "$HACK/bake-image.sh" --no-config "$@" 2>&1; }

# ---- reproducibility ----
if ! out=$(bake --force --agent "$HACK/guest/test-agent" --out "$T/a"); then
  bad "bake A failed: $out"; echo "$PASS passed, $FAIL failed"; exit 1
fi
if ! out=$(bake --force --agent "$HACK/guest/test-agent" --out "$T/b"); then
  bad "bake B failed: $out"; echo "$PASS passed, $FAIL failed"; exit 1
fi
ha=$(jq -r .rootfs.root_hash "$T/a/manifest.json")
hb=$(jq -r .rootfs.root_hash "$T/b/manifest.json")
if [ "${#ha}" = 64 ] && [ "$ha" = "$hb" ]; then ok "two bakes give the same root hash $ha"
else bad "root hashes differ or are malformed: '$ha' vs '$hb'"; fi
for f in vmlinuz initrd.img rootfs.img cmdline manifest.json; do
  if cmp -s "$T/a/$f" "$T/b/$f"; then ok "two bakes give identical $f"
  else bad "$f differs between two bakes of the same inputs"; fi
done

start=$(now_ms)
out=$(bake --agent "$HACK/guest/test-agent" --out "$T/a")
if echo "$out" | grep -q 'up to date' && [ $(($(now_ms) - start)) -lt 10000 ]; then
  ok "re-bake with unchanged inputs is skipped ($(($(now_ms) - start)) ms)"
else
  bad "re-bake with unchanged inputs was not skipped: $out"
fi

# A different agent must give a different root hash (the hash covers the rootfs content).
cp "$HACK/guest/test-agent" "$T/other-agent"
echo "# changed" >>"$T/other-agent"
if out=$(bake --agent "$T/other-agent" --out "$T/c"); then
  hc=$(jq -r .rootfs.root_hash "$T/c/manifest.json")
  if [ "$hc" != "$ha" ]; then ok "a changed agent changes the root hash"
  else bad "a changed agent gave the same root hash $hc"; fi
else
  bad "bake C failed: $out"
fi

# ---- manifest ----
m=$T/a/manifest.json
for f in vmlinuz initrd.img rootfs.img; do
  if [ "$(jq -r --arg f "$f" '.files[$f].sha256' "$m")" = "$(sha "$T/a/$f")" ]; then ok "manifest sha256 of $f matches"
  else bad "manifest sha256 of $f does not match the file"; fi
done
cmdline=$(cat "$T/a/cmdline")
hashoff=$(jq -r .rootfs.hash_offset "$m")
if [ "$(jq -r .cmdline "$m")" = "$cmdline" ] && [[ "$cmdline" == *"kata_cc.roothash=$ha "* ]] &&
   [[ "$cmdline" == *"kata_cc.hashoffset=$hashoff"* ]]; then
  ok "manifest and cmdline carry the root hash and hash offset"
else
  bad "cmdline/manifest mismatch: $cmdline"
fi
if [ "$(jq -r .inputs.agent_sha256 "$m")" = "$(sha "$HACK/guest/test-agent")" ] &&
   [ "$(jq -r .snp_measurement.computed "$m")" = false ] && [ -n "$(jq -r '.kernel.version // empty' "$m")" ]; then
  ok "manifest records kernel version, agent digest and SNP measurement status"
else
  bad "manifest lacks kernel version, agent digest or snp_measurement"
fi
# Host-side cross-check of the hash tree with veritysetup.
if veritysetup verify --hash-offset="$hashoff" "$T/a/rootfs.img" "$T/a/rootfs.img" "$ha" >/dev/null 2>&1; then
  ok "veritysetup verify accepts the baked image"
else
  bad "veritysetup verify rejects the baked image"
fi

# ---- boots ----
# boot NAME IMAGE_DIR ROOTFS: starts QEMU, waits for it to exit by itself; console in $T/NAME.
boot() {
  local s=$T/$1
  STATES+=("$s")
  vm_start "$s" "$2" "$3" || return 1
  vm_wait_exit "$s" "$TIMEOUT" || { vm_stop "$s"; echo timeout >"$s/qemu.rc"; return 2; }
}
show() { echo "---- guest console $1 ----"; cat "$T/$1/console.log"; echo "----"; }

expect_refused() { # name what
  local s=$T/$1
  if [ "$(cat "$s/qemu.rc" 2>/dev/null)" = timeout ]; then
    bad "$2: QEMU did not exit by itself within ${TIMEOUT}s"; show "$1"
  elif grep -q "$VERIFY_FAIL" "$s/console.log" && ! grep -q "$MARKER" "$s/console.log"; then
    ok "$2: '$(grep -m1 -o "$VERIFY_FAIL.*" "$s/console.log" | cut -c1-120)' and QEMU exited"
  else
    bad "$2: no '$VERIFY_FAIL' line, or the agent started"; show "$1"
  fi
}

boot good "$T/a" "$T/a/rootfs.img"
s=$T/good
if [ "$(cat "$s/qemu.rc")" != timeout ] && grep -q "$MARKER" "$s/console.log" &&
   grep -q "kata-cc: rootfs verified (root hash $ha)" "$s/console.log" && ! grep -q "$VERIFY_FAIL" "$s/console.log"; then
  ok "good image boots to the agent as PID 1 ($(grep -m1 -o "$MARKER.*" "$s/console.log" | cut -c1-60))"
else
  bad "good image did not start the agent"; show good
fi

cp "$T/a/rootfs.img" "$T/data-flip.img"
flip_byte "$T/data-flip.img" $((hashoff / 2))
if veritysetup verify --hash-offset="$hashoff" "$T/data-flip.img" "$T/data-flip.img" "$ha" >/dev/null 2>&1; then
  bad "veritysetup verify accepts an image with a flipped data byte"
else
  ok "veritysetup verify rejects an image with a flipped data byte"
fi
boot data-flip "$T/a" "$T/data-flip.img"
expect_refused data-flip "flipped byte in the data area"

cp "$T/a/rootfs.img" "$T/hash-flip.img"
# The hash tree starts one block after the verity superblock at the hash offset.
flip_byte "$T/hash-flip.img" $((hashoff + 4096 + 100))
boot hash-flip "$T/a" "$T/hash-flip.img"
expect_refused hash-flip "flipped byte in the hash tree"

# A command line whose root hash differs from the image's (last digit changed).
mkdir -p "$T/wrong-hash"
cp "$T/a/vmlinuz" "$T/a/initrd.img" "$T/wrong-hash/"
last=${ha: -1}
[ "$last" = 0 ] && new=1 || new=0
sed "s/kata_cc.roothash=$ha/kata_cc.roothash=${ha%?}$new/" "$T/a/cmdline" >"$T/wrong-hash/cmdline"
boot wrong-hash-vm "$T/wrong-hash" "$T/a/rootfs.img"
expect_refused wrong-hash-vm "root hash on the command line does not match the image"

# No root hash at all must not boot an unverified rootfs.
mkdir -p "$T/no-hash"
cp "$T/a/vmlinuz" "$T/a/initrd.img" "$T/no-hash/"
sed "s/kata_cc.roothash=$ha//" "$T/a/cmdline" >"$T/no-hash/cmdline"
boot no-hash-vm "$T/no-hash" "$T/a/rootfs.img"
expect_refused no-hash-vm "command line without kata_cc.roothash"

echo "$PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
