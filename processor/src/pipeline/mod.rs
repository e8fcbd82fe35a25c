//! Between receivers and exporters: evaluation of spans ([`worker`]), whole traces
//! ([`traces`], [`assembly`]), LLM judges ([`judge`]) and hot reload of scripts ([`reload`]),
//! started and stopped together as one [`stages::Pipeline`] that `run` and `eval` share.

pub mod ack;
pub mod admission;
pub mod assembly;
pub mod budgets;
pub mod evaluate;
pub mod export;
pub mod join;
pub mod joiner;
pub mod judge;
pub mod redaction;
pub mod reload;
pub mod sampler;
pub mod sampling;
pub mod stages;
pub mod traces;
pub mod worker;
