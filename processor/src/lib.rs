//! # evalstream
//!
//! The `evalstream` command. The folders follow the data: spans come in through [`receivers`],
//! are evaluated in the [`pipeline`] (span by span, whole traces, LLM judges) and leave through
//! [`exporters`]; in-request checks ([`guard`]: the guard API and budgets) answer beside them,
//! with the same evaluators; the worker's own [`telemetry`] (metrics, drift, the HTTP endpoint) and the
//! [`commands`] (`run`, `eval`, `validate`, `script test` and the hidden tools) sit beside, with
//! the [`config`]. The scorers themselves live in the `evalstream-evaluators` crate, which has no
//! I/O.

#![deny(missing_docs)]

pub mod commands;
pub mod config;
pub mod exporters;
pub mod guard;
pub mod pipeline;
pub mod receivers;
pub mod telemetry;

/// The stack of a thread that runs evaluators (and so Rhai scripts): the deepest recursion the
/// script limits allow must fit in it, since running out of stack aborts the whole process, and
/// Rhai at 64 call levels needs about 17 MiB in a release build, far past the default 2 MiB. Only
/// what a thread touches is resident; the rest is address space.
pub const EVALUATION_STACK_BYTES: usize =
    evalstream_evaluators::scorers::script::sandbox::STACK_BYTES_FOR_MAX_CALL_LEVELS + (2 << 20);

/// A thread that runs evaluators, with a stack of [`EVALUATION_STACK_BYTES`].
pub fn evaluation_thread(name: String) -> std::thread::Builder {
    std::thread::Builder::new()
        .name(name)
        .stack_size(EVALUATION_STACK_BYTES)
}

/// Runs `f` on an [`evaluation_thread`] and waits for it: the offline commands evaluate on the
/// main thread's behalf.
pub fn on_evaluation_thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    evaluation_thread(name.to_owned())
        .spawn(f)?
        .join()
        .map_err(|panic| {
            std::io::Error::other(crate::pipeline::evaluate::panic_message(panic.as_ref()))
        })
}

/// Now, in nanoseconds since the Unix epoch (OTLP's timestamps).
pub fn now_unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
