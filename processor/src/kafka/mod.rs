//! Kafka in and out: the consumer-group input ([`source`]), the producer of evaluator spans and
//! dead letters ([`sink`]), and the offset bookkeeping that makes the pair at-least-once
//! ([`offsets`]).

pub mod health;
pub mod offsets;
pub mod sink;
pub mod source;
