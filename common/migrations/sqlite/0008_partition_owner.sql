-- The owner of each partition (see the PostgreSQL migration of the same name).
ALTER TABLE stream_offsets ADD COLUMN owner_epoch BIGINT NOT NULL DEFAULT 0;
