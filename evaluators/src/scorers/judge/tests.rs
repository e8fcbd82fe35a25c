use super::*;
use crate::scorers::testing::{s, span, view};

fn config(extra: serde_json::Value) -> LlmJudgeConfig {
    let mut base = serde_json::json!({
        "endpoint": "http://127.0.0.1:8000/v1",
        "model": "judge-model",
        "api_key": "sk-secret-123",
    });
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    serde_json::from_value(base).unwrap()
}

fn rag_answer() -> opentelemetry_proto::tonic::trace::v1::Span {
    span(vec![
        s("gen_ai.operation.name", "chat"),
        s("gen_ai.request.model", "gpt-4o-mini"),
        s(
            "gen_ai.input.messages",
            r#"[{"role":"user","parts":[{"type":"text","content":"How tall is the Eiffel Tower? Reply to ann@example.com"}]}]"#,
        ),
        s(
            "gen_ai.output.messages",
            r#"[{"role":"assistant","parts":[{"type":"text","content":"It is 330 metres tall."}]}]"#,
        ),
        s(
            "gen_ai.retrieval.documents",
            r#"[{"id":"d1","content":"The Eiffel Tower is 330 metres tall."}]"#,
        ),
    ])
}

#[test]
fn a_template_fills_its_prompt_from_the_span_and_masks_personal_data() {
    let judge = LlmJudge::build(&config(serde_json::json!({"template": "faithfulness"}))).unwrap();
    let sp = rag_answer();
    let request = judge.request(&view(&sp), None).unwrap();
    let user = request.body["messages"][1]["content"].as_str().unwrap();
    assert!(
        user.contains("[1] The Eiffel Tower is 330 metres tall."),
        "{user}"
    );
    assert!(user.contains("It is 330 metres tall."), "{user}");
    assert!(
        user.contains("Reply to [email]") && !user.contains("ann@example.com"),
        "{user}"
    );
    assert_eq!(request.redactions, 1);
    assert_eq!(request.body["model"], "judge-model");
    assert_eq!(request.body["response_format"]["type"], "json_schema");
    let system = request.body["messages"][0]["content"].as_str().unwrap();
    assert!(system.contains("JSON object"), "{system}");
    // The same span gives the same cache key; another model, another key.
    assert_eq!(
        judge.request(&view(&sp), None).unwrap().cache_key,
        request.cache_key
    );
    let other = LlmJudge::build(&config(
        serde_json::json!({"template": "faithfulness", "model": "other"}),
    ))
    .unwrap();
    assert_ne!(
        other.request(&view(&sp), None).unwrap().cache_key,
        request.cache_key
    );
}

#[test]
fn a_span_without_what_the_template_needs_is_not_sent() {
    let judge = LlmJudge::build(&config(serde_json::json!({"template": "faithfulness"}))).unwrap();
    let sp = span(vec![
        s("gen_ai.operation.name", "chat"),
        s(
            "gen_ai.output.messages",
            r#"[{"role":"assistant","parts":[{"type":"text","content":"Hi"}]}]"#,
        ),
    ]);
    match judge.request(&view(&sp), None) {
        Err(Outcome::Skipped { detail, .. }) => assert!(detail.contains("documents"), "{detail}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn replies_become_scores_with_the_template_threshold_or_errors() {
    let judge = LlmJudge::build(&config(serde_json::json!({"template": "relevance"}))).unwrap();
    match judge.conclude(r#"{"score": 4, "label": "relevant", "explanation": "On topic."}"#) {
        Outcome::Scored(s) => assert_eq!(
            (s.value, s.passed, s.label.as_ref()),
            (4.0, true, "relevant")
        ),
        other => panic!("{other:?}"),
    }
    match judge.conclude(r#"{"score": 2}"#) {
        Outcome::Scored(s) => assert_eq!((s.passed, s.label.as_ref()), (false, "fail")),
        other => panic!("{other:?}"),
    }
    match judge.conclude("I cannot evaluate this.") {
        Outcome::Error {
            error_type,
            message,
        } => {
            assert_eq!(error_type, "judge_unparseable");
            assert!(message.contains("cannot evaluate"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn custom_prompts_and_their_options_are_checked() {
    let judge = LlmJudge::build(&config(serde_json::json!({
        "prompt": "Is this answer polite? {{output}}", "score_range": [0, 10], "threshold": 7,
        "structured_output": "json_object"
    })))
    .unwrap();
    let sp = rag_answer();
    let request = judge.request(&view(&sp), None).unwrap();
    assert_eq!(request.body["response_format"]["type"], "json_object");
    let bad = |extra: serde_json::Value| LlmJudge::build(&config(extra)).unwrap_err();
    assert!(bad(serde_json::json!({"template": "nope"})).contains("faithfulness"));
    assert!(bad(serde_json::json!({})).contains("template"));
    assert!(
        bad(serde_json::json!({"template": "toxicity", "prompt": "{{output}}"}))
            .contains("not both")
    );
    assert!(bad(serde_json::json!({"prompt": "no variables"})).contains("variable"));
    assert!(
        bad(serde_json::json!({"prompt": "{{answer}}"})).contains("unknown variable {{answer}}")
    );
    assert!(
        bad(serde_json::json!({"prompt": "{{output}}", "score_range": [5, 1]}))
            .contains("score_range")
    );
    assert!(
        bad(serde_json::json!({"template": "relevance", "threshold": 9})).contains("threshold")
    );
}

#[test]
fn the_api_key_is_never_printed_nor_hashed() {
    let c = config(serde_json::json!({"template": "toxicity"}));
    assert!(!format!("{c:?}").contains("sk-secret-123"));
    let serialized = serde_json::to_string(&c).unwrap();
    assert!(!serialized.contains("sk-secret-123"), "{serialized}");
    assert_eq!(c.api_key.as_ref().unwrap().expose(), "sk-secret-123");
}
