//! Trace assembly at 100,000 traces in flight: how fast spans enter the trace buffer, how much
//! memory the buffered traces take, and how fast complete traces are judged by the trace
//! evaluators. Prints figures (`cargo bench -p evalstream --bench assembly`); `TRACES` sets the
//! number of traces.
//!
//! The traces are the corpus's (five instrumentations, 2.4 spans each on average) with fresh
//! ids, so the buffer holds what a worker behind a collector holds.

mod support;

use std::time::{Duration, Instant};

use evalstream::pipeline::assembly::{
    AssemblyConfig, DecodedSpan, SharedParts, StoredSpan, TraceBuffer,
};
use evalstream_evaluators::spec::{self, EvaluatorSpec};
use evalstream_evaluators::trace::TraceView;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The process's resident memory in bytes, from `/proc/self/status`.
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn main() {
    let traces = support::traces_from_env(100_000);
    let requests = support::corpus_requests(traces);
    let spans: usize = requests
        .iter()
        .map(|r| evalstream_evaluators::span::spans(r).count())
        .sum();

    // Into the buffer: what a worker does per message (view and group the spans, keep the
    // fields, add).
    let mut buffer: TraceBuffer<()> = TraceBuffer::new(AssemblyConfig {
        max_traces: traces as usize + 1,
        max_bytes: usize::MAX,
        ..AssemblyConfig::default()
    });
    let before = rss();
    let started = Instant::now();
    let t0 = Instant::now();
    for request in &requests {
        let mut shared = SharedParts::default();
        for trace in TraceView::group(evalstream_evaluators::span::spans(request), false) {
            let stored = StoredSpan::from_trace(&trace, &mut shared, false);
            let evicted = buffer.add(trace.trace_id(), stored, (), t0);
            assert!(evicted.is_empty());
        }
    }
    let add = started.elapsed();
    let after = rss();
    let buffered_bytes = buffer.bytes();
    drop(requests);
    println!(
        "trace buffer: {traces} traces, {spans} spans added in {:.2} s: {:.0} spans/s, {:.0} traces/s (one thread)",
        add.as_secs_f64(),
        spans as f64 / add.as_secs_f64(),
        traces as f64 / add.as_secs_f64()
    );
    println!(
        "memory at {traces} traces in flight: {:.0} MiB resident for the buffer ({:.0} B per trace); spans' encoded size {:.0} MiB",
        mib(after.saturating_sub(before)),
        after.saturating_sub(before) as f64 / traces as f64,
        mib(buffered_bytes as u64)
    );

    // Finding what is due: a scan per tick over every buffered trace.
    let started = Instant::now();
    assert!(buffer.due(t0 + Duration::from_secs(1)).is_empty());
    println!(
        "due check over {traces} buffered traces: {:.2} ms (once per 100 ms tick)",
        started.elapsed().as_secs_f64() * 1e3
    );
    let started = Instant::now();
    let ready = buffer.due(t0 + Duration::from_secs(61));
    let taken = started.elapsed();
    assert_eq!(ready.len() as u64, traces);
    println!(
        "taking {traces} due traces: {:.0} ms",
        taken.as_secs_f64() * 1e3
    );

    // Judging complete traces: the trace evaluators on every span of each trace.
    let specs: Vec<EvaluatorSpec> = serde_json::from_value(serde_json::json!([
        {"type": "citations"},
        {"type": "tool_args"},
        {"type": "grounding"},
        {"type": "agent_loop"},
    ]))
    .expect("trace evaluator specs");
    let set = spec::build_set(&specs).expect("trace evaluators");
    let started = Instant::now();
    let mut evaluations = 0usize;
    let mut out = Vec::new();
    for trace in &ready {
        let decoded: Vec<_> = trace.spans.iter().map(StoredSpan::decode).collect();
        let views = decoded.iter().map(DecodedSpan::view).collect();
        let view = TraceView::new(views, trace.completion.is_complete());
        for s in view.spans() {
            out.clear();
            set.evaluate_in(s, &view, &mut out);
            evaluations += out.len();
        }
    }
    let judged = started.elapsed();
    println!(
        "judging complete traces (decode, citations, tool_args, grounding, agent_loop): {:.0} traces/s, {:.0} spans/s, {evaluations} evaluations (one thread)",
        traces as f64 / judged.as_secs_f64(),
        spans as f64 / judged.as_secs_f64()
    );

    drop(ready);

    // Tail sampling keeps every span whole (to forward kept traces as they came), where trace
    // evaluators keep application spans as skeletons: the same traces again, side by side.
    let requests = support::corpus_requests(traces);
    let mut whole: TraceBuffer<()> = TraceBuffer::new(AssemblyConfig {
        max_traces: traces as usize + 1,
        max_bytes: usize::MAX,
        ..AssemblyConfig::default()
    });
    let started = Instant::now();
    for request in &requests {
        let mut shared = SharedParts::default();
        for trace in TraceView::group(evalstream_evaluators::span::spans(request), false) {
            let stored = StoredSpan::from_trace(&trace, &mut shared, true);
            assert!(whole.add(trace.trace_id(), stored, (), t0).is_empty());
        }
    }
    let add_whole = started.elapsed();
    // Resident memory is not compared: the first buffer's freed pages are reused here.
    println!(
        "with tail sampling (every span whole): {:.0} spans/s added (skeletons: {:.0}); buffered bytes (what max_bytes counts) {:.0} MiB (skeletons: {:.0} MiB)",
        spans as f64 / add_whole.as_secs_f64(),
        spans as f64 / add.as_secs_f64(),
        mib(whole.bytes() as u64),
        mib(buffered_bytes as u64)
    );
    // Forwarding a kept trace: its request rebuilt from the stored spans and encoded.
    let ready = whole.due(t0 + Duration::from_secs(61));
    let started = Instant::now();
    let mut bytes = 0usize;
    for trace in &ready {
        bytes += prost::Message::encoded_len(&StoredSpan::request(&trace.spans));
    }
    let rebuilt = started.elapsed();
    println!(
        "forwarding requests rebuilt from stored spans: {:.0} traces/s, {:.0} spans/s, {:.0} MiB (one thread)",
        traces as f64 / rebuilt.as_secs_f64(),
        spans as f64 / rebuilt.as_secs_f64(),
        mib(bytes as u64)
    );
}
