//! Crypto-shredding checked the hard way: once an epoch has passed, its data key and its chain
//! link are nowhere in this process's memory. The test only ever holds the key bytes masked
//! (each byte XORed with `MASK`), so its own copy never matches.
//!
//! One test function on purpose: other tests in the same process would add noise.

mod common;

use repram::store::test_hooks;
use repram::{KeySeed, Store, StoreConfig, StoreError, StoreLimits};

const MASK: u8 = 0xA5;
const EPOCH_MS: u64 = 60_000;
const PATTERN: usize = common::memscan::PATTERN;

fn occurrences_in_memory(masked: &[u8; PATTERN]) -> usize {
    common::memscan::occurrences("self", masked, MASK)
}

#[test]
fn key_material_of_a_passed_epoch_is_gone_from_memory() {
    // An epoch start plus one second: a 5 s value expires in this epoch, whose chain link is
    // the one the store holds.
    let t0 = 1_700_000_040_000 - 1_700_000_040_000 % EPOCH_MS + 1_000;
    let limits = StoreLimits {
        memory_budget_bytes: 64 << 20,
        epoch_ms: EPOCH_MS,
        ..StoreLimits::default()
    };
    let config = StoreConfig {
        shard_id: 0,
        node_id: 1,
        limits,
    };
    let seed = KeySeed::random().expect("random seed");
    let mut store = Store::with_seed(config, seed, t0).expect("store");

    let short_expiry = t0 + 5_000;
    let long_expiry = t0 + 10 * EPOCH_MS;
    store
        .put(b"short", &mut b"gone soon".to_vec(), 5_000, t0)
        .expect("put");
    store
        .put(b"long", &mut b"stays".to_vec(), 10 * EPOCH_MS, t0)
        .expect("put");

    let (short_key, short_link) =
        test_hooks::epoch_key_material_masked(&store, short_expiry, MASK).expect("live epoch");
    let (long_key, _) =
        test_hooks::epoch_key_material_masked(&store, long_expiry, MASK).expect("live epoch");

    // Before the epoch passes, both are in memory: the chain link in its box, and the data key
    // inside the AES key object (its first round keys are the key itself).
    assert!(
        occurrences_in_memory(&short_link) >= 1,
        "chain link not found while live"
    );
    if std::is_x86_feature_detected!("aes") {
        assert!(
            occurrences_in_memory(&short_key) >= 1,
            "data key not found while live"
        );
        assert!(
            occurrences_in_memory(&long_key) >= 1,
            "data key not found while live"
        );
    }

    let next_epoch = short_expiry - short_expiry % EPOCH_MS + EPOCH_MS;
    let report = store.tick(next_epoch, usize::MAX);
    assert_eq!(report.shredded, 1);
    assert_eq!(
        store.get(b"short", next_epoch, &mut Vec::new()),
        Err(StoreError::NotFound)
    );

    assert_eq!(
        occurrences_in_memory(&short_key),
        0,
        "data key survived its epoch"
    );
    assert_eq!(
        occurrences_in_memory(&short_link),
        0,
        "chain link survived its epoch"
    );
    // The scan still works, and later epochs are untouched.
    if std::is_x86_feature_detected!("aes") {
        assert!(
            occurrences_in_memory(&long_key) >= 1,
            "later epoch's key lost"
        );
    }
    let mut out = Vec::new();
    store
        .get(b"long", next_epoch, &mut out)
        .expect("long value still readable");
    assert_eq!(out, b"stays");
}
