//! Identical report requests waiting for a slot share one run.
//!
//! A dashboard opened by a team at month close asks the store the same
//! question many times at once; computed once per request, each would wait
//! for a report slot only to compute the same answer again. Here a request
//! that finds an identical one still waiting joins it, and every joined
//! request gets the one answer when it is computed.
//!
//! The answer stays exact for every joined request: a run leaves the
//! waiting list the moment it gets its slot, before its first read, so a
//! request only ever shares an answer read after it arrived (as if it had
//! run itself at that moment). A request arriving while an identical run is
//! already reading starts a run of its own.
//!
//! Each joined request keeps its own deadline. The run lives as long as one
//! of its requests still waits for it (dropped with the last one, as a lone
//! request's work is).

use crate::error::EngineError;
use futures::future::{BoxFuture, FutureExt as _, Shared, WeakShared};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

type Work<T> = BoxFuture<'static, Result<Arc<T>, EngineError>>;
type Run<T> = Shared<Work<T>>;
/// Runs waiting for a slot by key, each with its id (so only a run itself
/// takes itself off the list), held weakly: a run none of whose requests
/// still waits is gone.
type WaitingRuns<T> = HashMap<String, (u64, WeakShared<Work<T>>)>;

/// The runs still waiting for a slot, by what they compute.
pub struct Coalesced<T> {
    waiting: Arc<Mutex<WaitingRuns<T>>>,
    next_id: Arc<AtomicU64>,
}

impl<T> Default for Coalesced<T> {
    fn default() -> Self {
        Coalesced {
            waiting: Arc::default(),
            next_id: Arc::default(),
        }
    }
}

impl<T> Clone for Coalesced<T> {
    fn clone(&self) -> Self {
        Coalesced {
            waiting: self.waiting.clone(),
            next_id: self.next_id.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Coalesced<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let waiting = self.waiting.lock().map_or(0, |waiting| waiting.len());
        f.debug_struct("Coalesced")
            .field("waiting", &waiting)
            .finish()
    }
}

impl<T: Send + Sync + 'static> Coalesced<T> {
    /// The answer of `work` for `key`: shared with an identical request
    /// still waiting for one of `slots`, or computed by a run of its own once
    /// it has a slot. `work` gets the time left of `timeout` after the wait;
    /// waiting and computing together take at most `timeout`.
    pub async fn run<F, Fut>(
        &self,
        key: String,
        slots: &Arc<Semaphore>,
        timeout: Duration,
        work: F,
    ) -> Result<Arc<T>, EngineError>
    where
        F: FnOnce(Duration) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, EngineError>> + Send + 'static,
    {
        let run = self.join_or_start(key, slots, timeout, work);
        match tokio::time::timeout(timeout, run).await {
            Ok(answer) => answer,
            Err(_) => Err(EngineError::Deadline(timeout)),
        }
    }

    fn join_or_start<F, Fut>(
        &self,
        key: String,
        slots: &Arc<Semaphore>,
        timeout: Duration,
        work: F,
    ) -> Run<T>
    where
        F: FnOnce(Duration) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, EngineError>> + Send + 'static,
    {
        let mut waiting = super::lock(&self.waiting);
        if let Some(run) = waiting.get(&key).and_then(|(_, run)| run.upgrade()) {
            return run;
        }
        // Runs whose requests all gave up before they got a slot.
        waiting.retain(|_, (_, run)| run.upgrade().is_some());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (list, slots, mine) = (self.waiting.clone(), slots.clone(), key.clone());
        let run: Run<T> = async move {
            let started = Instant::now();
            let slot = tokio::time::timeout(timeout, slots.acquire_owned()).await;
            // Off the list before the first read: later requests run anew.
            {
                let mut waiting = super::lock(&list);
                if waiting.get(&mine).is_some_and(|(listed, _)| *listed == id) {
                    waiting.remove(&mine);
                }
            }
            let _slot = match slot {
                Ok(Ok(slot)) => slot,
                Ok(Err(closed)) => {
                    return Err(EngineError::Internal(format!("report slots: {closed}")))
                }
                Err(_) => return Err(EngineError::Deadline(timeout)),
            };
            work(timeout.saturating_sub(started.elapsed()))
                .await
                .map(Arc::new)
        }
        .boxed()
        .shared();
        if let Some(weak) = run.downgrade() {
            waiting.insert(key, (id, weak));
        }
        run
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::Notify;

    fn counting(
        runs: &Arc<AtomicUsize>,
    ) -> impl Fn(Duration) -> BoxFuture<'static, Result<usize, EngineError>> {
        let runs = runs.clone();
        move |_| {
            let runs = runs.clone();
            async move { Ok(runs.fetch_add(1, Ordering::SeqCst) + 1) }.boxed()
        }
    }

    /// One report slot, taken: requests wait until `busy` is dropped.
    fn one_busy_slot() -> (Arc<Semaphore>, tokio::sync::OwnedSemaphorePermit) {
        let slots = Arc::new(Semaphore::new(1));
        let busy = slots.clone().try_acquire_owned().unwrap();
        (slots, busy)
    }

    #[tokio::test]
    async fn requests_waiting_for_a_busy_slot_share_one_run() {
        let (slots, busy) = one_busy_slot();
        let coalesced = Coalesced::<usize>::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let work = counting(&runs);
        let waiting: Vec<_> = (0..5)
            .map(|_| {
                let (coalesced, slots, work) =
                    (coalesced.clone(), slots.clone(), work(Duration::ZERO));
                tokio::spawn(async move {
                    coalesced
                        .run(
                            "royalties day".into(),
                            &slots,
                            Duration::from_secs(5),
                            move |_| work,
                        )
                        .await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(busy);
        for request in waiting {
            assert_eq!(
                *request.await.unwrap().unwrap(),
                1,
                "every request got the first run's answer"
            );
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_request_arriving_while_an_identical_run_reads_runs_again() {
        let slots = Arc::new(Semaphore::new(2));
        let coalesced = Coalesced::<usize>::default();
        let reading = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let first = {
            let (coalesced, slots, reading, release) = (
                coalesced.clone(),
                slots.clone(),
                reading.clone(),
                release.clone(),
            );
            tokio::spawn(async move {
                coalesced
                    .run(
                        "royalties day".into(),
                        &slots,
                        Duration::from_secs(5),
                        move |_| async move {
                            reading.notify_one();
                            release.notified().await;
                            Ok(1)
                        },
                    )
                    .await
            })
        };
        reading.notified().await;
        let second = coalesced
            .run(
                "royalties day".into(),
                &slots,
                Duration::from_secs(5),
                |_| async { Ok(2) },
            )
            .await;
        assert_eq!(*second.unwrap(), 2, "the later request read for itself");
        release.notify_one();
        assert_eq!(*first.await.unwrap().unwrap(), 1);
    }

    #[tokio::test]
    async fn different_requests_never_share() {
        let (slots, busy) = one_busy_slot();
        let coalesced = Coalesced::<String>::default();
        let ask = |key: &'static str| {
            let (coalesced, slots) = (coalesced.clone(), slots.clone());
            tokio::spawn(async move {
                coalesced
                    .run(
                        key.into(),
                        &slots,
                        Duration::from_secs(5),
                        move |_| async move { Ok(key.to_string()) },
                    )
                    .await
            })
        };
        let (holder_a, holder_b) = (ask("royalties lh001"), ask("royalties lh002"));
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(busy);
        assert_eq!(*holder_a.await.unwrap().unwrap(), "royalties lh001");
        assert_eq!(*holder_b.await.unwrap().unwrap(), "royalties lh002");
    }

    #[tokio::test]
    async fn a_request_gives_up_at_its_own_deadline_and_leaves_no_run_behind() {
        let (slots, busy) = one_busy_slot();
        let coalesced = Coalesced::<usize>::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let work = counting(&runs);
        let gave_up = coalesced
            .run("traffic".into(), &slots, Duration::from_millis(20), {
                let work = work(Duration::ZERO);
                move |_| work
            })
            .await;
        assert_eq!(
            gave_up.unwrap_err(),
            EngineError::Deadline(Duration::from_millis(20))
        );
        drop(busy);
        let later = coalesced
            .run(
                "traffic".into(),
                &slots,
                Duration::from_secs(5),
                move |_| work(Duration::ZERO),
            )
            .await;
        assert_eq!(*later.unwrap(), 1, "the abandoned run never read");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
