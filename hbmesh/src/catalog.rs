//! `hbmesh catalog import`: loads the content catalog from CSV into the
//! sessions store named by the configuration (SQLite in `HB_DATA_DIR`, or
//! `HB_YUGABYTE_URL`).

use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct CatalogArgs {
    #[command(subcommand)]
    pub command: CatalogCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum CatalogCommand {
    /// Upsert videos and/or ads from CSV files with a header row.
    Import {
        /// `video_id,title,license_holder_id,rate_micros_per_hour`
        #[arg(long)]
        videos: Option<PathBuf>,
        /// `ad_id,campaign_id,advertiser_id`
        #[arg(long)]
        ads: Option<PathBuf>,
    },
}

pub async fn run(args: CatalogArgs) -> anyhow::Result<()> {
    match args.command {
        CatalogCommand::Import { videos, ads } => {
            if videos.is_none() && ads.is_none() {
                anyhow::bail!("nothing to import: give --videos and/or --ads");
            }
            let config: svc_query::config::QueryConfig = hb_common::config_from_env()?;
            let (v, a) =
                svc_query::catalog::import_csv(&config, videos.as_deref(), ads.as_deref()).await?;
            println!("imported {v} videos and {a} ads");
            Ok(())
        }
    }
}
