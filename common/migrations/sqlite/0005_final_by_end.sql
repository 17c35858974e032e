-- Final sessions by end time, per partition: a restart of the embedded stage
-- reads the few finals near the watermark so that heartbeats it replays from
-- the raw rows are not counted a second time (svc-stream/src/pipeline.rs,
-- `Pipeline::assign`). A row enters once, when its session becomes final.
CREATE INDEX IF NOT EXISTS sessions_final_by_end ON sessions (stream_partition, end_ms)
WHERE is_final;
