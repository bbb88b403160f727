//! The node's settings: flags (`clap`) over a TOML file over defaults, resolved once at start.
//!
//! Owns parsing, defaults and the checks that need no socket (port collisions, limit sanity).
//! It never binds, connects or starts anything; `node` takes the resolved [`NodeConfig`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::auth::{AuthToken, ClientAuth};
use crate::coordinator::sealed::{read_key_file, ClusterKeys};
use crate::limits::{self, StoreLimits};
use crate::wire::FRAME_OVERHEAD_BYTES;

pub const LISTEN_DEFAULT: &str = "127.0.0.1:7700";
pub const PEER_LISTEN_DEFAULT: &str = "127.0.0.1:7800";
pub const CONNECTIONS_MAX_DEFAULT: usize = 10_000;
pub const IN_FLIGHT_PER_CONNECTION_MAX_DEFAULT: usize = 1_024;
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(300);
/// Messages one shard may have outstanding to another before clients get `busy`.
pub const SHARD_QUEUE_DEPTH_DEFAULT: usize = 256;
pub const WRITE_COPIES_DEFAULT: u8 = 1;
/// Most copies a write may ask for: each acknowledged hop along the tree adds one, and the
/// acknowledgements of a write grow with the tree's fan-out per hop.
pub const WRITE_COPIES_MAX: u8 = 8;
pub const WRITE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(2);
pub const REBALANCE_INTERVAL_DEFAULT: Duration = Duration::from_secs(30);
pub const HEARTBEAT_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
pub const RESP_LISTEN_DEFAULT: &str = "127.0.0.1:6379";
pub const HTTP_LISTEN_DEFAULT: &str = "127.0.0.1:8080";
/// A write that gives no TTL (Redis's `SET` without `EX`/`PX`) lives this long, as REPRAM's
/// HTTP API does; clamped to the longest TTL.
pub const DEFAULT_TTL_DEFAULT: Duration = Duration::from_secs(3_600);

/// `repram serve` options. Every one has a default, so `repram serve` alone starts a node.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// TOML file with any of the options below (names with `_` for `-`); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Client address, shared by every shard (SO_REUSEPORT) [default: 127.0.0.1:7700].
    /// Port 0 picks a free port; the node prints what it bound.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// First shard-aware port; shard i listens on this + i, on the client address's host
    /// [default: the client port + 1, or free ports when the client port is 0].
    #[arg(long, value_name = "PORT")]
    pub shard_port_base: Option<u16>,
    /// Shards, one pinned thread each [default: the CPUs this process may run on].
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// Memory budget for stored data, split evenly over shards; writes past it get
    /// `store full` [default: half the machine's memory].
    #[arg(long, value_name = "SIZE")]
    pub memory_budget: Option<String>,
    /// Largest key [default: 1KiB].
    #[arg(long, value_name = "SIZE")]
    pub key_bytes_max: Option<String>,
    /// Largest value [default: 1MiB].
    #[arg(long, value_name = "SIZE")]
    pub value_bytes_max: Option<String>,
    /// Shortest TTL a write may ask for [default: 1s].
    #[arg(long, value_name = "DURATION")]
    pub min_ttl: Option<String>,
    /// Longest TTL a write may ask for [default: 24h].
    #[arg(long, value_name = "DURATION")]
    pub max_ttl: Option<String>,
    /// Largest frame a client may send, checked on its length prefix
    /// [default: the largest key and value plus 256 bytes].
    #[arg(long, value_name = "SIZE")]
    pub frame_bytes_max: Option<String>,
    /// Client connections the node holds open at once [default: 10000].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Requests one connection may have waiting on another shard before the node stops
    /// reading from it [default: 1024].
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<usize>,
    /// Close a connection that sends nothing for this long; 0 never [default: 300s].
    #[arg(long, value_name = "DURATION")]
    pub idle_timeout: Option<String>,
    /// Messages a shard may have outstanding to another before clients get `busy` [default: 256].
    #[arg(long, value_name = "N")]
    pub shard_queue_depth: Option<usize>,
    /// This node's id, the tie-breaker of its write versions [default: random].
    #[arg(long, value_name = "ID")]
    pub node_id: Option<u64>,
    /// Address for other nodes of the network [default: 127.0.0.1:7800, or a free port when
    /// the client port is 0].
    #[arg(long, value_name = "ADDR")]
    pub peer_listen: Option<String>,
    /// The address other nodes should use to reach this one [default: the peer address bound].
    #[arg(long, value_name = "ADDR")]
    pub peer_advertise: Option<String>,
    /// A root of the network to join; repeat for several (a name with several addresses counts
    /// as several roots). A node whose advertised address is among them is a root itself, as
    /// is a node with no root at all.
    #[arg(long = "root", value_name = "ADDR")]
    pub roots: Vec<String>,
    /// Nodes that should hold a write (this one included) before it is answered, for writes
    /// that do not say [default: 1, at most 8].
    #[arg(long, value_name = "N")]
    pub write_copies: Option<u8>,
    /// How long a write waits for its copies; then it is answered "accepted, pending" and
    /// goes on replicating [default: 2s].
    #[arg(long, value_name = "DURATION")]
    pub write_timeout: Option<String>,
    /// Address of the Redis-protocol (RESP2) front end, shared by every shard; `off` turns it
    /// off [default: 127.0.0.1:6379, or a free port when the client port is 0].
    #[arg(long, value_name = "ADDR|off")]
    pub resp_listen: Option<String>,
    /// Address of the REPRAM HTTP API, shared by every shard; `off` turns it off
    /// [default: 127.0.0.1:8080, or a free port when the client port is 0].
    #[arg(long, value_name = "ADDR|off")]
    pub http_listen: Option<String>,
    /// TTL of a write that gives none (Redis's `SET` without `EX`/`PX`) [default: 1h, at most
    /// --max-ttl].
    #[arg(long, value_name = "DURATION")]
    pub default_ttl: Option<String>,
    /// How often a leaf looks for a parent at least 20% closer; a branch waits twice as long,
    /// a trunk four times [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub rebalance_interval: Option<String>,
    /// How often a child tells its parent it is alive; three missed in a row and the other
    /// side counts it as gone (a stopped node says goodbye at once) [default: 1s].
    #[arg(long, value_name = "DURATION")]
    pub heartbeat_interval: Option<String>,
    /// File holding the client token (at least 16 characters): clients must give it (native
    /// Hello, Redis `AUTH`, HTTP `Authorization: Bearer`) before anything but Hello/Ping.
    #[arg(long, value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Listen for clients on a non-loopback address without a token (protected mode refuses
    /// that otherwise, as Redis does).
    #[arg(long)]
    pub unprotected: bool,
    /// Turn off `GET /v1/keys` (key names are not secret: listing shows every dead drop).
    #[arg(long)]
    pub no_key_listing: bool,
    /// Benchmark baseline, not for use: the same listeners, framing and dispatch, but reads
    /// and writes never touch the store (a write is answered stored and dropped; a read is
    /// answered with zeros as long as the shard's last write). Shows what the store and its
    /// sealing cost on top of moving requests.
    #[arg(long, hide_short_help = true)]
    pub null_store: bool,
    /// The network's pre-shared key (64 hex digits; `repram keygen --cluster FILE`): peer
    /// links start with a Noise handshake on it and every frame is sealed. Nodes without it
    /// cannot join, read or write anything.
    #[arg(long, value_name = "FILE")]
    pub cluster_key_file: Option<PathBuf>,
    /// This node's private key for sealed links (`repram keygen --node FILE`) [default: a new
    /// one each start].
    #[arg(long, value_name = "FILE")]
    pub node_key_file: Option<PathBuf>,
    /// Public keys (hex, one a line) of the only nodes let in over sealed links.
    #[arg(long, value_name = "FILE")]
    pub trusted_peers: Option<PathBuf>,
    /// PEM certificate chain for TLS on the client listeners (with --tls-key).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Which client listeners speak TLS once a certificate is given: any of native (the
    /// client and shard ports), resp, http, comma-separated [default: all three].
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub tls_on: Option<Vec<String>>,
    /// Let the kernel write a core dump of this process (it holds the live data keys, so by
    /// default it refuses).
    #[arg(long)]
    pub allow_core_dumps: bool,
}

/// The TOML file: the same options as the flags.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    shard_port_base: Option<u16>,
    shards: Option<usize>,
    memory_budget: Option<String>,
    key_bytes_max: Option<String>,
    value_bytes_max: Option<String>,
    min_ttl: Option<String>,
    max_ttl: Option<String>,
    frame_bytes_max: Option<String>,
    max_connections: Option<usize>,
    max_in_flight: Option<usize>,
    idle_timeout: Option<String>,
    shard_queue_depth: Option<usize>,
    node_id: Option<u64>,
    peer_listen: Option<String>,
    peer_advertise: Option<String>,
    roots: Option<Vec<String>>,
    write_copies: Option<u8>,
    write_timeout: Option<String>,
    rebalance_interval: Option<String>,
    heartbeat_interval: Option<String>,
    auth_token_file: Option<PathBuf>,
    unprotected: Option<bool>,
    no_key_listing: Option<bool>,
    cluster_key_file: Option<PathBuf>,
    node_key_file: Option<PathBuf>,
    trusted_peers: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_on: Option<Vec<String>>,
    resp_listen: Option<String>,
    http_listen: Option<String>,
    default_ttl: Option<String>,
}

/// Everything a node needs to start, resolved and checked.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub listen: SocketAddr,
    /// One address per shard.
    pub shard_listen: Vec<SocketAddr>,
    /// Store limits of each shard (the memory budget is already one shard's share).
    pub shard_limits: StoreLimits,
    pub frame_bytes_max: usize,
    pub connections_max: usize,
    pub in_flight_per_connection_max: usize,
    pub idle_timeout: Option<Duration>,
    pub shard_queue_depth: usize,
    pub node_id: u64,
    /// Seed of the key → shard hash; random per process.
    pub hash_seed: u64,
    pub peer: PeerConfig,
    /// The RESP front end's address; `None`: off.
    pub resp_listen: Option<SocketAddr>,
    /// The HTTP API's address; `None`: off.
    pub http_listen: Option<SocketAddr>,
    /// TTL of writes that give none (front ends whose protocol lets them).
    pub default_ttl_ms: u64,
    /// The client token's check; `None`: clients need none (only on loopback, or
    /// `--unprotected`).
    pub auth: Option<Arc<ClientAuth>>,
    /// Whether `GET /v1/keys` answers.
    pub key_listing: bool,
    /// `--null-store`: answer reads and writes without the store (a benchmark baseline).
    pub null_store: bool,
    /// TLS for clients, and on which listeners.
    pub tls: Option<ClientTls>,
}

/// TLS on the client listeners: the server identity, and which listeners use it.
#[derive(Clone)]
pub struct ClientTls {
    pub config: Arc<rustls::ServerConfig>,
    pub native: bool,
    pub resp: bool,
    pub http: bool,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ClientTls(native {}, resp {}, http {})",
            self.native, self.resp, self.http
        )
    }
}

/// Where the node meets the rest of the network.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub listen: SocketAddr,
    /// `None`: the address the peer listener bound.
    pub advertise: Option<SocketAddr>,
    /// Every root address, resolved; empty: this node is the network's only root.
    pub roots: Vec<SocketAddr>,
    /// Copies a write that does not say wants (this node included).
    pub write_copies: u8,
    pub write_timeout: Duration,
    pub rebalance_interval: Duration,
    pub heartbeat_interval: Duration,
    /// A private network's keys (`--cluster-key-file`): every peer link is sealed.
    pub keys: Option<Arc<ClusterKeys>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("--{option}: {message}")]
    Invalid {
        option: &'static str,
        message: String,
    },
}

fn invalid(option: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        option,
        message: message.into(),
    }
}

/// Parses a size: `1048576`, `512KiB`, `1MiB`, `2GB`.
pub fn parse_size(option: &'static str, text: &str) -> Result<usize, ConfigError> {
    let size: ByteSize = text
        .trim()
        .parse()
        .map_err(|e| invalid(option, format!("{text:?} is not a size ({e})")))?;
    usize::try_from(size.as_u64()).map_err(|_| invalid(option, format!("{text:?} is too large")))
}

/// Parses a duration: `60s`, `5m`, `250ms`, `1h`; a bare number is seconds.
pub fn parse_duration(option: &'static str, text: &str) -> Result<Duration, ConfigError> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text)
        .map_err(|e| invalid(option, format!("{text:?} is not a duration ({e})")))
}

/// Resolves `host:port` to one address, before anything binds: glommio's own bind would block
/// on DNS and panic on a failure.
pub fn resolve(option: &'static str, text: &str) -> Result<SocketAddr, ConfigError> {
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|e| invalid(option, format!("cannot resolve {text:?}: {e}")))?;
    addrs
        .next()
        .ok_or_else(|| invalid(option, format!("{text:?} resolves to no address")))
}

/// Resolves `host:port` to every address it names (a root given by name may stand for several).
pub fn resolve_all(option: &'static str, text: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    let addrs: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| invalid(option, format!("cannot resolve {text:?}: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(invalid(option, format!("{text:?} resolves to no address")));
    }
    Ok(addrs)
}

/// The CPUs this process may run on.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl ServeArgs {
    /// Flags over the file over defaults.
    pub fn resolve(&self) -> Result<NodeConfig, ConfigError> {
        let file = match &self.config {
            None => FileConfig::default(),
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
                        path: path.clone(),
                        source,
                    })?;
                toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
                    path: path.clone(),
                    message: e.to_string(),
                })?
            }
        };
        macro_rules! pick {
            ($field:ident) => {
                self.$field.clone().or(file.$field)
            };
        }

        let listen_text = pick!(listen).unwrap_or_else(|| LISTEN_DEFAULT.to_string());
        let listen = resolve("listen", &listen_text)?;
        let shards = pick!(shards).unwrap_or_else(available_cpus);
        if shards == 0 || shards > 1024 {
            return Err(invalid("shards", format!("{shards} is outside 1..=1024")));
        }

        let shard_listen = shard_addresses(listen, pick!(shard_port_base), shards)?;

        let mut limits = StoreLimits::default();
        if let Some(text) = pick!(key_bytes_max) {
            limits.key_bytes_max = parse_size("key-bytes-max", &text)?;
        }
        if let Some(text) = pick!(value_bytes_max) {
            limits.value_bytes_max = parse_size("value-bytes-max", &text)?;
        }
        if let Some(text) = pick!(min_ttl) {
            limits.ttl_ms_min = millis(parse_duration("min-ttl", &text)?);
        }
        if let Some(text) = pick!(max_ttl) {
            limits.ttl_ms_max = millis(parse_duration("max-ttl", &text)?);
        }
        let budget = match pick!(memory_budget) {
            Some(text) => parse_size("memory-budget", &text)?,
            None => limits::default_memory_budget_bytes(),
        };
        limits.memory_budget_bytes = budget / shards;
        limits
            .validate()
            .map_err(|e| invalid("limits", e.to_string()))?;

        let frame_floor = limits.key_bytes_max + limits.value_bytes_max + FRAME_OVERHEAD_BYTES;
        let frame_bytes_max = match pick!(frame_bytes_max) {
            Some(text) => parse_size("frame-bytes-max", &text)?,
            None => frame_floor,
        };
        if frame_bytes_max > u32::MAX as usize {
            return Err(invalid(
                "frame-bytes-max",
                "must fit in the u32 length prefix",
            ));
        }

        let connections_max = pick!(max_connections).unwrap_or(CONNECTIONS_MAX_DEFAULT);
        if connections_max == 0 {
            return Err(invalid("max-connections", "must be at least 1"));
        }
        let in_flight = pick!(max_in_flight).unwrap_or(IN_FLIGHT_PER_CONNECTION_MAX_DEFAULT);
        if in_flight == 0 {
            return Err(invalid("max-in-flight", "must be at least 1"));
        }
        let idle_timeout = match pick!(idle_timeout) {
            Some(text) => parse_duration("idle-timeout", &text)?,
            None => IDLE_TIMEOUT_DEFAULT,
        };
        let shard_queue_depth = pick!(shard_queue_depth).unwrap_or(SHARD_QUEUE_DEPTH_DEFAULT);
        if !(1..=65_536).contains(&shard_queue_depth) {
            return Err(invalid("shard-queue-depth", "must be within 1..=65536"));
        }
        let peer_listen = match pick!(peer_listen) {
            Some(text) => resolve("peer-listen", &text)?,
            None if listen.port() == 0 => SocketAddr::new(listen.ip(), 0),
            None => resolve("peer-listen", PEER_LISTEN_DEFAULT)?,
        };
        let advertise = match pick!(peer_advertise) {
            Some(text) => {
                let addr = resolve("peer-advertise", &text)?;
                if addr.port() == 0 || addr.ip().is_unspecified() {
                    return Err(invalid(
                        "peer-advertise",
                        format!("{addr} cannot be reached: give a host and a port"),
                    ));
                }
                Some(addr)
            }
            None => None,
        };
        let root_texts = if self.roots.is_empty() {
            file.roots.clone().unwrap_or_default()
        } else {
            self.roots.clone()
        };
        let mut roots = Vec::new();
        for text in &root_texts {
            for addr in resolve_all("root", text)? {
                if !roots.contains(&addr) {
                    roots.push(addr);
                }
            }
        }
        let write_copies = pick!(write_copies).unwrap_or(WRITE_COPIES_DEFAULT);
        if !(1..=WRITE_COPIES_MAX).contains(&write_copies) {
            return Err(invalid(
                "write-copies",
                format!("{write_copies} is outside 1..={WRITE_COPIES_MAX}"),
            ));
        }
        let write_timeout = match pick!(write_timeout) {
            Some(text) => parse_duration("write-timeout", &text)?,
            None => WRITE_TIMEOUT_DEFAULT,
        };
        if write_timeout.is_zero() || write_timeout > Duration::from_secs(60) {
            return Err(invalid("write-timeout", "must be within 1ms..=60s"));
        }
        let rebalance_interval = match pick!(rebalance_interval) {
            Some(text) => parse_duration("rebalance-interval", &text)?,
            None => REBALANCE_INTERVAL_DEFAULT,
        };
        if rebalance_interval < Duration::from_millis(100) {
            return Err(invalid("rebalance-interval", "must be at least 100ms"));
        }
        let heartbeat_interval = match pick!(heartbeat_interval) {
            Some(text) => parse_duration("heartbeat-interval", &text)?,
            None => HEARTBEAT_INTERVAL_DEFAULT,
        };
        if heartbeat_interval < Duration::from_millis(100)
            || heartbeat_interval > Duration::from_secs(60)
        {
            return Err(invalid("heartbeat-interval", "must be within 100ms..=60s"));
        }
        let resp_listen = match pick!(resp_listen) {
            Some(text) if text.eq_ignore_ascii_case("off") => None,
            Some(text) => Some(resolve("resp-listen", &text)?),
            None if listen.port() == 0 => Some(SocketAddr::new(listen.ip(), 0)),
            None => Some(resolve("resp-listen", RESP_LISTEN_DEFAULT)?),
        };
        let http_listen = match pick!(http_listen) {
            Some(text) if text.eq_ignore_ascii_case("off") => None,
            Some(text) => Some(resolve("http-listen", &text)?),
            None if listen.port() == 0 => Some(SocketAddr::new(listen.ip(), 0)),
            None => Some(resolve("http-listen", HTTP_LISTEN_DEFAULT)?),
        };
        let default_ttl = match pick!(default_ttl) {
            Some(text) => parse_duration("default-ttl", &text)?,
            None => DEFAULT_TTL_DEFAULT,
        };
        let default_ttl_ms = millis(default_ttl)
            .min(limits.ttl_ms_max)
            .max(limits.ttl_ms_min);
        let auth = match pick!(auth_token_file) {
            Some(path) => {
                let token = AuthToken::read(&path).map_err(|e| invalid("auth-token-file", e))?;
                Some(Arc::new(
                    ClientAuth::new(&token).map_err(|e| invalid("auth-token-file", e))?,
                ))
            }
            None => None,
        };
        let unprotected = self.unprotected || file.unprotected.unwrap_or(false);
        if auth.is_none() && !unprotected {
            let client_addrs = [Some(listen), resp_listen, http_listen]
                .into_iter()
                .flatten()
                .chain(shard_listen.iter().copied());
            for addr in client_addrs {
                if !addr.ip().is_loopback() {
                    return Err(invalid(
                        "listen",
                        format!(
                            "protected mode: no client token is set, so this node serves clients on \
                             loopback only, and {addr} is not; give a token (--auth-token-file), \
                             listen on 127.0.0.1, or pass --unprotected if every client that can \
                             reach {addr} may read and write"
                        ),
                    ));
                }
            }
        }
        let key_listing = !(self.no_key_listing || file.no_key_listing.unwrap_or(false));
        let tls = match (pick!(tls_cert), pick!(tls_key)) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let config =
                    crate::tls::server_config(&cert, &key).map_err(|e| invalid("tls-cert", e))?;
                let on = pick!(tls_on)
                    .unwrap_or_else(|| vec!["native".into(), "resp".into(), "http".into()]);
                for name in &on {
                    if !matches!(name.as_str(), "native" | "resp" | "http") {
                        return Err(invalid(
                            "tls-on",
                            format!("{name} is not native, resp or http"),
                        ));
                    }
                }
                let has = |name: &str| on.iter().any(|n| n == name);
                Some(ClientTls {
                    config,
                    native: has("native"),
                    resp: has("resp"),
                    http: has("http"),
                })
            }
            _ => return Err(invalid("tls-cert", "--tls-cert and --tls-key go together")),
        };
        let (node_key_file, trusted_peers) = (pick!(node_key_file), pick!(trusted_peers));
        let keys = match pick!(cluster_key_file) {
            None if node_key_file.is_some() || trusted_peers.is_some() => {
                return Err(invalid(
                    "cluster-key-file",
                    "--node-key-file and --trusted-peers need --cluster-key-file (a private \
                     network)",
                ))
            }
            None => None,
            Some(path) => {
                let cluster = read_key_file(&path).map_err(|e| invalid("cluster-key-file", e))?;
                let private = match node_key_file {
                    Some(path) => {
                        Some(read_key_file(&path).map_err(|e| invalid("node-key-file", e))?)
                    }
                    None => None,
                };
                let trusted = match trusted_peers {
                    Some(path) => Some(std::fs::read_to_string(&path).map_err(|e| {
                        invalid(
                            "trusted-peers",
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?),
                    None => None,
                };
                let keys = ClusterKeys::new(cluster, private, trusted.as_deref())
                    .map_err(|e| invalid("trusted-peers", e))?;
                Some(Arc::new(keys))
            }
        };
        let node_id = match pick!(node_id) {
            Some(id) => id,
            None => random_u64().map_err(|e| invalid("node-id", e))?,
        };
        Ok(NodeConfig {
            listen,
            shard_listen,
            shard_limits: limits,
            frame_bytes_max,
            connections_max,
            in_flight_per_connection_max: in_flight,
            idle_timeout: (!idle_timeout.is_zero()).then_some(idle_timeout),
            shard_queue_depth,
            node_id,
            hash_seed: random_u64().map_err(|e| invalid("listen", e))?,
            peer: PeerConfig {
                listen: peer_listen,
                advertise,
                roots,
                write_copies,
                write_timeout,
                rebalance_interval,
                heartbeat_interval,
                keys,
            },
            resp_listen,
            http_listen,
            default_ttl_ms,
            auth,
            key_listing,
            null_store: self.null_store,
            tls,
        })
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Shard i listens on `base + i` on the client address's host; with no base, on the client
/// port + 1 + i, or on free ports when the client port is 0. Collisions are refused here.
fn shard_addresses(
    listen: SocketAddr,
    base: Option<u16>,
    shards: usize,
) -> Result<Vec<SocketAddr>, ConfigError> {
    let base = match base {
        Some(base) => base,
        None if listen.port() == 0 => 0,
        None => listen
            .port()
            .checked_add(1)
            .ok_or_else(|| invalid("shard-port-base", "the client port is 65535: set a base"))?,
    };
    if base == 0 {
        return Ok(vec![SocketAddr::new(listen.ip(), 0); shards]);
    }
    let last = u32::from(base) + shards as u32 - 1;
    if last > u32::from(u16::MAX) {
        return Err(invalid(
            "shard-port-base",
            format!("{shards} shards from port {base} run past 65535"),
        ));
    }
    let ports = u32::from(base)..=last;
    if ports.contains(&u32::from(listen.port())) {
        return Err(invalid(
            "shard-port-base",
            format!(
                "shard ports {base}..={last} include the client port {}",
                listen.port()
            ),
        ));
    }
    Ok(ports
        .map(|port| SocketAddr::new(listen.ip(), port as u16))
        .collect())
}

fn random_u64() -> Result<u64, String> {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 8];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the operating system's random generator failed".to_string())?;
    Ok(u64::from_le_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ServeArgs {
        ServeArgs::default()
    }

    #[test]
    fn protected_mode_holds_clients_to_loopback_unless_a_token_or_unprotected() {
        let everywhere = ServeArgs {
            listen: Some("0.0.0.0:7700".into()),
            shards: Some(1),
            ..args()
        };
        let refused = everywhere.resolve().expect_err("no token, not loopback");
        assert!(refused.to_string().contains("protected mode"), "{refused}");
        let unprotected = ServeArgs {
            unprotected: true,
            ..everywhere.clone()
        };
        let config = unprotected
            .resolve()
            .expect("--unprotected says it is meant");
        assert!(config.auth.is_none());
        // The front ends' ports count as client ports too; the peer port does not.
        let resp_out = ServeArgs {
            shards: Some(1),
            resp_listen: Some("0.0.0.0:6379".into()),
            ..args()
        };
        assert!(resp_out.resolve().is_err());
        let peers_out = ServeArgs {
            shards: Some(1),
            peer_listen: Some("0.0.0.0:7800".into()),
            ..args()
        };
        assert!(
            peers_out
                .resolve()
                .expect("peers are not clients")
                .key_listing
        );
    }

    #[test]
    fn defaults_start_a_node_on_7700_with_shard_ports_after_it() {
        let config = ServeArgs {
            shards: Some(3),
            ..args()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            config.listen,
            "127.0.0.1:7700".parse::<SocketAddr>().unwrap()
        );
        let ports: Vec<u16> = config.shard_listen.iter().map(|a| a.port()).collect();
        assert_eq!(ports, [7701, 7702, 7703]);
        assert_eq!(config.idle_timeout, Some(IDLE_TIMEOUT_DEFAULT));
        assert!(config.frame_bytes_max > config.shard_limits.value_bytes_max);
    }

    #[test]
    fn shard_ports_that_cover_the_client_port_are_refused() {
        let err = ServeArgs {
            shards: Some(4),
            shard_port_base: Some(7698),
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert!(
            err.to_string().contains("include the client port 7700"),
            "{err}"
        );
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("repram-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\nshards = 2\nmemory_budget = \"64MiB\"\nidle_timeout = \"0\"\n",
        )
        .unwrap();
        let config = ServeArgs {
            config: Some(path.clone()),
            shards: Some(4),
            ..args()
        }
        .resolve()
        .unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.shard_listen.len(), 4, "the flag wins over the file");
        assert_eq!(config.shard_limits.memory_budget_bytes, (64 << 20) / 4);
        assert_eq!(config.idle_timeout, None);
        std::fs::write(&path, "listn = \"x\"\n").unwrap();
        let err = ServeArgs {
            config: Some(path),
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("listn"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn sizes_and_durations_read_as_people_write_them() {
        assert_eq!(parse_size("x", "1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("x", "4096").unwrap(), 4096);
        assert!(parse_size("x", "lots").is_err());
        assert_eq!(parse_duration("x", "60").unwrap(), Duration::from_secs(60));
        assert_eq!(
            parse_duration("x", "250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(parse_duration("x", "5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("x", "soon").is_err());
    }
}
