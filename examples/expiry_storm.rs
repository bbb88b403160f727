//! An expiry storm against a running node: `--keys` keys written with TTLs chosen so that
//! every one expires in the same second, while a probe client reads other keys at a steady
//! rate. Prints the probe's latency (from each read's intended start, so a stall counts for
//! every read it delays) before the storm and while the node reclaims it, and how long the
//! reclaiming took. `benches/expiry-storm.sh` starts a release node and runs this.
//!
//! `cargo run --release --example expiry_storm -- --addr 127.0.0.1:7700 --keys 1000000`

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use repram::client::{BlockingClient, ClientOptions};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:7700")]
    addr: String,
    /// Keys that expire together.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Writer threads.
    #[arg(long, default_value_t = 4)]
    writers: u64,
    /// Seconds from the start to the storm (the writes must finish before it).
    #[arg(long, default_value_t = 60)]
    storm_after: u64,
    /// Probe reads a second.
    #[arg(long, default_value_t = 1_000)]
    probe_rate: u64,
}

/// Writes in flight at once per writer.
const LANES: u64 = 32;

/// Runs every future to its end, together.
async fn join_all<F: std::future::Future<Output = ()>>(futures: Vec<F>) {
    let mut futures: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        futures.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if futures.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

fn connect(addr: &str) -> BlockingClient {
    BlockingClient::connect(addr, &ClientOptions::default()).expect("connect")
}

/// The q-quantile of sorted latencies.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q) as usize]
}

fn main() {
    let args = Args::parse();
    let started = Instant::now();
    let storm_at = started + Duration::from_secs(args.storm_after);
    let wall_now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64
    };
    // Every key's TTL is the time left until the storm's instant (in wall-clock ms).
    let storm_wall_ms = wall_now_ms() + args.storm_after * 1_000;

    // The probe: reads of its own keys at a fixed pace, timed from each read's intended start.
    let probe_client = connect(&args.addr);
    for k in 0..100 {
        probe_client
            .put(
                format!("probe-{k}").as_bytes(),
                b"probe",
                Duration::from_secs(3_600),
            )
            .expect("probe key");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let probe = {
        let (addr, stop, rate) = (args.addr.clone(), stop.clone(), args.probe_rate);
        std::thread::spawn(move || {
            let client = connect(&addr);
            let interval = Duration::from_secs_f64(1.0 / rate as f64);
            let begin = Instant::now();
            let mut samples: Vec<(Duration, Duration)> = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && begin.elapsed() < Duration::from_secs(600) {
                let intended = begin + interval * i as u32;
                if let Some(wait) = intended.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let key = format!("probe-{}", i % 100);
                client.get(key.as_bytes()).expect("probe read");
                samples.push((intended - begin, intended.elapsed()));
                i += 1;
            }
            (begin, samples)
        })
    };

    // The writers: `keys` keys, each with the TTL that ends at the storm's instant.
    let per_writer = args.keys / args.writers;
    let writers: Vec<_> = (0..args.writers)
        .map(|w| {
            let addr = args.addr.clone();
            std::thread::spawn(move || {
                let client = connect(&addr);
                // Lanes of sequential writes, all in flight together on the connection.
                let lanes = (0..LANES).map(|lane| {
                    let client = client.client();
                    async move {
                        for i in (lane..per_writer).step_by(LANES as usize) {
                            let ttl_ms = storm_wall_ms.saturating_sub(wall_now_ms());
                            assert!(ttl_ms > 1_000, "the writes did not finish before the storm");
                            client
                                .put(
                                    format!("storm-{w}-{i}").as_bytes(),
                                    &[7u8; 32],
                                    Duration::from_millis(ttl_ms),
                                )
                                .await
                                .expect("storm write");
                        }
                    }
                });
                client.run(join_all(lanes.collect()));
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer");
    }
    let written_in = started.elapsed();
    let stats = connect(&args.addr);
    let keys_before = stats.stats().expect("stats").total.keys;
    println!(
        "wrote {} keys in {:.1} s; {keys_before} keys live; storm at {} s",
        per_writer * args.writers,
        written_in.as_secs_f64(),
        args.storm_after
    );

    // Wait for the storm, then for the node to reclaim it.
    std::thread::sleep(storm_at.saturating_duration_since(Instant::now()));
    let reclaim_deadline = Instant::now() + Duration::from_secs(60);
    let mut reclaimed_at = None;
    while Instant::now() < reclaim_deadline {
        let keys = stats.stats().expect("stats").total.keys;
        if keys <= 100 {
            reclaimed_at = Some(Instant::now());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (begin, samples) = probe.join().expect("probe");

    // Before: the 10 s up to the storm. During: from the storm until every key is reclaimed
    // (at least 1 s).
    let storm = storm_at - begin;
    let reclaimed = reclaimed_at.map_or(storm + Duration::from_secs(60), |t| t - begin);
    let window = |from: Duration, to: Duration| {
        let mut picked: Vec<Duration> = samples
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, latency)| *latency)
            .collect();
        picked.sort_unstable();
        picked
    };
    let before = window(storm.saturating_sub(Duration::from_secs(10)), storm);
    let during = window(storm, reclaimed.max(storm + Duration::from_secs(1)));
    let line = |name: &str, s: &[Duration]| {
        println!(
            "{name:>7}: {:>6} reads  p50 {:>9.3?}  p99 {:>9.3?}  max {:>9.3?}",
            s.len(),
            quantile(s, 0.5),
            quantile(s, 0.99),
            quantile(s, 1.0)
        )
    };
    line("before", &before);
    line("during", &during);
    match reclaimed_at {
        Some(_) => println!(
            "reclaimed {keys_before} keys in {:.2} s after the storm; p99 during / before = {:.2}",
            (reclaimed - storm).as_secs_f64(),
            quantile(&during, 0.99).as_secs_f64() / quantile(&before, 0.99).as_secs_f64()
        ),
        None => println!("the keys were not reclaimed within 60 s of the storm"),
    }
}
