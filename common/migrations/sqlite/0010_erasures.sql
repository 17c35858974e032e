-- The audit of user erasures and the stream stage's queue of them (see the
-- PostgreSQL migration of the same name).
CREATE TABLE IF NOT EXISTS erasures (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id          TEXT   NOT NULL,
    requested_by     TEXT   NOT NULL,
    requested_at_ms  BIGINT NOT NULL,
    raw_heartbeats   BIGINT NOT NULL,
    sessions         BIGINT NOT NULL,
    ad_links         BIGINT NOT NULL,
    mirror_videos    TEXT   NOT NULL DEFAULT '[]',
    mirror_erased_ms BIGINT
);
