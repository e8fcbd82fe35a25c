//! The `evalstream` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use evalstream::commands::eval::{self, EvalOptions};
use evalstream::commands::gate::Gate;
use evalstream::config::Config;
use evalstream_evaluators::otlp::Encoding;

/// Decoding OTLP and building evaluator spans allocate many small, short-lived objects; mimalloc
/// serves them faster than glibc's allocator and holds less memory across worker threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Online evaluation of LLM traces: scores GenAI spans and reports the scores as OpenTelemetry.
#[derive(Parser)]
#[command(name = "evalstream", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Evaluate OTLP trace files offline and print one JSON object per evaluation.
    ///
    /// Inputs are `.pb` (otlp_proto), `.json`/`.jsonl` (OTLP/JSON, one request per line allowed)
    /// or `-` for standard input. Exit codes: 0 ok, 1 a --fail-on gate failed, 2 bad input or
    /// configuration.
    Eval {
        /// Configuration file (default: the built-in evaluators refusal, pii, json_valid,
        /// finish_reason, empty_output and cost).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Fail the run when a condition holds: EVALUATOR.METRIC<OP>NUMBER with METRIC one of
        /// pass_rate, mean_score, scored, passed, failed, skipped, errors (`*` for any evaluator),
        /// e.g. `refusal.pass_rate<0.95`. Repeatable.
        #[arg(long = "fail-on", value_name = "GATE", value_parser = parse_gate)]
        fail_on: Vec<Gate>,
        /// Write the evaluator spans to this file as an ExportTraceServiceRequest (`.json`:
        /// OTLP/JSON, otherwise protobuf).
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Encoding of inputs whose name does not tell (default: sniffed).
        #[arg(long)]
        encoding: Option<Encoding>,
        /// Do not print the summary table.
        #[arg(long)]
        no_summary: bool,
        /// Do not call `llm_judge` evaluators: their spans are skipped `not_applicable` (by
        /// default they are judged, as `run` judges them).
        #[arg(long)]
        skip_judges: bool,
        /// Report what the tail-sampling policy (the configuration's `sampling`, else the
        /// default: errors, failed evaluations, the top 1% by cost, tokens and latency,
        /// experiment ids, a uniform 5%) keeps, rule by rule, and which failing traces a uniform
        /// 1% head sample would lose.
        #[arg(long)]
        sampling: bool,
        /// With the sampling report: write the kept traces, whole, to this file as one
        /// ExportTraceServiceRequest (`.json`: OTLP/JSON, otherwise protobuf), redacted by the
        /// configuration's `redaction` section when it has one.
        #[arg(long, value_name = "FILE")]
        sampling_output: Option<PathBuf>,
        /// Input files, or `-` for standard input.
        #[arg(required = true, value_name = "FILE")]
        inputs: Vec<String>,
    },
    /// Run the streaming worker: consume OTLP spans from Kafka, evaluate them, produce evaluator
    /// spans. Stops cleanly on SIGTERM or SIGINT (drains in-flight work and commits).
    Run {
        /// The configuration file. Without one: OTLP in on 127.0.0.1:4317 (gRPC) and :4318
        /// (HTTP), the default evaluators, scores as JSON lines on stdout, metrics on :9464.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Produce corpus-shaped traces (fresh ids, one trace per message, keyed by hex trace id) to
    /// a topic, or with `--otlp` send them to an OTLP gRPC receiver in batched requests: test
    /// traffic and the input of benchmarks.
    Loadgen(evalstream::commands::loadgen::LoadgenOptions),
    /// Check a configuration file and print what it configures.
    Validate {
        /// The configuration file.
        file: PathBuf,
    },
    /// Work on Rhai scorers.
    #[command(subcommand)]
    Script(ScriptCommand),
    /// Run the drift detectors over score streams (one per line) and print their alarms: the
    /// detection-quality benchmark's driver.
    #[command(hide = true)]
    DriftReplay {
        /// Expected stable samples between false alarms.
        #[arg(long, default_value_t = 100_000.0)]
        false_alarm_budget: f64,
        /// Scores that make a baseline.
        #[arg(long, default_value_t = 500)]
        warmup: u64,
        /// Floor on the baseline standard deviation.
        #[arg(long, default_value_t = 0.05)]
        min_std: f64,
        /// A score passes at this value or above.
        #[arg(long, default_value_t = 1.0)]
        pass_at: f64,
    },
    /// Serve the local OpenAI-compatible judge stand-in (the tests' server) for benchmarks and
    /// the demo.
    #[command(hide = true)]
    JudgeServer {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: std::net::SocketAddr,
        /// How long each answer takes, in milliseconds.
        #[arg(long, default_value_t = 200)]
        latency_ms: u64,
        /// Answer the first requests with these texts, one each, in order, as the model the
        /// request names; then judge as usual. Repeatable.
        #[arg(long = "reply", value_name = "TEXT")]
        replies: Vec<String>,
    },
    /// Drive the guard API's `Check` at a fixed rate and at most throughput, and print the
    /// latency percentiles: the guard benchmark's client.
    #[command(hide = true)]
    GuardBench(evalstream::commands::guard_bench::GuardBenchOptions),
    /// Serve a counting OTLP/HTTP backend (`/v1/logs`, `/v1/traces`, counts at `/stats`) for
    /// benchmarks.
    #[command(hide = true)]
    OtlpSink {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:4319")]
        listen: std::net::SocketAddr,
    },
}

#[derive(Subcommand)]
enum ScriptCommand {
    /// Run each script's cases (`NAME.rhai` → `NAME.test.yaml`) and show what differs. Exit
    /// codes: 0 all passed, 1 a case failed, 2 a script or test file is invalid.
    Test {
        /// The scripts.
        #[arg(required = true)]
        scripts: Vec<PathBuf>,
    },
}

fn parse_gate(s: &str) -> Result<Gate, String> {
    s.parse()
}

/// Loads the configuration and runs the worker until a signal stops it.
fn run_worker(config: Option<&std::path::Path>) -> anyhow::Result<()> {
    let config = match config {
        Some(path) => Config::load(path)?,
        None => {
            eprintln!(
                "evalstream: no --config, running the built-in one: OTLP in on 127.0.0.1:4317 (gRPC) and 127.0.0.1:4318 (HTTP), the default evaluators ({}), one JSON line per evaluation on stdout, metrics on http://127.0.0.1:9464/metrics",
                evalstream_evaluators::spec::default_specs()
                    .iter()
                    .map(|s| s.effective_name())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Config::builtin()
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the runtime: {e}"))?;
    runtime.block_on(evalstream::commands::run::run(config, shutdown_signal()))
}

/// Serves the judge stand-in until a signal stops it, then prints how many requests it served.
fn judge_server(
    listen: std::net::SocketAddr,
    latency_ms: u64,
    replies: Vec<String>,
) -> anyhow::Result<()> {
    use evalstream::pipeline::judge::stand_in::{self as server, Behaviour, Fault};
    let behaviour = std::sync::Arc::new(Behaviour::new());
    behaviour.forget_requests();
    behaviour.push_faults(replies.into_iter().map(Fault::Reply));
    behaviour.set_latency(std::time::Duration::from_millis(latency_ms));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        eprintln!("judge server on http://{listen}/v1, {latency_ms} ms per answer");
        tokio::select! {
            served = server::serve(listener, behaviour.clone()) => served?,
            () = shutdown_signal() => {}
        }
        println!("answered {}", behaviour.answered());
        anyhow::Ok(())
    })
}

fn guard_bench(
    options: &evalstream::commands::guard_bench::GuardBenchOptions,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(evalstream::commands::guard_bench::run(options))
}

fn otlp_sink(listen: std::net::SocketAddr) -> anyhow::Result<()> {
    use evalstream::commands::otlp_sink::{Counts, serve};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        eprintln!("OTLP/HTTP sink on http://{listen} (counts at /stats)");
        tokio::select! {
            served = serve(listener, std::sync::Arc::new(Counts::default())) => served?,
            () = shutdown_signal() => {}
        }
        anyhow::Ok(())
    })
}

/// The exit code of a command: 0, or 1 after printing the error.
fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EVALSTREAM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Eval {
            config,
            fail_on,
            output,
            encoding,
            no_summary,
            skip_judges,
            sampling,
            sampling_output,
            inputs,
        } => {
            let options = EvalOptions {
                config,
                fail_on,
                output,
                encoding,
                inputs,
                no_summary,
                skip_judges,
                sampling,
                sampling_output,
            };
            let evaluated = evalstream::on_evaluation_thread("evalstream-eval", move || {
                eval::run(&options, std::io::stdout().lock())
            });
            match evaluated.map_err(anyhow::Error::from).and_then(|r| r) {
                Ok(result) => ExitCode::from(result as u8),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Run { config } => exit(run_worker(config.as_deref())),
        Command::DriftReplay {
            false_alarm_budget,
            warmup,
            min_std,
            pass_at,
        } => {
            let params = evalstream::telemetry::drift::detect::Params::new(
                false_alarm_budget,
                warmup,
                min_std,
            );
            exit(evalstream::telemetry::drift::replay::run(
                &params,
                pass_at,
                std::io::stdin().lock(),
                std::io::BufWriter::new(std::io::stdout().lock()),
            ))
        }
        Command::JudgeServer {
            listen,
            latency_ms,
            replies,
        } => exit(judge_server(listen, latency_ms, replies)),
        Command::OtlpSink { listen } => exit(otlp_sink(listen)),
        Command::GuardBench(options) => exit(guard_bench(&options)),
        Command::Loadgen(options) => exit(evalstream::commands::loadgen::run(&options).map(drop)),
        Command::Script(ScriptCommand::Test { scripts }) => {
            let tested = evalstream::on_evaluation_thread("evalstream-script-test", move || {
                evalstream::commands::script_test::run(&scripts, &mut std::io::stdout().lock())
            });
            match tested.map_err(anyhow::Error::from).and_then(|r| r) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Validate { file } => match Config::load(&file) {
            Ok(config) => {
                println!("{}: ok: {config}", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
    }
}
