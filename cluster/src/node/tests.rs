//! The node core driven directly, with a fake clock and hand-fed messages.

use std::net::SocketAddr;
use std::rc::Rc;

use super::*;
use crate::entry::{EntryStore, MemStore, Plaintext};
use crate::message::AckRequest;
use crate::sync::FilterData;
use crate::Version;

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 7800))
}

fn root(i: u8) -> LocalNode<MemStore> {
    let config = NodeConfig {
        id: u64::from(i),
        addr: addr(i),
        roots: vec![addr(i)],
        is_root: true,
        cluster: ClusterConfig {
            children_max_root: 2,
            ..ClusterConfig::default()
        },
    };
    LocalNode::new(config, MemStore::new(), 1, 0)
}

fn info(i: u8, role: Option<Role>) -> NodeInfo {
    NodeInfo {
        id: u64::from(i),
        addr: addr(i),
        role,
        children: 0,
        capacity: 0,
    }
}

fn drain(node: &mut LocalNode<MemStore>) -> Vec<(SocketAddr, Message)> {
    let mut out = Vec::new();
    while let Some(output) = node.poll_output() {
        if let Output::Send { to, msg } = output {
            out.push((to, msg));
        }
    }
    out
}

fn entry(key: &str, clock: u64) -> Entry {
    Entry {
        key: Rc::from(key.as_bytes()),
        value: Some(Plaintext::shared(b"v")),
        expires_ms: 60_000,
        version: Version { clock, node: 9 },
    }
}

fn attach(node: &mut LocalNode<MemStore>, child: u8) -> Message {
    let msg = Message::Attach {
        info: info(child, None),
    };
    node.handle(
        Input::Message {
            from: addr(child),
            msg,
        },
        0,
    );
    drain(node).pop().expect("a reply").1
}

/// Root 1 as a child sees it: a root with room.
fn root_info() -> NodeInfo {
    NodeInfo {
        capacity: 4,
        ..info(1, Some(Role::Root))
    }
}

/// Node 7, attached under root 1 at time 20 through a map, a ping and an attach reply; its
/// first dump from the root is under way.
fn child_of_root() -> LocalNode<MemStore> {
    let config = NodeConfig {
        id: 7,
        addr: addr(7),
        roots: vec![addr(1)],
        is_root: false,
        cluster: ClusterConfig::default(),
    };
    let mut node = LocalNode::new(config, MemStore::new(), 3, 0);
    drain(&mut node);
    let from = addr(1);
    let map = Message::TopologyMap {
        candidates: vec![root_info()],
        roots: vec![from],
    };
    node.handle(Input::Message { from, msg: map }, 0);
    let Some((_, Message::Ping { nonce, .. })) = drain(&mut node).pop() else {
        panic!("no ping to the one candidate")
    };
    let pong = Message::Pong {
        nonce,
        info: root_info(),
    };
    node.handle(Input::Message { from, msg: pong }, 10);
    assert!(matches!(
        drain(&mut node).pop(),
        Some((_, Message::Attach { .. }))
    ));
    let reply = Message::AttachReply {
        accepted: true,
        info: root_info(),
        path: vec![1],
    };
    node.handle(Input::Message { from, msg: reply }, 20);
    assert!(node.is_attached());
    drain(&mut node);
    node
}

#[test]
fn a_join_from_another_major_is_refused() {
    let mut node = root(1);
    let msg = Message::Join {
        major: PEER_PROTOCOL_MAJOR + 1,
        info: info(5, None),
    };
    node.handle(Input::Message { from: addr(5), msg }, 0);
    let sent = drain(&mut node);
    assert_eq!(
        sent,
        vec![(
            addr(5),
            Message::JoinRefused {
                major: PEER_PROTOCOL_MAJOR
            }
        )]
    );
}

#[test]
fn a_parent_refuses_children_past_its_capacity() {
    let mut node = root(1);
    assert!(matches!(
        attach(&mut node, 2),
        Message::AttachReply { accepted: true, .. }
    ));
    assert!(matches!(
        attach(&mut node, 3),
        Message::AttachReply { accepted: true, .. }
    ));
    assert!(matches!(
        attach(&mut node, 4),
        Message::AttachReply {
            accepted: false,
            ..
        }
    ));
    // A known child asking again is still accepted (its first reply may have been lost).
    assert!(matches!(
        attach(&mut node, 2),
        Message::AttachReply { accepted: true, .. }
    ));
    assert_eq!(node.children().count(), 2);
}

#[test]
fn a_push_is_forwarded_once_and_never_back_to_its_sender() {
    let mut node = root(1);
    attach(&mut node, 2);
    attach(&mut node, 3);
    let push = Message::Push {
        entries: vec![entry("k", 5)],
        ack: None,
    };
    node.handle(
        Input::Message {
            from: addr(2),
            msg: push.clone(),
        },
        10,
    );
    let sent = drain(&mut node);
    assert_eq!(
        sent,
        vec![(addr(3), push.clone())],
        "to the other child only"
    );
    // The same version again is a duplicate: dropped, not forwarded.
    node.handle(
        Input::Message {
            from: addr(3),
            msg: push,
        },
        11,
    );
    assert!(drain(&mut node).is_empty());
    // An older version is stale: dropped too.
    let older = Message::Push {
        entries: vec![entry("k", 4)],
        ack: None,
    };
    node.handle(
        Input::Message {
            from: addr(3),
            msg: older,
        },
        12,
    );
    assert!(drain(&mut node).is_empty());
    assert_eq!(node.store().get(b"k", 12).unwrap().version.clock, 5);
}

#[test]
fn a_local_write_goes_to_every_tree_neighbour() {
    let mut node = root(1);
    attach(&mut node, 2);
    attach(&mut node, 3);
    node.handle(Input::LocalWrite(entry("k", 1)), 5);
    let mut to: Vec<SocketAddr> = drain(&mut node).into_iter().map(|(a, _)| a).collect();
    to.sort();
    assert_eq!(to, vec![addr(2), addr(3)]);
}

#[test]
fn an_ancestor_is_never_taken_as_a_child() {
    // Node 7 is a trunk under root 1; root 1 asking 7 to adopt it would close a cycle.
    let mut node = child_of_root();
    assert_eq!(node.role(), Some(Role::Trunk));
    let reply = attach_from(&mut node, 1);
    assert!(
        matches!(
            reply,
            Message::AttachReply {
                accepted: false,
                ..
            }
        ),
        "{reply:?}"
    );
}

fn attach_from(node: &mut LocalNode<MemStore>, from: u8) -> Message {
    let msg = Message::Attach {
        info: info(from, Some(Role::Root)),
    };
    node.handle(
        Input::Message {
            from: addr(from),
            msg,
        },
        50,
    );
    drain(node).pop().expect("a reply").1
}

#[test]
fn a_silent_parent_is_replaced_after_missed_heartbeats() {
    let mut node = child_of_root();
    assert!(node.is_attached());
    // No heartbeat replies for longer than three intervals: the node joins again.
    for t in (1_000..=4_100).step_by(1_000) {
        node.handle(Input::Tick, t);
    }
    node.handle(Input::Tick, 4_100);
    assert!(!node.is_attached());
    assert!(drain(&mut node)
        .iter()
        .any(|(to, m)| *to == addr(1) && matches!(m, Message::Join { .. })));
    assert_eq!(node.counters().parent_losses, 1);
}

/// Delivers everything `a` and `b` send each other until both are quiet (bounded).
fn exchange(a: &mut LocalNode<MemStore>, b: &mut LocalNode<MemStore>, now_ms: u64) -> usize {
    let mut delivered = 0;
    for _ in 0..100 {
        let from_a = drain(a);
        let from_b = drain(b);
        if from_a.is_empty() && from_b.is_empty() {
            return delivered;
        }
        for (to, msg) in from_a {
            assert_eq!(to, b.info().addr);
            b.handle(
                Input::Message {
                    from: a.info().addr,
                    msg,
                },
                now_ms,
            );
            delivered += 1;
        }
        for (to, msg) in from_b {
            assert_eq!(to, a.info().addr);
            a.handle(
                Input::Message {
                    from: b.info().addr,
                    msg,
                },
                now_ms,
            );
            delivered += 1;
        }
    }
    panic!("the two nodes never went quiet");
}

fn with_entries(i: u8, keys: &[&str]) -> LocalNode<MemStore> {
    let mut node = root(i);
    for (n, key) in keys.iter().enumerate() {
        let mut e = entry(key, 10 + n as u64);
        e.expires_ms = 100_000 + 20_000 * n as u64;
        node.store_mut().apply(&e, 0);
    }
    drain(&mut node);
    node
}

#[test]
fn one_sync_round_repairs_both_sides_and_the_round_after_it_at_once_finds_them_in_sync() {
    let mut a = with_entries(1, &["x", "y", "shared"]);
    let mut b = with_entries(2, &["shared", "z"]);
    // Give "shared" the same version on both sides.
    let shared = a.store().get(b"shared", 0).unwrap();
    b.store_mut().apply(&shared, 0);
    // The entries were written at 0; past the settle time they count.
    a.open_round(b.info().addr, 3_000, false);
    exchange(&mut a, &mut b, 3_000);
    for key in ["x", "y", "shared", "z"] {
        assert!(
            a.store().get(key.as_bytes(), 3_000).is_some(),
            "a lacks {key}"
        );
        assert!(
            b.store().get(key.as_bytes(), 3_000).is_some(),
            "b lacks {key}"
        );
    }
    assert!(a.counters().sync_entries_applied >= 1 && b.counters().sync_entries_applied >= 2);
    // The round repaired something, so another followed at once and found them in sync.
    assert_eq!(a.counters().sync_rounds, 2);
    assert_eq!(a.counters().sync_rounds_in_sync, 1);
    // A later round finds nothing to do either: summaries match, and none follows.
    a.open_round(b.info().addr, 4_000, false);
    let messages = exchange(&mut a, &mut b, 4_000);
    assert_eq!(messages, 2, "summary and in-sync only");
    assert_eq!(a.counters().sync_rounds_in_sync, 2);
}

#[test]
fn repairs_past_a_rounds_byte_bound_continue_in_rounds_back_to_back_until_both_hold_all() {
    let keys: Vec<String> = (0..40).map(|i| format!("key-{i:02}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut a = with_entries(1, &keys);
    let mut b = with_entries(2, &[]);
    // About five entries a round.
    let one = a.store().get(b"key-00", 0).expect("held").wire_bytes();
    for node in [&mut a, &mut b] {
        node.config.cluster.sync_bytes_per_round_max = 5 * one;
    }
    a.open_round(b.info().addr, 3_000, false);
    exchange(&mut a, &mut b, 3_000);
    for key in &keys {
        assert!(
            b.store().get(key.as_bytes(), 3_000).is_some(),
            "b lacks {key}"
        );
    }
    let rounds = a.counters().sync_rounds;
    assert!(
        (8..=10).contains(&rounds),
        "{rounds} rounds for 40 entries, 5 a round"
    );
    assert_eq!(
        a.counters().sync_rounds_in_sync,
        1,
        "the last round confirms"
    );
}

#[test]
fn writes_younger_than_the_settle_time_are_left_to_the_push() {
    let mut a = with_entries(1, &["x", "y"]);
    let mut b = with_entries(2, &["z"]);
    let settle = ClusterConfig::default().sync_settle_ms;
    // Written at 0: within the settle time the round sees two empty, equal views.
    a.open_round(b.info().addr, settle, false);
    assert_eq!(exchange(&mut a, &mut b, settle), 2, "summary and in-sync");
    assert!(b.store().get(b"x", settle).is_none());
    // One millisecond later every entry counts, and the round repairs both sides.
    a.open_round(b.info().addr, settle + 1, false);
    exchange(&mut a, &mut b, settle + 1);
    for key in ["x", "y", "z"] {
        assert!(
            a.store().get(key.as_bytes(), settle + 1).is_some(),
            "a lacks {key}"
        );
        assert!(
            b.store().get(key.as_bytes(), settle + 1).is_some(),
            "b lacks {key}"
        );
    }
}

#[test]
fn buckets_about_to_expire_are_left_out_of_sync() {
    let mut a = root(1);
    let mut b = root(2);
    let mut soon = entry("soon", 1);
    soon.expires_ms = 3_000; // expires within the skip margin of now
    b.store_mut().apply(&soon, 0);
    a.open_round(b.info().addr, 1_500, false);
    exchange(&mut a, &mut b, 1_500);
    assert!(a.store().get(b"soon", 1_500).is_none());
    assert_eq!(
        a.counters().sync_rounds_in_sync,
        1,
        "the soon-expiring bucket does not count"
    );
}

#[test]
fn a_malformed_filter_from_a_peer_is_refused_without_harm() {
    let mut node = with_entries(1, &["x"]);
    let bucket = crate::sync::bucket_of(100_000, crate::sync::SYNC_BUCKET_MS);
    let lie = FilterData::Fuse8 {
        seed: 1,
        segment_length: 1 << 20,
        segment_length_mask: (1 << 20) - 1,
        segment_count_length: 1 << 30,
        fingerprints: vec![0; 64],
    };
    let msg = Message::SyncFilters {
        round: 5,
        filters: vec![(bucket, lie)],
        answer: true,
        settled_before_ms: u64::MAX,
    };
    node.handle(Input::Message { from: addr(9), msg }, 1_000);
    assert_eq!(node.counters().filters_refused, 1);
    let sent = drain(&mut node);
    assert!(
        sent.iter()
            .all(|(_, m)| !matches!(m, Message::SyncEntries { .. })),
        "nothing sent on the strength of a bad filter"
    );
}

fn pull_done(node: &mut LocalNode<MemStore>) -> Vec<(u64, Option<Entry>)> {
    let mut done = Vec::new();
    while let Some(output) = node.poll_output() {
        if let Output::PullDone { request, entry } = output {
            done.push((request, entry));
        }
    }
    done
}

#[test]
fn a_local_miss_asks_the_neighbours_and_the_first_hit_wins() {
    let mut node = root(1);
    attach(&mut node, 2);
    attach(&mut node, 3);
    node.handle(
        Input::LocalMiss {
            request: 7,
            key: Rc::from(b"k".as_slice()),
        },
        100,
    );
    let asked = drain(&mut node);
    assert_eq!(asked.len(), 2, "both neighbours asked in parallel");
    let Message::Pull { nonce, .. } = asked[0].1.clone() else {
        panic!("a pull")
    };
    let reply = Message::PullReply {
        nonce,
        entry: Some(entry("k", 3)),
    };
    node.handle(
        Input::Message {
            from: addr(3),
            msg: reply.clone(),
        },
        120,
    );
    assert_eq!(pull_done(&mut node), vec![(7, Some(entry("k", 3)))]);
    assert!(
        node.store().get(b"k", 130).is_some(),
        "stored for the next read"
    );
    // The slower neighbour's answer changes nothing.
    node.handle(
        Input::Message {
            from: addr(2),
            msg: reply,
        },
        140,
    );
    assert!(pull_done(&mut node).is_empty());
}

#[test]
fn a_pull_nobody_answers_ends_at_its_deadline_and_is_cached_as_a_miss() {
    let mut node = root(1);
    attach(&mut node, 2);
    let key: Rc<[u8]> = Rc::from(b"missing".as_slice());
    node.handle(
        Input::LocalMiss {
            request: 1,
            key: key.clone(),
        },
        0,
    );
    drain(&mut node);
    assert!(node.next_wake_ms() <= 300, "wakes for the deadline");
    node.handle(Input::Tick, 300);
    assert_eq!(pull_done(&mut node), vec![(1, None)]);
    // Asked again at once: answered from the miss cache, no message sent.
    node.handle(Input::LocalMiss { request: 2, key }, 400);
    let outputs: Vec<Output> = std::iter::from_fn(|| node.poll_output()).collect();
    assert!(
        matches!(
            outputs.as_slice(),
            [Output::PullDone {
                request: 2,
                entry: None
            }]
        ),
        "{outputs:?}"
    );
}

#[test]
fn pulls_are_answered_from_local_data_only_and_capped() {
    let mut node = with_entries(1, &["here"]);
    let ask = |node: &mut LocalNode<MemStore>, key: &str, nonce| {
        let msg = Message::Pull {
            nonce,
            key: Rc::from(key.as_bytes()),
        };
        node.handle(Input::Message { from: addr(5), msg }, 1_000);
        drain(node)
    };
    let sent = ask(&mut node, "here", 1);
    assert!(matches!(
        &sent[..],
        [(_, Message::PullReply { entry: Some(_), .. })]
    ));
    let sent = ask(&mut node, "elsewhere", 2);
    assert!(
        matches!(&sent[..], [(_, Message::PullReply { entry: None, .. })]),
        "a miss is answered, never passed on: {sent:?}"
    );
    let cap = ClusterConfig::default().pull_answers_per_second_max;
    for nonce in 0..u64::from(cap) {
        ask(&mut node, "here", 10 + nonce);
    }
    // Past the cap the store is not asked, but the asker hears "not here" at once instead of
    // waiting out its deadline.
    let sent = ask(&mut node, "here", 1 << 40);
    assert!(
        matches!(&sent[..], [(_, Message::PullReply { entry: None, .. })]),
        "{sent:?}"
    );
    assert!(node.counters().pull_answers_dropped > 0);
}

#[test]
fn an_entry_expiring_beyond_the_longest_ttl_is_refused() {
    let mut node = root(1);
    let mut far = entry("far", 1);
    far.expires_ms = ClusterConfig::default().ttl_ms_max + 10_000;
    let push = Message::Push {
        entries: vec![far],
        ack: None,
    };
    node.handle(
        Input::Message {
            from: addr(2),
            msg: push,
        },
        0,
    );
    assert!(node.store().get(b"far", 0).is_none());
    assert_eq!(node.counters().entries_refused, 1);
}

#[test]
fn a_full_node_says_so_and_is_spared_pushes_for_a_while() {
    let config = NodeConfig {
        id: 1,
        addr: addr(1),
        roots: vec![addr(1)],
        is_root: true,
        cluster: ClusterConfig::default(),
    };
    let mut full = LocalNode::new(config, MemStore::with_capacity_limit(1), 1, 0);
    let push = Message::Push {
        entries: vec![entry("a", 1), entry("b", 1)],
        ack: None,
    };
    full.handle(
        Input::Message {
            from: addr(2),
            msg: push,
        },
        0,
    );
    let sent = drain(&mut full);
    assert!(
        sent.contains(&(
            addr(2),
            Message::Full {
                retry_after_ms: 30_000
            }
        )),
        "{sent:?}"
    );

    // The sender, told so, skips the full peer until the time is up.
    let mut sender = root(2);
    attach(&mut sender, 1);
    attach(&mut sender, 3);
    let msg = Message::Full {
        retry_after_ms: 30_000,
    };
    sender.handle(Input::Message { from: addr(1), msg }, 0);
    sender.handle(Input::LocalWrite(entry("c", 1)), 10);
    let to: Vec<SocketAddr> = drain(&mut sender).into_iter().map(|(a, _)| a).collect();
    assert_eq!(to, vec![addr(3)]);
    sender.handle(Input::LocalWrite(entry("d", 1)), 40_000);
    let to: Vec<SocketAddr> = drain(&mut sender).into_iter().map(|(a, _)| a).collect();
    assert!(to.contains(&addr(1)), "spared no longer: {to:?}");
}

#[test]
fn a_path_deeper_than_the_tree_is_refused() {
    let mut node = root(1);
    let msg = Message::HeartbeatReply {
        info: info(2, Some(Role::Branch)),
        is_child: true,
        path: vec![1, 2, 3, 4, 5],
        peers: Vec::new(),
    };
    node.handle(Input::Message { from: addr(2), msg }, 0);
    assert_eq!(node.counters().messages_refused, 1);
}

#[test]
fn a_push_of_more_entries_than_a_message_holds_is_cut_to_the_limit() {
    let mut node = root(1);
    let max = ClusterConfig::default().entries_per_message_max;
    let entries: Vec<Entry> = (0..max + 50).map(|i| entry(&format!("k{i}"), 1)).collect();
    node.handle(
        Input::Message {
            from: addr(2),
            msg: Message::Push { entries, ack: None },
        },
        0,
    );
    assert_eq!(node.counters().entries_applied, max as u64);
    assert_eq!(node.counters().messages_refused, 1);
}

#[test]
fn a_peer_found_stale_is_synced_with_first_until_it_catches_up() {
    let mut a = with_entries(1, &["x"]);
    let summary = Message::SyncSummary {
        round: 9,
        from_bucket: 0,
        summary: 12345,
        settled_before_ms: u64::MAX,
    };
    a.handle(
        Input::Message {
            from: addr(7),
            msg: summary,
        },
        100,
    );
    drain(&mut a);
    // A's own sync period comes: the stale peer is among those it opens rounds with.
    let due = a
        .next_wake_ms()
        .max(ClusterConfig::default().sync_interval_ms * 2);
    a.handle(Input::Tick, due);
    let to: Vec<SocketAddr> = drain(&mut a)
        .into_iter()
        .filter(|(_, m)| matches!(m, Message::SyncSummary { .. }))
        .map(|(to, _)| to)
        .collect();
    assert!(to.contains(&addr(7)), "{to:?}");
    // The peer answers in sync: no longer stale, so the next period leaves it out.
    let Some(round) = a.rounds.get(&addr(7)).map(|r| r.seed) else {
        panic!("a round with the stale peer")
    };
    a.handle(
        Input::Message {
            from: addr(7),
            msg: Message::SyncInSync { round },
        },
        due + 10,
    );
    let later = due + ClusterConfig::default().sync_interval_ms * 2;
    a.handle(Input::Tick, later);
    assert!(drain(&mut a)
        .iter()
        .all(|(to, m)| !(matches!(m, Message::SyncSummary { .. }) && *to == addr(7))));
}

#[test]
fn a_node_takes_its_dump_before_it_syncs() {
    let mut node = child_of_root();
    let root_info = root_info();
    assert!(node.is_dumping());
    let alive = |node: &mut LocalNode<MemStore>, at: u64| {
        let msg = Message::HeartbeatReply {
            info: root_info,
            is_child: true,
            path: vec![1],
            peers: Vec::new(),
        };
        node.handle(Input::Message { from: addr(1), msg }, at);
    };
    // A sync period passes with the dump still running (the parent alive): no round opens.
    for at in [2_000, 4_000, 5_990] {
        alive(&mut node, at);
    }
    node.handle(Input::Tick, 6_000);
    assert!(node.is_attached());
    assert!(drain(&mut node)
        .iter()
        .all(|(_, m)| !matches!(m, Message::SyncSummary { .. })));
    // The dump completes: the next period syncs.
    let chunk = Message::DumpChunk {
        entries: vec![entry("k", 1)],
        next: None,
    };
    node.handle(
        Input::Message {
            from: addr(1),
            msg: chunk,
        },
        6_100,
    );
    assert!(!node.is_dumping());
    for at in [8_000, 10_000, 11_990] {
        alive(&mut node, at);
    }
    node.handle(Input::Tick, 12_000);
    assert!(node.is_attached());
    assert!(drain(&mut node)
        .iter()
        .any(|(_, m)| matches!(m, Message::SyncSummary { .. })));
}

#[test]
fn a_periodic_round_leaves_a_catch_up_round_in_flight_alone() {
    let mut a = with_entries(1, &["x"]);
    let b = addr(2);
    a.open_round(b, 100, true);
    let sent = drain(&mut a);
    let Some((_, Message::SyncSummary { round, .. })) = sent
        .iter()
        .find(|(to, m)| *to == b && matches!(m, Message::SyncSummary { .. }))
        .cloned()
    else {
        panic!("no catch-up summary: {sent:?}")
    };
    // A periodic round comes due while the catch-up's answer is delayed: it is not opened.
    a.open_round(b, 600, false);
    assert!(drain(&mut a).is_empty(), "the catch-up round was replaced");
    // The catch-up's answer still counts: the round goes on to filters.
    let digests = Message::SyncDigests {
        round,
        digests: Vec::new(),
    };
    a.handle(
        Input::Message {
            from: b,
            msg: digests,
        },
        700,
    );
    assert!(drain(&mut a).iter().any(
        |(to, m)| *to == b && matches!(m, Message::SyncFilters { round: r, .. } if *r == round)
    ));
    // Once the round is old, a periodic one may start again.
    a.open_round(b, 100 + ClusterConfig::default().reply_timeout_ms, false);
    assert!(drain(&mut a)
        .iter()
        .any(|(_, m)| matches!(m, Message::SyncSummary { .. })));
}

fn writes_done(outputs: &[Output]) -> Vec<(u64, u32, bool)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::WriteDone {
                request,
                holders,
                complete,
            } => Some((*request, *holders, *complete)),
            _ => None,
        })
        .collect()
}

fn sends(outputs: &[Output]) -> Vec<(SocketAddr, Message)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send { to, msg } => Some((*to, msg.clone())),
            _ => None,
        })
        .collect()
}

fn write_copies(node: &mut LocalNode<MemStore>, request: u64, copies: u8, now_ms: u64) {
    node.handle(
        Input::LocalWriteCopies {
            entry: entry("w", 1),
            request,
            copies,
            timeout_ms: 1_000,
        },
        now_ms,
    );
}

#[test]
fn a_write_wanting_three_copies_is_done_once_two_more_nodes_say_they_hold_it() {
    let mut node = root(1);
    attach(&mut node, 2);
    write_copies(&mut node, 7, 3, 100);
    let outputs: Vec<Output> = std::iter::from_fn(|| node.poll_output()).collect();
    let sent = sends(&outputs);
    let [(to, Message::Push { ack: Some(ack), .. })] = sent.as_slice() else {
        panic!("one push asking for acknowledgements: {sent:?}")
    };
    assert_eq!((*to, ack.want), (addr(2), 2), "two hops wanted");
    assert!(writes_done(&outputs).is_empty(), "not done before any copy");
    // The child holds it: two copies of three.
    let ack_msg = |holders| Message::PushAck {
        nonce: ack.nonce,
        holders,
    };
    node.handle(
        Input::Message {
            from: addr(2),
            msg: ack_msg(1),
        },
        110,
    );
    assert!(writes_done(&std::iter::from_fn(|| node.poll_output()).collect::<Vec<_>>()).is_empty());
    // The child's child holds it too (relayed by the child): done.
    node.handle(
        Input::Message {
            from: addr(2),
            msg: ack_msg(1),
        },
        120,
    );
    let outputs: Vec<Output> = std::iter::from_fn(|| node.poll_output()).collect();
    assert_eq!(writes_done(&outputs), vec![(7, 3, true)]);
    // Later acknowledgements of the same write change nothing.
    node.handle(
        Input::Message {
            from: addr(2),
            msg: ack_msg(1),
        },
        130,
    );
    assert!(writes_done(&std::iter::from_fn(|| node.poll_output()).collect::<Vec<_>>()).is_empty());
    assert_eq!(node.counters().writes_copied, 1);
}

#[test]
fn a_node_acknowledges_a_push_and_relays_the_acknowledgements_of_the_next_hop() {
    let mut node = root(1);
    attach(&mut node, 2);
    attach(&mut node, 3);
    let push = Message::Push {
        entries: vec![entry("k", 5)],
        ack: Some(AckRequest { nonce: 55, want: 2 }),
    };
    node.handle(
        Input::Message {
            from: addr(2),
            msg: push,
        },
        10,
    );
    let sent = drain(&mut node);
    assert!(
        sent.contains(&(
            addr(2),
            Message::PushAck {
                nonce: 55,
                holders: 1
            }
        )),
        "acknowledged to the sender once applied: {sent:?}"
    );
    let onward = sent
        .iter()
        .find_map(|(to, msg)| match msg {
            Message::Push { ack: Some(ack), .. } if *to == addr(3) => Some(*ack),
            _ => None,
        })
        .expect("pushed on to the other child, asking one more hop");
    assert_eq!(onward.want, 1);
    assert_ne!(onward.nonce, 55, "its own nonce for the next hop");
    node.handle(
        Input::Message {
            from: addr(3),
            msg: Message::PushAck {
                nonce: onward.nonce,
                holders: 1,
            },
        },
        20,
    );
    assert_eq!(
        drain(&mut node),
        vec![(
            addr(2),
            Message::PushAck {
                nonce: 55,
                holders: 1
            }
        )],
        "the next hop's acknowledgement goes back along the push"
    );
    // A push wanting one hop only is acknowledged and passed on without asking further.
    let last_hop = Message::Push {
        entries: vec![entry("j", 5)],
        ack: Some(AckRequest { nonce: 56, want: 1 }),
    };
    node.handle(
        Input::Message {
            from: addr(2),
            msg: last_hop,
        },
        30,
    );
    let sent = drain(&mut node);
    assert!(sent
        .iter()
        .any(|(to, msg)| *to == addr(3) && matches!(msg, Message::Push { ack: None, .. })));
}

#[test]
fn a_write_whose_copies_do_not_come_is_answered_at_its_deadline_with_what_it_has() {
    let mut node = root(1);
    attach(&mut node, 2);
    write_copies(&mut node, 9, 3, 100);
    drain(&mut node);
    assert!(node.next_wake_ms() <= 1_100, "wakes for the deadline");
    node.handle(Input::Tick, 1_099);
    assert!(writes_done(&std::iter::from_fn(|| node.poll_output()).collect::<Vec<_>>()).is_empty());
    node.handle(Input::Tick, 1_100);
    let outputs: Vec<Output> = std::iter::from_fn(|| node.poll_output()).collect();
    assert_eq!(writes_done(&outputs), vec![(9, 1, false)]);
    assert_eq!(node.counters().writes_copies_timed_out, 1);
}

#[test]
fn a_write_wanting_copies_on_a_node_alone_is_answered_at_once() {
    let mut node = root(1);
    write_copies(&mut node, 4, 2, 100);
    let outputs: Vec<Output> = std::iter::from_fn(|| node.poll_output()).collect();
    assert_eq!(writes_done(&outputs), vec![(4, 1, false)]);
    // One copy is this node's own: done at once, whoever is around.
    attach(&mut node, 2);
    write_copies(&mut node, 5, 1, 200);
    let outputs: Vec<Output> = std::iter::from_fn(|| node.poll_output()).collect();
    assert_eq!(writes_done(&outputs), vec![(5, 1, true)]);
}

#[test]
fn pulls_waiting_on_a_slow_store_are_capped_and_the_rest_hear_not_here_at_once() {
    let config = NodeConfig {
        id: 1,
        addr: addr(1),
        roots: vec![addr(1)],
        is_root: true,
        cluster: ClusterConfig::default(),
    };
    let cap = config.cluster.pull_answers_waiting_max;
    // A bare node: its store requests stay unanswered, as a store that is behind leaves them.
    let mut node = Node::new(config, 1, 0);
    for nonce in 0..u64::from(cap) + 10 {
        let msg = Message::Pull {
            nonce,
            key: Rc::from(&b"k"[..]),
        };
        node.handle(Input::Message { from: addr(5), msg }, 1_000);
    }
    let (mut asked, mut not_here) = (0, 0);
    while let Some(output) = node.poll_output() {
        match output {
            Output::Store { .. } => asked += 1,
            Output::Send {
                msg: Message::PullReply { entry: None, .. },
                ..
            } => not_here += 1,
            _ => {}
        }
    }
    assert_eq!((asked, not_here), (cap, 10));
    assert_eq!(node.counters().pull_answers_dropped, 10);
}
