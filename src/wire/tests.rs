use proptest::prelude::*;

use super::*;

fn framed(request: &Request<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_request(&mut out, request);
    out
}

fn payload_of(frame: &[u8]) -> &[u8] {
    let len = frame_len(frame, usize::MAX).unwrap().unwrap();
    &frame[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len]
}

#[test]
fn layout_of_the_request_root_is_pinned() {
    let frame = framed(&Request {
        id: 0x0102_0304_0506_0708,
        op: Op::Stats,
    });
    let payload = payload_of(&frame);
    let root = &payload[payload.len() - REQUEST_ROOT_BYTES..];
    assert_eq!(&root[..8], &0x0102_0304_0506_0708u64.to_le_bytes());
    assert_eq!(&root[REQUEST_MAGIC_AT..REQUEST_MAGIC_AT + 4], b"RPR1");
    assert_eq!(root[REQUEST_OP_TAG_AT], 5, "Stats is the sixth op");
}

#[test]
fn a_frame_of_an_unknown_op_is_told_apart_from_garbage() {
    let mut frame = framed(&Request {
        id: 77,
        op: Op::Ping,
    });
    let at = frame.len() - REQUEST_ROOT_BYTES + REQUEST_OP_TAG_AT;
    frame[at] = OP_COUNT + 3;
    assert_eq!(
        decode_request(payload_of(&frame)),
        Err(FrameError::UnknownOp {
            id: 77,
            tag: OP_COUNT + 3
        })
    );
    assert_eq!(decode_request(&[1, 2, 3]), Err(FrameError::Malformed));
    // The same unknown tag without the magic is garbage, not a newer client.
    frame[at - 1] ^= 0xff;
    assert_eq!(
        decode_request(payload_of(&frame)),
        Err(FrameError::Malformed)
    );
    assert_eq!(decode_request(&[]), Err(FrameError::Malformed));
}

#[test]
fn length_prefix_over_the_limit_is_refused_before_the_frame_arrives() {
    let header = 5000u32.to_le_bytes();
    assert_eq!(
        frame_len(&header, 4096),
        Err(FrameError::TooLarge {
            len: 5000,
            max: 4096
        })
    );
    assert_eq!(frame_len(&header[..3], 4096), Ok(None));
    assert_eq!(frame_len(&4096u32.to_le_bytes(), 4096), Ok(Some(4096)));
}

#[test]
fn a_put_that_points_outside_its_frame_is_malformed() {
    let mut frame = framed(&Request {
        id: 1,
        op: Op::Put {
            key: b"k",
            value: b"value",
            ttl_ms: 1000,
            copies: 0,
            only_if: 0,
        },
    });
    // Corrupt every byte of the root one at a time: each either still validates to a view
    // whose ranges lie inside the payload, or is refused. Nothing panics or reads outside.
    let root_at = frame.len() - REQUEST_ROOT_BYTES;
    for at in root_at..frame.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            frame[at] ^= flip;
            let payload = payload_of(&frame);
            if let Ok(view) = decode_request(payload) {
                assert!(view.key.end <= payload.len() && view.value.end <= payload.len());
            }
            frame[at] ^= flip;
        }
    }
}

#[test]
fn shard_of_is_stable_across_builds() {
    // The reference value is from the Python `xxhash` package (an independent implementation):
    // if this changes, clients built before would route keys to the wrong shard.
    assert_eq!(
        xxhash_rust::xxh3::xxh3_64_with_seed(b"drop:42", 7),
        0x6565_9bb1_8f24_3284
    );
    assert_eq!(shard_of(b"drop:42", 7, 1), 0);
    let mut seen = [0u32; 4];
    for i in 0..4000u32 {
        seen[shard_of(&i.to_le_bytes(), 99, 4) as usize] += 1;
    }
    assert!(
        seen.iter().all(|&n| n > 800),
        "keys spread over shards: {seen:?}"
    );
}

fn op_strategy() -> impl Strategy<Value = (u8, Vec<u8>, Vec<u8>, u64, bool, u32)> {
    (
        0u8..OP_COUNT,
        prop::collection::vec(any::<u8>(), 0..64),
        prop::collection::vec(any::<u8>(), 0..300),
        any::<u64>(),
        any::<bool>(),
        any::<u32>(),
    )
}

fn build_op<'a>(tag: u8, key: &'a [u8], value: &'a [u8], ttl: u64, local: bool, pv: u32) -> Op<'a> {
    match tag {
        0 => Op::Hello {
            protocol_version: pv,
            token: value,
        },
        1 => Op::Put {
            key,
            value,
            ttl_ms: ttl,
            copies: pv as u8,
            only_if: (pv % 3) as u8,
        },
        2 => Op::Get {
            key,
            local_only: local,
        },
        3 => Op::Delete { key },
        4 => Op::Ping,
        5 => Op::Stats,
        6 => Op::Topology,
        _ => Op::Expire { key, ttl_ms: ttl },
    }
}

proptest! {
    #[test]
    fn requests_round_trip_at_any_offset(
        ops in prop::collection::vec(op_strategy(), 1..8),
        ids in prop::collection::vec(any::<u64>(), 8),
        lead in 0usize..7,
    ) {
        // Frames are pipelined back to back after `lead` bytes, so they start at odd offsets.
        let mut stream = vec![0xAAu8; lead];
        for (i, (tag, key, value, ttl, local, pv)) in ops.iter().enumerate() {
            encode_request(&mut stream, &Request { id: ids[i], op: build_op(*tag, key, value, *ttl, *local, *pv) });
        }
        let mut at = lead;
        for (i, (tag, key, value, ttl, local, pv)) in ops.iter().enumerate() {
            let len = frame_len(&stream[at..], usize::MAX).unwrap().unwrap();
            let payload = &stream[at + FRAME_HEADER_BYTES..at + FRAME_HEADER_BYTES + len];
            let view = decode_request(payload).unwrap();
            prop_assert_eq!(view.id, ids[i]);
            match build_op(*tag, key, value, *ttl, *local, *pv) {
                Op::Hello { protocol_version, token } => {
                    prop_assert_eq!(view.kind, OpKind::Hello);
                    prop_assert_eq!(view.protocol_version, protocol_version);
                    prop_assert_eq!(&payload[view.value.clone()], token);
                }
                Op::Put { key, value, ttl_ms, copies, only_if } => {
                    prop_assert_eq!(view.only_if, only_if);
                    prop_assert_eq!(view.kind, OpKind::Put);
                    prop_assert_eq!(&payload[view.key.clone()], key);
                    prop_assert_eq!(&payload[view.value.clone()], value);
                    prop_assert_eq!(view.ttl_ms, ttl_ms);
                    prop_assert_eq!(view.copies, copies);
                }
                Op::Get { key, local_only } => {
                    prop_assert_eq!(view.kind, OpKind::Get);
                    prop_assert_eq!(&payload[view.key.clone()], key);
                    prop_assert_eq!(view.local_only, local_only);
                }
                Op::Delete { key } => {
                    prop_assert_eq!(view.kind, OpKind::Delete);
                    prop_assert_eq!(&payload[view.key.clone()], key);
                }
                Op::Ping => prop_assert_eq!(view.kind, OpKind::Ping),
                Op::Stats => prop_assert_eq!(view.kind, OpKind::Stats),
                Op::Topology => prop_assert_eq!(view.kind, OpKind::Topology),
                Op::Expire { key, ttl_ms } => {
                    prop_assert_eq!(view.kind, OpKind::Expire);
                    prop_assert_eq!(&payload[view.key.clone()], key);
                    prop_assert_eq!(view.ttl_ms, ttl_ms);
                }
            }
            at += FRAME_HEADER_BYTES + len;
        }
        prop_assert_eq!(at, stream.len());
    }

    #[test]
    fn responses_round_trip_at_any_offset(
        value in prop::collection::vec(any::<u8>(), 0..300),
        id in any::<u64>(),
        numbers in any::<(u64, u64, u64)>(),
        ports in prop::collection::vec(any::<u16>(), 0..5),
        lead in 0usize..7,
    ) {
        let replies = [
            Reply::Value { value: &value, expires_ms: numbers.0, version_clock: numbers.1, version_node: numbers.2 },
            Reply::Stored { version_clock: numbers.0, version_node: numbers.1, expires_ms: numbers.2, copies: numbers.0 as u32, pending: numbers.1 % 2 == 0 },
            Reply::Hello(HelloInfo { node_id: numbers.0, hash_seed: numbers.1, shard_ports: ports.clone(), ..HelloInfo::default() }),
            Reply::Error { code: ErrorCode::Busy, retry_after_ms: numbers.0 as u32, message: "busy" },
            Reply::NotFound,
        ];
        let mut stream = vec![0x55u8; lead];
        for reply in &replies {
            encode_response(&mut stream, &Response { id, reply: reply.clone() });
        }
        let mut at = lead;
        for reply in &replies {
            let len = frame_len(&stream[at..], usize::MAX).unwrap().unwrap();
            let archived = decode_response(&stream[at + FRAME_HEADER_BYTES..at + FRAME_HEADER_BYTES + len]).unwrap();
            prop_assert_eq!(archived.id.to_native(), id);
            match (reply, &archived.reply) {
                (Reply::Value { value, expires_ms, .. }, ArchivedReply::Value { value: got, expires_ms: got_exp, .. }) => {
                    prop_assert_eq!(got.get(), &value[..]);
                    prop_assert_eq!(got_exp.to_native(), *expires_ms);
                }
                (Reply::Stored { version_clock, copies, pending, .. }, ArchivedReply::Stored { version_clock: got, copies: got_copies, pending: got_pending, .. }) => {
                    prop_assert_eq!(got.to_native(), *version_clock);
                    prop_assert_eq!(got_copies.to_native(), *copies);
                    prop_assert_eq!(*got_pending, *pending);
                }
                (Reply::Hello(info), ArchivedReply::Hello(got)) => {
                    let got_ports: Vec<u16> = got.shard_ports.iter().map(|p| p.to_native()).collect();
                    prop_assert_eq!(&got_ports, &info.shard_ports);
                    prop_assert_eq!(got.node_id.to_native(), info.node_id);
                }
                (Reply::Error { code, retry_after_ms, .. }, ArchivedReply::Error { code: got, retry_after_ms: got_retry, message }) => {
                    prop_assert_eq!(ErrorCode::from(got), *code);
                    prop_assert_eq!(got_retry.to_native(), *retry_after_ms);
                    prop_assert_eq!(message.get(), "busy");
                }
                (Reply::NotFound, ArchivedReply::NotFound) => {}
                (want, _) => prop_assert!(false, "{want:?} came back as another reply"),
            }
            at += FRAME_HEADER_BYTES + len;
        }
    }

    #[test]
    fn a_decoded_view_reads_back_the_op_that_was_encoded(
        (tag, key, value, ttl, local, pv) in op_strategy(),
        id in any::<u64>(),
    ) {
        let op = build_op(tag, &key, &value, ttl, local, pv);
        let frame = framed(&Request { id, op: op.clone() });
        let payload = payload_of(&frame);
        let view = decode_request(payload).unwrap();
        prop_assert_eq!(view.op(payload), Some(op));
    }

    #[test]
    fn random_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(view) = decode_request(&bytes) {
            prop_assert!(view.key.end <= bytes.len() && view.value.end <= bytes.len());
        }
    }
}

#[test]
fn adding_stats_sums_every_counter_under_its_own_name() {
    let one = ShardStats {
        puts: 1,
        gets: 2,
        deletes: 3,
        pings: 4,
        hellos: 5,
        stats: 6,
        hits: 7,
        misses: 8,
        expirations: 9,
        keys: 10,
        tombstones: 11,
        used_bytes: 12,
        budget_bytes: 13,
        rejected_writes: 14,
        connections_open: 15,
        connections_accepted: 16,
        connections_refused: 17,
        forwarded: 18,
        busy: 19,
        bad_frames: 20,
        live_set_count: 21,
        live_set_xor: 0b1010,
        resp_connections_open: 22,
        http_connections_open: 23,
        latency: Box::new(
            [OpLatency {
                counts: [1; LATENCY_BOUNDS_US.len() + 1],
                sum_us: 100,
            }; LATENCY_OPS.len()],
        ),
    };
    let mut total = ShardStats::default();
    total.add(&one);
    total.add(&one);
    assert_eq!(total.puts, 2);
    assert_eq!(total.bad_frames, 40);
    let names: std::collections::HashSet<_> = one.fields().iter().map(|(n, _)| *n).collect();
    assert_eq!(names.len(), 23, "every counter listed once");
    for ((name, sum), (_, single)) in total.fields().into_iter().zip(one.fields()) {
        assert_eq!(sum, single * 2, "{name}");
    }
    let values: std::collections::HashSet<_> = one.fields().iter().map(|(_, v)| *v).collect();
    assert_eq!(values.len(), 23, "fields() reads every counter, none twice");
    for latency in total.latency.iter() {
        assert_eq!(latency.count(), 2 * (LATENCY_BOUNDS_US.len() as u64 + 1));
        assert_eq!(latency.sum_us, 200);
    }
    assert_eq!(
        total.live_set_xor, 0,
        "sets combine by xor: the same set twice cancels"
    );
}

#[test]
fn a_latency_falls_in_the_first_bucket_whose_bound_it_does_not_exceed() {
    assert_eq!(OpLatency::bucket_of(0), 0);
    assert_eq!(OpLatency::bucket_of(10), 0);
    assert_eq!(OpLatency::bucket_of(11), 1);
    assert_eq!(OpLatency::bucket_of(1_000), 6);
    assert_eq!(OpLatency::bucket_of(1_000_000), LATENCY_BOUNDS_US.len() - 1);
    assert_eq!(OpLatency::bucket_of(1_000_001), LATENCY_BOUNDS_US.len());
    assert_eq!(OpLatency::bucket_of(u64::MAX), LATENCY_BOUNDS_US.len());
}

#[test]
fn views_built_over_a_front_ends_buffer_read_as_the_ops_they_stand_for() {
    let buffer = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n";
    let (key, value) = (17..20, 26..31);
    assert_eq!(&buffer[key.clone()], b"key");
    assert_eq!(&buffer[value.clone()], b"value");
    let put = RequestView::put(7, key.clone(), value.clone(), 60_000, PUT_IF_ABSENT);
    assert_eq!(put.id, 7);
    assert!(put.has_key());
    assert_eq!(
        put.op(buffer),
        Some(Op::Put {
            key: b"key",
            value: b"value",
            ttl_ms: 60_000,
            copies: 0,
            only_if: PUT_IF_ABSENT,
        })
    );
    let get = RequestView::get(8, key.clone(), true);
    assert_eq!(
        get.op(buffer),
        Some(Op::Get {
            key: b"key",
            local_only: true
        })
    );
    let delete = RequestView::delete(9, key.clone());
    assert_eq!(delete.op(buffer), Some(Op::Delete { key: b"key" }));
    let expire = RequestView::expire(10, key, 5_000);
    assert_eq!(
        expire.op(buffer),
        Some(Op::Expire {
            key: b"key",
            ttl_ms: 5_000
        })
    );
    // A range past the buffer reads as nothing, never as a panic.
    assert_eq!(RequestView::get(11, 30..40, false).op(buffer), None);
}
