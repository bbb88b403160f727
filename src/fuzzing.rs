//! Fuzzing harnesses: each feeds arbitrary bytes to one decoder the way a connection would
//! (frame after frame, command after command) and checks what it gives back. The same code
//! runs under `cargo fuzz` (`fuzz/`, nightly) and replays every committed corpus in the
//! ordinary test suite (`tests/fuzz_corpora.rs`), so a regression shows in plain CI.
//!
//! A panic here is a bug the fuzzer found. Each returns how many items it read whole (the
//! corpus replay checks the seeds are real inputs). Owns nothing else; it is not an API.

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
