//! REPRAM's peer network as pure logic: a sans-IO state machine per node ([`Node`]) and a
//! deterministic discrete-event simulator ([`sim`]) that runs thousands of them in one process.
//!
//! Nothing here reads a clock, draws system randomness, touches a socket or spawns a thread:
//! inputs are peer messages, local writes and ticks with a `now_ms`; outputs are messages to
//! send and the next wake-up. The glommio coordinator and the simulator are both drivers.

pub mod entry;
pub mod message;
pub mod node;
pub mod sim;
pub mod store_request;
pub mod sync;
pub mod version;

pub use entry::{Applied, Entry, EntryStore, MemStore};
pub use message::{Message, NodeInfo, Role};
pub use node::{
    ClusterConfig, Input, LocalNode, Neighbour, Node, NodeConfig, NodeCounters, Output, Topology,
};
pub use store_request::{StoreReply, StoreRequest};
pub use version::{HybridClock, Version};
