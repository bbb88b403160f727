//! Fuzzing harnesses: each feeds arbitrary bytes to one decoder the way a connection would
//! (frame after frame, command after command) and checks what it gives back. The same code
//! runs under `cargo fuzz` (`fuzz/`, nightly) and replays every committed corpus in the
//! ordinary test suite (`tests/fuzz_corpora.rs`), so a regression shows in plain CI.
//!
//! A panic here is a bug the fuzzer found. Each returns how many items it read whole (the
//! corpus replay checks the seeds are real inputs). Owns nothing else; it is not an API.

pub mod store_model;

use crate::http::request::{decode, parse_head, query_value, HttpLimits};
use crate::resp::parse::{parse_command, RespLimits};
use crate::wire::peer::{decode_peer, decode_peer_hello, PeerLimits};
use crate::wire::{self, FrameError};

/// Client frames back to back, as a connection reads them: every frame is bounded by the
/// node's limit before anything is allocated, and every decoded range lies inside its frame.
pub fn client_frames(data: &[u8]) -> usize {
    const FRAME_BYTES_MAX: usize = 1 << 20;
    let (mut at, mut read) = (0, 0);
    while at < data.len() {
        let len = match wire::frame_len(&data[at..], FRAME_BYTES_MAX) {
            Ok(Some(len)) => len,
            Ok(None) | Err(_) => break,
        };
        assert!(
            len <= FRAME_BYTES_MAX,
            "a frame past the limit was let through"
        );
        let Some(payload) =
            data.get(at + wire::FRAME_HEADER_BYTES..at + wire::FRAME_HEADER_BYTES + len)
        else {
            break;
        };
        match wire::decode_request(payload) {
            Ok(view) => {
                assert!(view.key.start <= view.key.end && view.key.end <= payload.len());
                assert!(view.value.start <= view.value.end && view.value.end <= payload.len());
                read += 1;
            }
            Err(FrameError::UnknownOp { .. } | FrameError::Malformed) => {}
            Err(FrameError::TooLarge { .. }) => panic!("a payload cannot be too large here"),
        }
        at += wire::FRAME_HEADER_BYTES + len;
    }
    read
}

/// The store against its model (`store_model`), on the operation sequence the bytes spell:
/// any difference panics. Returns how many operations ran.
pub fn store_ops(data: &[u8]) -> usize {
    let ops = store_model::StoreOp::sequence_from(data);
    let count = ops.len();
    store_model::run_store_ops(ops);
    count
}

/// One peer frame payload: a hello, or a message within the default peer limits.
pub fn peer_frame(data: &[u8]) -> usize {
    let hello = decode_peer_hello(data).is_ok();
    let message = decode_peer(data, &PeerLimits::default()).is_ok();
    usize::from(hello) + usize::from(message)
}

/// RESP commands back to back, under small limits (so the limits themselves are exercised):
/// every argument lies inside the consumed bytes, and a command is never longer than its
/// limit.
pub fn resp_commands(data: &[u8]) -> usize {
    let limits = RespLimits {
        args_max: 64,
        bulk_bytes_max: 1_024,
        inline_bytes_max: 1_024,
        command_bytes_max: 4 * 1_024,
    };
    let (mut at, mut read) = (0, 0);
    while at < data.len() {
        match parse_command(&data[at..], &limits) {
            Ok(Some(command)) => {
                assert!(command.len > 0, "a command consumes bytes");
                assert!(command.len <= data.len() - at);
                assert!(command.args.len() <= limits.args_max);
                for arg in &command.args {
                    assert!(arg.start <= arg.end && arg.end <= command.len);
                }
                at += command.len;
                read += 1;
            }
            Ok(None) | Err(_) => break,
        }
    }
    read
}

/// HTTP request heads back to back (bodies skipped by their length), and the query and path
/// decoding every route uses.
pub fn http_heads(data: &[u8]) -> usize {
    let limits = HttpLimits {
        head_bytes_max: 4 * 1_024,
        body_bytes_max: 16 * 1_024,
    };
    let (mut at, mut read) = (0, 0);
    while at < data.len() {
        match parse_head(&data[at..], &limits) {
            Ok(Some(head)) => {
                assert!(head.len > 0 && head.len <= limits.head_bytes_max);
                assert!(head.content_length <= limits.body_bytes_max);
                if let Some(bearer) = &head.bearer {
                    assert!(bearer.start <= bearer.end && bearer.end <= head.len);
                }
                let _ = decode(&head.path);
                let _ = query_value(&head.query, "ttl");
                at += head.len + head.content_length;
                read += 1;
            }
            Ok(None) | Err(_) => break,
        }
    }
    read
}

/// The peer protocol's state machine driven by an arbitrary sequence of inputs: peer messages
/// (decoded from the input, as a link would), clock steps, unreachable peers, local writes and
/// misses, from four peers. The node's store answers at once ([`LocalNode`]). Checks that no
/// input panics it, that one input never makes it send without bound, and that its view of
/// the network stays readable. Returns how many peer messages it handled.
///
/// [`LocalNode`]: crate::cluster::LocalNode
pub fn cluster_inputs(data: &[u8]) -> usize {
    use crate::cluster::entry::Plaintext;
    use crate::cluster::{
        ClusterConfig, Entry, Input, LocalNode, MemStore, NodeConfig, Output, Version,
    };
    use std::net::SocketAddr;
    use std::rc::Rc;

    /// Messages one input may make the node send at most (a push to every child, a dump
    /// chunk, a map): far more means a loop.
    const SENDS_PER_INPUT_MAX: usize = 4_096;
    let peer = |i: u8| SocketAddr::from(([10, 0, 0, 1 + i % 4], 7800));
    let Some((&first, mut rest)) = data.split_first() else {
        return 0;
    };
    let me = SocketAddr::from(([10, 0, 0, 9], 7800));
    let is_root = first & 1 == 1;
    let config = NodeConfig {
        id: 9,
        addr: me,
        roots: if is_root { vec![me] } else { vec![peer(0)] },
        is_root,
        cluster: ClusterConfig::default(),
    };
    let mut now = 1_700_000_000_000u64;
    let mut node = LocalNode::new(config, MemStore::new(), u64::from(first), now);
    let limits = PeerLimits::default();
    let mut handled = 0;
    let take = |rest: &mut &[u8], n: usize| -> Option<Vec<u8>> {
        let (head, tail) = (rest.get(..n)?, rest.get(n..)?);
        *rest = tail;
        Some(head.to_vec())
    };
    while let Some(step) = take(&mut rest, 2) {
        let (tag, arg) = (step[0], step[1]);
        let input = match tag % 8 {
            0..=2 => {
                let Some(len) = take(&mut rest, 2) else { break };
                let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
                let len = len.min(rest.len());
                let Some(payload) = take(&mut rest, len) else {
                    break;
                };
                match decode_peer(&payload, &limits) {
                    Ok(msg) => {
                        handled += 1;
                        Input::Message {
                            from: peer(arg),
                            msg,
                        }
                    }
                    Err(_) => continue,
                }
            }
            3 => {
                now += u64::from(arg) * 50;
                Input::Tick
            }
            4 => Input::Unreachable { addr: peer(arg) },
            5 | 6 => {
                let entry = Entry {
                    key: Rc::from(vec![b'k', arg % 16]),
                    value: (tag & 0x80 == 0).then(|| Plaintext::shared(&[arg; 8])),
                    expires_ms: now + 60_000,
                    version: Version {
                        clock: now << 16,
                        node: 9,
                    },
                };
                if tag % 8 == 5 {
                    Input::LocalWrite(entry)
                } else {
                    Input::LocalWriteCopies {
                        entry,
                        request: u64::from(arg),
                        copies: arg % 4,
                        timeout_ms: 500,
                    }
                }
            }
            _ if tag == 0xff && arg == 0xff => Input::Leave,
            _ => Input::LocalMiss {
                request: u64::from(arg),
                key: Rc::from(vec![b'k', arg % 16]),
            },
        };
        node.handle(input, now);
        let mut sends = 0;
        while let Some(output) = node.poll_output() {
            if matches!(output, Output::Send { .. }) {
                sends += 1;
                assert!(
                    sends <= SENDS_PER_INPUT_MAX,
                    "one input made the node send {sends} messages"
                );
            }
        }
        let topology = node.topology(now);
        assert!(
            topology.children.len() <= 1_024,
            "more children than any role allows"
        );
    }
    handled
}
