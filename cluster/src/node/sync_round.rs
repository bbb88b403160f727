//! Xor-filter sync rounds: summary, per-bucket digests, salted filters for the buckets that
//! differ, and the entries each side definitely lacks, both ways in one round. Repairs are
//! pushed on along the tree.

use std::net::SocketAddr;

use rand_core::RngCore;

use std::sync::Arc;

use super::{Awaiting, Node, SyncRound};
use crate::entry::Entry;
use crate::message::Message;
use crate::store_request::StoreRequest;
use crate::sync::{
    self, bucket_of, summary_of, BucketDigest, FilterData, SETTLE_WINDOW_MS, SYNC_BUCKET_MS,
};

/// Stale peers remembered at most, and synced with in one period at most.
const STALE_PEERS_MAX: usize = 64;
const STALE_PEERS_PER_ROUND_MAX: usize = 2;
/// Rounds run back to back with one peer while each repairs something. A round's repairs
/// are bounded in bytes, so a peer far behind (say, after a burst its links shed) catches up
/// at the speed of the link rather than one bounded round per period; the bound leaves a pair
/// that cannot settle (a store that refuses) to the next period.
const REPAIR_ROUNDS_MAX: u8 = 32;

impl Node {
    /// Opens rounds with the parent (a root: the other roots) and one random known peer.
    pub(super) fn start_sync(&mut self, now_ms: u64) {
        let interval = self.config.cluster.sync_interval_ms;
        let jitter = interval / 10;
        let offset = if jitter == 0 {
            0
        } else {
            self.rng.next_u64() % (2 * jitter)
        };
        self.next_sync_ms = now_ms + interval - jitter + offset;
        // A node applies its first dump before it syncs (the dump brings everything anyway).
        // Cut off from every root, a node that tops an interim tree (it has children) syncs.
        let in_a_tree = self.is_attached() || !self.children.is_empty();
        if !in_a_tree || self.dump.is_some() {
            return;
        }
        let mut peers: Vec<SocketAddr> = self.parent.iter().map(|p| p.info.addr).collect();
        peers.extend(self.root_peers.keys().copied());
        // Peers last seen with a stale view come first (the longest-known stale first).
        let mut stale: Vec<(u64, SocketAddr)> = self
            .stale_peers
            .iter()
            .map(|(&a, &since)| (since, a))
            .collect();
        stale.sort_unstable();
        for (_, peer) in stale.into_iter().take(STALE_PEERS_PER_ROUND_MAX) {
            if !peers.contains(&peer) {
                peers.push(peer);
            }
        }
        if !self.cached_peers.is_empty() {
            let at = (self.rng.next_u64() % self.cached_peers.len() as u64) as usize;
            let extra = self.cached_peers[at].addr;
            if extra != self.config.addr && !peers.contains(&extra) {
                peers.push(extra);
            }
        }
        for peer in peers {
            self.open_round(peer, now_ms, false);
        }
    }

    pub(super) fn sync_window(&self, now_ms: u64) -> u64 {
        bucket_of(
            now_ms + self.config.cluster.sync_skip_margin_ms,
            SYNC_BUCKET_MS,
        ) + 1
    }

    /// Opens a round with `peer`. A periodic round leaves out the writes younger than the
    /// settle time (the push brings them); a `catch_up` round, right after attaching to a new
    /// parent, counts everything, as the push did not reach this node while it was elsewhere.
    pub(super) fn open_round(&mut self, peer: SocketAddr, now_ms: u64, catch_up: bool) {
        let settle = self.config.cluster.sync_settle_ms.min(SETTLE_WINDOW_MS);
        if catch_up {
            return self.open_round_as(peer, now_ms, u64::MAX, 1, REPAIR_ROUNDS_MAX);
        }
        // A round still in flight with this peer (a catch-up after a move, slowed by a lost
        // packet, say) is left to finish: replacing it would drop what it was repairing.
        let in_flight = self.rounds.get(&peer).is_some_and(|r| {
            now_ms.saturating_sub(r.opened_ms) < self.config.cluster.reply_timeout_ms
        });
        if !in_flight {
            let settled_before_ms = now_ms.saturating_sub(settle);
            self.open_round_as(peer, now_ms, settled_before_ms, 0, REPAIR_ROUNDS_MAX);
        }
    }

    fn open_round_as(
        &mut self,
        peer: SocketAddr,
        now_ms: u64,
        settled_before_ms: u64,
        follow_ups: u8,
        repairs_left: u8,
    ) {
        let seed = self.rng.next_u64();
        let from_bucket = self.sync_window(now_ms);
        let round = SyncRound {
            seed,
            from_bucket,
            settled_before_ms,
            follow_ups,
            repairs_left,
            repaired: false,
            opened_ms: now_ms,
        };
        self.counters.sync_rounds += 1;
        self.ask(
            StoreRequest::Digests {
                from_bucket,
                settled_before_ms,
            },
            Awaiting::OpenRound { peer, round },
        );
    }

    /// Our digests for a round we open are in: send their summary.
    pub(super) fn send_summary(
        &mut self,
        peer: SocketAddr,
        round: SyncRound,
        digests: &[BucketDigest],
    ) {
        self.rounds.insert(peer, round);
        self.send(
            peer,
            Message::SyncSummary {
                round: round.seed,
                from_bucket: round.from_bucket,
                summary: summary_of(digests),
                settled_before_ms: round.settled_before_ms,
            },
        );
    }

    pub(super) fn on_sync_summary(
        &mut self,
        from: SocketAddr,
        round: u64,
        from_bucket: u64,
        summary: u64,
        settled_before_ms: u64,
    ) {
        self.ask(
            StoreRequest::Digests {
                from_bucket,
                settled_before_ms,
            },
            Awaiting::SummaryAnswer {
                from,
                round,
                summary,
            },
        );
    }

    /// Our digests as of a peer's summary are in: in sync, or send them.
    pub(super) fn answer_summary(
        &mut self,
        from: SocketAddr,
        round: u64,
        summary: u64,
        mut digests: Vec<BucketDigest>,
        now_ms: u64,
    ) {
        if summary_of(&digests) == summary {
            self.stale_peers.remove(&from);
            self.send(from, Message::SyncInSync { round });
            return;
        }
        self.mark_stale(from, now_ms);
        digests.truncate(sync::DIGESTS_PER_MESSAGE_MAX);
        self.send(from, Message::SyncDigests { round, digests });
    }

    pub(super) fn on_sync_digests(
        &mut self,
        from: SocketAddr,
        round: u64,
        mut theirs: Vec<BucketDigest>,
    ) {
        let Some(sync_round) = self.rounds.get(&from).filter(|r| r.seed == round).copied() else {
            return;
        };
        theirs.truncate(sync::DIGESTS_PER_MESSAGE_MAX);
        self.ask(
            StoreRequest::Digests {
                from_bucket: sync_round.from_bucket,
                settled_before_ms: sync_round.settled_before_ms,
            },
            Awaiting::CompareDigests {
                from,
                round: sync_round,
                theirs,
            },
        );
    }

    /// Our digests for a round's comparison are in: send filters for the buckets that differ.
    pub(super) fn compare_digests(
        &mut self,
        from: SocketAddr,
        sync_round: SyncRound,
        theirs: &[BucketDigest],
        mine: &[BucketDigest],
    ) {
        // Buckets where they hold something we do not hold the same way; buckets only we
        // hold come back through their filters in the answer.
        let mut differing: Vec<u64> = Vec::new();
        for digest in theirs {
            if digest.bucket < sync_round.from_bucket {
                continue;
            }
            let same = mine
                .binary_search_by_key(&digest.bucket, |d| d.bucket)
                .is_ok_and(|at| mine[at] == *digest);
            if !same {
                differing.push(digest.bucket);
            }
        }
        for digest in mine {
            let theirs_has = theirs.iter().any(|d| d.bucket == digest.bucket);
            if !theirs_has {
                differing.push(digest.bucket);
            }
        }
        differing.sort_unstable();
        differing.dedup();
        let settled_before_ms = sync_round.settled_before_ms;
        self.send_filters(from, sync_round.seed, differing, true, settled_before_ms);
    }

    /// Sends our filters for `buckets` (once the store has given their hashes).
    pub(super) fn send_filters(
        &mut self,
        to: SocketAddr,
        round: u64,
        buckets: Vec<u64>,
        answer: bool,
        settled_before_ms: u64,
    ) {
        self.ask(
            StoreRequest::BucketHashes {
                buckets: buckets.clone(),
                settled_before_ms,
            },
            Awaiting::SendFilters {
                to,
                round,
                buckets,
                answer,
                settled_before_ms,
            },
        );
    }

    /// Builds the filters of `buckets` from their `hashes` and sends them in messages of
    /// bounded size (an empty message when there are none, so the peer still answers).
    pub(super) fn send_built_filters(
        &mut self,
        to: SocketAddr,
        round: u64,
        buckets: &[u64],
        hashes: &[Vec<u64>],
        answer: bool,
        settled_before_ms: u64,
    ) {
        let mut filters = Vec::new();
        let mut bytes = 0;
        for (&bucket, hashes) in buckets.iter().zip(hashes) {
            let Some(filter) = FilterData::build(hashes, round) else {
                continue;
            };
            bytes += filter.wire_bytes();
            filters.push((bucket, filter));
            if bytes >= sync::FILTER_BYTES_MAX / 4 {
                let batch = std::mem::take(&mut filters);
                self.send(
                    to,
                    Message::SyncFilters {
                        round,
                        filters: batch,
                        answer,
                        settled_before_ms,
                    },
                );
                bytes = 0;
            }
        }
        if !filters.is_empty() || buckets.is_empty() {
            self.send(
                to,
                Message::SyncFilters {
                    round,
                    filters,
                    answer,
                    settled_before_ms,
                },
            );
        }
    }

    pub(super) fn on_sync_filters(
        &mut self,
        from: SocketAddr,
        round: u64,
        filters: Vec<(u64, FilterData)>,
        answer: bool,
        settled_before_ms: u64,
        now_ms: u64,
    ) {
        // Filters that answer ours only count inside a round we opened with that peer, and
        // under the cutoff we chose for it.
        let settled_before_ms = if answer {
            settled_before_ms
        } else {
            match self.rounds.get(&from).filter(|r| r.seed == round) {
                Some(r) => r.settled_before_ms,
                None => return,
            }
        };
        let skip_before = self.sync_window(now_ms);
        let mut buckets = Vec::new();
        let mut checked = Vec::new();
        for (bucket, data) in filters {
            if bucket < skip_before {
                continue;
            }
            let Some(filter) = data.check() else {
                self.counters.filters_refused += 1;
                continue;
            };
            buckets.push(bucket);
            checked.push((bucket, Arc::new(filter)));
        }
        let max = self.config.cluster.sync_entries_per_round_max;
        let max_bytes = self.config.cluster.sync_bytes_per_round_max;
        self.ask(
            StoreRequest::Lacking {
                filters: checked,
                round_seed: round,
                settled_before_ms,
                max,
                max_bytes,
            },
            Awaiting::SendLacking {
                to: from,
                round,
                answer,
                buckets,
                settled_before_ms,
            },
        );
    }

    /// The store found what `to`'s filters lack: send it, then (if it asked) our filters.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_lacking(
        &mut self,
        to: SocketAddr,
        round: u64,
        answer: bool,
        buckets: Vec<u64>,
        mut lacking: Vec<Entry>,
        settled_before_ms: u64,
        now_ms: u64,
    ) {
        if self.is_full(to, now_ms) {
            lacking.clear();
        }
        let sent = !lacking.is_empty();
        if sent {
            self.mark_stale(to, now_ms);
        }
        let chunk = self.config.cluster.entries_per_message_max.max(1);
        for part in lacking.chunks(chunk) {
            self.send(
                to,
                Message::SyncEntries {
                    round,
                    entries: part.to_vec(),
                },
            );
        }
        if answer {
            self.send_filters(to, round, buckets, false, settled_before_ms);
        } else if let Some(done) = self.rounds.remove(&to) {
            let settled = done.settled_before_ms;
            if done.follow_ups > 0 {
                self.open_round_as(to, now_ms, settled, done.follow_ups - 1, done.repairs_left);
            } else if (done.repaired || sent) && done.repairs_left > 0 {
                self.open_round_as(to, now_ms, settled, 0, done.repairs_left - 1);
            }
        }
    }

    /// Remembers that `peer`'s view differs from ours, within a bounded set.
    fn mark_stale(&mut self, peer: SocketAddr, now_ms: u64) {
        if self.stale_peers.len() >= STALE_PEERS_MAX && !self.stale_peers.contains_key(&peer) {
            let newest = self
                .stale_peers
                .iter()
                .max_by_key(|(_, &since)| since)
                .map(|(&a, _)| a);
            if let Some(newest) = newest {
                self.stale_peers.remove(&newest);
            }
        }
        self.stale_peers.entry(peer).or_insert(now_ms);
    }
}
