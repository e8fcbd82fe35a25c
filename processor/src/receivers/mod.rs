//! Where spans come in: a Kafka consumer group ([`kafka`]).

pub mod kafka;
