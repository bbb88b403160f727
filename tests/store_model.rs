//! The store against a simple model (a `BTreeMap` with expiries and versions), driven by
//! random operation sequences: puts, replicas, deletes, TTL changes, reads, time and ticks.

use std::collections::BTreeMap;

use proptest::prelude::*;
use repram::{
    Applied, KeySeed, ReplicaEntry, Store, StoreConfig, StoreError, StoreLimits, Version,
};

const T0: u64 = 1_700_000_000_000;
const EPOCH_MS: u64 = 1_000;
const SKEW_MS: u64 = 60_000;
/// Times are drawn on a coarse grid so that expiries, versions and reads collide exactly.
const GRID_MS: u64 = 500;

#[derive(Debug, Clone)]
enum Op {
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

fn op() -> impl Strategy<Value = Op> {
    let key = 0u8..6;
    prop_oneof![
        4 => (key.clone(), prop::collection::vec(any::<u8>(), 0..40), 2u64..40)
            .prop_map(|(key, value, ttl)| Op::Put { key, value, ttl_ms: ttl * GRID_MS }),
        3 => (
            key.clone(),
            prop::option::weighted(0.8, prop::collection::vec(any::<u8>(), 0..40)),
            0u64..60,
            prop_oneof![3 => -4i64..4, 1 => -200i64..200],
            0u16..2,
            0u64..2,
        )
            .prop_map(|(key, value, expires_in, age, logical, node)| Op::Apply {
                key,
                value,
                expires_in_ms: expires_in * GRID_MS,
                age_ms: age * GRID_MS as i64,
                logical,
                node,
            }),
        1 => key.clone().prop_map(|key| Op::Delete { key }),
        1 => (key.clone(), 2u64..40).prop_map(|(key, ttl)| Op::Expire { key, ttl_ms: ttl * GRID_MS }),
        4 => key.prop_map(|key| Op::Get { key }),
        2 => prop_oneof![3 => 0u64..8, 1 => 0u64..2_000]
            .prop_map(|n| Op::Advance { ms: n * GRID_MS / 2 }),
        1 => (0usize..50).prop_map(|work| Op::Tick { work }),
    ]
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
    Store::with_seed(config, KeySeed::from_bytes([5; 32]), T0).expect("store")
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut store = new_store();
    let mut model = Model {
        now: T0,
        ..Model::default()
    };
    let mut out = Vec::new();
    let mut last_local = Version::default();
    for op in ops {
        match op {
            Op::Put {
                key,
                mut value,
                ttl_ms,
            } => {
                let k = key_name(key);
                let plain = value.clone();
                let v = store
                    .put(&k, &mut value, ttl_ms, model.now)
                    .expect("valid put");
                prop_assert!(v > last_local, "local versions only grow");
                last_local = v;
                if let Some(held) = model.live(&k) {
                    prop_assert!(
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
            Op::Apply {
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
                prop_assert_eq!(&got, &expected);
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
            Op::Delete { key } => {
                let k = key_name(key);
                let got = store.delete(&k, model.now);
                match model.live_value(&k).cloned() {
                    Some(held) => {
                        let v = got.expect("delete of a live value");
                        prop_assert!(v > held.version);
                        model.entries.insert(
                            k,
                            ModelEntry {
                                value: None,
                                expires_ms: held.expires_ms,
                                version: v,
                            },
                        );
                    }
                    None => prop_assert_eq!(got, Err(StoreError::NotFound)),
                }
            }
            Op::Expire { key, ttl_ms } => {
                let k = key_name(key);
                let got = store.expire(&k, ttl_ms, model.now);
                match model.live_value(&k).cloned() {
                    Some(held) => {
                        let v = got.expect("expire of a live value");
                        prop_assert!(v > held.version);
                        model.entries.insert(
                            k,
                            ModelEntry {
                                value: held.value,
                                expires_ms: model.now + ttl_ms,
                                version: v,
                            },
                        );
                    }
                    None => prop_assert_eq!(got, Err(StoreError::NotFound)),
                }
            }
            Op::Get { key } => {
                let k = key_name(key);
                let got = store.get(&k, model.now, &mut out);
                match model.live_value(&k) {
                    Some(held) => {
                        let meta = got.expect("live value readable");
                        prop_assert_eq!(Some(&out), held.value.as_ref());
                        prop_assert_eq!(meta.version, held.version);
                        prop_assert_eq!(meta.expires_ms, held.expires_ms);
                    }
                    None => prop_assert_eq!(got, Err(StoreError::NotFound)),
                }
            }
            Op::Advance { ms } => model.now += ms,
            Op::Tick { work } => {
                let r = store.tick(model.now, work);
                prop_assert!(r.work <= work.max(1));
                let live = model
                    .entries
                    .values()
                    .filter(|e| e.expires_ms > model.now)
                    .count();
                prop_assert!(store.len() >= live, "a live entry was reclaimed");
            }
        }
    }
    // Far in the future everything is gone, memory included.
    let end = model.now + 200_000;
    while store.tick(end, 1_000).pending {}
    prop_assert_eq!(store.len(), 0);
    prop_assert_eq!(store.stats().used_bytes, 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_the_model(ops in prop::collection::vec(op(), 1..200)) {
        run(ops)?;
    }
}
