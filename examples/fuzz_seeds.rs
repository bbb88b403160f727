//! Writes the seed corpora under `fuzz/corpus/` from the real encoders: every client op (one
//! frame each, and all of them pipelined), peer hellos and messages, Redis commands as
//! `redis-cli` and `redis-benchmark` send them, and HTTP requests as curl and the dashboard
//! send them. Existing files are overwritten; run it after a protocol change:
//!
//!     cargo run --example fuzz_seeds

use std::net::SocketAddr;
use std::path::Path;

use repram::cluster::message::{Message, NodeInfo, Role, PEER_PROTOCOL_MAJOR};
use repram::wire::peer::{encode_peer, encode_peer_hello, PeerHello};
use repram::wire::{self, Op, Request, PROTOCOL_VERSION, PUT_ALWAYS, PUT_IF_ABSENT};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    std::fs::write(dir.join(name), bytes).expect("seed");
}

fn main() {
    // Client frames.
    let ops: Vec<(&str, Op<'_>)> = vec![
        (
            "hello",
            Op::Hello {
                protocol_version: PROTOCOL_VERSION,
                token: b"",
            },
        ),
        (
            "hello-token",
            Op::Hello {
                protocol_version: PROTOCOL_VERSION,
                token: b"a-token-of-some-length",
            },
        ),
        (
            "put",
            Op::Put {
                key: b"drop:42",
                value: b"meet at noon",
                ttl_ms: 60_000,
                copies: 0,
                only_if: PUT_ALWAYS,
            },
        ),
        (
            "put-nx",
            Op::Put {
                key: b"lock:7",
                value: b"me",
                ttl_ms: 30_000,
                copies: 3,
                only_if: PUT_IF_ABSENT,
            },
        ),
        (
            "get",
            Op::Get {
                key: b"drop:42",
                local_only: false,
            },
        ),
        (
            "get-local",
            Op::Get {
                key: b"drop:42",
                local_only: true,
            },
        ),
        ("delete", Op::Delete { key: b"drop:42" }),
        ("ping", Op::Ping),
        ("stats", Op::Stats),
        ("topology", Op::Topology),
        (
            "expire",
            Op::Expire {
                key: b"drop:42",
                ttl_ms: 5_000,
            },
        ),
    ];
    let mut pipelined = Vec::new();
    for (i, (name, op)) in ops.into_iter().enumerate() {
        let mut frame = Vec::new();
        let request = Request {
            id: i as u64 + 1,
            op,
        };
        wire::encode_request(&mut frame, &request);
        wire::encode_request(&mut pipelined, &request);
        write("client_frame", name, &frame);
    }
    write("client_frame", "pipelined", &pipelined);

    // Peer frames (payloads, without the length prefix the link reads first).
    let addr: SocketAddr = "127.0.0.1:7800".parse().expect("addr");
    let info = NodeInfo {
        id: 7,
        addr,
        role: Some(Role::Trunk),
        children: 2,
        capacity: 16,
    };
    let payload = |frame: Vec<u8>| frame[wire::FRAME_HEADER_BYTES..].to_vec();
    let mut hello = Vec::new();
    encode_peer_hello(
        &mut hello,
        &PeerHello {
            major: PEER_PROTOCOL_MAJOR,
            node_id: 7,
            addr,
        },
    );
    write("peer_frame", "hello", &payload(hello));
    let messages = [
        (
            "join",
            Message::Join {
                major: PEER_PROTOCOL_MAJOR,
                info,
            },
        ),
        (
            "map",
            Message::TopologyMap {
                candidates: vec![info, info],
                roots: vec![addr],
            },
        ),
        ("ping", Message::Ping { nonce: 9, info }),
        (
            "attach-reply",
            Message::AttachReply {
                accepted: true,
                info,
                path: vec![1, 7],
            },
        ),
        (
            "heartbeat",
            Message::Heartbeat {
                info,
                open_children: vec![info],
            },
        ),
        (
            "heartbeat-reply",
            Message::HeartbeatReply {
                info,
                is_child: true,
                path: vec![1],
                peers: vec![info],
            },
        ),
        ("leave", Message::Leave { info }),
        (
            "push-ack",
            Message::PushAck {
                nonce: 3,
                holders: 2,
            },
        ),
        ("dump-request", Message::DumpRequest { cursor: 0 }),
    ];
    // The state machine's inputs: each message alone from a peer, then all of them in turn
    // with clock steps, local writes and misses between (see `repram::fuzzing::cluster_inputs`).
    let mut all = vec![0u8];
    for (i, (name, message)) in messages.into_iter().enumerate() {
        let mut frame = Vec::new();
        encode_peer(&mut frame, &message);
        let frame = payload(frame);
        write("peer_frame", name, &frame);
        let mut step = vec![0u8, i as u8];
        step.extend_from_slice(&(frame.len() as u16).to_le_bytes());
        step.extend_from_slice(&frame);
        write(
            "cluster_inputs",
            name,
            &[&[i as u8 & 1][..], &step].concat(),
        );
        all.extend_from_slice(&step);
        // A clock step of 1 s, a local write, a local miss.
        all.extend_from_slice(&[3, 20, 5, i as u8, 7, i as u8]);
    }
    write("cluster_inputs", "all-messages", &all);

    // Store operation sequences (see `repram::fuzzing::store_model::StoreOp::sequence_from`):
    // kind, key, then each kind's arguments.
    let store: [(&str, &[u8]); 5] = [
        // put key 1 (3 bytes, ttl 10 steps), get it, advance past it, get, tick
        (
            "put-get-expire",
            &[0, 1, 3, 8, b'a', b'b', b'c', 9, 1, 13, 0, 0xff, 9, 1, 15, 5],
        ),
        // a replica, then an older one of the same key (stale), then a read
        (
            "apply-stale",
            &[4, 2, 2, 20, 1, 0, b'x', b'y', 4, 2, 1, 20, 3, 0, b'z', 9, 2],
        ),
        // put, delete, read the tombstone away, put again
        (
            "delete",
            &[0, 3, 1, 4, b'v', 7, 3, 9, 3, 0, 3, 1, 4, b'w', 9, 3],
        ),
        // put, change its ttl, advance, read
        ("expire-ttl", &[0, 4, 1, 2, b'q', 8, 4, 30, 13, 0, 6, 9, 4]),
        // a replica from the future, one far in the past, and a tombstone replica
        (
            "apply-skew",
            &[
                4, 5, 1, 10, 255, 4, b'f', 4, 5, 1, 10, 0, 4, b'p', 4, 5, 250, 10, 3, 2,
            ],
        ),
    ];
    for (name, bytes) in store {
        write("store_ops", name, bytes);
    }

    // Redis commands.
    let resp: [(&str, &[u8]); 6] = [
        (
            "set",
            b"*3\r\n$3\r\nSET\r\n$7\r\ndrop:42\r\n$12\r\nmeet at noon\r\n",
        ),
        (
            "set-ex-nx",
            b"*6\r\n$3\r\nSET\r\n$4\r\nlock\r\n$2\r\nme\r\n$2\r\nEX\r\n$2\r\n30\r\n$2\r\nNX\r\n",
        ),
        ("mget", b"*3\r\n$4\r\nMGET\r\n$1\r\na\r\n$1\r\nb\r\n"),
        ("inline", b"PING\r\nGET drop:42\r\n"),
        (
            "hello-auth",
            b"*5\r\n$5\r\nHELLO\r\n$1\r\n2\r\n$4\r\nAUTH\r\n$7\r\ndefault\r\n$5\r\ntoken\r\n",
        ),
        (
            "benchmark",
            b"*1\r\n$4\r\nPING\r\n*3\r\n$3\r\nSET\r\n$16\r\nkey:__rand_int__\r\n$3\r\nxxx\r\n",
        ),
    ];
    for (name, bytes) in resp {
        write("resp_command", name, bytes);
    }

    // HTTP requests.
    let http: [(&str, &[u8]); 5] = [
        ("put", b"PUT /v1/data/drop-42?ttl=600 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\nContent-Length: 12\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\nmeet at noon"),
        ("get-bearer", b"GET /v1/data/drop%2F42 HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer a-token-of-some-length\r\nX-TTL: 30\r\n\r\n"),
        ("keys", b"GET /v1/keys?prefix=project-x%2F&limit=100&cursor=k HTTP/1.1\r\nHost: h\r\n\r\n"),
        ("pipelined", b"GET /v1/health HTTP/1.1\r\nHost: h\r\n\r\nGET /v1/stats HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"),
        ("http10", b"HEAD /v1/data/x HTTP/1.0\r\n\r\n"),
    ];
    for (name, bytes) in http {
        write("http_head", name, bytes);
    }
    println!("seeds written under fuzz/corpus/");
}
