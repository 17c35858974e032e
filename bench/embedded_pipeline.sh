#!/usr/bin/env bash
# Whole embedded pipeline: `hbmesh up` + `hbmesh simulate` on loopback, then
# checks that nothing was lost or double counted (distinct acked heartbeats ==
# raw rows == sum of session heartbeats). Usage:
#   bench/embedded_pipeline.sh RATE [DEVICES] [DURATION] [--pregenerate]
# (HB_BENCH_BIN: the hbmesh binary to run, default target/release/hbmesh;
# HB_BENCH_SIM_BIN: the one that simulates, default the same, so a before/after
# can keep the load generator fixed)
# --pregenerate draws the whole run before traffic starts, so the load
# generator's own CPU (it shares the 2 cores) is mostly spent before the run.
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-20000}; devices=${2:-20000}; duration=${3:-20s}; extra=${4:-}
bin=${HB_BENCH_BIN:-target/release/hbmesh}
[[ -x $bin ]] || cargo build --release --bin hbmesh
dir=$(mktemp -d)
export HB_DATA_DIR=$dir HB_DEVICE_RATE=0 HB_LOG=${HB_LOG:-warn} \
  HB_INGEST_ADDR=127.0.0.1:51051 HB_QUERY_HTTP_ADDR=127.0.0.1:58080 HB_QUERY_GRPC_ADDR=127.0.0.1:51052 \
  HB_INGEST_METRICS_ADDR=127.0.0.1:59101 HB_STREAM_METRICS_ADDR=127.0.0.1:59102 HB_QUERY_METRICS_ADDR=127.0.0.1:59103
$bin up > "$dir/up.log" 2>&1 &
up=$!
# HB_BENCH_LOG=FILE keeps the mesh's log (e.g. with HB_LOG=warn,svc_stream=debug
# for per-flush phase timings).
# The staleness sampler (below) goes too: left running, it would hold the
# caller's pipe open after a failed run (e.g. a simulator that gave up draining).
sampler=
trap 'kill $up $sampler 2>/dev/null || true; [[ -n ${HB_BENCH_LOG:-} ]] && cp "$dir/up.log" "$HB_BENCH_LOG"; rm -rf "$dir"' EXIT
sleep 2
# How far the sessions table trails real time while the load runs (sampled
# once a second): a heartbeat becomes visible in its session at most its ack
# latency plus this later (HB_SESSION_WRITE_INTERVAL lets it grow under load).
python3 - "$dir" > "$dir/staleness.txt" <<'PY' &
import sqlite3, sys, time
db = sqlite3.connect(f"file:{sys.argv[1]}/hbmesh.db?mode=ro", uri=True, timeout=5)
while True:
    time.sleep(1)
    try:
        row = db.execute("select max(updated_ms) from sessions").fetchone()
    except sqlite3.Error:
        continue
    if row[0]:
        print(int(time.time() * 1000) - row[0], flush=True)
PY
sampler=$!
/usr/bin/time -f '%U %S' -o "$dir/sim.cpu" ${HB_BENCH_SIM_BIN:-$bin} simulate --devices "$devices" --rate "$rate" --duration "$duration" \
  --target http://127.0.0.1:51051 --json $extra > "$dir/sim.json"
kill $sampler 2>/dev/null || true
# Resident memory of the whole mesh process against the sessions it holds open;
# the peak too, since what each ingest call held is freed once the simulator
# has hung up.
rss_kib=$(awk '/^VmRSS/ {print $2}' /proc/$up/status)
hwm_kib=$(awk '/^VmHWM/ {print $2}' /proc/$up/status)
# CPU seconds of each process (utime + stime, in clock ticks), for the CPU
# per heartbeat below.
awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' /proc/$up/stat > "$dir/up.cpu"
open=$(curl -s http://127.0.0.1:59102/metrics | awk '$1 == "hb_stream_open_sessions" {print $2}')
echo "hbmesh up at the end: resident $((rss_kib / 1024)) MiB for ${open:-?} open sessions" \
  "($(( rss_kib * 1024 / (${open:-0} > 0 ? ${open:-1} : 1) )) B per open session), peak $((hwm_kib / 1024)) MiB"
kill -TERM $up; wait $up || true
python3 - "$dir" <<'PY'
import json, sqlite3, sys
d = sys.argv[1]
sim = json.load(open(f"{d}/sim.json"))
db = sqlite3.connect(f"{d}/hbmesh.db")
raw = db.execute("select count(*) from raw_heartbeats").fetchone()[0]
sess = db.execute("select coalesce(sum(heartbeats),0), count(*) from sessions").fetchone()
lat = sim["ack_latency_ms"]
print(f"sim: {json.dumps({k: v for k, v in sim.items() if not isinstance(v, dict)})}")
print(f"offered {sim['offered_rate']:.0f}/s: acked {sim['throughput_acked_per_s']:.0f}/s, "
      f"ack p50 {lat['p50']:.1f} ms p99 {lat['p99']:.1f} ms; accepted {sim['accepted']} "
      f"(+{sim['duplicates']} in-call duplicates), raw rows {raw}, session heartbeats {sess[0]} in {sess[1]} sessions")
stale = sorted(int(x) for x in open(f"{d}/staleness.txt").read().split())
if stale:
    print(f"sessions table behind real time while loaded: p50 {stale[len(stale)//2]} ms, "
          f"max {stale[-1]} ms ({len(stale)} samples)")
up_cpu = float(open(f"{d}/up.cpu").read())
sim_cpu = sum(float(x) for x in open(f"{d}/sim.cpu").read().split()[-2:])
acked = max(sim["accepted"], 1)
print(f"CPU: hbmesh up {up_cpu:.1f} s ({up_cpu * 1e6 / acked:.2f} µs per accepted heartbeat), "
      f"simulate {sim_cpu:.1f} s ({sim_cpu * 1e6 / acked:.2f} µs)")
ok = raw == sess[0] and sim["unacknowledged"] == 0
print("nothing lost or double counted" if ok else "MISMATCH")
PY
