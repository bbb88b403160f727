//! The `repram-loadgen` binary: `run` drives a server and saves the run; `compare` sets saved
//! runs side by side and plots them.
//!
//! Owns the command line only: every knob becomes a `RunPlan`; nothing here measures.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use repram_loadgen::compare::compare_files;
use repram_loadgen::flood::{flood, FloodMode, FloodPlan, FloodProtocol};
use repram_loadgen::run::{run, RunPlan};
use repram_loadgen::schedule::Pace;
use repram_loadgen::target::{TargetKind, TargetSpec};
use repram_loadgen::workload::{KeyDistribution, ValueSize, Workload};

#[derive(Parser, Debug)]
#[command(
    name = "repram-loadgen",
    version,
    about = "Load generator for REPRAM, Redis/Valkey and memcached, with HDR latency histograms"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Drive a server with a workload; print progress each second and a summary at the end.
    Run(Box<RunArgs>),
    /// Replication lag of a REPRAM network: write on one node, poll others with local-only
    /// reads, and print per reader how long each write took to arrive.
    Lag(LagArgs),
    /// Hostile clients for hardening checks: many connections that stay silent, trickle one
    /// byte a second, or pipeline reads without reading answers; prints what the server did
    /// to them (refused, closed and after how long) as one line.
    Flood(FloodArgs),
    /// A long run over time: latency per window from interval logs (`run --out` writes
    /// PREFIX.hlog; several runs started together are merged) and servers' resident memory
    /// from a `seconds,label,bytes` CSV; prints the soak's checks and plots both.
    Timeline {
        /// Interval logs (`.hlog`).
        #[arg(required = true)]
        logs: Vec<PathBuf>,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        window: Duration,
        /// Memory samples: `seconds,label,bytes` lines.
        #[arg(long)]
        memory: Option<PathBuf>,
        /// Memory before this is warm-up, left out of the spread.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        warm_up: Duration,
        /// Write PREFIX-latency.{svg,png} and PREFIX-memory.{svg,png}.
        #[arg(long, value_name = "PREFIX")]
        plot: Option<PathBuf>,
    },
    /// Print saved runs side by side (ratios to the first) and plot their latency.
    Compare {
        /// Run reports (`.json` written by `run --out`); the first is the baseline.
        #[arg(required = true, num_args = 2..)]
        runs: Vec<PathBuf>,
        /// Write the plot to PREFIX.svg and PREFIX.png.
        #[arg(long, value_name = "PREFIX")]
        plot: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Which server speaks at --addr.
    #[arg(long, value_enum, default_value_t = TargetKind::Repram)]
    target: TargetKind,
    #[arg(long, default_value = "127.0.0.1:7700")]
    addr: String,
    /// REPRAM: send everything through the shared port instead of each shard's own.
    #[arg(long)]
    no_shard_aware: bool,
    /// File holding the server's client token (REPRAM's `--auth-token-file`; Redis's
    /// password, sent with `AUTH`); else $REPRAM_TOKEN, if set.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// REPRAM: connect with TLS, trusting the CA certificates in this PEM file.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Loadgen threads, each one pinned glommio executor.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// CPUs to pin threads to, e.g. `1` or `2,3` [default: the CPUs this process may use].
    #[arg(long, value_delimiter = ',')]
    cpus: Option<Vec<usize>>,
    /// Do not pin threads.
    #[arg(long, conflicts_with = "cpus")]
    no_pin: bool,
    /// Connections per thread.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Share of reads, 0.0..=1.0 (the rest are writes).
    #[arg(long, default_value_t = 0.9)]
    reads: f64,
    /// Key space size.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// `uniform`, `zipfian` (skew 0.99) or `zipfian:SKEW`.
    #[arg(long, default_value = "uniform")]
    distribution: KeyDistribution,
    /// Value size in bytes: `100` or a range `64..1024`.
    #[arg(long, default_value = "100")]
    value_size: ValueSize,
    /// TTL of every write.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Write every key once before measuring.
    #[arg(long)]
    preload: bool,
    /// Longest the preload may take.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    preload_timeout: Duration,
    /// How long to measure (every run is bounded by it).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Stop after this many requests, if that comes before the duration.
    #[arg(long)]
    requests: Option<u64>,
    /// Open loop: send this many requests a second in all, latency from each request's
    /// intended send time. Without it: closed loop.
    #[arg(long, value_name = "OPS_PER_SECOND")]
    rate: Option<u64>,
    /// A request unanswered for this long counts as a `timeout` error and its connection is
    /// replaced.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// The server's pid: report its CPU seconds and ops per server CPU-second.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Name of the run in reports and plots [default: target and mode].
    #[arg(long)]
    label: Option<String>,
    /// Save PREFIX.json, PREFIX.hgrm (and .get.hgrm, .set.hgrm) and PREFIX.hlog.
    #[arg(long, value_name = "PREFIX")]
    out: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args, Debug)]
struct FloodArgs {
    #[arg(long, default_value = "127.0.0.1:7700")]
    addr: String,
    #[arg(long, value_enum)]
    mode: FloodMode,
    #[arg(long, value_enum, default_value_t = FloodProtocol::Native)]
    protocol: FloodProtocol,
    #[arg(long, default_value_t = 1_000)]
    connections: usize,
    /// The flood ends after this long, or once the server has closed every connection.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The key `no-read` asks for (and `trickle` never finishes writing).
    #[arg(long, default_value = "flood")]
    key: String,
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
}

#[derive(Args, Debug)]
struct LagArgs {
    /// The node written to (its client address).
    #[arg(long)]
    writer: String,
    /// A node polled with local-only reads; repeat for several.
    #[arg(long = "reader", required = true)]
    readers: Vec<String>,
    #[arg(long, default_value_t = 2_000)]
    writes: u64,
    /// Writes per second.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// A key a reader still lacks this long after its write counts as lost.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    give_up: Duration,
    /// Pause between polls of a reader.
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    poll: Duration,
    /// Save each reader's histogram as PREFIX-N.hgrm.
    #[arg(long, value_name = "PREFIX")]
    out: Option<PathBuf>,
    /// File holding the nodes' client token; else $REPRAM_TOKEN, if set.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Connect with TLS, trusting the CA certificates in this PEM file.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
}

fn timeline_command(
    logs: &[PathBuf],
    window: Duration,
    memory: Option<&std::path::Path>,
    warm_up: Duration,
    plot: Option<&std::path::Path>,
) -> Result<(), String> {
    let windows = repram_loadgen::timeline::latency_windows(logs, window)?;
    let memory = match memory {
        Some(path) => repram_loadgen::timeline::read_memory_csv(path)?,
        None => Vec::new(),
    };
    let text = repram_loadgen::timeline::report(&windows, &memory, warm_up.as_secs_f64(), plot)?;
    print!("{text}");
    Ok(())
}

fn flood_command(args: FloodArgs) -> Result<(), String> {
    let plan = FloodPlan {
        addr: repram::client::resolve(&args.addr).map_err(|e| e.to_string())?,
        mode: args.mode,
        protocol: args.protocol,
        connections: args.connections,
        duration: args.duration,
        key: args.key.into_bytes(),
        connect_timeout: args.connect_timeout,
    };
    println!("{}", flood(&plan));
    Ok(())
}

fn lag_command(args: LagArgs) -> Result<(), String> {
    use std::net::ToSocketAddrs;
    let resolve = |text: &str| {
        text.to_socket_addrs()
            .map_err(|e| format!("{text}: {e}"))?
            .next()
            .ok_or_else(|| format!("{text} resolves to nothing"))
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let plan = repram_loadgen::lag::LagPlan {
        writer: resolve(&args.writer)?,
        readers: args
            .readers
            .iter()
            .map(|r| resolve(r))
            .collect::<Result<_, _>>()?,
        writes: args.writes,
        rate: args.rate,
        value_bytes: args.value_bytes,
        ttl: args.ttl,
        give_up: args.give_up,
        poll: args.poll,
        prefix: format!("lag-{nanos:x}"),
        token: repram::auth::AuthToken::from_file_or_env(args.token_file.as_deref())?,
        tls: args
            .tls_ca
            .as_deref()
            .map(repram::tls::client_config)
            .transpose()?,
    };
    let results = repram_loadgen::lag::measure_lag(&plan)?;
    println!(
        "{:<22}{:>8}{:>10}{:>10}{:>10}{:>10}{:>10}{:>7}",
        "reader", "held", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "lost"
    );
    let ms = |us: u64| format!("{:.2}", us as f64 / 1000.0);
    for (i, r) in results.iter().enumerate() {
        let h = &r.histogram;
        println!(
            "{:<22}{:>8}{:>10}{:>10}{:>10}{:>10}{:>10}{:>7}",
            r.reader.to_string(),
            h.len(),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.9)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max()),
            r.lost
        );
        if let Some(prefix) = &args.out {
            let path = PathBuf::from(format!("{}-{i}.hgrm", prefix.display()));
            let mut file =
                std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            repram_loadgen::histograms::write_hgrm(&mut file, h)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run_command(*args),
        Command::Lag(args) => lag_command(args),
        Command::Flood(args) => flood_command(args),
        Command::Timeline {
            logs,
            window,
            memory,
            warm_up,
            plot,
        } => timeline_command(&logs, window, memory.as_deref(), warm_up, plot.as_deref()),
        Command::Compare { runs, plot } => match compare_files(&runs, plot.as_deref()) {
            Ok((table, written)) => {
                print!("{table}");
                for path in written {
                    println!("wrote {}", path.display());
                }
                Ok(())
            }
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("repram-loadgen: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run_command(args: RunArgs) -> Result<(), String> {
    let addr = repram::client::resolve(&args.addr).map_err(|e| e.to_string())?;
    let cpus = match (args.no_pin, args.cpus) {
        (true, _) => Vec::new(),
        (false, Some(cpus)) => cpus,
        (false, None) => allowed_cpus(),
    };
    let pace = match args.rate {
        Some(rate_per_second) => Pace::Open { rate_per_second },
        None => Pace::Closed,
    };
    let token = repram::auth::AuthToken::from_file_or_env(args.token_file.as_deref())?;
    let plan = RunPlan {
        label: args.label.clone().unwrap_or_default(),
        target: TargetSpec {
            kind: args.target,
            addr,
            shard_aware: !args.no_shard_aware,
            connect_timeout: args.connect_timeout,
            token,
            tls: args
                .tls_ca
                .as_deref()
                .map(repram::tls::client_config)
                .transpose()?,
        },
        workload: Workload {
            keys: args.keys,
            distribution: args.distribution,
            read_ratio: args.reads,
            value_size: args.value_size,
            ttl: args.ttl,
        },
        threads: args.threads,
        cpus,
        connections_per_thread: args.connections,
        pipeline_depth: args.pipeline,
        pace,
        duration: args.duration,
        requests_max: args.requests,
        preload: args.preload,
        preload_time_limit: args.preload_timeout,
        request_timeout: args.timeout,
        server_pid: args.server_pid,
        progress: !args.quiet,
        seed: args.seed,
    };
    let output = run(&plan).map_err(|e| e.to_string())?;
    print!("{}", output.report.summary());
    if let Some(prefix) = &args.out {
        for path in output.save(prefix)? {
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}

/// The CPUs this process may run on (its affinity mask), in order.
fn allowed_cpus() -> Vec<usize> {
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: `cpu_set_t` is plain bits, valid when zeroed; `sched_getaffinity` writes at
    // most its size into it, and CPU_ISSET reads within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (0..online).collect();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}
