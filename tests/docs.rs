//! The documentation against what it documents: the configuration reference,
//! `docs/configuration.md`, names every key the configuration file takes and no other, and the
//! runbook, `docs/operations.md`, has a section for every alert of
//! `deploy/prometheus/evalstream.rules.yaml` and none for an alert that is gone, and the collector
//! configuration `docs/deployment.md` quotes is `deploy/collector/gateway.yaml`'s, and the
//! README's and the pages' links to each other resolve.
//!
//! The keys come from the code itself: every section rejects unknown keys and serde's error for
//! one lists the keys the section does take (`unknown field `__probe__`, expected one of …`). So
//! the test parses a probe at each place (`Config::parse`, the loader `evalstream run` uses),
//! reads the keys from the error and probes each of them in turn; a value that is not a section
//! is a key of its own. Two places are lists or maps by type rather than sections: `evaluators`
//! (each built-in type's options, plus the options every evaluator has) and `exporters` (by
//! type). A key added to a struct, a scorer or an exporter without a line in the reference fails
//! this test, and so does a documented key the code no longer takes.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;

use evalstream::config::Config;
use evalstream_evaluators::scorers::BUILTINS;
use serde_json::{Value, json};

const PROBE: &str = "__probe__";

/// Parses `tree` as a configuration file; the error's text, if any.
fn parse_error(tree: &Value) -> Option<String> {
    let text = serde_json::to_string(tree).unwrap();
    Config::parse(&text, Path::new("probe.yaml"), &|_| None)
        .err()
        .map(|e| e.to_string())
}

/// The keys listed by serde's `unknown field` error for the probe key, if the error is one.
fn expected_keys(error: &str) -> Option<Vec<String>> {
    let rest = &error[error.find(&format!("unknown field `{PROBE}`"))?..];
    if rest.contains("there are no fields") {
        return Some(Vec::new());
    }
    let listed = &rest[rest.find("expected")? + "expected".len()..];
    Some(
        listed
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect(),
    )
}

/// Puts a probe value at the place being probed.
type Wrap<'a> = &'a dyn Fn(Value) -> Value;

/// Adds the keys under `name` (a dotted path; empty at the top) to `keys`.
fn walk(name: &str, wrap: Wrap, keys: &mut BTreeSet<String>) {
    let error = parse_error(&wrap(json!({ PROBE: 1 }))).unwrap_or_default();
    if let Some(fields) = expected_keys(&error) {
        for field in fields {
            let path = if name.is_empty() {
                field.clone()
            } else {
                format!("{name}.{field}")
            };
            keys.insert(path.clone());
            match path.as_str() {
                "evaluators" => evaluators(keys),
                "exporters" => exporters(keys),
                _ => walk(&path, &|v| wrap(json!({ field.clone(): v })), keys),
            }
        }
        return;
    }
    // A map whose values are sections (`prices: {model: {input, output, …}}`).
    let error = parse_error(&wrap(json!({ "any": { PROBE: 1 } }))).unwrap_or_default();
    if expected_keys(&error).is_some() {
        walk(&format!("{name}.*"), &|v| wrap(json!({ "any": v })), keys);
    }
}

/// `evaluators[].KEY`: the options every evaluator has; `evaluators[TYPE].KEY`: a type's own.
fn evaluators(keys: &mut BTreeSet<String>) {
    let list = |entry: Value| json!({ "evaluators": [{ "type": "refusal" }, entry] });
    // The shared options are read by hand before the type's options, so no error lists them: they
    // are what an evaluator spec serializes to besides its type's options.
    let config = Config::parse(
        &list(json!({ "type": "pii", "when": { "evaluator": "refusal", "below": 0.5 } }))
            .to_string(),
        Path::new("probe.yaml"),
        &|_| None,
    )
    .unwrap();
    let spec = serde_json::to_value(&config.evaluators[1]).unwrap();
    let options = serde_json::to_value(&config.evaluators[1].kind).unwrap();
    for shared in spec.as_object().unwrap().keys() {
        if shared == "type" || !options.as_object().unwrap().contains_key(shared) {
            let path = format!("evaluators[].{shared}");
            keys.insert(path.clone());
            let shared = shared.clone();
            walk(
                &path,
                &|v| list(json!({ "type": "pii", shared.clone(): v })),
                keys,
            );
        }
    }
    for builtin in BUILTINS {
        let path = format!("evaluators[{}]", builtin.type_name);
        let type_name = builtin.type_name;
        walk(
            &path,
            &|mut v| {
                v.as_object_mut()
                    .unwrap()
                    .insert("type".into(), type_name.into());
                list(v)
            },
            keys,
        );
    }
}

/// `exporters.TYPE.KEY`, for each type the error for an unknown one lists.
fn exporters(keys: &mut BTreeSet<String>) {
    let error = parse_error(&json!({ "exporters": { PROBE: {} } })).unwrap();
    let listed = &error[error.find("expected").unwrap()..];
    let types: Vec<String> = listed
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    assert!(types.len() >= 4, "{error}");
    for t in types {
        let path = format!("exporters.{t}");
        keys.insert(path.clone());
        walk(&path, &|v| json!({ "exporters": { t.clone(): v } }), keys);
    }
}

fn keys_in_code() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    walk("", &|v| v, &mut keys);
    keys
}

fn repository_file(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The keys `docs/configuration.md` documents: the first cell of each table row, when it is a key
/// in backticks (`| `receivers.kafka.brokers` | … |`). `exporters.otlp.KEY` stands for
/// `otlphttp` too.
fn keys_in_reference(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once("` |").map(|(key, _)| key.to_owned()))
        .collect()
}

#[test]
fn the_configuration_reference_lists_every_key_and_no_other() {
    let mut code = keys_in_code();
    // Enough found to trust the probing: every section, every evaluator type, every exporter.
    for key in [
        "receivers.kafka.drain_timeout_seconds",
        "receivers.otlp.protocols.grpc.endpoint",
        "evaluators[].select.kinds",
        "evaluators[pii].kinds",
        "evaluators[cost].prices.*.input",
        "exporters.otlp.retry_on_failure.max_elapsed_time",
        "telemetry.metrics.max_scrape_bytes",
        "traces.max_bytes",
        "drift.false_alarm_budget",
    ] {
        assert!(
            code.contains(key),
            "the probe did not find {key}: {code:#?}"
        );
    }
    // `otlphttp` (and its alias `otlp_http`) takes exactly the keys of `otlp`; the reference
    // lists them once.
    let grpc: BTreeSet<String> = code
        .iter()
        .filter_map(|k| k.strip_prefix("exporters.otlp."))
        .map(str::to_owned)
        .collect();
    let http: BTreeSet<String> = code
        .iter()
        .filter_map(|k| k.strip_prefix("exporters.otlphttp."))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        grpc, http,
        "otlp and otlphttp exporters take different keys"
    );
    code.retain(|k| !k.starts_with("exporters.otlphttp"));

    let documented = keys_in_reference(&repository_file("docs/configuration.md"));
    let undocumented: Vec<&String> = code.difference(&documented).collect();
    let gone: Vec<&String> = documented.difference(&code).collect();
    assert!(
        undocumented.is_empty() && gone.is_empty(),
        "docs/configuration.md is out of date.\nKeys the code takes that it does not list (add a row \
         `| `KEY` | default | meaning |`): {undocumented:#?}\nKeys it lists that the code does not \
         take: {gone:#?}"
    );
}

#[test]
fn the_reference_parser_reads_rows_and_skips_the_rest() {
    let text = "| key | default | meaning |\n|---|---|---|\n| `traces.max_bytes` | 256 MiB | x |\n\
                text with `a.b` |\n| `evalstream_score` | histogram |\n";
    assert_eq!(
        keys_in_reference(text),
        BTreeSet::from(["traces.max_bytes".to_owned(), "evalstream_score".to_owned()])
    );
}

#[test]
fn the_runbook_has_a_section_for_every_alert() {
    let rules = repository_file("deploy/prometheus/evalstream.rules.yaml");
    let alerts: BTreeSet<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .map(str::trim)
        .collect();
    assert!(alerts.len() >= 8, "{alerts:?}");
    let runbook = repository_file("docs/operations.md");
    let sections: BTreeSet<&str> = runbook
        .lines()
        .filter_map(|line| line.strip_prefix("### "))
        .filter(|name| name.starts_with("Evalstream"))
        .collect();
    assert_eq!(
        alerts, sections,
        "docs/operations.md needs one `### AlertName` section per alert of the rules file"
    );
}

/// Whether every key of `part` is in `whole` with the same value (maps compared key by key, the
/// rest as equal values).
fn is_part_of(part: &Value, whole: &Value) -> bool {
    match (part, whole) {
        (Value::Object(part), Value::Object(whole)) => part
            .iter()
            .all(|(k, v)| whole.get(k).is_some_and(|w| is_part_of(v, w))),
        _ => part == whole,
    }
}

/// The collector configuration `docs/deployment.md` quotes is the one the end-to-end test runs.
#[test]
fn the_deployment_guide_quotes_the_collector_gateway_as_it_is() {
    let guide = repository_file("docs/deployment.md");
    let section = &guide[guide.find("## The collector gateway").unwrap()..];
    let excerpt = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap();
    let excerpt: Value = serde_saphyr::from_str(excerpt).unwrap();
    let gateway: Value =
        serde_saphyr::from_str(&repository_file("deploy/collector/gateway.yaml")).unwrap();
    assert!(
        excerpt["exporters"]["kafka/spans"]["partition_traces_by_id"] == true
            && excerpt["service"]["pipelines"]
                .as_object()
                .is_some_and(|p| p.len() >= 3),
        "{excerpt:#}"
    );
    assert!(
        is_part_of(&excerpt, &gateway),
        "the excerpt in docs/deployment.md differs from deploy/collector/gateway.yaml:\n{excerpt:#}"
    );
    let changed = excerpt.to_string().replace("otlp_logs", "otlp_log");
    assert!(!is_part_of(
        &serde_json::from_str(&changed).unwrap(),
        &gateway
    ));
}

/// A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The README and the pages under docs/ link to files and headings that exist: text moved from
/// one page to another keeps its links working.
#[test]
fn relative_links_in_the_documentation_resolve() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut pages = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    assert!(pages.len() >= 10, "{pages:?}");
    let link = regex::Regex::new(r"\]\(([^)\s]+)\)").unwrap();
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for found in link.captures_iter(&text) {
            let target = &found[1];
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            checked += 1;
            let (file, fragment) = target.split_once('#').unwrap_or((target, ""));
            let file = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            if !file.exists() {
                broken.push(format!("{}: {target} (no such file)", page.display()));
            } else if !fragment.is_empty() {
                let headings = std::fs::read_to_string(&file).unwrap_or_default();
                let found = headings
                    .lines()
                    .filter_map(|l| l.strip_prefix('#'))
                    .any(|h| anchor(h.trim_start_matches('#')) == fragment);
                if !found {
                    broken.push(format!("{}: {target} (no such heading)", page.display()));
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert_eq!(
        anchor("Managed Kafka: TLS and SASL"),
        "managed-kafka-tls-and-sasl"
    );
    assert_eq!(
        anchor("`evalstream run`, one machine"),
        "evalstream-run-one-machine"
    );
}
