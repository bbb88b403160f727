//! The REPRAM HTTP API front end (HTTP/1.1, keep-alive and pipelined), compatible with the
//! public REPRAM node's API as its clients use it: `/v1/data/{key}` (PUT/POST, GET, HEAD,
//! DELETE), `/v1/keys`, `/v1/health`, `/v1/status`, `/v1/topology`, with CORS; and the
//! figures: the Prometheus page (`/metrics`) and `/v1/stats` (JSON), both in `metrics`; and
//! the live dashboard (`/`, `dashboard`).
//!
//! Owns request heads (`request`, read with `httparse`) and routing (`connection`). Requests
//! on keys become native requests run by the key's owner shard (`frontend`); it never
//! touches a store itself.

mod connection;
mod dashboard;
pub mod metrics;
pub mod request;

pub(crate) use connection::{serve, HttpTtls};
