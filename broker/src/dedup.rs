//! Idempotent-producer state of a partition: the one implementation of the
//! sequence rules, used by the single-node path (`topic.rs`), by the Raft
//! leader's sequencer and by the partition state machine (`raft/sm.rs`).
//!
//! A producer is known by its id; per producer the table keeps its epoch,
//! the sequence of its last record and a window of its last
//! [`DEDUP_WINDOW`] batches, each with an outcome `T` (a base offset once
//! applied; a pending result on the leader). [`ProducerTable::check`]
//! classifies an incoming batch (new, a retry of a remembered batch, fenced
//! or out of order); [`ProducerTable::remember`] records one. Remembering
//! is idempotent (a batch already in the window changes nothing) and
//! monotonic (an older epoch changes nothing), so entries may be replayed
//! over a newer image, as a restarted state machine does.
//!
//! Producer state is bounded: every producer carries the time it was last
//! seen (`last_seen_ms`, a clock the caller supplies), and
//! [`ProducerTable::expire`] forgets producers idle for too long and, past
//! a maximum count, the least recently seen (Kafka's
//! `producer.id.expiration.ms`). A producer forgotten is unknown again: its
//! next batch starts it afresh, as after a restart.
//!
//! Pure data: no I/O, no Raft, no async.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use strata_proto::batch::ProducerInfo;

/// Batches remembered per producer for deduplicating retries. A client may
/// resend any batch it still has in flight, so this must be at least the
/// client's in-flight limit per partition (8); Kafka pairs 5 with 5.
pub const DEDUP_WINDOW: usize = 16;

/// Why an idempotent producer's batch is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    /// A newer epoch of this producer exists.
    #[error("producer {producer_id} epoch {epoch} is fenced by epoch {current}")]
    Fenced {
        /// Producer.
        producer_id: u64,
        /// Epoch used.
        epoch: u16,
        /// Current epoch.
        current: u16,
    },
    /// A gap, or a stale batch no longer in the window.
    #[error("producer {producer_id}: out-of-order sequence {got}, expected {expected}")]
    OutOfOrder {
        /// Producer.
        producer_id: u64,
        /// Expected next sequence.
        expected: u32,
        /// Received.
        got: u32,
    },
}

/// One remembered batch of a producer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentBatch<T> {
    /// Sequence of its first record.
    pub base_sequence: u32,
    /// Records in it.
    pub record_count: u32,
    /// What a retry of it is answered with.
    pub outcome: T,
}

/// One producer's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerState<T> {
    /// Current epoch.
    pub epoch: u16,
    /// Sequence of its last record.
    pub last_sequence: u32,
    /// Its last batches, oldest first, at most [`DEDUP_WINDOW`].
    pub recent: VecDeque<RecentBatch<T>>,
    /// When it was last seen, by the clock of whoever keeps the table (a
    /// replicated clock in a state machine, wall time on a single node).
    pub last_seen_ms: u64,
}

/// How long producers are kept, and how many.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expiry {
    /// A producer not seen for this long is forgotten.
    pub idle_ms: u64,
    /// At most this many producers are kept; the least recently seen (then
    /// the lowest id) go first.
    pub producers_max: u32,
}

/// The producers of one partition, by producer id. Ordered, so that a
/// serialized table (in a snapshot) is the same bytes on every replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProducerTable<T> {
    producers: BTreeMap<u64, ProducerState<T>>,
}

impl<T> ProducerState<T> {
    /// The remembered batch with this first sequence and record count.
    fn recent_batch(&self, base_sequence: u32, record_count: u32) -> Option<&RecentBatch<T>> {
        self.recent
            .iter()
            .find(|r| r.base_sequence == base_sequence && r.record_count == record_count)
    }
}

impl<T> Default for ProducerTable<T> {
    fn default() -> Self {
        ProducerTable {
            producers: BTreeMap::new(),
        }
    }
}

impl<T> ProducerTable<T> {
    /// One producer's state.
    pub fn get(&self, producer_id: u64) -> Option<&ProducerState<T>> {
        self.producers.get(&producer_id)
    }

    /// Every producer, by id.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &ProducerState<T>)> {
        self.producers.iter().map(|(id, s)| (*id, s))
    }

    /// The same table with every outcome mapped by `f`.
    pub fn map<U>(&self, mut f: impl FnMut(&T) -> U) -> ProducerTable<U> {
        let producers = self
            .producers
            .iter()
            .map(|(id, s)| {
                let recent = s
                    .recent
                    .iter()
                    .map(|r| RecentBatch {
                        base_sequence: r.base_sequence,
                        record_count: r.record_count,
                        outcome: f(&r.outcome),
                    })
                    .collect();
                let state = ProducerState {
                    epoch: s.epoch,
                    last_sequence: s.last_sequence,
                    recent,
                    last_seen_ms: s.last_seen_ms,
                };
                (*id, state)
            })
            .collect();
        ProducerTable { producers }
    }

    /// Classifies a batch of `record_count` records from producer `p`:
    /// `Ok(None)` if it is new and in order, `Ok(Some(outcome))` if it
    /// retries a remembered batch, an error if its epoch is fenced or its
    /// sequence does not follow (a new epoch must start at 0). An unknown
    /// producer may start at any sequence (its state may have been lost
    /// to a restart; documented).
    pub fn check(&self, p: ProducerInfo, record_count: u32) -> Result<Option<&T>, SequenceError> {
        let Some(state) = self.producers.get(&p.producer_id) else {
            return Ok(None);
        };
        if p.producer_epoch < state.epoch {
            return Err(SequenceError::Fenced {
                producer_id: p.producer_id,
                epoch: p.producer_epoch,
                current: state.epoch,
            });
        }
        if p.producer_epoch > state.epoch {
            return match p.base_sequence {
                0 => Ok(None),
                got => Err(SequenceError::OutOfOrder {
                    producer_id: p.producer_id,
                    expected: 0,
                    got,
                }),
            };
        }
        if let Some(r) = state.recent_batch(p.base_sequence, record_count) {
            return Ok(Some(&r.outcome));
        }
        let expected = state.last_sequence.wrapping_add(1);
        if p.base_sequence != expected {
            return Err(SequenceError::OutOfOrder {
                producer_id: p.producer_id,
                expected,
                got: p.base_sequence,
            });
        }
        Ok(None)
    }

    /// Number of producers kept.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// Whether no producer is kept.
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Puts a producer's state as it is (loading an older image).
    pub fn insert(&mut self, producer_id: u64, state: ProducerState<T>) {
        self.producers.insert(producer_id, state);
    }

    /// Forgets one producer.
    pub fn forget(&mut self, producer_id: u64) {
        self.producers.remove(&producer_id);
    }

    /// Whether some producer is due to be forgotten at `now_ms` under
    /// `expiry` (idle too long, or too many).
    pub fn expiry_due(&self, now_ms: u64, expiry: Expiry) -> bool {
        self.producers.len() > expiry.producers_max as usize
            || self
                .producers
                .values()
                .any(|s| s.last_seen_ms.saturating_add(expiry.idle_ms) <= now_ms)
    }

    /// Forgets the producers not seen since `now_ms - expiry.idle_ms` and
    /// seen before `seen_before_ms` (a producer seen at or after it may
    /// have been active just now: see the state machine's clock), then,
    /// while more than `expiry.producers_max` remain, the least recently
    /// seen (ties: the lowest id). Returns the ids forgotten, in id order.
    /// Deterministic: the same table and arguments forget the same ids.
    pub fn expire(&mut self, now_ms: u64, seen_before_ms: u64, expiry: Expiry) -> Vec<u64> {
        let mut gone: Vec<u64> = self
            .producers
            .iter()
            .filter(|(_, s)| {
                s.last_seen_ms < seen_before_ms
                    && s.last_seen_ms.saturating_add(expiry.idle_ms) <= now_ms
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            self.producers.remove(id);
        }
        let max = expiry.producers_max as usize;
        if self.producers.len() > max {
            let mut by_age: Vec<(u64, u64)> = self
                .producers
                .iter()
                .map(|(id, s)| (s.last_seen_ms, *id))
                .collect();
            by_age.sort_unstable();
            let excess = self.producers.len() - max;
            for (_, id) in by_age.into_iter().take(excess) {
                self.producers.remove(&id);
                gone.push(id);
            }
            gone.sort_unstable();
        }
        gone
    }

    /// Sets every producer's last-seen time to `now_ms` (state carried over
    /// from before producers had one).
    pub fn stamp_all(&mut self, now_ms: u64) {
        for s in self.producers.values_mut() {
            s.last_seen_ms = now_ms;
        }
    }

    /// Records a batch of producer `p` seen at `now_ms`: a newer epoch
    /// resets the window; an older epoch, or a batch already in the window,
    /// changes nothing but the time; the window keeps the last
    /// [`DEDUP_WINDOW`] batches.
    pub fn remember(&mut self, p: ProducerInfo, record_count: u32, outcome: T, now_ms: u64) {
        assert!(
            record_count > 0,
            "a verified batch holds at least one record"
        );
        let state = self
            .producers
            .entry(p.producer_id)
            .or_insert(ProducerState {
                epoch: p.producer_epoch,
                last_sequence: 0,
                recent: VecDeque::new(),
                last_seen_ms: now_ms,
            });
        state.last_seen_ms = state.last_seen_ms.max(now_ms);
        if p.producer_epoch < state.epoch {
            return;
        }
        if p.producer_epoch > state.epoch {
            state.epoch = p.producer_epoch;
            state.recent.clear();
        } else if state.recent_batch(p.base_sequence, record_count).is_some() {
            return;
        }
        state.last_sequence = p.base_sequence.wrapping_add(record_count - 1);
        if state.recent.len() == DEDUP_WINDOW {
            state.recent.pop_front();
        }
        state.recent.push_back(RecentBatch {
            base_sequence: p.base_sequence,
            record_count,
            outcome,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(epoch: u16, base_sequence: u32) -> ProducerInfo {
        ProducerInfo {
            producer_id: 7,
            producer_epoch: epoch,
            base_sequence,
        }
    }

    #[test]
    fn retries_in_the_window_answer_the_original_outcome() {
        let mut t = ProducerTable::default();
        assert_eq!(t.check(p(0, 0), 3), Ok(None));
        t.remember(p(0, 0), 3, 100u64, 0);
        t.remember(p(0, 3), 2, 103, 0);
        assert_eq!(t.check(p(0, 0), 3), Ok(Some(&100)));
        assert_eq!(t.check(p(0, 3), 2), Ok(Some(&103)));
        assert_eq!(t.check(p(0, 5), 1), Ok(None));
        assert_eq!(
            t.check(p(0, 9), 1),
            Err(SequenceError::OutOfOrder {
                producer_id: 7,
                expected: 5,
                got: 9
            })
        );
    }

    #[test]
    fn epochs_fence_and_restart_the_sequence() {
        let mut t = ProducerTable::default();
        t.remember(p(1, 0), 1, 0u64, 0);
        assert!(matches!(
            t.check(p(0, 1), 1),
            Err(SequenceError::Fenced { current: 1, .. })
        ));
        assert!(matches!(
            t.check(p(2, 4), 1),
            Err(SequenceError::OutOfOrder { expected: 0, .. })
        ));
        assert_eq!(t.check(p(2, 0), 1), Ok(None));
        t.remember(p(2, 0), 1, 1, 0);
        assert_eq!(t.get(7).map(|s| (s.epoch, s.recent.len())), Some((2, 1)));
    }

    #[test]
    fn remembering_is_idempotent_and_monotonic() {
        let mut t = ProducerTable::default();
        t.remember(p(1, 0), 2, 0u64, 0);
        let before = t.clone();
        t.remember(p(1, 0), 2, 0, 0);
        t.remember(p(0, 5), 1, 9, 0);
        assert_eq!(t, before);
    }

    #[test]
    fn the_window_keeps_the_last_batches() {
        let mut t = ProducerTable::default();
        for i in 0..(DEDUP_WINDOW as u32 + 4) {
            t.remember(p(0, i), 1, u64::from(i), 0);
        }
        let s = t.get(7).map(|s| s.recent.len());
        assert_eq!(s, Some(DEDUP_WINDOW));
        assert!(matches!(
            t.check(p(0, 0), 1),
            Err(SequenceError::OutOfOrder { .. })
        ));
        assert_eq!(t.check(p(0, 19), 1), Ok(Some(&19)));
    }

    /// The table's serialized form is the snapshot format of version 2
    /// (epoch, last sequence, then (base sequence, record count, base
    /// offset) per batch, then the last-seen time): version 1 (without the
    /// time) still loads through `raft::sm`'s legacy image.
    #[test]
    fn serialized_form_matches_the_snapshot_format() {
        let mut t = ProducerTable::default();
        t.remember(p(3, 10), 2, 42u64, 5_000);
        type Producer = (u16, u32, VecDeque<(u32, u32, u64)>, u64);
        let wire: BTreeMap<u64, Producer> =
            BTreeMap::from([(7, (3, 11, VecDeque::from([(10, 2, 42)]), 5_000))]);
        assert_eq!(
            postcard::to_stdvec(&t).ok(),
            postcard::to_stdvec(&wire).ok()
        );
    }

    fn q(id: u64) -> ProducerInfo {
        ProducerInfo {
            producer_id: id,
            producer_epoch: 0,
            base_sequence: 0,
        }
    }

    const DAY: Expiry = Expiry {
        idle_ms: 1_000,
        producers_max: 3,
    };

    #[test]
    fn idle_producers_are_forgotten_and_come_back_as_new() {
        let mut t = ProducerTable::default();
        t.remember(q(1), 1, 0u64, 100);
        t.remember(q(2), 1, 1, 900);
        assert!(!t.expiry_due(1_099, DAY));
        assert!(t.expiry_due(1_100, DAY));
        assert_eq!(t.expire(1_100, u64::MAX, DAY), vec![1]);
        assert!(t.get(1).is_none() && t.get(2).is_some());
        // Forgotten: any sequence starts it again.
        assert_eq!(
            t.check(
                ProducerInfo {
                    producer_id: 1,
                    producer_epoch: 0,
                    base_sequence: 77
                },
                1
            ),
            Ok(None)
        );
    }

    #[test]
    fn a_producer_seen_at_or_after_the_cutoff_is_kept() {
        let mut t = ProducerTable::default();
        t.remember(q(1), 1, 0u64, 100);
        // Seen at the clock's current value: it may have been active just
        // now, whatever the idle time says.
        assert_eq!(t.expire(5_000, 100, DAY), Vec::<u64>::new());
        assert_eq!(t.expire(5_000, 101, DAY), vec![1]);
    }

    #[test]
    fn past_the_maximum_the_least_recently_seen_go_first() {
        let mut t = ProducerTable::default();
        for (id, at) in [(5, 30), (1, 10), (9, 10), (2, 40), (3, 20)] {
            t.remember(q(id), 1, 0u64, at);
        }
        assert!(t.expiry_due(0, DAY));
        // 1 and 9 are the oldest (10), then 3 (20): 1 and 9 go.
        assert_eq!(t.expire(0, u64::MAX, DAY), vec![1, 9]);
        assert_eq!(t.len(), 3);
        assert!(!t.expiry_due(0, DAY));
    }
}
