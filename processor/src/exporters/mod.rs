//! Where evaluations go: each exporter implements the pipeline's
//! [`Exporter`](crate::pipeline::export::Exporter) seam — a Kafka topic ([`kafka`]), an OTLP
//! backend over gRPC or HTTP ([`otlp`]), Arize Phoenix's span annotations ([`phoenix`]), the
//! process's standard output ([`stdout`]).

pub mod kafka;
pub mod otlp;
pub mod phoenix;
pub mod stdout;
