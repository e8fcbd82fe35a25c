//! The stack each worst-case Rhai script takes ([`sandbox::worst_case_scripts`]: deep recursion,
//! nested expressions, nested arrays and maps, deep JSON), at a few limits, against what
//! [`sandbox::required_stack`] states for those limits. A stack overflow cannot be caught (it
//! aborts the process), so the benchmark runs each probe in a child process (itself, with
//! `EVALSTREAM_STACK_PROBE` set) and bisects the smallest thread stack the script survives on.
//! Prints a table and fails if `required_stack` does not cover a measured figure. Run with
//! `cargo bench -p evalstream-evaluators --bench script_stack` (a few minutes; `QUICK=1` measures
//! two cases only; `--profile dev` measures a debug build, whose figures are five to seven times
//! larger). Run it when Rhai or the limits change.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use evalstream_evaluators::evaluator::Outcome;
use evalstream_evaluators::scorers::script::sandbox::{self, ScriptLimits};

/// `scenario,call_levels,expr_depth,collection_size,stack_bytes`: run one probe and exit.
const PROBE: &str = "EVALSTREAM_STACK_PROBE";

fn limits(call_levels: usize, expr_depth: usize, collections: usize) -> ScriptLimits {
    ScriptLimits {
        max_call_levels: call_levels,
        max_expr_depth: expr_depth,
        max_array_size: collections,
        max_map_size: collections,
        ..ScriptLimits::default()
    }
}

/// In the child: runs one script on a thread of the given stack. Exits 0 when it stops at a limit
/// or scores, 2 on anything else; too small a stack kills it with a signal.
fn probe(spec: &str) -> ExitCode {
    let fields: Vec<&str> = spec.split(',').collect();
    let [scenario, levels, depth, collections, stack] = fields[..] else {
        eprintln!("{PROBE}: expected 5 comma-separated fields, got {spec:?}");
        return ExitCode::from(2);
    };
    let limits = limits(
        levels.parse().unwrap(),
        depth.parse().unwrap(),
        collections.parse().unwrap(),
    );
    let Some((_, source, params)) = sandbox::worst_case_scripts(&limits)
        .into_iter()
        .find(|(name, ..)| *name == scenario)
    else {
        eprintln!("{PROBE}: no scenario {scenario:?}");
        return ExitCode::from(2);
    };
    match sandbox::run_worst_case(&source, &params, &limits, stack.parse().unwrap()) {
        Ok(Outcome::Error { .. } | Outcome::Scored(_)) => ExitCode::SUCCESS,
        other => {
            eprintln!("{scenario}: {other:?}");
            ExitCode::from(2)
        }
    }
}

/// Whether `scenario` survives on `stack` bytes: a child that exits 0 did, one killed by a
/// signal (the overflow) did not; any other exit is an error.
fn survives(scenario: &str, limits: &ScriptLimits, stack: usize) -> Result<bool, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let output = Command::new(exe)
        .env(
            PROBE,
            format!(
                "{scenario},{},{},{},{stack}",
                limits.max_call_levels, limits.max_expr_depth, limits.max_array_size
            ),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| e.to_string())?;
    match output.status.code() {
        Some(0) => Ok(true),
        None => Ok(false),
        Some(_) => Err(format!(
            "{scenario} on {stack} bytes: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    }
}

/// The smallest stack, to 4 KiB, on which `scenario` survives.
fn smallest_stack(scenario: &str, limits: &ScriptLimits) -> Result<usize, String> {
    let (mut low, mut high) = (16 * 1024, 512 * 1024 * 1024);
    if !survives(scenario, limits, high)? {
        return Err(format!("{scenario} overflows even {high} bytes"));
    }
    while high - low > 4096 {
        let middle = (low + high) / 2;
        if survives(scenario, limits, middle)? {
            high = middle;
        } else {
            low = middle;
        }
    }
    Ok(high)
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench` (and any filter): arguments are ignored.
    if let Ok(spec) = std::env::var(PROBE) {
        return probe(&spec);
    }
    let quick = std::env::var("QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let mut cases = Vec::new();
    if quick {
        cases.push(("plain", 16, 64, 10_000));
        cases.push(("maps", 64, 64, 1000));
    } else {
        for (levels, depth) in [(16, 64), (64, 64), (64, 32)] {
            for name in [
                "plain",
                "closure",
                "operators",
                "blocks",
                "arguments",
                "json",
            ] {
                cases.push((name, levels, depth, 10_000));
            }
        }
        for collections in [1000, 4000] {
            cases.push(("arrays", 64, 64, collections));
            cases.push(("maps", 64, 64, collections));
        }
    }
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!(
        "Smallest thread stack each worst-case script survives on ({build} build, bisected to \
         4 KiB), against sandbox::required_stack"
    );
    println!(
        "{:<10} {:>11} {:>10} {:>10} {:>14} {:>14}  verdict",
        "scenario", "call levels", "expr depth", "collection", "smallest KiB", "required KiB"
    );
    let started = Instant::now();
    let mut uncovered = 0;
    for (name, levels, depth, collections) in cases {
        let limits = limits(levels, depth, collections);
        let required = sandbox::required_stack(&limits);
        let smallest = match smallest_stack(name, &limits) {
            Ok(smallest) => smallest,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        let verdict = if smallest <= required {
            "ok"
        } else {
            uncovered += 1;
            "NOT COVERED"
        };
        println!(
            "{name:<10} {levels:>11} {depth:>10} {collections:>10} {:>14.1} {:>14.1}  {verdict}",
            smallest as f64 / 1024.0,
            required as f64 / 1024.0,
        );
        let _ = std::io::stdout().flush();
    }
    println!("({:.0} s)", started.elapsed().as_secs_f64());
    if uncovered > 0 {
        eprintln!("{uncovered} measured figures over sandbox::required_stack: raise STACK_COSTS");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
