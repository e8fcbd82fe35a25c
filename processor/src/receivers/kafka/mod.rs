//! The Kafka receiver: the consumer-group input ([`source`]) and whether it makes progress
//! ([`health`]); each message's token origin ([`input`]), which acknowledges it to the consumer
//! once its outputs are delivered, so the offsets that may then be committed ([`offsets`])
//! advance, and writes the rejected ones to the dead-letter topic ([`dead_letter`]).

pub mod dead_letter;
pub mod health;
pub mod input;
pub mod offsets;
pub mod source;

/// Exactly once: where the receiver commits its consumed offsets when they must be committed in
/// one Kafka transaction with the outputs made from them (the output producer's), instead of to
/// the consumer group directly. The receiver calls it only when no input is in flight, so the
/// transaction holds exactly the outputs of the offsets it commits.
pub trait Transaction: Send + Sync {
    /// Commits the open transaction with `offsets` (next offsets to read) for the consumer
    /// `group`, and begins the next one. An error means the transaction did not commit: the
    /// worker must stop, and its restart resumes from the last committed transaction.
    fn commit(
        &self,
        offsets: &rdkafka::TopicPartitionList,
        group: &rdkafka::consumer::ConsumerGroupMetadata,
    ) -> Result<(), rdkafka::error::KafkaError>;
}

/// The librdkafka properties of a receiver's `client` that say how to reach and authenticate to
/// the cluster, for the receiver's other clients (the dead-letter producer, the drift state
/// topic): the consumer's own settings would only make them warn.
pub fn connection_properties(
    client: &std::collections::BTreeMap<String, String>,
) -> impl Iterator<Item = (&String, &String)> {
    const CONNECTION: [&str; 9] = [
        "security.",
        "sasl.",
        "ssl.",
        "socket.",
        "broker.",
        "client.",
        "metadata.",
        "api.version",
        "message.max.bytes",
    ];
    client
        .iter()
        .filter(|(k, _)| CONNECTION.iter().any(|prefix| k.starts_with(prefix)))
}
