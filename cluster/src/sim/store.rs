//! The simulator's store: compact enough for ten thousand nodes each holding tens of thousands
//! of entries. Keys are write ids (4 bytes, little endian) and every value is the same shared
//! bytes, so an entry is its id, version, expiry and stable hash: about 30 bytes.
//!
//! Implements the same [`EntryStore`] contract as the real node's store; it never decides
//! anything about the network.

use std::collections::BTreeMap;
use std::rc::Rc;

use crate::entry::{Applied, Entry, EntryStore};
use crate::sync::{bucket_of, entry_hash, BucketDigest, SYNC_BUCKET_MS};
use crate::Version;

/// One entry, compactly. The node id's top bit marks a tombstone.
#[derive(Clone, Copy, Debug)]
struct Compact {
    clock: u64,
    node: u32,
    expires_ms: u32,
    hash: u64,
}

const TOMBSTONE_BIT: u32 = 1 << 31;

impl Compact {
    fn version(&self) -> Version {
        Version {
            clock: self.clock,
            node: u64::from(self.node & !TOMBSTONE_BIT),
        }
    }
}

#[derive(Default, Debug)]
struct Bucket {
    count: u32,
    xor: u64,
    members: Vec<u32>,
}

/// A simulated node's store, and which writes arrived since the simulator last looked.
pub struct SimStore {
    /// Ordered by write id, which also gives dumps a stable cursor.
    entries: BTreeMap<u32, Compact>,
    buckets: BTreeMap<u64, Bucket>,
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
            entries: BTreeMap::new(),
            buckets: BTreeMap::new(),
            value,
            arrivals: Vec::new(),
        }
    }

    pub fn write_id(key: &[u8]) -> Option<u32> {
        let bytes: [u8; 4] = key.try_into().ok()?;
        Some(u32::from_le_bytes(bytes))
    }

    fn entry_of(&self, id: u32, c: &Compact) -> Entry {
        Entry {
            key: Rc::from(id.to_le_bytes().as_slice()),
            value: (c.node & TOMBSTONE_BIT == 0).then(|| self.value.clone()),
            expires_ms: u64::from(c.expires_ms),
            version: c.version(),
        }
    }

    fn file(&mut self, id: u32, c: &Compact) {
        let bucket = self
            .buckets
            .entry(bucket_of(u64::from(c.expires_ms), SYNC_BUCKET_MS))
            .or_default();
        bucket.count += 1;
        bucket.xor ^= c.hash;
        bucket.members.push(id);
    }

    fn unfile(&mut self, id: u32, c: &Compact) {
        let key = bucket_of(u64::from(c.expires_ms), SYNC_BUCKET_MS);
        let Some(bucket) = self.buckets.get_mut(&key) else {
            return;
        };
        bucket.count -= 1;
        bucket.xor ^= c.hash;
        if let Some(pos) = bucket.members.iter().position(|&m| m == id) {
            bucket.members.swap_remove(pos);
        }
        if bucket.count == 0 {
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
        if let Some(held) = self.entries.get(&id).copied() {
            if held.version() >= entry.version && u64::from(held.expires_ms) > now_ms {
                return Applied::Stale;
            }
            self.unfile(id, &held);
        }
        // Hashed only once it is known to be stored: most arrivals in a busy tree are dupes.
        let tombstone = if entry.value.is_none() {
            TOMBSTONE_BIT
        } else {
            0
        };
        let compact = Compact {
            clock: entry.version.clock,
            node: node | tombstone,
            expires_ms,
            hash: entry_hash(&entry.key, entry.version),
        };
        self.entries.insert(id, compact);
        self.file(id, &compact);
        self.arrivals.push(id);
        Applied::Stored
    }

    fn get(&self, key: &[u8], now_ms: u64) -> Option<Entry> {
        let id = SimStore::write_id(key)?;
        let c = self.entries.get(&id)?;
        (u64::from(c.expires_ms) > now_ms).then(|| self.entry_of(id, c))
    }

    fn dump_chunk(&self, cursor: u64, max: usize, now_ms: u64) -> (Vec<Entry>, Option<u64>) {
        let Ok(from) = u32::try_from(cursor) else {
            return (Vec::new(), None);
        };
        let mut out = Vec::new();
        let mut next = None;
        for (&id, c) in self.entries.range(from..) {
            if out.len() >= max {
                next = Some(u64::from(id));
                break;
            }
            if u64::from(c.expires_ms) > now_ms {
                out.push(self.entry_of(id, c));
            }
        }
        (out, next)
    }

    fn live_len(&self, now_ms: u64) -> usize {
        self.entries
            .values()
            .filter(|c| u64::from(c.expires_ms) > now_ms)
            .count()
    }

    fn digests(&self, from_bucket: u64) -> Vec<BucketDigest> {
        self.buckets
            .range(from_bucket..)
            .map(|(&bucket, b)| BucketDigest {
                bucket,
                count: b.count,
                xor: b.xor,
            })
            .collect()
    }

    fn bucket_hashes(&self, bucket: u64) -> Vec<u64> {
        self.buckets.get(&bucket).map_or_else(Vec::new, |b| {
            b.members
                .iter()
                .filter_map(|id| self.entries.get(id).map(|c| c.hash))
                .collect()
        })
    }

    fn bucket_entries(&self, bucket: u64, now_ms: u64) -> Vec<(u64, Entry)> {
        self.buckets.get(&bucket).map_or_else(Vec::new, |b| {
            b.members
                .iter()
                .filter_map(|&id| Some((id, self.entries.get(&id)?)))
                .filter(|(_, c)| u64::from(c.expires_ms) > now_ms)
                .map(|(id, c)| (c.hash, self.entry_of(id, c)))
                .collect()
        })
    }

    fn expire(&mut self, now_ms: u64) {
        let live_from = bucket_of(now_ms, SYNC_BUCKET_MS);
        let passed: Vec<u64> = self.buckets.range(..live_from).map(|(&b, _)| b).collect();
        for bucket in passed {
            if let Some(members) = self.buckets.remove(&bucket) {
                for id in members.members {
                    self.entries.remove(&id);
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
