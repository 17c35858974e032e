"""Superset assets, end to end, against a real Superset and PostgreSQL.

1. A fresh PostgreSQL database (local server, trust auth) gets the sessions
   store schema (common/migrations/postgres/*.sql) and a few seeded rows of
   sessions, session_ads, videos and ads.
2. A throw-away Superset (metadata in SQLite under a temp dir) is
   initialised and started with `superset run` on a free loopback port.
3. dashboards/superset/ is zipped and imported through POST
   /api/v1/assets/import/.
4. The imported database (trino:// in the assets) is pointed at the
   PostgreSQL tier: Superset connects to a database while importing it, and
   the cluster's Trino is not reachable here, so the bundle carries the
   PostgreSQL URI instead (the shipped URI is parsed and its dialect loaded).
5. Every imported chart's data is fetched through POST /api/v1/chart/data
   with the chart's saved query context, and must be non-empty; the
   dashboard must hold every chart.

Run with the Python of the Superset virtualenv:
    superset-venv/bin/python superset_check.py
exit 0 on success, 1 on any failure.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile

import requests
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
ASSETS = REPO / "dashboards" / "superset"
MIGRATIONS = REPO / "common" / "migrations" / "postgres"
PG = {"host": os.environ.get("HB_PG_HOST", "127.0.0.1"), "port": os.environ.get("HB_PG_PORT", "5432"),
      "user": os.environ.get("HB_PG_USER", "postgres")}

SEED_SQL = """
INSERT INTO videos (video_id, title, license_holder_id, rate_micros_per_hour) VALUES
  ('v-1', 'Night Train', 'lh-north', 1200000),
  ('v-2', 'Glass Harbour', 'lh-north', 900000),
  ('v-3', 'Salt Roads', 'lh-south', 1500000);
INSERT INTO ads (ad_id, campaign_id, advertiser_id) VALUES
  ('ad-1', 'camp-spring', 'adv-fizz'),
  ('ad-2', 'camp-spring', 'adv-fizz'),
  ('ad-3', 'camp-launch', 'adv-bolt');
-- start_ms/end_ms: epoch ms; sessions of three users over ~40 minutes.
INSERT INTO sessions (user_id, video_id, start_ms, end_ms, heartbeats, watch_ms, coverage_ms,
                      last_position_ms, devices, ads, is_final) VALUES
  ('u-1', 'v-1', 1767225600000, 1767227400000, 361, 1750000, 1750000, 1760000, 1, '["ad-1"]', TRUE),
  ('u-2', 'v-1', 1767226200000, 1767227100000, 181, 880000, 880000, 880000, 2, '["ad-1","ad-3"]', TRUE),
  ('u-2', 'v-3', 1767227400000, 1767228000000, 121, 590000, 590000, 600000, 1, '[]', FALSE),
  ('u-3', 'v-2', 1767225900000, 1767226800000, 181, 895000, 700000, 900000, 1, '["ad-2"]', TRUE);
INSERT INTO session_ads (user_id, video_id, start_ms, ad_id) VALUES
  ('u-1', 'v-1', 1767225600000, 'ad-1'),
  ('u-2', 'v-1', 1767226200000, 'ad-1'),
  ('u-2', 'v-1', 1767226200000, 'ad-3'),
  ('u-3', 'v-2', 1767225900000, 'ad-2');
"""


def log(msg: str) -> None:
    print(f"[superset] {msg}", flush=True)


def psql(*args: str, db: str = "postgres", stdin: str | None = None) -> None:
    cmd = ["psql", "-h", PG["host"], "-p", PG["port"], "-U", PG["user"], "-d", db, "-v", "ON_ERROR_STOP=1", "-q", *args]
    subprocess.run(cmd, input=stdin, text=True, check=True, capture_output=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bundle(database_uri: str) -> bytes:
    """The assets as Superset's import ZIP (one top-level directory), with the
    database's URI replaced by `database_uri`.

    Superset connects to a database while importing it (to register its
    schema permissions) and fails the whole import when it cannot, so the
    shipped trino:// URI (a cluster-internal host) is swapped for the
    PostgreSQL tier here; every other file goes in byte for byte."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(ASSETS.rglob("*.yaml")):
            arcname = f"hbmesh_assets/{path.relative_to(ASSETS)}"
            if path.parent.name == "databases":
                doc = yaml.safe_load(path.read_text())
                doc["sqlalchemy_uri"] = database_uri
                zf.writestr(arcname, yaml.safe_dump(doc, sort_keys=False))
            else:
                zf.write(path, arcname)
    return buf.getvalue()


def check_trino_uri(uri: str) -> None:
    """The shipped URI parses and names an installed SQLAlchemy dialect (no connection)."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine.url import make_url

    url = make_url(uri)
    assert url.drivername == "trino" and url.host and url.database, uri
    create_engine(url)  # loads the trino dialect; connects lazily


def main() -> int:
    bindir = pathlib.Path(sys.executable).parent
    superset = str(bindir / "superset")
    work = pathlib.Path(tempfile.mkdtemp(prefix="hb-superset-"))
    dbname = f"hbmesh_superset_{os.getpid()}"
    server = None
    failures: list[str] = []
    try:
        # 1. PostgreSQL tier
        psql("-c", f"DROP DATABASE IF EXISTS {dbname}")
        psql("-c", f"CREATE DATABASE {dbname}")
        for migration in sorted(MIGRATIONS.glob("*.sql")):
            psql("-f", str(migration), db=dbname)
        psql(db=dbname, stdin=SEED_SQL)
        log(f"postgres database {dbname}: schema from {len(list(MIGRATIONS.glob('*.sql')))} migration(s), seeded")

        # 2. Superset
        password = secrets.token_urlsafe(16)
        (work / "superset_config.py").write_text(
            f"SECRET_KEY = {secrets.token_urlsafe(32)!r}\n"
            f"SQLALCHEMY_DATABASE_URI = 'sqlite:///{work}/superset.db'\n"
            "WTF_CSRF_ENABLED = False\n"
            "TALISMAN_ENABLED = False\n"
            "RATELIMIT_ENABLED = False\n"
            "CACHE_CONFIG = {'CACHE_TYPE': 'NullCache'}\n"
            "DATA_CACHE_CONFIG = {'CACHE_TYPE': 'NullCache'}\n"
            "FILTER_STATE_CACHE_CONFIG = {'CACHE_TYPE': 'SimpleCache'}\n"
            "EXPLORE_FORM_DATA_CACHE_CONFIG = {'CACHE_TYPE': 'SimpleCache'}\n"
        )
        env = dict(os.environ, SUPERSET_CONFIG_PATH=str(work / "superset_config.py"), FLASK_APP="superset",
                   SUPERSET_HOME=str(work), PYTHONWARNINGS="ignore")
        started = time.monotonic()
        for args in (["db", "upgrade"],
                     ["fab", "create-admin", "--username", "admin", "--firstname", "Ops", "--lastname", "Check",
                      "--email", "ops@example.com", "--password", password],
                     ["init"]):
            proc = subprocess.run([superset, *args], env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stdout[-3000:], proc.stderr[-3000:])
                raise RuntimeError(f"superset {' '.join(args)} failed")
        log(f"metadata initialised in {time.monotonic() - started:.0f}s")
        port = free_port()
        server = subprocess.Popen([superset, "run", "-h", "127.0.0.1", "-p", str(port), "--with-threads"],
                                  env=env, stdout=open(work / "server.log", "w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                if requests.get(f"{base}/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if server.poll() is not None:
                raise RuntimeError("superset server exited:\n" + (work / "server.log").read_text()[-3000:])
            time.sleep(1)
        else:
            raise RuntimeError("superset server did not become healthy")
        http = requests.Session()
        token = http.post(f"{base}/api/v1/security/login",
                          json={"username": "admin", "password": password, "provider": "db", "refresh": True},
                          timeout=30).json()["access_token"]
        http.headers["Authorization"] = f"Bearer {token}"
        log(f"server up on {base}")

        # 3+4. import, with the database pointed at the PostgreSQL tier
        db_asset = yaml.safe_load(next((ASSETS / "databases").glob("*.yaml")).read_text())
        check_trino_uri(db_asset["sqlalchemy_uri"])
        uri = f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{dbname}"
        resp = http.post(f"{base}/api/v1/assets/import/",
                         files={"bundle": ("hbmesh_assets.zip", bundle(uri), "application/zip")},
                         data={"passwords": "{}"}, timeout=120)
        if resp.status_code != 200:
            raise RuntimeError(f"import failed: {resp.status_code} {resp.text[:2000]}")
        databases = http.get(f"{base}/api/v1/database/", params={"q": "(page_size:100)"}, timeout=30).json()["result"]
        [database] = [d for d in databases if d["database_name"] == db_asset["database_name"]]
        log(f"assets imported; database {database['id']} ({db_asset['database_name']}, shipped as "
            f"{db_asset['sqlalchemy_uri']}) points at postgresql://{PG['host']}:{PG['port']}/{dbname}")

        # 5. every chart's data
        expected = {yaml.safe_load(p.read_text())["slice_name"] for p in (ASSETS / "charts").glob("*.yaml")}
        charts = http.get(f"{base}/api/v1/chart/", params={"q": "(page_size:100)"}, timeout=30).json()["result"]
        charts = [c for c in charts if c["slice_name"] in expected]
        if {c["slice_name"] for c in charts} != expected:
            failures.append(f"imported charts {sorted(c['slice_name'] for c in charts)} != assets {sorted(expected)}")
        for listed in charts:
            chart = http.get(f"{base}/api/v1/chart/{listed['id']}", timeout=30).json()["result"]
            context = json.loads(chart["query_context"])
            # ids are assigned at import; the saved context carries the asset's placeholder
            context["datasource"] = {"id": listed.get("datasource_id") or chart_datasource(http, base, chart), "type": "table"}
            resp = http.post(f"{base}/api/v1/chart/data", json=context, timeout=120)
            if resp.status_code != 200:
                failures.append(f"chart {chart['slice_name']!r}: HTTP {resp.status_code} {resp.text[:1000]}")
                continue
            result = resp.json()["result"][0]
            rows = result.get("rowcount", len(result.get("data") or []))
            metrics = [m if isinstance(m, str) else m.get("label") for m in context["queries"][0].get("metrics", [])]
            positive = any(isinstance(row.get(m), (int, float)) and row.get(m) > 0
                           for row in result.get("data") or [] for m in metrics)
            if not rows:
                failures.append(f"chart {chart['slice_name']!r}: no rows (query: {result.get('query', '')[:500]})")
            elif not positive:
                failures.append(f"chart {chart['slice_name']!r}: {rows} rows but every metric is zero")
            else:
                log(f"chart {chart['slice_name']!r}: {rows} rows, e.g. {json.dumps(result['data'][0])[:160]}")
        dash_asset = yaml.safe_load(next((ASSETS / "dashboards").glob("*.yaml")).read_text())
        dashboards = http.get(f"{base}/api/v1/dashboard/", params={"q": "(page_size:100)"}, timeout=30).json()["result"]
        [dash] = [d for d in dashboards if d["dashboard_title"] == dash_asset["dashboard_title"]]
        on_dash = {c["slice_name"] for c in http.get(f"{base}/api/v1/dashboard/{dash['id']}/charts", timeout=30).json()["result"]}
        if on_dash != expected:
            failures.append(f"dashboard holds {sorted(on_dash)}, expected {sorted(expected)}")
        else:
            log(f"dashboard {dash['dashboard_title']!r} holds all {len(on_dash)} charts")
    except Exception as exc:  # report, then clean up
        failures.append(f"{type(exc).__name__}: {str(exc)[:1500]}")
    finally:
        if failures and (work / "server.log").exists():
            print("---- superset server log (tail) ----")
            print((work / "server.log").read_text()[-4000:])
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        try:
            psql("-c", f"DROP DATABASE IF EXISTS {dbname}")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(work, ignore_errors=True)
    for failure in failures:
        print(f"FAIL superset: {failure}")
    return 1 if failures else 0


def chart_datasource(http, base, chart) -> int:
    """The id of the chart's dataset, looked up by its name."""
    name = chart["params"] and json.loads(chart["params"]).get("datasource", "")
    datasets = http.get(f"{base}/api/v1/dataset/", params={"q": "(page_size:100)"}, timeout=30).json()["result"]
    raise RuntimeError(f"chart {chart['slice_name']!r} lists no datasource_id ({name}; datasets: "
                       f"{[d['table_name'] for d in datasets]})")


if __name__ == "__main__":
    sys.exit(main())
