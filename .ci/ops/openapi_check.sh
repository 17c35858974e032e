#!/usr/bin/env bash
# Contract check of svc-query's HTTP API against its own OpenAPI document:
# `hbmesh up --demo` with HB_AUTH_SECRET (catalog seeded, a simulated fleet's
# sessions and heartbeats stored), then schemathesis (pinned in
# requirements-openapi.txt) reads GET /openapi.json and tests every
# operation:
#   1. as admin: examples, coverage and fuzzing phases, every check but
#      positive_data_acceptance (a schema-valid period can still be refused:
#      from >= to, more than 10 000 buckets or 31 days of traffic are 400s
#      JSON Schema cannot express); ignored_auth also asks without the token;
#   2. as `app` and as a license holder: the examples and coverage phases,
#      which reach the 403s of the endpoints those roles may not call;
#   3. the admin's erasures (DELETE), last: they remove the demo's users;
# then openapi_statuses.py fails when any answer was a 5xx, or an operation
# never answered one of its documented client-side statuses, or never
# answered with rows. Bounded: --max-examples and --max-time per run.
#
#   bash .ci/ops/openapi_check.sh
#
# Environment: HB_OPS_CACHE (venv cache, as check.sh), HB_HBMESH (a built
# hbmesh binary; default: cargo build --bin hbmesh), HB_OPENAPI_MAX_EXAMPLES
# (default 100). Generation is deterministic: a run asks what the last one did.
set -uo pipefail

OPS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$OPS/../.." && pwd)"
CACHE="${HB_OPS_CACHE:-$HOME/.cache/hbmesh-ops}"
MAX_EXAMPLES="${HB_OPENAPI_MAX_EXAMPLES:-100}"
OUT="$(mktemp -d /tmp/hbmesh-openapi.XXXXXX)"
MESH_PID=""
MESH_DATA=""
T0=$SECONDS

stop_mesh() {
  if [ -n "$MESH_PID" ]; then
    kill -TERM "$MESH_PID" 2>/dev/null
    for _ in $(seq 1 40); do kill -0 "$MESH_PID" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$MESH_PID" 2>/dev/null
    wait "$MESH_PID" 2>/dev/null
    MESH_PID=""
  fi
  [ -z "$MESH_DATA" ] || rm -rf "$MESH_DATA"
  MESH_DATA=""
}
cleanup() { stop_mesh; rm -rf "$OUT"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() { echo "openapi check: $*"; exit 1; }
mesh_log() { echo "--- hbmesh up log (tail) ---"; tail -30 "$OUT/hbmesh-up.log"; }

# ------------------------------------------------------------------ tools
VENV="$CACHE/schemathesis-$(sha256sum "$OPS/requirements-openapi.txt" | cut -c1-16)"
mkdir -p "$CACHE"
if [ ! -f "$VENV/.installed" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV" || fail "python3 -m venv failed (Debian: python3-venv)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$OPS/requirements-openapi.txt" \
    || fail "cannot install $OPS/requirements-openapi.txt"
  touch "$VENV/.installed"
fi
echo "$("$VENV/bin/st" --version)"

HBMESH="${HB_HBMESH:-}"
if [ -z "$HBMESH" ]; then
  echo "building hbmesh (cargo build --bin hbmesh)"
  (cd "$REPO" && cargo build --quiet --bin hbmesh 2>"$OUT/build.log") \
    || { tail -30 "$OUT/build.log"; fail "hbmesh does not build"; }
  HBMESH="${CARGO_TARGET_DIR:-$REPO/target}/debug/hbmesh"
fi

free_port() {  # free_port [N]: N distinct free ports (free_ports.py says why not bind(0))
  "$VENV/bin/python" "$OPS/free_ports.py" "${1:-1}"
}

# ------------------------------------------------------------------- mesh
SECRET="openapi-check-$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(16))')"
MESH_DATA="$(mktemp -d /tmp/hbmesh-openapi-data.XXXXXX)"
PORTS=($(free_port 3)) || fail "no free ports for the mesh"
HTTP_PORT="${PORTS[0]}"
METRICS_PORT="${PORTS[1]}"
(
  unset HB_KAFKA_BROKERS HB_YUGABYTE_URL HB_SCYLLA_NODES HB_TRINO_URL HB_TOKEN
  export HB_AUTH_SECRET="$SECRET" HB_DATA_DIR="$MESH_DATA" HB_LOG=warn \
    HB_INGEST_ADDR="127.0.0.1:${PORTS[2]}" HB_QUERY_HTTP_ADDR="127.0.0.1:$HTTP_PORT" \
    HB_QUERY_GRPC_ADDR=127.0.0.1:0 HB_INGEST_METRICS_ADDR=127.0.0.1:0 \
    HB_STREAM_METRICS_ADDR=127.0.0.1:0 HB_QUERY_METRICS_ADDR="127.0.0.1:$METRICS_PORT"
  exec "$HBMESH" up --demo --demo-duration 15s
) >"$OUT/hbmesh-up.log" 2>&1 &
MESH_PID=$!
deadline=$((SECONDS + 120))
until grep -qs "demo finished" "$OUT/hbmesh-up.log"; do
  kill -0 "$MESH_PID" 2>/dev/null || { mesh_log; fail "hbmesh up exited"; }
  [ $SECONDS -lt $deadline ] || { mesh_log; fail "the demo did not finish within 120s"; }
  sleep 0.5
done
grep -q "demo failed" "$OUT/hbmesh-up.log" && { mesh_log; fail "the demo failed"; }
BASE="http://127.0.0.1:$HTTP_PORT"
echo "hbmesh up --demo (pid $MESH_PID) on $BASE, demo done in $((SECONDS - T0))s"

token() { HB_AUTH_SECRET="$SECRET" "$HBMESH" token --ttl 1h "$@" 2>/dev/null; }
ADMIN="$(token --role admin)" && APP="$(token --role app)" \
  && HOLDER="$(token --role license_holder --subject studio-north)" \
  || fail "hbmesh token failed"

curl -fsS --max-time 10 "$BASE/openapi.json" -o "$OUT/openapi.json" \
  || { mesh_log; fail "GET /openapi.json failed"; }
"$VENV/bin/python" - "$OUT/openapi.json" <<'EOF' || fail "/openapi.json is not an OpenAPI 3.1 document"
import json, sys
doc = json.load(open(sys.argv[1]))
assert doc["openapi"].startswith("3.1."), doc["openapi"]
print(f"openapi {doc['openapi']}: {len(doc['paths'])} paths, "
      f"{sum(1 for p in doc['paths'].values() for m in p if m in ('get', 'put', 'post', 'delete'))} operations")
EOF

# Half the generated periods and user ids are ones the demo filled, so the
# schema is also checked against answers with rows (the others are drawn
# from the schema: mostly empty or refused).
FROM="$(date -u -d '-1 hour' +%Y-%m-%dT%H:%M:%SZ)"
TO="$(date -u -d '+1 hour' +%Y-%m-%dT%H:%M:%SZ)"
USERS="$(seq -f '"user-%06g"' 0 9 | paste -sd, -)"
cat >"$OUT/schemathesis.toml" <<EOF
[dictionaries.from]
values = ["$FROM"]
[dictionaries.to]
values = ["$TO"]
[dictionaries.users]
values = [$USERS]
[parameters]
"query.from" = { dictionary = "from", probability = 0.5 }
"query.to" = { dictionary = "to", probability = 0.5 }
"path.user_id" = { dictionary = "users", probability = 0.5 }
EOF

# ----------------------------------------------------------- schemathesis
RC=0
st_run() {  # st_run NAME TOKEN LIMIT_S ARGS...: one schemathesis run, HAR kept
  local name="$1" bearer="$2" limit="$3"; shift 3
  local t0=$SECONDS
  echo
  echo "--- schemathesis as $name ---"
  # One worker: Hypothesis describes filters with ast.parse, which is not
  # thread-safe on CPython 3.11 ("AST constructor recursion depth mismatch").
  # No --max-time: with it fuzzing repeats until the budget is spent; the
  # examples bound the run and `timeout` bounds a hang.
  # From $OUT: schemathesis keeps a .schemathesis/ cache in its directory.
  (cd "$OUT" && timeout --kill-after=10 "$limit" "$VENV/bin/st" --config-file schemathesis.toml \
    run "$BASE/openapi.json" -H "Authorization: Bearer $bearer" \
    --generation-deterministic --request-timeout 30 --workers 1 \
    --no-color --report har --report-har-path "$name.har" "$@") \
    >"$OUT/$name.log" 2>&1
  local rc=$?
  [ $rc != 124 ] || echo "schemathesis as $name: stopped after ${limit}s"
  # The summary, and every failure in full when there are any.
  if [ $rc = 0 ]; then tail -12 "$OUT/$name.log"; else tail -150 "$OUT/$name.log" | cut -c1-300; RC=1; fi
  echo "schemathesis as $name: exit $rc in $((SECONDS - t0))s"
}

# Erasure deletes the demo's users, which the look-ups are checked to find
# rows for: the admin's erasures run last, on their own.
st_run admin "$ADMIN" 240 --max-examples "$MAX_EXAMPLES" --exclude-method DELETE \
  --phases examples,coverage,fuzzing --checks all --exclude-checks positive_data_acceptance
for role in app:"$APP" license_holder:"$HOLDER"; do
  st_run "${role%%:*}" "${role#*:}" 90 --max-examples 5 --phases examples,coverage \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
done
st_run admin_erase "$ADMIN" 120 --max-examples 20 --include-method DELETE \
  --phases examples,coverage,fuzzing --checks all --exclude-checks positive_data_acceptance

echo
echo "--- documented statuses reached ---"
hars=()
for name in admin app license_holder admin_erase; do [ -f "$OUT/$name.har" ] && hars+=("$OUT/$name.har"); done
if [ ${#hars[@]} = 0 ]; then
  echo "no HAR file was written"; RC=1
else
  "$VENV/bin/python" "$OPS/openapi_statuses.py" --schema "$OUT/openapi.json" "${hars[@]}" || RC=1
fi
kill -0 "$MESH_PID" 2>/dev/null || { echo "hbmesh up died during the run"; mesh_log; RC=1; }
echo "openapi check took $((SECONDS - T0))s"
[ $RC = 0 ] || mesh_log
exit $RC
