//! # evalstream
//!
//! The `evalstream` command: configuration ([`config`]) and the offline evaluation of trace files
//! ([`eval`], with [`summary`] tables and [`gate`]s for CI). The scorers themselves live in the
//! `evalstream-evaluators` crate, which has no I/O.

#![deny(missing_docs)]

pub mod config;
pub mod eval;
pub mod gate;
pub mod summary;
