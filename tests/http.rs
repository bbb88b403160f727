//! The REPRAM HTTP API of a real node, spoken to with a plain HTTP/1.1 client over a socket:
//! every route and status, keep-alive with pipelining, CORS, and malformed requests.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::http_client::{read_response, request};
use common::NodeProcess;

/// A node of two shards (keys land on both) with its HTTP port on a free port.
fn node(extra: &[&str]) -> (NodeProcess, SocketAddr) {
    let mut args = vec![
        "--shards",
        "2",
        "--max-ttl",
        "2h",
        "--value-bytes-max",
        "1KiB",
    ];
    args.extend_from_slice(extra);
    let node = NodeProcess::start(&args);
    let http = node.http.expect("the HTTP API is on");
    (node, http)
}

#[test]
fn data_routes_store_read_and_delete_with_the_ttl_headers() {
    let (_node, addr) = node(&[]);
    let put = request(addr, "PUT", "/v1/data/drop%3A1?ttl=120", &[], b"dead drop");
    assert_eq!(put.status, 201, "{put:?}");
    let got = request(addr, "GET", "/v1/data/drop%3A1", &[], b"");
    assert_eq!(got.status, 200);
    assert_eq!(got.body, b"dead drop");
    assert_eq!(got.header("Content-Type"), Some("application/octet-stream"));
    assert_eq!(got.header("X-Original-TTL"), Some("120"));
    let remaining: u64 = got.header("X-Remaining-TTL").unwrap().parse().unwrap();
    assert!((118..=120).contains(&remaining), "{remaining}");
    let created = got.header("X-Created-At").expect("created");
    assert!(created.ends_with('Z') && created.len() == 20, "{created}");
    let head = request(addr, "HEAD", "/v1/data/drop%3A1", &[], b"");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("Content-Length"), Some("9"));
    assert!(head.body.is_empty());
    // The key is the decoded path: the same value over the other protocols' key.
    assert_eq!(
        request(addr, "GET", "/v1/data/drop:1", &[], b"").body,
        b"dead drop"
    );

    // An invalid escape decodes to U+FFFD, as long as the escape itself: the key is that.
    let odd = request(addr, "PUT", "/v1/data/%FFx%zz", &[], b"odd key");
    assert_eq!(odd.status, 201, "{odd:?}");
    assert_eq!(
        request(addr, "GET", "/v1/data/%EF%BF%BDx%zz", &[], b"").body,
        b"odd key"
    );

    assert_eq!(
        request(addr, "DELETE", "/v1/data/drop:1", &[], b"").status,
        204
    );
    let gone = request(addr, "GET", "/v1/data/drop:1", &[], b"");
    assert_eq!((gone.status, gone.body.len()), (404, 0));
    assert_eq!(
        request(addr, "DELETE", "/v1/data/drop:1", &[], b"").status,
        404
    );
    assert_eq!(
        request(addr, "HEAD", "/v1/data/drop:1", &[], b"").status,
        404
    );
}

#[test]
fn ttls_come_from_the_query_then_the_header_then_the_default_and_are_clamped() {
    let (_node, addr) = node(&["--default-ttl", "1h"]);
    let ttl_of = |key: &str| -> u64 {
        let got = request(addr, "GET", &format!("/v1/data/{key}"), &[], b"");
        got.header("X-Original-TTL")
            .expect("ttl")
            .parse()
            .expect("number")
    };
    let put = |target: &str, headers: &[&str]| request(addr, "PUT", target, headers, b"v").status;
    assert_eq!(put("/v1/data/q?ttl=60", &["X-TTL: 90"]), 201);
    assert_eq!(ttl_of("q"), 60, "the query wins");
    assert_eq!(put("/v1/data/h", &["X-TTL: 90"]), 201);
    assert_eq!(ttl_of("h"), 90);
    assert_eq!(put("/v1/data/d", &[]), 201);
    assert_eq!(ttl_of("d"), 3_600, "no TTL: the default");
    assert_eq!(put("/v1/data/bad?ttl=soon", &[]), 201);
    assert_eq!(ttl_of("bad"), 3_600, "unreadable: the default");
    assert_eq!(put("/v1/data/neg?ttl=-5", &[]), 201);
    assert_eq!(ttl_of("neg"), 3_600, "not positive: the default");
    assert_eq!(put("/v1/data/long?ttl=999999", &[]), 201);
    assert_eq!(ttl_of("long"), 7_200, "clamped to --max-ttl");
    // The answer to a write says the TTL applied.
    let stored = request(addr, "PUT", "/v1/data/said?ttl=999999", &[], b"v");
    let body: serde_json::Value = serde_json::from_slice(&stored.body).expect("json");
    assert_eq!(body["status"], "stored");
    assert_eq!(body["ttl_seconds"], 7_200);
    assert!(body["expires_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
}

#[test]
fn health_status_topology_cors_and_errors_answer_as_documented() {
    let (_node, addr) = node(&[]);
    let health = request(addr, "GET", "/v1/health", &[], b"");
    assert_eq!(health.status, 200);
    let body: serde_json::Value = serde_json::from_slice(&health.body).expect("json");
    assert_eq!(body["status"], "healthy");
    assert!(body["node_id"].is_string());

    for i in 0..10 {
        let put = request(addr, "PUT", &format!("/v1/data/k{i}"), &[], b"v");
        assert_eq!(put.status, 201);
    }
    let status = request(addr, "GET", "/v1/status", &[], b"");
    let body: serde_json::Value = serde_json::from_slice(&status.body).expect("json");
    assert_eq!(body["keys"], 10, "{body}");
    assert_eq!(body["shards"], 2);
    assert!(body["uptime_seconds"].is_u64() && body["memory"]["used_bytes"].is_u64());

    let topology = request(addr, "GET", "/v1/topology", &[], b"");
    let body: serde_json::Value = serde_json::from_slice(&topology.body).expect("json");
    assert_eq!(body["node"]["role"], "root", "{body}");
    assert!(body["children"].is_array());

    // The dashboard's figures: by shard, adding up to the total, with latency buckets.
    let stats = request(addr, "GET", "/v1/stats", &[], b"");
    let body: serde_json::Value = serde_json::from_slice(&stats.body).expect("json");
    assert_eq!(body["total"]["keys"], 10, "{body}");
    let shards = body["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 2);
    let keys: u64 = shards.iter().filter_map(|s| s["keys"].as_u64()).sum();
    assert_eq!(keys, 10);
    let bounds = body["latency"]["bounds_us"]
        .as_array()
        .expect("bounds")
        .len();
    let puts = &body["latency"]["ops"]["put"]["counts"];
    assert_eq!(puts.as_array().map(Vec::len), Some(bounds + 1));
    let timed: u64 = puts
        .as_array()
        .expect("counts")
        .iter()
        .filter_map(|c| c.as_u64())
        .sum();
    assert_eq!(timed, 10, "every put timed once");
    assert_eq!(body["network"]["role"], "root");

    // The dashboard: one page that may fetch from this node only.
    let page = request(addr, "GET", "/", &[], b"");
    assert_eq!(page.status, 200);
    assert!(page
        .header("Content-Type")
        .is_some_and(|t| t.starts_with("text/html")));
    let policy = page.header("Content-Security-Policy").expect("a policy");
    assert!(policy.contains("connect-src 'self'") && policy.contains("default-src 'none'"));
    let html = String::from_utf8(page.body).expect("utf-8");
    assert!(html.contains("/v1/stats") && html.contains("/v1/topology"));
    for outside in ["<script src", "<link", "@import", "url("] {
        assert!(
            !html.contains(outside),
            "the page loads nothing ({outside})"
        );
    }

    // CORS: a preflight, and the TTL headers exposed to scripts.
    let preflight = request(addr, "OPTIONS", "/v1/data/x", &[], b"");
    assert_eq!(preflight.status, 204);
    assert!(preflight
        .header("Access-Control-Allow-Methods")
        .is_some_and(|m| m.contains("PUT")));
    assert_eq!(preflight.header("Access-Control-Allow-Origin"), Some("*"));
    let got = request(addr, "GET", "/v1/data/k1", &[], b"");
    assert!(got
        .header("Access-Control-Expose-Headers")
        .is_some_and(|h| h.contains("X-Remaining-TTL")));
    assert_eq!(got.header("X-Content-Type-Options"), Some("nosniff"));

    // Errors: a body over the value limit, an unknown route, a wrong method.
    let big = vec![b'x'; 2_000];
    assert_eq!(request(addr, "PUT", "/v1/data/big", &[], &big).status, 413);
    assert_eq!(request(addr, "GET", "/v2/nothing", &[], b"").status, 404);
    assert_eq!(request(addr, "DELETE", "/v1/health", &[], b"").status, 405);
}

#[test]
fn keep_alive_connections_answer_pipelined_requests_in_order() {
    let (_node, addr) = node(&[]);
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut all = Vec::new();
    for i in 0..100 {
        let body = format!("value-{i}");
        all.extend_from_slice(
            format!(
                "PUT /v1/data/key-{i} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        all.extend_from_slice(
            format!("GET /v1/data/key-{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
        );
    }
    stream.write_all(&all).expect("send");
    let mut buf = Vec::new();
    for i in 0..100 {
        assert_eq!(read_response(&mut stream, &mut buf, false).status, 201);
        let got = read_response(&mut stream, &mut buf, false);
        assert_eq!(got.status, 200);
        assert_eq!(got.body, format!("value-{i}").as_bytes());
    }
}

#[test]
fn malformed_requests_are_answered_and_close_only_their_connection() {
    let (_node, addr) = node(&[]);
    let cases: [(&[u8], u16); 3] = [
        (b"NOT A REQUEST\x00\r\n\r\n", 400),
        (
            b"PUT /v1/data/k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            501,
        ),
        (
            b"PUT /v1/data/k HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
            413,
        ),
    ];
    for (bytes, status) in cases {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream.write_all(bytes).expect("send");
        let response = read_response(&mut stream, &mut Vec::new(), false);
        assert_eq!(
            response.status,
            status,
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
        assert_eq!(response.header("Connection"), Some("close"));
    }
    // A header flood is refused (431) and the node keeps serving others.
    let mut flood = TcpStream::connect(addr).expect("connect");
    flood
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut head = b"GET /v1/health HTTP/1.1\r\n".to_vec();
    for i in 0..2_000 {
        head.extend_from_slice(format!("X-Flood-{i}: yes\r\n").as_bytes());
    }
    let _ = flood.write_all(&head);
    assert_eq!(
        read_response(&mut flood, &mut Vec::new(), false).status,
        431
    );
    assert_eq!(request(addr, "GET", "/v1/health", &[], b"").status, 200);
}

#[test]
fn a_write_whose_copies_are_not_confirmed_in_time_is_accepted_202() {
    // Two copies by default, and no peer to hold the second: accepted, pending.
    let (_node, addr) = node(&["--write-copies", "2", "--write-timeout", "200ms"]);
    let put = request(addr, "PUT", "/v1/data/alone", &[], b"v");
    assert_eq!(put.status, 202, "{put:?}");
    assert_eq!(request(addr, "GET", "/v1/data/alone", &[], b"").body, b"v");
}

#[test]
fn keys_are_listed_sorted_in_pages_with_a_cursor_and_only_live_ones() {
    let (_node, addr) = node(&[]);
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // Written in one pipelined burst over both shards.
    let mut burst = Vec::new();
    for i in (0..250).rev() {
        for key in [format!("k:{i:03}"), format!("other:{i:03}")] {
            burst.extend_from_slice(
                format!("PUT /v1/data/{key} HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nv")
                    .as_bytes(),
            );
        }
    }
    stream.write_all(&burst).expect("send");
    let mut buf = Vec::new();
    for _ in 0..500 {
        assert_eq!(read_response(&mut stream, &mut buf, false).status, 201);
    }
    assert_eq!(
        request(addr, "DELETE", "/v1/data/k:150", &[], b"").status,
        204
    );

    let page = |target: &str| -> serde_json::Value {
        let got = request(addr, "GET", target, &[], b"");
        assert_eq!(got.status, 200);
        serde_json::from_slice(&got.body).expect("json")
    };
    let names = |v: &serde_json::Value| -> Vec<String> {
        v["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| k.as_str().expect("string").to_string())
            .collect()
    };
    let mut all = Vec::new();
    let mut target = "/v1/keys?prefix=k:&limit=100".to_string();
    for _ in 0..5 {
        let body = page(&target);
        all.extend(names(&body));
        match body["next_cursor"].as_str() {
            Some(cursor) => target = format!("/v1/keys?prefix=k%3A&limit=100&cursor={cursor}"),
            None => break,
        }
    }
    let expected: Vec<String> = (0..250)
        .filter(|&i| i != 150)
        .map(|i| format!("k:{i:03}"))
        .collect();
    assert_eq!(all, expected, "sorted, each once, the deleted one left out");
    let empty = page("/v1/keys?prefix=nothing-here");
    assert_eq!(empty["keys"], serde_json::json!([]));
    assert!(empty.get("next_cursor").is_none());
    // A limit past the cap (1,000) is cut to it: all 499 live keys fit in one page.
    let everything = page("/v1/keys?limit=100000");
    assert_eq!(names(&everything).len(), 499);
    assert!(everything.get("next_cursor").is_none());
}

/// The samples of a scraped metrics page, parsed by a Prometheus text parser.
fn scrape(addr: SocketAddr) -> Vec<prometheus_parse::Sample> {
    let page = request(addr, "GET", "/metrics", &[], b"");
    assert_eq!(page.status, 200);
    assert!(page
        .header("Content-Type")
        .is_some_and(|t| t.starts_with("application/openmetrics-text")));
    let text = String::from_utf8(page.body).expect("utf-8");
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines)
        .expect("a Prometheus text parser reads the page")
        .samples
}

fn sample(samples: &[prometheus_parse::Sample], name: &str, label: Option<(&str, &str)>) -> f64 {
    samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .sum()
}

#[test]
fn the_metrics_page_parses_and_its_counters_move_with_traffic() {
    let (_node, addr) = node(&[]);
    let before = scrape(addr);
    for i in 0..20 {
        assert_eq!(
            request(addr, "PUT", &format!("/v1/data/m{i}"), &[], b"v").status,
            201
        );
        assert_eq!(
            request(addr, "GET", &format!("/v1/data/m{i}"), &[], b"").status,
            200
        );
    }
    assert_eq!(
        request(addr, "GET", "/v1/data/absent", &[], b"").status,
        404
    );
    let after = scrape(addr);
    let moved = |name: &str, label: Option<(&str, &str)>| {
        sample(&after, name, label) - sample(&before, name, label)
    };
    assert_eq!(moved("repram_operations_total", Some(("op", "put"))), 20.0);
    assert_eq!(moved("repram_operations_total", Some(("op", "get"))), 21.0);
    assert_eq!(moved("repram_reads_total", Some(("outcome", "hit"))), 20.0);
    assert_eq!(moved("repram_reads_total", Some(("outcome", "miss"))), 1.0);
    // Keys by shard, summed: the 20 written (over both shards).
    assert_eq!(sample(&after, "repram_keys", None), 20.0);
    let shards: std::collections::HashSet<String> = after
        .iter()
        .filter(|s| s.metric == "repram_keys")
        .filter_map(|s| s.labels.get("shard").map(str::to_string))
        .collect();
    assert_eq!(shards.len(), 2);
    for name in [
        "repram_peers_active",
        "repram_peer_joins_total",
        "repram_peer_evictions_total",
        "repram_ping_failures_total",
        "repram_sync_rounds_total",
        "repram_tree_depth",
    ] {
        assert!(after.iter().any(|s| s.metric == name), "{name} missing");
    }
    assert_eq!(
        sample(&after, "repram_tree_depth", None),
        0.0,
        "a lone node is a root"
    );
    // Latency by op: one count per request answered at once, in cumulative buckets.
    let latency_count = |samples: &[prometheus_parse::Sample], op: &str| {
        sample(
            samples,
            "repram_request_latency_seconds_count",
            Some(("op", op)),
        )
    };
    assert_eq!(
        latency_count(&after, "put") - latency_count(&before, "put"),
        20.0
    );
    assert!(latency_count(&after, "get") - latency_count(&before, "get") >= 20.0);
    let buckets = after
        .iter()
        .find(|s| s.metric == "repram_request_latency_seconds" && s.labels.get("op") == Some("put"))
        .map(|s| match &s.value {
            prometheus_parse::Value::Histogram(buckets) => buckets.clone(),
            other => panic!("not a histogram: {other:?}"),
        })
        .expect("the put latency histogram");
    assert!(buckets
        .windows(2)
        .all(|w| w[0].count <= w[1].count && w[0].less_than < w[1].less_than));
    assert_eq!(
        buckets.last().map(|b| b.count),
        Some(latency_count(&after, "put")),
        "the last bucket (+Inf) holds every request"
    );
    // This scrape's own connection is open on the HTTP front end.
    assert!(
        sample(
            &after,
            "repram_connections_open",
            Some(("front_end", "http"))
        ) >= 1.0
    );
    assert_eq!(
        sample(
            &after,
            "repram_connections_open",
            Some(("front_end", "resp"))
        ),
        0.0
    );
    assert_eq!(request(addr, "GET", "/v1/metrics", &[], b"").status, 200);
}
