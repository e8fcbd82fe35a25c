//! Bytes → OTLP request (protobuf and OTLP/JSON) → GenAI span views with every canonical field
//! read (the lazily parsed content included) → evaluators on each span and on each trace →
//! evaluator spans, encoded and decoded again. Any panic is a finding.
#![no_main]

use std::hint::black_box;
use std::sync::LazyLock;

use evalstream_evaluators::evaluator::{EvaluatorSet, Outcome};
use evalstream_evaluators::otlp::{self, Encoding, types::ExportTraceServiceRequest};
use evalstream_evaluators::span::{self, GenAiSpan};
use evalstream_evaluators::spec::{self, EvaluatorSpec};
use evalstream_evaluators::to_otlp;
use evalstream_evaluators::trace::TraceView;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

/// The default evaluators, the four trace evaluators, and a few configurable span evaluators
/// that read other parts of a span (input text, duration, a regular expression). Built once.
static EVALUATORS: LazyLock<EvaluatorSet> = LazyLock::new(|| {
    let extra: Vec<EvaluatorSpec> = serde_json::from_value(serde_json::json!([
        {"type": "citations"},
        {"type": "grounding"},
        {"type": "tool_args"},
        {"type": "agent_loop", "max_total_tokens": 1000, "max_cost_usd": 0.01},
        {"type": "pii", "name": "pii_in_prompt", "on": "input"},
        {"type": "json_schema", "schema": {"type": "object", "required": ["answer"]}},
        {"type": "length", "unit": "words", "min": 1, "max": 150},
        {"type": "latency", "max_seconds": 20},
        {"type": "regex", "pattern": "(?i)\\bsorry\\b", "on": "last_user_message"},
        {"type": "not_contains", "values": ["CompetitorCo", "OtherBrand"]},
        {"type": "contains", "name": "cites", "values": ["[1]"],
         "when": {"evaluator": "citations", "below": 1.0}}
    ]))
    .expect("the fuzz target's evaluator specs are valid");
    let mut specs = spec::default_specs();
    specs.extend(extra);
    spec::build_set(&specs).expect("the fuzz target's evaluators build")
});

fuzz_target!(|data: &[u8]| {
    let set = &*EVALUATORS;
    for encoding in [Encoding::OtlpProto, Encoding::OtlpJson] {
        if let Ok(request) = otlp::decode(data, encoding) {
            exercise(set, &request);
        }
    }
    // What `evalstream eval` does with a JSON file: one request after another.
    if Encoding::sniff(data) == Encoding::OtlpJson {
        for request in otlp::json_requests(data).take(8) {
            match request {
                Ok(request) => exercise(set, &request),
                Err(_) => break,
            }
        }
    }
});

fn exercise(set: &EvaluatorSet, request: &ExportTraceServiceRequest) {
    let views: Vec<GenAiSpan<'_>> = span::spans(request).collect();
    for view in &views {
        read_fields(view);
    }

    let mut evaluator_spans = Vec::new();
    let mut evaluations = Vec::new();
    // The worker's span pass: each span on its own, as it arrives.
    for view in span::spans(request) {
        evaluations.clear();
        set.evaluate(&view, &mut evaluations);
        for e in &evaluations {
            check_score(&e.outcome);
            if to_otlp::emits_span(e) {
                evaluator_spans.push(to_otlp::evaluation_span(&view, e, 1, 2));
            }
        }
    }
    // The trace pass, on partial traces (`evalstream eval`) and on complete ones (the worker's
    // trace assembly).
    for complete in [false, true] {
        let traces = TraceView::group(span::spans(request), complete);
        for trace in &traces {
            black_box((trace.trace_id(), trace.root().map(|r| r.span_id())));
            black_box(trace.documents().len());
        }
        for (trace, view) in TraceView::each_span(&traces) {
            black_box((trace.is_root(view), trace.documents_before(view).len()));
            evaluations.clear();
            set.evaluate_in(view, trace, &mut evaluations);
            for e in &evaluations {
                check_score(&e.outcome);
                if to_otlp::emits_span(e) {
                    evaluator_spans.push(to_otlp::evaluation_span(view, e, 3, 4));
                }
            }
        }
    }

    // The evaluator spans as the worker writes them (protobuf) and as `evalstream eval --output
    // x.otlp.json` does: both must read back as valid OTLP.
    let count = evaluator_spans.len();
    let out = to_otlp::export_request(evaluator_spans);
    let proto = out.encode_to_vec();
    let back = otlp::decode(&proto, Encoding::OtlpProto)
        .expect("evaluator spans encoded as otlp_proto decode again");
    assert_eq!(span::spans(&back).count(), count);
    let json = serde_json::to_vec(&out).expect("evaluator spans serialize as OTLP/JSON");
    let back = otlp::decode(&json, Encoding::OtlpJson)
        .expect("evaluator spans encoded as otlp_json decode again");
    assert_eq!(span::spans(&back).count(), count);
}

/// A score is a number a dashboard can plot.
fn check_score(outcome: &Outcome) {
    if let Outcome::Scored(score) = outcome {
        assert!(!score.value.is_nan(), "NaN score: {score:?}");
    }
}

/// Reads every canonical field of a span view, forcing the lazy content parse.
fn read_fields(s: &GenAiSpan<'_>) {
    black_box((
        s.trace_id(),
        s.span_id(),
        s.parent_span_id(),
        s.name(),
        s.kind(),
    ));
    let resource = s.resource();
    black_box((
        resource.service_name,
        resource.service_version,
        resource.environment,
        resource.attribute("service.name"),
    ));
    black_box((s.scope(), s.attribute("gen_ai.operation.name")));
    black_box((
        s.provider(),
        s.request_model(),
        s.response_model(),
        s.model(),
    ));
    black_box(s.usage());
    black_box(
        s.finish_reasons()
            .iter()
            .map(|f| f.as_str().len())
            .sum::<usize>(),
    );
    black_box((
        s.response_id(),
        s.session_id(),
        s.user_id(),
        s.conversation_id(),
    ));
    black_box((s.prompt_name(), s.prompt_version(), s.agent_name()));
    black_box((s.metadata(), s.tags()));
    black_box((s.status(), s.error(), s.duration(), s.end_time_unix_nano()));
    black_box(s.json_request());

    black_box(s.input_messages().len());
    black_box(s.output_messages().len());
    black_box(s.system_instructions());
    black_box(s.tool_definitions().len());
    black_box(s.documents().len());
    black_box(s.tool_calls().count());
    black_box((s.output_captured(), s.input_captured()));
    black_box(s.output_text());
    black_box(s.input_text());
    black_box(s.last_user_text());
    black_box((s.tool_name(), s.tool_call_id(), s.tool_arguments()));
    black_box((s.tool_result(), s.tool_schema(), s.retrieval_query()));
    for m in s.input_messages().iter().chain(s.output_messages()) {
        black_box((m.texts().count(), m.tool_calls().count()));
    }
}
