//! Kafka in and out: the consumer-group input ([`source`]) and whether it makes progress
//! ([`health`]), the producer of evaluator spans ([`sink`]) and of dead letters ([`dead_letter`]),
//! and what makes the pair at-least-once: the acknowledgement of each input once its outputs are
//! delivered ([`pending`]) and the offsets that may then be committed ([`offsets`]).

pub mod dead_letter;
pub mod health;
pub mod offsets;
pub mod pending;
pub mod sink;
pub mod source;
