//! A shard's side of replication: it answers the coordinator's store requests against this
//! shard's store, and hands the writes its clients make to the coordinator to push.
//!
//! Owns the two loops and the bounded queue of writes not yet handed over. It never decides
//! anything about peers (the coordinator's node does) and never holds another shard's entries.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use glommio::channels::local_channel::{LocalReceiver, LocalSender};

use crate::coordinator::{
    CopiesWaiter, FromShard, LocalWrite, NetworkCounters, ShardStoreReply, ShardStoreRequest,
    ToShard,
};
use crate::store::{Applied, Lacking, LackingQuery, OwnedEntry, StoreError};

use super::shard::{shard_of_conn, ConnId, Inbound, Shard};

/// Client writes waiting to be handed to the coordinator at most; past it new ones are not
/// pushed (sync brings them to the network a round later) and are counted.
const PENDING_WRITES_MAX: usize = 65_536;

/// The channels between one shard and the coordinator.
pub(crate) struct Replication {
    to_coordinator: flume::Sender<FromShard>,
    pending: RefCell<Vec<LocalWrite>>,
    wake: LocalSender<()>,
    network: Arc<NetworkCounters>,
}

impl Replication {
    pub(crate) fn new(
        to_coordinator: flume::Sender<FromShard>,
        network: Arc<NetworkCounters>,
    ) -> (Replication, LocalReceiver<()>) {
        let (wake, woken) = glommio::channels::local_channel::new_bounded(1);
        let replication = Replication {
            to_coordinator,
            pending: RefCell::new(Vec::new()),
            wake,
            network,
        };
        (replication, woken)
    }

    /// A read of `key` by connection `conn` (request `request_id`) missed here: asks the
    /// coordinator to pull it from peers. `false` when the coordinator cannot take it now
    /// (its queue is full or it is gone): the caller answers not-found at once.
    pub(crate) fn pull(&self, key: &[u8], conn: ConnId, request_id: u64, read_at: Instant) -> bool {
        let message = FromShard::Pull {
            key: key.to_vec(),
            conn,
            request_id,
            read_at,
        };
        self.to_coordinator.try_send(message).is_ok()
    }

    /// Connection `conn` asks for the tree (request `request_id`): the coordinator answers it.
    /// `false` when the coordinator cannot take the question now.
    pub(crate) fn topology(&self, conn: ConnId, request_id: u64) -> bool {
        let message = FromShard::Topology { conn, request_id };
        self.to_coordinator.try_send(message).is_ok()
    }

    /// Whether a client's write is worth handing to the coordinator: the node has a tree
    /// neighbour to push it to, or the writer waits for copies (`waits`). A write made while
    /// the node has none reaches the peers that come later as everything before it does, by
    /// their bootstrap dump and sync rounds; handing it over would only copy it, cross to the
    /// coordinator's thread and be dropped there.
    pub(crate) fn pushes(&self, waits: bool) -> bool {
        waits || self.network.neighbours.load(Ordering::Relaxed) != 0
    }

    /// A client's write (or delete, as a tombstone) is in the store: push it to the network,
    /// and have the coordinator answer `waiter` once its copies are held. `false` when the
    /// queue is full: the write is not pushed (sync brings it a round later) and nobody will
    /// answer the waiter.
    pub(crate) fn written(&self, entry: OwnedEntry, waiter: Option<CopiesWaiter>) -> bool {
        let mut pending = self.pending.borrow_mut();
        if pending.len() >= PENDING_WRITES_MAX {
            self.network
                .writes_not_pushed
                .fetch_add(1, Ordering::Relaxed);
            return false;
        }
        pending.push(LocalWrite { entry, waiter });
        let _ = self.wake.try_send(());
        true
    }
}

/// Hands the writes gathered since the last hand-over to the coordinator, one batch at a time.
pub(crate) async fn hand_over_writes(shard: Rc<Shard>, woken: LocalReceiver<()>) {
    let Some(replication) = shard.replication.as_ref() else {
        return;
    };
    while woken.recv().await.is_some() {
        // Let the rest of the current burst of requests land in the same batch.
        glommio::yield_if_needed().await;
        let batch = std::mem::take(&mut *replication.pending.borrow_mut());
        if batch.is_empty() {
            continue;
        }
        replication
            .network
            .writes_pushed
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let message = FromShard::LocalWrites(batch);
        if replication
            .to_coordinator
            .send_async(message)
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Answers the coordinator's store requests, one at a time, yielding to clients in between.
pub(crate) async fn serve_coordinator(shard: Rc<Shard>, requests: flume::Receiver<ToShard>) {
    let Some(replication) = shard.replication.as_ref() else {
        return;
    };
    while let Ok(message) = requests.recv_async().await {
        let (ticket, request) = match message {
            ToShard::Store { ticket, request } => (ticket, request),
            ToShard::Responses {
                conn,
                responses,
                timed,
            } => {
                debug_assert_eq!(shard_of_conn(conn), shard.id);
                if let Some(timed) = timed {
                    shard.record_latency(timed.op, timed.read_at);
                }
                shard.deliver(
                    conn,
                    Inbound::Responses {
                        responses,
                        count: 1,
                    },
                );
                continue;
            }
        };
        let reply = match request {
            ShardStoreRequest::BucketHashes {
                buckets,
                settled_before_ms,
            } => ShardStoreReply::BucketHashes(
                bucket_hashes(&shard, &buckets, settled_before_ms).await,
            ),
            ShardStoreRequest::Lacking {
                filters,
                round_seed,
                settled_before_ms,
                max,
                max_bytes,
            } => {
                let query = LackingQuery {
                    filters: &filters,
                    round_seed,
                    settled_before_ms,
                    max,
                    max_bytes,
                };
                ShardStoreReply::Lacking(lacking(&shard, &query).await)
            }
            request => answer(&shard, request),
        };
        let message = FromShard::Store { ticket, reply };
        if replication
            .to_coordinator
            .send_async(message)
            .await
            .is_err()
        {
            return;
        }
        glommio::yield_if_needed().await;
    }
}

/// Slab slots a sync scan walks before it lets clients in (about a millisecond of work).
const SCAN_SLOTS_PER_SLICE: usize = 16_384;

/// The store's bucket hashes for a round, a slice of the slab at a time. Entries that come or
/// go between slices may be missed or seen: the next round settles them.
async fn bucket_hashes(shard: &Shard, buckets: &[u64], settled_before_ms: u64) -> Vec<Vec<u64>> {
    let mut out = vec![Vec::new(); buckets.len()];
    let mut at = 0;
    loop {
        {
            let store = shard.store.borrow();
            if at >= store.sync_slots() {
                return out;
            }
            let slots = at..at + SCAN_SLOTS_PER_SLICE;
            store.sync_bucket_hashes_in(buckets, settled_before_ms, slots, &mut out);
        }
        at += SCAN_SLOTS_PER_SLICE;
        glommio::yield_if_needed().await;
    }
}

/// What a peer's filters lack, a slice of the slab at a time.
async fn lacking(shard: &Shard, query: &LackingQuery<'_>) -> Vec<OwnedEntry> {
    let mut out = Lacking::default();
    let mut at = 0;
    loop {
        {
            let store = shard.store.borrow();
            if at >= store.sync_slots() || !out.has_room(query) {
                return out.entries;
            }
            let slots = at..at + SCAN_SLOTS_PER_SLICE;
            store.sync_lacking_in(query, shard.now_ms(), slots, &mut out);
        }
        at += SCAN_SLOTS_PER_SLICE;
        glommio::yield_if_needed().await;
    }
}

fn answer(shard: &Shard, request: ShardStoreRequest) -> ShardStoreReply {
    let now = shard.now_ms();
    let mut store = shard.store.borrow_mut();
    match request {
        ShardStoreRequest::Apply {
            mut entries,
            positions,
        } => {
            let (mut stored, mut stale, mut full) = (Vec::new(), 0, false);
            for (entry, at) in entries.iter_mut().zip(positions) {
                match store.apply_replica(entry, now) {
                    Ok(Applied::Stored) => stored.push(at),
                    Ok(Applied::Stale | Applied::Expired) => stale += 1,
                    Err(StoreError::StoreFull { .. }) => full = true,
                    Err(error) => {
                        // Out of this node's limits (a key too long, a version from the
                        // future): not ours to keep.
                        tracing::debug!(%error, "replicated entry refused");
                        stale += 1;
                    }
                }
            }
            ShardStoreReply::Applied {
                stored,
                stale,
                full,
            }
        }
        ShardStoreRequest::Digests {
            from_bucket,
            settled_before_ms,
        } => ShardStoreReply::Digests(store.sync_digests(from_bucket, settled_before_ms)),
        // Scans: walked in slices by `bucket_hashes` and `lacking`, never here.
        ShardStoreRequest::BucketHashes { buckets, .. } => {
            ShardStoreReply::BucketHashes(vec![Vec::new(); buckets.len()])
        }
        ShardStoreRequest::Lacking { .. } => ShardStoreReply::Lacking(Vec::new()),
        ShardStoreRequest::Get { key } => ShardStoreReply::Entry(store.sync_entry(&key, now)),
        ShardStoreRequest::DumpChunk { cursor, max } => {
            let (entries, next) = store.sync_dump_chunk(cursor, max, now);
            ShardStoreReply::DumpChunk { entries, next }
        }
    }
}
