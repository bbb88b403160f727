//! One client connection: read frames, route each to the shard that owns its key, write the
//! answers back, in whatever order they complete.
//!
//! Owns framing on the socket, per-connection limits (frame size, requests in flight, idle
//! time) and the batching of forwarded requests per read. It never opens the store itself:
//! [`Shard::execute`] does, here or on the owner shard.

use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Instant;

use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver};
use zeroize::{Zeroize, Zeroizing};

use crate::wire::{self, ErrorCode, FrameError, NodeStats, OpKind, Reply, RequestView, ShardStats};

use super::idle::ReadDeadline;
use super::shard::{
    bump, respond, respond_error, Answer, ConnId, Inbound, ServedBatch, Shard, ShardRequest,
    BUSY_RETRY_AFTER_MS,
};
use crate::auth::WRONG_TOKENS_MAX;
use crate::buffers::{reserve_wiping, wipe_appended_and_clear, RecvBuffer};
use crate::frontend::OUTPUT_PAUSE_BYTES;
use crate::store::{Access, PREFETCH_KEYS_MAX};
use crate::tls::ClientStream;

/// A receive buffer starts this small: ten thousand idle connections cost 40 MiB, not more.
/// It grows for a larger frame, or (to `RECV_BUFFER_STREAMING_BYTES`) when reads keep filling it.
const RECV_BUFFER_INITIAL_BYTES: usize = 4 * 1024;
const RECV_BUFFER_STREAMING_BYTES: usize = 64 * 1024;
/// A send buffer grown past this is released once written.
const SEND_BUFFER_KEEP_BYTES: usize = 64 * 1024;

/// Serves one accepted connection until the client leaves, errs, idles out or sends garbage.
pub(crate) async fn serve(shard: Rc<Shard>, mut stream: ClientStream) {
    let conn = shard.next_conn.get();
    shard.next_conn.set(conn + 1);
    let (sender, inbox) = local_channel::new_unbounded();
    shard.conns.borrow_mut().insert(conn, sender);
    bump(&shard.counters.connections_open, 1);
    bump(&shard.counters.connections_accepted, 1);
    // Small responses must leave at once, not wait for Nagle.
    let _ = stream.tcp().set_nodelay(true);
    // A client that stops reading its answers is dropped after the idle timeout too.
    let _ = stream.tcp().set_write_timeout(shard.idle_timeout);

    let mut connection = Connection::new(&shard, conn);
    if let Err(error) = connection.run(&mut stream, &inbox).await {
        tracing::debug!(conn, %error, "connection ended");
    }
    drop(connection);
    shard.conns.borrow_mut().remove(&conn);
    let open = &shard.counters.connections_open;
    open.set(open.get().saturating_sub(1));
}

/// Requests for one other shard gathered from one read.
#[derive(Default)]
struct Batch {
    frames: Vec<u8>,
    ids: Vec<u64>,
}

/// A Stats request waiting for the other shards' counters.
struct StatsGather {
    token: u64,
    request_id: u64,
    stats: NodeStats,
    remaining: usize,
}

/// What stopped a look-ahead over the receive buffer ([`Connection::look_ahead`]).
enum AheadStop {
    /// It read as many frames as it looks ahead for: more may follow.
    Full,
    /// The head frame is not all here: the bytes the buffer needs to hold it (or its header).
    Incomplete { frame_bytes: usize },
    /// A well-formed frame of an op this node does not know, `total` bytes long: answered,
    /// and the connection goes on.
    UnknownOp { id: u64, tag: u8, total: usize },
    /// A length prefix over the frame limit.
    TooLarge(FrameError),
    /// A frame of `total` bytes that is not a request.
    Malformed { error: FrameError, total: usize },
}

enum Event {
    Read(io::Result<usize>),
    Inbound(Option<Inbound>),
}

struct Connection<'s> {
    shard: &'s Shard,
    conn: ConnId,
    rx: RecvBuffer,
    out: Zeroizing<Vec<u8>>,
    batches: Vec<Batch>,
    /// Requests sent to other shards and not yet answered.
    in_flight: usize,
    gathers: Vec<StatsGather>,
    next_gather: u64,
    /// Bytes the next frame needs in the buffer (its header, or the whole frame once known).
    next_frame_bytes: usize,
    /// The client closed its side: answer what is in flight, then close.
    draining: bool,
    /// The client sent something unreadable: send the error, then close.
    fatal: bool,
    /// Frames wait in the receive buffer until the answers before them are written.
    paused: bool,
    /// When the last read returned (the start of its requests' latency).
    read_at: Instant,
    /// A Hello carried the node's token (or the node has none).
    authenticated: bool,
    wrong_tokens: u32,
    /// The complete, readable frames at the head of the receive buffer, decoded ahead of
    /// serving them (with each frame's length) so their keys' entries load together.
    ahead: Vec<(RequestView, usize)>,
}

impl<'s> Connection<'s> {
    fn new(shard: &'s Shard, conn: ConnId) -> Self {
        Connection {
            shard,
            conn,
            rx: RecvBuffer::new(RECV_BUFFER_INITIAL_BYTES, RECV_BUFFER_STREAMING_BYTES),
            out: Zeroizing::new(Vec::new()),
            batches: (0..shard.count).map(|_| Batch::default()).collect(),
            in_flight: 0,
            gathers: Vec::new(),
            next_gather: 0,
            next_frame_bytes: wire::FRAME_HEADER_BYTES,
            draining: false,
            fatal: false,
            paused: false,
            read_at: Instant::now(),
            authenticated: shard.auth.is_none(),
            wrong_tokens: 0,
            ahead: Vec::new(),
        }
    }

    async fn run(
        &mut self,
        stream: &mut ClientStream,
        inbox: &LocalReceiver<Inbound>,
    ) -> io::Result<()> {
        let fd = stream.tcp().as_raw_fd();
        let idle = self.shard.idle_timeout;
        let mut deadline = ReadDeadline::new(idle, fd, &self.shard.idle_connections);
        // One wait for the inbox, kept across reads: waiting anew at each read would join and
        // leave the channel's queue of waiters each time (about 230 instructions a request).
        let mut next_inbound = std::pin::pin!(inbox.recv());
        loop {
            if !self.out.is_empty() {
                stream.write_all(&self.out).await?;
                wipe_appended_and_clear(&mut self.out, SEND_BUFFER_KEEP_BYTES);
                if self.paused && !self.fatal {
                    // Frames left unread while their answers would not have fitted.
                    self.process_frames();
                    continue;
                }
            }
            if self.fatal || (self.draining && self.in_flight == 0) {
                return Ok(());
            }
            let readable = !self.draining && self.in_flight < self.shard.in_flight_max;
            let mut was_empty = false;
            let event = if readable {
                // Room for the next frame grows with the bytes that arrive, not with what its
                // header announces: a header alone never costs the node the whole frame.
                let arrived = self.rx.filled().len().max(RECV_BUFFER_INITIAL_BYTES);
                self.rx
                    .make_room(self.next_frame_bytes.min(arrived.saturating_mul(2)));
                deadline.arm(&self.rx, self.read_at)?;
                was_empty = self.rx.filled().is_empty();
                let spare = self.rx.spare_mut();
                future::or(async { Event::Read(stream.read(spare).await) }, async {
                    Event::Inbound(next_inbound.as_mut().await)
                })
                .await
            } else {
                deadline.disarm();
                Event::Inbound(next_inbound.as_mut().await)
            };
            match event {
                Event::Read(Ok(0)) => self.draining = true,
                Event::Read(Ok(n)) => {
                    self.read_at = Instant::now();
                    let filled_spare = n == self.rx.spare_mut().len();
                    self.rx.advance(n);
                    self.process_frames();
                    deadline.read_done(&self.rx, was_empty, self.read_at);
                    if filled_spare {
                        // A pipelining client: read more per call.
                        self.rx.grow_toward(RECV_BUFFER_STREAMING_BYTES);
                    }
                }
                Event::Read(Err(error)) => return Err(error),
                Event::Inbound(Some(inbound)) => {
                    next_inbound.set(inbox.recv());
                    self.accept_inbound(inbound);
                    // Take everything already queued before writing once.
                    while let Some(Some(inbound)) = future::poll_once(inbox.recv()).await {
                        self.accept_inbound(inbound);
                    }
                }
                Event::Inbound(None) => return Ok(()),
            }
        }
    }

    /// Handles every complete frame in the receive buffer, or as many as leave the answers
    /// under [`OUTPUT_PAUSE_BYTES`] (the rest wait, `paused`, until the answers are written).
    fn process_frames(&mut self) {
        self.paused = false;
        let mut batch = self.shard.serve(self.read_at);
        let mut ahead = std::mem::take(&mut self.ahead);
        ahead.clear();
        let mut next = 0;
        let mut stop = AheadStop::Full;
        loop {
            if self.out.len() >= OUTPUT_PAUSE_BYTES {
                self.paused = true;
                break;
            }
            if let Some((view, total)) = ahead.get(next) {
                next += 1;
                self.dispatch(view, *total, &mut batch);
                self.rx.consume(*total);
                self.next_frame_bytes = wire::FRAME_HEADER_BYTES;
                if self.fatal {
                    // Too many wrong tokens: nothing after them is read (pipelined guesses too).
                    break;
                }
                continue;
            }
            // Every frame read ahead is served: what stopped the look-ahead is at the head.
            match std::mem::replace(&mut stop, AheadStop::Full) {
                AheadStop::Full => {
                    stop = self.look_ahead(&mut ahead);
                    next = 0;
                }
                AheadStop::Incomplete { frame_bytes } => {
                    self.next_frame_bytes = frame_bytes;
                    break;
                }
                AheadStop::UnknownOp { id, tag, total } => {
                    bump(&self.shard.counters.bad_frames, 1);
                    let message = format!("op {tag} is unknown to this node");
                    respond_error(&mut self.out, id, ErrorCode::UnknownOp, 0, &message);
                    self.rx.consume(total);
                    self.next_frame_bytes = wire::FRAME_HEADER_BYTES;
                }
                AheadStop::TooLarge(error) => {
                    self.refuse(ErrorCode::FrameTooLarge, &error);
                    break;
                }
                AheadStop::Malformed { error, total } => {
                    self.rx.filled_mut()[..total].zeroize();
                    self.refuse(ErrorCode::Malformed, &error);
                    break;
                }
            }
        }
        self.ahead = ahead;
        self.shard.finish(&mut batch);
        self.flush_batches();
        self.rx.shrink_when_empty();
    }

    /// Decodes the complete frames at the head of the receive buffer into `ahead`, up to
    /// [`PREFETCH_KEYS_MAX`] of them, and has the shard start loading the entries their keys
    /// will read (a lone frame is served at once, with nothing to overlap its wait with).
    /// Returns what stopped it, which `process_frames` handles once the frames before it are
    /// served. The only place frames are decoded.
    fn look_ahead(&self, ahead: &mut Vec<(RequestView, usize)>) -> AheadStop {
        ahead.clear();
        let filled = self.rx.filled();
        let mut at = 0;
        let stop = loop {
            if ahead.len() == PREFETCH_KEYS_MAX {
                break AheadStop::Full;
            }
            let rest = &filled[at..];
            let len = match wire::frame_len(rest, self.shard.frame_bytes_max) {
                Ok(Some(len)) => len,
                Ok(None) => {
                    break AheadStop::Incomplete {
                        frame_bytes: wire::FRAME_HEADER_BYTES,
                    }
                }
                Err(error) => break AheadStop::TooLarge(error),
            };
            let total = wire::FRAME_HEADER_BYTES + len;
            let Some(payload) = rest.get(wire::FRAME_HEADER_BYTES..total) else {
                break AheadStop::Incomplete { frame_bytes: total };
            };
            match wire::decode_request(payload) {
                Ok(view) => {
                    ahead.push((view, total));
                    at += total;
                }
                Err(FrameError::UnknownOp { id, tag }) => {
                    break AheadStop::UnknownOp { id, tag, total }
                }
                Err(error) => break AheadStop::Malformed { error, total },
            }
        };
        if ahead.len() >= 2 {
            let mut at = 0;
            self.shard
                .prefetch(ahead.iter().filter_map(|(view, total)| {
                    let payload = &filled[at + wire::FRAME_HEADER_BYTES..at + total];
                    at += total;
                    let access = match view.kind {
                        OpKind::Get => Access::Read,
                        _ => Access::Write,
                    };
                    view.has_key().then(|| (&payload[view.key.clone()], access))
                }));
        }
        stop
    }

    /// Answers a frame that cannot be read and marks the connection for closing.
    fn refuse(&mut self, code: ErrorCode, error: &FrameError) {
        bump(&self.shard.counters.bad_frames, 1);
        respond_error(&mut self.out, 0, code, 0, &error.to_string());
        self.fatal = true;
    }

    /// Runs one request here, or batches it for the shard that owns its key. The frame is the
    /// first `frame_len` bytes of the receive buffer.
    fn dispatch(&mut self, view: &RequestView, frame_len: usize, batch: &mut ServedBatch) {
        let shard = self.shard;
        let frame = &mut self.rx.filled_mut()[..frame_len];
        let payload_at = wire::FRAME_HEADER_BYTES;
        if view.kind == OpKind::Hello && shard.auth.is_none() {
            // A token to a node that wants none: nothing to check, nothing to keep.
            frame[payload_at..][view.value.clone()].zeroize();
        }
        if let Some(auth) = &shard.auth {
            if view.kind == OpKind::Hello && !view.value.is_empty() {
                let token = &mut frame[payload_at..][view.value.clone()];
                let right = auth.check(token);
                token.zeroize();
                if right {
                    self.authenticated = true;
                } else {
                    self.wrong_tokens += 1;
                    // A few tries, then the connection goes: guessing costs a connection each.
                    self.fatal = self.wrong_tokens >= WRONG_TOKENS_MAX;
                    let message = "wrong token";
                    return respond_error(
                        &mut self.out,
                        view.id,
                        ErrorCode::AuthFailed,
                        0,
                        message,
                    );
                }
            } else if !self.authenticated && !matches!(view.kind, OpKind::Hello | OpKind::Ping) {
                frame[payload_at..][view.value.clone()].zeroize();
                let message = "authentication required: say Hello with the node's token";
                return respond_error(&mut self.out, view.id, ErrorCode::AuthRequired, 0, message);
            }
        }
        if view.has_key() && shard.count > 1 {
            let key = &frame[payload_at..][view.key.clone()];
            let owner = shard.owner_of(key);
            if owner != shard.id {
                let batch = &mut self.batches[owner as usize];
                reserve_wiping(&mut batch.frames, frame.len());
                batch.frames.extend_from_slice(frame);
                batch.ids.push(view.id);
                frame[payload_at..][view.value.clone()].zeroize();
                return;
            }
        }
        if view.kind == OpKind::Stats {
            return self.start_stats(view.id);
        }
        let answer = shard.execute(
            &mut frame[payload_at..],
            view,
            self.conn,
            &mut *self.out,
            batch,
        );
        if answer == Answer::Deferred {
            self.in_flight += 1;
        }
    }

    /// Sends each other shard the requests this read gathered for it; a shard without room
    /// gets none, and its requests are answered `busy` at once.
    fn flush_batches(&mut self) {
        for owner in 0..self.batches.len() {
            if self.batches[owner].ids.is_empty() {
                continue;
            }
            let frames = Zeroizing::new(std::mem::take(&mut self.batches[owner].frames));
            let count = self.batches[owner].ids.len();
            let request = ShardRequest::Frames {
                conn: self.conn,
                frames,
                read_at: self.read_at,
            };
            if self.shard.forward(owner as u32, request).is_ok() {
                self.in_flight += count;
                bump(&self.shard.counters.forwarded, count as u64);
            } else {
                bump(&self.shard.counters.busy, count as u64);
                let message = format!("shard {owner} is busy");
                for &id in &self.batches[owner].ids {
                    respond_error(
                        &mut self.out,
                        id,
                        ErrorCode::Busy,
                        BUSY_RETRY_AFTER_MS,
                        &message,
                    );
                }
            }
            self.batches[owner].ids.clear();
        }
    }

    /// Collects every shard's counters for one Stats request.
    fn start_stats(&mut self, request_id: u64) {
        let shard = self.shard;
        bump(&shard.counters.stats, 1);
        let token = self.next_gather;
        self.next_gather += 1;
        let mut stats = NodeStats {
            total: ShardStats::default(),
            shards: vec![ShardStats::default(); shard.count as usize],
            network: Box::new(shard.network.snapshot()),
        };
        stats.shards[shard.id as usize] = shard.snapshot();
        let mut remaining = 0;
        for other in (0..shard.count).filter(|&s| s != shard.id) {
            let request = ShardRequest::Stats {
                conn: self.conn,
                request_id: token,
            };
            if shard.forward(other, request).is_err() {
                // Answers already asked for still arrive and are dropped with the gather.
                bump(&shard.counters.busy, 1);
                let message = format!("shard {other} is busy");
                return respond_error(
                    &mut self.out,
                    request_id,
                    ErrorCode::Busy,
                    BUSY_RETRY_AFTER_MS,
                    &message,
                );
            }
            remaining += 1;
            self.in_flight += 1;
        }
        let gather = StatsGather {
            token,
            request_id,
            stats,
            remaining,
        };
        if remaining == 0 {
            self.finish_stats(gather);
        } else {
            self.gathers.push(gather);
        }
    }

    fn finish_stats(&mut self, mut gather: StatsGather) {
        for shard_stats in &gather.stats.shards {
            gather.stats.total.add(shard_stats);
        }
        respond(&mut self.out, gather.request_id, Reply::Stats(gather.stats));
    }

    fn accept_inbound(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Responses { responses, count } => {
                reserve_wiping(&mut self.out, responses.len());
                self.out.extend_from_slice(&responses);
                self.in_flight = self.in_flight.saturating_sub(count as usize);
            }
            // The native protocol lists no keys (yet): nothing asks, nothing to take.
            Inbound::Keys { .. } => {}
            Inbound::Stats {
                request_id,
                shard,
                stats,
            } => {
                self.in_flight = self.in_flight.saturating_sub(1);
                let Some(at) = self.gathers.iter().position(|g| g.token == request_id) else {
                    return;
                };
                let gather = &mut self.gathers[at];
                if let Some(slot) = gather.stats.shards.get_mut(shard as usize) {
                    *slot = stats;
                }
                gather.remaining -= 1;
                if gather.remaining == 0 {
                    let gather = self.gathers.swap_remove(at);
                    self.finish_stats(gather);
                }
            }
        }
    }
}
