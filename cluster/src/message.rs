//! The messages nodes exchange, and what a node tells others about itself.
//!
//! Owns the peer vocabulary and its size accounting. It never validates bytes from a socket:
//! the rkyv wire form beside the client protocol does that before a message reaches a `Node`.

use std::net::SocketAddr;

use crate::entry::Entry;
use crate::sync::{BucketDigest, FilterData};

/// Peer protocol major version; a join from another major is refused.
pub const PEER_PROTOCOL_MAJOR: u16 = 2;

/// A node's place in the discovery tree. Depth: root 0, trunk 1, branch 2, leaf 3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Root,
    Trunk,
    Branch,
    Leaf,
}

impl Role {
    pub fn depth(self) -> u8 {
        self as u8
    }

    /// The role of a child of this role; `None` for a leaf, which takes no children.
    pub fn child(self) -> Option<Role> {
        match self {
            Role::Root => Some(Role::Trunk),
            Role::Trunk => Some(Role::Branch),
            Role::Branch => Some(Role::Leaf),
            Role::Leaf => None,
        }
    }
}

/// What a node says about itself in pings, maps and heartbeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    pub id: u64,
    pub addr: SocketAddr,
    /// `None` while the node is not attached to the tree.
    pub role: Option<Role>,
    pub children: u16,
    pub capacity: u16,
}

impl NodeInfo {
    /// Whether this node can take one more child.
    pub fn has_room(&self) -> bool {
        self.role.and_then(Role::child).is_some() && self.children < self.capacity
    }
}

/// Everything one node sends another.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Message {
    /// A node asks a root for a map of candidate parents.
    Join {
        major: u16,
        info: NodeInfo,
    },
    /// A root's answer: nearby candidates with room (bounded), and the roots it knows.
    TopologyMap {
        candidates: Vec<NodeInfo>,
        roots: Vec<SocketAddr>,
    },
    /// Refusal of a join from another protocol major.
    JoinRefused {
        major: u16,
    },
    /// Latency probe; `nonce` matches the pong.
    Ping {
        nonce: u64,
        info: NodeInfo,
    },
    Pong {
        nonce: u64,
        info: NodeInfo,
    },
    /// A node asks to become a child.
    Attach {
        info: NodeInfo,
    },
    /// The answer: accepted (with the parent's info and its path of ancestor ids, root first,
    /// itself last), or refused for lack of room or because it would close a cycle.
    AttachReply {
        accepted: bool,
        info: NodeInfo,
        path: Vec<u64>,
    },
    /// A child (or a root to another root) says it is alive, and names a few of its own
    /// children with room, so roots can offer deeper parents in their maps. The parent
    /// answers with its info.
    Heartbeat {
        info: NodeInfo,
        open_children: Vec<NodeInfo>,
    },
    /// `peers`: a few other nodes the sender knows (its other children, peers it met), so
    /// that nodes cut off from every root can find each other.
    HeartbeatReply {
        info: NodeInfo,
        is_child: bool,
        path: Vec<u64>,
        peers: Vec<NodeInfo>,
    },
    /// A graceful leave, or a child moving to another parent.
    Leave {
        info: NodeInfo,
    },
    /// New entries travelling along tree edges; `ack` asks the receiver to say once it holds
    /// them (a write waiting for copies).
    Push {
        entries: Vec<Entry>,
        ack: Option<AckRequest>,
    },
    /// `holders` more nodes hold the entries of the push that asked with `nonce` (the
    /// receiver itself, or nodes further on, relayed back along the push's path).
    PushAck {
        nonce: u64,
        holders: u32,
    },
    /// A request for the next chunk of a full dump.
    DumpRequest {
        cursor: u64,
    },
    /// A chunk of a dump; `next` is the cursor to ask for next, `None` when complete.
    DumpChunk {
        entries: Vec<Entry>,
        next: Option<u64>,
    },
    /// A sync round opens: one number standing for every bucket from `from_bucket` on, over
    /// the entries whose versions are older than `settled_before_ms` (younger ones are still
    /// travelling by push; the whole round leaves them out). `round` is also the seed that
    /// salts this round's fingerprints.
    SyncSummary {
        round: u64,
        from_bucket: u64,
        summary: u64,
        settled_before_ms: u64,
    },
    /// The summaries matched: nothing to do.
    SyncInSync {
        round: u64,
    },
    /// The summaries differed: the responder's per-bucket digests.
    SyncDigests {
        round: u64,
        digests: Vec<BucketDigest>,
    },
    /// Filters of the sender's entries in the buckets that differ; the receiver answers with
    /// the entries the sender definitely lacks and, if `answer`, with its own filters.
    SyncFilters {
        round: u64,
        filters: Vec<(u64, FilterData)>,
        answer: bool,
        settled_before_ms: u64,
    },
    /// Entries the receiver lacks, found through its filters.
    SyncEntries {
        round: u64,
        entries: Vec<Entry>,
    },
    /// A read missed locally: does the receiver hold `key`? Answered from local data only.
    Pull {
        nonce: u64,
        key: std::rc::Rc<[u8]>,
    },
    PullReply {
        nonce: u64,
        entry: Option<Entry>,
    },
    /// The sender's store is full: spare it pushes and sync entries for a while.
    Full {
        retry_after_ms: u64,
    },
}

/// A push's request for acknowledgements: answer `nonce` once the entries are held, and ask
/// `want - 1` more hops on (a write that wants three copies asks two hops).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AckRequest {
    pub nonce: u64,
    pub want: u8,
}

impl Message {
    /// Approximate bytes on the wire, for the simulator's accounting.
    pub fn wire_bytes(&self) -> usize {
        const HEADER: usize = 8;
        const INFO: usize = 8 + 18 + 1 + 4;
        HEADER
            + match self {
                Message::Join { .. } => 2 + INFO,
                Message::TopologyMap { candidates, roots } => {
                    candidates.len() * INFO + roots.len() * 18
                }
                Message::JoinRefused { .. } => 2,
                Message::Ping { .. } | Message::Pong { .. } => 8 + INFO,
                Message::Attach { .. } | Message::Leave { .. } => INFO,
                Message::AttachReply { path, .. } => 1 + INFO + path.len() * 8,
                Message::HeartbeatReply { path, peers, .. } => {
                    1 + INFO + path.len() * 8 + peers.len() * INFO
                }
                Message::Heartbeat { open_children, .. } => INFO * (1 + open_children.len()),
                Message::Push { entries, ack } => {
                    ack.map_or(1, |_| 10) + entries.iter().map(Entry::wire_bytes).sum::<usize>()
                }
                Message::PushAck { .. } => 12,
                Message::DumpRequest { .. } => 8,
                Message::DumpChunk { entries, .. } => {
                    9 + entries.iter().map(Entry::wire_bytes).sum::<usize>()
                }
                Message::SyncSummary { .. } => 32,
                Message::SyncInSync { .. } => 8,
                Message::SyncDigests { digests, .. } => 8 + digests.len() * 20,
                Message::SyncFilters { filters, .. } => {
                    17 + filters
                        .iter()
                        .map(|(_, f)| 8 + f.wire_bytes())
                        .sum::<usize>()
                }
                Message::SyncEntries { entries, .. } => {
                    8 + entries.iter().map(Entry::wire_bytes).sum::<usize>()
                }
                Message::Pull { key, .. } => 8 + key.len(),
                Message::PullReply { entry, .. } => 9 + entry.as_ref().map_or(0, Entry::wire_bytes),
                Message::Full { .. } => 8,
            }
    }

    /// Short names of the kinds, for per-kind accounting, indexed by [`Message::kind_index`].
    pub const KINDS: [&'static str; 22] = [
        "join",
        "topology_map",
        "join_refused",
        "ping",
        "pong",
        "attach",
        "attach_reply",
        "heartbeat",
        "heartbeat_reply",
        "leave",
        "push",
        "dump_request",
        "dump_chunk",
        "sync_summary",
        "sync_in_sync",
        "sync_digests",
        "sync_filters",
        "sync_entries",
        "pull",
        "pull_reply",
        "full",
        "push_ack",
    ];

    /// Entries that may be dropped on the way when the receiver cannot keep up: sync rounds
    /// bring them again (a push nobody waits on, a round's repairs). Everything else (the
    /// tree, dumps asked chunk by chunk, pulls, pushes a writer waits on) must arrive.
    pub fn entries_sheddable(&self) -> Option<usize> {
        match self {
            Message::Push { entries, ack: None } | Message::SyncEntries { entries, .. } => {
                Some(entries.len())
            }
            _ => None,
        }
    }

    /// This message's kind as an index into [`Message::KINDS`].
    pub fn kind_index(&self) -> usize {
        match self {
            Message::Join { .. } => 0,
            Message::TopologyMap { .. } => 1,
            Message::JoinRefused { .. } => 2,
            Message::Ping { .. } => 3,
            Message::Pong { .. } => 4,
            Message::Attach { .. } => 5,
            Message::AttachReply { .. } => 6,
            Message::Heartbeat { .. } => 7,
            Message::HeartbeatReply { .. } => 8,
            Message::Leave { .. } => 9,
            Message::Push { .. } => 10,
            Message::DumpRequest { .. } => 11,
            Message::DumpChunk { .. } => 12,
            Message::SyncSummary { .. } => 13,
            Message::SyncInSync { .. } => 14,
            Message::SyncDigests { .. } => 15,
            Message::SyncFilters { .. } => 16,
            Message::SyncEntries { .. } => 17,
            Message::Pull { .. } => 18,
            Message::PullReply { .. } => 19,
            Message::Full { .. } => 20,
            Message::PushAck { .. } => 21,
        }
    }

    /// A short name for per-kind accounting.
    pub fn kind(&self) -> &'static str {
        Message::KINDS[self.kind_index()]
    }
}
