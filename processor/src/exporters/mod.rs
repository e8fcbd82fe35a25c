//! Where evaluations go: each exporter implements the pipeline's
//! [`Exporter`](crate::pipeline::export::Exporter) seam — a Kafka topic ([`kafka`]), the
//! process's standard output ([`stdout`]).

pub mod kafka;
pub mod stdout;
