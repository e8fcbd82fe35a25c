//! # evalstream
//!
//! The `evalstream` command: configuration ([`config`]), the streaming worker ([`run`]: Kafka in
//! and out in [`kafka`], evaluation in [`worker`], whole traces in [`traces`], LLM judges in
//! [`judge`], [`metrics`] with [`labels`] and [`drift`], served by [`http`]) and the offline
//! evaluation of trace files ([`eval`], with [`summary`] tables and [`gate`]s for CI). The scorers themselves live in the
//! `evalstream-evaluators` crate, which has no I/O.

#![deny(missing_docs)]

pub mod assembly;
pub mod config;
pub mod drift;
pub mod eval;
pub mod gate;
pub mod http;
pub mod judge;
pub mod kafka;
pub mod labels;
pub mod loadgen;
pub mod metrics;
pub mod reload;
pub mod run;
pub mod script_test;
pub mod summary;
pub mod traces;
pub mod worker;

/// A thread that runs evaluators (and so Rhai scripts), with a stack that the deepest recursion
/// the script limits allow fits in: running out of stack aborts the whole process, and Rhai at
/// 64 call levels needs about 17 MiB in a release build, far past the default 2 MiB. Only what a
/// thread touches is resident; the rest is address space.
pub fn evaluation_thread(name: String) -> std::thread::Builder {
    const OWN_NEEDS: usize = 2 << 20;
    std::thread::Builder::new().name(name).stack_size(
        evalstream_evaluators::scorers::script::sandbox::STACK_BYTES_FOR_MAX_CALL_LEVELS
            + OWN_NEEDS,
    )
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
        .map_err(|panic| std::io::Error::other(crate::worker::panic_message(panic.as_ref())))
}

/// Now, in nanoseconds since the Unix epoch (OTLP's timestamps).
pub fn now_unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
