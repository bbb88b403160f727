//! `repram`: the node (`repram serve`) and a command-line client of it.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use repram::client::{BlockingClient, ClientError, ClientOptions, ADDR_DEFAULT};
use repram::config::{parse_duration, ServeArgs};
use repram::StoreLimits;

#[cfg(not(feature = "heap-stats"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(feature = "heap-stats")]
#[global_allocator]
static GLOBAL: repram::heap::CountingAllocator<mimalloc::MiMalloc> =
    repram::heap::CountingAllocator(mimalloc::MiMalloc);

/// REPRAM: an ephemeral, encrypted-at-rest key-value node. Every value has a time-to-live and
/// is sealed (AES-256-GCM) from the moment it arrives until it expires and is forgotten.
#[derive(Parser, Debug)]
#[command(name = "repram", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node: one shard per core, clients on --listen and on each shard's own port.
    Serve(Box<ServeArgs>),
    /// Store VALUE under KEY for --ttl.
    Put {
        key: String,
        value: String,
        /// Time to live: 60s, 5m, 250ms, 1h; a bare number is seconds.
        #[arg(long, default_value = "60s")]
        ttl: String,
        /// Nodes that should hold the value before the node answers (itself included); the
        /// node's --write-copies when not given.
        #[arg(long, value_name = "N")]
        copies: Option<u8>,
        #[command(flatten)]
        target: Target,
    },
    /// Print the value under KEY; exits 1 when there is none.
    Get {
        key: String,
        /// Answer from this node alone, never from its peers.
        #[arg(long)]
        local: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Delete KEY; exits 1 when there was no live value.
    Del {
        key: String,
        #[command(flatten)]
        target: Target,
    },
    /// Print the node's counters, summed over its shards and per shard.
    Stats {
        #[command(flatten)]
        target: Target,
    },
    /// Print the discovery tree as the node sees it: its role and path, its parent (with the
    /// measured round trip), its children and the other roots.
    Topology {
        #[command(flatten)]
        target: Target,
    },
    /// Check that the node answers.
    Ping {
        #[command(flatten)]
        target: Target,
    },
    /// Print the store's default limits on this machine.
    Limits,
    /// Simulate a network of nodes (the peer protocol, deterministic from --seed) and report
    /// convergence, traffic and tree shape.
    Sim(SimArgs),
    /// Write keys for a private network: a node key pair (FILE, and its public key in
    /// FILE.pub, for other nodes' --trusted-peers) and/or a cluster key (shared by every node).
    Keygen {
        /// Write a node's private key here (and its public key to this path + `.pub`).
        #[arg(long, value_name = "FILE")]
        node: Option<std::path::PathBuf>,
        /// Write a new cluster key here.
        #[arg(long, value_name = "FILE")]
        cluster: Option<std::path::PathBuf>,
    },
    /// Check that this machine can run a node: io_uring, locked-memory limit.
    Doctor {
        /// Shards to check for [default: the CPUs this process may run on].
        #[arg(long)]
        shards: Option<usize>,
    },
}

#[derive(clap::Args, Debug)]
struct SimArgs {
    #[arg(long, default_value_t = 1_000)]
    nodes: usize,
    #[arg(long, default_value_t = 3)]
    roots: usize,
    /// Client writes, spread over --write-minutes.
    #[arg(long, default_value_t = 10_000)]
    writes: usize,
    #[arg(long, default_value_t = 10.0)]
    write_minutes: f64,
    /// Percent of nodes crashed (and restarted empty 5 s later) per simulated minute.
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// Percent of messages lost once (and retransmitted 200 ms later).
    #[arg(long, default_value_t = 1.0)]
    loss: f64,
    /// Cut the network in two halves for this many seconds from the start of the writes,
    /// then heal it and report how long until every write was everywhere.
    #[arg(long, default_value_t = 0.0)]
    partition_seconds: f64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

#[derive(clap::Args, Debug)]
struct Target {
    /// The node's client address.
    #[arg(long, default_value = ADDR_DEFAULT, value_name = "ADDR")]
    addr: String,
    /// Send everything through the shared port instead of each key's own shard port.
    #[arg(long)]
    no_shard_aware: bool,
    /// File holding the node's client token (for a node started with --auth-token-file);
    /// else $REPRAM_TOKEN, if set.
    #[arg(long, value_name = "FILE")]
    token_file: Option<std::path::PathBuf>,
    /// Connect with TLS (a node started with --tls-cert), trusting the CA certificates in
    /// this PEM file.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Serve(args)) => serve(&args),
        None | Some(Command::Limits) => limits(),
        Some(Command::Sim(args)) => simulate(&args),
        Some(Command::Keygen { node, cluster }) => keygen(node.as_deref(), cluster.as_deref()),
        Some(Command::Doctor { shards }) => {
            let shards = shards.unwrap_or_else(repram::config::available_cpus);
            let findings = repram::doctor::check(shards);
            for finding in &findings {
                let mark = if finding.ok { "ok     " } else { "PROBLEM" };
                println!("{mark} {}", finding.message);
            }
            if findings.iter().all(|f| f.ok) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Some(Command::Put {
            key,
            value,
            ttl,
            copies,
            target,
        }) => {
            let ttl = match parse_duration("ttl", &ttl) {
                Ok(ttl) => ttl,
                Err(e) => return fail(&e.to_string()),
            };
            with_client(&target, |client| {
                let stored = client.put_copies(
                    key.as_bytes(),
                    value.as_bytes(),
                    ttl,
                    copies.unwrap_or(0),
                )?;
                let expires = remaining(stored.expires_ms);
                if stored.pending {
                    // Exit 0: the value is kept and still replicating (HTTP's 202).
                    println!(
                        "ACCEPTED pending: {} node(s) confirmed before the write timeout, \
                         expires in {expires}",
                        stored.copies
                    );
                } else {
                    println!(
                        "OK stored on {} node(s), expires in {expires}",
                        stored.copies
                    );
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        Some(Command::Get { key, local, target }) => with_client(&target, |client| {
            let found = if local {
                client.get_local(key.as_bytes())?
            } else {
                client.get(key.as_bytes())?
            };
            match found {
                Some(value) => {
                    println!("{}", String::from_utf8_lossy(&value.bytes));
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("repram: not found: {key}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }),
        Some(Command::Del { key, target }) => with_client(&target, |client| {
            if client.delete(key.as_bytes())? {
                println!("OK deleted");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("repram: not found: {key}");
                Ok(ExitCode::FAILURE)
            }
        }),
        Some(Command::Stats { target }) => with_client(&target, |client| {
            let stats = client.stats()?;
            print_stats(&stats);
            Ok(ExitCode::SUCCESS)
        }),
        Some(Command::Topology { target }) => with_client(&target, |client| {
            print_topology(&client.topology()?);
            Ok(ExitCode::SUCCESS)
        }),
        Some(Command::Ping { target }) => with_client(&target, |client| {
            client.ping()?;
            println!("PONG");
            Ok(ExitCode::SUCCESS)
        }),
    }
}

/// Writes `text` to a new file readable by its owner only (never over an existing one).
fn write_secret(path: &std::path::Path, text: &str, private: bool) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|e| {
            format!(
                "{}: {e} (an existing key is never overwritten)",
                path.display()
            )
        })?;
    file.write_all(text.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn keygen(node: Option<&std::path::Path>, cluster: Option<&std::path::Path>) -> ExitCode {
    use repram::peer_keys::{public_key_of, random_key};
    if node.is_none() && cluster.is_none() {
        return fail("say what to write: --node FILE, --cluster FILE, or both");
    }
    let result = (|| -> Result<(), String> {
        if let Some(path) = cluster {
            let key = random_key()?;
            write_secret(path, &format!("{}\n", hex::encode(&key[..])), true)?;
            println!(
                "cluster key written to {} (give it to every node)",
                path.display()
            );
        }
        if let Some(path) = node {
            let key = random_key()?;
            let public = public_key_of(&key)?;
            let mut public_path = path.as_os_str().to_owned();
            public_path.push(".pub");
            let public_path = std::path::PathBuf::from(public_path);
            write_secret(path, &format!("{}\n", hex::encode(&key[..])), true)?;
            write_secret(&public_path, &format!("{}\n", hex::encode(public)), false)?;
            println!(
                "node key written to {}, its public key {} to {}",
                path.display(),
                hex::encode(public),
                public_path.display()
            );
        }
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("repram: {message}");
    ExitCode::from(2)
}

fn with_client(
    target: &Target,
    run: impl FnOnce(&BlockingClient) -> Result<ExitCode, ClientError>,
) -> ExitCode {
    let token = match repram::auth::AuthToken::from_file_or_env(target.token_file.as_deref()) {
        Ok(token) => token,
        Err(e) => return fail(&e),
    };
    let tls = match &target.tls_ca {
        Some(ca) => match repram::tls::client_config(ca) {
            Ok(config) => Some(config),
            Err(e) => return fail(&e),
        },
        None => None,
    };
    let options = ClientOptions {
        shard_aware: !target.no_shard_aware,
        token,
        tls,
        ..ClientOptions::default()
    };
    let client = match BlockingClient::connect(&target.addr, &options) {
        Ok(client) => client,
        Err(e) => return fail(&format!("{}: {e}", target.addr)),
    };
    match run(&client) {
        Ok(code) => code,
        Err(e) => fail(&e.to_string()),
    }
}

fn remaining(expires_ms: u64) -> String {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let left = Duration::from_millis(expires_ms.saturating_sub(now_ms));
    humantime::format_duration(Duration::from_secs(left.as_secs_f64().round() as u64)).to_string()
}

fn print_stats(stats: &repram::wire::NodeStats) {
    print!("{:<22}{:>14}", "counter", "total");
    for shard in 0..stats.shards.len() {
        print!("{:>14}", format!("shard {shard}"));
    }
    println!();
    let shards: Vec<_> = stats.shards.iter().map(|s| s.fields()).collect();
    for (row, (name, total)) in stats.total.fields().into_iter().enumerate() {
        print!("{name:<22}{total:>14}");
        for shard in &shards {
            print!("{:>14}", shard[row].1);
        }
        println!();
    }
    println!(
        "{:<22}{:>14}",
        "live_set_xor",
        format!("{:016x}", stats.total.live_set_xor)
    );
    println!("network");
    for (name, value) in stats.network.fields() {
        println!("  {name:<24}{value:>14}");
    }
    println!("peer bytes by kind        sent      received");
    let network = &stats.network;
    for (at, kind) in repram::cluster::Message::KINDS.iter().enumerate() {
        let sent = network.bytes_sent_by_kind.get(at).copied().unwrap_or(0);
        let received = network.bytes_received_by_kind.get(at).copied().unwrap_or(0);
        if sent + received > 0 {
            println!("  {kind:<16}{sent:>14}{received:>14}");
        }
    }
}

fn print_topology(topology: &repram::wire::TopologyInfo) {
    let peer = |p: &repram::wire::PeerView| {
        format!(
            "{:<22} node {:016x}  {:<10} children {}/{}",
            p.addr,
            p.node_id,
            repram::wire::role_name(p.role),
            p.children,
            p.capacity
        )
    };
    let me = &topology.node;
    println!("this node  {}", peer(me));
    let path: Vec<String> = topology
        .path
        .iter()
        .map(|id| format!("{id:016x}"))
        .collect();
    println!(
        "path       {}",
        if path.is_empty() {
            "-".to_string()
        } else {
            path.join(" > ")
        }
    );
    match &topology.parent {
        Some(parent) => {
            let rtt = topology
                .parent_rtt_ms
                .map_or("rtt unmeasured".to_string(), |ms| format!("rtt {ms} ms"));
            println!(
                "parent     {}  {rtt}, heard {} ms ago",
                peer(parent),
                parent.silent_ms
            );
        }
        None if me.role == 0 => println!("parent     - (a root)"),
        None => println!("parent     - (not attached: joining)"),
    }
    for (title, list) in [
        ("child", &topology.children),
        ("root", &topology.root_peers),
    ] {
        for p in list {
            println!("{title:<10} {}  heard {} ms ago", peer(p), p.silent_ms);
        }
    }
}

fn limits() -> ExitCode {
    let limits = StoreLimits::default();
    if let Err(e) = limits.validate() {
        return fail(&e.to_string());
    }
    println!(
        "repram {} store defaults: {limits}",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::SUCCESS
}

fn simulate(args: &SimArgs) -> ExitCode {
    use repram::cluster::sim::{Sim, SimConfig};
    if args.roots == 0 || args.roots > args.nodes {
        return fail("--roots must be within 1..=--nodes");
    }
    let config = SimConfig {
        nodes: args.nodes,
        roots: args.roots,
        seed: args.seed,
        writes: args.writes,
        join_window_ms: (args.nodes as u64 * 20).max(10_000),
        write_window_ms: (args.write_minutes * 60_000.0) as u64,
        churn_per_minute: args.churn / 100.0,
        loss: args.loss / 100.0,
        partition_ms: (args.partition_seconds * 1_000.0) as u64,
        ..SimConfig::default()
    };
    let started = std::time::Instant::now();
    let report = Sim::new(config).run_with_progress(|p| {
        eprintln!(
            "sim: {:.0} of {:.0} simulated s, {} messages, {} live nodes, {} events pending, {:.0?} wall",
            p.simulated_ms as f64 / 1000.0,
            p.end_ms as f64 / 1000.0,
            p.messages,
            p.live_nodes,
            p.pending_events,
            started.elapsed()
        );
    });
    println!("{report}");
    println!("wall time {:.1?}", started.elapsed());
    ExitCode::SUCCESS
}

/// Transparent huge pages off for this process, as Redis does. mimalloc asks for them on its
/// arena, and the kernel's khugepaged then fills each 2 MiB range it finds even sparsely used
/// into a whole huge page. After a burst's entries expire, that made a node's resident memory
/// climb by about 1.5 MiB a second (khugepaged's scan rate) for minutes while its live heap
/// stayed flat (docs/robustness.md). Applies to every mapping, those made before too.
fn refuse_transparent_huge_pages() -> std::io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE reads only its integer arguments and sets a flag of this
    // process's memory map.
    os_result(unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) })
}

/// A core dump would hold the live data keys and every value they open: the process's core
/// size limit is set to zero (soft and hard, so nothing it starts can raise it).
fn refuse_core_dumps() -> std::io::Result<()> {
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads the struct we pass by pointer for the duration of the call only;
    // it is a valid, initialised `rlimit`.
    os_result(unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) })
}

/// A system call's 0-or-−1 result, with the error it set.
fn os_result(result: libc::c_int) -> std::io::Result<()> {
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match args.resolve() {
        Ok(config) => config,
        Err(e) => return fail(&e.to_string()),
    };
    if !args.allow_core_dumps {
        if let Err(e) = refuse_core_dumps() {
            return fail(&format!(
                "cannot turn core dumps off ({e}); --allow-core-dumps to run anyway"
            ));
        }
    }
    if let Err(e) = refuse_transparent_huge_pages() {
        tracing::warn!(error = %e, "cannot turn transparent huge pages off; resident memory may grow");
    }
    let shards = config.shard_listen.len();
    let budget = config.shard_limits.memory_budget_bytes * shards;
    // Signals are caught before any shard thread starts, so every thread inherits the mask
    // the handler thread relies on.
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ]) {
        Ok(signals) => signals,
        Err(e) => return fail(&format!("cannot handle signals: {e}")),
    };
    let node = match repram::node::start(config) {
        Ok(node) => node,
        Err(e) => return fail(&e.to_string()),
    };
    let shard_list: Vec<String> = node.shard_addrs.iter().map(|a| a.to_string()).collect();
    // One line on stdout, stable for scripts and tests: what the node bound.
    println!(
        "repram listening client={} shards={} node_id={:016x} peer={} peer_listen={} resp={} http={}",
        node.client_addr,
        shard_list.join(","),
        node.node_id,
        node.peer_addr,
        node.peer_listen,
        node.resp_addr
            .map_or_else(|| "off".to_string(), |a| a.to_string()),
        node.http_addr
            .map_or_else(|| "off".to_string(), |a| a.to_string())
    );
    tracing::info!(
        client = %node.client_addr,
        shards,
        memory_budget_bytes = budget,
        "serving; Ctrl-C or SIGTERM stops"
    );
    let stopper = node.stopper();
    let handle = signals.handle();
    let watcher = std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            tracing::info!(signal, "stopping");
            stopper.stop();
        }
    });
    let result = node.wait();
    handle.close();
    let _ = watcher.join();
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string()),
    }
}
