//! The `evalstream` subcommands: [`run`] (the streaming worker), [`eval`] of trace files with
//! [`summary`] tables and CI [`gate`]s, [`script_test`], and the hidden load generator
//! ([`loadgen`]; the judge stand-in it is benchmarked with is
//! [`crate::pipeline::judge::stand_in`]).

pub mod eval;
pub mod gate;
pub mod loadgen;
pub mod run;
pub mod script_test;
pub mod summary;
