#!/usr/bin/env bash
# Bakes the kata-cc guest image: kernel, initrd and a dm-verity protected erofs rootfs.
#
#   hack/bake-image.sh [--agent PATH] [--init PATH] [--kernel DIR] [--out DIR]
#                      [--config PATH | --no-config]
#                      [--default-policy allow-all|no-exec-no-logs] [--force]
#
# The kernel is hack/kernel.sh's build (`make kernel`; --kernel names another build directory
# with vmlinuz, config and build.json): every driver the guest needs is built in. The initrd
# holds kata-cc-init (guest/src/bin/kata-cc-init.rs, the initrd's /init) and no modules; the
# rootfs holds the agent.
# Output (DIR, default build/guest): vmlinuz, initrd.img, rootfs.img (erofs + verity hash tree),
# cmdline, manifest.json; and the runtime config (default build/configuration.toml) from
# hack/configuration.toml.in. The default policy (hack/guest/policy/<name>.rego, default allow-all)
# is installed as /etc/kata-cc/policy.rego in the rootfs, so the root hash measures it; pods
# without a policy annotation run under it. Byte-reproducible: the same inputs give the same files and root hash.
# Skips the work when the digest of every input matches the last bake in DIR.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HACK=$ROOT/hack
# The guest binaries come from the `guest` cargo profile (LTO; `make image` builds them).
AGENT=$ROOT/target/x86_64-unknown-linux-gnu/guest/kata-cc-agent
INIT=$ROOT/target/x86_64-unknown-linux-gnu/guest/kata-cc-init
OUT=$ROOT/build/guest
CONFIG=$ROOT/build/configuration.toml
FORCE=0
DEFAULT_POLICY=allow-all
KERNEL_BUILD=
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-0}
# Fixed identities: the image bytes must not depend on when or where it was baked.
EROFS_UUID=6b617461-6363-4000-8000-726f6f746673
VERITY_UUID=6b617461-6363-4000-8000-766572697479
BLOCK=4096
BOOT_TIMEOUT=${KATA_CC_BOOT_TIMEOUT:-120}
# SEV-SNP: with an AMD SEV (AmdSev) OVMF build, the manifest gets the expected launch measurement
# for each vCPU count in KATA_CC_SNP_VCPUS (computed by `kata-cc measure`).
SNP_FIRMWARE=${KATA_CC_SNP_FIRMWARE:-}
SNP_VCPUS=${KATA_CC_SNP_VCPUS:-1 2 4}
KATA_CC_BIN=${KATA_CC_BIN:-$ROOT/target/x86_64-unknown-linux-gnu/release/kata-cc}

die() { echo "bake-image: $*" >&2; exit 1; }
log() { echo "bake-image: $*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --agent) [ $# -ge 2 ] || die "--agent needs a path"; AGENT=$2; shift 2 ;;
    --init) [ $# -ge 2 ] || die "--init needs a path"; INIT=$2; shift 2 ;;
    --kernel) [ $# -ge 2 ] || die "--kernel needs a directory"; KERNEL_BUILD=$2; shift 2 ;;
    --out) [ $# -ge 2 ] || die "--out needs a directory"; OUT=$2; shift 2 ;;
    --config) [ $# -ge 2 ] || die "--config needs a path"; CONFIG=$2; shift 2 ;;
    --no-config) CONFIG=; shift ;;
    --default-policy) [ $# -ge 2 ] || die "--default-policy needs a name"; DEFAULT_POLICY=$2; shift 2 ;;
    --force) FORCE=1; shift ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

POLICY_FILE=$HACK/guest/policy/$DEFAULT_POLICY.rego
case "$DEFAULT_POLICY" in
  */*|'') die "--default-policy '$DEFAULT_POLICY': expected a name such as allow-all or no-exec-no-logs" ;;
esac
[ -f "$POLICY_FILE" ] || die "--default-policy '$DEFAULT_POLICY': no $POLICY_FILE (available: $(cd "$HACK/guest/policy" && ls *.rego | sed 's/\.rego$//' | paste -sd' '))"

for tool in busybox cpio mkfs.erofs veritysetup ldd sha256sum jq strip readelf; do
  command -v "$tool" >/dev/null || die "'$tool' not found: run hack/deps.sh"
done
BUSYBOX=$(command -v busybox)
! ldd "$BUSYBOX" >/dev/null 2>&1 || die "$BUSYBOX is dynamically linked: install busybox-static"
[ -f "$AGENT" ] || die "agent binary $AGENT not found (build it: cargo build --profile guest -p kata-cc-guest, or pass --agent)"
[ -x "$AGENT" ] || die "agent $AGENT is not executable"
! readelf -d "$AGENT" 2>/dev/null | grep -q NEEDED || die "agent $AGENT is dynamically linked (the rootfs has no libraries)"
[ -f "$INIT" ] || die "init binary $INIT not found (build it: cargo build --profile guest -p kata-cc-guest, or pass --init)"
! readelf -d "$INIT" 2>/dev/null | grep -q NEEDED || die "init $INIT is dynamically linked (the initrd has no libraries)"
AGENT=$(cd "$(dirname "$AGENT")" && pwd)/$(basename "$AGENT")

if [ -z "$KERNEL_BUILD" ]; then
  KERNEL_BUILD=$(bash "$HACK/kernel.sh" --print) || die "no guest kernel: run make kernel (hack/kernel.sh)"
fi
for f in vmlinuz config build.json; do
  [ -f "$KERNEL_BUILD/$f" ] || die "kernel build $KERNEL_BUILD has no $f (a hack/kernel.sh build directory is expected)"
done

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# ---- up-to-date check: a digest of every input ------------------------------------------------
inputs() {
  local f
  {
    echo "source_date_epoch $SOURCE_DATE_EPOCH"
    echo "default_policy $DEFAULT_POLICY"
    echo "snp_firmware $SNP_FIRMWARE $([ -z "$SNP_FIRMWARE" ] || sha256sum <"$SNP_FIRMWARE" | cut -d' ' -f1) vcpus $SNP_VCPUS"
    echo "tools $(mkfs.erofs --help 2>&1 | head -n1) | $(veritysetup --version) | $(cpio --version | head -n1) | $(strip --version | head -n1)"
    for f in "$KERNEL_BUILD/vmlinuz" "$KERNEL_BUILD/build.json" "$AGENT" "$INIT" "$BUSYBOX" "$0" "$HACK/configuration.toml.in" "$POLICY_FILE"; do
      printf '%s %s\n' "$(sha256sum <"$f" | cut -d' ' -f1)" "$f"
    done
  }
}
INPUTS=$(inputs)

outputs_intact() {
  local f want got
  [ -f "$OUT/manifest.json" ] && [ -f "$OUT/.inputs" ] || return 1
  [ "$(cat "$OUT/.inputs")" = "$INPUTS" ] || return 1
  for f in vmlinuz initrd.img rootfs.img; do
    [ -f "$OUT/$f" ] || return 1
    want=$(jq -r --arg f "$f" '.files[$f].sha256' "$OUT/manifest.json")
    got=$(sha256sum <"$OUT/$f" | cut -d' ' -f1)
    [ "$want" = "$got" ] || return 1
  done
}

write_config() {
  [ -n "$CONFIG" ] || return 0
  local cmdline tmp
  cmdline=$(cat "$OUT/cmdline")
  mkdir -p "$(dirname "$CONFIG")"
  tmp=$CONFIG.tmp.$$
  sed -e "s|@QEMU@|/usr/bin/qemu-system-x86_64|g" \
      -e "s|@KERNEL@|$OUT/vmlinuz|g" \
      -e "s|@INITRD@|$OUT/initrd.img|g" \
      -e "s|@IMAGE@|$OUT/rootfs.img|g" \
      -e "s|@KERNEL_PARAMS@|$cmdline|g" \
      -e "s|@BOOT_TIMEOUT@|$BOOT_TIMEOUT|g" \
      "$HACK/configuration.toml.in" >"$tmp"
  mv -f "$tmp" "$CONFIG"
  log "wrote $CONFIG"
}

if [ "$FORCE" = 0 ] && outputs_intact; then
  log "up to date: $OUT (root hash $(jq -r .rootfs.root_hash "$OUT/manifest.json"))"
  write_config
  exit 0
fi

WORK=$(mktemp -d "$OUT/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# ---- kernel -------------------------------------------------------------------------------------
KVER=$(jq -r .release "$KERNEL_BUILD/build.json")
[ -n "$KVER" ] && [ "$KVER" != null ] || die "$KERNEL_BUILD/build.json has no release"
log "kernel $KVER from $KERNEL_BUILD"
# The init loads no modules: whatever hack/guest/kernel.config builds in must be built in (=y)
# in this kernel too (one list; it matters for a --kernel from elsewhere).
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=y) grep -qxF -- "$line" "$KERNEL_BUILD/config" ||
      die "kernel $KERNEL_BUILD: ${line%=y} is not built in (=y); the guest has no modules (see hack/guest/kernel.config)" ;;
  esac
done <"$HACK/guest/kernel.config"

# ---- initrd -------------------------------------------------------------------------------------
IR=$WORK/initrd
mkdir -p "$IR"/{proc,sys,dev,newroot,etc/kata-cc}
strip --strip-all -o "$IR/init" "$INIT"
chmod 0755 "$IR/init"
echo "$KVER" >"$IR/etc/kata-cc/kernel-release"

# Reproducible cpio: sorted names, owner 0, one fixed mtime, sequential inode numbers.
make_cpio() { # dir out
  local dir=$1 out=$2
  find "$dir" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
  (cd "$dir" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort |
    cpio --quiet -o -H newc -R 0:0 --reproducible) >"$out"
}
make_cpio "$IR" "$WORK/initrd.cpio"
# No /dev/console entry: the kernel's built-in initramfs (INITRAMFS_SOURCE="") provides it, and
# writing a device node would need privileges and make the bytes depend on the build host.
# Not compressed: under emulation the kernel's zstd decompression (level 19) took 0.2-0.3 s of
# every boot (init reached at 2.00 -> 1.82 s of guest uptime, agent answering 4.15 -> 3.84 s after
# QEMU's start, medians of 14 interleaved boot-checks); QEMU reads 3.3 MB instead of 0.9 MB.
cp "$WORK/initrd.cpio" "$WORK/initrd.img"

# ---- rootfs -------------------------------------------------------------------------------------
RF=$WORK/rootfs
mkdir -p "$RF"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,run,tmp,root,var,etc/kata-cc}
# Without its symbol tables: they are never mapped, but every byte of the image is hashed at boot.
# (A non-ELF stand-in agent, such as the image tests' script, is copied as it is.)
AGENT_IS_ELF=0
if [ "$(head -c4 "$AGENT" | od -An -c | tr -d ' ')" = '177ELF' ]; then
  AGENT_IS_ELF=1
  strip --strip-all -o "$RF/sbin/kata-cc-agent" "$AGENT"
else
  cp "$AGENT" "$RF/sbin/kata-cc-agent"
fi
chmod 0755 "$RF/sbin/kata-cc-agent"
# No container runtime binary, no shared libraries and no shell: the agent launches containers
# itself (guest/src/launcher.rs) and runs nothing else, so a shell would only be something the
# policy does not govern (and 1 MB more to hash and copy at every boot). A script stand-in agent
# (the image tests') needs one: busybox comes with it.
if [ "$AGENT_IS_ELF" = 0 ]; then
  install -m 0755 "$BUSYBOX" "$RF/bin/busybox"
  for a in sh cat grep head uname poweroff; do
    ln -s busybox "$RF/bin/$a"
  done
fi
ln -s ../run "$RF/var/run"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$RF/etc/passwd"
printf 'root:x:0:\ntty:x:5:\nnogroup:x:65534:\n' >"$RF/etc/group"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' >"$RF/etc/hosts"
echo "$KVER" >"$RF/etc/kata-cc/kernel-release"
# The agent's initial policy (until the shim sends the pod's own with SetPolicy).
install -m 0644 "$POLICY_FILE" "$RF/etc/kata-cc/policy.rego"
find "$RF" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

IMG=$WORK/rootfs.img
# lz4hc: half the blocks to read and hash through dm-verity (at boot and on every page fault
# of the agent); lz4 decompression costs far less than hashing.
mkfs.erofs --quiet -zlz4hc -T"$SOURCE_DATE_EPOCH" -U"$EROFS_UUID" --all-root -x-1 "$IMG" "$RF" >/dev/null
DATA_SIZE=$(stat -c %s "$IMG")
[ $((DATA_SIZE % BLOCK)) = 0 ] || die "erofs image size $DATA_SIZE is not a multiple of $BLOCK"
# The salt is derived from the data so that it is fixed for fixed inputs but differs per image.
SALT=$(sha256sum <"$IMG" | cut -d' ' -f1)
VFORMAT=$(veritysetup format --data-block-size=$BLOCK --hash-block-size=$BLOCK --hash=sha256 \
  --hash-offset="$DATA_SIZE" --data-blocks=$((DATA_SIZE / BLOCK)) \
  --salt="$SALT" --uuid="$VERITY_UUID" "$IMG" "$IMG")
ROOT_HASH=$(echo "$VFORMAT" | awk -F: '/^Root hash:/ {gsub(/[ \t]/, "", $2); print $2}')
[ ${#ROOT_HASH} = 64 ] || die "could not read the root hash from veritysetup: $VFORMAT"
# Cross-check the whole tree in userspace before anything boots from it.
veritysetup verify --hash-offset="$DATA_SIZE" --data-blocks=$((DATA_SIZE / BLOCK)) \
  "$IMG" "$IMG" "$ROOT_HASH" || die "veritysetup verify of the fresh image failed"

# ---- command line, manifest ---------------------------------------------------------------------
# Kept short: console on the serial port, never hang (panic=1, reboot=k so QEMU -no-reboot exits),
# skip probes that only cost time under emulation, and the verity parameters for the init.
CMDLINE="console=ttyS0 quiet panic=1 panic_on_oops=1 reboot=k tsc=reliable no_timer_check \
noreplace-smp cryptomgr.notests 8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd \
rcupdate.rcu_expedited=1 random.trust_cpu=on \
kata_cc.roothash=$ROOT_HASH kata_cc.salt=$SALT kata_cc.hashoffset=$DATA_SIZE"
echo "$CMDLINE" >"$WORK/cmdline"

cp "$KERNEL_BUILD/vmlinuz" "$WORK/vmlinuz"
sha() { sha256sum <"$1" | cut -d' ' -f1; }
# The manifest's snp_measurement: expected SNP launch digests of this kernel + initrd + cmdline.
snp_measurement() {
  if [ -z "$SNP_FIRMWARE" ]; then
    jq -n '{computed: false, reason: "no AMD SEV firmware given (set KATA_CC_SNP_FIRMWARE to an AmdSev OVMF build); Debian'"'"'s OVMF is not an AmdSev build: it has no SNP kernel-hashes section, so it cannot measure a kernel boot"}'
    return
  fi
  [ -f "$SNP_FIRMWARE" ] || die "KATA_CC_SNP_FIRMWARE=$SNP_FIRMWARE does not exist"
  [ -x "$KATA_CC_BIN" ] || die "$KATA_CC_BIN not found (cargo build --release -p kata-cc-shim, or set KATA_CC_BIN)"
  local n d err digests='{}'
  for n in $SNP_VCPUS; do
    if ! d=$("$KATA_CC_BIN" measure --firmware "$SNP_FIRMWARE" --kernel "$WORK/vmlinuz" --initrd "$WORK/initrd.img" \
        --append "$CMDLINE" --vcpus "$n" --vcpu-type EPYC-v4 --guest-features 0x1 2>"$WORK/measure.err"); then
      err=$(cat "$WORK/measure.err")
      jq -n --arg r "$err" '{computed: false, reason: $r}'
      return
    fi
    digests=$(jq -c --arg n "$n" --arg d "$d" '. + {($n): $d}' <<<"$digests")
  done
  jq -n --argjson d "$digests" --arg fw "$(basename "$SNP_FIRMWARE")" --arg fwsha "$(sha "$SNP_FIRMWARE")" \
    '{computed: true, firmware: $fw, firmware_sha256: $fwsha, vcpu_type: "EPYC-v4", guest_features: "0x1", by_vcpus: $d}'
}

jq -n --sort-keys \
  --arg kver "$KVER" --argjson kbuild "$(cat "$KERNEL_BUILD/build.json")" --arg kconfig "$(sha "$KERNEL_BUILD/config")" \
  --arg vmlinuz "$(sha "$WORK/vmlinuz")" --arg vsize "$(stat -c %s "$WORK/vmlinuz")" \
  --arg initrd "$(sha "$WORK/initrd.img")" --arg isize "$(stat -c %s "$WORK/initrd.img")" \
  --arg rootfs "$(sha "$IMG")" --arg rsize "$(stat -c %s "$IMG")" \
  --arg roothash "$ROOT_HASH" --arg salt "$SALT" --arg hoff "$DATA_SIZE" \
  --arg cmdline "$CMDLINE" --arg agent "$(sha "$AGENT")" --arg busybox "$([ "$AGENT_IS_ELF" = 1 ] || sha "$BUSYBOX")" \
  --arg init "$(sha "$INIT")" --arg sde "$SOURCE_DATE_EPOCH" \
  --arg policy "$DEFAULT_POLICY" --arg policysha "$(sha "$POLICY_FILE")" \
  --argjson snp "$(snp_measurement)" \
  '{
    format: 2,
    kernel: {version: $kver, source_package: $kbuild.source_package, source_version: $kbuild.source_version,
             config_package: $kbuild.config_package, config_flavour: $kbuild.config_flavour,
             config_changes_sha256: $kbuild.config_changes_sha256, config_sha256: $kconfig,
             compiler: $kbuild.compiler},
    files: {
      "vmlinuz": {sha256: $vmlinuz, size: ($vsize|tonumber)},
      "initrd.img": {sha256: $initrd, size: ($isize|tonumber)},
      "rootfs.img": {sha256: $rootfs, size: ($rsize|tonumber)}
    },
    rootfs: {
      filesystem: "erofs",
      verity: "dm-verity v1, sha256, 4096-byte data and hash blocks, superblock at hash_offset",
      root_hash: $roothash, salt: $salt,
      hash_offset: ($hoff|tonumber), data_blocks: (($hoff|tonumber) / 4096)
    },
    cmdline: $cmdline,
    default_policy: {name: $policy, path: "/etc/kata-cc/policy.rego", sha256: $policysha},
    inputs: {
      agent_sha256: $agent,
      busybox_sha256: $busybox, init_sha256: $init, source_date_epoch: ($sde|tonumber)
    },
    snp_measurement: $snp
  }' >"$WORK/manifest.json"

for f in vmlinuz initrd.img rootfs.img cmdline manifest.json; do mv -f "$WORK/$f" "$OUT/$f"; done
echo "$INPUTS" >"$OUT/.inputs"
log "baked $OUT: kernel $KVER, root hash $ROOT_HASH"
write_config
