//! The small compacted topics evalstream keeps beside a consumer group: the drift baselines
//! ([`super::drift::state`]) and the guard API's shared budget spend.

/// Creates `topic`, compacted, with one partition, when it does not exist: the small state
/// topics beside the group (drift baselines, budget spend). The broker may forbid it; the caller
/// logs the error and the state then lives as long as the topic's retention.
pub fn ensure_compacted(client: &rdkafka::ClientConfig, topic: &str) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use std::time::Duration;
    let admin: AdminClient<_> = client.create()?;
    let metadata = admin
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(10))?;
    if metadata
        .topics()
        .iter()
        .any(|t| t.error().is_none() && !t.partitions().is_empty())
    {
        return Ok(());
    }
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(15)));
    for r in runtime.block_on(admin.create_topics([&new], &options))? {
        match r {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => anyhow::bail!("{code}"),
        }
    }
    Ok(())
}
