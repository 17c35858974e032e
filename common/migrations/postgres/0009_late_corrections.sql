-- The late lane's to-do list: per stream partition and (user, video) key, the
-- event-time range of heartbeats that arrived past the allowed lateness and
-- are not yet in their sessions. Written in the transaction that commits
-- their raw rows (or, with a separate raw mirror, after the mirror has them);
-- deleted in the transaction that replaces the key's sessions, so a crash
-- in between leaves the row and the correction is redone.
CREATE TABLE IF NOT EXISTS late_corrections (
    topic            TEXT    NOT NULL,
    stream_partition INTEGER NOT NULL,
    user_id          TEXT    NOT NULL,
    video_id         TEXT    NOT NULL,
    from_ms          BIGINT  NOT NULL,
    to_ms            BIGINT  NOT NULL,
    heartbeats       BIGINT  NOT NULL,
    -- Processing time the oldest of them was marked, for the correction lag.
    marked_ms        BIGINT  NOT NULL,
    PRIMARY KEY (topic, stream_partition, user_id, video_id)
);
