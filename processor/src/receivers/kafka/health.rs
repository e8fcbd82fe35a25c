//! Whether the input is making progress, from the errors its polls return.
//!
//! librdkafka reports most trouble as errors from `poll` and retries by itself. Some never
//! clear: a partition whose batches use a codec the client cannot decompress is fetched again
//! and fails again for ever, a subscribed topic that does not exist (or that the credentials may
//! not read) is never assigned. Each of those stalled the input while `/readyz` stayed 200 and
//! the errors were logged at debug. This keeps the errors per partition (or, for errors of the
//! client as a whole, per error code) and names the ones that persist, which `/readyz` reports
//! as its reason for 503.
//!
//! Plain data with the clock passed in, so its rules are tested without a broker.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::offsets::TopicPartition;

/// A partition's errors are persistent once they have recurred for this long without a message.
pub const PERSISTENT_AFTER: Duration = Duration::from_secs(30);

/// An error not seen again for this long is forgotten: librdkafka got past it.
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// How often one failing partition or error is logged.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Where an error came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A partition's queue: its fetches fail.
    Partition(TopicPartition),
    /// The consumer's main queue: the client or the subscription, by error code.
    Client(String),
}

#[derive(Debug)]
struct Failing {
    first: Instant,
    last: Instant,
    count: u64,
    message: String,
    /// Persistent from the first occurrence: it cannot clear by itself.
    permanent: bool,
    warned: Option<Instant>,
}

/// Errors the client cannot get past without a change outside it: reported at once.
fn is_permanent(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::UnsupportedCompressionType
                | RDKafkaErrorCode::NotImplemented
                | RDKafkaErrorCode::UnsupportedFeature
        )
    )
}

/// The input's failing partitions and client errors.
#[derive(Debug, Default)]
pub struct InputHealth {
    failing: HashMap<Origin, Failing>,
}

impl InputHealth {
    /// Records an error from `origin`; `detail` is librdkafka's reason when it gave one (it names
    /// the broker and, for authentication, the mechanism). Returns whether it should be logged
    /// now (its first occurrence, then once a minute), with how many times it occurred.
    pub fn error(
        &mut self,
        origin: Origin,
        e: &KafkaError,
        detail: Option<&str>,
        now: Instant,
    ) -> Option<u64> {
        let permanent = is_permanent(e);
        let failing = self.failing.entry(origin).or_insert_with(|| Failing {
            first: now,
            last: now,
            count: 0,
            message: String::new(),
            permanent,
            warned: None,
        });
        if now.saturating_duration_since(failing.last) >= FORGET_AFTER {
            failing.first = now;
            failing.count = 0;
        }
        failing.last = now;
        failing.count += 1;
        failing.permanent |= permanent;
        failing.message = match detail {
            Some(detail) if !detail.is_empty() => format!("{e}: {detail}"),
            _ => e.to_string(),
        };
        let due = failing
            .warned
            .is_none_or(|at| now.saturating_duration_since(at) >= WARN_EVERY);
        due.then(|| {
            failing.warned = Some(now);
            failing.count
        })
    }

    /// `tp` delivered a message: its errors are over, and so are the client's (the consumer
    /// works).
    pub fn progress(&mut self, tp: &TopicPartition) {
        if self.failing.is_empty() {
            return;
        }
        self.failing.retain(|origin, _| match origin {
            Origin::Partition(p) => p != tp,
            Origin::Client(_) => false,
        });
    }

    /// Why the input is stuck, if it is: every persistent error, by where it comes from.
    pub fn problem(&mut self, now: Instant) -> Option<String> {
        self.failing
            .retain(|_, f| f.permanent || now.saturating_duration_since(f.last) < FORGET_AFTER);
        let mut reasons: Vec<String> = self
            .failing
            .iter()
            .filter(|(_, f)| {
                f.permanent || now.saturating_duration_since(f.first) >= PERSISTENT_AFTER
            })
            .map(|(origin, f)| match origin {
                Origin::Partition(tp) => format!(
                    "partition {}[{}] fails: {} ({} times since {:.0} s ago)",
                    tp.topic,
                    tp.partition,
                    f.message,
                    f.count,
                    now.saturating_duration_since(f.first).as_secs_f64()
                ),
                Origin::Client(_) => format!("the input consumer fails: {}", f.message),
            })
            .collect();
        reasons.sort();
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(partition: i32) -> TopicPartition {
        TopicPartition {
            topic: "otlp_spans".into(),
            partition,
        }
    }

    #[test]
    fn a_partition_that_keeps_failing_makes_the_input_not_ready_until_it_delivers() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut health = InputHealth::default();
        let bad = KafkaError::MessageConsumption(RDKafkaErrorCode::InvalidMessage);
        assert_eq!(
            health.error(Origin::Partition(tp(3)), &bad, None, at(0)),
            Some(1)
        );
        assert_eq!(
            health.error(Origin::Partition(tp(3)), &bad, None, at(1)),
            None,
            "logged once a minute"
        );
        assert_eq!(health.problem(at(10)), None, "not persistent yet");
        for s in 2..=31 {
            health.error(Origin::Partition(tp(3)), &bad, None, at(s));
        }
        let problem = health.problem(at(31)).unwrap();
        assert!(problem.contains("otlp_spans[3]"), "{problem}");
        assert!(problem.contains("32 times"), "{problem}");
        // Another partition's messages do not clear it; its own do.
        health.progress(&tp(1));
        assert!(health.problem(at(32)).is_some());
        health.progress(&tp(3));
        assert_eq!(health.problem(at(32)), None);
    }

    #[test]
    fn errors_that_stop_recurring_are_forgotten() {
        let t0 = Instant::now();
        let mut health = InputHealth::default();
        let transient = KafkaError::MessageConsumption(RDKafkaErrorCode::BrokerTransportFailure);
        for s in 0..40 {
            health.error(
                Origin::Partition(tp(0)),
                &transient,
                None,
                t0 + Duration::from_secs(s),
            );
        }
        assert!(health.problem(t0 + Duration::from_secs(40)).is_some());
        assert_eq!(health.problem(t0 + Duration::from_secs(100)), None);
    }

    #[test]
    fn a_missing_topic_is_reported_at_once_and_cleared_by_a_message() {
        let t0 = Instant::now();
        let mut health = InputHealth::default();
        let missing = KafkaError::MessageConsumption(RDKafkaErrorCode::UnknownTopicOrPartition);
        health.error(
            Origin::Client("UnknownTopicOrPartition".into()),
            &missing,
            None,
            t0,
        );
        let problem = health.problem(t0).unwrap();
        assert!(problem.contains("Unknown topic"), "{problem}");
        // Permanent errors are not forgotten with time (metadata is refreshed every 5 minutes).
        assert!(health.problem(t0 + Duration::from_secs(600)).is_some());
        health.progress(&tp(0));
        assert_eq!(health.problem(t0 + Duration::from_secs(601)), None);
    }
}
