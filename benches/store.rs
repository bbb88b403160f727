//! Store costs: put and get at 64 B, 1 KiB and 16 KiB; sealing and opening alone; reclaiming
//! 100,000 expired entries, whole and as one default-sized tick slice; a pipelined batch of 16
//! gets over a million keys, one by one and with [`Store::prefetch`] first.
//!
//! Run: `cargo bench --bench store` (add `-- --quick` for a short pass).

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use repram::limits::{StoreLimits, EXPIRY_SLOT_MS, TICK_WORK_MAX_DEFAULT};
use repram::store::test_hooks::SealOnly;
use repram::store::Access;
use repram::{KeySeed, Store, StoreConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const T0: u64 = 1_700_000_000_000;
const SIZES: [usize; 3] = [64, 1024, 16 * 1024];
const KEYS: usize = 10_000;

fn store() -> Store {
    let limits = StoreLimits {
        memory_budget_bytes: 4 << 30,
        ..StoreLimits::default()
    };
    let config = StoreConfig {
        shard_id: 0,
        node_id: 1,
        limits,
    };
    Store::with_seed(config, KeySeed::from_bytes([1; 32]), T0).expect("store")
}

fn keys(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("bench:key:{i:08}").into_bytes())
        .collect()
}

fn put_get(c: &mut Criterion) {
    let keys = keys(KEYS);
    let mut group = c.benchmark_group("put");
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, &size| {
            let mut s = store();
            let mut value = vec![7u8; size];
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % KEYS;
                // The store wipes the plaintext it was handed; refilling it is part of what a
                // receive path does anyway.
                value[0] = 7;
                s.put(&keys[i], &mut value, 60_000, T0).expect("put")
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("get");
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, &size| {
            let mut s = store();
            for key in &keys {
                s.put(key, &mut vec![7u8; size], 60_000, T0).expect("put");
            }
            let mut out = Vec::with_capacity(size + 16);
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % KEYS;
                s.get(&keys[i], T0, &mut out).expect("get");
                out.len()
            });
        });
    }
    group.finish();
}

fn seal_open(c: &mut Criterion) {
    let mut group = c.benchmark_group("seal");
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, &size| {
            let mut sealer = SealOnly::new();
            let value = vec![7u8; size];
            b.iter(|| sealer.seal(b"bench:key:00000001", &value, T0));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("open");
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, &size| {
            let mut sealer = SealOnly::new();
            let sealed = sealer.seal(b"bench:key:00000001", &vec![7u8; size], T0);
            let mut out = Vec::with_capacity(size + 16);
            b.iter(|| sealer.open(&sealed, &mut out));
        });
    }
    group.finish();
}

/// A store holding `n` 100-byte values that all expire within one second, ticked up to just
/// before that second so only reclaiming is left.
fn store_about_to_expire(keys: &[Vec<u8>]) -> (Store, u64) {
    let mut s = store();
    for (i, key) in keys.iter().enumerate() {
        let ttl = 30_000 + (i % 1_000) as u64;
        s.put(key, &mut [7u8; 100], ttl, T0).expect("put");
    }
    let mut now = T0;
    while now < T0 + 29_000 {
        now += 1_000;
        while s.tick(now, usize::MAX).pending {}
    }
    (s, T0 + 31_000 + EXPIRY_SLOT_MS)
}

fn expiry(c: &mut Criterion) {
    let keys = keys(100_000);
    let mut group = c.benchmark_group("expiry");
    group.sample_size(10);
    group.throughput(Throughput::Elements(keys.len() as u64));
    group.bench_function("reclaim_100k", |b| {
        b.iter_batched(
            || store_about_to_expire(&keys),
            |(mut s, end)| {
                while s.tick(end, usize::MAX).pending {}
                assert!(s.is_empty());
                s
            },
            BatchSize::PerIteration,
        );
    });
    group.throughput(Throughput::Elements(TICK_WORK_MAX_DEFAULT as u64));
    group.bench_function("one_default_slice", |b| {
        b.iter_batched(
            || store_about_to_expire(&keys),
            |(mut s, end)| {
                let r = s.tick(end, TICK_WORK_MAX_DEFAULT);
                assert!(r.pending);
                s
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

/// Sixteen gets of 100 B values spread over a million keys (most of each get's table slot,
/// slab slot and record is not in the cache), as a pipelined read brings them: served one by
/// one, and with the batch's keys prefetched first as a connection does.
fn get_batch(c: &mut Criterion) {
    const BATCH: usize = repram::store::PREFETCH_KEYS_MAX;
    let keys = keys(1_000_000);
    let mut s = store();
    for key in &keys {
        s.put(key, &mut [7u8; 100], 60_000, T0).expect("put");
    }
    // A fixed spread of keys (a multiplicative step), the same for both variants.
    let order: Vec<usize> = (0..keys.len()).map(|i| i * 7_919 % keys.len()).collect();
    let mut group = c.benchmark_group("get_batch_of_16_in_1m");
    group.throughput(Throughput::Elements(BATCH as u64));
    for prefetch in [false, true] {
        let name = if prefetch { "prefetched" } else { "one_by_one" };
        let mut out = Vec::with_capacity(128);
        let mut at = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                at = (at + BATCH) % (order.len() - BATCH);
                let batch = &order[at..at + BATCH];
                if prefetch {
                    s.prefetch(batch.iter().map(|&i| (keys[i].as_slice(), Access::Read)));
                }
                let mut total = 0;
                for &i in batch {
                    s.get(&keys[i], T0, &mut out).expect("get");
                    total += out.len();
                }
                total
            });
        });
    }
    group.finish();
}

criterion_group!(benches, put_get, seal_open, expiry, get_batch);
criterion_main!(benches);
