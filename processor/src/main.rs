//! The `evalstream` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use evalstream::config::Config;
use evalstream::eval::{self, EvalOptions};
use evalstream::gate::Gate;
use evalstream_evaluators::otlp::Encoding;

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
        #[arg(long, value_parser = parse_encoding)]
        encoding: Option<Encoding>,
        /// Do not print the summary table.
        #[arg(long)]
        no_summary: bool,
        /// Input files, or `-` for standard input.
        #[arg(required = true, value_name = "FILE")]
        inputs: Vec<String>,
    },
    /// Check a configuration file and print what it configures.
    Validate {
        /// The configuration file.
        file: PathBuf,
    },
}

fn parse_gate(s: &str) -> Result<Gate, String> {
    s.parse()
}

fn parse_encoding(s: &str) -> Result<Encoding, String> {
    match s {
        "otlp_proto" => Ok(Encoding::OtlpProto),
        "otlp_json" => Ok(Encoding::OtlpJson),
        _ => Err(format!(
            "unknown encoding `{s}`, expected otlp_proto or otlp_json"
        )),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EVALSTREAM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
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
            inputs,
        } => {
            let options = EvalOptions {
                config,
                fail_on,
                output,
                encoding,
                inputs,
                no_summary,
            };
            match eval::run(&options, std::io::stdout().lock()) {
                Ok(result) => ExitCode::from(result as u8),
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
