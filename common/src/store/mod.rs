//! The sessions store, one layer for svc-stream's writer and svc-query's
//! reader: where it is ([`StoreSettings`]), opening and migrating it
//! ([`open_sqlite`], [`open_postgres`]), what its errors call for
//! ([`classify`]), the tables and columns both sides name ([`columns`]),
//! erasing a user's rows ([`erase`]),
//! the stored form of its rows ([`rows`]), statements with typed values run
//! on either engine ([`Store`], [`Statement`]), and PostgreSQL's binary COPY
//! ([`pg_copy`]).
//!
//! Both engines run the same SQL text: integer epoch milliseconds, TEXT
//! ids, `$n` placeholders, `ON CONFLICT` upserts, all accepted by SQLite,
//! PostgreSQL and YugabyteDB's YSQL.

pub mod columns;
pub mod erase;
mod error;
mod migrations;
mod open;
pub mod pg_copy;
pub mod rows;
mod statement;

pub use error::{classify, classify_sqlite, connection_lost, Failure};
pub use open::{
    migrate_postgres, migrate_sqlite, open_postgres, open_sqlite, open_sqlite_for_reports,
    PING_IDLE_AFTER, SQLITE_FILE, SQLITE_MMAP_BYTES,
};
pub use statement::{prepare_bound, Param, Statement};

use anyhow::Context as _;
use futures::TryStreamExt as _;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{Arguments as _, Database, Encode, FromRow, PgPool, Postgres, Sqlite, SqlitePool, Type};
use std::path::PathBuf;

/// Where the sessions store is: YugabyteDB (PostgreSQL) when a URL is set,
/// else the SQLite file in the data directory. Shared by every service
/// that opens the store.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct StoreSettings {
    /// Directory of the embedded store (SQLite file), used when no YugabyteDB URL is set.
    #[arg(long, env = "HB_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// PostgreSQL URL of YugabyteDB's YSQL; unset means the embedded SQLite file.
    #[arg(long, env = "HB_YUGABYTE_URL", hide_env_values = true)]
    pub yugabyte_url: Option<String>,
}

impl Default for StoreSettings {
    /// The documented defaults, without reading the environment.
    fn default() -> StoreSettings {
        StoreSettings {
            data_dir: PathBuf::from("./data"),
            yugabyte_url: None,
        }
    }
}

/// A connection pool to the sessions store, on one of its two engines.
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A row type both engines decode.
pub trait StoredRow:
    for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{
}

impl<T> StoredRow for T where
    T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{
}

impl Store {
    /// Opens the store `settings` name for report reads (see
    /// [`open_sqlite_for_reports`]) and runs the shared migrations.
    pub async fn open_for_reports(
        settings: &StoreSettings,
        max_connections: u32,
    ) -> anyhow::Result<Store> {
        match &settings.yugabyte_url {
            Some(url) => {
                let pool = open_postgres(url, max_connections)
                    .await
                    .context("connecting to the YugabyteDB/PostgreSQL sessions store")?;
                Ok(Store::Postgres(pool))
            }
            None => {
                let pool = open_sqlite_for_reports(&settings.data_dir, max_connections)
                    .await
                    .with_context(|| {
                        format!(
                            "opening the embedded store in {}",
                            settings.data_dir.display()
                        )
                    })?;
                Ok(Store::Sqlite(pool))
            }
        }
    }

    /// `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Runs `statement` and decodes every row. On PostgreSQL the statement
    /// stays prepared on the connection, for statements whose plan does not
    /// depend on the values (point look-ups).
    pub async fn fetch_all<T: StoredRow>(
        &self,
        statement: &Statement,
    ) -> Result<Vec<T>, sqlx::Error> {
        self.fetch(statement, true).await
    }

    /// Like [`Store::fetch_all`], planned for its own values on every run:
    /// on PostgreSQL a prepared statement switches to one generic plan after
    /// five runs, and a report's best plan depends on its period. SQLite
    /// plans without looking at bound values and keeps it prepared.
    pub async fn fetch_all_replanned<T: StoredRow>(
        &self,
        statement: &Statement,
    ) -> Result<Vec<T>, sqlx::Error> {
        self.fetch(statement, false).await
    }

    async fn fetch<T: StoredRow>(
        &self,
        statement: &Statement,
        prepared: bool,
    ) -> Result<Vec<T>, sqlx::Error> {
        match self {
            Store::Sqlite(pool) => {
                sqlx::query_as_with(&statement.sql, arguments::<Sqlite>(&statement.params)?)
                    .fetch_all(pool)
                    .await
            }
            Store::Postgres(pool) => {
                sqlx::query_as_with(&statement.sql, arguments::<Postgres>(&statement.params)?)
                    .persistent(prepared)
                    .fetch_all(pool)
                    .await
            }
        }
    }

    /// Runs `statement` and hands each row to `each` as it arrives, without
    /// holding them all.
    pub async fn fetch_each<T: StoredRow, E: From<sqlx::Error>>(
        &self,
        statement: &Statement,
        mut each: impl FnMut(T) -> Result<(), E> + Send,
    ) -> Result<(), E> {
        match self {
            Store::Sqlite(pool) => {
                let mut rows =
                    sqlx::query_as_with(&statement.sql, arguments::<Sqlite>(&statement.params)?)
                        .fetch(pool);
                while let Some(row) = rows.try_next().await? {
                    each(row)?;
                }
            }
            Store::Postgres(pool) => {
                let mut rows =
                    sqlx::query_as_with(&statement.sql, arguments::<Postgres>(&statement.params)?)
                        .fetch(pool);
                while let Some(row) = rows.try_next().await? {
                    each(row)?;
                }
            }
        }
        Ok(())
    }

    /// Starts a transaction that writes. On SQLite it takes the write lock
    /// at once (`BEGIN IMMEDIATE`, waiting up to the busy timeout): a
    /// deferred transaction that reads first and then writes fails at once
    /// with "database is locked" when the stream's writer committed in
    /// between, since its snapshot is then stale.
    pub async fn begin(&self) -> Result<Transaction, sqlx::Error> {
        Ok(match self {
            Store::Sqlite(pool) => Transaction::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
            Store::Postgres(pool) => Transaction::Postgres(pool.begin().await?),
        })
    }

    /// A trivial round trip, for readiness.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        self.fetch_all::<(i32,)>(&Statement::new("SELECT 1", Vec::new()))
            .await
            .map(|_| ())
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        match self {
            Store::Sqlite(pool) => pool.close().await,
            Store::Postgres(pool) => pool.close().await,
        }
    }
}

/// A transaction on the store: all of its statements commit, or none.
pub enum Transaction {
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    Postgres(sqlx::Transaction<'static, Postgres>),
}

impl Transaction {
    /// Runs `statement`; returns the rows it changed.
    pub async fn execute(&mut self, statement: &Statement) -> Result<u64, sqlx::Error> {
        let done = match self {
            Transaction::Sqlite(tx) => {
                sqlx::query_with(&statement.sql, arguments::<Sqlite>(&statement.params)?)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected()
            }
            Transaction::Postgres(tx) => {
                sqlx::query_with(&statement.sql, arguments::<Postgres>(&statement.params)?)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected()
            }
        };
        Ok(done)
    }

    /// Runs `statement` and decodes every row.
    pub async fn fetch_all<T: StoredRow>(
        &mut self,
        statement: &Statement,
    ) -> Result<Vec<T>, sqlx::Error> {
        match self {
            Transaction::Sqlite(tx) => {
                sqlx::query_as_with(&statement.sql, arguments::<Sqlite>(&statement.params)?)
                    .fetch_all(&mut **tx)
                    .await
            }
            Transaction::Postgres(tx) => {
                sqlx::query_as_with(&statement.sql, arguments::<Postgres>(&statement.params)?)
                    .fetch_all(&mut **tx)
                    .await
            }
        }
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Transaction::Sqlite(tx) => tx.commit().await,
            Transaction::Postgres(tx) => tx.commit().await,
        }
    }
}

/// `params` as one engine's bound arguments.
fn arguments<'q, DB>(params: &'q [Param]) -> Result<DB::Arguments<'q>, sqlx::Error>
where
    DB: Database,
    i64: Encode<'q, DB> + Type<DB>,
    i32: Encode<'q, DB> + Type<DB>,
    bool: Encode<'q, DB> + Type<DB>,
    &'q str: Encode<'q, DB> + Type<DB>,
{
    let mut arguments = DB::Arguments::<'q>::default();
    for param in params {
        match param {
            Param::Int(value) => arguments.add(*value),
            Param::Int4(value) => arguments.add(*value),
            Param::Bool(value) => arguments.add(*value),
            Param::Text(value) => arguments.add(value.as_str()),
        }
        .map_err(sqlx::Error::Encode)?;
    }
    Ok(arguments)
}

#[cfg(test)]
mod tests {
    use super::{open_sqlite, Param, Statement, Store, SQLITE_FILE};
    use std::time::Duration;

    /// An erasure reads the user's videos, then deletes: the stream's writer
    /// committing in between must not fail it with "database is locked".
    #[tokio::test]
    async fn a_transaction_that_reads_first_still_writes_when_another_connection_commits_meanwhile()
    {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Sqlite(open_sqlite(dir.path(), 2).await.unwrap());
        let mut tx = store.begin().await.unwrap();
        let before: Vec<(i64,)> = tx
            .fetch_all(&Statement::new("SELECT COUNT(*) FROM erasures", Vec::new()))
            .await
            .unwrap();
        assert_eq!(before, [(0,)]);
        // The writer's connection tries to commit while the transaction is
        // open: it waits for it (here it gives up after its short timeout).
        let writer = rusqlite::Connection::open(dir.path().join(SQLITE_FILE)).unwrap();
        writer.busy_timeout(Duration::from_millis(50)).unwrap();
        let _ = writer.execute(
            "INSERT INTO erasures (user_id, requested_by, requested_at_ms, raw_heartbeats, \
             sessions, ad_links, mirror_videos) VALUES ('w', 'writer', 0, 0, 0, 0, '[]')",
            [],
        );
        tx.execute(&Statement::new(
            "INSERT INTO erasures (user_id, requested_by, requested_at_ms, raw_heartbeats, \
             sessions, ad_links, mirror_videos) VALUES ($1, 'test', 0, 0, 0, 0, '[]')",
            vec![Param::Text("u".into())],
        ))
        .await
        .expect("the transaction holds the write lock from its start");
        tx.commit().await.unwrap();
    }
}
