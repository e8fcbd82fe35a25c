use super::*;
use crate::evaluator::{Score, SkipReason};
use crate::scorers::testing::{chat, i, s, span, view};

fn config() -> ScriptConfig {
    ScriptConfig {
        script: PathBuf::from("inline.rhai"),
        params: Default::default(),
        threshold: 0.5,
        trace: false,
        limits: ScriptLimits::default(),
    }
}

fn run_with(source: &str, config: &ScriptConfig, answer: &str) -> Outcome {
    let script = Script::compile("inline.rhai", source, config).unwrap();
    let sp = chat(answer);
    script.evaluate(&view(&sp))
}

fn run(source: &str) -> Outcome {
    run_with(source, &config(), "Paris is the capital of France.")
}

fn scored(outcome: Outcome) -> Score {
    match outcome {
        Outcome::Scored(score) => score,
        other => panic!("{other:?}"),
    }
}

fn error(outcome: Outcome) -> (String, String) {
    match outcome {
        Outcome::Error {
            error_type,
            message,
        } => (error_type.into_owned(), message),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn a_number_a_map_or_unit_is_a_score_a_detailed_score_or_a_skip() {
    let number = scored(run("fn score(span) { word_count(span.output) / 10.0 }"));
    assert_eq!(
        (number.value, number.passed, number.label.as_ref()),
        (0.6, true, "pass")
    );
    let integer = scored(run("fn score(span) { 0 }"));
    assert_eq!(
        (integer.value, integer.passed, integer.label.as_ref()),
        (0.0, false, "fail")
    );
    let map = scored(run(r#"
        fn score(span) {
            let long = span.output.len() > 100;
            #{ score: if long { 0.0 } else { 1.0 }, label: if long { "long" } else { "short" },
               explanation: `${span.output.len()} characters` }
        }"#));
    assert_eq!(
        (
            map.value,
            map.passed,
            map.label.as_ref(),
            map.explanation.as_str()
        ),
        (1.0, true, "short", "31 characters")
    );
    let explicit = scored(run("fn score(span) { #{ score: 0.9, passed: false } }"));
    assert!(
        !explicit.passed,
        "an explicit `passed` wins over the threshold"
    );
    assert!(matches!(
        run("fn score(span) { if span.kind == \"chat\" { () } else { 1 } }"),
        Outcome::Skipped {
            reason: SkipReason::NotApplicable,
            ..
        }
    ));
}

#[test]
fn the_span_exposes_the_canonical_fields() {
    let sp = span(vec![
        s("gen_ai.operation.name", "chat"),
        s("gen_ai.request.model", "gpt-4o-mini"),
        s("gen_ai.system", "openai"),
        i("gen_ai.usage.input_tokens", 1000),
        i("gen_ai.usage.output_tokens", 200),
        s("app.route", "/support"),
        s(
            "gen_ai.input.messages",
            r#"[{"role":"user","parts":[{"type":"text","content":"Hi there"}]}]"#,
        ),
        s(
            "gen_ai.output.messages",
            r#"[{"role":"assistant","parts":[{"type":"text","content":"Hello!"}]}]"#,
        ),
    ]);
    let script = Script::compile(
        "fields.rhai",
        r#"
        fn score(span) {
            let ok = span.model == "gpt-4o-mini" && span.provider == "openai"
                && span.usage.total == 1200 && span.attributes["app.route"] == "/support"
                && span.messages[0].role == "user" && span.messages[0].content == "Hi there"
                && span.output == "Hello!" && span.input.contains("Hi there")
                && span.cost_usd > 0.0 && span.status == "unset" && span.is_root;
            #{ score: if ok { 1 } else { 0 }, explanation: `${span}` }
        }"#,
        &config(),
    )
    .unwrap();
    let score = scored(script.evaluate(&view(&sp)));
    assert_eq!(score.value, 1.0, "{}", score.explanation);
    // Only the fields the script names are built.
    assert!(
        !score.explanation.contains("documents"),
        "{}",
        score.explanation
    );
    assert!(
        !score.explanation.contains("tool_calls"),
        "{}",
        score.explanation
    );
}

#[test]
fn params_reach_the_script() {
    let mut c = config();
    c.params = serde_json::from_value(serde_json::json!({"banned": ["Paris", "Rome"]})).unwrap();
    let score = scored(run_with(
        r#"fn score(span, params) {
            let hits = params.banned.filter(|w| span.output.contains(w));
            #{ score: if hits.is_empty() { 1 } else { 0 }, explanation: hits.len().to_string() }
        }"#,
        &c,
        "Paris is the capital of France.",
    ));
    assert_eq!((score.value, score.explanation.as_str()), (0.0, "1"));
}

#[test]
fn helpers_match_regexes_parse_json_and_find_pii() {
    let score = scored(run_with(
        r#"fn score(span) {
            let data = parse_json(span.output);
            let email = regex_find(data.contact, "[a-z]+@[a-z.]+");
            let kinds = pii(span.output);
            #{ score: if regex_match(data.contact, "^mail") && email == "ann@example.com"
                && kinds.contains("email") && !refusal(span.output)
                && refusal("I'm sorry, but I can't help with that.") { 1 } else { 0 } }
        }"#,
        &config(),
        r#"{"contact": "mail ann@example.com"}"#,
    ));
    assert_eq!(score.value, 1.0);
    let (kind, message) = error(run(r#"fn score(span) { regex_match("x", "(") }"#));
    assert_eq!(kind, "script_error");
    assert!(message.contains("pattern"), "{message}");
}

#[test]
fn an_endless_loop_stops_at_the_operation_limit() {
    let (kind, message) = error(run("fn score(span) { loop { } }"));
    assert_eq!(kind, "script_limit", "{message}");
    assert!(message.contains("operations"), "{message}");
}

#[test]
fn deep_recursion_stops_at_the_call_limit() {
    let (kind, message) = error(run("fn down(n) { down(n + 1) } fn score(span) { down(0) }"));
    assert_eq!(kind, "script_limit", "{message}");
    assert!(
        message.to_lowercase().contains("stack overflow"),
        "{message}"
    );
}

#[test]
fn unbounded_allocation_stops_at_the_size_limits() {
    for source in [
        r#"fn score(span) { let s = "x"; loop { s += s; } }"#,
        "fn score(span) { let a = []; loop { a.push(1); } }",
        // Rhai checks a map's size when maps are combined (`+=`); entries set one by one by
        // index meet the operation limit first, which bounds them as well.
        "fn score(span) { let m = #{}; let n = 0; loop { let e = #{}; e[n.to_string()] = n; m += e; n += 1; } }",
    ] {
        // Small limits, so the size limit and not the operation limit is what stops each.
        let mut c = config();
        c.limits.max_string_size = 1000;
        c.limits.max_array_size = 100;
        c.limits.max_map_size = 100;
        let (kind, message) = error(run_with(source, &c, "x"));
        assert_eq!(kind, "script_limit", "{source}: {message}");
        assert!(message.contains("too large"), "{source}: {message}");
    }
}

#[test]
fn too_many_variables_and_deep_expressions_are_refused() {
    let mut c = config();
    c.limits.max_variables = 3;
    let (kind, message) = error(run_with(
        "fn score(span) { let a = 1; let b = 2; let c = 3; let d = 4; a + b + c + d }",
        &c,
        "x",
    ));
    assert_eq!(kind, "script_limit", "{message}");
    let nested = format!(
        "fn score(span) {{ {}1{} }}",
        "(".repeat(100),
        ")".repeat(100)
    );
    let err = Script::compile("deep.rhai", &nested, &config()).unwrap_err();
    assert!(err.contains("deep.rhai"), "{err}");
}

#[test]
fn thrown_errors_and_bad_results_are_error_outcomes() {
    let (kind, message) = error(run(r#"fn score(span) { throw "no answer" }"#));
    assert_eq!(kind, "script_error");
    assert!(message.contains("no answer"), "{message}");
    assert_eq!(
        error(run(r#"fn score(span) { "good" }"#)).0,
        "script_result"
    );
    assert_eq!(
        error(run("fn score(span) { #{ label: \"x\" } }")).0,
        "script_result"
    );
}

#[test]
fn eval_is_disabled_and_scripts_must_define_score() {
    let err = Script::compile("e.rhai", r#"fn score(span) { eval("1") }"#, &config()).unwrap_err();
    assert!(err.contains("eval"), "{err}");
    let err = Script::compile("none.rhai", "fn other(x) { 1 }", &config()).unwrap_err();
    assert!(err.contains("fn score(span)"), "{err}");
    let err = Script::compile("syntax.rhai", "fn score(span) { ", &config()).unwrap_err();
    assert!(err.contains("syntax.rhai"), "{err}");
    // No modules, no clock: there is nothing to import and no time to read.
    let err = Script::compile(
        "i.rhai",
        r#"import "os" as os; fn score(span) { 1 }"#,
        &config(),
    )
    .unwrap_err();
    assert!(err.contains("i.rhai"), "{err}");
    let (kind, message) = error(run("fn score(span) { timestamp() }"));
    assert_eq!(kind, "script_error");
    assert!(message.contains("timestamp"), "{message}");
    let mut c = config();
    c.limits.max_operations = 0;
    assert!(
        Script::compile("z.rhai", "fn score(span) { 1 }", &c)
            .unwrap_err()
            .contains("max_operations")
    );
}

#[test]
fn a_script_that_changes_changes_the_version() {
    let a = Script::compile("a.rhai", "fn score(span) { 1 }", &config()).unwrap();
    let b = Script::compile("a.rhai", "fn score(span) { 0 }", &config()).unwrap();
    assert_ne!(a.fingerprint(), b.fingerprint());
}

#[test]
fn a_changed_file_is_reloaded_and_a_broken_one_keeps_the_old_version() {
    let dir = std::env::temp_dir().join(format!("evalstream-script-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("reload.rhai");
    std::fs::write(&path, "fn score(span) { 1 }").unwrap();
    let specs: Vec<crate::spec::EvaluatorSpec> = serde_json::from_value(
        serde_json::json!([{"type": "rhai", "name": "reload", "script": path}]),
    )
    .unwrap();
    let set = crate::spec::build_set(&specs).unwrap();
    let e = &set.evaluators()[0];
    let sp = chat("Paris.");
    let first = e.run(&view(&sp)).unwrap();
    assert_eq!(first.outcome.score().unwrap().value, 1.0);
    assert_eq!(first.version, e.version.as_str());
    assert_eq!(e.evaluator.reload(), Reload::Unchanged);

    std::fs::write(&path, "fn score(span) { 0 }").unwrap();
    assert_eq!(e.evaluator.reload(), Reload::Reloaded);
    let second = e.run(&view(&sp)).unwrap();
    assert_eq!(second.outcome.score().unwrap().value, 0.0);
    assert_ne!(
        second.version, first.version,
        "the version follows the script"
    );
    assert_ne!(second.score_id, first.score_id);

    std::fs::write(&path, "fn score(span) { ").unwrap();
    match e.evaluator.reload() {
        Reload::Failed(message) => assert!(message.contains("reload.rhai"), "{message}"),
        other => panic!("{other:?}"),
    }
    let third = e.run(&view(&sp)).unwrap();
    assert_eq!(
        third.outcome.score().unwrap().value,
        0.0,
        "the last good version runs"
    );
    assert_eq!(third.version, second.version);

    // Back to the first text: back to the first version and score ids.
    std::fs::write(&path, "fn score(span) { 1 }").unwrap();
    assert_eq!(e.evaluator.reload(), Reload::Reloaded);
    assert_eq!(e.run(&view(&sp)).unwrap().score_id, first.score_id);
    std::fs::remove_dir_all(&dir).unwrap();
}
