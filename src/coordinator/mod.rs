//! The coordinator: runs this node's side of the peer protocol (a `repram_cluster::Node`) with
//! the real clock, over real TCP, and in front of the shards.
//!
//! It lives on shard 0's executor in a task queue of its own with a small share, so client
//! traffic on that core always comes first. It owns the peer listener and links, the cluster
//! node, and the fan-out of the node's store requests to the shards (each entry to the shard
//! that owns its key; digests, hashes and filters to every shard, merged). It never touches a
//! store: shards answer it over channels ([`ToShard`], [`FromShard`]).

mod links;
pub mod sealed;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ahash::AHashMap;
use glommio::net::TcpListener;
use glommio::{Latency, Shares};
use repram_cluster::message::{Message, PEER_PROTOCOL_MAJOR};
use repram_cluster::sync::{BucketDigest, CheckedFilter};
use repram_cluster::{
    ClusterConfig, Entry, Input, Node, NodeConfig, Output, StoreReply, StoreRequest,
};

use zeroize::Zeroizing;

use crate::node::shard::{respond, shard_of_conn, ConnId};
use crate::store::OwnedEntry;
use crate::wire::peer::{PeerHello, PeerLimits};
use crate::wire::shard_of;
use crate::wire::NetworkStats;
use crate::wire::{OpKind, PeerView, Reply, TopologyInfo};

use self::links::{LinkEvent, PeerLinks};

/// The coordinator stops reading peers while this many store requests wait on shards...
const STORE_REQUESTS_PENDING_MAX: usize = 4_096;
/// ...or while their entries come to this many bytes (a peer pushing faster than the shards
/// seal is held to this, not to thousands of requests of any size).
const STORE_BYTES_PENDING_MAX: usize = 8 * 1024 * 1024;
/// The longest the coordinator sleeps between looks at the node's timers.
const TICK_MAX: Duration = Duration::from_millis(20);
/// The share of shard 0's core the coordinator's task queue gets against client traffic's
/// default 1000.
const COORDINATOR_SHARES: usize = 100;
/// Bits of a dump cursor that hold the position within one shard; the shard is above them.
const DUMP_CURSOR_SHARD_SHIFT: u32 = 48;

/// The coordinator's counters, published for Stats on any shard (plain atomics written by the
/// coordinator and by shards' hand-over tasks: no lock is shared).
#[derive(Default)]
pub(crate) struct NetworkCounters {
    role: AtomicU64,
    children: AtomicU64,
    joins: AtomicU64,
    attaches: AtomicU64,
    parent_losses: AtomicU64,
    rebalances: AtomicU64,
    dumps_completed: AtomicU64,
    dumping: AtomicU64,
    sync_rounds: AtomicU64,
    sync_rounds_in_sync: AtomicU64,
    entries_received: AtomicU64,
    entries_already_held: AtomicU64,
    sync_entries_received: AtomicU64,
    dump_entries_received: AtomicU64,
    entries_sent: AtomicU64,
    pub(crate) writes_pushed: AtomicU64,
    pub(crate) writes_not_pushed: AtomicU64,
    /// 1 while the node has a tree neighbour to push writes to (`Node::has_neighbours`).
    pub(crate) neighbours: AtomicU64,
    pulls_hit: AtomicU64,
    pulls_missed: AtomicU64,
    writes_copied: AtomicU64,
    writes_copies_timed_out: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    peer_frames_refused: AtomicU64,
    peer_handshakes_failed: AtomicU64,
    peers_cut_off: AtomicU64,
    peer_messages_refused: AtomicU64,
    peer_entries_shed: AtomicU64,
    bytes_sent_by_kind: [AtomicU64; Message::KINDS.len()],
    bytes_received_by_kind: [AtomicU64; Message::KINDS.len()],
}

impl NetworkCounters {
    pub(crate) fn snapshot(&self) -> NetworkStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NetworkStats {
            role: u8::try_from(get(&self.role)).unwrap_or(u8::MAX),
            children: get(&self.children),
            joins: get(&self.joins),
            attaches: get(&self.attaches),
            parent_losses: get(&self.parent_losses),
            rebalances: get(&self.rebalances),
            dumps_completed: get(&self.dumps_completed),
            dumping: get(&self.dumping),
            sync_rounds: get(&self.sync_rounds),
            sync_rounds_in_sync: get(&self.sync_rounds_in_sync),
            entries_received: get(&self.entries_received),
            entries_already_held: get(&self.entries_already_held),
            sync_entries_received: get(&self.sync_entries_received),
            dump_entries_received: get(&self.dump_entries_received),
            entries_sent: get(&self.entries_sent),
            writes_pushed: get(&self.writes_pushed),
            writes_not_pushed: get(&self.writes_not_pushed),
            pulls_hit: get(&self.pulls_hit),
            pulls_missed: get(&self.pulls_missed),
            writes_copied: get(&self.writes_copied),
            writes_copies_timed_out: get(&self.writes_copies_timed_out),
            bytes_sent: get(&self.bytes_sent),
            bytes_received: get(&self.bytes_received),
            peer_frames_refused: get(&self.peer_frames_refused),
            peer_handshakes_failed: get(&self.peer_handshakes_failed),
            peers_cut_off: get(&self.peers_cut_off),
            peer_messages_refused: get(&self.peer_messages_refused),
            peer_entries_shed: get(&self.peer_entries_shed),
            bytes_sent_by_kind: self.bytes_sent_by_kind.iter().map(get).collect(),
            bytes_received_by_kind: self.bytes_received_by_kind.iter().map(get).collect(),
        }
    }
}

/// What the coordinator asks a shard.
pub(crate) enum ToShard {
    Store {
        ticket: u64,
        request: ShardStoreRequest,
    },
    /// One encoded response for connection `conn` of this shard (the answer to a read the
    /// network was asked for).
    Responses {
        conn: ConnId,
        responses: Zeroizing<Vec<u8>>,
        /// The client op it answers and when its read came in, for the op's latency.
        timed: Option<TimedOp>,
    },
}

/// A client op answered by the network: which, and when the read that brought it returned.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TimedOp {
    pub op: OpKind,
    pub read_at: std::time::Instant,
}

/// A client's write, on its way from its shard to the network.
pub(crate) struct LocalWrite {
    pub entry: OwnedEntry,
    /// Set when the client waits for copies: the coordinator answers it.
    pub waiter: Option<CopiesWaiter>,
}

/// A client's Put waiting for `copies` nodes to hold it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CopiesWaiter {
    pub conn: ConnId,
    pub request_id: u64,
    pub copies: u8,
    pub read_at: std::time::Instant,
}

/// A store request for one shard (owned and `Send`: it crosses threads).
pub(crate) enum ShardStoreRequest {
    /// Entries this shard owns, with their positions in the node's request.
    Apply {
        entries: Vec<OwnedEntry>,
        positions: Vec<u32>,
    },
    Digests {
        from_bucket: u64,
        settled_before_ms: u64,
    },
    BucketHashes {
        buckets: Vec<u64>,
        settled_before_ms: u64,
    },
    Lacking {
        filters: Vec<(u64, Arc<CheckedFilter>)>,
        round_seed: u64,
        settled_before_ms: u64,
        max: usize,
        max_bytes: usize,
    },
    Get {
        key: Vec<u8>,
    },
    DumpChunk {
        cursor: u64,
        max: usize,
    },
}

/// What a shard tells the coordinator.
pub(crate) enum FromShard {
    /// Writes made by clients on this shard, to push to the network.
    LocalWrites(Vec<LocalWrite>),
    /// A client asks for the tree as this node sees it.
    Topology {
        conn: ConnId,
        request_id: u64,
    },
    /// A client's read of `key` missed on its owner shard: pull it from peers and answer
    /// request `request_id` of connection `conn` (on the shard its id names).
    Pull {
        key: Vec<u8>,
        conn: ConnId,
        request_id: u64,
        read_at: std::time::Instant,
    },
    Store {
        ticket: u64,
        reply: ShardStoreReply,
    },
}

pub(crate) enum ShardStoreReply {
    /// Positions (in the node's request) of the entries stored.
    Applied {
        stored: Vec<u32>,
        stale: u64,
        full: bool,
    },
    Digests(Vec<BucketDigest>),
    BucketHashes(Vec<Vec<u64>>),
    Lacking(Vec<OwnedEntry>),
    Entry(Option<OwnedEntry>),
    DumpChunk {
        entries: Vec<OwnedEntry>,
        next: Option<u64>,
    },
}

/// A node store request waiting on its shards' replies.
enum Gather {
    Apply {
        entries: Vec<Entry>,
        remaining: usize,
        stored: Vec<u32>,
        stale: u64,
        full: bool,
    },
    Digests {
        remaining: usize,
        sums: BTreeMap<u64, (u32, u64)>,
    },
    BucketHashes {
        remaining: usize,
        hashes: Vec<Vec<u64>>,
    },
    Lacking {
        remaining: usize,
        max: usize,
        max_bytes: usize,
        bytes: usize,
        entries: Vec<Entry>,
    },
    Get,
    Dump {
        shard: u32,
    },
}

/// How the coordinator is set up.
pub(crate) struct CoordinatorPlan {
    pub node_id: u64,
    pub hash_seed: u64,
    pub listener: std::net::TcpListener,
    pub advertise: SocketAddr,
    pub roots: Vec<SocketAddr>,
    pub seed: u64,
    pub to_shards: Vec<flume::Sender<ToShard>>,
    pub from_shards: flume::Receiver<FromShard>,
    pub counters: Arc<NetworkCounters>,
    pub write_timeout: Duration,
    pub rebalance_interval: Duration,
    pub heartbeat_interval: Duration,
    /// A private network's keys; `None`: open peer links.
    pub keys: Option<Arc<sealed::ClusterKeys>>,
}

pub(crate) struct Coordinator {
    node: RefCell<Node>,
    links: Rc<PeerLinks>,
    to_shards: Vec<flume::Sender<ToShard>>,
    hash_seed: u64,
    gathers: RefCell<AHashMap<u64, Gather>>,
    last_now_ms: Cell<u64>,
    counters: Arc<NetworkCounters>,
    /// Clients' reads waiting on a pull, and writes waiting for copies, by the node's
    /// request number.
    pulls: RefCell<AHashMap<u64, PullWaiter>>,
    writes: RefCell<AHashMap<u64, WriteWaiter>>,
    next_request: Cell<u64>,
    write_timeout_ms: u64,
}

/// The client write a `WriteDone` answers.
struct WriteWaiter {
    waiter: CopiesWaiter,
    version: repram_cluster::Version,
    expires_ms: u64,
}

/// The client read a pull answers.
struct PullWaiter {
    conn: ConnId,
    request_id: u64,
    read_at: std::time::Instant,
}

impl Coordinator {
    /// Starts the coordinator's tasks on the current executor (shard 0's), in a task queue of
    /// their own.
    pub(crate) fn start(plan: CoordinatorPlan) -> Result<Rc<Coordinator>, String> {
        use std::os::fd::{FromRawFd, IntoRawFd};
        let queue = glommio::executor().create_task_queue(
            Shares::Static(COORDINATOR_SHARES),
            Latency::NotImportant,
            "coordinator",
        );
        let is_root = plan.roots.is_empty() || plan.roots.contains(&plan.advertise);
        let config = NodeConfig {
            id: plan.node_id,
            addr: plan.advertise,
            roots: plan.roots,
            is_root,
            cluster: ClusterConfig {
                rebalance_interval_ms: u64::try_from(plan.rebalance_interval.as_millis())
                    .unwrap_or(u64::MAX),
                heartbeat_interval_ms: u64::try_from(plan.heartbeat_interval.as_millis())
                    .unwrap_or(u64::MAX),
                ..ClusterConfig::default()
            },
        };
        let now = wall_ms();
        let node = Node::new(config, plan.seed, now);
        let hello = PeerHello {
            major: PEER_PROTOCOL_MAJOR,
            node_id: plan.node_id,
            addr: plan.advertise,
        };
        let (links, events) = PeerLinks::new(hello, PeerLimits::default(), plan.keys.clone());
        let coordinator = Rc::new(Coordinator {
            node: RefCell::new(node),
            links: links.clone(),
            to_shards: plan.to_shards,
            hash_seed: plan.hash_seed,
            gathers: RefCell::new(AHashMap::new()),
            last_now_ms: Cell::new(now),
            counters: plan.counters,
            pulls: RefCell::new(AHashMap::new()),
            writes: RefCell::new(AHashMap::new()),
            next_request: Cell::new(0),
            write_timeout_ms: u64::try_from(plan.write_timeout.as_millis()).unwrap_or(u64::MAX),
        });
        // SAFETY: the descriptor comes from `into_raw_fd` of a socket we bound and put in
        // listening mode; ownership moves to glommio's listener, which alone closes it.
        let listener = unsafe { TcpListener::from_raw_fd(plan.listener.into_raw_fd()) };
        let spawn = |future: std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>| {
            glommio::spawn_local_into(future, queue)
                .map(|task| task.detach())
                .map_err(|e| e.to_string())
        };
        spawn(Box::pin(links.accept(listener)))?;
        spawn(Box::pin(coordinator.clone().take_link_events(events)))?;
        spawn(Box::pin(
            coordinator.clone().take_shard_messages(plan.from_shards),
        ))?;
        spawn(Box::pin(coordinator.clone().tick()))?;
        spawn(Box::pin(coordinator.clone().log_footprint()))?;
        tracing::info!(peer = %plan.advertise, root = is_root, "coordinator running");
        Ok(coordinator)
    }

    /// Wall-clock milliseconds, never earlier than before.
    fn now_ms(&self) -> u64 {
        let now = wall_ms().max(self.last_now_ms.get());
        self.last_now_ms.set(now);
        now
    }

    /// Feeds the node one input and carries out what it asks.
    fn handle(&self, input: Input) {
        let now = self.now_ms();
        self.node.borrow_mut().handle(input, now);
        self.carry_out();
        self.publish();
    }

    /// Leaves the network gracefully: the node tells its parent and children (who re-attach at
    /// once instead of waiting for missed heartbeats), and the goodbyes are written, waiting
    /// `within` at most.
    pub(crate) async fn leave(&self, within: Duration) {
        self.handle(Input::Leave);
        self.links.flushed(within).await;
    }

    /// Copies the node's and the links' counters where Stats on any shard reads them.
    fn publish(&self) {
        let node = self.node.borrow();
        let c = node.counters();
        let out = &self.counters;
        let set = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        set(&out.role, node.role().map_or(255, |r| u64::from(r.depth())));
        set(&out.children, node.children().count() as u64);
        set(&out.neighbours, u64::from(node.has_neighbours()));
        set(&out.joins, c.joins);
        set(&out.attaches, c.attaches);
        set(&out.parent_losses, c.parent_losses);
        set(&out.rebalances, c.rebalances);
        set(&out.dumps_completed, c.dumps_completed);
        set(&out.dumping, u64::from(node.is_dumping()));
        set(&out.sync_rounds, c.sync_rounds);
        set(&out.sync_rounds_in_sync, c.sync_rounds_in_sync);
        set(&out.entries_received, c.entries_applied);
        set(&out.entries_already_held, c.entries_stale);
        set(&out.sync_entries_received, c.sync_entries_applied);
        set(&out.dump_entries_received, c.dump_entries_applied);
        set(&out.entries_sent, c.entries_sent);
        set(&out.pulls_hit, c.pulls_hit);
        set(&out.pulls_missed, c.pulls_missed);
        set(&out.writes_copied, c.writes_copied);
        set(&out.writes_copies_timed_out, c.writes_copies_timed_out);
        set(
            &out.peer_messages_refused,
            c.messages_refused + c.entries_refused,
        );
        let links = &self.links.counters;
        set(&out.bytes_sent, links.bytes_sent.get());
        set(&out.bytes_received, links.bytes_received.get());
        set(&out.peer_frames_refused, links.frames_refused.get());
        set(&out.peer_handshakes_failed, links.handshakes_failed.get());
        set(&out.peers_cut_off, links.peers_cut_off.get());
        set(&out.peer_entries_shed, links.entries_shed.get());
        for (out, links) in out.bytes_sent_by_kind.iter().zip(&links.bytes_sent_by_kind) {
            set(out, links.get());
        }
        for (out, links) in out
            .bytes_received_by_kind
            .iter()
            .zip(&links.bytes_received_by_kind)
        {
            set(out, links.get());
        }
    }

    fn carry_out(&self) {
        loop {
            let Some(output) = self.node.borrow_mut().poll_output() else {
                return;
            };
            match output {
                Output::Send { to, msg } => self.links.send(to, &msg),
                Output::Store { ticket, request } => self.ask_shards(ticket, request),
                Output::PullDone { request, entry } => self.answer_pull(request, entry),
                Output::WriteDone {
                    request,
                    holders,
                    complete,
                } => self.answer_write(request, holders, complete),
            }
        }
    }

    async fn take_link_events(
        self: Rc<Self>,
        events: glommio::channels::local_channel::LocalReceiver<LinkEvent>,
    ) {
        while let Some(event) = events.recv().await {
            while self.node.borrow().store_requests_pending() > STORE_REQUESTS_PENDING_MAX
                || self.node.borrow().store_bytes_pending() > STORE_BYTES_PENDING_MAX
            {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            match event {
                LinkEvent::Message { from, msg } => self.handle(Input::Message { from, msg }),
                LinkEvent::Unreachable { addr } => self.handle(Input::Unreachable { addr }),
            }
            glommio::yield_if_needed().await;
        }
    }

    async fn take_shard_messages(self: Rc<Self>, messages: flume::Receiver<FromShard>) {
        while let Ok(message) = messages.recv_async().await {
            match message {
                FromShard::LocalWrites(writes) => {
                    for write in writes {
                        self.local_write(write);
                    }
                }
                FromShard::Store { ticket, reply } => self.gathered(ticket, reply),
                FromShard::Topology { conn, request_id } => self.answer_topology(conn, request_id),
                FromShard::Pull {
                    key,
                    conn,
                    request_id,
                    read_at,
                } => {
                    let request = self.next_request.get();
                    self.next_request.set(request + 1);
                    let waiter = PullWaiter {
                        conn,
                        request_id,
                        read_at,
                    };
                    self.pulls.borrow_mut().insert(request, waiter);
                    self.handle(Input::LocalMiss {
                        request,
                        key: key.into(),
                    });
                }
            }
            glommio::yield_if_needed().await;
        }
    }

    /// Every 10 s at debug level: how many items each collection holds (the node's, the
    /// links' queues, the waiting clients', the shard channels'), to find what grows.
    async fn log_footprint(self: Rc<Self>) {
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        loop {
            glommio::timer::sleep(Duration::from_secs(10)).await;
            let node = self.node.borrow().footprint();
            let (links, queued_bytes) = self.links.queued();
            let to_shards: usize = self.to_shards.iter().map(flume::Sender::len).sum();
            tracing::debug!(
                ?node,
                links,
                queued_bytes,
                gathers = self.gathers.borrow().len(),
                pulls = self.pulls.borrow().len(),
                writes = self.writes.borrow().len(),
                to_shards,
                heap_live = crate::heap::live_bytes(),
                resident = crate::heap::resident_bytes(),
                "footprint"
            );
        }
    }

    /// Ticks the node when its next timer is due.
    async fn tick(self: Rc<Self>) {
        loop {
            let now = self.now_ms();
            let due = self.node.borrow().next_wake_ms();
            if due <= now {
                self.handle(Input::Tick);
                continue;
            }
            let wait = Duration::from_millis(due - now).min(TICK_MAX);
            glommio::timer::sleep(wait).await;
        }
    }

    /// Sends a node store request to the shards that hold its answer.
    fn ask_shards(&self, ticket: u64, request: StoreRequest) {
        let shards = self.to_shards.len();
        let everyone = |make: &dyn Fn() -> ShardStoreRequest| {
            for shard in &self.to_shards {
                let _ = shard.send(ToShard::Store {
                    ticket,
                    request: make(),
                });
            }
        };
        let gather = match request {
            StoreRequest::Apply { entries } => {
                let mut parts: Vec<(Vec<OwnedEntry>, Vec<u32>)> =
                    (0..shards).map(|_| Default::default()).collect();
                for (at, entry) in entries.iter().enumerate() {
                    let owner = shard_of(&entry.key, self.hash_seed, shards as u32) as usize;
                    parts[owner].0.push(OwnedEntry::of(entry));
                    parts[owner].1.push(at as u32);
                }
                let mut remaining = 0;
                for (shard, (owned, positions)) in parts.into_iter().enumerate() {
                    if owned.is_empty() {
                        continue;
                    }
                    remaining += 1;
                    let _ = self.to_shards[shard].send(ToShard::Store {
                        ticket,
                        request: ShardStoreRequest::Apply {
                            entries: owned,
                            positions,
                        },
                    });
                }
                Gather::Apply {
                    entries,
                    remaining,
                    stored: Vec::new(),
                    stale: 0,
                    full: false,
                }
            }
            StoreRequest::Digests {
                from_bucket,
                settled_before_ms,
            } => {
                everyone(&|| ShardStoreRequest::Digests {
                    from_bucket,
                    settled_before_ms,
                });
                Gather::Digests {
                    remaining: shards,
                    sums: BTreeMap::new(),
                }
            }
            StoreRequest::BucketHashes {
                buckets,
                settled_before_ms,
            } => {
                let count = buckets.len();
                everyone(&|| ShardStoreRequest::BucketHashes {
                    buckets: buckets.clone(),
                    settled_before_ms,
                });
                Gather::BucketHashes {
                    remaining: shards,
                    hashes: vec![Vec::new(); count],
                }
            }
            StoreRequest::Lacking {
                mut filters,
                round_seed,
                settled_before_ms,
                max,
                max_bytes,
            } => {
                filters.sort_by_key(|(bucket, _)| *bucket);
                everyone(&|| ShardStoreRequest::Lacking {
                    filters: filters.clone(),
                    round_seed,
                    settled_before_ms,
                    max,
                    max_bytes,
                });
                Gather::Lacking {
                    remaining: shards,
                    max,
                    max_bytes,
                    bytes: 0,
                    entries: Vec::new(),
                }
            }
            StoreRequest::Get { key } => {
                let owner = shard_of(&key, self.hash_seed, shards as u32) as usize;
                let _ = self.to_shards[owner].send(ToShard::Store {
                    ticket,
                    request: ShardStoreRequest::Get { key: key.to_vec() },
                });
                Gather::Get
            }
            StoreRequest::DumpChunk { cursor, max } => {
                let shard = (cursor >> DUMP_CURSOR_SHARD_SHIFT) as u32;
                let at = cursor & ((1 << DUMP_CURSOR_SHARD_SHIFT) - 1);
                match self.to_shards.get(shard as usize) {
                    Some(sender) => {
                        let _ = sender.send(ToShard::Store {
                            ticket,
                            request: ShardStoreRequest::DumpChunk { cursor: at, max },
                        });
                        Gather::Dump { shard }
                    }
                    None => {
                        // A cursor past the last shard (from a peer with more shards than
                        // we have, say): the dump is complete.
                        return self.reply(
                            ticket,
                            StoreReply::DumpChunk {
                                entries: Vec::new(),
                                next: None,
                            },
                        );
                    }
                }
            }
        };
        if matches!(gather, Gather::Apply { remaining: 0, .. }) {
            return self.reply(
                ticket,
                StoreReply::Applied {
                    fresh: Vec::new(),
                    stale: 0,
                    full: false,
                },
            );
        }
        self.gathers.borrow_mut().insert(ticket, gather);
    }

    /// One shard's reply: merged into its gather, handed to the node once all are in.
    fn gathered(&self, ticket: u64, reply: ShardStoreReply) {
        let Some(mut gather) = self.gathers.borrow_mut().remove(&ticket) else {
            return;
        };
        let shards = self.to_shards.len() as u32;
        let finished = match (&mut gather, reply) {
            (
                Gather::Apply {
                    entries,
                    remaining,
                    stored,
                    stale,
                    full,
                },
                ShardStoreReply::Applied {
                    stored: more,
                    stale: more_stale,
                    full: more_full,
                },
            ) => {
                stored.extend(more);
                *stale += more_stale;
                *full |= more_full;
                *remaining -= 1;
                (*remaining == 0).then(|| {
                    stored.sort_unstable();
                    let fresh = stored
                        .iter()
                        .filter_map(|&at| entries.get(at as usize).cloned())
                        .collect();
                    StoreReply::Applied {
                        fresh,
                        stale: *stale,
                        full: *full,
                    }
                })
            }
            (Gather::Digests { remaining, sums }, ShardStoreReply::Digests(digests)) => {
                for d in digests {
                    let sum = sums.entry(d.bucket).or_default();
                    sum.0 += d.count;
                    sum.1 ^= d.xor;
                }
                *remaining -= 1;
                (*remaining == 0).then(|| {
                    StoreReply::Digests(
                        sums.iter()
                            .filter(|(_, sum)| sum.0 > 0)
                            .map(|(&bucket, &(count, xor))| BucketDigest { bucket, count, xor })
                            .collect(),
                    )
                })
            }
            (Gather::BucketHashes { remaining, hashes }, ShardStoreReply::BucketHashes(more)) => {
                for (all, some) in hashes.iter_mut().zip(more) {
                    all.extend(some);
                }
                *remaining -= 1;
                (*remaining == 0).then(|| StoreReply::BucketHashes(std::mem::take(hashes)))
            }
            (
                Gather::Lacking {
                    remaining,
                    max,
                    max_bytes,
                    bytes,
                    entries,
                },
                ShardStoreReply::Lacking(more),
            ) => {
                // Each shard found up to the bounds on its own: the round takes what fits.
                for entry in &more {
                    if entries.len() >= *max || *bytes >= *max_bytes {
                        break;
                    }
                    *bytes += entry.wire_bytes();
                    entries.push(entry.to_entry());
                }
                *remaining -= 1;
                (*remaining == 0).then(|| StoreReply::Lacking(std::mem::take(entries)))
            }
            (Gather::Get, ShardStoreReply::Entry(entry)) => {
                Some(StoreReply::Entry(entry.as_ref().map(OwnedEntry::to_entry)))
            }
            (Gather::Dump { shard }, ShardStoreReply::DumpChunk { entries, next }) => {
                let next = match next {
                    Some(at) => Some((u64::from(*shard) << DUMP_CURSOR_SHARD_SHIFT) | at),
                    None if *shard + 1 < shards => {
                        Some(u64::from(*shard + 1) << DUMP_CURSOR_SHARD_SHIFT)
                    }
                    None => None,
                };
                Some(StoreReply::DumpChunk {
                    entries: entries.iter().map(OwnedEntry::to_entry).collect(),
                    next,
                })
            }
            (_, _) => {
                // A shard's bug; the node counts the mismatched reply and moves on.
                tracing::error!(
                    ticket,
                    "a shard answered a store request with the wrong kind"
                );
                Some(StoreReply::Entry(None))
            }
        };
        match finished {
            Some(reply) => self.reply(ticket, reply),
            None => {
                self.gathers.borrow_mut().insert(ticket, gather);
            }
        }
    }

    /// Feeds the node a client's write; one waiting for copies is answered later, by
    /// [`Coordinator::answer_write`].
    fn local_write(&self, write: LocalWrite) {
        let entry = write.entry.to_entry();
        let Some(waiter) = write.waiter else {
            return self.handle(Input::LocalWrite(entry));
        };
        let request = self.next_request.get();
        self.next_request.set(request + 1);
        self.writes.borrow_mut().insert(
            request,
            WriteWaiter {
                waiter,
                version: entry.version,
                expires_ms: entry.expires_ms,
            },
        );
        self.handle(Input::LocalWriteCopies {
            entry,
            request,
            copies: waiter.copies,
            timeout_ms: self.write_timeout_ms,
        });
    }

    /// Answers the client whose write started `request`: stored, with the copies known to
    /// hold it, and pending unless they are all it asked for.
    fn answer_write(&self, request: u64, holders: u32, complete: bool) {
        let Some(write) = self.writes.borrow_mut().remove(&request) else {
            return;
        };
        let mut responses = Zeroizing::new(Vec::new());
        let reply = Reply::Stored {
            version_clock: write.version.clock,
            version_node: write.version.node,
            expires_ms: write.expires_ms,
            copies: holders,
            pending: !complete,
        };
        respond(&mut responses, write.waiter.request_id, reply);
        let timed = TimedOp {
            op: OpKind::Put,
            read_at: write.waiter.read_at,
        };
        self.answer_conn(write.waiter.conn, responses, Some(timed));
    }

    fn answer_topology(&self, conn: ConnId, request_id: u64) {
        let topology = self.node.borrow().topology(self.now_ms());
        let view = |info: &repram_cluster::NodeInfo, silent_ms: u64| PeerView {
            node_id: info.id,
            addr: info.addr.to_string(),
            role: info.role.map_or(u8::MAX, |r| r.depth()),
            children: info.children,
            capacity: info.capacity,
            silent_ms,
        };
        let neighbours = |list: &[repram_cluster::Neighbour]| {
            list.iter()
                .map(|n| view(&n.info, n.silent_ms))
                .collect::<Vec<_>>()
        };
        let info = TopologyInfo {
            node: view(&topology.me, 0),
            attached: topology.attached,
            path: topology.path,
            parent: topology.parent.map(|p| view(&p.info, p.silent_ms)),
            parent_rtt_ms: topology.parent_rtt_ms,
            children: neighbours(&topology.children),
            root_peers: neighbours(&topology.root_peers),
        };
        let mut responses = Zeroizing::new(Vec::new());
        respond(&mut responses, request_id, Reply::Topology(info));
        self.answer_conn(conn, responses, None);
    }

    /// Sends one encoded response to connection `conn`, through its shard.
    fn answer_conn(&self, conn: ConnId, responses: Zeroizing<Vec<u8>>, timed: Option<TimedOp>) {
        let shard = shard_of_conn(conn) as usize;
        if let Some(sender) = self.to_shards.get(shard) {
            let _ = sender.send(ToShard::Responses {
                conn,
                responses,
                timed,
            });
        }
    }

    /// Answers the client whose read started pull `request`: the value a peer held (already
    /// being stored on its shard), or not-found.
    fn answer_pull(&self, request: u64, entry: Option<Entry>) {
        let Some(waiter) = self.pulls.borrow_mut().remove(&request) else {
            return;
        };
        let mut responses = Zeroizing::new(Vec::new());
        let reply = match &entry {
            Some(Entry {
                value: Some(value),
                expires_ms,
                version,
                ..
            }) => Reply::Value {
                value: &value[..],
                expires_ms: *expires_ms,
                version_clock: version.clock,
                version_node: version.node,
            },
            // No peer had it in time, or the newest version a peer had is a delete.
            _ => Reply::NotFound,
        };
        respond(&mut responses, waiter.request_id, reply);
        let timed = TimedOp {
            op: OpKind::Get,
            read_at: waiter.read_at,
        };
        self.answer_conn(waiter.conn, responses, Some(timed));
    }

    /// Hands a finished reply to the node.
    fn reply(&self, ticket: u64, reply: StoreReply) {
        self.handle(Input::Store { ticket, reply });
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
