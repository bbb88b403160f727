//! REPRAM: an ephemeral, encrypted-at-rest key-value network node.
//!
//! Crate map (see ARCHITECTURE.md): `limits` names every limit and its default, `version` is
//! the hybrid logical clock that orders writes, `store` is the encrypted TTL store of one shard.

pub mod limits;
pub mod store;
pub mod version;

pub use limits::StoreLimits;
pub use store::{
    Applied, EntryMeta, KeySeed, ReplicaEntry, Store, StoreConfig, StoreError, StoreStats,
    TickReport,
};
pub use version::{HybridClock, Version};
