-- Short-period reports driven by start time (svc-query/src/engine/sql.rs).
--
-- Royalties over a day read `sessions_final_by_video` whole: video_id leads,
-- so a day's sessions (1/30 of a month's) are scattered over all of it
-- (~260 ms of CPU per request over 1 M sessions). This index holds the
-- finals in start order with every column royalties and concurrency read,
-- so a day is one range of the index and no row look-up. Only finals, like
-- `sessions_final_by_video`: a row enters once, when its session becomes
-- final, and the stream stage's upserts of open sessions never touch it.
-- `is_final` is a column so that SQLite knows the index covers the query.
-- ASC is spelled out so that YugabyteDB range-shards it (its default for a
-- leading column is HASH, which cannot serve a range).
CREATE INDEX IF NOT EXISTS sessions_final_by_start
ON sessions (start_ms ASC, video_id, user_id, watch_ms, end_ms, is_final)
WHERE is_final;
-- Concurrency: the longest final session bounds how long before a period a
-- final session overlapping it can have started, so the report reads the
-- range `[from - longest, upper)` of `sessions_final_by_start` instead of
-- every session started before the period ends. One look-up at the top of
-- this index; finals only, written once.
CREATE INDEX IF NOT EXISTS sessions_final_by_length
ON sessions ((end_ms - start_ms) DESC)
WHERE is_final;
