-- One row per erasure of a user (`DELETE /v1/users/{user_id}`, `hbmesh erase`):
-- the audit of who asked, when, and how many rows went, written in the
-- transaction that removed them. The stream stage reads the rows it has not
-- applied yet (by `id`) to forget the user's sessions it holds in memory and
-- to remove the user's rows again in its next flush.
--
-- `mirror_videos` lists the user's videos (JSON array of ids) only until the
-- stream stage has erased the raw mirror too (ScyllaDB keys it by user and
-- video), then it is emptied and `mirror_erased_ms` set, in the same
-- transaction: the audit keeps counts, not what the user watched.
CREATE TABLE IF NOT EXISTS erasures (
    id               BIGSERIAL PRIMARY KEY,
    user_id          TEXT   NOT NULL,
    requested_by     TEXT   NOT NULL,
    requested_at_ms  BIGINT NOT NULL,
    raw_heartbeats   BIGINT NOT NULL,
    sessions         BIGINT NOT NULL,
    ad_links         BIGINT NOT NULL,
    mirror_videos    TEXT   NOT NULL DEFAULT '[]',
    mirror_erased_ms BIGINT
);
