#!/usr/bin/env bash
# Builds a small OCI image archive (oci-layout tar) from the host's busybox-static, without any
# registry, so demos and tests have an image that is known byte for byte.
#
#   hack/oci-image.sh [--compression gzip|zstd|none] [--add SRC=DEST ...] [--entrypoint PATH] [--bare] OUT.tar NAME
#
# --add copies the host file SRC into the layer at DEST (absolute, mode 0755), e.g. a static
# benchmark helper. --entrypoint makes PATH the image's Entrypoint (no Cmd) instead of Cmd `sh`,
# e.g. a pod sandbox ("pause") image. --bare leaves busybox and /etc out: the layer holds only
# the --add files, stripped of symbols (as Kubernetes' pause image: one static binary).
# NAME is the image reference containerd records on import (e.g. localhost/kata-cc-busybox:latest).
# The archive is reproducible: fixed mtimes, sorted entries, numeric owners, `gzip -n`.
# Import with: ctr -n NS images import OUT.tar
set -euo pipefail

usage() { echo "usage: $0 [--compression gzip|zstd|none] [--add SRC=DEST ...] [--entrypoint PATH] [--bare] OUT.tar NAME" >&2; exit 2; }

COMPRESSION=gzip
ADD=()
ENTRYPOINT=
BARE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --compression) [ $# -ge 2 ] || usage; COMPRESSION=$2; shift 2 ;;
    --add) [ $# -ge 2 ] || usage
           case "$2" in
             *=/*) [ -f "${2%%=*}" ] || { echo "oci-image.sh: --add $2: no file ${2%%=*}" >&2; exit 1; } ;;
             *) echo "oci-image.sh: --add $2: expected SRC=/absolute/dest" >&2; exit 2 ;;
           esac
           ADD+=("$2"); shift 2 ;;
    --entrypoint) [ $# -ge 2 ] || usage
           case "$2" in /*) ENTRYPOINT=$2 ;; *) echo "oci-image.sh: --entrypoint $2: expected an absolute path" >&2; exit 2 ;; esac
           shift 2 ;;
    --bare) BARE=1; shift ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) echo "oci-image.sh: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[ $# -eq 2 ] || usage
OUT=$1
NAME=$2

BUSYBOX=${BUSYBOX:-/bin/busybox}
[ -x "$BUSYBOX" ] || { echo "oci-image.sh: $BUSYBOX not found (install busybox-static: make deps)" >&2; exit 1; }
# A dynamically linked busybox would need the host's libc inside the image.
if ! LC_ALL=C file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked'; then
  if command -v file >/dev/null; then
    echo "oci-image.sh: $BUSYBOX is not statically linked (install busybox-static)" >&2; exit 1
  fi
fi
for tool in tar sha256sum jq; do
  command -v "$tool" >/dev/null || { echo "oci-image.sh: $tool is required" >&2; exit 1; }
done

case "$COMPRESSION" in
  gzip) LAYER_MT=application/vnd.oci.image.layer.v1.tar+gzip; compress() { gzip -n -9 -c; } ;;
  zstd) command -v zstd >/dev/null || { echo "oci-image.sh: zstd is required for --compression zstd" >&2; exit 1; }
        LAYER_MT=application/vnd.oci.image.layer.v1.tar+zstd; compress() { zstd -q -19 -c; } ;;
  none) LAYER_MT=application/vnd.oci.image.layer.v1.tar; compress() { cat; } ;;
  *) echo "oci-image.sh: --compression must be gzip, zstd or none, not '$COMPRESSION'" >&2; exit 2 ;;
esac

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kata-cc-oci.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# --- the root filesystem of the one layer ---------------------------------------------------
ROOT=$WORK/rootfs
if [ "$BARE" = 1 ]; then
  [ ${#ADD[@]} -gt 0 ] || { echo "oci-image.sh: --bare needs at least one --add" >&2; exit 2; }
  mkdir -p "$ROOT"
  for a in "${ADD[@]}"; do
    install -D -m 0755 -s "${a%%=*}" "$ROOT${a#*=}"
  done
else
  mkdir -p "$ROOT"/{bin,etc,dev,proc,sys,root,tmp,var,run,home}
  install -m 0755 "$BUSYBOX" "$ROOT/bin/busybox"
  APPLETS="sh ash cat uname nproc grep egrep head tail dd sleep echo true false kill ls id env wc md5sum
           sha256sum seq printf test [ tr cut sort uniq mkdir rm cp mv ln touch stat tty stty date
           hostname ps free df mount umount yes od hexdump xxd readlink realpath pwd whoami sed awk
           timeout tee expr basename dirname find xargs chmod chown"
  for a in $APPLETS; do ln -sf busybox "$ROOT/bin/$a"; done
  cat >"$ROOT/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
  cat >"$ROOT/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
EOF
  printf 'kata-cc test image\n' >"$ROOT/etc/motd"
  for a in "${ADD[@]}"; do
    install -D -m 0755 "${a%%=*}" "$ROOT${a#*=}"
  done
  chmod 0644 "$ROOT"/etc/*
  chmod 0755 "$ROOT"/{bin,etc,dev,proc,sys,var,run,home}
  chmod 0700 "$ROOT/root"
  chmod 1777 "$ROOT/tmp"
fi

# Deterministic tar of a directory's contents: sorted names, epoch mtimes, root-owned.
det_tar() {
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu \
      -C "$1" -cf - "${@:2}"
}

det_tar "$ROOT" . >"$WORK/layer.tar"
DIFF_ID=sha256:$(sha256sum "$WORK/layer.tar" | cut -d' ' -f1)

BLOBS=$WORK/oci/blobs/sha256
mkdir -p "$BLOBS"
compress <"$WORK/layer.tar" >"$WORK/layer.blob"

# Moves a file into the blob store and prints "<digest> <size>".
add_blob() {
  local hex size
  hex=$(sha256sum "$1" | cut -d' ' -f1)
  size=$(stat -c %s "$1")
  mv "$1" "$BLOBS/$hex"
  echo "sha256:$hex $size"
}

read -r LAYER_DIGEST LAYER_SIZE < <(add_blob "$WORK/layer.blob")

jq -cn --arg diff "$DIFF_ID" --arg entry "$ENTRYPOINT" '{
  architecture: "amd64",
  os: "linux",
  created: "1970-01-01T00:00:00Z",
  config: ({ Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] }
           + (if $entry == "" then { Cmd: ["sh"] } else { Entrypoint: [$entry] } end)
           + { WorkingDir: "/" }),
  rootfs: { type: "layers", diff_ids: [$diff] },
  history: [ { created: "1970-01-01T00:00:00Z", created_by: "kata-cc hack/oci-image.sh (busybox-static)" } ]
}' >"$WORK/config.json"
read -r CONFIG_DIGEST CONFIG_SIZE < <(add_blob "$WORK/config.json")

jq -cn --arg cd "$CONFIG_DIGEST" --argjson cs "$CONFIG_SIZE" \
       --arg ld "$LAYER_DIGEST" --argjson ls "$LAYER_SIZE" --arg lmt "$LAYER_MT" '{
  schemaVersion: 2,
  mediaType: "application/vnd.oci.image.manifest.v1+json",
  config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: $cd, size: $cs },
  layers: [ { mediaType: $lmt, digest: $ld, size: $ls } ]
}' >"$WORK/manifest.json"
read -r MANIFEST_DIGEST MANIFEST_SIZE < <(add_blob "$WORK/manifest.json")

# containerd names the imported image after io.containerd.image.name; other tools read ref.name.
LAST=${NAME##*/}
case "$LAST" in *:*) REF_NAME=${LAST##*:} ;; *) REF_NAME=latest ;; esac
jq -cn --arg md "$MANIFEST_DIGEST" --argjson ms "$MANIFEST_SIZE" --arg name "$NAME" --arg ref "$REF_NAME" '{
  schemaVersion: 2,
  mediaType: "application/vnd.oci.image.index.v1+json",
  manifests: [ {
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    digest: $md, size: $ms,
    platform: { architecture: "amd64", os: "linux" },
    annotations: { "io.containerd.image.name": $name, "org.opencontainers.image.ref.name": $ref }
  } ]
}' >"$WORK/oci/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' >"$WORK/oci/oci-layout"

# Fixed file modes so the archive does not depend on the umask.
find "$WORK/oci" -type d -exec chmod 0755 {} +
find "$WORK/oci" -type f -exec chmod 0644 {} +

mkdir -p "$(dirname "$OUT")"
det_tar "$WORK/oci" oci-layout index.json blobs >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "oci-image: $OUT ($NAME, layer $LAYER_DIGEST, $COMPRESSION)"
