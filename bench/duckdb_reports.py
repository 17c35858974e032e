#!/usr/bin/env python3
"""DuckDB baseline for the svc-query report benchmark (issue 4).

Reads the rows `bench_reports --export` wrote as CSV, converts them to
Parquet once, and times the same reports computed by DuckDB straight over the
Parquet files (views on read_parquet) at 1 and 16 concurrent clients (threads,
one cursor each). Before timing, every report's answer is compared with the
answer svc-query gave over HTTP (answers/*.json), so both sides are known to
compute the same numbers.

    pip install duckdb
    cargo run --release -p svc-query --example bench_reports -- --store sqlite --export
    python3 bench/duckdb_reports.py --dir /tmp/hbq-bench
"""

import argparse
import json
import os
import threading
import time

import duckdb

B0 = 1_711_929_600_000
HOUR = 3_600_000
DAY = 24 * HOUR
SPAN = 30 * DAY
DAY_W = (B0 + 14 * DAY, B0 + 15 * DAY)
MONTH_W = (B0, B0 + SPAN)

ROYALTIES = """
SELECT v.license_holder_id, s.video_id, count(*) AS sessions, count(DISTINCT s.user_id) AS viewers,
       sum(s.watch_ms)::BIGINT AS watch_ms,
       (sum(s.watch_ms)::HUGEINT * v.rate_micros_per_hour // 3600000)::BIGINT AS amount_micros
FROM sessions s JOIN videos v ON v.video_id = s.video_id
WHERE s.start_ms >= $from AND s.start_ms < $to
GROUP BY v.license_holder_id, s.video_id, v.rate_micros_per_hour
ORDER BY 1, 2
"""

IMPRESSIONS = """
SELECT a.advertiser_id, a.campaign_id, x.ad_id, count(*) AS impressions, count(DISTINCT x.user_id) AS viewers
FROM session_ads x JOIN ads a ON a.ad_id = x.ad_id
WHERE x.start_ms >= $from AND x.start_ms < $to
GROUP BY ALL
ORDER BY 1, 2, 3
"""

# Buckets from `from` while < to; a session overlaps [b, b + step) when
# start < b + step and end >= b (the svc-query definition).
CONCURRENCY = """
WITH buckets AS (SELECT range AS bucket_start_ms FROM range($from, $to, $step))
SELECT b.bucket_start_ms, count(DISTINCT s.user_id) AS viewers
FROM buckets b LEFT JOIN sessions s
  ON s.start_ms < b.bucket_start_ms + $step AND s.end_ms >= b.bucket_start_ms
GROUP BY 1
ORDER BY 1
"""

TRAFFIC = """
SELECT r.event_time_ms - r.event_time_ms % 3600000 AS hour_start_ms, v.license_holder_id,
       count(*) AS heartbeats, count(DISTINCT r.device_id) AS devices
FROM raw_heartbeats r JOIN videos v ON v.video_id = r.video_id
WHERE r.event_time_ms >= $from AND r.event_time_ms < $to
GROUP BY ALL
ORDER BY 1, 2
"""

PROGRESS = """
SELECT video_id, last_position_ms, end_ms, start_ms
FROM sessions
WHERE user_id = $user
QUALIFY row_number() OVER (PARTITION BY video_id ORDER BY start_ms DESC) = 1
ORDER BY video_id
"""

REPORTS = [
    ("royalties_day", ROYALTIES, {"from": DAY_W[0], "to": DAY_W[1]}),
    ("royalties_30d", ROYALTIES, {"from": MONTH_W[0], "to": MONTH_W[1]}),
    ("impressions_day", IMPRESSIONS, {"from": DAY_W[0], "to": DAY_W[1]}),
    ("impressions_30d", IMPRESSIONS, {"from": MONTH_W[0], "to": MONTH_W[1]}),
    ("concurrency_day_60s", CONCURRENCY, {"from": DAY_W[0], "to": DAY_W[1], "step": 60_000}),
    ("concurrency_30d_1h", CONCURRENCY, {"from": MONTH_W[0], "to": MONTH_W[1], "step": 3_600_000}),
    ("traffic_day", TRAFFIC, {"from": DAY_W[0], "to": DAY_W[1]}),
    ("traffic_30d", TRAFFIC, {"from": MONTH_W[0], "to": MONTH_W[1]}),
]

TABLES = ["sessions", "session_ads", "videos", "ads", "raw_heartbeats"]


def to_parquet(csv_dir, parquet_dir):
    os.makedirs(parquet_dir, exist_ok=True)
    con = duckdb.connect()
    for table in TABLES:
        target = os.path.join(parquet_dir, f"{table}.parquet")
        if os.path.exists(target):
            continue
        source = os.path.join(csv_dir, f"{table}.csv")
        # Time-ordered files, as an export of the store would be.
        order = {"sessions": "start_ms", "session_ads": "start_ms", "raw_heartbeats": "event_time_ms"}.get(table)
        select = f"SELECT * FROM read_csv_auto('{source}', header=true)"
        if order:
            select += f" ORDER BY {order}"
        con.execute(f"COPY ({select}) TO '{target}' (FORMAT parquet)")
    con.close()


def connect(parquet_dir):
    con = duckdb.connect()
    for table in TABLES:
        path = os.path.join(parquet_dir, f"{table}.parquet")
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{path}')")
    return con


def rows(cursor, sql, params):
    result = cursor.execute(sql, params)
    names = [d[0] for d in result.description]
    return [dict(zip(names, row)) for row in result.fetchall()]


def check(con, answers_dir):
    for name, sql, params in REPORTS:
        path = os.path.join(answers_dir, f"{name}.json")
        want = json.load(open(path))["rows"]
        got = rows(con, sql, params)
        key = lambda r: json.dumps(r, sort_keys=True)
        same = sorted(map(key, got)) == sorted(map(key, want))
        print(f"check {name}: duckdb {len(got)} rows, svc-query {len(want)} rows, identical={same}")
        if not same:
            raise SystemExit(f"{name}: DuckDB and svc-query disagree")
    for user in ["u000042", "u123456"]:
        want = json.load(open(os.path.join(answers_dir, f"progress_{user}.json")))["rows"]
        got = rows(con, PROGRESS, {"user": user})
        if got != want:
            raise SystemExit(f"progress {user}: DuckDB and svc-query disagree")
        print(f"check progress {user}: {len(got)} rows, identical=True")


def percentile(samples, q):
    samples = sorted(samples)
    index = min(len(samples) - 1, max(0, int(round(q * len(samples) + 0.5)) - 1))
    return samples[index]


def measure(con, sql, params_for, clients, per_client):
    latencies = []
    lock = threading.Lock()

    def client(c):
        cursor = con.cursor()
        mine = []
        for i in range(per_client):
            started = time.perf_counter()
            cursor.execute(sql, params_for(c, i)).fetchall()
            mine.append((time.perf_counter() - started) * 1000)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", default="/tmp/hbq-bench")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--iterations-16", type=int, default=3)
    parser.add_argument("--lookups", type=int, default=200)
    args = parser.parse_args()
    to_parquet(os.path.join(args.dir, "csv"), os.path.join(args.dir, "parquet"))
    con = connect(os.path.join(args.dir, "parquet"))
    check(con, os.path.join(args.dir, "answers"))
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    lines = [
        f"duckdb {duckdb.__version__} over Parquet, threads={threads}",
        "| request | clients | n | p50 ms | p99 ms | max ms | rows |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, sql, params in REPORTS:
        nrows = len(con.execute(sql, params).fetchall())
        for clients, per_client in [(1, args.iterations), (16, args.iterations_16)]:
            samples = measure(con, sql, lambda c, i, p=params: p, clients, per_client)
            line = (f"| {name} | {clients} | {len(samples)} | {percentile(samples, 0.5):.1f} | "
                    f"{percentile(samples, 0.99):.1f} | {max(samples):.1f} | {nrows} |")
            print(line, flush=True)
            lines.append(line)
    for clients in [1, 16]:
        def user_for(c, i):
            return {"user": f"u{(c * 7919 + i * 104729) % 200000:06}"}
        samples = measure(con, PROGRESS, user_for, clients, args.lookups)
        line = (f"| progress | {clients} | {len(samples)} | {percentile(samples, 0.5):.1f} | "
                f"{percentile(samples, 0.99):.1f} | {max(samples):.1f} | - |")
        print(line, flush=True)
        lines.append(line)
    with open(os.path.join(args.dir, "results-duckdb.md"), "w") as out:
        out.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
