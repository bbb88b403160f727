//! REPRAM: an ephemeral, encrypted-at-rest key-value network node.
//!
//! Crate map (see ARCHITECTURE.md): `limits` names every limit and its default, `version` is
//! the hybrid logical clock that orders writes, `store` is the encrypted TTL store of one shard.
//!
//! ```
//! use repram::{Store, StoreConfig, StoreError, StoreLimits};
//!
//! let now = 1_700_000_000_000; // wall-clock milliseconds, passed in by the shard
//! let config = StoreConfig { shard_id: 0, node_id: 1, limits: StoreLimits::default() };
//! let mut store = Store::new(config, now)?;
//!
//! let mut value = b"meet at noon".to_vec(); // e.g. a slice of the receive buffer
//! store.put(b"drop:42", &mut value, 30_000, now)?;
//! assert!(value.iter().all(|&b| b == 0), "the plaintext was wiped once sealed");
//!
//! let mut out = Vec::new();
//! store.get(b"drop:42", now + 1_000, &mut out)?;
//! assert_eq!(out, b"meet at noon");
//! assert_eq!(store.get(b"drop:42", now + 30_000, &mut out), Err(StoreError::NotFound));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod auth;
mod buffers;
pub mod client;
pub mod config;
mod coordinator;
pub mod doctor;
mod frontend;
#[doc(hidden)]
pub mod fuzzing;
pub mod heap;
pub mod http;
pub mod limits;
pub mod node;
pub mod resp;
pub mod store;
pub mod tls;
pub use repram_cluster as cluster;
pub use repram_cluster::version;
pub mod wire;
/// Keys of a private network (sealed peer links), for the CLI and tests.
pub use coordinator::sealed as peer_keys;

pub use limits::StoreLimits;
pub use store::{
    Applied, EntryMeta, KeySeed, ReplicaEntry, Store, StoreConfig, StoreError, StoreStats,
    TickReport,
};
pub use version::{HybridClock, Version};
