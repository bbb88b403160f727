//! Sealed peer links (a private network, `--cluster-key-file`): every peer connection opens
//! with a Noise `XXpsk0` handshake, whose first message already depends on the pre-shared
//! cluster key, so a stranger without it learns nothing (not even a node's static key); then
//! every frame is sealed with AES-256-GCM under the session's keys, in place, each direction
//! with its own key and a counter nonce. A frame that was altered, replayed, reordered or
//! dropped fails to open, and the connection ends.
//!
//! Owns the handshake, the session keys and the frame sealing; it never decides what to send
//! and never reads a message (`links` does). Keys (the node's private key, the cluster key, the
//! raw session keys) are kept in wiped buffers; `ring`'s key objects cannot be wiped through
//! their API (see SECURITY.md).

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM, NONCE_LEN};
use zeroize::Zeroizing;

use crate::store::SecretBox;
use crate::wire::FRAME_HEADER_BYTES;

/// The Noise protocol: XX (both sides prove a static key) with the cluster key mixed in from
/// the first message, X25519, AES-256-GCM, SHA-256.
const NOISE_PARAMS: &str = "Noise_XXpsk0_25519_AESGCM_SHA256";
/// Bytes a sealed frame adds: the GCM tag.
pub(crate) const TAG_BYTES: usize = 16;
/// A handshake message is at most this long (XX's longest carries two keys and two tags).
const HANDSHAKE_BYTES_MAX: usize = 1_024;
/// Bytes of every key here.
pub(crate) const KEY_BYTES: usize = 32;
/// Failed handshakes one address may cause per window before its connections are refused
/// for the rest of it; how many addresses are tracked at once.
const FAILURES_PER_WINDOW_MAX: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(1);
const FAILURE_SOURCES_MAX: usize = 4_096;

/// A 32-byte key read from a file of 64 hex digits (whitespace around it ignored).
pub fn read_key_file(path: &Path) -> Result<Zeroizing<[u8; KEY_BYTES]>, String> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
    );
    parse_key(text.trim()).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse_key(hex_text: &str) -> Result<Zeroizing<[u8; KEY_BYTES]>, String> {
    let mut key = Zeroizing::new([0u8; KEY_BYTES]);
    hex::decode_to_slice(hex_text, &mut key[..]).map_err(|_| {
        format!(
            "not a key of {KEY_BYTES} bytes in hex ({} digits)",
            KEY_BYTES * 2
        )
    })?;
    Ok(key)
}

/// A new random key (a cluster key, or a node's private key).
pub fn random_key() -> Result<Zeroizing<[u8; KEY_BYTES]>, String> {
    let mut key = Zeroizing::new([0u8; KEY_BYTES]);
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key[..])
        .map_err(|_| "no system randomness".to_string())?;
    Ok(key)
}

/// The public key of a node's private key (X25519), as the handshake shows it to peers.
pub fn public_key_of(private: &[u8; KEY_BYTES]) -> Result<[u8; KEY_BYTES], String> {
    use snow::resolvers::CryptoResolver;
    let mut dh = snow::resolvers::DefaultResolver
        .resolve_dh(&snow::params::DHChoice::Curve25519)
        .ok_or("no X25519 in this build")?;
    dh.set(private);
    let mut public = [0u8; KEY_BYTES];
    public.copy_from_slice(dh.pubkey());
    Ok(public)
}

fn noise_params() -> Result<snow::params::NoiseParams, String> {
    NOISE_PARAMS.parse().map_err(|e: snow::Error| e.to_string())
}

/// A private network's keys: the cluster key, this node's static key pair, and (optionally)
/// the public keys of the only nodes allowed in.
pub struct ClusterKeys {
    cluster: Zeroizing<[u8; KEY_BYTES]>,
    private: Zeroizing<[u8; KEY_BYTES]>,
    pub public: [u8; KEY_BYTES],
    trusted: Option<HashSet<[u8; KEY_BYTES]>>,
}

impl std::fmt::Debug for ClusterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterKeys(public {})", hex::encode(self.public))
    }
}

impl ClusterKeys {
    /// `private`: the node's static key (`None`: a new one for this process, which a trust
    /// list elsewhere cannot name); `trusted`: public keys, one per line (`#` comments).
    pub fn new(
        cluster: Zeroizing<[u8; KEY_BYTES]>,
        private: Option<Zeroizing<[u8; KEY_BYTES]>>,
        trusted: Option<&str>,
    ) -> Result<ClusterKeys, String> {
        let private = match private {
            Some(key) => key,
            None => random_key()?,
        };
        let public = public_key_of(&private)?;
        let trusted = match trusted {
            None => None,
            Some(text) => {
                let mut keys = HashSet::new();
                for (n, line) in text.lines().enumerate() {
                    let line = line.split('#').next().unwrap_or("").trim();
                    if line.is_empty() {
                        continue;
                    }
                    let key = parse_key(line).map_err(|e| format!("line {}: {e}", n + 1))?;
                    keys.insert(*key);
                }
                Some(keys)
            }
        };
        Ok(ClusterKeys {
            cluster,
            private,
            public,
            trusted,
        })
    }

    fn handshake(&self, initiator: bool) -> Result<snow::HandshakeState, String> {
        let builder = snow::Builder::new(noise_params()?)
            .local_private_key(&self.private[..])
            .and_then(|b| b.psk(0, &self.cluster))
            .map_err(|e| e.to_string())?;
        let state = if initiator {
            builder.build_initiator()
        } else {
            builder.build_responder()
        };
        state.map_err(|e| e.to_string())
    }

    fn admits(&self, remote: &[u8; KEY_BYTES]) -> bool {
        self.trusted
            .as_ref()
            .is_none_or(|keys| keys.contains(remote))
    }
}

/// One direction of a session: its key (in an allocation of its own, zeroed when the session
/// ends, as the store keeps its data keys) and the next frame's number.
struct Direction {
    key: SecretBox<LessSafeKey>,
    next: u64,
}

impl Direction {
    fn new(raw: &[u8; KEY_BYTES]) -> Result<Direction, String> {
        let key = UnboundKey::new(&AES_256_GCM, raw).map_err(|_| "bad session key")?;
        Ok(Direction {
            key: SecretBox::new(LessSafeKey::new(key)),
            next: 0,
        })
    }

    /// The next frame's nonce: never reused (a session ends before its counter wraps).
    fn nonce(&mut self) -> Result<Nonce, String> {
        let n = self.next;
        self.next = n.checked_add(1).ok_or("session exhausted")?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce[NONCE_LEN - 8..].copy_from_slice(&n.to_be_bytes());
        Ok(Nonce::assume_unique_for_key(nonce))
    }
}

/// A finished handshake: a key for each direction, and who is at the other end.
pub(crate) struct SealedSession {
    seal: Direction,
    open: Direction,
    pub remote: [u8; KEY_BYTES],
}

impl SealedSession {
    /// Seals a frame in place: `frame` is a length prefix, the plaintext, then `TAG_BYTES`
    /// of room (the prefix already counts them).
    pub(crate) fn seal_frame(&mut self, frame: &mut [u8]) -> Result<(), String> {
        let body = frame
            .get_mut(FRAME_HEADER_BYTES..)
            .filter(|b| b.len() >= TAG_BYTES)
            .ok_or("frame shorter than its tag")?;
        let (plain, tag_room) = body.split_at_mut(body.len() - TAG_BYTES);
        let nonce = self.seal.nonce()?;
        let tag: Tag = self
            .seal
            .key
            .seal_in_place_separate_tag(nonce, Aad::empty(), plain)
            .map_err(|_| "sealing failed")?;
        tag_room.copy_from_slice(tag.as_ref());
        Ok(())
    }

    /// Seals every frame of `frames` (frames back to back, each with its tag room).
    pub(crate) fn seal_frames(&mut self, frames: &mut [u8]) -> Result<(), String> {
        let mut at = 0;
        while at < frames.len() {
            let header: [u8; FRAME_HEADER_BYTES] = frames[at..at + FRAME_HEADER_BYTES]
                .try_into()
                .map_err(|_| "cut frame")?;
            let end = at + FRAME_HEADER_BYTES + u32::from_le_bytes(header) as usize;
            self.seal_frame(frames.get_mut(at..end).ok_or("cut frame")?)?;
            at = end;
        }
        Ok(())
    }

    /// Opens a sealed frame's payload (ciphertext and tag) in place; the plaintext is the
    /// returned front part. An altered, replayed or out-of-order frame fails.
    pub(crate) fn open_frame<'a>(&mut self, payload: &'a mut [u8]) -> Result<&'a mut [u8], String> {
        let nonce = self.open.nonce()?;
        self.open
            .key
            .open_in_place(nonce, Aad::empty(), payload)
            .map_err(|_| "a frame failed to open (altered, replayed or out of order)".to_string())
    }
}

/// Writes one handshake message with its length prefix.
async fn send_message(stream: &mut TcpStream, message: &[u8]) -> Result<(), String> {
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + message.len());
    frame.extend_from_slice(&(message.len() as u32).to_le_bytes());
    frame.extend_from_slice(message);
    stream.write_all(&frame).await.map_err(|e| e.to_string())
}

/// Runs the handshake on a fresh connection (`initiator`: the side that connected) and
/// returns the session, or why the other side is not let in.
pub(crate) async fn handshake(
    stream: &mut TcpStream,
    keys: &ClusterKeys,
    initiator: bool,
) -> Result<SealedSession, String> {
    let mut state = keys.handshake(initiator)?;
    let mut buf = vec![0u8; HANDSHAKE_BYTES_MAX];
    let mut payload = vec![0u8; HANDSHAKE_BYTES_MAX];
    while !state.is_handshake_finished() {
        if state.is_my_turn() {
            let len = state
                .write_message(&[], &mut buf)
                .map_err(|e| e.to_string())?;
            send_message(stream, &buf[..len]).await?;
        } else {
            let message = super::links::read_frame(stream, HANDSHAKE_BYTES_MAX).await?;
            state
                .read_message(&message, &mut payload)
                .map_err(|_| "handshake refused: wrong cluster key, or not a REPRAM peer")?;
        }
    }
    let remote: [u8; KEY_BYTES] = state
        .get_remote_static()
        .and_then(|k| k.try_into().ok())
        .ok_or("the handshake named no static key")?;
    if !keys.admits(&remote) {
        return Err(format!("{} is not a trusted peer", hex::encode(remote)));
    }
    let (first, second) = state.dangerously_get_raw_split();
    let (first, second) = (Zeroizing::new(first), Zeroizing::new(second));
    // The first key seals what the initiator sends.
    let (seal, open) = if initiator {
        (&first, &second)
    } else {
        (&second, &first)
    };
    Ok(SealedSession {
        seal: Direction::new(seal)?,
        open: Direction::new(open)?,
        remote,
    })
}

/// Failed handshakes by source address: past the limit in a window, the address's
/// connections are refused before any work is done for them.
#[derive(Default)]
pub(crate) struct HandshakeGuard {
    failures: std::cell::RefCell<AHashMap<IpAddr, (Instant, u32)>>,
}

impl HandshakeGuard {
    /// Whether a connection from `ip` may try a handshake now.
    pub(crate) fn admits(&self, ip: IpAddr, now: Instant) -> bool {
        match self.failures.borrow().get(&ip) {
            Some(&(since, count)) => {
                now.duration_since(since) >= FAILURE_WINDOW || count < FAILURES_PER_WINDOW_MAX
            }
            None => true,
        }
    }

    /// Counts a failed handshake from `ip`; `true` when it is the first of its window (worth
    /// a warning in the log; the rest are counted only).
    pub(crate) fn failed(&self, ip: IpAddr, now: Instant) -> bool {
        let mut failures = self.failures.borrow_mut();
        if failures.len() >= FAILURE_SOURCES_MAX && !failures.contains_key(&ip) {
            failures.retain(|_, (since, _)| now.duration_since(*since) < FAILURE_WINDOW);
            if failures.len() >= FAILURE_SOURCES_MAX {
                failures.clear();
            }
        }
        let entry = failures.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= FAILURE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(cluster: u8, trusted: Option<&str>) -> ClusterKeys {
        ClusterKeys::new(Zeroizing::new([cluster; KEY_BYTES]), None, trusted).expect("keys")
    }

    /// Drives a handshake between two in-memory states, as the links do over TCP.
    fn pair(a: &ClusterKeys, b: &ClusterKeys) -> Result<(SealedSession, SealedSession), String> {
        let mut i = a.handshake(true)?;
        let mut r = b.handshake(false)?;
        let mut buf = vec![0u8; HANDSHAKE_BYTES_MAX];
        let mut payload = vec![0u8; HANDSHAKE_BYTES_MAX];
        while !(i.is_handshake_finished() && r.is_handshake_finished()) {
            let (from, to) = if i.is_my_turn() {
                (&mut i, &mut r)
            } else {
                (&mut r, &mut i)
            };
            let len = from
                .write_message(&[], &mut buf)
                .map_err(|e| e.to_string())?;
            to.read_message(&buf[..len], &mut payload)
                .map_err(|e| e.to_string())?;
        }
        let finish = |mut s: snow::HandshakeState, initiator: bool| {
            let (first, second) = s.dangerously_get_raw_split();
            let remote: [u8; KEY_BYTES] = s.get_remote_static().unwrap().try_into().unwrap();
            let (seal, open) = if initiator {
                (first, second)
            } else {
                (second, first)
            };
            SealedSession {
                seal: Direction::new(&seal).unwrap(),
                open: Direction::new(&open).unwrap(),
                remote,
            }
        };
        Ok((finish(i, true), finish(r, false)))
    }

    fn frame(text: &[u8]) -> Vec<u8> {
        let mut frame = ((text.len() + TAG_BYTES) as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(text);
        frame.extend_from_slice(&[0u8; TAG_BYTES]);
        frame
    }

    #[test]
    fn the_same_cluster_key_opens_a_session_in_both_directions() {
        let (a, b) = (keys(7, None), keys(7, None));
        let (mut ours, mut theirs) = pair(&a, &b).expect("handshake");
        assert_eq!(ours.remote, b.public);
        assert_eq!(theirs.remote, a.public);
        for text in [&b"first"[..], b"second", b""] {
            let mut sealed = frame(text);
            ours.seal_frame(&mut sealed).expect("seal");
            if !text.is_empty() {
                assert_ne!(&sealed[4..4 + text.len()], text, "sealed, not plain");
            }
            let opened = theirs.open_frame(&mut sealed[4..]).expect("open");
            assert_eq!(opened, text);
        }
        let mut back = frame(b"reply");
        theirs.seal_frame(&mut back).expect("seal");
        assert_eq!(ours.open_frame(&mut back[4..]).expect("open"), b"reply");
    }

    #[test]
    fn a_wrong_cluster_key_fails_the_handshake() {
        assert!(pair(&keys(7, None), &keys(8, None)).is_err());
    }

    #[test]
    fn an_altered_or_replayed_frame_does_not_open() {
        let (mut ours, mut theirs) = pair(&keys(1, None), &keys(1, None)).expect("handshake");
        let mut first = frame(b"pay 10");
        ours.seal_frame(&mut first).expect("seal");
        let recorded = first.clone();
        let mut flipped = first.clone();
        flipped[6] ^= 1;
        assert!(theirs.open_frame(&mut flipped[4..]).is_err(), "altered");
        // The failed frame used its number: the session is broken from here, as the link
        // closes it. A fresh session shows a replay failing on its own.
        let (mut ours, mut theirs) = pair(&keys(1, None), &keys(1, None)).expect("handshake");
        let mut first = frame(b"pay 10");
        ours.seal_frame(&mut first).expect("seal");
        let mut replay = first.clone();
        theirs
            .open_frame(&mut first[4..])
            .expect("the original opens");
        assert!(theirs.open_frame(&mut replay[4..]).is_err(), "replayed");
        drop(recorded);
    }

    #[test]
    fn a_trust_list_admits_only_the_keys_it_names() {
        let member = keys(3, None);
        let list = format!("# our nodes\n{}\n", hex::encode(member.public));
        let guarded = keys(3, Some(&list));
        assert!(guarded.admits(&member.public));
        assert!(!guarded.admits(&keys(3, None).public));
        assert!(ClusterKeys::new(Zeroizing::new([0; 32]), None, Some("zz")).is_err());
    }

    #[test]
    fn an_address_failing_too_often_is_refused_for_the_rest_of_its_window() {
        let guard = HandshakeGuard::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let now = Instant::now();
        assert!(guard.failed(ip, now), "the first failure is reported");
        for _ in 1..FAILURES_PER_WINDOW_MAX {
            assert!(!guard.failed(ip, now));
        }
        assert!(!guard.admits(ip, now));
        assert!(guard.admits("192.0.2.2".parse().unwrap(), now));
        assert!(guard.admits(ip, now + FAILURE_WINDOW));
    }
}
