//! The node: one pinned glommio executor per shard, each with its store, its listeners and its
//! links to the other shards.
//!
//! Owns starting and stopping the executors and the tasks each runs (accept loops, the
//! cross-shard mesh, the expiry timer). It never parses a frame or opens a value itself
//! (`connection` and `shard` do), and shards share no lock: they talk over glommio's
//! lock-free channel meshes only.

mod connection;
pub(crate) mod idle;
pub mod listeners;
mod replica;
pub(crate) mod shard;

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::Duration;

use futures_rustls::TlsAcceptor;
use glommio::channels::channel_mesh::{MeshBuilder, Receivers};
use glommio::channels::shared_channel::ConnectedReceiver;
use glommio::net::TcpListener;

use crate::tls::ClientStream;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use zeroize::Zeroizing;

use crate::config::NodeConfig;
use crate::coordinator::{Coordinator, CoordinatorPlan, FromShard, NetworkCounters, ToShard};
use crate::http::request::HttpLimits;
use crate::http::HttpTtls;
use crate::resp::parse::RespLimits;
use crate::store::{Store, StoreConfig};
use crate::wire::ErrorCode;

use self::listeners::BindError;
use self::shard::{bump, respond_error, MeshLinks, Shard, ShardReply, ShardRequest};

/// io_uring memory each executor registers (glommio's minimum). The node does no file I/O, so
/// glommio's 10 MiB default would only eat into the locked-memory limit (often 8 MiB in all).
pub const EXECUTOR_IO_MEMORY_BYTES: usize = 64 * 1024;
/// Longest the expiry timer sleeps, so a value expires within this of its time even when a
/// write lands an earlier expiry while the timer sleeps.
const EXPIRY_TICK_MAX: Duration = Duration::from_millis(50);
/// Pause after a failed accept (out of file descriptors, say) so the loop does not spin.
const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(20);
/// How long a stopping node waits for its goodbyes to peers to be written.
const GRACEFUL_LEAVE_MAX: Duration = Duration::from_secs(1);
/// How long a shard may take to start (join the mesh, bind) before the node gives up.
const SHARD_START_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("cannot start shard {shard}: {message}")]
    Start { shard: u32, message: String },
    #[error("shard {shard} failed: {message}")]
    Shard { shard: u32, message: String },
}

/// A started node: where it listens, and how to stop it.
pub struct RunningNode {
    pub client_addr: SocketAddr,
    /// Where other nodes reach this one (the advertised peer address).
    pub peer_addr: SocketAddr,
    /// Where the peer listener is bound (differs from `peer_addr` behind a proxy or NAT).
    pub peer_listen: SocketAddr,
    /// The Redis-protocol front end's address, when it is on.
    pub resp_addr: Option<SocketAddr>,
    /// The HTTP API's address, when it is on.
    pub http_addr: Option<SocketAddr>,
    pub shard_addrs: Vec<SocketAddr>,
    pub node_id: u64,
    stopper: Stopper,
    executors: Vec<ExecutorJoinHandle<Result<(), String>>>,
}

/// Stops a node from any thread (a signal handler's, say).
#[derive(Clone)]
pub struct Stopper {
    stops: Vec<flume::Sender<()>>,
}

impl Stopper {
    /// Asks every shard to stop: listeners close, connections end.
    pub fn stop(&self) {
        for stop in &self.stops {
            let _ = stop.try_send(());
        }
    }
}

impl RunningNode {
    pub fn stop(&self) {
        self.stopper.stop();
    }

    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Stops a node that failed to start, preferring a shard's own account of why.
    fn abort(self, error: NodeError) -> NodeError {
        self.stop();
        match self.wait() {
            Err(NodeError::Shard { shard, message }) if message.contains("MemLock") => {
                let message = format!(
                    "{message}: the locked-memory limit is too low for io_uring; raise it \
                     (`ulimit -l`, or LimitMEMLOCK= in a systemd unit) — `repram doctor` checks"
                );
                NodeError::Start { shard, message }
            }
            Err(NodeError::Shard { shard, message }) => NodeError::Start { shard, message },
            _ => error,
        }
    }

    /// Waits for every shard to finish.
    pub fn wait(self) -> Result<(), NodeError> {
        let mut result = Ok(());
        for (shard, executor) in self.executors.into_iter().enumerate() {
            let outcome = match executor.join() {
                Ok(Ok(())) => continue,
                Ok(Err(message)) => message,
                Err(e) => e.to_string(),
            };
            if result.is_ok() {
                result = Err(NodeError::Shard {
                    shard: shard as u32,
                    message: outcome,
                });
            }
        }
        result
    }
}

/// Binds every listener (refusing ports in use), then starts one executor per shard.
pub fn start(mut config: NodeConfig) -> Result<RunningNode, NodeError> {
    match raise_open_files_limit(config.connections_max) {
        Ok(None) => {}
        Ok(Some(room)) => {
            tracing::warn!(
                asked = config.connections_max,
                allowed = room,
                "the open-files limit (ulimit -Hn) leaves room for fewer client connections \
                 than --max-connections; the cap is lowered to fit"
            );
            config.connections_max = room;
        }
        Err(e) => tracing::warn!(%e, "cannot read or raise the open-files limit"),
    }
    let shards = config.shard_listen.len();
    let shared = listeners::bind_shared(config.listen, shards)?;
    let own = listeners::bind_each(&config.shard_listen)?;
    let local = |l: &std::net::TcpListener| {
        l.local_addr().map_err(|e| NodeError::Start {
            shard: 0,
            message: e.to_string(),
        })
    };
    let client_addr = local(&shared[0])?;
    let shard_addrs = own.iter().map(local).collect::<Result<Vec<_>, _>>()?;
    let shard_ports: Vec<u16> = shard_addrs.iter().map(SocketAddr::port).collect();
    // The Redis-protocol front end: one listener per shard on a shared port, like the
    // client port.
    let mut resp = match config.resp_listen {
        Some(addr) => listeners::bind_shared(addr, shards)?,
        None => Vec::new(),
    };
    let resp_addr = resp.first().map(local).transpose()?;
    resp.reverse();
    let mut http = match config.http_listen {
        Some(addr) => listeners::bind_shared(addr, shards)?,
        None => Vec::new(),
    };
    let http_addr = http.first().map(local).transpose()?;
    http.reverse();
    let mut peer_listener = listeners::bind_each(&[config.peer.listen])?;
    let peer_listener = peer_listener.pop().ok_or_else(|| NodeError::Start {
        shard: 0,
        message: "no peer listener".into(),
    })?;
    let peer_bound = local(&peer_listener)?;
    let peer_addr = match config.peer.advertise {
        Some(addr) => addr,
        None if peer_bound.ip().is_unspecified() => {
            return Err(NodeError::Start {
                shard: 0,
                message: format!(
                    "the peer listener is on {peer_bound}: give --peer-advertise, the address \
                     other nodes should use"
                ),
            })
        }
        None => peer_bound,
    };
    // Shards and the coordinator talk over channels: requests to each shard, and one channel
    // from all shards back (bounded, so a coordinator behind slows the hand-over, not clients).
    let (to_shards, shard_inboxes): (Vec<_>, Vec<_>) =
        (0..shards).map(|_| flume::unbounded::<ToShard>()).unzip();
    let (to_coordinator, from_shards) = flume::bounded::<FromShard>(1_024);
    let network = std::sync::Arc::new(NetworkCounters::default());
    let mut coordinator = Some(CoordinatorPlan {
        counters: network.clone(),
        node_id: config.node_id,
        hash_seed: config.hash_seed,
        listener: peer_listener,
        advertise: peer_addr,
        roots: config.peer.roots.clone(),
        seed: config.hash_seed.rotate_left(17) ^ config.node_id,
        to_shards,
        from_shards,
        write_timeout: config.peer.write_timeout,
        rebalance_interval: config.peer.rebalance_interval,
        heartbeat_interval: config.peer.heartbeat_interval,
        keys: config.peer.keys.clone(),
    });
    let mut shard_inboxes = shard_inboxes.into_iter();

    let requests = MeshBuilder::<ShardRequest, _>::full(shards, config.shard_queue_depth);
    let replies = MeshBuilder::<ShardReply, _>::full(shards, config.shard_queue_depth);
    let cpus = allowed_cpus();
    // A CPU no shard is pinned to runs the coordinator; without one it shares shard 0's.
    let spare_cpu = cpus.get(shards).copied();
    let starting = shards + usize::from(spare_cpu.is_some());
    let mut stops = Vec::with_capacity(starting);
    let mut executors = Vec::with_capacity(starting);
    let (ready, readiness) = flume::bounded(starting);
    for (id, (shared, own)) in shared.into_iter().zip(own).enumerate() {
        let (stop, stopped) = flume::bounded(1);
        stops.push(stop);
        let placement = if shards <= cpus.len() {
            Placement::Fixed(cpus[id])
        } else {
            Placement::Unbound
        };
        let plan = ShardPlan {
            id: id as u32,
            config: config.clone(),
            shard_ports: shard_ports.clone(),
            listeners: [shared, own],
            resp_listener: resp.pop(),
            http_listener: http.pop(),
            requests: requests.clone(),
            replies: replies.clone(),
            stopped,
            ready: ready.clone(),
            to_coordinator: to_coordinator.clone(),
            from_coordinator: shard_inboxes.next().ok_or_else(|| NodeError::Start {
                shard: id as u32,
                message: "no coordinator channel".into(),
            })?,
            coordinator: if id == 0 && spare_cpu.is_none() {
                coordinator.take()
            } else {
                None
            },
            network: network.clone(),
        };
        // Executors are created in shard order, so glommio's executor ids (which order the
        // mesh) follow shard ids; `run_shard` checks it.
        let builder = LocalExecutorBuilder::new(placement)
            .name(&format!("repram-shard-{id}"))
            .io_memory(EXECUTOR_IO_MEMORY_BYTES);
        // Debug builds report any task that holds its core too long (the coordinator shares
        // shard 0's: it must never starve client traffic there).
        #[cfg(debug_assertions)]
        let builder = builder.detect_stalls(Some(Box::new(StallReport)));
        let executor = builder
            .spawn(move || run_shard(plan))
            .map_err(|e| NodeError::Start {
                shard: id as u32,
                message: format!(
                    "{e} (is io_uring available and the locked-memory limit high enough?)"
                ),
            })?;
        executors.push(executor);
    }
    if let (Some(cpu), Some(plan)) = (spare_cpu, coordinator.take()) {
        let (stop, stopped) = flume::bounded(1);
        stops.push(stop);
        let ready = ready.clone();
        let builder = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name("repram-coordinator")
            .io_memory(EXECUTOR_IO_MEMORY_BYTES);
        #[cfg(debug_assertions)]
        let builder = builder.detect_stalls(Some(Box::new(StallReport)));
        let executor = builder
            .spawn(move || run_coordinator(plan, stopped, ready, shards as u32))
            .map_err(|e| NodeError::Start {
                shard: shards as u32,
                message: format!("the coordinator's executor: {e}"),
            })?;
        executors.push(executor);
    }
    drop(ready);
    let node = RunningNode {
        client_addr,
        peer_addr,
        peer_listen: peer_bound,
        resp_addr,
        http_addr,
        shard_addrs,
        node_id: config.node_id,
        stopper: Stopper { stops },
        executors,
    };
    // Serving only once every shard (and the coordinator) is: one that cannot start stops the
    // others.
    for _ in 0..starting {
        let failure = match readiness.recv_timeout(SHARD_START_TIMEOUT) {
            Ok(Ok(())) => continue,
            Ok(Err((shard, message))) => NodeError::Start { shard, message },
            Err(flume::RecvTimeoutError::Timeout) => NodeError::Start {
                shard: 0,
                message: format!("shards did not start within {SHARD_START_TIMEOUT:?}"),
            },
            // A shard thread died before it could say why: its join result does.
            Err(flume::RecvTimeoutError::Disconnected) => NodeError::Start {
                shard: 0,
                message: "a shard thread ended while starting".into(),
            },
        };
        return Err(node.abort(failure));
    }
    Ok(node)
}

/// Reports a task queue that ran past its budget by more than `STALL_REPORT_AFTER` (debug
/// builds).
#[cfg(debug_assertions)]
#[derive(Debug)]
struct StallReport;

#[cfg(debug_assertions)]
const STALL_REPORT_AFTER: Duration = Duration::from_millis(100);

#[cfg(debug_assertions)]
impl glommio::StallDetectionHandler for StallReport {
    fn threshold(
        &self,
        _queue: glommio::TaskQueueHandle,
        max_expected_runtime: Duration,
    ) -> Option<Duration> {
        Some(max_expected_runtime + STALL_REPORT_AFTER)
    }
    // glommio's default `stall` logs a warning with a backtrace through the `log` crate, which
    // the node's tracing subscriber picks up.
}

/// Everything one shard's executor starts from.
struct ShardPlan {
    id: u32,
    config: NodeConfig,
    shard_ports: Vec<u16>,
    /// The shared client listener, then this shard's own.
    listeners: [std::net::TcpListener; 2],
    /// This shard's share of the RESP port, when that front end is on.
    resp_listener: Option<std::net::TcpListener>,
    /// This shard's share of the HTTP port, when that front end is on.
    http_listener: Option<std::net::TcpListener>,
    requests: MeshBuilder<ShardRequest, glommio::channels::channel_mesh::Full>,
    replies: MeshBuilder<ShardReply, glommio::channels::channel_mesh::Full>,
    stopped: flume::Receiver<()>,
    ready: flume::Sender<Result<(), (u32, String)>>,
    to_coordinator: flume::Sender<FromShard>,
    from_coordinator: flume::Receiver<ToShard>,
    /// Shard 0 runs the coordinator.
    coordinator: Option<CoordinatorPlan>,
    network: std::sync::Arc<NetworkCounters>,
}

/// Runs the coordinator on an executor of its own (a spare CPU) until told to stop; then it
/// leaves the network. `index` is its place after the shards, for error reports.
async fn run_coordinator(
    plan: CoordinatorPlan,
    stopped: flume::Receiver<()>,
    ready: flume::Sender<Result<(), (u32, String)>>,
    index: u32,
) -> Result<(), String> {
    let coordinator = match Coordinator::start(plan) {
        Ok(coordinator) => coordinator,
        Err(message) => {
            let _ = ready.send(Err((index, message.clone())));
            return Err(message);
        }
    };
    let _ = ready.send(Ok(()));
    let _ = stopped.recv_async().await;
    coordinator.leave(GRACEFUL_LEAVE_MAX).await;
    Ok(())
}

/// Runs one shard until it is told to stop (even while it is still starting).
async fn run_shard(plan: ShardPlan) -> Result<(), String> {
    let id = plan.id;
    let stopped = plan.stopped.clone();
    let ready = plan.ready.clone();
    // Shard 0's coordinator, once started: told to leave the network before the shard stops.
    let coordinator: Rc<std::cell::RefCell<Option<Rc<Coordinator>>>> = Rc::default();
    let coordinator_slot = coordinator.clone();
    let serve = async move {
        match start_shard(plan, &coordinator_slot).await {
            Ok(shard) => {
                let _ = ready.send(Ok(()));
                std::future::pending::<()>().await;
                drop(shard);
                Ok(())
            }
            Err(message) => {
                let _ = ready.send(Err((id, message.clone())));
                Err(message)
            }
        }
    };
    let stop = async move {
        let _ = stopped.recv_async().await;
        tracing::debug!(shard = id, "shard stopping");
        let leaving = coordinator.borrow().clone();
        if let Some(coordinator) = leaving {
            coordinator.leave(GRACEFUL_LEAVE_MAX).await;
        }
        Ok(())
    };
    futures_lite::future::or(serve, stop).await
}

async fn start_shard(
    plan: ShardPlan,
    coordinator_slot: &std::cell::RefCell<Option<Rc<Coordinator>>>,
) -> Result<Rc<Shard>, String> {
    let id = plan.id;
    let count = plan.config.shard_listen.len();
    let store = Store::new(
        StoreConfig {
            shard_id: id,
            node_id: plan.config.node_id,
            limits: plan.config.shard_limits.clone(),
        },
        0,
    )
    .map_err(|e| e.to_string())?;

    let (mesh, receivers) = if count > 1 {
        let (requests, request_rx) = plan.requests.join().await.map_err(|e| e.to_string())?;
        let (replies, reply_rx) = plan.replies.join().await.map_err(|e| e.to_string())?;
        if requests.peer_id() != id as usize || replies.peer_id() != id as usize {
            return Err(format!(
                "shard {id} joined the mesh as peer {}; shards must start in order",
                requests.peer_id()
            ));
        }
        let links = MeshLinks {
            requests,
            replies,
            outstanding: (0..count).map(|_| Default::default()).collect(),
        };
        (Some(links), Some((request_rx, reply_rx)))
    } else {
        (None, None)
    };
    let (replication, woken) = replica::Replication::new(plan.to_coordinator, plan.network.clone());
    let shard = Rc::new(Shard::new(
        id,
        &plan.config,
        plan.shard_ports,
        store,
        mesh,
        Some(replication),
        plan.network,
    ));
    glommio::spawn_local(replica::hand_over_writes(shard.clone(), woken)).detach();
    glommio::spawn_local(replica::serve_coordinator(
        shard.clone(),
        plan.from_coordinator,
    ))
    .detach();
    if let Some(coordinator) = plan.coordinator {
        *coordinator_slot.borrow_mut() = Some(Coordinator::start(coordinator)?);
    }

    if let Some((request_rx, reply_rx)) = receivers {
        spawn_mesh_tasks(&shard, request_rx, reply_rx);
    }
    glommio::spawn_local(expire_loop(shard.clone())).detach();
    if let Some(idle) = shard.idle_timeout {
        glommio::spawn_local(idle::sweep_loop(shard.idle_connections.clone(), idle)).detach();
    }
    if tracing::enabled!(tracing::Level::DEBUG) {
        glommio::spawn_local(log_store_footprint(shard.clone())).detach();
    }
    if let Some(listener) = plan.resp_listener {
        // SAFETY: as for the client listeners below.
        let listener = unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) };
        let limits = &plan.config.shard_limits;
        let bulk_bytes_max = limits.key_bytes_max.max(limits.value_bytes_max);
        let resp_limits = RespLimits {
            args_max: RESP_ARGS_MAX,
            bulk_bytes_max,
            inline_bytes_max: RESP_INLINE_BYTES_MAX,
            // A SET of the largest key and value, or many small arguments.
            command_bytes_max: 2 * bulk_bytes_max + 64 * 1024,
        };
        let default_ttl_ms = plan.config.default_ttl_ms;
        let serve =
            move |shard, stream| crate::resp::serve(shard, stream, resp_limits, default_ttl_ms);
        let tls = plan.config.tls.as_ref().filter(|t| t.resp);
        let entry = Entry {
            tls: tls.map(|t| crate::tls::acceptor(&t.config)),
            full_refusal: b"-ERR max number of clients reached\r\n",
            plain_refusal: b"-ERR this port speaks TLS: connect with TLS (redis-cli --tls)\r\n",
        };
        glommio::spawn_local(accept_loop(shard.clone(), listener, entry, serve)).detach();
    }
    if let Some(listener) = plan.http_listener {
        // SAFETY: as for the client listeners below.
        let listener = unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) };
        let limits = &plan.config.shard_limits;
        let http_limits = HttpLimits {
            head_bytes_max: HTTP_HEAD_BYTES_MAX,
            body_bytes_max: limits.value_bytes_max,
        };
        let ttls = HttpTtls {
            default_ms: plan.config.default_ttl_ms,
            min_ms: limits.ttl_ms_min,
            max_ms: limits.ttl_ms_max,
        };
        let serve = move |shard, stream| crate::http::serve(shard, stream, http_limits, ttls);
        let tls = plan.config.tls.as_ref().filter(|t| t.http);
        let entry = Entry {
            tls: tls.map(|t| crate::tls::acceptor(&t.config)),
            full_refusal:
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            plain_refusal: b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n\
Content-Length: 46\r\nConnection: close\r\n\r\nThis port speaks HTTPS: use https:// instead.\n",
        };
        glommio::spawn_local(accept_loop(shard.clone(), listener, entry, serve)).detach();
    }
    for listener in plan.listeners {
        // SAFETY: the descriptor comes from `into_raw_fd` of a socket we bound and put in
        // listening mode; ownership moves to glommio's listener, which alone closes it.
        let listener = unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) };
        let tls = plan.config.tls.as_ref().filter(|t| t.native);
        let entry = Entry {
            tls: tls.map(|t| crate::tls::acceptor(&t.config)),
            // Each told in its own protocol: an error frame.
            full_refusal: native_error(
                ErrorCode::TooManyConnections,
                "the node holds as many connections as it allows",
            ),
            plain_refusal: native_error(
                ErrorCode::Malformed,
                "this port speaks TLS: connect with TLS (the client's TLS CA option)",
            ),
        };
        glommio::spawn_local(accept_loop(
            shard.clone(),
            listener,
            entry,
            connection::serve,
        ))
        .detach();
    }
    tracing::debug!(shard = id, "shard serving");
    Ok(shard)
}

fn spawn_mesh_tasks(
    shard: &Rc<Shard>,
    mut request_rx: Receivers<ShardRequest>,
    mut reply_rx: Receivers<ShardReply>,
) {
    for (from, receiver) in request_rx.streams() {
        glommio::spawn_local(serve_shard_requests(shard.clone(), from, receiver)).detach();
    }
    for (from, receiver) in reply_rx.streams() {
        glommio::spawn_local(take_shard_replies(shard.clone(), from, receiver)).detach();
    }
}

/// Executes what shard `from` forwarded and sends the answers back on the reply mesh.
async fn serve_shard_requests(
    shard: Rc<Shard>,
    from: usize,
    receiver: ConnectedReceiver<ShardRequest>,
) {
    while let Some(request) = receiver.recv().await {
        let reply = match request {
            ShardRequest::Frames {
                conn,
                mut frames,
                read_at,
            } => {
                let mut responses = Zeroizing::new(Vec::with_capacity(frames.len() / 2 + 64));
                let count = shard.execute_forwarded(&mut frames, conn, &mut responses, read_at);
                ShardReply::Frames {
                    conn,
                    responses,
                    count,
                }
            }
            ShardRequest::Stats { conn, request_id } => ShardReply::Stats {
                conn,
                request_id,
                shard: shard.id,
                stats: shard.snapshot(),
            },
            ShardRequest::Keys {
                conn,
                request_id,
                query,
            } => {
                // A scan in slices: its own task, answered on the reply mesh when done (the
                // asker's credit bounds how many run at once).
                let shard = shard.clone();
                glommio::spawn_local(async move {
                    let page = shard::list_keys(&shard, &query).await;
                    if let Some(mesh) = shard.mesh.as_ref() {
                        let reply = ShardReply::Keys {
                            conn,
                            request_id,
                            page,
                        };
                        let _ = mesh.replies.send_to(from, reply).await;
                    }
                })
                .detach();
                continue;
            }
        };
        let Some(mesh) = shard.mesh.as_ref() else {
            return;
        };
        // The sender holds at most `queue_depth` requests here unanswered, so the reply
        // channel (as deep) has room; and its reader never waits on anything else, so even
        // a wait here cannot deadlock two shards.
        if mesh.replies.send_to(from, reply).await.is_err() {
            return;
        }
        glommio::yield_if_needed().await;
    }
}

/// Hands the answers of shard `from` to the connections that asked.
async fn take_shard_replies(
    shard: Rc<Shard>,
    from: usize,
    receiver: ConnectedReceiver<ShardReply>,
) {
    while let Some(reply) = receiver.recv().await {
        shard.reply_sent(from as u32);
        match reply {
            ShardReply::Frames {
                conn,
                responses,
                count,
            } => shard.deliver(conn, shard::Inbound::Responses { responses, count }),
            ShardReply::Stats {
                conn,
                request_id,
                shard: from_shard,
                stats,
            } => shard.deliver(
                conn,
                shard::Inbound::Stats {
                    request_id,
                    shard: from_shard,
                    stats,
                },
            ),
            ShardReply::Keys {
                conn,
                request_id,
                page,
            } => shard.deliver(conn, shard::Inbound::Keys { request_id, page }),
        }
    }
}

/// Bytes of an HTTP request line and headers at most.
const HTTP_HEAD_BYTES_MAX: usize = 16 * 1024;

/// Arguments of one RESP command at most (an `MGET` of this many keys).
const RESP_ARGS_MAX: usize = 16_384;
/// Bytes of one inline RESP command at most.
const RESP_INLINE_BYTES_MAX: usize = 64 * 1024;

/// How a listener's connections come in: through TLS or not; what a client past the
/// connection limit is told, and a plain client on a TLS port (each in the listener's
/// protocol).
struct Entry {
    tls: Option<TlsAcceptor>,
    full_refusal: &'static [u8],
    plain_refusal: &'static [u8],
}

/// A native error frame, made once per listener.
fn native_error(code: ErrorCode, message: &str) -> &'static [u8] {
    let mut frame = Vec::new();
    respond_error(&mut frame, 0, code, 0, message);
    frame.leak()
}

/// Accepts a listener's connections and serves each with `serve`; past the connection limit
/// a connection gets the entry's refusal and is closed.
async fn accept_loop<F, Fut>(shard: Rc<Shard>, listener: TcpListener, entry: Entry, serve: F)
where
    F: Fn(Rc<Shard>, ClientStream) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    loop {
        match listener.accept().await {
            Ok(mut stream) => {
                if shard.at_connection_limit() {
                    bump(&shard.counters.connections_refused, 1);
                    let refusal = entry.full_refusal;
                    glommio::spawn_local(async move {
                        use futures_lite::AsyncWriteExt;
                        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                        let _ = stream.write_all(refusal).await;
                    })
                    .detach();
                    continue;
                }
                let serve = serve.clone();
                let entering = enter(
                    shard.clone(),
                    stream,
                    entry.tls.clone(),
                    entry.plain_refusal,
                );
                glommio::spawn_local(async move {
                    if let Some((shard, stream)) = entering.await {
                        serve(shard, stream).await;
                    }
                })
                .detach();
            }
            Err(error) => {
                tracing::warn!(shard = shard.id, %error, "accept failed");
                glommio::timer::sleep(ACCEPT_RETRY_PAUSE).await;
            }
        }
    }
}

/// Takes an accepted connection through `tls::accept`, counted against the shard's connection
/// limit while it lasts.
async fn enter(
    shard: Rc<Shard>,
    stream: glommio::net::TcpStream,
    tls: Option<TlsAcceptor>,
    plain_refusal: &'static [u8],
) -> Option<(Rc<Shard>, ClientStream)> {
    let entering = &shard.counters.connections_entering;
    bump(entering, 1);
    let stream = crate::tls::accept(stream, tls.as_ref(), plain_refusal).await;
    entering.set(entering.get().saturating_sub(1));
    Some((shard, stream?))
}

/// Between two slices of a long reclaim: just long enough to pass through the reactor.
const EXPIRY_SLICE_PAUSE: Duration = Duration::from_micros(50);

/// Reclaims expired entries and destroys passed epoch keys, a bounded slice at a time.
/// Every 10 s at debug level: how many items each of the store's collections holds.
async fn log_store_footprint(shard: Rc<Shard>) {
    loop {
        glommio::timer::sleep(Duration::from_secs(10)).await;
        let store = shard.store.borrow().footprint();
        let connections = shard.conns.borrow().len();
        tracing::debug!(shard = shard.id, ?store, connections, "footprint");
    }
}

async fn expire_loop(shard: Rc<Shard>) {
    loop {
        let now = shard.now_ms();
        let report = shard.store.borrow_mut().tick_default(now);
        bump(&shard.counters.expirations, report.reclaimed as u64);
        if report.pending {
            // Not `yield_now`: a task that is always ready keeps the executor from polling
            // its ring, so clients' readiness would wait for the preemption timer (about
            // 100 ms a storm, measured). A timer's wake-up comes through the ring, so every
            // slice lets the clients that became ready in the meantime run first.
            glommio::timer::sleep(EXPIRY_SLICE_PAUSE).await;
            continue;
        }
        let due_in = Duration::from_millis(report.next_wake_ms.saturating_sub(now).max(1));
        glommio::timer::sleep(due_in.min(EXPIRY_TICK_MAX)).await;
    }
}

/// CPUs this process may run on, in order (its affinity mask), for pinning shards.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `cpu_set_t` is plain bits, valid when zeroed; `sched_getaffinity` writes at
    // most `size_of::<cpu_set_t>()` bytes into it, and `CPU_ISSET` only reads it.
    let cpus: Vec<usize> = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (0..crate::config::available_cpus()).collect();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    };
    if cpus.is_empty() {
        vec![0]
    } else {
        cpus
    }
}

/// File descriptors kept beside client connections: listeners, peer links, the io_uring rings,
/// files read at start.
const NON_CLIENT_FILES: u64 = 1_024;

/// Raises the soft open-files limit as far as `connections_max` needs (the hard limit
/// permitting); returns how many client connections the limit leaves room for, when that is
/// fewer than asked (as Redis lowers `maxclients`).
fn raise_open_files_limit(connections_max: usize) -> std::io::Result<Option<usize>> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through the pointer we pass, which points at a
    // live, properly aligned local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let wanted = (connections_max as u64).saturating_add(NON_CLIENT_FILES);
    if limit.rlim_cur < wanted {
        let raised = libc::rlimit {
            rlim_cur: wanted.min(limit.rlim_max),
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above; setrlimit only reads the struct during the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok((limit.rlim_cur < wanted)
        .then(|| limit.rlim_cur.saturating_sub(NON_CLIENT_FILES).max(1) as usize))
}
