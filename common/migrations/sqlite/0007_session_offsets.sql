-- Where each partition's stored sessions are complete (see the PostgreSQL
-- migration of the same name): raw rows and `next_offset` may run ahead of
-- the session changes they cause; `watermark_ms` belongs to `session_offset`.
ALTER TABLE stream_offsets ADD COLUMN session_offset BIGINT;
UPDATE stream_offsets SET session_offset = next_offset WHERE session_offset IS NULL;
