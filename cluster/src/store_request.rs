//! What a node asks of its store, and what the store answers.
//!
//! The node never calls its store directly: in the real server the entries live in shards on
//! other cores, so every store access is a request ([`crate::Output::Store`]) answered later
//! ([`crate::Input::Store`]) with the same ticket. A driver whose store sits beside the node
//! (the simulator, tests) answers at once with [`StoreRequest::run`].
//!
//! Owns the request vocabulary and the reference answer over an [`EntryStore`]; it decides
//! nothing about the network.

use std::rc::Rc;
use std::sync::Arc;

use crate::entry::{Applied, Entry, EntryStore};
use crate::sync::{salted, BucketDigest, CheckedFilter};

/// One request to the store.
pub enum StoreRequest {
    /// Store each entry that is newer than what is held and not expired; answered by
    /// [`StoreReply::Applied`].
    Apply { entries: Vec<Entry> },
    /// Bucket digests from `from_bucket` on, over the entries settled before the cutoff
    /// ([`EntryStore::digests`]); answered by [`StoreReply::Digests`].
    Digests {
        from_bucket: u64,
        settled_before_ms: u64,
    },
    /// The stable hashes of the settled entries of each bucket; answered by
    /// [`StoreReply::BucketHashes`], one list per bucket asked, in the same order.
    BucketHashes {
        buckets: Vec<u64>,
        settled_before_ms: u64,
    },
    /// The live settled entries of each bucket that its filter (salted with `round_seed`)
    /// definitely lacks, `max` at most and `max_bytes` on the wire at most (the entry that
    /// crosses it is the last); answered by [`StoreReply::Lacking`]. The store runs the
    /// filters itself, so entries the peer has never leave it (shared, as a real node's shards
    /// on several threads each run them).
    Lacking {
        filters: Vec<(u64, Arc<CheckedFilter>)>,
        round_seed: u64,
        settled_before_ms: u64,
        max: usize,
        max_bytes: usize,
    },
    /// The live entry under `key`, tombstones included; answered by [`StoreReply::Entry`].
    Get { key: Rc<[u8]> },
    /// A chunk of a full dump ([`EntryStore::dump_chunk`]); answered by
    /// [`StoreReply::DumpChunk`].
    DumpChunk { cursor: u64, max: usize },
}

/// The store's answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreReply {
    /// The entries that were stored (newer than what was held), how many were not (already
    /// held, or expired), and whether any was refused because the store is full.
    Applied {
        fresh: Vec<Entry>,
        stale: u64,
        full: bool,
    },
    Digests(Vec<BucketDigest>),
    BucketHashes(Vec<Vec<u64>>),
    Lacking(Vec<Entry>),
    Entry(Option<Entry>),
    DumpChunk {
        entries: Vec<Entry>,
        next: Option<u64>,
    },
}

impl std::fmt::Debug for StoreRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreRequest::Apply { entries } => write!(f, "Apply({} entries)", entries.len()),
            StoreRequest::Digests {
                from_bucket,
                settled_before_ms,
            } => write!(f, "Digests(from {from_bucket}, before {settled_before_ms})"),
            StoreRequest::BucketHashes { buckets, .. } => {
                write!(f, "BucketHashes({} buckets)", buckets.len())
            }
            StoreRequest::Lacking { filters, max, .. } => {
                write!(f, "Lacking({} filters, max {max})", filters.len())
            }
            StoreRequest::Get { key } => write!(f, "Get({} bytes)", key.len()),
            StoreRequest::DumpChunk { cursor, max } => write!(f, "DumpChunk({cursor}, {max})"),
        }
    }
}

impl StoreRequest {
    /// Answers this request from `store` at `now_ms`, at once.
    pub fn run<S: EntryStore>(self, store: &mut S, now_ms: u64) -> StoreReply {
        match self {
            StoreRequest::Apply { entries } => {
                let mut fresh = Vec::new();
                let (mut stale, mut full) = (0, false);
                for entry in entries {
                    match store.apply(&entry, now_ms) {
                        Applied::Stored => fresh.push(entry),
                        Applied::Full => full = true,
                        Applied::Stale | Applied::Expired => stale += 1,
                    }
                }
                StoreReply::Applied { fresh, stale, full }
            }
            StoreRequest::Digests {
                from_bucket,
                settled_before_ms,
            } => StoreReply::Digests(store.digests(from_bucket, settled_before_ms)),
            StoreRequest::BucketHashes {
                buckets,
                settled_before_ms,
            } => StoreReply::BucketHashes(
                buckets
                    .iter()
                    .map(|&b| store.bucket_hashes(b, settled_before_ms))
                    .collect(),
            ),
            StoreRequest::Lacking {
                filters,
                round_seed,
                settled_before_ms,
                max,
                max_bytes,
            } => {
                let mut lacking = Vec::new();
                let mut bytes = 0;
                for (bucket, filter) in &filters {
                    for (hash, entry) in store.bucket_entries(*bucket, now_ms, settled_before_ms) {
                        if lacking.len() >= max || bytes >= max_bytes {
                            return StoreReply::Lacking(lacking);
                        }
                        if !filter.contains(salted(hash, round_seed)) {
                            bytes += entry.wire_bytes();
                            lacking.push(entry);
                        }
                    }
                }
                StoreReply::Lacking(lacking)
            }
            StoreRequest::Get { key } => StoreReply::Entry(store.get(&key, now_ms)),
            StoreRequest::DumpChunk { cursor, max } => {
                let (entries, next) = store.dump_chunk(cursor, max, now_ms);
                StoreReply::DumpChunk { entries, next }
            }
        }
    }
}
