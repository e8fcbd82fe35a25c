//! The `evalstream` subcommands: [`run`] (the streaming worker), [`eval`] of trace files with
//! [`summary`] tables and CI [`gate`]s, [`script_test`], and the hidden benchmark tools: the load
//! generator ([`loadgen`], to Kafka or an OTLP receiver), the OTLP/HTTP backend it is measured
//! against ([`otlp_sink`]) and the judge stand-in ([`crate::pipeline::judge::stand_in`]).

pub mod eval;
pub mod gate;
pub mod loadgen;
pub mod otlp_sink;
pub mod run;
pub mod script_test;
pub mod summary;
