//! Erasures as the stream stage applies them: it reads the erasures the
//! store records (`erasures`, see [`hb_common::store::erase`]), forgets the
//! erased user's state in memory, and hands each erasure to its next flush,
//! which removes the user's rows from the raw mirror and the store again.

use super::{retry, Instant, Pipeline};
use crate::sink::{PendingErasure, RawMirror, SinkError};
use std::sync::atomic::AtomicU32;

/// Shortest time between two reads of the store's erasures.
const ERASURE_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// This process's progress through the store's erasures.
#[derive(Default)]
pub(super) struct Erasures {
    /// Id of the last erasure applied (`None`: read where to start first).
    applied_through: Option<i64>,
    polled: Option<Instant>,
    /// Applied in memory, for the next flush to carry to the store and mirror.
    pub(super) pending: Vec<PendingErasure>,
}

impl Pipeline {
    /// Applies the erasures recorded in the store since the last one applied
    /// (at most once per [`ERASURE_POLL`]; call it on the tick). A process
    /// starts after the newest erasure, or at the oldest one no stream
    /// process has carried to the raw mirror yet. Returns how many it applied.
    pub async fn poll_erasures(&mut self) -> Result<usize, SinkError> {
        if self
            .erasures
            .polled
            .is_some_and(|polled| polled.elapsed() < ERASURE_POLL)
        {
            return Ok(0);
        }
        self.erasures.polled = Some(Instant::now());
        let after_id = match self.erasures.applied_through {
            Some(id) => id,
            None => self.store.erasures_start().await?,
        };
        let erasures = self.store.erasures_since(after_id).await?;
        self.erasures.applied_through = Some(erasures.last().map_or(after_id, |e| e.id));
        let applied = erasures.len();
        for erasure in erasures {
            let forgotten = self.apply_erasure(erasure);
            tracing::info!(forgotten, "erased user forgotten by the stream stage");
        }
        Ok(applied)
    }

    /// Forgets the erased user's sessions and heartbeats held in memory and
    /// the user's rows waiting for the next flush, which then removes the
    /// user's rows from the store (and the raw mirror) again. Heartbeats of
    /// the user fed afterwards are new data. Returns the open sessions
    /// forgotten.
    pub fn apply_erasure(&mut self, mut erasure: PendingErasure) -> usize {
        let user_id = erasure.user_id.clone();
        let mut forgotten = 0;
        for state in self.partitions.values_mut() {
            erasure
                .mirror_videos
                .extend(state.sessionizer.videos_of(&user_id));
            forgotten += state.sessionizer.forget_user(&user_id);
            state.late.retain(|(user, _), _| *user != user_id);
        }
        self.pending_marks
            .retain(|(_, user, _), _| *user != user_id);
        erasure.mirror_videos.extend(
            self.pending_raw
                .iter()
                .filter(|row| row.user_id == user_id)
                .map(|row| row.video_id.clone()),
        );
        erasure.mirror_videos.sort_unstable();
        erasure.mirror_videos.dedup();
        self.pending_raw.retain(|row| row.user_id != user_id);
        self.erasures.pending.push(erasure);
        self.update_gauges();
        forgotten
    }
}

/// Removes the erased users' rows from a separate raw mirror, each erasure
/// retried as a flush's writes are: before the flush writes its own rows
/// (those came after the erasures), and after every earlier flush's
/// (flushes commit in order).
pub(super) async fn erase_from_mirror(
    mirror: &dyn RawMirror,
    erasures: &[PendingErasure],
    attempts: Option<u32>,
    failing: &AtomicU32,
) -> Result<(), SinkError> {
    for erasure in erasures {
        retry(attempts, failing, || async {
            mirror
                .erase_user(&erasure.user_id, &erasure.mirror_videos)
                .await
                .map(drop)
        })
        .await?;
    }
    Ok(())
}
