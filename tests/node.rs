//! A real node on 127.0.0.1 (a `repram serve` process on free ports), driven through the
//! shared port, every shard-aware port and raw frames.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use common::{NodeProcess, RawConn, Reply};
use repram::client::{BlockingClient, ClientOptions};
use repram::wire::{self, ErrorCode, Op, Request};

fn client(addr: std::net::SocketAddr, shard_aware: bool) -> BlockingClient {
    let options = ClientOptions {
        shard_aware,
        ..ClientOptions::default()
    };
    BlockingClient::connect(&addr.to_string(), &options).expect("connect")
}

/// Keys owned by each of `shards` shards, `per_shard` of each.
fn keys_on_every_shard(client: &BlockingClient, shards: u32, per_shard: usize) -> Vec<Vec<u8>> {
    let mut by_shard: HashMap<u32, Vec<Vec<u8>>> = HashMap::new();
    for i in 0.. {
        let key = format!("key-{i}").into_bytes();
        let list = by_shard.entry(client.client().shard_of(&key)).or_default();
        if list.len() < per_shard {
            list.push(key);
        }
        if by_shard.len() == shards as usize && by_shard.values().all(|l| l.len() == per_shard) {
            break;
        }
        assert!(i < 100_000, "keys never spread over every shard");
    }
    by_shard.into_values().flatten().collect()
}

#[test]
fn round_trips_through_the_shared_port_and_every_shard_port() {
    let node = NodeProcess::start(&["--shards", "3"]);
    assert_eq!(node.shards.len(), 3);
    let aware = client(node.client, true);
    assert_eq!(aware.hello().shard_count, 3);
    let keys = keys_on_every_shard(&aware, 3, 4);

    // Written shard-aware, read back through the shared port and through each shard's own
    // port (where two of three keys are forwarded to their owner).
    for key in &keys {
        let value = [b"v:".as_slice(), key].concat();
        aware
            .put(key, &value, Duration::from_secs(60))
            .expect("put");
    }
    let mut readers = vec![client(node.client, false)];
    readers.extend(node.shards.iter().map(|&addr| client(addr, false)));
    for reader in &readers {
        for key in &keys {
            let value = reader.get(key).expect("get").expect("a value");
            assert_eq!(value.bytes, [b"v:".as_slice(), key].concat());
        }
    }
    // Written through a shard port that owns none of some keys, read shard-aware.
    let writer = client(node.shards[1], false);
    for key in &keys {
        writer
            .put(key, b"second", Duration::from_secs(60))
            .expect("put");
    }
    for key in &keys {
        assert_eq!(aware.get(key).unwrap().unwrap().bytes, b"second");
        assert!(aware.delete(key).unwrap());
        assert!(
            !writer.delete(key).unwrap(),
            "a second delete finds nothing"
        );
        assert_eq!(readers[0].get(key).unwrap(), None);
    }
    let stats = aware.stats().expect("stats");
    assert_eq!(stats.shards.len(), 3);
    assert!(
        stats.shards.iter().all(|s| s.puts >= 4),
        "every shard took writes: {stats:?}"
    );
    assert!(
        stats.total.forwarded > 0,
        "the shared port forwarded: {stats:?}"
    );
    assert_eq!(stats.total.keys, 0);
}

#[test]
fn ten_thousand_pipelined_requests_on_one_connection_are_each_answered_once() {
    const REQUESTS: u64 = 10_000;
    let node = NodeProcess::start(&["--shards", "2"]);
    let mut conn = RawConn::connect(node.client);
    let mut writer = conn.stream.try_clone().expect("clone");
    let sender = std::thread::spawn(move || {
        let mut out = Vec::new();
        for id in 0..REQUESTS {
            let key = format!("pipelined-{}", id % 500).into_bytes();
            let op = match id % 3 {
                0 => Op::Put {
                    key: &key,
                    value: b"value",
                    ttl_ms: 60_000,
                    copies: 0,
                    only_if: 0,
                },
                1 => Op::Get {
                    key: &key,
                    local_only: false,
                },
                _ => Op::Ping,
            };
            wire::encode_request(&mut out, &Request { id, op });
            if out.len() > 32 * 1024 {
                writer.write_all(&out).expect("send");
                out.clear();
            }
        }
        writer.write_all(&out).expect("send");
    });
    let mut answered = vec![0u32; REQUESTS as usize];
    for _ in 0..REQUESTS {
        let (id, reply) = conn.recv().expect("the node answered every request");
        assert!(id < REQUESTS, "unknown id {id}");
        answered[id as usize] += 1;
        match id % 3 {
            0 => assert_eq!(reply, Reply::Stored, "put {id}"),
            1 => assert!(
                matches!(reply, Reply::Value(_) | Reply::NotFound),
                "get {id}: {reply:?}"
            ),
            _ => assert_eq!(reply, Reply::Pong),
        }
    }
    sender.join().expect("sender");
    assert!(
        answered.iter().all(|&n| n == 1),
        "each request answered exactly once"
    );
    // Pipelined requests are timed a batch at a time: still one latency sample per op.
    let stats = client(node.client, true).stats().expect("stats");
    let samples = |op: usize| stats.total.latency[op].counts.iter().sum::<u64>();
    let (puts, gets) = (REQUESTS.div_ceil(3), REQUESTS / 3);
    assert_eq!((samples(0), samples(1)), (puts, gets), "{stats:?}");
}

#[test]
fn a_second_node_on_a_port_in_use_is_refused() {
    let node = NodeProcess::start(&["--shards", "2"]);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_repram"));
    command
        .args(["serve", "--shards", "1", "--listen"])
        .arg(node.client.to_string());
    let stderr = NodeProcess::spawn(command)
        .err()
        .expect("the second node was refused");
    assert!(stderr.contains("already in use"), "{stderr}");

    // A free client port, but a shard port the first node holds.
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_repram"));
    command
        .args([
            "serve",
            "--shards",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--shard-port-base",
        ])
        .arg(node.shards[1].port().to_string());
    let stderr = NodeProcess::spawn(command)
        .err()
        .expect("the shard port was refused");
    assert!(stderr.contains("already in use"), "{stderr}");

    // The first node is untouched.
    client(node.client, true)
        .ping()
        .expect("the first node still serves");
}

#[test]
fn sigterm_stops_the_node_cleanly() {
    let mut node = NodeProcess::start(&["--shards", "2"]);
    let conn = client(node.client, true);
    conn.put(b"k", b"v", Duration::from_secs(60)).unwrap();
    let node_id = conn.hello().node_id;
    let status = node.terminate().expect("the node stopped within 10 s");
    assert!(status.success(), "exit status {status}");
    // Tests run side by side on ports the OS picks, so the freed port may already be another
    // test's: only this node still answering there means its listener stayed open.
    let options = ClientOptions {
        shard_aware: false,
        connect_timeout: Duration::from_secs(2),
        request_timeout: Some(Duration::from_secs(2)),
        ..ClientOptions::default()
    };
    if let Ok(other) = BlockingClient::connect(&node.client.to_string(), &options) {
        assert_ne!(other.hello().node_id, node_id, "listener closed");
    }
}

#[test]
fn no_plaintext_of_a_value_stays_in_node_memory() {
    let node = NodeProcess::start(&["--shards", "2"]);
    const MASK: u8 = 0x5A;
    let marker = |tag: u8| -> [u8; common::memscan::PATTERN] {
        let mut m = [0u8; common::memscan::PATTERN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut m).unwrap();
        m[0] = tag;
        m
    };
    let value_marker = marker(1);
    let key_marker = marker(2);
    let masked = |m: &[u8; 32]| m.map(|b| b ^ MASK);
    let pid = node.pid().to_string();
    let value_of = |i: usize| [value_marker.as_slice(), &[i as u8; 100]].concat();

    // Writes through shard 0's own port, keys of both shards (shard 1's are forwarded), on a
    // connection that then stays open and idle: nothing may linger in its buffers either. The
    // last write is a forwarded one, so its frame is the one left in the receive buffer.
    let router = client(node.client, true);
    let mut keys = keys_on_every_shard(&router, 2, 4);
    keys.sort_by_key(|key| router.client().shard_of(key));
    let writer = client(node.shards[0], false);
    // Keys are not secret (they index the store): one holding a marker proves the scan
    // sees the node's heap.
    writer
        .put(&key_marker, b"x", Duration::from_secs(300))
        .unwrap();
    for (i, key) in keys.iter().enumerate() {
        writer
            .put(key, &value_of(i), Duration::from_secs(300))
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        common::memscan::occurrences(&pid, &masked(&key_marker), MASK) >= 1,
        "the scan found the key marker, so it reads the node's memory"
    );
    assert_eq!(
        common::memscan::occurrences(&pid, &masked(&value_marker), MASK),
        0,
        "a value's plaintext lingers while its connection is open"
    );

    // Read back shard-aware and through the shared port, so the plaintext crosses the reply
    // path too (opened, forwarded back, sent); then close everything.
    {
        let aware = client(node.client, true);
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(aware.get(key).unwrap().unwrap().bytes, value_of(i));
            assert_eq!(writer.get(key).unwrap().unwrap().bytes, value_of(i));
        }
    }
    drop((writer, router));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        common::memscan::occurrences(&pid, &masked(&value_marker), MASK),
        0,
        "a value's plaintext lingers after its connections closed"
    );
}

/// A node with small limits, for the bad-input tests.
fn small_node(extra: &[&str]) -> NodeProcess {
    let mut args = vec![
        "--shards",
        "2",
        "--value-bytes-max",
        "1KiB",
        "--max-ttl",
        "1h",
    ];
    args.extend_from_slice(extra);
    NodeProcess::start(&args)
}

fn expect_error(reply: Reply, code: ErrorCode) {
    match reply {
        Reply::Error(got, message) => {
            assert_eq!(got, code, "{message}");
            assert!(!message.is_empty());
        }
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

#[test]
fn bad_requests_get_their_error_and_the_connection_keeps_serving() {
    let node = small_node(&[]);
    let mut conn = RawConn::connect(node.client);
    let put = |id, key: &'static [u8], value: &'static [u8], ttl_ms| Request {
        id,
        op: Op::Put {
            key,
            value,
            ttl_ms,
            copies: 0,
            only_if: 0,
        },
    };
    expect_error(conn.call(&put(1, b"", b"v", 5_000)), ErrorCode::BadKey);
    expect_error(conn.call(&put(2, b"k", b"v", 0)), ErrorCode::BadTtl);
    expect_error(
        conn.call(&put(3, b"k", b"v", 2 * 3_600_000)),
        ErrorCode::BadTtl,
    );
    let too_many_copies = Request {
        id: 30,
        op: Op::Put {
            key: b"k",
            value: b"v",
            ttl_ms: 5_000,
            copies: 9,
            only_if: 0,
        },
    };
    expect_error(conn.call(&too_many_copies), ErrorCode::BadCopies);
    let big: &'static [u8] = Box::leak(vec![7u8; 1025].into_boxed_slice());
    expect_error(
        conn.call(&put(4, b"k", big, 5_000)),
        ErrorCode::ValueTooLarge,
    );
    let long_key: &'static [u8] = Box::leak(vec![b'k'; 1025].into_boxed_slice());
    expect_error(conn.call(&put(5, long_key, b"v", 5_000)), ErrorCode::BadKey);
    let get_empty = Request {
        id: 6,
        op: Op::Get {
            key: b"",
            local_only: false,
        },
    };
    expect_error(conn.call(&get_empty), ErrorCode::BadKey);

    // A well-formed frame of an op this node does not know: answered, connection kept.
    let mut frame = Vec::new();
    wire::encode_request(
        &mut frame,
        &Request {
            id: 7,
            op: Op::Ping,
        },
    );
    let tag_at = frame.len() - wire::REQUEST_ROOT_BYTES + wire::REQUEST_OP_TAG_AT;
    frame[tag_at] = 200;
    conn.send_bytes(&frame);
    let (id, reply) = conn.recv().expect("an answer");
    assert_eq!(id, 7);
    expect_error(reply, ErrorCode::UnknownOp);

    // Nothing was stored by any of it, and the connection still works.
    assert_eq!(conn.call(&put(8, b"k", b"v", 5_000)), Reply::Stored);
    let get = Request {
        id: 9,
        op: Op::Get {
            key: b"k",
            local_only: true,
        },
    };
    assert_eq!(conn.call(&get), Reply::Value(b"v".to_vec()));
}

#[test]
fn a_pipelined_burst_is_answered_in_order_through_an_unknown_op_and_up_to_garbage() {
    // One shard, one write: the node reads the burst ahead of serving it (up to a batch of
    // frames at a time), and every frame must still be answered as if read one by one.
    let node = NodeProcess::start(&["--shards", "1"]);
    let mut conn = RawConn::connect(node.client);
    let key = |i: u64| format!("burst-{i}").into_bytes();
    let value = |i: u64| format!("value-{i}").into_bytes();
    let mut burst = Vec::new();
    let mut id = 0;
    let mut expected = Vec::new();
    for i in 0..40 {
        let (k, v) = (key(i), value(i));
        let op = Op::Put {
            key: &k,
            value: &v,
            ttl_ms: 60_000,
            copies: 0,
            only_if: 0,
        };
        wire::encode_request(&mut burst, &Request { id, op });
        expected.push((id, Reply::Stored));
        id += 1;
    }
    // Gets of every other key, present and absent, with an unknown op among them.
    for i in 0..50 {
        if i == 17 {
            let at = burst.len();
            wire::encode_request(&mut burst, &Request { id, op: Op::Ping });
            let tag_at = burst.len() - wire::REQUEST_ROOT_BYTES + wire::REQUEST_OP_TAG_AT;
            assert!(tag_at > at);
            burst[tag_at] = 200;
            expected.push((id, Reply::Error(ErrorCode::UnknownOp, String::new())));
            id += 1;
        }
        let k = key(i * 2 % 60);
        let op = Op::Get {
            key: &k,
            local_only: true,
        };
        wire::encode_request(&mut burst, &Request { id, op });
        let want = if i * 2 % 60 < 40 {
            Reply::Value(value(i * 2 % 60))
        } else {
            Reply::NotFound
        };
        expected.push((id, want));
        id += 1;
    }
    // Garbage ends the connection: its error is the last answer, the get after it is not read.
    burst.extend(40u32.to_le_bytes());
    burst.extend((0..40u8).map(|i| i.wrapping_mul(97) ^ 0x3c));
    let k = key(0);
    let op = Op::Get {
        key: &k,
        local_only: true,
    };
    wire::encode_request(&mut burst, &Request { id: 999, op });
    conn.send_bytes(&burst);

    for (want_id, want) in expected {
        let (id, reply) = conn.recv().expect("an answer");
        assert_eq!(id, want_id);
        match want {
            Reply::Error(code, _) => expect_error(reply, code),
            want => assert_eq!(reply, want, "request {id}"),
        }
    }
    let (_, reply) = conn.recv().expect("the garbage's answer");
    expect_error(reply, ErrorCode::Malformed);
    assert!(conn.recv().is_none(), "closed after garbage");
}

#[test]
fn unreadable_frames_close_only_their_own_connection() {
    let node = small_node(&[]);
    let mut bystander = RawConn::connect(node.client);
    let ping = |id| Request { id, op: Op::Ping };
    let put = Request {
        id: 1,
        op: Op::Put {
            key: b"kept",
            value: b"safe",
            ttl_ms: 60_000,
            copies: 0,
            only_if: 0,
        },
    };
    assert_eq!(bystander.call(&put), Reply::Stored);

    // A length prefix over the limit: refused before the frame arrives, then closed.
    let mut conn = RawConn::connect(node.client);
    conn.send_bytes(&(64u32 << 20).to_le_bytes());
    let (_, reply) = conn.recv().expect("an answer");
    expect_error(reply, ErrorCode::FrameTooLarge);
    assert!(conn.recv().is_none(), "closed after a frame too large");

    // Random bytes in a frame of plausible length.
    let mut conn = RawConn::connect(node.client);
    let mut garbage = 40u32.to_le_bytes().to_vec();
    garbage.extend((0..40u8).map(|i| i.wrapping_mul(97) ^ 0x3c));
    conn.send_bytes(&garbage);
    let (_, reply) = conn.recv().expect("an answer");
    expect_error(reply, ErrorCode::Malformed);
    assert!(conn.recv().is_none(), "closed after garbage");

    // A truncated frame, then the client goes away.
    let mut conn = RawConn::connect(node.client);
    conn.send_bytes(&100u32.to_le_bytes());
    conn.send_bytes(&[0u8; 50]);
    conn.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(
        conn.recv().is_none(),
        "a truncated frame gets no answer, only a close"
    );

    // Pure noise without a sensible length.
    let mut conn = RawConn::connect(node.client);
    conn.send_bytes(&[0xff; 64]);
    let (_, reply) = conn.recv().expect("an answer");
    expect_error(reply, ErrorCode::FrameTooLarge);

    assert_eq!(bystander.call(&ping(2)), Reply::Pong);
    let get = Request {
        id: 3,
        op: Op::Get {
            key: b"kept",
            local_only: false,
        },
    };
    assert_eq!(bystander.call(&get), Reply::Value(b"safe".to_vec()));
    let stats = client(node.client, true).stats().unwrap();
    assert!(stats.total.bad_frames >= 3, "{stats:?}");
}

#[test]
fn a_full_store_refuses_writes_and_keeps_what_it_holds() {
    let node = small_node(&["--memory-budget", "256KiB"]);
    let conn = client(node.client, true);
    let value = vec![0x42u8; 1000];
    let mut stored = Vec::new();
    let mut full = 0;
    for i in 0..2_000 {
        let key = format!("fill-{i}").into_bytes();
        match conn.put(&key, &value, Duration::from_secs(600)) {
            Ok(_) => stored.push(key),
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::StoreFull), "{e}");
                full += 1;
            }
        }
    }
    assert!(full > 0, "a 256 KiB budget never filled");
    assert!(stored.len() > 50, "only {} writes fitted", stored.len());
    for key in &stored {
        assert_eq!(conn.get(key).unwrap().expect("kept").bytes, value);
    }
    let stats = conn.stats().unwrap();
    assert_eq!(stats.total.rejected_writes, full);
    assert_eq!(stats.total.keys, stored.len() as u64);
    // A delete makes room again.
    assert!(conn.delete(&stored[0]).unwrap());
    client(node.client, false).ping().unwrap();
}

#[test]
fn expired_values_are_never_served_and_are_reclaimed() {
    let node = NodeProcess::start(&["--shards", "2"]);
    let conn = client(node.client, true);
    for i in 0..20 {
        let key = format!("short-{i}");
        conn.put(key.as_bytes(), b"gone soon", Duration::from_secs(1))
            .unwrap();
    }
    assert!(conn.get(b"short-3").unwrap().is_some());
    std::thread::sleep(Duration::from_millis(1_200));
    for i in 0..20 {
        assert_eq!(conn.get(format!("short-{i}").as_bytes()).unwrap(), None);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = conn.stats().unwrap();
        if stats.total.expirations == 20 && stats.total.keys == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "not reclaimed: {stats:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn idle_connections_are_closed_and_extra_connections_refused() {
    let node = NodeProcess::start(&[
        "--shards",
        "1",
        "--idle-timeout",
        "1s",
        "--max-connections",
        "2",
    ]);
    let mut idle = RawConn::connect(node.client);
    let started = Instant::now();
    assert!(idle.recv().is_none(), "an idle connection is closed");
    assert!(started.elapsed() >= Duration::from_millis(900));

    let mut first = RawConn::connect(node.client);
    let mut second = RawConn::connect(node.client);
    assert_eq!(
        first.call(&Request {
            id: 1,
            op: Op::Ping
        }),
        Reply::Pong
    );
    assert_eq!(
        second.call(&Request {
            id: 1,
            op: Op::Ping
        }),
        Reply::Pong
    );
    let mut third = RawConn::connect(node.client);
    let (_, reply) = third.recv().expect("a reason");
    expect_error(reply, ErrorCode::TooManyConnections);
    assert!(third.recv().is_none());
    assert_eq!(
        first.call(&Request {
            id: 2,
            op: Op::Ping
        }),
        Reply::Pong
    );
}

#[test]
fn full_shard_queues_answer_busy_and_never_hang() {
    // One message of credit per shard pair: pipelined forwarded requests from several
    // connections overrun it; each request is answered, stored or busy.
    let node = NodeProcess::start(&["--shards", "2", "--shard-queue-depth", "1"]);
    let mut handles = Vec::new();
    for c in 0..4u64 {
        let addr = node.client;
        handles.push(std::thread::spawn(move || {
            let mut conn = RawConn::connect(addr);
            let mut out = Vec::new();
            for id in 0..2_000u64 {
                let key = format!("busy-{c}-{id}").into_bytes();
                let op = Op::Put {
                    key: &key,
                    value: b"v",
                    ttl_ms: 60_000,
                    copies: 0,
                    only_if: 0,
                };
                wire::encode_request(&mut out, &Request { id, op });
            }
            conn.send_bytes(&out);
            let (mut ok, mut busy) = (0, 0);
            for _ in 0..2_000 {
                match conn.recv().expect("answered").1 {
                    Reply::Stored => ok += 1,
                    Reply::Error(ErrorCode::Busy, _) => busy += 1,
                    other => panic!("{other:?}"),
                }
            }
            (ok, busy)
        }));
    }
    let (mut ok, mut busy) = (0, 0);
    for handle in handles {
        let (o, b) = handle.join().unwrap();
        ok += o;
        busy += b;
    }
    assert_eq!(ok + busy, 8_000);
    let stats = client(node.client, true).stats().unwrap();
    assert_eq!(stats.total.busy, busy);
    assert_eq!(stats.total.keys, ok);
}

#[test]
fn a_client_never_hangs_on_a_server_that_accepts_and_stays_silent() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let holder = std::thread::spawn(move || {
        // Accept and say nothing, for longer than the client waits.
        let (conn, _) = listener.accept().unwrap();
        std::thread::sleep(Duration::from_secs(3));
        drop(conn);
    });
    let options = ClientOptions {
        connect_timeout: Duration::from_millis(500),
        ..ClientOptions::default()
    };
    let started = Instant::now();
    let result = BlockingClient::connect(&addr.to_string(), &options);
    assert!(
        matches!(result, Err(repram::client::ClientError::Timeout(_))),
        "{:?}",
        result.err()
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    holder.join().unwrap();
}

/// Names of the node process's threads.
fn thread_names(pid: u32) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks");
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

#[test]
fn the_coordinator_gets_a_spare_cpu_and_otherwise_shares_shard_zeros() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // glommio names an executor's thread after it (15 characters at most).
    let has_own = |node: &NodeProcess| {
        thread_names(node.pid())
            .iter()
            .any(|n| n.starts_with("repram-coordin"))
    };
    let all = cpus.to_string();
    let busy = NodeProcess::start(&["--shards", &all]);
    assert!(!has_own(&busy), "{:?}", thread_names(busy.pid()));
    if cpus >= 2 {
        let spare = NodeProcess::start(&["--shards", "1"]);
        assert!(has_own(&spare), "{:?}", thread_names(spare.pid()));
        // It serves all the same.
        let c = client(spare.client, true);
        assert!(c.topology().expect("topology").attached);
    }
}

#[test]
fn a_node_refuses_core_dumps_of_its_memory() {
    let node = NodeProcess::start(&["--shards", "1"]);
    let core = proc_line(&node, "limits", "Max core file size");
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(
        &fields[4..6],
        ["0", "0"],
        "soft and hard limit zero: {core}"
    );
}

/// The line of the node's `/proc/PID/FILE` that starts with `prefix`.
fn proc_line(node: &NodeProcess, file: &str, prefix: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{}/{file}", node.pid())).expect(file);
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("a {prefix} line in /proc/PID/{file}"))
        .to_string()
}

/// Huge pages would let the kernel fill sparsely used ranges of the allocator's arena, so
/// resident memory would grow while the live heap does not.
#[test]
fn a_node_runs_without_transparent_huge_pages() {
    let node = NodeProcess::start(&["--shards", "1"]);
    // `THP_enabled` is in the status of Linux 5.0 and later.
    let line = proc_line(&node, "status", "THP_enabled:");
    assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
}

/// The benchmark baseline: the same ports, framing and dispatch, but nothing is stored, so a
/// read answers zeros as long as the shard's last write, and the store stays empty.
#[test]
fn a_null_store_answers_reads_and_writes_without_storing_anything() {
    let node = NodeProcess::start(&["--shards", "1", "--null-store"]);
    let client = client(node.client, true);
    let stored = client
        .put(b"k", &[7u8; 100], Duration::from_secs(60))
        .expect("put");
    assert!(!stored.pending);
    let value = client.get(b"k").expect("get").expect("a value");
    assert_eq!(
        value.bytes,
        vec![0u8; 100],
        "zeros, as long as the last write"
    );
    let other = client.get(b"never-written").expect("get").expect("a value");
    assert_eq!(other.bytes.len(), 100);
    assert!(client.delete(b"k").is_ok(), "other ops still work");
    let stats = client.stats().expect("stats");
    assert_eq!((stats.total.puts, stats.total.gets), (1, 2));
    assert_eq!(stats.total.live_set_count, 0, "nothing was stored");
}
