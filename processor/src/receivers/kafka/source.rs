//! The input side: a consumer in a consumer group, polled on its own thread.
//!
//! librdkafka runs rebalance callbacks and heartbeats inside `poll`, so the poll loop lives on a
//! dedicated thread and never waits on anything else for long. Each assigned partition's messages
//! are split into their own librdkafka queue; the loop takes them in batches, round robin, and
//! hands them to the workers through a bounded queue, while it keeps serving the consumer's main
//! queue (rebalances, errors, statistics) every turn.
//!
//! **Backpressure without pausing.** When the workers' queue is full or too many messages are in
//! flight, the loop simply stops taking from the partition queues and keeps polling. librdkafka's
//! fetcher then stops by itself once a partition's prefetch queue holds `queued.min.messages`
//! messages or `queued.max.messages.kbytes`, which is a pause that keeps what was fetched. An
//! explicit `pause` would purge the prefetched messages and fetch them again on resume, which costs
//! throughput (measured: ~20 msg/s when pausing on every full queue) and, on a broker that answered
//! a fetch from inside a record batch badly (tansu 0.6, the old test broker), skipped records.
//!
//! Acknowledgements come back on a bounded channel; finished offsets advance a contiguous prefix
//! per partition ([`OffsetTracker`]), which is stored for librdkafka's auto-commit
//! (`enable.auto.offset.store=false`). On revoke, the revoked partitions' in-flight work is drained
//! within a deadline and committed synchronously; on shutdown, everything is. Traces buffered for
//! trace evaluators are evaluated first, with what they have ([`Assembler::flush`]): their
//! messages could not finish otherwise.
//!
//! **Exactly once** (with a [`Transaction`]): no auto-commit. Every `interval` the loop stops
//! taking messages until none is in flight (a barrier), then commits the consumed offsets in the
//! output producer's transaction, which then holds exactly the outputs of those offsets; a revoke
//! and the shutdown do the same. A transaction that cannot commit stops the worker: its restart
//! (same `transactional.id`) fences the open transaction, and reading resumes from the last
//! committed one, so nothing is written twice or lost.
//!
//! Messages that stay in flight only because a buffered trace holds them do not count against
//! `max_in_flight_messages`: the trace buffer's own limits bound them, and they have given up
//! their bytes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendTimeoutError, Sender};
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, base_consumer::PartitionQueue,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use super::Transaction;
use super::dead_letter::DeadLetterJob;
use super::health::{InputHealth, Origin};
use super::input::{Ack, KafkaInput, Received};
use super::offsets::{OffsetTracker, TopicPartition};
use crate::config::KafkaReceiver;
use crate::pipeline::ack::Token;
use crate::pipeline::joiner::Joiner;
use crate::pipeline::traces::Assembler;
use crate::pipeline::traces::Selector;
use crate::pipeline::worker::{Body, Input};
use crate::telemetry::metrics::Metrics;

/// One message handed to a worker, with the token that acknowledges it.
struct Work {
    /// The message.
    message: Arc<Received>,
    /// What the workers get.
    input: Input,
}

struct State {
    tracker: OffsetTracker,
    acks: Receiver<Ack>,
    /// Received (and begun in the tracker) but not yet handed to the workers: at most one batch.
    held: VecDeque<Work>,
}

impl State {
    /// Takes the acknowledgements that have arrived.
    fn take_acks(&mut self) {
        while let Ok(ack) = self.acks.try_recv() {
            self.tracker.complete(&ack.tp, ack.offset);
        }
    }

    /// Waits until every in-flight message of `partitions` (all when `None`) has finished, except
    /// held ones, which are dropped unfinished: they were never handed out, so they stay
    /// uncommitted and are read again by whoever owns the partition next. Returns the number of
    /// handed-out messages left unfinished.
    fn drain(&mut self, partitions: Option<&[TopicPartition]>, deadline: Instant) -> usize {
        let ours = |tp: &TopicPartition| partitions.is_none_or(|p| p.contains(tp));
        let before = self.held.len();
        self.held.retain(|w| {
            let keep = !ours(&w.message.tp);
            if !keep && let Some(input) = w.input.token.origin::<KafkaInput>() {
                // Dropping the token must not acknowledge a message nobody evaluated.
                input.keep_uncommitted();
            }
            keep
        });
        let dropped = before - self.held.len();
        let in_flight = |s: &Self| match partitions {
            Some(p) => s.tracker.in_flight_in(p),
            None => s.tracker.in_flight(),
        };
        while in_flight(self) > dropped && Instant::now() < deadline {
            if let Ok(ack) = self.acks.recv_timeout(Duration::from_millis(20)) {
                self.tracker.complete(&ack.tp, ack.offset);
            }
        }
        in_flight(self).saturating_sub(dropped)
    }
}

/// Callbacks librdkafka runs inside `poll`.
pub struct SourceContext {
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    /// Errors that persist, for readiness: from polls and from the client's error callback.
    health: Mutex<InputHealth>,
    drain_timeout: Duration,
    assignment_changed: AtomicBool,
    traces: Option<Assembler>,
    /// The join of log events to spans, when logs are read: flushed on revoke and shutdown.
    join: Option<Arc<Joiner>>,
    /// Exactly once: where offsets are committed, with the outputs.
    transaction: Option<Arc<dyn Transaction>>,
    /// Why the worker must stop (a transaction that could not commit in a rebalance callback,
    /// where nothing can be returned).
    failed: Mutex<Option<String>>,
}

impl SourceContext {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Exactly once: commits `offsets` in the transaction, or records why it could not. Called
    /// only when no input is in flight.
    fn commit_transaction(
        &self,
        transaction: &dyn Transaction,
        consumer: &BaseConsumer<Self>,
        offsets: &[(TopicPartition, i64)],
    ) -> bool {
        let Some(group) = consumer.group_metadata() else {
            self.fail("no consumer group metadata for the transaction".into());
            return false;
        };
        match transaction.commit(&next_offsets(offsets), &group) {
            Ok(()) => {
                self.metrics.transactions.inc();
                true
            }
            Err(e) => {
                self.fail(format!("the transaction did not commit: {e}"));
                false
            }
        }
    }

    fn fail(&self, why: String) {
        tracing::error!(error = %why, "exactly once: stopping; a restart resumes from the last committed transaction");
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        failed.get_or_insert(why);
    }

    fn health(&self) -> MutexGuard<'_, InputHealth> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
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
        let code = error.rdkafka_error_code();
        let kind = match code {
            Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) => {
                self.metrics.set_ready(false);
                "all_brokers_down"
            }
            Some(rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure) => "transport",
            Some(
                rdkafka::types::RDKafkaErrorCode::Authentication
                | rdkafka::types::RDKafkaErrorCode::SaslAuthenticationFailed,
            ) => {
                // Credentials the broker refuses do not fix themselves: `/readyz` says so, with
                // librdkafka's reason (the listener and the mechanism).
                let origin = Origin::Client(format!("{code:?}"));
                self.health()
                    .error(origin, &error, Some(reason), Instant::now());
                "authentication"
            }
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
        let selector: Selector = {
            let revoked = revoked.clone();
            Arc::new(move |token: &Token| {
                token
                    .origin::<KafkaInput>()
                    .is_some_and(|k| revoked.contains(&k.source.tp))
            })
        };
        if let Some(traces) = &self.traces {
            traces.flush(Some(&selector));
        }
        if let Some(join) = &self.join {
            join.flush(&selector);
        }
        let mut state = self.state();
        if let Some(transaction) = &self.transaction {
            // The transaction holds the outputs of every partition's inputs: all of them are
            // drained, and their offsets committed together, or none is.
            let left = state.drain(None, Instant::now() + self.drain_timeout);
            if left == 0 {
                let offsets = state.tracker.committable();
                self.commit_transaction(transaction.as_ref(), consumer, &offsets);
            } else {
                self.fail(format!(
                    "{left} input(s) still in flight after drain_timeout_seconds at a rebalance: the transaction cannot commit"
                ));
            }
            // Everything consumed is committed (or the worker stops): the partitions this
            // worker keeps resume from their positions.
            state.tracker = OffsetTracker::default();
            info!(
                partitions = revoked.len(),
                unfinished = left,
                "partitions revoked"
            );
            return;
        }
        let left = state.drain(Some(&revoked), Instant::now() + self.drain_timeout);
        let offsets: Vec<(TopicPartition, i64)> = state
            .tracker
            .committable()
            .into_iter()
            .filter(|(tp, _)| revoked.contains(tp))
            .collect();
        store(consumer, &offsets);
        // Once: this runs inside `poll`, and waiting longer here (during a broker outage, say)
        // passes `max.poll.interval.ms` and throws the consumer out of its group.
        commit(consumer, &offsets, CommitMode::Sync, Duration::ZERO);
        for tp in &revoked {
            state.tracker.forget(tp);
        }
        if let Some(traces) = &self.traces {
            traces.resume(&selector);
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
    patience: Duration,
) {
    if offsets.is_empty() {
        return;
    }
    let list = next_offsets(offsets);
    // The last commit (stopping) is tried again for up to `patience` on a retriable failure
    // (coordinator moving, a request timing out), or the next owner re-reads everything since
    // the last periodic commit. An injected
    // COORDINATOR_NOT_AVAILABLE once left a partition with no commit at all.
    let deadline = Instant::now() + patience;
    let mut wait = Duration::from_millis(100);
    loop {
        match consumer.commit(&list, mode) {
            Ok(()) => return,
            Err(e)
                if matches!(mode, CommitMode::Sync)
                    && !lost_membership(&e)
                    && Instant::now() + wait < deadline =>
            {
                debug!(error = %e, retry_in = ?wait, "commit failed; trying again");
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(1));
            }
            Err(e) if matches!(mode, CommitMode::Sync) => {
                warn!(error = %e, "cannot commit offsets; what finished since the last commit is read again by the next owner");
                return;
            }
            Err(e) => {
                debug!(error = %e, "commit failed");
                return;
            }
        }
    }
}

/// Whether a commit failed because this consumer is no longer (or not yet again) a member of the
/// group: trying again cannot help, and the partitions' next owner re-reads what was not
/// committed.
fn lost_membership(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode::*;
    matches!(
        e.rdkafka_error_code(),
        Some(UnknownMemberId | IllegalGeneration | RebalanceInProgress | FencedInstanceId)
    )
}

/// How long a synchronous commit keeps trying.
const SYNC_COMMIT_PATIENCE: Duration = Duration::from_secs(10);

/// Stores the given next-offsets for librdkafka's auto-commit.
fn store(consumer: &BaseConsumer<SourceContext>, offsets: &[(TopicPartition, i64)]) {
    if offsets.is_empty() {
        return;
    }
    if let Err(e) = consumer.store_offsets(&next_offsets(offsets)) {
        debug!(error = %e, "cannot store offsets (partition no longer assigned?)");
    }
}

/// Messages taken from the partition queues per turn of the loop.
const BATCH: usize = 1024;

/// Messages per hand-off to a worker: enough to make the channel's cost per message small, few
/// enough that a batch spreads over all workers.
const SLICE: usize = 64;

/// What of the pipeline holds messages beyond the workers' evaluation.
pub struct Holders {
    /// The trace buffer, when trace evaluators are configured: flushed on revoke and shutdown.
    pub traces: Option<Assembler>,
    /// The join of log events to spans, when logs are read: flushed on revoke and shutdown.
    pub join: Option<Arc<Joiner>>,
    /// Messages judge calls and the join hold: their queues and limits bound them, so they do
    /// not count against the in-flight limits, which are for the cheap path.
    pub elsewhere: Vec<Arc<AtomicUsize>>,
}

/// The consumer and its loop.
pub struct Source {
    consumer: Arc<BaseConsumer<SourceContext>>,
    work: Sender<Vec<Input>>,
    acks: Sender<Ack>,
    dead_letters: Sender<DeadLetterJob>,
    encoding: evalstream_evaluators::otlp::Encoding,
    /// The logs topics (`receivers.kafka.logs`) and their encoding.
    logs: Option<(Vec<String>, evalstream_evaluators::otlp::Encoding)>,
    max_in_flight: usize,
    in_flight_bytes: Arc<AtomicUsize>,
    max_in_flight_bytes: usize,
    /// Messages held by buffered traces (a message may be counted once per trace it holds).
    held_by_traces: Arc<AtomicUsize>,
    /// Messages held by queued judge calls (once per call) and by the join of log events
    /// (once per waiting span or event group).
    held_elsewhere: Vec<Arc<AtomicUsize>>,
    metrics: Arc<Metrics>,
    /// Exactly once: how often the transaction commits.
    transaction_interval: Duration,
}

impl Source {
    /// Creates the consumer and subscribes. `work` is the bounded queue to the workers; `held`,
    /// what else of the pipeline holds messages.
    ///
    /// With `transaction` (exactly once), offsets are committed in it every `interval` instead of
    /// to the group.
    pub fn new(
        config: &KafkaReceiver,
        work: Sender<Vec<Input>>,
        dead_letters: Sender<DeadLetterJob>,
        held: Holders,
        metrics: Arc<Metrics>,
        transaction: Option<(Arc<dyn Transaction>, Duration)>,
    ) -> Result<Source, KafkaError> {
        let (transaction, transaction_interval) = match transaction {
            Some((t, interval)) => (Some(t), interval),
            None => (None, Duration::MAX),
        };
        let exactly_once = transaction.is_some();
        let max_in_flight = config.max_in_flight_messages.max(1);
        // Unbounded so that acknowledging never blocks the producer's thread; its length is at
        // most the messages in flight, which the loop below and the trace buffer bound.
        let (ack_tx, ack_rx) = crossbeam_channel::unbounded();
        let Holders {
            traces,
            join,
            elsewhere: held_elsewhere,
        } = held;
        let held_by_traces = traces
            .as_ref()
            .map_or_else(Default::default, Assembler::held);
        let context = SourceContext {
            metrics: metrics.clone(),
            state: Mutex::new(State {
                tracker: OffsetTracker::default(),
                acks: ack_rx,
                held: VecDeque::with_capacity(BATCH),
            }),
            health: Mutex::new(InputHealth::default()),
            drain_timeout: Duration::from_secs_f64(config.drain_timeout_seconds),
            assignment_changed: AtomicBool::new(false),
            traces,
            join,
            transaction,
            failed: Mutex::new(None),
        };
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", config.brokers.join(","))
            .set("group.id", &config.group_id)
            // Exactly once: offsets go in the transaction, never to the group on their own.
            .set(
                "enable.auto.commit",
                if exactly_once { "false" } else { "true" },
            )
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", config.initial_offset.as_str())
            .set("statistics.interval.ms", "5000")
            // Prefetch per partition, which is what the input holds under backpressure: bounded
            // well below librdkafka's default (64 MiB), still many batches ahead of the workers.
            .set("queued.max.messages.kbytes", "16384")
            // When a partition's prefetch queue is full, the fetcher looks again after this
            // long. librdkafka's default (1 s) left the queues empty for most of a second once
            // the workers had drained them: 67,000 msg/s with evaluation against 170,000 at
            // 10 ms (bench, no output).
            .set("fetch.queue.backoff.ms", "20");
        for (k, v) in &config.client {
            client.set(k, v);
        }
        let consumer: BaseConsumer<SourceContext> = client.create_with_context(context)?;
        let logs_topics = config.logs.iter().flat_map(|l| &l.topics);
        let topics: Vec<&str> = config
            .topics
            .iter()
            .chain(logs_topics)
            .map(String::as_str)
            .collect();
        consumer.subscribe(&topics)?;
        Ok(Source {
            consumer: Arc::new(consumer),
            work,
            acks: ack_tx,
            dead_letters,
            encoding: config.encoding,
            logs: config.logs.as_ref().map(|l| (l.topics.clone(), l.encoding)),
            max_in_flight,
            in_flight_bytes: Arc::new(AtomicUsize::new(0)),
            max_in_flight_bytes: config.max_in_flight_bytes.max(1),
            held_by_traces,
            held_elsewhere,
            metrics,
            transaction_interval,
        })
    }

    /// One queue per assigned partition, each waking the poll thread when it gets messages.
    /// Called after every assignment: librdkafka re-attaches partitions to the main queue when it
    /// assigns them.
    fn split_queues(&self) -> Vec<(TopicPartition, PartitionQueue<SourceContext>)> {
        let Ok(assignment) = self.consumer.assignment() else {
            return Vec::new();
        };
        let poll_thread = std::thread::current();
        assignment
            .elements()
            .iter()
            .filter_map(|e| {
                let mut queue = self
                    .consumer
                    .split_partition_queue(e.topic(), e.partition())?;
                let poll_thread = poll_thread.clone();
                queue.set_nonempty_callback(move || poll_thread.unpark());
                let tp = TopicPartition {
                    topic: e.topic().into(),
                    partition: e.partition(),
                };
                Some((tp, queue))
            })
            .collect()
    }

    /// Takes acknowledgements, stores the offsets they free and returns the messages in flight
    /// that buffered traces do not hold.
    fn settle(&self) -> usize {
        let ctx = self.consumer.context();
        let mut state = ctx.state();
        state.take_acks();
        let advances = state.tracker.advances();
        store(&self.consumer, &advances);
        let in_flight = state.tracker.in_flight();
        self.metrics.in_flight.set(in_flight as i64);
        let elsewhere: usize = self
            .held_elsewhere
            .iter()
            .map(|h| h.load(Ordering::Acquire))
            .sum();
        in_flight
            .saturating_sub(self.held_by_traces.load(Ordering::Acquire))
            .saturating_sub(elsewhere)
    }

    /// Makes a work item of a received message, checking its offset follows the last one read.
    fn receive(
        &self,
        m: &BorrowedMessage<'_>,
        last_offsets: &mut HashMap<TopicPartition, i64>,
    ) -> Work {
        let tp = TopicPartition {
            topic: m.topic().into(),
            partition: m.partition(),
        };
        if let Some(&previous) = last_offsets.get(&tp)
            && m.offset() > previous + 1
        {
            // Normal on compacted or transactional topics; anywhere else, the broker skipped
            // records.
            self.metrics.offset_gaps.inc();
            warn!(topic = %tp.topic, partition = tp.partition, from = previous + 1, to = m.offset(), "input offsets skipped");
        }
        last_offsets.insert(tp.clone(), m.offset());
        self.consumer.context().health().progress(&tp);
        tracing::trace!(
            key = %String::from_utf8_lossy(m.key().unwrap_or_default()),
            partition = tp.partition,
            offset = m.offset(),
            "received"
        );
        let body = match &self.logs {
            Some((topics, encoding)) if topics.iter().any(|t| **t == *tp.topic) => {
                Body::KeptLogs(*encoding)
            }
            _ => Body::Kept(self.encoding),
        };
        let key = m.key().map(<[u8]>::to_vec);
        let payload = m.payload().map(<[u8]>::to_vec).unwrap_or_default();
        let message = Arc::new(Received::new(
            tp,
            m.offset(),
            key,
            payload,
            &self.in_flight_bytes,
        ));
        let token = Token::new(KafkaInput::new(
            message.clone(),
            self.acks.clone(),
            self.dead_letters.clone(),
        ));
        Work {
            message,
            input: Input { body, token },
        }
    }

    /// Polls until `shutdown` is set, then drains in-flight work within the drain timeout and
    /// commits what finished. Exactly once, an error says why a transaction did not commit (the
    /// worker must stop).
    pub fn run(self, shutdown: &AtomicBool) -> Result<(), String> {
        let mut queues: Vec<(TopicPartition, PartitionQueue<SourceContext>)> = Vec::new();
        let mut next_health_check = Instant::now();
        let mut next_queue: usize = 0;
        let mut last_offsets: HashMap<TopicPartition, i64> = HashMap::new();
        let mut received: Vec<Work> = Vec::with_capacity(BATCH);
        let mut next_commit =
            Instant::now() + self.transaction_interval.min(Duration::from_secs(3600));
        while !shutdown.load(Ordering::Acquire) {
            let in_flight = self.settle();
            let ctx = self.consumer.context();
            if ctx
                .failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some()
            {
                break;
            }
            // Exactly once, at the barrier: nothing new is taken until every input in flight has
            // finished, then the transaction commits their offsets with their outputs.
            let barrier = ctx.transaction.is_some() && Instant::now() >= next_commit;
            if barrier && in_flight == 0 && ctx.state().held.is_empty() {
                if let Some(transaction) = &ctx.transaction {
                    let offsets = ctx.state().tracker.committable();
                    if !ctx.commit_transaction(transaction.as_ref(), &self.consumer, &offsets) {
                        continue;
                    }
                }
                next_commit = Instant::now() + self.transaction_interval;
            }
            if ctx.assignment_changed.swap(false, Ordering::AcqRel) {
                queues = self.split_queues();
                // A partition given back after another worker had it resumes past what this
                // worker last read: that is no gap.
                last_offsets.clear();
            }
            // Take a batch only when the last one is handed out and there is room in flight.
            let held = ctx.state().held.len();
            let bytes = self.in_flight_bytes.load(Ordering::Acquire);
            self.metrics.in_flight_bytes.set(bytes as i64);
            let full = in_flight >= self.max_in_flight || bytes >= self.max_in_flight_bytes;
            let room = if held == 0 && !full && !barrier {
                BATCH.min(self.max_in_flight - in_flight)
            } else {
                0
            };
            // Round robin over the partitions, a fair share each, so one busy partition does not
            // starve the others.
            if room > 0 && !queues.is_empty() {
                let share = room.div_ceil(queues.len());
                for i in 0..queues.len() {
                    let (tp, queue) = &queues[(next_queue + i) % queues.len()];
                    for _ in 0..share.min(room - received.len()) {
                        match queue.poll(Duration::ZERO) {
                            None => break,
                            Some(Ok(m)) => received.push(self.receive(&m, &mut last_offsets)),
                            Some(Err(e)) => {
                                self.poll_error(Origin::Partition(tp.clone()), &e);
                                break;
                            }
                        }
                    }
                }
                next_queue = next_queue.wrapping_add(1);
            }
            // The main queue: rebalances, errors and statistics, and messages of partitions that
            // arrived before their queue was split.
            match self.consumer.poll(Duration::ZERO) {
                None => {}
                Some(Ok(m)) => received.push(self.receive(&m, &mut last_offsets)),
                Some(Err(e)) => {
                    let code = e
                        .rdkafka_error_code()
                        .map_or_else(|| "other".to_owned(), |c| format!("{c:?}"));
                    self.poll_error(Origin::Client(code), &e);
                }
            }
            if Instant::now() >= next_health_check {
                let problem = ctx.health().problem(Instant::now());
                self.metrics.set_input_problem(problem);
                next_health_check = Instant::now() + Duration::from_secs(1);
            }
            let took = received.len();
            let mut state = ctx.state();
            for work in received.drain(..) {
                state.tracker.begin(&work.message.tp, work.message.offset);
                state.held.push_back(work);
            }
            if took > 0 {
                // The gauge first, then the counter: a scrape between the two must not see
                // every message consumed and none in flight (a test waiting for "all consumed,
                // nothing in flight" once read its verdict before the work had started).
                self.metrics.in_flight.set(state.tracker.in_flight() as i64);
                self.metrics.messages.inc_by(took as u64);
            }
            // Hand out what is held, in slices (one channel operation per slice, not per
            // message), waiting briefly for room: the poll thread has nothing better to do then,
            // and the wait is short enough to keep serving the main queue.
            while !state.held.is_empty() {
                let n = state.held.len().min(SLICE);
                let slice: Vec<Work> = state.held.drain(..n).collect();
                let (messages, inputs): (Vec<_>, Vec<_>) =
                    slice.into_iter().map(|w| (w.message, w.input)).unzip();
                match self.work.send_timeout(inputs, Duration::from_millis(10)) {
                    Ok(()) => {}
                    Err(SendTimeoutError::Timeout(inputs)) => {
                        for (message, input) in messages.into_iter().zip(inputs).rev() {
                            state.held.push_front(Work { message, input });
                        }
                        break;
                    }
                    Err(SendTimeoutError::Disconnected(_)) => return Ok(()),
                }
            }
            let held_back = !state.held.is_empty() || full;
            drop(state);
            self.metrics.paused.set(i64::from(held_back));
            if room > 0 && took == 0 {
                // Every partition queue is empty: sleep until one gets messages (its callback
                // unparks this thread), or a few milliseconds to serve the main queue.
                std::thread::park_timeout(Duration::from_millis(5));
            } else if held == 0 && room == 0 {
                // Too much in flight: wait a little for acknowledgements.
                std::thread::park_timeout(Duration::from_millis(1));
            }
        }
        drop(queues);
        self.drain();
        let failed = self
            .consumer
            .context()
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        failed.map_or(Ok(()), Err)
    }

    /// Counts a poll error and logs it (once a minute per partition or error), at `warn`: a
    /// persistent one stalls the input, and `/readyz` reports it ([`InputHealth`]).
    fn poll_error(&self, origin: Origin, e: &KafkaError) {
        self.metrics.kafka_errors.with_label_values(&["poll"]).inc();
        let logged =
            self.consumer
                .context()
                .health()
                .error(origin.clone(), e, None, Instant::now());
        if let Some(count) = logged {
            match origin {
                Origin::Partition(tp) => {
                    warn!(error = %e, topic = %tp.topic, partition = tp.partition, count, "cannot read the partition (librdkafka retries)")
                }
                Origin::Client(_) => warn!(error = %e, count, "input consumer error"),
            }
        }
    }

    fn drain(&self) {
        info!("stopping: draining in-flight work");
        self.metrics.paused.set(1);
        let ctx = self.consumer.context();
        if let Some(traces) = &ctx.traces {
            traces.flush(None);
        }
        // Spans waiting for their log events are evaluated as they are, waiting events dropped:
        // the messages they hold finish within the drain rather than at the end of their wait.
        if let Some(join) = &ctx.join {
            let every: Selector = Arc::new(|_: &Token| true);
            join.flush(&every);
        }
        let mut state = ctx.state();
        let unfinished = state.drain(None, Instant::now() + ctx.drain_timeout);
        // Commit what finished, synchronously: not the consumed positions, which would skip
        // unfinished work.
        let offsets = state.tracker.committable();
        drop(state);
        if let Some(transaction) = &ctx.transaction {
            // Exactly once: only with nothing in flight does the transaction hold exactly the
            // outputs of these offsets; otherwise it is left open, to be aborted, and everything
            // since the last commit is read again.
            let failed = ctx
                .failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some();
            if unfinished == 0 && !failed {
                ctx.commit_transaction(transaction.as_ref(), &self.consumer, &offsets);
            } else {
                warn!(
                    unfinished,
                    "inputs still in flight: the last transaction is not committed, and what it held is read again"
                );
            }
            info!(unfinished, "input stopped");
            return;
        }
        // Stored too: closing the consumer auto-commits the stored offsets, which would otherwise
        // take the commit back to before the work that finished while draining.
        store(&self.consumer, &offsets);
        commit(
            &self.consumer,
            &offsets,
            CommitMode::Sync,
            SYNC_COMMIT_PATIENCE,
        );
        info!(unfinished, "input stopped");
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::config::ClientConfig;

    /// A zstd batch from the collector stalled its partition ("Decompression … Not
    /// implemented") while librdkafka was built with zlib only; managed Kafka services need TLS
    /// and SASL.
    #[test]
    fn the_kafka_client_reads_every_collector_codec_and_speaks_tls_and_sasl() {
        let native = ClientConfig::new().create_native_config().unwrap();
        let features = native.get("builtin.features").unwrap();
        for feature in [
            "gzip",
            "snappy",
            "lz4",
            "zstd",
            "ssl",
            "sasl_plain",
            "sasl_scram",
        ] {
            assert!(
                features.split(',').any(|f| f == feature),
                "librdkafka lacks `{feature}`: {features}"
            );
        }
        for protocol in ["ssl", "sasl_ssl"] {
            ClientConfig::new()
                .set("bootstrap.servers", "127.0.0.1:1")
                .set("security.protocol", protocol)
                .set("sasl.mechanism", "SCRAM-SHA-512")
                .set("sasl.username", "evalstream")
                .set("sasl.password", "secret")
                .create::<rdkafka::producer::BaseProducer>()
                .unwrap_or_else(|e| panic!("security.protocol={protocol}: {e}"));
        }
    }
}
