//! The content catalog (videos with their license holder and royalty rate,
//! ads with their campaign and advertiser): validation shared by
//! `PUT /v1/catalog/{videos,ads}` and `hbmesh catalog import` (CSV), and
//! its writes to the store.

use crate::config::QueryConfig;
use crate::error::EngineError;
use crate::report::MAX_ID_BYTES;
use crate::store::upsert_all;
use anyhow::Context as _;
use hb_common::progress::{Progress, Unit};
use hb_common::store::columns::{ADS, VIDEOS};
use hb_common::store::{Param, Store};
use serde::{Deserialize, Serialize};
use std::path::Path;
use utoipa::ToSchema;

/// Longest title accepted.
pub const MAX_TITLE_BYTES: usize = 1_024;
/// Most rows in one `PUT`; bigger catalogs go through the CSV import.
pub const MAX_ROWS_PER_PUT: usize = 10_000;

/// A catalog row: `video_id,title,license_holder_id,rate_micros_per_hour`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Video {
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    pub video_id: String,
    #[schema(max_length = 1024, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    pub title: String,
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    pub license_holder_id: String,
    /// Royalty per hour watched, in millionths of the currency unit.
    #[schema(minimum = 0)]
    pub rate_micros_per_hour: i64,
}

/// A catalog row: `ad_id,campaign_id,advertiser_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ad {
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    pub ad_id: String,
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    pub campaign_id: String,
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    pub advertiser_id: String,
}

fn check_id(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{field} is empty"));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(format!("{field} is longer than {MAX_ID_BYTES} bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{field} contains control characters"));
    }
    Ok(())
}

impl Video {
    pub fn validate(&self) -> Result<(), String> {
        check_id("video_id", &self.video_id)?;
        check_id("license_holder_id", &self.license_holder_id)?;
        if self.title.len() > MAX_TITLE_BYTES {
            return Err(format!("title is longer than {MAX_TITLE_BYTES} bytes"));
        }
        if self.title.chars().any(char::is_control) {
            return Err("title contains control characters".into());
        }
        if self.rate_micros_per_hour < 0 {
            return Err("rate_micros_per_hour is negative".into());
        }
        Ok(())
    }
}

impl Ad {
    pub fn validate(&self) -> Result<(), String> {
        check_id("ad_id", &self.ad_id)?;
        check_id("campaign_id", &self.campaign_id)?;
        check_id("advertiser_id", &self.advertiser_id)
    }
}

/// Parses and validates a JSON array body of a catalog `PUT`.
pub fn parse_json<T>(
    body: &[u8],
    validate: impl Fn(&T) -> Result<(), String>,
) -> Result<Vec<T>, String>
where
    T: for<'de> Deserialize<'de>,
{
    let rows: Vec<T> = serde_json::from_slice(body)
        .map_err(|e| format!("body is not a JSON array of rows: {e}"))?;
    if rows.len() > MAX_ROWS_PER_PUT {
        return Err(format!(
            "{} rows in one request; at most {MAX_ROWS_PER_PUT} (use `hbmesh catalog import` for more)",
            rows.len()
        ));
    }
    for (index, row) in rows.iter().enumerate() {
        validate(row).map_err(|e| format!("row {index}: {e}"))?;
    }
    Ok(rows)
}

/// Rows read between two progress counts of a CSV import.
const READ_PROGRESS_ROWS: usize = 4_096;

/// Reads a CSV file with a header row into validated rows; `progress`
/// follows the bytes read.
pub fn read_csv<T>(
    path: &Path,
    validate: impl Fn(&T) -> Result<(), String>,
    progress: &Progress,
) -> anyhow::Result<Vec<T>>
where
    T: for<'de> Deserialize<'de>,
{
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut rows = Vec::new();
    let mut records = reader.deserialize::<T>();
    // Line numbers as an editor shows them: the header is line 1.
    let mut line = 1;
    while let Some(record) = records.next() {
        line += 1;
        let row = record.with_context(|| format!("{}:{line}: unreadable row", path.display()))?;
        validate(&row).map_err(|e| anyhow::anyhow!("{}:{line}: {e}", path.display()))?;
        rows.push(row);
        if rows.len() % READ_PROGRESS_ROWS == 0 {
            progress.set_position(records.reader().position().byte());
        }
    }
    Ok(rows)
}

/// Inserts or replaces videos by `video_id`, all in one transaction.
pub async fn upsert_videos(store: &Store, videos: &[Video]) -> Result<usize, EngineError> {
    write_videos(store, videos, &Progress::hidden()).await
}

/// [`upsert_videos`], counting the rows given as they are written.
async fn write_videos(
    store: &Store,
    videos: &[Video],
    progress: &Progress,
) -> Result<usize, EngineError> {
    let rows: Vec<Vec<Param>> = last_wins(videos, |v| &v.video_id)
        .into_iter()
        .map(|v| {
            vec![
                Param::Text(v.video_id.clone()),
                Param::Text(v.title.clone()),
                Param::Text(v.license_holder_id.clone()),
                Param::Int(v.rate_micros_per_hour),
            ]
        })
        .collect();
    let columns = [
        "video_id",
        "title",
        "license_holder_id",
        "rate_micros_per_hour",
    ];
    progress.set_stage("writing videos");
    // A row superseded by a later copy of its key is done too.
    progress.inc((videos.len() - rows.len()) as u64);
    upsert_all(store, VIDEOS, &columns, &rows, progress).await?;
    Ok(rows.len())
}

/// Inserts or replaces ads by `ad_id`, all in one transaction.
pub async fn upsert_ads(store: &Store, ads: &[Ad]) -> Result<usize, EngineError> {
    write_ads(store, ads, &Progress::hidden()).await
}

/// [`upsert_ads`], counting the rows given as they are written.
async fn write_ads(store: &Store, ads: &[Ad], progress: &Progress) -> Result<usize, EngineError> {
    let rows: Vec<Vec<Param>> = last_wins(ads, |a| &a.ad_id)
        .into_iter()
        .map(|a| {
            vec![
                Param::Text(a.ad_id.clone()),
                Param::Text(a.campaign_id.clone()),
                Param::Text(a.advertiser_id.clone()),
            ]
        })
        .collect();
    let columns = ["ad_id", "campaign_id", "advertiser_id"];
    progress.set_stage("writing ads");
    progress.inc((ads.len() - rows.len()) as u64);
    upsert_all(store, ADS, &columns, &rows, progress).await?;
    Ok(rows.len())
}

/// Keeps the last row per key, in first-seen order: one multi-row
/// `ON CONFLICT DO UPDATE` may not touch the same row twice (PostgreSQL).
fn last_wins<T, K: Fn(&T) -> &String>(rows: &[T], key: K) -> Vec<&T> {
    let mut position = std::collections::HashMap::new();
    let mut out: Vec<&T> = Vec::with_capacity(rows.len());
    for row in rows {
        match position.get(key(row)) {
            Some(&i) => out[i] = row,
            None => {
                position.insert(key(row).clone(), out.len());
                out.push(row);
            }
        }
    }
    out
}

/// `hbmesh catalog import --videos F --ads F`: loads both CSV files (header
/// `video_id,title,license_holder_id,rate_micros_per_hour` and
/// `ad_id,campaign_id,advertiser_id`) into the sessions store the
/// configuration names. Every row is validated before anything is written;
/// each file is upserted in one transaction. Returns (videos, ads) written.
pub async fn import_csv(
    config: &QueryConfig,
    videos: Option<&Path>,
    ads: Option<&Path>,
) -> anyhow::Result<(usize, usize)> {
    let videos = match videos {
        Some(path) => read_csv_file(path, Video::validate)?,
        None => Vec::new(),
    };
    let ads = match ads {
        Some(path) => read_csv_file(path, Ad::validate)?,
        None => Vec::new(),
    };
    let store = crate::store::open(config).await?;
    let rows = (videos.len() + ads.len()) as u64;
    let progress = Progress::start("catalog import", Some(rows), Unit::Count("rows"));
    let written_videos = write_videos(&store, &videos, &progress)
        .await
        .context("writing videos")?;
    let written_ads = write_ads(&store, &ads, &progress)
        .await
        .context("writing ads")?;
    progress.finish();
    store.close().await;
    tracing::info!(
        videos = written_videos,
        ads = written_ads,
        store = store.kind(),
        "catalog imported"
    );
    Ok((written_videos, written_ads))
}

/// [`read_csv`] with its own progress over the file's size.
fn read_csv_file<T>(
    path: &Path,
    validate: impl Fn(&T) -> Result<(), String>,
) -> anyhow::Result<Vec<T>>
where
    T: for<'de> Deserialize<'de>,
{
    let size = std::fs::metadata(path).ok().map(|meta| meta.len());
    let progress = Progress::start("catalog import", size, Unit::Bytes);
    progress.set_stage(format!("reading {}", path.display()));
    let rows = read_csv(path, validate, &progress)?;
    progress.finish();
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(rate: i64) -> Video {
        Video {
            video_id: "v1".into(),
            title: "Title".into(),
            license_holder_id: "L1".into(),
            rate_micros_per_hour: rate,
        }
    }

    #[test]
    fn the_last_copy_of_a_key_wins() {
        let rows = vec![
            ("a".to_string(), 1),
            ("b".to_string(), 2),
            ("a".to_string(), 3),
        ];
        let kept = last_wins(&rows, |r| &r.0);
        assert_eq!(kept, vec![&rows[2], &rows[1]]);
    }

    #[test]
    fn rows_are_validated() {
        assert!(video(0).validate().is_ok());
        assert!(video(-1).validate().is_err());
        let mut v = video(1);
        v.license_holder_id = String::new();
        assert!(v.validate().unwrap_err().contains("license_holder_id"));
        let ad = Ad {
            ad_id: "a".into(),
            campaign_id: "c\u{7}".into(),
            advertiser_id: "x".into(),
        };
        assert!(ad.validate().is_err());
    }

    #[test]
    fn json_bodies_report_the_bad_row() {
        let body = br#"[{"video_id":"v","title":"t","license_holder_id":"L","rate_micros_per_hour":5},
                        {"video_id":"","title":"t","license_holder_id":"L","rate_micros_per_hour":5}]"#;
        let err = parse_json::<Video>(body, Video::validate).unwrap_err();
        assert!(err.starts_with("row 1:"), "{err}");
        assert!(parse_json::<Video>(b"{}", Video::validate).is_err());
        assert!(parse_json::<Ad>(br#"[{"ad_id":"a","campaign_id":"c"}]"#, Ad::validate).is_err());
        assert!(parse_json::<Ad>(
            br#"[{"ad_id":"a","campaign_id":"c","advertiser_id":"x","extra":1}]"#,
            Ad::validate
        )
        .is_err());
    }

    #[test]
    fn csv_files_read_with_their_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("videos.csv");
        std::fs::write(
            &path,
            "video_id,title,license_holder_id,rate_micros_per_hour\nv1,\"A, title\",L1,1500000\n",
        )
        .unwrap();
        let rows = read_csv(&path, Video::validate, &Progress::hidden()).unwrap();
        assert_eq!(rows[0].title, "A, title");
        assert_eq!(rows[0].rate_micros_per_hour, 1_500_000);
        std::fs::write(
            &path,
            "video_id,title,license_holder_id,rate_micros_per_hour\nv1,t,L1,-1\n",
        )
        .unwrap();
        let err = read_csv(&path, Video::validate, &Progress::hidden())
            .unwrap_err()
            .to_string();
        assert!(err.contains(":2:"), "{err}");
    }
}
