//! Lazy pull: a read that missed locally asks the tree neighbours in parallel, with a
//! deadline; the first hit is stored and returned; misses are cached briefly; pulls from peers
//! are answered from local data only, within a rate cap. Never chains a pull onward.

use std::net::SocketAddr;
use std::rc::Rc;

use rand_core::RngCore;

use super::{Awaiting, Node, Output, PendingPull};
use crate::entry::Entry;
use crate::message::Message;
use crate::store_request::StoreRequest;

impl Node {
    pub(super) fn pull(&mut self, request: u64, key: Rc<[u8]>, now_ms: u64) {
        let neighbours = self.neighbours();
        let cached_miss = self
            .pull_misses
            .get(&key)
            .is_some_and(|&until| until > now_ms);
        if neighbours.is_empty()
            || cached_miss
            || self.pulls.len() >= self.config.cluster.pulls_in_flight_max
        {
            self.counters.pulls_missed += 1;
            self.outbox.push_back(Output::PullDone {
                request,
                entry: None,
            });
            return;
        }
        let nonce = self.rng.next_u64();
        for to in &neighbours {
            self.send(
                *to,
                Message::Pull {
                    nonce,
                    key: key.clone(),
                },
            );
        }
        self.pulls.insert(
            nonce,
            PendingPull {
                request,
                key,
                deadline_ms: now_ms + self.config.cluster.pull_timeout_ms,
                waiting: neighbours.len() as u32,
            },
        );
    }

    /// Answers from local data only (never asks further: no chains), within a rate cap.
    pub(super) fn on_pull(&mut self, from: SocketAddr, nonce: u64, key: Rc<[u8]>, now_ms: u64) {
        let second = now_ms / 1_000;
        if self.pull_answers.0 != second {
            self.pull_answers = (second, 0);
        }
        if self.pull_answers.1 >= self.config.cluster.pull_answers_per_second_max
            || self.pull_answers_waiting >= self.config.cluster.pull_answers_waiting_max
        {
            // Over the cap the store is spared, but the asker is not left waiting out its
            // deadline: "not here" costs one small message.
            self.counters.pull_answers_dropped += 1;
            self.send(from, Message::PullReply { nonce, entry: None });
            return;
        }
        self.pull_answers.1 += 1;
        self.pull_answers_waiting += 1;
        self.ask(
            StoreRequest::Get { key },
            Awaiting::PullAnswer { to: from, nonce },
        );
    }

    pub(super) fn on_pull_reply(&mut self, nonce: u64, entry: Option<Entry>, now_ms: u64) {
        let Some(pending) = self.pulls.get_mut(&nonce) else {
            return; // answered already, or timed out
        };
        pending.waiting = pending.waiting.saturating_sub(1);
        let latest_ms = now_ms.saturating_add(self.config.cluster.ttl_ms_max);
        let hit = entry
            .filter(|e| e.key == pending.key && e.expires_ms > now_ms && e.expires_ms <= latest_ms);
        match hit {
            Some(entry) => {
                let Some(pending) = self.pulls.remove(&nonce) else {
                    return;
                };
                self.counters.pulls_hit += 1;
                // The first hit wins: stored here, so the next read is local.
                self.ask(
                    StoreRequest::Apply {
                        entries: vec![entry.clone()],
                    },
                    Awaiting::Nothing,
                );
                self.outbox.push_back(Output::PullDone {
                    request: pending.request,
                    entry: Some(entry),
                });
            }
            None if pending.waiting == 0 => self.finish_pull_miss(nonce, now_ms),
            None => {}
        }
    }

    pub(super) fn finish_pull_miss(&mut self, nonce: u64, now_ms: u64) {
        let Some(pending) = self.pulls.remove(&nonce) else {
            return;
        };
        self.counters.pulls_missed += 1;
        let until = now_ms + self.config.cluster.pull_miss_cache_ms;
        self.pull_misses.insert(pending.key, until);
        self.outbox.push_back(Output::PullDone {
            request: pending.request,
            entry: None,
        });
    }

    pub(super) fn expire_pulls(&mut self, now_ms: u64) {
        let due: Vec<u64> = self
            .pulls
            .iter()
            .filter(|(_, p)| p.deadline_ms <= now_ms)
            .map(|(&n, _)| n)
            .collect();
        for nonce in due {
            self.finish_pull_miss(nonce, now_ms);
        }
        self.pull_misses.retain(|_, &mut until| until > now_ms);
    }
}
