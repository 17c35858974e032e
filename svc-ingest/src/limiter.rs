//! Per-device token buckets (`HB_DEVICE_RATE`, `HB_DEVICE_BURST`). Sharded so
//! concurrent calls rarely contend; checked once per device per batch.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 64;
/// Buckets idle this long are full again and can be forgotten.
const SWEEP_AT: usize = 100_000;

struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct DeviceLimiter {
    rate_per_s: f64,
    burst: f64,
    shards: Vec<Mutex<HashMap<String, Bucket>>>,
}

impl DeviceLimiter {
    /// `None` when `rate_per_s` is 0 (limit off).
    pub fn new(rate_per_s: u32, burst: u32) -> Option<DeviceLimiter> {
        (rate_per_s > 0).then(|| DeviceLimiter {
            rate_per_s: f64::from(rate_per_s),
            burst: f64::from(burst.max(1)),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        })
    }

    fn shard(&self, device: &str) -> &Mutex<HashMap<String, Bucket>> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        device.hash(&mut hasher);
        &self.shards[hasher.finish() as usize % SHARDS]
    }

    /// Takes up to `count` tokens for `device`. Returns how many were granted
    /// and, when that is fewer than asked, how long until the next token:
    /// a device over its rate gets the part of its batch its bucket allows,
    /// and retry advice it can actually follow (never a batch that could not
    /// pass however long it waits).
    pub fn take_up_to(&self, device: &str, count: u32, now: Instant) -> (u32, Option<Duration>) {
        let mut buckets = self.shard(device).lock().expect("limiter lock");
        if buckets.len() > SWEEP_AT / SHARDS {
            let full_after = Duration::from_secs_f64(self.burst / self.rate_per_s);
            buckets.retain(|_, b| now.duration_since(b.at) < full_after);
        }
        let bucket = buckets.entry(device.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.rate_per_s;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        let granted = bucket.tokens.floor().min(f64::from(count)).max(0.0);
        bucket.tokens -= granted;
        let granted = granted as u32;
        if granted == count {
            return (granted, None);
        }
        let missing = 1.0 - bucket.tokens;
        let wait = Duration::from_secs_f64((missing / self.rate_per_s).max(0.001));
        (granted, Some(wait))
    }

    /// Returns tokens taken for heartbeats that were not processed after all.
    pub fn give_back(&self, device: &str, count: u32) {
        if count == 0 {
            return;
        }
        let mut buckets = self.shard(device).lock().expect("limiter lock");
        if let Some(bucket) = buckets.get_mut(device) {
            bucket.tokens = (bucket.tokens + f64::from(count)).min(self.burst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_gets_its_burst_then_its_rate() {
        let limiter = DeviceLimiter::new(10, 50).unwrap();
        let t0 = Instant::now();
        assert_eq!(limiter.take_up_to("d", 50, t0), (50, None));
        let (granted, wait) = limiter.take_up_to("d", 1, t0);
        assert_eq!(granted, 0);
        let wait = wait.unwrap();
        assert!(wait <= Duration::from_millis(101) && wait >= Duration::from_millis(99));
        assert_eq!(
            limiter.take_up_to("d", 1, t0 + Duration::from_millis(100)),
            (1, None)
        );
        assert_eq!(
            limiter.take_up_to("other", 50, t0),
            (50, None),
            "devices are independent"
        );
    }

    #[test]
    fn a_batch_above_the_burst_gets_the_burst_and_advice_for_the_next_token() {
        let limiter = DeviceLimiter::new(2, 5).unwrap();
        let t0 = Instant::now();
        let (granted, wait) = limiter.take_up_to("d", 8, t0);
        assert_eq!(granted, 5);
        assert_eq!(wait, Some(Duration::from_millis(500)));
        limiter.give_back("d", 2);
        assert_eq!(
            limiter.take_up_to("d", 3, t0),
            (2, Some(Duration::from_millis(500)))
        );
    }

    #[test]
    fn rate_zero_turns_the_limit_off() {
        assert!(DeviceLimiter::new(0, 50).is_none());
    }
}
