//! The peer wire: the cluster core's messages as length-prefixed rkyv frames, validated and
//! bounded on the way in.
//!
//! Owns the peer frame format and the limits a peer's message must respect (entries, keys,
//! values, candidates, paths, digests, filters). It never decides anything about the network:
//! `repram_cluster::Node` does, with the `Message` this produces. Same format rules as the
//! client wire (pinned little-endian, 32-bit pointers, unaligned).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::rc::Rc;

use repram_cluster::entry::Plaintext;
use repram_cluster::message::{AckRequest, Message, NodeInfo, Role};
use repram_cluster::sync::{BucketDigest, FilterData, DIGESTS_PER_MESSAGE_MAX, FILTER_BYTES_MAX};
use repram_cluster::{Entry, Version};
use rkyv::rancor;
use rkyv::with::{InlineAsBox, Map};
use rkyv::{Archive, Serialize};

use super::{FrameError, FRAME_HEADER_BYTES};

/// Marks every peer frame ("RPP1").
pub const PEER_MAGIC: u32 = u32::from_le_bytes(*b"RPP1");
/// Marks the first frame on a peer connection ("RPH1"): who is calling.
pub const PEER_HELLO_MAGIC: u32 = u32::from_le_bytes(*b"RPH1");

/// The first frame a node sends on a connection it opens: the address its messages come from
/// (peers answer there, on a connection of their own), its id and its protocol major.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerHello {
    pub major: u16,
    pub node_id: u64,
    pub addr: SocketAddr,
}

#[derive(Archive, Serialize)]
struct HelloFrame {
    magic: u32,
    major: u16,
    node_id: u64,
    addr: WireAddr,
}

/// Appends the framed hello to `out`.
pub fn encode_peer_hello(out: &mut Vec<u8>, hello: &PeerHello) {
    let frame = HelloFrame {
        magic: PEER_HELLO_MAGIC,
        major: hello.major,
        node_id: hello.node_id,
        addr: wire_addr(hello.addr),
    };
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    let out = match rkyv::api::high::to_bytes_in::<_, rancor::Failure>(&frame, out) {
        Ok(out) => out,
        Err(_) => unreachable!("serialising a hello into a Vec failed"),
    };
    let len = (out.len() - start - FRAME_HEADER_BYTES) as u32;
    out[start..start + FRAME_HEADER_BYTES].copy_from_slice(&len.to_le_bytes());
}

/// Validates a hello frame payload (without its length prefix).
pub fn decode_peer_hello(payload: &[u8]) -> Result<PeerHello, PeerFrameError> {
    let frame = rkyv::access::<ArchivedHelloFrame, rancor::Failure>(payload)
        .map_err(|_| FrameError::Malformed)?;
    if frame.magic.to_native() != PEER_HELLO_MAGIC {
        return Err(FrameError::Malformed.into());
    }
    Ok(PeerHello {
        major: frame.major.to_native(),
        node_id: frame.node_id.to_native(),
        addr: addr_of(&frame.addr),
    })
}

/// What a peer's message may hold at most. Every list a peer sends is checked against these
/// before anything is built from it.
#[derive(Clone, Copy, Debug)]
pub struct PeerLimits {
    pub frame_bytes_max: usize,
    pub entries_max: usize,
    pub key_bytes_max: usize,
    pub value_bytes_max: usize,
    pub candidates_max: usize,
    pub roots_max: usize,
    pub path_len_max: usize,
    pub filters_max: usize,
}

impl Default for PeerLimits {
    fn default() -> Self {
        PeerLimits {
            frame_bytes_max: 16 * 1024 * 1024,
            entries_max: 4_096,
            key_bytes_max: crate::limits::KEY_BYTES_MAX_DEFAULT,
            value_bytes_max: crate::limits::VALUE_BYTES_MAX_DEFAULT,
            candidates_max: 64,
            roots_max: 16,
            path_len_max: 3,
            filters_max: 1_024,
        }
    }
}

#[derive(Archive, Serialize)]
struct PeerFrame<'a> {
    magic: u32,
    msg: WireMsg<'a>,
}

#[derive(Archive, Serialize, Clone, Copy)]
struct WireAddr {
    /// IPv4 addresses as IPv4-mapped IPv6.
    ip: [u8; 16],
    port: u16,
}

#[derive(Archive, Serialize, Clone, Copy)]
struct WireInfo {
    id: u64,
    addr: WireAddr,
    /// 0 root, 1 trunk, 2 branch, 3 leaf, 255 none.
    role: u8,
    children: u16,
    capacity: u16,
}

#[derive(Archive, Serialize)]
struct WireEntry<'a> {
    #[rkyv(with = InlineAsBox)]
    key: &'a [u8],
    #[rkyv(with = Map<InlineAsBox>)]
    value: Option<&'a [u8]>,
    expires_ms: u64,
    clock: u64,
    node: u64,
}

#[derive(Archive, Serialize)]
struct WireDigest {
    bucket: u64,
    count: u32,
    xor: u64,
}

#[derive(Archive, Serialize)]
struct WireFilter<'a> {
    bucket: u64,
    /// 0 empty, 1 binary fuse 8.
    kind: u8,
    seed: u64,
    segment_length: u32,
    segment_length_mask: u32,
    segment_count_length: u32,
    #[rkyv(with = InlineAsBox)]
    fingerprints: &'a [u8],
}

#[derive(Archive, Serialize)]
enum WireMsg<'a> {
    Join {
        major: u16,
        info: WireInfo,
    },
    TopologyMap {
        candidates: Vec<WireInfo>,
        roots: Vec<WireAddr>,
    },
    JoinRefused {
        major: u16,
    },
    Ping {
        nonce: u64,
        info: WireInfo,
    },
    Pong {
        nonce: u64,
        info: WireInfo,
    },
    Attach {
        info: WireInfo,
    },
    AttachReply {
        accepted: bool,
        info: WireInfo,
        path: Vec<u64>,
    },
    Heartbeat {
        info: WireInfo,
        open_children: Vec<WireInfo>,
    },
    HeartbeatReply {
        info: WireInfo,
        is_child: bool,
        path: Vec<u64>,
        peers: Vec<WireInfo>,
    },
    Leave {
        info: WireInfo,
    },
    Push {
        entries: Vec<WireEntry<'a>>,
        ack: Option<WireAck>,
    },
    DumpRequest {
        cursor: u64,
    },
    DumpChunk {
        entries: Vec<WireEntry<'a>>,
        next: Option<u64>,
    },
    SyncSummary {
        round: u64,
        from_bucket: u64,
        summary: u64,
        settled_before_ms: u64,
    },
    SyncInSync {
        round: u64,
    },
    SyncDigests {
        round: u64,
        digests: Vec<WireDigest>,
    },
    SyncFilters {
        round: u64,
        filters: Vec<WireFilter<'a>>,
        answer: bool,
        settled_before_ms: u64,
    },
    SyncEntries {
        round: u64,
        entries: Vec<WireEntry<'a>>,
    },
    Pull {
        nonce: u64,
        #[rkyv(with = InlineAsBox)]
        key: &'a [u8],
    },
    PullReply {
        nonce: u64,
        entry: Option<WireEntry<'a>>,
    },
    Full {
        retry_after_ms: u64,
    },
    PushAck {
        nonce: u64,
        holders: u32,
    },
}

#[derive(Archive, Serialize)]
struct WireAck {
    nonce: u64,
    want: u8,
}

fn wire_addr(addr: SocketAddr) -> WireAddr {
    let ip = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    WireAddr {
        ip: ip.octets(),
        port: addr.port(),
    }
}

fn wire_info(info: &NodeInfo) -> WireInfo {
    WireInfo {
        id: info.id,
        addr: wire_addr(info.addr),
        role: info.role.map_or(255, |r| r.depth()),
        children: info.children,
        capacity: info.capacity,
    }
}

fn wire_entry(entry: &Entry) -> WireEntry<'_> {
    WireEntry {
        key: &entry.key,
        value: entry.value.as_deref().map(|v| &**v),
        expires_ms: entry.expires_ms,
        clock: entry.version.clock,
        node: entry.version.node,
    }
}

fn wire_entries(entries: &[Entry]) -> Vec<WireEntry<'_>> {
    entries.iter().map(wire_entry).collect()
}

fn wire_filter(bucket: u64, filter: &FilterData) -> WireFilter<'_> {
    match filter {
        FilterData::Empty => WireFilter {
            bucket,
            kind: 0,
            seed: 0,
            segment_length: 0,
            segment_length_mask: 0,
            segment_count_length: 0,
            fingerprints: &[],
        },
        FilterData::Fuse8 {
            seed,
            segment_length,
            segment_length_mask,
            segment_count_length,
            fingerprints,
        } => WireFilter {
            bucket,
            kind: 1,
            seed: *seed,
            segment_length: *segment_length,
            segment_length_mask: *segment_length_mask,
            segment_count_length: *segment_count_length,
            fingerprints,
        },
    }
}

fn wire_msg(msg: &Message) -> WireMsg<'_> {
    match msg {
        Message::Join { major, info } => WireMsg::Join {
            major: *major,
            info: wire_info(info),
        },
        Message::TopologyMap { candidates, roots } => WireMsg::TopologyMap {
            candidates: candidates.iter().map(wire_info).collect(),
            roots: roots.iter().copied().map(wire_addr).collect(),
        },
        Message::JoinRefused { major } => WireMsg::JoinRefused { major: *major },
        Message::Ping { nonce, info } => WireMsg::Ping {
            nonce: *nonce,
            info: wire_info(info),
        },
        Message::Pong { nonce, info } => WireMsg::Pong {
            nonce: *nonce,
            info: wire_info(info),
        },
        Message::Attach { info } => WireMsg::Attach {
            info: wire_info(info),
        },
        Message::AttachReply {
            accepted,
            info,
            path,
        } => WireMsg::AttachReply {
            accepted: *accepted,
            info: wire_info(info),
            path: path.clone(),
        },
        Message::Heartbeat {
            info,
            open_children,
        } => WireMsg::Heartbeat {
            info: wire_info(info),
            open_children: open_children.iter().map(wire_info).collect(),
        },
        Message::HeartbeatReply {
            info,
            is_child,
            path,
            peers,
        } => WireMsg::HeartbeatReply {
            info: wire_info(info),
            is_child: *is_child,
            path: path.clone(),
            peers: peers.iter().map(wire_info).collect(),
        },
        Message::Leave { info } => WireMsg::Leave {
            info: wire_info(info),
        },
        Message::Push { entries, ack } => WireMsg::Push {
            entries: wire_entries(entries),
            ack: ack.map(|a| WireAck {
                nonce: a.nonce,
                want: a.want,
            }),
        },
        Message::DumpRequest { cursor } => WireMsg::DumpRequest { cursor: *cursor },
        Message::DumpChunk { entries, next } => WireMsg::DumpChunk {
            entries: wire_entries(entries),
            next: *next,
        },
        Message::SyncSummary {
            round,
            from_bucket,
            summary,
            settled_before_ms,
        } => WireMsg::SyncSummary {
            round: *round,
            from_bucket: *from_bucket,
            summary: *summary,
            settled_before_ms: *settled_before_ms,
        },
        Message::SyncInSync { round } => WireMsg::SyncInSync { round: *round },
        Message::SyncDigests { round, digests } => WireMsg::SyncDigests {
            round: *round,
            digests: digests
                .iter()
                .map(|d| WireDigest {
                    bucket: d.bucket,
                    count: d.count,
                    xor: d.xor,
                })
                .collect(),
        },
        Message::SyncFilters {
            round,
            filters,
            answer,
            settled_before_ms,
        } => WireMsg::SyncFilters {
            round: *round,
            filters: filters.iter().map(|(b, f)| wire_filter(*b, f)).collect(),
            answer: *answer,
            settled_before_ms: *settled_before_ms,
        },
        Message::SyncEntries { round, entries } => WireMsg::SyncEntries {
            round: *round,
            entries: wire_entries(entries),
        },
        Message::Pull { nonce, key } => WireMsg::Pull { nonce: *nonce, key },
        Message::PullReply { nonce, entry } => WireMsg::PullReply {
            nonce: *nonce,
            entry: entry.as_ref().map(wire_entry),
        },
        Message::Full { retry_after_ms } => WireMsg::Full {
            retry_after_ms: *retry_after_ms,
        },
        Message::PushAck { nonce, holders } => WireMsg::PushAck {
            nonce: *nonce,
            holders: *holders,
        },
    }
}

/// Appends one framed peer message to `out`.
pub fn encode_peer(out: &mut Vec<u8>, msg: &Message) {
    let frame = PeerFrame {
        magic: PEER_MAGIC,
        msg: wire_msg(msg),
    };
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    let out = match rkyv::api::high::to_bytes_in::<_, rancor::Failure>(&frame, out) {
        Ok(out) => out,
        Err(_) => unreachable!("serialising a peer message into a Vec failed"),
    };
    let len = (out.len() - start - FRAME_HEADER_BYTES) as u32;
    out[start..start + FRAME_HEADER_BYTES].copy_from_slice(&len.to_le_bytes());
}

/// Why a peer's frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerFrameError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("peer message over a limit: {0}")]
    OverLimit(&'static str),
}

fn over(what: &'static str) -> PeerFrameError {
    PeerFrameError::OverLimit(what)
}

/// Validates one peer frame payload (without its length prefix) and builds the message,
/// refusing anything over `limits`.
pub fn decode_peer(payload: &[u8], limits: &PeerLimits) -> Result<Message, PeerFrameError> {
    if payload.len() > limits.frame_bytes_max {
        return Err(over("frame size"));
    }
    let frame = rkyv::access::<ArchivedPeerFrame, rancor::Failure>(payload)
        .map_err(|_| FrameError::Malformed)?;
    if frame.magic.to_native() != PEER_MAGIC {
        return Err(FrameError::Malformed.into());
    }
    message_of(&frame.msg, limits)
}

fn addr_of(addr: &ArchivedWireAddr) -> SocketAddr {
    let v6 = Ipv6Addr::from(addr.ip);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, addr.port.to_native())
}

fn info_of(info: &ArchivedWireInfo) -> Result<NodeInfo, PeerFrameError> {
    let role = match info.role {
        0 => Some(Role::Root),
        1 => Some(Role::Trunk),
        2 => Some(Role::Branch),
        3 => Some(Role::Leaf),
        255 => None,
        _ => return Err(over("role")),
    };
    Ok(NodeInfo {
        id: info.id.to_native(),
        addr: addr_of(&info.addr),
        role,
        children: info.children.to_native(),
        capacity: info.capacity.to_native(),
    })
}

fn infos_of(infos: &[ArchivedWireInfo], max: usize) -> Result<Vec<NodeInfo>, PeerFrameError> {
    if infos.len() > max {
        return Err(over("node list"));
    }
    infos.iter().map(info_of).collect()
}

fn entry_of(entry: &ArchivedWireEntry<'_>, limits: &PeerLimits) -> Result<Entry, PeerFrameError> {
    let key = entry.key.get();
    if key.is_empty() || key.len() > limits.key_bytes_max {
        return Err(over("key"));
    }
    let value = match entry.value.as_ref() {
        Some(value) if value.get().len() > limits.value_bytes_max => return Err(over("value")),
        Some(value) => Some(Plaintext::shared(value.get())),
        None => None,
    };
    Ok(Entry {
        key: Rc::from(key),
        value,
        expires_ms: entry.expires_ms.to_native(),
        version: Version {
            clock: entry.clock.to_native(),
            node: entry.node.to_native(),
        },
    })
}

fn entries_of(
    entries: &[ArchivedWireEntry<'_>],
    limits: &PeerLimits,
) -> Result<Vec<Entry>, PeerFrameError> {
    if entries.len() > limits.entries_max {
        return Err(over("entries"));
    }
    entries.iter().map(|e| entry_of(e, limits)).collect()
}

fn path_of(path: &[rkyv::Archived<u64>], limits: &PeerLimits) -> Result<Vec<u64>, PeerFrameError> {
    if path.len() > limits.path_len_max {
        return Err(over("path"));
    }
    Ok(path.iter().map(|id| id.to_native()).collect())
}

fn filter_of(filter: &ArchivedWireFilter<'_>) -> Result<(u64, FilterData), PeerFrameError> {
    let fingerprints = filter.fingerprints.get();
    if fingerprints.len() > FILTER_BYTES_MAX {
        return Err(over("filter"));
    }
    let data = match filter.kind {
        0 => FilterData::Empty,
        1 => FilterData::Fuse8 {
            seed: filter.seed.to_native(),
            segment_length: filter.segment_length.to_native(),
            segment_length_mask: filter.segment_length_mask.to_native(),
            segment_count_length: filter.segment_count_length.to_native(),
            fingerprints: fingerprints.to_vec(),
        },
        _ => return Err(over("filter kind")),
    };
    Ok((filter.bucket.to_native(), data))
}

fn message_of(msg: &ArchivedWireMsg<'_>, limits: &PeerLimits) -> Result<Message, PeerFrameError> {
    Ok(match msg {
        ArchivedWireMsg::Join { major, info } => Message::Join {
            major: major.to_native(),
            info: info_of(info)?,
        },
        ArchivedWireMsg::TopologyMap { candidates, roots } => {
            if roots.len() > limits.roots_max {
                return Err(over("roots"));
            }
            Message::TopologyMap {
                candidates: infos_of(candidates, limits.candidates_max)?,
                roots: roots.iter().map(addr_of).collect(),
            }
        }
        ArchivedWireMsg::JoinRefused { major } => Message::JoinRefused {
            major: major.to_native(),
        },
        ArchivedWireMsg::Ping { nonce, info } => Message::Ping {
            nonce: nonce.to_native(),
            info: info_of(info)?,
        },
        ArchivedWireMsg::Pong { nonce, info } => Message::Pong {
            nonce: nonce.to_native(),
            info: info_of(info)?,
        },
        ArchivedWireMsg::Attach { info } => Message::Attach {
            info: info_of(info)?,
        },
        ArchivedWireMsg::AttachReply {
            accepted,
            info,
            path,
        } => Message::AttachReply {
            accepted: *accepted,
            info: info_of(info)?,
            path: path_of(path, limits)?,
        },
        ArchivedWireMsg::Heartbeat {
            info,
            open_children,
        } => Message::Heartbeat {
            info: info_of(info)?,
            open_children: infos_of(open_children, limits.candidates_max)?,
        },
        ArchivedWireMsg::HeartbeatReply {
            info,
            is_child,
            path,
            peers,
        } => Message::HeartbeatReply {
            info: info_of(info)?,
            is_child: *is_child,
            path: path_of(path, limits)?,
            peers: infos_of(peers, limits.candidates_max)?,
        },
        ArchivedWireMsg::Leave { info } => Message::Leave {
            info: info_of(info)?,
        },
        ArchivedWireMsg::Push { entries, ack } => Message::Push {
            entries: entries_of(entries, limits)?,
            ack: ack.as_ref().map(|a| AckRequest {
                nonce: a.nonce.to_native(),
                want: a.want,
            }),
        },
        ArchivedWireMsg::DumpRequest { cursor } => Message::DumpRequest {
            cursor: cursor.to_native(),
        },
        ArchivedWireMsg::DumpChunk { entries, next } => Message::DumpChunk {
            entries: entries_of(entries, limits)?,
            next: next.as_ref().map(|n| n.to_native()),
        },
        ArchivedWireMsg::SyncSummary {
            round,
            from_bucket,
            summary,
            settled_before_ms,
        } => Message::SyncSummary {
            round: round.to_native(),
            from_bucket: from_bucket.to_native(),
            summary: summary.to_native(),
            settled_before_ms: settled_before_ms.to_native(),
        },
        ArchivedWireMsg::SyncInSync { round } => Message::SyncInSync {
            round: round.to_native(),
        },
        ArchivedWireMsg::SyncDigests { round, digests } => {
            if digests.len() > DIGESTS_PER_MESSAGE_MAX {
                return Err(over("digests"));
            }
            Message::SyncDigests {
                round: round.to_native(),
                digests: digests
                    .iter()
                    .map(|d| BucketDigest {
                        bucket: d.bucket.to_native(),
                        count: d.count.to_native(),
                        xor: d.xor.to_native(),
                    })
                    .collect(),
            }
        }
        ArchivedWireMsg::SyncFilters {
            round,
            filters,
            answer,
            settled_before_ms,
        } => {
            if filters.len() > limits.filters_max {
                return Err(over("filters"));
            }
            Message::SyncFilters {
                round: round.to_native(),
                filters: filters.iter().map(filter_of).collect::<Result<_, _>>()?,
                answer: *answer,
                settled_before_ms: settled_before_ms.to_native(),
            }
        }
        ArchivedWireMsg::SyncEntries { round, entries } => Message::SyncEntries {
            round: round.to_native(),
            entries: entries_of(entries, limits)?,
        },
        ArchivedWireMsg::Pull { nonce, key } => {
            let key = key.get();
            if key.is_empty() || key.len() > limits.key_bytes_max {
                return Err(over("key"));
            }
            Message::Pull {
                nonce: nonce.to_native(),
                key: Rc::from(key),
            }
        }
        ArchivedWireMsg::PullReply { nonce, entry } => Message::PullReply {
            nonce: nonce.to_native(),
            entry: match entry.as_ref() {
                Some(entry) => Some(entry_of(entry, limits)?),
                None => None,
            },
        },
        ArchivedWireMsg::Full { retry_after_ms } => Message::Full {
            retry_after_ms: retry_after_ms.to_native(),
        },
        ArchivedWireMsg::PushAck { nonce, holders } => Message::PushAck {
            nonce: nonce.to_native(),
            holders: holders.to_native(),
        },
    })
}
