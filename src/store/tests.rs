//! Behaviour of one store, driven with explicit times.

use super::test_hooks::{record_bytes_mut, RECORD_EXPIRES_AT, RECORD_KEY_AT};
use super::*;

const T0: u64 = 1_700_000_000_000;
const SEC: u64 = 1_000;

fn limits() -> StoreLimits {
    StoreLimits {
        memory_budget_bytes: 64 * 1024 * 1024,
        ..StoreLimits::default()
    }
}

fn store_with(limits: StoreLimits) -> Store {
    let config = StoreConfig {
        shard_id: 1,
        node_id: 10,
        limits,
    };
    Store::with_seed(config, KeySeed::from_bytes([7; 32]), T0).expect("store")
}

fn store() -> Store {
    store_with(limits())
}

fn put(store: &mut Store, key: &str, value: &str, ttl_ms: u64, now: u64) -> Version {
    let mut buf = value.as_bytes().to_vec();
    store
        .put(key.as_bytes(), &mut buf, ttl_ms, now)
        .expect("put")
}

fn get(store: &mut Store, key: &str, now: u64) -> Option<String> {
    let mut out = Vec::new();
    match store.get(key.as_bytes(), now, &mut out) {
        Ok(_) => Some(String::from_utf8(out).expect("utf8")),
        Err(StoreError::NotFound) => None,
        Err(e) => panic!("get {key}: {e}"),
    }
}

fn replica<'a>(
    key: &'a str,
    value: Option<&'a mut [u8]>,
    expires_ms: u64,
    version: Version,
) -> ReplicaEntry<'a> {
    ReplicaEntry {
        key: key.as_bytes(),
        value,
        expires_ms,
        version,
    }
}

#[test]
fn put_then_get_returns_the_value() {
    let mut s = store();
    let v = put(&mut s, "k", "hello", 10 * SEC, T0);
    assert_eq!(get(&mut s, "k", T0 + 1).as_deref(), Some("hello"));
    let meta = s.meta(b"k", T0 + 1).expect("meta");
    assert_eq!(
        meta,
        EntryMeta {
            version: v,
            expires_ms: T0 + 10 * SEC,
            value_len: 5
        }
    );
    assert_eq!(v.physical_ms(), T0);
}

#[test]
fn put_wipes_the_callers_plaintext() {
    let mut s = store();
    let mut buf = b"secret".to_vec();
    s.put(b"k", &mut buf, 10 * SEC, T0).expect("put");
    assert_eq!(buf, vec![0; 6]);
    let mut refused = b"too short ttl".to_vec();
    assert!(s.put(b"k2", &mut refused, 1, T0).is_err());
    assert!(
        refused.iter().all(|&b| b == 0),
        "a refused write is wiped too"
    );
}

#[test]
fn overwrite_replaces_the_value_and_bumps_the_version() {
    let mut s = store();
    let v1 = put(&mut s, "k", "one", 10 * SEC, T0);
    let v2 = put(&mut s, "k", "two", 10 * SEC, T0);
    assert!(v2 > v1, "two writes in one millisecond still order");
    assert_eq!(get(&mut s, "k", T0).as_deref(), Some("two"));
    assert_eq!(s.len(), 1);
}

#[test]
fn newer_replica_replaces_older_in_either_order() {
    let old = Version::new(T0, 0, 1);
    let new = Version::new(T0, 1, 1);
    let exp = T0 + 10 * SEC;
    for order in [[old, new], [new, old]] {
        let mut s = store();
        for v in order {
            let mut value = if v == new {
                b"new".to_vec()
            } else {
                b"old".to_vec()
            };
            s.apply(replica("k", Some(&mut value), exp, v), T0)
                .expect("apply");
        }
        assert_eq!(
            get(&mut s, "k", T0).as_deref(),
            Some("new"),
            "order {order:?}"
        );
        assert_eq!(s.meta(b"k", T0).expect("meta").version, new);
    }
}

#[test]
fn older_or_equal_version_is_stale() {
    let mut s = store();
    let v = Version::new(T0, 5, 2);
    let exp = T0 + 10 * SEC;
    let mut a = b"a".to_vec();
    assert_eq!(
        s.apply(replica("k", Some(&mut a), exp, v), T0),
        Ok(Applied::Stored)
    );
    let mut b = b"b".to_vec();
    assert_eq!(
        s.apply(replica("k", Some(&mut b), exp, v), T0),
        Ok(Applied::Stale)
    );
    let mut c = b"c".to_vec();
    let older = Version::new(T0, 4, 9);
    assert_eq!(
        s.apply(replica("k", Some(&mut c), exp, older), T0),
        Ok(Applied::Stale)
    );
    assert_eq!(get(&mut s, "k", T0).as_deref(), Some("a"));
}

#[test]
fn late_older_write_after_delete_stays_deleted() {
    let mut s = store();
    let exp = T0 + 30 * SEC;
    let v1 = Version::new(T0 - 5, 0, 3);
    let mut value = b"v1".to_vec();
    s.apply(replica("k", Some(&mut value), exp, v1), T0)
        .expect("apply");
    let tomb = s.delete(b"k", T0 + 1).expect("delete");
    assert!(tomb > v1);
    assert_eq!(get(&mut s, "k", T0 + 2), None);
    // The same old write arrives again from another peer.
    let mut late = b"v1".to_vec();
    assert_eq!(
        s.apply(replica("k", Some(&mut late), exp, v1), T0 + 3),
        Ok(Applied::Stale)
    );
    assert_eq!(get(&mut s, "k", T0 + 4), None);
    assert_eq!(s.stats().tombstones, 1);
}

#[test]
fn tombstone_from_a_peer_blocks_an_older_value_arriving_later() {
    let mut s = store();
    let exp = T0 + 30 * SEC;
    let tomb = Version::new(T0, 2, 3);
    assert_eq!(
        s.apply(replica("k", None, exp, tomb), T0),
        Ok(Applied::Stored)
    );
    let mut value = b"old".to_vec();
    let older = Version::new(T0, 1, 3);
    assert_eq!(
        s.apply(replica("k", Some(&mut value), exp, older), T0),
        Ok(Applied::Stale)
    );
    assert_eq!(get(&mut s, "k", T0), None);
}

#[test]
fn tombstone_is_reclaimed_at_the_deleted_values_expiry() {
    let mut s = store();
    put(&mut s, "k", "v", 5 * SEC, T0);
    s.delete(b"k", T0 + SEC).expect("delete");
    s.tick(T0 + 5 * SEC - 1, usize::MAX);
    assert_eq!(s.stats().tombstones, 1);
    s.tick(T0 + 5 * SEC + 10, usize::MAX);
    assert_eq!(s.len(), 0);
    assert_eq!(s.stats().used_bytes, 0);
}

#[test]
fn delete_of_a_missing_key_is_not_found() {
    let mut s = store();
    assert_eq!(s.delete(b"nope", T0), Err(StoreError::NotFound));
    assert!(s.is_empty());
}

#[test]
fn expired_value_is_never_served() {
    let mut s = store();
    put(&mut s, "k", "v", 2 * SEC, T0);
    assert_eq!(get(&mut s, "k", T0 + 2 * SEC - 1).as_deref(), Some("v"));
    assert_eq!(
        get(&mut s, "k", T0 + 2 * SEC),
        None,
        "gone from the first moment past expiry"
    );
    assert_eq!(s.meta(b"k", T0 + 2 * SEC), Err(StoreError::NotFound));
    // Time never goes back inside the store.
    assert_eq!(get(&mut s, "k", T0), None);
}

#[test]
fn expired_memory_is_reclaimed_within_one_slot() {
    let mut s = store();
    put(&mut s, "a", "1", 3 * SEC, T0);
    put(&mut s, "b", "2", 60 * SEC, T0);
    let used_two = s.stats().used_bytes;
    let r = s.tick(T0 + 3 * SEC + crate::limits::EXPIRY_SLOT_MS, usize::MAX);
    assert_eq!(r.reclaimed, 1);
    assert_eq!(s.len(), 1);
    assert!(s.stats().used_bytes < used_two);
    assert!(r.next_wake_ms > T0 + 3 * SEC);
    assert!(
        r.next_wake_ms <= T0 + 3 * SEC + 100,
        "wakes promptly while entries live"
    );
}

#[test]
fn expire_reseals_with_a_new_expiry_and_version() {
    let mut s = store();
    let v1 = put(&mut s, "k", "value", 5 * SEC, T0);
    let v2 = s.expire(b"k", 120 * SEC, T0 + SEC).expect("expire");
    assert!(v2 > v1);
    let meta = s.meta(b"k", T0 + SEC).expect("meta");
    assert_eq!((meta.version, meta.expires_ms), (v2, T0 + 121 * SEC));
    assert_eq!(get(&mut s, "k", T0 + 100 * SEC).as_deref(), Some("value"));
    // The old filing is gone: nothing is reclaimed at the old expiry.
    let r = s.tick(T0 + 6 * SEC, usize::MAX);
    assert_eq!(r.reclaimed, 0);
    assert_eq!(s.expire(b"missing", 5 * SEC, T0), Err(StoreError::NotFound));
}

#[test]
fn limits_are_enforced_with_clear_errors() {
    let mut s = store();
    let long_key = vec![b'k'; s.limits().key_bytes_max + 1];
    let mut v = b"v".to_vec();
    assert!(matches!(
        s.put(&long_key, &mut v, 10 * SEC, T0),
        Err(StoreError::KeyTooLong { .. })
    ));
    let mut big = vec![0u8; s.limits().value_bytes_max + 1];
    assert!(matches!(
        s.put(b"k", &mut big, 10 * SEC, T0),
        Err(StoreError::ValueTooLarge { .. })
    ));
    for ttl in [0, 999, s.limits().ttl_ms_max + 1] {
        let mut v = b"v".to_vec();
        let err = s.put(b"k", &mut v, ttl, T0).expect_err("bad ttl");
        assert!(matches!(err, StoreError::BadTtl { .. }), "{ttl}: {err}");
        assert!(err.to_string().contains("ttl"));
    }
    assert!(s.is_empty());
}

#[test]
fn full_store_refuses_writes_and_keeps_serving_reads() {
    let mut s = store_with(StoreLimits {
        memory_budget_bytes: 16 * 1024,
        ..limits()
    });
    let value = "x".repeat(100);
    let mut stored = 0;
    let err = loop {
        let mut buf = value.clone().into_bytes();
        match s.put(format!("k{stored}").as_bytes(), &mut buf, 10 * SEC, T0) {
            Ok(_) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 1_000, "budget never enforced");
    };
    assert!(matches!(err, StoreError::StoreFull { .. }), "{err}");
    assert!(err.to_string().contains("store full"));
    assert!(s.stats().used_bytes <= 16 * 1024);
    assert_eq!(get(&mut s, "k0", T0).as_deref(), Some(value.as_str()));
    // Overwriting with a value of the same size still works; a delete makes room.
    put(&mut s, "k0", &"y".repeat(100), 10 * SEC, T0);
    s.delete(b"k1", T0).expect("delete");
    s.delete(b"k2", T0).expect("delete");
    put(&mut s, "new", &value, 10 * SEC, T0);
    // Expiry frees the budget for good.
    s.tick(T0 + 11 * SEC, usize::MAX);
    assert_eq!(s.stats().used_bytes, 0);
    put(&mut s, "after", &value, 10 * SEC, T0 + 11 * SEC);
}

#[test]
fn a_record_moved_to_another_key_fails_to_open() {
    let mut s = store();
    put(&mut s, "key-a", "value-a", 10 * SEC, T0);
    put(&mut s, "key-b", "value-b", 10 * SEC, T0);
    // Give record a the nonce counter and sealed body of record b (same lengths).
    let b_bytes = record_bytes_mut(&mut s, b"key-b").expect("b").to_vec();
    let a_bytes = record_bytes_mut(&mut s, b"key-a").expect("a");
    a_bytes[..8].copy_from_slice(&b_bytes[..8]);
    let body_at = RECORD_KEY_AT + 5;
    a_bytes[body_at..].copy_from_slice(&b_bytes[body_at..]);
    let mut out = Vec::new();
    assert_eq!(s.get(b"key-a", T0, &mut out), Err(StoreError::Unreadable));
    assert!(out.is_empty());
    assert_eq!(get(&mut s, "key-b", T0).as_deref(), Some("value-b"));
}

#[test]
fn a_record_given_another_expiry_fails_to_open() {
    let mut s = store();
    put(&mut s, "k", "value", 10 * SEC, T0);
    let bytes = record_bytes_mut(&mut s, b"k").expect("k");
    // One second more, in the same epoch, so the same epoch key is tried.
    assert_eq!((T0 + 11 * SEC) / 60_000, (T0 + 10 * SEC) / 60_000);
    // The expiry is held as milliseconds after the version's.
    let at = RECORD_EXPIRES_AT..RECORD_EXPIRES_AT + 4;
    let offset = i32::from_le_bytes(bytes[at.clone()].try_into().expect("4 bytes"));
    bytes[at].copy_from_slice(&(offset + 1_000).to_le_bytes());
    assert_eq!(
        s.get(b"k", T0, &mut Vec::new()),
        Err(StoreError::Unreadable)
    );
}

#[test]
fn replica_versions_from_far_in_the_future_are_refused() {
    let mut s = store();
    let future = Version::new(T0 + 10 * 60 * SEC, 0, 2);
    let mut v = b"v".to_vec();
    let err = s
        .apply(replica("k", Some(&mut v), T0 + 20 * 60 * SEC, future), T0)
        .expect_err("refused");
    assert!(matches!(err, StoreError::VersionFromFuture { .. }));
    assert!(s.is_empty());
}

#[test]
fn replicas_whose_expiry_lies_more_than_24_days_after_their_version_are_refused() {
    // Records keep the expiry as an offset from the version's time; no honest writer makes
    // one this far apart (TTLs are at most a week).
    let mut s = store();
    let day = 24 * 60 * 60 * SEC;
    let ancient = Version::new(T0 - 30 * day, 0, 2);
    let mut v = b"v".to_vec();
    let err = s
        .apply(replica("k", Some(&mut v), T0 + 60 * SEC, ancient), T0)
        .expect_err("refused");
    assert!(matches!(err, StoreError::ExpiryFarFromVersion { .. }));
    let err = s
        .apply(replica("t", None, T0 + 60 * SEC, ancient), T0)
        .expect_err("a tombstone too");
    assert!(matches!(err, StoreError::ExpiryFarFromVersion { .. }));
    assert!(s.is_empty());
    let old = Version::new(T0 - 20 * day, 0, 2);
    let mut v = b"v".to_vec();
    let applied = s.apply(replica("k", Some(&mut v), T0 + 60 * SEC, old), T0);
    assert_eq!(applied, Ok(Applied::Stored));
    let meta = s.meta(b"k", T0).expect("held");
    assert_eq!((meta.expires_ms, meta.version), (T0 + 60 * SEC, old));
    assert_eq!(get(&mut s, "k", T0).as_deref(), Some("v"));
}

#[test]
fn replica_that_expired_in_flight_is_dropped() {
    let mut s = store();
    let mut v = b"v".to_vec();
    let r = s.apply(
        replica("k", Some(&mut v), T0, Version::new(T0 - 10, 0, 2)),
        T0,
    );
    assert_eq!(r, Ok(Applied::Expired));
    assert!(s.is_empty());
}

#[test]
fn local_write_after_a_replica_from_a_fast_clock_still_wins() {
    let mut s = store();
    let ahead = Version::new(T0 + 30 * SEC, 0, 99);
    let mut v = b"peer".to_vec();
    s.apply(replica("k", Some(&mut v), T0 + 60 * SEC, ahead), T0)
        .expect("apply");
    let local = put(&mut s, "k", "mine", 10 * SEC, T0 + 1);
    assert!(local > ahead);
    assert_eq!(get(&mut s, "k", T0 + 2).as_deref(), Some("mine"));
}

#[test]
fn passed_epochs_lose_their_keys() {
    let mut s = store();
    let epoch_ms = s.limits().epoch_ms;
    put(&mut s, "short", "v", 5 * SEC, T0);
    put(&mut s, "long", "v", 10 * epoch_ms, T0);
    assert_eq!(s.stats().epoch_keys, 2);
    assert!(test_hooks::holds_epoch_key(&s, T0 + 5 * SEC));
    let after = (T0 + 5 * SEC) / epoch_ms * epoch_ms + epoch_ms;
    let r = s.tick(after, usize::MAX);
    assert_eq!(r.shredded, 1);
    assert!(!test_hooks::holds_epoch_key(&s, T0 + 5 * SEC));
    assert!(test_hooks::epoch_key_material_masked(&s, T0 + 5 * SEC, 0x5A).is_none());
    assert_eq!(s.stats().epoch_keys, 1);
    assert_eq!(get(&mut s, "long", after).as_deref(), Some("v"));
}

#[test]
fn an_empty_store_wakes_at_the_next_epoch() {
    let mut s = store();
    let r = s.tick(T0, usize::MAX);
    let epoch_ms = s.limits().epoch_ms;
    assert_eq!(r.next_wake_ms, (T0 / epoch_ms + 1) * epoch_ms);
}

#[test]
fn budget_charges_the_allocators_size_class() {
    assert_eq!(size_class_bytes(1), 8);
    assert_eq!(size_class_bytes(64), 64);
    assert_eq!(size_class_bytes(65), 80);
    assert_eq!(size_class_bytes(167), 192);
    assert_eq!(size_class_bytes(16_384), 16_384);
    assert_eq!(size_class_bytes(16_385), 20_480);
}

#[test]
fn an_idle_store_with_only_far_entries_sleeps_until_the_epoch_boundary() {
    let mut s = store();
    let epoch_ms = s.limits().epoch_ms;
    put(&mut s, "far", "v", 3_600 * SEC, T0);
    let r = s.tick(T0 + 1, usize::MAX);
    assert_eq!(r.next_wake_ms, (T0 / epoch_ms + 1) * epoch_ms);
}

#[test]
fn after_a_long_idle_gap_new_entries_expire_promptly() {
    let mut s = store();
    put(&mut s, "old", "v", SEC, T0);
    s.tick(T0 + 2 * SEC, usize::MAX);
    let year = 365 * 24 * 3_600 * SEC;
    put(&mut s, "new", "v", SEC, T0 + year);
    let r = s.tick_default(T0 + year + SEC + 10);
    assert_eq!(r.reclaimed, 1);
    assert!(!r.pending);
    assert!(
        r.work < 200,
        "{} units: the year was stepped through",
        r.work
    );
    assert!(s.is_empty());
}
