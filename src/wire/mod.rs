//! The client wire: length-prefixed rkyv frames, validated and read in place.
//!
//! Owns the frame format, the request and response types and their status codes. It never
//! touches a socket or the store: callers hand it bytes and get borrowed views back.
//!
//! A frame is a `u32` little-endian payload length, then one rkyv archive. The archive format is
//! pinned by rkyv's features (`little_endian`, `pointer_width_32`, `unaligned`), so it does not
//! depend on the build, and `unaligned` lets a pipelined frame start at any offset of a receive
//! buffer without copying it.

use std::ops::Range;

use rkyv::api::high::HighSerializer;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::with::InlineAsBox;
use rkyv::{Archive, Deserialize, Serialize};

pub mod peer;
#[cfg(test)]
mod tests;

/// Protocol version spoken by this build; a Hello with another one is refused.
pub const PROTOCOL_VERSION: u32 = 5;
/// Bytes of the length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;
/// Room a frame needs beyond its key and value (envelope, lengths, ids, ttl).
pub const FRAME_OVERHEAD_BYTES: usize = 256;

/// One client request: an id the response echoes, and the operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub id: u64,
    pub op: Op<'a>,
}

/// Marks every request frame ("RPR1"): a frame whose op is unknown but whose magic is right
/// came from a newer client and is answered as such; anything else is garbage.
pub const REQUEST_MAGIC: u32 = u32::from_le_bytes(*b"RPR1");

/// A request as it travels: the magic beside the id.
#[derive(Archive, Serialize)]
struct RequestFrame<'a> {
    id: u64,
    magic: u32,
    op: Op<'a>,
}

/// Client operations. Keys and values are borrowed when encoding and read in place when
/// decoding (see [`RequestView`]).
#[derive(Archive, Serialize, Debug, Clone, PartialEq, Eq)]
pub enum Op<'a> {
    Hello {
        protocol_version: u32,
        /// The node's client token (`--auth-token-file`), or empty. A node with a token
        /// refuses every op but Hello and Ping until a Hello on the connection carried it.
        #[rkyv(with = InlineAsBox)]
        token: &'a [u8],
    },
    Put {
        #[rkyv(with = InlineAsBox)]
        key: &'a [u8],
        #[rkyv(with = InlineAsBox)]
        value: &'a [u8],
        ttl_ms: u64,
        /// Nodes that should hold the value before the write is answered (this one included);
        /// 0 takes the node's default (`--write-copies`).
        copies: u8,
        /// Store only if the key holds no live value ([`PUT_IF_ABSENT`], Redis's `NX`), only if
        /// it does ([`PUT_IF_PRESENT`], `XX`), or either way ([`PUT_ALWAYS`]). A write whose
        /// condition fails is answered `NotStored`.
        only_if: u8,
    },
    Get {
        #[rkyv(with = InlineAsBox)]
        key: &'a [u8],
        /// Answer from this node alone, never from a peer.
        local_only: bool,
    },
    Delete {
        #[rkyv(with = InlineAsBox)]
        key: &'a [u8],
    },
    Ping,
    Stats,
    /// The discovery tree as this node sees it.
    Topology,
    /// Gives the live value of `key` a new TTL from now (a new version, replicated like a
    /// write): `Stored`, or `NotFound`.
    Expire {
        #[rkyv(with = InlineAsBox)]
        key: &'a [u8],
        ttl_ms: u64,
    },
}

/// Number of `Op` variants; a tag at or past it is an op this build does not know.
pub const OP_COUNT: u8 = 8;

/// One response: the id of the request it answers and the outcome.
#[derive(Archive, Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Response<'a> {
    pub id: u64,
    pub reply: Reply<'a>,
}

/// Outcomes a client can act on.
#[derive(Archive, Serialize, Debug, Clone, PartialEq, Eq)]
pub enum Reply<'a> {
    Hello(HelloInfo),
    /// A Put was stored; its version orders it against other writes of the key. `copies`
    /// nodes are known to hold it; `pending` when that is fewer than the write asked for
    /// (its timeout passed first): the value is kept and still replicating.
    Stored {
        version_clock: u64,
        version_node: u64,
        expires_ms: u64,
        copies: u32,
        pending: bool,
    },
    Value {
        #[rkyv(with = InlineAsBox)]
        value: &'a [u8],
        expires_ms: u64,
        version_clock: u64,
        version_node: u64,
    },
    NotFound,
    Deleted,
    Pong,
    Stats(NodeStats),
    Error {
        code: ErrorCode,
        /// For `Busy`: how long to wait before retrying.
        retry_after_ms: u32,
        #[rkyv(with = InlineAsBox)]
        message: &'a str,
    },
    Topology(TopologyInfo),
    /// A conditional Put whose condition did not hold: nothing was written.
    NotStored,
}

/// [`Op::Put`] conditions.
pub const PUT_ALWAYS: u8 = 0;
pub const PUT_IF_ABSENT: u8 = 1;
pub const PUT_IF_PRESENT: u8 = 2;

/// The discovery tree as one node sees it (the answer to `Topology`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct TopologyInfo {
    pub node: PeerView,
    /// Whether the node is in the tree (a root, or attached to a parent).
    pub attached: bool,
    /// Ancestors' node ids, root first.
    pub path: Vec<u64>,
    pub parent: Option<PeerView>,
    /// Round trip to the parent, smoothed over heartbeats; `None` before the first.
    pub parent_rtt_ms: Option<u64>,
    pub children: Vec<PeerView>,
    /// For a root: the other roots.
    pub root_peers: Vec<PeerView>,
}

/// The name of a tree role as [`PeerView::role`] and [`NetworkStats::role`] number it.
pub fn role_name(role: u8) -> &'static str {
    match role {
        0 => "root",
        1 => "trunk",
        2 => "branch",
        3 => "leaf",
        _ => "unattached",
    }
}

/// One node of the tree.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerView {
    pub node_id: u64,
    /// Its advertised peer address.
    pub addr: String,
    /// 0 root, 1 trunk, 2 branch, 3 leaf, 255 not attached.
    pub role: u8,
    pub children: u16,
    pub capacity: u16,
    /// Milliseconds since this node last heard from it (0 for the node itself).
    pub silent_ms: u64,
}

/// What a node tells a client that says Hello: enough to route every key to its shard.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct HelloInfo {
    pub protocol_version: u32,
    pub node_id: u64,
    pub shard_count: u32,
    /// Seed of the key → shard hash ([`shard_of`]).
    pub hash_seed: u64,
    /// The shard-aware port of each shard, in shard order.
    pub shard_ports: Vec<u16>,
    /// The shard that answered (the owner of this port, or the one the OS picked).
    pub shard: u32,
    pub frame_bytes_max: u32,
    pub key_bytes_max: u32,
    pub value_bytes_max: u32,
    pub ttl_ms_min: u64,
    pub ttl_ms_max: u64,
}

/// Counters of one shard, or their sum over a node.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct ShardStats {
    pub puts: u64,
    pub gets: u64,
    pub deletes: u64,
    pub pings: u64,
    pub hellos: u64,
    pub stats: u64,
    pub hits: u64,
    pub misses: u64,
    /// Expired entries reclaimed by the expiry timer.
    pub expirations: u64,
    pub keys: u64,
    pub tombstones: u64,
    /// Bytes charged against the memory budget, and the budget.
    pub used_bytes: u64,
    pub budget_bytes: u64,
    /// Writes refused: store full, bad TTL, too large.
    pub rejected_writes: u64,
    pub connections_open: u64,
    pub connections_accepted: u64,
    pub connections_refused: u64,
    /// Requests this shard sent to their owner shard, and requests refused as busy.
    pub forwarded: u64,
    pub busy: u64,
    /// Frames refused as malformed, too large or of an unknown op.
    pub bad_frames: u64,
    /// Entries held for sync (values and tombstones, expired ones not yet reclaimed), and the
    /// xor of their stable hashes: two nodes holding the same entries show the same pair.
    pub live_set_count: u64,
    pub live_set_xor: u64,
    /// Connections open on the Redis and HTTP front ends (the rest of `connections_open`
    /// are native).
    pub resp_connections_open: u64,
    pub http_connections_open: u64,
    /// Request latency by op, in the order of [`LATENCY_OPS`]. Boxed: the rest of the
    /// counters travel in every stats message, this is most of their size.
    pub latency: Box<[OpLatency; LATENCY_OPS.len()]>,
}

/// The ops whose latency a shard records.
pub const LATENCY_OPS: [&str; 4] = ["put", "get", "delete", "expire"];

/// Where `kind`'s latency is kept (its index in [`LATENCY_OPS`]); `None` for ops not timed.
pub fn latency_op(kind: OpKind) -> Option<usize> {
    match kind {
        OpKind::Put => Some(0),
        OpKind::Get => Some(1),
        OpKind::Delete => Some(2),
        OpKind::Expire => Some(3),
        _ => None,
    }
}

/// Upper bounds (microseconds) of the latency buckets; a last bucket takes everything above.
pub const LATENCY_BOUNDS_US: [u64; 16] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000,
];

/// A latency histogram of one op on fixed buckets: a count per bucket (not cumulative) and the
/// sum, so histograms of shards and nodes add up and a scraper can take rates of them.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpLatency {
    pub counts: [u64; LATENCY_BOUNDS_US.len() + 1],
    pub sum_us: u64,
}

impl OpLatency {
    /// The bucket a latency of `us` microseconds falls in.
    pub fn bucket_of(us: u64) -> usize {
        LATENCY_BOUNDS_US.partition_point(|&bound| bound < us)
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().fold(0, |sum, &n| sum.saturating_add(n))
    }

    pub fn add(&mut self, other: &OpLatency) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            *mine = mine.saturating_add(theirs);
        }
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }
}

impl ShardStats {
    /// Every counter with its name, in a fixed order (for printing and exporting).
    pub fn fields(&self) -> [(&'static str, u64); 23] {
        [
            ("keys", self.keys),
            ("tombstones", self.tombstones),
            ("used_bytes", self.used_bytes),
            ("budget_bytes", self.budget_bytes),
            ("puts", self.puts),
            ("gets", self.gets),
            ("deletes", self.deletes),
            ("hits", self.hits),
            ("misses", self.misses),
            ("expirations", self.expirations),
            ("rejected_writes", self.rejected_writes),
            ("pings", self.pings),
            ("hellos", self.hellos),
            ("stats", self.stats),
            ("connections_open", self.connections_open),
            ("connections_accepted", self.connections_accepted),
            ("connections_refused", self.connections_refused),
            ("forwarded", self.forwarded),
            ("busy", self.busy),
            ("bad_frames", self.bad_frames),
            ("live_set_count", self.live_set_count),
            ("resp_connections_open", self.resp_connections_open),
            ("http_connections_open", self.http_connections_open),
        ]
    }

    /// Adds another shard's counters into these.
    pub fn add(&mut self, other: &ShardStats) {
        let mine: [&mut u64; 23] = [
            &mut self.keys,
            &mut self.tombstones,
            &mut self.used_bytes,
            &mut self.budget_bytes,
            &mut self.puts,
            &mut self.gets,
            &mut self.deletes,
            &mut self.hits,
            &mut self.misses,
            &mut self.expirations,
            &mut self.rejected_writes,
            &mut self.pings,
            &mut self.hellos,
            &mut self.stats,
            &mut self.connections_open,
            &mut self.connections_accepted,
            &mut self.connections_refused,
            &mut self.forwarded,
            &mut self.busy,
            &mut self.bad_frames,
            &mut self.live_set_count,
            &mut self.resp_connections_open,
            &mut self.http_connections_open,
        ];
        for (mine, (_, theirs)) in mine.into_iter().zip(other.fields()) {
            *mine = mine.saturating_add(theirs);
        }
        // Sets combine by xor, not by sum.
        self.live_set_xor ^= other.live_set_xor;
        for (mine, theirs) in self.latency.iter_mut().zip(other.latency.iter()) {
            mine.add(theirs);
        }
    }
}

/// A node's counters: the sum, and each shard's own.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeStats {
    pub total: ShardStats,
    pub shards: Vec<ShardStats>,
    /// Boxed: a Stats answer is rare, and every other reply stays small.
    pub network: Box<NetworkStats>,
}

/// What the node's side of the network did (its coordinator's counters).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct NetworkStats {
    /// 0 root, 1 trunk, 2 branch, 3 leaf, 255 not attached.
    pub role: u8,
    pub children: u64,
    pub joins: u64,
    pub attaches: u64,
    pub parent_losses: u64,
    pub rebalances: u64,
    pub dumps_completed: u64,
    /// 1 while the first dump after joining is being taken.
    pub dumping: u64,
    pub sync_rounds: u64,
    pub sync_rounds_in_sync: u64,
    /// Entries from peers stored (pushed, synced or dumped), and those already held.
    pub entries_received: u64,
    pub entries_already_held: u64,
    pub sync_entries_received: u64,
    /// Entries stored from dumps (the progress of a dump under way), and entries sent to
    /// peers (pushed, synced, dumped or pulled).
    pub dump_entries_received: u64,
    pub entries_sent: u64,
    /// Writes of this node's clients handed to the network, and those not pushed because the
    /// hand-over queue was full (sync brings them).
    pub writes_pushed: u64,
    pub writes_not_pushed: u64,
    pub pulls_hit: u64,
    pub pulls_missed: u64,
    /// Client writes that asked for copies: confirmed in time, and answered pending.
    pub writes_copied: u64,
    pub writes_copies_timed_out: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub peer_frames_refused: u64,
    /// Failed handshakes of a private network's sealed links.
    pub peer_handshakes_failed: u64,
    pub peers_cut_off: u64,
    pub peer_messages_refused: u64,
    /// Entries not sent to peers too far behind (sync rounds bring them later).
    pub peer_entries_shed: u64,
    /// Peer bytes by message kind, indexed like `repram_cluster::Message::KINDS`.
    pub bytes_sent_by_kind: Vec<u64>,
    pub bytes_received_by_kind: Vec<u64>,
}

impl NetworkStats {
    /// Every counter with its name, in a fixed order (for printing).
    pub fn fields(&self) -> [(&'static str, u64); 28] {
        [
            ("role", u64::from(self.role)),
            ("children", self.children),
            ("joins", self.joins),
            ("attaches", self.attaches),
            ("parent_losses", self.parent_losses),
            ("rebalances", self.rebalances),
            ("dumps_completed", self.dumps_completed),
            ("dumping", self.dumping),
            ("sync_rounds", self.sync_rounds),
            ("sync_rounds_in_sync", self.sync_rounds_in_sync),
            ("entries_received", self.entries_received),
            ("entries_already_held", self.entries_already_held),
            ("sync_entries_received", self.sync_entries_received),
            ("dump_entries_received", self.dump_entries_received),
            ("entries_sent", self.entries_sent),
            ("writes_pushed", self.writes_pushed),
            ("writes_not_pushed", self.writes_not_pushed),
            ("pulls_hit", self.pulls_hit),
            ("pulls_missed", self.pulls_missed),
            ("writes_copied", self.writes_copied),
            ("writes_copies_timed_out", self.writes_copies_timed_out),
            ("peer_bytes_sent", self.bytes_sent),
            ("peer_bytes_received", self.bytes_received),
            ("peer_frames_refused", self.peer_frames_refused),
            ("peer_handshakes_failed", self.peer_handshakes_failed),
            ("peers_cut_off", self.peers_cut_off),
            ("peer_messages_refused", self.peer_messages_refused),
            ("peer_entries_shed", self.peer_entries_shed),
        ]
    }
}

/// Why a request failed. Stable numbers: clients match on them.
#[derive(Archive, Serialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
#[repr(u8)]
pub enum ErrorCode {
    /// The frame could not be read; the node closes the connection after this answer.
    Malformed = 1,
    /// The length prefix announced a frame over the node's limit; the connection is closed.
    FrameTooLarge = 2,
    /// A well-formed frame of an op this node does not know; the connection stays open.
    UnknownOp = 3,
    /// Empty or too long a key.
    BadKey = 4,
    ValueTooLarge = 5,
    BadTtl = 6,
    StoreFull = 7,
    /// The owning shard's queue is full: retry after `retry_after_ms`.
    Busy = 8,
    /// The node cannot serve this now (shutting down, a shard gone).
    Unavailable = 9,
    /// Hello with a protocol version this node does not speak.
    VersionMismatch = 10,
    /// Too many connections; the connection is closed.
    TooManyConnections = 11,
    /// The stored value failed to authenticate, or the shard ran out of nonces.
    Internal = 12,
    /// A Put asked for more copies than the node allows.
    BadCopies = 13,
    /// The node wants its client token first (in a Hello); the connection stays open.
    AuthRequired = 14,
    /// A Hello carried a wrong token; after a few the connection is closed.
    AuthFailed = 15,
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is over the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame is not a valid request")]
    Malformed,
    #[error("request {id} has an unknown op (tag {tag})")]
    UnknownOp { id: u64, tag: u8 },
}

/// Reads the length prefix at the start of `buf`: `Ok(None)` until four bytes are there, an
/// error for a length over `frame_bytes_max` (checked before anything is allocated for it).
pub fn frame_len(buf: &[u8], frame_bytes_max: usize) -> Result<Option<usize>, FrameError> {
    let Some(header) = buf.get(..FRAME_HEADER_BYTES) else {
        return Ok(None);
    };
    let mut len_bytes = [0u8; FRAME_HEADER_BYTES];
    len_bytes.copy_from_slice(header);
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len > frame_bytes_max {
        return Err(FrameError::TooLarge {
            len,
            max: frame_bytes_max,
        });
    }
    Ok(Some(len))
}

/// The kind of a decoded request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Hello,
    Put,
    Get,
    Delete,
    Ping,
    Stats,
    Topology,
    Expire,
}

/// A validated request, as offsets into the payload it was read from. Holding ranges rather
/// than borrows lets the caller take the payload mutably afterwards, to wipe a value once sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestView {
    pub id: u64,
    pub kind: OpKind,
    pub protocol_version: u32,
    pub key: Range<usize>,
    /// A Put's value, or a Hello's token: either is wiped from the buffer once used.
    pub value: Range<usize>,
    pub ttl_ms: u64,
    pub local_only: bool,
    /// A Put's copies (0: the node's default).
    pub copies: u8,
    /// A Put's condition (`PUT_*`).
    pub only_if: u8,
}

impl RequestView {
    /// Whether this op addresses a key (and so has an owner shard).
    pub fn has_key(&self) -> bool {
        matches!(
            self.kind,
            OpKind::Put | OpKind::Get | OpKind::Delete | OpKind::Expire
        )
    }

    /// A request on `key` (a range of the buffer the caller holds), with nothing else set.
    fn on_key(id: u64, kind: OpKind, key: Range<usize>) -> RequestView {
        RequestView {
            id,
            kind,
            protocol_version: 0,
            key,
            value: 0..0,
            ttl_ms: 0,
            local_only: false,
            copies: 0,
            only_if: PUT_ALWAYS,
        }
    }

    /// A Get of `key`, as [`Op::Get`] asks it: for the front ends, whose requests are ranges
    /// of their own receive buffer rather than native frames.
    pub fn get(id: u64, key: Range<usize>, local_only: bool) -> RequestView {
        RequestView {
            local_only,
            ..RequestView::on_key(id, OpKind::Get, key)
        }
    }

    /// A Put, as [`Op::Put`] asks it.
    pub fn put(
        id: u64,
        key: Range<usize>,
        value: Range<usize>,
        ttl_ms: u64,
        only_if: u8,
    ) -> RequestView {
        RequestView {
            value,
            ttl_ms,
            only_if,
            ..RequestView::on_key(id, OpKind::Put, key)
        }
    }

    /// A Delete, as [`Op::Delete`] asks it.
    pub fn delete(id: u64, key: Range<usize>) -> RequestView {
        RequestView::on_key(id, OpKind::Delete, key)
    }

    /// An Expire, as [`Op::Expire`] asks it.
    pub fn expire(id: u64, key: Range<usize>, ttl_ms: u64) -> RequestView {
        RequestView {
            ttl_ms,
            ..RequestView::on_key(id, OpKind::Expire, key)
        }
    }

    /// The op this view reads from `payload` (the buffer its ranges point into), to encode
    /// as a native frame; `None` if a range lies outside `payload`.
    pub fn op<'a>(&self, payload: &'a [u8]) -> Option<Op<'a>> {
        let key = || payload.get(self.key.clone());
        Some(match self.kind {
            OpKind::Hello => Op::Hello {
                protocol_version: self.protocol_version,
                token: payload.get(self.value.clone())?,
            },
            OpKind::Put => Op::Put {
                key: key()?,
                value: payload.get(self.value.clone())?,
                ttl_ms: self.ttl_ms,
                copies: self.copies,
                only_if: self.only_if,
            },
            OpKind::Get => Op::Get {
                key: key()?,
                local_only: self.local_only,
            },
            OpKind::Delete => Op::Delete { key: key()? },
            OpKind::Ping => Op::Ping,
            OpKind::Stats => Op::Stats,
            OpKind::Topology => Op::Topology,
            OpKind::Expire => Op::Expire {
                key: key()?,
                ttl_ms: self.ttl_ms,
            },
        })
    }
}

/// Validates one frame payload (without its length prefix) and reads it in place.
pub fn decode_request(payload: &[u8]) -> Result<RequestView, FrameError> {
    let archived = match rkyv::access::<ArchivedRequestFrame, rancor::Failure>(payload) {
        Ok(archived) => archived,
        Err(_) => return Err(unknown_op_or_malformed(payload)),
    };
    if archived.magic.to_native() != REQUEST_MAGIC {
        return Err(FrameError::Malformed);
    }
    let base = payload.as_ptr() as usize;
    let range_of = |bytes: &[u8]| {
        let start = bytes.as_ptr() as usize - base;
        start..start + bytes.len()
    };
    let mut view = RequestView {
        id: archived.id.to_native(),
        kind: OpKind::Ping,
        protocol_version: 0,
        key: 0..0,
        value: 0..0,
        ttl_ms: 0,
        local_only: false,
        copies: 0,
        only_if: PUT_ALWAYS,
    };
    match &archived.op {
        ArchivedOp::Hello {
            protocol_version,
            token,
        } => {
            view.kind = OpKind::Hello;
            view.protocol_version = protocol_version.to_native();
            view.value = range_of(token.get());
        }
        ArchivedOp::Put {
            key,
            value,
            ttl_ms,
            copies,
            only_if,
        } => {
            view.kind = OpKind::Put;
            view.key = range_of(key.get());
            view.value = range_of(value.get());
            view.ttl_ms = ttl_ms.to_native();
            view.copies = *copies;
            view.only_if = *only_if;
        }
        ArchivedOp::Get { key, local_only } => {
            view.kind = OpKind::Get;
            view.key = range_of(key.get());
            view.local_only = *local_only;
        }
        ArchivedOp::Delete { key } => {
            view.kind = OpKind::Delete;
            view.key = range_of(key.get());
        }
        ArchivedOp::Ping => view.kind = OpKind::Ping,
        ArchivedOp::Stats => view.kind = OpKind::Stats,
        ArchivedOp::Topology => view.kind = OpKind::Topology,
        ArchivedOp::Expire { key, ttl_ms } => {
            view.kind = OpKind::Expire;
            view.key = range_of(key.get());
            view.ttl_ms = ttl_ms.to_native();
        }
    }
    Ok(view)
}

/// Size of the archived request root, which rkyv places at the end of the payload.
pub const REQUEST_ROOT_BYTES: usize = std::mem::size_of::<ArchivedRequestFrame>();
/// Offsets inside the root: the `u64` id, the `u32` magic, then the op's tag byte (no
/// padding: the format is `unaligned`). Pinned by `layout_of_the_request_root_is_pinned`.
const REQUEST_MAGIC_AT: usize = 8;
pub const REQUEST_OP_TAG_AT: usize = 12;

/// A payload that failed validation: if its root is intact but its op tag is one this build
/// does not know, it came from a newer client, and is answered as such rather than as garbage.
fn unknown_op_or_malformed(payload: &[u8]) -> FrameError {
    let Some(root_at) = payload.len().checked_sub(REQUEST_ROOT_BYTES) else {
        return FrameError::Malformed;
    };
    let root = &payload[root_at..];
    let mut magic = [0u8; 4];
    magic.copy_from_slice(&root[REQUEST_MAGIC_AT..REQUEST_MAGIC_AT + 4]);
    let tag = root[REQUEST_OP_TAG_AT];
    if u32::from_le_bytes(magic) != REQUEST_MAGIC || tag < OP_COUNT {
        return FrameError::Malformed;
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&root[..8]);
    FrameError::UnknownOp {
        id: u64::from_le_bytes(id),
        tag,
    }
}

/// Appends one framed request to `out`.
pub fn encode_request(out: &mut Vec<u8>, request: &Request<'_>) {
    let frame = RequestFrame {
        id: request.id,
        magic: REQUEST_MAGIC,
        op: request.op.clone(),
    };
    encode_frame(out, &frame);
}

/// Appends one framed response to `out`.
pub fn encode_response(out: &mut Vec<u8>, response: &Response<'_>) {
    encode_frame(out, response);
}

fn encode_frame<'w, T>(out: &'w mut Vec<u8>, value: &T)
where
    T: for<'a> Serialize<HighSerializer<&'w mut Vec<u8>, ArenaHandle<'a>, rancor::Failure>>,
{
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    // Serialising our own plain types into a Vec cannot fail: the writer grows as needed and
    // the types hold no shared pointers or maps that could be refused.
    let out = match rkyv::api::high::to_bytes_in::<_, rancor::Failure>(value, out) {
        Ok(out) => out,
        Err(_) => unreachable!("serialising a wire type into a Vec failed"),
    };
    let len = (out.len() - start - FRAME_HEADER_BYTES) as u32;
    out[start..start + FRAME_HEADER_BYTES].copy_from_slice(&len.to_le_bytes());
}

/// A validated response, read in place.
pub fn decode_response(payload: &[u8]) -> Result<&ArchivedResponse<'_>, FrameError> {
    rkyv::access::<ArchivedResponse, rancor::Failure>(payload).map_err(|_| FrameError::Malformed)
}

/// The shard that owns `key` among `shard_count`: xxh3 with the node's seed, the same on every
/// machine and build (ahash is not).
pub fn shard_of(key: &[u8], hash_seed: u64, shard_count: u32) -> u32 {
    debug_assert!(shard_count > 0);
    let hash = xxhash_rust::xxh3::xxh3_64_with_seed(key, hash_seed);
    // Multiply-shift maps the hash onto 0..shard_count without a division.
    ((u128::from(hash) * u128::from(shard_count.max(1))) >> 64) as u32
}

impl From<&ArchivedErrorCode> for ErrorCode {
    fn from(archived: &ArchivedErrorCode) -> Self {
        match archived {
            ArchivedErrorCode::Malformed => ErrorCode::Malformed,
            ArchivedErrorCode::FrameTooLarge => ErrorCode::FrameTooLarge,
            ArchivedErrorCode::UnknownOp => ErrorCode::UnknownOp,
            ArchivedErrorCode::BadKey => ErrorCode::BadKey,
            ArchivedErrorCode::ValueTooLarge => ErrorCode::ValueTooLarge,
            ArchivedErrorCode::BadTtl => ErrorCode::BadTtl,
            ArchivedErrorCode::StoreFull => ErrorCode::StoreFull,
            ArchivedErrorCode::Busy => ErrorCode::Busy,
            ArchivedErrorCode::Unavailable => ErrorCode::Unavailable,
            ArchivedErrorCode::VersionMismatch => ErrorCode::VersionMismatch,
            ArchivedErrorCode::TooManyConnections => ErrorCode::TooManyConnections,
            ArchivedErrorCode::Internal => ErrorCode::Internal,
            ArchivedErrorCode::BadCopies => ErrorCode::BadCopies,
            ArchivedErrorCode::AuthRequired => ErrorCode::AuthRequired,
            ArchivedErrorCode::AuthFailed => ErrorCode::AuthFailed,
        }
    }
}

impl ErrorCode {
    /// A message for a person, for codes the node sends without detail.
    pub fn describe(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed frame",
            ErrorCode::FrameTooLarge => "frame too large",
            ErrorCode::UnknownOp => "unknown op",
            ErrorCode::BadKey => "bad key",
            ErrorCode::ValueTooLarge => "value too large",
            ErrorCode::BadTtl => "bad ttl",
            ErrorCode::StoreFull => "store full",
            ErrorCode::Busy => "busy",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::VersionMismatch => "protocol version mismatch",
            ErrorCode::TooManyConnections => "too many connections",
            ErrorCode::Internal => "internal error",
            ErrorCode::BadCopies => "too many copies asked for",
            ErrorCode::AuthRequired => "authentication required",
            ErrorCode::AuthFailed => "wrong token",
        }
    }
}
