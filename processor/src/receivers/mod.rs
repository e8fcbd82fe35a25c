//! Where spans come in: a Kafka consumer group ([`kafka`]), or OTLP/gRPC and OTLP/HTTP
//! listeners ([`otlp`]).

pub mod kafka;
pub mod otlp;
