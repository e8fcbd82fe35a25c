//! Which input offsets may be committed: only a contiguous prefix of finished work per partition.
//!
//! Messages of one partition are handed to several workers and finish out of order. An offset may
//! be committed only when every message before it has finished — its evaluator spans acknowledged
//! by the output producer, or the message dead-lettered — so the committable offset of a partition
//! is its lowest unfinished offset, or one past the highest offset seen when nothing is in flight.
//! Kafka commits name the *next* offset to read; this module speaks that language throughout, so
//! there is no `+1` to forget at the call sites.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// A topic and partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// The topic.
    pub topic: Arc<str>,
    /// The partition.
    pub partition: i32,
}

/// The offsets of one partition.
#[derive(Debug, Default, Clone)]
pub struct PartitionOffsets {
    in_flight: BTreeSet<i64>,
    /// One past the highest offset begun.
    next_unseen: Option<i64>,
    /// The last offset handed to the consumer's offset store.
    stored: Option<i64>,
}

impl PartitionOffsets {
    /// A message was received and handed to the workers.
    pub fn begin(&mut self, offset: i64) {
        self.in_flight.insert(offset);
        self.next_unseen = Some(self.next_unseen.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// A message's work finished. Returns false for an offset not in flight (a stale ack after a
    /// rebalance), which changes nothing.
    pub fn complete(&mut self, offset: i64) -> bool {
        self.in_flight.remove(&offset)
    }

    /// The next offset to read after everything finished so far: what a commit should name.
    pub fn committable(&self) -> Option<i64> {
        self.in_flight.first().copied().or(self.next_unseen)
    }

    /// The committable offset if it moved past the last one stored, marking it stored.
    pub fn advance(&mut self) -> Option<i64> {
        let next = self.committable()?;
        if self.stored.is_some_and(|s| s >= next) {
            return None;
        }
        self.stored = Some(next);
        Some(next)
    }

    /// Messages of this partition still being worked on.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

/// Offsets of every assigned partition.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<TopicPartition, PartitionOffsets>,
}

impl OffsetTracker {
    /// Records a message handed to the workers.
    pub fn begin(&mut self, tp: &TopicPartition, offset: i64) {
        self.partitions.entry(tp.clone()).or_default().begin(offset);
    }

    /// Records finished work; false when the partition or offset is unknown (stale ack).
    pub fn complete(&mut self, tp: &TopicPartition, offset: i64) -> bool {
        self.partitions
            .get_mut(tp)
            .is_some_and(|p| p.complete(offset))
    }

    /// Partitions whose committable offset advanced, with the offset to store.
    pub fn advances(&mut self) -> Vec<(TopicPartition, i64)> {
        self.partitions
            .iter_mut()
            .filter_map(|(tp, p)| p.advance().map(|o| (tp.clone(), o)))
            .collect()
    }

    /// Every partition's committable offset (for a final, synchronous commit).
    pub fn committable(&self) -> Vec<(TopicPartition, i64)> {
        self.partitions
            .iter()
            .filter_map(|(tp, p)| p.committable().map(|o| (tp.clone(), o)))
            .collect()
    }

    /// Messages in flight across all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions
            .values()
            .map(PartitionOffsets::in_flight)
            .sum()
    }

    /// Messages in flight in the given partitions.
    pub fn in_flight_in(&self, tps: &[TopicPartition]) -> usize {
        tps.iter()
            .filter_map(|tp| self.partitions.get(tp))
            .map(PartitionOffsets::in_flight)
            .sum()
    }

    /// Forgets a partition (after it was revoked and its offsets committed).
    pub fn forget(&mut self, tp: &TopicPartition) {
        self.partitions.remove(tp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commits_only_a_contiguous_prefix() {
        let mut p = PartitionOffsets::default();
        for o in 10..15 {
            p.begin(o);
        }
        assert_eq!(
            p.advance(),
            Some(10),
            "nothing finished: commit where we started"
        );
        assert!(p.complete(12));
        assert!(p.complete(11));
        assert_eq!(p.advance(), None, "10 still in flight");
        assert!(p.complete(10));
        assert_eq!(p.advance(), Some(13), "10..=12 done: next to read is 13");
        assert!(p.complete(14));
        assert!(p.complete(13));
        assert_eq!(p.advance(), Some(15));
        assert!(!p.complete(14), "a second ack changes nothing");
        assert_eq!(p.advance(), None);
    }

    #[test]
    fn the_tracker_keeps_partitions_apart_and_ignores_stale_acks() {
        let a = TopicPartition {
            topic: "t".into(),
            partition: 0,
        };
        let b = TopicPartition {
            topic: "t".into(),
            partition: 1,
        };
        let mut t = OffsetTracker::default();
        t.begin(&a, 0);
        t.begin(&b, 100);
        assert!(t.complete(&b, 100));
        let mut adv = t.advances();
        adv.sort();
        assert_eq!(adv, [(a.clone(), 0), (b.clone(), 101)]);
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.in_flight_in(std::slice::from_ref(&b)), 0);
        t.forget(&a);
        assert!(!t.complete(&a, 0));
    }

    proptest! {
        /// Whatever order work finishes in, the stored offset never passes an unfinished message
        /// and ends one past the last message once all are done.
        #[test]
        fn never_commits_past_unfinished_work(order in Just((0i64..60).collect::<Vec<_>>()).prop_shuffle()) {
            let mut p = PartitionOffsets::default();
            for o in 0..60 {
                p.begin(o);
            }
            let mut done = std::collections::BTreeSet::new();
            let mut last = 0;
            for o in order {
                p.complete(o);
                done.insert(o);
                if let Some(c) = p.advance() {
                    prop_assert!(c >= last, "offsets only move forward");
                    prop_assert!((0..c).all(|x| done.contains(&x)), "committed {c} past unfinished work");
                    last = c;
                }
            }
            prop_assert_eq!(p.committable(), Some(60));
        }
    }
}
