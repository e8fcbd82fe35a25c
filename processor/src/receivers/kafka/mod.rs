//! The Kafka receiver: the consumer-group input ([`source`]) and whether it makes progress
//! ([`health`]), the acknowledgement of each input once its outputs are delivered ([`pending`])
//! and the offsets that may then be committed ([`offsets`]).

pub mod health;
pub mod offsets;
pub mod pending;
pub mod source;
