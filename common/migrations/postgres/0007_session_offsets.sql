-- Where each partition's stored sessions are complete: a flush may commit
-- raw rows and `next_offset` without the session changes they cause (a
-- stream under load writes an open session's row once per few seconds). On
-- restart the partition is read again from `session_offset`, its messages
-- below `next_offset` sessionized without being written again, so the
-- sessions catch up exactly. `watermark_ms` belongs to `session_offset`.
-- NULL: no sessions written yet. Rows before this column always wrote both.
ALTER TABLE stream_offsets ADD COLUMN IF NOT EXISTS session_offset BIGINT;
UPDATE stream_offsets SET session_offset = next_offset WHERE session_offset IS NULL;
