//! One shard: its store, its counters, its open connections, and the links to the other shards.
//!
//! Owns request execution against the store (every op, whichever listener it came in on) and
//! the credit that bounds what it has outstanding to each other shard. It never reads sockets:
//! connections bring it validated frames; it never touches another shard's store: it sends
//! that shard the frames instead.

use std::cell::{Cell, RefCell};
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ahash::AHashMap;
use glommio::channels::channel_mesh::Senders;
use glommio::channels::local_channel::LocalSender;
use zeroize::{Zeroize, Zeroizing};

use crate::auth::ClientAuth;
use crate::config::{NodeConfig, WRITE_COPIES_MAX};
use crate::coordinator::{CopiesWaiter, NetworkCounters};
use crate::store::{Access, KeyHeap, KeyQuery, OwnedEntry, Store, StoreError};

use super::idle::IdleConnections;
use super::replica::Replication;
use crate::wire::{
    self, ErrorCode, HelloInfo, OpKind, OpLatency, Reply, RequestView, Response, ShardStats,
    PROTOCOL_VERSION,
};

use crate::buffers::{reserve_wiping, wipe};

/// A connection, unique for the life of the process (never reused, so a late reply cannot
/// reach a newer connection).
pub(crate) type ConnId = u64;

/// How long a client told `busy` should wait before retrying.
pub(crate) const BUSY_RETRY_AFTER_MS: u32 = 2;

/// A message from one shard to another.
pub(crate) enum ShardRequest {
    /// Frames read from one connection for keys the receiver owns, back to back as they
    /// arrived (length prefixes included).
    Frames {
        conn: ConnId,
        frames: Zeroizing<Vec<u8>>,
        /// When the read that brought them returned (for their latency).
        read_at: Instant,
    },
    Stats {
        conn: ConnId,
        request_id: u64,
    },
    /// A page of this shard's live keys (a scan in slices, answered when done).
    Keys {
        conn: ConnId,
        request_id: u64,
        query: KeyQuery,
    },
}

/// The answer to a [`ShardRequest`], on the separate reply mesh.
pub(crate) enum ShardReply {
    Frames {
        conn: ConnId,
        responses: Zeroizing<Vec<u8>>,
        count: u32,
    },
    Stats {
        conn: ConnId,
        request_id: u64,
        shard: u32,
        stats: ShardStats,
    },
    Keys {
        conn: ConnId,
        request_id: u64,
        page: KeyPage,
    },
}

/// Keys of one shard for a listing: sorted, and whether more matched than the page holds.
#[derive(Debug, Default)]
pub(crate) struct KeyPage {
    pub keys: Vec<Vec<u8>>,
    pub more: bool,
}

/// Slab slots a key listing walks before it lets other work in.
const KEY_SCAN_SLOTS_PER_SLICE: usize = 16_384;

/// A page of `shard`'s live keys for `query`, one slice of the slab at a time: a listing never
/// holds the shard longer than a slice, and keeps `query.limit` keys at most.
pub(crate) async fn list_keys(shard: &Shard, query: &KeyQuery) -> KeyPage {
    let mut heap = KeyHeap::default();
    let mut at = 0;
    loop {
        {
            let store = shard.store.borrow();
            if at >= store.sync_slots() {
                break;
            }
            let slots = at..at + KEY_SCAN_SLOTS_PER_SLICE;
            store.keys_in(query, shard.now_ms(), slots, &mut heap);
        }
        at += KEY_SCAN_SLOTS_PER_SLICE;
        glommio::yield_if_needed().await;
    }
    KeyPage {
        keys: heap.keys.into_sorted_vec(),
        more: heap.more,
    }
}

/// A Put stored.
struct PutDone {
    version: crate::Version,
    expires_ms: u64,
    /// The coordinator will answer it (once its copies are held, or its timeout passes).
    waiting: bool,
}

/// Whether a request was answered at once or handed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Its response is in the output buffer.
    Answered,
    /// A read that missed here went to the network (lazy pull); the coordinator answers the
    /// connection directly, by the pull's deadline.
    Deferred,
}

/// The shard of the connection `conn` (its ids are numbered from `shard << 48`).
pub(crate) fn shard_of_conn(conn: ConnId) -> u32 {
    (conn >> CONN_SHARD_SHIFT) as u32
}

/// Bits of a connection id below its shard.
const CONN_SHARD_SHIFT: u32 = 48;

/// What reaches a connection from elsewhere on its shard.
pub(crate) enum Inbound {
    Responses {
        responses: Zeroizing<Vec<u8>>,
        count: u32,
    },
    Stats {
        request_id: u64,
        shard: u32,
        stats: ShardStats,
    },
    Keys {
        request_id: u64,
        page: KeyPage,
    },
}

#[derive(Default)]
pub(crate) struct Counters {
    pub puts: Cell<u64>,
    pub gets: Cell<u64>,
    pub deletes: Cell<u64>,
    pub pings: Cell<u64>,
    pub hellos: Cell<u64>,
    pub stats: Cell<u64>,
    pub hits: Cell<u64>,
    pub misses: Cell<u64>,
    pub expirations: Cell<u64>,
    pub rejected_writes: Cell<u64>,
    pub connections_open: Cell<u64>,
    pub connections_accepted: Cell<u64>,
    pub connections_refused: Cell<u64>,
    /// Connections accepted and still in their TLS entry (not yet open).
    pub connections_entering: Cell<u64>,
    pub forwarded: Cell<u64>,
    pub busy: Cell<u64>,
    pub bad_frames: Cell<u64>,
    pub resp_connections_open: Cell<u64>,
    pub http_connections_open: Cell<u64>,
    /// By op, in the order of [`wire::LATENCY_OPS`].
    pub latency: [LatencyCells; wire::LATENCY_OPS.len()],
}

/// One op's latency histogram as a shard keeps it (see [`wire::OpLatency`]).
#[derive(Default)]
pub(crate) struct LatencyCells {
    counts: [Cell<u64>; wire::LATENCY_BOUNDS_US.len() + 1],
    sum_us: Cell<u64>,
}

impl LatencyCells {
    fn record(&self, us: u64) {
        self.record_n(us, 1);
    }

    fn record_n(&self, us: u64, n: u64) {
        bump(&self.counts[OpLatency::bucket_of(us)], n);
        bump(&self.sum_us, us.saturating_mul(n));
    }

    fn snapshot(&self) -> OpLatency {
        OpLatency {
            counts: std::array::from_fn(|i| self.counts[i].get()),
            sum_us: self.sum_us.get(),
        }
    }
}

/// The requests of one read as a shard serves them: when the read returned (latency counts
/// from then), the wall clock read once for all of them, and how many of each timed op were
/// answered. A pipelined batch reads each clock once instead of once per request; its answers
/// go out together, so each is counted as ready when the batch is.
pub(crate) struct ServedBatch {
    read_at: Instant,
    now_ms: u64,
    answered: [u32; wire::LATENCY_OPS.len()],
}

impl ServedBatch {
    pub(crate) fn read_at(&self) -> Instant {
        self.read_at
    }
}

/// Oldest an anchor of [`ShardClock::now_ms_at`] gets (under a second).
const CLOCK_ANCHOR_AGE_MAX: std::time::Duration = std::time::Duration::from_millis(100);

/// Wall-clock milliseconds since the Unix epoch.
fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A shard's wall clock, in milliseconds: never earlier than a time it already gave (the
/// store's versions and expiries lean on that), and read from the system only about every
/// [`CLOCK_ANCHOR_AGE_MAX`] for instants the shard has just read anyway.
struct ShardClock {
    /// Latest millisecond given.
    last_ms: Cell<u64>,
    /// An instant and the wall-clock millisecond it was (0: none yet).
    anchor: Cell<(Instant, u64)>,
}

impl ShardClock {
    fn new() -> Self {
        ShardClock {
            last_ms: Cell::new(0),
            anchor: Cell::new((Instant::now(), 0)),
        }
    }

    /// `wall` (the system's wall clock), or the latest time given if that is later.
    fn now_ms(&self, wall: impl FnOnce() -> u64) -> u64 {
        let now = wall().max(self.last_ms.get());
        self.last_ms.set(now);
        now
    }

    /// The wall-clock millisecond at `at`, an instant just read: counted on from an anchor
    /// taken at most [`CLOCK_ANCHOR_AGE_MAX`] before, so a batch of requests (one request at
    /// pipeline 1) reads one clock, not two. Steps of the wall clock show within the
    /// anchor's age.
    fn now_ms_at(&self, at: Instant, wall: impl FnOnce() -> u64) -> u64 {
        let (anchor_at, anchor_ms) = self.anchor.get();
        // An instant before the anchor counts as the anchor's.
        let since = at.saturating_duration_since(anchor_at);
        if anchor_ms == 0 || since >= CLOCK_ANCHOR_AGE_MAX {
            let now = self.now_ms(wall);
            self.anchor.set((at, now));
            return now;
        }
        // Under a second: the milliseconds are all in the fraction.
        self.now_ms(|| anchor_ms.saturating_add(u64::from(since.subsec_millis())))
    }
}

pub(crate) fn bump(counter: &Cell<u64>, by: u64) {
    counter.set(counter.get().wrapping_add(by));
}

/// Links to the other shards, set once the mesh is joined.
pub(crate) struct MeshLinks {
    pub requests: Senders<ShardRequest>,
    pub replies: Senders<ShardReply>,
    /// Requests sent to each shard and not yet answered.
    pub outstanding: Vec<Cell<usize>>,
}

pub(crate) struct Shard {
    pub id: u32,
    pub count: u32,
    pub hash_seed: u64,
    pub node_id: u64,
    pub frame_bytes_max: usize,
    pub in_flight_max: usize,
    pub queue_depth: usize,
    pub connections_max_per_shard: usize,
    pub idle_timeout: Option<std::time::Duration>,
    /// Client connections' read deadlines, swept by the shard.
    pub idle_connections: Rc<IdleConnections>,
    pub shard_ports: Vec<u16>,
    /// Copies a Put that does not say wants.
    pub write_copies: u8,
    pub store: RefCell<Store>,
    pub counters: Counters,
    pub conns: RefCell<AHashMap<ConnId, LocalSender<Inbound>>>,
    pub next_conn: Cell<u64>,
    /// `None` on a node of one shard.
    pub mesh: Option<MeshLinks>,
    /// The channels to the coordinator; `None` in a node without a network (tests).
    pub replication: Option<Replication>,
    /// The coordinator's counters, for Stats on any shard.
    pub network: Arc<NetworkCounters>,
    /// Opened values on their way into a response; wiped after each use.
    read_scratch: RefCell<Vec<u8>>,
    /// The wall clock as this shard reads it: never going back.
    clock: ShardClock,
    /// When this shard started (wall-clock ms), for uptime.
    pub started_ms: u64,
    /// The client token's check; `None`: clients need none.
    pub auth: Option<Arc<ClientAuth>>,
    /// Whether `GET /v1/keys` answers.
    pub key_listing: bool,
    /// `--null-store`: reads and writes are answered without the store.
    null_store: bool,
    /// The null store's reads answer this many zeros: the length of the shard's last write.
    null_value_len: Cell<usize>,
}

impl Shard {
    pub(crate) fn new(
        id: u32,
        config: &NodeConfig,
        shard_ports: Vec<u16>,
        store: Store,
        mesh: Option<MeshLinks>,
        replication: Option<Replication>,
        network: Arc<NetworkCounters>,
    ) -> Shard {
        let count = config.shard_listen.len() as u32;
        Shard {
            id,
            count,
            hash_seed: config.hash_seed,
            node_id: config.node_id,
            frame_bytes_max: config.frame_bytes_max,
            in_flight_max: config.in_flight_per_connection_max,
            queue_depth: config.shard_queue_depth,
            connections_max_per_shard: config.connections_max.div_ceil(count as usize),
            idle_timeout: config.idle_timeout,
            idle_connections: Rc::default(),
            shard_ports,
            write_copies: config.peer.write_copies,
            store: RefCell::new(store),
            counters: Counters::default(),
            conns: RefCell::new(AHashMap::new()),
            next_conn: Cell::new(u64::from(id) << CONN_SHARD_SHIFT),
            mesh,
            replication,
            network,
            read_scratch: RefCell::new(Vec::new()),
            clock: ShardClock::new(),
            started_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            auth: config.auth.clone(),
            key_listing: config.key_listing,
            null_store: config.null_store,
            null_value_len: Cell::new(0),
        }
    }

    /// Whether this shard holds as many connections as it may: open ones (less those the idle
    /// sweep has shut down and that are only waiting to end) and those still in their TLS
    /// handshake.
    pub(crate) fn at_connection_limit(&self) -> bool {
        let c = &self.counters;
        let holding = (c.connections_open.get() + c.connections_entering.get()) as usize;
        holding.saturating_sub(self.idle_connections.closing()) >= self.connections_max_per_shard
    }

    /// Wall-clock milliseconds, never earlier than a time this shard already used.
    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.now_ms(wall_clock_ms)
    }

    /// A batch of requests that came with the read that returned at `read_at`.
    pub(crate) fn serve(&self, read_at: Instant) -> ServedBatch {
        ServedBatch {
            read_at,
            now_ms: self.clock.now_ms_at(read_at, wall_clock_ms),
            answered: [0; wire::LATENCY_OPS.len()],
        }
    }

    /// Requests of the batch left waiting (their answers would not have fitted) are served
    /// now: the wall clock is read again for them.
    pub(crate) fn resume(&self, batch: &mut ServedBatch) {
        batch.now_ms = self.now_ms();
    }

    /// Counts the latency of every op the batch answered, all as of now, and starts the
    /// batch's count again.
    pub(crate) fn finish(&self, batch: &mut ServedBatch) {
        if batch.answered.iter().all(|&n| n == 0) {
            return;
        }
        let us = u64::try_from(batch.read_at.elapsed().as_micros()).unwrap_or(u64::MAX);
        for (cells, n) in self.counters.latency.iter().zip(&mut batch.answered) {
            if *n > 0 {
                cells.record_n(us, u64::from(*n));
                *n = 0;
            }
        }
    }

    /// Where a client's write goes to reach the network, if it needs to go anywhere now (see
    /// [`Replication::pushes`]); `waits` when its writer waits for copies.
    fn pushing(&self, waits: bool) -> Option<&Replication> {
        self.replication.as_ref().filter(|r| r.pushes(waits))
    }

    /// The shard that owns `key`.
    /// Starts loading into the CPU's caches the entries of those of `keys` this shard owns
    /// ([`Store::prefetch`]), for requests about to be served in a batch.
    pub(crate) fn prefetch<'k>(&self, keys: impl Iterator<Item = (&'k [u8], Access)>) {
        if self.null_store {
            return;
        }
        let store = self.store.borrow();
        if self.count > 1 {
            store.prefetch(keys.filter(|(key, _)| self.owner_of(key) == self.id));
        } else {
            store.prefetch(keys);
        }
    }

    pub(crate) fn owner_of(&self, key: &[u8]) -> u32 {
        wire::shard_of(key, self.hash_seed, self.count)
    }

    pub(crate) fn hello_info(&self) -> HelloInfo {
        let limits = self.store.borrow().limits().clone();
        HelloInfo {
            protocol_version: PROTOCOL_VERSION,
            node_id: self.node_id,
            shard_count: self.count,
            hash_seed: self.hash_seed,
            shard_ports: self.shard_ports.clone(),
            shard: self.id,
            frame_bytes_max: u32::try_from(self.frame_bytes_max).unwrap_or(u32::MAX),
            key_bytes_max: u32::try_from(limits.key_bytes_max).unwrap_or(u32::MAX),
            value_bytes_max: u32::try_from(limits.value_bytes_max).unwrap_or(u32::MAX),
            ttl_ms_min: limits.ttl_ms_min,
            ttl_ms_max: limits.ttl_ms_max,
        }
    }

    /// Executes one validated request of connection `conn` on this shard's store and appends
    /// its response to `out`, or hands a read that missed to the network
    /// ([`Answer::Deferred`]: the response reaches the connection later, by itself). A Put's
    /// value is wiped from `payload` whatever the outcome.
    ///
    /// `batch` holds when the read that brought the request returned: the op's latency is
    /// counted from then to its batch's answers being ready ([`Shard::finish`]; forwarding
    /// included, the socket write not); an answer deferred to the network is counted when it
    /// comes back.
    pub(crate) fn execute(
        &self,
        payload: &mut [u8],
        view: &RequestView,
        conn: ConnId,
        out: &mut impl ReplySink,
        batch: &mut ServedBatch,
    ) -> Answer {
        let answer = self.execute_op(payload, view, conn, out, batch);
        if answer == Answer::Answered {
            if let Some(n) = wire::latency_op(view.kind).and_then(|op| batch.answered.get_mut(op)) {
                *n = n.saturating_add(1);
            }
        }
        answer
    }

    /// Counts one answer to an op of `kind` whose read returned at `read_at` (ops that are
    /// not timed are skipped).
    pub(crate) fn record_latency(&self, kind: OpKind, read_at: Instant) {
        let Some(cells) = wire::latency_op(kind).and_then(|op| self.counters.latency.get(op))
        else {
            return;
        };
        cells.record(u64::try_from(read_at.elapsed().as_micros()).unwrap_or(u64::MAX));
    }

    fn execute_op(
        &self,
        payload: &mut [u8],
        view: &RequestView,
        conn: ConnId,
        out: &mut impl ReplySink,
        batch: &ServedBatch,
    ) -> Answer {
        let id = view.id;
        let (read_at, now) = (batch.read_at, batch.now_ms);
        if self.null_store {
            if let Some(answer) = self.execute_null(payload, view, out, now) {
                return answer;
            }
        }
        match view.kind {
            OpKind::Put => {
                bump(&self.counters.puts, 1);
                let copies = match view.copies {
                    0 => self.write_copies,
                    n => n,
                };
                if copies > WRITE_COPIES_MAX {
                    payload[view.value.clone()].zeroize();
                    bump(&self.counters.rejected_writes, 1);
                    let message =
                        format!("{copies} copies asked for; this node allows {WRITE_COPIES_MAX}");
                    reply_error(out, id, ErrorCode::BadCopies, 0, &message);
                    return Answer::Answered;
                }
                if view.only_if > wire::PUT_IF_PRESENT {
                    payload[view.value.clone()].zeroize();
                    bump(&self.counters.rejected_writes, 1);
                    let message = format!("put condition {} is unknown here", view.only_if);
                    reply_error(out, id, ErrorCode::UnknownOp, 0, &message);
                    return Answer::Answered;
                }
                let waiter = (copies > 1).then_some(CopiesWaiter {
                    conn,
                    request_id: id,
                    copies,
                    read_at,
                });
                let reply = self.put(payload, view, waiter, now);
                if reply.is_err() {
                    bump(&self.counters.rejected_writes, 1);
                }
                payload[view.value.clone()].zeroize();
                match reply {
                    Ok(None) => out.reply(id, Reply::NotStored),
                    // The coordinator answers once the copies are confirmed or time is up.
                    Ok(Some(stored)) if stored.waiting => return Answer::Deferred,
                    Ok(Some(stored)) => out.reply(
                        id,
                        Reply::Stored {
                            version_clock: stored.version.clock,
                            version_node: stored.version.node,
                            expires_ms: stored.expires_ms,
                            copies: 1,
                            // More copies were asked for than can be waited for here.
                            pending: copies > 1,
                        },
                    ),
                    Err(e) => respond_store_error(out, id, &e),
                }
            }
            OpKind::Get => {
                bump(&self.counters.gets, 1);
                let pull = (!view.local_only).then_some(conn);
                let pull = pull.map(|conn| (conn, read_at));
                return self.get(&payload[view.key.clone()], id, pull, out, now);
            }
            OpKind::Delete => {
                bump(&self.counters.deletes, 1);
                let key = &payload[view.key.clone()];
                if key.is_empty() {
                    respond_store_error(out, id, &StoreError::EmptyKey);
                    return Answer::Answered;
                }
                let mut store = self.store.borrow_mut();
                let pushing = self.pushing(false);
                let expires_ms = pushing.map(|_| store.meta(key, now).map(|m| m.expires_ms));
                match store.delete(key, now) {
                    Ok(version) => {
                        if let (Some(replication), Some(Ok(expires_ms))) = (pushing, expires_ms) {
                            let tombstone = OwnedEntry {
                                key: key.to_vec(),
                                value: None,
                                expires_ms,
                                version,
                            };
                            replication.written(tombstone, None);
                        }
                        out.reply(id, Reply::Deleted)
                    }
                    Err(StoreError::NotFound) => out.reply(id, Reply::NotFound),
                    Err(e) => respond_store_error(out, id, &e),
                }
            }
            OpKind::Ping => {
                bump(&self.counters.pings, 1);
                out.reply(id, Reply::Pong);
            }
            OpKind::Hello => {
                bump(&self.counters.hellos, 1);
                if view.protocol_version != PROTOCOL_VERSION {
                    let message = format!(
                        "this node speaks protocol {PROTOCOL_VERSION}, not {}",
                        view.protocol_version
                    );
                    reply_error(out, id, ErrorCode::VersionMismatch, 0, &message);
                    return Answer::Answered;
                }
                out.reply(id, Reply::Hello(self.hello_info()));
            }
            OpKind::Expire => {
                bump(&self.counters.puts, 1);
                self.expire(&payload[view.key.clone()], view.ttl_ms, id, out, now);
            }
            OpKind::Topology => {
                // The coordinator knows the tree; it answers the connection directly.
                let asked = self
                    .replication
                    .as_ref()
                    .is_some_and(|replication| replication.topology(conn, id));
                if asked {
                    return Answer::Deferred;
                }
                reply_error(
                    out,
                    id,
                    ErrorCode::Unavailable,
                    0,
                    "the node's network is not running (or is too busy to answer)",
                );
            }
            OpKind::Stats => {
                // Gathered across shards by the connection; a forwarded frame never holds one.
                reply_error(out, id, ErrorCode::Internal, 0, "stats cannot be forwarded");
            }
        }
        Answer::Answered
    }

    /// The null store's answer to a Put or a Get: the same replies as the store's, with
    /// nothing stored, sealed, opened or replicated. `None` for every other op.
    fn execute_null(
        &self,
        payload: &mut [u8],
        view: &RequestView,
        out: &mut impl ReplySink,
        now_ms: u64,
    ) -> Option<Answer> {
        match view.kind {
            OpKind::Put => {
                bump(&self.counters.puts, 1);
                self.null_value_len.set(view.value.len());
                payload[view.value.clone()].zeroize();
                let reply = Reply::Stored {
                    version_clock: 0,
                    version_node: self.node_id,
                    expires_ms: now_ms.saturating_add(view.ttl_ms),
                    copies: 1,
                    pending: false,
                };
                out.reply(view.id, reply);
            }
            OpKind::Get => {
                bump(&self.counters.gets, 1);
                bump(&self.counters.hits, 1);
                let mut scratch = self.read_scratch.borrow_mut();
                scratch.clear();
                scratch.resize(self.null_value_len.get(), 0);
                let reply = Reply::Value {
                    value: &scratch,
                    expires_ms: u64::MAX,
                    version_clock: 0,
                    version_node: self.node_id,
                };
                out.reply(view.id, reply);
            }
            _ => return None,
        }
        Some(Answer::Answered)
    }

    /// Stores a Put and hands a copy to the network; `waiting` when the coordinator took the
    /// write's `waiter` and will answer it. `None` when its condition did not hold.
    fn put(
        &self,
        payload: &mut [u8],
        view: &RequestView,
        waiter: Option<CopiesWaiter>,
        now: u64,
    ) -> Result<Option<PutDone>, StoreError> {
        let Some((key, value)) = key_and_value(payload, view.key.clone(), view.value.clone())
        else {
            return Err(StoreError::EmptyKey);
        };
        if key.is_empty() {
            return Err(StoreError::EmptyKey);
        }
        // The network needs the value too: a copy, wiped once pushed.
        let pushing = self.pushing(waiter.is_some());
        let copy = pushing.map(|_| Zeroizing::new(value.to_vec()));
        let mut store = self.store.borrow_mut();
        if view.only_if != wire::PUT_ALWAYS {
            // Checked and written in one step: nothing else runs on this shard in between.
            let exists = store.meta(key, now).is_ok();
            if exists != (view.only_if == wire::PUT_IF_PRESENT) {
                return Ok(None);
            }
        }
        let version = store.put(key, value, view.ttl_ms, now)?;
        // The store set the expiry from this same `now` (the shard's clock is its only clock).
        let expires_ms = now.saturating_add(view.ttl_ms);
        let mut waiting = false;
        if let Some(replication) = pushing {
            let entry = OwnedEntry {
                key: key.to_vec(),
                value: copy,
                expires_ms,
                version,
            };
            waiting = replication.written(entry, waiter) && waiter.is_some();
        }
        Ok(Some(PutDone {
            version,
            expires_ms,
            waiting,
        }))
    }

    /// Gives a live value a new TTL (re-sealed under a new version) and replicates it as a
    /// write: the value is opened once for the network's copy.
    fn expire(&self, key: &[u8], ttl_ms: u64, id: u64, out: &mut impl ReplySink, now: u64) {
        if key.is_empty() {
            return respond_store_error(out, id, &StoreError::EmptyKey);
        }
        let mut store = self.store.borrow_mut();
        let version = match store.expire(key, ttl_ms, now) {
            Ok(version) => version,
            Err(StoreError::NotFound) => return out.reply(id, Reply::NotFound),
            Err(e) => {
                bump(&self.counters.rejected_writes, 1);
                return respond_store_error(out, id, &e);
            }
        };
        let expires_ms = now.saturating_add(ttl_ms);
        if let Some(replication) = self.pushing(false) {
            let mut scratch = self.read_scratch.borrow_mut();
            if store.get(key, now, &mut scratch).is_ok() {
                let entry = OwnedEntry {
                    key: key.to_vec(),
                    value: Some(Zeroizing::new(scratch.to_vec())),
                    expires_ms,
                    version,
                };
                wipe(&mut scratch);
                replication.written(entry, None);
            }
        }
        out.reply(
            id,
            Reply::Stored {
                version_clock: version.clock,
                version_node: version.node,
                expires_ms,
                copies: 1,
                pending: false,
            },
        );
    }

    /// Answers a Get from the store; a miss with `pull` set (the asking connection) goes to
    /// the network instead, when the coordinator can take it.
    /// A read; one that misses and may `pull` (the connection, and when its read returned)
    /// asks the network.
    fn get(
        &self,
        key: &[u8],
        id: u64,
        pull: Option<(ConnId, Instant)>,
        out: &mut impl ReplySink,
        now: u64,
    ) -> Answer {
        if key.is_empty() {
            respond_store_error(out, id, &StoreError::EmptyKey);
            return Answer::Answered;
        }
        let mut scratch = self.read_scratch.borrow_mut();
        let found = self.store.borrow_mut().get(key, now, &mut scratch);
        match found {
            Ok(meta) => {
                bump(&self.counters.hits, 1);
                out.reply(
                    id,
                    Reply::Value {
                        value: &scratch,
                        expires_ms: meta.expires_ms,
                        version_clock: meta.version.clock,
                        version_node: meta.version.node,
                    },
                );
                wipe(&mut scratch);
            }
            Err(StoreError::NotFound) => {
                bump(&self.counters.misses, 1);
                let asked = match (pull, &self.replication) {
                    (Some((conn, read_at)), Some(replication)) => {
                        replication.pull(key, conn, id, read_at)
                    }
                    _ => false,
                };
                if asked {
                    return Answer::Deferred;
                }
                out.reply(id, Reply::NotFound);
            }
            Err(e) => respond_store_error(out, id, &e),
        }
        Answer::Answered
    }

    /// Executes frames another shard forwarded for connection `conn`, appending one response
    /// per frame answered now; returns how many were (the rest were deferred to the network
    /// and are answered to the connection directly).
    pub(crate) fn execute_forwarded(
        &self,
        frames: &mut [u8],
        conn: ConnId,
        out: &mut Vec<u8>,
        read_at: Instant,
    ) -> u32 {
        let mut at = 0;
        let mut count = 0;
        let mut batch = self.serve(read_at);
        while at < frames.len() {
            let Ok(Some(len)) = wire::frame_len(&frames[at..], usize::MAX) else {
                break;
            };
            let end = at + wire::FRAME_HEADER_BYTES + len;
            let Some(payload) = frames.get_mut(at + wire::FRAME_HEADER_BYTES..end) else {
                break;
            };
            let answer = match wire::decode_request(payload) {
                Ok(view) => self.execute(payload, &view, conn, out, &mut batch),
                // The sending shard validated these frames: failing here is a bug, answered
                // rather than dropped so the client is never left waiting.
                Err(_) => {
                    respond_error(out, 0, ErrorCode::Internal, 0, "forwarded frame unreadable");
                    Answer::Answered
                }
            };
            payload.zeroize();
            if answer == Answer::Answered {
                count += 1;
            }
            at = end;
        }
        self.finish(&mut batch);
        count
    }

    /// Counters of this shard with its store's figures.
    pub(crate) fn snapshot(&self) -> ShardStats {
        let c = &self.counters;
        let store = self.store.borrow().stats();
        let (live_set_count, live_set_xor) = self.store.borrow().live_set();
        ShardStats {
            puts: c.puts.get(),
            gets: c.gets.get(),
            deletes: c.deletes.get(),
            pings: c.pings.get(),
            hellos: c.hellos.get(),
            stats: c.stats.get(),
            hits: c.hits.get(),
            misses: c.misses.get(),
            expirations: c.expirations.get(),
            keys: (store.entries - store.tombstones) as u64,
            tombstones: store.tombstones as u64,
            used_bytes: store.used_bytes as u64,
            budget_bytes: store.budget_bytes as u64,
            rejected_writes: c.rejected_writes.get(),
            connections_open: c.connections_open.get(),
            connections_accepted: c.connections_accepted.get(),
            connections_refused: c.connections_refused.get(),
            forwarded: c.forwarded.get(),
            busy: c.busy.get(),
            bad_frames: c.bad_frames.get(),
            live_set_count,
            live_set_xor,
            resp_connections_open: c.resp_connections_open.get(),
            http_connections_open: c.http_connections_open.get(),
            latency: Box::new(std::array::from_fn(|op| c.latency[op].snapshot())),
        }
    }

    /// Sends `request` to shard `to` if this shard has credit there. On `Err` nothing was sent.
    pub(crate) fn forward(&self, to: u32, request: ShardRequest) -> Result<(), ()> {
        let Some(mesh) = self.mesh.as_ref() else {
            return Err(());
        };
        let outstanding = &mesh.outstanding[to as usize];
        if outstanding.get() >= self.queue_depth {
            return Err(());
        }
        mesh.requests
            .try_send_to(to as usize, request)
            .map_err(|_| ())?;
        outstanding.set(outstanding.get() + 1);
        Ok(())
    }

    /// Hands what another shard answered to the connection it belongs to; a connection that
    /// has gone drops it (wiped on drop).
    pub(crate) fn deliver(&self, conn: ConnId, inbound: Inbound) {
        if let Some(sender) = self.conns.borrow().get(&conn) {
            let _ = sender.try_send(inbound);
        }
    }

    pub(crate) fn reply_sent(&self, from: u32) {
        if let Some(mesh) = self.mesh.as_ref() {
            let outstanding = &mesh.outstanding[from as usize];
            debug_assert!(outstanding.get() > 0, "a reply nobody asked for");
            outstanding.set(outstanding.get().saturating_sub(1));
        }
    }
}

/// Borrows a request's key and value from its payload at once (they never overlap in a valid
/// archive; `None` if they do).
fn key_and_value(
    payload: &mut [u8],
    key: Range<usize>,
    value: Range<usize>,
) -> Option<(&[u8], &mut [u8])> {
    if key.end <= value.start {
        let (front, back) = payload.split_at_mut(value.start);
        Some((&front[key], &mut back[..value.end - value.start]))
    } else if value.end <= key.start {
        let (front, back) = payload.split_at_mut(key.start);
        Some((&back[..key.end - key.start], &mut front[value]))
    } else if key.is_empty() {
        Some((&[], &mut payload[value]))
    } else {
        None
    }
}

/// Where [`Shard::execute`] puts its answers. Native connections and forwarded frames take
/// them as native response frames (`Vec<u8>`); a text front end running a request on a key
/// this shard owns takes them as they are and encodes its own protocol's reply, with no frame
/// built and read back in between.
pub(crate) trait ReplySink {
    fn reply(&mut self, id: u64, reply: Reply<'_>);
}

impl ReplySink for Vec<u8> {
    fn reply(&mut self, id: u64, reply: Reply<'_>) {
        respond(self, id, reply);
    }
}

fn reply_error(
    out: &mut impl ReplySink,
    id: u64,
    code: ErrorCode,
    retry_after_ms: u32,
    message: &str,
) {
    out.reply(
        id,
        Reply::Error {
            code,
            retry_after_ms,
            message,
        },
    );
}

/// Appends one response to `out`. Room is made first (wiping what a reallocation would free),
/// because `out` may already hold another response's plaintext value.
pub(crate) fn respond(out: &mut Vec<u8>, id: u64, reply: Reply<'_>) {
    let payload_bytes = match &reply {
        Reply::Value { value, .. } => value.len(),
        Reply::Error { message, .. } => message.len(),
        Reply::Hello(info) => info.shard_ports.len() * 2,
        Reply::Stats(stats) => (stats.shards.len() + 1) * std::mem::size_of::<ShardStats>(),
        Reply::Topology(topology) => (topology.children.len() + topology.root_peers.len() + 2) * 64,
        Reply::Stored { .. }
        | Reply::NotFound
        | Reply::NotStored
        | Reply::Deleted
        | Reply::Pong => 0,
    };
    reserve_wiping(out, payload_bytes + wire::FRAME_OVERHEAD_BYTES);
    wire::encode_response(out, &Response { id, reply });
}

pub(crate) fn respond_error(
    out: &mut Vec<u8>,
    id: u64,
    code: ErrorCode,
    retry_after_ms: u32,
    message: &str,
) {
    respond(
        out,
        id,
        Reply::Error {
            code,
            retry_after_ms,
            message,
        },
    );
}

pub(crate) fn error_code_of(error: &StoreError) -> ErrorCode {
    match error {
        StoreError::EmptyKey | StoreError::KeyTooLong { .. } => ErrorCode::BadKey,
        StoreError::ValueTooLarge { .. } => ErrorCode::ValueTooLarge,
        StoreError::BadTtl { .. }
        | StoreError::ExpiryTooFar { .. }
        | StoreError::ExpiryFarFromVersion { .. } => ErrorCode::BadTtl,
        StoreError::StoreFull { .. } => ErrorCode::StoreFull,
        StoreError::NotFound
        | StoreError::VersionFromFuture { .. }
        | StoreError::Unreadable
        | StoreError::Exhausted => ErrorCode::Internal,
    }
}

fn respond_store_error(out: &mut impl ReplySink, id: u64, error: &StoreError) {
    let message = error.to_string();
    reply_error(out, id, error_code_of(error), 0, &message);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn instants_within_the_anchors_age_count_on_from_it_without_reading_the_wall_clock() {
        let clock = ShardClock::new();
        let start = Instant::now();
        assert_eq!(clock.now_ms_at(start, || 1_000_000), 1_000_000);
        let unread = || panic!("the wall clock was read");
        assert_eq!(
            clock.now_ms_at(start + Duration::from_millis(30), unread),
            1_000_030
        );
        assert_eq!(
            clock.now_ms_at(start + Duration::from_millis(99), unread),
            1_000_099
        );
        // Past the anchor's age the wall clock is read again, and its step shows.
        let at = start + CLOCK_ANCHOR_AGE_MAX;
        assert_eq!(clock.now_ms_at(at, || 2_000_000), 2_000_000);
        assert_eq!(
            clock.now_ms_at(at + Duration::from_millis(5), unread),
            2_000_005
        );
    }

    #[test]
    fn the_clock_never_gives_an_earlier_time_than_it_gave() {
        let clock = ShardClock::new();
        let start = Instant::now();
        assert_eq!(clock.now_ms_at(start, || 5_000), 5_000);
        assert_eq!(clock.now_ms(|| 7_000), 7_000);
        // The anchor says 5,010; 7,000 was given already.
        assert_eq!(
            clock.now_ms_at(start + Duration::from_millis(10), || 0),
            7_000
        );
        // A wall clock stepped back is not followed back.
        let later = start + CLOCK_ANCHOR_AGE_MAX * 2;
        assert_eq!(clock.now_ms_at(later, || 4_000), 7_000);
        assert_eq!(clock.now_ms(|| 3_000), 7_000);
    }
}
