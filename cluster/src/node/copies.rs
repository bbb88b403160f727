//! Write copies: a local write that asks for `copies` is answered once that many nodes hold it
//! (itself included), or at its deadline with however many did. Holding is acknowledged back
//! along the push: a receiver answers as soon as the entries are applied, and, when more hops
//! are wanted, pushes on asking for acknowledgements of its own and relays each one back.
//!
//! Owns the waiting writes and the relays; never decides where entries go (`push` does).

use std::net::SocketAddr;

use rand_core::RngCore;

use super::{Node, Output};
use crate::entry::Entry;
use crate::message::{AckRequest, Message};

/// A local write waiting for its copies.
#[derive(Clone, Debug)]
pub(super) struct CopiesWait {
    request: u64,
    /// Nodes known to hold the write, this one included.
    holders: u32,
    copies: u32,
    deadline_ms: u64,
}

/// A push this node passed on asking for acknowledgements: each one that comes back is
/// relayed to `upstream` as an acknowledgement of `nonce`.
#[derive(Clone, Copy, Debug)]
pub(super) struct AckRelay {
    upstream: SocketAddr,
    nonce: u64,
    until_ms: u64,
}

/// Writes waiting for copies, and relays, held at most; past it a write is answered at once
/// with the copies it has (one), and a push is passed on without asking.
const WAITING_MAX: usize = 65_536;

impl Node {
    /// A local write (already in the store) that wants `copies` nodes to hold it.
    pub(super) fn write_with_copies(
        &mut self,
        entry: Entry,
        request: u64,
        copies: u8,
        timeout_ms: u64,
        now_ms: u64,
    ) {
        let copies = u32::from(copies.max(1));
        let neighbours = self
            .neighbours()
            .into_iter()
            .any(|n| !self.is_full(n, now_ms));
        if copies == 1 || !neighbours || self.copies_waiting.len() >= WAITING_MAX {
            self.push(vec![entry], None, None, now_ms);
            self.outbox.push_back(Output::WriteDone {
                request,
                holders: 1,
                complete: copies == 1,
            });
            return;
        }
        let nonce = self.rng.next_u64();
        self.copies_waiting.insert(
            nonce,
            CopiesWait {
                request,
                holders: 1,
                copies,
                deadline_ms: now_ms.saturating_add(timeout_ms),
            },
        );
        // Two more copies wanted: ask two hops (each hop along a tree path adds one holder).
        let want = u8::try_from(copies - 1).unwrap_or(u8::MAX);
        self.push(vec![entry], None, Some(AckRequest { nonce, want }), now_ms);
    }

    /// `holders` more nodes hold what the push acknowledged by `nonce` carried.
    pub(super) fn on_push_ack(&mut self, nonce: u64, holders: u32) {
        // A single acknowledgement never stands for more nodes than a write can want.
        let holders = holders.min(u32::from(u8::MAX));
        if let Some(wait) = self.copies_waiting.get_mut(&nonce) {
            wait.holders = wait.holders.saturating_add(holders);
            if wait.holders >= wait.copies {
                let Some(wait) = self.copies_waiting.remove(&nonce) else {
                    return;
                };
                self.counters.writes_copied += 1;
                self.outbox.push_back(Output::WriteDone {
                    request: wait.request,
                    holders: wait.holders,
                    complete: true,
                });
            }
        } else if let Some(relay) = self.ack_relays.get(&nonce).copied() {
            self.send(
                relay.upstream,
                Message::PushAck {
                    nonce: relay.nonce,
                    holders,
                },
            );
        }
    }

    /// Entries of a push that asked for acknowledgements are applied here: acknowledge them
    /// (unless the store was full) and say how to ask the next hops, if more are wanted.
    pub(super) fn acknowledge_push(
        &mut self,
        from: SocketAddr,
        ack: AckRequest,
        fresh: &[Entry],
        full: bool,
        now_ms: u64,
    ) -> Option<AckRequest> {
        if full {
            return None;
        }
        self.send(
            from,
            Message::PushAck {
                nonce: ack.nonce,
                holders: 1,
            },
        );
        if ack.want <= 1 || fresh.is_empty() || self.ack_relays.len() >= WAITING_MAX {
            return None;
        }
        let nonce = self.rng.next_u64();
        self.ack_relays.insert(
            nonce,
            AckRelay {
                upstream: from,
                nonce: ack.nonce,
                until_ms: now_ms.saturating_add(self.config.cluster.push_ack_window_ms),
            },
        );
        Some(AckRequest {
            nonce,
            want: ack.want - 1,
        })
    }

    /// Answers the writes whose deadline passed with the copies they have, and forgets relays
    /// past their window.
    pub(super) fn expire_copies(&mut self, now_ms: u64) {
        let due: Vec<u64> = self
            .copies_waiting
            .iter()
            .filter(|(_, w)| w.deadline_ms <= now_ms)
            .map(|(&nonce, _)| nonce)
            .collect();
        for nonce in due {
            if let Some(wait) = self.copies_waiting.remove(&nonce) {
                self.counters.writes_copies_timed_out += 1;
                self.outbox.push_back(Output::WriteDone {
                    request: wait.request,
                    holders: wait.holders,
                    complete: false,
                });
            }
        }
        self.ack_relays.retain(|_, relay| relay.until_ms > now_ms);
    }

    /// When the first waiting write's deadline comes.
    pub(super) fn copies_next_wake_ms(&self) -> u64 {
        let write = self
            .copies_waiting
            .values()
            .map(|w| w.deadline_ms)
            .min()
            .unwrap_or(u64::MAX);
        let relay = self
            .ack_relays
            .values()
            .map(|r| r.until_ms)
            .min()
            .unwrap_or(u64::MAX);
        write.min(relay)
    }
}
