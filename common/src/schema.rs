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
        .connect_with(options)
        .await?;
    migrate_sqlite(&pool).await?;
    Ok(pool)
}

/// Connects to PostgreSQL/YugabyteDB at `url` and migrates it.
pub async fn open_postgres(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await?;
    migrate_postgres(&pool).await?;
    Ok(pool)
}
