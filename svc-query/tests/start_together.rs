//! Several svc-query processes (real OS processes of the built binary)
//! started at the same moment on a fresh store all come up, and the schema
//! they leave behind is complete: the migrations take turns instead of
//! racing in the catalog. PostgreSQL stands in for YugabyteDB, as in every
//! test; the embedded SQLite file gets the same treatment.

use hb_testkit::db::TestDb;
use sqlx::Connection as _;
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Processes started at once.
const PROCESSES: usize = 6;

/// Fresh databases, each started on by [`PROCESSES`] processes.
const ROUNDS: usize = 3;

/// Longest any one process may take to come up.
const PATIENCE: Duration = Duration::from_secs(30);

/// Tables the migrations create, one per concern, that reports need.
const TABLES: [&str; 10] = [
    "sessions",
    "session_ads",
    "videos",
    "ads",
    "stream_offsets",
    "raw_heartbeats",
    "dead_letters",
    "raw_hour_versions",
    "catalog_version",
    "traffic_hours",
];

/// A started svc-query, killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts svc-query on port-0 listeners against `store`: a PostgreSQL URL,
/// else the SQLite file in `data_dir`.
fn start(store_url: Option<&str>, data_dir: &Path) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_svc-query"));
    for variable in [
        "HB_YUGABYTE_URL",
        "HB_TRINO_URL",
        "HB_AUTH_SECRET",
        "HB_TLS_CERT",
        "HB_TLS_KEY",
        "RUST_LOG",
    ] {
        command.env_remove(variable);
    }
    if let Some(url) = store_url {
        command.env("HB_YUGABYTE_URL", url);
    }
    command
        .env("HB_DATA_DIR", data_dir)
        .env("HB_QUERY_HTTP_ADDR", "127.0.0.1:0")
        .env("HB_QUERY_GRPC_ADDR", "127.0.0.1:0")
        .env("HB_QUERY_METRICS_ADDR", "127.0.0.1:0")
        .env("HB_LOG", "info")
        .env("HB_LOG_FORMAT", "text")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    Process(command.spawn().expect("svc-query starts"))
}

/// Starts [`PROCESSES`] at once and waits until each logs that it listens;
/// panics with the log of any that exits (or hangs) instead.
fn start_all_at_once(store_url: Option<&str>, data_dir: &Path) -> Vec<Process> {
    let mut processes: Vec<Process> = (0..PROCESSES).map(|_| start(store_url, data_dir)).collect();
    let (up_tx, up_rx) = mpsc::channel();
    for (index, process) in processes.iter_mut().enumerate() {
        let stderr = process.0.stderr.take().expect("piped stderr");
        let up_tx = up_tx.clone();
        std::thread::spawn(move || {
            let mut log = String::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log.push_str(&line);
                log.push('\n');
                if line.contains("svc-query listening") {
                    let _ = up_tx.send((index, Ok(())));
                    // Keep draining so the process never blocks on a full pipe.
                    continue;
                }
            }
            let _ = up_tx.send((index, Err(log)));
        });
    }
    drop(up_tx);
    let mut up = [false; PROCESSES];
    while up.iter().any(|up| !up) {
        let (index, outcome) = up_rx
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("a process neither came up nor exited within {PATIENCE:?}"));
        match outcome {
            Ok(()) => up[index] = true,
            Err(_) if up[index] => {}
            Err(log) => {
                let status = processes[index].0.wait().expect("exit status");
                panic!(
                    "process {index} of {PROCESSES} exited ({status}) instead of serving:\n{log}"
                );
            }
        }
    }
    processes
}

/// Number of migration files shipped for `engine`.
fn migrations(engine: &str) -> i64 {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../common/migrations")
        .join(engine);
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter(|entry| {
            entry
                .as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count() as i64
}

#[tokio::test]
async fn six_processes_started_at_once_on_a_fresh_postgres_database_all_serve_on_a_complete_schema()
{
    let data_dir = tempfile::tempdir().expect("temp dir");
    for round in 0..ROUNDS {
        let db = TestDb::create_empty().await.expect("empty database");
        let url = db.url.clone();
        let dir = data_dir.path().to_path_buf();
        let processes = tokio::task::spawn_blocking(move || start_all_at_once(Some(&url), &dir))
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        drop(processes);

        let mut connection = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let applied: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
                .fetch_one(&mut connection)
                .await
                .unwrap();
        assert_eq!(applied, migrations("postgres"), "round {round}");
        for table in TABLES {
            let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                .bind(table)
                .fetch_one(&mut connection)
                .await
                .unwrap();
            assert!(exists, "round {round}: table {table} missing");
        }
        connection.close().await.unwrap();
    }
}

#[tokio::test]
async fn six_processes_started_at_once_on_a_fresh_sqlite_file_all_serve_on_a_complete_schema() {
    for round in 0..ROUNDS {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let dir = data_dir.path().to_path_buf();
        let processes = tokio::task::spawn_blocking(move || start_all_at_once(None, &dir))
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        drop(processes);

        let file = data_dir.path().join(hb_common::store::SQLITE_FILE);
        let mut connection =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}", file.display()))
                .await
                .unwrap();
        let applied: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
                .fetch_one(&mut connection)
                .await
                .unwrap();
        assert_eq!(applied, migrations("sqlite"), "round {round}");
        for table in TABLES {
            let exists: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
            )
            .bind(table)
            .fetch_one(&mut connection)
            .await
            .unwrap();
            assert_eq!(exists, 1, "round {round}: table {table} missing");
        }
        connection.close().await.unwrap();
    }
}
