//! The OTLP and Phoenix exporters' own metrics (both send through an [`OtlpClient`]), read from their client's counters at scrape time (the
//! client counts with atomics on its runtime; nothing more runs per request for Prometheus):
//!
//! - `evalstream_exporter_requests_total{exporter, outcome}`: requests the backend accepted
//!   (`delivered`) or that failed for good (`failed`: refused, or retries ran out);
//! - `evalstream_exporter_retries_total{exporter}`: attempts after a request's first;
//! - `evalstream_exporter_rejected_items_total{exporter}`: log records and spans a backend
//!   rejected inside an accepted request (OTLP partial success);
//! - `evalstream_exporter_requests{exporter, state}`: requests `queued` and `in_flight` now.

use std::sync::{Mutex, PoisonError};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts};

use super::{OtlpClient, Stats};

/// One exporter's metrics, registered with the worker's registry.
pub struct ExporterMetrics {
    client: OtlpClient,
    requests: IntCounterVec,
    retries: IntCounter,
    rejected_items: IntCounter,
    pending: IntGaugeVec,
    /// The counters as last published: counters move by the difference.
    last: Mutex<Stats>,
}

impl ExporterMetrics {
    /// Metrics of exporter `id` reading `client`.
    pub fn new(id: &str, client: OtlpClient) -> prometheus::Result<ExporterMetrics> {
        let opts = |name: &str, help: &str| Opts::new(name, help).const_label("exporter", id);
        Ok(ExporterMetrics {
            client,
            requests: IntCounterVec::new(
                opts(
                    "evalstream_exporter_requests_total",
                    "Export requests to an OTLP backend, by outcome (delivered, failed).",
                ),
                &["outcome"],
            )?,
            retries: IntCounter::with_opts(opts(
                "evalstream_exporter_retries_total",
                "Attempts after an export request's first.",
            ))?,
            rejected_items: IntCounter::with_opts(opts(
                "evalstream_exporter_rejected_items_total",
                "Log records and spans a backend rejected in accepted requests (partial success).",
            ))?,
            pending: IntGaugeVec::new(
                opts(
                    "evalstream_exporter_requests",
                    "Export requests now queued or in flight.",
                ),
                &["state"],
            )?,
            last: Mutex::new(Stats::default()),
        })
    }

    /// Brings the metrics up to the client's counters.
    fn publish(&self) {
        let now = self.client.stats();
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let by = |now: u64, then: u64| now.saturating_sub(then);
        self.requests
            .with_label_values(&["delivered"])
            .inc_by(by(now.delivered, last.delivered));
        self.requests
            .with_label_values(&["failed"])
            .inc_by(by(now.failed, last.failed));
        self.retries.inc_by(by(now.retries, last.retries));
        self.rejected_items
            .inc_by(by(now.rejected_items, last.rejected_items));
        self.pending
            .with_label_values(&["queued"])
            .set(now.queued as i64);
        self.pending
            .with_label_values(&["in_flight"])
            .set(now.in_flight as i64);
        *last = now;
    }
}

impl Collector for ExporterMetrics {
    fn desc(&self) -> Vec<&Desc> {
        let mut descs = self.requests.desc();
        descs.extend(self.retries.desc());
        descs.extend(self.rejected_items.desc());
        descs.extend(self.pending.desc());
        descs
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.publish();
        let mut families = self.requests.collect();
        families.extend(self.retries.collect());
        families.extend(self.rejected_items.collect());
        families.extend(self.pending.collect());
        families
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{config, export, runtime};
    use super::super::{Protocol, Signal};
    use super::*;

    /// A delivered request and a refused one show in the scrape, labelled by exporter.
    #[test]
    fn requests_and_failures_are_counted_per_exporter() {
        let rt = runtime();
        let (url, _server) = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            // A backend that takes logs and refuses traces for good (400).
            let app = axum::Router::new()
                .route("/v1/logs", axum::routing::post(|| async { "" }))
                .route(
                    "/v1/traces",
                    axum::routing::post(|| async { axum::http::StatusCode::BAD_REQUEST }),
                );
            let server = tokio::spawn(async move { axum::serve(listener, app).await });
            (format!("http://{address}"), server)
        });
        let client = OtlpClient::start(&config(&url), Protocol::HttpProtobuf, rt.handle()).unwrap();
        assert!(export(&client, Signal::Logs, Vec::new()).is_ok());
        assert!(export(&client, Signal::Traces, Vec::new()).is_err());
        assert!(client.flush(std::time::Duration::from_secs(5)));
        let registry = prometheus::Registry::new();
        registry
            .register(Box::new(
                ExporterMetrics::new("otlphttp/x", client).unwrap(),
            ))
            .unwrap();
        let scrape = || {
            prometheus::TextEncoder::new()
                .encode_to_string(&registry.gather())
                .unwrap()
        };
        // The request's slot is given back just after its outcome is reported.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let idle = "evalstream_exporter_requests{exporter=\"otlphttp/x\",state=\"in_flight\"} 0";
        while !scrape().contains(idle) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let text = scrape();
        for line in [
            "evalstream_exporter_requests_total{exporter=\"otlphttp/x\",outcome=\"delivered\"} 1",
            "evalstream_exporter_requests_total{exporter=\"otlphttp/x\",outcome=\"failed\"} 1",
            idle,
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }
}
