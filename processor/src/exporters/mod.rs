//! Where evaluations go: a Kafka topic ([`kafka`]), or an OTLP backend over gRPC or HTTP
//! ([`otlp`], its transport: queue, retries, acknowledgements).

pub mod kafka;
pub mod otlp;
