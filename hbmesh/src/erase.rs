//! `hbmesh erase --user ID`: erases one user in the sessions store named by
//! the configuration (SQLite in `HB_DATA_DIR`, or `HB_YUGABYTE_URL`), as
//! `DELETE /v1/users/{user_id}` does, without going through svc-query: an
//! operator can erase while the services are down, and a running stream
//! stage picks the erasure up from the store within a second.

#[derive(clap::Args, Debug)]
pub struct EraseArgs {
    /// The user whose raw heartbeats, sessions and ad links are removed.
    #[arg(long = "user", value_name = "ID")]
    pub user_id: String,
}

/// Erases and prints the answer of the HTTP call (JSON counts and the audit
/// row's id, `requested_by` `cli`).
pub async fn run(args: EraseArgs) -> anyhow::Result<()> {
    let config: svc_query::config::QueryConfig = hb_common::config_from_env()?;
    let erased = svc_query::erase::erase_cli(&config, &args.user_id).await?;
    println!("{}", serde_json::to_string(&erased)?);
    Ok(())
}
