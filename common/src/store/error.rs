//! One reading of the store's errors, for sqlx (both engines) and rusqlite:
//! what the caller of a failed operation should do. The stream's writer
//! maps it to `SinkError`, the query service to `EngineError`, and the
//! migrations retry on it.

/// What a failed store operation calls for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Worth retrying later: the connection was lost or refused, the pool is
    /// exhausted or closed, a serialisation failure, deadlock or lock
    /// time-out, a server short of resources, a busy or locked SQLite file.
    Unavailable,
    /// The write collides with a row already stored (unique key).
    Conflict,
    /// Retrying will not help: a bad statement, a schema mismatch, bad data.
    Fatal,
}

/// What `error` calls for.
pub fn classify(error: &sqlx::Error) -> Failure {
    if connection_lost(error) {
        return Failure::Unavailable;
    }
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
            Failure::Unavailable
        }
        sqlx::Error::Database(db) => {
            let Some(code) = db.code() else {
                return Failure::Fatal;
            };
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                code.parse::<i32>().map_or(Failure::Fatal, sqlite_failure)
            } else {
                postgres_failure(&code)
            }
        }
        _ => Failure::Fatal,
    }
}

/// What a rusqlite `error` calls for (the same reading of SQLite's codes as
/// [`classify`]).
pub fn classify_sqlite(error: &rusqlite::Error) -> Failure {
    match error {
        rusqlite::Error::SqliteFailure(failure, _) => sqlite_failure(failure.extended_code),
        _ => Failure::Fatal,
    }
}

/// A PostgreSQL/YugabyteDB SQLSTATE: serialisation failure (40001, also
/// YugabyteDB's DDL catalog-version mismatch), deadlock (40P01), lock not
/// available (55P03) and class 53 (out of connections, memory, disk) are
/// transient; 23505 is a unique violation.
fn postgres_failure(code: &str) -> Failure {
    match code {
        "40001" | "40P01" | "55P03" => Failure::Unavailable,
        "23505" => Failure::Conflict,
        code if code.starts_with("53") => Failure::Unavailable,
        _ => Failure::Fatal,
    }
}

/// An SQLite result code, primary or extended: busy (5), locked (6) and
/// IO errors (10) are transient; a unique or primary-key constraint
/// (2067, 1555) is a conflict.
fn sqlite_failure(code: i32) -> Failure {
    match (code & 0xff, code) {
        (5 | 6 | 10, _) => Failure::Unavailable,
        (_, 2067 | 1555) => Failure::Conflict,
        _ => Failure::Fatal,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_codes_are_read_by_their_primary_code_and_unique_keys_conflict() {
        for busy in [5, 6, 261, 517, 10, 266] {
            assert_eq!(sqlite_failure(busy), Failure::Unavailable, "{busy}");
        }
        assert_eq!(sqlite_failure(2067), Failure::Conflict);
        assert_eq!(sqlite_failure(1555), Failure::Conflict);
        assert_eq!(sqlite_failure(1299), Failure::Fatal);
        assert_eq!(sqlite_failure(1), Failure::Fatal);
    }

    #[test]
    fn postgres_states_split_into_retry_conflict_and_fatal() {
        for transient in ["40001", "40P01", "55P03", "53300", "53100"] {
            assert_eq!(postgres_failure(transient), Failure::Unavailable);
        }
        assert_eq!(postgres_failure("23505"), Failure::Conflict);
        assert_eq!(postgres_failure("42P01"), Failure::Fatal);
    }

    #[test]
    fn a_closed_pool_is_unavailable_and_a_decoding_error_fatal() {
        assert_eq!(classify(&sqlx::Error::PoolClosed), Failure::Unavailable);
        assert_eq!(classify(&sqlx::Error::RowNotFound), Failure::Fatal);
        let busy = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(5), None);
        assert_eq!(classify_sqlite(&busy), Failure::Unavailable);
    }
}
