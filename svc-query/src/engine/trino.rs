//! Reports through Trino: the sessions store via the YugabyteDB catalog
//! (postgresql connector), the raw mirror via the ScyllaDB catalog
//! (cassandra connector), both named by configuration.
//!
//! Built on `trino-rust-client` 0.12, but on its page-level calls
//! ([`Client::get`] to submit, [`Client::get_next`] per page,
//! [`Client::cancel`]) rather than `get_all`/`stream`, because those cannot
//! give what a report needs:
//! - a per-query deadline that cancels the query on the server with exactly
//!   one `DELETE /v1/query/{id}`, awaited before we answer (the crate's
//!   `RowStream` fires its cancel from `Drop`, unawaited, and `get_all` never
//!   cancels);
//! - retry of a 503 bounded by that deadline (the crate's retry sleeps its
//!   own backoff of up to 3 × 2 s regardless of any deadline);
//! - columns mapped by name from the `columns` of whichever page carries
//!   them, with Trino's JSON encodings parsed here: integers as numbers,
//!   decimals and timestamps as strings ([`TrinoTable`]).
//!
//! The session headers (`X-Trino-User`, `X-Trino-Catalog`, `X-Trino-Schema`,
//! `X-Trino-Source`) are still set by the crate from the client builder.

use super::sql::Tables;
use super::{finish_impressions, finish_royalties, finish_traffic, ReportEngine, RoyaltyAggregate};
use crate::config::{QueryConfig, TrinoEndpoint};
use crate::error::EngineError;
use crate::report::{
    ConcurrencyRow, ConcurrencySpec, ImpressionRow, RoyaltyRow, TrafficRow, Window,
};
use async_trait::async_trait;
use chrono::NaiveDateTime;
use hb_common::store::Statement;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use trino_rust_client::error::Error as TrinoError;
use trino_rust_client::{
    Client, ClientBuilder, Column, QueryError, QueryResult, QueryResultData, Row, TrinoErrorKind,
};

/// Everything the Trino engine needs.
#[derive(Clone, Debug)]
pub struct TrinoSettings {
    pub endpoint: TrinoEndpoint,
    pub user: String,
    pub catalog_yugabyte: String,
    pub schema_yugabyte: String,
    pub catalog_scylla: String,
    pub schema_scylla: String,
    /// Deadline of one query, submit to last page.
    pub timeout: Duration,
    /// Attempts per request when Trino answers 503 (or a page 502/504).
    pub attempts: u32,
    /// First retry delay; doubles per attempt.
    pub backoff: Duration,
}

impl TrinoSettings {
    /// From the service configuration (which has validated the names and URL).
    pub fn from_config(
        config: &QueryConfig,
        url: &str,
    ) -> Result<TrinoSettings, crate::config::ConfigError> {
        Ok(TrinoSettings {
            endpoint: TrinoEndpoint::parse(url)?,
            user: config.trino_user.clone(),
            catalog_yugabyte: config.trino_catalog_yugabyte.clone(),
            schema_yugabyte: config.trino_schema_yugabyte.clone(),
            catalog_scylla: config.trino_catalog_scylla.clone(),
            schema_scylla: config.trino_schema_scylla.clone(),
            timeout: config.query_timeout,
            attempts: 5,
            backoff: Duration::from_millis(100),
        })
    }
}

/// The Trino engine.
pub struct TrinoEngine {
    client: Arc<Client>,
    tables: Tables,
    settings: TrinoSettings,
}

impl TrinoEngine {
    pub fn new(settings: TrinoSettings) -> Result<TrinoEngine, EngineError> {
        let endpoint = &settings.endpoint;
        let client = ClientBuilder::new(&settings.user, &endpoint.host)
            .port(endpoint.port)
            .secure(endpoint.secure)
            .source("hbmesh-svc-query")
            .catalog(&settings.catalog_yugabyte)
            .schema(&settings.schema_yugabyte)
            // A safety net only: the query deadline below bounds every request.
            .client_request_timeout(settings.timeout + Duration::from_secs(5))
            .build()
            .map_err(|e| EngineError::Upstream(format!("cannot build the Trino client: {e}")))?;
        let tables = Tables::trino(
            &settings.catalog_yugabyte,
            &settings.schema_yugabyte,
            &settings.catalog_scylla,
            &settings.schema_scylla,
        );
        Ok(TrinoEngine {
            client: Arc::new(client),
            tables,
            settings,
        })
    }

    /// The tables as this engine names them (for tests and docs).
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// Runs one statement to completion within the deadline; past it the
    /// query is cancelled on the coordinator (awaited, once) and the caller
    /// gets [`EngineError::Deadline`].
    pub async fn query(&self, statement: &Statement) -> Result<TrinoTable, EngineError> {
        let sql = statement.render();
        let deadline = Instant::now() + self.settings.timeout;
        let mut running = RunningQuery::new(self.client.clone());
        let outcome = tokio::time::timeout_at(deadline, self.drive(sql, &mut running)).await;
        match outcome {
            Ok(Ok(table)) => Ok(table),
            Ok(Err(error)) => {
                // A page we could not read leaves the query running: stop it.
                running.cancel().await;
                Err(error)
            }
            Err(_elapsed) => {
                running.cancel().await;
                Err(EngineError::Deadline(self.settings.timeout))
            }
        }
    }

    async fn drive(
        &self,
        sql: String,
        running: &mut RunningQuery,
    ) -> Result<TrinoTable, EngineError> {
        let mut page: QueryResult<Row> = self
            .with_retry(|| self.client.get::<Row>(sql.clone()), retry_submit)
            .await?;
        running.id = Some(page.id.clone());
        tracing::debug!(query_id = %page.id, "trino query submitted");
        let mut columns: Option<Vec<Column>> = None;
        let mut rows: Vec<Vec<Value>> = Vec::new();
        loop {
            if let Some(error) = page.error.take() {
                running.finished = true;
                return Err(map_query_error(&error));
            }
            if columns.is_none() {
                columns = page.columns.take();
            }
            match page.data.take() {
                Some(QueryResultData::Direct(data)) => {
                    rows.extend(data.into_iter().map(Row::into_json))
                }
                Some(QueryResultData::Spooled(_)) => return Err(EngineError::Upstream(
                    "Trino answered with the spooling protocol, which svc-query does not request"
                        .into(),
                )),
                None => {}
            }
            let Some(next_uri) = page.next_uri.take() else {
                running.finished = true;
                break;
            };
            page = self
                .with_retry(|| self.client.get_next::<Row>(&next_uri), retry_fetch)
                .await?;
        }
        TrinoTable::new(columns.unwrap_or_default(), rows)
    }

    /// Runs `request`, retrying with doubling backoff while `retryable` says
    /// the failure was transient; the enclosing deadline bounds it all.
    async fn with_retry<T, F, Fut>(
        &self,
        request: F,
        retryable: fn(&TrinoError) -> bool,
    ) -> Result<T, EngineError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, TrinoError>>,
    {
        let mut delay = self.settings.backoff;
        let mut attempt = 1;
        loop {
            match request().await {
                Ok(value) => return Ok(value),
                Err(error) if retryable(&error) && attempt < self.settings.attempts => {
                    tracing::debug!(attempt, error = %error, "trino request failed, retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(error) => return Err(map_client_error(&error, attempt, &self.settings.user)),
            }
        }
    }
}

/// A submitted query, cancelled on the server unless it finished: explicitly
/// by [`RunningQuery::cancel`], or from `Drop` when the request is abandoned
/// (the HTTP client went away).
struct RunningQuery {
    client: Arc<Client>,
    id: Option<String>,
    finished: bool,
}

impl RunningQuery {
    fn new(client: Arc<Client>) -> RunningQuery {
        RunningQuery {
            client,
            id: None,
            finished: false,
        }
    }

    async fn cancel(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let Some(id) = self.id.take() else {
            // The submit itself did not come back: there is no id to cancel,
            // Trino abandons a query whose client stops polling.
            return;
        };
        match tokio::time::timeout(Duration::from_secs(5), self.client.cancel(&id)).await {
            Ok(Ok(())) => tracing::info!(query_id = %id, "trino query cancelled"),
            Ok(Err(error)) => tracing::warn!(query_id = %id, error = %error, "trino cancel failed"),
            Err(_) => tracing::warn!(query_id = %id, "trino cancel timed out"),
        }
    }
}

impl Drop for RunningQuery {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let (Some(id), Ok(runtime)) = (self.id.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let client = self.client.clone();
        runtime.spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), client.cancel(&id)).await;
        });
    }
}

/// Submission is not idempotent: retry only what Trino did not process
/// (503, connection refused).
fn retry_submit(error: &TrinoError) -> bool {
    match error {
        TrinoError::HttpNotOk(status, _) => status.as_u16() == 503,
        TrinoError::HttpError(e) => e.is_connect(),
        _ => false,
    }
}

/// Page fetches are idempotent: retry any transient failure.
fn retry_fetch(error: &TrinoError) -> bool {
    match error {
        TrinoError::HttpNotOk(status, _) => matches!(status.as_u16(), 502..=504),
        TrinoError::HttpError(e) => e.is_connect() || e.is_timeout(),
        _ => false,
    }
}

/// A failed query (a `FAILED` page) as the caller should see it.
pub fn map_query_error(error: &QueryError) -> EngineError {
    let detail = format!(
        "Trino {} ({}): {}",
        error.error_name, error.error_type, error.message
    );
    match error.kind() {
        TrinoErrorKind::TableNotFound
        | TrinoErrorKind::CatalogNotFound
        | TrinoErrorKind::SchemaNotFound
        | TrinoErrorKind::ColumnNotFound
        | TrinoErrorKind::FunctionNotFound
        | TrinoErrorKind::PermissionDenied => EngineError::Upstream(detail),
        TrinoErrorKind::UserCanceled => EngineError::Unavailable(detail),
        _ => match error.error_type.as_str() {
            "INSUFFICIENT_RESOURCES" | "EXTERNAL" => EngineError::Unavailable(detail),
            "INTERNAL_ERROR" => EngineError::Upstream(detail),
            // SYNTAX_ERROR, TYPE_MISMATCH, ...: the report SQL is wrong.
            _ => EngineError::Internal(detail),
        },
    }
}

fn map_client_error(error: &TrinoError, attempts: u32, user: &str) -> EngineError {
    match error {
        TrinoError::Query(query) => map_query_error(query),
        TrinoError::Forbidden { message } => EngineError::Upstream(format!(
            "Trino PERMISSION_DENIED for user {user}: {message}"
        )),
        TrinoError::HttpNotOk(status, body) if status.as_u16() == 503 => {
            EngineError::Unavailable(format!(
                "Trino unavailable (HTTP 503 after {attempts} attempts): {}",
                truncate(body)
            ))
        }
        TrinoError::HttpNotOk(status, body) => {
            EngineError::Upstream(format!("Trino answered HTTP {status}: {}", truncate(body)))
        }
        TrinoError::HttpError(e) if e.is_connect() || e.is_timeout() => {
            EngineError::Unavailable(format!("Trino unreachable after {attempts} attempts: {e}"))
        }
        other => EngineError::Upstream(format!("Trino protocol error: {other}")),
    }
}

fn truncate(text: &str) -> &str {
    let mut end = text.len().min(200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A query result with its columns, read by column name.
#[derive(Debug, Clone, PartialEq)]
pub struct TrinoTable {
    columns: Vec<Column>,
    rows: Vec<Vec<Value>>,
}

/// One column's position and Trino type.
#[derive(Debug, Clone, Copy)]
pub struct ColumnRef<'a> {
    index: usize,
    name: &'a str,
    ty: &'a str,
}

impl TrinoTable {
    pub fn new(columns: Vec<Column>, rows: Vec<Vec<Value>>) -> Result<TrinoTable, EngineError> {
        if let Some(row) = rows.iter().find(|row| row.len() != columns.len()) {
            return Err(EngineError::Upstream(format!(
                "Trino row has {} values for {} columns",
                row.len(),
                columns.len()
            )));
        }
        Ok(TrinoTable { columns, rows })
    }

    pub fn rows(&self) -> &[Vec<Value>] {
        &self.rows
    }

    /// The column called `name` (case-insensitive, as Trino lower-cases).
    pub fn column(&self, name: &str) -> Result<ColumnRef<'_>, EngineError> {
        self.columns
            .iter()
            .enumerate()
            .find(|(_, c)| c.name.eq_ignore_ascii_case(name))
            .map(|(index, c)| ColumnRef {
                index,
                name: &c.name,
                ty: &c.ty,
            })
            .ok_or_else(|| EngineError::Upstream(format!("Trino result has no column {name:?}")))
    }

    /// An integer from bigint/integer (JSON numbers), decimal (string,
    /// floored) or timestamp (string, epoch milliseconds) columns.
    pub fn int(row: &[Value], column: ColumnRef<'_>) -> Result<i64, EngineError> {
        let value = &row[column.index];
        let bad = |why: &str| {
            EngineError::Upstream(format!(
                "Trino column {} ({}) value {value}: {why}",
                column.name, column.ty
            ))
        };
        match value {
            Value::Number(n) => n.as_i64().ok_or_else(|| bad("not a 64-bit integer")),
            Value::String(text) if column.ty.starts_with("decimal") => {
                parse_decimal_floor(text).ok_or_else(|| bad("not a decimal within 64 bits"))
            }
            Value::String(text) if column.ty.starts_with("timestamp") => {
                parse_timestamp_ms(text).ok_or_else(|| bad("not a timestamp"))
            }
            Value::String(text) => text.parse().map_err(|_| bad("not an integer")),
            Value::Null => Err(bad("unexpected NULL")),
            _ => Err(bad("not an integer")),
        }
    }

    /// A string from varchar/char columns.
    pub fn text(row: &[Value], column: ColumnRef<'_>) -> Result<String, EngineError> {
        match &row[column.index] {
            Value::String(text) => Ok(text.clone()),
            Value::Number(n) => Ok(n.to_string()),
            other => Err(EngineError::Upstream(format!(
                "Trino column {} ({}) value {other}: not text",
                column.name, column.ty
            ))),
        }
    }
}

/// Trino encodes `decimal(p, s)` as a string such as `"-12.50"`; the
/// integer part, floored (reports are integers; amounts round down).
pub fn parse_decimal_floor(text: &str) -> Option<i64> {
    let text = text.trim();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let mut value: i128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let has_fraction = fraction.bytes().any(|b| b != b'0');
    if negative {
        value = -value - i128::from(has_fraction);
    }
    i64::try_from(value).ok()
}

/// Trino encodes `timestamp(p)` as `"2024-05-01 12:00:00.000"` and
/// `timestamp(p) with time zone` with a trailing ` UTC` or ` +02:00`; epoch
/// milliseconds (a missing zone is UTC; named zones other than UTC are refused).
pub fn parse_timestamp_ms(text: &str) -> Option<i64> {
    let text = text.trim();
    let (local, offset_ms) = match text.rsplit_once(' ') {
        Some((local, zone)) if local.contains(' ') => (local, zone_offset_ms(zone)?),
        _ => (text, 0),
    };
    let naive = NaiveDateTime::parse_from_str(local, "%Y-%m-%d %H:%M:%S%.f").ok()?;
    Some(naive.and_utc().timestamp_millis() - offset_ms)
}

fn zone_offset_ms(zone: &str) -> Option<i64> {
    if matches!(zone, "UTC" | "Z" | "GMT") {
        return Some(0);
    }
    let sign = match zone.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (hours, minutes) = zone[1..].split_once(':')?;
    let hours: i64 = hours.parse().ok()?;
    let minutes: i64 = minutes.parse().ok()?;
    Some(sign * (hours * 3_600_000 + minutes * 60_000))
}

#[async_trait]
impl ReportEngine for TrinoEngine {
    fn name(&self) -> &'static str {
        "trino"
    }

    async fn royalties(
        &self,
        window: Window,
        license_holder: Option<&str>,
    ) -> Result<Vec<RoyaltyRow>, EngineError> {
        let statement = self
            .tables
            .royalties(window.from_ms(), window.to_ms(), license_holder);
        let table = self.query(&statement).await?;
        let holder = table.column("license_holder_id")?;
        let video = table.column("video_id")?;
        let sessions = table.column("sessions")?;
        let viewers = table.column("viewers")?;
        let watch = table.column("watch_ms")?;
        let rate = table.column("rate_micros_per_hour")?;
        let rows = table
            .rows()
            .iter()
            .map(|row| {
                Ok(RoyaltyAggregate {
                    license_holder_id: TrinoTable::text(row, holder)?,
                    video_id: TrinoTable::text(row, video)?,
                    sessions: TrinoTable::int(row, sessions)?,
                    viewers: TrinoTable::int(row, viewers)?,
                    watch_ms: TrinoTable::int(row, watch)?,
                    rate_micros_per_hour: TrinoTable::int(row, rate)?,
                })
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        finish_royalties(rows)
    }

    async fn impressions(
        &self,
        window: Window,
        advertiser: Option<&str>,
    ) -> Result<Vec<ImpressionRow>, EngineError> {
        let statement = self
            .tables
            .impressions(window.from_ms(), window.to_ms(), advertiser);
        let table = self.query(&statement).await?;
        let advertiser = table.column("advertiser_id")?;
        let campaign = table.column("campaign_id")?;
        let ad = table.column("ad_id")?;
        let impressions = table.column("impressions")?;
        let viewers = table.column("viewers")?;
        let rows = table
            .rows()
            .iter()
            .map(|row| {
                Ok(ImpressionRow {
                    advertiser_id: TrinoTable::text(row, advertiser)?,
                    campaign_id: TrinoTable::text(row, campaign)?,
                    ad_id: TrinoTable::text(row, ad)?,
                    impressions: TrinoTable::int(row, impressions)?,
                    viewers: TrinoTable::int(row, viewers)?,
                })
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        Ok(finish_impressions(rows))
    }

    async fn concurrency(&self, spec: ConcurrencySpec) -> Result<Vec<ConcurrencyRow>, EngineError> {
        let statement = self
            .tables
            .concurrency(spec.window().from_ms(), spec.upper_ms());
        let table = self.query(&statement).await?;
        let user = table.column("user_id")?;
        let start = table.column("start_ms")?;
        let end = table.column("end_ms")?;
        let sessions = table
            .rows()
            .iter()
            .map(|row| {
                Ok((
                    TrinoTable::text(row, user)?,
                    TrinoTable::int(row, start)?,
                    TrinoTable::int(row, end)?,
                ))
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        Ok(spec.count(sessions))
    }

    async fn traffic(
        &self,
        window: Window,
        license_holder: Option<&str>,
    ) -> Result<Vec<TrafficRow>, EngineError> {
        let statement = self
            .tables
            .traffic(window.from_ms(), window.to_ms(), license_holder);
        let table = self.query(&statement).await?;
        let hour = table.column("hour_start_ms")?;
        let holder = table.column("license_holder_id")?;
        let heartbeats = table.column("heartbeats")?;
        let devices = table.column("devices")?;
        let rows = table
            .rows()
            .iter()
            .map(|row| {
                Ok(TrafficRow {
                    hour_start_ms: TrinoTable::int(row, hour)?,
                    license_holder_id: TrinoTable::text(row, holder)?,
                    heartbeats: TrinoTable::int(row, heartbeats)?,
                    devices: TrinoTable::int(row, devices)?,
                })
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        Ok(finish_traffic(rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_floor_to_integers() {
        assert_eq!(parse_decimal_floor("12"), Some(12));
        assert_eq!(parse_decimal_floor("12.999"), Some(12));
        assert_eq!(parse_decimal_floor("-12.5"), Some(-13));
        assert_eq!(parse_decimal_floor("-12.000"), Some(-12));
        assert_eq!(parse_decimal_floor(".5"), Some(0));
        assert_eq!(parse_decimal_floor("9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_decimal_floor("9223372036854775808"), None);
        assert_eq!(parse_decimal_floor("1e3"), None);
        assert_eq!(parse_decimal_floor(""), None);
    }

    #[test]
    fn timestamps_parse_with_and_without_zone() {
        let base = 1_714_564_800_000; // 2024-05-01T12:00:00Z
        assert_eq!(parse_timestamp_ms("2024-05-01 12:00:00.000"), Some(base));
        assert_eq!(
            parse_timestamp_ms("2024-05-01 12:00:00.250 UTC"),
            Some(base + 250)
        );
        assert_eq!(parse_timestamp_ms("2024-05-01 14:00:00 +02:00"), Some(base));
        assert_eq!(
            parse_timestamp_ms("2024-05-01 10:30:00.000 -01:30"),
            Some(base)
        );
        assert_eq!(parse_timestamp_ms("2024-05-01 12:00:00 Europe/Paris"), None);
        assert_eq!(parse_timestamp_ms("yesterday"), None);
    }

    #[test]
    fn failures_map_by_what_the_caller_can_do() {
        let error = |name: &str, ty: &str| QueryError {
            message: "m".into(),
            sql_state: None,
            error_code: 1,
            error_name: name.into(),
            error_type: ty.into(),
            error_location: None,
            failure_info: None,
        };
        assert!(matches!(
            map_query_error(&error("TABLE_NOT_FOUND", "USER_ERROR")),
            EngineError::Upstream(_)
        ));
        assert!(matches!(
            map_query_error(&error("PERMISSION_DENIED", "USER_ERROR")),
            EngineError::Upstream(_)
        ));
        assert!(matches!(
            map_query_error(&error("SYNTAX_ERROR", "USER_ERROR")),
            EngineError::Internal(_)
        ));
        assert!(matches!(
            map_query_error(&error(
                "EXCEEDED_GLOBAL_MEMORY_LIMIT",
                "INSUFFICIENT_RESOURCES"
            )),
            EngineError::Unavailable(_)
        ));
        assert!(matches!(
            map_query_error(&error("GENERIC_INTERNAL_ERROR", "INTERNAL_ERROR")),
            EngineError::Upstream(_)
        ));
    }
}
