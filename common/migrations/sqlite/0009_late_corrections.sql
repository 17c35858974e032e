-- The late lane's to-do list (see the PostgreSQL migration of the same name).
CREATE TABLE IF NOT EXISTS late_corrections (
    topic            TEXT    NOT NULL,
    stream_partition INTEGER NOT NULL,
    user_id          TEXT    NOT NULL,
    video_id         TEXT    NOT NULL,
    from_ms          BIGINT  NOT NULL,
    to_ms            BIGINT  NOT NULL,
    heartbeats       BIGINT  NOT NULL,
    marked_ms        BIGINT  NOT NULL,
    PRIMARY KEY (topic, stream_partition, user_id, video_id)
);
