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

/// A bytes attribute became an array of integers, 16 bytes a byte: a blob keeps one, and the
/// array limit still applies to it.
#[test]
fn bytes_attributes_are_blobs() {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let script = Script::compile(
        "bytes.rhai",
        r#"fn score(span) {
            let b = span.attributes["payload"];
            #{ score: b[0], explanation: `${type_of(b)} ${b.len()}` }
        }"#,
        &config(),
    )
    .unwrap();
    let with = |n: usize| {
        let sp = span(vec![
            s("gen_ai.operation.name", "chat"),
            crate::scorers::testing::attr("payload", Value::BytesValue(vec![7; n])),
        ]);
        script.evaluate(&view(&sp))
    };
    let score = scored(with(5000));
    assert_eq!(
        (score.value, score.explanation.as_str()),
        (7.0, "blob 5000")
    );
    let (kind, message) = error(with(100_000));
    assert_eq!(kind, "script_limit", "{message}");
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

/// Runs `source` on its own thread, failing instead of hanging if it blocks.
fn run_bounded(source: &str) -> Outcome {
    let script = Script::compile("inline.rhai", source, &config()).unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let sp = chat("x");
        let _ = sender.send(script.evaluate(&view(&sp)));
    });
    receiver
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the script returns")
}

#[test]
fn scripts_cannot_sleep() {
    // `sleep` blocked the worker (and `sleep(1e300)` panicked inside Rhai); had it run, each
    // script would return its score.
    for source in [
        "fn score(span) { sleep(1); 1 }",
        "fn score(span) { sleep(1e300); 1 }",
        "fn score(span) { sleep(1.5); 1 }",
        "fn score(span) { exit(1); 1 }",
    ] {
        let (kind, message) = error(run_bounded(source));
        assert_eq!(kind, "script_error", "{source}: {message}");
        assert!(
            message.starts_with("Function not found"),
            "{source}: {message}"
        );
    }
    // What was dropped with the language core package, `parse_json`, is there again.
    assert_eq!(
        scored(run(r#"fn score(span) { parse_json(`{"a": 2}`).a }"#)).value,
        2.0
    );
}

#[test]
fn regex_find_all_stops_at_the_array_limit() {
    let mut c = config();
    c.limits.max_array_size = 1000;
    // 50 000 matches in a 100 kB text: the helper stops after the 1001st.
    let source = "fn score(span) { regex_find_all(span.output, \"a\").len() }";
    let (kind, message) = error(run_with(source, &c, &"a ".repeat(50_000)));
    assert_eq!(kind, "script_limit", "{message}");
    assert!(
        message.contains("regex_find_all: more than 1000 matches (limits.max_array_size)"),
        "{message}"
    );
    // At the limit exactly, every match is returned.
    assert_eq!(
        scored(run_with(source, &c, &"a ".repeat(1000))).value,
        1000.0
    );
}

#[test]
fn helpers_refuse_texts_over_the_string_limit() {
    let mut c = config();
    c.limits.max_string_size = 1000;
    let big = "word ".repeat(1000);
    for helper in [
        "regex_match(span.output, \"x\")",
        "regex_find(span.output, \"x\")",
        "regex_find_all(span.output, \"x\")",
        "word_count(span.output)",
        "pii(span.output)",
        "parse_json(span.output)",
    ] {
        let source = format!("fn score(span) {{ {helper}; 1 }}");
        let (kind, message) = error(run_with(&source, &c, &big));
        let name = &helper[..helper.find('(').unwrap()];
        assert_eq!(kind, "script_limit", "{helper}: {message}");
        assert!(
            message.contains(&format!(
                "{name}: a text of 5000 bytes, over limits.max_string_size (1000)"
            )),
            "{message}"
        );
    }
    // `refusal` reads only the opening, whatever the size.
    let source = "fn score(span) { if refusal(span.output) { 0 } else { 1 } }";
    assert_eq!(scored(run_with(source, &c, &big)).value, 1.0);
}

/// `max_call_levels: 5000` with deep recursion overflowed the thread's stack, which aborts the
/// process; so did nesting data past what the stack holds.
#[test]
fn limits_that_could_overflow_the_stack_are_refused() {
    fn set(limits: &mut ScriptLimits, key: &str, value: usize) {
        match key {
            "max_call_levels" => limits.max_call_levels = value,
            "max_expr_depth" => limits.max_expr_depth = value,
            "max_array_size" => limits.max_array_size = value,
            _ => limits.max_map_size = value,
        }
    }
    for (key, bound) in [
        ("max_call_levels", sandbox::MAX_ALLOWED_CALL_LEVELS),
        ("max_expr_depth", sandbox::MAX_ALLOWED_EXPR_DEPTH),
        ("max_array_size", sandbox::MAX_ALLOWED_COLLECTION_SIZE),
        ("max_map_size", sandbox::MAX_ALLOWED_COLLECTION_SIZE),
    ] {
        let mut c = config();
        set(&mut c.limits, key, 50_000);
        let err = Script::compile("deep.rhai", "fn score(span) { 1 }", &c).unwrap_err();
        assert!(
            err.starts_with(&format!("limits.{key}: 50000 is over the bound of {bound}")),
            "{err}"
        );
        set(&mut c.limits, key, bound);
        assert!(Script::compile("deep.rhai", "fn score(span) { 1 }", &c).is_ok());
    }
    // The stack stated for the bounds covers any limits the validation accepts.
    let most = ScriptLimits {
        max_call_levels: sandbox::MAX_ALLOWED_CALL_LEVELS,
        max_expr_depth: sandbox::MAX_ALLOWED_EXPR_DEPTH,
        max_array_size: sandbox::MAX_ALLOWED_COLLECTION_SIZE,
        max_map_size: sandbox::MAX_ALLOWED_COLLECTION_SIZE,
        ..ScriptLimits::default()
    };
    assert!(most.validate().is_ok());
    assert_eq!(
        sandbox::required_stack(&most),
        sandbox::STACK_BYTES_FOR_MAX_CALL_LEVELS
    );
    let mut fewer = most.clone();
    fewer.max_call_levels = 8;
    assert!(sandbox::required_stack(&fewer) < sandbox::STACK_BYTES_FOR_MAX_CALL_LEVELS);
}

#[test]
fn printed_text_is_logged_truncated() {
    assert_eq!(sandbox::log_excerpt("short"), "short");
    let long = "é".repeat(1000);
    let logged = sandbox::log_excerpt(&long);
    assert!(
        logged.starts_with(&"é".repeat(sandbox::MAX_LOGGED_CHARS)),
        "{logged}"
    );
    assert!(
        logged.ends_with("… [truncated: 1000 chars, first 256 shown]"),
        "{logged}"
    );
    assert_eq!(logged.chars().filter(|c| *c == 'é').count(), 256);
    // Printing from a script is no error.
    assert_eq!(
        scored(run(
            r#"fn score(span) { print(span.output); debug(span); 1 }"#
        ))
        .value,
        1.0
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
    assert!(
        e.evaluator.reloads(),
        "a script read from a file can change"
    );
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

/// `max_call_levels: 5000` and deep recursion aborted the process (a stack overflow cannot be
/// caught): at the highest limits allowed, on a thread of the stack stated for them, the worst
/// scripts ([`sandbox::worst_case_scripts`]) stop at a limit instead.
#[test]
fn scripts_recursing_to_the_maximum_levels_stop_at_a_limit_on_the_stated_stack() {
    let limits = ScriptLimits {
        max_call_levels: sandbox::MAX_ALLOWED_CALL_LEVELS,
        max_expr_depth: sandbox::MAX_ALLOWED_EXPR_DEPTH,
        max_array_size: sandbox::MAX_ALLOWED_COLLECTION_SIZE,
        max_map_size: sandbox::MAX_ALLOWED_COLLECTION_SIZE,
        ..ScriptLimits::default()
    };
    for (name, source, params) in sandbox::worst_case_scripts(&limits) {
        if matches!(name, "arrays" | "maps") {
            continue; // Below: nesting 10 000 levels takes a minute in a debug build.
        }
        // Too little stack aborts this test process: the test fails, loudly.
        let outcome = sandbox::run_worst_case(
            &source,
            &params,
            &limits,
            sandbox::STACK_BYTES_FOR_MAX_CALL_LEVELS,
        )
        .unwrap();
        match (name, outcome) {
            ("json", Outcome::Scored(score)) => assert_eq!(score.value, 1.0),
            (
                _,
                Outcome::Error {
                    error_type,
                    message,
                },
            ) if name != "json" => {
                assert_eq!(error_type, "script_limit", "{name}: {message}");
                assert!(message.contains("Stack overflow"), "{name}: {message}");
            }
            (_, other) => panic!("{name}: {other:?}"),
        }
    }
}

/// Nested arrays and maps (`a = [a]` in a loop) recurse when cloned, measured and dropped: at
/// 2000 items (the stack's cost is linear, and the `script_stack` benchmark checks the bound),
/// on the stack [`sandbox::required_stack`] states for those limits, they stop at the size limit.
#[test]
fn nested_data_stops_at_a_size_limit_on_the_stated_stack() {
    let limits = ScriptLimits {
        max_call_levels: 1,
        max_expr_depth: 16,
        max_array_size: 2000,
        max_map_size: 2000,
        ..ScriptLimits::default()
    };
    for (name, source, params) in sandbox::worst_case_scripts(&limits) {
        if !matches!(name, "arrays" | "maps") {
            continue;
        }
        match sandbox::run_worst_case(&source, &params, &limits, sandbox::required_stack(&limits))
            .unwrap()
        {
            Outcome::Error {
                error_type,
                message,
            } => {
                assert_eq!(error_type, "script_limit", "{name}: {message}");
                assert!(message.contains("too large"), "{name}: {message}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}
