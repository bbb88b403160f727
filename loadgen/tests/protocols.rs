//! RESP and memcached encoding checked against the real servers, started by the test on free
//! 127.0.0.1 ports: values with the protocols' own delimiters inside come back byte for byte,
//! misses, TTLs, error replies, and a hundred pipelined requests matched in order.

mod common;

use std::rc::Rc;
use std::time::Duration;

use common::{on_executor, spec, start_memcached, start_redis};
use repram_loadgen::target::resp::encode_command;
use repram_loadgen::target::text::{Reply, TextConnection, TextProtocol};
use repram_loadgen::target::{OpError, Outcome, TargetConnection, TargetKind};
use repram_loadgen::workload::OpKind;

/// A value holding each protocol's delimiters, so a framing mistake shows.
const TRICKY_VALUE: &[u8] = b"a\r\nEND\r\n$5\r\n*1\r\n\0\xff tail";

#[test]
fn resp_round_trips_values_misses_ttls_and_errors_with_redis() {
    let redis = start_redis();
    let addr = redis.addr;
    on_executor(async move {
        let target = TargetConnection::connect(&spec(TargetKind::Redis, addr))
            .await
            .expect("connect to redis");
        let ttl = Duration::from_secs(30);
        assert_eq!(
            target.request(OpKind::Set, b"k1", TRICKY_VALUE, ttl).await,
            Ok(Outcome::Stored)
        );
        assert_eq!(
            target.request(OpKind::Get, b"k1", b"", ttl).await,
            Ok(Outcome::Hit)
        );
        assert_eq!(
            target.request(OpKind::Get, b"absent", b"", ttl).await,
            Ok(Outcome::Miss)
        );

        let raw = TextConnection::open(TextProtocol::Resp, addr, Duration::from_secs(2))
            .await
            .expect("connect to redis");
        let get = raw.call(|out| encode_command(out, &[b"GET", b"k1"])).await;
        assert_eq!(get, Ok(Reply::Value(TRICKY_VALUE.to_vec())));
        // SET … PX 30000 left a TTL just under 30 s.
        match raw.call(|out| encode_command(out, &[b"PTTL", b"k1"])).await {
            Ok(Reply::Integer(ms)) => assert!((29_000..=30_000).contains(&ms), "PTTL {ms}"),
            other => panic!("PTTL answered {other:?}"),
        }
        match raw
            .call(|out| encode_command(out, &[b"NOSUCHCOMMAND"]))
            .await
        {
            Ok(Reply::Error { code, .. }) => assert_eq!(code, "ERR"),
            other => panic!("an unknown command answered {other:?}"),
        }
        // An error reply leaves the connection usable.
        assert_eq!(
            raw.call(|out| encode_command(out, &[b"PING"])).await,
            Ok(Reply::Status("PONG".into()))
        );
    });
}

#[test]
fn memcached_text_protocol_round_trips_values_misses_and_errors() {
    let memcached = start_memcached();
    let addr = memcached.addr;
    on_executor(async move {
        let target = TargetConnection::connect(&spec(TargetKind::Memcached, addr))
            .await
            .expect("connect to memcached");
        let ttl = Duration::from_secs(30);
        assert_eq!(
            target.request(OpKind::Set, b"k1", TRICKY_VALUE, ttl).await,
            Ok(Outcome::Stored)
        );
        assert_eq!(
            target.request(OpKind::Get, b"k1", b"", ttl).await,
            Ok(Outcome::Hit)
        );
        assert_eq!(
            target.request(OpKind::Get, b"absent", b"", ttl).await,
            Ok(Outcome::Miss)
        );
        // Over memcached's 1 MiB item limit: a SERVER_ERROR, counted as a server error, and
        // the connection still answers.
        let big = vec![b'x'; 2 * 1024 * 1024];
        match target.request(OpKind::Set, b"big", &big, ttl).await {
            Err(OpError::Server { code, .. }) => assert_eq!(code, "SERVER_ERROR"),
            other => panic!("a 2 MiB set answered {other:?}"),
        }
        assert_eq!(
            target.request(OpKind::Get, b"k1", b"", ttl).await,
            Ok(Outcome::Hit)
        );

        let raw = TextConnection::open(TextProtocol::Memcache, addr, Duration::from_secs(2))
            .await
            .expect("connect to memcached");
        let get = raw.call(|out| out.extend_from_slice(b"get k1\r\n")).await;
        assert_eq!(get, Ok(Reply::Value(TRICKY_VALUE.to_vec())));
        match raw.call(|out| out.extend_from_slice(b"bogus\r\n")).await {
            Ok(Reply::Error { code, .. }) => assert_eq!(code, "ERROR"),
            other => panic!("an unknown command answered {other:?}"),
        }

        // A 1 s TTL is sent as exptime 1: gone within memcached's 1 s clock granularity.
        assert_eq!(
            target
                .request(OpKind::Set, b"short", b"v", Duration::from_secs(1))
                .await,
            Ok(Outcome::Stored)
        );
        glommio::timer::sleep(Duration::from_millis(2500)).await;
        assert_eq!(
            target.request(OpKind::Get, b"short", b"", ttl).await,
            Ok(Outcome::Miss)
        );
    });
}

/// 100 requests in flight on one connection: each reply reaches its own caller.
async fn pipelined_replies_match_their_requests(kind: TargetKind, addr: std::net::SocketAddr) {
    let target = Rc::new(
        TargetConnection::connect(&spec(kind, addr))
            .await
            .expect("connect"),
    );
    let ttl = Duration::from_secs(30);
    let mut tasks = Vec::new();
    for i in 0..100u32 {
        let target = target.clone();
        tasks.push(glommio::spawn_local(async move {
            let key = format!("pipelined:{i}");
            let value = format!("value-{i}").repeat(1 + i as usize % 7);
            // Odd keys are read before any write: misses; even ones after: hits.
            if i % 2 == 1 {
                return target.request(OpKind::Get, key.as_bytes(), b"", ttl).await
                    == Ok(Outcome::Miss);
            }
            let stored = target
                .request(OpKind::Set, key.as_bytes(), value.as_bytes(), ttl)
                .await;
            let read = target.request(OpKind::Get, key.as_bytes(), b"", ttl).await;
            stored == Ok(Outcome::Stored) && read == Ok(Outcome::Hit)
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        assert!(task.await, "request {i} got another request's reply");
    }
    let raw = TextConnection::open(
        match kind {
            TargetKind::Redis => TextProtocol::Resp,
            _ => TextProtocol::Memcache,
        },
        addr,
        Duration::from_secs(2),
    )
    .await
    .expect("connect");
    let raw = Rc::new(raw);
    let mut reads = Vec::new();
    for i in (0..100u32).step_by(2) {
        let raw = raw.clone();
        reads.push(glommio::spawn_local(async move {
            let key = format!("pipelined:{i}");
            let reply = raw
                .call(|out| match kind {
                    TargetKind::Redis => encode_command(out, &[b"GET", key.as_bytes()]),
                    _ => out.extend_from_slice(format!("get {key}\r\n").as_bytes()),
                })
                .await;
            reply
                == Ok(Reply::Value(
                    format!("value-{i}").repeat(1 + i as usize % 7).into_bytes(),
                ))
        }));
    }
    for read in reads {
        assert!(
            read.await,
            "a pipelined read came back with another key's value"
        );
    }
}

#[test]
fn pipelined_redis_replies_reach_their_own_requests() {
    let redis = start_redis();
    let addr = redis.addr;
    on_executor(pipelined_replies_match_their_requests(
        TargetKind::Redis,
        addr,
    ));
}

#[test]
fn pipelined_memcached_replies_reach_their_own_requests() {
    let memcached = start_memcached();
    let addr = memcached.addr;
    on_executor(pipelined_replies_match_their_requests(
        TargetKind::Memcached,
        addr,
    ));
}
