//! The `evalstream` subcommands: [`run`] (the streaming worker), [`eval`] of trace files with
//! [`summary`] tables and CI [`gate`]s, [`script_test`], and the hidden tools ([`loadgen`],
//! [`judge_server`]).

pub mod eval;
pub mod gate;
pub mod judge_server;
pub mod loadgen;
pub mod run;
pub mod script_test;
pub mod summary;
