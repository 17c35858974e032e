#!/usr/bin/env python3
"""Writes a heartbeat JSON Lines file for `hbmesh sessionize` and
bench/duckdb_sessions.py without building the Rust benchmark: players
watching titles with a heartbeat every 5 s (+-250 ms), pauses, buffering,
ad breaks, ENDED, breaks longer and shorter than the 10 min session gap,
0.3 % resends (same event_id, up to 30 s later) and the lines in delivery
order (event time plus a small delay). Deterministic for a seed.

    python3 bench/heartbeats_jsonl.py OUT.jsonl [--heartbeats 1000000] [--devices 20000] [--seed 42]
"""

import argparse
import datetime
import json
import random

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def rfc3339(ms):
    t = datetime.datetime.fromtimestamp(ms // 1000, datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + ".%03dZ" % (ms % 1000)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--heartbeats", type=int, default=1_000_000)
    parser.add_argument("--devices", type=int, default=20_000)
    parser.add_argument("--videos", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    per_device = max(1, args.heartbeats // args.devices)
    rows = []
    for d in range(args.devices):
        device, user = f"dev-{d:06d}", f"user-{d % (args.devices * 7 // 10 + 1):06d}"
        t = START_MS + rng.randrange(600_000)
        video, pos, state, ad, ad_left = f"vid-{rng.randrange(args.videos):05d}", 0, "PLAYING", "", 0
        for _ in range(per_device):
            r = rng.random()
            if r < 0.004:  # a break: longer or shorter than the gap
                t += rng.choice([120_000, 900_000, 3_600_000])
                if rng.random() < 0.5:
                    video, pos = f"vid-{rng.randrange(args.videos):05d}", 0
            step = 5_000 + rng.randint(-250, 250)
            t += step
            if ad_left > 0:
                ad_left -= 1
                state = "PLAYING"
            elif rng.random() < 0.01:
                ad, ad_left = f"ad-{rng.randrange(50):03d}", rng.randint(2, 6)
            else:
                ad = ""
            if not ad:
                r = rng.random()
                state = "PAUSED" if r < 0.05 else "BUFFERING" if r < 0.08 else "ENDED" if r < 0.082 else "PLAYING"
                if state == "PLAYING":
                    pos += step * rng.choice([1, 1, 1, 1, 2]) if rng.random() > 0.01 else -rng.randrange(60_000)
                    pos = max(pos, 0)
            event_id = "%032x" % rng.getrandbits(128)
            line = json.dumps({
                "event_id": event_id, "device_id": device, "user_id": user, "video_id": video,
                "event_time": rfc3339(t), "position_ms": pos, "state": state, "ad_id": ad,
            }, separators=(",", ":"))
            delay = rng.randrange(50, 2_000)
            rows.append((t + delay, line))
            if rng.random() < 0.003:
                rows.append((t + rng.randrange(1_000, 30_000), line))
    rows.sort(key=lambda row: row[0])
    with open(args.out, "w") as out:
        for _, line in rows:
            out.write(line)
            out.write("\n")
    print(f"{len(rows)} lines -> {args.out}")


if __name__ == "__main__":
    main()
