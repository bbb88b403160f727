//! Rebalance: now and then, with jitter, an attached node asks a root for candidates, measures
//! them, and moves to one at least `rebalance_gain_percent` closer than its parent, keeping
//! its role (so its subtree stays valid). Leaves look most often, branches half as often,
//! trunks a quarter: lower layers settle first. Make-before-break: the new parent accepts
//! before the old one hears `Leave`.

use std::net::SocketAddr;

use rand_core::RngCore;

use super::{Link, Node};
use crate::message::{Message, NodeInfo, Role, PEER_PROTOCOL_MAJOR};

/// Where a search for a closer parent stands.
#[derive(Clone, Debug)]
pub(super) struct Search {
    pub(super) deadline_ms: u64,
    step: Step,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// Asked a root for a map.
    Mapping,
    /// Pinging candidates.
    Probing,
    /// Asked `to` to take us.
    Attaching { to: SocketAddr },
}

impl Node {
    /// Sets when this node next looks for a closer parent (roots never move).
    pub(super) fn schedule_rebalance(&mut self, now_ms: u64) {
        let factor = match self.role {
            Some(Role::Leaf) => 1,
            Some(Role::Branch) => 2,
            Some(Role::Trunk) => 4,
            Some(Role::Root) | None => {
                self.next_rebalance_ms = u64::MAX;
                return;
            }
        };
        let interval = self.config.cluster.rebalance_interval_ms * factor;
        let jitter = interval / 10;
        let offset = if jitter == 0 {
            0
        } else {
            self.rng.next_u64() % (2 * jitter)
        };
        self.next_rebalance_ms = now_ms + interval - jitter + offset;
    }

    pub(super) fn rebalance_tick(&mut self, now_ms: u64) {
        if let Some(search) = &self.rebalance {
            if now_ms >= search.deadline_ms {
                if search.step == Step::Probing {
                    return self.choose_closer(now_ms);
                }
                self.rebalance = None;
            }
            return;
        }
        if now_ms < self.next_rebalance_ms {
            return;
        }
        self.schedule_rebalance(now_ms);
        // Only a settled node moves: attached, its parent's distance known, no dump running.
        if !self.is_attached() || self.parent_rtt_ms.is_none() || self.dump.is_some() {
            return;
        }
        if self.roots.is_empty() {
            return;
        }
        let root = self.roots[(self.rng.next_u64() % self.roots.len() as u64) as usize];
        self.rebalance = Some(Search {
            deadline_ms: now_ms + self.config.cluster.reply_timeout_ms,
            step: Step::Mapping,
        });
        let msg = Message::Join {
            major: PEER_PROTOCOL_MAJOR,
            info: self.info(),
        };
        self.send(root, msg);
    }

    pub(super) fn on_rebalance_map(&mut self, candidates: Vec<NodeInfo>, now_ms: u64) {
        if self.rebalance.as_ref().map(|s| &s.step) != Some(&Step::Mapping) {
            return;
        }
        let parent = self.parent.as_ref().map(|p| p.info.addr);
        let own = self.config.id;
        // Only parents under which we keep our role, and nobody below us.
        let eligible: Vec<NodeInfo> = candidates
            .into_iter()
            .filter(|c| {
                c.id != own && Some(c.addr) != parent && !self.children.contains_key(&c.addr)
            })
            .filter(|c| c.has_room() && c.role.and_then(Role::child) == self.role)
            .collect();
        if eligible.is_empty() {
            self.rebalance = None;
            return;
        }
        self.ping_candidates(eligible, now_ms);
        self.rebalance = Some(Search {
            deadline_ms: now_ms + self.config.cluster.probe_timeout_ms,
            step: Step::Probing,
        });
    }

    pub(super) fn on_rebalance_pong(&mut self, nonce: u64, info: NodeInfo, now_ms: u64) {
        if self.rebalance.as_ref().map(|s| &s.step) != Some(&Step::Probing) {
            return;
        }
        if self.record_pong(nonce, info, now_ms) {
            self.choose_closer(now_ms);
        }
    }

    /// Moves toward the closest candidate if it beats the parent by the required margin.
    fn choose_closer(&mut self, now_ms: u64) {
        let Some(parent_rtt) = self.parent_rtt_ms else {
            self.rebalance = None;
            return;
        };
        let parent = self.parent.as_ref().map(|p| p.info.addr);
        let best = self
            .candidates
            .drain(..)
            .filter_map(|c| Some((c.rtt_ms?, c.info)))
            .filter(|(_, info)| info.has_room() && Some(info.addr) != parent)
            .min_by_key(|(rtt, info)| (*rtt, info.id));
        let gain = self.config.cluster.rebalance_gain_percent;
        // Closer by the share asked for, and by more than timer noise: on a LAN, 0 ms against
        // 1 ms is 100% closer and means nothing.
        let closer = |rtt: u64| {
            rtt * 100 <= parent_rtt * (100 - gain.min(100))
                && rtt + self.config.cluster.rebalance_gain_min_ms <= parent_rtt
        };
        match best {
            Some((rtt, info)) if closer(rtt) => {
                self.rebalance = Some(Search {
                    deadline_ms: now_ms + self.config.cluster.reply_timeout_ms,
                    step: Step::Attaching { to: info.addr },
                });
                let me = self.info();
                self.send(info.addr, Message::Attach { info: me });
            }
            _ => self.rebalance = None,
        }
    }

    pub(super) fn on_rebalance_reply(
        &mut self,
        from: SocketAddr,
        accepted: bool,
        info: NodeInfo,
        path: Vec<u64>,
        now_ms: u64,
    ) {
        let Some(Step::Attaching { to }) = self.rebalance.as_ref().map(|s| s.step.clone()) else {
            return;
        };
        if to != from {
            return;
        }
        self.rebalance = None;
        let keeps_role = info.role.and_then(Role::child) == self.role;
        let cycle = self.would_cycle(from, &path);
        if !accepted {
            return;
        }
        if !keeps_role || cycle {
            // Accepted where we cannot stay: undo at once.
            let me = self.info();
            self.send(from, Message::Leave { info: me });
            return;
        }
        // Make before break: the new parent holds us; now tell the old one.
        let me = self.info();
        if let Some(old) = self.parent.take() {
            self.send(old.info.addr, Message::Leave { info: me });
        }
        self.parent = Some(Link {
            info,
            last_heard_ms: now_ms,
            open_children: Vec::new(),
        });
        self.path = path;
        self.parent_rtt_ms = None;
        self.heartbeat_sent_ms = None;
        self.next_heartbeat_ms = now_ms;
        self.counters.rebalances += 1;
        self.tell_children(now_ms);
        // Writes the old parent stopped sending and the new one had before taking us: one
        // sync round with the new parent closes that gap now, not a sync period later.
        self.open_round(from, now_ms, true);
    }
}
