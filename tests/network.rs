//! A real network: several `repram serve` processes on 127.0.0.1 joining one root, pushing
//! writes to each other and bootstrapping a newcomer with a dump. Replication is checked with
//! `local_only` reads, which never ask peers.

mod common;

use std::time::{Duration, Instant};

use common::relay::{node_behind_relay_with, Relay};
use common::{held_within, NodeProcess};
use repram::client::{BlockingClient, ClientOptions};
use repram::cluster::message::Message;

/// A shard-aware client: each request goes straight to the shard that owns its key.
fn client(node: &NodeProcess) -> BlockingClient {
    let options = ClientOptions {
        shard_aware: true,
        ..ClientOptions::default()
    };
    BlockingClient::connect(&node.client.to_string(), &options).expect("connect")
}

/// Starts a node that joins through `root` (none: a root itself).
fn node(root: Option<&NodeProcess>) -> NodeProcess {
    match root {
        None => NodeProcess::start(&["--shards", "2"]),
        Some(root) => NodeProcess::start(&["--shards", "2", "--root", &root.peer.to_string()]),
    }
}

#[test]
fn writes_on_any_node_reach_every_node_and_a_newcomer_takes_what_came_before() {
    // Five nodes: two of two shards, three of one (two cores run them all).
    let root = node(None);
    let b = node(Some(&root));
    let one_shard = |root: &NodeProcess| {
        NodeProcess::start(&["--shards", "1", "--root", &root.peer.to_string()])
    };
    let (c, d, e) = (one_shard(&root), one_shard(&root), one_shard(&root));
    let clients = [
        client(&root),
        client(&b),
        client(&c),
        client(&d),
        client(&e),
    ];
    // The tree forms: a write on the last joiner shows up everywhere.
    wait_spread(
        &clients[4],
        &clients[..4].iter().collect::<Vec<_>>(),
        Duration::from_secs(15),
        &|| "the five nodes never formed a network".to_string(),
    );

    // Once joined, a write on any node is on every node within a second.
    for (i, writer) in clients.iter().enumerate() {
        let key = format!("from-{i}");
        let value = format!("value {i}");
        writer
            .put(key.as_bytes(), value.as_bytes(), Duration::from_secs(60))
            .expect("put");
        for (j, reader) in clients.iter().enumerate() {
            assert!(
                held_within(reader, key.as_bytes(), Duration::from_secs(1)),
                "node {j} lacks the write made on node {i} after 1 s"
            );
            let got = reader
                .get_local(key.as_bytes())
                .expect("get")
                .expect("held");
            assert_eq!(got.bytes, value.as_bytes());
        }
    }
    // A delete travels the same way.
    clients[1].delete(b"from-0").expect("delete");
    for (j, reader) in clients.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(1);
        while reader.get_local(b"from-0").expect("get").is_some() {
            assert!(
                Instant::now() < deadline,
                "node {j} still serves a deleted key"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    // Every node holds the same entries: the live-set digests in their stats agree. (A probe
    // written on a node still joining was pushed nowhere: a sync round brings it, 5 s apart.)
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let sets: Vec<(u64, u64)> = clients
            .iter()
            .map(|c| {
                let stats = c.stats().expect("stats");
                (stats.total.live_set_count, stats.total.live_set_xor)
            })
            .collect();
        if sets.windows(2).all(|w| w[0] == w[1]) {
            assert!(sets[0].0 >= 4, "the writes and the tombstone: {sets:?}");
            break;
        }
        assert!(Instant::now() < deadline, "live sets differ: {sets:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let network: Vec<_> = clients
        .iter()
        .map(|c| c.stats().expect("stats").network)
        .collect();
    assert_eq!(network[0].role, 0, "the first node is the root");
    assert!(
        network[1..].iter().all(|n| (1..=3).contains(&n.role)),
        "{network:?}"
    );
    let edges: u64 = network.iter().map(|n| n.children).sum();
    assert_eq!(edges, 4, "five nodes, one tree: {network:?}");
    for (i, n) in network.iter().enumerate() {
        assert!(n.writes_pushed >= 1, "node {i} pushed its writes: {n:?}");
        assert!(
            n.entries_received >= 4,
            "node {i} took others' writes: {n:?}"
        );
        assert!(n.bytes_sent > 0 && n.bytes_received > 0, "{n:?}");
        assert_eq!(n.pulls_hit + n.pulls_missed, 0, "local reads never pulled");
    }
    assert!(
        network[1..].iter().all(|n| n.dumps_completed == 1),
        "{network:?}"
    );

    // Keys written before a node joins are on it after its bootstrap dump.
    for i in 0..200 {
        clients[i % 5]
            .put(
                format!("early-{i}").as_bytes(),
                b"v",
                Duration::from_secs(60),
            )
            .expect("put");
    }
    let late = node(Some(&root));
    let late_client = client(&late);
    for i in 0..200 {
        let key = format!("early-{i}");
        assert!(
            held_within(&late_client, key.as_bytes(), Duration::from_secs(10)),
            "the newcomer lacks {key}"
        );
    }
    assert!(
        late_client.get_local(b"from-0").expect("get").is_none(),
        "the newcomer took the tombstone, not the deleted value"
    );
    let late_network = late_client.stats().expect("stats").network;
    assert!(
        late_network.dump_entries_received >= 200,
        "the early keys came in its dump: {late_network:?}"
    );
    // Entries sent: every write was pushed once per tree edge (plus the dump).
    let sent: u64 = clients
        .iter()
        .map(|c| c.stats().expect("stats").network.entries_sent)
        .sum();
    assert!(sent >= 4 * 200 + 200, "{sent} entries sent in all");
}

#[test]
fn a_lone_node_pushes_no_write_until_it_has_a_neighbour_and_a_newcomer_still_gets_them_all() {
    let root = node(None);
    let alone = client(&root);
    for i in 0..20 {
        let key = format!("early-{i}");
        alone
            .put(key.as_bytes(), b"written alone", Duration::from_secs(120))
            .expect("put");
    }
    let network = alone.stats().expect("stats").network;
    assert_eq!(
        (network.writes_pushed, network.writes_not_pushed),
        (0, 0),
        "nobody to push to, so nothing handed to the network: {network:?}"
    );

    let newcomer = node(Some(&root));
    let joined = client(&newcomer);
    // What came before arrives with the bootstrap dump...
    for i in 0..20 {
        let key = format!("early-{i}");
        assert!(
            held_within(&joined, key.as_bytes(), Duration::from_secs(15)),
            "{key} never reached the newcomer"
        );
    }
    // ... and a write once the newcomer is attached is pushed to it.
    wait_spread(&alone, &[&joined], Duration::from_secs(15), &|| {
        "the newcomer never attached".to_string()
    });
    let network = alone.stats().expect("stats").network;
    assert!(network.writes_pushed >= 1, "{network:?}");
}

#[test]
fn no_plaintext_of_a_replicated_value_stays_in_either_nodes_memory() {
    const MASK: u8 = 0x5A;
    let mut marker = [0u8; common::memscan::PATTERN];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut marker).unwrap();
    let masked = marker.map(|b| b ^ MASK);
    let root = node(None);
    let other = node(Some(&root));
    let (writer, reader) = (client(&root), client(&other));
    // Values written on the root travel to the other node by push (and the tree forms first).
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut i = 0u32;
    loop {
        // As in the single-node test, the marker opens the value: the scan sees live buffers.
        // (Past a freed block's first 8 bytes it would also see freed memory; that sharper
        // check still finds a leak on the read path, see ARCHITECTURE.md, known limits.)
        let value = [marker.as_slice(), &i.to_le_bytes(), &[7u8; 64]].concat();
        let key = format!("secret-{i}");
        writer
            .put(key.as_bytes(), &value, Duration::from_secs(300))
            .expect("put");
        if held_within(&reader, key.as_bytes(), Duration::from_millis(200)) {
            break;
        }
        i += 1;
        assert!(
            Instant::now() < deadline,
            "the two nodes never formed a network"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    for (name, process) in [("writer", &root), ("receiver", &other)] {
        assert_eq!(
            common::memscan::occurrences(&process.pid().to_string(), &masked, MASK),
            0,
            "a replicated value's plaintext lingers in the {name}'s memory"
        );
    }
    // The value is intact where it was sent.
    let key = format!("secret-{i}");
    let got = reader
        .get_local(key.as_bytes())
        .expect("get")
        .expect("held");
    assert_eq!(&got.bytes[..32], marker.as_slice());
}

#[test]
fn a_stopping_node_says_goodbye_so_the_tree_mends_at_once() {
    let root = node(None);
    let others = [node(Some(&root)), node(Some(&root))];
    let stats = |n: &NodeProcess| client(n).stats().expect("stats").network;
    let deadline = Instant::now() + Duration::from_secs(15);
    while stats(&root).children + stats(&others[0]).children + stats(&others[1]).children != 2 {
        assert!(Instant::now() < deadline, "the tree never formed");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The node to stop is a child of the root: the middle of a chain, or either of a star.
    let [mut leaving, mut staying] = others;
    if stats(&staying).children == 1 {
        std::mem::swap(&mut leaving, &mut staying);
    }
    let staying_client = client(&staying);
    let root_client = client(&root);
    // It leaves on SIGTERM, telling its parent and children first. Gone silently, it would stay
    // the root's child for three missed heartbeats, and its child would wait as long.
    let status = leaving.terminate().expect("stopped");
    assert!(status.success(), "exit status {status}");
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let root_children = root_client.stats().expect("stats").network.children;
        let role = staying_client.stats().expect("stats").network.role;
        if root_children == 1 && role == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "1 s after a child of the root left: the root has {root_children} children, the \
             other node's role is {role}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn when_a_parent_is_killed_its_child_reattaches_and_keeps_its_data_and_the_writes() {
    let stats = |n: &NodeProcess| client(n).stats().expect("stats").network;
    let root = node(None);
    let mut parent = node(Some(&root));
    let deadline = Instant::now() + Duration::from_secs(15);
    while stats(&root).children != 1 {
        assert!(Instant::now() < deadline, "the first joiner never attached");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Joining once the first is attached, the second attaches below it: the deepest layer
    // with room. A chain of three.
    let child = node(Some(&root));
    while stats(&parent).children != 1 {
        assert!(
            Instant::now() < deadline,
            "the second joiner did not attach below the first (root has {} children)",
            stats(&root).children
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (root_client, child_client) = (client(&root), client(&child));
    for i in 0..50 {
        root_client
            .put(
                format!("before-{i}").as_bytes(),
                b"v",
                Duration::from_secs(120),
            )
            .expect("put");
    }
    assert!(held_within(
        &child_client,
        b"before-49",
        Duration::from_secs(2)
    ));

    // Kill -9: no goodbye. The child notices (its heartbeats fail), goes back to the root and
    // re-attaches there.
    parent.child.kill().expect("kill");
    let _ = parent.child.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats(&child).role != 1 || stats(&root).children != 1 {
        assert!(
            Instant::now() < deadline,
            "10 s after its parent died the child has role {} and the root {} children",
            stats(&child).role,
            stats(&root).children
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // What it held is intact, and new writes reach it again.
    for i in 0..50 {
        let key = format!("before-{i}");
        assert!(
            child_client
                .get_local(key.as_bytes())
                .expect("get")
                .is_some(),
            "{key} lost"
        );
    }
    root_client
        .put(b"after", b"v", Duration::from_secs(120))
        .expect("put");
    assert!(
        held_within(&child_client, b"after", Duration::from_secs(2)),
        "a write after the heal did not reach the re-attached child"
    );
}

/// Starts a node behind a fault relay (two shards): it advertises the relay's address, so
/// every peer's messages to it pass through the relay.
fn node_behind_relay(root: Option<&NodeProcess>, extra: &[&str]) -> (NodeProcess, Relay) {
    let mut args = vec!["--shards", "2"];
    args.extend_from_slice(extra);
    node_behind_relay_with(root, &args)
}

/// Writes probes on `writer` until `reader` holds one: the two are in one network; then
/// waits for `reader`'s first dump to finish (a dump still under way carries later writes
/// too).
fn wait_joined(writer: &BlockingClient, reader: &BlockingClient) {
    wait_spread(writer, &[reader], Duration::from_secs(15), &|| {
        "the nodes never formed a network".to_string()
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let network = reader.stats().expect("stats").network;
        if network.dumps_completed >= 1 && network.dumping == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the joiner's dump never finished: {network:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_read_that_misses_locally_pulls_the_value_from_a_neighbour() {
    let root = node(None);
    let (lagging, relay) = node_behind_relay(Some(&root), &[]);
    let (writer, reader) = (client(&root), client(&lagging));
    wait_joined(&writer, &reader);
    // Pushes to the lagging node are lost from now on: it has not synced what follows.
    relay.drop_frames(Box::new(|msg| matches!(msg, Message::Push { .. })));
    for i in 0..20 {
        writer
            .put(
                format!("pulled-{i}").as_bytes(),
                format!("value {i}").as_bytes(),
                Duration::from_secs(60),
            )
            .expect("put");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(relay.frames_dropped() >= 1, "the relay saw no push");
    for i in 0..20 {
        let key = format!("pulled-{i}");
        assert!(
            reader.get_local(key.as_bytes()).expect("get").is_none(),
            "{key} arrived although pushes were dropped"
        );
    }
    let before_stats = reader.stats().expect("stats");
    let before = before_stats.network.clone();
    // A normal read asks the neighbours and gets the value; the next read is local.
    for i in 0..20 {
        let key = format!("pulled-{i}");
        let got = reader.get(key.as_bytes()).expect("get").expect("pulled");
        assert_eq!(got.bytes, format!("value {i}").as_bytes());
        assert!(
            held_within(&reader, key.as_bytes(), Duration::from_secs(1)),
            "a pulled value is kept for the next read"
        );
    }
    // A key no node has is not found, promptly (the pull's deadline), never a hang.
    let started = Instant::now();
    assert!(reader.get(b"nobody-has-it").expect("get").is_none());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a missing key took {:?}",
        started.elapsed()
    );
    let after_stats = reader.stats().expect("stats");
    let after = after_stats.network.clone();
    // Every read has its latency counted, those the network answered too.
    let gets = after_stats.total.gets - before_stats.total.gets;
    let timed = after_stats.total.latency[1].count() - before_stats.total.latency[1].count();
    assert_eq!(timed, gets, "reads timed against reads made");
    assert_eq!(after.pulls_hit - before.pulls_hit, 20, "{after:?}");
    assert_eq!(after.pulls_missed - before.pulls_missed, 1, "{after:?}");
    // `local_only` reads never asked.
    assert_eq!(before.pulls_hit + before.pulls_missed, 0, "{before:?}");
}

/// Cuts node `i` off from every other node (both directions), until `heal`.
fn isolate(nodes: &[(NodeProcess, Relay)], i: usize) {
    for (j, (_, relay)) in nodes.iter().enumerate() {
        if j == i {
            relay.partition();
        } else {
            relay.block(&[nodes[i].0.peer]);
        }
    }
}

fn heal(nodes: &[(NodeProcess, Relay)]) {
    for (_, relay) in nodes {
        relay.heal();
    }
}

#[test]
fn a_write_asking_three_copies_waits_for_them_or_is_accepted_pending_while_one_node_is_cut_off() {
    let timeout = ["--write-timeout", "1s"];
    let root = node_behind_relay(None, &timeout);
    let a = node_behind_relay(Some(&root.0), &timeout);
    let b = node_behind_relay(Some(&root.0), &timeout);
    let nodes = [root, a, b];
    let clients: Vec<BlockingClient> = nodes.iter().map(|(n, _)| client(n)).collect();
    wait_joined(&clients[0], &clients[1]);
    wait_joined(&clients[0], &clients[2]);

    let stored = clients[0]
        .put_copies(b"three", b"v", Duration::from_secs(120), 3)
        .expect("put");
    assert!(!stored.pending, "{stored:?}");
    assert_eq!(stored.copies, 3, "{stored:?}");
    for (i, c) in clients.iter().enumerate() {
        assert!(
            c.get_local(b"three").expect("get").is_some(),
            "node {i} confirmed a copy it does not hold"
        );
    }

    // Node b is cut off: only two nodes can hold the next write, and the node says so once
    // its write timeout passes.
    isolate(&nodes, 2);
    let started = Instant::now();
    let stored = clients[0]
        .put_copies(b"partitioned", b"v", Duration::from_secs(120), 3)
        .expect("put");
    let waited = started.elapsed();
    assert!(stored.pending, "{stored:?}");
    assert!(stored.copies < 3, "{stored:?}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "answered after {waited:?} with a 1 s write timeout"
    );
    assert!(clients[2].get_local(b"partitioned").expect("get").is_none());

    // Once the partition heals, the value reaches b all the same.
    heal(&nodes);
    assert!(
        held_within(&clients[2], b"partitioned", Duration::from_secs(20)),
        "the pending write never reached the node that was cut off"
    );
    let network = clients[2].stats().expect("stats").network;
    assert_eq!(network.pulls_hit + network.pulls_missed, 0, "{network:?}");
    let writer = clients[0].stats().expect("stats").network;
    assert_eq!(
        (writer.writes_copied, writer.writes_copies_timed_out),
        (1, 1),
        "{writer:?}"
    );
    // Bytes by kind add up to the totals, and acknowledgements were among them.
    assert_eq!(
        writer.bytes_sent_by_kind.iter().sum::<u64>(),
        writer.bytes_sent
    );
    assert_eq!(
        writer.bytes_received_by_kind.iter().sum::<u64>(),
        writer.bytes_received
    );
    let push_ack = Message::KINDS
        .iter()
        .position(|k| *k == "push_ack")
        .expect("kind");
    assert!(writer.bytes_received_by_kind[push_ack] > 0, "{writer:?}");
}

#[test]
fn topology_shows_the_tree_from_the_root_and_from_a_child() {
    let root = node(None);
    let child = node(Some(&root));
    let (root_client, child_client) = (client(&root), client(&child));
    wait_joined(&root_client, &child_client);
    let deadline = Instant::now() + Duration::from_secs(5);
    let (top, below) = loop {
        let top = root_client.topology().expect("topology");
        let below = child_client.topology().expect("topology");
        // The child's first heartbeat reply brings its path and round trip.
        if below.parent_rtt_ms.is_some() && !below.path.is_empty() {
            break (top, below);
        }
        assert!(Instant::now() < deadline, "no heartbeat reply: {below:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(top.node.addr, root.peer.to_string());
    assert_eq!((top.node.role, top.attached), (0, true), "{top:?}");
    assert!(top.parent.is_none());
    let children: Vec<&str> = top.children.iter().map(|c| c.addr.as_str()).collect();
    assert_eq!(children, vec![child.peer.to_string()], "{top:?}");

    assert_eq!(below.node.addr, child.peer.to_string());
    assert_eq!((below.node.role, below.attached), (1, true), "{below:?}");
    let parent = below.parent.as_ref().expect("a parent");
    assert_eq!(parent.addr, root.peer.to_string());
    assert_eq!(parent.node_id, top.node.node_id);
    assert_eq!(below.path, vec![top.node.node_id], "{below:?}");
    assert!(below.children.is_empty());
}

/// Writes probes on `writer` until every reader holds one within `within` of its write.
fn wait_spread(
    writer: &BlockingClient,
    readers: &[&BlockingClient],
    deadline: Duration,
    what: &dyn Fn() -> String,
) {
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let until = Instant::now() + deadline;
    loop {
        let i = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = format!("spread-probe-{i}");
        writer
            .put(key.as_bytes(), b"x", Duration::from_secs(120))
            .expect("put");
        if readers
            .iter()
            .all(|r| held_within(r, key.as_bytes(), Duration::from_millis(500)))
        {
            return;
        }
        assert!(Instant::now() < until, "{}", what());
    }
}

#[test]
fn when_the_root_dies_the_others_keep_syncing_and_rejoin_it_when_it_returns() {
    // The root's address is a relay the test holds, so its restart (on whatever port) keeps it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind relay");
    let root_peer = listener.local_addr().expect("address").to_string();
    let root_args = ["--shards", "1", "--peer-advertise", root_peer.as_str()];
    let mut root = NodeProcess::start(&root_args);
    let relay = Relay::on(listener, root.peer_listen);
    let others: Vec<NodeProcess> = (0..3)
        .map(|_| NodeProcess::start(&["--shards", "1", "--root", &root_peer]))
        .collect();
    let clients: Vec<BlockingClient> = others.iter().map(client).collect();
    let root_client = client(&root);
    wait_spread(
        &root_client,
        &clients.iter().collect::<Vec<_>>(),
        Duration::from_secs(15),
        &|| "the network never formed".to_string(),
    );
    for i in 0..30 {
        root_client
            .put(
                format!("before-{i}").as_bytes(),
                b"v",
                Duration::from_secs(300),
            )
            .expect("put");
    }
    drop(root_client);
    // Nodes learn of each other from their parent's heartbeat replies (two peers a second):
    // give them a few before the root goes.
    std::thread::sleep(Duration::from_secs(3));

    // Every root gone (kill -9): the other nodes keep their data, find each other through the
    // peers they knew, and writes on any of them reach the rest.
    root.child.kill().expect("kill");
    let _ = root.child.wait();
    for (w, writer) in clients.iter().enumerate() {
        let readers: Vec<&BlockingClient> = clients
            .iter()
            .enumerate()
            .filter(|&(r, _)| r != w)
            .map(|(_, c)| c)
            .collect();
        wait_spread(writer, &readers, Duration::from_secs(30), &|| {
            format!(
                "without the root, writes on node {w} stopped reaching the others: {:#?}",
                clients
                    .iter()
                    .map(|c| c.topology().expect("topology"))
                    .collect::<Vec<_>>()
            )
        });
    }
    for (n, c) in clients.iter().enumerate() {
        for i in 0..30 {
            let key = format!("before-{i}");
            assert!(
                c.get_local(key.as_bytes()).expect("get").is_some(),
                "node {n} lost {key}"
            );
        }
    }

    // The root comes back (empty, same address): it is rejoined, and takes part again.
    let root = NodeProcess::start(&root_args);
    relay.set_upstream(root.peer_listen);
    let root_client = client(&root);
    wait_spread(
        &root_client,
        &clients.iter().collect::<Vec<_>>(),
        Duration::from_secs(30),
        &|| "the restarted root was never rejoined".to_string(),
    );
    let views: Vec<_> = clients
        .iter()
        .map(|c| c.topology().expect("topology"))
        .collect();
    let top = root_client.topology().expect("topology");
    assert!(
        !top.children.is_empty(),
        "nobody attached to the restarted root: {top:#?} {:#?}",
        views
    );
    for (n, c) in clients.iter().enumerate() {
        let network = c.stats().expect("stats").network;
        assert_eq!(
            network.pulls_hit + network.pulls_missed,
            0,
            "node {n}: {network:?}"
        );
    }
}

/// Starts a root and `others` nodes joining it, each with one shard and behind a relay.
fn relayed_network(others: usize, extra: &[&str]) -> Vec<(NodeProcess, Relay)> {
    let mut args = vec!["--shards", "1"];
    args.extend_from_slice(extra);
    let root = node_behind_relay_with(None, &args);
    let mut nodes = vec![root];
    for _ in 0..others {
        let joined = node_behind_relay_with(Some(&nodes[0].0), &args);
        nodes.push(joined);
    }
    nodes
}

#[test]
fn after_a_partition_heals_both_sides_writes_are_everywhere_and_deleted_or_expired_keys_stay_gone()
{
    let nodes = relayed_network(3, &[]);
    let clients: Vec<BlockingClient> = nodes.iter().map(|(n, _)| client(n)).collect();
    for reader in &clients[1..] {
        wait_joined(&clients[0], reader);
    }
    let long = Duration::from_secs(300);
    clients[0].put(b"doomed", b"v", long).expect("put");
    clients[0]
        .put(b"short-lived", b"v", Duration::from_secs(2))
        .expect("put");
    for c in &clients {
        assert!(held_within(c, b"doomed", Duration::from_secs(2)));
        assert!(held_within(c, b"short-lived", Duration::from_secs(2)));
    }
    // Let heartbeat replies spread peer knowledge before the cut.
    std::thread::sleep(Duration::from_secs(3));

    // {root, 1} | {2, 3}, both ways.
    let side_a = [0usize, 1];
    let side_b = [2usize, 3];
    let addrs = |side: &[usize]| side.iter().map(|&i| nodes[i].0.peer).collect::<Vec<_>>();
    for &i in &side_a {
        nodes[i].1.block(&addrs(&side_b));
    }
    for &i in &side_b {
        nodes[i].1.block(&addrs(&side_a));
    }
    // Each side goes on working: writes on either side, and a delete on the root's side.
    for i in 0..20 {
        clients[i % 2]
            .put(format!("a-{i}").as_bytes(), b"v", long)
            .expect("put");
        clients[2 + i % 2]
            .put(format!("b-{i}").as_bytes(), b"v", long)
            .expect("put");
    }
    clients[1].delete(b"doomed").expect("delete");
    // The other side never saw these.
    std::thread::sleep(Duration::from_secs(1));
    assert!(clients[2].get_local(b"a-0").expect("get").is_none());
    assert!(clients[0].get_local(b"b-0").expect("get").is_none());
    assert!(clients[3].get_local(b"doomed").expect("get").is_some());
    // The short-lived key expires on both sides meanwhile.
    std::thread::sleep(Duration::from_secs(2));

    for (_, relay) in &nodes {
        relay.heal();
    }
    for (n, c) in clients.iter().enumerate() {
        for i in 0..20 {
            for key in [format!("a-{i}"), format!("b-{i}")] {
                assert!(
                    held_within(c, key.as_bytes(), Duration::from_secs(30)),
                    "node {n} lacks {key} after the heal"
                );
            }
        }
    }
    for (n, c) in clients.iter().enumerate() {
        // The other side held the value all along: the delete reaches it by sync, possibly
        // in a later message than the writes (within a few rounds, never undone).
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.get_local(b"doomed").expect("get").is_some() {
            assert!(
                Instant::now() < deadline,
                "node {n} still serves a key deleted during the partition"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            c.get_local(b"short-lived").expect("get").is_none(),
            "node {n} serves an expired key"
        );
        let network = c.stats().expect("stats").network;
        assert_eq!(
            network.pulls_hit + network.pulls_missed,
            0,
            "node {n}: {network:?}"
        );
    }
    // And the sets agree.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let sets: Vec<(u64, u64)> = clients
            .iter()
            .map(|c| {
                let t = c.stats().expect("stats").total;
                (t.live_set_count, t.live_set_xor)
            })
            .collect();
        if sets.windows(2).all(|w| w[0] == w[1]) {
            break;
        }
        assert!(Instant::now() < deadline, "live sets differ: {sets:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_rolling_restart_under_writes_loses_no_write_two_nodes_held() {
    // Each node keeps its advertised address across restarts: a relay the test holds, in front
    // of whatever port the node's current process bound (no port can be taken in between).
    let listeners: Vec<std::net::TcpListener> = (0..4)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind relay"))
        .collect();
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().expect("address").to_string())
        .collect();
    let start = |i: usize| {
        let mut args = vec!["--shards", "1", "--peer-advertise", addrs[i].as_str()];
        if i > 0 {
            args.extend(["--root", addrs[0].as_str()]);
        }
        NodeProcess::start(&args)
    };
    let mut nodes: Vec<NodeProcess> = (0..4).map(start).collect();
    let relays: Vec<Relay> = listeners
        .into_iter()
        .zip(&nodes)
        .map(|(listener, node)| Relay::on(listener, node.peer_listen))
        .collect();
    let mut clients: Vec<BlockingClient> = nodes.iter().map(client).collect();
    for reader in &clients[1..] {
        wait_joined(&clients[0], reader);
    }
    std::thread::sleep(Duration::from_secs(2));
    let mut held_by_two = Vec::new();
    let mut next = 0u32;
    let mut write_round =
        |clients: &[BlockingClient], down: Option<usize>, held: &mut Vec<String>| {
            for _ in 0..15 {
                let at = next as usize % clients.len();
                next += 1;
                if Some(at) == down {
                    continue;
                }
                let key = format!("rolling-{next}");
                if let Ok(stored) =
                    clients[at].put_copies(key.as_bytes(), b"v", Duration::from_secs(300), 2)
                {
                    if stored.copies >= 2 {
                        held.push(key);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        };
    // Each node in turn, the root included: stopped (SIGTERM), written around while it is
    // down, restarted empty at the same peer address, written around while it rejoins.
    for i in 0..4 {
        write_round(&clients, None, &mut held_by_two);
        let status = nodes[i].terminate().expect("stopped");
        assert!(status.success());
        write_round(&clients, Some(i), &mut held_by_two);
        nodes[i] = start(i);
        relays[i].set_upstream(nodes[i].peer_listen);
        clients[i] = client(&nodes[i]);
        write_round(&clients, None, &mut held_by_two);
        // Back in the network before the next one goes.
        let others: Vec<&BlockingClient> = clients
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(_, c)| c)
            .collect();
        wait_spread(&clients[i], &others, Duration::from_secs(30), &|| {
            format!("node {i} did not rejoin after its restart")
        });
    }
    assert!(
        held_by_two.len() >= 100,
        "{} writes held by two",
        held_by_two.len()
    );
    for (n, c) in clients.iter().enumerate() {
        for key in &held_by_two {
            assert!(
                held_within(c, key.as_bytes(), Duration::from_secs(20)),
                "node {n} lacks {key}, a write two nodes held"
            );
        }
    }
}

#[test]
fn a_trunk_whose_root_turns_slow_moves_to_the_faster_root_within_three_of_its_periods() {
    // Two roots, each behind a relay; rebalance every second (a trunk looks every 4 s).
    let listeners: Vec<std::net::TcpListener> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind relay"))
        .collect();
    let root_addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().expect("address").to_string())
        .collect();
    let common = [
        "--shards",
        "1",
        "--rebalance-interval",
        "1s",
        "--root",
        root_addrs[0].as_str(),
        "--root",
        root_addrs[1].as_str(),
    ];
    let mut roots = Vec::new();
    for (listener, advertise) in listeners.into_iter().zip(&root_addrs) {
        let mut args = common.to_vec();
        args.extend(["--peer-advertise", advertise.as_str()]);
        let node = NodeProcess::start(&args);
        let relay = Relay::on(listener, node.peer_listen);
        roots.push((node, relay));
    }
    let trunk = NodeProcess::start(&common);
    let trunk_client = client(&trunk);
    let parent = || {
        trunk_client
            .topology()
            .expect("topology")
            .parent
            .map(|p| p.addr)
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let first = loop {
        let topology = trunk_client.topology().expect("topology");
        if let (Some(p), Some(_)) = (&topology.parent, topology.parent_rtt_ms) {
            break p.addr.clone();
        }
        assert!(Instant::now() < deadline, "the trunk never attached");
        std::thread::sleep(Duration::from_millis(50));
    };
    let (slow, fast) = if first == root_addrs[0] {
        (0, 1)
    } else {
        (1, 0)
    };
    assert_eq!(trunk_client.topology().expect("topology").node.role, 1);

    // Its root turns slow: 80 ms more on every message to it (the trunk's heartbeats included).
    roots[slow].1.set_latency(Duration::from_millis(80));
    let turned_slow = Instant::now();
    let deadline = turned_slow + Duration::from_secs(3 * 4 + 3);
    while parent().as_deref() != Some(root_addrs[fast].as_str()) {
        assert!(
            Instant::now() < deadline,
            "after {:?} the trunk is still under {:?} (the slow root is {})",
            turned_slow.elapsed(),
            parent(),
            root_addrs[slow]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let topology = trunk_client.topology().expect("topology");
    assert_eq!(topology.node.role, 1, "it kept its role: {topology:?}");
    assert!(trunk_client.stats().expect("stats").network.rebalances >= 1);
}

#[test]
fn garbled_replayed_stalled_and_dropped_peer_traffic_costs_a_connection_at_most() {
    let root = node(None);
    let (node, relay) = node_behind_relay(Some(&root), &[]);
    let (writer, reader) = (client(&root), client(&node));
    wait_joined(&writer, &reader);
    let long = Duration::from_secs(300);
    let stats = || reader.stats().expect("stats").network;

    // A garbled frame is refused and its connection closed; the node lives on, and what the
    // frame carried arrives again by another route (re-attach and sync).
    let before = stats();
    relay.garble_next_frame();
    writer.put(b"garbled", b"v1", long).expect("put");
    assert!(
        held_within(&reader, b"garbled", Duration::from_secs(20)),
        "the garbled write never arrived"
    );
    let after = stats();
    assert_eq!(
        after.peer_frames_refused,
        before.peer_frames_refused + 1,
        "{after:?}"
    );
    assert_eq!(
        reader
            .get_local(b"garbled")
            .expect("get")
            .expect("held")
            .bytes,
        b"v1"
    );
    wait_joined(&writer, &reader);

    // A replayed push changes nothing: its entries are already held.
    writer.put(b"replayed", b"v", long).expect("put");
    assert!(held_within(&reader, b"replayed", Duration::from_secs(2)));
    let before = reader.stats().expect("stats");
    assert!(relay.replay("push"), "a push was recorded and replayed");
    std::thread::sleep(Duration::from_millis(300));
    let after = reader.stats().expect("stats");
    assert!(
        after.network.entries_already_held > before.network.entries_already_held,
        "{:?}",
        after.network
    );
    assert_eq!(after.total.live_set_count, before.total.live_set_count);
    assert_eq!(after.total.live_set_xor, before.total.live_set_xor);

    // A stall holds frames back; they all arrive once it ends.
    relay.stall();
    for i in 0..10 {
        writer
            .put(format!("stalled-{i}").as_bytes(), b"v", long)
            .expect("put");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(reader.get_local(b"stalled-0").expect("get").is_none());
    relay.resume();
    for i in 0..10 {
        assert!(held_within(
            &reader,
            format!("stalled-{i}").as_bytes(),
            Duration::from_secs(2)
        ));
    }

    // Dropped connections: the next writes arrive all the same.
    relay.drop_connections();
    for i in 0..10 {
        writer
            .put(format!("after-drop-{i}").as_bytes(), b"v", long)
            .expect("put");
    }
    for i in 0..10 {
        assert!(
            held_within(
                &reader,
                format!("after-drop-{i}").as_bytes(),
                Duration::from_secs(20)
            ),
            "after-drop-{i} lost"
        );
    }
    assert!(relay.frames_passed() > 0);
    let network = stats();
    assert_eq!(network.pulls_hit + network.pulls_missed, 0, "{network:?}");
}

/// A burst of writes faster than a child's link can take: the root drops the entries its
/// queue for the child cannot hold (sync rounds bring them), instead of cutting the child
/// off. Cut off, the child rejoined and caught up with more than the queue holds, over and
/// over (a million-write burst cut a root's children off 126 times).
#[test]
fn a_burst_a_slow_child_cannot_take_is_shed_and_repaired_without_cutting_the_child_off() {
    const WRITERS: usize = 4;
    const PER_WRITER: usize = 1_500;
    let root = NodeProcess::start(&["--shards", "1"]);
    let (child, relay) = node_behind_relay_with(Some(&root), &["--shards", "1"]);
    let (writer, reader) = (client(&root), client(&child));
    wait_joined(&writer, &reader);
    // 16 MB/s into the child: about 100 MB of writes in a few seconds back up at the root.
    relay.set_bandwidth(Some(16_000_000));
    let value = vec![b'v'; 16 * 1024];
    std::thread::scope(|scope| {
        for w in 0..WRITERS {
            let (root, value) = (&root, &value);
            scope.spawn(move || {
                let writer = client(root);
                for i in 0..PER_WRITER {
                    let key = format!("burst-{w}-{i}");
                    writer
                        .put(key.as_bytes(), value, Duration::from_secs(600))
                        .expect("put");
                }
            });
        }
    });
    relay.set_bandwidth(None);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut root_stats, mut child_stats);
    loop {
        root_stats = writer.stats().expect("stats");
        child_stats = reader.stats().expect("stats");
        let same = root_stats.total.live_set_count == child_stats.total.live_set_count
            && root_stats.total.live_set_xor == child_stats.total.live_set_xor;
        if same || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (shed, cut) = (
        root_stats.network.peer_entries_shed,
        root_stats.network.peers_cut_off,
    );
    eprintln!(
        "entries shed {shed}, cut off {cut}, child: {:?}",
        child_stats.network
    );
    assert_eq!(cut, 0, "the root cut its slow child off");
    assert!(
        shed > 0,
        "the burst never backed up: the test proves nothing"
    );
    assert_eq!(
        child_stats.network.parent_losses, 0,
        "the child lost its parent during the burst"
    );
    assert!(root_stats.total.live_set_count >= (WRITERS * PER_WRITER) as u64);
    assert_eq!(
        (
            child_stats.total.live_set_count,
            child_stats.total.live_set_xor
        ),
        (
            root_stats.total.live_set_count,
            root_stats.total.live_set_xor
        ),
        "the child never caught up"
    );
}
