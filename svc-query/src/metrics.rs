//! `hb_query_*` metrics: requests by report and outcome, latency by report.
//! Label sets are bounded: eight reports, eight outcomes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    report: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReportLabels {
    report: &'static str,
}

type HistogramFamily = Family<ReportLabels, Histogram, fn() -> Histogram>;

/// The query service's metrics, cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~65 s: from point look-ups to a report near its deadline.
    Histogram::new(exponential_buckets(0.000_5, 2.0, 18))
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "hb_query_requests",
            "Query API requests by report and outcome (ok or the error code)",
            requests.clone(),
        );
        registry.register(
            "hb_query_latency_seconds",
            "Query API latency by report, seconds",
            latency.clone(),
        );
        // Every report's series exist from the start (at zero), so a scrape
        // before the first request already shows every `hb_query_*` name.
        for endpoint in crate::access::Endpoint::ALL {
            let report = endpoint.label();
            drop(requests.get_or_create(&RequestLabels {
                report,
                status: "ok",
            }));
            drop(latency.get_or_create(&ReportLabels { report }));
        }
        Metrics { requests, latency }
    }

    /// Records one finished request.
    pub fn observe(&self, report: &'static str, status: &'static str, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels { report, status })
            .inc();
        self.latency
            .get_or_create(&ReportLabels { report })
            .observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_there_before_the_first_request() {
        let mut registry = Registry::default();
        let _metrics = Metrics::register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for endpoint in crate::access::Endpoint::ALL {
            let report = endpoint.label();
            assert!(
                text.contains(&format!(
                    "hb_query_requests_total{{report=\"{report}\",status=\"ok\"}} 0"
                )),
                "{text}"
            );
            assert!(
                text.contains(&format!(
                    "hb_query_latency_seconds_count{{report=\"{report}\"}} 0"
                )),
                "{text}"
            );
        }
    }

    #[test]
    fn names_match_the_contract() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.observe("royalties", "ok", Duration::from_millis(3));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("hb_query_requests_total{report=\"royalties\",status=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("hb_query_latency_seconds_count{report=\"royalties\"} 1"),
            "{text}"
        );
    }
}
