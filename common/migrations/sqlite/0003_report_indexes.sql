-- Indexes that answer the month-long reports from the index alone, in group
-- order (svc-query/src/engine/sql.rs): royalties read each title's viewers
-- and watch time without a row look-up or a sort, impressions each ad's
-- viewers. Measured over 1 M sessions / 30 days: royalties ~4.9 s -> 0.15 s,
-- impressions ~2.5 s -> 0.08 s (docs/benchmarks.md). The price is one more
-- index entry rewritten per open-session upsert (watch_ms changes), also
-- measured there.
CREATE INDEX IF NOT EXISTS sessions_by_video ON sessions (video_id, user_id, start_ms, watch_ms);
CREATE INDEX IF NOT EXISTS session_ads_by_ad ON session_ads (ad_id, user_id, start_ms);
