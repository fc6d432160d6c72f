//! The timer heap: timers ordered by deadline, ties broken by insertion order.
//!
//! Cancelled timers are not searched for on cancel (that would be O(n));
//! they stay in the heap until they reach its top, or until they make up more
//! than half of it, when the heap is rebuilt without them. A loop that
//! schedules and cancels a million timers therefore holds at most about twice
//! its live timers.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use pyo3::prelude::*;

use crate::handles::{TimerHandle, TimerStats};

/// Below this many timers, compaction is never worth the rebuild.
const MIN_HEAP_FOR_COMPACTION: usize = 100;

struct Entry {
    /// The deadline as an integer that sorts like the float (see
    /// `deadline_key`): the heap compares integers, not floats.
    key: u64,
    seq: u64,
    timer: Py<TimerHandle>,
}

/// Maps a deadline to a `u64` with the same order (IEEE 754 total order),
/// computed once per timer instead of on every comparison.
fn deadline_key(when: f64) -> u64 {
    let bits = when.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | 1 << 63
    }
}

/// The inverse of `deadline_key`.
fn deadline_of(key: u64) -> f64 {
    let bits = if key >> 63 == 1 {
        key & !(1 << 63)
    } else {
        !key
    };
    f64::from_bits(bits)
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest timer.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.key, other.seq).cmp(&(self.key, self.seq))
    }
}

pub struct TimerHeap {
    heap: BinaryHeap<Entry>,
    next_seq: u64,
    stats: Arc<TimerStats>,
}

impl TimerHeap {
    pub fn new(stats: Arc<TimerStats>) -> Self {
        Self {
            heap: BinaryHeap::new(),
            next_seq: 0,
            stats,
        }
    }

    pub fn push(&mut self, when: f64, timer: Py<TimerHandle>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        // asyncio accepts a NaN deadline and, comparisons with NaN being
        // false, runs such a timer at once; order it first to do the same.
        let when = if when.is_nan() {
            f64::NEG_INFINITY
        } else {
            when
        };
        self.heap.push(Entry {
            key: deadline_key(when),
            seq,
            timer,
        });
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The earliest deadline, if any timer is scheduled.
    pub fn next_deadline(&self) -> Option<f64> {
        self.heap.peek().map(|entry| deadline_of(entry.key))
    }

    /// Pops every timer due at or before `now`, cancelled ones included (the
    /// caller skips those). Returned timers are no longer scheduled.
    pub fn pop_due(&mut self, now: f64, mut due: impl FnMut(Py<TimerHandle>)) {
        // Keys order like their deadlines, so `<=` on keys is `<=` on times
        // (now is never NaN).
        let now = deadline_key(now);
        while self.heap.peek().is_some_and(|entry| entry.key <= now) {
            let entry = self.heap.pop().expect("peeked entry exists");
            self.forget(&entry.timer);
            due(entry.timer);
        }
    }

    /// Drops cancelled timers from the top of the heap, and rebuilds the heap
    /// when cancelled timers are the majority. Removed timers are moved into
    /// `garbage` so the caller can drop them once no lock is held (dropping a
    /// Python object may run arbitrary code).
    pub fn discard_cancelled(&mut self, garbage: &mut Vec<Py<TimerHandle>>) {
        let cancelled = self.stats.cancelled_in_heap.load(Ordering::Relaxed);
        if self.heap.len() > MIN_HEAP_FOR_COMPACTION && cancelled * 2 > self.heap.len() {
            let entries = std::mem::take(&mut self.heap).into_vec();
            let mut live = Vec::with_capacity(entries.len() - cancelled.min(entries.len()));
            for entry in entries {
                if entry.timer.get().is_cancelled() {
                    self.forget(&entry.timer);
                    garbage.push(entry.timer);
                } else {
                    live.push(entry);
                }
            }
            self.heap = BinaryHeap::from(live);
            return;
        }
        while self
            .heap
            .peek()
            .is_some_and(|entry| entry.timer.get().is_cancelled())
        {
            let entry = self.heap.pop().expect("peeked entry exists");
            self.forget(&entry.timer);
            garbage.push(entry.timer);
        }
    }

    /// Empties the heap (loop closing), handing the timers to the caller.
    pub fn drain(&mut self, garbage: &mut Vec<Py<TimerHandle>>) {
        for entry in std::mem::take(&mut self.heap) {
            self.forget(&entry.timer);
            garbage.push(entry.timer);
        }
    }

    pub fn visit(&self, mut f: impl FnMut(&Py<TimerHandle>)) {
        for entry in self.heap.iter() {
            f(&entry.timer);
        }
    }

    /// Bookkeeping for a timer leaving the heap.
    fn forget(&self, timer: &Py<TimerHandle>) {
        let timer = timer.get();
        if timer.is_cancelled() {
            self.stats.cancelled_in_heap.fetch_sub(1, Ordering::Relaxed);
        }
        timer.mark_unscheduled();
    }
}

#[cfg(test)]
mod tests {
    use super::{deadline_key, deadline_of};

    #[test]
    fn deadline_keys_sort_like_deadlines_and_round_trip() {
        let deadlines = [
            f64::NEG_INFINITY,
            -1e300,
            -2.5,
            -1e-300,
            -0.0,
            0.0,
            1e-300,
            1.0,
            1.0 + f64::EPSILON,
            12345.678,
            1e300,
            f64::INFINITY,
        ];
        for pair in deadlines.windows(2) {
            assert!(deadline_key(pair[0]) < deadline_key(pair[1]), "{pair:?}");
        }
        for when in deadlines {
            assert_eq!(deadline_of(deadline_key(when)).to_bits(), when.to_bits());
        }
    }
}
