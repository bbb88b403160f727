//! When each request should be sent: closed loop (as soon as the last answer came) or open
//! loop at a fixed rate, where request k of a worker has an intended send time fixed in
//! advance and its latency is measured from it (coordinated-omission correction, as wrk2).
//!
//! Owns the arithmetic of intended times only; it never sleeps, sends or records.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Pace {
    /// Each worker sends its next request when the previous one is answered.
    Closed,
    /// The run as a whole sends `rate_per_second` requests a second, evenly spaced.
    Open { rate_per_second: u64 },
}

/// The intended send times of one worker in an open-loop run of `workers_total` workers:
/// the run's requests are evenly spaced at 1/rate, and worker `w` takes every
/// `workers_total`-th of them starting with the `w`-th.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenLoopSchedule {
    rate_per_second: u64,
    workers_total: u64,
    worker_index: u64,
}

impl OpenLoopSchedule {
    pub fn new(rate_per_second: u64, workers_total: u64, worker_index: u64) -> OpenLoopSchedule {
        assert!(rate_per_second > 0, "an open loop needs a rate above 0");
        assert!(worker_index < workers_total);
        OpenLoopSchedule {
            rate_per_second,
            workers_total,
            worker_index,
        }
    }

    /// Intended send time of this worker's request `k`, as an offset from the run's start.
    /// It depends on `k` alone, never on when earlier requests were answered.
    pub fn intended_offset(&self, k: u64) -> Duration {
        let slot = u128::from(self.worker_index) + u128::from(k) * u128::from(self.workers_total);
        let nanos = slot * 1_000_000_000 / u128::from(self.rate_per_second);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// How many of this worker's requests have an intended time before `offset`.
    pub fn due_before(&self, offset: Duration) -> u64 {
        // slot * 1e9 / rate < offset_ns  ⇔  slot < ceil(offset_ns * rate / 1e9)
        let slots = (offset.as_nanos() * u128::from(self.rate_per_second)).div_ceil(1_000_000_000);
        let first = u128::from(self.worker_index);
        if slots <= first {
            return 0;
        }
        let due = (slots - first).div_ceil(u128::from(self.workers_total));
        u64::try_from(due).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intended_times_are_evenly_spaced_across_workers() {
        // 1000/s over 4 workers: the run sends one request a millisecond; each worker every 4.
        let schedules: Vec<_> = (0..4).map(|w| OpenLoopSchedule::new(1000, 4, w)).collect();
        let mut all: Vec<Duration> = schedules
            .iter()
            .flat_map(|s| (0..250).map(|k| s.intended_offset(k)))
            .collect();
        all.sort();
        for (i, t) in all.iter().enumerate() {
            assert_eq!(*t, Duration::from_millis(i as u64));
        }
        assert_eq!(schedules[1].intended_offset(3), Duration::from_millis(13));
    }

    #[test]
    fn due_before_counts_every_intended_time_before_the_offset() {
        for (rate, workers) in [(1000, 4), (7, 3), (100_000, 50), (1, 1)] {
            for w in 0..workers {
                let s = OpenLoopSchedule::new(rate, workers, w);
                for ms in [0u64, 1, 2, 999, 1000, 1001, 3333] {
                    let offset = Duration::from_millis(ms);
                    let expected = (0..100_000u64)
                        .take_while(|&k| s.intended_offset(k) < offset)
                        .count() as u64;
                    assert_eq!(
                        s.due_before(offset),
                        expected,
                        "rate {rate} w {w} at {ms} ms"
                    );
                }
            }
        }
    }
}
