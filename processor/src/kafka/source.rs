//! The input side: a consumer in a consumer group, polled on its own thread.
//!
//! librdkafka runs rebalance callbacks and heartbeats inside `poll`, so the poll loop lives on a
//! dedicated thread and never waits on anything else for long. It hands messages to the workers
//! through a bounded queue; when the queue is full or too many messages are in flight it *pauses*
//! the assigned partitions and keeps polling, so the worker is never thrown out of its group for
//! not polling. Acknowledgements come back on a bounded channel; finished offsets advance a
//! contiguous prefix per partition ([`OffsetTracker`]), which is stored for librdkafka's
//! auto-commit (`enable.auto.offset.store=false`). On revoke, the revoked partitions' in-flight
//! work is drained within a deadline and committed synchronously; on shutdown, everything is.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendTimeoutError, Sender};
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use super::offsets::{OffsetTracker, TopicPartition};
use super::sink::{Ack, Pending, Received};
use crate::config::KafkaReceiver;
use crate::metrics::Metrics;

/// One message handed to a worker, with the token that acknowledges it.
pub struct Work {
    /// The message.
    pub message: Arc<Received>,
    /// Its outstanding outputs.
    pub pending: Arc<Pending>,
}

struct State {
    tracker: OffsetTracker,
    acks: Receiver<Ack>,
}

/// Callbacks librdkafka runs inside `poll`.
pub struct SourceContext {
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    drain_timeout: Duration,
    assignment_changed: AtomicBool,
}

impl SourceContext {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: Statistics) {
        let up = statistics
            .brokers
            .values()
            .filter(|b| b.state == "UP" && b.nodeid >= 0)
            .count();
        self.metrics.brokers_up.set(up as i64);
        self.metrics.set_ready(up > 0);
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[topic.as_str(), &partition.to_string()])
                        .set(p.consumer_lag);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let kind = match error.rdkafka_error_code() {
            Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) => {
                self.metrics.set_ready(false);
                "all_brokers_down"
            }
            Some(rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure) => "transport",
            _ => "other",
        };
        self.metrics.kafka_errors.with_label_values(&[kind]).inc();
        warn!(%error, reason, "input consumer error (retrying)");
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let revoked: Vec<TopicPartition> = tpl
            .elements()
            .iter()
            .map(|e| TopicPartition {
                topic: e.topic().into(),
                partition: e.partition(),
            })
            .collect();
        let mut state = self.state();
        let deadline = Instant::now() + self.drain_timeout;
        while state.tracker.in_flight_in(&revoked) > 0 && Instant::now() < deadline {
            if let Ok(ack) = state.acks.recv_timeout(Duration::from_millis(20)) {
                state.tracker.complete(&ack.tp, ack.offset);
            }
        }
        let left = state.tracker.in_flight_in(&revoked);
        let offsets: Vec<(TopicPartition, i64)> = state
            .tracker
            .committable()
            .into_iter()
            .filter(|(tp, _)| revoked.contains(tp))
            .collect();
        commit(consumer, &offsets, CommitMode::Sync);
        for tp in &revoked {
            state.tracker.forget(tp);
        }
        info!(
            partitions = revoked.len(),
            unfinished = left,
            "partitions revoked"
        );
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // Where each partition resumes: the group's committed offsets.
            let resume: Vec<String> = consumer
                .committed_offsets((*tpl).clone(), Duration::from_secs(5))
                .map(|c| {
                    c.elements()
                        .iter()
                        .map(|e| format!("{}[{}]@{:?}", e.topic(), e.partition(), e.offset()))
                        .collect()
                })
                .unwrap_or_default();
            info!(partitions = tpl.count(), resume = ?resume, "partitions assigned");
            self.metrics.set_ready(true);
        }
        self.assignment_changed.store(true, Ordering::Release);
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            self.metrics
                .kafka_errors
                .with_label_values(&["commit"])
                .inc();
            debug!(error = %e, "offset commit failed; it is retried with the next commit");
        }
    }
}

/// Next-offsets as a partition list, offsets as given (the next to read): `commit` and
/// `store_offsets` take them so, unlike `store_offset`, which adds one.
fn next_offsets(offsets: &[(TopicPartition, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (tp, next) in offsets {
        let _ = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*next));
    }
    tpl
}

/// Commits the given next-offsets.
fn commit(
    consumer: &BaseConsumer<SourceContext>,
    offsets: &[(TopicPartition, i64)],
    mode: CommitMode,
) {
    if offsets.is_empty() {
        return;
    }
    if let Err(e) = consumer.commit(&next_offsets(offsets), mode) {
        debug!(error = %e, "commit failed");
    }
}

/// Stores the given next-offsets for librdkafka's auto-commit.
fn store(consumer: &BaseConsumer<SourceContext>, offsets: &[(TopicPartition, i64)]) {
    if offsets.is_empty() {
        return;
    }
    if let Err(e) = consumer.store_offsets(&next_offsets(offsets)) {
        debug!(error = %e, "cannot store offsets (partition no longer assigned?)");
    }
}

/// The consumer and its loop.
pub struct Source {
    consumer: BaseConsumer<SourceContext>,
    work: Sender<Work>,
    acks: Sender<Ack>,
    max_in_flight: usize,
    metrics: Arc<Metrics>,
}

impl Source {
    /// Creates the consumer and subscribes. `work` is the bounded queue to the workers.
    pub fn new(
        config: &KafkaReceiver,
        work: Sender<Work>,
        metrics: Arc<Metrics>,
    ) -> Result<Source, KafkaError> {
        let max_in_flight = config.max_in_flight_messages.max(1);
        // Room for every in-flight message's ack: acknowledging never blocks a producer thread.
        let (ack_tx, ack_rx) = crossbeam_channel::bounded(max_in_flight + 1);
        let context = SourceContext {
            metrics: metrics.clone(),
            state: Mutex::new(State {
                tracker: OffsetTracker::default(),
                acks: ack_rx,
            }),
            drain_timeout: Duration::from_secs_f64(config.drain_timeout_seconds),
            assignment_changed: AtomicBool::new(false),
        };
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", config.brokers.join(","))
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", config.initial_offset.as_str())
            .set("statistics.interval.ms", "5000");
        for (k, v) in &config.client {
            client.set(k, v);
        }
        let consumer: BaseConsumer<SourceContext> = client.create_with_context(context)?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(Source {
            consumer,
            work,
            acks: ack_tx,
            max_in_flight,
            metrics,
        })
    }

    fn set_paused(&self, paused: bool) {
        match self.consumer.assignment() {
            Ok(tpl) if tpl.count() > 0 => {
                let result = if paused {
                    self.consumer.pause(&tpl)
                } else {
                    self.consumer.resume(&tpl)
                };
                if let Err(e) = result {
                    debug!(error = %e, paused, "cannot pause or resume");
                }
            }
            _ => {}
        }
        self.metrics.paused.set(i64::from(paused));
    }

    /// Takes acknowledgements and stores the offsets they free.
    fn settle(&self) -> usize {
        let ctx = self.consumer.context();
        let mut state = ctx.state();
        while let Ok(ack) = state.acks.try_recv() {
            state.tracker.complete(&ack.tp, ack.offset);
        }
        let advances = state.tracker.advances();
        store(&self.consumer, &advances);
        let in_flight = state.tracker.in_flight();
        self.metrics.in_flight.set(in_flight as i64);
        in_flight
    }

    /// Polls until `shutdown` is set, then drains in-flight work within the drain timeout and
    /// commits what finished.
    pub fn run(self, shutdown: &AtomicBool) {
        let mut backlog: VecDeque<Work> = VecDeque::new();
        let mut paused = false;
        let mut last_offsets: std::collections::HashMap<TopicPartition, i64> = Default::default();
        while !shutdown.load(Ordering::Acquire) {
            let in_flight = self.settle();
            // Hand out the backlog. A full queue is first waited on briefly: pausing purges
            // librdkafka's prefetched messages, so it is kept for *sustained* backpressure.
            while let Some(work) = backlog.pop_front() {
                match self.work.send_timeout(work, Duration::from_millis(100)) {
                    Ok(()) => {}
                    Err(SendTimeoutError::Timeout(work)) => {
                        backlog.push_front(work);
                        break;
                    }
                    Err(SendTimeoutError::Disconnected(_)) => return,
                }
            }
            // Pause while work is waiting or too much is in flight; resume with some room to
            // spare, so the input does not flap between the two.
            let want_pause = if paused {
                !backlog.is_empty() || in_flight > self.max_in_flight * 4 / 5
            } else {
                !backlog.is_empty() || in_flight >= self.max_in_flight
            };
            let reassigned = self
                .consumer
                .context()
                .assignment_changed
                .swap(false, Ordering::AcqRel);
            if want_pause != paused || (reassigned && want_pause) {
                self.set_paused(want_pause);
                paused = want_pause;
            }
            match self
                .consumer
                .poll(Duration::from_millis(if paused { 20 } else { 50 }))
            {
                None => {}
                Some(Err(e)) => {
                    self.metrics.kafka_errors.with_label_values(&["poll"]).inc();
                    debug!(error = %e, "poll error");
                }
                Some(Ok(m)) => {
                    let tp = TopicPartition {
                        topic: m.topic().into(),
                        partition: m.partition(),
                    };
                    if let Some(&previous) = last_offsets.get(&tp)
                        && m.offset() > previous + 1
                    {
                        // Normal on compacted or transactional topics; anywhere else, the broker
                        // skipped records.
                        self.metrics.offset_gaps.inc();
                        warn!(topic = %tp.topic, partition = tp.partition, from = previous + 1, to = m.offset(), "input offsets skipped");
                    }
                    last_offsets.insert(tp.clone(), m.offset());
                    tracing::trace!(
                        key = %String::from_utf8_lossy(m.key().unwrap_or_default()),
                        partition = tp.partition,
                        offset = m.offset(),
                        "received"
                    );
                    let message = Arc::new(Received {
                        tp: tp.clone(),
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    });
                    self.consumer
                        .context()
                        .state()
                        .tracker
                        .begin(&tp, m.offset());
                    self.metrics.messages.inc();
                    let pending = Pending::new(message.clone(), self.acks.clone());
                    backlog.push_back(Work { message, pending });
                }
            }
        }
        self.drain(backlog);
    }

    fn drain(self, backlog: VecDeque<Work>) {
        info!("stopping: draining in-flight work");
        self.set_paused(true);
        // Work not yet handed out is dropped unfinished: its offsets stay uncommitted.
        drop(backlog);
        let ctx = self.consumer.context();
        let deadline = Instant::now() + ctx.drain_timeout;
        loop {
            let mut state = ctx.state();
            let in_flight = state.tracker.in_flight();
            if in_flight == 0 || Instant::now() >= deadline {
                // Commit what finished, synchronously: not the consumed positions, which would
                // skip unfinished work.
                let offsets = state.tracker.committable();
                drop(state);
                commit(&self.consumer, &offsets, CommitMode::Sync);
                info!(unfinished = in_flight, "input stopped");
                return;
            }
            if let Ok(ack) = state.acks.recv_timeout(Duration::from_millis(20)) {
                state.tracker.complete(&ack.tp, ack.offset);
            }
        }
    }
}
