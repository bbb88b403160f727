//! The live dashboard (`GET /`): one self-contained page (markup, style and script inline, no
//! build step, nothing from other hosts) that reads `/v1/stats` and `/v1/topology` every
//! second and draws throughput and latency per op, keys and memory per shard, and the
//! discovery tree as this node sees it.
//!
//! Owns the page and its content security policy; the figures come from the JSON routes.

/// The page.
pub(super) const PAGE: &str = include_str!("dashboard.html");

/// The page may run its own inline script and style and fetch from this node only; the
/// browser refuses anything else (another host, a frame around it, a form).
pub(super) const POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
form-action 'none'; frame-ancestors 'none'";
