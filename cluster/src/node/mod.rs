//! One node of the peer network as a pure state machine: join through a root, probe and attach
//! to a parent in the discovery tree, heartbeat, heal when a parent dies or is wrong, take a
//! full dump after attaching, and push new entries along tree edges.
//!
//! Owns every protocol decision. It never touches a socket, a clock or system randomness: the
//! driver feeds [`Input`]s with a `now_ms`, drains [`Output`]s, and wakes it at
//! [`Node::next_wake_ms`]. Its only side effect is on the [`EntryStore`] it owns.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;

use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::entry::Entry;
use crate::message::{AckRequest, Message, NodeInfo, Role, PEER_PROTOCOL_MAJOR};
use crate::store_request::{StoreReply, StoreRequest};
use crate::sync::BucketDigest;

mod copies;
mod local;
mod pull;
mod rebalance;
mod sync_round;

pub use local::LocalNode;
#[cfg(test)]
mod tests;

/// Tree shape and timing. Every bound has its unit in its name.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Children a root, a trunk and a branch take at most.
    pub children_max_root: u16,
    pub children_max_trunk: u16,
    pub children_max_branch: u16,
    pub heartbeat_interval_ms: u64,
    /// Heartbeats missed before a parent (or child) counts as gone.
    pub heartbeat_misses_max: u64,
    /// How long to wait for a root's map or a parent's attach reply.
    pub reply_timeout_ms: u64,
    /// How long to wait for pongs when measuring candidates.
    pub probe_timeout_ms: u64,
    /// Candidates in one topology map.
    pub map_candidates_max: usize,
    /// Entries in one dump chunk or push message.
    pub entries_per_message_max: usize,
    /// Pause before joining again after every root failed.
    pub rejoin_backoff_ms: u64,
    /// How often a node opens a sync round with its parent (or, a root, the other roots) and
    /// one random peer; jittered by a tenth either way.
    pub sync_interval_ms: u64,
    /// Buckets expiring sooner than this are left out of sync: they would be gone before a
    /// transfer finished.
    pub sync_skip_margin_ms: u64,
    /// A sync round compares only entries whose versions are at least this old (capped at
    /// [`crate::sync::SETTLE_WINDOW_MS`]): younger writes are still on their way by push, and
    /// counting them would make every round under a steady write load look divergent and
    /// build filters over every bucket.
    pub sync_settle_ms: u64,
    /// Entries one sync round sends at most, and their bytes on the wire at most (the rest
    /// waits for the next round). The bytes must fit well inside what a link queues for a
    /// peer before it sheds entries, or a round's repairs are dropped on the way.
    pub sync_entries_per_round_max: usize,
    pub sync_bytes_per_round_max: usize,
    /// How long a lazy pull waits for its neighbours.
    pub pull_timeout_ms: u64,
    /// Pulls this node has waiting at once; more answer `None` at once.
    pub pulls_in_flight_max: usize,
    /// How long a key no neighbour had is answered `None` without asking again.
    pub pull_miss_cache_ms: u64,
    /// Pulls from peers this node answers per second (the rest are dropped).
    pub pull_answers_per_second_max: u32,
    /// Pulls from peers waiting on the store at once (the rest are answered `None`): each
    /// answer holds a value until it is sent, so a burst of pulls must not hold thousands.
    pub pull_answers_waiting_max: u32,
    /// How long a node that passed on a push asking for acknowledgements relays them back.
    pub push_ack_window_ms: u64,
    /// How often a leaf looks for a closer parent; a branch waits twice as long and a trunk
    /// four times, so leaves settle first. Jittered by a tenth either way.
    pub rebalance_interval_ms: u64,
    /// A candidate must be this many percent closer than the parent to move to it...
    pub rebalance_gain_percent: u64,
    /// ...and at least this many milliseconds closer.
    pub rebalance_gain_min_ms: u64,
    /// Longest TTL the network allows: an entry from a peer expiring later than now plus
    /// this is refused (it could only come from a broken or hostile peer).
    pub ttl_ms_max: u64,
    /// How long a peer that said it is full is spared pushes and sync entries.
    pub full_backoff_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            children_max_root: 16,
            children_max_trunk: 16,
            children_max_branch: 48,
            heartbeat_interval_ms: 1_000,
            heartbeat_misses_max: 3,
            reply_timeout_ms: 2_000,
            probe_timeout_ms: 500,
            map_candidates_max: 16,
            entries_per_message_max: 256,
            rejoin_backoff_ms: 1_000,
            sync_interval_ms: 5_000,
            sync_skip_margin_ms: 2_000,
            sync_settle_ms: 2_000,
            sync_entries_per_round_max: 65_536,
            sync_bytes_per_round_max: 4 * 1024 * 1024,
            pull_timeout_ms: 300,
            pulls_in_flight_max: 1_024,
            pull_miss_cache_ms: 1_000,
            pull_answers_per_second_max: 10_000,
            pull_answers_waiting_max: 64,
            push_ack_window_ms: 30_000,
            rebalance_interval_ms: 30_000,
            rebalance_gain_percent: 20,
            rebalance_gain_min_ms: 2,
            ttl_ms_max: 24 * 60 * 60 * 1_000,
            full_backoff_ms: 30_000,
        }
    }
}

impl ClusterConfig {
    fn children_max(&self, role: Option<Role>) -> u16 {
        match role {
            Some(Role::Root) => self.children_max_root,
            Some(Role::Trunk) => self.children_max_trunk,
            Some(Role::Branch) => self.children_max_branch,
            Some(Role::Leaf) | None => 0,
        }
    }
}

/// Who a node is and where it starts from.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: u64,
    pub addr: SocketAddr,
    /// Root addresses to join through (a root lists the other roots here).
    pub roots: Vec<SocketAddr>,
    /// Whether this node is one of the roots.
    pub is_root: bool,
    pub cluster: ClusterConfig,
}

/// What the driver feeds the node.
#[derive(Clone, Debug)]
pub enum Input {
    Message {
        from: SocketAddr,
        msg: Message,
    },
    /// A write made on this node, already in its store: push it to the tree.
    LocalWrite(Entry),
    /// The transport could not reach `addr` (connection refused or broken).
    Unreachable {
        addr: SocketAddr,
    },
    /// Leave the network gracefully: tell parent and children.
    Leave,
    /// A read of `key` missed locally (and may ask peers): find it. Answered by an
    /// [`Output::PullDone`] with the same `request`, by the deadline at the latest.
    LocalMiss {
        request: u64,
        key: Rc<[u8]>,
    },
    /// The store's answer to the [`Output::Store`] request with the same ticket.
    Store {
        ticket: u64,
        reply: StoreReply,
    },
    /// A write made on this node, already in its store, that wants `copies` nodes (this one
    /// included) to hold it within `timeout_ms`: pushed like a `LocalWrite`, and answered by an
    /// [`Output::WriteDone`] with the same `request`, by the deadline at the latest.
    LocalWriteCopies {
        entry: Entry,
        request: u64,
        copies: u8,
        timeout_ms: u64,
    },
    Tick,
}

/// What the node asks the driver to do.
#[derive(Debug)]
pub enum Output {
    Send {
        to: SocketAddr,
        msg: Message,
    },
    /// The answer to a [`Input::LocalMiss`]: the entry a peer held (already stored here), or
    /// `None` when no neighbour had it in time.
    PullDone {
        request: u64,
        entry: Option<Entry>,
    },
    /// The answer to a [`Input::LocalWriteCopies`]: `holders` nodes are known to hold the
    /// write; `complete` when that is the copies it asked for (otherwise its deadline passed,
    /// and the write goes on spreading by push and sync).
    WriteDone {
        request: u64,
        holders: u32,
        complete: bool,
    },
    /// Run `request` on this node's store and hand the reply back as [`Input::Store`] with the
    /// same ticket (at once or later; requests may be answered in any order).
    Store {
        ticket: u64,
        request: StoreRequest,
    },
}

/// Where the node is in joining the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// A configured root: the top of the tree.
    Root,
    /// Waiting to (re)join after every root failed.
    Backoff {
        until_ms: u64,
    },
    /// Asked root number `root` for a map.
    Joining {
        root: usize,
        deadline_ms: u64,
    },
    /// Measuring candidates.
    Probing {
        deadline_ms: u64,
    },
    /// Asked `to` to take us as a child.
    Attaching {
        to: SocketAddr,
        deadline_ms: u64,
    },
    Attached,
    /// Left the network on request.
    Gone,
}

#[derive(Clone, Debug)]
struct Candidate {
    info: NodeInfo,
    nonce: u64,
    sent_ms: u64,
    rtt_ms: Option<u64>,
}

#[derive(Clone, Debug)]
struct Link {
    info: NodeInfo,
    last_heard_ms: u64,
    /// Its children with room, as its last heartbeat named them.
    open_children: Vec<NodeInfo>,
}

/// Children with room a heartbeat names at most.
const OPEN_CHILDREN_PER_HEARTBEAT_MAX: usize = 8;

/// A full dump being taken from a peer.
#[derive(Clone, Debug)]
struct DumpProgress {
    from: SocketAddr,
    cursor: u64,
    deadline_ms: u64,
    /// Times the current chunk was asked for again after a timeout.
    retries: u8,
}

/// Times a dump chunk is asked for again before the dump moves to another peer.
const DUMP_RETRIES_MAX: u8 = 2;

/// What [`Node::topology`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    pub me: NodeInfo,
    pub attached: bool,
    /// Ancestors' ids, root first.
    pub path: Vec<u64>,
    pub parent: Option<Neighbour>,
    /// Round trip to the parent, smoothed over heartbeats.
    pub parent_rtt_ms: Option<u64>,
    pub children: Vec<Neighbour>,
    /// For a root: the other roots.
    pub root_peers: Vec<Neighbour>,
}

/// A tree neighbour as last heard from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub info: NodeInfo,
    /// Milliseconds since it was last heard from.
    pub silent_ms: u64,
}

/// Counters a driver can read to report what the node did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeCounters {
    pub joins: u64,
    pub attaches: u64,
    pub parent_losses: u64,
    pub entries_applied: u64,
    pub entries_stale: u64,
    /// Entries sent to peers (pushed, synced, dumped or pulled), and entries stored from
    /// dump chunks.
    pub entries_sent: u64,
    pub dump_entries_applied: u64,
    pub dumps_completed: u64,
    pub sync_rounds: u64,
    pub sync_rounds_in_sync: u64,
    /// Entries learned through sync.
    pub sync_entries_applied: u64,
    /// Filters from peers refused as malformed.
    pub filters_refused: u64,
    pub pulls_hit: u64,
    pub pulls_missed: u64,
    pub pull_answers_dropped: u64,
    /// Local writes whose copies were all confirmed, and those answered at their deadline.
    pub writes_copied: u64,
    pub writes_copies_timed_out: u64,
    /// Moves to a closer parent.
    pub rebalances: u64,
    /// Entries from peers refused outright (expiry beyond the longest TTL), and messages
    /// refused as malformed (a path deeper than the tree, too many entries).
    pub entries_refused: u64,
    pub messages_refused: u64,
    /// Store requests dropped because too many were waiting, and replies that did not match
    /// their request (a driver bug).
    pub store_requests_dropped: u64,
    pub store_replies_mismatched: u64,
}

/// The tree's depth: a path of ancestors is never longer (root, trunk, branch).
const PATH_LEN_MAX: usize = 3;
/// Roots a map may name.
const MAP_ROOTS_MAX: usize = 16;
/// Peers remembered for root failover at most.
const CACHED_PEERS_MAX: usize = 64;
/// Peers a heartbeat reply names at most.
const PEERS_PER_HEARTBEAT_REPLY: usize = 2;

/// A lazy pull waiting for its neighbours.
#[derive(Clone, Debug)]
struct PendingPull {
    request: u64,
    key: Rc<[u8]>,
    deadline_ms: u64,
    /// Neighbours asked that have not answered yet.
    waiting: u32,
}

/// A sync round this node opened with a peer.
#[derive(Clone, Copy, Debug)]
struct SyncRound {
    seed: u64,
    from_bucket: u64,
    settled_before_ms: u64,
    /// Rounds to run right after this one if it found differences, each with a fresh salt:
    /// a catch-up round's filters miss about 1 entry in 256 (a false positive), which would
    /// otherwise wait a whole period for the next round.
    follow_ups: u8,
    /// Rounds that may still run right after this one because it repaired something.
    repairs_left: u8,
    /// Whether entries travelled either way in this round (set by the opener).
    repaired: bool,
    /// When it was opened: a periodic round does not replace one still in flight.
    opened_ms: u64,
}

pub struct Node {
    config: NodeConfig,
    rng: Xoshiro256PlusPlus,
    phase: Phase,
    role: Option<Role>,
    parent: Option<Link>,
    /// Ancestors' ids, root first, as the parent last told us.
    path: Vec<u64>,
    /// Ordered maps: the order of sends must not depend on a hasher's seed, or the simulator
    /// would not repeat a run.
    children: BTreeMap<SocketAddr, Link>,
    /// The other roots (for a root): the top of the one tree.
    root_peers: BTreeMap<SocketAddr, Link>,
    roots: Vec<SocketAddr>,
    /// Nodes seen in maps and pings, tried when no root answers (bounded).
    cached_peers: Vec<NodeInfo>,
    /// Probing the cached peers because no root answered: only a peer at a lower address is
    /// taken as parent then, so the nodes cut off from every root form one interim tree
    /// (topped by the lowest address among them) without closing a cycle.
    failover: bool,
    candidates: Vec<Candidate>,
    /// Candidates not yet asked, best first, while attaching.
    ranked: Vec<NodeInfo>,
    dump: Option<DumpProgress>,
    /// Rounds this node opened, by peer (one at a time each).
    rounds: BTreeMap<SocketAddr, SyncRound>,
    next_sync_ms: u64,
    /// Whether the node has been attached before: a re-attach syncs instead of a full dump.
    attached_before: bool,
    /// Lazy pulls waiting, by nonce.
    pulls: BTreeMap<u64, PendingPull>,
    /// Keys no neighbour had, until when that answer stands.
    pull_misses: BTreeMap<Rc<[u8]>, u64>,
    /// Pull answers given in the current second, and which second.
    pull_answers: (u64, u32),
    /// Pull answers asked of the store and not yet back.
    pull_answers_waiting: u32,
    /// Local writes waiting for their copies, by the nonce their push asked with.
    copies_waiting: BTreeMap<u64, copies::CopiesWait>,
    /// Acknowledgements to relay back, by the nonce this node's onward push asked with.
    ack_relays: BTreeMap<u64, copies::AckRelay>,
    /// Round-trip time to the parent, smoothed over heartbeats.
    parent_rtt_ms: Option<u64>,
    /// When the heartbeat to the parent that is still unanswered left.
    heartbeat_sent_ms: Option<u64>,
    next_rebalance_ms: u64,
    /// A search for a closer parent under way (we stay attached meanwhile).
    rebalance: Option<rebalance::Search>,
    /// Peers that said their store is full, until when they are spared.
    full_peers: BTreeMap<SocketAddr, u64>,
    /// Peers whose view we found stale (they lacked entries, or their summary differed):
    /// synced with first. Value: when we found out.
    stale_peers: BTreeMap<SocketAddr, u64>,
    next_heartbeat_ms: u64,
    /// What to do with each store reply, by ticket.
    awaiting: BTreeMap<u64, (Awaiting, usize)>,
    /// Bytes of the entries in the store requests of `awaiting`.
    store_bytes_pending: usize,
    next_ticket: u64,
    outbox: VecDeque<Output>,
    counters: NodeCounters,
}

/// Store requests waiting for their replies at most; past it a request is dropped and
/// counted (a driver should stop reading from peers well before, see
/// [`Node::store_requests_pending`]).
const AWAITING_MAX: usize = 65_536;

/// What a store reply continues.
enum Awaiting {
    /// Entries from `from` being applied: the fresh ones travel on along the tree.
    Applied { from: SocketAddr, source: Source },
    /// A pulled entry being stored: nothing follows.
    Nothing,
    /// A peer's pull: answer it with what the store holds.
    PullAnswer { to: SocketAddr, nonce: u64 },
    /// A peer's dump request: send it the chunk.
    DumpAnswer { to: SocketAddr },
    /// A round being opened: send the summary of these digests.
    OpenRound { peer: SocketAddr, round: SyncRound },
    /// A peer's summary: compare ours with it.
    SummaryAnswer {
        from: SocketAddr,
        round: u64,
        summary: u64,
    },
    /// A peer's digests: find the buckets that differ from ours.
    CompareDigests {
        from: SocketAddr,
        round: SyncRound,
        theirs: Vec<BucketDigest>,
    },
    /// Our hashes of these buckets: build the filters and send them.
    SendFilters {
        to: SocketAddr,
        round: u64,
        buckets: Vec<u64>,
        answer: bool,
        settled_before_ms: u64,
    },
    /// What `to`'s filters lack: send it, then our own filters of `buckets` if it asked.
    SendLacking {
        to: SocketAddr,
        round: u64,
        answer: bool,
        buckets: Vec<u64>,
        settled_before_ms: u64,
    },
}

/// Where entries being applied came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// A push; `ack` when its sender wants acknowledgements.
    Push {
        ack: Option<AckRequest>,
    },
    Sync,
    /// A dump chunk; `next` is the cursor of the chunk after it.
    Dump {
        next: Option<u64>,
    },
}

impl Node {
    pub fn new(config: NodeConfig, seed: u64, now_ms: u64) -> Self {
        let roots: Vec<SocketAddr> = config
            .roots
            .iter()
            .copied()
            .filter(|&a| a != config.addr)
            .collect();
        let mut node = Node {
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            phase: Phase::Backoff { until_ms: now_ms },
            role: None,
            parent: None,
            path: Vec::new(),
            children: BTreeMap::new(),
            root_peers: BTreeMap::new(),
            roots,
            cached_peers: Vec::new(),
            failover: false,
            candidates: Vec::new(),
            ranked: Vec::new(),
            dump: None,
            rounds: BTreeMap::new(),
            next_sync_ms: now_ms + config.cluster.sync_interval_ms,
            attached_before: false,
            pulls: BTreeMap::new(),
            pull_misses: BTreeMap::new(),
            pull_answers: (0, 0),
            pull_answers_waiting: 0,
            copies_waiting: BTreeMap::new(),
            ack_relays: BTreeMap::new(),
            parent_rtt_ms: None,
            heartbeat_sent_ms: None,
            next_rebalance_ms: u64::MAX,
            rebalance: None,
            full_peers: BTreeMap::new(),
            stale_peers: BTreeMap::new(),
            next_heartbeat_ms: now_ms,
            awaiting: BTreeMap::new(),
            store_bytes_pending: 0,
            next_ticket: 0,
            outbox: VecDeque::new(),
            counters: NodeCounters::default(),
            config,
        };
        if node.config.is_root {
            node.phase = Phase::Root;
            node.role = Some(Role::Root);
            for &addr in &node.roots {
                node.root_peers.insert(
                    addr,
                    Link {
                        info: NodeInfo {
                            id: 0,
                            addr,
                            role: Some(Role::Root),
                            children: 0,
                            capacity: 0,
                        },
                        last_heard_ms: now_ms,
                        open_children: Vec::new(),
                    },
                );
            }
        } else {
            node.start_join(now_ms);
        }
        node
    }

    /// The tree as this node sees it: itself, its parent (with the measured round trip), its
    /// children and the other roots, each with how long ago it was last heard from.
    pub fn topology(&self, now_ms: u64) -> Topology {
        let neighbour = |link: &Link| Neighbour {
            info: link.info,
            silent_ms: now_ms.saturating_sub(link.last_heard_ms),
        };
        Topology {
            me: self.info(),
            attached: self.is_attached(),
            path: self.path.clone(),
            parent: self.parent.as_ref().map(neighbour),
            parent_rtt_ms: self.parent_rtt_ms,
            children: self.children.values().map(neighbour).collect(),
            root_peers: self.root_peers.values().map(neighbour).collect(),
        }
    }

    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            id: self.config.id,
            addr: self.config.addr,
            role: self.role,
            children: self.children.len() as u16,
            capacity: self.config.cluster.children_max(self.role),
        }
    }

    /// Store requests sent and not yet answered: a driver whose store answers slowly stops
    /// reading from peers while this is high.
    pub fn store_requests_pending(&self) -> usize {
        self.awaiting.len()
    }

    /// Bytes of entries in the store requests sent and not yet answered (writes from peers
    /// waiting to be applied): a driver stops reading from peers while this is high, so a
    /// peer pushing faster than the store seals holds a bounded amount.
    pub fn store_bytes_pending(&self) -> usize {
        self.store_bytes_pending
    }

    pub fn role(&self) -> Option<Role> {
        self.role
    }

    pub fn parent(&self) -> Option<SocketAddr> {
        self.parent.as_ref().map(|l| l.info.addr)
    }

    pub fn children(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.children.keys().copied()
    }

    /// Whether a local write has anywhere to be pushed: a parent, a child or another root.
    pub fn has_neighbours(&self) -> bool {
        self.parent.is_some() || !self.children.is_empty() || !self.root_peers.is_empty()
    }

    /// Ancestor ids, root first, as the parent last told us.
    pub fn path(&self) -> &[u64] {
        &self.path
    }

    pub fn is_attached(&self) -> bool {
        matches!(self.phase, Phase::Root | Phase::Attached)
    }

    /// Whether the node still takes the dump it started after attaching.
    pub fn is_dumping(&self) -> bool {
        self.dump.is_some()
    }

    pub fn counters(&self) -> NodeCounters {
        self.counters
    }

    /// How many items each of the node's collections holds now (for finding what grows).
    pub fn footprint(&self) -> [(&'static str, usize); 10] {
        [
            ("awaiting", self.awaiting.len()),
            ("outbox", self.outbox.len()),
            ("pulls", self.pulls.len()),
            ("pull_misses", self.pull_misses.len()),
            ("copies_waiting", self.copies_waiting.len()),
            ("ack_relays", self.ack_relays.len()),
            ("rounds", self.rounds.len()),
            ("stale_peers", self.stale_peers.len()),
            ("children", self.children.len()),
            ("store_bytes_pending", self.store_bytes_pending),
        ]
    }

    /// The next output to carry out, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outbox.pop_front()
    }

    /// When the node next needs a `Tick`.
    pub fn next_wake_ms(&self) -> u64 {
        let phase = match self.phase {
            Phase::Backoff { until_ms } => until_ms,
            Phase::Joining { deadline_ms, .. }
            | Phase::Probing { deadline_ms }
            | Phase::Attaching { deadline_ms, .. } => deadline_ms,
            Phase::Root | Phase::Attached => u64::MAX,
            Phase::Gone => return u64::MAX,
        };
        let dump = self.dump.as_ref().map_or(u64::MAX, |d| d.deadline_ms);
        let pull = self
            .pulls
            .values()
            .map(|p| p.deadline_ms)
            .min()
            .unwrap_or(u64::MAX);
        let rebalance = self
            .rebalance
            .as_ref()
            .map_or(self.next_rebalance_ms, |r| r.deadline_ms);
        phase
            .min(rebalance)
            .min(pull)
            .min(self.copies_next_wake_ms())
            .min(dump)
            .min(self.next_heartbeat_ms)
            .min(self.next_sync_ms)
    }

    pub fn handle(&mut self, input: Input, now_ms: u64) {
        if self.phase == Phase::Gone {
            return;
        }
        match input {
            Input::Message { from, msg } => self.on_message(from, msg, now_ms),
            Input::LocalWrite(entry) => self.push(vec![entry], None, None, now_ms),
            Input::LocalWriteCopies {
                entry,
                request,
                copies,
                timeout_ms,
            } => self.write_with_copies(entry, request, copies, timeout_ms, now_ms),
            Input::Unreachable { addr } => self.on_unreachable(addr, now_ms),
            Input::Leave => self.leave(),
            Input::LocalMiss { request, key } => self.pull(request, key, now_ms),
            Input::Store { ticket, reply } => self.on_store_reply(ticket, reply, now_ms),
            Input::Tick => self.on_tick(now_ms),
        }
    }

    fn send(&mut self, to: SocketAddr, msg: Message) {
        debug_assert_ne!(to, self.config.addr, "a node never sends to itself");
        self.counters.entries_sent += match &msg {
            Message::Push { entries, .. }
            | Message::DumpChunk { entries, .. }
            | Message::SyncEntries { entries, .. } => entries.len() as u64,
            Message::PullReply { entry, .. } => u64::from(entry.is_some()),
            _ => 0,
        };
        self.outbox.push_back(Output::Send { to, msg });
    }

    /// Tree neighbours: parent, children and (for a root) the other roots.
    fn neighbours(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = self.parent.iter().map(|l| l.info.addr).collect();
        out.extend(self.children.keys().copied());
        out.extend(self.root_peers.keys().copied());
        out
    }

    /// Sends `entries` to every tree neighbour but the one they came from, asking each for
    /// acknowledgements when `ack` is set.
    fn push(
        &mut self,
        entries: Vec<Entry>,
        from: Option<SocketAddr>,
        ack: Option<AckRequest>,
        now_ms: u64,
    ) {
        if entries.is_empty() {
            return;
        }
        let chunk = self.config.cluster.entries_per_message_max.max(1);
        for to in self.neighbours() {
            if Some(to) == from || self.is_full(to, now_ms) {
                continue;
            }
            for part in entries.chunks(chunk) {
                self.send(
                    to,
                    Message::Push {
                        entries: part.to_vec(),
                        ack,
                    },
                );
            }
        }
    }

    /// Whether `peer` said it is full and is still being spared.
    fn is_full(&self, peer: SocketAddr, now_ms: u64) -> bool {
        self.full_peers
            .get(&peer)
            .is_some_and(|&until| until > now_ms)
    }

    /// Asks the store for `request`; `then` says what the reply continues.
    fn ask(&mut self, request: StoreRequest, then: Awaiting) {
        if self.awaiting.len() >= AWAITING_MAX {
            self.counters.store_requests_dropped += 1;
            return;
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let bytes = match &request {
            StoreRequest::Apply { entries } => entries.iter().map(Entry::wire_bytes).sum(),
            _ => 0,
        };
        self.store_bytes_pending += bytes;
        self.awaiting.insert(ticket, (then, bytes));
        self.outbox.push_back(Output::Store { ticket, request });
    }

    /// Applies entries from `from` (the store answers which were new here). Entries past the
    /// longest TTL are refused.
    fn apply_all(
        &mut self,
        from: SocketAddr,
        mut entries: Vec<Entry>,
        source: Source,
        now_ms: u64,
    ) {
        let per_message = self.config.cluster.entries_per_message_max.max(1);
        if entries.len() > per_message {
            self.counters.messages_refused += 1;
            entries.truncate(per_message);
        }
        let latest_ms = now_ms.saturating_add(self.config.cluster.ttl_ms_max);
        let before = entries.len();
        entries.retain(|e| e.expires_ms <= latest_ms);
        self.counters.entries_refused += (before - entries.len()) as u64;
        self.ask(
            StoreRequest::Apply { entries },
            Awaiting::Applied { from, source },
        );
    }

    /// Entries from `from` were applied: count them, tell a sender our store is full, and push
    /// what was new along the tree (a repair or a dump spreads in the same pass as a write).
    fn on_applied(
        &mut self,
        from: SocketAddr,
        source: Source,
        fresh: Vec<Entry>,
        stale: u64,
        full: bool,
        now_ms: u64,
    ) {
        self.counters.entries_applied += fresh.len() as u64;
        self.counters.entries_stale += stale;
        match source {
            Source::Sync => self.counters.sync_entries_applied += fresh.len() as u64,
            Source::Dump { .. } => self.counters.dump_entries_applied += fresh.len() as u64,
            Source::Push { .. } => {}
        }
        let onward_ack = match source {
            Source::Push { ack: Some(ack) } => {
                self.acknowledge_push(from, ack, &fresh, full, now_ms)
            }
            _ => None,
        };
        if full {
            let retry_after_ms = self.config.cluster.full_backoff_ms;
            self.send(from, Message::Full { retry_after_ms });
        }
        self.push(fresh, Some(from), onward_ack, now_ms);
        if let Source::Dump { next } = source {
            self.dump_chunk_applied(from, next, now_ms);
        }
    }

    fn on_store_reply(&mut self, ticket: u64, reply: StoreReply, now_ms: u64) {
        let Some((then, bytes)) = self.awaiting.remove(&ticket) else {
            return;
        };
        self.store_bytes_pending -= bytes;
        if matches!(then, Awaiting::PullAnswer { .. }) {
            self.pull_answers_waiting = self.pull_answers_waiting.saturating_sub(1);
        }
        match (then, reply) {
            (Awaiting::Applied { from, source }, StoreReply::Applied { fresh, stale, full }) => {
                self.on_applied(from, source, fresh, stale, full, now_ms)
            }
            (Awaiting::Nothing, _) => {}
            (Awaiting::PullAnswer { to, nonce }, StoreReply::Entry(entry)) => {
                self.send(to, Message::PullReply { nonce, entry });
            }
            (Awaiting::DumpAnswer { to }, StoreReply::DumpChunk { entries, next }) => {
                self.send(to, Message::DumpChunk { entries, next });
            }
            (Awaiting::OpenRound { peer, round }, StoreReply::Digests(digests)) => {
                self.send_summary(peer, round, &digests)
            }
            (
                Awaiting::SummaryAnswer {
                    from,
                    round,
                    summary,
                },
                StoreReply::Digests(digests),
            ) => self.answer_summary(from, round, summary, digests, now_ms),
            (
                Awaiting::CompareDigests {
                    from,
                    round,
                    theirs,
                },
                StoreReply::Digests(mine),
            ) => self.compare_digests(from, round, &theirs, &mine),
            (
                Awaiting::SendFilters {
                    to,
                    round,
                    buckets,
                    answer,
                    settled_before_ms,
                },
                StoreReply::BucketHashes(hashes),
            ) => self.send_built_filters(to, round, &buckets, &hashes, answer, settled_before_ms),
            (
                Awaiting::SendLacking {
                    to,
                    round,
                    answer,
                    buckets,
                    settled_before_ms,
                },
                StoreReply::Lacking(lacking),
            ) => self.send_lacking(
                to,
                round,
                answer,
                buckets,
                lacking,
                settled_before_ms,
                now_ms,
            ),
            // A reply of the wrong kind is the driver's bug; nothing sensible follows from it.
            _ => self.counters.store_replies_mismatched += 1,
        }
    }

    fn on_message(&mut self, from: SocketAddr, msg: Message, now_ms: u64) {
        match msg {
            Message::Join { major, info } => self.on_join(from, major, info),
            Message::TopologyMap {
                mut candidates,
                mut roots,
            } => {
                candidates.truncate(self.config.cluster.map_candidates_max);
                roots.truncate(MAP_ROOTS_MAX);
                self.on_map(candidates, roots, now_ms)
            }
            Message::Full { retry_after_ms } => {
                let spare_ms = retry_after_ms.min(self.config.cluster.full_backoff_ms * 4);
                self.full_peers.insert(from, now_ms + spare_ms);
            }
            Message::JoinRefused { major } => {
                // A root of another major: try the next one.
                let _ = major;
                self.next_root(now_ms);
            }
            Message::Ping { nonce, info } => {
                // Whoever measures us is a peer to try when no root answers.
                if info.role.is_some() {
                    self.remember_peer(info);
                }
                let info = self.info();
                self.send(from, Message::Pong { nonce, info });
            }
            Message::Pong { nonce, info } => self.on_pong(nonce, info, now_ms),
            Message::Attach { info } => self.on_attach(from, info, now_ms),
            Message::AttachReply { path, .. } | Message::HeartbeatReply { path, .. }
                if path.len() > PATH_LEN_MAX =>
            {
                // Deeper than the tree can be: a broken or lying peer.
                self.counters.messages_refused += 1;
            }
            Message::AttachReply {
                accepted,
                info,
                path,
            } => self.on_attach_reply(from, accepted, info, path, now_ms),
            Message::Heartbeat {
                info,
                open_children,
            } => self.on_heartbeat(from, info, open_children, now_ms),
            Message::HeartbeatReply {
                info,
                is_child,
                path,
                peers,
            } => {
                for peer in peers.into_iter().take(PEERS_PER_HEARTBEAT_REPLY) {
                    if peer.role.is_some() {
                        self.remember_peer(peer);
                    }
                }
                self.on_heartbeat_reply(from, info, is_child, path, now_ms)
            }
            Message::Leave { .. } => self.on_leave(from, now_ms),
            Message::Push { entries, ack } => {
                self.apply_all(from, entries, Source::Push { ack }, now_ms)
            }
            Message::PushAck { nonce, holders } => self.on_push_ack(nonce, holders),
            Message::DumpRequest { cursor } => {
                let max = self.config.cluster.entries_per_message_max;
                self.ask(
                    StoreRequest::DumpChunk { cursor, max },
                    Awaiting::DumpAnswer { to: from },
                );
            }
            Message::DumpChunk { entries, next } => self.on_dump_chunk(from, entries, next, now_ms),
            Message::SyncSummary {
                round,
                from_bucket,
                summary,
                settled_before_ms,
            } => self.on_sync_summary(from, round, from_bucket, summary, settled_before_ms),
            Message::SyncInSync { round } => {
                if self.rounds.get(&from).is_some_and(|r| r.seed == round) {
                    self.rounds.remove(&from);
                    self.stale_peers.remove(&from);
                    self.counters.sync_rounds_in_sync += 1;
                }
            }
            Message::SyncDigests { round, digests } => self.on_sync_digests(from, round, digests),
            Message::SyncFilters {
                round,
                filters,
                answer,
                settled_before_ms,
            } => self.on_sync_filters(from, round, filters, answer, settled_before_ms, now_ms),
            Message::Pull { nonce, key } => self.on_pull(from, nonce, key, now_ms),
            Message::PullReply { nonce, entry } => self.on_pull_reply(nonce, entry, now_ms),
            Message::SyncEntries { round, entries } => {
                if let Some(open) = self.rounds.get_mut(&from).filter(|r| r.seed == round) {
                    open.repaired |= !entries.is_empty();
                }
                self.apply_all(from, entries, Source::Sync, now_ms)
            }
        }
    }

    // --- joining -------------------------------------------------------------------------

    fn start_join(&mut self, now_ms: u64) {
        self.counters.joins += 1;
        self.join_root(0, now_ms);
    }

    fn join_root(&mut self, root: usize, now_ms: u64) {
        let deadline_ms = now_ms + self.config.cluster.reply_timeout_ms;
        if let Some(&addr) = self.roots.get(root) {
            self.phase = Phase::Joining { root, deadline_ms };
            let msg = Message::Join {
                major: PEER_PROTOCOL_MAJOR,
                info: self.info(),
            };
            self.send(addr, msg);
        } else if !self.cached_peers.is_empty() {
            // Root failover, last resort: measure the peers we knew of; only one at a lower
            // address is taken as parent, but the pings tell the others about us (so the node
            // at the lowest address, which attaches to nobody, is found by the rest). The
            // roots are asked again first on every later attempt.
            let peers = self.cached_peers.clone();
            self.failover = true;
            self.probe(peers, now_ms);
        } else {
            self.phase = Phase::Backoff {
                until_ms: now_ms + self.config.cluster.rejoin_backoff_ms,
            };
        }
    }

    fn next_root(&mut self, now_ms: u64) {
        let next = match self.phase {
            Phase::Joining { root, .. } => root + 1,
            _ => return,
        };
        self.join_root(next, now_ms);
    }

    fn on_join(&mut self, from: SocketAddr, major: u16, info: NodeInfo) {
        if major != PEER_PROTOCOL_MAJOR {
            self.send(
                from,
                Message::JoinRefused {
                    major: PEER_PROTOCOL_MAJOR,
                },
            );
            return;
        }
        let mut candidates: Vec<NodeInfo> = Vec::new();
        let me = self.info();
        if me.has_room() {
            candidates.push(me);
        }
        candidates.extend(
            self.children
                .values()
                .chain(self.root_peers.values())
                .flat_map(|l| std::iter::once(l.info).chain(l.open_children.iter().copied()))
                .filter(|i| i.id != info.id && i.id != 0),
        );
        // A bounded random sample: the joiner measures them and picks the closest.
        let max = self.config.cluster.map_candidates_max;
        while candidates.len() > max {
            let at = (self.rng.next_u64() % candidates.len() as u64) as usize;
            candidates.swap_remove(at);
        }
        let mut roots = self.roots.clone();
        roots.push(self.config.addr);
        self.send(from, Message::TopologyMap { candidates, roots });
    }

    fn on_map(&mut self, candidates: Vec<NodeInfo>, roots: Vec<SocketAddr>, now_ms: u64) {
        if self.rebalance.is_some() {
            return self.on_rebalance_map(candidates, now_ms);
        }
        if !matches!(self.phase, Phase::Joining { .. }) {
            return;
        }
        for root in roots {
            if root != self.config.addr && !self.roots.contains(&root) {
                self.roots.push(root);
            }
        }
        let own = self.config.id;
        let candidates: Vec<NodeInfo> = candidates
            .into_iter()
            .filter(|c| c.id != own && c.addr != self.config.addr)
            .collect();
        for candidate in &candidates {
            self.remember_peer(*candidate);
        }
        self.failover = false;
        self.probe(candidates, now_ms);
    }

    /// Keeps `info` among the peers tried when no root answers (bounded; a newcomer replaces
    /// a random one when full).
    fn remember_peer(&mut self, info: NodeInfo) {
        if info.addr == self.config.addr || info.id == 0 {
            return;
        }
        if let Some(known) = self.cached_peers.iter_mut().find(|p| p.addr == info.addr) {
            *known = info;
        } else if self.cached_peers.len() < CACHED_PEERS_MAX {
            self.cached_peers.push(info);
        } else {
            let at = (self.rng.next_u64() % CACHED_PEERS_MAX as u64) as usize;
            self.cached_peers[at] = info;
        }
    }

    /// Pings each candidate, to measure them (for joining or for rebalance).
    fn ping_candidates(&mut self, candidates: Vec<NodeInfo>, now_ms: u64) {
        self.candidates.clear();
        let me = self.info();
        for info in candidates {
            let nonce = self.rng.next_u64();
            self.candidates.push(Candidate {
                info,
                nonce,
                sent_ms: now_ms,
                rtt_ms: None,
            });
            self.send(info.addr, Message::Ping { nonce, info: me });
        }
    }

    /// Records a pong's round trip; true once every candidate has answered.
    fn record_pong(&mut self, nonce: u64, info: NodeInfo, now_ms: u64) -> bool {
        if let Some(c) = self.candidates.iter_mut().find(|c| c.nonce == nonce) {
            c.rtt_ms = Some(now_ms.saturating_sub(c.sent_ms));
            c.info = info;
        }
        self.candidates.iter().all(|c| c.rtt_ms.is_some())
    }

    fn probe(&mut self, candidates: Vec<NodeInfo>, now_ms: u64) {
        self.ping_candidates(candidates, now_ms);
        self.phase = Phase::Probing {
            deadline_ms: now_ms + self.config.cluster.probe_timeout_ms,
        };
        if self.candidates.is_empty() {
            self.choose_parent(now_ms);
        }
    }

    fn on_pong(&mut self, nonce: u64, info: NodeInfo, now_ms: u64) {
        if self.rebalance.is_some() {
            return self.on_rebalance_pong(nonce, info, now_ms);
        }
        if !matches!(self.phase, Phase::Probing { .. }) {
            return;
        }
        if self.record_pong(nonce, info, now_ms) {
            self.choose_parent(now_ms);
        }
    }

    /// Ranks measured candidates: the deepest layer with room first, the closest within it.
    fn choose_parent(&mut self, now_ms: u64) {
        let mut measured: Vec<(u8, u64, NodeInfo)> = self
            .candidates
            .drain(..)
            .filter_map(|c| Some((c.info.role?.depth(), c.rtt_ms?, c.info)))
            .filter(|(_, _, info)| info.has_room())
            .filter(|(_, _, info)| !self.failover || info.addr < self.config.addr)
            // A node that keeps children must not become a leaf, which takes none.
            .filter(|(_, _, info)| {
                self.children.is_empty()
                    || info
                        .role
                        .and_then(Role::child)
                        .and_then(Role::child)
                        .is_some()
            })
            .collect();
        measured.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.id.cmp(&b.2.id)));
        self.ranked = measured
            .into_iter()
            .map(|(_, _, info)| info)
            .rev()
            .collect();
        self.attach_next(now_ms);
    }

    fn attach_next(&mut self, now_ms: u64) {
        match self.ranked.pop() {
            Some(info) => {
                self.phase = Phase::Attaching {
                    to: info.addr,
                    deadline_ms: now_ms + self.config.cluster.reply_timeout_ms,
                };
                let me = self.info();
                self.send(info.addr, Message::Attach { info: me });
            }
            // Nobody with room answered: ask the roots again, after a pause.
            None => {
                self.phase = Phase::Backoff {
                    until_ms: now_ms + self.config.cluster.rejoin_backoff_ms,
                };
            }
        }
    }

    fn on_attach(&mut self, from: SocketAddr, info: NodeInfo, now_ms: u64) {
        let me = self.info();
        let known = self.children.contains_key(&from);
        // Never take an ancestor as a child: that would close a cycle.
        let ancestor = self.path.contains(&info.id)
            || self.parent.as_ref().is_some_and(|p| p.info.addr == from);
        // Cut off from every root, a node that kept its role tops an interim tree: it takes
        // children at higher addresses (they attach only downwards in address then).
        let interim_top = !self.is_attached()
            && self.phase != Phase::Gone
            && self.role.is_some_and(|r| r != Role::Root)
            && from > self.config.addr;
        let accepted = (self.is_attached() || interim_top) && !ancestor && (known || me.has_room());
        if accepted {
            self.children.insert(
                from,
                Link {
                    info,
                    last_heard_ms: now_ms,
                    open_children: Vec::new(),
                },
            );
        }
        let info = self.info();
        let path = self.path_for_children();
        self.send(
            from,
            Message::AttachReply {
                accepted,
                info,
                path,
            },
        );
    }

    /// Whether taking `from` (which sent `path`) as our parent would close a cycle: it is one
    /// of our children, or we are among its ancestors.
    fn would_cycle(&self, from: SocketAddr, path: &[u64]) -> bool {
        path.contains(&self.config.id) || self.children.contains_key(&from)
    }

    /// The path a child inherits: our ancestors, then us.
    fn path_for_children(&self) -> Vec<u64> {
        let mut path = self.path.clone();
        path.push(self.config.id);
        path
    }

    fn on_attach_reply(
        &mut self,
        from: SocketAddr,
        accepted: bool,
        info: NodeInfo,
        path: Vec<u64>,
        now_ms: u64,
    ) {
        if self.rebalance.is_some() && self.phase == Phase::Attached {
            return self.on_rebalance_reply(from, accepted, info, path, now_ms);
        }
        let Phase::Attaching { to, .. } = self.phase else {
            return;
        };
        if to != from {
            return;
        }
        let role = info.role.and_then(Role::child);
        // Below one of our own descendants would be a cycle.
        let cycle = self.would_cycle(from, &path);
        match (accepted, role) {
            (true, Some(role)) if !cycle => {
                self.role = Some(role);
                self.path = path;
                self.tell_children(now_ms);
                self.parent = Some(Link {
                    info,
                    last_heard_ms: now_ms,
                    open_children: Vec::new(),
                });
                self.phase = Phase::Attached;
                self.failover = false;
                self.parent_rtt_ms = None;
                self.schedule_rebalance(now_ms);
                self.counters.attaches += 1;
                self.next_heartbeat_ms = now_ms;
                self.ranked.clear();
                if self.attached_before {
                    // We hold data already: sync the difference, not a full dump.
                    self.open_round(from, now_ms, true);
                    return;
                }
                self.attached_before = true;
                // Take a full dump from the new parent before anything else.
                self.dump = Some(DumpProgress {
                    from,
                    cursor: 0,
                    deadline_ms: now_ms + self.config.cluster.reply_timeout_ms,
                    retries: 0,
                });
                self.send(from, Message::DumpRequest { cursor: 0 });
            }
            (true, _) => {
                // Accepted by a node that cannot be our parent: undo and try the next.
                let me = self.info();
                self.send(from, Message::Leave { info: me });
                self.attach_next(now_ms);
            }
            (false, _) => self.attach_next(now_ms),
        }
    }

    // --- dumps ---------------------------------------------------------------------------

    fn on_dump_chunk(
        &mut self,
        from: SocketAddr,
        entries: Vec<Entry>,
        next: Option<u64>,
        now_ms: u64,
    ) {
        let Some(dump) = &mut self.dump else { return };
        if dump.from != from {
            return;
        }
        // The next chunk is asked for once this one is applied: a slow store slows the dump,
        // never the other way round.
        dump.deadline_ms = now_ms + self.config.cluster.reply_timeout_ms;
        self.apply_all(from, entries, Source::Dump { next }, now_ms);
    }

    /// A dump chunk from `from` is in the store: ask for the next, or finish.
    fn dump_chunk_applied(&mut self, from: SocketAddr, next: Option<u64>, now_ms: u64) {
        if self.dump.as_ref().is_none_or(|d| d.from != from) {
            return;
        }
        match next {
            Some(cursor) => {
                self.dump = Some(DumpProgress {
                    from,
                    cursor,
                    deadline_ms: now_ms + self.config.cluster.reply_timeout_ms,
                    retries: 0,
                });
                self.send(from, Message::DumpRequest { cursor });
            }
            None => {
                self.dump = None;
                self.counters.dumps_completed += 1;
            }
        }
    }

    /// The dump's peer is gone: start over from another (the cursor is the old peer's own).
    fn restart_dump(&mut self, now_ms: u64) {
        let Some(dump) = self.dump.take() else { return };
        let next = self
            .parent
            .as_ref()
            .map(|p| p.info.addr)
            .filter(|&a| a != dump.from)
            .or_else(|| self.children.keys().copied().find(|&a| a != dump.from));
        if let Some(from) = next {
            self.dump = Some(DumpProgress {
                from,
                cursor: 0,
                deadline_ms: now_ms + self.config.cluster.reply_timeout_ms,
                retries: 0,
            });
            self.send(from, Message::DumpRequest { cursor: 0 });
        }
    }

    /// A dump chunk did not come in time: ask again, or move to another peer.
    fn dump_timed_out(&mut self, now_ms: u64) {
        let timeout_ms = self.config.cluster.reply_timeout_ms;
        let Some(dump) = &mut self.dump else { return };
        if dump.retries >= DUMP_RETRIES_MAX {
            return self.restart_dump(now_ms);
        }
        dump.retries += 1;
        dump.deadline_ms = now_ms + timeout_ms;
        let (from, cursor) = (dump.from, dump.cursor);
        self.send(from, Message::DumpRequest { cursor });
    }

    // --- heartbeats and healing ------------------------------------------------------------

    fn on_heartbeat(
        &mut self,
        from: SocketAddr,
        info: NodeInfo,
        mut open_children: Vec<NodeInfo>,
        now_ms: u64,
    ) {
        open_children.truncate(OPEN_CHILDREN_PER_HEARTBEAT_MAX);
        let is_child = match self.children.get_mut(&from) {
            Some(link) => {
                link.info = info;
                link.last_heard_ms = now_ms;
                link.open_children = open_children;
                true
            }
            None => false,
        };
        if let Some(link) = self.root_peers.get_mut(&from) {
            link.info = info;
            link.last_heard_ms = now_ms;
        }
        let me = self.info();
        let path = self.path_for_children();
        let peers = self.peer_sample(from);
        self.send(
            from,
            Message::HeartbeatReply {
                info: me,
                is_child,
                path,
                peers,
            },
        );
    }

    /// A few nodes we know, for `to` to remember (never `to` itself): other children, and
    /// peers met before. Spread this way, peer knowledge lets nodes cut off from every root
    /// find each other.
    fn peer_sample(&mut self, to: SocketAddr) -> Vec<NodeInfo> {
        let known: Vec<NodeInfo> = self
            .children
            .values()
            .map(|l| l.info)
            .chain(self.cached_peers.iter().copied())
            .filter(|i| i.addr != to && i.id != 0)
            .collect();
        let mut sample = Vec::with_capacity(PEERS_PER_HEARTBEAT_REPLY);
        for _ in 0..PEERS_PER_HEARTBEAT_REPLY.min(known.len()) {
            let pick = known[(self.rng.next_u64() % known.len() as u64) as usize];
            if !sample.iter().any(|s: &NodeInfo| s.addr == pick.addr) {
                sample.push(pick);
            }
        }
        sample
    }

    fn on_heartbeat_reply(
        &mut self,
        from: SocketAddr,
        info: NodeInfo,
        is_child: bool,
        path: Vec<u64>,
        now_ms: u64,
    ) {
        if let Some(link) = self.root_peers.get_mut(&from) {
            link.info = info;
            link.last_heard_ms = now_ms;
            return;
        }
        let Some(parent) = &mut self.parent else {
            return;
        };
        if parent.info.addr != from {
            return;
        }
        parent.info = info;
        parent.last_heard_ms = now_ms;
        // Only a reply to our heartbeat measures the distance (not an unsolicited update).
        if let Some(sent_ms) = self.heartbeat_sent_ms.take() {
            let sample = now_ms.saturating_sub(sent_ms);
            self.parent_rtt_ms = Some(match self.parent_rtt_ms {
                Some(rtt) => (3 * rtt + sample) / 4,
                None => sample,
            });
        }
        match info.role.and_then(Role::child) {
            // The parent forgot us, can no longer take children, or sits below us: find another.
            None => self.lose_parent(now_ms),
            _ if !is_child || path.contains(&self.config.id) => self.lose_parent(now_ms),
            Some(role) => {
                let changed = self.role != Some(role) || self.path != path;
                self.role = Some(role);
                self.path = path;
                if changed {
                    self.tell_children(now_ms);
                }
            }
        }
    }

    /// Tells every child our new role and path at once (as a heartbeat reply would), so a
    /// subtree under a node that moved re-checks its place now, not a heartbeat later.
    fn tell_children(&mut self, _now_ms: u64) {
        let info = self.info();
        let path = self.path_for_children();
        let children: Vec<SocketAddr> = self.children.keys().copied().collect();
        for child in children {
            let msg = Message::HeartbeatReply {
                info,
                is_child: true,
                path: path.clone(),
                peers: Vec::new(),
            };
            self.send(child, msg);
        }
    }

    fn lose_parent(&mut self, now_ms: u64) {
        self.counters.parent_losses += 1;
        if let Some(parent) = self.parent.take() {
            if self
                .dump
                .as_ref()
                .is_some_and(|d| d.from == parent.info.addr)
            {
                self.restart_dump(now_ms);
            }
        }
        // The role stays while we rejoin: our children keep their place under us (a subtree
        // moves whole); the next parent decides the role, and the children hear it at once.
        self.path.clear();
        self.start_join(now_ms);
    }

    fn on_leave(&mut self, from: SocketAddr, now_ms: u64) {
        if self.children.remove(&from).is_some() {
            return;
        }
        if self.parent.as_ref().is_some_and(|p| p.info.addr == from) {
            self.lose_parent(now_ms);
        }
    }

    fn on_unreachable(&mut self, addr: SocketAddr, now_ms: u64) {
        self.children.remove(&addr);
        if self.dump.as_ref().is_some_and(|d| d.from == addr) {
            self.restart_dump(now_ms);
        }
        match self.phase {
            Phase::Joining { root, .. } if self.roots.get(root) == Some(&addr) => {
                self.next_root(now_ms)
            }
            Phase::Attaching { to, .. } if to == addr => self.attach_next(now_ms),
            Phase::Probing { .. } => {
                self.candidates.retain(|c| c.info.addr != addr);
                if self.candidates.iter().all(|c| c.rtt_ms.is_some()) {
                    self.choose_parent(now_ms);
                }
            }
            _ => {}
        }
        if self.parent.as_ref().is_some_and(|p| p.info.addr == addr) {
            self.lose_parent(now_ms);
        }
    }

    fn leave(&mut self) {
        let me = self.info();
        for to in self.neighbours() {
            self.send(to, Message::Leave { info: me });
        }
        self.parent = None;
        self.children.clear();
        self.phase = Phase::Gone;
    }

    fn on_tick(&mut self, now_ms: u64) {
        match self.phase {
            Phase::Backoff { until_ms } if now_ms >= until_ms => self.start_join(now_ms),
            Phase::Joining { deadline_ms, .. } if now_ms >= deadline_ms => self.next_root(now_ms),
            Phase::Probing { deadline_ms } if now_ms >= deadline_ms => self.choose_parent(now_ms),
            Phase::Attaching { deadline_ms, .. } if now_ms >= deadline_ms => {
                self.attach_next(now_ms)
            }
            _ => {}
        }
        if self.dump.as_ref().is_some_and(|d| now_ms >= d.deadline_ms) {
            self.dump_timed_out(now_ms);
        }
        if now_ms >= self.next_heartbeat_ms {
            self.heartbeat(now_ms);
        }
        if now_ms >= self.next_sync_ms {
            self.start_sync(now_ms);
        }
        self.expire_pulls(now_ms);
        self.expire_copies(now_ms);
        self.rebalance_tick(now_ms);
    }

    fn heartbeat(&mut self, now_ms: u64) {
        let cluster = &self.config.cluster;
        self.next_heartbeat_ms = now_ms + cluster.heartbeat_interval_ms;
        let silence_max_ms = cluster.heartbeat_interval_ms * cluster.heartbeat_misses_max;
        // Children that stopped talking are gone.
        self.children
            .retain(|_, link| now_ms.saturating_sub(link.last_heard_ms) <= silence_max_ms);
        let parent_silent = self
            .parent
            .as_ref()
            .is_some_and(|p| now_ms.saturating_sub(p.last_heard_ms) > silence_max_ms);
        if parent_silent {
            self.lose_parent(now_ms);
        }
        let me = self.info();
        let open_children: Vec<NodeInfo> = self
            .children
            .values()
            .map(|l| l.info)
            .filter(NodeInfo::has_room)
            .take(OPEN_CHILDREN_PER_HEARTBEAT_MAX)
            .collect();
        let mut to: Vec<SocketAddr> = self.parent.iter().map(|p| p.info.addr).collect();
        to.extend(self.root_peers.keys().copied());
        if self.parent.is_some() {
            self.heartbeat_sent_ms = Some(now_ms);
        }
        for addr in to {
            let msg = Message::Heartbeat {
                info: me,
                open_children: open_children.clone(),
            };
            self.send(addr, msg);
        }
    }
}
