//! The join's runtime: the workers put spans without content and content log events into one
//! [`JoinBuffer`] (behind a mutex: each call is a few hash-map operations, far shorter than the
//! decoding around it), a thread of its own releases what waited too long, and whoever released
//! a span evaluates it — the worker that brought its other half, or that thread.
//!
//! A released span is evaluated as a worker would have: its span evaluators now, with the
//! events' content attached, then (when trace evaluators are configured) into the trace buffer.
//! The holds of every input that contributed — the span's and its events' — go with it, so a
//! logs input is acknowledged only once the spans its events joined were evaluated and their
//! evaluations delivered, or once its events were dropped (counted).
//!
//! Only started when a receiver takes logs: without, spans never wait.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use evalstream_evaluators::logs;
use evalstream_evaluators::trace::TraceView;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;

use super::ack::{Hold, Token};
use super::assembly::StoredSpan;
use super::evaluate::{Pass, Scoring, panic_message};
use super::join::{JoinBuffer, JoinConfig, JoinCounts, ReadySpan, Released};
use super::judge::JudgeService;
use super::traces::{Assembler, Selector};

/// How often the join looks for waits that ran out.
const TICK: Duration = Duration::from_millis(100);

/// The join, shared by the workers and the receivers that let inputs go.
pub struct Joiner {
    buffer: Mutex<JoinBuffer<Hold>>,
    held: Arc<AtomicUsize>,
    scoring: Arc<Scoring>,
    traces: Option<Assembler>,
    judges: Option<Arc<JudgeService>>,
}

/// Stops the join's thread when dropped, after it released everything it held.
pub struct JoinThread {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl JoinThread {
    /// Releases every waiting span (evaluated as it is) and drops the waiting events, then
    /// waits for the thread.
    pub fn stop(mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Joiner {
    /// Starts the join and its thread.
    pub fn start(
        config: &JoinConfig,
        scoring: Arc<Scoring>,
        traces: Option<Assembler>,
        judges: Option<Arc<JudgeService>>,
    ) -> std::io::Result<(Arc<Joiner>, JoinThread)> {
        let joiner = Arc::new(Joiner {
            buffer: Mutex::new(JoinBuffer::new(config.clone())),
            held: Arc::new(AtomicUsize::new(0)),
            scoring,
            traces,
            judges,
        });
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let ticking = joiner.clone();
        let thread = crate::evaluation_thread("evalstream-join".into())
            .spawn(move || ticking.run(&stopped))?;
        Ok((
            joiner,
            JoinThread {
                stop: Some(stop),
                thread: Some(thread),
            },
        ))
    }

    /// Inputs held by waiting spans and events, for the receivers' in-flight limits (the join's
    /// own limits bound them).
    pub fn held(&self) -> Arc<AtomicUsize> {
        self.held.clone()
    }

    fn run(&self, stopped: &Receiver<()>) {
        // Until stopped (the sender dropped).
        while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(TICK) {
            let released = self.with_buffer(|b| b.due(Instant::now()));
            self.handle(released);
        }
        let released = self.with_buffer(JoinBuffer::drain);
        self.handle(released);
    }

    fn with_buffer<R>(&self, f: impl FnOnce(&mut JoinBuffer<Hold>) -> R) -> R {
        // A panic while holding the lock (a bug) leaves consistent data: each call is a few
        // map operations that do not unwind halfway through a change that matters here.
        let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        let out = f(&mut buffer);
        let metrics = &self.scoring.metrics;
        metrics.join_spans_waiting.set(buffer.spans() as i64);
        metrics
            .join_events_waiting
            .set(buffer.event_groups() as i64);
        metrics.join_bytes.set(buffer.bytes() as i64);
        out
    }

    /// Model-call spans without content, from the input of `token`: they wait for their events
    /// (or take the ones waiting). The input is held until they are evaluated.
    pub fn add_spans(&self, spans: Vec<(Vec<u8>, StoredSpan)>, token: &Token) {
        for (span_id, span) in spans {
            let hold = Hold::new(token, &self.held);
            let released = self.with_buffer(|b| b.add_span(&span_id, span, hold, Instant::now()));
            self.handle(released);
        }
    }

    /// A span that carried its content: events waiting for it are not needed.
    pub fn content_present(&self, span_id: &[u8]) {
        let dropped = self.with_buffer(|b| b.discard_events(span_id));
        if dropped > 0 {
            self.count("unneeded", dropped);
        }
    }

    /// The content events of a logs input: each group joins its span or waits for it. The input
    /// is held until they joined and were evaluated, or were dropped.
    pub fn add_logs(&self, request: &ExportLogsServiceRequest, token: &Token) {
        let extracted = logs::content_events(request);
        if extracted.without_span > 0 {
            self.count("no_span", extracted.without_span as u64);
        }
        for (span_id, events) in logs::by_span(extracted.events) {
            let hold = Hold::new(token, &self.held);
            let released =
                self.with_buffer(|b| b.add_events(&span_id, events, hold, Instant::now()));
            self.handle(released);
        }
    }

    /// Releases now the spans and events of the inputs `selector` picks (a revoked partition).
    pub fn flush(&self, selector: &Selector) {
        let released = self.with_buffer(|b| b.flush_where(|h| selector(h.token())));
        self.handle(released);
    }

    fn count(&self, outcome: &str, n: u64) {
        self.scoring
            .metrics
            .log_events
            .with_label_values(&[outcome])
            .inc_by(n);
    }

    fn handle(&self, released: Released<Hold>) {
        let JoinCounts {
            expired,
            evicted,
            flushed,
        } = released.dropped;
        for (outcome, n) in [
            ("expired", expired),
            ("evicted", evicted),
            ("flushed", flushed),
        ] {
            if n > 0 {
                self.count(outcome, n);
            }
        }
        for ready in released.spans {
            self.evaluate(ready);
        }
    }

    /// Evaluates a span that left the join, as the worker would have, then lets go of its
    /// inputs (the exporters and the trace buffer now hold them).
    fn evaluate(&self, ready: ReadySpan<Hold>) {
        let metrics = &self.scoring.metrics;
        metrics
            .join_spans
            .with_label_values(&[ready.release.as_str()])
            .inc();
        if !ready.events.is_empty() {
            self.count("joined", ready.events.len() as u64);
        }
        let judged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut decoded = ready.span.decode();
            decoded.attach(ready.events);
            let trace = TraceView::new(vec![decoded.view()], false);
            let tokens: Vec<Token> = ready.holds.iter().map(|h| h.token().clone()).collect();
            let pass = if self.traces.is_some() {
                Pass::Spans
            } else {
                Pass::All
            };
            let sampling = self.traces.as_ref().is_some_and(Assembler::samples);
            let mut notes = Vec::new();
            self.scoring.score_noting(
                std::slice::from_ref(&trace),
                pass,
                &tokens,
                self.judges.as_deref(),
                sampling.then_some(&mut notes),
            );
            if let Some(assembler) = &self.traces
                && assembler.buffers(&self.scoring, trace.trace_id())
                && let Some((first, rest)) = tokens.split_first()
            {
                let trace_id = trace.trace_id().to_vec();
                let joined = trace.spans().iter().map(StoredSpan::of_view).collect();
                let verdicts = notes.pop().unwrap_or_default();
                assembler.add(trace_id.clone(), joined, first, verdicts);
                // The events' inputs are held by the trace too: its evaluations read them.
                for token in rest {
                    assembler.add(trace_id.clone(), Vec::new(), token, Default::default());
                }
            }
        }));
        if let Err(panic) = judged {
            tracing::error!(message = %panic_message(panic.as_ref()),
                "evaluating a joined span panicked; its evaluations are lost");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use evalstream_evaluators::otlp;
    use evalstream_evaluators::pricing::PriceTable;
    use evalstream_evaluators::spec;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::trace::v1::Span;

    use super::*;
    use crate::pipeline::ack::{Origin, Rejection, Status};
    use crate::pipeline::export::{Exporter, Exporters, Outputs, Shapes};
    use crate::telemetry::metrics::Metrics;

    /// An input that says when it finished.
    struct Input(&'static str, crossbeam_channel::Sender<&'static str>);

    impl Origin for Input {
        fn finished(&self, _: Status) {
            let _ = self.1.send(self.0);
        }
        fn rejected(&self, _: Token, _: Rejection) {}
    }

    /// Keeps the JSON lines of every evaluation (holding no token).
    #[derive(Default)]
    struct Lines(Mutex<Vec<serde_json::Value>>);

    impl Exporter for Lines {
        fn id(&self) -> &str {
            "lines"
        }
        fn shapes(&self) -> Shapes {
            Shapes {
                lines: true,
                ..Shapes::default()
            }
        }
        fn export(&self, outputs: &Outputs, _: &[Token]) {
            let mut lines = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            lines.extend(
                outputs
                    .lines
                    .iter()
                    .filter_map(|l| serde_json::from_str(l).ok()),
            );
        }
        fn flush(&self, _: Duration) -> bool {
            true
        }
    }

    fn chat(span_id: u8) -> (Vec<u8>, StoredSpan) {
        let span = Span {
            trace_id: vec![1; 16],
            span_id: vec![span_id; 8],
            name: "chat gpt-4o".into(),
            attributes: vec![otlp::kv_str("gen_ai.operation.name", "chat")],
            ..Default::default()
        };
        (span.span_id.clone(), StoredSpan::new(&span, None, None))
    }

    fn refusal_event(span_id: u8) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord {
                        event_name: logs::DETAILS_EVENT.into(),
                        trace_id: vec![1; 16],
                        span_id: vec![span_id; 8],
                        attributes: vec![otlp::kv_str(
                            "gen_ai.output.messages",
                            r#"[{"role":"assistant","parts":[{"type":"text","content":"I can't help with that."}]}]"#,
                        )],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// The runtime on its own: a span and its event meet in either order and the span is judged
    /// on the event's content; a span whose events never come is judged as it is once its wait
    /// runs out; an event whose span never comes is dropped once its own runs out. Each input
    /// finishes exactly then, and each outcome is counted.
    #[test]
    fn spans_and_events_meet_or_time_out_and_their_inputs_finish() {
        let specs: Vec<spec::EvaluatorSpec> =
            serde_json::from_str(r#"[{"type": "refusal"}]"#).unwrap();
        let set = Arc::new(spec::build_set(&specs).unwrap());
        let lines = Arc::new(Lines::default());
        let metrics = Metrics::new(set.evaluators(), &[], 0).unwrap();
        let scoring = Arc::new(Scoring {
            evaluators: set,
            exporters: Arc::new(Exporters::new(vec![Box::new(lines.clone())])),
            metrics: metrics.clone(),
            prices: PriceTable::new(true, &Default::default()).unwrap(),
            budgets: None,
        });
        let config = JoinConfig {
            // Long enough that a busy test machine does not release a span before the test
            // brings its event.
            span_wait_seconds: 1.0,
            event_wait_seconds: 1.0,
            ..JoinConfig::default()
        };
        let (joiner, thread) = Joiner::start(&config, scoring, None, None).unwrap();
        let (tx, finished) = crossbeam_channel::unbounded();
        let token = |name| Token::new(Input(name, tx.clone()));
        let verdict = |span_id: u8| {
            let lines = lines.0.lock().unwrap_or_else(PoisonError::into_inner);
            lines
                .iter()
                .find(|l| l["span_id"] == otlp::hex(&[span_id; 8]))
                .map(|l| (l["label"].clone(), l["skip_reason"].clone()))
        };

        // Span first, then its event: judged on the event's content at once.
        let (spans_a, logs_a) = (token("spans a"), token("logs a"));
        joiner.add_spans(vec![chat(1)], &spans_a);
        drop(spans_a);
        assert!(finished.try_recv().is_err(), "the span's input waits");
        assert_eq!(verdict(1), None);
        joiner.add_logs(&refusal_event(1), &logs_a);
        drop(logs_a);
        let mut done = vec![finished.recv_timeout(Duration::from_secs(1)).unwrap()];
        done.push(finished.recv_timeout(Duration::from_secs(1)).unwrap());
        done.sort();
        assert_eq!(done, ["logs a", "spans a"]);
        assert_eq!(verdict(1).unwrap().0, "refused");

        // Event first, then its span.
        let (logs_b, spans_b) = (token("logs b"), token("spans b"));
        joiner.add_logs(&refusal_event(2), &logs_b);
        drop(logs_b);
        assert!(finished.try_recv().is_err(), "the event's input waits");
        joiner.add_spans(vec![chat(2)], &spans_b);
        drop(spans_b);
        assert_eq!(verdict(2).unwrap().0, "refused");
        let mut done = vec![finished.recv_timeout(Duration::from_secs(1)).unwrap()];
        done.push(finished.recv_timeout(Duration::from_secs(1)).unwrap());
        done.sort();
        assert_eq!(done, ["logs b", "spans b"]);

        // A span alone is judged as it is once its wait ran out; an event alone is dropped.
        let started = Instant::now();
        let (spans_c, logs_d) = (token("spans c"), token("logs d"));
        joiner.add_spans(vec![chat(3)], &spans_c);
        joiner.add_logs(&refusal_event(4), &logs_d);
        drop((spans_c, logs_d));
        let mut done = vec![finished.recv_timeout(Duration::from_secs(10)).unwrap()];
        done.push(finished.recv_timeout(Duration::from_secs(10)).unwrap());
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "not before the waits"
        );
        done.sort();
        assert_eq!(done, ["logs d", "spans c"]);
        assert_eq!(verdict(3).unwrap().1, "no_content");
        assert_eq!(verdict(4), None);

        let count = |outcome: &str| metrics.log_events.with_label_values(&[outcome]).get();
        assert_eq!((count("joined"), count("expired")), (2, 1));
        let released = |how: &str| metrics.join_spans.with_label_values(&[how]).get();
        assert_eq!((released("joined"), released("timed_out")), (2, 1));
        thread.stop();
    }
}
