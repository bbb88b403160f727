//! A real network: several `repram serve` processes on 127.0.0.1 joining one root, pushing
//! writes to each other and bootstrapping a newcomer with a dump. Replication is checked with
//! `local_only` reads, which never ask peers.

mod common;

use std::time::{Duration, Instant};

use common::NodeProcess;
use repram::client::{BlockingClient, ClientOptions};

fn client(node: &NodeProcess) -> BlockingClient {
    BlockingClient::connect(&node.client.to_string(), &ClientOptions::default()).expect("connect")
}

/// Starts a node that joins through `root` (none: a root itself).
fn node(root: Option<&NodeProcess>) -> NodeProcess {
    match root {
        None => NodeProcess::start(&["--shards", "2"]),
        Some(root) => NodeProcess::start(&["--shards", "2", "--root", &root.peer.to_string()]),
    }
}

/// Whether `key` is held by `node` itself (no pull), checked until `within` passes.
fn held_within(node: &BlockingClient, key: &[u8], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if node.get_local(key).expect("local get").is_some() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn writes_on_any_node_reach_every_node_and_a_newcomer_takes_what_came_before() {
    let root = node(None);
    let b = node(Some(&root));
    let c = node(Some(&root));
    let clients = [client(&root), client(&b), client(&c)];
    // The tree forms: a write on the last joiner shows up on the root.
    let probe = b"probe";
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        clients[2]
            .put(probe, b"x", Duration::from_secs(60))
            .expect("put");
        if held_within(&clients[0], probe, Duration::from_millis(200))
            && held_within(&clients[1], probe, Duration::from_millis(200))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the three nodes never formed a network"
        );
    }

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

    // Keys written before a node joins are on it after its bootstrap dump.
    for i in 0..200 {
        clients[i % 3]
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
}
