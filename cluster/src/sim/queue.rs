//! The simulator's event queue: a timing wheel of one slot per simulated millisecond, with a
//! heap for events beyond the wheel's reach.
//!
//! Owns only the order of events: by time, then by the order they were scheduled (exactly what
//! a heap on (time, sequence) gives, at a fraction of the cost: most events land within a few
//! hundred milliseconds, so pushing and popping one is a `Vec` push and a `VecDeque` pop).
//! It never looks inside an event.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// Slots in the wheel: events up to this many milliseconds ahead go straight into a slot.
const WHEEL_MS: u64 = 1 << 16;

pub struct EventQueue<E> {
    /// Slot `t % WHEEL_MS` holds the events due at `t`, for `now <= t < now + WHEEL_MS`.
    wheel: Vec<Vec<E>>,
    /// Events due after the wheel's reach, by (time, sequence); they move into the wheel,
    /// in that order, as soon as it reaches them, so before any event scheduled later.
    far: BinaryHeap<Reverse<(u64, u64, E)>>,
    /// The events due now, in order, taken from the current slot.
    due: VecDeque<E>,
    now: u64,
    in_wheel: usize,
    seq: u64,
}

impl<E: Ord> Default for EventQueue<E> {
    fn default() -> Self {
        EventQueue {
            wheel: (0..WHEEL_MS).map(|_| Vec::new()).collect(),
            far: BinaryHeap::new(),
            due: VecDeque::new(),
            now: 0,
            in_wheel: 0,
            seq: 0,
        }
    }
}

impl<E: Ord> EventQueue<E> {
    /// Schedules `event` at `at_ms` (an earlier time than the queue's present counts as now).
    pub fn push(&mut self, at_ms: u64, event: E) {
        let at = at_ms.max(self.now);
        if at - self.now < WHEEL_MS {
            self.wheel[(at % WHEEL_MS) as usize].push(event);
            self.in_wheel += 1;
        } else {
            self.seq += 1;
            self.far.push(Reverse((at, self.seq, event)));
        }
    }

    /// Events not yet popped.
    pub fn len(&self) -> usize {
        self.due.len() + self.in_wheel + self.far.len()
    }

    /// The next event due at or before `until_ms`, with its time; `None` when there is none,
    /// and then the queue's present is `until_ms`.
    pub fn pop_until(&mut self, until_ms: u64) -> Option<(u64, E)> {
        loop {
            if let Some(event) = self.due.pop_front() {
                return Some((self.now, event));
            }
            let slot = &mut self.wheel[(self.now % WHEEL_MS) as usize];
            if !slot.is_empty() {
                self.in_wheel -= slot.len();
                // Take the slot's buffer (O(1)): a slot keeps no memory once it has passed.
                self.due = VecDeque::from(std::mem::take(slot));
                continue;
            }
            if self.now >= until_ms {
                return None;
            }
            self.now = if self.in_wheel == 0 {
                // Nothing in the wheel: jump to the next far event (or to `until_ms`).
                let next_far = self.far.peek().map_or(u64::MAX, |Reverse((at, _, _))| *at);
                next_far.min(until_ms)
            } else {
                self.now + 1
            };
            self.bring_near();
        }
    }

    /// Moves far events that the wheel now reaches into their slots.
    fn bring_near(&mut self) {
        while let Some(Reverse((at, _, _))) = self.far.peek() {
            if at.saturating_sub(self.now) >= WHEEL_MS {
                break;
            }
            let Some(Reverse((at, _, event))) = self.far.pop() else {
                break;
            };
            self.wheel[(at % WHEEL_MS) as usize].push(event);
            self.in_wheel += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The wheel pops exactly what a heap on (time, sequence) pops, also when events are
        /// pushed while popping and when they lie beyond the wheel's reach.
        #[test]
        fn pops_in_the_order_of_a_heap_on_time_and_sequence(
            ops in proptest::collection::vec((0u64..3 * WHEEL_MS, 0u8..4), 1..400)
        ) {
            let mut wheel = EventQueue::default();
            let mut heap = BinaryHeap::new();
            let mut seq = 0u64;
            let mut now = 0u64;
            let mut popped = (Vec::new(), Vec::new());
            for (i, &(ahead, pops)) in ops.iter().enumerate() {
                // Mostly near events, some far ones.
                let ahead = if i % 5 == 0 { ahead } else { ahead % 300 };
                wheel.push(now + ahead, i);
                seq += 1;
                heap.push(Reverse((now + ahead, seq, i)));
                for _ in 0..pops {
                    let until = now + 100;
                    let from_wheel = wheel.pop_until(until);
                    let from_heap = match heap.peek() {
                        Some(Reverse((at, _, _))) if *at <= until => {
                            heap.pop().map(|Reverse((at, _, e))| (at, e))
                        }
                        _ => None,
                    };
                    prop_assert_eq!(from_wheel, from_heap);
                    now = match from_heap {
                        Some((at, _)) => at,
                        None => until,
                    };
                    popped.0.extend(from_wheel.map(|(_, e)| e));
                }
            }
            while let Some(event) = wheel.pop_until(u64::MAX) {
                popped.1.push(event);
            }
            let rest: Vec<(u64, usize)> =
                std::iter::from_fn(|| heap.pop().map(|Reverse((at, _, e))| (at, e))).collect();
            prop_assert_eq!(popped.1, rest);
            prop_assert_eq!(wheel.len(), 0);
        }
    }
}
