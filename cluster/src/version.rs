//! Versions of entries: a hybrid logical clock (physical milliseconds, a logical counter, the
//! node id), so writes order consistently across nodes and within one millisecond.
//! Owns: `Version`, `HybridClock`. Never reads the wall clock: the caller passes `now`.

use std::fmt;

/// Bits of the packed clock that hold the logical counter; the rest hold milliseconds.
const LOGICAL_BITS: u32 = 16;

/// One write's version. Ordered by clock (milliseconds, then logical counter), then node id, so
/// two writes in the same millisecond on two nodes still order the same way everywhere.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// `physical_ms << 16 | logical`.
    pub clock: u64,
    pub node: u64,
}

impl Version {
    pub const fn new(physical_ms: u64, logical: u16, node: u64) -> Self {
        Self {
            clock: (physical_ms << LOGICAL_BITS) | logical as u64,
            node,
        }
    }

    /// Wall-clock milliseconds at which the version was made (for a local write: its creation).
    pub const fn physical_ms(self) -> u64 {
        self.clock >> LOGICAL_BITS
    }

    pub const fn logical(self) -> u16 {
        (self.clock & ((1 << LOGICAL_BITS) - 1)) as u16
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "v{}.{}@{:x}",
            self.physical_ms(),
            self.logical(),
            self.node
        )
    }
}

/// A hybrid logical clock for one node (or one shard of it, all sharing the node id).
///
/// Each stamp is greater than every stamp before it and every version observed, and stays close
/// to the wall clock: when the wall clock is ahead, the stamp is the wall clock with logical 0;
/// otherwise the logical counter grows (carrying into the milliseconds if it overflows).
#[derive(Clone, Debug)]
pub struct HybridClock {
    node: u64,
    last: u64,
}

impl HybridClock {
    pub fn new(node: u64) -> Self {
        Self { node, last: 0 }
    }

    pub fn node(&self) -> u64 {
        self.node
    }

    /// A new version for a local write at wall-clock `now_ms`.
    pub fn stamp(&mut self, now_ms: u64) -> Version {
        let wall = now_ms << LOGICAL_BITS;
        let next = self.last.saturating_add(1).max(wall);
        debug_assert!(next > self.last, "clock went backwards");
        self.last = next;
        Version {
            clock: next,
            node: self.node,
        }
    }

    /// Takes note of a version made elsewhere, so the next local stamp is newer than it.
    pub fn observe(&mut self, version: Version) {
        self.last = self.last.max(version.clock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_in_one_millisecond_still_increase() {
        let mut clock = HybridClock::new(7);
        let a = clock.stamp(1_000);
        let b = clock.stamp(1_000);
        assert!(b > a);
        assert_eq!(a.physical_ms(), 1_000);
        assert_eq!(b.physical_ms(), 1_000);
        assert_eq!(b.logical(), a.logical() + 1);
    }

    #[test]
    fn stamp_follows_the_wall_clock_when_it_is_ahead() {
        let mut clock = HybridClock::new(1);
        clock.stamp(1_000);
        let v = clock.stamp(2_000);
        assert_eq!((v.physical_ms(), v.logical()), (2_000, 0));
    }

    #[test]
    fn stamp_never_goes_backwards_when_the_wall_clock_does() {
        let mut clock = HybridClock::new(1);
        let a = clock.stamp(5_000);
        let b = clock.stamp(4_000);
        assert!(b > a);
    }

    #[test]
    fn observed_version_is_exceeded_by_the_next_stamp() {
        let mut clock = HybridClock::new(1);
        let remote = Version::new(9_000, 3, 2);
        clock.observe(remote);
        let v = clock.stamp(1_000);
        assert!(v > remote);
    }

    #[test]
    fn logical_overflow_carries_into_milliseconds() {
        let mut clock = HybridClock::new(1);
        clock.observe(Version::new(1_000, u16::MAX, 0));
        let v = clock.stamp(1_000);
        assert_eq!((v.physical_ms(), v.logical()), (1_001, 0));
    }

    #[test]
    fn equal_clocks_order_by_node() {
        assert!(Version::new(5, 1, 2) > Version::new(5, 1, 1));
        assert!(Version::new(5, 2, 0) > Version::new(5, 1, 9));
    }
}
