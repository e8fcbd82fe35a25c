//! Sending to an OTLP gRPC receiver, as an SDK's batch exporter or a collector does: whole
//! traces packed into `ExportTraceServiceRequest`s of `--spans-per-request` spans, up to
//! `--concurrency` requests awaiting their answer.
//!
//! The requests go through the OTLP exporter's own client ([`OtlpClient`]): its retries honour
//! `RESOURCE_EXHAUSTED` and `RetryInfo` as an SDK would, so a receiver that sheds load is retried,
//! not counted as lost. A pool of at most [`POOL`] distinct requests is built and encoded up front
//! and sent round-robin: the sender's CPU then goes to the transport, not to building spans, which
//! keeps it from competing with the receiver it measures (ids repeat after the pool; the per-span
//! evaluators do not care, trace evaluators would see repeated traces).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use evalstream_evaluators::otlp::types::ExportTraceServiceRequest;
use prost::Message as _;

use super::{LoadgenOptions, instantiate, templates};
use crate::config::otlp_exporter::{
    Compression, OtlpExporterConfig, Protocol, RetryOnFailure, SendingQueue,
};
use crate::exporters::otlp::{ExportRequest, OtlpClient, Signal};

/// The most distinct requests built (at 512 spans, about 50 MB of encoded spans).
const POOL: usize = 64;

/// One encoded request and what it holds.
struct Packed {
    body: Bytes,
    traces: u64,
    spans: u64,
}

/// What the answers said.
#[derive(Default)]
struct Tally {
    delivered: AtomicU64,
    failed: AtomicU64,
    rejected_spans: AtomicU64,
}

/// Sends `options.traces` traces to `endpoint`; returns the spans sent.
pub(super) fn send(endpoint: &str, options: &LoadgenOptions) -> anyhow::Result<u64> {
    if options.spans_per_request == 0 || options.concurrency == 0 {
        bail!("--spans-per-request and --concurrency must be at least 1");
    }
    let pool = pack(options)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("loadgen-otlp")
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let config = OtlpExporterConfig {
        endpoint: endpoint.to_owned(),
        headers: Default::default(),
        compression: Compression::None,
        timeout: Some(Duration::from_secs(30)),
        retry_on_failure: RetryOnFailure {
            enabled: true,
            initial_interval: Duration::from_millis(50),
            max_interval: Duration::from_secs(1),
            multiplier: 1.5,
            max_elapsed_time: Duration::from_secs(120),
        },
        sending_queue: SendingQueue {
            enabled: true,
            num_consumers: options.concurrency,
            queue_size: options.concurrency,
            batch: None,
        },
        output: vec![crate::config::Output::Spans],
    };
    let client = OtlpClient::start(&config, Protocol::Grpc, runtime.handle())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let (mut traces, mut spans, mut requests) = (0u64, 0u64, 0u64);
    for (i, packed) in pool.iter().cycle().enumerate() {
        if traces >= options.traces {
            break;
        }
        if options.rate > 0 {
            let due = Duration::from_secs_f64(traces as f64 / options.rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let tally = tally.clone();
        let packed_spans = packed.spans;
        client.send(ExportRequest::new(
            Signal::Traces,
            packed.body.clone(),
            move |outcome| match outcome {
                Ok(delivered) => {
                    tally.delivered.fetch_add(1, Ordering::Relaxed);
                    if let Some(partial) = delivered.partial_success {
                        let rejected = partial.rejected.max(0) as u64;
                        tally.rejected_spans.fetch_add(rejected, Ordering::Relaxed);
                    }
                }
                Err(_) => {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    tally
                        .rejected_spans
                        .fetch_add(packed_spans, Ordering::Relaxed);
                }
            },
        ));
        traces += packed.traces;
        spans += packed.spans;
        requests = i as u64 + 1;
    }
    if !client.flush(Duration::from_secs(300)) {
        bail!("requests still unanswered after 300 s");
    }
    let seconds = started.elapsed().as_secs_f64();
    let stats = client.stats();
    eprintln!(
        "sent {traces} traces ({spans} spans) to {endpoint} in {requests} requests (a pool of {} distinct) in {seconds:.2} s: {:.0} spans/s; {} refused and retried, {} failed, {} spans rejected",
        pool.len(),
        spans as f64 / seconds,
        stats.retries,
        tally.failed.load(Ordering::Relaxed),
        tally.rejected_spans.load(Ordering::Relaxed),
    );
    if tally.failed.load(Ordering::Relaxed) > 0 {
        bail!("some requests failed for good");
    }
    Ok(spans)
}

/// Builds and encodes the pool: consecutive fresh traces, packed until a request holds
/// `spans_per_request` spans.
fn pack(options: &LoadgenOptions) -> anyhow::Result<Vec<Packed>> {
    let templates = templates()?;
    let now = crate::now_unix_nanos();
    let mut pool = Vec::new();
    let mut request = ExportTraceServiceRequest::default();
    let (mut traces, mut spans) = (0u64, 0u64);
    let mut i = 0u64;
    while pool.len() < POOL && i < options.traces {
        let template = &templates[(i % templates.len() as u64) as usize];
        let trace = instantiate(
            template,
            options.seed.wrapping_mul(1_000_003).wrapping_add(i),
            now,
        );
        spans += evalstream_evaluators::otlp::span_count(&trace) as u64;
        traces += 1;
        request.resource_spans.extend(trace.resource_spans);
        i += 1;
        if spans as usize >= options.spans_per_request || i == options.traces {
            pool.push(Packed {
                body: request.encode_to_vec().into(),
                traces,
                spans,
            });
            request = ExportTraceServiceRequest::default();
            (traces, spans) = (0, 0);
        }
    }
    Ok(pool)
}
