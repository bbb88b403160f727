//! A deterministic discrete-event simulator of many [`Node`]s: a virtual clock, a seeded RNG,
//! per-link latency from node positions, TCP-like links (in order; a lost packet costs a
//! retransmit delay, never the message), crashes, restarts, partitions and client writes.
//!
//! Owns the virtual world and its measurements. It never reaches into a node's decisions: it
//! only delivers inputs and carries out outputs, exactly as the real coordinator will. Same
//! seed, same run: [`Report::run_hash`] covers every delivered message and the final stores.

use std::cell::RefCell;
use std::hash::{Hash, Hasher};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::rc::Rc;

use hashbrown::{HashMap, HashSet};
use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use xxhash_rust::xxh3::Xxh3;

mod queue;
mod store;

use self::queue::EventQueue;
pub use self::store::{EntryTable, SimStore};
use crate::entry::{Applied, Entry, EntryStore, Plaintext};

use crate::message::{Message, Role};
use crate::node::{ClusterConfig, Input, LocalNode, NodeConfig, Output};
use crate::Version;

/// Port every simulated node listens on; addresses differ by IP.
const SIM_PORT: u16 = 7800;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub nodes: usize,
    pub roots: usize,
    pub seed: u64,
    /// Client writes, spread uniformly over `write_window_ms` after every node has joined.
    pub writes: usize,
    /// Nodes join one by one over this window first.
    pub join_window_ms: u64,
    pub write_window_ms: u64,
    /// Simulated time after the last write (so pushes, dumps and healing settle).
    pub settle_ms: u64,
    /// Latency between the two farthest nodes; nodes sit on a unit square, so the median link
    /// is about half of it, plus `latency_floor_ms`.
    pub latency_span_ms: u64,
    pub latency_floor_ms: u64,
    /// Chance that a message is lost once and retransmitted.
    pub loss: f64,
    pub retransmit_ms: u64,
    pub ttl_ms_min: u64,
    pub ttl_ms_max: u64,
    /// Share of non-root nodes crashed (and restarted empty after `restart_after_ms`) per
    /// simulated minute, during the write window.
    pub churn_per_minute: f64,
    pub restart_after_ms: u64,
    /// Client reads of written keys at random nodes, spread over the write window.
    pub reads: usize,
    /// Each node's clock is off by up to this much, either way (fixed per node).
    pub clock_skew_ms_max: u64,
    /// Cut the network in two halves (even and odd nodes) for this long, from the start of
    /// the write window; 0 never.
    pub partition_ms: u64,
    pub cluster: ClusterConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 100,
            roots: 2,
            seed: 1,
            writes: 1_000,
            join_window_ms: 20_000,
            write_window_ms: 60_000,
            settle_ms: 10_000,
            latency_span_ms: 90,
            latency_floor_ms: 5,
            loss: 0.01,
            retransmit_ms: 200,
            ttl_ms_min: 30_000,
            ttl_ms_max: 300_000,
            churn_per_minute: 0.0,
            restart_after_ms: 5_000,
            reads: 0,
            clock_skew_ms_max: 0,
            partition_ms: 0,
            cluster: ClusterConfig::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum EventKind {
    Deliver {
        from: u32,
        to: u32,
        msg: usize,
    },
    Wake {
        node: u32,
    },
    Join {
        node: u32,
    },
    Write {
        id: u32,
    },
    Read,
    Crash {
        node: u32,
    },
    Partition,
    Heal,
    /// Measure mean parent latency (at the end of the join window).
    SampleParentLatency,
    Restart {
        node: u32,
    },
    Unreachable {
        node: u32,
        peer: u32,
    },
}

struct SimNode {
    node: Option<LocalNode<SimStore>>,
    /// Position on the unit square (latency is distance).
    x: f64,
    y: f64,
    /// The wake-up currently scheduled for this node, if any (in simulated time).
    wake_at: u64,
    /// How far this node's clock is from simulated time.
    skew_ms: i64,
    bytes_sent: u64,
    bytes_received: u64,
}

/// Per-write bookkeeping: when each share of the live nodes held it.
#[derive(Clone, Debug, Default)]
struct WriteTrack {
    written_ms: u64,
    expires_ms: u64,
    holders: u32,
    reached_99_ms: Option<u64>,
    reached_all_ms: Option<u64>,
}

/// Where a long run stands, once a simulated minute.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub simulated_ms: u64,
    pub end_ms: u64,
    pub messages: u64,
    pub live_nodes: usize,
    /// Events scheduled and not yet run (messages in flight, timers, future writes).
    pub pending_events: usize,
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub nodes: usize,
    pub writes: usize,
    pub simulated_ms: u64,
    pub messages: u64,
    pub bytes: u64,
    pub bytes_by_kind: Vec<(&'static str, u64)>,
    /// Time from a write until 99% and 100% of the live nodes held it: p50, p99, max (ms).
    pub reach_99_ms: [u64; 3],
    pub reach_all_ms: [u64; 3],
    /// Writes that never reached every live node before expiring or the end of the run.
    pub writes_short_of_all: usize,
    /// Writes that no live node held at the end though still live.
    pub writes_lost: usize,
    pub attached: usize,
    pub depth_counts: [usize; 4],
    pub fanout_max: usize,
    pub crashes: u64,
    /// Mean one-way latency to the parent when every node had joined, and at the end (after
    /// rebalancing).
    pub parent_latency_joined_ms: f64,
    pub parent_latency_end_ms: f64,
    /// With a partition: from the heal until every write made before it was on every live
    /// node (`None`: some never got there).
    pub heal_to_converged_ms: Option<u64>,
    /// Bytes per node per sync period (the protocol's round).
    pub bytes_per_node_round: f64,
    /// Client reads: answered from the node's own store, by a lazy pull, or not at all
    /// (the key was live somewhere but neither here nor at a neighbour in time).
    pub reads: u64,
    pub reads_local: u64,
    pub reads_pulled: u64,
    pub reads_missed: u64,
    /// Misses of keys written more than a second before the read (the push had had its time).
    pub reads_missed_after_1s: u64,
    /// Hash of every delivered message and the final stores: equal seeds give equal hashes.
    pub run_hash: u64,
}

pub struct Sim {
    config: SimConfig,
    nodes: Vec<SimNode>,
    /// The entries every node's store refers to (see [`store`]).
    table: Rc<RefCell<EntryTable>>,
    roots: Vec<SocketAddr>,
    queue: EventQueue<EventKind>,
    /// Messages in flight, by slot (events refer to them by index).
    in_flight: Vec<Option<Message>>,
    free_slots: Vec<usize>,
    now_ms: u64,
    rng: Xoshiro256PlusPlus,
    /// Latest delivery time per directed link, so a link delivers in order like TCP.
    /// Links whose latest message was delayed by a retransmit, and until when: a later message
    /// on that link waits for it (a link delivers in order, like TCP). Without a loss a link's
    /// messages arrive in order anyway (its latency is fixed), so only these few are kept.
    link_blocked: HashMap<(u32, u32), u64>,
    /// Pairs that cannot reach each other.
    cut: HashSet<(u32, u32)>,
    writes: Vec<WriteTrack>,
    write_nodes: Vec<u32>,
    hash: Xxh3,
    messages: u64,
    bytes_by_kind: [u64; Message::KINDS.len()],
    crashes: u64,
    partitioned_at_ms: Option<u64>,
    healed_at_ms: Option<u64>,
    parent_latency_joined_ms: f64,
    /// Live nodes, kept as nodes start and stop (counting them per arrival would be slow).
    live: u32,
    reads: u64,
    reads_local: u64,
    reads_pulled: u64,
    reads_missed: u64,
    reads_missed_after_1s: u64,
    /// Reads waiting on a lazy pull: write id → how old the write was when read.
    read_ages: HashMap<u64, u64>,
}

fn addr_of(index: u32) -> SocketAddr {
    let [_, a, b, c] = index.to_be_bytes();
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, a, b, c), SIM_PORT))
}

fn index_of(addr: SocketAddr) -> Option<u32> {
    match addr {
        SocketAddr::V4(v4) if v4.port() == SIM_PORT => {
            let [ten, a, b, c] = v4.ip().octets();
            (ten == 10).then(|| u32::from_be_bytes([0, a, b, c]))
        }
        _ => None,
    }
}

impl Sim {
    pub fn new(config: SimConfig) -> Sim {
        assert!(
            config.roots >= 1 && config.roots <= config.nodes,
            "need 1..=nodes roots"
        );
        assert!(
            config.nodes < (1 << 24),
            "addresses hold 24 bits of node index"
        );
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(config.seed);
        let skew_max = config.clock_skew_ms_max as i64;
        let nodes = (0..config.nodes as u32)
            .map(|_| {
                let (x, y) = (unit(&mut rng), unit(&mut rng));
                let skew_ms = if skew_max == 0 {
                    0
                } else {
                    (rng.next_u64() % (2 * skew_max as u64 + 1)) as i64 - skew_max
                };
                SimNode {
                    node: None,
                    x,
                    y,
                    wake_at: u64::MAX,
                    skew_ms,
                    bytes_sent: 0,
                    bytes_received: 0,
                }
            })
            .collect();
        let roots = (0..config.roots as u32).map(addr_of).collect();
        let mut sim = Sim {
            nodes,
            table: EntryTable::shared(),
            roots,
            queue: EventQueue::default(),
            in_flight: Vec::new(),
            free_slots: Vec::new(),
            now_ms: 0,
            rng,
            link_blocked: HashMap::new(),
            cut: HashSet::new(),
            writes: Vec::new(),
            write_nodes: Vec::new(),
            hash: Xxh3::new(),
            messages: 0,
            bytes_by_kind: [0; Message::KINDS.len()],
            crashes: 0,
            partitioned_at_ms: None,
            healed_at_ms: None,
            parent_latency_joined_ms: 0.0,
            live: 0,
            reads: 0,
            reads_local: 0,
            reads_pulled: 0,
            reads_missed: 0,
            reads_missed_after_1s: 0,
            read_ages: HashMap::new(),
            config,
        };
        sim.schedule_world();
        sim
    }

    fn schedule(&mut self, at_ms: u64, kind: EventKind) {
        self.queue.push(at_ms, kind);
    }

    /// Joins, writes and churn, all drawn from the seed up front.
    fn schedule_world(&mut self) {
        let config = self.config.clone();
        self.schedule(config.join_window_ms, EventKind::SampleParentLatency);
        if config.partition_ms > 0 {
            self.schedule(config.join_window_ms, EventKind::Partition);
            self.schedule(config.join_window_ms + config.partition_ms, EventKind::Heal);
        }
        for i in 0..config.nodes as u32 {
            let at = if (i as usize) < config.roots {
                0
            } else {
                config.join_window_ms * u64::from(i) / config.nodes as u64
            };
            self.schedule(at, EventKind::Join { node: i });
        }
        let start = config.join_window_ms;
        for id in 0..config.writes as u32 {
            let at = start + self.rng.next_u64() % config.write_window_ms.max(1);
            let ttl = config.ttl_ms_min
                + self.rng.next_u64() % (config.ttl_ms_max - config.ttl_ms_min).max(1);
            self.writes.push(WriteTrack {
                written_ms: at,
                expires_ms: at + ttl,
                ..WriteTrack::default()
            });
            self.write_nodes.push(0);
            self.schedule(at, EventKind::Write { id });
        }
        let non_roots = config.nodes - config.roots;
        let crashes = (config.churn_per_minute * non_roots as f64 * config.write_window_ms as f64
            / 60_000.0)
            .round() as u64;
        for _ in 0..crashes {
            if non_roots == 0 {
                break;
            }
            let node = (config.roots + (self.rng.next_u64() % non_roots as u64) as usize) as u32;
            let at = start + self.rng.next_u64() % config.write_window_ms.max(1);
            self.schedule(at, EventKind::Crash { node });
        }
        for _ in 0..config.reads {
            let at = start + self.rng.next_u64() % config.write_window_ms.max(1);
            self.schedule(at, EventKind::Read);
        }
    }

    /// The time on node `index`'s own clock.
    fn node_now(&self, index: u32) -> u64 {
        let skew = self.nodes.get(index as usize).map_or(0, |n| n.skew_ms);
        (self.now_ms as i64 + skew).max(0) as u64
    }

    /// A random live node attached to the tree (a few random tries, then a scan).
    fn random_attached(&mut self) -> Option<u32> {
        let attached = |sim: &Sim, i: u32| {
            sim.nodes[i as usize]
                .node
                .as_ref()
                .is_some_and(|n| n.is_attached())
        };
        for _ in 0..64 {
            let i = (self.rng.next_u64() % self.nodes.len() as u64) as u32;
            if attached(self, i) {
                return Some(i);
            }
        }
        let all: Vec<u32> = (0..self.nodes.len() as u32)
            .filter(|&i| attached(self, i))
            .collect();
        if all.is_empty() {
            return None;
        }
        Some(all[(self.rng.next_u64() % all.len() as u64) as usize])
    }

    /// A client reads a written, still live key at a random attached node.
    fn do_read(&mut self) {
        // A written key that is still live (write ids are not in time order: try a few).
        let now = self.now_ms;
        let mut chosen = None;
        for _ in 0..16 {
            if self.writes.is_empty() {
                break;
            }
            let id = (self.rng.next_u64() % self.writes.len() as u64) as u32;
            let track = &self.writes[id as usize];
            if track.written_ms <= now && track.expires_ms > now {
                chosen = Some(id);
                break;
            }
        }
        let Some(id) = chosen else {
            return;
        };
        let Some(index) = self.random_attached() else {
            return;
        };
        self.reads += 1;
        let key: Rc<[u8]> = Rc::from(id.to_le_bytes().as_slice());
        let now = self.node_now(index);
        let local = self.nodes[index as usize]
            .node
            .as_ref()
            .is_some_and(|n| n.store().get(&key, now).is_some());
        if local {
            self.reads_local += 1;
        } else {
            let request = u64::from(id);
            let age = now.saturating_sub(self.writes[id as usize].written_ms);
            self.read_ages.insert(request, age);
            self.input(index, Input::LocalMiss { request, key });
        }
    }

    /// Cuts every link between the two sides (both directions) until [`Sim::heal`].
    pub fn partition(&mut self, side_a: &[u32], side_b: &[u32]) {
        for &a in side_a {
            for &b in side_b {
                self.cut.insert((a, b));
                self.cut.insert((b, a));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    pub fn node(&self, index: u32) -> Option<&LocalNode<SimStore>> {
        self.nodes.get(index as usize)?.node.as_ref()
    }

    /// Crashes a node now (its state is lost); it stays down.
    pub fn crash(&mut self, index: u32) {
        self.crash_node(index, false);
    }

    /// Starts a crashed node again now, with an empty store (it joins and takes a dump).
    pub fn restart(&mut self, index: u32) {
        if self
            .nodes
            .get(index as usize)
            .is_some_and(|n| n.node.is_none())
        {
            self.start_node(index);
        }
    }

    /// The index of a live node with this role and at least `children` children.
    pub fn find(&self, role: Role, children: usize) -> Option<u32> {
        (0..self.nodes.len() as u32).find(|&i| {
            self.node(i)
                .is_some_and(|n| n.role() == Some(role) && n.children().count() >= children)
        })
    }

    /// Mean one-way latency from each attached non-root node to its parent.
    pub fn mean_parent_latency_ms(&self) -> f64 {
        let mut total = 0u64;
        let mut count = 0u64;
        for (i, slot) in self.nodes.iter().enumerate() {
            let Some(node) = &slot.node else { continue };
            let Some(parent) = node.parent().and_then(index_of) else {
                continue;
            };
            total += self.latency_ms(i as u32, parent);
            count += 1;
        }
        total as f64 / count.max(1) as f64
    }

    /// Time from the heal until every write made before it reached every live node.
    fn heal_to_converged_ms(&self) -> Option<u64> {
        let healed = self.healed_at_ms?;
        let mut latest = healed;
        for track in self.writes.iter().filter(|w| w.written_ms < healed) {
            if track.expires_ms <= healed {
                continue;
            }
            latest = latest.max(track.written_ms + track.reached_all_ms?);
        }
        Some(latest - healed)
    }

    /// Moves every node to a new random place: the network's distances change under a tree
    /// built for the old ones.
    pub fn reshuffle_positions(&mut self) {
        for slot in &mut self.nodes {
            slot.x = unit(&mut self.rng);
            slot.y = unit(&mut self.rng);
        }
        self.link_blocked.clear();
    }

    /// Moves made to closer parents, over live nodes.
    pub fn rebalances(&self) -> u64 {
        self.nodes
            .iter()
            .filter_map(|n| n.node.as_ref())
            .map(|n| n.counters().rebalances)
            .sum()
    }

    /// Live nodes attached to the tree now.
    pub fn attached(&self) -> usize {
        self.nodes
            .iter()
            .filter_map(|n| n.node.as_ref())
            .filter(|n| n.is_attached())
            .count()
    }

    /// Delivers `msg` to node `to` now as if `from` had sent it (a hostile or broken peer).
    pub fn inject(&mut self, to: u32, from: SocketAddr, msg: Message) {
        self.input(to, Input::Message { from, msg });
    }

    /// Asks a node to leave gracefully now.
    pub fn leave(&mut self, index: u32) {
        self.input(index, Input::Leave);
        if let Some(n) = self.nodes.get_mut(index as usize) {
            if n.node.take().is_some() {
                self.live -= 1;
            }
        }
    }

    /// Makes node `index` write a new entry now; returns its write id.
    pub fn write_now(&mut self, index: u32, ttl_ms: u64) -> u32 {
        let id = self.writes.len() as u32;
        self.writes.push(WriteTrack {
            written_ms: self.now_ms,
            expires_ms: self.now_ms + ttl_ms,
            ..WriteTrack::default()
        });
        self.write_nodes.push(index);
        self.do_write(id, Some(index));
        id
    }

    /// Live nodes holding write `id` now.
    pub fn holders(&self, id: u32) -> usize {
        let key = id.to_le_bytes();
        self.nodes
            .iter()
            .filter_map(|n| n.node.as_ref())
            .filter(|n| n.store().get(&key, self.now_ms).is_some())
            .count()
    }

    pub fn live_nodes(&self) -> usize {
        self.live as usize
    }

    /// Runs events until simulated time `until_ms`.
    pub fn run_until(&mut self, until_ms: u64) {
        while let Some((at, kind)) = self.queue.pop_until(until_ms) {
            self.now_ms = at;
            self.step(kind);
        }
        let now = self.now_ms.max(until_ms);
        self.link_blocked.retain(|_, blocked| *blocked > now);
        self.now_ms = self.now_ms.max(until_ms);
    }

    /// Runs the whole configured scenario and reports.
    pub fn run(self) -> Report {
        self.run_with_progress(|_| {})
    }

    /// Runs the whole scenario, calling `progress` after each simulated minute (for long runs:
    /// the caller may print it; the run itself does not depend on it).
    pub fn run_with_progress(mut self, mut progress: impl FnMut(&Progress)) -> Report {
        let end = self.config.join_window_ms + self.config.write_window_ms + self.config.settle_ms;
        let mut at = 0;
        while at < end {
            at = (at + 60_000).min(end);
            self.run_until(at);
            progress(&Progress {
                simulated_ms: at,
                end_ms: end,
                messages: self.messages,
                live_nodes: self.live as usize,
                pending_events: self.queue.len(),
            });
        }
        self.report()
    }

    fn step(&mut self, kind: EventKind) {
        match kind {
            EventKind::Join { node } => self.start_node(node),
            EventKind::Wake { node } => {
                let due = self.nodes[node as usize].wake_at;
                if due <= self.now_ms {
                    self.nodes[node as usize].wake_at = u64::MAX;
                    self.input(node, Input::Tick);
                }
            }
            EventKind::Deliver { from, to, msg } => {
                let Some(message) = self.in_flight[msg].take() else {
                    return;
                };
                self.free_slots.push(msg);
                self.deliver(from, to, message);
            }
            EventKind::Write { id } => self.do_write(id, None),
            EventKind::Read => self.do_read(),
            EventKind::Crash { node } => self.crash_node(node, true),
            EventKind::Partition => {
                let (even, odd): (Vec<u32>, Vec<u32>) =
                    (0..self.nodes.len() as u32).partition(|i| i % 2 == 0);
                self.partition(&even, &odd);
                self.partitioned_at_ms = Some(self.now_ms);
            }
            EventKind::Heal => {
                self.heal();
                self.healed_at_ms = Some(self.now_ms);
            }
            EventKind::SampleParentLatency => {
                self.parent_latency_joined_ms = self.mean_parent_latency_ms();
            }
            EventKind::Restart { node } => self.start_node(node),
            EventKind::Unreachable { node, peer } => {
                let addr = addr_of(peer);
                self.input(node, Input::Unreachable { addr });
            }
        }
    }

    fn start_node(&mut self, index: u32) {
        let is_root = (index as usize) < self.config.roots;
        let config = NodeConfig {
            id: u64::from(index) + 1,
            addr: addr_of(index),
            roots: self.roots.clone(),
            is_root,
            cluster: self.config.cluster.clone(),
        };
        let seed = self.rng.next_u64();
        let now = self.node_now(index);
        if self.nodes[index as usize].node.is_none() {
            self.live += 1;
        }
        self.nodes[index as usize].node = Some(LocalNode::new(
            config,
            SimStore::new(Rc::clone(&self.table)),
            seed,
            now,
        ));
        self.after_input(index);
    }

    fn crash_node(&mut self, index: u32, restart: bool) {
        let Some(slot) = self.nodes.get_mut(index as usize) else {
            return;
        };
        if slot.node.take().is_some() {
            self.live -= 1;
            self.crashes += 1;
            slot.wake_at = u64::MAX;
            if restart {
                let at = self.now_ms + self.config.restart_after_ms;
                self.schedule(at, EventKind::Restart { node: index });
            }
        }
    }

    fn do_write(&mut self, id: u32, at_node: Option<u32>) {
        // A client writes to a random live, attached node.
        let index = match at_node.or_else(|| self.random_attached()) {
            Some(i) => i,
            None => return,
        };
        self.write_nodes[id as usize] = index;
        let track = &self.writes[id as usize];
        let ttl_ms = track.expires_ms - track.written_ms;
        // The writer's own clock stamps the version and the expiry.
        let now = self.node_now(index);
        let entry = Entry {
            key: Rc::from(id.to_le_bytes().as_slice()),
            value: Some(Plaintext::shared(&[0x76u8; 16])),
            expires_ms: now + ttl_ms,
            version: Version::new(now, 0, u64::from(index) + 1),
        };
        let Some(node) = self.nodes[index as usize].node.as_mut() else {
            return;
        };
        if node.store_mut().apply(&entry, now) == Applied::Stored {
            self.input(index, Input::LocalWrite(entry));
        }
    }

    fn input(&mut self, index: u32, input: Input) {
        let now = self.node_now(index);
        let Some(node) = self
            .nodes
            .get_mut(index as usize)
            .and_then(|n| n.node.as_mut())
        else {
            return;
        };
        node.handle(input, now);
        self.after_input(index);
    }

    /// Carries out a node's outputs, records arrivals, and schedules its next wake-up.
    fn after_input(&mut self, index: u32) {
        let now = self.now_ms;
        let skew = self.nodes[index as usize].skew_ms;
        let mut sends = Vec::new();
        let mut pulls = Vec::new();
        let (arrivals, wake) = {
            let Some(node) = self.nodes[index as usize].node.as_mut() else {
                return;
            };
            while let Some(output) = node.poll_output() {
                match output {
                    Output::Send { to, msg } => sends.push((to, msg)),
                    Output::PullDone { request, entry } => pulls.push((request, entry.is_some())),
                    // A local node answers its store requests itself; simulated clients
                    // write without asking for copies.
                    Output::Store { .. } | Output::WriteDone { .. } => {}
                }
            }
            (
                std::mem::take(&mut node.store_mut().arrivals),
                node.next_wake_ms(),
            )
        };
        for id in arrivals {
            self.arrived(id);
        }
        for (request, hit) in pulls {
            let age = self.read_ages.remove(&request).unwrap_or(0);
            if hit {
                self.reads_pulled += 1;
            } else {
                self.reads_missed += 1;
                if age > 1_000 {
                    self.reads_missed_after_1s += 1;
                }
            }
        }
        for (to, msg) in sends {
            self.send(index, to, msg);
        }
        // The node asked to wake at a time on its own clock.
        let wake = if wake == u64::MAX {
            wake
        } else {
            (wake as i64 - skew).max(0) as u64
        };
        let slot = &mut self.nodes[index as usize];
        if wake < slot.wake_at {
            slot.wake_at = wake;
            self.schedule(wake.max(now), EventKind::Wake { node: index });
        }
    }

    fn arrived(&mut self, id: u32) {
        let live = self.live_nodes() as u32;
        let now = self.now_ms;
        let Some(track) = self.writes.get_mut(id as usize) else {
            return;
        };
        track.holders += 1;
        let elapsed = now.saturating_sub(track.written_ms);
        if track.reached_99_ms.is_none() && u64::from(track.holders) * 100 >= u64::from(live) * 99 {
            track.reached_99_ms = Some(elapsed);
        }
        if track.reached_all_ms.is_none() && track.holders >= live {
            track.reached_all_ms = Some(elapsed);
        }
    }

    fn send(&mut self, from: u32, to: SocketAddr, msg: Message) {
        let bytes = msg.wire_bytes() as u64;
        self.bytes_by_kind[msg.kind_index()] += bytes;
        self.messages += 1;
        self.nodes[from as usize].bytes_sent += bytes;
        let Some(to) = index_of(to).filter(|&t| (t as usize) < self.nodes.len()) else {
            return;
        };
        let one_way = self.latency_ms(from, to);
        if self.cut.contains(&(from, to)) || self.nodes[to as usize].node.is_none() {
            // Like a TCP connection refused or reset: the sender learns after a round trip.
            return self.bounce(from, to, 2 * one_way);
        }
        let lost = unit(&mut self.rng) < self.config.loss;
        let mut at = self.now_ms + one_way + if lost { self.config.retransmit_ms } else { 0 };
        // A link delivers in order: never before a message sent on it before.
        match self.link_blocked.get(&(from, to)) {
            Some(&blocked) if blocked >= at => at = blocked,
            Some(_) => {
                self.link_blocked.remove(&(from, to));
            }
            None => {}
        }
        if lost {
            self.link_blocked.insert((from, to), at);
        }
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.in_flight[slot] = Some(msg);
                slot
            }
            None => {
                self.in_flight.push(Some(msg));
                self.in_flight.len() - 1
            }
        };
        self.schedule(
            at,
            EventKind::Deliver {
                from,
                to,
                msg: slot,
            },
        );
    }

    /// Tells `from`, after `delay_ms`, that `to` could not be reached.
    fn bounce(&mut self, from: u32, to: u32, delay_ms: u64) {
        let at = self.now_ms + delay_ms;
        self.schedule(
            at,
            EventKind::Unreachable {
                node: from,
                peer: to,
            },
        );
    }

    fn deliver(&mut self, from: u32, to: u32, msg: Message) {
        if self.nodes[to as usize].node.is_none() || self.cut.contains(&(from, to)) {
            return self.bounce(from, to, self.latency_ms(from, to));
        }
        self.now_ms.hash(&mut self.hash);
        from.hash(&mut self.hash);
        to.hash(&mut self.hash);
        msg.hash(&mut self.hash);
        self.nodes[to as usize].bytes_received += msg.wire_bytes() as u64;
        self.input(
            to,
            Input::Message {
                from: addr_of(from),
                msg,
            },
        );
    }

    fn latency_ms(&self, a: u32, b: u32) -> u64 {
        let (na, nb) = (&self.nodes[a as usize], &self.nodes[b as usize]);
        let distance =
            ((na.x - nb.x).powi(2) + (na.y - nb.y).powi(2)).sqrt() / std::f64::consts::SQRT_2;
        self.config.latency_floor_ms + (distance * self.config.latency_span_ms as f64) as u64
    }

    /// Checks the tree: following parents from any attached node never comes back to a node
    /// already seen (no cycle). Returns the number of parents above each attached node.
    pub fn check_tree(&self) -> Result<Vec<usize>, String> {
        let mut depths = Vec::new();
        for (i, slot) in self.nodes.iter().enumerate() {
            let Some(node) = &slot.node else { continue };
            if !node.is_attached() {
                continue;
            }
            let mut seen = vec![i as u32];
            let mut at = node;
            while at.role() != Some(Role::Root) {
                let Some(parent) = at.parent().and_then(index_of) else {
                    if seen.len() == 1 {
                        return Err(format!("node {i} is attached without a parent"));
                    }
                    break; // an ancestor rejoining: its subtree waits, detached, not cyclic
                };
                if seen.contains(&parent) {
                    return Err(format!("node {i}: a cycle through {seen:?}"));
                }
                seen.push(parent);
                // A dead parent: the node will notice by missed heartbeats.
                let Some(next) = self
                    .nodes
                    .get(parent as usize)
                    .and_then(|n| n.node.as_ref())
                else {
                    break;
                };
                at = next;
            }
            depths.push(seen.len() - 1);
        }
        Ok(depths)
    }

    /// Checks that, at rest, every attached node's role is the one below its parent's.
    pub fn check_roles(&self) -> Result<(), String> {
        for (i, slot) in self.nodes.iter().enumerate() {
            let Some(node) = &slot.node else { continue };
            let Some(parent) = node.parent().and_then(index_of) else {
                continue;
            };
            let Some(parent_node) = self
                .nodes
                .get(parent as usize)
                .and_then(|n| n.node.as_ref())
            else {
                continue;
            };
            if parent_node.role().and_then(Role::child) != node.role() {
                return Err(format!(
                    "node {i} is {:?} under a {:?}",
                    node.role(),
                    parent_node.role()
                ));
            }
        }
        Ok(())
    }

    pub fn report(&mut self) -> Report {
        let now = self.now_ms;
        let mut reach_99: Vec<u64> = Vec::new();
        let mut reach_all: Vec<u64> = Vec::new();
        let mut short = 0;
        let mut lost = 0;
        for (id, track) in self.writes.iter().enumerate() {
            if track.written_ms > now {
                continue;
            }
            reach_99.extend(track.reached_99_ms);
            match track.reached_all_ms {
                Some(ms) => reach_all.push(ms),
                None => short += 1,
            }
            if track.expires_ms > now {
                let key = (id as u32).to_le_bytes();
                let held = self
                    .nodes
                    .iter()
                    .filter_map(|n| n.node.as_ref())
                    .any(|n| n.store().get(&key, now).is_some());
                if !held {
                    lost += 1;
                }
            }
        }
        // The final stores go into the run's hash too.
        for slot in &self.nodes {
            if let Some(node) = &slot.node {
                let (entries, _) = node.store().dump_chunk(0, usize::MAX, now);
                let mut ids: Vec<(Rc<[u8]>, u64)> = entries
                    .iter()
                    .map(|e| (e.key.clone(), e.version.clock))
                    .collect();
                ids.sort();
                ids.hash(&mut self.hash);
            }
        }
        let mut depth_counts = [0usize; 4];
        let mut fanout_max = 0;
        let mut attached = 0;
        for slot in &self.nodes {
            if let Some(node) = &slot.node {
                if let Some(role) = node.role() {
                    depth_counts[role.depth() as usize] += 1;
                    attached += 1;
                }
                fanout_max = fanout_max.max(node.children().count());
            }
        }
        let mut bytes_by_kind: Vec<(&'static str, u64)> = Message::KINDS
            .iter()
            .zip(self.bytes_by_kind)
            .filter(|&(_, bytes)| bytes > 0)
            .map(|(&kind, bytes)| (kind, bytes))
            .collect();
        bytes_by_kind.sort();
        let total_bytes: u64 = bytes_by_kind.iter().map(|(_, b)| b).sum();
        let rounds = now as f64 / self.config.cluster.sync_interval_ms.max(1) as f64;
        let bytes_per_node_round =
            total_bytes as f64 / self.config.nodes.max(1) as f64 / rounds.max(1.0);
        Report {
            nodes: self.config.nodes,
            writes: self.writes.len(),
            simulated_ms: now,
            messages: self.messages,
            bytes: bytes_by_kind.iter().map(|(_, b)| b).sum(),
            bytes_by_kind,
            reach_99_ms: percentiles(&mut reach_99),
            reach_all_ms: percentiles(&mut reach_all),
            writes_short_of_all: short,
            writes_lost: lost,
            attached,
            depth_counts,
            fanout_max,
            crashes: self.crashes,
            parent_latency_joined_ms: self.parent_latency_joined_ms,
            parent_latency_end_ms: self.mean_parent_latency_ms(),
            heal_to_converged_ms: self.heal_to_converged_ms(),
            bytes_per_node_round,
            reads: self.reads,
            reads_local: self.reads_local,
            reads_pulled: self.reads_pulled,
            reads_missed: self.reads_missed,
            reads_missed_after_1s: self.reads_missed_after_1s,
            run_hash: self.hash.finish(),
        }
    }
}

fn unit(rng: &mut Xoshiro256PlusPlus) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// p50, p99 and max of `values` (sorted in place); zeros when empty.
fn percentiles(values: &mut [u64]) -> [u64; 3] {
    if values.is_empty() {
        return [0; 3];
    }
    values.sort_unstable();
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    [at(0.5), at(0.99), values[values.len() - 1]]
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seconds = (self.simulated_ms as f64 / 1000.0).max(0.001);
        writeln!(
            f,
            "nodes {}  writes {}  simulated {:.1} s  crashes {}",
            self.nodes, self.writes, seconds, self.crashes
        )?;
        writeln!(
            f,
            "write reaches 99% of live nodes  p50 {} ms  p99 {} ms  max {} ms",
            self.reach_99_ms[0], self.reach_99_ms[1], self.reach_99_ms[2]
        )?;
        writeln!(
            f,
            "write reaches every live node    p50 {} ms  p99 {} ms  max {} ms  (short of all: {})",
            self.reach_all_ms[0],
            self.reach_all_ms[1],
            self.reach_all_ms[2],
            self.writes_short_of_all
        )?;
        writeln!(
            f,
            "writes lost (live, held by no live node): {}",
            self.writes_lost
        )?;
        if self.reads > 0 {
            writeln!(
                f,
                "reads {}: local {}, by lazy pull {}, missed {} ({} of writes older than 1 s)",
                self.reads,
                self.reads_local,
                self.reads_pulled,
                self.reads_missed,
                self.reads_missed_after_1s
            )?;
        }
        writeln!(
            f,
            "tree: {} attached; roots {} trunks {} branches {} leaves {}; max fan-out {}",
            self.attached,
            self.depth_counts[0],
            self.depth_counts[1],
            self.depth_counts[2],
            self.depth_counts[3],
            self.fanout_max
        )?;
        writeln!(
            f,
            "traffic: {} messages, {:.1} bytes per node per second, {:.0} per node per sync round",
            self.messages,
            self.bytes as f64 / self.nodes.max(1) as f64 / seconds,
            self.bytes_per_node_round
        )?;
        for (kind, bytes) in &self.bytes_by_kind {
            writeln!(
                f,
                "  {kind:<16} {:>12.1} B/node/s",
                *bytes as f64 / self.nodes.max(1) as f64 / seconds
            )?;
        }
        writeln!(
            f,
            "mean parent latency: {:.1} ms once joined, {:.1} ms at the end",
            self.parent_latency_joined_ms, self.parent_latency_end_ms
        )?;
        if let Some(ms) = self.heal_to_converged_ms {
            writeln!(
                f,
                "after the partition healed, every earlier write was everywhere in {ms} ms"
            )?;
        }
        write!(f, "run hash {:016x}", self.run_hash)
    }
}
