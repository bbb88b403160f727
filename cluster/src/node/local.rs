//! A node with its store beside it, in one thread: every store request is answered at once,
//! before `handle` returns, so the node's state is complete when the driver looks at it. What the simulator and the tests drive; the real server answers store requests
//! across its shards instead.
//!
//! Owns the pairing of one [`Node`] with one [`EntryStore`]; adds no protocol logic.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};

use super::{Input, Node, NodeConfig, Output};
use crate::entry::EntryStore;

pub struct LocalNode<S> {
    node: Node,
    store: S,
    /// The time of the latest input: store requests are answered as of then.
    now_ms: u64,
    /// The node's outputs other than store requests, in order.
    outbox: VecDeque<Output>,
}

impl<S: EntryStore> LocalNode<S> {
    pub fn new(config: NodeConfig, store: S, seed: u64, now_ms: u64) -> Self {
        LocalNode {
            node: Node::new(config, seed, now_ms),
            store,
            now_ms,
            outbox: VecDeque::new(),
        }
    }

    /// Feeds the node one input. A tick also lets the store forget what has expired.
    pub fn handle(&mut self, input: Input, now_ms: u64) {
        self.now_ms = now_ms;
        if matches!(input, Input::Tick) {
            self.store.expire(now_ms);
        }
        self.node.handle(input, now_ms);
        self.answer_store();
    }

    /// The next output for the driver (store requests never reach it).
    pub fn poll_output(&mut self) -> Option<Output> {
        // Calls made through `DerefMut` may have left store requests behind.
        self.answer_store();
        self.outbox.pop_front()
    }

    /// Answers every store request the node has made, and whatever those answers lead to.
    fn answer_store(&mut self) {
        while let Some(output) = self.node.poll_output() {
            match output {
                Output::Store { ticket, request } => {
                    let reply = request.run(&mut self.store, self.now_ms);
                    self.node
                        .handle(Input::Store { ticket, reply }, self.now_ms);
                }
                other => self.outbox.push_back(other),
            }
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }
}

impl<S> Deref for LocalNode<S> {
    type Target = Node;

    fn deref(&self) -> &Node {
        &self.node
    }
}

impl<S> DerefMut for LocalNode<S> {
    fn deref_mut(&mut self) -> &mut Node {
        &mut self.node
    }
}
