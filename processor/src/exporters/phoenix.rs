//! The `phoenix` exporter: each scored or errored evaluation as an Arize Phoenix *span
//! annotation* on the span it judges, which is where Phoenix shows evaluations (its UI and REST
//! API list a span's annotations; evaluator spans only show up as more spans, and it takes no
//! log events).
//!
//! One `POST {endpoint}/v1/span_annotations` per trace's evaluations (in requests of at most
//! [`MAX_PER_REQUEST`]), body `{"data": [annotation, …]}`, each annotation (as Phoenix 20.26
//! reads it, `SpanAnnotationData`):
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

use std::time::Duration;

use evalstream_evaluators::evaluator::Outcome;
use evalstream_evaluators::otlp;
use evalstream_evaluators::to_otlp::{MAX_EXPLANATION_BYTES, MAX_NAME_BYTES, capped};
use serde::Serialize;

use super::otlp::{ExportRequest, OtlpClient, Signal};
use crate::pipeline::ack::{Rejection, Token};
use crate::pipeline::export::{Exporter, Outputs, Shapes, Verdict};

/// Annotations per request: a trace of 300 LLM spans judged by 10 evaluators is 3,000
/// annotations (about 1.5 MB of JSON); requests stay under a few hundred kilobytes.
pub const MAX_PER_REQUEST: usize = 500;

/// The annotation name Phoenix reserves for notes (`POST /v1/span_annotations` refuses the whole
/// request with 400 when one annotation bears it).
const RESERVED_NAME: &str = "note";

/// One span annotation, as Phoenix reads it.
#[derive(Debug, Serialize, PartialEq)]
pub struct Annotation {
    /// The judged span's id, hex.
    pub span_id: String,
    /// The evaluator's name.
    pub name: String,
    /// `LLM` or `CODE`.
    pub annotator_kind: &'static str,
    /// The score id, hex: what makes a replay an update.
    pub identifier: String,
    /// The verdict.
    pub result: AnnotationResult,
    /// What else evalstream knows of it.
    pub metadata: Metadata,
}

/// An annotation's `result`.
#[derive(Debug, Serialize, PartialEq)]
pub struct AnnotationResult {
    /// The score (none for an errored evaluation).
    pub score: Option<f64>,
    /// The label (`error` for an errored evaluation).
    pub label: String,
    /// Why, or what failed.
    pub explanation: String,
}

/// An annotation's `metadata`.
#[derive(Debug, Serialize, PartialEq)]
pub struct Metadata {
    /// `source: evalstream`, telling evalstream's annotations from others' in Phoenix.
    pub source: &'static str,
    /// evalstream's version.
    pub evalstream_version: &'static str,
    /// The evaluator's type (`llm_judge`, `refusal`, …).
    pub evaluator_type: &'static str,
    /// The evaluator's version.
    pub evaluator_version: String,
    /// `scored` or `error`.
    pub outcome: &'static str,
    /// Whether it passed, when scored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passed: Option<bool>,
    /// What failed, when errored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    /// The score id, hex (as in evalstream's events and JSON lines).
    pub score_id: String,
    /// The judged span's trace id, hex.
    pub trace_id: String,
}

impl Annotation {
    /// The annotation of a verdict; `None` for a skip (never handed over, but not a verdict).
    pub fn new(verdict: &Verdict) -> Option<Annotation> {
        let (result, passed, error_type) = match &verdict.outcome {
            Outcome::Scored(score) => (
                AnnotationResult {
                    score: Some(score.value),
                    label: capped(&score.label, MAX_NAME_BYTES).into_owned(),
                    explanation: capped(&score.explanation, MAX_EXPLANATION_BYTES).into_owned(),
                },
                Some(score.passed),
                None,
            ),
            Outcome::Error {
                error_type,
                message,
            } => (
                AnnotationResult {
                    score: None,
                    label: "error".into(),
                    explanation: capped(message, MAX_EXPLANATION_BYTES).into_owned(),
                },
                None,
                Some(capped(error_type, MAX_NAME_BYTES).into_owned()),
            ),
            Outcome::Skipped { .. } => return None,
        };
        let name = capped(&verdict.evaluator, MAX_NAME_BYTES);
        let name = match name.as_ref() {
            RESERVED_NAME => format!("{RESERVED_NAME} (evalstream)"),
            _ => name.into_owned(),
        };
        Some(Annotation {
            span_id: otlp::hex(&verdict.span_id),
            name,
            annotator_kind: match verdict.evaluator_type {
                "llm_judge" => "LLM",
                _ => "CODE",
            },
            identifier: verdict.score_id.to_hex(),
            result,
            metadata: Metadata {
                source: "evalstream",
                evalstream_version: env!("CARGO_PKG_VERSION"),
                evaluator_type: verdict.evaluator_type,
                evaluator_version: capped(&verdict.version, MAX_NAME_BYTES).into_owned(),
                outcome: verdict.outcome.as_str(),
                passed,
                error_type,
                score_id: verdict.score_id.to_hex(),
                trace_id: otlp::hex(&verdict.trace_id),
            },
        })
    }
}

/// A request body: `{"data": [...]}`.
#[derive(Serialize)]
struct Body<'a> {
    data: &'a [Annotation],
}

/// The request bodies for a trace's verdicts, at most [`MAX_PER_REQUEST`] annotations each.
pub fn bodies(verdicts: &[Verdict]) -> Vec<Vec<u8>> {
    let annotations: Vec<Annotation> = verdicts.iter().filter_map(Annotation::new).collect();
    annotations
        .chunks(MAX_PER_REQUEST)
        // Serializing plain structs of strings and numbers to a Vec cannot fail.
        .filter_map(|data| serde_json::to_vec(&Body { data }).ok())
        .collect()
}

/// Writes evaluations to Phoenix.
pub struct PhoenixExporter {
    id: String,
    client: OtlpClient,
}

impl PhoenixExporter {
    /// An exporter with id `id` sending through `client` (an HTTP client of Phoenix's base URL).
    pub fn new(id: &str, client: OtlpClient) -> PhoenixExporter {
        PhoenixExporter {
            id: id.to_owned(),
            client,
        }
    }
}

impl Exporter for PhoenixExporter {
    fn id(&self) -> &str {
        &self.id
    }

    fn shapes(&self) -> Shapes {
        Shapes {
            verdicts: true,
            ..Shapes::default()
        }
    }

    fn export(&self, outputs: &Outputs, tokens: &[Token]) {
        for body in bodies(&outputs.verdicts) {
            let tokens = tokens.to_vec();
            let id = self.id.clone();
            self.client.send(ExportRequest::new(
                Signal::SpanAnnotations,
                body,
                move |outcome| {
                    if let Err(failed) = outcome {
                        tracing::warn!(exporter = %id, error = %failed, "evaluations not exported");
                        for token in &tokens {
                            token.reject(Rejection {
                                error_type: "delivery",
                                message: format!("exporter {id}: {failed}"),
                                output: None,
                            });
                        }
                    }
                    // Dropping the tokens lets the inputs go.
                },
            ));
        }
    }

    fn flush(&self, timeout: Duration) -> bool {
        self.client.flush(timeout)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::pipeline::ack::{Origin, Status};
    use evalstream_evaluators::evaluator::{Score, ScoreId};

    fn verdict(evaluator: &str, evaluator_type: &'static str, outcome: Outcome) -> Verdict {
        Verdict {
            trace_id: vec![0xab; 16],
            span_id: vec![0x0c; 8],
            evaluator: evaluator.into(),
            evaluator_type,
            version: "1.abcd".into(),
            score_id: ScoreId([0x11; 16]),
            outcome,
        }
    }

    #[test]
    fn verdicts_become_phoenix_span_annotations() {
        let scored = verdict(
            "faithfulness",
            "llm_judge",
            Outcome::Scored(Score {
                value: 0.25,
                label: "unfaithful".into(),
                passed: false,
                explanation: "claim 2 is not supported".into(),
            }),
        );
        let a = Annotation::new(&scored).unwrap();
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "span_id": "0c0c0c0c0c0c0c0c",
                "name": "faithfulness",
                "annotator_kind": "LLM",
                "identifier": "11111111111111111111111111111111",
                "result": {"score": 0.25, "label": "unfaithful", "explanation": "claim 2 is not supported"},
                "metadata": {
                    "source": "evalstream",
                    "evalstream_version": env!("CARGO_PKG_VERSION"),
                    "evaluator_type": "llm_judge",
                    "evaluator_version": "1.abcd",
                    "outcome": "scored",
                    "passed": false,
                    "score_id": "11111111111111111111111111111111",
                    "trace_id": "abababababababababababababababab"
                }
            })
        );

        let errored = verdict(
            "note",
            "script",
            Outcome::Error {
                error_type: "script".into(),
                message: "x".repeat(5000),
            },
        );
        let a = Annotation::new(&errored).unwrap();
        assert_eq!(a.annotator_kind, "CODE");
        assert_eq!(a.name, "note (evalstream)", "Phoenix reserves `note`");
        assert_eq!(a.result.score, None);
        assert_eq!(a.result.label, "error");
        assert!(a.result.explanation.len() <= MAX_EXPLANATION_BYTES);
        assert_eq!(a.metadata.error_type.as_deref(), Some("script"));
        assert_eq!(a.metadata.passed, None);

        let skipped = verdict("pii", "pii", Outcome::no_content());
        assert_eq!(Annotation::new(&skipped), None);
    }

    #[test]
    fn a_large_trace_is_split_into_bounded_requests() {
        let verdicts: Vec<Verdict> = (0..MAX_PER_REQUEST * 2 + 1)
            .map(|_| verdict("refusal", "refusal", Outcome::check(true, "ok", "")))
            .collect();
        let bodies = bodies(&verdicts);
        assert_eq!(bodies.len(), 3);
        let counts: Vec<usize> = bodies
            .iter()
            .map(|b| {
                let v: serde_json::Value = serde_json::from_slice(b).unwrap();
                v["data"].as_array().unwrap().len()
            })
            .collect();
        assert_eq!(counts, [MAX_PER_REQUEST, MAX_PER_REQUEST, 1]);
    }

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
        PhoenixExporter::new("phoenix", client)
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
