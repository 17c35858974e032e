#!/usr/bin/env python3
"""SPEC 5 sessions as one DuckDB SQL query, timed against the Rust sessionizer.

Reads the heartbeat JSON Lines the Rust benchmark writes (HB_BENCH_JSONL),
loads them into a table (untimed: parsing is outside the Rust figure too),
then times one query computing every session (dedup by event_id,
gaps-and-islands with LAG for sessions, watched steps, watch_ms, coverage as a
second gaps-and-islands over the sorted watched intervals, ads, devices) with
PRAGMA threads=1 and with all threads, in wall time and in process CPU time
(on a shared machine wall time also counts other processes). With --sessions (the Rust sessions,
HB_BENCH_SESSIONS_JSONL) it checks the totals and every session are equal.

    pip install duckdb
    python3 bench/duckdb_sessions.py heartbeats.jsonl --sessions sessions.jsonl

With --file-to-file OUT it times instead what `hbmesh sessionize` does: read
the JSON Lines file, compute the sessions, and write them as JSON Lines
sorted by (user_id, video_id, start_ms) to OUT, all in one statement.
"""

import argparse
import os
import sys
import time

import duckdb

LOAD = """
CREATE OR REPLACE TABLE heartbeats AS
SELECT
    row_number() OVER () AS line_no,
    event_id, user_id, video_id, device_id,
    epoch_ms(event_time) AS t,
    position_ms AS pos,
    state,
    ad_id
FROM read_json(?, format = 'newline_delimited', columns = {
    'event_id': 'VARCHAR', 'device_id': 'VARCHAR', 'user_id': 'VARCHAR',
    'video_id': 'VARCHAR', 'event_time': 'TIMESTAMPTZ', 'position_ms': 'BIGINT',
    'state': 'VARCHAR', 'ad_id': 'VARCHAR'
})
"""

# One statement. Sessions are numbered per key by a running count of the
# heartbeats that start one (first of the key, or >= gap after the previous).
SESSIONS = """
CREATE OR REPLACE TEMP TABLE sessions AS
WITH dedup AS (                       -- SPEC 5.1: the first copy counts
    SELECT DISTINCT ON (event_id) *
    FROM heartbeats
    ORDER BY event_id, line_no
),
gaps AS (                             -- SPEC 5.2/5.3
    SELECT *, t - LAG(t) OVER key_order AS since_previous
    FROM dedup
    WINDOW key_order AS (PARTITION BY user_id, video_id ORDER BY t, event_id)
),
numbered AS (
    SELECT *, SUM(CASE WHEN since_previous IS NULL OR since_previous >= {gap} THEN 1 ELSE 0 END)
                  OVER (PARTITION BY user_id, video_id ORDER BY t, event_id
                        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS session_no
    FROM gaps
),
steps AS (                            -- SPEC 5.4: a -> b within the session
    SELECT *,
        LAG(t) OVER s AS a_t, LAG(pos) OVER s AS a_pos,
        LAG(state) OVER s AS a_state, LAG(ad_id) OVER s AS a_ad,
        LEAD(t) OVER s IS NULL AS is_last
    FROM numbered
    WINDOW s AS (PARTITION BY user_id, video_id, session_no ORDER BY t, event_id)
),
watched AS (
    SELECT *, COALESCE(a_state = 'PLAYING' AND a_ad = '' AND ad_id = ''
                       AND pos - a_pos > 0 AND pos - a_pos <= 2 * (t - a_t), false) AS is_watched
    FROM steps
),
spans AS (                            -- coverage: islands of overlapping [a_pos, pos]
    SELECT user_id, video_id, session_no, a_pos AS lo, pos AS hi,
        MAX(pos) OVER (PARTITION BY user_id, video_id, session_no ORDER BY a_pos, pos
                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reach
    FROM watched WHERE is_watched
),
islands AS (
    SELECT *, SUM(CASE WHEN reach IS NULL OR lo > reach THEN 1 ELSE 0 END)
                  OVER (PARTITION BY user_id, video_id, session_no ORDER BY lo, hi
                        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS island
    FROM spans
),
coverage AS (
    SELECT user_id, video_id, session_no, SUM(length) AS coverage_ms
    FROM (SELECT user_id, video_id, session_no, island, MAX(hi) - MIN(lo) AS length
          FROM islands GROUP BY ALL)
    GROUP BY ALL
),
summary AS (                          -- SPEC 5.5
    SELECT user_id, video_id, session_no,
        MIN(t) AS start_ms, MAX(t) AS end_ms, COUNT(*) AS heartbeats,
        SUM(CASE WHEN is_watched THEN pos - a_pos ELSE 0 END) AS watch_ms,
        MAX(pos) FILTER (WHERE is_last) AS last_position_ms,
        COALESCE(list_sort(list_distinct(list(ad_id) FILTER (WHERE ad_id <> ''))), []) AS ads,
        COUNT(DISTINCT device_id) AS devices
    FROM watched
    GROUP BY ALL
)
SELECT s.user_id, s.video_id, s.start_ms, s.end_ms, s.heartbeats, s.watch_ms,
       COALESCE(c.coverage_ms, 0) AS coverage_ms, s.last_position_ms, s.ads, s.devices
FROM summary s LEFT JOIN coverage c USING (user_id, video_id, session_no)
"""

def file_to_file_statement(gap_ms):
    """One COPY: the file read, the sessions computed and written."""
    load = LOAD.split(" AS\n", 1)[1]
    sessions = SESSIONS.replace("{gap}", str(int(gap_ms))).split(" AS\nWITH ", 1)[1]
    return (
        f"COPY (WITH heartbeats AS ({load}), {sessions} ORDER BY user_id, video_id, start_ms) "
        "TO '{out}' (FORMAT json)"
    )


def time_file_to_file(args):
    statement = file_to_file_statement(args.gap_ms)
    cores = os.cpu_count() or 1
    con = duckdb.connect()
    rows = con.execute(
        "SELECT COUNT(*) FROM read_json(?, format = 'newline_delimited', columns = {'event_id': 'VARCHAR'})",
        [args.heartbeats],
    ).fetchone()[0]
    for threads in sorted({1, cores}):
        con.execute(f"PRAGMA threads={threads}")
        best, best_cpu = None, None
        for _ in range(max(1, args.repeat)):
            started, cpu_started = time.perf_counter(), time.process_time()
            con.execute(statement.replace("?", "'" + args.heartbeats.replace("'", "''") + "'", 1)
                        .replace("{out}", args.file_to_file.replace("'", "''")))
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
            best = elapsed if best is None else min(best, elapsed)
            best_cpu = cpu if best_cpu is None else min(best_cpu, cpu)
        print(
            f"duckdb {duckdb.__version__} threads={threads}: file to sessions file {best:.3f} s wall = "
            f"{rows / best / 1e6:.3f} M heartbeats/s; CPU time {best_cpu:.3f} s (best of {args.repeat}, {rows} lines)"
        )
    return 0


TOTALS = """
SELECT COUNT(*), SUM(heartbeats), SUM(watch_ms), SUM(coverage_ms), SUM(len(ads)), SUM(devices)
FROM {table}
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("heartbeats", help="heartbeat JSON Lines (HB_BENCH_JSONL)")
    parser.add_argument("--sessions", help="Rust sessions JSON Lines to compare with")
    parser.add_argument("--gap-ms", type=int, default=600_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per thread setting (best counts)")
    parser.add_argument("--file-to-file", metavar="OUT", help="time file -> sessions file instead (JSON Lines out)")
    args = parser.parse_args()
    if args.file_to_file:
        return time_file_to_file(args)

    con = duckdb.connect()
    started = time.perf_counter()
    con.execute(LOAD, [args.heartbeats])
    rows = con.execute("SELECT COUNT(*) FROM heartbeats").fetchone()[0]
    print(f"duckdb {duckdb.__version__}: loaded {rows} heartbeats in {time.perf_counter() - started:.1f} s (untimed)")

    query = SESSIONS.replace("{gap}", str(int(args.gap_ms)))
    cores = os.cpu_count() or 1
    results = {}
    for threads in sorted({1, cores}):
        con.execute(f"PRAGMA threads={threads}")
        best, best_cpu = None, None
        for _ in range(max(1, args.repeat)):
            started, cpu_started = time.perf_counter(), time.process_time()
            con.execute(query)
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
            best = elapsed if best is None else min(best, elapsed)
            best_cpu = cpu if best_cpu is None else min(best_cpu, cpu)
        results[threads] = best
        print(
            f"threads={threads}: sessions query {best:.3f} s wall = {rows / best / 1e6:.3f} M heartbeats/s; "
            f"CPU time {best_cpu:.3f} s = {rows / best_cpu / 1e6:.3f} M heartbeats/s per core (best of {args.repeat})"
        )

    totals = con.execute(TOTALS.format(table="sessions")).fetchone()
    print("totals: sessions={} heartbeats={} watch_ms={} coverage_ms={} ads={} devices={}".format(*totals))

    if not args.sessions:
        return 0
    con.execute(
        "CREATE OR REPLACE TABLE rust AS SELECT * FROM read_json(?, format = 'newline_delimited', columns = {"
        "'user_id': 'VARCHAR', 'video_id': 'VARCHAR', 'start_ms': 'BIGINT', 'end_ms': 'BIGINT',"
        "'heartbeats': 'BIGINT', 'watch_ms': 'BIGINT', 'coverage_ms': 'BIGINT',"
        "'last_position_ms': 'BIGINT', 'ads': 'VARCHAR[]', 'devices': 'BIGINT'})",
        [args.sessions],
    )
    rust_totals = con.execute(TOTALS.format(table="rust")).fetchone()
    columns = "user_id, video_id, start_ms, end_ms, heartbeats, watch_ms, coverage_ms, last_position_ms, ads, devices"
    only_duckdb = con.execute(f"SELECT COUNT(*) FROM (SELECT {columns} FROM sessions EXCEPT ALL SELECT {columns} FROM rust)").fetchone()[0]
    only_rust = con.execute(f"SELECT COUNT(*) FROM (SELECT {columns} FROM rust EXCEPT ALL SELECT {columns} FROM sessions)").fetchone()[0]
    if tuple(totals) == tuple(rust_totals) and only_duckdb == 0 and only_rust == 0:
        print("check: every DuckDB session equals the Rust session (totals equal)")
        return 0
    print(f"check FAILED: rust totals {tuple(rust_totals)}; {only_duckdb} sessions only in DuckDB, {only_rust} only in Rust")
    return 1


if __name__ == "__main__":
    sys.exit(main())
