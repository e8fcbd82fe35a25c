//! Evaluations as Phoenix span annotations (`SpanAnnotationData` of Phoenix 20.26's REST API),
//! one per scored or errored verdict: see the exporter's module comment for the fields.

use evalstream_evaluators::evaluator::Outcome;
use evalstream_evaluators::otlp;
use evalstream_evaluators::to_otlp::{MAX_EXPLANATION_BYTES, MAX_NAME_BYTES, capped};
use serde::Serialize;

use crate::pipeline::export::Verdict;

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

/// The JSON request body carrying `annotations`.
pub fn body(annotations: &[Annotation]) -> Vec<u8> {
    // Serializing plain structs of strings and numbers to a Vec cannot fail; if it did, the
    // request would go empty and Phoenix would refuse it, rejecting the inputs (never silently).
    serde_json::to_vec(&Body { data: annotations }).unwrap_or_default()
}
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use evalstream_evaluators::evaluator::{Score, ScoreId};

    pub(crate) fn verdict(
        evaluator: &str,
        evaluator_type: &'static str,
        outcome: Outcome,
    ) -> Verdict {
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
}
