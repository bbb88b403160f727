//! What the peer protocol asks of one shard's store: per-bucket digests kept up to date on
//! every change, the stable hashes of a bucket's entries, the entries a peer's filters lack, a
//! replicated entry, one entry for a pull, and dump chunks in slab order.
//!
//! Owns the store's side of sync. It never decides whom to sync with (the cluster core does)
//! and never keeps plaintext: a value leaves here only opened into an entry being sent, in a
//! buffer that is wiped when dropped.

use std::collections::BTreeMap;
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;

use repram_cluster::entry::Plaintext;
use repram_cluster::sync::{
    bucket_of, entry_hash, is_settled, salted, BucketDigest, CheckedFilter, HeldEntry,
    RecentEntries, SYNC_BUCKET_MS,
};
use repram_cluster::{Entry, Version};
use zeroize::Zeroizing;

use super::record::SealedRecord;
use super::{Applied, ReplicaEntry, Store, StoreError};

/// A page of keys asked for: live keys starting with `prefix`, sorting strictly after
/// `after`, `limit` at most.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyQuery {
    pub prefix: Vec<u8>,
    pub after: Option<Vec<u8>>,
    pub limit: usize,
}

/// The smallest keys found so far (a max-heap of `limit` at most), and whether any was left
/// out.
#[derive(Debug, Default)]
pub struct KeyHeap {
    pub keys: std::collections::BinaryHeap<Vec<u8>>,
    pub more: bool,
}

/// What a peer's filters ask of a store: the entries of the filtered buckets (sorted by
/// bucket) that the filters, salted with `round_seed`, definitely lack.
pub struct LackingQuery<'a> {
    pub filters: &'a [(u64, Arc<CheckedFilter>)],
    pub round_seed: u64,
    pub settled_before_ms: u64,
    /// Entries found at most, and their bytes on the wire at most (a round's repairs must fit
    /// what a link queues for a peer).
    pub max: usize,
    pub max_bytes: usize,
}

/// What a [`LackingQuery`] found so far, and its bytes on the wire.
#[derive(Debug, Default)]
pub struct Lacking {
    pub entries: Vec<OwnedEntry>,
    pub bytes: usize,
}

impl Lacking {
    /// Whether the query's bounds leave room for more.
    pub fn has_room(&self, query: &LackingQuery<'_>) -> bool {
        self.entries.len() < query.max && self.bytes < query.max_bytes
    }
}

/// An entry as it travels between a shard and the coordinator (another thread): owned bytes,
/// the value in a buffer wiped on drop. `value: None` is a tombstone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedEntry {
    pub key: Vec<u8>,
    pub value: Option<Zeroizing<Vec<u8>>>,
    pub expires_ms: u64,
    pub version: Version,
}

impl OwnedEntry {
    pub fn of(entry: &Entry) -> Self {
        OwnedEntry {
            key: entry.key.to_vec(),
            value: entry.value.as_deref().map(|v| Zeroizing::new(v.to_vec())),
            expires_ms: entry.expires_ms,
            version: entry.version,
        }
    }

    /// Bytes this entry takes on the wire, as [`Entry::wire_bytes`] counts them.
    pub fn wire_bytes(&self) -> usize {
        self.key.len() + self.value.as_ref().map_or(0, |v| v.len()) + 8 + 16 + 8
    }

    /// The entry as the cluster core holds it (shared, on the coordinator's thread).
    pub fn to_entry(&self) -> Entry {
        Entry {
            key: Rc::from(self.key.as_slice()),
            value: self.value.as_deref().map(|v| Plaintext::shared(v)),
            expires_ms: self.expires_ms,
            version: self.version,
        }
    }
}

/// One expiry bucket's count and xor of stable hashes.
#[derive(Clone, Copy, Debug, Default)]
struct BucketSum {
    count: u32,
    xor: u64,
}

/// The digests of one shard's entries, updated as entries come and go (never by a scan), and
/// the young entries aside so digests can be given as of a settle cutoff.
#[derive(Debug, Default)]
pub(super) struct SyncIndex {
    buckets: BTreeMap<u64, BucketSum>,
    recent: RecentEntries<u32>,
}

impl SyncIndex {
    /// Buckets with digests, and young entries set aside.
    pub(super) fn footprint(&self) -> (usize, usize) {
        (self.buckets.len(), self.recent.len())
    }

    /// An entry at slab `index` came in.
    pub(super) fn added(&mut self, index: u32, record: &SealedRecord, now_ms: u64) {
        let (bucket, hash) = bucket_and_hash(record);
        let sum = self.buckets.entry(bucket).or_default();
        sum.count += 1;
        sum.xor ^= hash;
        self.recent.note(record.version(), index, now_ms);
    }

    /// The entry at a slab index went (replaced, deleted or reclaimed).
    pub(super) fn removed(&mut self, record: &SealedRecord) {
        let (bucket, hash) = bucket_and_hash(record);
        if let Some(sum) = self.buckets.get_mut(&bucket) {
            sum.count = sum.count.saturating_sub(1);
            sum.xor ^= hash;
            if sum.count == 0 {
                self.buckets.remove(&bucket);
            }
        }
    }

    pub(super) fn forget_old(&mut self, now_ms: u64) {
        self.recent.forget_old(now_ms);
    }
}

fn bucket_and_hash(record: &SealedRecord) -> (u64, u64) {
    (
        bucket_of(record.expires_ms(), SYNC_BUCKET_MS),
        entry_hash(record.key(), record.version()),
    )
}

impl Store {
    /// Digests of the non-empty buckets from `from_bucket` on, over the entries settled before
    /// `settled_before_ms` (`u64::MAX`: all).
    pub fn sync_digests(&self, from_bucket: u64, settled_before_ms: u64) -> Vec<BucketDigest> {
        let index = &self.entries.sync;
        let mut digests: Vec<BucketDigest> = index
            .buckets
            .range(from_bucket..)
            .map(|(&bucket, sum)| BucketDigest {
                bucket,
                count: sum.count,
                xor: sum.xor,
            })
            .collect();
        index.recent.settle(&mut digests, settled_before_ms, |at| {
            let record = self.entries.slab.get(at as usize)?.as_ref()?;
            let (bucket, hash) = bucket_and_hash(record);
            Some(HeldEntry {
                version: record.version(),
                bucket,
                hash,
            })
        });
        digests
    }

    /// How many entries the store holds for sync and the xor of their stable hashes: equal
    /// sets give equal pairs, so nodes can be compared without reading every key.
    pub fn live_set(&self) -> (u64, u64) {
        self.entries
            .sync
            .buckets
            .values()
            .fold((0, 0), |(count, xor), sum| {
                (count + u64::from(sum.count), xor ^ sum.xor)
            })
    }

    /// The stable hashes of the settled entries of each of `buckets`, in one pass over the
    /// shard's entries.
    pub fn sync_bucket_hashes(&self, buckets: &[u64], settled_before_ms: u64) -> Vec<Vec<u64>> {
        let mut out = vec![Vec::new(); buckets.len()];
        self.sync_bucket_hashes_in(buckets, settled_before_ms, 0..self.sync_slots(), &mut out);
        out
    }

    /// Live keys (not tombstones, not expired) starting with `query.prefix` and sorting after
    /// `query.after`, over the slab slots `slots`: the smallest `query.limit` of them are kept
    /// in `page` (a bounded max-heap: memory never exceeds the page), and `page.more` is set
    /// once one is left out.
    pub fn keys_in(&self, query: &KeyQuery, now_ms: u64, slots: Range<usize>, page: &mut KeyHeap) {
        let now = self.now_ms.max(now_ms);
        let slab = &self.entries.slab;
        let slots = slots.start.min(slab.len())..slots.end.min(slab.len());
        for record in slab[slots].iter().flatten() {
            if record.is_tombstone() || record.expires_ms() <= now {
                continue;
            }
            let key = record.key();
            if !key.starts_with(&query.prefix) || query.after.as_deref().is_some_and(|a| key <= a) {
                continue;
            }
            if page.keys.len() < query.limit {
                page.keys.push(key.to_vec());
            } else if page
                .keys
                .peek()
                .is_some_and(|largest| key < largest.as_slice())
            {
                page.keys.pop();
                page.keys.push(key.to_vec());
                page.more = true;
            } else {
                page.more = true;
            }
        }
    }

    /// Slots of the slab: scans for sync walk it in slices (`*_in`), so a caller can let
    /// clients in between.
    pub fn sync_slots(&self) -> usize {
        self.entries.slab.len()
    }

    /// [`Store::sync_bucket_hashes`] over the slab slots `slots`, added to `out` (one list per
    /// bucket of `buckets`, in its order).
    pub fn sync_bucket_hashes_in(
        &self,
        buckets: &[u64],
        settled_before_ms: u64,
        slots: Range<usize>,
        out: &mut [Vec<u64>],
    ) {
        let mut order: Vec<(u64, usize)> = buckets.iter().copied().zip(0..).collect();
        order.sort_unstable();
        let slab = &self.entries.slab;
        let slots = slots.start.min(slab.len())..slots.end.min(slab.len());
        for record in slab[slots].iter().flatten() {
            if !is_settled(record.version(), settled_before_ms) {
                continue;
            }
            let bucket = bucket_of(record.expires_ms(), SYNC_BUCKET_MS);
            if let Ok(at) = order.binary_search_by_key(&bucket, |&(b, _)| b) {
                if let Some(list) = out.get_mut(order[at].1) {
                    list.push(entry_hash(record.key(), record.version()));
                }
            }
        }
    }

    /// The live settled entries of the filtered buckets that the filters (salted with
    /// `round_seed`) definitely lack, `max` at most, values opened, in one pass. `filters` is
    /// sorted by bucket.
    pub fn sync_lacking(
        &self,
        filters: &[(u64, Arc<CheckedFilter>)],
        round_seed: u64,
        settled_before_ms: u64,
        max: usize,
        max_bytes: usize,
        now_ms: u64,
    ) -> Vec<OwnedEntry> {
        let mut lacking = Lacking::default();
        let query = LackingQuery {
            filters,
            round_seed,
            settled_before_ms,
            max,
            max_bytes,
        };
        self.sync_lacking_in(&query, now_ms, 0..self.sync_slots(), &mut lacking);
        lacking.entries
    }

    /// [`Store::sync_lacking`] over the slab slots `slots`, added to `out` (up to `max` in
    /// all).
    pub fn sync_lacking_in(
        &self,
        query: &LackingQuery<'_>,
        now_ms: u64,
        slots: Range<usize>,
        out: &mut Lacking,
    ) {
        let now = self.now_ms.max(now_ms);
        let slab = &self.entries.slab;
        let slots = slots.start.min(slab.len())..slots.end.min(slab.len());
        for record in slab[slots].iter().flatten() {
            if !out.has_room(query) {
                break;
            }
            if record.expires_ms() <= now || !is_settled(record.version(), query.settled_before_ms)
            {
                continue;
            }
            let bucket = bucket_of(record.expires_ms(), SYNC_BUCKET_MS);
            let Ok(at) = query.filters.binary_search_by_key(&bucket, |(b, _)| *b) else {
                continue;
            };
            let hash = entry_hash(record.key(), record.version());
            if !query.filters[at].1.contains(salted(hash, query.round_seed)) {
                if let Some(entry) = self.entry_of(record) {
                    out.bytes += entry.wire_bytes();
                    out.entries.push(entry);
                }
            }
        }
    }

    /// The live entry under `key` (a tombstone too), value opened, for a peer's pull.
    pub fn sync_entry(&self, key: &[u8], now_ms: u64) -> Option<OwnedEntry> {
        let now = self.now_ms.max(now_ms);
        let index = self.entries.find(key)?;
        let record = self.entries.record(index);
        (record.expires_ms() > now)
            .then(|| self.entry_of(record))
            .flatten()
    }

    /// Up to `max` live entries from slab position `cursor` on, and the cursor to continue
    /// from (`None`: done). Slab positions are stable while entries live, so a dump taken
    /// while writes go on misses at most what changed meanwhile, which sync repairs.
    pub fn sync_dump_chunk(
        &self,
        cursor: u64,
        max: usize,
        now_ms: u64,
    ) -> (Vec<OwnedEntry>, Option<u64>) {
        let now = self.now_ms.max(now_ms);
        let slab = &self.entries.slab;
        let mut at = usize::try_from(cursor).unwrap_or(usize::MAX);
        let mut out = Vec::new();
        while at < slab.len() && out.len() < max {
            if let Some(record) = &slab[at] {
                if record.expires_ms() > now {
                    out.extend(self.entry_of(record));
                }
            }
            at += 1;
        }
        (out, (at < slab.len()).then_some(at as u64))
    }

    /// Applies an entry from a peer; its value is sealed and wiped in place.
    pub fn apply_replica(
        &mut self,
        entry: &mut OwnedEntry,
        now_ms: u64,
    ) -> Result<Applied, StoreError> {
        let value = entry.value.as_mut().map(|v| v.as_mut_slice());
        self.apply(
            ReplicaEntry {
                key: &entry.key,
                value,
                expires_ms: entry.expires_ms,
                version: entry.version,
            },
            now_ms,
        )
    }

    /// The record as an entry to send, its value opened; `None` if it cannot be opened (its
    /// epoch key is gone, so it has expired for every purpose).
    fn entry_of(&self, record: &SealedRecord) -> Option<OwnedEntry> {
        let value = if record.is_tombstone() {
            None
        } else {
            let epoch = record.expires_ms() / self.limits.epoch_ms;
            let key = self.keyring.opening_key(epoch)?;
            let mut out = Zeroizing::new(Vec::with_capacity(record.value_len()));
            record.open_into(key, self.shard_id, &mut out).ok()?;
            Some(out)
        };
        Some(OwnedEntry {
            key: record.key().to_vec(),
            value,
            expires_ms: record.expires_ms(),
            version: record.version(),
        })
    }
}

#[cfg(test)]
mod tests {
    use repram_cluster::sync::FilterData;
    use repram_cluster::{EntryStore, MemStore};

    use super::*;
    use crate::limits::StoreLimits;
    use crate::store::{KeySeed, StoreConfig};

    const T0: u64 = 1_700_000_000_000;

    fn store() -> Store {
        let config = StoreConfig {
            shard_id: 1,
            node_id: 10,
            limits: StoreLimits {
                memory_budget_bytes: 64 * 1024 * 1024,
                ..StoreLimits::default()
            },
        };
        Store::with_seed(config, KeySeed::from_bytes([7; 32]), T0).expect("store")
    }

    fn put(store: &mut Store, key: &str, value: &str, ttl_ms: u64, now: u64) {
        let mut buf = value.as_bytes().to_vec();
        store
            .put(key.as_bytes(), &mut buf, ttl_ms, now)
            .expect("put");
    }

    fn everything(store: &Store, now: u64) -> Vec<OwnedEntry> {
        let (mut out, mut cursor) = (Vec::new(), Some(0));
        while let Some(at) = cursor {
            let (chunk, next) = store.sync_dump_chunk(at, 7, now);
            out.extend(chunk);
            cursor = next;
        }
        out
    }

    /// The digests a plain store holding the same entries gives.
    fn reference_digests(store: &Store, now: u64) -> Vec<BucketDigest> {
        let mut plain = MemStore::new();
        for entry in everything(store, now) {
            plain.apply(&entry.to_entry(), now);
        }
        plain.digests(0, u64::MAX)
    }

    #[test]
    fn digests_follow_puts_overwrites_deletes_and_expiry() {
        let mut s = store();
        put(&mut s, "a", "va", 60_000, T0);
        put(&mut s, "b", "vb", 60_000, T0);
        put(&mut s, "c", "vc", 15_000, T0);
        let now = T0 + 1;
        assert_eq!(s.sync_digests(0, u64::MAX), reference_digests(&s, now));
        assert_eq!(
            s.sync_digests(0, u64::MAX)
                .iter()
                .map(|d| d.count)
                .sum::<u32>(),
            3
        );
        // An overwrite moves "a" to another bucket; a delete leaves a tombstone.
        put(&mut s, "a", "va2", 120_000, now);
        s.delete(b"b", now).expect("delete");
        assert_eq!(s.sync_digests(0, u64::MAX), reference_digests(&s, now));
        // "c" expires and is reclaimed: its bucket goes.
        let later = T0 + 20_000;
        while s.tick_default(later).pending {}
        assert_eq!(s.sync_digests(0, u64::MAX), reference_digests(&s, later));
        assert_eq!(
            s.sync_digests(0, u64::MAX)
                .iter()
                .map(|d| d.count)
                .sum::<u32>(),
            2
        );
    }

    #[test]
    fn writes_younger_than_the_cutoff_are_left_out_of_digests() {
        let mut s = store();
        put(&mut s, "old", "v", 60_000, T0);
        put(&mut s, "new", "v", 60_000, T0 + 5_000);
        let count = |d: Vec<BucketDigest>| d.iter().map(|d| d.count).sum::<u32>();
        assert_eq!(count(s.sync_digests(0, T0)), 0);
        assert_eq!(count(s.sync_digests(0, T0 + 1)), 1);
        assert_eq!(count(s.sync_digests(0, T0 + 5_001)), 2);
        let bucket = s.sync_digests(0, u64::MAX)[0].bucket;
        assert_eq!(s.sync_bucket_hashes(&[bucket], T0 + 1)[0].len(), 1);
    }

    #[test]
    fn only_what_a_peers_filter_lacks_is_sent_with_its_value_opened() {
        let mut s = store();
        for key in ["a", "b", "c"] {
            put(&mut s, key, &format!("v{key}"), 60_000, T0);
        }
        let now = T0 + 10;
        let held = everything(&s, now);
        let bucket = s.sync_digests(0, u64::MAX)[0].bucket;
        let seed = 99;
        // The peer holds a and b.
        let peer_hashes: Vec<u64> = held
            .iter()
            .filter(|e| e.key != b"c")
            .map(|e| entry_hash(&e.key, e.version))
            .collect();
        let filter = FilterData::build(&peer_hashes, seed)
            .and_then(FilterData::check)
            .expect("filter");
        let lacking = s.sync_lacking(
            &[(bucket, Arc::new(filter))],
            seed,
            u64::MAX,
            100,
            usize::MAX,
            now,
        );
        assert_eq!(lacking.len(), 1);
        assert_eq!(lacking[0].key, b"c");
        assert_eq!(
            lacking[0].value.as_deref().map(Vec::as_slice),
            Some(&b"vc"[..])
        );
        // A bucket not asked about sends nothing.
        let other = s.sync_lacking(&[], seed, u64::MAX, 100, usize::MAX, now);
        assert!(other.is_empty());
    }

    #[test]
    fn a_rounds_repairs_stop_at_their_byte_bound() {
        let mut s = store();
        let value = "v".repeat(1_000);
        for i in 0..50 {
            put(&mut s, &format!("k{i:02}"), &value, 60_000, T0);
        }
        let now = T0 + 10;
        let bucket = s.sync_digests(0, u64::MAX)[0].bucket;
        let seed = 7;
        // The peer holds nothing of these.
        let filter = FilterData::build(&[1, 2, 3], seed)
            .and_then(FilterData::check)
            .map(Arc::new)
            .expect("filter");
        let filters = [(bucket, filter)];
        let all = s.sync_lacking(&filters, seed, u64::MAX, 100, usize::MAX, now);
        assert_eq!(all.len(), 50);
        let one = all[0].wire_bytes();
        // Bytes past the bound stop the scan: the entry that crosses it is the last.
        let bounded = s.sync_lacking(&filters, seed, u64::MAX, 100, 10 * one + 1, now);
        assert_eq!(bounded.len(), 11);
        let bounded = s.sync_lacking(&filters, seed, u64::MAX, 100, 10 * one, now);
        assert_eq!(bounded.len(), 10);
    }

    #[test]
    fn a_key_page_is_the_smallest_live_keys_after_the_cursor_with_the_prefix() {
        let mut s = store();
        for i in 0..50 {
            put(&mut s, &format!("user:{i:02}"), "v", 60_000, T0);
            put(&mut s, &format!("other:{i:02}"), "v", 60_000, T0);
        }
        s.delete(b"user:03", T0).expect("delete");
        put(&mut s, "user:015", "v", 1_000, T0);
        let now = T0 + 1_500;
        let query = KeyQuery {
            prefix: b"user:".to_vec(),
            after: Some(b"user:01".to_vec()),
            limit: 4,
        };
        let mut page = KeyHeap::default();
        // In slices of 7 slots, as the shard walks it.
        let mut at = 0;
        while at < s.sync_slots() {
            s.keys_in(&query, now, at..at + 7, &mut page);
            at += 7;
        }
        assert!(page.more);
        let keys: Vec<Vec<u8>> = page.keys.into_sorted_vec();
        let expected: Vec<Vec<u8>> = ["user:02", "user:04", "user:05", "user:06"]
            .iter()
            .map(|k| k.as_bytes().to_vec())
            .collect();
        assert_eq!(keys, expected, "deleted and expired keys are left out");
    }

    #[test]
    fn scans_in_slices_find_what_one_pass_finds() {
        let mut s = store();
        for i in 0..100 {
            put(&mut s, &format!("k{i}"), "v", 60_000 + (i % 3) * 10_000, T0);
        }
        for i in (0..100).step_by(7) {
            s.delete(format!("k{i}").as_bytes(), T0).expect("delete");
        }
        let now = T0 + 10;
        let buckets: Vec<u64> = s
            .sync_digests(0, u64::MAX)
            .iter()
            .map(|d| d.bucket)
            .collect();
        let whole = s.sync_bucket_hashes(&buckets, u64::MAX);
        let mut sliced = vec![Vec::new(); buckets.len()];
        let mut at = 0;
        while at < s.sync_slots() {
            s.sync_bucket_hashes_in(&buckets, u64::MAX, at..at + 7, &mut sliced);
            at += 7;
        }
        assert_eq!(sliced, whole);
        assert_eq!(whole.iter().map(Vec::len).sum::<usize>(), 100);

        let empty = FilterData::build(&[1, 2, 3], 5)
            .and_then(FilterData::check)
            .map(Arc::new)
            .expect("filter");
        let filters: Vec<(u64, Arc<CheckedFilter>)> =
            buckets.iter().map(|&b| (b, empty.clone())).collect();
        let whole = s.sync_lacking(&filters, 5, u64::MAX, 1_000, usize::MAX, now);
        let query = LackingQuery {
            filters: &filters,
            round_seed: 5,
            settled_before_ms: u64::MAX,
            max: 1_000,
            max_bytes: usize::MAX,
        };
        let mut sliced = Lacking::default();
        let mut at = 0;
        while at < s.sync_slots() {
            s.sync_lacking_in(&query, now, at..at + 7, &mut sliced);
            at += 7;
        }
        let keys = |v: &[OwnedEntry]| v.iter().map(|e| e.key.clone()).collect::<Vec<_>>();
        assert_eq!(keys(&sliced.entries), keys(&whole));
        assert_eq!(
            whole.len(),
            100,
            "a filter of other hashes lacks everything"
        );
    }

    #[test]
    fn a_dump_applied_elsewhere_reproduces_the_store() {
        let mut a = store();
        for i in 0..25 {
            put(&mut a, &format!("k{i}"), &format!("v{i}"), 60_000, T0);
        }
        a.delete(b"k3", T0).expect("delete");
        let now = T0 + 10;
        let mut b = store();
        for mut entry in everything(&a, now) {
            assert_eq!(b.apply_replica(&mut entry, now), Ok(Applied::Stored));
            assert!(
                entry
                    .value
                    .as_ref()
                    .is_none_or(|v| v.iter().all(|&x| x == 0)),
                "the replica's plaintext is wiped once sealed"
            );
        }
        assert_eq!(b.sync_digests(0, u64::MAX), a.sync_digests(0, u64::MAX));
        let mut out = Vec::new();
        b.get(b"k7", now, &mut out).expect("k7");
        assert_eq!(out, b"v7");
        assert!(
            b.get(b"k3", now, &mut out).is_err(),
            "the delete came along"
        );
        assert_eq!(
            b.sync_entry(b"k3", now).map(|e| e.value.is_none()),
            Some(true),
            "as a tombstone"
        );
    }
}
