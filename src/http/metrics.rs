//! The Prometheus page (`GET /metrics`): every shard's plain counters, gathered over the mesh
//! when the page is scraped, and the coordinator's network figures, encoded with
//! `prometheus-client` (OpenMetrics text). The registry is built per scrape, so nothing with a
//! lock sits on the request path.
//!
//! Owns metric names and labels; it never reads a counter itself (it is handed them).

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::wire::{NetworkStats, OpLatency, ShardStats, LATENCY_BOUNDS_US, LATENCY_OPS};

/// The media type of the page.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

fn counter(registry: &mut Registry, name: &str, help: &str, values: &[(Labels, u64)]) {
    if let [(labels, value)] = values {
        if labels.is_empty() {
            let metric = Counter::<u64>::default();
            metric.inc_by(*value);
            return registry.register(name, help, metric);
        }
    }
    let family = Family::<Labels, Counter>::default();
    for (labels, value) in values {
        family.get_or_create(labels).inc_by(*value);
    }
    registry.register(name, help, family);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, values: &[(Labels, u64)]) {
    if let [(labels, value)] = values {
        if labels.is_empty() {
            let metric = Gauge::<i64>::default();
            metric.set(i64::try_from(*value).unwrap_or(i64::MAX));
            return registry.register(name, help, metric);
        }
    }
    let family = Family::<Labels, Gauge>::default();
    for (labels, value) in values {
        family
            .get_or_create(labels)
            .set(i64::try_from(*value).unwrap_or(i64::MAX));
    }
    registry.register(name, help, family);
}

/// Latency histograms by op, already counted by the shards (prometheus-client's `Histogram`
/// only observes one value at a time).
#[derive(Debug)]
struct OpLatencies(Vec<(Labels, OpLatency)>);

impl EncodeMetric for OpLatencies {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, latency) in &self.0 {
            let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_US
                .iter()
                .map(|&us| us as f64 / 1e6)
                .chain([f64::MAX])
                .zip(latency.counts)
                .collect();
            let sum = latency.sum_us as f64 / 1e6;
            encoder.encode_family(labels)?.encode_histogram::<Labels>(
                sum,
                latency.count(),
                &buckets,
                None,
            )?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn plain(value: u64) -> Vec<(Labels, u64)> {
    vec![(Vec::new(), value)]
}

/// The page for a node whose shards' counters are `shards` (in shard order).
pub fn render(shards: &[ShardStats], network: &NetworkStats, kinds: &[&str]) -> String {
    let mut total = ShardStats::default();
    for shard in shards {
        total.add(shard);
    }
    let per_shard = |pick: fn(&ShardStats) -> u64| -> Vec<(Labels, u64)> {
        shards
            .iter()
            .enumerate()
            .map(|(i, s)| (vec![("shard", i.to_string())], pick(s)))
            .collect()
    };
    let mut registry = Registry::with_prefix("repram");
    let ops: Vec<(Labels, u64)> = [
        ("put", total.puts),
        ("get", total.gets),
        ("delete", total.deletes),
        ("ping", total.pings),
        ("hello", total.hellos),
        ("stats", total.stats),
    ]
    .into_iter()
    .map(|(op, n)| (vec![("op", op.to_string())], n))
    .collect();
    counter(&mut registry, "operations", "Requests by operation", &ops);
    let latencies = LATENCY_OPS
        .iter()
        .zip(total.latency.iter().copied())
        .map(|(op, latency)| (vec![("op", op.to_string())], latency))
        .collect();
    registry.register_with_unit(
        "request_latency",
        "From the read that brought a request to its answer (answers the network gave included)",
        prometheus_client::registry::Unit::Seconds,
        OpLatencies(latencies),
    );
    let reads = vec![
        (vec![("outcome", "hit".to_string())], total.hits),
        (vec![("outcome", "miss".to_string())], total.misses),
    ];
    counter(&mut registry, "reads", "Reads by outcome", &reads);
    counter(
        &mut registry,
        "expirations",
        "Entries reclaimed at expiry",
        &plain(total.expirations),
    );
    counter(
        &mut registry,
        "rejected_writes",
        "Writes refused",
        &plain(total.rejected_writes),
    );
    counter(
        &mut registry,
        "bad_frames",
        "Unreadable requests",
        &plain(total.bad_frames),
    );
    counter(
        &mut registry,
        "forwarded",
        "Requests forwarded to their shard",
        &plain(total.forwarded),
    );
    counter(
        &mut registry,
        "busy",
        "Requests answered busy",
        &plain(total.busy),
    );
    gauge(
        &mut registry,
        "keys",
        "Live keys, by shard",
        &per_shard(|s| s.keys),
    );
    gauge(
        &mut registry,
        "tombstones",
        "Tombstones, by shard",
        &per_shard(|s| s.tombstones),
    );
    gauge(
        &mut registry,
        "used_bytes",
        "Bytes stored, by shard",
        &per_shard(|s| s.used_bytes),
    );
    gauge(
        &mut registry,
        "budget_bytes",
        "Memory budget, by shard",
        &per_shard(|s| s.budget_bytes),
    );
    let native = total
        .connections_open
        .saturating_sub(total.resp_connections_open + total.http_connections_open);
    let by_front_end = vec![
        (vec![("front_end", "native".to_string())], native),
        (
            vec![("front_end", "resp".to_string())],
            total.resp_connections_open,
        ),
        (
            vec![("front_end", "http".to_string())],
            total.http_connections_open,
        ),
    ];
    gauge(
        &mut registry,
        "connections_open",
        "Client connections open, by front end",
        &by_front_end,
    );
    counter(
        &mut registry,
        "connections_accepted",
        "Client connections accepted",
        &plain(total.connections_accepted),
    );
    counter(
        &mut registry,
        "connections_refused",
        "Client connections refused at the limit",
        &plain(total.connections_refused),
    );

    // The network, under the names REPRAM exports where it has them.
    let attached = u64::from((1..=3).contains(&network.role));
    gauge(
        &mut registry,
        "peers_active",
        "Tree neighbours: parent and children",
        &plain(network.children + attached),
    );
    counter(
        &mut registry,
        "peer_joins",
        "Joins of the tree",
        &plain(network.joins),
    );
    counter(
        &mut registry,
        "peer_evictions",
        "Parents lost (silent, gone or wrong)",
        &plain(network.parent_losses),
    );
    counter(
        &mut registry,
        "ping_failures",
        "Peers found unreachable or cut off",
        &plain(network.peers_cut_off),
    );
    counter(
        &mut registry,
        "peer_handshakes_failed",
        "Sealed peer handshakes that failed (wrong cluster key, untrusted node, stranger)",
        &plain(network.peer_handshakes_failed),
    );
    counter(
        &mut registry,
        "peer_entries_shed",
        "Entries not sent to peers too far behind (sync rounds bring them later)",
        &plain(network.peer_entries_shed),
    );
    counter(
        &mut registry,
        "sync_rounds",
        "Sync rounds opened",
        &plain(network.sync_rounds),
    );
    let pulls = vec![
        (vec![("outcome", "hit".to_string())], network.pulls_hit),
        (vec![("outcome", "miss".to_string())], network.pulls_missed),
    ];
    counter(&mut registry, "pulls", "Lazy pulls by outcome", &pulls);
    let by_kind = |values: &[u64]| -> Vec<(Labels, u64)> {
        kinds
            .iter()
            .zip(values)
            .filter(|(_, &n)| n > 0)
            .map(|(kind, &n)| (vec![("kind", kind.to_string())], n))
            .collect()
    };
    counter(
        &mut registry,
        "peer_bytes_sent",
        "Peer bytes sent, by message kind",
        &by_kind(&network.bytes_sent_by_kind),
    );
    counter(
        &mut registry,
        "peer_bytes_received",
        "Peer bytes received, by message kind",
        &by_kind(&network.bytes_received_by_kind),
    );
    gauge(
        &mut registry,
        "tree_depth",
        "Depth in the tree: 0 root, 1 trunk, 2 branch, 3 leaf; 255 not attached",
        &plain(u64::from(network.role)),
    );

    let mut page = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut page, &registry);
    page
}

/// What a figures page says about the node itself.
pub struct NodeFacts {
    pub node_id: u64,
    pub uptime_ms: u64,
}

/// `/v1/stats`: the same figures as JSON, by shard, for the dashboard (which takes rates of
/// the counters and percentiles of the latency buckets between two reads).
pub fn render_json(
    node: &NodeFacts,
    shards: &[ShardStats],
    network: &NetworkStats,
) -> serde_json::Value {
    let mut total = ShardStats::default();
    for shard in shards {
        total.add(shard);
    }
    let counters = |s: &ShardStats| -> serde_json::Map<String, serde_json::Value> {
        s.fields()
            .into_iter()
            .map(|(name, value)| (name.to_string(), value.into()))
            .collect()
    };
    let latency: serde_json::Map<String, serde_json::Value> = LATENCY_OPS
        .iter()
        .zip(total.latency.iter())
        .map(|(op, l)| {
            let value = serde_json::json!({ "counts": l.counts.to_vec(), "sum_us": l.sum_us });
            (op.to_string(), value)
        })
        .collect();
    serde_json::json!({
        "node_id": format!("{:016x}", node.node_id),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_ms": node.uptime_ms,
        "total": counters(&total),
        "shards": shards.iter().map(counters).collect::<Vec<_>>(),
        "latency": {
            "bounds_us": LATENCY_BOUNDS_US.to_vec(),
            "ops": latency,
        },
        "network": {
            "role": crate::wire::role_name(network.role),
            "children": network.children,
            "joins": network.joins,
            "parent_losses": network.parent_losses,
            "rebalances": network.rebalances,
            "dumping": network.dumping == 1,
            "sync_rounds": network.sync_rounds,
            "sync_rounds_in_sync": network.sync_rounds_in_sync,
            "entries_received": network.entries_received,
            "entries_sent": network.entries_sent,
            "pulls_hit": network.pulls_hit,
            "pulls_missed": network.pulls_missed,
            "bytes_sent": network.bytes_sent,
            "bytes_received": network.bytes_received,
            "peers_cut_off": network.peers_cut_off,
            "peer_entries_shed": network.peer_entries_shed,
        },
    })
}
