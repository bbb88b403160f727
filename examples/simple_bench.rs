//! A simple closed-loop throughput bench of a running node, with the Rust client:
//! `connections` clients × `pipeline` requests in flight each, a read/write mix over a key
//! space, for a bounded time. The full loadgen (HDR histograms, open loop) is its own crate.
//!
//! cargo run --release --example simple_bench -- --addr 127.0.0.1:7700 --pipeline 16

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Parser;
use glommio::{LocalExecutorBuilder, Placement};
use repram::client::{resolve, Client, ClientOptions};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:7700")]
    addr: String,
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Share of reads, 0.0..=1.0.
    #[arg(long, default_value_t = 0.9)]
    reads: f64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Send everything through the shared port.
    #[arg(long)]
    no_shard_aware: bool,
    /// Pin the bench to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
    /// Spin this long before sleeping when idle (saves the server the cost of waking us).
    #[arg(long)]
    spin_us: Option<u64>,
    /// The server's pid: report its CPU seconds and ops per server CPU-second.
    #[arg(long)]
    server_pid: Option<u32>,
}

/// User plus system CPU seconds a process has used, from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / ticks)
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn main() {
    let args = Args::parse();
    let placement = args.cpu.map_or(Placement::Unbound, Placement::Fixed);
    let mut builder = LocalExecutorBuilder::new(placement).io_memory(256 * 1024);
    if let Some(us) = args.spin_us {
        builder = builder.spin_before_park(Duration::from_micros(us));
    }
    let executor = builder.make().expect("an io_uring executor");
    executor.run(bench(args));
}

async fn bench(args: Args) {
    let addr = resolve(&args.addr).expect("address");
    let options = ClientOptions {
        shard_aware: !args.no_shard_aware,
        ..ClientOptions::default()
    };
    let mut clients = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        clients.push(Rc::new(
            Client::connect(addr, &options).await.expect("connect"),
        ));
    }
    let value = vec![0x61u8; args.value_bytes];
    let ttl = Duration::from_secs(3600);

    // Preload every key, pipelined across the clients.
    let started = Instant::now();
    let next_key = Rc::new(Cell::new(0u64));
    let mut loaders = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        for _ in 0..args.pipeline.max(4) {
            let (client, next_key, value, keys) =
                (client.clone(), next_key.clone(), value.clone(), args.keys);
            loaders.push(glommio::spawn_local(async move {
                loop {
                    let k = next_key.get();
                    if k >= keys {
                        break;
                    }
                    next_key.set(k + 1);
                    client
                        .put(format!("key:{k}").as_bytes(), &value, ttl)
                        .await
                        .expect("preload");
                }
                i
            }));
        }
    }
    for loader in loaders {
        loader.await;
    }
    eprintln!("preloaded {} keys in {:.1?}", args.keys, started.elapsed());

    let cpu_before = args.server_pid.and_then(cpu_seconds);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let ops = Rc::new(Cell::new(0u64));
    let errors = Rc::new(Cell::new(0u64));
    let read_threshold = (args.reads.clamp(0.0, 1.0) * u32::MAX as f64) as u64;
    let mut workers = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        for p in 0..args.pipeline {
            let (client, ops, errors, value) =
                (client.clone(), ops.clone(), errors.clone(), value.clone());
            let keys = args.keys;
            let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ (((c as u64) << 20) | (p as u64 + 1)));
            workers.push(glommio::spawn_local(async move {
                let mut key = String::with_capacity(24);
                while Instant::now() < deadline {
                    let r = rng.next();
                    key.clear();
                    use std::fmt::Write;
                    let _ = write!(key, "key:{}", (r >> 32) % keys);
                    let result = if (r & 0xffff_ffff) < read_threshold {
                        client.get(key.as_bytes()).await.map(|_| ())
                    } else {
                        client.put(key.as_bytes(), &value, ttl).await.map(|_| ())
                    };
                    if result.is_err() {
                        errors.set(errors.get() + 1);
                    }
                    ops.set(ops.get() + 1);
                }
            }));
        }
    }
    for worker in workers {
        worker.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ops = ops.get();
    println!(
        "connections={} pipeline={} reads={} value_bytes={} shard_aware={}: {} ops in {:.2} s = {:.0} ops/s, {} errors",
        args.connections,
        args.pipeline,
        args.reads,
        args.value_bytes,
        !args.no_shard_aware,
        ops,
        elapsed,
        ops as f64 / elapsed,
        errors.get()
    );
    if let (Some(before), Some(after)) = (cpu_before, args.server_pid.and_then(cpu_seconds)) {
        let cpu = after - before;
        println!(
            "server cpu {:.2} s = {:.0} ops per server CPU-second",
            cpu,
            ops as f64 / cpu.max(0.01)
        );
    }
}
