//! The Rust client: async on glommio, pipelined, shard-aware; [`BlockingClient`] wraps it for
//! the CLI and for tests.
//!
//! Owns the client side of the wire: request ids, matching responses to callers, and routing
//! each key to the shard that owns it (after Hello it connects to every shard-aware port, as
//! ScyllaDB's drivers do). It never spawns threads; the caller's executor runs it.

mod blocking;
mod connection;

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

pub use self::blocking::BlockingClient;
use self::connection::Connection;
use crate::auth::AuthToken;
use crate::wire::{self, ErrorCode, HelloInfo, NodeStats, Op, TopologyInfo, PROTOCOL_VERSION};
use crate::Version;

/// The node address used when none is given.
pub const ADDR_DEFAULT: &str = "127.0.0.1:7700";

#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Connect to every shard's own port and send each key straight to its owner.
    pub shard_aware: bool,
    /// For the TCP connect and the Hello that follows it.
    pub connect_timeout: Duration,
    /// How long any one call waits for its answer; `None` waits as long as the connection
    /// lives (for callers that keep their own deadlines, like the loadgen).
    pub request_timeout: Option<Duration>,
    /// The node's client token, for a node started with `--auth-token-file`: every
    /// connection says it in its Hello.
    pub token: Option<AuthToken>,
    /// TLS, for a node started with `--tls-cert` (`crate::tls::client_config` of the CA
    /// that signed its certificate).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            shard_aware: true,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Some(Duration::from_secs(30)),
            token: None,
            tls: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Io(String),
    #[error("the node answered something this client cannot read: {0}")]
    Protocol(String),
    #[error("{message} ({code:?})")]
    Node {
        code: ErrorCode,
        message: String,
        retry_after_ms: u32,
    },
    #[error("connection closed: {0}")]
    Closed(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl From<io::Error> for ClientError {
    fn from(error: io::Error) -> Self {
        ClientError::Io(error.to_string())
    }
}

impl ClientError {
    /// The node's error code, if the node refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Node { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A value read back, with its expiry and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub bytes: Vec<u8>,
    pub expires_ms: u64,
    pub version: Version,
}

/// A write the node stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub version: Version,
    pub expires_ms: u64,
    /// Nodes known to hold the write when the node answered (itself included).
    pub copies: u32,
    /// Fewer nodes than asked for confirmed it before the node's write timeout ("accepted,
    /// pending"): the value is kept and still replicating.
    pub pending: bool,
}

/// A response, owned (the value copied out of the receive buffer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Hello(HelloInfo),
    Stored(Stored),
    Value(Value),
    NotFound,
    Deleted,
    Pong,
    Stats(NodeStats),
    Topology(TopologyInfo),
    /// A conditional write whose condition did not hold.
    NotStored,
}

/// A client of one node.
pub struct Client {
    hello: HelloInfo,
    /// The connection Hello went over: the shared port, or the only one.
    main: Rc<Connection>,
    /// One per shard when shard-aware, indexed by shard id.
    shards: Vec<Rc<Connection>>,
    request_timeout: Option<Duration>,
}

/// `call` with a deadline, if one is set.
async fn within<T>(
    deadline: Option<Duration>,
    call: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    match deadline {
        None => call.await,
        Some(limit) => {
            futures_lite::future::or(call, async {
                glommio::timer::sleep(limit).await;
                Err(ClientError::Timeout(limit))
            })
            .await
        }
    }
}

/// Resolves `addr` before glommio sees it: its connect blocks on DNS and panics on failure.
pub fn resolve(addr: &str) -> Result<SocketAddr, ClientError> {
    addr.to_socket_addrs()
        .map_err(|e| ClientError::Io(format!("cannot resolve {addr:?}: {e}")))?
        .next()
        .ok_or_else(|| ClientError::Io(format!("{addr:?} resolves to no address")))
}

/// Says Hello on `connection` (with the token, if any) and returns what the node said.
async fn greet(connection: &Connection, options: &ClientOptions) -> Result<HelloInfo, ClientError> {
    let token = options.token.as_ref().map_or(&[][..], AuthToken::as_bytes);
    // A server that accepts but never says Hello must not hang us.
    let hello = within(
        Some(options.connect_timeout),
        connection.call(|id| wire::Request {
            id,
            op: Op::Hello {
                protocol_version: PROTOCOL_VERSION,
                token,
            },
        }),
    )
    .await;
    match hello? {
        Answer::Hello(info) => Ok(info),
        other => Err(unexpected(&other)),
    }
}

impl Client {
    /// Connects, says Hello, and (shard-aware) connects to every shard's own port.
    pub async fn connect(addr: SocketAddr, options: &ClientOptions) -> Result<Client, ClientError> {
        let main = Connection::open(addr, options.connect_timeout, options.tls.as_ref()).await?;
        let hello = greet(&main, options).await?;
        let mut shards = Vec::new();
        if options.shard_aware && hello.shard_count > 1 {
            if hello.shard_ports.len() != hello.shard_count as usize {
                return Err(ClientError::Protocol(format!(
                    "{} shard ports for {} shards",
                    hello.shard_ports.len(),
                    hello.shard_count
                )));
            }
            for &port in &hello.shard_ports {
                let shard_addr = SocketAddr::new(addr.ip(), port);
                let shard =
                    Connection::open(shard_addr, options.connect_timeout, options.tls.as_ref())
                        .await?;
                if options.token.is_some() {
                    // Each connection is let in on its own.
                    greet(&shard, options).await?;
                }
                shards.push(shard);
            }
        }
        Ok(Client {
            hello,
            main,
            shards,
            request_timeout: options.request_timeout,
        })
    }

    /// What the node said in its Hello.
    pub fn hello(&self) -> &HelloInfo {
        &self.hello
    }

    /// The shard that owns `key` on this node.
    pub fn shard_of(&self, key: &[u8]) -> u32 {
        wire::shard_of(key, self.hello.hash_seed, self.hello.shard_count.max(1))
    }

    fn route(&self, key: &[u8]) -> &Rc<Connection> {
        if self.shards.is_empty() {
            return &self.main;
        }
        &self.shards[self.shard_of(key) as usize]
    }

    /// Stores `value` under `key` for `ttl` (with the node's default copies).
    pub async fn put(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Duration,
    ) -> Result<Stored, ClientError> {
        self.put_copies(key, value, ttl, 0).await
    }

    /// Stores `value` under `key` for `ttl`, answered once `copies` nodes hold it (this one
    /// included; 0: the node's default), or with `pending` set once the node's write timeout
    /// passes first.
    pub async fn put_copies(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Duration,
        copies: u8,
    ) -> Result<Stored, ClientError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let answer = within(
            self.request_timeout,
            self.route(key).call(|id| wire::Request {
                id,
                op: Op::Put {
                    key,
                    value,
                    ttl_ms,
                    copies,
                    only_if: wire::PUT_ALWAYS,
                },
            }),
        )
        .await?;
        match answer {
            Answer::Stored(stored) => Ok(stored),
            other => Err(unexpected(&other)),
        }
    }

    /// Reads `key`; `None` when it is missing or expired.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Value>, ClientError> {
        self.get_with(key, false).await
    }

    /// Reads `key` from this node alone, never from its peers.
    pub async fn get_local(&self, key: &[u8]) -> Result<Option<Value>, ClientError> {
        self.get_with(key, true).await
    }

    async fn get_with(&self, key: &[u8], local_only: bool) -> Result<Option<Value>, ClientError> {
        let answer = within(
            self.request_timeout,
            self.route(key).call(|id| wire::Request {
                id,
                op: Op::Get { key, local_only },
            }),
        )
        .await?;
        match answer {
            Answer::Value(value) => Ok(Some(value)),
            Answer::NotFound => Ok(None),
            other => Err(unexpected(&other)),
        }
    }

    /// Deletes `key`; `false` when there was no live value.
    pub async fn delete(&self, key: &[u8]) -> Result<bool, ClientError> {
        let answer = within(
            self.request_timeout,
            self.route(key).call(|id| wire::Request {
                id,
                op: Op::Delete { key },
            }),
        )
        .await?;
        match answer {
            Answer::Deleted => Ok(true),
            Answer::NotFound => Ok(false),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn ping(&self) -> Result<(), ClientError> {
        match self
            .main
            .call(|id| wire::Request { id, op: Op::Ping })
            .await?
        {
            Answer::Pong => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// The node's counters, summed over its shards.
    pub async fn stats(&self) -> Result<NodeStats, ClientError> {
        match self
            .main
            .call(|id| wire::Request { id, op: Op::Stats })
            .await?
        {
            Answer::Stats(stats) => Ok(stats),
            other => Err(unexpected(&other)),
        }
    }

    /// The discovery tree as the node sees it.
    pub async fn topology(&self) -> Result<TopologyInfo, ClientError> {
        let answer = within(
            self.request_timeout,
            self.main.call(|id| wire::Request {
                id,
                op: Op::Topology,
            }),
        )
        .await?;
        match answer {
            Answer::Topology(topology) => Ok(topology),
            other => Err(unexpected(&other)),
        }
    }
}

fn unexpected(answer: &Answer) -> ClientError {
    ClientError::Protocol(format!("unexpected answer {answer:?}"))
}
