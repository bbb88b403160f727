//! Simulator scenarios on small clusters: what the peer protocol must do, checked by outcome
//! (never by wall time). Each prints its seed, so a failure can be replayed.

use repram_cluster::entry::Plaintext;
use repram_cluster::sim::{Sim, SimConfig};
use repram_cluster::Role;

const SEEDS: [u64; 3] = [1, 2, 3];

fn small(nodes: usize, seed: u64) -> SimConfig {
    SimConfig {
        nodes,
        roots: 2,
        seed,
        writes: 200,
        join_window_ms: 10_000,
        write_window_ms: 20_000,
        settle_ms: 10_000,
        ..SimConfig::default()
    }
}

/// A cluster that has joined and is quiet (no scheduled writes).
fn joined(nodes: usize, seed: u64) -> Sim {
    let mut sim = Sim::new(SimConfig {
        writes: 0,
        ..small(nodes, seed)
    });
    sim.run_until(15_000);
    assert_eq!(sim.attached(), nodes, "seed {seed}: every node attached");
    sim.check_tree().unwrap();
    sim.check_roles().unwrap();
    sim
}

fn write_reaches_every_live_node(sim: &mut Sim, writer: u32, seed: u64) {
    let id = sim.write_now(writer, 60_000);
    let now = sim.now_ms();
    sim.run_until(now + 2_000);
    assert_eq!(
        sim.holders(id),
        sim.live_nodes(),
        "seed {seed}: a write from node {writer} reached every live node within 2 s"
    );
}

#[test]
fn every_write_reaches_every_node_of_a_quiet_tree() {
    for seed in SEEDS {
        println!("seed {seed}");
        let report = Sim::new(small(60, seed)).run();
        println!("{report}");
        assert_eq!(report.attached, 60, "every node attached");
        assert_eq!(report.writes_short_of_all, 0);
        assert_eq!(report.writes_lost, 0);
        assert!(
            report.reach_99_ms[1] < 1_000,
            "p99 to 99%: {:?}",
            report.reach_99_ms
        );
        assert!(
            report.reach_all_ms[1] < 2_000,
            "p99 to all: {:?}",
            report.reach_all_ms
        );
        assert!(
            report.depth_counts[3] > 0,
            "leaves fill first: {:?}",
            report.depth_counts
        );
    }
}

#[test]
fn the_tree_never_has_a_cycle_under_churn() {
    for seed in SEEDS {
        println!("seed {seed}");
        let mut sim = Sim::new(SimConfig {
            churn_per_minute: 0.2,
            restart_after_ms: 3_000,
            ..small(80, seed)
        });
        for step in 1..=40 {
            sim.run_until(step * 1_000);
            if let Err(e) = sim.check_tree() {
                panic!("seed {seed} at {} ms: {e}", sim.now_ms());
            }
        }
        // Once churn stops and heartbeats settle, every role fits its parent's again.
        sim.run_until(sim.now_ms() + 25_000);
        sim.check_tree().unwrap();
        if let Err(e) = sim.check_roles() {
            panic!("seed {seed}: {e}");
        }
        let report = sim.report();
        println!("{report}");
        assert!(report.crashes > 0);
    }
}

#[test]
fn a_restarted_node_takes_a_full_dump_of_live_entries() {
    for seed in SEEDS {
        println!("seed {seed}");
        let mut sim = joined(30, seed);
        let ids: Vec<u32> = (0..50).map(|i| sim.write_now(2 + i % 20, 60_000)).collect();
        sim.run_until(sim.now_ms() + 2_000);
        let leaf = sim.find(Role::Leaf, 0).expect("a leaf");
        sim.crash(leaf);
        sim.restart(leaf);
        sim.run_until(sim.now_ms() + 5_000);
        let node = sim.node(leaf).expect("restarted");
        assert!(
            node.is_attached() && !node.is_dumping(),
            "seed {seed}: attached, dump done"
        );
        let now = sim.now_ms();
        let held = ids
            .iter()
            .filter(|id| node.store().get(&id.to_le_bytes(), now).is_some())
            .count();
        use repram_cluster::EntryStore;
        assert_eq!(held, 50, "seed {seed}: the dump brought every live entry");
        assert_eq!(node.counters().dumps_completed, 1);
    }
}

#[test]
fn children_of_a_dead_parent_reattach_and_keep_receiving() {
    for seed in SEEDS {
        println!("seed {seed}");
        let mut sim = joined(60, seed);
        let branch = sim.find(Role::Branch, 2).expect("a branch with children");
        let children: Vec<u32> = (0..60u32)
            .filter(|&i| {
                sim.node(i).and_then(|n| n.parent()) == sim.node(branch).map(|b| b.info().addr)
            })
            .collect();
        sim.crash(branch);
        // Missed heartbeats (3 × 1 s), then join, probe and attach.
        sim.run_until(sim.now_ms() + 8_000);
        for &child in &children {
            assert!(
                sim.node(child).unwrap().is_attached(),
                "seed {seed}: child {child} reattached"
            );
        }
        assert_eq!(sim.attached(), 59);
        sim.check_tree().unwrap();
        write_reaches_every_live_node(&mut sim, children[0], seed);
    }
}

#[test]
fn a_graceful_leave_lets_children_reattach_at_once() {
    for seed in SEEDS {
        println!("seed {seed}");
        let mut sim = joined(60, seed);
        let branch = sim.find(Role::Branch, 2).expect("a branch with children");
        sim.leave(branch);
        // Well inside the 3 s a silent parent takes to be noticed.
        sim.run_until(sim.now_ms() + 1_500);
        assert_eq!(
            sim.attached(),
            59,
            "seed {seed}: every child reattached within 1.5 s"
        );
        sim.check_tree().unwrap();
    }
}

#[test]
fn losing_a_root_fails_over_to_the_other() {
    for seed in SEEDS {
        println!("seed {seed}");
        let mut sim = joined(40, seed);
        sim.crash(0);
        sim.run_until(sim.now_ms() + 10_000);
        assert_eq!(
            sim.attached(),
            39,
            "seed {seed}: the other root's tree holds everyone"
        );
        sim.check_tree().unwrap();
        write_reaches_every_live_node(&mut sim, 5, seed);
    }
}

#[test]
fn same_seed_same_run_and_another_seed_another() {
    let config = SimConfig {
        churn_per_minute: 0.1,
        ..small(50, 11)
    };
    let a = Sim::new(config.clone()).run();
    let b = Sim::new(config.clone()).run();
    assert_eq!(a.run_hash, b.run_hash);
    assert_eq!(a.messages, b.messages);
    let c = Sim::new(SimConfig { seed: 12, ..config }).run();
    assert_ne!(a.run_hash, c.run_hash);
}

#[test]
fn a_few_hundred_nodes_converge_with_loss_and_churn() {
    for seed in [21, 22, 23] {
        println!("seed {seed}");
        let report = Sim::new(SimConfig {
            nodes: 300,
            roots: 3,
            seed,
            writes: 500,
            join_window_ms: 15_000,
            write_window_ms: 30_000,
            settle_ms: 10_000,
            churn_per_minute: 0.02,
            ..SimConfig::default()
        })
        .run();
        println!("{report}");
        assert!(report.attached >= 295, "attached {}", report.attached);
        // A crashed branch cuts its leaves off (up to 48 of 300) until they notice and
        // reattach, and their dump brings what they missed: that bounds the tail here.
        assert!(
            report.reach_99_ms[1] < 2_000,
            "p99 to 99%: {:?}",
            report.reach_99_ms
        );
        assert_eq!(report.writes_lost, 0);
    }
}

#[test]
fn after_a_partition_heals_both_sides_hold_every_live_key_within_three_sync_periods() {
    for seed in SEEDS {
        println!("seed {seed}");
        let mut sim = joined(60, seed);
        let side_a: Vec<u32> = (0..60).filter(|i| i % 2 == 0).collect();
        let side_b: Vec<u32> = (0..60).filter(|i| i % 2 == 1).collect();
        sim.partition(&side_a, &side_b);
        // Let each side notice and regroup around its own root, writing all along.
        let mut ids = Vec::new();
        for step in 0..20 {
            let writer = if step % 2 == 0 {
                side_a[1 + step % 29]
            } else {
                side_b[1 + step % 29]
            };
            ids.push(sim.write_now(writer, 120_000));
            sim.run_until(sim.now_ms() + 1_000);
        }
        sim.heal();
        // Three sync periods (5 s each, jittered by a tenth).
        sim.run_until(sim.now_ms() + 16_500);
        let live = sim.live_nodes();
        for &id in &ids {
            assert_eq!(
                sim.holders(id),
                live,
                "seed {seed}: write {id} reached every node after the heal"
            );
        }
        sim.check_tree().unwrap();
    }
}

#[test]
fn a_converged_network_syncs_for_a_few_bytes_per_node_and_round() {
    let mut sim = Sim::new(SimConfig {
        writes: 300,
        ..small(60, 4)
    });
    sim.run_until(40_000);
    let before = sim.report();
    // Quiet from here: no writes, no churn. Ten sync periods.
    sim.run_until(90_000);
    let after = sim.report();
    let sync_bytes = |r: &repram_cluster::sim::Report| -> u64 {
        r.bytes_by_kind
            .iter()
            .filter(|(k, _)| k.starts_with("sync"))
            .map(|(_, b)| b)
            .sum()
    };
    let per_node_round = (sync_bytes(&after) - sync_bytes(&before)) as f64 / 60.0 / 10.0;
    println!("{after}\nsync bytes per node per round once converged: {per_node_round:.0}");
    assert!(
        per_node_round < 1024.0,
        "{per_node_round} B per node per round"
    );
    let entries = after
        .bytes_by_kind
        .iter()
        .find(|(k, _)| *k == "sync_entries")
        .map_or(0, |(_, b)| *b);
    let entries_before = before
        .bytes_by_kind
        .iter()
        .find(|(k, _)| *k == "sync_entries")
        .map_or(0, |(_, b)| *b);
    assert_eq!(
        entries, entries_before,
        "a converged network sends no entries through sync"
    );
}

#[test]
fn rebalance_cuts_mean_parent_latency_by_a_fifth_within_five_periods() {
    for seed in SEEDS {
        println!("seed {seed}");
        let mut sim = joined(200, seed);
        // The network's distances change under the tree: parents are now random.
        sim.reshuffle_positions();
        sim.run_until(sim.now_ms() + 3_000);
        let before = sim.mean_parent_latency_ms();
        let mut worst_cycle: Result<(), String> = Ok(());
        // Five leaf rebalance periods (30 s each), checking the tree every second.
        for _ in 0..150 {
            sim.run_until(sim.now_ms() + 1_000);
            if let Err(e) = sim.check_tree() {
                worst_cycle = Err(e);
            }
        }
        let after = sim.mean_parent_latency_ms();
        println!(
            "mean parent latency {before:.1} ms -> {after:.1} ms, {} moves",
            sim.rebalances()
        );
        worst_cycle.unwrap();
        assert!(
            after <= before * 0.8,
            "seed {seed}: {before:.1} -> {after:.1} ms"
        );
        assert_eq!(sim.attached(), 200);
        sim.check_roles().unwrap();
    }
}

#[test]
fn reads_are_served_locally_or_by_a_lazy_pull_even_with_skewed_clocks() {
    for seed in SEEDS {
        println!("seed {seed}");
        let report = Sim::new(SimConfig {
            reads: 1_000,
            clock_skew_ms_max: 250,
            ..small(80, seed)
        })
        .run();
        println!("{report}");
        assert_eq!(report.writes_short_of_all, 0);
        assert_eq!(report.writes_lost, 0);
        assert!(report.reads > 500);
        // Only a read right after its write, at a node neither the push nor a neighbour has
        // reached yet, may miss; once the push has had a second, every read finds its key.
        assert_eq!(report.reads_missed_after_1s, 0, "{report}");
        assert!(report.reads_local * 10 >= report.reads * 9, "{report}");
    }
}

#[test]
fn a_node_joining_during_heavy_writes_ends_up_with_every_live_write() {
    for seed in SEEDS {
        println!("seed {seed}");
        let mut sim = joined(40, seed);
        let leaf = sim.find(Role::Leaf, 0).expect("a leaf");
        let mut ids = Vec::new();
        for step in 0..100u32 {
            if step == 20 {
                sim.crash(leaf);
            }
            if step == 25 {
                sim.restart(leaf);
            }
            for w in 0..10u32 {
                let writer = 2 + (step * 10 + w) % 38;
                if writer != leaf {
                    ids.push(sim.write_now(writer, 120_000));
                }
            }
            sim.run_until(sim.now_ms() + 100);
        }
        sim.run_until(sim.now_ms() + 10_000);
        let missing: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&id| sim.holders(id) != sim.live_nodes())
            .collect();
        assert!(
            missing.is_empty(),
            "seed {seed}: {} writes short of all: {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
    }
}

#[test]
fn a_hostile_peer_cannot_plant_entries_or_break_the_tree() {
    use repram_cluster::message::{Message, NodeInfo};
    use repram_cluster::sync::FilterData;
    use repram_cluster::{Entry, Version};
    use std::rc::Rc;

    for seed in SEEDS {
        println!("seed {seed}");
        let mut sim = joined(40, seed);
        let liar: std::net::SocketAddr = "192.0.2.66:7800".parse().unwrap();
        let planted = Entry {
            key: Rc::from(777_777u32.to_le_bytes().as_slice()),
            value: Some(Plaintext::shared(b"evil")),
            expires_ms: u64::MAX / 2, // far beyond any TTL
            version: Version {
                clock: u64::MAX,
                node: 66,
            },
        };
        let fake = NodeInfo {
            id: 66,
            addr: liar,
            role: None,
            children: 0,
            capacity: 0,
        };
        for target in 0..40u32 {
            sim.inject(
                target,
                liar,
                Message::Push {
                    entries: vec![planted.clone()],
                    ack: None,
                },
            );
            sim.inject(
                target,
                liar,
                Message::HeartbeatReply {
                    info: fake,
                    is_child: true,
                    path: vec![1; 50],
                    peers: vec![fake; 2],
                },
            );
            let lie = FilterData::Fuse8 {
                seed: 1,
                segment_length: 1 << 30,
                segment_length_mask: (1 << 30) - 1,
                segment_count_length: 1 << 30,
                fingerprints: vec![0; 8],
            };
            sim.inject(
                target,
                liar,
                Message::SyncFilters {
                    round: 1,
                    filters: vec![(u64::MAX, lie)],
                    answer: true,
                    settled_before_ms: u64::MAX,
                },
            );
            sim.inject(
                target,
                liar,
                Message::TopologyMap {
                    candidates: vec![fake; 1_000],
                    roots: vec![liar; 1_000],
                },
            );
            sim.inject(target, liar, Message::Attach { info: fake });
        }
        sim.run_until(sim.now_ms() + 10_000);
        assert_eq!(
            sim.holders(777_777),
            0,
            "seed {seed}: the planted entry is nowhere"
        );
        sim.check_tree().unwrap();
        assert_eq!(sim.attached(), 40);
        let id = sim.write_now(7, 60_000);
        sim.run_until(sim.now_ms() + 2_000);
        assert_eq!(
            sim.holders(id),
            40,
            "seed {seed}: the network still converges"
        );
    }
}

#[test]
fn after_divergence_repair_bytes_stay_within_one_and_a_half_times_what_was_missing() {
    for seed in SEEDS {
        let mut sim = joined(60, seed);
        let side_a: Vec<u32> = (0..60).filter(|i| i % 2 == 0).collect();
        let side_b: Vec<u32> = (0..60).filter(|i| i % 2 == 1).collect();
        sim.partition(&side_a, &side_b);
        let mut ids = Vec::new();
        for step in 0..40usize {
            let side = if step % 2 == 0 { &side_a } else { &side_b };
            ids.push(sim.write_now(side[1 + step % 29], 120_000));
            sim.run_until(sim.now_ms() + 250);
        }
        sim.run_until(sim.now_ms() + 5_000);
        // Entry copies each node lacks, at their size on the wire (4 B key, 16 B value, 32 B
        // of expiry, version and lengths).
        let missing_copies: usize = ids
            .iter()
            .map(|&id| sim.live_nodes() - sim.holders(id))
            .sum();
        let missing_bytes = missing_copies as u64 * 52;
        let before = sim.report();
        sim.heal();
        sim.run_until(sim.now_ms() + 16_500);
        let after = sim.report();
        let bytes = |kind: &str| {
            let of = |r: &repram_cluster::sim::Report| {
                r.bytes_by_kind
                    .iter()
                    .filter(|(k, _)| *k == kind)
                    .map(|(_, b)| *b)
                    .sum::<u64>()
            };
            of(&after) - of(&before)
        };
        // Repair traffic: the digests and filters that find the difference, the entries sent
        // through sync, and the pushes that carry them on down the tree. (Summaries and
        // in-sync answers are the steady per-round cost, measured in the converged test.)
        let repair =
            bytes("sync_digests") + bytes("sync_filters") + bytes("sync_entries") + bytes("push");
        println!(
            "seed {seed}: missing {missing_copies} copies = {missing_bytes} B; repair {repair} B \
             (digests {}, filters {}, sync entries {}, push {})",
            bytes("sync_digests"),
            bytes("sync_filters"),
            bytes("sync_entries"),
            bytes("push")
        );
        assert!(
            missing_copies > 1_000,
            "the partition left each side without the other's writes"
        );
        assert!(
            repair * 2 <= missing_bytes * 3,
            "seed {seed}: {repair} B to repair {missing_bytes} B"
        );
        for &id in &ids {
            assert_eq!(sim.holders(id), sim.live_nodes());
        }
    }
}

#[test]
fn the_report_times_convergence_after_a_configured_partition_heals() {
    for seed in SEEDS {
        let report = Sim::new(SimConfig {
            partition_ms: 10_000,
            ..small(80, seed)
        })
        .run();
        println!("seed {seed}\n{report}");
        let healed_in = report
            .heal_to_converged_ms
            .expect("every earlier write got everywhere");
        assert!(
            healed_in <= 15_000,
            "seed {seed}: {healed_in} ms, over three sync periods"
        );
        assert!(report.parent_latency_joined_ms > 0.0 && report.parent_latency_end_ms > 0.0);
        assert!(report.bytes_per_node_round > 0.0);
    }
}

#[test]
fn with_every_root_dead_the_rest_form_one_interim_tree_and_rejoin_a_restarted_root() {
    for seed in SEEDS {
        println!("seed {seed}");
        let mut sim = joined(40, seed);
        sim.crash(0);
        sim.crash(1);
        // Heartbeats missed (3 s), every root refused, then the cached peers.
        sim.run_until(sim.now_ms() + 20_000);
        sim.check_tree().unwrap();
        for writer in [2, 17, 39] {
            write_reaches_every_live_node(&mut sim, writer, seed);
        }
        // A root comes back (empty): the interim tree's top joins it, and with it everyone.
        sim.restart(0);
        sim.run_until(sim.now_ms() + 20_000);
        assert_eq!(
            sim.attached(),
            39,
            "seed {seed}: every live node is in the tree"
        );
        sim.check_tree().unwrap();
        write_reaches_every_live_node(&mut sim, 0, seed);
        write_reaches_every_live_node(&mut sim, 25, seed);
    }
}
