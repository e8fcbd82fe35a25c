//! Fresh exports (issue 16): the same scenarios run by the current releases of each
//! instrumentation of the `openai` client — OpenInference, OpenLLMetry, the official OTel GenAI
//! instrumentation in its three content modes, traceAI — and by a LangChain RAG chain with
//! OpenInference, against a stand-in of the OpenAI API with scripted answers
//! (`tests/fixtures/fresh/generate.py`), judged by the `evalstream eval` binary. Every verdict
//! expected here follows from the scenario's scripted answer and from what the library records;
//! scenarios are told apart by the root span `scenario:NAME` the script opens for each.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use evalstream_evaluators::otlp::{self, Encoding};
use evalstream_evaluators::span;
use support::DEFAULT_EVALUATORS;

/// The scenarios every `openai` library runs, as `generate.py` names them.
const OPENAI_SCENARIOS: [&str; 8] = [
    "answer",
    "refusal",
    "pii",
    "json_broken",
    "json_valid",
    "tool_call",
    "stream",
    "embedding",
];
/// The LangChain chain's scenarios (in order).
const RAG_SCENARIOS: [&str; 3] = ["rag_cited_by_id", "rag_grounded", "rag_ungrounded"];
/// The answer the stand-in gives `rag_ungrounded` (`generate.py`'s RAG_ANSWERS).
const UNGROUNDED_ANSWER: &str =
    "The Eiffel Tower is 512 metres tall and was designed by Leonardo [3].";

/// What a library records, as its exports show.
#[derive(Clone, Copy)]
struct Captures {
    /// Prompts and answers reach evalstream (on the spans, or in log events given with them).
    content: bool,
    /// A finish reason on the plain (not streamed) calls.
    finish_reasons: bool,
    /// A finish reason on the streamed call: the official instrumentation records it only in
    /// the output messages (`gen_ai.output.messages` or the log event), never in
    /// `gen_ai.response.finish_reasons`, so without content there is none.
    stream_finish_reason: bool,
    /// The provider's response id (the stand-in's `chatcmpl-fresh-SCENARIO`) on the chat calls.
    response_ids: bool,
}

const FULL: Captures = Captures {
    content: true,
    finish_reasons: true,
    stream_finish_reason: true,
    response_ids: true,
};

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/fresh")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One evaluation line of `evalstream eval`, reduced to what the test asserts.
#[derive(Debug)]
struct Verdict {
    /// The label, or `skipped:REASON`.
    label: String,
    score: Option<f64>,
    explanation: String,
}

/// What `evalstream eval` made of one export, per scenario.
struct Run {
    /// The evaluated span's verdicts, by evaluator.
    verdicts: BTreeMap<String, HashMap<String, Verdict>>,
    /// The evaluated span's response id, as evalstream reads it.
    response_ids: BTreeMap<String, Option<String>>,
}

/// Runs `evalstream eval` on the files (and the configuration, if any). Asserts that each
/// scenario's trace had exactly one evaluated span.
fn eval(files: &[&str], config: Option<&str>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_evalstream"));
    cmd.args(["eval", "--no-summary"]);
    if let Some(config) = config {
        cmd.args(["--config", config]);
    }
    let out = cmd.args(files).output().expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{files:?}: {stderr}");
    assert!(stderr.trim().is_empty(), "{files:?}: {stderr}");

    // The scenario of each trace, and the response id of each span, from the spans file.
    let bytes = std::fs::read(files[0]).unwrap();
    let request = otlp::decode(&bytes, Encoding::OtlpProto).unwrap();
    let mut scenario_of = HashMap::new();
    let mut response_ids = HashMap::new();
    for s in span::spans(&request) {
        if let Some(name) = s.name().strip_prefix("scenario:") {
            let before = scenario_of.insert(hex(s.trace_id()), name.to_owned());
            assert!(before.is_none(), "{files:?}: two scenario roots in a trace");
        }
        response_ids.insert(hex(s.span_id()), s.response_id().map(str::to_owned));
    }

    let mut verdicts: BTreeMap<String, HashMap<String, Verdict>> = BTreeMap::new();
    let mut evaluated_span: HashMap<String, String> = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let l: serde_json::Value = serde_json::from_str(line).unwrap();
        let trace = l["trace_id"].as_str().unwrap();
        let span_id = l["span_id"].as_str().unwrap().to_owned();
        let scenario = scenario_of
            .get(trace)
            .unwrap_or_else(|| panic!("{files:?}: an evaluation outside any scenario: {l}"));
        let first = evaluated_span
            .entry(scenario.clone())
            .or_insert(span_id.clone());
        assert_eq!(
            *first, span_id,
            "{files:?}/{scenario}: more than one span evaluated"
        );
        let label = match l["outcome"].as_str().unwrap() {
            "skipped" => format!("skipped:{}", l["skip_reason"].as_str().unwrap()),
            "scored" => l["label"].as_str().unwrap().to_owned(),
            other => panic!("{files:?}/{scenario}: {other}: {l}"),
        };
        let verdict = Verdict {
            label,
            score: l["score"].as_f64(),
            explanation: l["explanation"].as_str().unwrap_or_default().to_owned(),
        };
        let evaluator = l["evaluator"].as_str().unwrap().to_owned();
        let before = verdicts
            .entry(scenario.clone())
            .or_default()
            .insert(evaluator.clone(), verdict);
        assert!(before.is_none(), "{files:?}/{scenario}: {evaluator} twice");
    }
    let response_ids = evaluated_span
        .into_iter()
        .map(|(scenario, span)| (scenario, response_ids[&span].clone()))
        .collect();
    Run {
        verdicts,
        response_ids,
    }
}

/// The response id the stand-in gave a scenario's call, where the library records it (the
/// embedding's body has none).
fn check_response_id(ctx: &str, scenario: &str, got: Option<&str>, c: Captures) {
    let want =
        (c.response_ids && scenario != "embedding").then(|| format!("chatcmpl-fresh-{scenario}"));
    assert_eq!(got, want.as_deref(), "{ctx}/{scenario}: response id");
}

/// The verdict of a default evaluator on a chat scenario, from its scripted answer and what the
/// library captures.
fn expected(scenario: &str, evaluator: &str, c: Captures) -> &'static str {
    let json = scenario.starts_with("json_");
    let tool = scenario == "tool_call";
    match evaluator {
        "refusal" | "pii" | "empty_output" if !c.content => "skipped:no_content",
        "json_valid" if !c.content => {
            if json {
                "skipped:no_content"
            } else {
                "skipped:not_applicable"
            }
        }
        "refusal" if tool => "skipped:not_applicable",
        "refusal" if scenario == "refusal" => "refused",
        "refusal" => "answered",
        "pii" if scenario == "pii" => "pii",
        "pii" => "clean",
        "json_valid" if scenario == "json_broken" => "invalid",
        "json_valid" if scenario == "json_valid" => "valid",
        "json_valid" => "skipped:not_applicable",
        "finish_reason" if !c.finish_reasons => "skipped:not_applicable",
        "finish_reason" if scenario == "stream" && !c.stream_finish_reason => {
            "skipped:not_applicable"
        }
        "finish_reason" if tool => "tool_call",
        "finish_reason" => "stop",
        "empty_output" => "non_empty",
        "cost" => "ok",
        _ => unreachable!("{evaluator}"),
    }
}

/// Every call reports 12 prompt and 7 completion tokens (the embedding 5 prompt tokens), at the
/// list prices of gpt-4o-mini ($0.15 / $0.60 per million) and text-embedding-3-small ($0.02).
const CHAT_COST: f64 = (12.0 * 0.15 + 7.0 * 0.60) / 1e6;
const EMBEDDING_COST: f64 = 5.0 * 0.02 / 1e6;

fn check_default_verdicts(ctx: &str, scenario: &str, got: &HashMap<String, Verdict>, c: Captures) {
    let ctx = format!("{ctx}/{scenario}");
    let cost = &got
        .get("cost")
        .unwrap_or_else(|| panic!("{ctx}: cost not run"));
    assert_eq!(cost.label, "ok", "{ctx}: {cost:?}");
    if scenario == "embedding" {
        // Nothing but cost judges a vector.
        for (evaluator, v) in got {
            if evaluator != "cost" {
                assert!(v.label.starts_with("skipped:"), "{ctx}: {evaluator}: {v:?}");
            }
        }
        assert!(
            (cost.score.unwrap() - EMBEDDING_COST).abs() < 1e-15,
            "{ctx}: {cost:?}"
        );
        return;
    }
    assert!(
        (cost.score.unwrap() - CHAT_COST).abs() < 1e-15,
        "{ctx}: {cost:?}"
    );
    for evaluator in DEFAULT_EVALUATORS {
        let v = got
            .get(evaluator)
            .unwrap_or_else(|| panic!("{ctx}: {evaluator} not run"));
        assert_eq!(
            v.label,
            expected(scenario, evaluator, c),
            "{ctx}: {evaluator}: {}",
            v.explanation
        );
    }
    if scenario == "pii" && c.content {
        // The e-mail address and the card number, located, never echoed.
        assert_eq!(
            got["pii"].explanation, "PII in the output: 1 email, 1 credit_card",
            "{ctx}"
        );
    }
}

fn check_openai_library(library: &str, files: &[&str], c: Captures) {
    let paths: Vec<String> = files.iter().map(|f| fixture(f)).collect();
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let run = eval(&paths, None);
    let verdicts = run.verdicts;
    let ctx = format!("{library} {files:?}");
    assert_eq!(
        verdicts.keys().map(String::as_str).collect::<Vec<_>>(),
        {
            let mut all = OPENAI_SCENARIOS.to_vec();
            all.sort_unstable();
            all
        },
        "{ctx}: every scenario evaluated"
    );
    for (scenario, got) in &verdicts {
        check_default_verdicts(&ctx, scenario, got, c);
        check_response_id(&ctx, scenario, run.response_ids[scenario].as_deref(), c);
    }
}

#[test]
fn openinference_verdicts_per_scenario() {
    check_openai_library("openinference", &["openinference.pb"], FULL);
}

#[test]
fn openllmetry_verdicts_per_scenario() {
    check_openai_library("openllmetry", &["openllmetry.pb"], FULL);
}

/// traceAI records no finish reason and no response id: `finish_reason` is skipped
/// `not_applicable` on every call.
#[test]
fn traceai_verdicts_per_scenario() {
    check_openai_library(
        "traceai",
        &["traceai.pb"],
        Captures {
            finish_reasons: false,
            stream_finish_reason: false,
            response_ids: false,
            ..FULL
        },
    );
}

#[test]
fn official_span_only_verdicts_per_scenario() {
    check_openai_library("otel_v2 span_only", &["otel_v2_span_only.pb"], FULL);
}

/// With `event_only` the content is in the log events only: with the logs file every verdict
/// comes; with the spans alone the content scorers are skipped `no_content`, and the streamed
/// call has no finish reason either.
#[test]
fn official_event_only_verdicts_per_scenario() {
    check_openai_library(
        "otel_v2 event_only",
        &["otel_v2_event_only.pb", "otel_v2_event_only.logs.pb"],
        FULL,
    );
    check_openai_library(
        "otel_v2 event_only, spans alone",
        &["otel_v2_event_only.pb"],
        Captures {
            content: false,
            stream_finish_reason: false,
            ..FULL
        },
    );
}

/// With `span_and_event` the content is on the spans and in the log events: the same verdicts
/// from the spans alone and from both files (the events add nothing twice).
#[test]
fn official_span_and_event_verdicts_per_scenario() {
    check_openai_library(
        "otel_v2 span_and_event",
        &["otel_v2_span_and_event.pb"],
        FULL,
    );
    check_openai_library(
        "otel_v2 span_and_event, with its logs",
        &[
            "otel_v2_span_and_event.pb",
            "otel_v2_span_and_event.logs.pb",
        ],
        FULL,
    );
}

/// The LangChain RAG chain: its LLM span gets the default verdicts of a plain answer, and, with
/// `citations` and `grounding` configured, the grounded answer's `[1]` resolves to the first
/// retrieved document and its claim is supported, and so do `[doc-eiffel]` (the document's
/// LangChain id, which OpenInference records only in the retriever's output) and its claim,
/// while the ungrounded answer's `[3]` (two documents were retrieved) resolves to none and its
/// figure and name are found in no document.
#[test]
fn langchain_rag_verdicts_per_scenario() {
    let dir = std::env::temp_dir().join(format!("evalstream-fresh-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config: PathBuf = dir.join("rag.yaml");
    let mut yaml = String::from("evaluators:\n");
    for evaluator in DEFAULT_EVALUATORS.iter().chain(&["citations", "grounding"]) {
        yaml.push_str(&format!("  - type: {evaluator}\n"));
    }
    std::fs::write(&config, yaml).unwrap();
    let run = eval(&[&fixture("langchain.pb")], Some(config.to_str().unwrap()));
    let verdicts = run.verdicts;
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        verdicts.keys().map(String::as_str).collect::<Vec<_>>(),
        RAG_SCENARIOS,
        "every scenario evaluated"
    );
    for (scenario, got) in &verdicts {
        // Read from the LangChain result OpenInference records (`llm_output.id`).
        check_response_id(
            "langchain",
            scenario,
            run.response_ids[scenario].as_deref(),
            FULL,
        );
        // A plain answer, as far as the default evaluators go.
        for evaluator in DEFAULT_EVALUATORS {
            assert_eq!(
                got[evaluator].label,
                expected("answer", evaluator, FULL),
                "langchain/{scenario}: {evaluator}: {:?}",
                got[evaluator]
            );
        }
        assert!((got["cost"].score.unwrap() - CHAT_COST).abs() < 1e-15);
        let (citations, grounding) = (&got["citations"], &got["grounding"]);
        let ctx = format!("langchain/{scenario}: {citations:?} {grounding:?}");
        if scenario != "rag_ungrounded" {
            assert_eq!(
                (citations.label.as_str(), citations.score),
                ("resolved", Some(1.0)),
                "{ctx}"
            );
            assert_eq!(
                (grounding.label.as_str(), grounding.score),
                ("grounded", Some(1.0)),
                "{ctx}"
            );
        } else {
            assert_eq!(
                (citations.label.as_str(), citations.score),
                ("unresolved", Some(0.0)),
                "{ctx}"
            );
            let marker = UNGROUNDED_ANSWER.find("[3]").unwrap();
            assert!(
                citations.explanation.contains(&format!(
                    "1 of 1 citations match no retrieved document (2 retrieved): citation 1 at bytes {marker}..{}",
                    marker + 3
                )),
                "{ctx}"
            );
            assert_eq!(grounding.label, "ungrounded", "{ctx}");
            // Located by position, never quoted.
            let number = UNGROUNDED_ANSWER.find("512").unwrap();
            let name = UNGROUNDED_ANSWER.find("Leonardo").unwrap();
            assert!(
                grounding.explanation.contains(&format!(
                    "not found: number at bytes {number}..{}, name at bytes {name}..{}",
                    number + 3,
                    name + 8
                )),
                "{ctx}"
            );
            assert!(!grounding.explanation.contains("Leonardo"), "{ctx}");
        }
    }
}

/// Runs one evaluator that judges the answer against what the request sent (its spec's
/// `type`) on every `openai` library: `scenario` gets `want` where the library records that part
/// of the request (`records`), else a `not_applicable` skip whose explanation contains `missing`;
/// every other scenario has nothing to judge, and the embedding is not judged at all.
fn check_request_scorer(
    evaluator: &str,
    scenario_judged: &str,
    want: &str,
    missing: &str,
    records: impl Fn(&str) -> bool,
) {
    let dir = std::env::temp_dir().join(format!(
        "evalstream-fresh-{evaluator}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(&config, format!("evaluators:\n  - type: {evaluator}\n")).unwrap();
    for files in [
        &["openinference.pb"][..],
        &["openllmetry.pb"],
        &["traceai.pb"],
        &["otel_v2_span_only.pb"],
        &["otel_v2_event_only.pb", "otel_v2_event_only.logs.pb"],
        &["otel_v2_span_and_event.pb"],
    ] {
        let paths: Vec<String> = files.iter().map(|f| fixture(f)).collect();
        let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
        let run = eval(&paths, Some(config.to_str().unwrap()));
        let recorded = records(files[0]);
        assert!(!run.verdicts.contains_key("embedding"), "{files:?}");
        for scenario in OPENAI_SCENARIOS.into_iter().filter(|s| *s != "embedding") {
            let got = &run.verdicts[scenario][evaluator];
            let expected = if scenario == scenario_judged && recorded {
                want
            } else {
                "skipped:not_applicable"
            };
            assert_eq!(got.label, expected, "{files:?}/{scenario}: {got:?}");
            if scenario == scenario_judged && !recorded {
                assert!(got.explanation.contains(missing), "{files:?}: {got:?}");
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The tool call's arguments (`{"city": "Paris", "unit": "celsius"}`) against the `get_weather`
/// schema the request sent: valid where the library records the tool definitions; the official
/// instrumentation records none (in no content mode), so `tool_args` is skipped
/// `not_applicable` there.
#[test]
fn tool_call_arguments_are_checked_against_the_recorded_definitions() {
    check_request_scorer(
        "tool_args",
        "tool_call",
        "valid",
        "no tool definitions",
        |file| !file.starts_with("otel_v2"),
    );
}

/// The structured output (`{"country": "France", "days": 2}`) against the `shipping` schema of
/// the request's `response_format`: it meets it where the library records the schema; the
/// official instrumentation records only `gen_ai.output.type=json`, so `json_schema` (with no
/// schema configured) is skipped `not_applicable` there.
#[test]
fn structured_outputs_are_checked_against_the_recorded_schema() {
    check_request_scorer(
        "json_schema",
        "json_valid",
        "valid",
        "the request carried none",
        |file| !file.starts_with("otel_v2"),
    );
}
