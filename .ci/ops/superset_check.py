"""Superset assets, end to end: imported into a real Superset pointed at a
sessions store the mesh filled, every chart queried over the REST API, and the
dashboard opened in headless Chromium as a person would see it.

1. The store is a PostgreSQL database (local server, trust auth) that
   `hbmesh up` (HB_YUGABYTE_URL) migrated and filled from `hbmesh simulate`
   with a catalog imported by `hbmesh catalog import`; check.sh prepares it
   and drops it afterwards.
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
6. Headless Chromium logs in as the admin user through the login form, opens
   the dashboard and waits for every chart; a chart that shows an error, shows
   no data, draws nothing or is blank in the screenshot fails the check by
   name. The whole dashboard is saved as a PNG (--screenshot).
7. The detector is shown to fire: the store loses its video catalog and its
   ad impressions (table `videos` renamed, `session_ads` emptied), the
   dashboard is opened again, and the check fails unless exactly the three
   charts over them are reported (two errors, one empty).

Run with the Python of the Superset virtualenv:
    superset-venv/bin/python superset_check.py --database NAME --screenshot PATH
exit 0 on success, 1 on any failure.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile

import requests
import yaml

import free_ports
import superset_browser

REPO = pathlib.Path(__file__).resolve().parents[2]
ASSETS = REPO / "dashboards" / "superset"
PG = {"host": os.environ.get("HB_PG_HOST", "127.0.0.1"), "port": os.environ.get("HB_PG_PORT", "5432"),
      "user": os.environ.get("HB_PG_USER", "postgres")}


def log(msg: str) -> None:
    print(f"[superset] {msg}", flush=True)


def psql(*args: str, db: str = "postgres", stdin: str | None = None) -> str:
    cmd = ["psql", "-h", PG["host"], "-p", PG["port"], "-U", PG["user"], "-d", db, "-v", "ON_ERROR_STOP=1", "-q",
           "-At", *args]
    return subprocess.run(cmd, input=stdin, text=True, check=True, capture_output=True).stdout.strip()


def free_port() -> int:
    return free_ports.pick(1)[0]


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", required=True, help="PostgreSQL database the mesh filled (the store)")
    parser.add_argument("--screenshot", required=True, type=pathlib.Path, help="PNG of the whole dashboard")
    opts = parser.parse_args()
    # check.sh bounds the run with `timeout`: unwind so the server and Chromium are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bindir = pathlib.Path(sys.executable).parent
    superset = str(bindir / "superset")
    work = pathlib.Path(tempfile.mkdtemp(prefix="hb-superset-"))
    dbname = opts.database
    server = None
    failures: list[str] = []
    try:
        # 1. the store the mesh filled
        counts = psql("-F", " ", "-c", "SELECT (SELECT COUNT(*) FROM sessions), (SELECT COUNT(*) FROM session_ads), "
                      "(SELECT COUNT(*) FROM videos), (SELECT COUNT(*) FROM ads)", db=dbname).split()
        log(f"store {dbname}: {counts[0]} sessions, {counts[1]} ad impressions, catalog of {counts[2]} videos "
            f"and {counts[3]} ads")
        if int(counts[0]) == 0:
            raise RuntimeError(f"the store {dbname} holds no sessions: the mesh run did not fill it")

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

        # 6. the dashboard as a person sees it
        url = f"{base}/superset/dashboard/{dash['id']}/"
        started = time.monotonic()
        with superset_browser.Browser() as browser:
            browser.login(base, "admin", password)
            log(f"chromium {browser.version()}: logged in as admin in {time.monotonic() - started:.1f}s")
            started = time.monotonic()
            verdict = browser.open_dashboard(url, expected)
            failures.extend(verdict.failures)
            drawn = sorted(name for name, outcome in verdict.outcomes.items() if outcome == "drawn")
            log(f"dashboard in chromium after {time.monotonic() - started:.1f}s: "
                f"{len(drawn)}/{len(expected)} charts drawn {drawn}")
            width, height, blank = browser.screenshot(opts.screenshot)
            log(f"screenshot {opts.screenshot} ({width}x{height}, {opts.screenshot.stat().st_size // 1024} KiB)")
            failures.extend(f"chart {name!r} is blank in the screenshot" for name in blank if name in expected)

            # 7. the same look must catch broken charts
            if not verdict.failures:
                failures.extend(negative_control(browser, url, dbname))
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
        shutil.rmtree(work, ignore_errors=True)
    for failure in failures:
        print(f"FAIL superset: {failure}")
    return 1 if failures else 0


def negative_control(browser: superset_browser.Browser, url: str, dbname: str) -> list[str]:
    """Breaks the store under the dashboard (the video catalog gone, the ad
    impressions emptied), opens it again and returns what the browser look
    got wrong: every chart over the royalty datasets must show an error, the
    impression chart no data, and the concurrency chart still draw."""
    datasets = {}
    for path in (ASSETS / "datasets").rglob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        datasets[doc["uuid"]] = doc["sql"]
    wanted = {}
    for path in (ASSETS / "charts").glob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        sql = datasets[doc["dataset_uuid"]]
        wanted[doc["slice_name"]] = ("error" if re.search(r"\bvideos\b", sql)
                                     else "empty" if re.search(r"\bsession_ads\b", sql) else "drawn")
    psql("-c", "ALTER TABLE videos RENAME TO videos_hidden_by_check", "-c", "DELETE FROM session_ads", db=dbname)
    started = time.monotonic()
    verdict = browser.open_dashboard(url + "?force=true", set(wanted), settle=0.5)
    wrong = [f"chart {name!r} with the store broken: seen {verdict.outcomes.get(name)}, expected {outcome}"
             for name, outcome in sorted(wanted.items()) if verdict.outcomes.get(name) != outcome]
    if wrong:
        return ["the browser check misjudges broken charts:", *wrong]
    log(f"negative control after {time.monotonic() - started:.1f}s: store broken (videos renamed, session_ads "
        f"emptied), the look reports {len(verdict.failures)} broken chart(s) as expected:")
    for failure in verdict.failures:
        log(f"  {failure}")
    return []


def chart_datasource(http, base, chart) -> int:
    """The id of the chart's dataset, looked up by its name."""
    name = chart["params"] and json.loads(chart["params"]).get("datasource", "")
    datasets = http.get(f"{base}/api/v1/dataset/", params={"q": "(page_size:100)"}, timeout=30).json()["result"]
    raise RuntimeError(f"chart {chart['slice_name']!r} lists no datasource_id ({name}; datasets: "
                       f"{[d['table_name'] for d in datasets]})")


if __name__ == "__main__":
    sys.exit(main())
