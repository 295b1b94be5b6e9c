#!/usr/bin/env bash
# Builds the kata-cc guest kernel: Debian's kernel source (linux-source-6.12) with Debian's
# cloud-amd64 config (linux-config-6.12, the same version) and the changes in
# hack/guest/kernel.config (the boot's and a pod's drivers built in, no debug info).
# Only the bzImage is built: the guest has no modules.
#
#   hack/kernel.sh           build unless a build for the same inputs is cached (quick then)
#   hack/kernel.sh --print   print the cached build's directory (fails if there is none)
#
# The cache is keyed by the package versions, the config changes and the compiler, in
# $KATA_CC_KERNEL_DIR (default /var/cache/kata-cc/kernel)/build-<key>/: vmlinuz, config,
# build.json. A build takes ~15-25 min on 2 cores; the packages come from hack/deps.sh.
set -euo pipefail

SERIES=6.12
FLAVOUR=cloud-amd64
# Bumped when this script changes the built kernel in a way the other inputs do not show.
BUILD_REV=1
HACK=$(cd "$(dirname "$0")" && pwd)
FRAGMENT=$HACK/guest/kernel.config
KDIR=${KATA_CC_KERNEL_DIR:-/var/cache/kata-cc/kernel}
SRC_PKG=linux-source-$SERIES
CFG_PKG=linux-config-$SERIES
SRC_TAR=/usr/src/linux-source-$SERIES.tar.xz
CFG_XZ=/usr/src/linux-config-$SERIES/config.amd64_none_$FLAVOUR.xz

die() { echo "kernel.sh: $*" >&2; exit 1; }
log() { echo "kernel: $*"; }

pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }
src_ver=$(pkg_version "$SRC_PKG")
cfg_ver=$(pkg_version "$CFG_PKG")
[ -n "$src_ver" ] && [ -f "$SRC_TAR" ] || die "package $SRC_PKG is not installed ($SRC_TAR): run hack/deps.sh"
[ -n "$cfg_ver" ] && [ -f "$CFG_XZ" ] || die "package $CFG_PKG is not installed ($CFG_XZ): run hack/deps.sh"
[ "$src_ver" = "$cfg_ver" ] || die "$SRC_PKG $src_ver and $CFG_PKG $cfg_ver differ: run hack/deps.sh"
[ -f "$FRAGMENT" ] || die "$FRAGMENT is missing"
command -v gcc >/dev/null || die "gcc is missing: run hack/deps.sh"
gcc_ver=$(gcc --version | head -n1)
frag_sha=$(sha256sum "$FRAGMENT" | cut -d' ' -f1)
key=$(printf 'rev=%s\nsource=%s\nconfig=%s %s\nfragment=%s\ngcc=%s\n' \
  "$BUILD_REV" "$src_ver" "$cfg_ver" "$FLAVOUR" "$frag_sha" "$gcc_ver" | sha256sum | cut -c1-16)
OUT=$KDIR/build-$key

if [ "${1:-}" = --print ]; then
  [ -f "$OUT/build.json" ] || die "no guest kernel built for these inputs ($OUT): run make kernel"
  echo "$OUT"
  exit 0
fi
[ $# -eq 0 ] || die "usage: hack/kernel.sh [--print]"

if [ -f "$OUT/build.json" ] && [ -f "$OUT/vmlinuz" ]; then
  log "cached: $OUT ($(jq -r .release "$OUT/build.json"))"
  exit 0
fi

mkdir -p "$KDIR"
WORK=$(mktemp -d "$KDIR/work.XXXXXX")
# A failed or interrupted build leaves nothing behind but its log.
trap 'rm -rf "$WORK" "$OUT.tmp"' EXIT
LOG=$KDIR/build-$key.log
log "building $SRC_PKG $src_ver ($FLAVOUR config + $(basename "$FRAGMENT")) in $WORK, log $LOG"
t0=$(date +%s)
tar -xJf "$SRC_TAR" -C "$WORK"
TREE=$WORK/linux-source-$SERIES
[ -d "$TREE" ] || die "$SRC_TAR has no linux-source-$SERIES/"
xz -dc "$CFG_XZ" >"$TREE/.config"
# The fragment's lines replace the base config's lines for the same option.
python3 - "$TREE/.config" "$FRAGMENT" <<'PY'
import re, sys
base, frag = sys.argv[1], sys.argv[2]
def opt(line):
    m = re.match(r'^(CONFIG_[A-Za-z0-9_]+)=', line) or re.match(r'^# (CONFIG_[A-Za-z0-9_]+) is not set$', line)
    return m.group(1) if m else None
want = [l.rstrip('\n') for l in open(frag) if opt(l.rstrip('\n'))]
names = {opt(l) for l in want}
kept = [l for l in open(base) if opt(l.rstrip('\n')) not in names]
with open(base, 'w') as f:
    f.writelines(kept)
    f.write('\n'.join(want) + '\n')
PY
make -C "$TREE" -s olddefconfig >>"$LOG" 2>&1 || { tail -n 30 "$LOG" >&2; die "make olddefconfig failed (log $LOG)"; }
# Every change must have taken: Kconfig silently drops a value whose dependencies are unmet.
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=*) grep -qxF -- "$line" "$TREE/.config" || die "$FRAGMENT: '$line' does not hold after olddefconfig (found: $(grep -E "^(# )?${line%%=*}[= ]" "$TREE/.config" || echo absent))" ;;
    "# CONFIG_"*" is not set") o=${line#\# }; o=${o%% *}; ! grep -q "^$o=" "$TREE/.config" || die "$FRAGMENT: '$line' does not hold after olddefconfig" ;;
  esac
done <"$FRAGMENT"

# Same inputs, same bytes: the build's date is the source package's, user and host are fixed.
changelog=/usr/share/doc/$SRC_PKG/changelog.Debian.gz
# (awk reads to the end: leaving early would kill zcat with SIGPIPE, fatal under pipefail.)
stamp=$(zcat "$changelog" 2>/dev/null | awk '/^ -- / && !done {sub(/^.*>  /, ""); print; done=1}') || stamp=
[ -n "$stamp" ] || stamp="@0"
export KBUILD_BUILD_TIMESTAMP=$stamp KBUILD_BUILD_USER=kata-cc KBUILD_BUILD_HOST=kata-cc KBUILD_BUILD_VERSION=1
jobs=${KATA_CC_KERNEL_JOBS:-$(nproc)}
if ! nice -n 10 make -C "$TREE" -j"$jobs" bzImage >>"$LOG" 2>&1; then
  tail -n 30 "$LOG" >&2
  die "kernel build failed (log $LOG)"
fi
release=$(make -C "$TREE" -s kernelrelease)
mkdir -p "$OUT.tmp"
cp "$TREE/arch/x86/boot/bzImage" "$OUT.tmp/vmlinuz"
cp "$TREE/.config" "$OUT.tmp/config"
jq -n --arg release "$release" --arg src "$SRC_PKG" --arg srcv "$src_ver" --arg cfg "$CFG_PKG" \
  --arg flavour "$FLAVOUR" --arg frag "$frag_sha" --arg gcc "$gcc_ver" --arg key "$key" \
  --arg stamp "$KBUILD_BUILD_TIMESTAMP" \
  '{release: $release, source_package: $src, source_version: $srcv, config_package: $cfg,
    config_flavour: $flavour, config_changes_sha256: $frag, compiler: $gcc, build_timestamp: $stamp,
    key: $key}' >"$OUT.tmp/build.json"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
log "built $release in $(( $(date +%s) - t0 )) s: $OUT"
