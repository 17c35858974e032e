-- Indexes that answer the month-long reports from an index alone, in group
-- order (svc-query/src/engine/sql.rs). Figures in docs/benchmarks.md.
--
-- Royalties: final sessions per (title, user) with their watch time. Only
-- finals: an open session's watch_ms changes on every flush, and keeping it
-- in an index cost the stream stage ~20% of its throughput; a final row
-- enters this index once. `is_final` is a column too, so that SQLite
-- knows the index covers the query (without it every row was looked up).
CREATE INDEX IF NOT EXISTS sessions_final_by_video ON sessions (video_id, user_id, start_ms, watch_ms, is_final)
WHERE is_final;
-- Royalties: the open sessions (those playing now) of a period. Rows leave
-- when they become final; upserts of open sessions do not touch it.
CREATE INDEX IF NOT EXISTS sessions_open_by_start ON sessions (start_ms) WHERE NOT is_final;
-- Impressions: each ad's viewers. Impression rows are never updated.
CREATE INDEX IF NOT EXISTS session_ads_by_ad ON session_ads (ad_id, user_id, start_ms);
