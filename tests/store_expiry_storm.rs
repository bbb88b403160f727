//! A million keys at once: expiry in bounded slices, and nonces that never repeat.

use std::collections::HashSet;

use repram::limits::{StoreLimits, EXPIRY_SLOT_MS};
use repram::store::test_hooks;
use repram::{KeySeed, Store, StoreConfig, StoreError};

const T0: u64 = 1_700_000_000_000;
const KEYS: u32 = 1_000_000;

fn big_store(shard_id: u32) -> Store {
    let limits = StoreLimits {
        memory_budget_bytes: 2 << 30,
        ..StoreLimits::default()
    };
    let config = StoreConfig {
        shard_id,
        node_id: 1,
        limits,
    };
    Store::with_seed(config, KeySeed::from_bytes([9; 32]), T0).expect("store")
}

#[test]
fn a_million_keys_expiring_in_one_second_are_reclaimed_in_bounded_slices() {
    let mut store = big_store(0);
    let mut value = [0u8; 32];
    for i in 0..KEYS {
        value.fill(7);
        // Every ttl falls in [30 s, 31 s): the whole million expires within one second.
        let ttl = 30_000 + u64::from(i % 1_000);
        store
            .put(format!("key-{i}").as_bytes(), &mut value, ttl, T0)
            .expect("put");
    }
    let survivor_ttl = 10 * 60_000;
    store
        .put(b"survivor", &mut value, survivor_ttl, T0)
        .expect("put");
    assert_eq!(store.len(), KEYS as usize + 1);

    // Before the storm, ticks only cascade; nothing is reclaimed.
    let slice_max = 2_048;
    let mut now = T0;
    while now < T0 + 29_000 {
        now += 500;
        let r = store.tick(now, slice_max);
        assert!(r.work <= slice_max);
        assert_eq!(r.reclaimed, 0);
    }

    let storm_end = T0 + 31_000 + EXPIRY_SLOT_MS;
    let mut reclaimed = 0;
    let mut slices = 0;
    let mut out = Vec::new();
    loop {
        let r = store.tick(storm_end, slice_max);
        assert!(r.work <= slice_max, "slice of {} units", r.work);
        reclaimed += r.reclaimed;
        slices += 1;
        // Between slices, reads of expired keys never see them, live keys stay readable.
        let probe = format!("key-{}", (slices * 7_919) % KEYS as usize);
        assert_eq!(
            store.get(probe.as_bytes(), storm_end, &mut out),
            Err(StoreError::NotFound)
        );
        assert!(store.get(b"survivor", storm_end, &mut out).is_ok());
        if !r.pending {
            break;
        }
        assert!(slices < 10_000, "storm never drained");
    }
    assert_eq!(reclaimed, KEYS as usize);
    assert!(
        slices >= KEYS as usize / slice_max,
        "only {slices} slices for {KEYS} entries"
    );
    assert_eq!(store.len(), 1);
    let stats = store.stats();
    assert!(
        stats.used_bytes < 1_000,
        "{} bytes still charged",
        stats.used_bytes
    );
}

#[test]
fn nonces_never_repeat_across_a_million_writes() {
    let mut store = big_store(3);
    let mut value = [1u8; 16];
    for i in 0..KEYS {
        value.fill(1);
        // Spread expiries across many epochs: every epoch key sees many nonces.
        let ttl = 1_000 + u64::from(i % 5_000) * 1_000;
        store
            .put(format!("n-{i}").as_bytes(), &mut value, ttl, T0)
            .expect("put");
    }
    let nonces = test_hooks::nonces(&store);
    assert_eq!(nonces.len(), KEYS as usize);
    let distinct: HashSet<[u8; 12]> = nonces.iter().copied().collect();
    assert_eq!(distinct.len(), nonces.len(), "a nonce repeated");
    assert!(
        nonces.iter().all(|n| n[..4] == 3u32.to_le_bytes()),
        "shard id missing from a nonce"
    );
}
