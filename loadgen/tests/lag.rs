//! The replication-lag measurement against two real nodes started in this process: every
//! write is seen on the other node, and the histogram holds one sample per write.

use std::time::Duration;

use repram::config::ServeArgs;
use repram_loadgen::lag::{measure_lag, LagPlan};

fn start(roots: Vec<String>) -> repram::node::RunningNode {
    let config = ServeArgs {
        listen: Some("127.0.0.1:0".into()),
        shards: Some(1),
        memory_budget: Some("64MiB".into()),
        roots,
        ..Default::default()
    }
    .resolve()
    .expect("node config");
    repram::node::start(config).expect("start node")
}

#[test]
fn every_write_is_timed_until_the_other_node_holds_it() {
    let root = start(Vec::new());
    let other = start(vec![root.peer_addr.to_string()]);
    let plan = LagPlan {
        writer: root.client_addr,
        readers: vec![other.client_addr],
        writes: 100,
        rate: 200,
        value_bytes: 100,
        ttl: Duration::from_secs(60),
        give_up: Duration::from_secs(10),
        poll: Duration::from_millis(1),
        prefix: "lag-test".into(),
        token: None,
        tls: None,
    };
    // The second node joins in the background: the first writes may wait for it, and the
    // measurement shows that as lag (never as a loss within 10 s).
    let results = measure_lag(&plan).expect("measure");
    assert_eq!(results.len(), 1);
    let lag = &results[0];
    assert_eq!(lag.lost, 0);
    assert_eq!(lag.histogram.len(), 100, "one sample per write");
    assert!(
        lag.histogram.max() < 10_000_000,
        "{} us",
        lag.histogram.max()
    );
}
