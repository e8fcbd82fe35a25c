//! The Kafka receiver: the consumer-group input ([`source`]) and whether it makes progress
//! ([`health`]); each message's token origin ([`input`]), which acknowledges it to the consumer
//! once its outputs are delivered, so the offsets that may then be committed ([`offsets`])
//! advance, and writes the rejected ones to the dead-letter topic ([`dead_letter`]).

pub mod dead_letter;
pub mod health;
pub mod input;
pub mod offsets;
pub mod source;
