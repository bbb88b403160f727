//! The store against a simple model (a `BTreeMap` with expiries and versions), driven by
//! operation sequences: puts, replicas, deletes, TTL changes, reads, time and ticks. Run by
//! `tests/store_model.rs` (proptest draws the sequences) and by the `store_ops` fuzz target
//! (arbitrary bytes decoded into a sequence); any difference from the model panics.

use std::collections::BTreeMap;

use crate::limits::StoreLimits;
use crate::store::{Applied, KeySeed, ReplicaEntry, Store, StoreConfig, StoreError};
use crate::version::Version;

const T0: u64 = 1_700_000_000_000;
const EPOCH_MS: u64 = 1_000;
const SKEW_MS: u64 = 60_000;
/// Times are drawn on a coarse grid so that expiries, versions and reads collide exactly.
pub const GRID_MS: u64 = 500;

#[derive(Debug, Clone)]
pub enum StoreOp {
    Put {
        key: u8,
        value: Vec<u8>,
        ttl_ms: u64,
    },
    Apply {
        key: u8,
        value: Option<Vec<u8>>,
        expires_in_ms: u64,
        age_ms: i64,
        logical: u16,
        node: u64,
    },
    Delete {
        key: u8,
    },
    Expire {
        key: u8,
        ttl_ms: u64,
    },
    Get {
        key: u8,
    },
    Advance {
        ms: u64,
    },
    Tick {
        work: usize,
    },
}

impl StoreOp {
    /// Reads a sequence of operations from arbitrary bytes, in the same ranges the proptest
    /// strategy draws (six keys, values up to 40 bytes, times on the grid), so the fuzzer's
    /// mutations stay where keys, expiries and versions collide.
    pub fn sequence_from(data: &[u8]) -> Vec<StoreOp> {
        let mut bytes = data.iter().copied();
        let mut next = move || bytes.next();
        let mut ops = Vec::new();
        while let (Some(kind), Some(key)) = (next(), next()) {
            let key = key % 6;
            let op = match kind % 16 {
                0..=3 => {
                    let (Some(len), Some(ttl)) = (next(), next()) else {
                        break;
                    };
                    let value = (0..len % 40).map_while(|_| next()).collect();
                    StoreOp::Put {
                        key,
                        value,
                        ttl_ms: (2 + u64::from(ttl) % 38) * GRID_MS,
                    }
                }
                4..=6 => {
                    let (Some(len), Some(expires), Some(age), Some(bits)) =
                        (next(), next(), next(), next())
                    else {
                        break;
                    };
                    let value = (len < 205).then(|| (0..len % 40).map_while(|_| next()).collect());
                    let age = if bits & 4 == 0 {
                        i64::from(age % 8) - 4
                    } else {
                        i64::from(age) * 400 / 255 - 200
                    };
                    StoreOp::Apply {
                        key,
                        value,
                        expires_in_ms: u64::from(expires % 60) * GRID_MS,
                        age_ms: age * GRID_MS as i64,
                        logical: u16::from(bits & 1),
                        node: u64::from(bits >> 1 & 1),
                    }
                }
                7 => StoreOp::Delete { key },
                8 => {
                    let Some(ttl) = next() else { break };
                    StoreOp::Expire {
                        key,
                        ttl_ms: (2 + u64::from(ttl) % 38) * GRID_MS,
                    }
                }
                9..=12 => StoreOp::Get { key },
                13 | 14 => {
                    let Some(steps) = next() else { break };
                    let n = if steps & 0x80 == 0 {
                        u64::from(steps % 8)
                    } else {
                        u64::from(steps & 0x7f) * 16
                    };
                    StoreOp::Advance {
                        ms: n * GRID_MS / 2,
                    }
                }
                _ => StoreOp::Tick {
                    work: usize::from(key) * 10,
                },
            };
            ops.push(op);
        }
        ops
    }
}

#[derive(Debug, Clone)]
struct ModelEntry {
    value: Option<Vec<u8>>,
    expires_ms: u64,
    version: Version,
}

#[derive(Default)]
struct Model {
    now: u64,
    entries: BTreeMap<Vec<u8>, ModelEntry>,
}

impl Model {
    fn live(&self, key: &[u8]) -> Option<&ModelEntry> {
        self.entries.get(key).filter(|e| e.expires_ms > self.now)
    }

    fn live_value(&self, key: &[u8]) -> Option<&ModelEntry> {
        self.live(key).filter(|e| e.value.is_some())
    }
}

fn key_name(k: u8) -> Vec<u8> {
    format!("key-{k}").into_bytes()
}

fn new_store() -> Store {
    let limits = StoreLimits {
        memory_budget_bytes: 64 << 20,
        epoch_ms: EPOCH_MS,
        ttl_ms_max: 120_000,
        version_skew_ms_max: SKEW_MS,
        ..StoreLimits::default()
    };
    let config = StoreConfig {
        shard_id: 2,
        node_id: 100,
        limits,
    };
    // A random seed: what the store does cannot depend on its key bytes (a fixed seed is
    // kept out of release builds).
    let seed = KeySeed::random().expect("system randomness");
    Store::with_seed(config, seed, T0).expect("store")
}

/// Runs `ops` on a fresh store and the model side by side; panics where they differ.
pub fn run_store_ops(ops: Vec<StoreOp>) {
    let mut store = new_store();
    let mut model = Model {
        now: T0,
        ..Model::default()
    };
    let mut out = Vec::new();
    let mut last_local = Version::default();
    for op in ops {
        match op {
            StoreOp::Put {
                key,
                mut value,
                ttl_ms,
            } => {
                let k = key_name(key);
                let plain = value.clone();
                let v = store
                    .put(&k, &mut value, ttl_ms, model.now)
                    .expect("valid put");
                assert!(v > last_local, "local versions only grow");
                last_local = v;
                if let Some(held) = model.live(&k) {
                    assert!(
                        v > held.version,
                        "a local write is newer than what it replaces"
                    );
                }
                model.entries.insert(
                    k,
                    ModelEntry {
                        value: Some(plain),
                        expires_ms: model.now + ttl_ms,
                        version: v,
                    },
                );
            }
            StoreOp::Apply {
                key,
                value,
                expires_in_ms,
                age_ms,
                logical,
                node,
            } => {
                let k = key_name(key);
                // Versions sit on the grid relative to T0, so replicas repeat each other's.
                let now_grid = model.now - (model.now - T0) % GRID_MS;
                let physical = (now_grid as i64 - age_ms) as u64;
                let version = Version::new(physical, logical, node);
                let expires_ms = model.now + expires_in_ms;
                let plain = value.clone();
                let mut value = value;
                let got = store.apply(
                    ReplicaEntry {
                        key: &k,
                        value: value.as_deref_mut(),
                        expires_ms,
                        version,
                    },
                    model.now,
                );
                let expected = if physical > model.now + SKEW_MS {
                    Err(StoreError::VersionFromFuture {
                        version,
                        skew_ms: SKEW_MS,
                    })
                } else if expires_ms <= model.now {
                    Ok(Applied::Expired)
                } else if model.live(&k).is_some_and(|held| held.version >= version) {
                    Ok(Applied::Stale)
                } else {
                    Ok(Applied::Stored)
                };
                assert_eq!(&got, &expected);
                if got == Ok(Applied::Stored) {
                    model.entries.insert(
                        k,
                        ModelEntry {
                            value: plain,
                            expires_ms,
                            version,
                        },
                    );
                }
            }
            StoreOp::Delete { key } => {
                let k = key_name(key);
                let got = store.delete(&k, model.now);
                match model.live_value(&k).cloned() {
                    Some(held) => {
                        let v = got.expect("delete of a live value");
                        assert!(v > held.version);
                        model.entries.insert(
                            k,
                            ModelEntry {
                                value: None,
                                expires_ms: held.expires_ms,
                                version: v,
                            },
                        );
                    }
                    None => assert_eq!(got, Err(StoreError::NotFound)),
                }
            }
            StoreOp::Expire { key, ttl_ms } => {
                let k = key_name(key);
                let got = store.expire(&k, ttl_ms, model.now);
                match model.live_value(&k).cloned() {
                    Some(held) => {
                        let v = got.expect("expire of a live value");
                        assert!(v > held.version);
                        model.entries.insert(
                            k,
                            ModelEntry {
                                value: held.value,
                                expires_ms: model.now + ttl_ms,
                                version: v,
                            },
                        );
                    }
                    None => assert_eq!(got, Err(StoreError::NotFound)),
                }
            }
            StoreOp::Get { key } => {
                let k = key_name(key);
                let got = store.get(&k, model.now, &mut out);
                match model.live_value(&k) {
                    Some(held) => {
                        let meta = got.expect("live value readable");
                        assert_eq!(Some(&out), held.value.as_ref());
                        assert_eq!(meta.version, held.version);
                        assert_eq!(meta.expires_ms, held.expires_ms);
                    }
                    None => assert_eq!(got, Err(StoreError::NotFound)),
                }
            }
            StoreOp::Advance { ms } => model.now += ms,
            StoreOp::Tick { work } => {
                let r = store.tick(model.now, work);
                assert!(r.work <= work.max(1));
                let live = model
                    .entries
                    .values()
                    .filter(|e| e.expires_ms > model.now)
                    .count();
                assert!(store.len() >= live, "a live entry was reclaimed");
            }
        }
    }
    // Far in the future everything is gone, memory included.
    let end = model.now + 200_000;
    while store.tick(end, 1_000).pending {}
    assert_eq!(store.len(), 0);
    assert_eq!(store.stats().used_bytes, 0);
}
