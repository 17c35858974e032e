//! The report SQL, one text per report shared by every engine (SPEC 2:
//! portable subset, integer epoch milliseconds, TEXT ids, no vendor
//! functions). Per engine, table names differ, the raw-mirror source of the
//! traffic report (in ScyllaDB it must name its full partition key), and on
//! the store the shape of royalties and concurrency, written for the store's
//! partial indexes (Trino gets the plain text).
//!
//! Values are never spliced from request text: statements carry `$n`
//! placeholders and typed [`Param`]s. sqlx binds them (PostgreSQL and SQLite
//! both read `$n`); for Trino, whose client protocol has no bind step,
//! [`Statement::render`] writes them as literals from the typed values. The
//! only text that is generated is the hour/bucket partition list, and it is
//! printed from validated integers.
//!
//! No ORDER BY of answer rows: engines sort rows in Rust so that byte order
//! is the same whatever the database's collation (the one ORDER BY, in
//! concurrency, picks an integer).

use hb_common::raw::{hours_between, BUCKETS, HOUR_MS};
use hb_common::store::columns::{ADS, RAW_HEARTBEATS, SESSIONS, SESSION_ADS, VIDEOS};
use hb_common::store::{Param, Statement};

/// Where the raw heartbeats live.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RawSource {
    /// `raw_heartbeats` in the sessions store (embedded tier, or no ScyllaDB).
    Store(String),
    /// ScyllaDB `by_hour`, partitioned by `(hour_ms, bucket)`.
    Scylla(String),
}

/// Longest royalties period read in start order on the store (see
/// [`Tables::royalties`]); longer ones are read in title order.
pub const SHORT_ROYALTIES_MS: i64 = 7 * 24 * 3_600_000;

/// Table names as one engine sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    /// The sessions store itself, whose indexes the statements are shaped
    /// for (see [`Tables::royalties`] and [`Tables::concurrency`]); false
    /// through Trino, which gets the plain text.
    on_store: bool,
    /// SQLite: the store is never analyzed, so its planner guesses that any
    /// start range is small; long periods hide `start_ms` from it with
    /// `+ 0`. Not on PostgreSQL, whose statistics see the range as it is
    /// and whose estimate `+ 0` would blind (a month's royalties would then
    /// be sorted on disk instead of read from an index in order).
    sqlite_planner: bool,
    sessions: String,
    session_ads: String,
    videos: String,
    ads: String,
    raw: RawSource,
}

impl Tables {
    /// The embedded SQLite store.
    pub fn sqlite() -> Tables {
        Tables {
            sqlite_planner: true,
            ..Tables::postgres()
        }
    }

    /// The PostgreSQL/YugabyteDB store.
    pub fn postgres() -> Tables {
        Tables {
            on_store: true,
            sqlite_planner: false,
            sessions: SESSIONS.into(),
            session_ads: SESSION_ADS.into(),
            videos: VIDEOS.into(),
            ads: ADS.into(),
            raw: RawSource::Store(RAW_HEARTBEATS.into()),
        }
    }

    /// Trino: the store through the YugabyteDB catalog, the raw mirror
    /// through the ScyllaDB catalog. Names are validated by the config
    /// (lowercase identifiers) and quoted here.
    pub fn trino(
        yugabyte_catalog: &str,
        yugabyte_schema: &str,
        scylla_catalog: &str,
        scylla_schema: &str,
    ) -> Tables {
        let yb = |table: &str| format!("\"{yugabyte_catalog}\".\"{yugabyte_schema}\".\"{table}\"");
        Tables {
            on_store: false,
            sqlite_planner: false,
            sessions: yb("sessions"),
            session_ads: yb("session_ads"),
            videos: yb("videos"),
            ads: yb("ads"),
            raw: RawSource::Scylla(format!(
                "\"{scylla_catalog}\".\"{scylla_schema}\".\"by_hour\""
            )),
        }
    }

    /// Royalties: sessions started in `[from, to)` per (license holder, video).
    /// Columns: license_holder_id, video_id, sessions, viewers, watch_ms,
    /// rate_micros_per_hour (the amount is computed from the last two).
    /// Sessions are aggregated per video before the join (one catalog
    /// look-up per title instead of per session).
    ///
    /// On the store, final and open sessions are read apart, each joined
    /// with the catalog, and a title with both has two rows that
    /// [`super::finish_royalties`] adds up (merging them in SQL would need
    /// an aggregation over the union, whose size PostgreSQL misjudges).
    /// Finals come from a partial index of finals alone (no row look-up),
    /// chosen by the period's length:
    /// - up to [`SHORT_ROYALTIES_MS`], from `(start_ms, video_id, user_id,
    ///   watch_ms, ...) WHERE is_final`: the period is one range of the
    ///   index, sorted by title afterwards (a day is 1/30 of a month's rows).
    ///   The direct engine does not send this statement for such periods:
    ///   it reads the same range through [`Tables::royalty_sessions`] and
    ///   counts per title in Rust, which is cheaper on both stores;
    /// - longer, from `(video_id, user_id, start_ms, watch_ms) WHERE
    ///   is_final` in group order: a month over 1 M sessions is one index
    ///   scan with no sort and no row look-ups. On SQLite `+ 0` keeps the
    ///   planner off the start-order index, whose range would be most of
    ///   the table and then need sorting.
    ///
    /// PostgreSQL's planner makes the same choice from its statistics, so
    /// there the text does not change with the length. Both select the same
    /// rows, so the choice never changes the answer.
    /// The indexes hold `watch_ms` but only for finals, so the stream stage's
    /// upserts of open sessions never rewrite them (an index over every
    /// session would be rewritten on each upsert, slowing the stream stage).
    /// Open sessions are few (those playing now) and come from their own
    /// partial index; an open session's user counts as a new viewer of the
    /// title only if no final session of the same user and title started in
    /// the period.
    pub fn royalties(&self, from_ms: i64, to_ms: i64, license_holder: Option<&str>) -> Statement {
        let mut params = vec![Param::Int(from_ms), Param::Int(to_ms)];
        let (inner, outer) = scoped_through_catalog(&mut params, self.titles_of(), license_holder);
        let sessions = &self.sessions;
        let videos = &self.videos;
        let joined = |aggregate: String| {
            format!(
                "SELECT v.license_holder_id, a.video_id, a.sessions, a.viewers, a.watch_ms, v.rate_micros_per_hour\n\
                 FROM (\n{aggregate}\n) a JOIN {videos} v ON v.video_id = a.video_id{outer}"
            )
        };
        let sql = if self.on_store {
            let final_start = if self.sqlite_planner && to_ms - from_ms > SHORT_ROYALTIES_MS {
                "s.start_ms + 0"
            } else {
                "s.start_ms"
            };
            let finals = joined(format!(
                "SELECT s.video_id, COUNT(*) AS sessions, COUNT(DISTINCT s.user_id) AS viewers, \
                 CAST(SUM(s.watch_ms) AS BIGINT) AS watch_ms\n\
                 FROM {sessions} s\n\
                 WHERE s.is_final AND {final_start} >= $1 AND {final_start} < $2{inner}\n\
                 GROUP BY s.video_id"
            ));
            let open = joined(format!(
                "SELECT s.video_id, COUNT(*) AS sessions, COUNT(DISTINCT CASE WHEN NOT EXISTS (\
                 SELECT 1 FROM {sessions} f WHERE f.is_final AND f.video_id = s.video_id \
                 AND f.user_id = s.user_id AND f.start_ms >= $1 AND f.start_ms < $2\
                 ) THEN s.user_id END) AS viewers, CAST(SUM(s.watch_ms) AS BIGINT) AS watch_ms\n\
                 FROM {sessions} s\n\
                 WHERE NOT s.is_final AND s.start_ms >= $1 AND s.start_ms < $2{inner}\n\
                 GROUP BY s.video_id"
            ));
            format!("{finals}\nUNION ALL\n{open}")
        } else {
            joined(format!(
                "SELECT s.video_id, COUNT(*) AS sessions, COUNT(DISTINCT s.user_id) AS viewers, \
                 CAST(SUM(s.watch_ms) AS BIGINT) AS watch_ms\n\
                 FROM {sessions} s\n\
                 WHERE s.start_ms >= $1 AND s.start_ms < $2{inner}\n\
                 GROUP BY s.video_id"
            ))
        };
        Statement { sql, params }
    }

    /// A royalties report's sessions on the embedded store, one row each:
    /// (video_id, user_id, watch_ms) of the sessions started in
    /// `[from, to)`, finals from their start-order index and open ones from
    /// theirs, scoped like [`Tables::royalties`]. Counted per title in Rust
    /// ([`super::RoyaltyCounter`]) and joined with the catalog afterwards:
    /// SQLite's grouping with a distinct count goes through two temporary
    /// B-trees, many times the cost of the scan itself.
    pub fn royalty_sessions(
        &self,
        from_ms: i64,
        to_ms: i64,
        license_holder: Option<&str>,
    ) -> Statement {
        let mut params = vec![Param::Int(from_ms), Param::Int(to_ms)];
        let (inner, _) = scoped_through_catalog(&mut params, self.titles_of(), license_holder);
        let sessions = &self.sessions;
        let part = |finals: &str| {
            format!(
                "SELECT s.video_id, s.user_id, s.watch_ms\n\
                 FROM {sessions} s\n\
                 WHERE {finals}s.is_final AND s.start_ms >= $1 AND s.start_ms < $2{inner}"
            )
        };
        Statement {
            sql: format!("{}\nUNION ALL\n{}", part(""), part("NOT ")),
            params,
        }
    }

    /// The catalog rows royalties are joined with: (video_id,
    /// license_holder_id, rate_micros_per_hour) of every title, or of one
    /// holder's titles when scoped.
    pub fn royalty_titles(&self, license_holder: Option<&str>) -> Statement {
        let videos = &self.videos;
        let (scope, params) = match license_holder {
            Some(id) => (
                " WHERE license_holder_id = $1",
                vec![Param::Text(id.to_string())],
            ),
            None => ("", Vec::new()),
        };
        Statement {
            sql: format!(
                "SELECT video_id, license_holder_id, rate_micros_per_hour FROM {videos}{scope}"
            ),
            params,
        }
    }

    /// One title's catalog row, like [`Tables::royalty_titles`]; bind the
    /// video id as `$1` (the holder, when scoped, is `$2`).
    pub fn royalty_title(&self, video_id: &str, license_holder: Option<&str>) -> Statement {
        let mut statement = self.royalty_titles(None);
        statement.sql.push_str(" WHERE video_id = $1");
        statement.params.push(Param::Text(video_id.to_string()));
        if let Some(id) = license_holder {
            statement.sql.push_str(" AND license_holder_id = $2");
            statement.params.push(Param::Text(id.to_string()));
        }
        statement
    }

    /// Royalties are scoped through the catalog's title owners.
    fn titles_of(&self) -> Scope<'_> {
        Scope {
            column: "s.video_id",
            catalog: &self.videos,
            key: "video_id",
            owner: "license_holder_id",
            outer: "v.license_holder_id",
        }
    }

    /// Impressions: (session, ad) pairs of sessions started in `[from, to)`
    /// per (advertiser, campaign, ad). Aggregated per ad before the catalog
    /// join, like royalties: on the store the `(ad_id, user_id, start_ms)`
    /// index then delivers each ad's pairs in order, so the month's
    /// impressions are never sorted.
    pub fn impressions(&self, from_ms: i64, to_ms: i64, advertiser: Option<&str>) -> Statement {
        let mut params = vec![Param::Int(from_ms), Param::Int(to_ms)];
        let (inner, outer) = scoped_through_catalog(
            &mut params,
            Scope {
                column: "x.ad_id",
                catalog: &self.ads,
                key: "ad_id",
                owner: "advertiser_id",
                outer: "a.advertiser_id",
            },
            advertiser,
        );
        Statement {
            sql: format!(
                "SELECT a.advertiser_id, a.campaign_id, x.ad_id, x.impressions, x.viewers\n\
                 FROM (\n\
                 SELECT x.ad_id, COUNT(*) AS impressions, COUNT(DISTINCT x.user_id) AS viewers\n\
                 FROM {session_ads} x\n\
                 WHERE x.start_ms >= $1 AND x.start_ms < $2{inner}\n\
                 GROUP BY x.ad_id\n\
                 ) x JOIN {ads} a ON a.ad_id = x.ad_id{outer}",
                session_ads = self.session_ads,
                ads = self.ads,
            ),
            params,
        }
    }

    /// Concurrency input: every session overlapping `[from, upper)`, as
    /// (user_id, start_ms, end_ms); buckets are counted in Rust.
    ///
    /// `start_ms < upper` alone selects every session started before the
    /// period ends, usually most of the table. On the store, finals are read
    /// from `sessions_final_by_start` between `from - longest` and `upper`,
    /// where `longest` is the longest final session (one look-up at the top
    /// of `sessions_final_by_length`): a final session that started earlier
    /// ended before `from`. It is the same statement, so the bound and the
    /// rows come from one snapshot. Open sessions (those playing now, few)
    /// come from `sessions_open_by_start`. A day reads a day and the longest
    /// session's length of the index instead of every row started before
    /// it. Through Trino the plain overlap test is sent, pushed down to
    /// YugabyteDB as it is.
    pub fn concurrency(&self, from_ms: i64, upper_ms: i64) -> Statement {
        let sessions = &self.sessions;
        let sql = if self.on_store {
            format!(
                "SELECT s.user_id, s.start_ms, s.end_ms\n\
                 FROM {sessions} s\n\
                 WHERE s.is_final AND s.start_ms < $2 AND s.end_ms >= $1 \
                 AND s.start_ms >= $1 - (SELECT f.end_ms - f.start_ms FROM {sessions} f \
                 WHERE f.is_final ORDER BY f.end_ms - f.start_ms DESC LIMIT 1)\n\
                 UNION ALL\n\
                 SELECT s.user_id, s.start_ms, s.end_ms\n\
                 FROM {sessions} s\n\
                 WHERE NOT s.is_final AND s.start_ms < $2 AND s.end_ms >= $1"
            )
        } else {
            format!(
                "SELECT s.user_id, s.start_ms, s.end_ms\n\
                 FROM {sessions} s\n\
                 WHERE s.start_ms < $2 AND s.end_ms >= $1"
            )
        };
        Statement {
            sql,
            params: vec![Param::Int(from_ms), Param::Int(upper_ms)],
        }
    }

    /// Traffic: raw heartbeats with event time in `[from, to)` per hour and
    /// license holder. The raw side is pre-aggregated to distinct
    /// (hour, video, device) rows with their heartbeat count, the catalog side
    /// to (video, license holder); after the join, devices are counted
    /// distinct per (hour, license holder) — a device watching two titles of
    /// one holder counts once, which summing per-video counts would not.
    pub fn traffic(&self, from_ms: i64, to_ms: i64, license_holder: Option<&str>) -> Statement {
        let mut params = vec![Param::Int(from_ms), Param::Int(to_ms)];
        let raw = match &self.raw {
            RawSource::Store(table) => format!(
                "SELECT event_time_ms - (event_time_ms % {HOUR_MS}) AS hour_ms, video_id, device_id, \
                 COUNT(*) AS heartbeats\n\
                 FROM {table}\n\
                 WHERE event_time_ms >= $1 AND event_time_ms < $2\n\
                 GROUP BY event_time_ms - (event_time_ms % {HOUR_MS}), video_id, device_id"
            ),
            RawSource::Scylla(table) => {
                // Every partition of the period, named in full: the Cassandra
                // connector otherwise scans the whole table.
                let hours = join(hours_between(from_ms, to_ms));
                let buckets = join(0..i64::from(BUCKETS));
                format!(
                    "SELECT hour_ms, video_id, device_id, COUNT(*) AS heartbeats\n\
                     FROM {table}\n\
                     WHERE hour_ms IN ({hours}) AND bucket IN ({buckets}) \
                     AND event_time_ms >= $1 AND event_time_ms < $2\n\
                     GROUP BY hour_ms, video_id, device_id"
                )
            }
        };
        let scope = match license_holder {
            Some(id) => {
                params.push(Param::Text(id.to_string()));
                format!(" WHERE license_holder_id = ${}", params.len())
            }
            None => String::new(),
        };
        Statement {
            sql: format!(
                "WITH raw_hours AS (\n{raw}\n), titles AS (\n\
                 SELECT video_id, license_holder_id FROM {videos}{scope}\n)\n\
                 SELECT r.hour_ms AS hour_start_ms, t.license_holder_id, \
                 CAST(SUM(r.heartbeats) AS BIGINT) AS heartbeats, COUNT(DISTINCT r.device_id) AS devices\n\
                 FROM raw_hours r JOIN titles t ON t.video_id = r.video_id\n\
                 GROUP BY r.hour_ms, t.license_holder_id",
                videos = self.videos,
            ),
            params,
        }
    }
}

/// How a scoped report names its owner: the report's key column, and the
/// catalog table mapping that key to its owner.
struct Scope<'a> {
    column: &'a str,
    catalog: &'a str,
    key: &'a str,
    owner: &'a str,
    /// The owner column as the outer query names it.
    outer: &'a str,
}

/// A scoped request filters twice: the inner scan keeps only the owner's
/// keys and the outer join keeps only the owner's rows. Returns the inner
/// `AND ...` and the outer `WHERE ...`, both empty when unscoped.
fn scoped_through_catalog(
    params: &mut Vec<Param>,
    scope: Scope<'_>,
    id: Option<&str>,
) -> (String, String) {
    let Some(id) = id else {
        return (String::new(), String::new());
    };
    params.push(Param::Text(id.to_string()));
    let n = params.len();
    let Scope {
        column,
        catalog,
        key,
        owner,
        outer,
    } = scope;
    (
        format!(" AND {column} IN (SELECT {key} FROM {catalog} WHERE {owner} = ${n})"),
        format!("\nWHERE {outer} = ${n}"),
    )
}

fn join(values: impl IntoIterator<Item = i64>) -> String {
    values
        .into_iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoping_is_a_parameter_not_text() {
        let evil = "x' OR '1'='1";
        let statement = Tables::sqlite().royalties(0, 1, Some(evil));
        assert!(!statement.sql.contains(evil));
        assert_eq!(statement.params[2], Param::Text(evil.into()));
        // Both halves of the store's scan and both joins.
        assert_eq!(statement.sql.matches("license_holder_id = $3").count(), 4);
        assert!(statement.render().contains("'x'' OR ''1''=''1'"));
    }

    #[test]
    fn the_store_reads_short_periods_in_start_order() {
        let sqlite = Tables::sqlite();
        let short = sqlite.royalties(0, SHORT_ROYALTIES_MS, None).sql;
        let long = sqlite.royalties(0, SHORT_ROYALTIES_MS + 1, None).sql;
        assert!(short.contains("s.is_final AND s.start_ms >= $1 AND s.start_ms < $2"));
        assert!(long.contains("s.is_final AND s.start_ms + 0 >= $1 AND s.start_ms + 0 < $2"));
        // PostgreSQL plans from statistics: one text.
        let postgres = Tables::postgres();
        assert_eq!(postgres.royalties(0, SHORT_ROYALTIES_MS, None).sql, short);
        assert_eq!(
            postgres.royalties(0, SHORT_ROYALTIES_MS + 1, None).sql,
            short
        );
        // The open half and Trino's text do not depend on the length.
        let trino = Tables::trino("yb", "public", "sc", "heartbeats");
        assert_eq!(
            trino.royalties(0, 1, None).sql,
            trino.royalties(0, 10 * SHORT_ROYALTIES_MS, None).sql
        );
        assert!(!trino.concurrency(0, 1).sql.contains("is_final"));
    }

    #[test]
    fn scylla_scans_name_every_partition() {
        let tables = Tables::trino("yb", "public", "sc", "heartbeats");
        let sql = tables.traffic(HOUR_MS + 1, 3 * HOUR_MS, None).render();
        assert!(sql.contains("hour_ms IN (3600000, 7200000)"), "{sql}");
        assert!(sql.contains("bucket IN (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)"));
        assert!(sql.contains("FROM \"sc\".\"heartbeats\".\"by_hour\""));
    }
}
