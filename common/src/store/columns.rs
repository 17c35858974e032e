//! The tables and column lists the stream's writer and the query service
//! both name. A column list here is the order the writer binds values in
//! and the order readers decode rows in.

/// Every accepted heartbeat (the raw mirror kept in the store).
pub const RAW_HEARTBEATS: &str = "raw_heartbeats";
/// One row per session: open while it may still grow, final after.
pub const SESSIONS: &str = "sessions";
/// One row per ad shown in a session (ad impressions).
pub const SESSION_ADS: &str = "session_ads";
/// The content catalog: titles with their license holder and rate.
pub const VIDEOS: &str = "videos";
/// The content catalog: ads with their campaign and advertiser.
pub const ADS: &str = "ads";
/// One row per user erasure: the audit, and the stream stage's queue.
pub const ERASURES: &str = "erasures";

/// A raw heartbeat as read back, in the order of the stream's `RawHeartbeat`.
pub const RAW_COLUMNS: &str = "event_id, user_id, video_id, device_id, event_time_ms, \
     position_ms, state, ad_id, platform, app_version, country, bitrate_kbps, late";
/// A raw heartbeat as written: [`RAW_COLUMNS`] and when it expires.
pub const RAW_WRITE_COLUMNS: &str = "event_id, user_id, video_id, device_id, event_time_ms, \
     position_ms, state, ad_id, platform, app_version, country, bitrate_kbps, late, expires_ms";

/// A session as reports read it ([`super::rows::StoredSession`]).
pub const SESSION_COLUMNS: &str = "user_id, video_id, start_ms, end_ms, heartbeats, watch_ms, \
     coverage_ms, last_position_ms, devices, ads, is_final";
/// A session as the stream writes it: [`SESSION_COLUMNS`], the partition
/// that owns it and when it was written.
pub const SESSION_WRITE_COLUMNS: &str = "user_id, video_id, start_ms, end_ms, heartbeats, \
     watch_ms, coverage_ms, last_position_ms, devices, ads, is_final, stream_partition, \
     updated_ms";

/// An ad impression.
pub const SESSION_AD_COLUMNS: &str = "user_id, video_id, start_ms, ad_id";

/// A dead letter: a heartbeat refused after it was accepted.
pub const DEAD_LETTER_COLUMNS: &str = "received_ms, event_id, device_id, reason, payload";

/// How many columns `list` names.
pub fn count(list: &str) -> usize {
    list.split(',').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_extends_what_is_read() {
        assert_eq!(RAW_WRITE_COLUMNS, format!("{RAW_COLUMNS}, expires_ms"));
        assert_eq!(
            SESSION_WRITE_COLUMNS,
            format!("{SESSION_COLUMNS}, stream_partition, updated_ms")
        );
        assert_eq!(count(RAW_COLUMNS), 13);
        assert_eq!(count(SESSION_WRITE_COLUMNS), 13);
    }
}
