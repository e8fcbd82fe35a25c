//! # evalstream
//!
//! The `evalstream` command: configuration ([`config`]), the streaming worker ([`run`]: Kafka in
//! and out in [`kafka`], evaluation in [`worker`], [`metrics`]) and the offline evaluation of
//! trace files ([`eval`], with [`summary`] tables and [`gate`]s for CI). The scorers themselves live in the
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
pub mod loadgen;
pub mod metrics;
pub mod reload;
pub mod run;
pub mod script_test;
pub mod summary;
pub mod traces;
pub mod worker;

/// Now, in nanoseconds since the Unix epoch (OTLP's timestamps).
pub fn now_unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
