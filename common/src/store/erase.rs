//! Erasing one user (SPEC 7, `DELETE /v1/users/{user_id}`): the statements
//! that remove the user's raw heartbeats, sessions and ad links, mark the
//! traffic hours of the removed raw rows as changed, and keep the audit row
//! in `erasures`, run in one transaction on either engine. svc-query runs
//! them when asked; the stream stage runs the removal again in the flush
//! after it noticed the erasure, so that nothing it wrote in between
//! survives ([`erase_user`], [`erase_user_rusqlite`] for its embedded
//! writer).
//!
//! The raw table is keyed by event time without a per-user index (a second
//! B-tree would cost every heartbeat's write), so removing a user's raw rows
//! reads the whole table: fine for a request an operator makes now and then.

use super::columns::{ERASURES, RAW_HEARTBEATS, SESSIONS, SESSION_ADS};
use super::rows::{ads_from_column, ads_to_column};
use super::statement::prepare_bound;
use super::{Param, Statement, Transaction};
use crate::raw::{hour_ms, BUMP_RAW_HOUR_SQL};

/// Rows removed by one erasure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Erased {
    pub raw_heartbeats: u64,
    pub sessions: u64,
    /// `session_ads` rows: the user's ad impressions.
    pub ad_links: u64,
}

impl Erased {
    /// Adds `other`'s counts.
    pub fn add(&mut self, other: Erased) {
        self.raw_heartbeats += other.raw_heartbeats;
        self.sessions += other.sessions;
        self.ad_links += other.ad_links;
    }
}

/// An erasure recorded in `erasures` that the stream stage has still to
/// apply or to carry to the raw mirror.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingErasure {
    pub id: i64,
    pub user_id: String,
    /// The user's videos, while the raw mirror (keyed by user and video)
    /// may still hold rows of them.
    pub mirror_videos: Vec<String>,
}

/// `(hour start, raw rows)` of the user's raw heartbeats, per hour.
pub fn raw_hours(user_id: &str) -> Statement {
    Statement::new(
        format!(
            "SELECT event_time_ms - (event_time_ms % 3600000) AS hour_ms, COUNT(*) \
             FROM {RAW_HEARTBEATS} WHERE user_id = $1 GROUP BY 1"
        ),
        vec![Param::Text(user_id.into())],
    )
}

/// The distinct videos of the user's sessions and raw rows.
pub fn videos(user_id: &str) -> Statement {
    Statement::new(
        format!(
            "SELECT video_id FROM {SESSIONS} WHERE user_id = $1 \
             UNION SELECT video_id FROM {RAW_HEARTBEATS} WHERE user_id = $1"
        ),
        vec![Param::Text(user_id.into())],
    )
}

/// The tables holding a user's rows, keyed by a `user_id` column, in the
/// order they are emptied.
pub const USER_TABLES: [&str; 3] = [RAW_HEARTBEATS, SESSIONS, SESSION_ADS];

/// The late lane's marks: none of the user's heartbeats is left to correct
/// (uncounted: a mark is bookkeeping, not the user's data).
const LATE_CORRECTIONS: &str = "late_corrections";

/// Deletes the user's rows of `table` (one of [`USER_TABLES`], or the late marks).
pub fn delete(table: &str, user_id: &str) -> Statement {
    Statement::new(
        format!("DELETE FROM {table} WHERE user_id = $1"),
        vec![Param::Text(user_id.into())],
    )
}

/// Marks the traffic hour starting at `hour_ms` as changed.
pub fn bump_hour(hour_ms: i64) -> Statement {
    Statement::new(BUMP_RAW_HOUR_SQL, vec![Param::Int(hour_ms)])
}

/// Counts `removed` (rows per table of [`USER_TABLES`], in order).
fn tally(removed: [u64; 3]) -> Erased {
    Erased {
        raw_heartbeats: removed[0],
        sessions: removed[1],
        ad_links: removed[2],
    }
}

/// The distinct hours of per-hour rows, normalised as the writers key them.
fn hours(rows: &[(i64, i64)]) -> Vec<i64> {
    crate::raw::hours_of(rows.iter().map(|&(hour, _)| hour_ms(hour)))
}

/// Removes the user's rows in `tx` and marks the traffic hours they were in
/// as changed. The caller commits.
pub async fn erase_user(tx: &mut Transaction, user_id: &str) -> Result<Erased, sqlx::Error> {
    let per_hour: Vec<(i64, i64)> = tx.fetch_all(&raw_hours(user_id)).await?;
    let mut removed = [0u64; 3];
    for (count, table) in removed.iter_mut().zip(USER_TABLES) {
        *count = tx.execute(&delete(table, user_id)).await?;
    }
    tx.execute(&delete(LATE_CORRECTIONS, user_id)).await?;
    for hour in hours(&per_hour) {
        tx.execute(&bump_hour(hour)).await?;
    }
    Ok(tally(removed))
}

/// [`erase_user`] on a rusqlite connection (the embedded writer's,
/// inside its transaction).
pub fn erase_user_rusqlite(
    connection: &rusqlite::Connection,
    user_id: &str,
) -> rusqlite::Result<Erased> {
    let per_hour: Vec<(i64, i64)> = prepare_bound(connection, &raw_hours(user_id))?
        .raw_query()
        .mapped(|row| Ok((row.get(0)?, row.get(1)?)))
        .collect::<rusqlite::Result<_>>()?;
    let mut removed = [0u64; 3];
    for (count, table) in removed.iter_mut().zip(USER_TABLES) {
        *count = prepare_bound(connection, &delete(table, user_id))?.raw_execute()? as u64;
    }
    prepare_bound(connection, &delete(LATE_CORRECTIONS, user_id))?.raw_execute()?;
    for hour in hours(&per_hour) {
        prepare_bound(connection, &bump_hour(hour))?.raw_execute()?;
    }
    Ok(tally(removed))
}

/// Who asked for an erasure and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub user_id: String,
    /// The token's subject, `open` without auth, `cli` from `hbmesh erase`.
    pub requested_by: String,
    pub requested_at_ms: i64,
}

/// Erases `request.user_id` in one transaction: the rows, the changed
/// hours, and the audit row (with the user's videos for the stream stage
/// to carry to the raw mirror). Returns the audit row's id and the counts.
pub async fn erase_and_record(
    store: &super::Store,
    request: &Request,
) -> Result<(i64, Erased), sqlx::Error> {
    let mut tx = store.begin().await?;
    let videos: Vec<(String,)> = tx.fetch_all(&videos(&request.user_id)).await?;
    let videos: Vec<String> = videos.into_iter().map(|(video,)| video).collect();
    let erased = erase_user(&mut tx, &request.user_id).await?;
    let ids: Vec<(i64,)> = tx.fetch_all(&record(request, erased, &videos)).await?;
    let id = ids
        .first()
        .map(|(id,)| *id)
        .ok_or(sqlx::Error::RowNotFound)?;
    tx.commit().await?;
    Ok((id, erased))
}

/// The audit row of an erasure; returns its id.
pub fn record(request: &Request, erased: Erased, videos: &[String]) -> Statement {
    Statement::new(
        format!(
            "INSERT INTO {ERASURES} (user_id, requested_by, requested_at_ms, raw_heartbeats, \
             sessions, ad_links, mirror_videos) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id"
        ),
        vec![
            Param::Text(request.user_id.clone()),
            Param::Text(request.requested_by.clone()),
            Param::Int(request.requested_at_ms),
            Param::Int(erased.raw_heartbeats as i64),
            Param::Int(erased.sessions as i64),
            Param::Int(erased.ad_links as i64),
            Param::Text(ads_to_column(videos)),
        ],
    )
}

/// Where a stream process starts reading `erasures`: `(oldest erasure whose
/// raw mirror is not erased yet, newest erasure)`, each `NULL` when none.
pub fn start() -> Statement {
    Statement::new(
        format!(
            "SELECT (SELECT MIN(id) FROM {ERASURES} WHERE mirror_erased_ms IS NULL), \
             (SELECT MAX(id) FROM {ERASURES})"
        ),
        Vec::new(),
    )
}

/// The id after which a stream process starts applying erasures: every
/// erasure up to it was committed before the process read its state from
/// the store, except those whose raw mirror no stream process has erased
/// yet (they are applied again, which only repeats deletes).
pub fn first_to_apply(start: (Option<i64>, Option<i64>)) -> i64 {
    match start {
        (Some(oldest_pending), _) => oldest_pending - 1,
        (None, Some(newest)) => newest,
        (None, None) => 0,
    }
}

/// `(id, user_id, mirror_videos)` of the erasures after `after_id`, by id.
pub fn since(after_id: i64) -> Statement {
    Statement::new(
        format!("SELECT id, user_id, mirror_videos FROM {ERASURES} WHERE id > $1 ORDER BY id"),
        vec![Param::Int(after_id)],
    )
}

/// A row of [`since`] as a pending erasure.
pub fn pending((id, user_id, videos): (i64, String, String)) -> PendingErasure {
    PendingErasure {
        id,
        user_id,
        // An unreadable list names no video: the mirror's rows of the user
        // then expire with its TTL.
        mirror_videos: ads_from_column(&videos).unwrap_or_default(),
    }
}

/// Records that the raw mirror no longer holds the erased user's rows, and
/// forgets which videos those were.
pub fn mirror_erased(id: i64, now_ms: i64) -> Statement {
    Statement::new(
        format!(
            "UPDATE {ERASURES} SET mirror_erased_ms = $2, mirror_videos = '[]' \
             WHERE id = $1 AND mirror_erased_ms IS NULL"
        ),
        vec![Param::Int(id), Param::Int(now_ms)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_user_table_is_emptied_by_user_id_and_counted_in_order() {
        for table in USER_TABLES {
            let statement = delete(table, "u'1");
            assert_eq!(
                statement.render(),
                format!("DELETE FROM {table} WHERE user_id = 'u''1'")
            );
        }
        assert_eq!(
            tally([3, 2, 1]),
            Erased {
                raw_heartbeats: 3,
                sessions: 2,
                ad_links: 1
            }
        );
    }

    #[test]
    fn a_stream_process_starts_at_the_oldest_erasure_the_mirror_still_holds() {
        assert_eq!(first_to_apply((None, None)), 0);
        assert_eq!(first_to_apply((None, Some(7))), 7);
        assert_eq!(first_to_apply((Some(5), Some(7))), 4);
    }

    #[test]
    fn hours_are_distinct_hour_starts() {
        assert_eq!(
            hours(&[(7_200_000, 2), (0, 5), (7_200_000, 1)]),
            vec![0, 7_200_000]
        );
    }

    #[test]
    fn pending_rows_read_their_video_list() {
        let row = pending((3, "u".into(), r#"["v1","v2"]"#.into()));
        assert_eq!(row.mirror_videos, vec!["v1".to_string(), "v2".into()]);
        assert!(pending((3, "u".into(), "junk".into()))
            .mirror_videos
            .is_empty());
    }
}
