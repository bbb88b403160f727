//! The store against a simple model (`repram::fuzzing::store_model`), driven by random
//! operation sequences: puts, replicas, deletes, TTL changes, reads, time and ticks.

use proptest::prelude::*;
use repram::fuzzing::store_model::{run_store_ops, StoreOp, GRID_MS};

fn op() -> impl Strategy<Value = StoreOp> {
    let key = 0u8..6;
    prop_oneof![
        4 => (key.clone(), prop::collection::vec(any::<u8>(), 0..40), 2u64..40)
            .prop_map(|(key, value, ttl)| StoreOp::Put { key, value, ttl_ms: ttl * GRID_MS }),
        3 => (
            key.clone(),
            prop::option::weighted(0.8, prop::collection::vec(any::<u8>(), 0..40)),
            0u64..60,
            prop_oneof![3 => -4i64..4, 1 => -200i64..200],
            0u16..2,
            0u64..2,
        )
            .prop_map(|(key, value, expires_in, age, logical, node)| StoreOp::Apply {
                key,
                value,
                expires_in_ms: expires_in * GRID_MS,
                age_ms: age * GRID_MS as i64,
                logical,
                node,
            }),
        1 => key.clone().prop_map(|key| StoreOp::Delete { key }),
        1 => (key.clone(), 2u64..40).prop_map(|(key, ttl)| StoreOp::Expire { key, ttl_ms: ttl * GRID_MS }),
        4 => key.prop_map(|key| StoreOp::Get { key }),
        2 => prop_oneof![3 => 0u64..8, 1 => 0u64..2_000]
            .prop_map(|n| StoreOp::Advance { ms: n * GRID_MS / 2 }),
        1 => (0usize..50).prop_map(|work| StoreOp::Tick { work }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_the_model(ops in prop::collection::vec(op(), 1..200)) {
        run_store_ops(ops);
    }
}
