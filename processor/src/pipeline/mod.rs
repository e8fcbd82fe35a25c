//! Between receivers and exporters: evaluation of spans ([`worker`]), whole traces
//! ([`traces`], [`assembly`]), LLM judges ([`judge`]) and hot reload of scripts ([`reload`]).

pub mod ack;
pub mod admission;
pub mod assembly;
pub mod evaluate;
pub mod export;
pub mod judge;
pub mod reload;
pub mod traces;
pub mod worker;
