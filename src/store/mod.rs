//! The encrypted TTL store of one shard: sealed values, versions, tombstones, prompt expiry,
//! crypto-shredding by expiry epoch and a memory budget.
//! Owns: every entry of its shard. Never does I/O, takes a lock or reads a clock: the shard
//! passes `now_ms` (wall-clock milliseconds) into every call, and the store never lets it go back.
//!
//! Invariants (asserted in debug builds):
//! - no value is returned at or after its expiry;
//! - an entry's version only grows: an older or equal version never replaces a newer one;
//! - the store holds no plaintext: values are sealed on arrival and opened into the caller's
//!   buffer to answer a read;
//! - every entry is filed exactly once in the expiry wheel, under its current expiry;
//! - the key of an epoch whose values have all expired is destroyed.

mod keyring;
mod prefetch;
mod record;
mod sync;
mod wheel;

use std::cell::Cell;

use hashbrown::HashTable;
use zeroize::Zeroize;

pub use keyring::KeySeed;
pub(crate) use keyring::SecretBox;
pub use sync::{KeyHeap, KeyQuery, Lacking, LackingQuery, OwnedEntry};

use crate::limits::{InvalidLimits, StoreLimits, TICK_WORK_MAX_DEFAULT};
use crate::version::{HybridClock, Version};
use keyring::{EpochKeyring, KeyUnavailable};
use prefetch::{prefetch_line, prefetch_span};
use record::{NonceCounter, RecordStamp, SealedRecord};
use wheel::{ExpiryWheel, FiledEntries};

/// Bytes charged to the budget for each entry on top of its record's allocation: the slab slot
/// (16), the wheel links (8) and the hash table's slot and control byte (5), each with the slack
/// of a growable array (the `store_memory` benchmark measures 36 B per entry at a million).
pub const ENTRY_OVERHEAD_BYTES: usize = 40;

/// Most keys [`Store::prefetch`] takes at once: enough for the memory waits of a pipelined
/// batch to overlap, few enough that the first key's lines are still cached when it is served.
pub const PREFETCH_KEYS_MAX: usize = 16;

/// What a request about to be served does with its key's entry ([`Store::prefetch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads the record (a get).
    Read,
    /// Replaces or drops it (a put, delete or expire): also rewrites its expiry links.
    Write,
}

/// Latest `now_ms` the store accepts (wall-clock milliseconds fit in 48 bits until the year
/// 10889); later values are clamped, so versions and expiries never overflow.
const NOW_MS_MAX: u64 = (1 << 48) - 1;

/// What a caller did wrong, or what the store cannot do now. Each has a message for a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("key is empty")]
    EmptyKey,
    #[error("key is {len} bytes; the limit is {max}")]
    KeyTooLong { len: usize, max: usize },
    #[error("value is {len} bytes; the limit is {max}")]
    ValueTooLarge { len: usize, max: usize },
    #[error("ttl of {ttl_ms} ms is outside the allowed {min_ms}..={max_ms} ms")]
    BadTtl {
        ttl_ms: u64,
        min_ms: u64,
        max_ms: u64,
    },
    #[error(
        "expiry {expires_ms} is further ahead than the longest ttl allows (latest {latest_ms})"
    )]
    ExpiryTooFar { expires_ms: u64, latest_ms: u64 },
    #[error("version {version:?} is more than {skew_ms} ms ahead of this node's clock")]
    VersionFromFuture { version: Version, skew_ms: u64 },
    #[error("expiry {expires_ms} is more than 24 days from the time of its version {version:?}")]
    ExpiryFarFromVersion { expires_ms: u64, version: Version },
    #[error("store full: {needed_bytes} more bytes would exceed the memory budget of {budget_bytes} bytes")]
    StoreFull {
        needed_bytes: usize,
        budget_bytes: usize,
    },
    #[error("not found")]
    NotFound,
    #[error("stored value failed to authenticate (altered in memory)")]
    Unreadable,
    #[error("this shard has used every nonce or slot it can address")]
    Exhausted,
}

/// Setting up a store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreInitError {
    #[error(transparent)]
    Limits(#[from] InvalidLimits),
    #[error("the operating system's random generator failed")]
    Random,
}

/// Identity and limits of one store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Shard id: part of every nonce, so no two shards ever share one.
    pub shard_id: u32,
    /// Node id: the tie-breaker of versions made here.
    pub node_id: u64,
    pub limits: StoreLimits,
}

/// Metadata of a live entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryMeta {
    pub version: Version,
    pub expires_ms: u64,
    pub value_len: usize,
}

/// An entry as it arrives from a peer: an absolute expiry and the writer's version.
/// `value: None` is a tombstone, `expires_ms` then being the deleted value's expiry.
/// The store wipes `value` before returning, whatever the outcome.
pub struct ReplicaEntry<'a> {
    pub key: &'a [u8],
    pub value: Option<&'a mut [u8]>,
    pub expires_ms: u64,
    pub version: Version,
}

/// What became of a replicated entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Stored: it was newer than what we held, or we held nothing.
    Stored,
    /// Dropped: we hold the same or a newer version.
    Stale,
    /// Dropped: it had already expired on arrival.
    Expired,
}

/// What one `tick` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Expired entries whose memory was reclaimed.
    pub reclaimed: usize,
    /// Epoch keys destroyed.
    pub shredded: usize,
    /// Work units spent (bounded by the `work_max` passed in).
    pub work: usize,
    /// More expired entries wait: tick again soon, after letting other work run.
    pub pending: bool,
    /// When the next tick has work to do, in wall-clock milliseconds.
    pub next_wake_ms: u64,
}

/// Counters of one store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Entries held, values and tombstones, including expired ones not yet reclaimed.
    pub entries: usize,
    pub tombstones: usize,
    /// Bytes charged against the budget.
    pub used_bytes: usize,
    pub budget_bytes: usize,
    /// Heap bytes of the index structures (table, slab, wheel), for comparison with the charge.
    pub index_heap_bytes: usize,
    /// Epoch data keys currently held.
    pub epoch_keys: usize,
}

/// The store of one shard.
pub struct Store {
    limits: StoreLimits,
    shard_id: u32,
    entries: Entries,
    wheel: ExpiryWheel,
    keyring: EpochKeyring,
    nonces: NonceCounter,
    clock: HybridClock,
    /// The latest `now_ms` seen; time never goes back inside the store.
    now_ms: u64,
    /// Epoch keys destroyed as of the last `tick` report.
    shredded_reported: u64,
}

impl Store {
    /// How many items each of the store's collections holds now (for finding what grows).
    pub fn footprint(&self) -> [(&'static str, usize); 8] {
        let e = &self.entries;
        let (buckets, recent) = e.sync.footprint();
        [
            ("live", e.len),
            ("slab", e.slab.len()),
            ("slab_capacity", e.slab.capacity()),
            ("free", e.free.len()),
            ("table_capacity", e.table.capacity()),
            ("wheel_links", self.wheel.link_slots()),
            ("sync_buckets", buckets),
            ("sync_recent", recent),
        ]
    }

    /// A store with fresh random keys.
    pub fn new(config: StoreConfig, now_ms: u64) -> Result<Self, StoreInitError> {
        let seed = KeySeed::random().map_err(|_| StoreInitError::Random)?;
        Self::with_seed(config, seed, now_ms)
    }

    /// A store whose key chain starts from `seed` (tests and the simulator, which must repeat).
    pub fn with_seed(
        config: StoreConfig,
        seed: KeySeed,
        now_ms: u64,
    ) -> Result<Self, StoreInitError> {
        config.limits.validate()?;
        let limits = config.limits;
        let now_ms = now_ms.min(NOW_MS_MAX);
        let first_epoch = now_ms / limits.epoch_ms;
        let window_epochs = limits.live_window_epochs();
        Ok(Self {
            shard_id: config.shard_id,
            entries: Entries::new(),
            wheel: ExpiryWheel::new(limits.epoch_ms, now_ms),
            keyring: EpochKeyring::new(seed, first_epoch, window_epochs),
            nonces: NonceCounter::new(config.shard_id),
            clock: HybridClock::new(config.node_id),
            now_ms,
            shredded_reported: 0,
            limits,
        })
    }

    pub fn limits(&self) -> &StoreLimits {
        &self.limits
    }

    /// Stores `value` under `key` for `ttl_ms`, with a new version from this node's clock.
    /// The store wipes `value` before returning, whatever the outcome, so the caller's copy of
    /// the plaintext (a receive buffer) does not linger.
    pub fn put(
        &mut self,
        key: &[u8],
        value: &mut [u8],
        ttl_ms: u64,
        now_ms: u64,
    ) -> Result<Version, StoreError> {
        let result = self.put_plain(key, value, ttl_ms, now_ms);
        value.zeroize();
        result
    }

    fn put_plain(
        &mut self,
        key: &[u8],
        value: &[u8],
        ttl_ms: u64,
        now_ms: u64,
    ) -> Result<Version, StoreError> {
        let now = self.advance_clock(now_ms);
        self.check_key(key)?;
        self.check_value(value)?;
        self.check_ttl(ttl_ms)?;
        let expires_ms = now + ttl_ms;
        let version = self.clock.stamp(now);
        let record = self.seal(key, value, record_stamp(expires_ms, version)?)?;
        self.install(key, record)?;
        Ok(version)
    }

    /// Applies an entry replicated from a peer: stored only if newer than what we hold.
    /// The store wipes the entry's value before returning, whatever the outcome.
    pub fn apply(
        &mut self,
        mut entry: ReplicaEntry<'_>,
        now_ms: u64,
    ) -> Result<Applied, StoreError> {
        let result = self.apply_plain(&entry, now_ms);
        if let Some(value) = entry.value.as_deref_mut() {
            value.zeroize();
        }
        result
    }

    fn apply_plain(
        &mut self,
        entry: &ReplicaEntry<'_>,
        now_ms: u64,
    ) -> Result<Applied, StoreError> {
        let now = self.advance_clock(now_ms);
        self.check_key(entry.key)?;
        if let Some(value) = entry.value.as_deref() {
            self.check_value(value)?;
        }
        let skew_ms = self.limits.version_skew_ms_max;
        if entry.version.physical_ms() > now.saturating_add(skew_ms) {
            return Err(StoreError::VersionFromFuture {
                version: entry.version,
                skew_ms,
            });
        }
        if entry.expires_ms <= now {
            return Ok(Applied::Expired);
        }
        let latest_ms = now.saturating_add(self.limits.ttl_ms_max + skew_ms);
        if entry.expires_ms > latest_ms {
            return Err(StoreError::ExpiryTooFar {
                expires_ms: entry.expires_ms,
                latest_ms,
            });
        }
        if let Some(held) = self.live_record(entry.key, now) {
            if held.version() >= entry.version {
                return Ok(Applied::Stale);
            }
        }
        let stamp = record_stamp(entry.expires_ms, entry.version)?;
        self.clock.observe(entry.version);
        let record = match entry.value.as_deref() {
            Some(value) => self.seal(entry.key, value, stamp)?,
            None => SealedRecord::tombstone(entry.key, stamp),
        };
        self.install(entry.key, record)?;
        Ok(Applied::Stored)
    }

    /// Opens the live value of `key` into `out` (cleared first). The caller owns the plaintext
    /// and should wipe `out` once the value has been sent.
    pub fn get(
        &mut self,
        key: &[u8],
        now_ms: u64,
        out: &mut Vec<u8>,
    ) -> Result<EntryMeta, StoreError> {
        out.clear();
        let now = self.advance_clock(now_ms);
        let record = self.live_value(key, now).ok_or(StoreError::NotFound)?;
        let epoch = record.expires_ms() / self.limits.epoch_ms;
        let aead_key = self
            .keyring
            .opening_key(epoch)
            .ok_or(StoreError::Unreadable)?;
        record
            .open_into(aead_key, self.shard_id, out)
            .map_err(|_| StoreError::Unreadable)?;
        Ok(meta_of(record))
    }

    /// Starts loading into the CPU's caches what serving `keys` will read: each key's hash
    /// table group and slot, slab slot and record, and for a write its expiry links. A batch
    /// of requests then waits for memory about once, its loads in flight together, instead
    /// of three times a request in turn (three dependent cache misses were a third of a
    /// pipelined GET's time). Changes nothing and returns nothing; keys past the first
    /// [`PREFETCH_KEYS_MAX`] are left out.
    pub fn prefetch<'k>(&self, keys: impl IntoIterator<Item = (&'k [u8], Access)>) {
        // A read leaves the links alone: asking for them would only take a line fill buffer
        // from the loads that matter (the CPU has few, and a batch's prefetches fill them).
        self.entries.prefetch(keys, |index, access| {
            if access == Access::Write {
                self.wheel.prefetch_links(index);
            }
        });
    }

    /// Metadata of the live value of `key`, without opening it.
    pub fn meta(&mut self, key: &[u8], now_ms: u64) -> Result<EntryMeta, StoreError> {
        let now = self.advance_clock(now_ms);
        self.live_value(key, now)
            .map(meta_of)
            .ok_or(StoreError::NotFound)
    }

    /// Deletes the live value of `key`, leaving a tombstone until the value would have expired,
    /// so a late replica of it cannot bring it back. Returns the tombstone's version.
    pub fn delete(&mut self, key: &[u8], now_ms: u64) -> Result<Version, StoreError> {
        let now = self.advance_clock(now_ms);
        let expires_ms = self
            .live_value(key, now)
            .ok_or(StoreError::NotFound)?
            .expires_ms();
        let version = self.clock.stamp(now);
        let stamp = record_stamp(expires_ms, version)?;
        self.install(key, SealedRecord::tombstone(key, stamp))?;
        Ok(version)
    }

    /// Gives the live value of `key` a new TTL (Redis `EXPIRE`): re-sealed under the new
    /// expiry with a new version. Returns the new version.
    pub fn expire(&mut self, key: &[u8], ttl_ms: u64, now_ms: u64) -> Result<Version, StoreError> {
        let now = self.advance_clock(now_ms);
        self.check_ttl(ttl_ms)?;
        let expires_ms = now + ttl_ms;
        let old_epoch = self
            .live_value(key, now)
            .ok_or(StoreError::NotFound)?
            .expires_ms()
            / self.limits.epoch_ms;
        let version = self.clock.stamp(now);
        let stamp = record_stamp(expires_ms, version)?;
        let nonce = self.nonces.take().ok_or(StoreError::Exhausted)?;
        // Derive the new epoch's key first: the old one is then borrowed alongside it.
        self.keyring
            .sealing_key(expires_ms / self.limits.epoch_ms)
            .map_err(key_unavailable)?;
        let old_key = self
            .keyring
            .opening_key(old_epoch)
            .ok_or(StoreError::Unreadable)?;
        let new_key = self
            .keyring
            .opening_key(expires_ms / self.limits.epoch_ms)
            .ok_or(StoreError::Unreadable)?;
        let record = self
            .live_value(key, now)
            .ok_or(StoreError::NotFound)?
            .reseal(old_key, new_key, self.shard_id, nonce, stamp)
            .map_err(|_| StoreError::Unreadable)?;
        self.install(key, record)?;
        Ok(version)
    }

    /// Reclaims expired entries and destroys the keys of passed epochs, spending at most
    /// `work_max` units (see `TICK_WORK_MAX_DEFAULT`). Call it when `next_wake_ms` comes, and
    /// again soon while `pending` is set, letting other work run in between.
    pub fn tick(&mut self, now_ms: u64, work_max: usize) -> TickReport {
        let now = self.advance_clock(now_ms);
        let destroyed = self.keyring.keys_destroyed();
        let shredded = (destroyed - self.shredded_reported) as usize;
        self.shredded_reported = destroyed;
        let progress = self.wheel.advance(now, work_max, &mut self.entries);
        // Wake for the wheel's next work, or at the next epoch boundary to destroy a key.
        let next_epoch_ms = (now / self.limits.epoch_ms + 1) * self.limits.epoch_ms;
        let next_wake_ms = if progress.pending {
            now
        } else {
            self.wheel
                .next_due_ms()
                .map_or(next_epoch_ms, |due| due.min(next_epoch_ms))
                .max(now + 1)
        };
        TickReport {
            reclaimed: progress.reclaimed,
            shredded,
            work: progress.work,
            pending: progress.pending,
            next_wake_ms,
        }
    }

    /// A tick with the default work budget.
    pub fn tick_default(&mut self, now_ms: u64) -> TickReport {
        self.tick(now_ms, TICK_WORK_MAX_DEFAULT)
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            entries: self.entries.len(),
            tombstones: self.entries.tombstones,
            used_bytes: self.entries.used_bytes,
            budget_bytes: self.limits.memory_budget_bytes,
            index_heap_bytes: self.entries.heap_bytes() + self.wheel.heap_bytes(),
            epoch_keys: self.keyring.keys_held(),
        }
    }

    /// Entries held (values and tombstones, including expired ones not yet reclaimed).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.len() == 0
    }

    /// Moves the store's clock to `now_ms` (never back) and destroys the keys of epochs that
    /// have passed. Returns the store's now.
    fn advance_clock(&mut self, now_ms: u64) -> u64 {
        // Wall-clock milliseconds fit in 48 bits until the year 10889; versions rely on it.
        let now_ms = now_ms.min(NOW_MS_MAX);
        self.now_ms = self.now_ms.max(now_ms);
        if self.entries.now_ms < self.now_ms {
            self.entries.now_ms = self.now_ms;
            self.entries.sync.forget_old(self.now_ms);
        }
        let epoch = self.now_ms / self.limits.epoch_ms;
        if epoch > self.keyring.oldest_epoch() {
            self.keyring.shred_before(epoch);
        }
        // After a long idle gap, let an empty wheel restart at now before anything is filed.
        self.wheel.catch_up_if_empty(self.now_ms);
        self.now_ms
    }

    fn check_key(&self, key: &[u8]) -> Result<(), StoreError> {
        let max = self.limits.key_bytes_max;
        if key.is_empty() {
            return Err(StoreError::EmptyKey);
        }
        if key.len() > max {
            return Err(StoreError::KeyTooLong {
                len: key.len(),
                max,
            });
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), StoreError> {
        let max = self.limits.value_bytes_max;
        if value.len() > max {
            return Err(StoreError::ValueTooLarge {
                len: value.len(),
                max,
            });
        }
        Ok(())
    }

    fn check_ttl(&self, ttl_ms: u64) -> Result<(), StoreError> {
        let (min_ms, max_ms) = (self.limits.ttl_ms_min, self.limits.ttl_ms_max);
        if !(min_ms..=max_ms).contains(&ttl_ms) {
            return Err(StoreError::BadTtl {
                ttl_ms,
                min_ms,
                max_ms,
            });
        }
        Ok(())
    }

    fn seal(
        &mut self,
        key: &[u8],
        value: &[u8],
        stamp: RecordStamp,
    ) -> Result<SealedRecord, StoreError> {
        // Refuse before sealing when even the new record alone cannot fit.
        let needed =
            record_cost(record::HEADER_BYTES + key.len() + value.len() + record::TAG_BYTES);
        if needed
            > self
                .limits
                .memory_budget_bytes
                .saturating_sub(self.entries.used_bytes)
            && self.entries.find(key).is_none()
        {
            return Err(StoreError::StoreFull {
                needed_bytes: needed,
                budget_bytes: self.limits.memory_budget_bytes,
            });
        }
        let nonce = self.nonces.take().ok_or(StoreError::Exhausted)?;
        let aead_key = self
            .keyring
            .sealing_key(stamp.expires_ms() / self.limits.epoch_ms)
            .map_err(key_unavailable)?;
        Ok(SealedRecord::seal(aead_key, nonce, key, value, stamp))
    }

    /// Puts `record` in place of whatever `key` held, keeping the wheel and the budget true.
    fn install(&mut self, key: &[u8], record: SealedRecord) -> Result<(), StoreError> {
        let cost = record_cost(record.len());
        let budget = self.limits.memory_budget_bytes;
        let hash = self.entries.hash(key);
        match self.entries.find_hashed(hash, key) {
            Some(index) => {
                let held = self.entries.record(index);
                debug_assert!(
                    held.expires_ms() <= self.now_ms || held.version() < record.version(),
                    "version went backwards"
                );
                let held_cost = record_cost(held.len());
                let after = self.entries.used_bytes - held_cost + cost;
                if cost > held_cost && after > budget {
                    return Err(StoreError::StoreFull {
                        needed_bytes: cost - held_cost,
                        budget_bytes: budget,
                    });
                }
                self.wheel
                    .refile(index, held.expires_ms(), record.expires_ms());
                self.entries.replace(index, record);
            }
            None => {
                if self.entries.used_bytes + cost > budget {
                    return Err(StoreError::StoreFull {
                        needed_bytes: cost,
                        budget_bytes: budget,
                    });
                }
                let expires_ms = record.expires_ms();
                let index = self
                    .entries
                    .insert(hash, record)
                    .ok_or(StoreError::Exhausted)?;
                self.wheel.insert(index, expires_ms);
            }
        }
        Ok(())
    }

    /// The record of `key` if it has not expired (a value or a tombstone).
    fn live_record(&self, key: &[u8], now: u64) -> Option<&SealedRecord> {
        let index = self.entries.find(key)?;
        let record = self.entries.record(index);
        (record.expires_ms() > now).then_some(record)
    }

    /// The record of `key` if it holds a value that has not expired.
    fn live_value(&self, key: &[u8], now: u64) -> Option<&SealedRecord> {
        self.live_record(key, now).filter(|r| !r.is_tombstone())
    }
}

fn meta_of(record: &SealedRecord) -> EntryMeta {
    EntryMeta {
        version: record.version(),
        expires_ms: record.expires_ms(),
        value_len: record.value_len(),
    }
}

fn key_unavailable(reason: KeyUnavailable) -> StoreError {
    // Expiries are validated against the window before sealing, so neither can happen; if one
    // did, the write is refused rather than sealed under a wrong key.
    debug_assert!(false, "epoch key unavailable: {reason:?}");
    StoreError::Unreadable
}

/// Bytes charged to the budget for a record of `len` bytes: its allocation, rounded up to the
/// allocator's size class, plus the per-entry index overhead.
fn record_cost(len: usize) -> usize {
    size_class_bytes(len) + ENTRY_OVERHEAD_BYTES
}

/// A record's expiry and version, or the error for a pair the record header cannot hold.
fn record_stamp(expires_ms: u64, version: Version) -> Result<RecordStamp, StoreError> {
    RecordStamp::new(expires_ms, version).ok_or(StoreError::ExpiryFarFromVersion {
        expires_ms,
        version,
    })
}

/// The block size mimalloc (like most size-class allocators) hands out for `len` bytes: word
/// granularity up to 64 bytes, then four classes per power of two.
fn size_class_bytes(len: usize) -> usize {
    if len <= 64 {
        return len.div_ceil(8) * 8;
    }
    let power = 1usize << (usize::BITS - 1 - (len - 1).leading_zeros());
    let step = power / 4;
    len.div_ceil(step) * step
}

/// The records of a store: a slab of records and a hash table of slab indices keyed by the
/// records' keys. Indices are stable while an entry lives, which the expiry wheel relies on.
struct Entries {
    /// Digests for sync, kept as entries come and go.
    sync: sync::SyncIndex,
    /// The store's now, for noting which entries are young.
    now_ms: u64,
    table: HashTable<u32>,
    hasher: ahash::RandomState,
    slab: Vec<Option<SealedRecord>>,
    free: Vec<u32>,
    len: usize,
    tombstones: usize,
    used_bytes: usize,
    /// Where the table's control bytes were last seen ([`Entries::prefetch`]; 0: not yet):
    /// lets a prefetch ask for a key's control bytes and slot at once, without reading the
    /// one to find the other.
    table_ctrl: Cell<usize>,
}

/// Bytes of a table slot (a slab index), and buckets in a group of control bytes (hashbrown's
/// SSE2 group): a probe starts with the group at the hash's bucket.
const TABLE_SLOT_BYTES: usize = std::mem::size_of::<u32>();
const TABLE_GROUP_BYTES: usize = 16;

impl Entries {
    fn new() -> Self {
        Self {
            sync: sync::SyncIndex::default(),
            now_ms: 0,
            table: HashTable::new(),
            hasher: ahash::RandomState::new(),
            slab: Vec::new(),
            free: Vec::new(),
            len: 0,
            tombstones: 0,
            used_bytes: 0,
            table_ctrl: Cell::new(0),
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn heap_bytes(&self) -> usize {
        self.table.allocation_size()
            + self.slab.capacity() * std::mem::size_of::<Option<SealedRecord>>()
            + self.free.capacity() * 4
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn find(&self, key: &[u8]) -> Option<u32> {
        self.find_hashed(self.hash(key), key)
    }

    fn find_hashed(&self, hash: u64, key: &[u8]) -> Option<u32> {
        let slab = &self.slab;
        self.table
            .find(hash, |&i| {
                slab[i as usize].as_ref().is_some_and(|r| r.key() == key)
            })
            .copied()
    }

    /// The passes of [`Store::prefetch`]; `also` is handed the slab index of each entry found,
    /// with its record, and its key's access.
    fn prefetch<'k>(
        &self,
        keys: impl IntoIterator<Item = (&'k [u8], Access)>,
        mut also: impl FnMut(u32, Access),
    ) {
        // Three passes, one per hop (table, slab slot, record), so the loads of a pass never
        // wait on each other and go out together; each pass reads what the one before asked
        // for, which has had the rest of that pass to arrive.
        let mut hashes = [(0u64, Access::Read); PREFETCH_KEYS_MAX];
        let mut n = 0;
        let ctrl = self.table_ctrl.get();
        let bucket_mask = self.table.num_buckets().wrapping_sub(1);
        for (key, access) in keys.into_iter().take(PREFETCH_KEYS_MAX) {
            let hash = self.hash(key);
            hashes[n] = (hash, access);
            n += 1;
            if ctrl != 0 {
                // The group of control bytes the key's probe starts at, and the slots of
                // those buckets, which hashbrown keeps just below the control bytes, bucket
                // `i`'s `i + 1` slots down: both together, so reading them next waits once.
                let at = hash as usize & bucket_mask;
                prefetch_span(ctrl.wrapping_add(at), TABLE_GROUP_BYTES);
                let slots = ctrl.wrapping_sub((at + TABLE_GROUP_BYTES) * TABLE_SLOT_BYTES);
                prefetch_span(slots, TABLE_GROUP_BYTES * TABLE_SLOT_BYTES);
            }
        }
        let mut at = [(0usize, Access::Read); PREFETCH_KEYS_MAX];
        let mut found = 0;
        for &(hash, access) in &hashes[..n] {
            // The first slot whose 7-bit tag matches is the key's unless another key shares
            // the tag; a wrong guess costs one wasted load.
            let Some(bucket) = self.table.iter_hash_buckets(hash).next() else {
                continue;
            };
            let Some(slot) = self.table.get_bucket(bucket) else {
                continue;
            };
            let index = *slot;
            // Where the control bytes are, from where this slot is: right for the next batch
            // whatever moved the table (it grows, shrinks, is rebuilt). Only ever a hint.
            let slot_at = std::ptr::from_ref(slot).addr();
            self.table_ctrl
                .set(slot_at.wrapping_add((bucket + 1) * TABLE_SLOT_BYTES));
            prefetch_line(self.slab.as_ptr().wrapping_add(index as usize));
            at[found] = (index as usize, access);
            found += 1;
        }
        for &(index, access) in &at[..found] {
            if let Some(Some(record)) = self.slab.get(index) {
                record.prefetch();
                also(index as u32, access);
            }
        }
    }

    fn record(&self, index: u32) -> &SealedRecord {
        match &self.slab[index as usize] {
            Some(record) => record,
            None => unreachable!("index {index} names a free slot"),
        }
    }

    /// Files `record`, whose key hashes to `hash` and is not yet in the table.
    fn insert(&mut self, hash: u64, record: SealedRecord) -> Option<u32> {
        debug_assert_eq!(hash, self.hash(record.key()));
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                let index = u32::try_from(self.slab.len()).ok()?;
                if index > wheel::INDEX_MAX {
                    return None;
                }
                self.slab.push(None);
                index
            }
        };
        self.account_in(index, &record);
        self.slab[index as usize] = Some(record);
        let (slab, hasher) = (&self.slab, &self.hasher);
        self.table
            .insert_unique(hash, index, |&i| match &slab[i as usize] {
                Some(r) => hasher.hash_one(r.key()),
                None => 0,
            });
        Some(index)
    }

    fn replace(&mut self, index: u32, record: SealedRecord) {
        self.account_in(index, &record);
        if let Some(old) = self.slab[index as usize].replace(record) {
            self.account_out(&old);
        }
    }

    fn remove(&mut self, index: u32) -> SealedRecord {
        let Some(record) = self.slab[index as usize].take() else {
            unreachable!("removing free slot {index}");
        };
        let hash = self.hash(record.key());
        match self.table.find_entry(hash, |&i| i == index) {
            Ok(entry) => {
                entry.remove();
            }
            Err(_) => unreachable!("slot {index} missing from the table"),
        }
        self.free.push(index);
        self.account_out(&record);
        record
    }

    fn account_in(&mut self, index: u32, record: &SealedRecord) {
        self.sync.added(index, record, self.now_ms);
        self.len += 1;
        self.tombstones += usize::from(record.is_tombstone());
        self.used_bytes += record_cost(record.len());
    }

    fn account_out(&mut self, record: &SealedRecord) {
        self.sync.removed(record);
        self.len -= 1;
        self.tombstones -= usize::from(record.is_tombstone());
        self.used_bytes -= record_cost(record.len());
    }
}

impl FiledEntries for Entries {
    fn expires_ms(&self, index: u32) -> u64 {
        self.record(index).expires_ms()
    }

    fn reclaim(&mut self, index: u32) {
        self.remove(index);
    }
}

#[cfg(any(test, feature = "test-hooks"))]
pub mod test_hooks {
    //! Access for tests to what the store otherwise never shows: key material (masked) and the
    //! raw bytes of a record (to tamper with).

    use super::*;

    /// The data key and chain link of the epoch `expires_ms` falls in, each byte XORed with
    /// `mask`; `None` once the epoch's key material is gone.
    pub fn epoch_key_material_masked(
        store: &Store,
        expires_ms: u64,
        mask: u8,
    ) -> Option<([u8; 32], [u8; 32])> {
        store
            .keyring
            .key_material_masked(expires_ms / store.limits.epoch_ms, mask)
    }

    /// Whether the key of the epoch `expires_ms` falls in is derived and held.
    pub fn holds_epoch_key(store: &Store, expires_ms: u64) -> bool {
        store
            .keyring
            .opening_key(expires_ms / store.limits.epoch_ms)
            .is_some()
    }

    /// Nonce bytes of every held value (shard id || seal counter).
    pub fn nonces(store: &Store) -> Vec<[u8; 12]> {
        store
            .entries
            .slab
            .iter()
            .flatten()
            .filter(|r| !r.is_tombstone())
            .map(|r| {
                record::RecordNonce {
                    shard: store.shard_id,
                    counter: r.seal_counter(),
                }
                .to_bytes()
            })
            .collect()
    }

    /// The raw bytes of `key`'s record, to tamper with. Changing the key or the expiry here
    /// does not refile the entry; only use it to test that tampering is detected.
    pub fn record_bytes_mut<'a>(store: &'a mut Store, key: &[u8]) -> Option<&'a mut [u8]> {
        let index = store.entries.find(key)?;
        store.entries.slab[index as usize]
            .as_mut()
            .map(|r| r.bytes_mut())
    }

    /// Sealing and opening alone, without the index: what the `store` benchmark's `seal` and
    /// `open` groups measure.
    pub struct SealOnly {
        key: ring::aead::LessSafeKey,
        nonces: record::NonceCounter,
    }

    /// A sealed record, opaque outside the store.
    pub struct Sealed(SealedRecord);

    impl SealOnly {
        pub fn new() -> Self {
            let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &[0x42; 32]);
            Self {
                key: ring::aead::LessSafeKey::new(unbound.expect("32-byte key")),
                nonces: record::NonceCounter::new(0),
            }
        }

        pub fn seal(&mut self, key: &[u8], value: &[u8], expires_ms: u64) -> Sealed {
            let nonce = self.nonces.take().expect("nonce");
            // A version just before the expiry, as a real write's would be.
            let version = Version::new(expires_ms.saturating_sub(60_000), 0, 1);
            let stamp = record::RecordStamp::new(expires_ms, version).expect("a minute fits");
            Sealed(SealedRecord::seal(&self.key, nonce, key, value, stamp))
        }

        pub fn open(&self, sealed: &Sealed, out: &mut Vec<u8>) -> bool {
            sealed.0.open_into(&self.key, 0, out).is_ok()
        }
    }

    impl Default for SealOnly {
        fn default() -> Self {
            Self::new()
        }
    }

    /// Byte offsets inside a record: (expiry, key).
    pub const RECORD_EXPIRES_AT: usize = record::EXPIRES_AT;
    pub const RECORD_KEY_AT: usize = record::HEADER_BYTES;
}

#[cfg(test)]
mod tests;
