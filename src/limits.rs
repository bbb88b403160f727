//! Every limit of the store in one place, with its unit in its name and a documented default.
//! Owns: `StoreLimits` and the defaults derived from the machine (the memory budget).
//! Never touches: the store itself; enforcement lives where the limit is checked.

use std::fmt;

/// Default longest key, in bytes (memcached allows 250, REPRAM's HTTP keys are path segments).
pub const KEY_BYTES_MAX_DEFAULT: usize = 1024;
/// Hard ceiling for `key_bytes_max`: record headers store a key length in 15 bits.
pub const KEY_BYTES_CEILING: usize = (1 << 15) - 1;
/// Default largest value, in bytes (memcached's default item size).
pub const VALUE_BYTES_MAX_DEFAULT: usize = 1024 * 1024;
/// Hard ceiling for `value_bytes_max`: one AES-GCM seal must stay far below its 64 GiB limit,
/// and a frame must stay addressable with a `u32` length prefix.
pub const VALUE_BYTES_CEILING: usize = 512 * 1024 * 1024;
/// Default shortest TTL, in milliseconds.
pub const TTL_MS_MIN_DEFAULT: u64 = 1_000;
/// Default longest TTL, in milliseconds (24 h).
pub const TTL_MS_MAX_DEFAULT: u64 = 24 * 60 * 60 * 1_000;
/// Default length of one crypto-shredding epoch, in milliseconds: values that expire within the
/// same epoch share a data key, destroyed once the epoch has passed.
pub const EPOCH_MS_DEFAULT: u64 = 60_000;
/// Granularity of the expiry wheel's fine slots, in milliseconds: memory of an expired entry is
/// reclaimed at most this long after its expiry (plus the driver's tick interval).
pub const EXPIRY_SLOT_MS: u64 = 10;
/// How far ahead of our clock a replicated version may claim to be, in milliseconds. A peer with a
/// clock further ahead would drag every later local version with it, so such writes are refused.
pub const VERSION_SKEW_MS_MAX_DEFAULT: u64 = 60_000;
/// Longest crypto-shredding epoch: the expiry wheel's fine ring spans two epochs of 10 ms slots.
pub const EPOCH_MS_CEILING: u64 = 10 * 60 * 1_000;
/// Longest TTL a store can be configured for (a week).
pub const TTL_MS_CEILING: u64 = 7 * 24 * 60 * 60 * 1_000;
/// Largest replica clock skew a store can be configured to accept (an hour).
pub const VERSION_SKEW_MS_CEILING: u64 = 60 * 60 * 1_000;
/// Most epochs an expiry may lie ahead: bounds the key chain walk to derive an epoch key and the
/// wheel's coarse ring (the defaults use 1,443).
pub const LIVE_EPOCHS_MAX: u64 = 20_000;
/// Default share of the machine's memory that the stores of one node may use, in percent.
pub const MEMORY_BUDGET_PERCENT_DEFAULT: u64 = 50;
/// Memory budget used when the machine's memory cannot be read, in bytes.
pub const MEMORY_BUDGET_BYTES_FALLBACK: usize = 1024 * 1024 * 1024;
/// Default work units one `Store::tick` may do: one unit is one entry reclaimed, moved between
/// wheel levels or one empty slot stepped over. In a running node with a million entries out
/// of cache, a unit costs a few microseconds (slices of 2,048 held clients up about 10 ms
/// each): at 256, a million keys expiring together are reclaimed in 0.4 s while other
/// clients' p99 stays within 1.4 times its level (`benches/expiry-storm.sh`).
pub const TICK_WORK_MAX_DEFAULT: usize = 256;

/// The limits one store enforces. Every field has a default (`StoreLimits::default`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreLimits {
    pub key_bytes_max: usize,
    pub value_bytes_max: usize,
    pub ttl_ms_min: u64,
    pub ttl_ms_max: u64,
    /// Bytes of entries (sealed records plus their index overhead) one store may hold.
    pub memory_budget_bytes: usize,
    pub epoch_ms: u64,
    pub version_skew_ms_max: u64,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            key_bytes_max: KEY_BYTES_MAX_DEFAULT,
            value_bytes_max: VALUE_BYTES_MAX_DEFAULT,
            ttl_ms_min: TTL_MS_MIN_DEFAULT,
            ttl_ms_max: TTL_MS_MAX_DEFAULT,
            memory_budget_bytes: default_memory_budget_bytes(),
            epoch_ms: EPOCH_MS_DEFAULT,
            version_skew_ms_max: VERSION_SKEW_MS_MAX_DEFAULT,
        }
    }
}

/// A limit set that cannot work, with the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid store limits: {0}")]
pub struct InvalidLimits(pub String);

impl StoreLimits {
    /// Checks that the limits are usable together, so a misconfiguration fails at start-up
    /// instead of on the first request.
    pub fn validate(&self) -> Result<(), InvalidLimits> {
        let fail = |why: String| Err(InvalidLimits(why));
        if self.key_bytes_max > KEY_BYTES_CEILING {
            return fail(format!(
                "key_bytes_max {} is above the ceiling {KEY_BYTES_CEILING}",
                self.key_bytes_max
            ));
        }
        if self.value_bytes_max > VALUE_BYTES_CEILING {
            return fail(format!(
                "value_bytes_max {} is above the ceiling {VALUE_BYTES_CEILING}",
                self.value_bytes_max
            ));
        }
        if self.ttl_ms_min == 0 || self.ttl_ms_min > self.ttl_ms_max {
            return fail(format!(
                "ttl range {}..={} ms is empty or starts at zero",
                self.ttl_ms_min, self.ttl_ms_max
            ));
        }
        if self.epoch_ms < EXPIRY_SLOT_MS
            || self.epoch_ms % EXPIRY_SLOT_MS != 0
            || self.epoch_ms > EPOCH_MS_CEILING
        {
            return fail(format!(
                "epoch_ms {} must be a multiple of the expiry slot ({EXPIRY_SLOT_MS} ms) \
                 between {EXPIRY_SLOT_MS} and {EPOCH_MS_CEILING}",
                self.epoch_ms
            ));
        }
        if self.ttl_ms_max > TTL_MS_CEILING || self.version_skew_ms_max > VERSION_SKEW_MS_CEILING {
            return fail(format!(
                "ttl_ms_max {} or version_skew_ms_max {} is above its ceiling \
                 ({TTL_MS_CEILING} / {VERSION_SKEW_MS_CEILING} ms)",
                self.ttl_ms_max, self.version_skew_ms_max
            ));
        }
        // The key ring and the wheel's coarse ring span every epoch an expiry can fall in.
        let epochs = self.live_window_epochs();
        if epochs > LIVE_EPOCHS_MAX {
            return fail(format!(
                "(ttl_ms_max + version_skew_ms_max) / epoch_ms = {epochs} epochs; \
                 at most {LIVE_EPOCHS_MAX} are supported: raise epoch_ms"
            ));
        }
        Ok(())
    }
}

impl StoreLimits {
    /// How many epochs past the current one an expiry can fall in: the longest TTL plus the
    /// clock skew allowed to replicas, plus the partial epochs at either end.
    pub fn live_window_epochs(&self) -> u64 {
        (self.ttl_ms_max + self.version_skew_ms_max) / self.epoch_ms.max(1) + 2
    }
}

impl fmt::Display for StoreLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key ≤ {} B, value ≤ {} B, ttl {}..={} ms, memory budget {} B, epoch {} ms",
            self.key_bytes_max,
            self.value_bytes_max,
            self.ttl_ms_min,
            self.ttl_ms_max,
            self.memory_budget_bytes,
            self.epoch_ms
        )
    }
}

/// Half of the machine's memory (`MemTotal` in `/proc/meminfo`), or 1 GiB when it cannot be read.
/// The node divides this among its shards.
pub fn default_memory_budget_bytes() -> usize {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| parse_mem_total_bytes(&text))
        .map(|total| total / 100 * MEMORY_BUDGET_PERCENT_DEFAULT)
        .and_then(|bytes| usize::try_from(bytes).ok())
        .unwrap_or(MEMORY_BUDGET_BYTES_FALLBACK)
}

fn parse_mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line.split_whitespace().skip(1);
    let number: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => number.checked_mul(1024),
        None => Some(number),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        StoreLimits::default()
            .validate()
            .expect("defaults must validate");
    }

    #[test]
    fn mem_total_is_read_in_kibibytes() {
        let text = "MemFree:  10 kB\nMemTotal:       24576000 kB\n";
        assert_eq!(parse_mem_total_bytes(text), Some(24_576_000 * 1024));
        assert_eq!(parse_mem_total_bytes("nothing here"), None);
    }

    #[test]
    fn epoch_must_be_a_multiple_of_the_expiry_slot() {
        let limits = StoreLimits {
            epoch_ms: EXPIRY_SLOT_MS * 3 + 1,
            ..StoreLimits::default()
        };
        assert!(limits.validate().is_err());
    }

    #[test]
    fn limits_that_would_blow_up_the_index_are_refused() {
        let base = StoreLimits::default();
        for bad in [
            StoreLimits {
                version_skew_ms_max: u64::MAX,
                ..base.clone()
            },
            StoreLimits {
                epoch_ms: 86_400_000,
                ..base.clone()
            },
            StoreLimits {
                epoch_ms: u64::MAX / 10 * 10,
                ..base.clone()
            },
            StoreLimits {
                ttl_ms_max: u64::MAX,
                ..base.clone()
            },
            StoreLimits {
                epoch_ms: 10,
                ttl_ms_max: 1_000_000,
                ..base.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?} validated");
        }
        assert_eq!(base.live_window_epochs(), 1_443);
    }

    #[test]
    fn empty_ttl_range_is_refused() {
        let limits = StoreLimits {
            ttl_ms_min: 5_000,
            ttl_ms_max: 1_000,
            ..StoreLimits::default()
        };
        assert!(limits.validate().is_err());
    }
}
