//! Prometheus metrics of svc-stream (`hb_stream_*`). The only label is the
//! Kafka partition on the lag gauge (bounded by the partition count).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub partition: i32,
}

#[derive(Clone)]
pub struct StreamMetrics {
    pub heartbeats: Counter,
    pub duplicates: Counter,
    pub late: Counter,
    pub undecodable: Counter,
    pub open_sessions: Gauge,
    pub finalized: Counter,
    pub consumer_lag: Family<PartitionLabel, Gauge>,
    pub flush_latency: Histogram,
    pub flush_batch_size: Histogram,
    pub store_write_latency: Histogram,
    pub flush_failures: Counter,
    pub deferred_flushes: Counter,
    pub corrections: Counter,
    pub corrected_heartbeats: Counter,
    pub correction_lag: Histogram,
    pub corrections_pending: Gauge,
}

impl StreamMetrics {
    pub fn register(registry: &mut Registry) -> StreamMetrics {
        let metrics = StreamMetrics {
            heartbeats: Counter::default(),
            duplicates: Counter::default(),
            late: Counter::default(),
            undecodable: Counter::default(),
            open_sessions: Gauge::default(),
            finalized: Counter::default(),
            consumer_lag: Family::default(),
            flush_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            flush_batch_size: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            store_write_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            flush_failures: Counter::default(),
            deferred_flushes: Counter::default(),
            corrections: Counter::default(),
            corrected_heartbeats: Counter::default(),
            correction_lag: Histogram::new(exponential_buckets(0.01, 2.0, 20)),
            corrections_pending: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("hb_stream");
        r.register(
            "heartbeats",
            "Heartbeats consumed and sessionized",
            metrics.heartbeats.clone(),
        );
        r.register(
            "duplicates",
            "Heartbeats ignored as repeats of an event_id",
            metrics.duplicates.clone(),
        );
        r.register(
            "late",
            "Heartbeats past the allowed lateness: mirrored raw and corrected through the late lane",
            metrics.late.clone(),
        );
        r.register(
            "undecodable",
            "Kafka messages that were not heartbeats",
            metrics.undecodable.clone(),
        );
        r.register(
            "open_sessions",
            "Sessions open in memory",
            metrics.open_sessions.clone(),
        );
        r.register(
            "sessions_finalized",
            "Sessions that became final",
            metrics.finalized.clone(),
        );
        r.register(
            "consumer_lag",
            "Messages behind the partition's high watermark",
            metrics.consumer_lag.clone(),
        );
        r.register(
            "flush_latency_seconds",
            "Time to commit one flush (raw mirror + store transaction)",
            metrics.flush_latency.clone(),
        );
        r.register(
            "flush_batch_size",
            "Heartbeats per flush",
            metrics.flush_batch_size.clone(),
        );
        r.register(
            "store_write_latency_seconds",
            "Time of the sessions store transaction",
            metrics.store_write_latency.clone(),
        );
        r.register(
            "flush_failures",
            "Flushes that failed and were retried from the store",
            metrics.flush_failures.clone(),
        );
        r.register(
            "deferred_flushes",
            "Embedded flushes that committed raw rows and left session writes to a later flush",
            metrics.deferred_flushes.clone(),
        );
        r.register(
            "corrections",
            "Late-lane corrections applied: a key's sessions recomputed from the raw mirror",
            metrics.corrections.clone(),
        );
        r.register(
            "corrected_heartbeats",
            "Late heartbeats brought into their sessions by the late lane",
            metrics.corrected_heartbeats.clone(),
        );
        r.register(
            "correction_lag_seconds",
            "Processing time from a late heartbeat's arrival to its correction",
            metrics.correction_lag.clone(),
        );
        r.register(
            "corrections_pending",
            "Keys with late heartbeats waiting for their correction",
            metrics.corrections_pending.clone(),
        );
        metrics
    }
}
