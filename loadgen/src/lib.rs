//! repram-loadgen: drives a REPRAM node, Redis/Valkey or memcached with one workload and
//! records latency in HdrHistograms (open loop with coordinated-omission correction, or
//! closed loop), then compares runs side by side and plots them.
//!
//! Module map: `workload` (what to send), `schedule` (when), `target` (how each server is
//! spoken to), `driver` (one thread's connections and workers), `run` (threads, phases,
//! progress), `histograms` (HdrHistogram formats), `report` (the JSON and files), `compare`
//! and `plot` (reading runs back), `cpu` (server CPU time from /proc), `lag` (replication lag
//! of a REPRAM network: write on one node, poll others with local-only reads), `flood`
//! (hostile clients for hardening checks: silent, trickling, never reading), `timeline` (a
//! long run's latency per window and servers' memory over time, with the soak's checks).

pub mod compare;
pub mod cpu;
pub mod driver;
pub mod flood;
pub mod histograms;
pub mod lag;
pub mod plot;
pub mod report;
pub mod run;
pub mod schedule;
pub mod target;
pub mod timeline;
pub mod workload;
