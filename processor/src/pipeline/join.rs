//! The join of GenAI content log events to their spans (issue 16, item 3), for receivers that take
//! logs: a span and its events arrive in separate inputs, in either order, so whichever comes
//! first waits here, keyed by span id, for the other.
//!
//! - A model-call span without content ([`logs::awaits_content`]) waits up to `span_wait_seconds`
//!   for its events; when they come it is released with them (`joined`), else with what it has
//!   (`timed_out`) — a span is never lost for want of its events, only judged `no_content`.
//! - Events whose span has not come wait up to `event_wait_seconds`; when the span comes it takes
//!   them at once. Events still waiting then are dropped (`expired`): their span never came, or
//!   came with content of its own and did not wait. Events of one span arriving in several inputs
//!   are gathered until the span comes; those arriving after it was released wait and expire.
//! - Memory is bounded by `max_spans` waiting spans and `max_bytes` of spans and events: past
//!   them, the oldest span is released as it is (`evicted`) and the oldest events dropped
//!   (`evicted`). Everything is counted (see [`JoinCounts`]), nothing dropped silently.
//!
//! Each waiting span and event group keeps *holds* (`H`) on the inputs it came from, as the trace
//! buffer does ([`super::assembly`]): an input of logs is finished only when the spans its events
//! joined were evaluated (the holds go with the released span to its evaluation) or when its
//! events were dropped (the holds are dropped with them).
//!
//! The buffer is plain data with the clock passed in, so its rules are tested without threads.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use evalstream_evaluators::logs::ContentEvent;
use serde::Deserialize;

use super::assembly::StoredSpan;

/// `logs:` in the configuration: the join's limits. Used only when a receiver takes logs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinConfig {
    /// Seconds a model-call span without content waits for its log events. Short: SDKs export
    /// a call's events and its span within their batch delay (the OTel SDKs' default: 1 s for
    /// logs, 5 s for spans, and the span is usually the later).
    #[serde(default = "default_span_wait")]
    pub span_wait_seconds: f64,
    /// Seconds log events wait for their span: longer than the SDKs' span export delay (5 s by
    /// default), since events, exported every second, usually come first. An OTLP logs request
    /// is answered once its events joined or were dropped, so this also bounds that answer's
    /// delay: keep it under the clients' export timeout (10 s by default).
    #[serde(default = "default_event_wait")]
    pub event_wait_seconds: f64,
    /// Spans waiting at most.
    #[serde(default = "default_max_spans")]
    pub max_spans: usize,
    /// Bytes waiting at most: the spans' and events' protobuf size.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
}

impl Default for JoinConfig {
    fn default() -> Self {
        JoinConfig {
            span_wait_seconds: default_span_wait(),
            event_wait_seconds: default_event_wait(),
            max_spans: default_max_spans(),
            max_bytes: default_max_bytes(),
        }
    }
}

impl JoinConfig {
    /// Checks the limits, naming the offending key.
    pub fn validate(&self) -> Result<(), String> {
        for (key, v) in [
            ("span_wait_seconds", self.span_wait_seconds),
            ("event_wait_seconds", self.event_wait_seconds),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!(
                    "logs.{key}: must be a non-negative number of seconds"
                ));
            }
        }
        if self.max_spans == 0 {
            return Err("logs.max_spans: must be at least 1".into());
        }
        if self.max_bytes == 0 {
            return Err("logs.max_bytes: must be at least 1".into());
        }
        Ok(())
    }
}

fn default_span_wait() -> f64 {
    2.0
}
fn default_event_wait() -> f64 {
    8.0
}
fn default_max_spans() -> usize {
    100_000
}
fn default_max_bytes() -> usize {
    64 << 20
}

/// Why a span left the join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// With its events.
    Joined,
    /// Its wait ran out without events.
    TimedOut,
    /// The buffer was full and it was the oldest.
    Evicted,
    /// The worker is stopping, the span's input was let go (a revoked partition), or the same
    /// span came again (a replay) and this earlier copy made way for it.
    Flushed,
}

impl Release {
    /// The name, for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Release::Joined => "joined",
            Release::TimedOut => "timed_out",
            Release::Evicted => "evicted",
            Release::Flushed => "flushed",
        }
    }
}

/// A span ready to evaluate, with the events that joined it.
#[derive(Debug)]
pub struct ReadySpan<H> {
    /// The span as received.
    pub span: StoredSpan,
    /// Its events (none unless joined).
    pub events: Vec<ContentEvent>,
    /// The holds of the span's input and of its events' inputs.
    pub holds: Vec<H>,
    /// Why it left.
    pub release: Release,
}

/// Events that left the join without their span, by why.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JoinCounts {
    /// Their wait ran out.
    pub expired: u64,
    /// The buffer was full and they were the oldest.
    pub evicted: u64,
    /// The worker stopped, or their input was let go.
    pub flushed: u64,
}

/// What a call released.
#[derive(Debug)]
pub struct Released<H> {
    /// Spans to evaluate now.
    pub spans: Vec<ReadySpan<H>>,
    /// Events dropped.
    pub dropped: JoinCounts,
}

impl<H> Default for Released<H> {
    fn default() -> Self {
        Released {
            spans: Vec::new(),
            dropped: JoinCounts::default(),
        }
    }
}

#[derive(Debug)]
struct WaitingSpan<H> {
    span: StoredSpan,
    holds: Vec<H>,
    since: Instant,
}

#[derive(Debug)]
struct WaitingEvents<H> {
    events: Vec<ContentEvent>,
    holds: Vec<H>,
    since: Instant,
    bytes: usize,
}

/// Spans waiting for their events and events waiting for their span, by span id.
#[derive(Debug)]
pub struct JoinBuffer<H> {
    config: JoinConfig,
    spans: HashMap<Vec<u8>, WaitingSpan<H>>,
    events: HashMap<Vec<u8>, WaitingEvents<H>>,
    /// Span ids by arrival, oldest first, for expiry and eviction; entries already gone (or
    /// gone and back, told by their time) are skipped lazily.
    span_order: VecDeque<(Vec<u8>, Instant)>,
    event_order: VecDeque<(Vec<u8>, Instant)>,
    bytes: usize,
}

impl<H> JoinBuffer<H> {
    /// An empty buffer.
    pub fn new(config: JoinConfig) -> JoinBuffer<H> {
        JoinBuffer {
            config,
            spans: HashMap::new(),
            events: HashMap::new(),
            span_order: VecDeque::new(),
            event_order: VecDeque::new(),
            bytes: 0,
        }
    }

    /// Spans waiting.
    pub fn spans(&self) -> usize {
        self.spans.len()
    }

    /// Span ids with events waiting.
    pub fn event_groups(&self) -> usize {
        self.events.len()
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// A span without content, from the input of `hold`: released at once with its events if
    /// they are here, else kept waiting.
    pub fn add_span(
        &mut self,
        span_id: &[u8],
        span: StoredSpan,
        hold: H,
        now: Instant,
    ) -> Released<H> {
        let mut out = Released::default();
        if let Some(waiting) = self.events.remove(span_id) {
            self.bytes -= waiting.bytes;
            let mut holds = waiting.holds;
            holds.push(hold);
            out.spans.push(ReadySpan {
                span,
                events: waiting.events,
                holds,
                release: Release::Joined,
            });
            return out;
        }
        self.bytes += span.bytes();
        if let Some(old) = self.spans.insert(
            span_id.to_vec(),
            WaitingSpan {
                span,
                holds: vec![hold],
                since: now,
            },
        ) {
            // The same span again (a replay): the earlier copy goes as it is.
            self.bytes -= old.span.bytes();
            out.spans.push(ReadySpan {
                span: old.span,
                events: Vec::new(),
                holds: old.holds,
                release: Release::Flushed,
            });
        }
        self.span_order.push_back((span_id.to_vec(), now));
        self.enforce_limits(&mut out);
        out
    }

    /// Events of one span from the input of `hold`: they release the span if it waits, else
    /// they wait for it.
    pub fn add_events(
        &mut self,
        span_id: &[u8],
        events: Vec<ContentEvent>,
        hold: H,
        now: Instant,
    ) -> Released<H> {
        let mut out = Released::default();
        if let Some(waiting) = self.spans.remove(span_id) {
            self.bytes -= waiting.span.bytes();
            let mut holds = waiting.holds;
            holds.push(hold);
            out.spans.push(ReadySpan {
                span: waiting.span,
                events,
                holds,
                release: Release::Joined,
            });
            return out;
        }
        let bytes: usize = events.iter().map(ContentEvent::bytes).sum();
        self.bytes += bytes;
        match self.events.get_mut(span_id) {
            Some(waiting) => {
                waiting.events.extend(events);
                waiting.holds.push(hold);
                waiting.bytes += bytes;
            }
            None => {
                self.events.insert(
                    span_id.to_vec(),
                    WaitingEvents {
                        events,
                        holds: vec![hold],
                        since: now,
                        bytes,
                    },
                );
                self.event_order.push_back((span_id.to_vec(), now));
            }
        }
        self.enforce_limits(&mut out);
        out
    }

    fn enforce_limits(&mut self, out: &mut Released<H>) {
        while self.spans.len() > self.config.max_spans || self.bytes > self.config.max_bytes {
            // The oldest of either kind goes first.
            let span = Self::oldest(&mut self.span_order, |id, t| {
                self.spans.get(id).is_some_and(|s| s.since == t)
            });
            let event = Self::oldest(&mut self.event_order, |id, t| {
                self.events.get(id).is_some_and(|e| e.since == t)
            });
            let take_span = match (&span, &event) {
                (Some(s), Some(e)) => self.spans.len() > self.config.max_spans || s.1 <= e.1,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if take_span {
                if let Some((id, _)) = span {
                    out.spans.push(self.take_span(&id, Release::Evicted));
                }
            } else if let Some((id, _)) = event {
                out.dropped.evicted += self.drop_events(&id);
            }
        }
    }

    fn oldest(
        order: &mut VecDeque<(Vec<u8>, Instant)>,
        live: impl Fn(&[u8], Instant) -> bool,
    ) -> Option<(Vec<u8>, Instant)> {
        while let Some((id, t)) = order.front() {
            if live(id, *t) {
                return Some((id.clone(), *t));
            }
            order.pop_front();
        }
        None
    }

    fn take_span(&mut self, span_id: &[u8], release: Release) -> ReadySpan<H> {
        let waiting = self.spans.remove(span_id).expect("taking a waiting span");
        self.bytes -= waiting.span.bytes();
        ReadySpan {
            span: waiting.span,
            events: Vec::new(),
            holds: waiting.holds,
            release,
        }
    }

    /// Drops the events waiting for `span_id` (and their holds); returns how many.
    fn drop_events(&mut self, span_id: &[u8]) -> u64 {
        let waiting = self
            .events
            .remove(span_id)
            .expect("dropping waiting events");
        self.bytes -= waiting.bytes;
        waiting.events.len() as u64
    }

    /// Drops the events waiting for a span that needs none (it carried its content); returns
    /// how many. They would only wait out their time, holding their input.
    pub fn discard_events(&mut self, span_id: &[u8]) -> u64 {
        if self.events.contains_key(span_id) {
            self.drop_events(span_id)
        } else {
            0
        }
    }

    /// Spans whose wait ran out, released as they are, and events whose wait ran out, dropped.
    pub fn due(&mut self, now: Instant) -> Released<H> {
        let mut out = Released::default();
        let span_wait = Duration::from_secs_f64(self.config.span_wait_seconds);
        let event_wait = Duration::from_secs_f64(self.config.event_wait_seconds);
        // Arrival order is wait order: stop at the first that is not due.
        while let Some((id, since)) = Self::oldest(&mut self.span_order, |id, t| {
            self.spans.get(id).is_some_and(|s| s.since == t)
        }) {
            if now.saturating_duration_since(since) < span_wait {
                break;
            }
            out.spans.push(self.take_span(&id, Release::TimedOut));
        }
        while let Some((id, since)) = Self::oldest(&mut self.event_order, |id, t| {
            self.events.get(id).is_some_and(|e| e.since == t)
        }) {
            if now.saturating_duration_since(since) < event_wait {
                break;
            }
            out.dropped.expired += self.drop_events(&id);
        }
        out
    }

    /// Everything, for a worker that is stopping.
    pub fn drain(&mut self) -> Released<H> {
        self.flush_where(|_| true)
    }

    /// The spans and events holding any input `held` picks (those of a revoked partition):
    /// spans are released as they are, events dropped, so those inputs can finish.
    pub fn flush_where(&mut self, held: impl Fn(&H) -> bool) -> Released<H> {
        let mut out = Released::default();
        let spans: Vec<Vec<u8>> = self
            .spans
            .iter()
            .filter(|(_, s)| s.holds.iter().any(&held))
            .map(|(id, _)| id.clone())
            .collect();
        for id in spans {
            out.spans.push(self.take_span(&id, Release::Flushed));
        }
        let events: Vec<Vec<u8>> = self
            .events
            .iter()
            .filter(|(_, e)| e.holds.iter().any(&held))
            .map(|(id, _)| id.clone())
            .collect();
        for id in events {
            out.dropped.flushed += self.drop_events(&id);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use evalstream_evaluators::logs::EventContent;
    use evalstream_evaluators::otlp;
    use opentelemetry_proto::tonic::trace::v1::Span;

    fn span(id: u8) -> StoredSpan {
        StoredSpan::new(
            &Span {
                trace_id: vec![1; 16],
                span_id: vec![id; 8],
                name: "chat".into(),
                ..Default::default()
            },
            None,
            None,
        )
    }

    fn events(id: u8) -> Vec<ContentEvent> {
        vec![ContentEvent {
            trace_id: vec![1; 16],
            span_id: vec![id; 8],
            content: EventContent::Attributes(vec![otlp::kv_str(
                "gen_ai.input.messages",
                "x".repeat(100),
            )]),
        }]
    }

    fn config() -> JoinConfig {
        JoinConfig {
            span_wait_seconds: 2.0,
            event_wait_seconds: 8.0,
            max_spans: 100,
            max_bytes: 1 << 20,
        }
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_span_that_comes_first_takes_its_events_when_they_come() {
        let t0 = Instant::now();
        let mut join: JoinBuffer<u32> = JoinBuffer::new(config());
        assert!(join.add_span(&[7; 8], span(7), 1, t0).spans.is_empty());
        assert!(join.due(at(t0, 1999)).spans.is_empty(), "still waiting");
        let out = join.add_events(&[7; 8], events(7), 2, at(t0, 1500));
        assert_eq!(out.spans.len(), 1);
        assert_eq!(out.spans[0].release, Release::Joined);
        assert_eq!(out.spans[0].events, events(7));
        assert_eq!(out.spans[0].holds, [1, 2]);
        assert_eq!(join.spans(), 0);
        assert_eq!(join.bytes(), 0);
    }

    #[test]
    fn events_that_come_first_wait_for_their_span() {
        let t0 = Instant::now();
        let mut join: JoinBuffer<u32> = JoinBuffer::new(config());
        // One span's events in two inputs.
        assert!(join.add_events(&[7; 8], events(7), 1, t0).spans.is_empty());
        assert!(join.add_events(&[7; 8], events(7), 2, t0).spans.is_empty());
        assert!(join.due(at(t0, 7_000)).spans.is_empty());
        let out = join.add_span(&[7; 8], span(7), 3, at(t0, 7_000));
        assert_eq!(out.spans[0].release, Release::Joined);
        assert_eq!(out.spans[0].events.len(), 2);
        assert_eq!(out.spans[0].holds, [1, 2, 3]);
        assert_eq!(join.bytes(), 0);
        assert_eq!(join.event_groups(), 0);
    }

    #[test]
    fn waits_run_out_spans_go_as_they_are_and_orphan_events_are_dropped() {
        let t0 = Instant::now();
        let mut join: JoinBuffer<u32> = JoinBuffer::new(config());
        join.add_span(&[1; 8], span(1), 1, t0);
        join.add_events(&[2; 8], events(2), 2, t0);
        let out = join.due(at(t0, 2000));
        assert_eq!(out.spans.len(), 1);
        assert_eq!(out.spans[0].release, Release::TimedOut);
        assert!(out.spans[0].events.is_empty());
        assert_eq!(out.dropped, JoinCounts::default());
        let out = join.due(at(t0, 8_000));
        assert!(out.spans.is_empty());
        assert_eq!(out.dropped.expired, 1);
        assert_eq!((join.spans(), join.event_groups(), join.bytes()), (0, 0, 0));
        // A span coming after its events expired waits anew (and times out as it is).
        join.add_span(&[2; 8], span(2), 3, at(t0, 8_001));
        assert_eq!(join.due(at(t0, 10_001)).spans[0].release, Release::TimedOut);
    }

    #[test]
    fn limits_release_the_oldest_span_and_drop_the_oldest_events() {
        let t0 = Instant::now();
        let mut join: JoinBuffer<u32> = JoinBuffer::new(JoinConfig {
            max_spans: 2,
            ..config()
        });
        join.add_span(&[1; 8], span(1), 1, t0);
        join.add_span(&[2; 8], span(2), 2, at(t0, 1));
        let out = join.add_span(&[3; 8], span(3), 3, at(t0, 2));
        assert_eq!(out.spans.len(), 1);
        assert_eq!(out.spans[0].holds, [1]);
        assert_eq!(out.spans[0].release, Release::Evicted);
        assert_eq!(join.spans(), 2);

        let group: usize = events(9).iter().map(ContentEvent::bytes).sum();
        let mut small: JoinBuffer<u32> = JoinBuffer::new(JoinConfig {
            max_bytes: 2 * group,
            ..config()
        });
        small.add_events(&[1; 8], events(1), 1, t0);
        small.add_events(&[2; 8], events(2), 2, at(t0, 1));
        let out = small.add_events(&[3; 8], events(3), 3, at(t0, 2));
        assert_eq!(out.dropped.evicted, 1);
        assert!(small.bytes() <= 2 * group);
        // The first group went: its span comes too late to join.
        let out = small.add_span(&[1; 8], span(1), 4, at(t0, 3));
        assert!(out.spans.iter().all(|s| s.release != Release::Joined));
        let out = small.add_span(&[3; 8], span(3), 5, at(t0, 4));
        assert!(out.spans.iter().any(|s| s.release == Release::Joined));

        let rest = small.drain();
        assert!(rest.spans.iter().all(|s| s.release == Release::Flushed));
        assert_eq!(small.bytes(), 0);
    }

    #[test]
    fn flushing_lets_go_of_the_picked_inputs_only() {
        let t0 = Instant::now();
        let mut join: JoinBuffer<u32> = JoinBuffer::new(config());
        join.add_span(&[1; 8], span(1), 1, t0);
        join.add_span(&[2; 8], span(2), 2, t0);
        join.add_events(&[3; 8], events(3), 1, t0);
        let out = join.flush_where(|h| *h == 1);
        assert_eq!(out.spans.len(), 1);
        assert_eq!(out.spans[0].holds, [1]);
        assert_eq!(out.dropped.flushed, 1);
        assert_eq!(join.spans(), 1);
    }
}
