//! Entries as the network moves them, and the store interface the protocol reads and writes.
//!
//! Owns the [`EntryStore`] contract (last writer wins, nothing expired is applied or served)
//! and [`MemStore`], a plain in-memory implementation for tests and the simulator. It never
//! decides whom to tell: that is the [`crate::Node`]'s job.

use std::collections::BTreeMap;
use std::rc::Rc;

use hashbrown::HashMap;

use crate::sync::{bucket_of, is_settled, BucketDigest, HeldEntry, RecentEntries, SYNC_BUCKET_MS};
use crate::Version;

/// A value's bytes in the clear, on their way between a store and a peer: overwritten with
/// zeros when the last reference goes, so no plaintext is left in freed memory.
#[derive(PartialEq, Eq, Hash)]
pub struct Plaintext(Box<[u8]>);

impl Plaintext {
    /// A shared copy of `bytes`.
    pub fn shared(bytes: &[u8]) -> Rc<Plaintext> {
        Rc::new(Plaintext(bytes.into()))
    }
}

impl std::ops::Deref for Plaintext {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Plaintext {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut *self.0);
    }
}

impl std::fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Plaintext({} bytes)", self.0.len())
    }
}

/// One entry on its way between nodes. Key and value are shared, so pushing one entry to many
/// neighbours (or, in the simulator, to thousands of nodes) copies no bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub key: Rc<[u8]>,
    /// `None` is a tombstone: a delete, kept until the deleted value's expiry.
    pub value: Option<Rc<Plaintext>>,
    /// Absolute wall-clock milliseconds.
    pub expires_ms: u64,
    pub version: Version,
}

impl Entry {
    /// Bytes this entry takes on the wire (key, value, expiry, version, lengths).
    pub fn wire_bytes(&self) -> usize {
        self.key.len() + self.value.as_ref().map_or(0, |v| v.len()) + 8 + 16 + 8
    }
}

/// What became of an entry offered to a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Applied {
    /// Newer than what the store held (or it held nothing): now stored.
    Stored,
    /// The store holds the same or a newer version.
    Stale,
    /// Already expired on arrival.
    Expired,
    /// The store is full; the entry was not stored.
    Full,
}

/// The entries of one node, as the protocol sees them. The node reaches its store only
/// through [`crate::StoreRequest`]s; this is the synchronous store that answers them at once
/// (the simulator's compact store, [`MemStore`] in tests).
pub trait EntryStore {
    /// Stores `entry` if it is newer than what is held and not expired at `now_ms`.
    fn apply(&mut self, entry: &Entry, now_ms: u64) -> Applied;
    /// The live entry under `key`, tombstones included.
    fn get(&self, key: &[u8], now_ms: u64) -> Option<Entry>;
    /// Up to `max` live entries after `cursor` (in the store's own stable order), and the
    /// cursor to continue from, or `None` when the dump is complete.
    fn dump_chunk(&self, cursor: u64, max: usize, now_ms: u64) -> (Vec<Entry>, Option<u64>);
    /// Live entries held (tombstones included).
    fn live_len(&self, now_ms: u64) -> usize;
    /// Digests of the non-empty expiry buckets from `from_bucket` on, in bucket order
    /// (buckets of [`SYNC_BUCKET_MS`]; kept up to date as entries come and go, never by a scan),
    /// over the entries settled before `settled_before_ms` ([`is_settled`]; `u64::MAX`: all).
    /// Exact for any cutoff within [`crate::sync::SETTLE_WINDOW_MS`] of now.
    fn digests(&self, from_bucket: u64, settled_before_ms: u64) -> Vec<BucketDigest>;
    /// Stable hashes ([`Entry::stable_hash`]) of the settled entries in one bucket.
    fn bucket_hashes(&self, bucket: u64, settled_before_ms: u64) -> Vec<u64>;
    /// The live settled entries of one bucket, each with its stable hash.
    fn bucket_entries(&self, bucket: u64, now_ms: u64, settled_before_ms: u64)
        -> Vec<(u64, Entry)>;
    /// Forgets what has expired by `now_ms` (whole buckets at a time). Whoever owns the store
    /// calls it (a [`crate::LocalNode`] on every tick); a store with its own expiry timer may
    /// do nothing here.
    fn expire(&mut self, now_ms: u64);
}

/// One expiry bucket's digest and members (slot indices).
#[derive(Default, Debug)]
struct Bucket {
    count: u32,
    xor: u64,
    members: Vec<u32>,
}

/// A simple in-memory store: a map of keys to entries, with a slab order for dumps.
#[derive(Default, Debug)]
pub struct MemStore {
    /// Entries with their stable hashes.
    slots: Vec<Option<(Entry, u64)>>,
    buckets: BTreeMap<u64, Bucket>,
    by_key: HashMap<Rc<[u8]>, usize>,
    free: Vec<usize>,
    /// Young entries by slot, so digests can leave them out.
    recent: RecentEntries<usize>,
    /// Entries at most; `apply` answers `Full` past it.
    capacity: Option<usize>,
}

impl MemStore {
    pub fn new() -> Self {
        MemStore::default()
    }

    pub fn with_capacity_limit(max_entries: usize) -> Self {
        MemStore {
            capacity: Some(max_entries),
            ..MemStore::default()
        }
    }

    /// Drops entries expired at `now_ms`, a whole bucket at a time.
    fn drop_passed_buckets(&mut self, now_ms: u64) {
        let live_from = bucket_of(now_ms, SYNC_BUCKET_MS);
        let passed: Vec<u64> = self.buckets.range(..live_from).map(|(&b, _)| b).collect();
        for bucket in passed {
            let Some(members) = self.buckets.remove(&bucket) else {
                continue;
            };
            for at in members.members {
                if let Some((entry, _)) = self.slots[at as usize].take() {
                    self.by_key.remove(&entry.key);
                    self.free.push(at as usize);
                }
            }
        }
    }

    fn note_recent(&mut self, entry: &Entry, at: usize, now_ms: u64) {
        self.recent.note(entry.version, at, now_ms);
    }

    fn file(&mut self, at: usize, expires_ms: u64, hash: u64) {
        let bucket = self
            .buckets
            .entry(bucket_of(expires_ms, SYNC_BUCKET_MS))
            .or_default();
        bucket.count += 1;
        bucket.xor ^= hash;
        bucket.members.push(at as u32);
    }

    fn unfile(&mut self, at: usize, expires_ms: u64, hash: u64) {
        let key = bucket_of(expires_ms, SYNC_BUCKET_MS);
        let Some(bucket) = self.buckets.get_mut(&key) else {
            return;
        };
        bucket.count -= 1;
        bucket.xor ^= hash;
        if let Some(pos) = bucket.members.iter().position(|&m| m as usize == at) {
            bucket.members.swap_remove(pos);
        }
        if bucket.count == 0 {
            self.buckets.remove(&key);
        }
    }
}

impl EntryStore for MemStore {
    fn apply(&mut self, entry: &Entry, now_ms: u64) -> Applied {
        if entry.expires_ms <= now_ms {
            return Applied::Expired;
        }
        let hash = entry.stable_hash();
        if let Some(&at) = self.by_key.get(&entry.key) {
            let Some((held, held_hash)) = self.slots[at].clone() else {
                return Applied::Stale;
            };
            if held.version >= entry.version && held.expires_ms > now_ms {
                return Applied::Stale;
            }
            self.unfile(at, held.expires_ms, held_hash);
            self.slots[at] = Some((entry.clone(), hash));
            self.file(at, entry.expires_ms, hash);
            self.note_recent(entry, at, now_ms);
            return Applied::Stored;
        }
        if self.capacity.is_some_and(|max| self.by_key.len() >= max) {
            return Applied::Full;
        }
        let at = match self.free.pop() {
            Some(at) => {
                self.slots[at] = Some((entry.clone(), hash));
                at
            }
            None => {
                self.slots.push(Some((entry.clone(), hash)));
                self.slots.len() - 1
            }
        };
        self.by_key.insert(entry.key.clone(), at);
        self.file(at, entry.expires_ms, hash);
        self.note_recent(entry, at, now_ms);
        Applied::Stored
    }

    fn get(&self, key: &[u8], now_ms: u64) -> Option<Entry> {
        let at = *self.by_key.get(key)?;
        self.slots[at]
            .as_ref()
            .map(|(e, _)| e)
            .filter(|e| e.expires_ms > now_ms)
            .cloned()
    }

    fn dump_chunk(&self, cursor: u64, max: usize, now_ms: u64) -> (Vec<Entry>, Option<u64>) {
        let mut out = Vec::new();
        let mut at = cursor as usize;
        while at < self.slots.len() && out.len() < max {
            if let Some((entry, _)) = &self.slots[at] {
                if entry.expires_ms > now_ms {
                    out.push(entry.clone());
                }
            }
            at += 1;
        }
        let next = (at < self.slots.len()).then_some(at as u64);
        (out, next)
    }

    fn live_len(&self, now_ms: u64) -> usize {
        self.slots
            .iter()
            .flatten()
            .filter(|(e, _)| e.expires_ms > now_ms)
            .count()
    }

    fn digests(&self, from_bucket: u64, settled_before_ms: u64) -> Vec<BucketDigest> {
        let mut digests: Vec<BucketDigest> = self
            .buckets
            .range(from_bucket..)
            .map(|(&bucket, b)| BucketDigest {
                bucket,
                count: b.count,
                xor: b.xor,
            })
            .collect();
        self.recent.settle(&mut digests, settled_before_ms, |at| {
            let (entry, hash) = self.slots.get(at)?.as_ref()?;
            Some(HeldEntry {
                version: entry.version,
                bucket: bucket_of(entry.expires_ms, SYNC_BUCKET_MS),
                hash: *hash,
            })
        });
        digests
    }

    fn bucket_hashes(&self, bucket: u64, settled_before_ms: u64) -> Vec<u64> {
        self.buckets.get(&bucket).map_or_else(Vec::new, |b| {
            b.members
                .iter()
                .filter_map(|&at| self.slots[at as usize].as_ref())
                .filter(|(e, _)| is_settled(e.version, settled_before_ms))
                .map(|(_, h)| *h)
                .collect()
        })
    }

    fn expire(&mut self, now_ms: u64) {
        self.drop_passed_buckets(now_ms);
        self.recent.forget_old(now_ms);
    }

    fn bucket_entries(
        &self,
        bucket: u64,
        now_ms: u64,
        settled_before_ms: u64,
    ) -> Vec<(u64, Entry)> {
        self.buckets.get(&bucket).map_or_else(Vec::new, |b| {
            b.members
                .iter()
                .filter_map(|&at| self.slots[at as usize].as_ref())
                .filter(|(e, _)| e.expires_ms > now_ms && is_settled(e.version, settled_before_ms))
                .map(|(e, h)| (*h, e.clone()))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, clock: u64, expires_ms: u64) -> Entry {
        Entry {
            key: key.as_bytes().into(),
            value: Some(Plaintext::shared(b"v")),
            expires_ms,
            version: Version { clock, node: 1 },
        }
    }

    #[test]
    fn older_version_never_replaces_newer() {
        let mut store = MemStore::new();
        assert_eq!(store.apply(&entry("k", 5, 100), 0), Applied::Stored);
        assert_eq!(store.apply(&entry("k", 4, 200), 0), Applied::Stale);
        assert_eq!(store.apply(&entry("k", 5, 200), 0), Applied::Stale);
        assert_eq!(store.get(b"k", 0).unwrap().version.clock, 5);
        assert_eq!(store.apply(&entry("k", 6, 50), 0), Applied::Stored);
        assert_eq!(store.get(b"k", 0).unwrap().expires_ms, 50);
    }

    #[test]
    fn expired_entries_are_neither_applied_nor_served_nor_dumped() {
        let mut store = MemStore::new();
        assert_eq!(store.apply(&entry("old", 1, 10), 10), Applied::Expired);
        assert_eq!(store.apply(&entry("k", 1, 20), 10), Applied::Stored);
        assert!(store.get(b"k", 20).is_none());
        assert!(store.dump_chunk(0, 10, 20).0.is_empty());
        assert_eq!(store.live_len(19), 1);
    }

    #[test]
    fn dumps_come_in_bounded_chunks_that_cover_everything() {
        let mut store = MemStore::new();
        for i in 0..25 {
            store.apply(&entry(&format!("k{i}"), 1, 100), 0);
        }
        let mut cursor = Some(0);
        let mut seen = 0;
        while let Some(at) = cursor {
            let (chunk, next) = store.dump_chunk(at, 10, 0);
            assert!(chunk.len() <= 10);
            seen += chunk.len();
            cursor = next;
        }
        assert_eq!(seen, 25);
    }

    #[test]
    fn bucket_digests_follow_every_change_without_a_scan() {
        let mut store = MemStore::new();
        let bucket = |ms: u64| bucket_of(ms, SYNC_BUCKET_MS);
        store.apply(&entry("a", 1, 15_000), 0);
        store.apply(&entry("b", 1, 15_500), 0);
        store.apply(&entry("c", 1, 45_000), 0);
        let digests = store.digests(0, u64::MAX);
        assert_eq!(digests.len(), 2);
        assert_eq!(digests[0].bucket, bucket(15_000));
        assert_eq!(digests[0].count, 2);
        assert_eq!(
            digests[0].xor,
            entry("a", 1, 15_000).stable_hash() ^ entry("b", 1, 15_500).stable_hash()
        );
        // A newer version moves "a" to another bucket: both digests follow.
        store.apply(&entry("a", 2, 45_500), 0);
        let digests = store.digests(0, u64::MAX);
        assert_eq!(digests[0].count, 1);
        assert_eq!(digests[1].count, 2);
        assert_eq!(store.bucket_hashes(bucket(45_000), u64::MAX).len(), 2);
        assert_eq!(
            store.digests(bucket(45_000), u64::MAX).len(),
            1,
            "from a bucket on"
        );
        store.expire(30_000);
        assert_eq!(
            store.digests(0, u64::MAX).len(),
            1,
            "passed buckets dropped whole"
        );
        assert!(store.get(b"b", 0).is_none());
    }
}
