//! The simulator's store: compact enough for ten thousand nodes each holding tens of thousands
//! of entries.
//!
//! An entry never changes once written, and in a converged network every node holds the same
//! ones. So each distinct entry lives once, in an [`EntryTable`] that every simulated node
//! shares (interning), and a node holds a bit per table index plus a digest per expiry bucket:
//! a node holding 50,000 entries costs about 6 KiB instead of megabytes, and looking a key up
//! touches the shared table (hot in cache) and one bit.
//!
//! Keys are write ids (4 bytes, little endian) and every value is the same shared bytes.
//! Implements the same [`EntryStore`] contract as the real node's store; it never decides
//! anything about the network.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use hashbrown::HashMap;

use crate::entry::{Applied, Entry, EntryStore, Plaintext};
use crate::sync::{
    bucket_of, entry_hash, is_settled, BucketDigest, HeldEntry, RecentEntries, SYNC_BUCKET_MS,
};
use crate::Version;

/// One entry, compactly: 4-byte fields only. The node id's top bit marks a tombstone; the
/// clock is split in two halves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Compact {
    id: u32,
    node: u32,
    clock_high: u32,
    clock_low: u32,
    expires_ms: u32,
}

const TOMBSTONE_BIT: u32 = 1 << 31;
/// End of a chain of versions of one key.
const NO_INDEX: u32 = u32::MAX;

impl Compact {
    fn version(&self) -> Version {
        Version {
            clock: (u64::from(self.clock_high) << 32) | u64::from(self.clock_low),
            node: u64::from(self.node & !TOMBSTONE_BIT),
        }
    }

    fn bucket(&self) -> u32 {
        bucket_of(u64::from(self.expires_ms), SYNC_BUCKET_MS) as u32
    }
}

/// One interned entry: the entry, its stable hash, and the next older version of the same key
/// in the table (a chain, almost always of one).
#[derive(Clone, Copy, Debug)]
struct Interned {
    entry: Compact,
    hash: u64,
    older: u32,
}

/// Every distinct entry any simulated node has held, once. Indices never change, so nodes can
/// name entries by index; the table keeps every entry ever interned (a few dozen bytes per
/// write, not per node per write).
pub struct EntryTable {
    entries: Vec<Interned>,
    /// Write id → newest interned version.
    by_key: HashMap<u32, u32>,
    /// Expiry bucket → indices of the entries that expire in it, in interning order.
    by_bucket: BTreeMap<u32, Vec<u32>>,
    value: Rc<Plaintext>,
}

impl Default for EntryTable {
    fn default() -> Self {
        EntryTable::new(Plaintext::shared(&[0x76u8; 16]))
    }
}

impl EntryTable {
    /// A table whose values are all `value` (shared, never copied).
    pub fn new(value: Rc<Plaintext>) -> Self {
        EntryTable {
            entries: Vec::new(),
            by_key: HashMap::new(),
            by_bucket: BTreeMap::new(),
            value,
        }
    }

    /// A table to share between the stores of many nodes.
    pub fn shared() -> Rc<RefCell<EntryTable>> {
        Rc::new(RefCell::new(EntryTable::default()))
    }

    /// The index of `c`, interning it if it is new.
    fn intern(&mut self, c: Compact) -> u32 {
        let newest = self.by_key.get(&c.id).copied().unwrap_or(NO_INDEX);
        let mut at = newest;
        while let Some(known) = self.entries.get(at as usize) {
            if known.entry == c {
                return at;
            }
            at = known.older;
        }
        let index = self.entries.len() as u32;
        self.entries.push(Interned {
            entry: c,
            hash: entry_hash(&c.id.to_le_bytes(), c.version()),
            older: newest,
        });
        self.by_key.insert(c.id, index);
        self.by_bucket.entry(c.bucket()).or_default().push(index);
        index
    }

    /// The versions of write `id` the table knows, newest first.
    fn versions(&self, id: u32) -> impl Iterator<Item = (u32, &Interned)> {
        let mut at = self.by_key.get(&id).copied().unwrap_or(NO_INDEX);
        std::iter::from_fn(move || {
            let found = self.entries.get(at as usize)?;
            let this = at;
            at = found.older;
            Some((this, found))
        })
    }

    fn bucket(&self, bucket: u32) -> &[u32] {
        self.by_bucket.get(&bucket).map_or(&[], Vec::as_slice)
    }

    fn entry_of(&self, c: &Compact) -> Entry {
        Entry {
            key: Rc::from(c.id.to_le_bytes().as_slice()),
            value: (c.node & TOMBSTONE_BIT == 0).then(|| self.value.clone()),
            expires_ms: u64::from(c.expires_ms),
            version: c.version(),
        }
    }
}

/// A set of table indices as a bitmap that spans only from the oldest index held to the
/// newest: indices are handed out in time order, so the span is about one TTL's writes.
#[derive(Default, Debug)]
struct IndexSet {
    first_word: u32,
    words: VecDeque<u64>,
}

impl IndexSet {
    fn contains(&self, index: u32) -> bool {
        let word = index / 64;
        word.checked_sub(self.first_word)
            .and_then(|at| self.words.get(at as usize))
            .is_some_and(|w| w & (1 << (index % 64)) != 0)
    }

    fn insert(&mut self, index: u32) {
        let word = index / 64;
        if self.words.is_empty() {
            self.first_word = word;
        }
        while word < self.first_word {
            self.words.push_front(0);
            self.first_word -= 1;
        }
        let at = (word - self.first_word) as usize;
        if at >= self.words.len() {
            self.words.resize(at + 1, 0);
        }
        self.words[at] |= 1 << (index % 64);
    }

    fn remove(&mut self, index: u32) {
        let word = index / 64;
        if let Some(w) = word
            .checked_sub(self.first_word)
            .and_then(|at| self.words.get_mut(at as usize))
        {
            *w &= !(1 << (index % 64));
        }
    }

    /// Drops empty words at both ends.
    fn trim(&mut self) {
        while self.words.front() == Some(&0) {
            self.words.pop_front();
            self.first_word += 1;
        }
        while self.words.back() == Some(&0) {
            self.words.pop_back();
        }
        if self.words.capacity() > 2 * self.words.len() + 16 {
            self.words.shrink_to_fit();
        }
    }
}

/// One expiry bucket's digest, as this node holds it.
#[derive(Clone, Copy, Default, Debug)]
struct BucketSum {
    count: u32,
    xor: u64,
}

/// A node's bucket digests, one slot per bucket from the first it holds to the last: a live
/// node holds a TTL's worth of consecutive buckets, so this is a short contiguous run that a
/// lookup indexes instead of searching.
#[derive(Default, Debug)]
struct BucketSums {
    first: u32,
    sums: VecDeque<BucketSum>,
}

impl BucketSums {
    fn slot(&mut self, bucket: u32) -> &mut BucketSum {
        if self.sums.is_empty() {
            self.first = bucket;
        }
        while bucket < self.first {
            self.sums.push_front(BucketSum::default());
            self.first -= 1;
        }
        let at = (bucket - self.first) as usize;
        if at >= self.sums.len() {
            self.sums.resize(at + 1, BucketSum::default());
        }
        &mut self.sums[at]
    }

    fn get_mut(&mut self, bucket: u32) -> Option<&mut BucketSum> {
        let at = bucket.checked_sub(self.first)?;
        self.sums.get_mut(at as usize)
    }

    /// Non-empty buckets from `from` on, in order.
    fn from(&self, from: u32) -> impl Iterator<Item = (u32, &BucketSum)> {
        let skip = from.saturating_sub(self.first) as usize;
        (self.first..)
            .zip(self.sums.iter())
            .skip(skip)
            .filter(|(_, sum)| sum.count > 0)
    }

    /// Drops the buckets before `bucket`, returning the non-empty ones.
    fn drain_before(&mut self, bucket: u32) -> Vec<u32> {
        let mut passed = Vec::new();
        while self.first < bucket {
            let Some(sum) = self.sums.pop_front() else {
                break;
            };
            if sum.count > 0 {
                passed.push(self.first);
            }
            self.first += 1;
        }
        self.trim();
        passed
    }

    /// Drops empty buckets at both ends.
    fn trim(&mut self) {
        while self.sums.front().is_some_and(|s| s.count == 0) {
            self.sums.pop_front();
            self.first += 1;
        }
        while self.sums.back().is_some_and(|s| s.count == 0) {
            self.sums.pop_back();
        }
    }
}

/// A simulated node's store: which interned entries it holds, and which writes arrived since
/// the simulator last looked.
pub struct SimStore {
    table: Rc<RefCell<EntryTable>>,
    held: IndexSet,
    buckets: BucketSums,
    /// Young entries by table index, so digests can leave them out.
    recent: RecentEntries<u32>,
    pub(super) arrivals: Vec<u32>,
}

impl Default for SimStore {
    /// A store with a table of its own.
    fn default() -> Self {
        SimStore::new(EntryTable::shared())
    }
}

impl SimStore {
    /// A store over `table`, which other nodes' stores may share.
    pub fn new(table: Rc<RefCell<EntryTable>>) -> Self {
        SimStore {
            table,
            held: IndexSet::default(),
            buckets: BucketSums::default(),
            recent: RecentEntries::default(),
            arrivals: Vec::new(),
        }
    }

    pub fn write_id(key: &[u8]) -> Option<u32> {
        let bytes: [u8; 4] = key.try_into().ok()?;
        Some(u32::from_le_bytes(bytes))
    }

    /// The table index of the version of `id` this node holds (it holds at most one).
    fn held_index(&self, table: &EntryTable, id: u32) -> Option<u32> {
        table
            .versions(id)
            .map(|(index, _)| index)
            .find(|&index| self.held.contains(index))
    }

    fn hold(&mut self, index: u32, interned: &Interned, now_ms: u64) {
        self.held.insert(index);
        self.recent.note(interned.entry.version(), index, now_ms);
        let sum = self.buckets.slot(interned.entry.bucket());
        sum.count += 1;
        sum.xor ^= interned.hash;
    }

    fn release(&mut self, index: u32, interned: &Interned) {
        self.held.remove(index);
        let bucket = interned.entry.bucket();
        if let Some(sum) = self.buckets.get_mut(bucket) {
            sum.count -= 1;
            sum.xor ^= interned.hash;
            if sum.count == 0 {
                self.buckets.trim();
            }
        }
    }

    /// The held entries of one bucket, from position `from` of the table's list for it, each
    /// with its position.
    fn held_in<'t>(
        &'t self,
        table: &'t EntryTable,
        bucket: u32,
        from: usize,
    ) -> impl Iterator<Item = (usize, &'t Interned)> + 't {
        table
            .bucket(bucket)
            .iter()
            .enumerate()
            .skip(from)
            .filter(|(_, &index)| self.held.contains(index))
            .filter_map(|(at, &index)| Some((at, table.entries.get(index as usize)?)))
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
        let table = Rc::clone(&self.table);
        let held = {
            let table = table.borrow();
            self.held_index(&table, id)
                .and_then(|index| Some((index, *table.entries.get(index as usize)?)))
        };
        if let Some((index, old)) = held {
            if old.entry.version() >= entry.version && u64::from(old.entry.expires_ms) > now_ms {
                return Applied::Stale;
            }
            self.release(index, &old);
        }
        let tombstone = if entry.value.is_none() {
            TOMBSTONE_BIT
        } else {
            0
        };
        let compact = Compact {
            id,
            node: node | tombstone,
            clock_high: (entry.version.clock >> 32) as u32,
            clock_low: entry.version.clock as u32,
            expires_ms,
        };
        let (index, interned) = {
            let mut table = table.borrow_mut();
            let index = table.intern(compact);
            (index, table.entries[index as usize])
        };
        self.hold(index, &interned, now_ms);
        self.arrivals.push(id);
        Applied::Stored
    }

    fn get(&self, key: &[u8], now_ms: u64) -> Option<Entry> {
        let id = SimStore::write_id(key)?;
        let table = self.table.borrow();
        let index = self.held_index(&table, id)?;
        let c = table.entries.get(index as usize)?.entry;
        (u64::from(c.expires_ms) > now_ms).then(|| table.entry_of(&c))
    }

    /// The cursor is (bucket << 32 | position in the table's list for that bucket): lists only
    /// grow at the end, so a cursor stays valid while the dump goes on.
    fn dump_chunk(&self, cursor: u64, max: usize, now_ms: u64) -> (Vec<Entry>, Option<u64>) {
        let (first, from) = ((cursor >> 32) as u32, (cursor & 0xffff_ffff) as usize);
        let table = self.table.borrow();
        let mut out = Vec::new();
        for bucket in self.buckets.from(first).map(|(b, _)| b) {
            let start = if bucket == first { from } else { 0 };
            for (at, interned) in self.held_in(&table, bucket, start) {
                if out.len() >= max {
                    return (out, Some((u64::from(bucket) << 32) | at as u64));
                }
                if u64::from(interned.entry.expires_ms) > now_ms {
                    out.push(table.entry_of(&interned.entry));
                }
            }
        }
        (out, None)
    }

    fn live_len(&self, now_ms: u64) -> usize {
        let table = self.table.borrow();
        self.buckets
            .from(0)
            .flat_map(|(bucket, _)| self.held_in(&table, bucket, 0))
            .filter(|(_, i)| u64::from(i.entry.expires_ms) > now_ms)
            .count()
    }

    fn digests(&self, from_bucket: u64, settled_before_ms: u64) -> Vec<BucketDigest> {
        let from = u32::try_from(from_bucket).unwrap_or(u32::MAX);
        let mut digests: Vec<BucketDigest> = self
            .buckets
            .from(from)
            .map(|(bucket, sum)| BucketDigest {
                bucket: u64::from(bucket),
                count: sum.count,
                xor: sum.xor,
            })
            .collect();
        let table = self.table.borrow();
        self.recent
            .settle(&mut digests, settled_before_ms, |index| {
                if !self.held.contains(index) {
                    return None;
                }
                let interned = table.entries.get(index as usize)?;
                Some(HeldEntry {
                    version: interned.entry.version(),
                    bucket: u64::from(interned.entry.bucket()),
                    hash: interned.hash,
                })
            });
        digests
    }

    fn bucket_hashes(&self, bucket: u64, settled_before_ms: u64) -> Vec<u64> {
        let Ok(bucket) = u32::try_from(bucket) else {
            return Vec::new();
        };
        let table = self.table.borrow();
        self.held_in(&table, bucket, 0)
            .filter(|(_, i)| is_settled(i.entry.version(), settled_before_ms))
            .map(|(_, i)| i.hash)
            .collect()
    }

    fn bucket_entries(
        &self,
        bucket: u64,
        now_ms: u64,
        settled_before_ms: u64,
    ) -> Vec<(u64, Entry)> {
        let Ok(bucket) = u32::try_from(bucket) else {
            return Vec::new();
        };
        let table = self.table.borrow();
        self.held_in(&table, bucket, 0)
            .filter(|(_, i)| {
                u64::from(i.entry.expires_ms) > now_ms
                    && is_settled(i.entry.version(), settled_before_ms)
            })
            .map(|(_, i)| (i.hash, table.entry_of(&i.entry)))
            .collect()
    }

    fn expire(&mut self, now_ms: u64) {
        let live_from = bucket_of(now_ms, SYNC_BUCKET_MS) as u32;
        self.recent.forget_old(now_ms);
        let passed = self.buckets.drain_before(live_from);
        if passed.is_empty() {
            return;
        }
        let table = self.table.borrow();
        for bucket in passed {
            for &index in table.bucket(bucket) {
                self.held.remove(index);
            }
        }
        self.held.trim();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::MemStore;

    fn entry(id: u32, clock: u64, expires_ms: u64) -> Entry {
        Entry {
            key: Rc::from(id.to_le_bytes().as_slice()),
            value: Some(Plaintext::shared(&[0x76u8; 16])),
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
        assert_eq!(compact.digests(0, u64::MAX), plain.digests(0, u64::MAX));
        compact.expire(30_000);
        plain.expire(30_000);
        assert_eq!(compact.digests(0, u64::MAX), plain.digests(0, u64::MAX));
        assert_eq!(compact.live_len(30_000), plain.live_len(30_000));
        let (chunk, next) = compact.dump_chunk(0, 1, 30_000);
        assert_eq!(chunk.len(), 1);
        assert!(next.is_some());
    }
}
