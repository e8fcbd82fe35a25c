//! Where evaluations go: a Kafka topic ([`kafka`]).

pub mod kafka;
