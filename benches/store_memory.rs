//! Bytes of memory per entry with 100-byte values: resident-set growth of this process while
//! one store takes 1,000,000 entries, next to what the store charges against its budget.
//!
//! Run: `cargo bench --bench store_memory` (prints one table; takes a few seconds).

use repram::limits::StoreLimits;
use repram::{KeySeed, Store, StoreConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const T0: u64 = 1_700_000_000_000;
const ENTRIES: usize = 1_000_000;
const VALUE_BYTES: usize = 100;

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

fn main() {
    // Criterion's harness passes flags such as `--bench`; this binary takes none.
    let limits = StoreLimits {
        memory_budget_bytes: 8 << 30,
        ..StoreLimits::default()
    };
    let config = StoreConfig {
        shard_id: 0,
        node_id: 1,
        limits,
    };
    let keys: Vec<Vec<u8>> = (0..ENTRIES)
        .map(|i| format!("key:{i:012}").into_bytes())
        .collect();
    let key_bytes = keys[0].len();
    let mut store = Store::with_seed(config, KeySeed::from_bytes([3; 32]), T0).expect("store");
    let before = resident_bytes();
    let mut value = [0u8; VALUE_BYTES];
    for key in &keys {
        value.fill(0x61);
        store.put(key, &mut value, 3_600_000, T0).expect("put");
    }
    let after = resident_bytes();
    let stats = store.stats();
    let per = |bytes: usize| bytes as f64 / ENTRIES as f64;
    println!("store_memory: {ENTRIES} entries, {key_bytes} B keys, {VALUE_BYTES} B values");
    println!(
        "  resident growth      {:>8.1} B/entry",
        per(after.saturating_sub(before))
    );
    println!(
        "  charged to budget    {:>8.1} B/entry",
        per(stats.used_bytes)
    );
    println!(
        "  index structures     {:>8.1} B/entry (table, slab, wheel)",
        per(stats.index_heap_bytes)
    );
    println!(
        "  payload (key+value)  {:>8.1} B/entry",
        (key_bytes + VALUE_BYTES) as f64
    );
    assert_eq!(store.len(), ENTRIES);
}
