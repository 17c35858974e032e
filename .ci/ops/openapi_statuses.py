"""Which documented statuses did the schemathesis runs reach?

Reads svc-query's OpenAPI document and the HAR files of the schemathesis
runs, and fails when an operation never answered one of its documented
client-side statuses (2xx, 4xx), when any answer was a server error, or
when a list operation never answered with at least one row (then the
response schema was only ever checked against empty lists). Server-side
statuses (500, 502, 503, 504) need a failing store or Trino, which a healthy
mesh cannot produce: they are listed as not reached, and svc-query's own
tests cover them.

    python openapi_statuses.py --schema openapi.json run1.har run2.har ...
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from urllib.parse import urlsplit

METHODS = ("get", "put", "post", "delete", "patch")


def operations(document: dict) -> list[tuple[str, str, re.Pattern, set[int], bool]]:
    """(method, path, path regex, documented statuses, answers rows) per operation."""
    found = []
    for path, item in document["paths"].items():
        pattern = re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]*", re.escape(path)) + "$")
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            statuses = {int(code) for code in operation["responses"] if code.isdigit()}
            ok = operation["responses"].get("200", {})
            schema = json.dumps(ok.get("content", {}).get("application/json", {}).get("schema", {}))
            found.append((method.upper(), path, pattern, statuses, '"rows"' in schema or "Rows" in schema))
    return found


def entries(har_paths: list[str]):
    for har_path in har_paths:
        with open(har_path, encoding="utf-8") as handle:
            har = json.load(handle)
        for entry in har["log"]["entries"]:
            yield entry


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schema", required=True, help="the OpenAPI document (JSON)")
    parser.add_argument("har", nargs="+", help="HAR files of the schemathesis runs")
    args = parser.parse_args(argv)
    with open(args.schema, encoding="utf-8") as handle:
        ops = operations(json.load(handle))

    seen: dict[tuple[str, str], set[int]] = defaultdict(set)
    with_rows: dict[tuple[str, str], int] = defaultdict(int)
    server_errors = []
    unmatched: dict[str, int] = defaultdict(int)
    total = 0
    for entry in entries(args.har):
        total += 1
        method = entry["request"]["method"].upper()
        path = urlsplit(entry["request"]["url"]).path
        status = int(entry["response"]["status"])
        if status >= 500:
            server_errors.append(f"{status} {method} {entry['request']['url']}")
        matches = [op for op in ops if op[0] == method and op[2].match(path)]
        if not matches:
            unmatched[f"{method} {status}"] += 1
            continue
        key = (matches[0][0], matches[0][1])
        seen[key].add(status)
        if status == 200:
            text = entry["response"].get("content", {}).get("text") or ""
            try:
                body = json.loads(text)
            except ValueError:
                body = None
            if isinstance(body, dict) and body.get("rows"):
                with_rows[key] += 1

    failures = []
    outside = ", ".join(f"{key} x{count}" for key, count in sorted(unmatched.items())) or "none"
    print(f"{total} requests in {len(args.har)} run(s); outside the documented operations: {outside}")
    for method, path, _, documented, lists in ops:
        key = (method, path)
        reached = seen.get(key, set())
        client_side = {s for s in documented if s < 500}
        server_side = sorted(s for s in documented if s >= 500)
        missing = sorted(client_side - reached)
        undocumented = sorted(reached - documented)
        line = f"{method:6} {path:32} reached {sorted(reached)}"
        if lists:
            line += f", {with_rows[key]} answer(s) with rows"
        print(line + (f"; server-side, not reached: {server_side}" if server_side else ""))
        if missing:
            failures.append(f"{method} {path}: documented {missing} never answered")
        if undocumented:
            failures.append(f"{method} {path}: answered undocumented {undocumented}")
        if lists and with_rows[key] == 0:
            failures.append(f"{method} {path}: no answer had rows (schema only checked on empty lists)")
    for error in server_errors[:20]:
        failures.append(f"server error: {error}")
    for failure in failures:
        print(f"FAIL {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
