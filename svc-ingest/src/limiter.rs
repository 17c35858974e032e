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

    /// Takes `count` tokens for `device`, or says how long to wait before retrying.
    pub fn take(&self, device: &str, count: u32, now: Instant) -> Result<(), Duration> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        device.hash(&mut hasher);
        let shard = &self.shards[hasher.finish() as usize % SHARDS];
        let mut buckets = shard.lock().expect("limiter lock");
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
        let wanted = f64::from(count);
        if bucket.tokens >= wanted {
            bucket.tokens -= wanted;
            Ok(())
        } else {
            let missing = wanted.min(self.burst) - bucket.tokens;
            Err(Duration::from_secs_f64((missing / self.rate_per_s).max(0.001)))
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
        assert!(limiter.take("d", 50, t0).is_ok());
        let wait = limiter.take("d", 1, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(101) && wait >= Duration::from_millis(99));
        assert!(limiter.take("d", 1, t0 + Duration::from_millis(100)).is_ok());
        assert!(limiter.take("other", 50, t0).is_ok(), "devices are independent");
    }

    #[test]
    fn rate_zero_turns_the_limit_off() {
        assert!(DeviceLimiter::new(0, 50).is_none());
    }
}
