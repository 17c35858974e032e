-- The traffic report's whole hours, kept by svc-query and checked on every
-- read (svc-query/src/engine/rollup.rs). A month over raw heartbeats reads
-- every row of the month and sorts it (8 s over 3 M rows); the same month
-- from this table reads at most one row per (hour, license holder).
--
-- Exactness comes from two counters, both bumped in the transaction that
-- changes what they cover: an hour's result is used only while the hour's
-- raw version and the catalog version equal the ones it was computed from.

-- Bumped by every write that adds or removes raw heartbeats of the hour
-- (the stream stage's flushes and raw expiry).
CREATE TABLE IF NOT EXISTS raw_hour_versions (
    hour_ms BIGINT PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT INTO raw_hour_versions (hour_ms, version)
SELECT DISTINCT event_time_ms - (event_time_ms % 3600000), 1 FROM raw_heartbeats
WHERE true
ON CONFLICT (hour_ms) DO NOTHING;

-- Bumped by any change to who holds which title: a new or removed title, or
-- a title moved to another holder. Rewriting a title unchanged (a nightly
-- full catalog import) keeps every summed hour.
CREATE TABLE IF NOT EXISTS catalog_version (
    id      INTEGER PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT INTO catalog_version (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
CREATE TRIGGER IF NOT EXISTS videos_inserted AFTER INSERT ON videos
BEGIN UPDATE catalog_version SET version = version + 1; END;
CREATE TRIGGER IF NOT EXISTS videos_updated AFTER UPDATE OF video_id, license_holder_id ON videos
WHEN OLD.video_id IS NOT NEW.video_id OR OLD.license_holder_id IS NOT NEW.license_holder_id
BEGIN UPDATE catalog_version SET version = version + 1; END;
CREATE TRIGGER IF NOT EXISTS videos_deleted AFTER DELETE ON videos
BEGIN UPDATE catalog_version SET version = version + 1; END;

-- Which versions each stored hour was computed from.
CREATE TABLE IF NOT EXISTS traffic_hours (
    hour_ms         BIGINT PRIMARY KEY,
    raw_version     BIGINT NOT NULL,
    catalog_version BIGINT NOT NULL
);

-- The traffic report of one whole hour, all license holders.
CREATE TABLE IF NOT EXISTS traffic_rollup (
    hour_ms           BIGINT NOT NULL,
    license_holder_id TEXT   NOT NULL,
    heartbeats        BIGINT NOT NULL,
    devices           BIGINT NOT NULL,
    PRIMARY KEY (hour_ms, license_holder_id)
);
