//! The `evalstream` subcommands: [`run`] (the streaming worker), [`eval`] of trace files with
//! [`summary`] tables and CI [`gate`]s, [`script_test`], and the hidden benchmark tools: the load
//! generator ([`loadgen`], to Kafka or an OTLP receiver), the OTLP/HTTP backend it is measured
//! against ([`otlp_sink`]), the guard API's bench client ([`guard_bench`]) and the judge stand-in
//! ([`crate::pipeline::judge::stand_in`]).

pub mod eval;
pub mod gate;
pub mod guard_bench;
pub mod loadgen;
pub mod otlp_sink;
pub mod run;
pub mod script_test;
pub mod summary;
