//! Opening the sessions store and migrating its schema (sessions, catalog,
//! offsets, raw mirror, dead letters): every service runs the migrations on
//! start.
//!
//! Any number of processes may start at once on a fresh database: see
//! [`migrate_postgres`] for how they take turns without advisory locks, and
//! [`migrate_sqlite`] for the embedded file. Migrations are also written to
//! be idempotent (`IF NOT EXISTS`), so a turn that was cut short is harmless.

use super::error::{classify, Failure};
use crate::progress::{Progress, Unit};
use sqlx::migrate::{Migrate, MigrateError, Migration, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection as _, Database, Executor as _, PgConnection, PgPool, Pool, SqlitePool};
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// Table whose single row serialises migrations between processes.
const MIGRATION_LOCK_TABLE: &str = "hb_migration_lock";

/// Attempts at migrating before a race-shaped error is reported.
const MIGRATION_ATTEMPTS: u32 = 20;

/// Runs the PostgreSQL/YugabyteDB migrations; any number of processes may
/// call this at once on a fresh database.
///
/// sqlx's own migration lock is a PostgreSQL advisory lock, which
/// YugabyteDB does not support, so it is off. Without a lock, concurrent
/// `CREATE TABLE IF NOT EXISTS` race inside PostgreSQL's catalog (the loser
/// fails with a unique violation on `pg_type`), and two migrators both apply
/// a version and collide on `_sqlx_migrations`. Instead, processes take
/// turns on a row lock, the portable stand-in for an advisory lock:
///
/// 1. `CREATE TABLE IF NOT EXISTS hb_migration_lock` and insert its one row
///    (`ON CONFLICT DO NOTHING`); the creation itself can race, which is
///    retried (below).
/// 2. On a dedicated connection, `BEGIN` and `SELECT … FOR UPDATE` that row:
///    whoever holds it migrates, the others wait.
/// 3. The migrator runs on the pool (another connection), reading which
///    versions are applied only once it holds the turn, so a process that
///    waited finds the work done.
/// 4. The turn ends with the lock transaction's commit, or when the process
///    dies: the server rolls back a connection's transaction when it closes.
///
/// Every attempt that fails with an error a concurrent start can cause
/// (SQLSTATE 23505 unique violation, 42P07 duplicate table, 42710 duplicate
/// object, 40001 serialisation failure, 40P01 deadlock, or a lost
/// connection) is retried from step 1 after a short random pause; the
/// retry re-reads the applied versions, so it never applies one twice.
///
/// On YugabyteDB: row locks with `SELECT … FOR UPDATE` are supported by
/// YSQL; a table, `INSERT … ON CONFLICT DO NOTHING` and `FOR UPDATE` is the
/// pattern YugabyteDB's engineers publish in place of advisory locks.
/// With wait-on-conflict (`enable_wait_queues`, the default of recent
/// releases) or READ COMMITTED isolation a second process waits for the row
/// like on PostgreSQL. With the older fail-on-conflict policy the waiter
/// instead fails at once with 40001 and retries (a spin lock with pauses);
/// there a waiter of higher priority may even abort the holder's lock
/// transaction, letting two migrators overlap: that is what the retry on
/// unique violations and duplicate objects, and the idempotent migrations,
/// are for. YugabyteDB's DDL-concurrency errors (catalog version mismatch)
/// are SQLSTATE 40001 too, and are retried the same way.
pub async fn migrate_postgres(pool: &PgPool) -> anyhow::Result<()> {
    let mut migrator = super::migrations::postgres().await?;
    migrator.set_locking(false);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match migrate_postgres_in_turn(pool, &migrator).await {
            Ok(()) => return Ok(()),
            Err(error) if attempt < MIGRATION_ATTEMPTS && concurrent_start_race(&error) => {
                tracing::debug!(%error, attempt, "migration raced another process; retrying");
                tokio::time::sleep(retry_pause(attempt)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// One attempt: takes the migration turn on a dedicated connection, runs
/// the migrator on `pool`, ends the turn.
async fn migrate_postgres_in_turn(pool: &PgPool, migrator: &Migrator) -> Result<(), MigrateError> {
    let mut lock_connection = PgConnection::connect_with(&pool.connect_options()).await?;
    let outcome = async {
        lock_connection
            .execute(
                format!(
                    "CREATE TABLE IF NOT EXISTS {MIGRATION_LOCK_TABLE} (id INTEGER PRIMARY KEY)"
                )
                .as_str(),
            )
            .await?;
        lock_connection
            .execute(
                format!(
                    "INSERT INTO {MIGRATION_LOCK_TABLE} (id) VALUES (1) ON CONFLICT (id) DO NOTHING"
                )
                .as_str(),
            )
            .await?;
        let mut turn = lock_connection.begin().await?;
        sqlx::query(&format!(
            "SELECT id FROM {MIGRATION_LOCK_TABLE} WHERE id = 1 FOR UPDATE"
        ))
        .fetch_one(&mut *turn)
        .await?;
        apply_pending(migrator, pool).await?;
        // The migrations are in; a failure to end the turn cleanly (a
        // YugabyteDB conflict that aborted the lock transaction, a cut
        // connection) changes nothing: closing the connection ends it too.
        let _ = turn.commit().await;
        Ok(())
    }
    .await;
    let _ = lock_connection.close().await;
    outcome
}

/// Whether `error` is one a concurrent start of another process can cause
/// (see [`migrate_postgres`]), so that trying again may succeed: a transient
/// error or a unique violation, or a table (42P07) or other object (42710)
/// another process created meanwhile.
fn concurrent_start_race(error: &MigrateError) -> bool {
    let error = match error {
        MigrateError::Execute(error) | MigrateError::ExecuteMigration(error, _) => error,
        _ => return false,
    };
    let duplicate_object = error
        .as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| matches!(&*code, "42P07" | "42710"));
    duplicate_object || matches!(classify(error), Failure::Unavailable | Failure::Conflict)
}

/// Pause before attempt `attempt + 1`: growing, capped at a second, and
/// random so that processes that collided do not collide again.
fn retry_pause(attempt: u32) -> Duration {
    let ceiling_ms = (25 * u64::from(attempt) * u64::from(attempt)).min(1_000);
    Duration::from_millis(rand::random_range(ceiling_ms / 2..=ceiling_ms))
}

/// Runs the SQLite migrations; any number of processes may call this at
/// once on the same file.
///
/// SQLite has no row locks to take turns on, and holding its write lock on
/// one connection would block the migrator's own. It needs none: its
/// schema changes are serialised by the database's write lock (a writer
/// waits up to the pool's busy timeout), and each migration is one
/// transaction. What can still collide is two processes applying the same
/// version (the loser's `_sqlx_migrations` insert violates the primary key)
/// or a transaction that read before another wrote (`SQLITE_BUSY`): the
/// loser rolls back, pauses and retries, re-reading the applied versions,
/// and finds the work done. Only execution errors are retried; a changed
/// or missing migration fails at once.
pub async fn migrate_sqlite(pool: &SqlitePool) -> anyhow::Result<()> {
    let migrator = super::migrations::sqlite().await?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match apply_pending(&migrator, pool).await {
            Ok(()) => return Ok(()),
            Err(MigrateError::Execute(_) | MigrateError::ExecuteMigration(..))
                if attempt < MIGRATION_ATTEMPTS =>
            {
                tokio::time::sleep(retry_pause(attempt)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Applies the migrations of `migrator` that `pool`'s database lacks, in
/// order, on one connection, showing which one runs ([`Progress`]: a
/// migration that rewrites a large table can take minutes) and logging each.
///
/// The steps are those of sqlx's `Migrator::run`, which has no hook between
/// migrations: create the bookkeeping table, refuse a dirty (half-applied)
/// version, a version applied here but no longer shipped, or a shipped
/// migration whose checksum changed, then apply the rest. Its lock is left
/// out: [`migrate_postgres`] takes its own turn, and SQLite's is a no-op.
async fn apply_pending<DB>(migrator: &Migrator, pool: &Pool<DB>) -> Result<(), MigrateError>
where
    DB: Database,
    DB::Connection: Migrate,
{
    let mut connection = pool.acquire().await?;
    let connection: &mut DB::Connection = &mut connection;
    connection.ensure_migrations_table().await?;
    if let Some(version) = connection.dirty_version().await? {
        return Err(MigrateError::Dirty(version));
    }
    let applied: HashMap<i64, _> = connection
        .list_applied_migrations()
        .await?
        .into_iter()
        .map(|applied| (applied.version, applied.checksum))
        .collect();
    if let Some(&gone) = applied.keys().find(|&&v| !migrator.version_exists(v)) {
        return Err(MigrateError::VersionMissing(gone));
    }
    let mut pending: Vec<&Migration> = Vec::new();
    for migration in migrator.iter() {
        if migration.migration_type.is_down_migration() {
            continue;
        }
        match applied.get(&migration.version) {
            Some(checksum) if *checksum != migration.checksum => {
                return Err(MigrateError::VersionMismatch(migration.version));
            }
            Some(_) => {}
            None => pending.push(migration),
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    let progress = Progress::start(
        "migrating the store",
        Some(pending.len() as u64),
        Unit::Count("migrations"),
    );
    for migration in pending {
        tracing::info!(
            version = migration.version,
            description = %migration.description,
            "applying migration"
        );
        progress.set_stage(format!("{} {}", migration.version, migration.description));
        connection.apply(migration).await?;
        progress.inc(1);
    }
    progress.finish();
    Ok(())
}

/// File name of the embedded store inside `HB_DATA_DIR`.
pub const SQLITE_FILE: &str = "hbmesh.db";

/// Address space SQLite may memory-map per connection for report reads
/// (virtual, not resident).
pub const SQLITE_MMAP_BYTES: u64 = 1 << 30;

/// Page cache of each pooled stream-stage connection, in KiB. Flushes go
/// through the writer's own connection (with the large cache); the pool only
/// scans (restore, late-lane corrections, erasures, the hourly expiry), which
/// re-read little. A cache stays as full as the connection ever filled it, so
/// a larger one is memory held for good after the first restore or expiry.
pub const SQLITE_POOL_CACHE_KIB: u32 = 16 * 1024;

/// Opens (creating if needed) the embedded store in `data_dir` and migrates
/// it, for the stream stage's reads (see [`SQLITE_POOL_CACHE_KIB`]).
pub async fn open_sqlite(data_dir: &Path, max_connections: u32) -> anyhow::Result<SqlitePool> {
    let options =
        sqlite_options(data_dir)?.pragma("cache_size", format!("-{SQLITE_POOL_CACHE_KIB}"));
    connect_sqlite(data_dir, options, max_connections).await
}

/// Like [`open_sqlite`], for the query service: report queries read many
/// pages per request and each pooled connection has its own page cache, so
/// the file is memory-mapped and shared instead of copied per connection.
pub async fn open_sqlite_for_reports(
    data_dir: &Path,
    max_connections: u32,
) -> anyhow::Result<SqlitePool> {
    let options = sqlite_options(data_dir)?
        .pragma("cache_size", "-65536")
        .pragma("mmap_size", SQLITE_MMAP_BYTES.to_string());
    connect_sqlite(data_dir, options, max_connections).await
}

/// WAL with `synchronous=FULL`: a commit is on disk when it returns, which
/// is what an embedded-tier ack promises.
fn sqlite_options(data_dir: &Path) -> anyhow::Result<SqliteConnectOptions> {
    let url = format!("sqlite://{}", data_dir.join(SQLITE_FILE).display());
    Ok(SqliteConnectOptions::from_str(&url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        .pragma("temp_store", "memory"))
}

async fn connect_sqlite(
    data_dir: &Path,
    options: SqliteConnectOptions,
    max_connections: u32,
) -> anyhow::Result<SqlitePool> {
    std::fs::create_dir_all(data_dir)?;
    // Turning a new file to WAL takes it whole, and SQLite answers "database
    // is locked" at once (no busy wait) when another process is doing the
    // same: processes starting together retry, as for the migrations.
    let mut attempt = 0;
    let pool = loop {
        attempt += 1;
        let connected = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            // A file cannot hang up; the ping is a trip to the connection's thread.
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await;
        match connected {
            Ok(pool) => break pool,
            Err(error)
                if classify(&error) == Failure::Unavailable && attempt < MIGRATION_ATTEMPTS =>
            {
                tokio::time::sleep(retry_pause(attempt)).await;
            }
            Err(error) => return Err(error.into()),
        }
    };
    migrate_sqlite(&pool).await?;
    Ok(pool)
}

/// Idle time after which a pooled PostgreSQL connection is pinged before use.
pub const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

/// Connects to PostgreSQL/YugabyteDB at `url` and migrates it.
pub async fn open_postgres(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(Duration::from_secs(10))
        // sqlx pings every connection it hands out by default: one more
        // round trip per query. A connection idle for a second or more is
        // still pinged, so one cut while the pool sat idle (a
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
    use super::{apply_pending, PING_IDLE_AFTER};
    use crate::store::connection_lost;
    use hb_testkit::db::TestDb;
    use sqlx::migrate::{MigrateError, Migrator};
    use sqlx::Connection as _;

    #[tokio::test]
    async fn eight_pools_migrating_one_fresh_database_at_once_all_succeed_with_every_version_once()
    {
        let db = TestDb::create_empty().await.unwrap();
        let starts: Vec<_> = (0..8)
            .map(|_| {
                let url = db.url.clone();
                tokio::spawn(async move { super::open_postgres(&url, 2).await })
            })
            .collect();
        for start in starts {
            start
                .await
                .unwrap()
                .expect("every start migrates or finds it done");
        }
        let mut connection = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let versions: Vec<i64> = sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&mut connection)
        .await
        .unwrap();
        let shipped: Vec<i64> = crate::store::migrations::postgres()
            .await
            .unwrap()
            .iter()
            .map(|m| m.version)
            .collect();
        assert_eq!(versions, shipped);
        connection.close().await.unwrap();
    }

    /// A one-connection in-memory SQLite database and a migrations folder.
    async fn scratch() -> (sqlx::SqlitePool, tempfile::TempDir) {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        (pool, tempfile::tempdir().unwrap())
    }

    async fn applied(pool: &sqlx::SqlitePool) -> Vec<i64> {
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn pending_migrations_are_applied_in_order_once() {
        let (pool, dir) = scratch().await;
        std::fs::write(
            dir.path().join("0001_first.sql"),
            "CREATE TABLE a (x INTEGER);",
        )
        .unwrap();
        let migrator = Migrator::new(dir.path()).await.unwrap();
        apply_pending(&migrator, &pool).await.unwrap();
        assert_eq!(applied(&pool).await, [1]);
        std::fs::write(
            dir.path().join("0002_second.sql"),
            "INSERT INTO a VALUES (1);",
        )
        .unwrap();
        let migrator = Migrator::new(dir.path()).await.unwrap();
        apply_pending(&migrator, &pool).await.unwrap();
        apply_pending(&migrator, &pool).await.unwrap();
        assert_eq!(applied(&pool).await, [1, 2]);
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM a")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(rows, 1, "the second migration ran once");
    }

    #[tokio::test]
    async fn a_changed_or_withdrawn_migration_is_refused_as_sqlx_would() {
        let (pool, dir) = scratch().await;
        let first = dir.path().join("0001_first.sql");
        std::fs::write(&first, "CREATE TABLE a (x INTEGER);").unwrap();
        std::fs::write(
            dir.path().join("0002_second.sql"),
            "CREATE TABLE b (x INTEGER);",
        )
        .unwrap();
        apply_pending(&Migrator::new(dir.path()).await.unwrap(), &pool)
            .await
            .unwrap();
        std::fs::write(&first, "CREATE TABLE a (y INTEGER);").unwrap();
        let changed = apply_pending(&Migrator::new(dir.path()).await.unwrap(), &pool).await;
        assert!(
            matches!(changed, Err(MigrateError::VersionMismatch(1))),
            "{changed:?}"
        );
        std::fs::remove_file(&first).unwrap();
        let withdrawn = apply_pending(&Migrator::new(dir.path()).await.unwrap(), &pool).await;
        assert!(
            matches!(withdrawn, Err(MigrateError::VersionMissing(1))),
            "{withdrawn:?}"
        );
    }

    #[tokio::test]
    async fn a_migration_waits_while_another_process_holds_the_turn() {
        let (db, _pool) = TestDb::create().await.unwrap();
        let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let mut turn = holder.begin().await.unwrap();
        sqlx::query("SELECT id FROM hb_migration_lock WHERE id = 1 FOR UPDATE")
            .fetch_one(&mut *turn)
            .await
            .unwrap();
        let url = db.url.clone();
        let mut waiter = tokio::spawn(async move { super::open_postgres(&url, 1).await });
        let waited = tokio::time::timeout(std::time::Duration::from_millis(500), &mut waiter).await;
        assert!(waited.is_err(), "migrated while another held the turn");
        turn.commit().await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("migrates once the turn is free")
            .unwrap()
            .expect("finds the work done");
        holder.close().await.unwrap();
    }

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
        assert!(connection_lost(&error), "{error:?}");
        // A bad statement is not a lost connection.
        let error = sqlx::query("SELECT * FROM no_such_table")
            .execute(&pool)
            .await
            .unwrap_err();
        assert!(!connection_lost(&error), "{error:?}");
        admin.close().await.unwrap();
    }
}
