"""Every metric named in a Prometheus rule or a Grafana dashboard must exist in
the /metrics output of a running service.

Names are taken from every PromQL expression: `expr` of the rule files and
the `expr` of dashboard targets (SQL targets are skipped), plus
`label_values(...)` template queries. Recording-rule names (`record:`) are
exempt, and so is a short, printed list of metrics that come from outside
the mesh (Prometheus' own `up`, kube-state-metrics' restart counter).

The available names come from the exposition text: sample lines and the
`# TYPE` lines (a family may be announced before it has samples). A family
`x` of type counter provides `x_total`; a histogram provides `x_bucket`,
`x_sum`, `x_count`. Note that prometheus-client 0.25 leaves a labelled family
with no label set out of the output entirely, so the scraped services must
have seen some traffic (check.sh sends heartbeats and asks every report).

usage:
  metrics_exist.py --rules R.yaml... --dashboards D.json... \
                   (--metrics-file DUMP... | --url http://127.0.0.1:9101/metrics ...)
exit 0 when every referenced metric exists, 1 otherwise (each missing one named).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
import urllib.request

import yaml

# Metrics the rules and dashboards may use that no mesh service exports.
EXTERNAL = {
    "up": "Prometheus' scrape health of each target",
    "kube_pod_container_status_restarts_total": "kube-state-metrics (kube-prometheus-stack), for crash loops",
}

PROMQL_KEYWORDS = {
    # aggregations and set/logical operators
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "limitk", "limit_ratio", "and", "or", "unless", "by", "without", "on", "ignoring",
    "group_left", "group_right", "bool", "offset", "atan2", "start", "end", "inf", "nan",
}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w:.$])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:])")
_LABEL_VALUES = re.compile(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)")


def metric_names(expr: str) -> set[str]:
    """Metric names referenced by one PromQL expression."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    names = set()
    for match in _IDENT.finditer(text):
        name = match.group(1)
        rest = text[match.end():].lstrip()
        if rest.startswith("("):
            continue  # function call
        if name.lower() in PROMQL_KEYWORDS or name.startswith("$"):
            continue
        names.add(name)
    return names


def rule_references(paths: list[pathlib.Path]) -> tuple[dict[str, set[str]], set[str]]:
    """(metric -> where it is used, recording rule names) for rule files."""
    refs: dict[str, set[str]] = {}
    recorded: set[str] = set()
    for path in paths:
        doc = yaml.safe_load(path.read_text())
        for group in doc.get("groups", []):
            for rule in group.get("rules", []):
                if "record" in rule:
                    recorded.add(rule["record"])
                where = f"{path.name}:{rule.get('alert') or rule.get('record')}"
                for name in metric_names(str(rule["expr"])):
                    refs.setdefault(name, set()).add(where)
    return refs, recorded


def walk_panels(items):
    """Every panel of a dashboard, including those nested in collapsed rows."""
    for panel in items or []:
        yield panel
        yield from walk_panels(panel.get("panels"))


def dashboard_references(paths: list[pathlib.Path]) -> dict[str, set[str]]:
    refs: dict[str, set[str]] = {}
    for path in paths:
        dash = json.loads(path.read_text())
        for panel in walk_panels(dash.get("panels")):
            for target in panel.get("targets") or []:
                if "expr" not in target:
                    continue  # SQL and other non-PromQL targets
                where = f"{path.name}:{panel.get('title')}"
                for name in metric_names(target["expr"]):
                    refs.setdefault(name, set()).add(where)
        for var in (dash.get("templating") or {}).get("list", []):
            query = var.get("query")
            if isinstance(query, dict):
                query = query.get("query", "")
            if var.get("type") == "query" and isinstance(query, str):
                for name in _LABEL_VALUES.findall(query):
                    refs.setdefault(name, set()).add(f"{path.name}:${var.get('name')}")
                if "label_values" not in query:
                    for name in metric_names(query):
                        refs.setdefault(name, set()).add(f"{path.name}:${var.get('name')}")
    return refs


_SUFFIXES = {
    "counter": ["_total", ""],
    "histogram": ["_bucket", "_sum", "_count", ""],
    "gaugehistogram": ["_bucket", "_gsum", "_gcount", ""],
    "summary": ["_sum", "_count", ""],
    "info": ["_info", ""],
}


def exposed_names(text: str) -> set[str]:
    """Every queryable metric name an exposition (Prometheus or OpenMetrics text) provides."""
    names: set[str] = set()
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("# EOF"):
            continue
        if line.startswith("#"):
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "TYPE":
                family, kind = parts[2], parts[3].lower()
                for suffix in _SUFFIXES.get(kind, [""]):
                    names.add(family + suffix)
            continue
        match = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)", line)
        if match:
            names.add(match.group(1))
    return names


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def check(rule_files, dashboard_files, expositions: list[str]) -> tuple[list[str], dict[str, set[str]]]:
    """Missing metric names (with where they are used) and the references checked."""
    refs, recorded = rule_references(rule_files)
    for name, where in dashboard_references(dashboard_files).items():
        refs.setdefault(name, set()).update(where)
    available: set[str] = set()
    for text in expositions:
        available |= exposed_names(text)
    missing = []
    for name in sorted(refs):
        if name in recorded or name in EXTERNAL or name in available:
            continue
        missing.append(f"{name} (used in {', '.join(sorted(refs[name]))})")
    return missing, refs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rules", nargs="*", default=[], type=pathlib.Path)
    parser.add_argument("--dashboards", nargs="*", default=[], type=pathlib.Path)
    parser.add_argument("--metrics-file", nargs="*", default=[], type=pathlib.Path)
    parser.add_argument("--url", nargs="*", default=[])
    args = parser.parse_args(argv)
    if not args.metrics_file and not args.url:
        parser.error("give --metrics-file or --url")
    expositions = [p.read_text() for p in args.metrics_file]
    for url in args.url:
        try:
            expositions.append(fetch(url))
        except OSError as exc:
            print(f"FAIL cannot scrape {url}: {exc}")
            return 1
    missing, refs = check(args.rules, args.dashboards, expositions)
    for name, why in sorted(EXTERNAL.items()):
        if name in refs:
            print(f"note: {name} is not checked against the services: {why}")
    if missing:
        for line in missing:
            print(f"MISSING {line}")
        print(f"metrics_exist: {len(missing)} of {len(refs)} referenced metrics missing from /metrics")
        return 1
    print(f"metrics_exist: all {len(refs)} referenced metrics exist (recording rules and external exempt)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
