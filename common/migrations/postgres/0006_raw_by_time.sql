-- The raw mirror keyed by event time instead of by a random event id, with
-- no secondary index: as the embedded file (SQLite migration 0002).
--
-- Heartbeats arrive close to event-time order, so a flush appends at the
-- right edge of one B-tree instead of inserting into three (a random
-- event-id key, (user, video, time) and time). The same event always has
-- the same (time, id) key, so rewriting it still changes nothing. Restoring
-- a partition's open sessions reads the time range they span, and svc-query
-- reads hours of traffic by time, both ranges of this key.
--
-- YugabyteDB hash-shards the first key column by default: rows spread over
-- every tablet by event time (no hot tablet at the newest time), and the
-- time ranges above are read from every tablet. A YugabyteDB deployment at
-- scale keeps the raw mirror in ScyllaDB (HB_SCYLLA_NODES) anyway.
CREATE TABLE raw_heartbeats_by_time (
    event_time_ms BIGINT  NOT NULL,
    event_id      TEXT    NOT NULL,
    user_id       TEXT    NOT NULL,
    video_id      TEXT    NOT NULL,
    device_id     TEXT    NOT NULL,
    position_ms   BIGINT  NOT NULL,
    state         INTEGER NOT NULL,
    ad_id         TEXT    NOT NULL DEFAULT '',
    platform      TEXT    NOT NULL DEFAULT '',
    app_version   TEXT    NOT NULL DEFAULT '',
    country       TEXT    NOT NULL DEFAULT '',
    bitrate_kbps  BIGINT  NOT NULL DEFAULT 0,
    late          BOOLEAN NOT NULL DEFAULT FALSE,
    expires_ms    BIGINT  NOT NULL,
    PRIMARY KEY (event_time_ms, event_id)
);

INSERT INTO raw_heartbeats_by_time (event_time_ms, event_id, user_id, video_id, device_id,
    position_ms, state, ad_id, platform, app_version, country, bitrate_kbps, late, expires_ms)
SELECT event_time_ms, event_id, user_id, video_id, device_id,
    position_ms, state, ad_id, platform, app_version, country, bitrate_kbps, late, expires_ms
FROM raw_heartbeats
ON CONFLICT DO NOTHING;

DROP TABLE raw_heartbeats;
ALTER TABLE raw_heartbeats_by_time RENAME TO raw_heartbeats;
