//! `evalstream eval --sampling`: what a tail-sampling policy ([`Policy`]) would keep of the traces
//! in the input files, rule by rule, and which failing traces a uniform 1% head sample (the
//! practice the policy replaces) would have lost.
//!
//! Facts are gathered as `eval` reads: spans as their requests are handed to the evaluators,
//! scores as their evaluations are printed. Once every input is in (whole traces, as `eval`
//! judges them), traces are decided in the order they first appeared, so `top_percent` rules
//! see the stream as a worker would. Memory: one [`TraceFacts`] per trace (about 200 bytes, plus
//! about 60 per scored evaluation), for the whole run.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use comfy_table::Table;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use evalstream_evaluators::otlp::{self, types::ExportTraceServiceRequest};
use evalstream_evaluators::pricing::PriceTable;
use evalstream_evaluators::span;
use serde::Deserialize;

use crate::pipeline::redaction::{Redactions, Redactor};
use crate::pipeline::sampling::{Policy, TraceFacts, uniform_keeps};
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;

/// The head sample the report compares with: uniform, 1%.
const HEAD_RATE: f64 = 0.01;

/// Failing traces named in the report, at most.
const NAMED: usize = 20;

/// The facts of every trace read so far, and the policy that will decide on them.
pub struct SamplingReport {
    policy: Policy,
    prices: PriceTable,
    /// Hex trace id → facts.
    traces: HashMap<String, TraceFacts>,
    /// Hex trace ids, in the order they first appeared.
    order: Vec<String>,
    /// Whether the policy is the configuration's (else the default).
    configured: bool,
}

/// The fields of an evaluation line the report reads.
#[derive(Deserialize)]
struct Scored<'a> {
    trace_id: &'a str,
    evaluator: &'a str,
    score: Option<f64>,
    passed: Option<bool>,
}

impl SamplingReport {
    /// A report of `policy`'s decisions (`configured`: from the configuration file, else the
    /// default policy).
    pub fn new(policy: Policy, prices: PriceTable, configured: bool) -> SamplingReport {
        SamplingReport {
            policy,
            prices,
            traces: HashMap::new(),
            order: Vec::new(),
            configured,
        }
    }

    /// Reads the spans of a request.
    pub fn spans(&mut self, request: &ExportTraceServiceRequest) {
        let keys = self.policy.attribute_keys();
        for s in span::spans(request) {
            let id = otlp::hex(s.trace_id());
            let facts = self.traces.entry(id).or_insert_with_key(|id| {
                self.order.push(id.clone());
                TraceFacts::new(s.trace_id())
            });
            facts.add_span(&s, &self.prices, &keys);
        }
    }

    /// Reads one printed evaluation line (the JSON `eval` writes); lines it cannot read, or
    /// that are not scored, say nothing.
    pub fn line(&mut self, text: &str) {
        let Ok(line) = serde_json::from_str::<Scored<'_>>(text) else {
            return;
        };
        if let (Some(score), Some(passed), Some(facts)) =
            (line.score, line.passed, self.traces.get_mut(line.trace_id))
        {
            facts.add_verdict(line.evaluator, score, passed);
        }
    }

    /// Decides on every trace: a description of the outcome, and the (hex) ids of the traces
    /// kept.
    pub fn finish(self) -> (String, HashSet<String>) {
        let rules = self.policy.rules();
        let mut kept_by = vec![0u64; rules.len()];
        let (mut kept, mut failing, mut lost) = (0u64, 0u64, Vec::new());
        let mut kept_ids = HashSet::new();
        for id in &self.order {
            let facts = &self.traces[id];
            let decision = self.policy.decide(facts);
            if let Some(rule) = decision.rule {
                kept_by[rule] += 1;
            }
            kept += u64::from(decision.keep);
            if decision.keep {
                kept_ids.insert(id.clone());
            }
            let fails = facts.error || facts.verdicts.iter().any(|(_, _, passed)| !passed);
            if fails {
                failing += 1;
                if !uniform_keeps(&facts.trace_id, HEAD_RATE) {
                    lost.push(id.as_str());
                }
            }
        }
        let total = self.order.len() as u64;
        let share = |n: u64| match total {
            0 => "-".to_owned(),
            _ => format!("{:.1}%", n as f64 * 100.0 / total as f64),
        };
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED);
        table.set_header(["rule (first match decides)", "decides", "share", "keeps"]);
        for (rule, n) in rules.iter().zip(&kept_by) {
            let keeps = if matches!(rule, crate::pipeline::sampling::Rule::Drop) {
                "no"
            } else {
                "yes"
            };
            table.add_row([rule.to_string(), n.to_string(), share(*n), keeps.into()]);
        }
        let unmatched = total - kept_by.iter().sum::<u64>();
        if unmatched > 0 {
            table.add_row([
                "(no rule matched)".into(),
                unmatched.to_string(),
                share(unmatched),
                "no".into(),
            ]);
        }
        let mut out = format!(
            "sampling: {} policy, {total} trace(s): keeps {kept} ({})\n{table}\n",
            if self.configured {
                "the configuration's"
            } else {
                "the default"
            },
            share(kept),
        );
        let _ = write!(
            out,
            "failing traces (an ERROR span or a failed evaluation): {failing}; a uniform {}% head sample keeps {} and loses {}",
            HEAD_RATE * 100.0,
            failing - lost.len() as u64,
            lost.len(),
        );
        if !lost.is_empty() {
            let named: Vec<&str> = lost.iter().take(NAMED).copied().collect();
            let more = match lost.len() > NAMED {
                true => format!(", and {} more", lost.len() - NAMED),
                false => String::new(),
            };
            let _ = write!(out, ": {}{more}", named.join(", "));
        }
        (out, kept_ids)
    }
}

/// The spans of the `kept` traces in `request`, redacted by `redactor` when given, under their
/// resources and scopes (empty ones left out).
pub fn kept_spans(
    mut request: ExportTraceServiceRequest,
    kept: &HashSet<String>,
    redactor: Option<&Redactor>,
    done: &mut Redactions,
) -> Vec<ResourceSpans> {
    for rs in &mut request.resource_spans {
        for ss in &mut rs.scope_spans {
            ss.spans.retain(|s| kept.contains(&otlp::hex(&s.trace_id)));
        }
        rs.scope_spans.retain(|ss| !ss.spans.is_empty());
    }
    request
        .resource_spans
        .retain(|rs| !rs.scope_spans.is_empty());
    if let Some(r) = redactor {
        r.request(&mut request, done);
    }
    request.resource_spans
}
