//! What the sessionizer hands out: sessions (SPEC 5.5), their store keys, the
//! changes the store applies, and what a push did with a heartbeat.

/// A viewing session with the fields of SPEC 5.5.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Session {
    pub user_id: String,
    pub video_id: String,
    /// Time of the first heartbeat.
    pub start_ms: i64,
    /// Time of the last heartbeat.
    pub end_ms: i64,
    pub heartbeats: u64,
    /// Sum of the position advance over watched steps (rewatching counts again).
    pub watch_ms: i64,
    /// Length of the union of the watched position intervals.
    pub coverage_ms: i64,
    /// Position of the last heartbeat.
    pub last_position_ms: i64,
    /// Distinct non-empty ad ids, sorted.
    pub ads: Vec<String>,
    /// Number of distinct devices.
    pub devices: u64,
}

impl Session {
    /// The store key of this session.
    pub fn key(&self) -> SessionKey {
        SessionKey {
            user_id: self.user_id.clone(),
            video_id: self.video_id.clone(),
            start_ms: self.start_ms,
        }
    }
}

/// A [`Session`] borrowed from the sessionizer's state (see
/// [`Sessionizer::drain_changes_with`]).
///
/// [`Sessionizer::drain_changes_with`]: super::Sessionizer::drain_changes_with
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionRef<'a> {
    pub user_id: &'a str,
    pub video_id: &'a str,
    pub start_ms: i64,
    pub end_ms: i64,
    pub heartbeats: u64,
    pub watch_ms: i64,
    pub coverage_ms: i64,
    pub last_position_ms: i64,
    /// Distinct non-empty ad ids, sorted.
    pub ads: &'a [String],
    pub devices: u64,
}

impl SessionRef<'_> {
    /// An owned copy.
    pub fn to_session(&self) -> Session {
        Session {
            user_id: self.user_id.to_owned(),
            video_id: self.video_id.to_owned(),
            start_ms: self.start_ms,
            end_ms: self.end_ms,
            heartbeats: self.heartbeats,
            watch_ms: self.watch_ms,
            coverage_ms: self.coverage_ms,
            last_position_ms: self.last_position_ms,
            ads: self.ads.to_vec(),
            devices: self.devices,
        }
    }
}

/// A change as [`Sessionizer::drain_changes_with`] hands it over: an open
/// session borrowed, a final one (whose state is gone) and a deleted key owned.
///
/// [`Sessionizer::drain_changes_with`]: super::Sessionizer::drain_changes_with
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeRef<'a> {
    /// See [`Change::Upsert`].
    Upsert(SessionRef<'a>),
    /// See [`Change::Final`].
    Final(Session),
    /// See [`Change::Delete`].
    Delete(SessionKey),
}

/// Store key of a session: `(user_id, video_id, start_ms)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    pub user_id: String,
    pub video_id: String,
    pub start_ms: i64,
}

/// A change to apply to the sessions store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The session is still open: write it, replacing the row with its key.
    Upsert(Session),
    /// The session is closed for good; the sessionizer dropped its state.
    Final(Session),
    /// The row with this key no longer names a session: it was merged into
    /// another one, or its start moved earlier (an `Upsert` under the new key
    /// comes with it).
    Delete(SessionKey),
}

impl Change {
    /// The store key this change writes or deletes.
    pub fn key(&self) -> SessionKey {
        match self {
            Change::Upsert(session) | Change::Final(session) => session.key(),
            Change::Delete(key) => key.clone(),
        }
    }
}

/// What [`Sessionizer::push`](super::Sessionizer::push) did with a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Folded into a session.
    Merged,
    /// Its `event_id` was already accepted: ignored.
    Duplicate,
    /// Older than `watermark - lateness`:
    /// not sessionized; the caller still mirrors and counts it.
    Late,
}

/// One of `of` disjoint shares of the `(user_id, video_id)` keys, so that a
/// drain can hand over the changes of some keys and keep the rest (see
/// [`Sessionizer::drain_share`]). A key's share depends on the key alone.
///
/// [`Sessionizer::drain_share`]: super::Sessionizer::drain_share
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    pub index: u32,
    pub of: u32,
}

impl Share {
    /// Every key.
    pub const ALL: Share = Share { index: 0, of: 1 };

    /// Whether the key `(user_id, video_id)` is in this share.
    pub fn holds(&self, user_id: &str, video_id: &str) -> bool {
        // The high half: the key tables index by the low bits.
        self.of <= 1
            || (super::fxhash::key_fingerprint(user_id, video_id) >> 32) as u32 % self.of
                == self.index
    }
}
