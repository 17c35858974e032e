//! What the stream stage's store tests share: reading the stored sessions
//! back, hand-written heartbeats, and an idle partition's processing time.
#![allow(dead_code)]

use async_trait::async_trait;
use hb_proto::v1::Heartbeat;
use sqlx::Row;
use std::sync::Arc;
use svc_stream::pipeline::Pipeline;
use svc_stream::sessionizer::{sessionize_all, Event, Session, SessionConfig};
use svc_stream::sink::{
    Flush, OpenSession, PartitionSnapshot, RawHeartbeat, RawInStore, RawMirror, SessionStore,
    SinkError, StoredSpan,
};

/// The session rules of these tests: SPEC 5's defaults.
pub fn config() -> SessionConfig {
    SessionConfig::default()
}

/// The batch definition of SPEC 5 over `heartbeats`.
pub fn expected(heartbeats: &[Heartbeat]) -> Vec<Session> {
    expected_with_gap(heartbeats, config().gap_ms)
}

/// The batch definition over `heartbeats` with sessions `gap_ms` apart.
pub fn expected_with_gap(heartbeats: &[Heartbeat], gap_ms: i64) -> Vec<Session> {
    let events = heartbeats
        .iter()
        .map(|hb| Event::from_proto(hb).unwrap())
        .collect();
    sessionize_all(events, gap_ms)
}

pub fn session_of(row: &impl SessionRow) -> Session {
    row.session()
}

pub trait SessionRow {
    fn session(&self) -> Session;
}

macro_rules! session_row {
    ($row:ty) => {
        impl SessionRow for $row {
            fn session(&self) -> Session {
                Session {
                    user_id: self.get(0),
                    video_id: self.get(1),
                    start_ms: self.get(2),
                    end_ms: self.get(3),
                    heartbeats: self.get::<i64, _>(4) as u64,
                    watch_ms: self.get(5),
                    coverage_ms: self.get(6),
                    last_position_ms: self.get(7),
                    devices: self.get::<i64, _>(8) as u64,
                    ads: serde_json::from_str(&self.get::<String, _>(9)).unwrap(),
                }
            }
        }
    };
}
session_row!(sqlx::sqlite::SqliteRow);
session_row!(sqlx::postgres::PgRow);

pub const SELECT_SESSIONS: &str = "SELECT user_id, video_id, start_ms, end_ms, heartbeats, \
    watch_ms, coverage_ms, last_position_ms, devices, ads FROM sessions \
    ORDER BY user_id, video_id, start_ms";

pub async fn stored_sessions_sqlite(pool: &sqlx::SqlitePool) -> Vec<Session> {
    let rows = sqlx::query(SELECT_SESSIONS).fetch_all(pool).await.unwrap();
    rows.iter().map(session_of).collect()
}

pub async fn stored_sessions_postgres(pool: &sqlx::PgPool) -> Vec<Session> {
    let rows = sqlx::query(SELECT_SESSIONS).fetch_all(pool).await.unwrap();
    rows.iter().map(session_of).collect()
}

/// A PLAYING heartbeat of `user_id` watching `v1` on their phone.
pub fn heartbeat(event_id: &str, user_id: &str, time_ms: i64, position_ms: u64) -> Heartbeat {
    Heartbeat {
        event_id: event_id.into(),
        device_id: format!("{user_id}-phone"),
        user_id: user_id.into(),
        video_id: "v1".into(),
        event_time: Some(hb_common::time::ms_to_timestamp(time_ms)),
        position_ms,
        state: hb_proto::v1::PlaybackState::Playing as i32,
        ..Heartbeat::default()
    }
}

/// Ticks the stage every half second of processing time from `from_ms` to
/// `to_ms` with nothing coming in: the partition is idle.
pub fn idle_through(stage: &mut Pipeline, from_ms: i64, to_ms: i64) {
    let mut now_ms = from_ms;
    while now_ms < to_ms {
        now_ms = (now_ms + 500).min(to_ms);
        stage.tick(now_ms);
    }
}

/// Processing time after which an idle partition has closed a session
/// ending `end_after_ms` after its newest heartbeat.
pub fn idle_closes(end_after_ms: i64) -> i64 {
    let config = config();
    config.idle_timeout_ms + config.gap_ms + config.lateness_ms + end_after_ms + 1_000
}

/// A real store whose commits fail while `failing` is set, for those
/// commits `fails` picks (a disk that fills up, a crash mid-write).
pub struct FaultyStore<S> {
    pub inner: S,
    pub failing: std::sync::atomic::AtomicBool,
    pub fails: fn(&Flush) -> bool,
}

impl<S> FaultyStore<S> {
    /// Fails every commit while `failing` is set.
    pub fn any_commit(inner: S) -> Self {
        Self::commits(inner, |_| true)
    }

    pub fn commits(inner: S, fails: fn(&Flush) -> bool) -> Self {
        FaultyStore {
            inner,
            failing: std::sync::atomic::AtomicBool::new(false),
            fails,
        }
    }

    pub fn set_failing(&self, failing: bool) {
        self.failing
            .store(failing, std::sync::atomic::Ordering::SeqCst);
    }
}

#[async_trait]
impl<S: RawInStore> SessionStore for FaultyStore<S> {
    async fn commit(&self, flush: Arc<Flush>) -> Result<(), SinkError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) && (self.fails)(&flush) {
            return Err(SinkError::Fatal("disk full (injected)".into()));
        }
        self.inner.commit(flush).await
    }

    async fn load_partition(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<PartitionSnapshot, SinkError> {
        self.inner.load_partition(topic, partition).await
    }

    async fn expire_raw(&self, now_ms: i64) -> Result<u64, SinkError> {
        self.inner.expire_raw(now_ms).await
    }

    async fn key_sessions(
        &self,
        user_id: &str,
        video_id: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<StoredSpan>, SinkError> {
        self.inner
            .key_sessions(user_id, video_id, from_ms, to_ms)
            .await
    }
}

#[async_trait]
impl<S: RawInStore> RawMirror for FaultyStore<S> {
    async fn write(&self, rows: &[RawHeartbeat]) -> Result<(), SinkError> {
        self.inner.write(rows).await
    }

    async fn replay(
        &self,
        user_id: &str,
        video_id: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<RawHeartbeat>, SinkError> {
        self.inner.replay(user_id, video_id, from_ms, to_ms).await
    }

    async fn replay_open(
        &self,
        open: &[OpenSession],
        visit: &mut (dyn FnMut(RawHeartbeat) + Send),
    ) -> Result<(), SinkError> {
        self.inner.replay_open(open, visit).await
    }
}

#[async_trait]
impl<S: RawInStore> RawInStore for FaultyStore<S> {
    async fn replay_since(
        &self,
        from_ms: i64,
        visit: &mut (dyn FnMut(RawHeartbeat) + Send),
    ) -> Result<(), SinkError> {
        self.inner.replay_since(from_ms, visit).await
    }

    async fn final_ends_since(
        &self,
        partition: i32,
        from_ms: i64,
    ) -> Result<Vec<(String, String, i64)>, SinkError> {
        self.inner.final_ends_since(partition, from_ms).await
    }
}
