//! Readiness that tells the truth: the publisher is asked every
//! [`CHECK_INTERVAL`] whether it can take writes (for Kafka: do the brokers
//! answer a metadata request for the topics within [`CHECK_TIMEOUT`]), and
//! the `publisher` health component follows the answer. A success keeps it
//! healthy for [`HEALTHY_FOR`] only, so a check loop that stalls makes the
//! service unready by itself rather than ready forever.

use crate::publisher::{PublishError, Publisher};
use hb_common::health::HealthHandle;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the publisher is checked.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Longest one check may take; a broker slower than this to answer counts
/// as down.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one successful check keeps the component healthy: two missed
/// intervals past a check that used its whole timeout.
pub const HEALTHY_FOR: Duration =
    Duration::from_secs(CHECK_INTERVAL.as_secs() * 2 + CHECK_TIMEOUT.as_secs());

/// Outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The publisher can take writes; healthy for [`HEALTHY_FOR`].
    Up,
    /// It cannot, for this reason; unhealthy until a check succeeds.
    Down(PublishError),
}

/// Checks `publisher` once and reports the outcome to `health`.
pub async fn check_once(publisher: &dyn Publisher, health: &HealthHandle) -> CheckOutcome {
    // The publisher bounds its own check; this bounds a publisher that
    // does not (a check that hangs is a down destination too).
    let outcome =
        match tokio::time::timeout(CHECK_TIMEOUT * 2, publisher.check(CHECK_TIMEOUT)).await {
            Ok(Ok(())) => CheckOutcome::Up,
            Ok(Err(error)) => CheckOutcome::Down(error),
            Err(_) => CheckOutcome::Down(PublishError::Unavailable(format!(
                "{} check did not answer within {:?}",
                publisher.name(),
                CHECK_TIMEOUT * 2
            ))),
        };
    match &outcome {
        CheckOutcome::Up => health.healthy_for(HEALTHY_FOR),
        CheckOutcome::Down(_) => health.unhealthy(),
    }
    outcome
}

/// Checks `publisher` every [`CHECK_INTERVAL`] until `shutdown`, logging
/// each change between up and down.
pub async fn watch(
    publisher: std::sync::Arc<dyn Publisher>,
    health: HealthHandle,
    shutdown: CancellationToken,
) {
    let mut was_up = true;
    loop {
        let up = match check_once(publisher.as_ref(), &health).await {
            CheckOutcome::Up => true,
            CheckOutcome::Down(error) => {
                if was_up {
                    tracing::warn!(publisher = publisher.name(), %error, "publisher down: not ready");
                }
                false
            }
        };
        if up && !was_up {
            tracing::info!(publisher = publisher.name(), "publisher back up: ready");
        }
        was_up = up;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(CHECK_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use hb_common::handoff::DeadLetter;
    use hb_common::health::Health;
    use hb_proto::v1::Heartbeat;
    use std::sync::atomic::{AtomicU8, Ordering};

    /// A publisher whose check answers as told: 0 up, 1 down, 2 hangs.
    #[derive(Default)]
    struct Scripted(AtomicU8);

    #[async_trait]
    impl Publisher for Scripted {
        async fn publish(&self, _: Vec<Heartbeat>) -> Result<(), PublishError> {
            Ok(())
        }
        async fn dead_letter(&self, _: Vec<DeadLetter>) -> Result<(), PublishError> {
            Ok(())
        }
        async fn check(&self, _: Duration) -> Result<(), PublishError> {
            match self.0.load(Ordering::Relaxed) {
                0 => Ok(()),
                1 => Err(PublishError::Unavailable("no broker".into())),
                _ => std::future::pending().await,
            }
        }
        fn name(&self) -> &'static str {
            "scripted"
        }
    }

    #[tokio::test]
    async fn the_component_follows_each_check_down_at_once_and_up_again() {
        let health = Health::default();
        let handle = health.register("publisher");
        let publisher = Scripted::default();
        assert!(!health.is_ready(), "unready before the first check");

        assert_eq!(check_once(&publisher, &handle).await, CheckOutcome::Up);
        assert!(health.is_ready());

        publisher.0.store(1, Ordering::Relaxed);
        assert!(matches!(
            check_once(&publisher, &handle).await,
            CheckOutcome::Down(PublishError::Unavailable(_))
        ));
        assert!(!health.is_ready(), "a failed check is unready at once");

        publisher.0.store(0, Ordering::Relaxed);
        assert_eq!(check_once(&publisher, &handle).await, CheckOutcome::Up);
        assert!(health.is_ready(), "a successful check is ready again");
    }

    #[tokio::test]
    async fn a_check_that_hangs_counts_as_down() {
        let health = Health::default();
        let handle = health.register("publisher");
        let publisher = Scripted(AtomicU8::new(2));
        handle.healthy();
        assert!(matches!(
            check_once(&publisher, &handle).await,
            CheckOutcome::Down(_)
        ));
        assert!(!health.is_ready());
    }
}
