//! `evalstream eval`: the offline form of the main job, for local use and CI gates.
//!
//! Reads OTLP trace requests from files (`.pb` protobuf, `.json`/`.jsonl` OTLP/JSON, one request
//! per line allowed) or standard input (`-`, encoding sniffed), runs the configured evaluators on
//! every span, prints one JSON object per evaluation to standard output, a summary table to
//! standard error, optionally writes the evaluator spans to a file, and applies `--fail-on` gates.
//! An input that cannot be read or decoded is reported and counted; the others still run.

use std::fs;
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use evalstream_evaluators::evaluator::{Evaluation, EvaluatorSet};
use evalstream_evaluators::otlp::{self, DecodeError, Encoding, types::ExportTraceServiceRequest};
use evalstream_evaluators::span;
use evalstream_evaluators::trace::TraceView;
use evalstream_evaluators::{spec, to_json, to_otlp};
use indicatif::{ProgressBar, ProgressStyle};
use prost::Message as _;

use crate::commands::gate::{Gate, Verdict};
use crate::commands::summary::Summary;
use crate::config::Config;

/// What `evalstream eval` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct EvalOptions {
    /// The configuration file; the built-in default evaluators when `None`.
    pub config: Option<PathBuf>,
    /// Gates that fail the run.
    pub fail_on: Vec<Gate>,
    /// Where to write the evaluator spans (`.json`: OTLP/JSON, else protobuf).
    pub output: Option<PathBuf>,
    /// The encoding of the inputs, when their names do not tell.
    pub encoding: Option<Encoding>,
    /// Input files; `-` is standard input.
    pub inputs: Vec<String>,
    /// Leave out the summary table.
    pub no_summary: bool,
}

/// How a run ended, as a process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunResult {
    /// Everything was evaluated and every gate passed.
    Ok = 0,
    /// A `--fail-on` gate failed.
    GateFailed = 1,
    /// An input could not be read or decoded.
    BadInput = 2,
}

/// The encoding a file's name implies, if any.
fn encoding_by_name(name: &str) -> Option<Encoding> {
    let ext = Path::new(name).extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "pb" | "bin" | "proto" | "protobuf" | "otlp" => Some(Encoding::OtlpProto),
        "json" | "jsonl" | "ndjson" => Some(Encoding::OtlpJson),
        _ => None,
    }
}

fn read_input(name: &str) -> io::Result<Vec<u8>> {
    if name == "-" {
        let mut bytes = Vec::new();
        io::stdin().lock().read_to_end(&mut bytes)?;
        Ok(bytes)
    } else {
        fs::read(name)
    }
}

/// Runs the evaluators over every span of every request and writes the results.
struct EvalRun<'s, W: Write> {
    set: &'s EvaluatorSet,
    out: W,
    summary: Summary,
    spans_out: Option<Vec<opentelemetry_proto::tonic::trace::v1::Span>>,
    scratch: Vec<Evaluation<'s>>,
}

impl<'s, W: Write> EvalRun<'s, W> {
    fn request(&mut self, request: &ExportTraceServiceRequest) -> io::Result<()> {
        self.summary.requests += 1;
        let now = crate::now_unix_nanos();
        // Trace evaluators see the other spans of the same trace in this request.
        let traces = TraceView::group(span::spans(request), false);
        for (trace, span) in TraceView::each_span(&traces) {
            self.summary.spans += 1;
            self.scratch.clear();
            self.set.evaluate_in(span, trace, &mut self.scratch);
            for e in &self.scratch {
                serde_json::to_writer(&mut self.out, &to_json::Line::new(span, e))?;
                self.out.write_all(b"\n")?;
                self.summary.record(e);
                if let Some(spans) = &mut self.spans_out
                    && to_otlp::emits_span(e)
                {
                    spans.push(to_otlp::evaluation_span(
                        span,
                        e,
                        now,
                        crate::now_unix_nanos(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Decodes and evaluates one input. Decoding errors are returned; output errors too.
    fn input(
        &mut self,
        bytes: &[u8],
        encoding: Encoding,
        progress: &ProgressBar,
    ) -> Result<(), InputError> {
        match encoding {
            Encoding::OtlpProto => {
                let request = otlp::decode(bytes, encoding).map_err(InputError::Decode)?;
                self.request(&request).map_err(InputError::Output)?;
                progress.inc(bytes.len() as u64);
            }
            Encoding::OtlpJson => {
                let mut requests = otlp::json_requests(bytes);
                let mut last = 0;
                let mut any = false;
                while let Some(request) = requests.next() {
                    let request = request.map_err(InputError::Decode)?;
                    self.request(&request).map_err(InputError::Output)?;
                    any = true;
                    let offset = requests.byte_offset();
                    progress.inc((offset - last) as u64);
                    last = offset;
                }
                if !any {
                    return Err(InputError::Decode(DecodeError::Empty(Encoding::OtlpJson)));
                }
            }
        }
        Ok(())
    }
}

enum InputError {
    Decode(DecodeError),
    Output(io::Error),
}

fn progress_bar(total: u64) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {bytes}/{total_bytes} [{bar:30}] {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Runs `evalstream eval`, writing evaluations to `out` and messages to standard error.
pub fn run(options: &EvalOptions, out: impl Write) -> anyhow::Result<RunResult> {
    let config = match &options.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let set = spec::build_set(&config.evaluators)?;
    let names: Vec<&str> = set.evaluators().iter().map(|e| e.name.as_str()).collect();
    let mut summary = Summary::new(names.iter().copied());
    for gate in &options.fail_on {
        gate.check_names(summary.names())
            .map_err(anyhow::Error::msg)?;
    }
    summary.inputs = options.inputs.len() as u64;

    let total: u64 = options
        .inputs
        .iter()
        .filter(|n| *n != "-")
        .filter_map(|n| fs::metadata(n).ok())
        .map(|m| m.len())
        .sum();
    let progress = progress_bar(total);
    let mut run = EvalRun {
        set: &set,
        out: io::BufWriter::new(out),
        summary,
        spans_out: options.output.as_ref().map(|_| Vec::new()),
        scratch: Vec::new(),
    };
    for name in &options.inputs {
        let bytes = match read_input(name) {
            Ok(b) => b,
            Err(e) => {
                progress.suspend(|| eprintln!("error: cannot read {name}: {e}"));
                run.summary.bad_inputs += 1;
                continue;
            }
        };
        let encoding = options
            .encoding
            .or_else(|| encoding_by_name(name))
            .unwrap_or_else(|| Encoding::sniff(&bytes));
        match run.input(&bytes, encoding, &progress) {
            Ok(()) => {}
            Err(InputError::Decode(e)) => {
                progress.suspend(|| eprintln!("error: {name}: {e}"));
                run.summary.bad_inputs += 1;
            }
            Err(InputError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
                return Ok(RunResult::Ok);
            }
            Err(InputError::Output(e)) => return Err(e).context("cannot write evaluations"),
        }
    }
    progress.finish_and_clear();
    match run.out.flush() {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(RunResult::Ok),
        other => other.context("cannot write evaluations")?,
    }
    let summary = run.summary;

    if let (Some(path), Some(spans)) = (&options.output, run.spans_out) {
        let count = spans.len();
        let request = to_otlp::export_request(spans);
        let bytes = if encoding_by_name(&path.to_string_lossy()) == Some(Encoding::OtlpJson) {
            serde_json::to_vec(&request)?
        } else {
            request.encode_to_vec()
        };
        fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {count} evaluator span(s) to {}", path.display());
    }
    if !options.no_summary {
        eprintln!("{}", summary.table());
    }

    let mut result = RunResult::Ok;
    for gate in &options.fail_on {
        match gate.verdict(&summary) {
            Verdict::Passed => eprintln!("gate passed: {gate}"),
            Verdict::NotEvaluated => eprintln!("gate not evaluated: {gate} (nothing scored)"),
            Verdict::Failed(values) => {
                let values: Vec<String> =
                    values.iter().map(|(n, v)| format!("{n}: {v:.4}")).collect();
                eprintln!("gate failed: {gate} ({})", values.join(", "));
                result = RunResult::GateFailed;
            }
        }
    }
    if summary.bad_inputs > 0 {
        eprintln!(
            "error: {} of {} input(s) could not be read or decoded",
            summary.bad_inputs, summary.inputs
        );
        return Ok(RunResult::BadInput);
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_imply_encodings() {
        assert_eq!(encoding_by_name("a/b.pb"), Some(Encoding::OtlpProto));
        assert_eq!(encoding_by_name("x.JSONL"), Some(Encoding::OtlpJson));
        assert_eq!(encoding_by_name("x.otlp.json"), Some(Encoding::OtlpJson));
        assert_eq!(encoding_by_name("-"), None);
        assert_eq!(encoding_by_name("noext"), None);
    }
}
