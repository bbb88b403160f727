//! The pieces of an xor-filter sync round: stable entry hashes, per-round salting, per-bucket
//! digests and binary fuse filters in a form that crosses the wire and is validated on arrival.
//!
//! Owns the arithmetic of sync. It never decides with whom or when to sync (the `Node` does)
//! and never reads a store beyond the slices it is handed.

use std::collections::VecDeque;

use xorf::{BinaryFuse8, Filter};

use crate::entry::Entry;
use crate::Version;

/// Width of an expiry bucket; the whole network uses the same.
pub const SYNC_BUCKET_MS: u64 = 10_000;
/// Largest filter (fingerprint bytes) a node builds or accepts from a peer.
pub const FILTER_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest number of bucket digests one message carries.
pub const DIGESTS_PER_MESSAGE_MAX: usize = 8_192;

/// A stable hash of (key, version), the same on every machine and build (xxh3), stored with
/// each entry so digests update incrementally.
pub fn entry_hash(key: &[u8], version: Version) -> u64 {
    // One-shot hashing of the key seeded with the version: much cheaper than streaming three
    // pieces, and still a function of all of (key, clock, node).
    let seed = version.clock ^ version.node.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15;
    xxhash_rust::xxh3::xxh3_64_with_seed(key, seed)
}

impl Entry {
    pub fn stable_hash(&self) -> u64 {
        entry_hash(&self.key, self.version)
    }
}

/// The fingerprint of a stable hash in one round: remixed with the round's seed, so a false
/// positive in one round (a key the filter wrongly claims) is not the same in the next.
pub fn salted(hash: u64, round_seed: u64) -> u64 {
    // splitmix64's finaliser: a bijection, so distinct hashes stay distinct.
    let mut z = hash ^ round_seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The expiry bucket of an expiry time.
pub fn bucket_of(expires_ms: u64, bucket_ms: u64) -> u64 {
    expires_ms / bucket_ms.max(1)
}

/// What a store holds in one expiry bucket: how many entries and the xor of their hashes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BucketDigest {
    pub bucket: u64,
    pub count: u32,
    pub xor: u64,
}

/// How far back a round's settle cutoff may lie and still be answered exactly: a store keeps
/// the entries with versions this young aside (see [`RecentEntries`]).
pub const SETTLE_WINDOW_MS: u64 = 10_000;

/// Whether an entry of `version` counts in a round that only compares entries settled before
/// `settled_before_ms` (older writes; younger ones are still on their way by push).
pub fn is_settled(version: Version, settled_before_ms: u64) -> bool {
    version.physical_ms() < settled_before_ms
}

/// The entries a store took in whose versions are younger than [`SETTLE_WINDOW_MS`], so that it
/// can give its digests as of a round's settle cutoff without a scan: the digests of everything
/// it holds, less the held entries younger than the cutoff.
///
/// `H` names an entry in the store (a slot, an index). A note keeps only the handle and the
/// second of the version: the store says what the handle holds now when asked, so entries
/// replaced or expired since need no bookkeeping here, and a note costs 8 bytes (with a `u32`
/// handle), which matters in a burst of writes: every write of the last 10 s has one.
#[derive(Debug)]
pub struct RecentEntries<H> {
    /// (whole seconds of the version's milliseconds, handle), roughly in arrival order.
    items: VecDeque<(u32, H)>,
}

impl<H> Default for RecentEntries<H> {
    fn default() -> Self {
        RecentEntries {
            items: VecDeque::new(),
        }
    }
}

/// A held entry as [`RecentEntries::settle`] needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldEntry {
    pub version: Version,
    pub bucket: u64,
    pub hash: u64,
}

/// The seconds of a version's milliseconds: rounded down, and capped (versions are never
/// that far ahead: stores refuse them beyond a small skew).
fn seconds_of(ms: u64) -> u32 {
    u32::try_from(ms / 1_000).unwrap_or(u32::MAX)
}

/// The latest millisecond a note of `seconds` may stand for.
fn last_ms_of(seconds: u32) -> u64 {
    u64::from(seconds) * 1_000 + 999
}

impl<H: Copy + Ord> RecentEntries<H> {
    /// Notes an entry just stored, if its version is young enough to matter.
    pub fn note(&mut self, version: Version, handle: H, now_ms: u64) {
        let ms = version.physical_ms();
        if ms.saturating_add(SETTLE_WINDOW_MS) > now_ms {
            self.items.push_back((seconds_of(ms), handle));
        }
    }

    /// Entries noted and not yet forgotten.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Forgets entries noted long enough ago that no cutoff can reach them. Works from the
    /// front only: an entry that arrived late stays a little longer, which costs nothing.
    pub fn forget_old(&mut self, now_ms: u64) {
        while let Some(&(seconds, _)) = self.items.front() {
            if last_ms_of(seconds).saturating_add(SETTLE_WINDOW_MS) > now_ms {
                break;
            }
            self.items.pop_front();
        }
    }

    /// Takes the held entries younger than `settled_before_ms` out of `digests` (sorted by
    /// bucket), each once. `held(handle)` says what the handle holds now, if anything. Buckets
    /// left empty go.
    pub fn settle(
        &self,
        digests: &mut Vec<BucketDigest>,
        settled_before_ms: u64,
        held: impl Fn(H) -> Option<HeldEntry>,
    ) {
        let mut young: Vec<H> = self
            .items
            .iter()
            .filter(|&&(seconds, _)| last_ms_of(seconds) >= settled_before_ms)
            .map(|&(_, handle)| handle)
            .collect();
        if young.is_empty() {
            return;
        }
        young.sort_unstable();
        young.dedup();
        for handle in young {
            let Some(entry) = held(handle) else {
                continue;
            };
            // A handle noted young may hold an older entry by now (its slot reused by a
            // replica of an old write): that one is settled and stays in the digests.
            if is_settled(entry.version, settled_before_ms) {
                continue;
            }
            if let Ok(at) = digests.binary_search_by_key(&entry.bucket, |d| d.bucket) {
                digests[at].count = digests[at].count.saturating_sub(1);
                digests[at].xor ^= entry.hash;
            }
        }
        digests.retain(|d| d.count > 0);
    }
}

/// One number standing for a list of bucket digests: equal lists give equal summaries.
pub fn summary_of(digests: &[BucketDigest]) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for d in digests.iter().filter(|d| d.count > 0) {
        hasher.update(&d.bucket.to_le_bytes());
        hasher.update(&d.count.to_le_bytes());
        hasher.update(&d.xor.to_le_bytes());
    }
    hasher.digest()
}

/// A binary fuse filter as it travels: its descriptor and fingerprints, or nothing for an
/// empty bucket.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FilterData {
    Empty,
    Fuse8 {
        seed: u64,
        segment_length: u32,
        segment_length_mask: u32,
        segment_count_length: u32,
        fingerprints: Vec<u8>,
    },
}

/// A filter ready to be queried: validated, so a query never reads outside it.
pub enum CheckedFilter {
    Empty,
    Fuse8(BinaryFuse8),
}

impl CheckedFilter {
    pub fn contains(&self, fingerprint: u64) -> bool {
        match self {
            CheckedFilter::Empty => false,
            CheckedFilter::Fuse8(filter) => filter.contains(&fingerprint),
        }
    }
}

impl FilterData {
    /// Builds the filter of `hashes` salted with `round_seed` (deduplicated first, as the
    /// construction requires distinct keys). `None` when it would be over the size limit.
    pub fn build(hashes: &[u64], round_seed: u64) -> Option<FilterData> {
        let mut keys: Vec<u64> = hashes.iter().map(|&h| salted(h, round_seed)).collect();
        keys.sort_unstable();
        keys.dedup();
        if keys.is_empty() {
            return Some(FilterData::Empty);
        }
        let filter = BinaryFuse8::try_from(&keys).ok()?;
        if filter.fingerprints.len() > FILTER_BYTES_MAX {
            return None;
        }
        Some(FilterData::Fuse8 {
            seed: filter.descriptor.seed,
            segment_length: filter.descriptor.segment_length,
            segment_length_mask: filter.descriptor.segment_length_mask,
            segment_count_length: filter.descriptor.segment_count_length,
            fingerprints: filter.fingerprints.into_vec(),
        })
    }

    pub fn wire_bytes(&self) -> usize {
        match self {
            FilterData::Empty => 1,
            FilterData::Fuse8 { fingerprints, .. } => 1 + 20 + fingerprints.len(),
        }
    }

    /// Checks a filter a peer sent before anything queries it: the descriptor must describe
    /// the fingerprints it came with (a query reads up to `segment_count_length + 2 ×
    /// segment_length` bytes), within the size limit.
    pub fn check(self) -> Option<CheckedFilter> {
        match self {
            FilterData::Empty => Some(CheckedFilter::Empty),
            FilterData::Fuse8 {
                seed,
                segment_length,
                segment_length_mask,
                segment_count_length,
                fingerprints,
            } => {
                let sane = fingerprints.len() <= FILTER_BYTES_MAX
                    && segment_length.is_power_of_two()
                    && segment_length_mask == segment_length - 1
                    && segment_count_length > 0
                    && segment_count_length % segment_length == 0
                    && (segment_count_length as u64 + 2 * segment_length as u64)
                        <= fingerprints.len() as u64;
                if !sane {
                    return None;
                }
                let filter = BinaryFuse8 {
                    descriptor: xorf::Descriptor {
                        seed,
                        segment_length,
                        segment_length_mask,
                        segment_count_length,
                    },
                    fingerprints: fingerprints.into_boxed_slice(),
                };
                Some(CheckedFilter::Fuse8(filter))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(version_ms: u64, bucket: u64, hash: u64) -> HeldEntry {
        HeldEntry {
            version: Version::new(version_ms, 0, 1),
            bucket,
            hash,
        }
    }

    #[test]
    fn settle_leaves_out_young_held_entries_once_and_keeps_settled_ones() {
        // Slot 0 holds a young entry (noted twice), slot 1 a young entry since removed, slot 2
        // was noted young but now holds a replica of an old write.
        let mut recent = RecentEntries::default();
        let now = 100_000;
        recent.note(Version::new(now - 500, 0, 1), 0u32, now);
        recent.note(Version::new(now - 400, 0, 1), 0u32, now);
        recent.note(Version::new(now - 300, 0, 1), 1u32, now);
        recent.note(Version::new(now - 200, 0, 1), 2u32, now);
        let slots = [
            Some(held(now - 400, 7, 0b0011)),
            None,
            Some(held(now - 60_000, 7, 0b0100)),
        ];
        let mut digests = vec![
            BucketDigest {
                bucket: 7,
                count: 3,
                xor: 0b0011 ^ 0b0100 ^ 0b1000,
            },
            BucketDigest {
                bucket: 9,
                count: 1,
                xor: 0b0011,
            },
        ];
        recent.settle(&mut digests, now - 1_000, |at: u32| slots[at as usize]);
        assert_eq!(
            digests,
            vec![
                BucketDigest {
                    bucket: 7,
                    count: 2,
                    xor: 0b0100 ^ 0b1000,
                },
                BucketDigest {
                    bucket: 9,
                    count: 1,
                    xor: 0b0011,
                },
            ]
        );
    }

    #[test]
    fn settle_counts_an_entry_exactly_at_the_cutoff_as_young() {
        let mut recent = RecentEntries::default();
        recent.note(Version::new(5_000, 0, 1), 0u32, 5_000);
        let mut digests = vec![BucketDigest {
            bucket: 1,
            count: 1,
            xor: 9,
        }];
        recent.settle(&mut digests, 5_001, |_| Some(held(5_000, 1, 9)));
        assert_eq!(digests.len(), 1, "settled before the cutoff: stays");
        recent.settle(&mut digests, 5_000, |_| Some(held(5_000, 1, 9)));
        assert!(digests.is_empty(), "at the cutoff: young, taken out");
    }

    #[test]
    fn recent_entries_are_noted_only_while_young_and_forgotten_after_the_window() {
        let mut recent = RecentEntries::default();
        let now = 50_000;
        recent.note(Version::new(now - SETTLE_WINDOW_MS, 0, 1), 0u32, now);
        assert!(recent.is_empty(), "already past the window");
        recent.note(Version::new(now, 0, 1), 1u32, now);
        recent.note(Version::new(now + 2_000, 0, 1), 2u32, now);
        assert_eq!(recent.len(), 2);
        recent.forget_old(now + SETTLE_WINDOW_MS - 1);
        assert_eq!(recent.len(), 2, "the first is still young enough to matter");
        // The note keeps whole seconds, so it may stay up to a second longer, never less.
        recent.forget_old(now + SETTLE_WINDOW_MS + 1_000);
        assert_eq!(recent.len(), 1);
        recent.forget_old(now + 2_000 + SETTLE_WINDOW_MS + 1_000);
        assert!(recent.is_empty());
    }

    #[test]
    fn a_filter_never_misses_what_it_was_built_from() {
        let hashes: Vec<u64> = (0..5_000u64)
            .map(|i| entry_hash(&i.to_le_bytes(), Version::default()))
            .collect();
        let filter = FilterData::build(&hashes, 42).unwrap().check().unwrap();
        assert!(hashes.iter().all(|&h| filter.contains(salted(h, 42))));
        let others = (5_000..105_000u64)
            .map(|i| entry_hash(&i.to_le_bytes(), Version::default()))
            .filter(|&h| filter.contains(salted(h, 42)))
            .count();
        assert!(
            others < 1_000,
            "false positives {others} of 100000 (expected about 0.4%)"
        );
    }

    #[test]
    fn salting_changes_which_keys_are_false_positives() {
        let hashes: Vec<u64> = (0..2_000u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let others: Vec<u64> = (2_000..50_000u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let false_positives = |seed| {
            let filter = FilterData::build(&hashes, seed).unwrap().check().unwrap();
            others
                .iter()
                .copied()
                .filter(|&h| filter.contains(salted(h, seed)))
                .collect::<Vec<_>>()
        };
        let (a, b) = (false_positives(1), false_positives(2));
        assert!(!a.is_empty());
        let repeated = a.iter().filter(|h| b.contains(h)).count();
        assert!(
            repeated * 10 < a.len(),
            "{repeated} of {} false positives repeat",
            a.len()
        );
    }

    #[test]
    fn duplicate_hashes_still_build_a_filter() {
        let filter = FilterData::build(&[7, 7, 7, 9], 3)
            .unwrap()
            .check()
            .unwrap();
        assert!(filter.contains(salted(7, 3)) && filter.contains(salted(9, 3)));
    }

    #[test]
    fn a_filter_whose_descriptor_lies_is_refused() {
        let Some(FilterData::Fuse8 {
            seed,
            segment_length,
            segment_length_mask,
            segment_count_length,
            fingerprints,
        }) = FilterData::build(&[1, 2, 3, 4, 5], 1)
        else {
            panic!("a fuse filter")
        };
        let lie = |count: u32, fps: Vec<u8>| FilterData::Fuse8 {
            seed,
            segment_length,
            segment_length_mask,
            segment_count_length: count,
            fingerprints: fps,
        };
        assert!(lie(segment_count_length, fingerprints.clone())
            .check()
            .is_some());
        assert!(lie(segment_count_length * 1_000, fingerprints.clone())
            .check()
            .is_none());
        assert!(lie(segment_count_length, fingerprints[..4].to_vec())
            .check()
            .is_none());
        assert!(lie(0, fingerprints).check().is_none());
        let huge = FilterData::Fuse8 {
            seed,
            segment_length: 1 << 31,
            segment_length_mask: (1 << 31) - 1,
            segment_count_length: 1 << 31,
            fingerprints: vec![0; 16],
        };
        assert!(huge.check().is_none());
    }

    #[test]
    fn summaries_tell_different_digest_lists_apart() {
        let a = [BucketDigest {
            bucket: 1,
            count: 2,
            xor: 3,
        }];
        let b = [BucketDigest {
            bucket: 1,
            count: 2,
            xor: 4,
        }];
        assert_ne!(summary_of(&a), summary_of(&b));
        let with_empty = [
            a[0],
            BucketDigest {
                bucket: 9,
                count: 0,
                xor: 0,
            },
        ];
        assert_eq!(
            summary_of(&a),
            summary_of(&with_empty),
            "empty buckets do not count"
        );
    }
}
