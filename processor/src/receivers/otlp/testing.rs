//! What the receiver's tests share: an [`Intake`] that records requests and answers as told, a
//! configuration on free loopback ports, a request counter, and a small request in both encodings.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use evalstream_evaluators::otlp::kv_str;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use tokio::sync::{mpsc, oneshot};

use super::{Answer, Busy, Intake, Request};
use crate::config::otlp_receiver::{GrpcConfig, HttpConfig, OtlpReceiverConfig, Protocols};

/// How the test intake answers the next requests.
#[derive(Debug, Clone)]
pub(super) enum Behaviour {
    /// Takes the request and answers this at once.
    Answer(Answer),
    /// Refuses: the pipeline is full.
    Busy(Duration),
    /// Takes the request and hands its answer's sender to the test.
    Hold,
    /// Takes the request and drops the sender without answering.
    Drop,
}

/// An intake that records what it is given.
#[derive(Debug)]
pub(super) struct TestIntake {
    behaviour: Mutex<Behaviour>,
    requests: Mutex<Vec<(Request, usize)>>,
    held: mpsc::Sender<oneshot::Sender<Answer>>,
}

impl TestIntake {
    /// The intake, and where held answers' senders arrive.
    pub(super) fn new(
        behaviour: Behaviour,
    ) -> (Arc<TestIntake>, mpsc::Receiver<oneshot::Sender<Answer>>) {
        let (held, senders) = mpsc::channel(64);
        let intake = TestIntake {
            behaviour: Mutex::new(behaviour),
            requests: Mutex::new(Vec::new()),
            held,
        };
        (Arc::new(intake), senders)
    }

    /// Changes how the next requests are answered.
    pub(super) fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap_or_else(|e| e.into_inner()) = behaviour;
    }

    /// The trace requests taken so far, with their sizes.
    pub(super) fn requests(&self) -> Vec<(ExportTraceServiceRequest, usize)> {
        self.taken()
            .into_iter()
            .filter_map(|(r, bytes)| match r {
                Request::Traces(r) => Some((r, bytes)),
                Request::Logs(_) => None,
            })
            .collect()
    }

    /// The requests of either signal taken so far, with their sizes.
    pub(super) fn taken(&self) -> Vec<(Request, usize)> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Spans taken so far.
    pub(super) fn spans(&self) -> usize {
        self.requests()
            .iter()
            .map(|(r, _)| evalstream_evaluators::otlp::span_count(r))
            .sum()
    }
}

impl Intake for TestIntake {
    fn submit(&self, request: Request, bytes: usize) -> Result<oneshot::Receiver<Answer>, Busy> {
        let behaviour = self
            .behaviour
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Behaviour::Busy(retry_after) = behaviour {
            return Err(Busy { retry_after });
        }
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((request, bytes));
        let (answer, receiver) = oneshot::channel();
        match behaviour {
            Behaviour::Answer(a) => {
                let _ = answer.send(a);
            }
            Behaviour::Hold => {
                let _ = self.held.try_send(answer);
            }
            Behaviour::Drop | Behaviour::Busy(_) => drop(answer),
        }
        Ok(receiver)
    }
}

/// Both protocols on free loopback ports, with the default limits.
pub(super) fn config() -> OtlpReceiverConfig {
    OtlpReceiverConfig {
        protocols: Protocols {
            grpc: Some(GrpcConfig {
                endpoint: "127.0.0.1:0".into(),
                ..GrpcConfig::default()
            }),
            http: Some(HttpConfig {
                endpoint: "127.0.0.1:0".into(),
                ..HttpConfig::default()
            }),
        },
        ..OtlpReceiverConfig::default()
    }
}

/// A fresh, unregistered `evalstream_otlp_requests_total`.
pub(super) fn counts() -> prometheus::IntCounterVec {
    prometheus::IntCounterVec::new(
        prometheus::Opts::new("evalstream_otlp_requests_total", "OTLP export requests."),
        &["protocol", "outcome"],
    )
    .unwrap_or_else(|e| panic!("the counter's labels are valid: {e}"))
}

/// An answer of full success.
pub(super) fn accepted() -> Answer {
    Answer::Accepted {
        rejected_spans: 0,
        message: String::new(),
    }
}

/// A request of `spans` LLM spans of one trace.
pub(super) fn request(spans: usize) -> ExportTraceServiceRequest {
    let spans = (0..spans)
        .map(|i| Span {
            trace_id: (1..=16).collect(),
            span_id: vec![0xa0, 0, 0, 0, 0, 0, 0, i as u8 + 1],
            name: format!("chat {i}"),
            kind: 3,
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_001_000_000_000,
            attributes: vec![kv_str("gen_ai.request.model", "gpt-test")],
            ..Span::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv_str("service.name", "shop")],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "test".into(),
                    ..InstrumentationScope::default()
                }),
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

/// [`request`] in OTLP/JSON: hex ids (upper case, which OTLP/JSON allows), 64-bit integers as
/// strings.
pub(super) fn request_json(spans: usize) -> String {
    let spans: Vec<String> = (0..spans)
        .map(|i| {
            format!(
                r#"{{"traceId":"0102030405060708090A0B0C0D0E0F10","spanId":"a0000000000000{:02x}","name":"chat {i}","kind":3,"startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000001000000000","attributes":[{{"key":"gen_ai.request.model","value":{{"stringValue":"gpt-test"}}}}]}}"#,
                i + 1
            )
        })
        .collect();
    format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"shop"}}}}]}},"scopeSpans":[{{"scope":{{"name":"test"}},"spans":[{}]}}]}}]}}"#,
        spans.join(",")
    )
}
