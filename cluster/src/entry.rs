//! Entries as the network moves them, and the store interface the protocol reads and writes.
//!
//! Owns the [`EntryStore`] contract (last writer wins, nothing expired is applied or served)
//! and [`MemStore`], a plain in-memory implementation for tests and the simulator. It never
//! decides whom to tell: that is the [`crate::Node`]'s job.

use std::rc::Rc;

use hashbrown::HashMap;

use crate::Version;

/// One entry on its way between nodes. Key and value are shared, so pushing one entry to many
/// neighbours (or, in the simulator, to thousands of nodes) copies no bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub key: Rc<[u8]>,
    /// `None` is a tombstone: a delete, kept until the deleted value's expiry.
    pub value: Option<Rc<[u8]>>,
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

/// The entries of one node, as the protocol sees them. The real node implements it over its
/// shards; the simulator over a compact map.
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
}

/// A simple in-memory store: a map of keys to entries, with a slab order for dumps.
#[derive(Default, Debug)]
pub struct MemStore {
    slots: Vec<Option<Entry>>,
    by_key: HashMap<Rc<[u8]>, usize>,
    free: Vec<usize>,
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

    /// Drops entries expired at `now_ms`.
    pub fn expire(&mut self, now_ms: u64) {
        for at in 0..self.slots.len() {
            let expired = matches!(&self.slots[at], Some(e) if e.expires_ms <= now_ms);
            if expired {
                if let Some(entry) = self.slots[at].take() {
                    self.by_key.remove(&entry.key);
                    self.free.push(at);
                }
            }
        }
    }
}

impl EntryStore for MemStore {
    fn apply(&mut self, entry: &Entry, now_ms: u64) -> Applied {
        if entry.expires_ms <= now_ms {
            return Applied::Expired;
        }
        if let Some(&at) = self.by_key.get(&entry.key) {
            let held = self.slots[at]
                .as_mut()
                .expect("indexed slot holds an entry");
            if held.version >= entry.version && held.expires_ms > now_ms {
                return Applied::Stale;
            }
            *held = entry.clone();
            return Applied::Stored;
        }
        if self.capacity.is_some_and(|max| self.by_key.len() >= max) {
            return Applied::Full;
        }
        let at = match self.free.pop() {
            Some(at) => {
                self.slots[at] = Some(entry.clone());
                at
            }
            None => {
                self.slots.push(Some(entry.clone()));
                self.slots.len() - 1
            }
        };
        self.by_key.insert(entry.key.clone(), at);
        Applied::Stored
    }

    fn get(&self, key: &[u8], now_ms: u64) -> Option<Entry> {
        let at = *self.by_key.get(key)?;
        self.slots[at]
            .as_ref()
            .filter(|e| e.expires_ms > now_ms)
            .cloned()
    }

    fn dump_chunk(&self, cursor: u64, max: usize, now_ms: u64) -> (Vec<Entry>, Option<u64>) {
        let mut out = Vec::new();
        let mut at = cursor as usize;
        while at < self.slots.len() && out.len() < max {
            if let Some(entry) = &self.slots[at] {
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
            .filter(|e| e.expires_ms > now_ms)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, clock: u64, expires_ms: u64) -> Entry {
        Entry {
            key: key.as_bytes().into(),
            value: Some(b"v".as_slice().into()),
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
}
