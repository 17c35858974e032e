//! Driver errors as [`SinkError`]s, split by what the caller should do:
//! `Unavailable` when retrying can succeed (the cluster's state), `Fatal` when
//! the statement, schema, credentials or config are wrong.

use scylla::errors::{
    DbError, ExecutionError, NewSessionError, NextPageError, NextRowError, PagerExecutionError,
    PrepareError, RequestAttemptError,
};

use crate::sink::SinkError;

pub(super) fn sink_error(context: &str, err: &dyn std::fmt::Display, transient: bool) -> SinkError {
    let message = format!("{context}: {err}");
    if transient {
        SinkError::Unavailable(message)
    } else {
        SinkError::Fatal(message)
    }
}

/// Errors a server sends. Transient: too few replicas, timeouts, overload,
/// rate limits, bootstrapping nodes, server-side failures. Permanent: the
/// statement, the schema, the credentials or the protocol are wrong.
fn db_error_is_transient(err: &DbError) -> bool {
    match err {
        DbError::SyntaxError
        | DbError::Invalid
        | DbError::AlreadyExists { .. }
        | DbError::FunctionFailure { .. }
        | DbError::AuthenticationError
        | DbError::Unauthorized
        | DbError::ConfigError
        | DbError::ProtocolError => false,
        DbError::Unavailable { .. }
        | DbError::Overloaded
        | DbError::IsBootstrapping
        | DbError::TruncateError
        | DbError::ReadTimeout { .. }
        | DbError::WriteTimeout { .. }
        | DbError::ReadFailure { .. }
        | DbError::WriteFailure { .. }
        | DbError::Unprepared { .. }
        | DbError::ServerError
        | DbError::RateLimitReached { .. }
        | DbError::Other(_) => true,
        // Unknown future codes: retrying an idempotent statement is harmless.
        _ => true,
    }
}

fn attempt_error_is_transient(err: &RequestAttemptError) -> bool {
    match err {
        RequestAttemptError::DbError(db_error, _) => db_error_is_transient(db_error),
        RequestAttemptError::UnableToAllocStreamId
        | RequestAttemptError::BrokenConnectionError(_) => true,
        // Bad values, unparsable frames, statement ids that changed under us:
        // retrying sends the same thing again.
        RequestAttemptError::SerializationError(_)
        | RequestAttemptError::CqlRequestSerialization(_)
        | RequestAttemptError::BodyExtensionsParseError(_)
        | RequestAttemptError::CqlResultParseError(_)
        | RequestAttemptError::CqlErrorParseError(_)
        | RequestAttemptError::UnexpectedResponse(_)
        | RequestAttemptError::RepreparedIdChanged { .. }
        | RequestAttemptError::RepreparedIdMissingInBatch
        | RequestAttemptError::NonfinishedPagingState => false,
        _ => true,
    }
}

pub(super) fn execution_error_is_transient(err: &ExecutionError) -> bool {
    match err {
        ExecutionError::BadQuery(_) => false,
        ExecutionError::PrepareError(prepare_error) => prepare_error_is_transient(prepare_error),
        ExecutionError::LastAttemptError(attempt) => attempt_error_is_transient(attempt),
        // No node to send to (all local nodes down), no connection, client
        // timeout, schema agreement or metadata refresh failing: the cluster
        // state, not the statement. (A misnamed local_dc is caught at connect.)
        ExecutionError::EmptyPlan
        | ExecutionError::ConnectionPoolError(_)
        | ExecutionError::RequestTimeout(_)
        | ExecutionError::UseKeyspaceError(_)
        | ExecutionError::SchemaAgreementError(_)
        | ExecutionError::MetadataError(_) => true,
        _ => true,
    }
}

pub(super) fn prepare_error_is_transient(err: &PrepareError) -> bool {
    match err {
        PrepareError::AllAttemptsFailed { first_attempt } => {
            attempt_error_is_transient(first_attempt)
        }
        PrepareError::ConnectionPoolError(_) | PrepareError::PreparedStatementIdsMismatch => true,
        _ => true,
    }
}

pub(super) fn pager_error_is_transient(err: &PagerExecutionError) -> bool {
    match err {
        PagerExecutionError::PrepareError(prepare_error) => {
            prepare_error_is_transient(prepare_error)
        }
        PagerExecutionError::SerializationError(_) => false,
        PagerExecutionError::NextPageError(page_error) => next_page_error_is_transient(page_error),
        _ => true,
    }
}

fn next_page_error_is_transient(err: &NextPageError) -> bool {
    match err {
        NextPageError::RequestFailure(request_error) => {
            execution_error_is_transient(&request_error.clone().into_execution_error())
        }
        NextPageError::PartitionKeyError(_)
        | NextPageError::ResultMetadataParseError(_)
        | NextPageError::TypeCheckError(_) => false,
        _ => true,
    }
}

pub(super) fn next_row_error_is_transient(err: &NextRowError) -> bool {
    match err {
        NextRowError::NextPageError(page_error) => next_page_error_is_transient(page_error),
        NextRowError::RowDeserializationError(_) => false,
        _ => true,
    }
}

pub(super) fn new_session_error_is_transient(err: &NewSessionError) -> bool {
    match err {
        NewSessionError::EmptyKnownNodesList | NewSessionError::IllegalConfig(_) => false,
        // Unresolvable names (DNS not ready yet), nodes not answering.
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use scylla::errors::{OperationType, WriteType};
    use scylla::statement::Consistency;

    use super::*;

    #[test]
    fn errors_split_by_what_the_caller_should_do() {
        let db = |error: DbError| {
            execution_error_is_transient(&ExecutionError::LastAttemptError(
                RequestAttemptError::DbError(error, "msg".into()),
            ))
        };
        let transient = [
            DbError::Overloaded,
            DbError::IsBootstrapping,
            DbError::ServerError,
            DbError::Unavailable {
                consistency: Consistency::LocalQuorum,
                required: 2,
                alive: 1,
            },
            DbError::WriteTimeout {
                consistency: Consistency::LocalQuorum,
                received: 1,
                required: 2,
                write_type: WriteType::Simple,
            },
            DbError::ReadTimeout {
                consistency: Consistency::LocalQuorum,
                received: 1,
                required: 2,
                data_present: false,
            },
            DbError::RateLimitReached {
                op_type: OperationType::Write,
                rejected_by_coordinator: true,
            },
        ];
        for error in transient {
            assert!(db(error.clone()), "{error:?}");
        }
        let permanent = [
            DbError::SyntaxError,
            DbError::Invalid,
            DbError::Unauthorized,
            DbError::AuthenticationError,
            DbError::ConfigError,
            DbError::ProtocolError,
        ];
        for error in permanent {
            assert!(!db(error.clone()), "{error:?}");
        }
        assert!(execution_error_is_transient(
            &ExecutionError::RequestTimeout(std::time::Duration::from_secs(2))
        ));
        assert!(execution_error_is_transient(&ExecutionError::EmptyPlan));
        assert!(attempt_error_is_transient(
            &RequestAttemptError::UnableToAllocStreamId
        ));
        assert!(!attempt_error_is_transient(
            &RequestAttemptError::NonfinishedPagingState
        ));
        assert!(!prepare_error_is_transient(
            &PrepareError::AllAttemptsFailed {
                first_attempt: RequestAttemptError::DbError(
                    DbError::Invalid,
                    "no such table".into()
                ),
            }
        ));
        assert!(!new_session_error_is_transient(
            &NewSessionError::EmptyKnownNodesList
        ));
        assert!(new_session_error_is_transient(
            &NewSessionError::FailedToResolveAnyHostname(vec!["scylla:9042".into()])
        ));

        let err = sink_error("scylla insert into by_hour", &DbError::Overloaded, true);
        assert!(
            matches!(err, SinkError::Unavailable(ref m) if m.starts_with("scylla insert into by_hour: "))
        );
        assert!(matches!(
            sink_error("x", &DbError::Invalid, false),
            SinkError::Fatal(_)
        ));
    }
}
