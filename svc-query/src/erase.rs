//! Erasure of one user (`DELETE /v1/users/{user_id}`, gRPC `EraseUser`,
//! `hbmesh erase --user`): the user's raw heartbeats, sessions and ad links
//! leave the store in one transaction with the audit row
//! ([`hb_common::store::erase`]); the traffic hours they were in are marked
//! changed, so the roll-up recounts them, and every other report reads the
//! sessions table directly. The stream stage notices the audit row, forgets
//! the user's sessions it holds in memory, removes the user's rows again
//! in its next flush and erases the raw mirror when it is ScyllaDB.

use crate::config::QueryConfig;
use crate::error::EngineError;
use hb_common::store::erase::{erase_and_record, Request};
use hb_common::store::Store;
use hb_common::time::now_ms;
use serde::Serialize;

/// `requested_by` of an erasure made on the command line.
pub const CLI_CALLER: &str = "cli";

/// What an erasure answers: the rows removed and the audit row's id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UserErased {
    pub user_id: String,
    /// Raw heartbeats removed from the store (a ScyllaDB mirror is erased
    /// by the stream stage's next flush).
    pub raw_heartbeats: i64,
    pub sessions: i64,
    /// (session, ad) impressions removed.
    pub ad_links: i64,
    /// The audit row's id.
    pub erasure_id: i64,
}

/// Erases `user_id` in `store` on behalf of `requested_by`. A user the
/// store knows nothing of is erased too, with zero counts (and audited).
pub async fn erase_user(
    store: &Store,
    user_id: &str,
    requested_by: &str,
) -> Result<UserErased, EngineError> {
    let request = Request {
        user_id: user_id.to_string(),
        requested_by: requested_by.to_string(),
        requested_at_ms: now_ms(),
    };
    let (erasure_id, erased) = erase_and_record(store, &request).await?;
    tracing::info!(
        erasure_id,
        requested_by,
        raw_heartbeats = erased.raw_heartbeats,
        sessions = erased.sessions,
        ad_links = erased.ad_links,
        "user erased"
    );
    Ok(UserErased {
        user_id: request.user_id,
        raw_heartbeats: erased.raw_heartbeats as i64,
        sessions: erased.sessions as i64,
        ad_links: erased.ad_links as i64,
        erasure_id,
    })
}

/// `hbmesh erase --user ID`: erases in the sessions store the configuration
/// names, directly (no service needs to run), as `cli`.
pub async fn erase_cli(config: &QueryConfig, user_id: &str) -> anyhow::Result<UserErased> {
    let user_id = crate::report::parse_id("user_id", user_id)
        .map_err(|error| anyhow::anyhow!("{}", error.0))?;
    let store = crate::store::open(config).await?;
    let erased = erase_user(&store, &user_id, CLI_CALLER).await;
    store.close().await;
    Ok(erased?)
}
