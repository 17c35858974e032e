//! The sessionizer: the pure core of svc-stream. Heartbeats go in, session
//! changes come out, exactly as SPEC 5 defines sessions. No IO, no clock (the
//! caller passes processing time to `advance`), no async: one instance per
//! partition.
//!
//! # How it stays exact with bounded memory
//!
//! State is kept per `(user_id, video_id)` key (a *slot*), holding that key's
//! open sessions sorted by start; sessions of one key are separated by at least
//! the gap, so a heartbeat joins at most the session before it and the one
//! after it (joining both is the "late bridge" merge).
//!
//! The watermark is the newest event time accepted. A heartbeat older than
//! `watermark - lateness` (the *horizon*) is [`Outcome::Late`], so nothing can
//! ever be inserted before the horizon again: heartbeats behind it are
//! *frozen* (in runs, an eighth of the lateness at a time), folded into a
//! compact per-session summary (count, watched sum, coverage spans and the
//! last frozen heartbeat as the predecessor of the next step). Only the
//! unfrozen tail is held in full. Each session also carries running totals
//! over frozen part and tail, updated in O(1) for the usual in-order append, a
//! prepend or a bridge, and rebuilt from the frozen summary plus the tail when
//! a heartbeat lands inside the tail.
//!
//! Deduplication is exact by `event_id` for every heartbeat not behind the
//! horizon (a copy of an older one is late anyway): a table of id
//! fingerprints names the key slot holding each recent heartbeat, and a hit is
//! confirmed against the id held there. Entries age out with the horizon and
//! are swept in bulk, so memory follows the open sessions, not the history.
//!
//! Per heartbeat the cost is mostly memory latency (the key's slot, its tail,
//! two table entries), so ids are kept inline, a key's first session lives in
//! its slot, and [`Sessionizer::push_batch`] loads the state of the next
//! heartbeats of a batch while the current one is processed.
//!
//! # Finalization and idleness
//!
//! A session becomes final once the watermark passes `end + gap + lateness`:
//! no accepted heartbeat can reach it any more. The watermark is the newest
//! event time of the partition; while the partition receives nothing for
//! `idle_timeout_ms` of processing time it advances with processing time
//! instead, so sessions of an idle partition still close. Idleness is the
//! partition's, never a key's: while heartbeats keep coming, a stall of any
//! length changes no result.
//!
//! # Changes
//!
//! The store sees sessions through [`Sessionizer::drain_changes`]: `Upsert`
//! while open, `Final` once closed, and `Delete` for a key the store holds that
//! no longer names a session (merged away, or its start moved earlier).
//! Applying the changes in order to a map keyed by [`SessionKey`] yields the
//! sessions of SPEC 5.

mod config;
mod coverage;
mod engine;
mod events;
mod fxhash;
mod id;
mod lookahead;
mod offline;
mod prefetch;
mod sessions;
mod spill;
mod state;
mod tables;
mod tail;
#[cfg(test)]
mod tests;

pub use config::SessionConfig;
pub use engine::{Restoring, Sessionizer};
pub use events::{Event, EventRef, PlaybackState, Scalars};
pub use offline::{sessionize_all, sessionize_sorted, sort_sessions};
pub use sessions::{Change, ChangeRef, Outcome, Session, SessionKey, SessionRef, Share};
