//! A fresh PostgreSQL database per test, dropped afterwards. The server comes
//! from `HB_TEST_POSTGRES` (default the local trust-auth
//! `postgres://postgres@127.0.0.1:5432/postgres`).

use sqlx::{Connection, PgConnection, PgPool};

/// A database created for one test; dropped (with its connections) on drop.
pub struct TestDb {
    pub name: String,
    pub url: String,
    admin_url: String,
}

fn admin_url() -> String {
    std::env::var("HB_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
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
        let admin_url = admin_url();
        let name = format!(
            "hb_test_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos()
                % 1_000_000_000_000
        );
        let mut admin = PgConnection::connect(&admin_url).await?;
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
