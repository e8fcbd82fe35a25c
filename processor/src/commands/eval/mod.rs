//! `evalstream eval`: the offline form of the main job, for local use and CI gates.
//!
//! Reads OTLP trace requests from files (`.pb` protobuf, `.json`/`.jsonl` OTLP/JSON, one request
//! per line allowed) or standard input (`-`, encoding sniffed), runs the configured evaluators on
//! every span, prints one JSON object per evaluation to standard output, a summary table to
//! standard error, optionally writes the evaluator spans to a file, and applies `--fail-on` gates.
//! An input that cannot be read or decoded is reported and counted; the others still run.
//!
//! Inputs may also be OTLP logs (`ExportLogsServiceRequest`), told from traces by content
//! ([`logs::signal`]; one signal per file): the GenAI content events they hold are joined to their
//! spans by span id across every input, in any order, before anything is evaluated — so every
//! input is read once to find the logs, and the trace inputs again to evaluate them. Events that
//! match no span are counted and reported.
//!
//! The evaluation is `run`'s own ([`Pipeline`]): trace evaluators see whole traces gathered
//! across every request, line and file (held in the trace buffer, bounded by `traces.max_traces`
//! and `traces.max_bytes`: past them the oldest traces are judged with what they have, as online;
//! nothing is judged early for being quiet, since the run ends when the input does), and
//! `llm_judge` evaluators call their judges with the online client, retries, rate limits, budget,
//! cache and redaction, up to each judge's `max_concurrency` at once, waiting for room in its
//! queue rather than shedding (`--skip-judges` leaves them out: their spans are skipped
//! `not_applicable`). Output comes in input order ([`ledger`]), so `--fail-on` gates see exactly
//! what `run` would score.

mod ledger;
mod sampling;

use std::fs;
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use crossbeam_channel::Sender;
use evalstream_evaluators::logs::{self, ContentEvent, Signal};
use evalstream_evaluators::otlp::{self, DecodeError, Encoding, types::ExportTraceServiceRequest};
use evalstream_evaluators::spec;
use indicatif::{ProgressBar, ProgressStyle};
use prost::Message as _;
use std::collections::HashMap;

use crate::commands::gate::{Gate, Verdict};
use crate::commands::summary::Summary;
use crate::config::Config;
use crate::pipeline::ack::Token;
use crate::pipeline::assembly::AssemblyConfig;
use crate::pipeline::export::Exporters;
use crate::pipeline::judge::WhenFull;
use crate::pipeline::redaction::{Redactions, Redactor};
use crate::pipeline::sampling::Policy;
use crate::pipeline::stages::{Pipeline, Settings};
use crate::pipeline::worker::{Body, Input};
use crate::telemetry::metrics::Metrics;
use ledger::{Collector, EvalInput, Ledger};
use sampling::SamplingReport;

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
    /// Do not call `llm_judge` evaluators (their spans are skipped `not_applicable`).
    pub skip_judges: bool,
    /// Report what the tail-sampling policy (the configuration's `sampling`, else the default)
    /// would keep.
    pub sampling: bool,
    /// Where to write the kept traces, whole (redacted by the configuration's `redaction`).
    pub sampling_output: Option<PathBuf>,
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

/// An input's bytes (`kept` when already read), or `None` when it cannot be read: reported and
/// counted.
fn read_reported(
    name: &str,
    kept: Option<Vec<u8>>,
    progress: &ProgressBar,
    summary: &mut Summary,
) -> Option<Vec<u8>> {
    match kept.map_or_else(|| read_input(name), Ok) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            progress.suspend(|| eprintln!("error: cannot read {name}: {e}"));
            summary.bad_inputs += 1;
            None
        }
    }
}

/// How long `eval` waits, at the end, for judge calls still running: each call has its own
/// timeout and retries; this only bounds a judge that keeps answering "retry later".
const JUDGE_PATIENCE: Duration = Duration::from_secs(3600);

/// Quiet and waiting periods of the trace buffer in `eval`: longer than any run, so traces are
/// judged when the input ends (or when the buffer's limits make room), never for a pause in
/// reading.
const NEVER_SECONDS: f64 = 1e9;

/// Feeds decoded requests to the pipeline and prints what comes back, in order.
struct EvalRun<W: Write> {
    /// The pipeline's queue, until every input is in.
    work: Option<Sender<Vec<Input>>>,
    ledger: Arc<Ledger>,
    next_seq: u64,
    out: W,
    summary: Summary,
    /// `--sampling`: the traces' facts, for the policy's report.
    sampling: Option<SamplingReport>,
    /// Content events from the logs inputs, by span id, until their span is read.
    events: HashMap<Vec<u8>, Vec<ContentEvent>>,
}

impl<W: Write> EvalRun<W> {
    /// Hands one request to the pipeline, printing what finished meanwhile.
    fn request(&mut self, name: &str, mut request: ExportTraceServiceRequest) -> io::Result<()> {
        if !self.events.is_empty() {
            logs::attach(&mut request, |span_id| self.events.remove(span_id));
        }
        self.summary.requests += 1;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.ledger
            .register(seq, name.to_owned(), ledger::span_ids(&request));
        if let Some(sampling) = &mut self.sampling {
            sampling.spans(&request);
        }
        let input = Input {
            body: Body::Decoded(request),
            token: Token::new(EvalInput::new(seq, self.ledger.clone())),
        };
        // Blocks while the workers are busy: the queue is bounded.
        let sent = self.work.as_ref().map(|w| w.send(vec![input]));
        if !matches!(sent, Some(Ok(()))) {
            return Err(io::Error::other("the evaluation workers stopped"));
        }
        self.print_ready()
    }

    /// Prints the inputs released so far.
    fn print_ready(&mut self) -> io::Result<()> {
        for finished in self.ledger.take_ready() {
            self.summary.spans += finished.spans;
            for line in &finished.lines {
                self.out.write_all(line.text.as_bytes())?;
                self.out.write_all(b"\n")?;
                self.summary.record_outcome(&line.evaluator, line.outcome);
                if let Some(sampling) = &mut self.sampling {
                    sampling.line(&line.text);
                }
            }
            for rejection in &finished.rejections {
                eprintln!("error: {}: {rejection}", finished.name);
            }
            if !finished.rejections.is_empty() {
                self.summary.bad_inputs += 1;
            }
        }
        Ok(())
    }

    /// Decodes and hands on one input. Decoding errors are returned; output errors too.
    fn input(
        &mut self,
        name: &str,
        bytes: &[u8],
        encoding: Encoding,
        progress: &ProgressBar,
    ) -> Result<(), InputError> {
        match encoding {
            Encoding::OtlpProto => {
                let request = otlp::decode(bytes, encoding).map_err(InputError::Decode)?;
                self.request(name, request).map_err(InputError::Output)?;
                progress.inc(bytes.len() as u64);
            }
            Encoding::OtlpJson => {
                let mut requests = otlp::json_requests(bytes);
                let mut last = 0;
                let mut any = false;
                let mut line = 0;
                while let Some(request) = requests.next() {
                    let request = request.map_err(InputError::Decode)?;
                    line += 1;
                    self.request(&format!("{name} (request {line})"), request)
                        .map_err(InputError::Output)?;
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
    let set = Arc::new(spec::build_set(&config.evaluators)?);
    let names: Vec<&str> = set.evaluators().iter().map(|e| e.name.as_str()).collect();
    let mut summary = Summary::new(names.iter().copied());
    for gate in &options.fail_on {
        gate.check_names(summary.names())
            .map_err(anyhow::Error::msg)?;
    }
    summary.inputs = options.inputs.len() as u64;

    let ledger = Arc::new(Ledger::new(names.iter().copied()));
    let collector = Arc::new(Collector::new(ledger.clone(), options.output.is_some()));
    let exporters = Arc::new(Exporters::new(vec![Box::new(collector.clone())]));
    let metrics = Metrics::new(set.evaluators(), &[], 0).context("cannot register metrics")?;
    let traces = AssemblyConfig {
        quiet_seconds: NEVER_SECONDS,
        max_wait_seconds: NEVER_SECONDS,
        ..config.traces.clone()
    };
    let prices = config.prices().map_err(anyhow::Error::msg)?;
    let sampling = (options.sampling || options.sampling_output.is_some()).then(|| {
        let policy = Policy::new(&config.sampling.clone().unwrap_or_default());
        SamplingReport::new(policy, prices.clone(), config.sampling.is_some())
    });
    let settings = Settings {
        traces: &traces,
        prices,
        judges: (!options.skip_judges).then_some(WhenFull::Wait),
        reload: false,
        redactor: None,
        logs: None,
        sampling: None,
        budgets: None,
    };
    let pipeline = Pipeline::start(settings, set.clone(), exporters, metrics)?;

    let total: u64 = options
        .inputs
        .iter()
        .filter(|n| *n != "-")
        .filter_map(|n| fs::metadata(n).ok())
        .map(|m| m.len())
        .sum();
    let progress = progress_bar(total);
    let mut run = EvalRun {
        work: Some(pipeline.work()),
        ledger: ledger.clone(),
        next_seq: 0,
        out: io::BufWriter::new(out),
        summary,
        events: HashMap::new(),
        sampling,
    };
    // First the logs: their events must be at hand when their spans are read, whatever the
    // order of the inputs. Trace inputs are read again after (standard input is kept).
    let mut trace_inputs: Vec<(&str, Option<Vec<u8>>)> = Vec::new();
    let mut events = Vec::new();
    let mut without_span = 0;
    for name in &options.inputs {
        let Some(bytes) = read_reported(name, None, &progress, &mut run.summary) else {
            continue;
        };
        let encoding = input_encoding(options, name, &bytes);
        if logs::signal(&bytes, encoding) == Signal::Traces {
            trace_inputs.push((name, (name == "-").then_some(bytes)));
            continue;
        }
        match logs::decode_logs(&bytes, encoding) {
            Ok(requests) => {
                for request in &requests {
                    let extracted = logs::content_events(request);
                    events.extend(extracted.events);
                    without_span += extracted.without_span;
                }
                progress.inc(bytes.len() as u64);
            }
            Err(e) => {
                progress.suspend(|| eprintln!("error: {name}: {e}"));
                run.summary.bad_inputs += 1;
            }
        }
    }
    run.events = logs::by_span(events);
    let trace_names: Vec<&str> = trace_inputs.iter().map(|(name, _)| *name).collect();
    let mut broken_pipe = false;
    // `--sampling-output` reads the trace inputs again once the traces are decided; standard
    // input cannot be, so its bytes are kept.
    let mut stdin_bytes = None;
    for (name, kept) in trace_inputs {
        let Some(bytes) = read_reported(name, kept, &progress, &mut run.summary) else {
            continue;
        };
        if name == "-" && options.sampling_output.is_some() {
            stdin_bytes = Some(bytes.clone());
        }
        let encoding = input_encoding(options, name, &bytes);
        match run.input(name, &bytes, encoding, &progress) {
            Ok(()) => {}
            Err(InputError::Decode(e)) => {
                progress.suspend(|| eprintln!("error: {name}: {e}"));
                run.summary.bad_inputs += 1;
            }
            Err(InputError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
                broken_pipe = true;
                break;
            }
            Err(InputError::Output(e)) => return Err(e).context("cannot write evaluations"),
        }
    }
    // Every input is in: the trace buffer judges what it holds, the judges finish.
    drop(run.work.take());
    pipeline.stop(JUDGE_PATIENCE);
    progress.finish_and_clear();
    if broken_pipe {
        return Ok(RunResult::Ok);
    }
    match run.print_ready().and_then(|()| run.out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(RunResult::Ok),
        other => other.context("cannot write evaluations")?,
    }
    let unmatched: usize = run.events.values().map(Vec::len).sum();
    if unmatched + without_span > 0 {
        eprintln!(
            "note: {} content event(s) in the logs matched no span among the inputs ({without_span} without a span id)",
            unmatched + without_span
        );
    }
    let summary = run.summary;
    let sampling = run.sampling;
    let unreleased = ledger.unreleased();
    if unreleased > 0 {
        anyhow::bail!(
            "{unreleased} input(s) were still being evaluated at the end (a judge call did not finish)"
        );
    }

    if let Some(path) = &options.output {
        // Under the judged spans' resources, as `run` writes them.
        let request = ExportTraceServiceRequest {
            resource_spans: collector.take_spans(),
        };
        write_request(path, &request)?;
        let count = otlp::span_count(&request);
        eprintln!("wrote {count} evaluator span(s) to {}", path.display());
    }
    if !options.no_summary {
        eprintln!("{}", summary.table());
    }
    if let Some(sampling) = sampling {
        let (report, kept) = sampling.finish();
        eprintln!("{report}");
        if let Some(path) = &options.sampling_output {
            let inputs = TraceInputs {
                names: &trace_names,
                stdin: stdin_bytes.as_deref(),
            };
            write_sampled(path, options, &config, &kept, inputs)?;
        }
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

/// The encoding of an input: as `--encoding` says, else as its name implies, else sniffed.
fn input_encoding(options: &EvalOptions, name: &str, bytes: &[u8]) -> Encoding {
    options
        .encoding
        .or_else(|| encoding_by_name(name))
        .unwrap_or_else(|| Encoding::sniff(bytes))
}

/// Writes `request` to `path`: OTLP/JSON when the name ends in `.json`, else protobuf.
fn write_request(path: &Path, request: &ExportTraceServiceRequest) -> anyhow::Result<()> {
    let bytes = if encoding_by_name(&path.to_string_lossy()) == Some(Encoding::OtlpJson) {
        serde_json::to_vec(request)?
    } else {
        request.encode_to_vec()
    };
    fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// The trace inputs (logs inputs told apart already), and standard input's bytes if it was one.
struct TraceInputs<'a> {
    names: &'a [&'a str],
    stdin: Option<&'a [u8]>,
}

/// Writes the spans of the `kept` traces, read again from the trace inputs, to `path` as one
/// `ExportTraceServiceRequest` (`.json`: OTLP/JSON, else protobuf), redacted when the
/// configuration has a `redaction` section. Memory: the kept spans and one input at a time.
fn write_sampled(
    path: &Path,
    options: &EvalOptions,
    config: &Config,
    kept: &std::collections::HashSet<String>,
    inputs: TraceInputs<'_>,
) -> anyhow::Result<()> {
    let redactor = config
        .redaction
        .as_ref()
        .map(Redactor::new)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let mut done = Redactions::default();
    let mut out = ExportTraceServiceRequest::default();
    for &name in inputs.names {
        let bytes = match (name, inputs.stdin) {
            ("-", Some(bytes)) => std::borrow::Cow::Borrowed(bytes),
            // Unreadable inputs were reported already; what they held was not decided on.
            _ => match fs::read(name) {
                Ok(bytes) => std::borrow::Cow::Owned(bytes),
                Err(_) => continue,
            },
        };
        let encoding = input_encoding(options, name, &bytes);
        let requests: Vec<ExportTraceServiceRequest> = match encoding {
            Encoding::OtlpProto => otlp::decode(&bytes, encoding).into_iter().collect(),
            Encoding::OtlpJson => otlp::json_requests(&bytes).map_while(Result::ok).collect(),
        };
        for request in requests {
            out.resource_spans.extend(sampling::kept_spans(
                request,
                kept,
                redactor.as_ref(),
                &mut done,
            ));
        }
    }
    write_request(path, &out)?;
    let spans = otlp::span_count(&out);
    let redacted = match (&redactor, done.is_empty()) {
        (None, _) => "not redacted (no `redaction` section)".to_owned(),
        (Some(_), true) => "nothing to redact".to_owned(),
        (Some(_), false) => {
            let masked: Vec<String> = done
                .masked
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect();
            format!(
                "redacted: masked {}; {} attribute(s) dropped, {} hashed",
                if masked.is_empty() {
                    "nothing".to_owned()
                } else {
                    masked.join(", ")
                },
                done.dropped,
                done.hashed
            )
        }
    };
    eprintln!(
        "wrote {spans} span(s) of {} kept trace(s) to {}, {redacted}",
        kept.len(),
        path.display()
    );
    Ok(())
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
