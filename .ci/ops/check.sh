#!/usr/bin/env bash
# Operations checks of the heartbeat mesh: Helm chart, ArgoCD manifests,
# Prometheus rules, Grafana dashboards, metric names against the running
# services, Superset assets. Installs what it needs on a fresh machine
# (Python venvs, npm packages, Debian's prometheus for promtool), is safe to
# run again, and exits non-zero when any check fails.
#
#   bash .ci/ops/check.sh                 everything
#   HB_SKIP_SUPERSET=1 bash .ci/ops/check.sh   without the Superset check (announced)
#
# Tools are cached under $HB_OPS_CACHE (default ~/.cache/hbmesh-ops), keyed
# by the pinned requirement files, so a second run skips the installs.
set -uo pipefail

OPS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$OPS/../.." && pwd)"
CACHE="${HB_OPS_CACHE:-$HOME/.cache/hbmesh-ops}"
OUT="$(mktemp -d /tmp/hbmesh-ops.XXXXXX)"
mkdir -p "$CACHE"

PASSED=0
FAILED=0
SKIPPED=0
FAILED_NAMES=()
START_ALL=$SECONDS

say() { printf '\n==> %s\n' "$*"; }

# run NAME CMD...: one check; counts it, prints its duration and outcome.
run() {
  local name="$1"; shift
  local t0=$SECONDS
  say "$name"
  if "$@"; then
    PASSED=$((PASSED + 1))
    echo "PASS $name ($((SECONDS - t0))s)"
  else
    FAILED=$((FAILED + 1))
    FAILED_NAMES+=("$name")
    echo "FAIL $name ($((SECONDS - t0))s)"
  fi
}

hash_of() { cat "$@" | sha256sum | cut -c1-16; }

# ---------------------------------------------------------------- installs
python_venv() {  # python_venv DIR REQUIREMENTS: create/refresh a venv
  local dir="$1" req="$2"
  if [ ! -x "$dir/bin/python" ] || [ ! -f "$dir/.installed" ]; then
    rm -rf "$dir"
    python3 -m venv "$dir" || return 1
    "$dir/bin/pip" install --quiet --disable-pip-version-check -r "$req" || return 1
    touch "$dir/.installed"
  fi
}

install_tools() {
  local t0=$SECONDS
  PYVENV="$CACHE/venv-$(hash_of "$OPS/requirements.txt")"
  python_venv "$PYVENV" "$OPS/requirements.txt" || { echo "cannot install $OPS/requirements.txt"; return 1; }

  if ! command -v promtool >/dev/null 2>&1; then
    echo "installing Debian package prometheus (for promtool)"
    local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq >/dev/null && \
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
      || { echo "cannot install prometheus"; return 1; }
  fi

  local stamp; stamp="$(hash_of "$OPS/node/package-lock.json")"
  if [ "$(cat "$OPS/node/node_modules/.hb-stamp" 2>/dev/null)" != "$stamp" ]; then
    (cd "$OPS/node" && npm ci --no-audit --no-fund --loglevel=error >/dev/null 2>&1) \
      || { echo "npm ci failed in $OPS/node"; return 1; }
    echo "$stamp" > "$OPS/node/node_modules/.hb-stamp"
  fi
  echo "tools ready in $((SECONDS - t0))s: $("$PYVENV/bin/python" --version), $(promtool --version 2>&1 | head -1), node $(node --version)"
}

# ------------------------------------------------------------------ checks
check_helm() {
  (cd "$OPS" && "$PYVENV/bin/python" check_helm.py "$OUT/helm" 2>&1 | grep -v 'INFO found symbolic link in path')
}

check_crd_schemas() {
  (cd "$OPS/node" && node validate-crs.mjs "$OUT/helm/crs.json" .gen/crs)
}

check_types() {
  # Grafana dashboards against @grafana/schema, custom resources (typed
  # literals from the previous step) against their CRD models: one tsc run.
  (cd "$OPS/node" \
    && node gen-dashboard-types.mjs .gen/dashboards "$REPO"/dashboards/grafana/*.json \
    && echo "tsc: $(ls .gen/dashboards | wc -l) dashboard(s), $(grep -c '^export const o' .gen/crs/crs.ts) custom resource(s)" \
    && ./node_modules/.bin/tsc -p tsconfig.json)
}

check_promtool_check() {
  promtool check rules "$REPO/dashboards/prometheus/hbmesh-rules.yaml"
}

check_promtool_test() {
  (cd "$REPO/dashboards/prometheus" && promtool test rules hbmesh-rules.test.yaml)
}

check_pytest() {
  (cd "$OPS" && "$PYVENV/bin/python" -m pytest -q -p no:cacheprovider tests)
}

free_port() {
  "$PYVENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_http() {  # wait_http URL SECONDS
  local url="$1" deadline=$((SECONDS + $2))
  while [ $SECONDS -lt $deadline ]; do
    curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null && return 0
    sleep 0.5
  done
  return 1
}

check_metrics_exist() {
  # Every metric named in a rule or dashboard must be on /metrics of the
  # running services: `hbmesh up` (all three in one process, embedded store),
  # a little traffic from `hbmesh simulate`, then a scrape of each service.
  local t0=$SECONDS
  echo "building hbmesh (cargo build --bin hbmesh)"
  if ! (cd "$REPO" && cargo build --quiet --bin hbmesh 2>"$OUT/hbmesh-build.log"); then
    tail -30 "$OUT/hbmesh-build.log"
    echo "hbmesh does not build: the live metric check cannot run"
    return 1
  fi
  echo "built in $((SECONDS - t0))s"
  local hbmesh="${CARGO_TARGET_DIR:-$REPO/target}/debug/hbmesh"
  local data; data="$(mktemp -d /tmp/hbmesh-ops-data.XXXXXX)"
  local ingest query_http m_ingest m_stream m_query
  ingest="$(free_port)"; query_http="$(free_port)"
  m_ingest="$(free_port)"; m_stream="$(free_port)"; m_query="$(free_port)"
  (
    unset HB_AUTH_SECRET HB_KAFKA_BROKERS HB_YUGABYTE_URL HB_SCYLLA_NODES HB_TRINO_URL
    export HB_DATA_DIR="$data" HB_LOG=info \
      HB_INGEST_ADDR="127.0.0.1:$ingest" HB_QUERY_HTTP_ADDR="127.0.0.1:$query_http" HB_QUERY_GRPC_ADDR=127.0.0.1:0 \
      HB_INGEST_METRICS_ADDR="127.0.0.1:$m_ingest" HB_STREAM_METRICS_ADDR="127.0.0.1:$m_stream" \
      HB_QUERY_METRICS_ADDR="127.0.0.1:$m_query"
    exec "$hbmesh" up
  ) >"$OUT/hbmesh-up.log" 2>&1 &
  local pid=$!
  local rc=0
  for port in "$m_ingest" "$m_stream" "$m_query"; do
    if ! wait_http "http://127.0.0.1:$port/healthz" 60; then
      echo "hbmesh up: no /healthz on 127.0.0.1:$port after 60s"; rc=1; break
    fi
  done
  if [ $rc = 0 ]; then
    echo "hbmesh up (pid $pid): ingest 127.0.0.1:$ingest, metrics :$m_ingest :$m_stream :$m_query"
    if ! (unset HB_AUTH_SECRET; "$hbmesh" simulate --devices 5 --rate 20 --duration 3s \
          --target "http://127.0.0.1:$ingest") >"$OUT/simulate.log" 2>&1; then
      echo "hbmesh simulate failed:"; tail -20 "$OUT/simulate.log"; rc=1
    else
      tail -5 "$OUT/simulate.log"
    fi
    sleep 2  # let the stream side drain the in-process queue
    # prometheus-client leaves a labelled family out of /metrics until it has
    # a label set, so ask every report once (embedded tier: open on loopback).
    local from to
    from="$(date -u -d '-1 hour' +%Y-%m-%dT%H:%M:%SZ)"; to="$(date -u -d '+1 hour' +%Y-%m-%dT%H:%M:%SZ)"
    for path in "v1/reports/royalties?from=$from&to=$to" "v1/reports/impressions?from=$from&to=$to" \
                "v1/reports/concurrency?from=$from&to=$to&step_s=60" "v1/reports/traffic?from=$from&to=$to" \
                "v1/users/ops-check/progress" "v1/users/ops-check/sessions?from=$from&to=$to"; do
      printf 'GET /%s -> %s\n' "${path%%\?*}" \
        "$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 "http://127.0.0.1:$query_http/$path")"
    done
    local files=()
    for svc in ingest:$m_ingest stream:$m_stream query:$m_query; do
      local f="$OUT/metrics-${svc%%:*}.txt"
      if curl -fsS --max-time 10 "http://127.0.0.1:${svc##*:}/metrics" -o "$f"; then
        files+=("$f")
        echo "scraped ${svc%%:*}: $(grep -c '^# TYPE' "$f") metric families"
      else
        echo "cannot scrape ${svc%%:*} /metrics"; rc=1
      fi
    done
    if [ ${#files[@]} = 3 ]; then
      # run even when the traffic step failed: the report still says which
      # names are there (the check fails anyway through rc)
      "$PYVENV/bin/python" "$OPS/metrics_exist.py" \
        --rules "$REPO/dashboards/prometheus/hbmesh-rules.yaml" \
        --dashboards "$REPO"/dashboards/grafana/*.json \
        --metrics-file "${files[@]}" || rc=1
    fi
  fi
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  if [ $rc != 0 ]; then echo "--- hbmesh up log (tail) ---"; tail -30 "$OUT/hbmesh-up.log"; fi
  rm -rf "$data"
  return $rc
}

check_superset() {
  local t0=$SECONDS
  local venv="$CACHE/superset-$(hash_of "$OPS/requirements-superset.txt")"
  if [ ! -f "$venv/.installed" ]; then
    echo "installing Superset into $venv (takes a few minutes)"
  fi
  python_venv "$venv" "$OPS/requirements-superset.txt" || { echo "cannot install Superset"; return 1; }
  echo "superset venv ready in $((SECONDS - t0))s"
  if ! command -v psql >/dev/null || ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    echo "PostgreSQL is not reachable on 127.0.0.1:5432"
    return 1
  fi
  (cd "$OPS" && "$venv/bin/python" superset_check.py)
}

# -------------------------------------------------------------------- main
say "installing tools (cache: $CACHE)"
if ! install_tools; then
  echo "FAIL installing tools"
  echo "ops checks: 0 passed, 1 failed"
  exit 1
fi

run "helm lint + render + kubernetes-validate --strict" check_helm
run "custom resources vs CRD schemas (@kubernetes-models)" check_crd_schemas
run "tsc: dashboards vs @grafana/schema, CRs vs CRD types" check_types
run "promtool check rules" check_promtool_check
run "promtool test rules" check_promtool_test
run "pytest (chart invariants, argo, rules, metrics_exist, dockerfile)" check_pytest
run "metrics named in rules/dashboards exist on live /metrics" check_metrics_exist
if [ "${HB_SKIP_SUPERSET:-0}" = 1 ]; then
  say "SUPERSET CHECK SKIPPED (HB_SKIP_SUPERSET=1): the Superset assets were NOT imported or queried"
  SKIPPED=$((SKIPPED + 1))
else
  run "superset: import assets, query every chart" check_superset
fi

rm -rf "$OUT"
echo
echo "ops checks took $((SECONDS - START_ALL))s"
for name in "${FAILED_NAMES[@]}"; do echo "failed: $name"; done
if [ "$SKIPPED" -gt 0 ]; then
  echo "ops checks: $PASSED passed, $FAILED failed, $SKIPPED skipped"
else
  echo "ops checks: $PASSED passed, $FAILED failed"
fi
[ "$FAILED" -eq 0 ]
