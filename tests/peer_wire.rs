//! The peer wire: every cluster message survives a round trip at any offset, and what a peer
//! must not send (over the limits, garbage) is refused without panicking.

use std::net::SocketAddr;
use std::rc::Rc;

use proptest::prelude::*;
use repram::cluster::entry::Plaintext;
use repram::cluster::message::{AckRequest, Message, NodeInfo, Role};
use repram::cluster::sync::{BucketDigest, FilterData};
use repram::cluster::{Entry, Version};
use repram::wire::peer::{decode_peer, encode_peer, PeerFrameError, PeerLimits};
use repram::wire::{frame_len, FRAME_HEADER_BYTES};

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::from((std::net::Ipv6Addr::from(ip), port)))
            .prop_filter("not v4-mapped", |a| match a {
                SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().is_none(),
                SocketAddr::V4(_) => true,
            }),
    ]
}

fn info() -> impl Strategy<Value = NodeInfo> {
    (any::<u64>(), addr(), 0u8..5, any::<u16>(), any::<u16>()).prop_map(
        |(id, addr, role, children, capacity)| NodeInfo {
            id,
            addr,
            role: [
                Some(Role::Root),
                Some(Role::Trunk),
                Some(Role::Branch),
                Some(Role::Leaf),
                None,
            ][role as usize],
            children,
            capacity,
        },
    )
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        prop::collection::vec(any::<u8>(), 1..40),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..100)),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(key, value, expires_ms, clock, node)| Entry {
            key: Rc::from(key),
            value: value.map(|v| Plaintext::shared(&v)),
            expires_ms,
            version: Version { clock, node },
        })
}

fn filter() -> impl Strategy<Value = FilterData> {
    prop_oneof![
        Just(FilterData::Empty),
        (
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            prop::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(
                |(
                    seed,
                    segment_length,
                    segment_length_mask,
                    segment_count_length,
                    fingerprints,
                )| FilterData::Fuse8 {
                    seed,
                    segment_length,
                    segment_length_mask,
                    segment_count_length,
                    fingerprints,
                }
            ),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    let entries = || prop::collection::vec(entry(), 0..5);
    let path = || prop::collection::vec(any::<u64>(), 0..4);
    prop_oneof![
        (any::<u16>(), info()).prop_map(|(major, info)| Message::Join { major, info }),
        (
            prop::collection::vec(info(), 0..5),
            prop::collection::vec(addr(), 0..4)
        )
            .prop_map(|(candidates, roots)| Message::TopologyMap { candidates, roots }),
        any::<u16>().prop_map(|major| Message::JoinRefused { major }),
        (any::<u64>(), info()).prop_map(|(nonce, info)| Message::Ping { nonce, info }),
        (any::<u64>(), info()).prop_map(|(nonce, info)| Message::Pong { nonce, info }),
        info().prop_map(|info| Message::Attach { info }),
        (any::<bool>(), info(), path()).prop_map(|(accepted, info, path)| Message::AttachReply {
            accepted,
            info,
            path
        }),
        (info(), prop::collection::vec(info(), 0..4)).prop_map(|(info, open_children)| {
            Message::Heartbeat {
                info,
                open_children,
            }
        }),
        (
            info(),
            any::<bool>(),
            path(),
            prop::collection::vec(info(), 0..3)
        )
            .prop_map(|(info, is_child, path, peers)| Message::HeartbeatReply {
                info,
                is_child,
                path,
                peers,
            }),
        info().prop_map(|info| Message::Leave { info }),
        (
            entries(),
            prop::option::of(
                (any::<u64>(), any::<u8>())
                    .prop_map(|(nonce, want)| { AckRequest { nonce, want } })
            )
        )
            .prop_map(|(entries, ack)| Message::Push { entries, ack }),
        (any::<u64>(), any::<u32>())
            .prop_map(|(nonce, holders)| Message::PushAck { nonce, holders }),
        any::<u64>().prop_map(|cursor| Message::DumpRequest { cursor }),
        (entries(), prop::option::of(any::<u64>()))
            .prop_map(|(entries, next)| Message::DumpChunk { entries, next }),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(round, from_bucket, summary, settled_before_ms)| Message::SyncSummary {
                round,
                from_bucket,
                summary,
                settled_before_ms,
            }
        ),
        any::<u64>().prop_map(|round| Message::SyncInSync { round }),
        (
            any::<u64>(),
            prop::collection::vec((any::<u64>(), any::<u32>(), any::<u64>()), 0..6)
        )
            .prop_map(|(round, d)| {
                Message::SyncDigests {
                    round,
                    digests: d
                        .into_iter()
                        .map(|(bucket, count, xor)| BucketDigest { bucket, count, xor })
                        .collect(),
                }
            }),
        (
            any::<u64>(),
            prop::collection::vec((any::<u64>(), filter()), 0..4),
            any::<bool>(),
            any::<u64>()
        )
            .prop_map(
                |(round, filters, answer, settled_before_ms)| Message::SyncFilters {
                    round,
                    filters,
                    answer,
                    settled_before_ms,
                }
            ),
        (any::<u64>(), entries())
            .prop_map(|(round, entries)| Message::SyncEntries { round, entries }),
        (any::<u64>(), prop::collection::vec(any::<u8>(), 1..40)).prop_map(|(nonce, key)| {
            Message::Pull {
                nonce,
                key: Rc::from(key),
            }
        }),
        (any::<u64>(), prop::option::of(entry()))
            .prop_map(|(nonce, entry)| Message::PullReply { nonce, entry }),
        any::<u64>().prop_map(|retry_after_ms| Message::Full { retry_after_ms }),
    ]
}

proptest! {
    #[test]
    fn every_peer_message_round_trips_at_any_offset(
        messages in prop::collection::vec(message(), 1..6),
        lead in 0usize..7,
    ) {
        let limits = PeerLimits::default();
        let mut stream = vec![0x33u8; lead];
        for msg in &messages {
            encode_peer(&mut stream, msg);
        }
        let mut at = lead;
        for msg in &messages {
            let len = frame_len(&stream[at..], usize::MAX).unwrap().unwrap();
            let payload = &stream[at + FRAME_HEADER_BYTES..at + FRAME_HEADER_BYTES + len];
            prop_assert_eq!(&decode_peer(payload, &limits).unwrap(), msg);
            at += FRAME_HEADER_BYTES + len;
        }
    }

    #[test]
    fn random_bytes_never_panic_the_peer_decoder(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode_peer(&bytes, &PeerLimits::default());
    }
}

fn payload(msg: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode_peer(&mut out, msg);
    out.split_off(FRAME_HEADER_BYTES)
}

#[test]
fn a_peer_message_over_a_limit_is_refused() {
    let limits = PeerLimits {
        entries_max: 2,
        key_bytes_max: 8,
        value_bytes_max: 8,
        path_len_max: 3,
        ..PeerLimits::default()
    };
    let e = |key: &[u8], value: &[u8]| Entry {
        key: Rc::from(key),
        value: Some(Plaintext::shared(value)),
        expires_ms: 1,
        version: Version::default(),
    };
    let cases = [
        Message::Push {
            entries: vec![e(b"a", b""), e(b"b", b""), e(b"c", b"")],
            ack: None,
        },
        Message::Push {
            entries: vec![e(b"a-long-key", b"")],
            ack: None,
        },
        Message::Push {
            entries: vec![e(b"", b"")],
            ack: None,
        },
        Message::Push {
            entries: vec![e(b"a", b"a long value")],
            ack: None,
        },
        Message::HeartbeatReply {
            info: NodeInfo {
                id: 1,
                addr: SocketAddr::from(([127, 0, 0, 1], 1)),
                role: None,
                children: 0,
                capacity: 0,
            },
            is_child: true,
            path: vec![1, 2, 3, 4],
            peers: Vec::new(),
        },
    ];
    for msg in cases {
        match decode_peer(&payload(&msg), &limits) {
            Err(PeerFrameError::OverLimit(_)) => {}
            other => panic!("{msg:?} was not refused: {other:?}"),
        }
    }
    // The same messages within the limits pass.
    let ok = Message::Push {
        entries: vec![e(b"a", b"v"), e(b"b", b"v")],
        ack: None,
    };
    assert_eq!(decode_peer(&payload(&ok), &limits).unwrap(), ok);
}

#[test]
fn a_client_frame_is_not_a_peer_frame() {
    let mut client = Vec::new();
    repram::wire::encode_request(
        &mut client,
        &repram::wire::Request {
            id: 1,
            op: repram::wire::Op::Ping,
        },
    );
    assert!(decode_peer(&client[FRAME_HEADER_BYTES..], &PeerLimits::default()).is_err());
}

#[test]
fn a_hello_names_its_sender_and_is_never_taken_for_a_message() {
    use repram::wire::peer::{decode_peer_hello, encode_peer_hello, PeerHello};
    for addr in ["127.0.0.1:7800", "[::1]:9"] {
        let hello = PeerHello {
            major: 1,
            node_id: 0xfeed,
            addr: addr.parse().unwrap(),
        };
        let mut out = Vec::new();
        encode_peer_hello(&mut out, &hello);
        let payload = &out[FRAME_HEADER_BYTES..];
        assert_eq!(decode_peer_hello(payload), Ok(hello));
        assert!(decode_peer(payload, &PeerLimits::default()).is_err());
    }
    let mut msg = Vec::new();
    encode_peer(&mut msg, &Message::DumpRequest { cursor: 3 });
    assert!(decode_peer_hello(&msg[FRAME_HEADER_BYTES..]).is_err());
}
