//! The servers the loadgen can drive, behind one request call: a REPRAM node (native
//! protocol, through `repram::client`), Redis/Valkey (RESP) and memcached (text protocol).
//! The workload code sends `get`/`set` and sees `Hit`, `Miss`, `Stored` or an `OpError`.
//!
//! Owns connecting and translating ops and errors. It never retries, reconnects or times
//! out by itself (the driver does), and never measures.

pub mod memcache;
pub mod resp;
pub mod text;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use repram::auth::AuthToken;
use repram::client::{Client, ClientError, ClientOptions};
use serde::{Deserialize, Serialize};

use self::text::{Reply, TextConnection, TextProtocol};
use crate::workload::OpKind;

/// Which server speaks at the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// A REPRAM node, native protocol.
    Repram,
    /// Redis or Valkey, RESP.
    Redis,
    /// memcached, text protocol.
    Memcached,
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetKind::Repram => "repram",
            TargetKind::Redis => "redis",
            TargetKind::Memcached => "memcached",
        })
    }
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    pub kind: TargetKind,
    pub addr: SocketAddr,
    /// REPRAM only: connect to every shard's own port and send each key to its owner.
    pub shard_aware: bool,
    pub connect_timeout: Duration,
    /// The server's client token: REPRAM's Hello carries it, Redis gets `AUTH`.
    pub token: Option<AuthToken>,
    /// REPRAM only: TLS with a node started with `--tls-cert`.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// What a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    Stored,
}

/// Why a request (or a connection attempt) failed; `kind` names it in the report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("connection refused: {0}")]
    Refused(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("no answer within the request timeout")]
    Timeout,
    #[error("connection closed: {0}")]
    Closed(String),
    #[error("i/o error: {0}")]
    Io(String),
    #[error("unreadable reply: {0}")]
    Protocol(String),
    #[error("server error {code}: {message}")]
    Server { code: String, message: String },
}

impl OpError {
    /// The name this error is counted under.
    pub fn kind(&self) -> String {
        match self {
            OpError::Refused(_) => "connect refused".into(),
            OpError::Connect(_) => "connect failed".into(),
            OpError::Timeout => "timeout".into(),
            OpError::Closed(_) => "closed".into(),
            OpError::Io(_) => "io".into(),
            OpError::Protocol(_) => "protocol".into(),
            OpError::Server { code, .. } => format!("server {code}"),
        }
    }

    /// Whether the connection cannot be used after this error.
    pub fn breaks_connection(&self) -> bool {
        !matches!(self, OpError::Server { .. })
    }

    pub(crate) fn from_io(error: io::Error) -> OpError {
        match error.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionAborted => OpError::Closed(error.to_string()),
            _ => OpError::Io(error.to_string()),
        }
    }

    pub(crate) fn from_connect(addr: SocketAddr, error: io::Error) -> OpError {
        let text = format!("{addr}: {error}");
        if error.kind() == io::ErrorKind::ConnectionRefused || text.contains("refused") {
            OpError::Refused(text)
        } else if error.kind() == io::ErrorKind::TimedOut {
            OpError::Timeout
        } else {
            OpError::Connect(text)
        }
    }

    fn from_client(error: ClientError) -> OpError {
        match error {
            ClientError::Node { code, message, .. } => OpError::Server {
                code: format!("{code:?}"),
                message,
            },
            ClientError::Io(text) if text.contains("refused") => OpError::Refused(text),
            ClientError::Io(text) if text.starts_with("cannot connect") => OpError::Connect(text),
            ClientError::Io(text) => OpError::Io(text),
            ClientError::Protocol(text) => OpError::Protocol(text),
            ClientError::Closed(text) => OpError::Closed(text),
            ClientError::Timeout(_) => OpError::Timeout,
        }
    }
}

/// One connection to a target (for REPRAM, shard-aware: one socket per shard).
pub enum TargetConnection {
    Repram(Client),
    Text(TextConnection),
}

impl TargetConnection {
    /// Connects (REPRAM: and says Hello). The caller bounds the time it may take.
    pub async fn connect(spec: &TargetSpec) -> Result<TargetConnection, OpError> {
        match spec.kind {
            TargetKind::Repram => {
                // The driver keeps its own deadline on every request.
                let options = ClientOptions {
                    shard_aware: spec.shard_aware,
                    connect_timeout: spec.connect_timeout,
                    request_timeout: None,
                    token: spec.token.clone(),
                    tls: spec.tls.clone(),
                };
                Client::connect(spec.addr, &options)
                    .await
                    .map(TargetConnection::Repram)
                    .map_err(OpError::from_client)
            }
            TargetKind::Redis => {
                let connection =
                    TextConnection::open(TextProtocol::Resp, spec.addr, spec.connect_timeout)
                        .await?;
                if let Some(token) = &spec.token {
                    let reply = connection
                        .call(|out| resp::encode_command(out, &[b"AUTH", token.as_bytes()]))
                        .await?;
                    if let Reply::Error { code, message } = reply {
                        return Err(OpError::Server { code, message });
                    }
                }
                Ok(TargetConnection::Text(connection))
            }
            TargetKind::Memcached => {
                TextConnection::open(TextProtocol::Memcache, spec.addr, spec.connect_timeout)
                    .await
                    .map(TargetConnection::Text)
            }
        }
    }

    /// Sends one `get` or `set` and waits for its answer (without a time limit: the caller
    /// sets one).
    pub async fn request(
        &self,
        kind: OpKind,
        key: &[u8],
        value: &[u8],
        ttl: Duration,
    ) -> Result<Outcome, OpError> {
        match self {
            TargetConnection::Repram(client) => match kind {
                OpKind::Get => match client.get(key).await {
                    Ok(Some(_)) => Ok(Outcome::Hit),
                    Ok(None) => Ok(Outcome::Miss),
                    Err(e) => Err(OpError::from_client(e)),
                },
                OpKind::Set => client
                    .put(key, value, ttl)
                    .await
                    .map(|_| Outcome::Stored)
                    .map_err(OpError::from_client),
            },
            TargetConnection::Text(connection) => {
                let resp = connection.protocol() == TextProtocol::Resp;
                let reply = connection
                    .call(|out| match (kind, resp) {
                        (OpKind::Get, true) => resp::encode_get(out, key),
                        (OpKind::Set, true) => resp::encode_set(out, key, value, ttl),
                        (OpKind::Get, false) => memcache::encode_get(out, key),
                        (OpKind::Set, false) => memcache::encode_set(out, key, value, ttl),
                    })
                    .await?;
                outcome_of(kind, reply)
            }
        }
    }

    /// Ends the connection now; requests waiting on it fail as `closed`.
    pub fn close(&self) {
        if let TargetConnection::Text(connection) = self {
            connection.close();
        }
        // A REPRAM client closes its sockets when dropped.
    }
}

fn outcome_of(kind: OpKind, reply: Reply) -> Result<Outcome, OpError> {
    match (kind, reply) {
        (OpKind::Get, Reply::Value(_)) => Ok(Outcome::Hit),
        (OpKind::Get, Reply::Nil) => Ok(Outcome::Miss),
        (OpKind::Set, Reply::Status(status)) if status == "OK" || status == "STORED" => {
            Ok(Outcome::Stored)
        }
        (_, Reply::Error { code, message }) => Err(OpError::Server { code, message }),
        // A refusal written as a status (memcached's NOT_STORED, say).
        (OpKind::Set, Reply::Status(status)) => Err(OpError::Server {
            code: status,
            message: String::new(),
        }),
        (kind, other) => Err(OpError::Protocol(format!(
            "{} answered with {other:?}",
            kind.name()
        ))),
    }
}
