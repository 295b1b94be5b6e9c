#!/usr/bin/env bash
# Benchmarks (not tests): prints tables and writes the same figures as JSON under build/bench/.
# 1. Policy: per-request evaluation time over Kata's conformance corpus, with the compiled fast
#    path (what the agent runs) and with the interpreter alone, side by side in one run.
# 2. Pods (kata-cc-bench, through a private containerd): pod start vs a bare boot vs runc, host
#    memory per idle pod, pods started at once. KATA_CC_BENCH_RUNS runs per figure (default 5).
# 3. CRI pod start (kata-cc-bench, the tests' loopback registry and a private containerd with
#    CRI): RunPodSandbox -> CreateContainer -> StartContainer -> the app's first CRI log line on
#    kata-cc, against `ctr run` on kata-cc, the bare boot and the same pod on runc, interleaved
#    round by round, with the CRI start's split from the shim's timeline (build/bench/cri.json).
# 4. Pod network (kata-cc-bench, through a private containerd with CRI and its CNI bridge): TCP
#    throughput, HTTP request/response and TCP round trips from the host into a kata-cc pod
#    through its VM NIC, next to a runc pod on the same bridge (build/bench/net.json).
# 5. Policy generation (kata-cc-bench, a loopback registry and a private containerd): the time of
#    `kata-cc policy gen` (registry and containerd content store as image sources) beside Kata's
#    genpolicy (../shared/tools/genpolicy or KATA_CC_GENPOLICY_DIR) on the same manifests, one of
#    them a pod of five containers on images of KATA_CC_BENCH_POLICYGEN_MB (300) MB each
#    (build/bench/policygen.json).
# KATA_CC_BENCH_PARTS (default policy,pods,cri,net,policygen) picks the parts.
set -euo pipefail
cd "$(dirname "$0")/.."
RELEASE=${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release
KATA_CC=${KATA_CC:-$RELEASE/kata-cc}
BENCH=${BENCH:-$RELEASE/kata-cc-bench}
# Kata's policy corpus ships in the regorus package (tests/kata/data), which cargo unpacked.
package_dir() {
  cargo metadata --offline --format-version 1 --filter-platform x86_64-unknown-linux-gnu |
    jq -r --arg n "$1" '.packages[] | select(.name == $n) | .manifest_path' | xargs -r dirname
}
CORPUS=${CORPUS:-$(package_dir regorus)/tests/kata/data}
ITERATIONS=${ITERATIONS:-30}
OUT=build/bench
for b in "$KATA_CC" "$BENCH"; do
  [ -x "$b" ] || { echo "bench: $b missing: run make build" >&2; exit 1; }
done
PARTS=${KATA_CC_BENCH_PARTS:-policy,pods,cri,net,policygen}
# The binary's parts (pods, cri, net, policygen): the list without `policy`.
BENCH_PARTS=$(tr ',' '\n' <<<"$PARTS" | grep -vx policy | paste -sd, || true)
mkdir -p "$OUT"
# anyhow captures a backtrace per error when RUST_BACKTRACE is set (the agent's environment has
# none): that would measure stack unwinding, not policy evaluation.
export RUST_LIB_BACKTRACE=0

policy_bench() {
  [ -d "$CORPUS" ] || { echo "bench: no Kata policy corpus at $CORPUS" >&2; exit 1; }
  echo "== policy evaluation per request ($ITERATIONS passes over each case's request log; input conversion included)"
  echo "   machine: $(nproc) CPUs, $(awk '/model name/{$1=$2=$3="";print;exit}' /proc/cpuinfo | sed 's/^ *//')"
  cases=()
  for dir in "$CORPUS"/*/; do
    [ -f "$dir/policy.rego" ] && [ -f "$dir/inputs.txt" ] || continue
    name=$(basename "$dir")
    cases+=("$name")
    for mode in fast interpreter; do
      flag=()
      [ "$mode" = interpreter ] && flag=(--interpreter)
      echo "-- $name ($mode)"
      "$KATA_CC" policy bench --policy "$dir/policy.rego" --requests "$dir/inputs.txt" \
        --iterations "$ITERATIONS" "${flag[@]}" --json "$OUT/policy-$name-$mode.json"
    done
  done
  # Summary: CreateContainerRequest p50, fast path vs interpreter, and their ratio.
  {
    echo "["
    first=1
    for name in "${cases[@]}"; do
      f=$(jq -r '.requests[] | select(.request=="CreateContainerRequest") | .p50_us' "$OUT/policy-$name-fast.json")
      i=$(jq -r '.requests[] | select(.request=="CreateContainerRequest") | .p50_us' "$OUT/policy-$name-interpreter.json")
      [ $first = 1 ] || echo ","
      first=0
      printf '{"case":"%s","create_container_p50_us_fast":%s,"create_container_p50_us_interpreter":%s}' "$name" "$f" "$i"
    done
    echo "]"
  } | jq . > "$OUT/policy-summary.json"
  echo
  echo "== CreateContainerRequest p50 (us): fast path vs interpreter"
  printf '%-16s %12s %14s %8s\n' case fast interpreter speedup
  jq -r '.[] | [.case, .create_container_p50_us_fast, .create_container_p50_us_interpreter] | @tsv' \
    "$OUT/policy-summary.json" |
    awk -F'\t' '{ printf "%-16s %12.1f %14.1f %7.1fx\n", $1, $2, $3, $3 / $2 }'
  echo "JSON: $OUT/policy-*.json"
  echo
}

if grep -qx policy <<<"$(tr ',' '\n' <<<"$PARTS")"; then policy_bench; fi
if [ -n "$BENCH_PARTS" ]; then
  KATA_CC_BENCH_PARTS=$BENCH_PARTS KATA_CC_BENCH_OUT="$PWD/$OUT/pods.json" \
    KATA_CC_BENCH_CRI_OUT="$PWD/$OUT/cri.json" KATA_CC_BENCH_NET_OUT="$PWD/$OUT/net.json" \
    KATA_CC_BENCH_POLICYGEN_OUT="$PWD/$OUT/policygen.json" "$BENCH"
fi
