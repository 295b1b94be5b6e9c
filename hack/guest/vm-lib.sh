# shellcheck shell=bash
# Shell helpers to boot a baked kata-cc guest image under QEMU; sourced by hack/boot-smoke.sh and
# hack/test-image.sh (not part of the image). Every process started here is recorded by PID in the
# VM's state dir and ended by that PID in vm_stop.
#
# Environment: QEMU (default /usr/bin/qemu-system-x86_64), KATA_CC_ACCEL (default tcg: the KVM
# here aborts QEMU at vCPU set-up), VHOST_DEVICE_VSOCK (default: found on PATH).

QEMU=${QEMU:-/usr/bin/qemu-system-x86_64}
KATA_CC_ACCEL=${KATA_CC_ACCEL:-tcg}

now_ms() { date +%s%3N; }

# vm_start STATE IMAGE_DIR ROOTFS_IMG [vsock]
# Boots IMAGE_DIR/{vmlinuz,initrd.img,cmdline} with ROOTFS_IMG as read-only virtio-blk; console to
# STATE/console.log. With "vsock", starts vhost-device-vsock first (guest CID 3); the host side of
# the guest's vsock is then STATE/vsock.sock (hybrid vsock: "CONNECT <port>\n" -> "OK <n>\n").
vm_start() {
  local state=$1 img=$2 rootfs=$3 vsock=${4:-}
  local extra=()
  mkdir -p "$state"
  : >"$state/console.log"
  if [ "$vsock" = vsock ]; then
    local backend=${VHOST_DEVICE_VSOCK:-$(command -v vhost-device-vsock || true)}
    [ -n "$backend" ] || { echo "vhost-device-vsock not found: run hack/deps.sh" >&2; return 1; }
    "$backend" --vm "guest-cid=3,socket=$state/vhost.sock,uds-path=$state/vsock.sock" \
      >"$state/vhost.log" 2>&1 &
    echo $! >"$state/vhost.pid"
    for _ in $(seq 100); do
      [ -S "$state/vhost.sock" ] && break
      kill -0 "$(cat "$state/vhost.pid")" 2>/dev/null || { cat "$state/vhost.log" >&2; return 1; }
      sleep 0.05
    done
    [ -S "$state/vhost.sock" ] || { echo "vhost-device-vsock did not create $state/vhost.sock" >&2; return 1; }
    extra=(-chardev "socket,id=vsk,path=$state/vhost.sock" -device "vhost-user-vsock-pci,chardev=vsk")
  fi
  now_ms >"$state/start_ms"
  "$QEMU" -name kata-cc-smoke -machine q35,memory-backend=mem -accel "$KATA_CC_ACCEL" -cpu max \
    -smp 1 -m 2048 -object memory-backend-memfd,id=mem,size=2048M,share=on \
    -display none -monitor none -nodefaults -no-reboot -no-user-config \
    -serial "file:$state/console.log" \
    -kernel "$img/vmlinuz" -initrd "$img/initrd.img" -append "$(cat "$img/cmdline")" \
    -drive "file=$rootfs,if=none,id=rootfs,format=raw,readonly=on" \
    -device virtio-blk-pci,drive=rootfs \
    "${extra[@]}" >"$state/qemu.log" 2>&1 &
  echo $! >"$state/qemu.pid"
}

# A QEMU that exited but is not reaped yet (a zombie child of this shell) counts as not running.
vm_running() {
  local pid stat
  pid=$(cat "$1/qemu.pid")
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

# vm_wait_console STATE EXTENDED_REGEX TIMEOUT_S -> 0 matched (prints ms since start), 1 QEMU
# exited first, 2 timed out.
vm_wait_console() {
  local state=$1 re=$2 timeout=$3 deadline
  deadline=$(($(now_ms) + timeout * 1000))
  while :; do
    if grep -Eq "$re" "$state/console.log" 2>/dev/null; then
      echo $(($(now_ms) - $(cat "$state/start_ms")))
      return 0
    fi
    if ! vm_running "$state"; then
      grep -Eq "$re" "$state/console.log" 2>/dev/null && { echo $(($(now_ms) - $(cat "$state/start_ms"))); return 0; }
      return 1
    fi
    [ "$(now_ms)" -lt "$deadline" ] || return 2
    sleep 0.05
  done
}

# vm_wait_exit STATE TIMEOUT_S -> 0 when QEMU exited by itself (its status in STATE/qemu.rc), 2 on timeout.
vm_wait_exit() {
  local state=$1 timeout=$2 deadline pid
  pid=$(cat "$state/qemu.pid")
  deadline=$(($(now_ms) + timeout * 1000))
  while vm_running "$state"; do
    [ "$(now_ms)" -lt "$deadline" ] || return 2
    sleep 0.05
  done
  # QEMU is our child when started from this shell: collect its exit status.
  if wait "$pid" 2>/dev/null; then echo 0 >"$state/qemu.rc"; else echo $? >"$state/qemu.rc"; fi
  return 0
}

# vm_stop STATE: ends QEMU and the vsock backend (by PID) if still running.
vm_stop() {
  local state=$1 f pid
  for f in qemu.pid vhost.pid; do
    [ -f "$state/$f" ] || continue
    pid=$(cat "$state/$f")
    kill -0 "$pid" 2>/dev/null || continue
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
  done
}

# flip_byte FILE OFFSET: inverts one byte in place.
flip_byte() {
  local file=$1 off=$2 b
  b=$(od -An -tu1 -j "$off" -N1 "$file" | tr -d ' ')
  printf '%b' "\\0$(printf '%03o' $((255 - b)))" | dd of="$file" bs=1 seek="$off" conv=notrunc status=none
}
