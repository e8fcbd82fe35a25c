//! The configuration's own tests: parsing, defaults, validation and the summary.

use super::*;
use evalstream_evaluators::otlp::Encoding;
use evalstream_evaluators::spec::EvaluatorKind;

fn parse(text: &str) -> Result<Config, String> {
    let env = |name: &str| match name {
        "RATE" => Some("0.25".to_string()),
        "BROKER" => Some("kafka:9092".to_string()),
        "WORD" => Some("acme".to_string()),
        _ => None,
    };
    Config::parse(text, Path::new("test.yaml"), &env).map_err(|e| e.to_string())
}

#[test]
fn the_summary_names_the_guard_api() {
    let config = parse(
        "guard: { grpc: { endpoint: 127.0.0.1:4319 }, http: { endpoint: 127.0.0.1:4320 } }\n\
             guards: { a: { evaluators: [refusal] }, b: { evaluators: [pii] } }\n\
             budgets: { per_user: { keys: [user.id], limit_tokens: 100 } }\n",
    )
    .unwrap();
    let said = config.to_string();
    assert!(
        said.ends_with(
            "; guard API on gRPC 127.0.0.1:4319 and HTTP 127.0.0.1:4320 (2 guard sets, 1 budget)"
        ),
        "{said}"
    );
}

/// Exactly once commits input offsets with the outputs, once nothing is in flight: only the
/// Kafka receiver has offsets, and trace and judge evaluators hold inputs for seconds.
#[test]
fn exactly_once_is_refused_where_it_cannot_hold() {
    let base = "receivers:\n  kafka: { brokers: [b:9092], topics: [t], group_id: g }\nexporters:\n  kafka: { exactly_once: true }\n";
    let c = parse(base).unwrap();
    let (id, k) = c.exactly_once().unwrap();
    assert_eq!((id, k.transaction_interval_ms), ("kafka", 1000));
    for (extra, why) in [
        (
            "evaluators: [ { type: citations } ]\n",
            "not with `citations`",
        ),
        (
            "evaluators: [ { type: llm_judge, name: j, template: toxicity, endpoint: 'http://x/v1', model: m } ]\n",
            "not with `j`",
        ),
    ] {
        let err = parse(&format!("{base}{extra}")).unwrap_err();
        assert!(
            err.contains("exporters.kafka.exactly_once") && err.contains(why),
            "{err}"
        );
    }
    let otlp = base.replace(
        "receivers:\n",
        "receivers:\n  otlp: { protocols: { grpc: { endpoint: '127.0.0.1:4317' } } }\n",
    );
    let err = parse(&otlp).unwrap_err();
    assert!(err.contains("needs the Kafka receiver alone"), "{err}");
    let two = base.replace(
        "  kafka: { exactly_once: true }\n",
        "  kafka: { exactly_once: true }\n  kafka/b: { exactly_once: true }\n",
    );
    assert!(parse(&two).unwrap_err().contains("only one exporter"));
    let slow = base.replace(
        "exactly_once: true",
        "exactly_once: true, transaction_interval_ms: 0",
    );
    assert!(
        parse(&slow)
            .unwrap_err()
            .contains("transaction_interval_ms")
    );
}

/// Logs inputs turn the join on; its section and the logs topics are checked.
#[test]
fn logs_inputs_turn_the_join_on_and_are_checked() {
    assert!(
        !Config::builtin().takes_logs(),
        "without logs, nothing waits"
    );
    let kafka = "receivers:\n  kafka: { topics: [spans], logs: {} }\n";
    let c = parse(kafka).unwrap();
    assert!(c.takes_logs());
    let logs = c.receivers.kafka.unwrap().logs.unwrap();
    assert_eq!(
        (logs.topics, logs.encoding),
        (vec!["otlp_logs".to_string()], Encoding::OtlpProto)
    );
    assert_eq!(c.logs, JoinConfig::default());
    let c = parse("receivers:\n  otlp: { protocols: { http: {} }, logs: true }\nlogs: { span_wait_seconds: 0.5 }\n").unwrap();
    assert!(c.takes_logs());
    assert_eq!(c.logs.span_wait_seconds, 0.5);
    for (text, why) in [
        (
            "receivers:\n  kafka: { topics: [t], logs: { topics: [t] } }\n",
            "receivers.kafka.logs.topics: `t` is also a spans topic",
        ),
        (
            "receivers:\n  kafka: { logs: { topics: [] } }\n",
            "receivers.kafka.logs.topics: give at least one topic",
        ),
        (
            "logs: { span_wait_seconds: -1 }\n",
            "logs.span_wait_seconds",
        ),
        ("logs: { max_bytes: 0 }\n", "logs.max_bytes"),
        ("logs: { wait: 1 }\n", "wait"),
        (
            "receivers:\n  kafka: { logs: {} }\nexporters:\n  kafka: {}\n",
            "`otlp_logs` is where exporters.kafka writes evaluations",
        ),
        (
            "receivers:\n  kafka: { logs: { topics: [app_logs] } }\nexporters:\n  kafka: { exactly_once: true }\n",
            "not with log inputs",
        ),
    ] {
        let err = parse(text).unwrap_err();
        assert!(err.contains(why), "{text}: {err}");
    }
}

#[test]
fn the_drift_section_takes_the_documented_keys_and_checks_them() {
    let c = parse(
            "drift:\n  evaluators: [refusal, pii]\n  segments: [model, prompt_version, route, provider]\n  false_alarm_budget: 100000\n  warmup: 500",
        )
        .unwrap();
    let drift = c.drift.unwrap();
    assert_eq!(drift.segments.len(), 4);
    assert_eq!((drift.warmup, drift.false_alarm_budget), (500, 100_000.0));
    let err = parse("drift:\n  evaluators: [refusal, grounding]").unwrap_err();
    assert!(
        err.contains("drift.evaluators[1]: no evaluator is named `grounding`"),
        "{err}"
    );
    let err = parse("drift:\n  warmpu: 500").unwrap_err();
    assert!(err.contains("warmpu"), "{err}");
    let err = parse("drift:\n  segments: [user]").unwrap_err();
    assert!(err.contains("user"), "{err}");
    let err = parse("drift:\n  false_alarm_budget: 10").unwrap_err();
    assert!(err.contains("drift.false_alarm_budget"), "{err}");
    assert_eq!(parse("{}").unwrap().drift, None);
}

#[test]
fn the_builtin_config_runs_otlp_in_and_stdout_out_with_the_default_evaluators() {
    let c = Config::builtin();
    let otlp = c.receivers.otlp.unwrap();
    assert_eq!(otlp.protocols.grpc.unwrap().endpoint, "127.0.0.1:4317");
    assert_eq!(otlp.protocols.http.unwrap().endpoint, "127.0.0.1:4318");
    assert!(c.receivers.kafka.is_none());
    assert!(
        matches!(c.exporters.list[..], [(ref id, ExporterConfig::Stdout(_))] if id == "stdout")
    );
    assert_eq!(c.evaluators, spec::default_specs());
    assert_eq!(c.telemetry.metrics.unwrap().listen, "127.0.0.1:9464");
}

#[test]
fn exporters_are_named_by_type_and_checked() {
    let c = parse(
            "exporters:\n  kafka/a: { output: [events, spans] }\n  otlphttp/b: { endpoint: \"http://127.0.0.1:4318\" }\n  stdout:\n",
        )
        .unwrap();
    let ids: Vec<&str> = c.exporters.list.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["kafka/a", "otlphttp/b", "stdout"]);
    let err = parse("exporters:\n  zipkin: {}\n").unwrap_err();
    assert!(err.contains("zipkin") && err.contains("otlphttp"), "{err}");
    let err = parse("exporters:\n  kafka: { topic: x }\n").unwrap_err();
    assert!(err.contains("topic"), "{err}");
}

#[test]
fn the_documented_config_parses_with_collector_defaults() {
    let c = parse(
        r#"
receivers:
  kafka:
    brokers: ["127.0.0.1:9092"]
    topics: [otlp_spans]
    group_id: evalstream
    encoding: otlp_proto
    client: { security.protocol: plaintext }
evaluators:
  - type: refusal
  - type: pii
exporters:
  kafka:
    brokers: ["127.0.0.1:9092"]
    output: [events, spans]
    traces: { topic: otlp_evaluations }
  stdout:
telemetry:
  metrics: { listen: "127.0.0.1:9464" }
"#,
    )
    .unwrap();
    let k = c.receivers.kafka.unwrap();
    assert_eq!(
        (k.encoding, k.dead_letter_topic.as_str()),
        (Encoding::OtlpProto, "otlp_spans_dlq")
    );
    assert_eq!(c.evaluators.len(), 2);
    let minimal = parse("receivers:\n  kafka: {}\n").unwrap();
    let k = minimal.receivers.kafka.unwrap();
    assert_eq!(
        (k.topics[0].as_str(), k.encoding),
        ("otlp_spans", Encoding::OtlpProto)
    );
    assert_eq!(minimal.evaluators.len(), spec::default_specs().len());
    assert_eq!(parse("").unwrap(), Config::default());
}

#[test]
fn unknown_keys_are_rejected_with_their_path() {
    let err = parse("receivers:\n  kafka:\n    topic: x\n").unwrap_err();
    assert!(
        err.contains("receivers.kafka") && err.contains("unknown field `topic`"),
        "{err}"
    );
    let err = parse("evaluators:\n  - type: pii\n  - type: refusal\n    windw: 3\n").unwrap_err();
    assert!(
        err.contains("evaluators[1]") && err.contains("unknown field `windw`"),
        "{err}"
    );
    let err = parse("processors: {}\n").unwrap_err();
    assert!(err.contains("unknown field `processors`"), "{err}");
    let err = parse("evaluators:\n  - type: regex\n    pattern: '('\n").unwrap_err();
    assert!(err.contains("evaluators[0] (regex): pattern"), "{err}");
    let err = parse("telemetry:\n  metrics: { listen: nowhere }\n").unwrap_err();
    assert!(err.contains("telemetry.metrics.listen"), "{err}");
    let err = parse("receivers: [oops\n").unwrap_err();
    assert!(err.contains("invalid YAML"), "{err}");
}

/// `invalid type: integer 123456789012` once showed an API key substituted from the
/// environment.
#[test]
fn config_errors_do_not_show_values_from_the_environment() {
    let env = |name: &str| match name {
        "DIGITS" => Some("123456789012".to_string()),
        "TOKEN" => Some("s3cr3t-t0ken-value".to_string()),
        _ => None,
    };
    let parse = |text: &str| {
        Config::parse(text, Path::new("test.yaml"), &env)
            .unwrap_err()
            .to_string()
    };
    let typed = parse("receivers:\n  kafka:\n    group_id: ${env:DIGITS}\n");
    assert!(!typed.contains("123456789012"), "{typed}");
    assert!(typed.contains("${env:DIGITS}"), "{typed}");
    let listen = parse("telemetry:\n  metrics: { listen: \"${env:TOKEN}\" }\n");
    assert!(!listen.contains("s3cr3t"), "{listen}");
    assert!(listen.contains("telemetry.metrics.listen"), "{listen}");
    let evaluator = parse("evaluators:\n  - type: regex\n    pattern: '(${env:TOKEN}'\n");
    assert!(!evaluator.contains("s3cr3t"), "{evaluator}");
    assert!(evaluator.contains("evaluators[0] (regex)"), "{evaluator}");
}

#[test]
fn env_references_expand_typed_with_defaults_and_escapes() {
    let c = parse(
        r#"
receivers:
  kafka:
    brokers: ["${env:BROKER}"]
    group_id: "g-${env:MISSING:-default}-$$HOME"
evaluators:
  - type: not_contains
    values: ["${env:WORD}"]
    sample: ${env:RATE}
"#,
    )
    .unwrap();
    let k = c.receivers.kafka.unwrap();
    assert_eq!(k.brokers, ["kafka:9092"]);
    assert_eq!(k.group_id, "g-default-$HOME");
    assert_eq!(c.evaluators[0].sample, 0.25);
    assert!(
        matches!(&c.evaluators[0].kind, EvaluatorKind::NotContains(n) if n.0.values == ["acme"])
    );
    let err = parse("receivers:\n  kafka:\n    group_id: ${env:NOPE}\n").unwrap_err();
    assert!(
        err.contains("receivers.kafka.group_id") && err.contains("`NOPE` is not set"),
        "{err}"
    );
}
