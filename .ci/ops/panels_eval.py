"""Every PromQL target of the Grafana dashboards must return at least one
series from a real Prometheus that scrapes the live mesh with the shipped
recording rules.

Before evaluating, it waits (with a deadline, not a fixed sleep) until every
scrape target is up and every recording rule of the rule files has produced a
series: a recording group evaluates at its own interval (30s), so its first
result may take that long. Then each target `expr` is evaluated as an instant
query (/api/v1/query) after replacing Grafana's variables: `$__rate_interval`,
`$__interval` and `$__range` by fixed durations, template variables by a
regex that matches everything. A panel whose expression returns no series is
named; an expression that only uses metrics from outside the mesh
(metrics_exist.EXTERNAL) is exempt with a printed note. Series whose values
are all NaN (a quantile of a histogram with nothing observed in the window)
count as series but are noted, since the panel shows no number.

usage:
  panels_eval.py --prometheus http://127.0.0.1:9090 --rules R.yaml... \\
                 --dashboards D.json... [--timeout 120]
exit 0 when every expression returns a series, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import re
import sys
import time
import urllib.parse
import urllib.request

from metrics_exist import EXTERNAL, metric_names, rule_references, walk_panels

# Grafana's built-in interval variables. With 1s scrapes a 1m window holds
# plenty of samples, and the rate of a counter that stood still is still a
# series (0), so the check does not depend on the exact moment of a request.
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
}


def _variable(name: str) -> str:
    """A regex for every spelling Grafana accepts: $v, ${v}, ${v:fmt}, [[v]]."""
    n = re.escape(name)
    return rf"(?:\$\{{{n}(?::[^}}]*)?\}}|\[\[{n}(?::[^\]]*)?\]\]|\${n}(?![\w]))"


def substitute(expr: str, template_vars: list[str]) -> str:
    """expr with Grafana's variables replaced by values Prometheus accepts."""
    for name, value in BUILTINS.items():
        expr = re.sub(_variable(name), value, expr)
    for name in template_vars:
        var = _variable(name)
        # `label="$v"` and `label!="$v"` become regex matchers so `.*` matches everything.
        expr = re.sub(rf'(\w+)\s*(=|!=)\s*"({var})"',
                      lambda m: f'{m.group(1)}{"=~" if m.group(2) == "=" else "!~"}"{m.group(3)}"', expr)
        expr = re.sub(var, ".*", expr)
    return expr


def template_variables(dashboard: dict) -> list[str]:
    """Names of the dashboard's template variables, except the data source picker."""
    return [v["name"] for v in (dashboard.get("templating") or {}).get("list", [])
            if v.get("name") and v.get("type") != "datasource"]


def promql_targets(path: pathlib.Path):
    """(panel title, refId, expr with variables replaced) for each PromQL target."""
    dash = json.loads(path.read_text())
    names = template_variables(dash)
    for panel in walk_panels(dash.get("panels")):
        for target in panel.get("targets") or []:
            if target.get("expr"):
                yield panel.get("title") or f"panel {panel.get('id')}", target.get("refId", "?"), \
                    substitute(target["expr"], names)


class Prometheus:
    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def get(self, path: str, **params) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=15) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise RuntimeError(f"{path}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]


def wait_until_scraped(prom: Prometheus, recorded: set[str], timeout: float) -> list[str]:
    """Problems left at the deadline (targets down, recording rules with no series)."""
    deadline = time.monotonic() + timeout
    while True:
        problems = []
        targets = prom.get("/api/v1/targets")["activeTargets"]
        if not targets:
            problems.append("no scrape targets")
        for t in targets:
            if t["health"] != "up":
                problems.append(f"target {t['labels'].get('job')} {t['scrapeUrl']} is {t['health']}: "
                                f"{t.get('lastError') or 'not scraped yet'}")
        present = {s["metric"]["__name__"]
                   for s in prom.query('count by (__name__) ({__name__=~"hbmesh:.+"})')}
        for name in sorted(recorded - present):
            problems.append(f"recording rule {name} has produced no series")
        if not problems or time.monotonic() >= deadline:
            return problems
        time.sleep(1)


def rule_errors(prom: Prometheus) -> list[str]:
    errors = []
    for group in prom.get("/api/v1/rules")["groups"]:
        for rule in group["rules"]:
            if rule.get("health") == "err":
                errors.append(f"{group['name']}/{rule['name']}: {rule.get('lastError')}")
    return errors


def all_nan(result: list[dict]) -> bool:
    return all(math.isnan(float(s["value"][1])) for s in result)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prometheus", required=True)
    parser.add_argument("--rules", nargs="*", default=[], type=pathlib.Path)
    parser.add_argument("--dashboards", nargs="+", type=pathlib.Path)
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args(argv)
    prom = Prometheus(args.prometheus)
    _, recorded = rule_references(args.rules)

    t0 = time.monotonic()
    problems = wait_until_scraped(prom, recorded, args.timeout)
    print(f"waited {time.monotonic() - t0:.0f}s for the targets and {len(recorded)} recording rules")
    problems += rule_errors(prom)
    for problem in problems:
        print(f"FAIL {problem}")

    empty, evaluated = [], 0
    for path in args.dashboards:
        for title, ref, expr in promql_targets(path):
            evaluated += 1
            where = f"{path.name}: panel \"{title}\" ({ref})"
            try:
                result = prom.query(expr)
            except (RuntimeError, OSError) as exc:
                empty.append(f"{where}: {exc}")
                continue
            if result:
                nan = " (all NaN: nothing observed in the window)" if all_nan(result) else ""
                print(f"ok   {where}: {len(result)} series{nan}")
                continue
            external = metric_names(expr) & EXTERNAL.keys()
            if external and not metric_names(expr) - EXTERNAL.keys():
                print(f"note {where}: no series, exempt ({', '.join(EXTERNAL[n] for n in sorted(external))})")
                continue
            empty.append(f"{where} returns no series: {expr}")
    for line in empty:
        print(f"FAIL {line}")
    failed = len(empty) + len(problems)
    print(f"panels_eval: {evaluated - len(empty)} of {evaluated} PromQL expressions return series"
          + (f", {len(problems)} scrape/rule problem(s)" if problems else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
