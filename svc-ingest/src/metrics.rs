//! Prometheus metrics of svc-ingest (`hb_ingest_*`). Label sets are bounded:
//! the only label is the rejection reason code.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone)]
pub struct IngestMetrics {
    pub accepted: Counter,
    pub duplicates: Counter,
    pub rejected: Family<ReasonLabel, Counter>,
    pub ack_latency: Histogram,
    pub publish_latency: Histogram,
    pub streams_active: Gauge,
    pub rate_limited: Counter,
    pub load_shed: Counter,
    pub publish_failures: Counter,
}

fn latency_histogram() -> Histogram {
    // 0.1 ms .. ~6.5 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

impl IngestMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> IngestMetrics {
        let metrics = IngestMetrics {
            accepted: Counter::default(),
            duplicates: Counter::default(),
            rejected: Family::default(),
            ack_latency: latency_histogram(),
            publish_latency: latency_histogram(),
            streams_active: Gauge::default(),
            rate_limited: Counter::default(),
            load_shed: Counter::default(),
            publish_failures: Counter::default(),
        };
        for reason in crate::validate::Reason::CODES {
            let _ = metrics.rejected.get_or_create(&ReasonLabel { reason });
        }
        let r = registry.sub_registry_with_prefix("hb_ingest");
        r.register(
            "heartbeats_accepted",
            "Heartbeats accepted and durable",
            metrics.accepted.clone(),
        );
        r.register(
            "heartbeats_duplicate",
            "Heartbeats repeating an event_id within the same call",
            metrics.duplicates.clone(),
        );
        r.register(
            "heartbeats_rejected",
            "Heartbeats rejected, by reason",
            metrics.rejected.clone(),
        );
        r.register(
            "ack_latency_seconds",
            "Time from receiving a heartbeat to acknowledging it",
            metrics.ack_latency.clone(),
        );
        r.register(
            "publish_latency_seconds",
            "Time to make one batch durable (Kafka produce or embedded commit)",
            metrics.publish_latency.clone(),
        );
        r.register(
            "streams_active",
            "Open ingest calls",
            metrics.streams_active.clone(),
        );
        r.register(
            "rate_limited",
            "Calls ended because a device exceeded its rate",
            metrics.rate_limited.clone(),
        );
        r.register(
            "load_shed",
            "Calls refused because the server was at its concurrency limit",
            metrics.load_shed.clone(),
        );
        r.register(
            "publish_failures",
            "Batches that could not be made durable",
            metrics.publish_failures.clone(),
        );
        metrics
    }
}
