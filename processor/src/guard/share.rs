//! Budgets shared by the workers of a consumer group, through a compacted topic.
//!
//! Spans reach the workers of a group by trace id, so each counts about `1/N` of a key's spend.
//! Every `share_interval_seconds` each worker writes its own spend of every key whose spend
//! changed, one record per (group, budget, key, worker) — keyed so compaction keeps the latest —
//! and reads everyone else's, adding the sum of the other workers' latest spend for the key's
//! current window to its own ([`Budgets::merge`]).
//!
//! **Error bound.** What a worker does not see of the others' spend is what they counted since
//! their last write, plus the topic's delivery time: at most `share_interval_seconds` (default
//! 1 s) of the group's spend rate on that key, plus the span stream's own lag. A budget can so be
//! overspent by that much before `Budget` says `block`.
//!
//! **Restarts.** A worker's id is new at every start (host, process id, start time): what the
//! previous run published stays counted (those spans were committed), and spans it counted but
//! had not committed are counted again by whoever replays them, an overcount that blocks early,
//! never late.

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
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::pipeline::budgets::Budgets;

/// Where the spend is shared, and as whom.
#[derive(Debug, Clone)]
pub struct Share {
    /// Client settings (brokers, the receiver's connection properties).
    pub client: ClientConfig,
    /// The compacted topic.
    pub topic: String,
    /// The consumer group the spend is shared within.
    pub group: String,
    /// This worker's id, new at every start.
    pub worker: String,
    /// How often own spend is written.
    pub interval: Duration,
}

/// One record's value.
#[derive(Debug, Serialize, Deserialize)]
struct Spent {
    window: u64,
    amount: f64,
}

/// The key of a record: group, budget, key, worker (JSON, as the drift state's).
fn record_key(group: &str, budget: &str, key: &str, worker: &str) -> String {
    serde_json::to_string(&[group, budget, key, worker]).unwrap_or_default()
}

/// Starts the thread that writes this worker's spend and reads the others'; it writes once more
/// and returns when `stop` is set.
pub fn start(
    share: Share,
    budgets: Arc<Budgets>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<JoinHandle<()>> {
    if let Err(e) = crate::telemetry::state_topic::ensure_compacted(&share.client, &share.topic) {
        warn!(topic = %share.topic, error = %e,
            "cannot create the budget state topic; create it with cleanup.policy=compact");
    }
    let producer: BaseProducer = share.client.clone().set("linger.ms", "5").create()?;
    let consumer: BaseConsumer = share
        .client
        .clone()
        .set(
            "group.id",
            format!("{}-budget-share-{}", share.group, share.worker),
        )
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(&share.topic), Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            assignment.add_partition_offset(&share.topic, p.id(), Offset::Beginning)?;
        }
    }
    consumer.assign(&assignment)?;
    Ok(std::thread::Builder::new()
        .name("evalstream-budget-share".into())
        .spawn(move || run(&share, &budgets, &producer, &consumer, &stop))?)
}

fn run(
    share: &Share,
    budgets: &Budgets,
    producer: &BaseProducer,
    consumer: &BaseConsumer,
    stop: &AtomicBool,
) {
    // (budget, key) → worker → its latest (window, amount).
    let mut others: HashMap<(String, String), HashMap<String, (u64, f64)>> = HashMap::new();
    let mut written: HashMap<(String, String), (u64, f64)> = HashMap::new();
    let mut last = Instant::now();
    let prefix = format!(
        "[{}",
        serde_json::to_string(&share.group).unwrap_or_default()
    );
    loop {
        let stopping = stop.load(Ordering::Acquire);
        if stopping || last.elapsed() >= share.interval {
            write_own(share, budgets, producer, &mut written);
            last = Instant::now();
        }
        if stopping {
            if producer.flush(Duration::from_secs(10)).is_err() {
                warn!("the last budget spend was not all delivered");
            }
            return;
        }
        producer.poll(Duration::ZERO);
        // Read what arrived, for up to 100 ms.
        let until = Instant::now() + Duration::from_millis(100);
        let mut changed = Vec::new();
        while let Some(polled) = consumer.poll(until.saturating_duration_since(Instant::now())) {
            let Ok(message) = polled else { continue };
            let (Some(key), Some(value)) = (message.key(), message.payload()) else {
                continue;
            };
            if !key.starts_with(prefix.as_bytes()) {
                continue;
            }
            let Ok([_, budget, key, worker]) = serde_json::from_slice::<[String; 4]>(key) else {
                continue;
            };
            if worker == share.worker {
                continue;
            }
            let Ok(spent) = serde_json::from_slice::<Spent>(value) else {
                debug!("skipping an unreadable budget spend record");
                continue;
            };
            let entry = (budget, key);
            others
                .entry(entry.clone())
                .or_default()
                .insert(worker, (spent.window, spent.amount));
            changed.push(entry);
            if Instant::now() >= until {
                break;
            }
        }
        changed.sort_unstable();
        changed.dedup();
        for (budget, key) in changed {
            let Some(workers) = others.get_mut(&(budget.clone(), key.clone())) else {
                continue;
            };
            // Only the latest window counts; older entries are let go.
            let window = workers.values().map(|(w, _)| *w).max().unwrap_or(0);
            workers.retain(|_, (w, _)| *w == window);
            let sum = workers.values().map(|(_, a)| a).sum();
            budgets.merge(&budget, &key, window, sum);
        }
    }
}

/// Writes this worker's spend of each key whose spend changed since it was last written.
fn write_own(
    share: &Share,
    budgets: &Budgets,
    producer: &BaseProducer,
    written: &mut HashMap<(String, String), (u64, f64)>,
) {
    let own = budgets.own();
    // Keys gone from the budgets (past windows forgotten) need not be remembered either.
    if written.len() > own.len() * 2 + 1024 {
        let current: std::collections::HashSet<(String, String)> = own
            .iter()
            .map(|(b, k, _, _)| (b.clone(), k.clone()))
            .collect();
        written.retain(|k, _| current.contains(k));
    }
    for (budget, key, window, amount) in own {
        let entry = (budget, key);
        if written.get(&entry) == Some(&(window, amount)) {
            continue;
        }
        let record = record_key(&share.group, &entry.0, &entry.1, &share.worker);
        let Ok(value) = serde_json::to_vec(&Spent { window, amount }) else {
            continue;
        };
        match producer.send(BaseRecord::to(&share.topic).key(&record).payload(&value)) {
            Ok(()) => {
                written.insert(entry, (window, amount));
            }
            Err((e, _)) => {
                debug!(error = %e, "cannot queue a budget spend record; it is written next time");
                break;
            }
        }
    }
}
