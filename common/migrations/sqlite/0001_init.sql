-- Sessions store for the embedded tier: one SQLite file holding sessions, catalog, raw mirror and dead letters.
-- Portable subset: BIGINT epoch milliseconds, TEXT ids, no vendor functions.

CREATE TABLE IF NOT EXISTS sessions (
    user_id          TEXT    NOT NULL,
    video_id         TEXT    NOT NULL,
    start_ms         BIGINT  NOT NULL,
    end_ms           BIGINT  NOT NULL,
    heartbeats       BIGINT  NOT NULL,
    watch_ms         BIGINT  NOT NULL,
    coverage_ms      BIGINT  NOT NULL,
    last_position_ms BIGINT  NOT NULL,
    devices          BIGINT  NOT NULL,
    -- JSON array of the distinct ad ids, for readers that want the session whole.
    ads              TEXT    NOT NULL DEFAULT '[]',
    is_final         BOOLEAN NOT NULL DEFAULT FALSE,
    -- Stream partition that owns the open session (restored on assignment).
    stream_partition INTEGER NOT NULL DEFAULT 0,
    updated_ms       BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, video_id, start_ms)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sessions_by_start ON sessions (start_ms);
CREATE INDEX IF NOT EXISTS sessions_open ON sessions (stream_partition, is_final);

-- One row per (session, ad): an impression.
CREATE TABLE IF NOT EXISTS session_ads (
    user_id  TEXT   NOT NULL,
    video_id TEXT   NOT NULL,
    start_ms BIGINT NOT NULL,
    ad_id    TEXT   NOT NULL,
    PRIMARY KEY (user_id, video_id, start_ms, ad_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS session_ads_by_start ON session_ads (start_ms);

CREATE TABLE IF NOT EXISTS videos (
    video_id             TEXT   PRIMARY KEY,
    title                TEXT   NOT NULL,
    license_holder_id    TEXT   NOT NULL,
    rate_micros_per_hour BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS ads (
    ad_id         TEXT PRIMARY KEY,
    campaign_id   TEXT NOT NULL,
    advertiser_id TEXT NOT NULL
);

-- Written in the same transaction as the session changes they cover.
CREATE TABLE IF NOT EXISTS stream_offsets (
    topic        TEXT    NOT NULL,
    partition    INTEGER NOT NULL,
    next_offset  BIGINT  NOT NULL,
    -- Newest event time seen on the partition, so lateness survives restarts.
    watermark_ms BIGINT,
    PRIMARY KEY (topic, partition)
);

-- Raw mirror of the embedded tier. Clustered by (user_id, video_id, time) like
-- ScyllaDB's by_user_video, so restoring a session reads one range and each
-- write touches one random B-tree (plus the append-only time index). The same
-- event always has the same key, so rewriting it changes nothing.
CREATE TABLE IF NOT EXISTS raw_heartbeats (
    user_id       TEXT    NOT NULL,
    video_id      TEXT    NOT NULL,
    event_time_ms BIGINT  NOT NULL,
    event_id      TEXT    NOT NULL,
    device_id     TEXT    NOT NULL,
    position_ms   BIGINT  NOT NULL,
    state         INTEGER NOT NULL,
    ad_id         TEXT    NOT NULL DEFAULT '',
    platform      TEXT    NOT NULL DEFAULT '',
    app_version   TEXT    NOT NULL DEFAULT '',
    country       TEXT    NOT NULL DEFAULT '',
    bitrate_kbps  BIGINT  NOT NULL DEFAULT 0,
    -- Arrived past the allowed lateness: mirrored and counted, not sessionized.
    late          BOOLEAN NOT NULL DEFAULT FALSE,
    expires_ms    BIGINT  NOT NULL,
    PRIMARY KEY (user_id, video_id, event_time_ms, event_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS raw_by_time ON raw_heartbeats (event_time_ms);

CREATE TABLE IF NOT EXISTS dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    received_ms BIGINT NOT NULL,
    event_id    TEXT   NOT NULL DEFAULT '',
    device_id   TEXT   NOT NULL DEFAULT '',
    reason      TEXT   NOT NULL,
    payload     BLOB
);
