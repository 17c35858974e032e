//! A fresh PostgreSQL database per test, dropped afterwards, on the server
//! [`admin_url`] finds or starts: `HB_TEST_POSTGRES`, else the machine's
//! server on 127.0.0.1:5432, else a throw-away one under `target/`.

use crate::local::answers;
use anyhow::Context as _;
use sqlx::{Connection, PgConnection, PgPool};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the tests look for the machine's PostgreSQL (trust auth).
pub const MACHINE_POSTGRES: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5432);

/// Where the throw-away server listens: one port for the whole machine, so
/// every test process (and the next `cargo test`) shares one server.
pub const TEST_POSTGRES: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 15432);

/// The Debian package with `initdb` and `pg_ctl`.
pub const POSTGRES_PACKAGE: &str = "postgresql";

/// Where Debian's packages install the server programs, one directory per
/// major version.
const POSTGRES_LIB: &str = "/usr/lib/postgresql";

/// The throw-away server's home: `<workspace>/target/hb-postgres`, with its
/// cluster in `data/` and its log in `postgres.log`. Stop it with
/// `pg_ctl -D target/hb-postgres/data stop` (as the `postgres` user when
/// root started it).
pub fn postgres_dir() -> PathBuf {
    crate::local::target_dir("hb-postgres")
}

/// Admin URL (a superuser, trust auth) of the PostgreSQL server for tests,
/// found or started here:
///
/// 1. `HB_TEST_POSTGRES` when set;
/// 2. else the machine's server on [`MACHINE_POSTGRES`] when it answers;
/// 3. else the throw-away server on [`TEST_POSTGRES`], started when it does
///    not answer: the cluster in [`postgres_dir`] (made by `initdb` when
///    absent) run by `pg_ctl`, both from `PATH`, else from the newest
///    `/usr/lib/postgresql/*/bin`. As root, both run as the `postgres`
///    system user, since `initdb` refuses root. One process of the machine
///    starts it; the others wait and share it.
///
/// An error says how to get a server; tests fail with it rather than skip.
pub async fn admin_url() -> anyhow::Result<String> {
    tokio::task::spawn_blocking(|| {
        // One search at a time in this process; other processes take the lock.
        static SEARCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = SEARCH
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match std::env::var("HB_TEST_POSTGRES") {
            Ok(url) => Ok(url),
            Err(_) => find_or_start(MACHINE_POSTGRES, TEST_POSTGRES, &search_dirs()),
        }
    })
    .await?
}

fn admin_url_of(addr: SocketAddr) -> String {
    format!("postgres://postgres@{addr}/postgres")
}

/// The machine's server at `machine` when it answers, else the throw-away
/// one at `throwaway`, started with the programs of `dirs` when it does not
/// answer.
fn find_or_start(
    machine: SocketAddr,
    throwaway: SocketAddr,
    dirs: &[PathBuf],
) -> anyhow::Result<String> {
    if answers(machine) {
        return Ok(admin_url_of(machine));
    }
    let dir = postgres_dir();
    let started = ServerPrograms::find(dirs)
        .and_then(|programs| {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            crate::local::once_across_processes(
                &dir.join("start.lock"),
                Duration::from_secs(120),
                "starting PostgreSQL",
                || answers(throwaway).then_some(()),
                || programs.start(&dir, throwaway),
            )
        })
        .map_err(|cause| {
            anyhow::anyhow!(
                "no PostgreSQL for the tests: nothing answers on {machine} and \
                 no throw-away server on {throwaway}: {cause:#}\n\
                 Get one with any of: Debian's `{POSTGRES_PACKAGE}` package \
                 (`apt-get install {POSTGRES_PACKAGE}`), whose initdb and pg_ctl the tests \
                 use to start a server on {throwaway} in {}; a server on {machine} with \
                 trust auth for the user postgres; or HB_TEST_POSTGRES naming the admin \
                 URL of a server, e.g. {}",
                dir.display(),
                admin_url_of(machine)
            )
        });
    started.map(|()| admin_url_of(throwaway))
}

/// `PATH`, then Debian's server directories, newest version first.
fn search_dirs() -> Vec<PathBuf> {
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(POSTGRES_LIB)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    let mut dirs = crate::local::path_dirs();
    dirs.extend(versions.into_iter().map(|(_, bin)| bin));
    dirs
}

/// `initdb` and `pg_ctl` of one installation.
#[derive(Debug)]
struct ServerPrograms {
    initdb: PathBuf,
    pg_ctl: PathBuf,
}

impl ServerPrograms {
    /// The first of `dirs` with both programs.
    fn find(dirs: &[PathBuf]) -> anyhow::Result<ServerPrograms> {
        dirs.iter()
            .map(|dir| ServerPrograms {
                initdb: dir.join("initdb"),
                pg_ctl: dir.join("pg_ctl"),
            })
            .find(|programs| programs.initdb.is_file() && programs.pg_ctl.is_file())
            .with_context(|| {
                format!(
                    "no initdb and pg_ctl on PATH nor in {POSTGRES_LIB}/*/bin \
                     (Debian's `{POSTGRES_PACKAGE}` package has them)"
                )
            })
    }

    /// Starts the cluster in `dir/data` on `addr` (making it first when
    /// absent) and waits until it accepts connections.
    fn start(&self, dir: &Path, addr: SocketAddr) -> anyhow::Result<()> {
        let as_postgres = runs_as_root()?;
        if as_postgres {
            crate::local::run(
                std::process::Command::new("chown")
                    .arg("postgres:")
                    .arg(dir),
            )?;
        }
        let data = dir.join("data");
        if !data.is_dir() {
            // Made aside and renamed when complete: an initdb cut off leaves
            // no cluster that looks whole.
            let fresh = dir.join("data.initdb");
            if fresh.exists() {
                std::fs::remove_dir_all(&fresh)
                    .with_context(|| format!("removing {}", fresh.display()))?;
            }
            crate::local::run(
                self.command(&self.initdb, dir, as_postgres)
                    .arg("-D")
                    .arg(&fresh)
                    .args(["-U", "postgres", "--auth=trust"])
                    .args(["-E", "UTF8", "--locale=C", "--no-sync"]),
            )
            .with_context(|| {
                if as_postgres {
                    format!(
                        "initdb runs as the user postgres (it refuses root), \
                         which needs to reach and write {}",
                        dir.display()
                    )
                } else {
                    "initdb".to_string()
                }
            })?;
            std::fs::rename(&fresh, &data)
                .with_context(|| format!("renaming {} to data", fresh.display()))?;
        }
        let log = dir.join("postgres.log");
        // No Unix socket: the tests connect over TCP, and a socket path under
        // a deep checkout can exceed the 107 bytes a socket address holds.
        // fsync off: nothing on a throw-away server outlives a crash.
        let options = format!(
            "-p {} -k '' -c listen_addresses={} -c fsync=off",
            addr.port(),
            addr.ip()
        );
        let started = crate::local::run(
            self.command(&self.pg_ctl, dir, as_postgres)
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "60", "-o", &options, "start"]),
        );
        if started.is_err() {
            // Another checkout's server may have won the port and be starting.
            std::thread::sleep(Duration::from_millis(500));
        }
        if answers(addr) {
            // Ours, or another checkout's that won the port: either serves.
            return Ok(());
        }
        started.with_context(|| format!("starting PostgreSQL (log: {})", log.display()))?;
        anyhow::bail!(
            "pg_ctl started PostgreSQL but nothing answers on {addr} (log: {})",
            log.display()
        )
    }

    /// `program` run in `dir`, as the user postgres when `as_postgres`, in
    /// its own process group so that a Ctrl-C of one test run leaves the
    /// server the others share alone.
    fn command(&self, program: &Path, dir: &Path, as_postgres: bool) -> std::process::Command {
        use std::os::unix::process::CommandExt as _;
        let mut command = if as_postgres {
            let mut runuser = std::process::Command::new("runuser");
            runuser.args(["-u", "postgres", "--"]).arg(program);
            runuser
        } else {
            std::process::Command::new(program)
        };
        command.current_dir(dir).process_group(0);
        command
    }
}

/// True when this process's effective user is root.
fn runs_as_root() -> anyhow::Result<bool> {
    let output = std::process::Command::new("id")
        .arg("-u")
        .output()
        .context("running id -u")?;
    Ok(String::from_utf8_lossy(&output.stdout).trim() == "0")
}

/// A database created for one test; dropped (with its connections) on drop.
pub struct TestDb {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl TestDb {
    /// Creates `hb_test_<random>` and migrates it.
    pub async fn create() -> anyhow::Result<(TestDb, PgPool)> {
        let db = TestDb::create_empty().await?;
        let pool = hb_common::store::open_postgres(&db.url, 8).await?;
        Ok((db, pool))
    }

    /// Creates `hb_test_<random>` with nothing in it (not migrated), for
    /// tests of what the first start on a fresh database does.
    pub async fn create_empty() -> anyhow::Result<TestDb> {
        let admin_url = admin_url().await?;
        let name = format!(
            "hb_test_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos()
                % 1_000_000_000_000
        );
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .with_context(|| format!("connecting to the test server {admin_url}"))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        let base = admin_url
            .rsplit_once('/')
            .map(|(base, _)| base.to_string())
            .unwrap_or(admin_url.clone());
        let url = format!("{base}/{name}");
        Ok(TestDb {
            name,
            url,
            admin_url,
        })
    }
}

impl TestDb {
    /// Terminates every connection to this database but the one asking, as
    /// a server restart or failover would; returns how many were cut.
    pub async fn cut_connections(&self) -> anyhow::Result<i64> {
        let mut admin = PgConnection::connect(&self.url).await?;
        let cut = sqlx::query_scalar(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_one(&mut admin)
        .await?;
        admin.close().await?;
        Ok(cut)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                }
            });
        })
        .join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An address nothing listens on.
    fn closed_port() -> SocketAddr {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
    }

    #[test]
    fn a_server_answering_on_the_machines_port_is_used_as_it_is() {
        let machine = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
        let machine = machine.local_addr().expect("its address");

        let url = find_or_start(machine, closed_port(), &[]).expect("the machine's server");

        assert_eq!(url, format!("postgres://postgres@{machine}/postgres"));
    }

    #[test]
    fn without_initdb_the_error_names_the_debian_package_and_hb_test_postgres() {
        let error = find_or_start(closed_port(), closed_port(), &[PathBuf::from("/nowhere")])
            .expect_err("no server and nothing to start one with");

        let message = format!("{error:#}");
        assert!(message.contains("apt-get install postgresql"), "{message}");
        assert!(message.contains("HB_TEST_POSTGRES"), "{message}");
    }

    #[tokio::test]
    async fn without_a_server_on_the_machines_port_the_tests_start_one_and_use_it() {
        let dirs = search_dirs();
        if let Err(missing) = ServerPrograms::find(&dirs) {
            // Nothing to start a server with here: the message says what to install.
            assert!(format!("{missing:#}").contains(POSTGRES_PACKAGE));
            return;
        }

        let url =
            tokio::task::spawn_blocking(move || find_or_start(closed_port(), TEST_POSTGRES, &dirs))
                .await
                .expect("the search")
                .expect("a started server");

        assert_eq!(url, admin_url_of(TEST_POSTGRES));
        let mut admin = PgConnection::connect(&url).await.expect("connect");
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut admin)
            .await
            .expect("a query");
        assert_eq!(one, 1);
    }
}
