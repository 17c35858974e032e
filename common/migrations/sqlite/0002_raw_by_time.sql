-- The raw mirror clustered by event time instead of by (user, video, time).
--
-- Heartbeats arrive close to event-time order, so each flush now appends to
-- the right edge of one B-tree: a 20k-row flush dirties a few hundred pages
-- instead of ~20k scattered ones, which cut the WAL written per commit ~10x
-- (docs/benchmarks.md). The same event always has the same (time, id) key,
-- so rewriting it still changes nothing. Restoring open sessions reads one
-- time range for all of them at once instead of one range per session.
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
) WITHOUT ROWID;

INSERT INTO raw_heartbeats_by_time (event_time_ms, event_id, user_id, video_id, device_id,
    position_ms, state, ad_id, platform, app_version, country, bitrate_kbps, late, expires_ms)
SELECT event_time_ms, event_id, user_id, video_id, device_id,
    position_ms, state, ad_id, platform, app_version, country, bitrate_kbps, late, expires_ms
FROM raw_heartbeats;

DROP TABLE raw_heartbeats;
ALTER TABLE raw_heartbeats_by_time RENAME TO raw_heartbeats;
