//! The Redis-protocol front end of a real node: `redis-cli` and `redis-benchmark` (Debian's
//! `redis-tools`) against it, pipelining across shards, the same store as the native
//! protocol, and malformed input.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::NodeProcess;
use repram::client::{BlockingClient, ClientOptions};

/// A node of two shards with its RESP port on a free port; returns it and that port.
fn node() -> (NodeProcess, SocketAddr) {
    let node = NodeProcess::start(&["--shards", "2", "--max-ttl", "1h"]);
    let resp = node.resp.expect("the RESP front end is on");
    (node, resp)
}

/// A raw connection to the RESP port at `addr`, whose reads give up after 10 s.
fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
}

/// Runs `redis-cli` with `args` against `addr` and returns its output, trimmed.
fn cli(addr: SocketAddr, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .arg("-h")
        .arg(addr.ip().to_string())
        .arg("-p")
        .arg(addr.port().to_string())
        .args(args)
        .output()
        .expect("redis-cli (Debian's redis-tools) is installed");
    assert!(output.status.success(), "redis-cli {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout)
        .trim_end()
        .to_string()
}

#[test]
fn redis_cli_sets_gets_and_counts_as_redis_answers() {
    let (_node, addr) = node();
    assert_eq!(cli(addr, &["PING"]), "PONG");
    assert_eq!(cli(addr, &["ECHO", "hi there"]), "hi there");
    assert_eq!(cli(addr, &["SET", "greeting", "hello"]), "OK");
    assert_eq!(cli(addr, &["GET", "greeting"]), "hello");
    assert_eq!(cli(addr, &["GET", "missing"]), "");
    for key in ["a", "b", "c", "d"] {
        assert_eq!(
            cli(addr, &["SET", key, &format!("v{key}"), "EX", "100"]),
            "OK"
        );
    }
    assert_eq!(cli(addr, &["MGET", "a", "missing", "c"]), "va\n\nvc");
    assert_eq!(cli(addr, &["EXISTS", "a", "b", "missing"]), "2");
    // Every value expires: no expiry given takes the default TTL (1 h here).
    let ttl: i64 = cli(addr, &["TTL", "greeting"]).parse().expect("ttl");
    assert!((3_590..=3_600).contains(&ttl), "{ttl}");
    let ttl: i64 = cli(addr, &["TTL", "a"]).parse().expect("ttl");
    assert!((99..=100).contains(&ttl), "{ttl}");
    let pttl: i64 = cli(addr, &["PTTL", "a"]).parse().expect("pttl");
    assert!((98_000..=100_000).contains(&pttl), "{pttl}");
    assert_eq!(cli(addr, &["TTL", "missing"]), "-2");
    assert_eq!(cli(addr, &["SET", "p", "v", "PX", "1500"]), "OK");
    assert_eq!(cli(addr, &["DBSIZE"]), "6");
    assert_eq!(cli(addr, &["DEL", "a", "b", "missing"]), "2");
    assert_eq!(cli(addr, &["DBSIZE"]), "4");
    // NX and XX: checked and written in one step on the key's shard.
    assert_eq!(cli(addr, &["SET", "once", "1", "NX"]), "OK");
    assert_eq!(cli(addr, &["SET", "once", "2", "NX"]), "");
    assert_eq!(cli(addr, &["GET", "once"]), "1");
    assert_eq!(cli(addr, &["SET", "absent", "1", "XX"]), "");
    assert_eq!(cli(addr, &["SET", "once", "3", "XX"]), "OK");
    assert_eq!(cli(addr, &["GET", "once"]), "3");
    // Errors in Redis's words.
    assert_eq!(
        cli(addr, &["SET", "k", "v", "EX", "0"]),
        "ERR invalid expire time in 'set' command"
    );
    assert_eq!(
        cli(addr, &["SET", "k", "v", "EX", "7200"]),
        "ERR invalid expire time in 'set' command",
        "past the node's longest TTL"
    );
    assert_eq!(
        cli(addr, &["SET", "k", "v", "EX", "soon"]),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        cli(addr, &["SET", "k", "v", "SOMETIMES"]),
        "ERR syntax error"
    );
    assert_eq!(
        cli(addr, &["GET"]),
        "ERR wrong number of arguments for 'get' command"
    );
    assert_eq!(
        cli(addr, &["FLUSHALL", "now"]),
        "ERR unknown command 'FLUSHALL', with args beginning with: 'now'"
    );
    // EXPIRE gives a key a new TTL (a new version, replicated as a write); 0 or less
    // deletes it, as in Redis.
    assert_eq!(cli(addr, &["EXPIRE", "c", "50"]), "1");
    let ttl: i64 = cli(addr, &["TTL", "c"]).parse().expect("ttl");
    assert!((49..=50).contains(&ttl), "{ttl}");
    assert_eq!(cli(addr, &["PEXPIRE", "d", "200000"]), "1");
    let ttl: i64 = cli(addr, &["TTL", "d"]).parse().expect("ttl");
    assert!((199..=200).contains(&ttl), "{ttl}");
    assert_eq!(cli(addr, &["EXPIRE", "missing", "50"]), "0");
    assert_eq!(
        cli(addr, &["EXPIRE", "c", "7200"]),
        "ERR invalid expire time in 'expire' command"
    );
    assert_eq!(cli(addr, &["EXPIRE", "d", "0"]), "1");
    assert_eq!(cli(addr, &["GET", "d"]), "");
    assert_eq!(cli(addr, &["GET", "c"]), "vc");
    // INFO in Redis's layout, counting over both shards.
    let info = cli(addr, &["INFO"]);
    let keys = cli(addr, &["DBSIZE"]);
    assert!(info.contains(&format!("db0:keys={keys},")), "{info}");
    for field in [
        "redis_version:",
        "connected_clients:",
        "used_memory:",
        "keyspace_hits:",
    ] {
        assert!(info.contains(field), "{field} missing: {info}");
    }
    // The value expires on time.
    std::thread::sleep(Duration::from_millis(1_600));
    assert_eq!(cli(addr, &["GET", "p"]), "");
}

#[test]
fn resp_and_native_clients_share_one_store() {
    let (node, addr) = node();
    let native = BlockingClient::connect(&node.client.to_string(), &ClientOptions::default())
        .expect("connect");
    assert_eq!(cli(addr, &["SET", "from-resp", "r"]), "OK");
    assert_eq!(
        native
            .get_local(b"from-resp")
            .expect("get")
            .expect("held")
            .bytes,
        b"r"
    );
    native
        .put(b"from-native", b"n", Duration::from_secs(60))
        .expect("put");
    assert_eq!(cli(addr, &["GET", "from-native"]), "n");
}

/// Reads until `expected` bytes came (or the node closed).
fn read_exactly(stream: &mut TcpStream, expected: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    while got.len() < expected {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    got
}

#[test]
fn pipelined_commands_on_keys_of_every_shard_are_answered_in_order() {
    let (_node, addr) = node();
    let mut stream = connect(addr);
    let mut request = Vec::new();
    let mut expected = Vec::new();
    for i in 0..500 {
        let key = format!("key-{i}");
        let value = format!("value-{i}");
        request.extend_from_slice(
            format!(
                "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
                key.len(),
                value.len()
            )
            .as_bytes(),
        );
        request.extend_from_slice(
            format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).as_bytes(),
        );
        expected.extend_from_slice(b"+OK\r\n");
        expected.extend_from_slice(format!("${}\r\n{value}\r\n", value.len()).as_bytes());
    }
    request.extend_from_slice(b"PING\r\n");
    expected.extend_from_slice(b"+PONG\r\n");
    stream.write_all(&request).expect("send");
    let got = read_exactly(&mut stream, expected.len());
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&expected)
    );
}

#[test]
fn a_pipelined_burst_is_answered_in_order_through_unknown_commands_and_up_to_garbage() {
    // One shard, one write: the node parses the burst ahead of running it (a batch of
    // commands at a time), and every command must still be answered as if read one by one.
    let node = NodeProcess::start(&["--shards", "1", "--max-ttl", "1h"]);
    let addr = node.resp.expect("the RESP front end is on");
    let mut stream = connect(addr);
    let mut request = Vec::new();
    let mut expected = Vec::new();
    for i in 0..30 {
        if i % 3 == 0 {
            // Inline commands among the arrays.
            request.extend_from_slice(format!("SET burst-{i} v{i}\r\n").as_bytes());
        } else {
            let (key, value) = (format!("burst-{i}"), format!("v{i}"));
            let set = format!(
                "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
                key.len(),
                value.len()
            );
            request.extend_from_slice(set.as_bytes());
        }
        expected.extend_from_slice(b"+OK\r\n");
    }
    for i in 0..40 {
        if i == 12 {
            request.extend_from_slice(b"*2\r\n$6\r\nNOSUCH\r\n$3\r\nkey\r\n");
            expected.extend_from_slice(
                b"-ERR unknown command 'NOSUCH', with args beginning with: 'key' \r\n",
            );
        }
        if i == 20 {
            request.extend_from_slice(b"*2\r\n$3\r\nDEL\r\n$7\r\nburst-4\r\n");
            expected.extend_from_slice(b":1\r\n");
        }
        let key = format!("burst-{}", (i * 2) % 36);
        request.extend_from_slice(
            format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).as_bytes(),
        );
        let n = (i * 2) % 36;
        if n < 30 && !(n == 4 && i >= 20) {
            let value = format!("v{n}");
            expected.extend_from_slice(format!("${}\r\n{value}\r\n", value.len()).as_bytes());
        } else {
            expected.extend_from_slice(b"$-1\r\n");
        }
    }
    // Garbage ends the connection after its error; the command after it is never run.
    request.extend_from_slice(b"*x\r\nPING\r\n");
    expected.extend_from_slice(b"-ERR Protocol error: invalid multibulk length\r\n");
    stream.write_all(&request).expect("send");
    let got = read_exactly(&mut stream, expected.len());
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&expected)
    );
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("closed");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
}

#[test]
fn malformed_requests_get_a_protocol_error_and_only_their_connection_closes() {
    let (_node, addr) = node();
    let cases: [(&[u8], &str); 4] = [
        (
            b"*1\r\n$1099511627776\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*x\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*99999999\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*1\r\n$3\r\nGETxx",
            "-ERR Protocol error: bulk string not terminated by CRLF\r\n",
        ),
    ];
    for (bytes, answer) in cases {
        let mut stream = connect(addr);
        stream.write_all(bytes).expect("send");
        let got = read_exactly(&mut stream, answer.len() + 1);
        assert_eq!(
            String::from_utf8_lossy(&got),
            answer,
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    // An array that never ends holds only its own connection.
    let mut stuck = TcpStream::connect(addr).expect("connect");
    stuck.write_all(b"*1000\r\n$3\r\nGET\r\n").expect("send");
    assert_eq!(cli(addr, &["PING"]), "PONG");
}

#[test]
fn redis_benchmark_runs_to_completion_without_errors() {
    let (_node, addr) = node();
    let output = Command::new("redis-benchmark")
        .arg("-h")
        .arg(addr.ip().to_string())
        .arg("-p")
        .arg(addr.port().to_string())
        .args([
            "-t",
            "set,get,ping",
            "-P",
            "16",
            "-n",
            "20000",
            "-c",
            "10",
            "-q",
        ])
        .output()
        .expect("redis-benchmark (Debian's redis-tools) is installed");
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    for test in ["PING_INLINE", "PING_MBULK", "SET", "GET"] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(&format!("{test}: "))
                    && l.contains("requests per second")),
            "{test} did not complete: {text}"
        );
    }
    assert!(!text.contains("ERR"), "{text}");
}

#[test]
fn writes_through_resp_replicate_like_native_ones() {
    let root = NodeProcess::start(&["--shards", "1"]);
    let other = NodeProcess::start(&["--shards", "1", "--root", &root.peer.to_string()]);
    let addr = root.resp.expect("resp");
    let reader = BlockingClient::connect(&other.client.to_string(), &ClientOptions::default())
        .expect("connect");
    let held = |key: &[u8]| {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(value) = reader.get_local(key).expect("get") {
                return value;
            }
            assert!(std::time::Instant::now() < deadline, "never replicated");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert_eq!(cli(addr, &["SET", "shared", "v", "EX", "100"]), "OK");
    let first = held(b"shared");
    assert_eq!(first.bytes, b"v");
    // A new TTL is a new version: it travels too.
    assert_eq!(cli(addr, &["EXPIRE", "shared", "1000"]), "1");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while held(b"shared").expires_ms < first.expires_ms + 800_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new TTL never arrived"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_rust_redis_client_library_works_unchanged() {
    let (_node, addr) = node();
    let client = redis::Client::open(format!("redis://{addr}/")).expect("client");
    let mut con = client.get_connection().expect("connect");
    let set: String = redis::cmd("SET")
        .arg("lib")
        .arg("value")
        .arg("EX")
        .arg(60)
        .query(&mut con)
        .expect("set");
    assert_eq!(set, "OK");
    let got: Option<String> = redis::cmd("GET").arg("lib").query(&mut con).expect("get");
    assert_eq!(got.as_deref(), Some("value"));
    let missing: Option<String> = redis::cmd("GET").arg("nope").query(&mut con).expect("get");
    assert_eq!(missing, None);
    // A pipeline, answered in order.
    let (value, exists, many): (String, i64, Vec<Option<String>>) = redis::pipe()
        .cmd("SET")
        .arg("p")
        .arg("1")
        .ignore()
        .cmd("GET")
        .arg("p")
        .cmd("EXISTS")
        .arg("p")
        .arg("lib")
        .arg("nope")
        .cmd("MGET")
        .arg("p")
        .arg("nope")
        .arg("lib")
        .query(&mut con)
        .expect("pipeline");
    assert_eq!((value.as_str(), exists), ("1", 2));
    assert_eq!(
        many,
        vec![Some("1".to_string()), None, Some("value".to_string())]
    );
    let ttl: i64 = redis::cmd("TTL").arg("lib").query(&mut con).expect("ttl");
    assert!((59..=60).contains(&ttl), "{ttl}");
    let deleted: i64 = redis::cmd("DEL")
        .arg("lib")
        .arg("p")
        .query(&mut con)
        .expect("del");
    assert_eq!(deleted, 2);
    // An error reply is an error, and the connection goes on.
    let refused: redis::RedisResult<String> = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .arg("EX")
        .arg(0)
        .query(&mut con);
    assert!(refused.is_err());
    let pong: String = redis::cmd("PING").query(&mut con).expect("ping");
    assert_eq!(pong, "PONG");
}

#[test]
fn a_command_bigger_than_the_node_takes_is_refused_before_it_is_all_read() {
    let node = NodeProcess::start(&["--shards", "1", "--value-bytes-max", "1KiB"]);
    let addr = node.resp.expect("resp");
    let mut stream = connect(addr);
    // Arguments each within the 1 KiB limit, 100 KiB in all (the limit is 66 KiB).
    let mut command = b"*1000\r\n$4\r\nMGET\r\n".to_vec();
    for _ in 0..100 {
        command.extend_from_slice(b"$1024\r\n");
        command.extend(std::iter::repeat_n(b'k', 1024));
        command.extend_from_slice(b"\r\n");
    }
    let _ = stream.write_all(&command);
    let answer = "-ERR Protocol error: too big request\r\n";
    let got = read_exactly(&mut stream, answer.len());
    assert_eq!(String::from_utf8_lossy(&got), answer);
    assert_eq!(cli(addr, &["PING"]), "PONG");
}
