//! The `phoenix` exporter: each scored or errored evaluation as an Arize Phoenix *span
//! annotation* on the span it judges, which is where Phoenix shows evaluations (its UI and REST
//! API list a span's annotations; evaluator spans only show up as more spans, and it takes no
//! log events).
//!
//! Requests are `POST {endpoint}/v1/span_annotations`, body `{"data": [annotation, …]}`, each
//! annotation (as Phoenix 20.26 reads it, `SpanAnnotationData`; [`annotation`]):
//! - `span_id`: the judged span's, hex; `name`: the evaluator's name;
//! - `annotator_kind`: `LLM` for `llm_judge` evaluators, `CODE` for the others;
//! - `identifier`: the score id. Phoenix upserts on (name, span, identifier), so a replay of the
//!   same input (a restart, a redelivered Kafka message) updates the annotation instead of adding
//!   a second; a new evaluator version has a new score id, and a new annotation beside the old;
//! - `result`: `score`, `label`, `explanation` (an errored evaluation: label `error`, the error as
//!   explanation, no score);
//! - `metadata`: `evaluator_type`, `evaluator_version`, `outcome`, `passed`, `error_type`,
//!   `score_id`, `trace_id`, `source: evalstream` and evalstream's version.
//!
//! Batching: annotations of successive traces are gathered into one request of up to
//! `sending_queue.batch.max_size` (500 by default), sent when it is full or `flush_timeout` (200 ms) after its first annotation, whichever
//! comes first (as the collector's batch processor does). Phoenix is one Python process: a
//! request per trace, at a few hundred traces a second, is a few hundred requests a second for
//! what one request carries. A request holds the tokens of every input it carries annotations
//! of, so an input is let go only when every request with its annotations was answered; an
//! input may be held up to `flush_timeout` longer than its own annotations need.
//!
//! Phoenix's default (not `?sync=true`) mode queues annotations and answers at once; an
//! annotation whose span Phoenix does not hold yet is retried by Phoenix for up to 10 minutes
//! (60 tries, 10 s apart), so evaluations may arrive before the application's spans. The inputs
//! are let go once Phoenix answered 2xx; refused for good or out of retries, they are rejected
//! like every exporter's (the receiver answers the client with an error or dead-letters).
//!
//! Not written: citation verdicts per document. Phoenix 20.26 has document annotations (`POST
//! /v1/document_annotations`, by span and document position, identifier must be empty), but the
//! `citations` evaluator's verdict is one score per answer, naming unresolved citations in its
//! explanation; per-document verdicts would need that structure first.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::otlp::{ExportRequest, OtlpClient, Signal};
use crate::config::otlp_exporter::BatchConfig;
#[cfg(test)]
use crate::config::phoenix_exporter::{LINGER, MAX_PER_REQUEST};
use crate::pipeline::ack::Token;
use crate::pipeline::export::{Exporter, Outputs, Shapes};

pub mod annotation;

use annotation::Annotation;

/// Annotations gathered for the next request, with the tokens of the inputs they came from.
#[derive(Default)]
struct Pending {
    annotations: Vec<Annotation>,
    tokens: Vec<Token>,
    /// When the first of them came.
    since: Option<Instant>,
}

impl Pending {
    /// Up to `max` annotations, with the tokens they need: all of them when nothing is left,
    /// else clones (an input's annotations may be on both sides of the cut).
    fn take(&mut self, max: usize) -> (Vec<Annotation>, Vec<Token>) {
        if self.annotations.len() <= max {
            self.since = None;
            return (
                std::mem::take(&mut self.annotations),
                std::mem::take(&mut self.tokens),
            );
        }
        let rest = self.annotations.split_off(max);
        let full = std::mem::replace(&mut self.annotations, rest);
        (full, self.tokens.clone())
    }
}

/// What the exporter and its linger thread share.
struct Shared {
    id: String,
    client: OtlpClient,
    /// How annotations are gathered into requests (`sending_queue.batch`).
    batch: BatchConfig,
    pending: Mutex<Pending>,
    /// Signalled when a request starts gathering, and on stop.
    wake: Condvar,
    stopped: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends one request (waiting for room in the client's queue: backpressure); the tokens are
    /// held until Phoenix answered, and rejected when it refused for good or retries ran out.
    fn send(&self, annotations: &[Annotation], tokens: Vec<Token>) {
        if annotations.is_empty() {
            return;
        }
        self.client.send(ExportRequest::holding(
            Signal::SpanAnnotations,
            annotation::body(annotations),
            &self.id,
            tokens,
        ));
    }

    /// Sends everything gathered.
    fn send_all(&self) {
        loop {
            let (annotations, tokens) = self.pending().take(self.batch.max_size);
            if annotations.is_empty() {
                return;
            }
            self.send(&annotations, tokens);
        }
    }

    /// The linger thread: sends a gathering request once it is `flush_timeout` old.
    fn linger(&self) {
        let mut pending = self.pending();
        loop {
            if self.stopped.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            pending = match pending.since {
                None => self
                    .wake
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(since) => {
                    let due = since + self.batch.flush_timeout;
                    let now = Instant::now();
                    if now < due {
                        self.wake
                            .wait_timeout(pending, due - now)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0
                    } else {
                        let (annotations, tokens) = pending.take(self.batch.max_size);
                        drop(pending);
                        self.send(&annotations, tokens);
                        self.pending()
                    }
                }
            };
        }
    }
}

/// Writes evaluations to Phoenix.
pub struct PhoenixExporter {
    shared: Arc<Shared>,
    linger: Option<JoinHandle<()>>,
}

impl PhoenixExporter {
    /// An exporter with id `id` sending through `client` (an HTTP client of Phoenix's base URL),
    /// gathering annotations as `batch` says. Starts its linger thread.
    pub fn new(
        id: &str,
        client: OtlpClient,
        batch: BatchConfig,
    ) -> std::io::Result<PhoenixExporter> {
        let shared = Arc::new(Shared {
            id: id.to_owned(),
            client,
            batch,
            pending: Mutex::default(),
            wake: Condvar::new(),
            stopped: std::sync::atomic::AtomicBool::new(false),
        });
        let lingering = shared.clone();
        let linger = std::thread::Builder::new()
            .name("evalstream-phoenix".into())
            .spawn(move || lingering.linger())?;
        Ok(PhoenixExporter {
            shared,
            linger: Some(linger),
        })
    }
}

impl Exporter for PhoenixExporter {
    fn id(&self) -> &str {
        &self.shared.id
    }

    fn shapes(&self) -> Shapes {
        Shapes {
            verdicts: true,
            ..Shapes::default()
        }
    }

    fn export(&self, outputs: &Outputs, tokens: &[Token]) {
        let annotations: Vec<Annotation> = outputs
            .verdicts
            .iter()
            .filter_map(Annotation::new)
            .collect();
        if annotations.is_empty() {
            return;
        }
        let full = {
            let mut pending = self.shared.pending();
            if pending.since.is_none() {
                pending.since = Some(Instant::now());
                self.shared.wake.notify_one();
            }
            pending.annotations.extend(annotations);
            pending.tokens.extend(tokens.iter().cloned());
            pending.annotations.len() >= self.shared.batch.min_size
        };
        if full {
            // Full requests go now, from this thread: a full client queue makes it wait.
            loop {
                let (annotations, tokens) = {
                    let mut pending = self.shared.pending();
                    if pending.annotations.len() < self.shared.batch.min_size {
                        break;
                    }
                    let taken = pending.take(self.shared.batch.max_size);
                    if !pending.annotations.is_empty() {
                        pending.since = Some(Instant::now());
                    }
                    taken
                };
                self.shared.send(&annotations, tokens);
            }
        }
    }

    fn flush(&self, timeout: Duration) -> bool {
        self.shared.send_all();
        self.shared.client.flush(timeout)
    }
}

impl Drop for PhoenixExporter {
    fn drop(&mut self) {
        self.shared
            .stopped
            .store(true, std::sync::atomic::Ordering::Release);
        // Under the lock, so the linger thread is either waiting (and woken) or sees the flag.
        drop(self.shared.pending());
        self.shared.wake.notify_all();
        if let Some(linger) = self.linger.take() {
            let _ = linger.join();
        }
        // What was gathered and not flushed still goes (its tokens are rejected if the client's
        // runtime is gone), never silently dropped.
        self.shared.send_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::annotation::tests::verdict;
    use super::*;
    use crate::pipeline::ack::{Origin, Rejection, Status};
    use evalstream_evaluators::evaluator::Outcome;

    /// A fake Phoenix: records each request (path, content type, body) and answers `status`
    /// once `gate` opens.
    mod fake {
        use std::sync::{Arc, Mutex};

        use axum::http::{HeaderMap, StatusCode, Uri};
        use tokio::sync::watch;

        pub type Seen = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

        pub fn serve(
            rt: &tokio::runtime::Runtime,
            status: u16,
            body: &'static str,
        ) -> (String, Seen, watch::Sender<bool>) {
            let seen = Seen::default();
            let (gate, _) = watch::channel(false);
            let listener = rt
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .unwrap();
            let addr = listener.local_addr().unwrap();
            let (recorded, opened) = (seen.clone(), gate.clone());
            let app = axum::Router::new().fallback(
                move |uri: Uri, headers: HeaderMap, bytes: axum::body::Bytes| {
                    let (recorded, mut opened) = (recorded.clone(), opened.subscribe());
                    async move {
                        let kind = headers
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        recorded.lock().unwrap().push((
                            uri.path().to_owned(),
                            kind,
                            bytes.to_vec(),
                        ));
                        let _ = opened.wait_for(|open| *open).await;
                        (StatusCode::from_u16(status).unwrap(), body)
                    }
                },
            );
            rt.spawn(async move { axum::serve(listener, app).await });
            (format!("http://{addr}"), seen, gate)
        }
    }

    /// An origin that records what became of its input.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<(Vec<Status>, Vec<String>)>>);

    impl Origin for Recorder {
        fn finished(&self, status: Status) {
            self.0.lock().unwrap().0.push(status);
        }
        fn rejected(&self, _token: Token, rejection: Rejection) {
            self.0.lock().unwrap().1.push(rejection.message);
        }
    }

    fn exporter(endpoint: &str, rt: &tokio::runtime::Runtime) -> PhoenixExporter {
        let config: crate::config::phoenix_exporter::PhoenixExporterConfig =
            serde_json::from_value(serde_json::json!({
                "endpoint": endpoint,
                "retry_on_failure": {"initial_interval": "50ms", "max_elapsed_time": "1s"}
            }))
            .unwrap();
        let client =
            OtlpClient::start(&config.client_config(), config.protocol(), rt.handle()).unwrap();
        PhoenixExporter::new(
            "phoenix",
            client,
            crate::config::phoenix_exporter::default_batch(),
        )
        .unwrap()
    }

    /// The annotations in each request Phoenix got.
    fn counts(seen: &fake::Seen) -> Vec<usize> {
        seen.lock()
            .unwrap()
            .iter()
            .map(|(_, _, body)| {
                let v: serde_json::Value = serde_json::from_slice(body).unwrap();
                v["data"].as_array().unwrap().len()
            })
            .collect()
    }

    fn scored(n: usize) -> Outputs {
        Outputs {
            verdicts: (0..n)
                .map(|_| verdict("refusal", "refusal", Outcome::check(true, "ok", "")))
                .collect(),
            ..Outputs::default()
        }
    }

    #[test]
    fn small_traces_share_a_request_and_a_large_one_is_split() {
        let rt = runtime();
        let (endpoint, seen, gate) = fake::serve(&rt, 200, r#"{"data":[]}"#);
        gate.send_replace(true);
        let exporter = exporter(&endpoint, &rt);
        let origins: Vec<Recorder> = (0..3).map(|_| Recorder::default()).collect();
        // Three traces of three verdicts, within the linger: one request once it passed.
        for origin in &origins {
            exporter.export(&scored(3), &[Token::new(origin.clone())]);
        }
        std::thread::sleep(LINGER * 3);
        assert!(exporter.flush(Duration::from_secs(10)));
        assert_eq!(counts(&seen), [9]);
        for origin in &origins {
            assert_eq!(origin.0.lock().unwrap().0, [Status::Delivered]);
        }
        // A trace of more than two requests' worth goes at once in full requests, its rest on
        // flush; its input is let go when all are answered.
        seen.lock().unwrap().clear();
        let origin = Recorder::default();
        exporter.export(
            &scored(MAX_PER_REQUEST * 2 + 1),
            &[Token::new(origin.clone())],
        );
        assert!(exporter.flush(Duration::from_secs(10)));
        // The requests are sent concurrently: they may arrive in any order.
        let mut sizes = counts(&seen);
        sizes.sort_unstable();
        assert_eq!(sizes, [1, MAX_PER_REQUEST, MAX_PER_REQUEST]);
        assert_eq!(origin.0.lock().unwrap().0, [Status::Delivered]);
    }

    #[test]
    fn what_was_gathered_goes_when_the_exporter_is_dropped() {
        let rt = runtime();
        let (endpoint, seen, gate) = fake::serve(&rt, 200, r#"{"data":[]}"#);
        gate.send_replace(true);
        let origin = Recorder::default();
        {
            let exporter = exporter(&endpoint, &rt);
            exporter.export(&scored(2), &[Token::new(origin.clone())]);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while origin.0.lock().unwrap().0.is_empty() {
            assert!(std::time::Instant::now() < deadline, "never let go");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(origin.0.lock().unwrap().0, [Status::Delivered]);
        assert_eq!(counts(&seen), [2]);
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    fn outputs() -> Outputs {
        Outputs {
            verdicts: vec![
                verdict("refusal", "refusal", Outcome::check(true, "ok", "")),
                verdict("pii", "pii", Outcome::no_content()),
            ],
            ..Outputs::default()
        }
    }

    #[test]
    fn the_input_is_let_go_only_once_phoenix_took_the_annotations() {
        let rt = runtime();
        let (endpoint, seen, gate) = fake::serve(&rt, 200, r#"{"data":[]}"#);
        let exporter = exporter(&endpoint, &rt);
        let origin = Recorder::default();
        exporter.export(&outputs(), &[Token::new(origin.clone())]);
        // Sent, not answered: the input is still held.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while seen.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "nothing sent");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!exporter.flush(Duration::from_millis(200)));
        assert!(
            origin.0.lock().unwrap().0.is_empty(),
            "let go before the answer"
        );
        gate.send_replace(true);
        assert!(exporter.flush(Duration::from_secs(10)));
        assert_eq!(origin.0.lock().unwrap().0, [Status::Delivered]);
        let seen = seen.lock().unwrap();
        let (path, kind, body) = &seen[0];
        assert_eq!(path, "/v1/span_annotations");
        assert_eq!(kind, "application/json");
        let body: serde_json::Value = serde_json::from_slice(body).unwrap();
        let data = body["data"].as_array().unwrap();
        assert_eq!(data.len(), 1, "the skip is not an annotation");
        assert_eq!(data[0]["name"], "refusal");
    }

    #[test]
    fn a_refusal_rejects_the_input_with_phoenixs_answer() {
        let rt = runtime();
        let (endpoint, seen, gate) =
            fake::serve(&rt, 422, r#"{"detail":"invalid annotator_kind"}"#);
        gate.send_replace(true);
        let exporter = exporter(&endpoint, &rt);
        let origin = Recorder::default();
        exporter.export(&outputs(), &[Token::new(origin.clone())]);
        assert!(exporter.flush(Duration::from_secs(10)));
        let (finished, rejections) = origin.0.lock().unwrap().clone();
        assert_eq!(finished, [Status::Rejected]);
        assert_eq!(seen.lock().unwrap().len(), 1, "a 422 is not retried");
        assert!(
            rejections[0].contains("exporter phoenix: the backend answered http 422")
                && rejections[0].contains("invalid annotator_kind"),
            "{rejections:?}"
        );
    }
}
