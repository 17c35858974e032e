#!/usr/bin/env bash
# Paired A/B of two sessionizer bench binaries on a 2-core machine: each round
# runs both at once, one pinned per core (alternating which gets which), so
# the host's noise hits both alike. Prints on-CPU ns per heartbeat of each.
#
#   cargo bench -p svc-stream --bench sessionizer --no-run   # for each commit;
#   cp target/release/deps/sessionizer-<hash> /tmp/sess_a     # copy the binary
#   bench/ab_sessionizer.sh 4 /tmp/sess_a /tmp/sess_b
#
# Environment passes through (HB_BENCH_DEVICES=10000, say).
set -euo pipefail
rounds=${1:?rounds}
a=${2:?binary A}
b=${3:?binary B}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
run() {
  HB_BENCH_CRITERION=0 HB_BENCH_VERIFY=0 taskset -c "$2" "$1" 2>&1 \
    | grep 'on-CPU' | sed -E 's/.*\(([0-9,]+) ns each\).*/\1/'
}
for round in $(seq "$rounds"); do
  if ((round % 2)); then ca=0 cb=1; else ca=1 cb=0; fi
  run "$a" "$ca" >"$out/a" &
  run "$b" "$cb" >"$out/b"
  wait
  echo "$(basename "$a") $(cat "$out/a") ns   $(basename "$b") $(cat "$out/b") ns"
done
