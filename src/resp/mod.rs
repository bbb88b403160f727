//! The Redis protocol front end (RESP2, a subset): what `redis-cli`, `redis-benchmark` and
//! every language's Redis library speak.
//!
//! Owns the RESP grammar (`parse`), the reply encoding (`reply`) and one connection's command
//! handling (`connection`). Commands on keys become requests run by the shard that owns the
//! key exactly as the native protocol's are (same store, limits, replication, lazy pull): on
//! this shard through `Shard::execute` straight from the receive buffer, on another as native
//! frames; this module never touches a store itself.

mod connection;
pub mod parse;
pub mod reply;

pub(crate) use connection::serve;
