//! Replication lag of a REPRAM network: writes keys on one node at a steady pace and polls
//! other nodes with `local_only` reads (which never ask peers) until each holds every key;
//! records, per reader, the time from sending the write to the first local hit.
//!
//! Owns the lag measurement only; it never starts nodes (point it at running ones).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use repram::client::{Client, ClientOptions};

use crate::histograms::{new_latency_histogram, record_latency, LatencyHistogram};

/// What to measure.
#[derive(Clone, Debug)]
pub struct LagPlan {
    pub writer: SocketAddr,
    pub readers: Vec<SocketAddr>,
    /// Writes in all (the run is bounded by it and by `give_up` after the last).
    pub writes: u64,
    /// Writes per second.
    pub rate: u64,
    pub value_bytes: usize,
    pub ttl: Duration,
    /// A key a reader still lacks this long after its write counts as lost.
    pub give_up: Duration,
    /// Pause between two polls of a reader.
    pub poll: Duration,
    /// Key prefix, so runs do not see each other's keys.
    pub prefix: String,
    /// The nodes' client token, if they want one.
    pub token: Option<repram::auth::AuthToken>,
    /// TLS with nodes started with `--tls-cert`.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// What one reader saw.
pub struct ReaderLag {
    pub reader: SocketAddr,
    pub histogram: LatencyHistogram,
    /// Keys it never held within `give_up`.
    pub lost: u64,
}

struct Outstanding {
    key: String,
    sent: Instant,
}

/// Runs the measurement on a glommio executor of its own (unpinned) and returns per-reader
/// histograms.
pub fn measure_lag(plan: &LagPlan) -> Result<Vec<ReaderLag>, String> {
    if plan.rate == 0 || plan.readers.is_empty() {
        return Err("need a rate above 0 and at least one reader".into());
    }
    let plan = plan.clone();
    LocalExecutorBuilder::new(Placement::Unbound)
        .name("lag")
        .spawn(move || async move { run(plan).await })
        .map_err(|e| format!("cannot start an executor: {e}"))?
        .join()
        .map_err(|e| format!("the measurement failed: {e:?}"))?
}

async fn run(plan: LagPlan) -> Result<Vec<ReaderLag>, String> {
    let options = ClientOptions {
        shard_aware: true,
        request_timeout: Some(Duration::from_secs(2)),
        token: plan.token.clone(),
        tls: plan.tls.clone(),
        ..ClientOptions::default()
    };
    let writer = Client::connect(plan.writer, &options)
        .await
        .map_err(|e| format!("writer {}: {e}", plan.writer))?;
    let mut readers = Vec::new();
    for &addr in &plan.readers {
        let client = Client::connect(addr, &options)
            .await
            .map_err(|e| format!("reader {addr}: {e}"))?;
        readers.push(client);
    }
    let queues: Vec<Rc<RefCell<VecDeque<Outstanding>>>> =
        readers.iter().map(|_| Rc::default()).collect();
    let done = Rc::new(std::cell::Cell::new(false));
    let value = vec![0x5au8; plan.value_bytes];

    let mut pollers = Vec::new();
    for (client, queue) in readers.into_iter().zip(&queues) {
        let queue = queue.clone();
        let done = done.clone();
        let (give_up, poll) = (plan.give_up, plan.poll);
        pollers.push(glommio::spawn_local(async move {
            let mut histogram = new_latency_histogram();
            let mut lost = 0;
            loop {
                let batch: Vec<(String, Instant)> = queue
                    .borrow()
                    .iter()
                    .take(64)
                    .map(|o| (o.key.clone(), o.sent))
                    .collect();
                if batch.is_empty() && done.get() {
                    break;
                }
                for (key, sent) in batch {
                    let held = matches!(client.get_local(key.as_bytes()).await, Ok(Some(_)));
                    let age = sent.elapsed();
                    if held || age > give_up {
                        if held {
                            record_latency(&mut histogram, age);
                        } else {
                            lost += 1;
                        }
                        queue.borrow_mut().retain(|o| o.key != key);
                    }
                }
                glommio::timer::sleep(poll).await;
            }
            (histogram, lost)
        }));
    }

    let started = Instant::now();
    for i in 0..plan.writes {
        let due = started + Duration::from_secs_f64(i as f64 / plan.rate as f64);
        let now = Instant::now();
        if due > now {
            glommio::timer::sleep(due - now).await;
        }
        let key = format!("{}-{i}", plan.prefix);
        let sent = Instant::now();
        writer
            .put(key.as_bytes(), &value, plan.ttl)
            .await
            .map_err(|e| format!("write {key}: {e}"))?;
        for queue in &queues {
            queue.borrow_mut().push_back(Outstanding {
                key: key.clone(),
                sent,
            });
        }
    }
    done.set(true);
    let mut out = Vec::new();
    for (poller, reader) in pollers.into_iter().zip(&plan.readers) {
        let (histogram, lost) = poller.await;
        out.push(ReaderLag {
            reader: *reader,
            histogram,
            lost,
        });
    }
    Ok(out)
}
