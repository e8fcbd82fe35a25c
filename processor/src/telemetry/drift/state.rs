//! Baselines that survive a restart: the series' detector state in a compacted Kafka topic.
//!
//! Each series is one record, keyed `GROUP/EVALUATOR/SEGMENT…` (JSON), so compaction keeps the
//! latest state per series and a topic can serve several consumer groups. At start the worker
//! reads the topic to its end and restores the series of its group; while it runs, a thread
//! writes the series whose state changed every `state_interval_seconds`, and once more on the
//! way out. Workers of one group write the same keys: the last write wins, and since each
//! watches a random share of the same scores, any of them is a fair baseline for all.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tracing::{info, warn};

use super::series::{Drift, SavedSeries};

/// Where the state lives and whose it is.
#[derive(Debug, Clone)]
pub struct StateTopic {
    /// Client settings (brokers and the receiver's `client` properties).
    pub client: ClientConfig,
    /// The compacted topic.
    pub topic: String,
    /// The consumer group whose series these are.
    pub group: String,
}

impl StateTopic {
    fn key(&self, s: &SavedSeries) -> String {
        let mut parts = vec![self.group.clone(), s.evaluator.clone()];
        parts.extend(s.segments.iter().cloned());
        serde_json::to_string(&parts).unwrap_or_default()
    }

    /// Creates the topic, compacted, when it does not exist (a failure is logged: the broker
    /// may forbid it, and the state then lives as long as the topic's retention).
    pub fn ensure(&self) {
        if let Err(e) = crate::telemetry::state_topic::ensure_compacted(&self.client, &self.topic) {
            warn!(topic = %self.topic, error = %e,
                "cannot create the drift state topic; create it with cleanup.policy=compact");
        }
    }

    /// Reads the topic to its end and restores this group's series; returns how many.
    pub fn load(&self, drift: &Drift, timeout: Duration) -> anyhow::Result<usize> {
        let consumer: BaseConsumer = self
            .client
            .clone()
            .set("group.id", format!("{}-drift-state", self.group))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()?;
        let metadata = consumer.fetch_metadata(Some(&self.topic), Duration::from_secs(10))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut ends = HashMap::new();
        let mut assignment = TopicPartitionList::new();
        for &p in &partitions {
            let (low, high) = consumer.fetch_watermarks(&self.topic, p, Duration::from_secs(10))?;
            if high > low {
                ends.insert(p, high);
                assignment.add_partition_offset(&self.topic, p, Offset::Beginning)?;
            }
        }
        if ends.is_empty() {
            return Ok(0);
        }
        consumer.assign(&assignment)?;
        let prefix = format!("[{}", serde_json::to_string(&self.group)?);
        let mut latest: HashMap<Vec<u8>, Option<SavedSeries>> = HashMap::new();
        let deadline = Instant::now() + timeout;
        while !ends.is_empty() && Instant::now() < deadline {
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message?;
            if ends
                .get(&message.partition())
                .is_some_and(|&end| message.offset() + 1 >= end)
            {
                ends.remove(&message.partition());
            }
            let Some(key) = message.key() else { continue };
            if !key.starts_with(prefix.as_bytes()) {
                continue;
            }
            let value = match message.payload() {
                None => None,
                Some(bytes) => match serde_json::from_slice::<SavedSeries>(bytes) {
                    Ok(saved) => Some(saved),
                    Err(e) => {
                        warn!(error = %e, "skipping an unreadable drift state record");
                        continue;
                    }
                },
            };
            latest.insert(key.to_vec(), value);
        }
        if !ends.is_empty() {
            warn!(topic = %self.topic, "the drift state topic was not read to its end in time");
        }
        Ok(drift.restore(latest.into_values().flatten()))
    }
}

/// Writes changed series every `interval` until `stop`, then once more.
pub fn start_writer(
    state: StateTopic,
    drift: Arc<Drift>,
    interval: Duration,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<JoinHandle<()>> {
    let producer: BaseProducer = state.client.create()?;
    Ok(std::thread::Builder::new()
        .name("evalstream-drift-state".into())
        .spawn(move || {
            let mut written: HashMap<String, u64> = HashMap::new();
            let mut last = Instant::now();
            loop {
                let stopping = stop.load(Ordering::Acquire);
                if stopping || last.elapsed() >= interval {
                    let n = write_changed(&state, &drift, &producer, &mut written);
                    if n > 0 {
                        tracing::debug!(series = n, "drift state written");
                    }
                    last = Instant::now();
                }
                if stopping {
                    if producer.flush(Duration::from_secs(10)).is_err() {
                        warn!("the last drift state was not all delivered");
                    }
                    info!("drift state saved");
                    return;
                }
                producer.poll(Duration::from_millis(100));
            }
        })?)
}

fn write_changed(
    state: &StateTopic,
    drift: &Drift,
    producer: &BaseProducer,
    written: &mut HashMap<String, u64>,
) -> usize {
    let mut n = 0;
    for saved in drift.snapshot() {
        let Ok(value) = serde_json::to_vec(&saved) else {
            continue;
        };
        let key = state.key(&saved);
        let hash = xxhash_rust::xxh3::xxh3_64(&value);
        if written.get(&key) == Some(&hash) {
            continue;
        }
        match producer.send(BaseRecord::to(&state.topic).key(&key).payload(&value)) {
            Ok(()) => {
                written.insert(key, hash);
                n += 1;
            }
            Err((e, _)) => {
                warn!(error = %e, "cannot queue a drift state record; retrying next round");
                break;
            }
        }
    }
    n
}
