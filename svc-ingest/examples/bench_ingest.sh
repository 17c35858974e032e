#!/usr/bin/env bash
# Ingest benchmark (docs/benchmarks.md, "Server CPU per heartbeat (in-process mock broker)").
#
#   svc-ingest/examples/bench_ingest.sh PUBLISHER RATE DURATION [hbmesh simulate flags...]
#
# PUBLISHER is `mock-kafka` (Kafka publisher on librdkafka's mock cluster) or
# `counting` (transport floor). Starts examples/bench_server (release) with the
# device limit off, runs `hbmesh simulate --json` against it over loopback, and
# prints one line: offered/sent/acked rates, ack latency percentiles, and the
# CPU each side used (server CPU per acknowledged heartbeat). Build first:
#
#   cargo build --release -p svc-ingest --example bench_server
#   cargo build --release -p hbmesh
set -euo pipefail
cd "$(dirname "$0")/../.."

publisher=${1:?publisher: mock-kafka or counting}
rate=${2:?rate: heartbeats per second offered}
duration=${3:?duration, e.g. 30s}
shift 3
port=${BENCH_PORT:-50070}
devices=${BENCH_DEVICES:-100000}
out=$(mktemp -d)

HB_LOG=warn ./target/release/examples/bench_server --publisher "$publisher" \
    --ingest-addr "127.0.0.1:$port" --ingest-metrics-addr 127.0.0.1:0 --device-rate 0 \
    >"$out/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    grep -q "gRPC on" "$out/server.log" && break
    sleep 0.1
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# The simulator may draw the fleet up front (--pregenerate); server CPU is
# counted from the moment its traffic starts, by sampling around the run.
before=$(cpu_ticks "$server")
/usr/bin/time -f "%U %S" -o "$out/client.time" \
    ./target/release/hbmesh simulate --devices "$devices" --rate "$rate" --duration "$duration" \
    --target "127.0.0.1:$port" --json "$@" >"$out/summary.json" 2>"$out/simulate.log"
after=$(cpu_ticks "$server")
kill "$server"
wait "$server" 2>/dev/null || true

python3 - "$publisher" "$rate" "$((after - before))" "$(getconf CLK_TCK)" "$out" <<'PY'
import json, sys
publisher, rate, ticks, hz, out = sys.argv[1:6]
s = json.load(open(f"{out}/summary.json"))
user, system = map(float, open(f"{out}/client.time").read().split()[-2:])
server_s = int(ticks) / int(hz)
acked = max(s["acknowledged"], 1)
l = s["ack_latency_ms"]
print(
    f"{publisher:>10}  offered {float(rate):>9,.0f}/s  sent {s['sent_per_s']:>9,.0f}/s  "
    f"acked {s['throughput_acked_per_s']:>9,.0f}/s  p50 {l['p50']:.1f}  p99 {l['p99']:.1f}  "
    f"p99.9 {l['p999']:.1f}  max {l['max']:.1f} ms  errors {s['call_errors']}  "
    f"unacked {s['unacknowledged']}  | server cpu {server_s:.1f}s ({server_s / acked * 1e6:.2f} us/hb)  "
    f"client cpu {user + system:.1f}s"
)
PY
