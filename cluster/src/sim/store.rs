//! The simulator's store: compact enough for ten thousand nodes each holding tens of thousands
//! of entries. Keys are write ids (4 bytes, little endian) and every value is the same shared
//! bytes, so an entry is its id, version and expiry: 20 bytes (its stable hash is recomputed
//! when needed, a few nanoseconds for a 4-byte key).
//!
//! Implements the same [`EntryStore`] contract as the real node's store; it never decides
//! anything about the network.

use std::collections::BTreeMap;
use std::rc::Rc;

use hashbrown::HashMap;

use crate::entry::{Applied, Entry, EntryStore};
use crate::sync::{bucket_of, entry_hash, BucketDigest, SYNC_BUCKET_MS};
use crate::Version;

/// One entry, compactly: 4-byte fields only, so it packs into 20 bytes. The node id's top bit
/// marks a tombstone; the clock is split in two halves.
#[derive(Clone, Copy, Debug)]
struct Compact {
    id: u32,
    node: u32,
    clock_high: u32,
    clock_low: u32,
    expires_ms: u32,
}

const TOMBSTONE_BIT: u32 = 1 << 31;

impl Compact {
    fn version(&self) -> Version {
        Version {
            clock: (u64::from(self.clock_high) << 32) | u64::from(self.clock_low),
            node: u64::from(self.node & !TOMBSTONE_BIT),
        }
    }

    fn hash(&self) -> u64 {
        entry_hash(&self.id.to_le_bytes(), self.version())
    }
}

/// One expiry bucket: its digest and its entries, stored inline so that a sync round reads
/// a bucket as one contiguous slice.
#[derive(Default, Debug)]
struct Bucket {
    xor: u64,
    members: Vec<Compact>,
}

/// A simulated node's store, and which writes arrived since the simulator last looked.
pub struct SimStore {
    /// Write id → (bucket, position in its members).
    index: HashMap<u32, (u32, u32)>,
    buckets: BTreeMap<u32, Bucket>,
    value: Rc<[u8]>,
    pub(super) arrivals: Vec<u32>,
}

impl Default for SimStore {
    fn default() -> Self {
        SimStore::new(Rc::from([0x76u8; 16].as_slice()))
    }
}

impl SimStore {
    /// A store whose values are all `value` (shared, never copied).
    pub fn new(value: Rc<[u8]>) -> Self {
        SimStore {
            index: HashMap::new(),
            buckets: BTreeMap::new(),
            value,
            arrivals: Vec::new(),
        }
    }

    pub fn write_id(key: &[u8]) -> Option<u32> {
        let bytes: [u8; 4] = key.try_into().ok()?;
        Some(u32::from_le_bytes(bytes))
    }

    fn entry_of(&self, c: &Compact) -> Entry {
        Entry {
            key: Rc::from(c.id.to_le_bytes().as_slice()),
            value: (c.node & TOMBSTONE_BIT == 0).then(|| self.value.clone()),
            expires_ms: u64::from(c.expires_ms),
            version: c.version(),
        }
    }

    fn held(&self, id: u32) -> Option<&Compact> {
        let &(bucket, at) = self.index.get(&id)?;
        self.buckets.get(&bucket)?.members.get(at as usize)
    }

    fn bucket_key(expires_ms: u32) -> u32 {
        bucket_of(u64::from(expires_ms), SYNC_BUCKET_MS) as u32
    }

    fn file(&mut self, c: Compact) {
        let key = SimStore::bucket_key(c.expires_ms);
        let bucket = self.buckets.entry(key).or_default();
        bucket.xor ^= c.hash();
        bucket.members.push(c);
        self.index
            .insert(c.id, (key, bucket.members.len() as u32 - 1));
    }

    fn unfile(&mut self, id: u32) {
        let Some((key, at)) = self.index.remove(&id) else {
            return;
        };
        let Some(bucket) = self.buckets.get_mut(&key) else {
            return;
        };
        let removed = bucket.members.swap_remove(at as usize);
        bucket.xor ^= removed.hash();
        if let Some(moved) = bucket.members.get(at as usize) {
            self.index.insert(moved.id, (key, at));
        }
        if bucket.members.is_empty() {
            self.buckets.remove(&key);
        }
    }
}

impl EntryStore for SimStore {
    fn apply(&mut self, entry: &Entry, now_ms: u64) -> Applied {
        if entry.expires_ms <= now_ms {
            return Applied::Expired;
        }
        // Only simulator entries fit: a 4-byte write id, times and node ids within 32 bits.
        let (Some(id), Ok(expires_ms), Ok(node)) = (
            SimStore::write_id(&entry.key),
            u32::try_from(entry.expires_ms),
            u32::try_from(entry.version.node),
        ) else {
            return Applied::Stale;
        };
        if node & TOMBSTONE_BIT != 0 {
            return Applied::Stale;
        }
        if let Some(held) = self.held(id) {
            if held.version() >= entry.version && u64::from(held.expires_ms) > now_ms {
                return Applied::Stale;
            }
            self.unfile(id);
        }
        let tombstone = if entry.value.is_none() {
            TOMBSTONE_BIT
        } else {
            0
        };
        self.file(Compact {
            id,
            node: node | tombstone,
            clock_high: (entry.version.clock >> 32) as u32,
            clock_low: entry.version.clock as u32,
            expires_ms,
        });
        self.arrivals.push(id);
        Applied::Stored
    }

    fn get(&self, key: &[u8], now_ms: u64) -> Option<Entry> {
        let c = self.held(SimStore::write_id(key)?)?;
        (u64::from(c.expires_ms) > now_ms).then(|| self.entry_of(c))
    }

    /// The cursor is (bucket << 32 | position): best effort while entries move, which the
    /// sync after a dump repairs.
    fn dump_chunk(&self, cursor: u64, max: usize, now_ms: u64) -> (Vec<Entry>, Option<u64>) {
        let (first, mut at) = ((cursor >> 32) as u32, (cursor & 0xffff_ffff) as usize);
        let mut out = Vec::new();
        for (&key, bucket) in self.buckets.range(first..) {
            if key != first {
                at = 0;
            }
            while at < bucket.members.len() {
                if out.len() >= max {
                    return (out, Some((u64::from(key) << 32) | at as u64));
                }
                let c = &bucket.members[at];
                if u64::from(c.expires_ms) > now_ms {
                    out.push(self.entry_of(c));
                }
                at += 1;
            }
        }
        (out, None)
    }

    fn live_len(&self, now_ms: u64) -> usize {
        self.buckets
            .values()
            .flat_map(|b| b.members.iter())
            .filter(|c| u64::from(c.expires_ms) > now_ms)
            .count()
    }

    fn digests(&self, from_bucket: u64) -> Vec<BucketDigest> {
        let from = u32::try_from(from_bucket).unwrap_or(u32::MAX);
        self.buckets
            .range(from..)
            .map(|(&bucket, b)| BucketDigest {
                bucket: u64::from(bucket),
                count: b.members.len() as u32,
                xor: b.xor,
            })
            .collect()
    }

    fn bucket_hashes(&self, bucket: u64) -> Vec<u64> {
        let Ok(key) = u32::try_from(bucket) else {
            return Vec::new();
        };
        self.buckets
            .get(&key)
            .map_or_else(Vec::new, |b| b.members.iter().map(Compact::hash).collect())
    }

    fn bucket_entries(&self, bucket: u64, now_ms: u64) -> Vec<(u64, Entry)> {
        let Ok(key) = u32::try_from(bucket) else {
            return Vec::new();
        };
        self.buckets.get(&key).map_or_else(Vec::new, |b| {
            b.members
                .iter()
                .filter(|c| u64::from(c.expires_ms) > now_ms)
                .map(|c| (c.hash(), self.entry_of(c)))
                .collect()
        })
    }

    fn expire(&mut self, now_ms: u64) {
        let live_from = bucket_of(now_ms, SYNC_BUCKET_MS) as u32;
        let passed: Vec<u32> = self.buckets.range(..live_from).map(|(&b, _)| b).collect();
        for key in passed {
            if let Some(bucket) = self.buckets.remove(&key) {
                for c in bucket.members {
                    self.index.remove(&c.id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::MemStore;

    fn entry(id: u32, clock: u64, expires_ms: u64) -> Entry {
        Entry {
            key: Rc::from(id.to_le_bytes().as_slice()),
            value: Some(Rc::from([0x76u8; 16].as_slice())),
            expires_ms,
            version: Version { clock, node: 3 },
        }
    }

    #[test]
    fn the_compact_store_answers_as_the_plain_one_does() {
        let mut compact = SimStore::default();
        let mut plain = MemStore::new();
        let ops = [
            (1, 5, 25_000),
            (2, 5, 31_000),
            (1, 4, 90_000),
            (1, 6, 45_000),
            (3, 1, 12_000),
        ];
        for (id, clock, expires) in ops {
            let e = entry(id, clock, expires);
            assert_eq!(
                compact.apply(&e, 10_000),
                plain.apply(&e, 10_000),
                "apply {id}@{clock}"
            );
        }
        for id in 1..=4u32 {
            assert_eq!(
                compact.get(&id.to_le_bytes(), 20_000),
                plain.get(&id.to_le_bytes(), 20_000)
            );
        }
        assert_eq!(compact.digests(0), plain.digests(0));
        compact.expire(30_000);
        plain.expire(30_000);
        assert_eq!(compact.digests(0), plain.digests(0));
        assert_eq!(compact.live_len(30_000), plain.live_len(30_000));
        let (chunk, next) = compact.dump_chunk(0, 1, 30_000);
        assert_eq!(chunk.len(), 1);
        assert!(next.is_some());
    }
}
