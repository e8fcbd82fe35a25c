//! The Kafka exporter: the producer of evaluator spans ([`sink`]) and of dead letters
//! ([`dead_letter`]).

pub mod dead_letter;
pub mod sink;
