use super::*;
use crate::evaluator::SkipReason;
use crate::scorers::testing::{chat, s, span, view};
use opentelemetry_proto::tonic::trace::v1::Span;

const EIFFEL: [(&str, &str); 3] = [
    (
        "doc-eiffel-1",
        "The Eiffel Tower is 330 metres (1,083 ft) tall, about the same height as an 81-storey building.",
    ),
    (
        "doc-eiffel-2",
        "The tower was completed in 1889 as the entrance arch to the World's Fair. It was designed by Gustave Eiffel's engineering company.",
    ),
    (
        "doc-paris-3",
        "Paris is the capital and most populous city of France.",
    ),
];

fn retriever(docs: &[(&str, &str)]) -> Span {
    let mut attributes = vec![s("openinference.span.kind", "RETRIEVER")];
    for (i, (id, content)) in docs.iter().enumerate() {
        attributes.push(s(&format!("retrieval.documents.{i}.document.id"), id));
        attributes.push(s(
            &format!("retrieval.documents.{i}.document.content"),
            content,
        ));
    }
    let mut retriever = span(attributes);
    retriever.span_id = vec![1; 8];
    retriever.start_time_unix_nano = 10;
    retriever
}

/// A chat span answering `answer` after a system prompt.
fn chat_with_prompt(answer: &str, system: &str) -> Span {
    let mut sp = chat(answer);
    let input = serde_json::json!([
        {"role": "system", "parts": [{"type": "text", "content": system}]},
        {"role": "user", "parts": [{"type": "text", "content": "How tall is it?"}]},
    ]);
    sp.attributes
        .push(s("gen_ai.input.messages", &input.to_string()));
    sp
}

fn judge_spans(config: &GroundingConfig, spans: &[Span]) -> Outcome {
    let views: Vec<GenAiSpan<'_>> = spans.iter().map(view).collect();
    let trace = TraceView::new(views, true);
    let answer = trace
        .spans()
        .iter()
        .find(|s| s.span_id() == [9; 8])
        .expect("the chat span");
    Grounding::build(config)
        .unwrap()
        .evaluate_in_trace(answer, &trace)
}

fn judge(answer: &str, docs: &[(&str, &str)]) -> Outcome {
    judge_spans(
        &GroundingConfig::default(),
        &[retriever(docs), chat(answer)],
    )
}

fn scored(o: Outcome) -> (f64, bool, String, String) {
    match o {
        Outcome::Scored(s) => (s.value, s.passed, s.label.into_owned(), s.explanation),
        other => panic!("not scored: {other:?}"),
    }
}

/// The pieces of `answer` an explanation points at: the claims (`claim N (bytes a..b`) or the
/// numbers and names not found (`number at bytes a..b`).
fn pointed<'a>(answer: &'a str, why: &str, claims: bool) -> Vec<&'a str> {
    let re = if claims {
        regex::Regex::new(r"claim \d+ \(bytes (\d+)\.\.(\d+)").unwrap()
    } else {
        regex::Regex::new(r"(?:number|name) at bytes (\d+)\.\.(\d+)").unwrap()
    };
    re.captures_iter(why)
        .map(|c| &answer[c[1].parse::<usize>().unwrap()..c[2].parse::<usize>().unwrap()])
        .collect()
}

#[test]
fn the_corpus_answers_are_grounded_and_hallucinated() {
    let (v, passed, label, why) = scored(judge(
        "The Eiffel Tower is 330 metres tall [1] and was completed in 1889 [2].",
        &EIFFEL,
    ));
    assert_eq!(
        (v, passed, label.as_str()),
        (1.0, true, "grounded"),
        "{why}"
    );
    assert_eq!(why, "1 of 1 claims supported by the 3 retrieved documents");
    let answer =
        "The Eiffel Tower is 512 metres tall [1] and was designed by Leonardo da Vinci [4].";
    let (v, passed, label, why) = scored(judge(answer, &EIFFEL));
    assert_eq!((v, passed, label.as_str()), (0.0, false, "ungrounded"));
    assert_eq!(pointed(answer, &why, true), [answer], "{why}");
    assert_eq!(
        pointed(answer, &why, false),
        ["512", "Leonardo", "Vinci"],
        "{why}"
    );
    assert!(
        why.ends_with(
            "unsupported: claim 1 (bytes 0..82 of the output): best support 0.37 (document 1), \
             not found: number at bytes 20..23, name at bytes 60..68, name at bytes 72..77"
        ),
        "{why}"
    );
}

#[test]
fn a_paraphrase_with_the_same_facts_is_supported() {
    let (v, _, label, why) = scored(judge(
        "Construction of the tower finished in 1889 for the World's Fair. \
         Standing 330 metres high, the Eiffel Tower is roughly as tall as an 81-storey building.",
        &EIFFEL,
    ));
    assert_eq!((v, label.as_str()), (1.0, "grounded"), "{why}");
    // Facts from two documents in one uncited sentence: the two best together support it.
    let (v, ..) = scored(judge(
        "The Eiffel Tower is 330 metres tall and was completed in 1889.",
        &EIFFEL,
    ));
    assert_eq!(v, 1.0);
}

#[test]
fn a_number_off_by_one_digit_is_unsupported() {
    for answer in [
        "The Eiffel Tower is 331 metres tall.",
        "The Eiffel Tower is 330 metres tall and was completed in 1899.",
        "The Eiffel Tower is 1,084 ft tall.",
    ] {
        let (v, passed, label, why) = scored(judge(answer, &EIFFEL));
        assert_eq!(
            (v, passed, label.as_str()),
            (0.0, false, "ungrounded"),
            "{answer}"
        );
        assert!(why.contains("not found: number at bytes"), "{why}");
    }
    // Written differently, the same number.
    let (v, ..) = scored(judge(
        "The Eiffel Tower is 1083 ft (330.0 m) tall.",
        &EIFFEL,
    ));
    assert_eq!(v, 1.0);
}

#[test]
fn a_swapped_proper_noun_is_unsupported() {
    let answer = "The tower was designed by Leonardo da Vinci's engineering company.";
    let (v, _, _, why) = scored(judge(answer, &EIFFEL));
    assert_eq!(v, 0.0);
    assert_eq!(pointed(answer, &why, false), ["Leonardo", "Vinci"], "{why}");
    let (v, _, _, why) = scored(judge(
        "The tower was designed by Gustave Eiffel's engineering company.",
        &EIFFEL,
    ));
    assert_eq!(v, 1.0, "{why}");
    // At the start of a sentence, a name is recognised by the name that follows.
    let (v, _, _, why) = scored(judge(
        "Gustave Rossi designed the tower for the World's Fair.",
        &EIFFEL,
    ));
    assert_eq!(v, 0.0, "{why}");
}

#[test]
fn cited_documents_are_checked_first_then_the_others() {
    let docs = [
        ("a", "The tower is 330 metres tall, a record for 41 years."),
        ("b", "Some guides say the tower is 300 metres tall."),
    ];
    let (v, _, _, why) = scored(judge("The tower is 330 metres tall [1].", &docs));
    assert_eq!(
        (v, why.as_str()),
        (1.0, "1 of 1 claims supported by the 2 retrieved documents")
    );
    // Supported, but by a document the claim does not cite: grounded, and said so.
    let (v, _, label, why) = scored(judge("The tower is 330 metres tall [b].", &docs));
    assert_eq!((v, label.as_str()), (1.0, "grounded"));
    assert!(
        why.contains("1 only by a document they do not cite"),
        "{why}"
    );
    // A citation naming no document is ignored: the claim is checked against every document.
    let (v, _, _, why) = scored(judge("The tower is 330 metres tall [7].", &docs));
    assert_eq!(v, 1.0, "{why}");
    assert!(!why.contains("do not cite"), "{why}");
    let (v, ..) = scored(judge("The tower is 301 metres tall [7].", &docs));
    assert_eq!(v, 0.0);
}

#[test]
fn non_claims_are_skipped_and_partial_support_scores_between() {
    let answer = "Great question! The Eiffel Tower is 330 metres tall [1]. It was completed in 1889 [2]. \
         It was painted bright green by Claude Monet in 1925. Is there anything else? \
         I hope this helps.";
    let (v, passed, label, why) = scored(judge(answer, &EIFFEL));
    assert!((v - 2.0 / 3.0).abs() < 1e-9, "{why}");
    assert_eq!((passed, label.as_str()), (false, "partially_grounded"));
    assert!(why.starts_with("2 of 3 claims"), "{why}");
    assert!(why.contains("unsupported: claim 3 (bytes"), "{why}");
    assert_eq!(
        pointed(answer, &why, true),
        ["It was painted bright green by Claude Monet in 1925."],
        "{why}"
    );
    // One unsupported claim in five passes the default threshold of 0.8.
    let (v, passed, ..) = scored(judge(
        "The Eiffel Tower is 330 metres tall. It was completed in 1889. \
         It was the entrance arch to the World's Fair. Paris is the capital of France. \
         It was painted green by Claude Monet in 1925.",
        &EIFFEL,
    ));
    assert_eq!((v, passed), (0.8, true));
}

#[test]
fn explanations_locate_at_most_three_claims_and_claims_are_capped() {
    let answer = "Alpha Centauri hosts 7 moons. Beta Pictoris hosts 8 moons. \
        Gamma Draconis hosts 9 moons. Delta Cephei hosts 10 moons.";
    let (_, _, _, why) = scored(judge(answer, &EIFFEL));
    assert!(why.ends_with("; and 1 more"), "{why}");
    assert_eq!(
        pointed(answer, &why, true),
        [
            "Alpha Centauri hosts 7 moons.",
            "Beta Pictoris hosts 8 moons.",
            "Gamma Draconis hosts 9 moons."
        ],
        "{why}"
    );
    let config = GroundingConfig {
        max_claims: 2,
        ..Default::default()
    };
    let (_, _, _, why) = scored(judge_spans(&config, &[retriever(&EIFFEL), chat(answer)]));
    assert!(
        why.starts_with(
            "0 of 2 claims supported by the 3 retrieved documents (the first 2 claims checked)"
        ),
        "{why}"
    );
}

#[test]
fn context_blocks_in_the_prompt_ground_when_nothing_was_retrieved() {
    let system = "You are a helpful support agent. Cite sources as [n].\nContext:\n\
        [1] The Eiffel Tower is 330 metres (1,083 ft) tall.\n\
        [2] The tower was completed in 1889 as the entrance arch to the World's Fair.";
    let answer = "The Eiffel Tower is 330 metres tall [1] and was completed in 1889 [2].";
    let spans = [chat_with_prompt(answer, system)];
    let (v, _, _, why) = scored(judge_spans(&GroundingConfig::default(), &spans));
    assert_eq!(
        (v, why.as_str()),
        (
            1.0,
            "1 of 1 claims supported by the 2 context blocks of the prompt"
        )
    );
    // Also without the trace.
    let alone = Grounding::build(&GroundingConfig::default())
        .unwrap()
        .evaluate(&view(&spans[0]));
    assert_eq!(scored(alone).0, 1.0);
    let off = GroundingConfig {
        use_prompt_context: false,
        ..Default::default()
    };
    assert!(matches!(
        judge_spans(&off, &spans),
        Outcome::Skipped {
            reason: SkipReason::NotApplicable,
            ..
        }
    ));
    // A prompt of instructions only has no context.
    let plain = [chat_with_prompt(answer, "You are a helpful support agent.")];
    assert!(matches!(
        judge_spans(&GroundingConfig::default(), &plain),
        Outcome::Skipped {
            reason: SkipReason::NotApplicable,
            ..
        }
    ));
}

#[test]
fn missing_documents_answers_and_claims_are_skipped() {
    let skip = |o: Outcome| match o {
        Outcome::Skipped { reason, .. } => reason,
        other => panic!("{other:?}"),
    };
    // No documents at all.
    assert_eq!(
        skip(judge_spans(
            &GroundingConfig::default(),
            &[chat("The Eiffel Tower is 330 metres tall.")]
        )),
        SkipReason::NotApplicable
    );
    // The answer was not captured.
    let mut uncaptured = span(vec![s("gen_ai.operation.name", "chat")]);
    uncaptured.span_id = vec![9; 8];
    assert_eq!(
        skip(judge_spans(
            &GroundingConfig::default(),
            &[retriever(&EIFFEL), uncaptured]
        )),
        SkipReason::NoContent
    );
    // Documents retrieved without their text.
    let no_text = [
        retriever(&[("a", "")]),
        chat("The tower is 330 metres tall."),
    ];
    assert_eq!(
        skip(judge_spans(&GroundingConfig::default(), &no_text)),
        SkipReason::NoContent
    );
    // Nothing to check in the answer.
    assert_eq!(
        skip(judge(
            "Sure! Let me know if you need anything else.",
            &EIFFEL
        )),
        SkipReason::NotApplicable
    );
}

#[test]
fn options_are_validated() {
    let err = |c: GroundingConfig| Grounding::build(&c).unwrap_err();
    let d = GroundingConfig::default;
    assert!(
        err(GroundingConfig {
            min_overlap: 1.5,
            ..d()
        })
        .contains("min_overlap: must be between 0 and 1, not 1.5")
    );
    assert!(
        err(GroundingConfig {
            threshold: f64::NAN,
            ..d()
        })
        .starts_with("threshold:")
    );
    assert!(
        err(GroundingConfig {
            max_claims: 0,
            ..d()
        })
        .starts_with("max_claims:")
    );
    let unknown = serde_json::from_value::<GroundingConfig>(serde_json::json!({"min_overlaps": 1}))
        .unwrap_err()
        .to_string();
    assert!(
        unknown.contains("unknown field `min_overlaps`"),
        "{unknown}"
    );
}

#[test]
fn the_prefix_filter_never_hides_a_matching_word() {
    let words = [
        "fly",
        "flies",
        "city",
        "cities",
        "story",
        "stories",
        "bind",
        "bindings",
        "test",
        "tested",
        "testing",
        "thing",
        "things",
        "Eiffel",
        "EIFFEL",
        "boxes",
        "box",
        "passes",
        "pass",
        "completed",
        "complete",
        "metres",
        "metre",
        "abies",
        "abceds",
        "abcing",
        "Zürich",
        "ÉCOLE",
        "école",
        "églises",
        "église",
        "sses",
        "ss",
        "cats",
        "cat",
        "abced",
        "abc",
        "abcde",
        "abcd",
        "fixes",
        "fix",
        "goes",
        "go",
        "ties",
        "tie",
        "the",
        "them",
        "ft",
    ];
    let mut buf = String::new();
    let normalised = |w: &str, buf: &mut String| {
        let token = Tokens::new(w).next().unwrap();
        let hash = text::term(w, &token, buf, false).unwrap().hash;
        (hash, buf.as_bytes().to_vec())
    };
    for claim in words {
        let mut index = Index::new(1);
        let (hash, form) = normalised(claim, &mut buf);
        index.intern(hash, &form);
        for doc in words {
            if normalised(doc, &mut buf).0 == hash {
                assert!(index.may_hold(doc.as_bytes()), "{doc} hidden from {claim}");
            }
        }
    }
}

#[test]
fn help_center_answers_are_judged_fact_by_fact() {
    let docs = [
        (
            "kb-billing",
            "Our premium plan costs $49 per month and includes up to 10 users. Annual billing \
             gives a 20% discount. The plan includes priority support by email and chat, \
             available 24/7.",
        ),
        (
            "kb-password",
            "To reset your password, open Settings, choose Security and click 'Reset password'. \
             A reset link is sent to your registered email address and expires after 30 minutes.",
        ),
        (
            "kb-refunds",
            "Refunds are available within 14 days of purchase for annual plans. Monthly plans \
             are not refundable.",
        ),
    ];
    for (answer, supported) in [
        (
            "The premium plan is $49 a month and covers up to 10 users.",
            true,
        ),
        ("You get a 20% discount if you pay annually.", true),
        ("Password reset links expire after 30 minutes.", true),
        (
            // Each sentence opens with a capitalised word followed by a name.
            "1. Open Settings.\n2. Choose Security and click Reset password.",
            true,
        ),
        ("Password reset links expire after 60 minutes.", false),
        (
            "The premium plan is $59 a month and covers up to 10 users.",
            false,
        ),
        (
            "Refunds for annual plans are processed by Stripe within 5 business days.",
            false,
        ),
        (
            "The premium plan includes a dedicated account manager.",
            false,
        ),
    ] {
        let (v, _, _, why) = scored(judge(answer, &docs));
        assert_eq!(v == 1.0, supported, "{answer}: {v} {why}");
    }
}

#[test]
fn grounding_explanation_names_claims_by_position() {
    // Citation markers are cut out before the claims are found: positions still point into the
    // answer as written.
    let answer = "The Eiffel Tower is 330 metres tall [1]. Jane Doe [2] of Springfield has SSN \
        123-45-6789 and mail jane.doe@example.com for help [3]. It opened in 1889 [2].";
    let (_, _, _, why) = scored(judge(answer, &EIFFEL));
    for secret in [
        "Jane",
        "Doe",
        "Springfield",
        "123-45-6789",
        "jane.doe",
        "example.com",
    ] {
        assert!(!why.contains(secret), "{secret} in {why}");
    }
    assert_eq!(
        pointed(answer, &why, true),
        [
            "Jane Doe [2] of Springfield has SSN 123-45-6789 and mail jane.doe@example.com for help [3]."
        ],
        "{why}"
    );
    let missing = pointed(answer, &why, false);
    assert!(missing.contains(&"Springfield"), "{missing:?} {why}");
    assert!(why.contains("claim 2 (bytes 41.."), "{why}");
}
