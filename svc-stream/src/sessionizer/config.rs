//! The session rules a [`Sessionizer`](super::Sessionizer) applies.

/// Session rules; the defaults are those of SPEC 5.
#[derive(Clone, Copy, Debug)]
pub struct SessionConfig {
    /// Time between heartbeats that starts a new session (`HB_SESSION_GAP`).
    pub gap_ms: i64,
    /// How far behind the newest event time a heartbeat is still merged
    /// (`HB_ALLOWED_LATENESS`).
    pub lateness_ms: i64,
    /// Processing time without a push after which a key's sessions are
    /// finalized (`HB_IDLE_TIMEOUT`).
    pub idle_timeout_ms: i64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            gap_ms: 600_000,
            lateness_ms: 120_000,
            idle_timeout_ms: 600_000,
        }
    }
}
