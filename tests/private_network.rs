//! A private network (`--cluster-key-file`) of real processes on 127.0.0.1: sealed peer links
//! replicate like open ones; a node with another cluster key, or none, is refused and learns
//! nothing; a node outside `--trusted-peers` is refused; a relay that alters or replays a
//! sealed frame is cut off and nothing it sent is applied.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::relay::node_behind_relay_with;
use common::{held_within, NodeProcess};
use repram::client::{BlockingClient, ClientOptions};

/// Keys written by `repram keygen` into a directory removed on drop.
struct Keys {
    dir: PathBuf,
}

impl Keys {
    fn new(name: &str) -> Keys {
        let dir = std::env::temp_dir().join(format!("repram-keys-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("key dir");
        Keys { dir }
    }

    /// Runs `repram keygen ARGS` (paths relative to the key directory).
    fn keygen(&self, flag: &str, file: &str) -> PathBuf {
        let path = self.dir.join(file);
        let output = Command::new(env!("CARGO_BIN_EXE_repram"))
            .args(["keygen", flag])
            .arg(&path)
            .output()
            .expect("keygen");
        assert!(output.status.success(), "{output:?}");
        path
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().to_string()
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(cluster_key: Option<&Path>, root: Option<&NodeProcess>, extra: &[&str]) -> NodeProcess {
    let mut args: Vec<String> = vec!["--shards".into(), "2".into()];
    if let Some(key) = cluster_key {
        args.push("--cluster-key-file".into());
        args.push(key.to_string_lossy().to_string());
    }
    if let Some(root) = root {
        args.push("--root".into());
        args.push(root.peer.to_string());
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    NodeProcess::start(&args)
}

fn client(node: &NodeProcess) -> BlockingClient {
    BlockingClient::connect(&node.client.to_string(), &ClientOptions::default()).expect("connect")
}

fn attached_within(node: &BlockingClient, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let network = node.stats().expect("stats").network;
        if network.role != 255 && network.dumping == 0 && network.dumps_completed >= 1 {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

const LONG: Duration = Duration::from_secs(300);

#[test]
fn a_private_network_replicates_writes_and_dumps_over_sealed_links() {
    let keys = Keys::new("replicates");
    let cluster = keys.keygen("--cluster", "cluster.key");
    let root = start(Some(&cluster), None, &[]);
    let root_client = client(&root);
    for i in 0..50 {
        root_client
            .put(format!("before-{i}").as_bytes(), b"v", LONG)
            .expect("put");
    }
    let first = start(Some(&cluster), Some(&root), &[]);
    let second = start(Some(&cluster), Some(&root), &[]);
    let (a, b) = (client(&first), client(&second));
    assert!(attached_within(&a, Duration::from_secs(15)));
    assert!(attached_within(&b, Duration::from_secs(15)));
    // The dump came over a sealed link.
    for node in [&a, &b] {
        assert!(held_within(node, b"before-49", Duration::from_secs(5)));
        assert!(node.get_local(b"before-0").expect("get").is_some());
    }
    // Writes on any node reach every node.
    for (i, writer) in [&root_client, &a, &b].into_iter().enumerate() {
        let key = format!("written-on-{i}");
        writer.put(key.as_bytes(), b"sealed", LONG).expect("put");
        for reader in [&root_client, &a, &b] {
            assert!(
                held_within(reader, key.as_bytes(), Duration::from_secs(3)),
                "{key} did not reach every node"
            );
        }
    }
    let network = root_client.stats().expect("stats").network;
    assert_eq!(network.peer_handshakes_failed, 0, "{network:?}");
    assert!(network.bytes_received > 0);
}

#[test]
fn a_node_with_another_cluster_key_or_none_is_refused_and_learns_nothing() {
    let keys = Keys::new("refused");
    let cluster = keys.keygen("--cluster", "cluster.key");
    let other = keys.keygen("--cluster", "other.key");
    let root = start(Some(&cluster), None, &[]);
    let member = start(Some(&cluster), Some(&root), &[]);
    let (root_client, member_client) = (client(&root), client(&member));
    assert!(attached_within(&member_client, Duration::from_secs(15)));
    for i in 0..20 {
        root_client
            .put(format!("secret-{i}").as_bytes(), b"v", LONG)
            .expect("put");
    }
    let before = root_client.stats().expect("stats");

    let wrong_key = start(Some(&other), Some(&root), &[]);
    let no_key = start(None, Some(&root), &[]);
    let intruders = [client(&wrong_key), client(&no_key)];
    // They try (and retry) for a while.
    let deadline = Instant::now() + Duration::from_secs(4);
    while root_client
        .stats()
        .expect("stats")
        .network
        .peer_handshakes_failed
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the root saw no failed handshake"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    for intruder in &intruders {
        // Writes the intruders make stay with them.
        intruder.put(b"injected", b"evil", LONG).expect("local put");
    }
    std::thread::sleep(Duration::from_millis(1_500));
    for (i, intruder) in intruders.iter().enumerate() {
        let stats = intruder.stats().expect("stats");
        assert_eq!(stats.network.role, 255, "intruder {i} never attached");
        assert_eq!(
            stats.network.entries_received, 0,
            "intruder {i} got entries"
        );
        assert!(intruder.get_local(b"secret-0").expect("get").is_none());
        let topology = intruder.topology().expect("topology");
        assert!(
            !topology.attached && topology.parent.is_none(),
            "intruder {i}"
        );
    }
    // The network is as it was: the member still holds everything, nothing was injected.
    let after = root_client.stats().expect("stats");
    assert_eq!(after.network.children, 1, "only the member is a child");
    assert_eq!(after.total.live_set_count, before.total.live_set_count);
    assert_eq!(after.total.live_set_xor, before.total.live_set_xor);
    for node in [&root_client, &member_client] {
        assert!(node.get_local(b"injected").expect("get").is_none());
    }
    let page = std::process::Command::new("curl")
        .args([
            "-s",
            &format!("http://{}/metrics", root.http.expect("http")),
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    if !page.is_empty() {
        assert!(
            page.contains("repram_peer_handshakes_failed_total"),
            "{page}"
        );
    }
}

#[test]
fn only_nodes_on_the_trust_list_are_let_in() {
    let keys = Keys::new("trusted");
    let cluster = keys.keygen("--cluster", "cluster.key");
    keys.keygen("--node", "member.key");
    keys.keygen("--node", "stranger.key");
    let list = keys.dir.join("trusted");
    let member_pub = std::fs::read_to_string(keys.dir.join("member.key.pub")).expect("pub");
    std::fs::write(&list, format!("# the member only\n{member_pub}")).expect("list");
    let list = list.to_string_lossy().to_string();

    let root = start(Some(&cluster), None, &["--trusted-peers", &list]);
    let member_key = keys.path("member.key");
    let member = start(
        Some(&cluster),
        Some(&root),
        &["--node-key-file", &member_key],
    );
    let stranger_key = keys.path("stranger.key");
    let stranger = start(
        Some(&cluster),
        Some(&root),
        &["--node-key-file", &stranger_key],
    );
    let (root_client, member_client, stranger_client) =
        (client(&root), client(&member), client(&stranger));
    assert!(attached_within(&member_client, Duration::from_secs(15)));
    root_client.put(b"for-members", b"v", LONG).expect("put");
    assert!(held_within(
        &member_client,
        b"for-members",
        Duration::from_secs(3)
    ));
    std::thread::sleep(Duration::from_secs(2));
    let stranger_stats = stranger_client.stats().expect("stats");
    assert_eq!(
        stranger_stats.network.role, 255,
        "the stranger is not in the tree"
    );
    assert!(stranger_client
        .get_local(b"for-members")
        .expect("get")
        .is_none());
    let root_stats = root_client.stats().expect("stats");
    assert_eq!(root_stats.network.children, 1);
    assert!(root_stats.network.peer_handshakes_failed >= 1);
}

#[test]
fn a_relay_that_alters_or_replays_a_sealed_frame_is_cut_off_and_nothing_of_it_is_applied() {
    let keys = Keys::new("relay");
    let cluster = keys.keygen("--cluster", "cluster.key");
    let root = start(Some(&cluster), None, &[]);
    let key_arg = cluster.to_string_lossy().to_string();
    let (node, relay) = node_behind_relay_with(
        Some(&root),
        &["--shards", "2", "--cluster-key-file", &key_arg],
    );
    let (writer, reader) = (client(&root), client(&node));
    assert!(attached_within(&reader, Duration::from_secs(15)));
    writer.put(b"first", b"v", LONG).expect("put");
    assert!(held_within(&reader, b"first", Duration::from_secs(3)));
    let refused = || reader.stats().expect("stats").network.peer_frames_refused;

    // One flipped byte: the frame does not open, the connection ends.
    let before = refused();
    relay.flip_next_byte();
    writer.put(b"flipped", b"v", LONG).expect("put");
    let deadline = Instant::now() + Duration::from_secs(5);
    while refused() == before {
        assert!(
            Instant::now() < deadline,
            "the altered frame was not refused"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The network mends (a new connection, a new session) and writes flow again.
    writer.put(b"after-flip", b"v", LONG).expect("put");
    assert!(held_within(&reader, b"after-flip", Duration::from_secs(15)));

    // A recorded sealed frame sent again: refused, nothing applied.
    writer.put(b"recorded", b"v", LONG).expect("put");
    assert!(held_within(&reader, b"recorded", Duration::from_secs(3)));
    std::thread::sleep(Duration::from_millis(200));
    let stats_before = reader.stats().expect("stats");
    assert!(
        relay.replay("sealed"),
        "a sealed frame was recorded and replayed"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while refused() == stats_before.network.peer_frames_refused {
        assert!(
            Instant::now() < deadline,
            "the replayed frame was not refused"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats_after = reader.stats().expect("stats");
    assert_eq!(
        stats_after.network.entries_received, stats_before.network.entries_received,
        "nothing of the replayed frame was applied"
    );
    assert_eq!(
        stats_after.total.live_set_xor,
        stats_before.total.live_set_xor
    );
    // And the network goes on.
    writer.put(b"after-replay", b"v", LONG).expect("put");
    assert!(held_within(
        &reader,
        b"after-replay",
        Duration::from_secs(15)
    ));
}
