//! The sessions store schema (sessions, catalog, offsets, raw mirror, dead
//! letters), shipped as migrations that every service runs on start.
//!
//! Locking is off: sqlx would take a PostgreSQL advisory lock, which
//! YugabyteDB does not support. Migrations are written to be idempotent
//! (`IF NOT EXISTS`), so two services starting together are harmless.

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// Runs the PostgreSQL/YugabyteDB migrations.
pub async fn migrate_postgres(pool: &PgPool) -> anyhow::Result<()> {
    let mut migrator = sqlx::migrate!("migrations/postgres");
    migrator.set_locking(false);
    migrator.run(pool).await?;
    Ok(())
}

/// Runs the SQLite migrations.
/// Two services opening the same file at once may race on the migrations
/// table; the loser retries and finds the work done.
pub async fn migrate_sqlite(pool: &SqlitePool) -> anyhow::Result<()> {
    let migrator = sqlx::migrate!("migrations/sqlite");
    let mut attempt = 0;
    loop {
        match migrator.run(pool).await {
            Ok(()) => return Ok(()),
            Err(_) if attempt < 5 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// File name of the embedded store inside `HB_DATA_DIR`.
pub const SQLITE_FILE: &str = "hbmesh.db";

/// Opens (creating if needed) the embedded store in `data_dir` and migrates it.
/// WAL with `synchronous=FULL`: a commit is on disk when it returns, which is
/// what an embedded-tier ack promises.
pub async fn open_sqlite(data_dir: &Path, max_connections: u32) -> anyhow::Result<SqlitePool> {
    std::fs::create_dir_all(data_dir)?;
    let url = format!("sqlite://{}", data_dir.join(SQLITE_FILE).display());
    let options = SqliteConnectOptions::from_str(&url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        .pragma("cache_size", "-262144")
        .pragma("temp_store", "memory");
    let pool = SqlitePoolOptions::new()
        .max_connections(max_connections.max(1))
        // A file cannot hang up; the ping is a trip to the connection's thread.
        .test_before_acquire(false)
        .connect_with(options)
        .await?;
    migrate_sqlite(&pool).await?;
    Ok(pool)
}

/// Whether `error` says the connection to the store was lost or refused
/// (so the same work may succeed on another connection, or later): an IO or
/// TLS failure, or a server's connection exception (SQLSTATE class 08) or
/// shutdown (57P01 admin, 57P02 crash, 57P03 cannot connect now), as a
/// restarted or failed-over PostgreSQL/YugabyteDB node sends.
pub fn connection_lost(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
    }
}

/// Idle time after which a pooled PostgreSQL connection is pinged before use.
pub const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

/// Connects to PostgreSQL/YugabyteDB at `url` and migrates it.
pub async fn open_postgres(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(Duration::from_secs(10))
        // sqlx pings every connection it hands out by default: one more
        // round trip per query (a progress look-up's p99 at 16 clients
        // 3.9-4.3 -> 3.2-3.4 ms without it). A connection idle for a second
        // or more is still pinged, so one cut while the pool sat idle (a
        // restarted server, a proxy's idle timeout) is replaced unseen;
        // one cut within the last second fails its query like a query in
        // flight at the cut would, with an error `connection_lost` knows.
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IDLE_AFTER {
                    sqlx::Connection::ping(connection).await?;
                }
                Ok(true)
            })
        })
        .connect(url)
        .await?;
    migrate_postgres(&pool).await?;
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use super::PING_IDLE_AFTER;
    use crate::testing::TestDb;
    use sqlx::Connection as _;

    #[tokio::test]
    async fn connections_the_server_cut_while_the_pool_sat_idle_are_replaced_unseen() {
        let (db, pool) = TestDb::create().await.unwrap();
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(pool.acquire().await.unwrap());
        }
        drop(held);
        let cut = db.cut_connections().await.unwrap();
        assert!(cut >= 4, "cut {cut} connections");
        tokio::time::sleep(PING_IDLE_AFTER + std::time::Duration::from_millis(100)).await;
        for _ in 0..8 {
            let one: i32 = sqlx::query_scalar("SELECT 1")
                .fetch_one(&pool)
                .await
                .expect("a connection idle a second is pinged before use");
            assert_eq!(one, 1);
        }
    }

    #[tokio::test]
    async fn a_query_on_a_connection_the_server_cut_fails_as_connection_lost() {
        let (db, pool) = TestDb::create().await.unwrap();
        let mut held = pool.acquire().await.unwrap();
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *held)
            .await
            .unwrap();
        let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(&mut admin)
            .await
            .unwrap();
        let error = sqlx::query("SELECT 1")
            .execute(&mut *held)
            .await
            .expect_err("the connection was cut");
        assert!(super::connection_lost(&error), "{error:?}");
        // A bad statement is not a lost connection.
        let error = sqlx::query("SELECT * FROM no_such_table")
            .execute(&pool)
            .await
            .unwrap_err();
        assert!(!super::connection_lost(&error), "{error:?}");
        admin.close().await.unwrap();
    }
}
