-- The traffic report's whole hours, kept by svc-query and checked on every
-- read (svc-query/src/engine/rollup.rs); see the SQLite migration of the
-- same name for the why. An hour's result is used only while the hour's raw
-- version and the catalog version equal the ones it was computed from; both
-- are bumped in the transaction that changes what they cover.

-- Bumped by every write that adds or removes raw heartbeats of the hour.
CREATE TABLE IF NOT EXISTS raw_hour_versions (
    hour_ms BIGINT PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT INTO raw_hour_versions (hour_ms, version)
SELECT DISTINCT event_time_ms - (event_time_ms % 3600000), 1 FROM raw_heartbeats
ON CONFLICT (hour_ms) DO NOTHING;

-- Bumped by any change to who holds which title: a new or removed title, or
-- a title moved to another holder. Rewriting a title unchanged (a nightly
-- full catalog import) keeps every summed hour.
CREATE TABLE IF NOT EXISTS catalog_version (
    id      INTEGER PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT INTO catalog_version (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
CREATE OR REPLACE FUNCTION hb_bump_catalog_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE catalog_version SET version = version + 1;
    RETURN NULL;
END
$$;
-- Per row: a statement-level INSERT trigger would also fire for an upsert
-- whose rows all existed.
DROP TRIGGER IF EXISTS videos_added_or_removed ON videos;
CREATE TRIGGER videos_added_or_removed AFTER INSERT OR DELETE ON videos
FOR EACH ROW EXECUTE PROCEDURE hb_bump_catalog_version();
DROP TRIGGER IF EXISTS videos_truncated ON videos;
CREATE TRIGGER videos_truncated AFTER TRUNCATE ON videos
FOR EACH STATEMENT EXECUTE PROCEDURE hb_bump_catalog_version();
DROP TRIGGER IF EXISTS videos_moved ON videos;
CREATE TRIGGER videos_moved AFTER UPDATE ON videos FOR EACH ROW
WHEN (OLD.video_id IS DISTINCT FROM NEW.video_id
      OR OLD.license_holder_id IS DISTINCT FROM NEW.license_holder_id)
EXECUTE PROCEDURE hb_bump_catalog_version();

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
