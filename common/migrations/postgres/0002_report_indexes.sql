-- Indexes that answer the month-long reports from the index alone, in group
-- order (svc-query/src/engine/sql.rs): royalties read each title's viewers
-- and watch time without a sort, impressions each ad's viewers. Figures and
-- the write-side price (one more index entry per open-session upsert, since
-- watch_ms changes) are in docs/benchmarks.md.
CREATE INDEX IF NOT EXISTS sessions_by_video ON sessions (video_id, user_id, start_ms, watch_ms);
CREATE INDEX IF NOT EXISTS session_ads_by_ad ON session_ads (ad_id, user_id, start_ms);
