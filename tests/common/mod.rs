//! Helpers shared by the integration tests: a node process, a raw wire connection, and a
//! memory scanner. Each test binary uses a different subset.
#![allow(dead_code)]

pub mod browser;
pub mod http_client;
pub mod memscan;
pub mod relay;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use repram::wire::{self, ArchivedReply, ErrorCode, Request};

/// A `repram serve` process on 127.0.0.1; stopped with SIGTERM when dropped.
pub struct NodeProcess {
    pub child: Child,
    pub client: SocketAddr,
    pub shards: Vec<SocketAddr>,
    /// Where other nodes reach it (its advertised peer address).
    pub peer: SocketAddr,
    /// Where its peer listener is bound.
    pub peer_listen: SocketAddr,
    /// Its Redis-protocol port, when on.
    pub resp: Option<SocketAddr>,
    /// Its HTTP API port, when on.
    pub http: Option<SocketAddr>,
}

impl NodeProcess {
    /// Starts a node on free ports with `args` added, and waits until it serves.
    pub fn start(args: &[&str]) -> NodeProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_repram"));
        command.arg("serve").arg("--listen").arg("127.0.0.1:0");
        command.args(args);
        Self::spawn(command).unwrap_or_else(|stderr| panic!("node did not start: {stderr}"))
    }

    /// Runs `repram serve ARGS`; `Err(stderr)` if it exits instead of serving.
    pub fn spawn(mut command: Command) -> Result<NodeProcess, String> {
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "warn");
        let mut child = command.spawn().expect("spawn repram");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        if !line.starts_with("repram listening") {
            let _ = child.wait();
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            return Err(stderr);
        }
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                .to_string()
        };
        let client = field("client=").parse().expect("client address");
        let shards = field("shards=")
            .split(',')
            .map(|a| a.parse().expect("shard address"))
            .collect();
        let peer = field("peer=").parse().expect("peer address");
        let peer_listen = field("peer_listen=").parse().expect("peer listen address");
        let resp = field("resp=").parse().ok();
        let http = field("http=").parse().ok();
        Ok(NodeProcess {
            child,
            client,
            shards,
            peer,
            peer_listen,
            resp,
            http,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if self.terminate().is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// Whether `key` is held by `node` itself (no pull), checked until `within` passes.
pub fn held_within(node: &repram::client::BlockingClient, key: &[u8], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if node.get_local(key).expect("local get").is_some() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A response read back, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Stored,
    Value(Vec<u8>),
    NotFound,
    Deleted,
    Pong,
    Hello(wire::HelloInfo),
    Stats(wire::NodeStats),
    Topology(wire::TopologyInfo),
    NotStored,
    Error(ErrorCode, String),
}

/// A blocking connection speaking raw frames, for tests that send what a client never would.
pub struct RawConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    pub fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, request: &Request<'_>) {
        let mut out = Vec::new();
        wire::encode_request(&mut out, request);
        self.stream.write_all(&out).expect("send");
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// The next response, or `None` once the node has closed the connection.
    pub fn recv(&mut self) -> Option<(u64, Reply)> {
        loop {
            if let Ok(Some(len)) = wire::frame_len(&self.buf, usize::MAX) {
                let total = wire::FRAME_HEADER_BYTES + len;
                if self.buf.len() >= total {
                    let reply = {
                        let response = wire::decode_response(&self.buf[4..total])
                            .expect("the node sent a readable response");
                        (response.id.to_native(), owned(&response.reply))
                    };
                    self.buf.drain(..total);
                    return Some(reply);
                }
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read from node: {e}"),
            }
        }
    }

    /// Sends one request and returns its reply, checking the id.
    pub fn call(&mut self, request: &Request<'_>) -> Reply {
        self.send(request);
        let (id, reply) = self.recv().expect("a reply before close");
        assert_eq!(id, request.id, "reply to another request");
        reply
    }
}

fn owned(reply: &ArchivedReply<'_>) -> Reply {
    match reply {
        ArchivedReply::Stored { .. } => Reply::Stored,
        ArchivedReply::Value { value, .. } => Reply::Value(value.get().to_vec()),
        ArchivedReply::NotFound => Reply::NotFound,
        ArchivedReply::NotStored => Reply::NotStored,
        ArchivedReply::Deleted => Reply::Deleted,
        ArchivedReply::Pong => Reply::Pong,
        ArchivedReply::Hello(info) => {
            Reply::Hello(rkyv::deserialize::<_, rkyv::rancor::Error>(info).expect("hello"))
        }
        ArchivedReply::Stats(stats) => {
            Reply::Stats(rkyv::deserialize::<_, rkyv::rancor::Error>(stats).expect("stats"))
        }
        ArchivedReply::Topology(topology) => Reply::Topology(
            rkyv::deserialize::<_, rkyv::rancor::Error>(topology).expect("topology"),
        ),
        ArchivedReply::Error { code, message, .. } => {
            Reply::Error(ErrorCode::from(code), message.get().to_string())
        }
    }
}
