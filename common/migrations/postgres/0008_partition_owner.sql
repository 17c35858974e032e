-- The owner of each partition, counted up by every stream process that
-- takes the partition over (on assignment). A commit writes its offsets only
-- while the row still names its own take-over: a process that lost the
-- partition without knowing it (paused past the group's session timeout)
-- cannot write stale sessions or offsets over the new owner's.
ALTER TABLE stream_offsets ADD COLUMN IF NOT EXISTS owner_epoch BIGINT NOT NULL DEFAULT 0;
