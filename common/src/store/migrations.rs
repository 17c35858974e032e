//! The migration files of each dialect, embedded at build time by
//! `build.rs`, as sqlx migrators.

use futures::future::BoxFuture;
use sqlx::error::BoxDynError;
use sqlx::migrate::{MigrateError, Migration, MigrationSource, MigrationType, Migrator};
use std::borrow::Cow;

include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// The PostgreSQL/YugabyteDB migrations (`migrations/postgres`).
pub async fn postgres() -> Result<Migrator, MigrateError> {
    Migrator::new(Embedded(POSTGRES)).await
}

/// The SQLite migrations (`migrations/sqlite`).
pub async fn sqlite() -> Result<Migrator, MigrateError> {
    Migrator::new(Embedded(SQLITE)).await
}

#[derive(Debug)]
struct Embedded(&'static [(i64, &'static str, &'static str)]);

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        let migrations = self
            .0
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    Cow::Borrowed(sql),
                    sql.starts_with("-- no-transaction"),
                )
            })
            .collect();
        Box::pin(std::future::ready(Ok(migrations)))
    }
}

#[cfg(test)]
mod tests {
    use sqlx::migrate::Migrator;
    use std::path::Path;

    /// The embedded migrations are what sqlx reads from the folders.
    #[tokio::test]
    async fn embedded_migrations_equal_the_folders_as_sqlx_reads_them() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        for (embedded, dialect) in [
            (super::postgres().await.unwrap(), "postgres"),
            (super::sqlite().await.unwrap(), "sqlite"),
        ] {
            let read = Migrator::new(root.join(dialect)).await.unwrap();
            let shape = |m: &Migrator| -> Vec<_> {
                m.iter()
                    .map(|m| {
                        (
                            m.version,
                            m.description.clone(),
                            m.checksum.clone(),
                            m.no_tx,
                        )
                    })
                    .collect()
            };
            assert_eq!(shape(&embedded), shape(&read), "{dialect}");
            assert!(embedded.iter().count() >= 10, "{dialect}");
        }
    }
}
