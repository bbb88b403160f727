//! What the text front ends (the Redis protocol, HTTP) share: every request on a key becomes a
//! native request run by the key's owner shard exactly as a native client's would be (here, or
//! forwarded in one batch per owner per read), so all front ends share the store, its limits,
//! replication and lazy pull. Answers come back as native response frames, matched by id.
//!
//! Owns a connection's registration with its shard and its native requests in flight. It
//! never parses a front end's protocol and never opens the store (`Shard::execute` does).

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Instant;

use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver};
use zeroize::{Zeroize, Zeroizing};

use crate::buffers::{reserve_wiping, wipe, wipe_and_clear, wipe_appended_and_clear, RecvBuffer};
use crate::node::idle::ReadDeadline;
use crate::node::shard::{
    bump, list_keys, respond_error, Answer, ConnId, Inbound, ReplySink, ServedBatch, Shard,
    ShardRequest,
};
use crate::store::KeyQuery;
use crate::tls::ClientStream;
use crate::wire::{self, ArchivedReply, ErrorCode, Op, Reply, Request, RequestView};

/// A local answer buffer grown past this is released once taken.
const ANSWERS_KEEP_BYTES: usize = 64 * 1024;
/// A send buffer grown past this is released once written.
const SEND_BUFFER_KEEP_BYTES: usize = 64 * 1024;
/// A receive buffer grows toward this for a client that keeps it full (pipelining).
const RECV_BUFFER_STREAMING_BYTES: usize = 64 * 1024;

/// One text front end connection, as [`drive`] runs it: its protocol decides what to read and
/// what a read means; the loop around is the same for all.
pub(crate) trait FrontEnd {
    /// Moves the answers that are due (in request order) into [`FrontEnd::output`].
    fn flush_ready(&mut self);
    fn output(&mut self) -> &mut Zeroizing<Vec<u8>>;
    /// Nothing more to answer, and nothing more will be read.
    fn finished(&self) -> bool;
    /// Whether to read now (not closing, and within the limits of what waits).
    fn wants_input(&self) -> bool;
    /// The receive buffer.
    fn receive_buffer(&mut self) -> &mut RecvBuffer;
    /// The bytes the next read must have room for from the front of the receive buffer.
    fn read_room(&self) -> usize;
    /// Bytes arrived at the end of the receive buffer (the read returned at `read_at`):
    /// handle every complete request.
    fn received(&mut self, read_at: Instant);
    /// The client closed its side: answer what is pending, then close.
    fn closed_by_client(&mut self);
    fn inbound(&mut self, inbound: Inbound);
    /// The output was written: handle requests left in the receive buffer because their
    /// answers would not have fitted (see [`OUTPUT_PAUSE_BYTES`]).
    fn resume(&mut self);
}

/// Answers waiting to be written past this stop a connection from handling more of what it
/// has read until they are written: a client pipelining reads of large values without
/// reading the answers holds at most this (plus one answer and the requests in flight).
pub(crate) const OUTPUT_PAUSE_BYTES: usize = 256 * 1024;

/// Runs `connection` until its client leaves, it finishes, or the socket fails: write what is
/// due, then wait for bytes from the client or answers from elsewhere on the shard.
pub(crate) async fn drive(
    connection: &mut impl FrontEnd,
    stream: &mut ClientStream,
    inbox: &LocalReceiver<Inbound>,
    shard: &Shard,
) -> io::Result<()> {
    enum Event {
        Read(io::Result<usize>),
        Inbound(Option<Inbound>),
    }
    let idle = shard.idle_timeout;
    // A client that stops reading its answers is dropped after the idle timeout too.
    let _ = stream.tcp().set_write_timeout(idle);
    let fd = stream.tcp().as_raw_fd();
    let mut deadline = ReadDeadline::new(idle, fd, &shard.idle_connections);
    let mut read_at = Instant::now();
    // One wait for the inbox, kept across reads: waiting anew at each read would join and
    // leave the channel's queue of waiters each time (about 230 instructions a request).
    let mut next_inbound = std::pin::pin!(inbox.recv());
    loop {
        connection.flush_ready();
        let out = connection.output();
        if !out.is_empty() {
            stream.write_all(out).await?;
            wipe_appended_and_clear(out, SEND_BUFFER_KEEP_BYTES);
            // Requests left unread while the answers were too many to hold: read them now.
            connection.resume();
            continue;
        }
        if connection.finished() {
            return Ok(());
        }
        let mut was_empty = false;
        let event = if connection.wants_input() {
            let room = connection.read_room();
            let rx = connection.receive_buffer();
            rx.make_room(room);
            deadline.arm(rx, read_at)?;
            was_empty = rx.filled().is_empty();
            let spare = rx.spare_mut();
            future::or(async { Event::Read(stream.read(spare).await) }, async {
                Event::Inbound(next_inbound.as_mut().await)
            })
            .await
        } else {
            deadline.disarm();
            Event::Inbound(next_inbound.as_mut().await)
        };
        match event {
            Event::Read(Ok(0)) => connection.closed_by_client(),
            Event::Read(Ok(n)) => {
                read_at = Instant::now();
                let rx = connection.receive_buffer();
                let filled_spare = n == rx.spare_mut().len();
                rx.advance(n);
                connection.received(read_at);
                deadline.read_done(connection.receive_buffer(), was_empty, read_at);
                if filled_spare {
                    // A pipelining client: read more per call.
                    connection
                        .receive_buffer()
                        .grow_toward(RECV_BUFFER_STREAMING_BYTES);
                }
            }
            Event::Read(Err(error)) => return Err(error),
            Event::Inbound(Some(inbound)) => {
                next_inbound.set(inbox.recv());
                connection.inbound(inbound);
                // Take everything already queued before writing once.
                while let Some(Some(inbound)) = future::poll_once(inbox.recv()).await {
                    connection.inbound(inbound);
                }
            }
            Event::Inbound(None) => return Ok(()),
        }
    }
}

/// The text front ends, for counting their connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FrontEndKind {
    Resp,
    Http,
}

/// A connection of a front end, registered with its shard so that answers from other shards
/// (and from the coordinator) reach it; unregistered on drop.
pub(crate) struct Registration {
    shard: Rc<Shard>,
    kind: FrontEndKind,
    pub conn: ConnId,
    pub inbox: LocalReceiver<Inbound>,
}

impl Registration {
    fn open_counter(shard: &Shard, kind: FrontEndKind) -> &std::cell::Cell<u64> {
        match kind {
            FrontEndKind::Resp => &shard.counters.resp_connections_open,
            FrontEndKind::Http => &shard.counters.http_connections_open,
        }
    }

    pub(crate) fn new(shard: &Rc<Shard>, kind: FrontEndKind) -> Registration {
        let conn = shard.next_conn.get();
        shard.next_conn.set(conn + 1);
        let (sender, inbox) = local_channel::new_unbounded();
        shard.conns.borrow_mut().insert(conn, sender);
        bump(&shard.counters.connections_open, 1);
        bump(&shard.counters.connections_accepted, 1);
        bump(Self::open_counter(shard, kind), 1);
        Registration {
            shard: shard.clone(),
            kind,
            conn,
            inbox,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shard.conns.borrow_mut().remove(&self.conn);
        for open in [
            &self.shard.counters.connections_open,
            Self::open_counter(&self.shard, self.kind),
        ] {
            open.set(open.get().saturating_sub(1));
        }
    }
}

/// Answers in request order, as pipelining clients need them: one slot per request, in the
/// order requests came, numbered from 0; a slot is done once its answer is encoded, and done
/// slots at the front go to the output, the connection's send buffer. An answer to the front
/// request is encoded straight into the output, with no slot buffer between.
pub(crate) struct OrderedReplies<W> {
    slots: VecDeque<Slot<W>>,
    /// Sequence number of `slots[0]`.
    first_seq: u64,
    /// Bytes of the answers done and not yet in the output.
    done_bytes: usize,
    /// Buffers of answers already moved to the output, wiped, for the next answers: no
    /// allocation per answer.
    spare: Vec<Zeroizing<Vec<u8>>>,
    /// The answers due, in request order, waiting to be written: only ever appended to
    /// between writes (see [`wipe_appended_and_clear`]).
    out: Zeroizing<Vec<u8>>,
}

/// Answer buffers kept for reuse, at most, and the largest kept.
const SPARE_ANSWERS_MAX: usize = 64;
const SPARE_ANSWER_BYTES_MAX: usize = 4 * 1024;

enum Slot<W> {
    Done(Zeroizing<Vec<u8>>),
    /// What the answer still waits for.
    Waiting(W),
}

impl<W> OrderedReplies<W> {
    pub(crate) fn new() -> Self {
        OrderedReplies {
            slots: VecDeque::new(),
            first_seq: 0,
            done_bytes: 0,
            spare: Vec::new(),
            out: Zeroizing::new(Vec::new()),
        }
    }

    /// Requests not yet answered into the output.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Bytes of the answers done and not yet written: in the output or waiting for the
    /// answers before them.
    pub(crate) fn unwritten_bytes(&self) -> usize {
        self.out.len() + self.done_bytes
    }

    /// The answers due, to be written; what a write took is wiped from it with
    /// [`wipe_appended_and_clear`], as nothing else ever shortens it.
    pub(crate) fn output(&mut self) -> &mut Zeroizing<Vec<u8>> {
        &mut self.out
    }

    /// The number the next request's slot gets.
    pub(crate) fn next_seq(&self) -> u64 {
        self.first_seq + self.slots.len() as u64
    }

    /// Adds the next request's slot, already answered.
    pub(crate) fn push_done(&mut self, answer: Zeroizing<Vec<u8>>) {
        if self.slots.is_empty() {
            self.emit(&answer);
            self.first_seq += 1;
            self.recycle(answer);
            return;
        }
        self.done_bytes += answer.len();
        self.slots.push_back(Slot::Done(answer));
    }

    /// Adds the next request's slot, waiting; returns its number.
    pub(crate) fn push_waiting(&mut self, waiting: W) -> u64 {
        let seq = self.next_seq();
        self.slots.push_back(Slot::Waiting(waiting));
        seq
    }

    /// Where request `seq`'s slot is in `slots`, if it has one still.
    fn index_of(&self, seq: u64) -> Option<usize> {
        usize::try_from(seq.checked_sub(self.first_seq)?).ok()
    }

    /// The slot of request `seq`, while it still waits.
    pub(crate) fn waiting(&mut self, seq: u64) -> Option<&mut W> {
        match self.slots.get_mut(self.index_of(seq)?)? {
            Slot::Waiting(waiting) => Some(waiting),
            Slot::Done(_) => None,
        }
    }

    /// Answers request `seq` while it waits: `encode` gets what the slot waits for and a
    /// buffer to append the answer to, and says whether the answer is complete (one that is
    /// not must append nothing); a complete one makes the slot done. The buffer is the output
    /// itself when `seq` is the front request, else an earlier answer's, wiped.
    pub(crate) fn answer(&mut self, seq: u64, encode: impl FnOnce(&mut W, &mut Vec<u8>) -> bool) {
        let Some(at) = self.index_of(seq) else {
            return;
        };
        let OrderedReplies {
            slots, spare, out, ..
        } = self;
        let Some(Slot::Waiting(waiting)) = slots.get_mut(at) else {
            return;
        };
        if at == 0 {
            let mark = out.len();
            if encode(waiting, out) {
                self.slots.pop_front();
                self.first_seq += 1;
                self.flush_ready();
            } else {
                out[mark..].zeroize();
                out.truncate(mark);
            }
            return;
        }
        let mut buffer = spare.pop().unwrap_or_default();
        if encode(waiting, &mut buffer) {
            self.done_bytes += buffer.len();
            self.slots[at] = Slot::Done(buffer);
        } else {
            self.recycle(buffer);
        }
    }

    /// Appends an answer to the output, growing it without leaving a copy behind.
    fn emit(&mut self, answer: &[u8]) {
        reserve_wiping(&mut self.out, answer.len());
        self.out.extend_from_slice(answer);
    }

    /// Wipes an answer's buffer and keeps it for another, if it is small and few are kept.
    fn recycle(&mut self, mut buffer: Zeroizing<Vec<u8>>) {
        wipe(&mut buffer);
        if buffer.capacity() <= SPARE_ANSWER_BYTES_MAX && self.spare.len() < SPARE_ANSWERS_MAX {
            self.spare.push(buffer);
        }
    }

    /// Request `seq` is answered.
    pub(crate) fn finish(&mut self, seq: u64, answer: Zeroizing<Vec<u8>>) {
        let Some(at) = self.index_of(seq).filter(|&at| at < self.slots.len()) else {
            return;
        };
        if at == 0 {
            if let Some(Slot::Done(old)) = self.slots.pop_front() {
                self.done_bytes -= old.len();
                self.recycle(old);
            }
            self.emit(&answer);
            self.first_seq += 1;
            self.recycle(answer);
            self.flush_ready();
            return;
        }
        let slot = &mut self.slots[at];
        if let Slot::Done(old) = slot {
            self.done_bytes -= old.len();
        }
        self.done_bytes += answer.len();
        *slot = Slot::Done(answer);
    }

    /// Moves the answers that are due, in order, to the output.
    pub(crate) fn flush_ready(&mut self) {
        while let Some(Slot::Done(_)) = self.slots.front() {
            if let Some(Slot::Done(answer)) = self.slots.pop_front() {
                self.done_bytes -= answer.len();
                self.emit(&answer);
                self.recycle(answer);
            }
            self.first_seq += 1;
        }
    }
}

/// Native requests for one other shard gathered from one read.
#[derive(Default)]
struct Batch {
    frames: Vec<u8>,
    ids: Vec<u64>,
}

/// One connection's native requests: sent to their owners, counted until answered.
pub(crate) struct NativeRequests<'s> {
    shard: &'s Shard,
    /// The same shard, owned (for the tasks a listing spawns).
    shard_rc: Rc<Shard>,
    conn: ConnId,
    /// The frame being built.
    frame: Zeroizing<Vec<u8>>,
    batches: Vec<Batch>,
    in_flight: usize,
    /// The requests of the current read (see [`Shard::execute`]).
    batch: ServedBatch,
}

impl<'s> NativeRequests<'s> {
    pub(crate) fn new(shard: &'s Rc<Shard>, conn: ConnId) -> Self {
        NativeRequests {
            shard,
            shard_rc: shard.clone(),
            conn,
            frame: Zeroizing::new(Vec::new()),
            batches: (0..shard.count).map(|_| Batch::default()).collect(),
            in_flight: 0,
            batch: shard.serve(Instant::now()),
        }
    }

    /// Bytes just arrived (the read returned at `read_at`): the requests sent from now on
    /// came with them.
    pub(crate) fn read_arrived(&mut self, read_at: Instant) {
        self.shard.finish(&mut self.batch);
        self.batch = self.shard.serve(read_at);
    }

    /// Requests of the last read left waiting for room in the output are sent now.
    pub(crate) fn resumed(&mut self) {
        self.shard.resume(&mut self.batch);
    }

    /// Requests (and stats questions) sent elsewhere and not answered yet.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Sends one request on a key. A request its owner runs here is answered at once into
    /// `answers` (as native response frames); one for another shard waits in that shard's
    /// batch until [`NativeRequests::flush`]; one the network must answer (a pull, a write
    /// waiting for copies) comes back later as an [`Inbound`].
    pub(crate) fn send(&mut self, id: u64, op: Op<'_>, answers: &mut Vec<u8>) {
        let value_bytes = match &op {
            Op::Put { key, value, .. } => key.len() + value.len(),
            _ => 0,
        };
        self.frame.clear();
        reserve_wiping(&mut self.frame, value_bytes + 128);
        wire::encode_request(&mut self.frame, &Request { id, op });
        let shard = self.shard;
        let payload_at = wire::FRAME_HEADER_BYTES;
        let Ok(view) = wire::decode_request(&self.frame[payload_at..]) else {
            // We encoded it: failing here is a bug, answered rather than left hanging.
            wipe(&mut self.frame);
            return respond_error(answers, id, ErrorCode::Internal, 0, "request unreadable");
        };
        if shard.count > 1 && view.has_key() {
            let owner = shard.owner_of(&self.frame[payload_at..][view.key.clone()]);
            if owner != shard.id {
                let batch = &mut self.batches[owner as usize];
                reserve_wiping(&mut batch.frames, self.frame.len());
                batch.frames.extend_from_slice(&self.frame);
                batch.ids.push(id);
                wipe(&mut self.frame);
                return;
            }
        }
        let answer = shard.execute(
            &mut self.frame[payload_at..],
            &view,
            self.conn,
            answers,
            &mut self.batch,
        );
        wipe(&mut self.frame);
        if answer == Answer::Deferred {
            self.in_flight += 1;
        }
    }

    /// Sends one request on a key whose bytes lie in `buffer` (the front end's receive
    /// buffer, which `view`'s ranges point into). When this shard owns the key the request
    /// runs on the store at once, straight from `buffer`, and `take` puts its answer into its
    /// slot in `replies` as it is: no native frame is built, validated, answered and read
    /// back. A Put's value is wiped from `buffer` once stored. For another shard the request
    /// is encoded and batched as [`NativeRequests::send`] does (an early error answer goes to
    /// `answers`).
    pub(crate) fn send_in_place<W>(
        &mut self,
        buffer: &mut [u8],
        view: &RequestView,
        replies: &mut OrderedReplies<W>,
        take: TakeOutcome<W>,
        answers: &mut Vec<u8>,
    ) {
        let shard = self.shard;
        let Some(op) = view.op(buffer) else {
            // The front end made the view over this buffer: failing here is a bug, answered
            // rather than left hanging.
            let message = "request unreadable";
            return respond_error(answers, view.id, ErrorCode::Internal, 0, message);
        };
        // `op` read the key's range, so it lies in the buffer.
        if shard.count > 1
            && view.has_key()
            && shard.owner_of(&buffer[view.key.clone()]) != shard.id
        {
            return self.send(view.id, op, answers);
        }
        let mut here = SlotAnswers {
            replies,
            shard,
            take,
        };
        let answer = shard.execute(buffer, view, self.conn, &mut here, &mut self.batch);
        if answer == Answer::Deferred {
            self.in_flight += 1;
        }
    }

    /// Sends each other shard the requests gathered for it; a shard without room gets none,
    /// and its requests are answered busy into `answers`.
    pub(crate) fn flush(&mut self, answers: &mut Vec<u8>) {
        self.shard.finish(&mut self.batch);
        for owner in 0..self.batches.len() {
            if self.batches[owner].ids.is_empty() {
                continue;
            }
            let frames = Zeroizing::new(std::mem::take(&mut self.batches[owner].frames));
            let count = self.batches[owner].ids.len();
            let request = ShardRequest::Frames {
                conn: self.conn,
                frames,
                read_at: self.batch.read_at(),
            };
            if self.shard.forward(owner as u32, request).is_ok() {
                self.in_flight += count;
                bump(&self.shard.counters.forwarded, count as u64);
            } else {
                bump(&self.shard.counters.busy, count as u64);
                let message = format!("shard {owner} is busy, retry");
                for &id in &self.batches[owner].ids {
                    respond_error(answers, id, ErrorCode::Busy, 0, &message);
                }
            }
            self.batches[owner].ids.clear();
        }
    }

    /// Asks every other shard for its counters (answered as [`Inbound::Stats`] with
    /// `request_id`); returns how many were asked, or `None` when one had no room (those
    /// asked still answer).
    pub(crate) fn ask_stats(&mut self, request_id: u64) -> Option<usize> {
        let shard = self.shard;
        let mut asked = 0;
        for other in (0..shard.count).filter(|&s| s != shard.id) {
            let request = ShardRequest::Stats {
                conn: self.conn,
                request_id,
            };
            if shard.forward(other, request).is_err() {
                self.in_flight += asked;
                return None;
            }
            asked += 1;
        }
        self.in_flight += asked;
        Some(asked)
    }

    /// Asks every shard, this one included, for a page of its live keys (answered as
    /// [`Inbound::Keys`] with `request_id`); returns how many were asked, or `None` when one
    /// had no room (those asked still answer).
    pub(crate) fn ask_keys(&mut self, request_id: u64, query: &KeyQuery) -> Option<usize> {
        let shard = self.shard;
        let mut asked = 0;
        for other in (0..shard.count).filter(|&s| s != shard.id) {
            let request = ShardRequest::Keys {
                conn: self.conn,
                request_id,
                query: query.clone(),
            };
            if shard.forward(other, request).is_err() {
                self.in_flight += asked;
                return None;
            }
            asked += 1;
        }
        // This shard's own part: a task of its own, delivered like the others'.
        let (own, conn, query) = (self.shard_rc.clone(), self.conn, query.clone());
        glommio::spawn_local(async move {
            let page = list_keys(&own, &query).await;
            own.deliver(conn, Inbound::Keys { request_id, page });
        })
        .detach();
        asked += 1;
        self.in_flight += asked;
        Some(asked)
    }

    /// Records `count` answers received (from an [`Inbound`]).
    pub(crate) fn answered(&mut self, count: usize) {
        self.in_flight = self.in_flight.saturating_sub(count);
    }
}

/// How a front end puts the answer to its request `id` into the request's slot.
pub(crate) type TakeOutcome<W> = fn(&mut OrderedReplies<W>, &Shard, u64, Outcome<'_>);

/// The answers of requests a front end ran on this shard, taken as the store gives them:
/// `take` puts each into its request's slot in `replies`, as it does a native frame's.
struct SlotAnswers<'r, 's, W> {
    replies: &'r mut OrderedReplies<W>,
    shard: &'s Shard,
    take: TakeOutcome<W>,
}

impl<W> ReplySink for SlotAnswers<'_, '_, W> {
    fn reply(&mut self, id: u64, reply: Reply<'_>) {
        (self.take)(self.replies, self.shard, id, Outcome::from(&reply));
    }
}

/// A key op's answer as a text front end reads it: from a native response frame (an answer
/// another shard sent back, or one pulled from the network) or straight from this shard's
/// store through a [`ReplySink`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome<'a> {
    Stored {
        expires_ms: u64,
        version_clock: u64,
        pending: bool,
    },
    NotStored,
    Value {
        value: &'a [u8],
        expires_ms: u64,
        version_clock: u64,
    },
    NotFound,
    Deleted,
    Error {
        code: ErrorCode,
        message: &'a str,
    },
    /// A reply no key op gives.
    Other,
}

impl<'a> From<&'a ArchivedReply<'_>> for Outcome<'a> {
    fn from(reply: &'a ArchivedReply<'_>) -> Self {
        match reply {
            ArchivedReply::Stored {
                expires_ms,
                version_clock,
                pending,
                ..
            } => Outcome::Stored {
                expires_ms: expires_ms.to_native(),
                version_clock: version_clock.to_native(),
                pending: *pending,
            },
            ArchivedReply::NotStored => Outcome::NotStored,
            ArchivedReply::Value {
                value,
                expires_ms,
                version_clock,
                ..
            } => Outcome::Value {
                value: value.get(),
                expires_ms: expires_ms.to_native(),
                version_clock: version_clock.to_native(),
            },
            ArchivedReply::NotFound => Outcome::NotFound,
            ArchivedReply::Deleted => Outcome::Deleted,
            ArchivedReply::Error { code, message, .. } => Outcome::Error {
                code: ErrorCode::from(code),
                message: message.get(),
            },
            _ => Outcome::Other,
        }
    }
}

impl<'a> From<&'a Reply<'_>> for Outcome<'a> {
    fn from(reply: &'a Reply<'_>) -> Self {
        match *reply {
            Reply::Stored {
                expires_ms,
                version_clock,
                pending,
                ..
            } => Outcome::Stored {
                expires_ms,
                version_clock,
                pending,
            },
            Reply::NotStored => Outcome::NotStored,
            Reply::Value {
                value,
                expires_ms,
                version_clock,
                ..
            } => Outcome::Value {
                value,
                expires_ms,
                version_clock,
            },
            Reply::NotFound => Outcome::NotFound,
            Reply::Deleted => Outcome::Deleted,
            Reply::Error { code, message, .. } => Outcome::Error { code, message },
            _ => Outcome::Other,
        }
    }
}

/// Calls `each(id, reply)` for every native response frame in `frames`.
pub(crate) fn each_answer(frames: &[u8], mut each: impl FnMut(u64, &ArchivedReply<'_>)) {
    let mut at = 0;
    while let Ok(Some(len)) = wire::frame_len(&frames[at..], usize::MAX) {
        let end = at + wire::FRAME_HEADER_BYTES + len;
        let Some(payload) = frames.get(at + wire::FRAME_HEADER_BYTES..end) else {
            break;
        };
        if let Ok(response) = wire::decode_response(payload) {
            each(response.id.to_native(), &response.reply);
        }
        at = end;
    }
}

/// Wipes a local answer buffer once taken, keeping its allocation unless it grew large.
pub(crate) fn clear_answers(answers: &mut Vec<u8>) {
    wipe_and_clear(answers, ANSWERS_KEEP_BYTES);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_go_out_in_request_order_whatever_order_they_finish_in() {
        let mut replies = OrderedReplies::new();
        let first = replies.push_waiting(2usize);
        let second = replies.push_waiting(1usize);
        replies.push_done(Zeroizing::new(b"third;".to_vec()));
        replies.answer(second, |left, out| {
            *left -= 1;
            out.extend_from_slice(b"second;");
            *left == 0
        });
        replies.flush_ready();
        assert!(replies.output().is_empty(), "the first still waits");
        // Half an answer: the slot keeps waiting.
        replies.answer(first, |left, _| {
            *left -= 1;
            *left == 0
        });
        assert!(replies.waiting(first).is_some());
        replies.flush_ready();
        assert!(replies.output().is_empty());
        replies.answer(first, |_, out| {
            out.extend_from_slice(b"first;");
            true
        });
        assert_eq!(&replies.output()[..], b"first;second;third;");
        assert!(replies.is_empty());
        assert_eq!(replies.unwritten_bytes(), b"first;second;third;".len());
        // With nothing waiting, an answer goes straight out after those before it.
        replies.push_done(Zeroizing::new(b"fourth;".to_vec()));
        let fifth = replies.push_waiting(1);
        replies.finish(fifth, Zeroizing::new(b"fifth;".to_vec()));
        assert_eq!(&replies.output()[..], b"first;second;third;fourth;fifth;");
        assert!(replies.is_empty());
    }

    #[test]
    fn the_front_answer_is_encoded_straight_into_the_output() {
        let mut replies = OrderedReplies::new();
        replies.output().extend_from_slice(b"earlier;");
        let seq = replies.push_waiting(());
        replies.answer(seq, |_, buf| {
            assert_eq!(&buf[..], b"earlier;", "the output itself");
            buf.extend_from_slice(b"now;");
            true
        });
        assert_eq!(&replies.output()[..], b"earlier;now;");
        assert!(replies.spare.is_empty(), "no buffer between");
        // An answer that is not complete leaves the output as it was, even if it wrote.
        let seq = replies.push_waiting(());
        replies.answer(seq, |_, buf| {
            buf.extend_from_slice(b"half");
            false
        });
        assert_eq!(&replies.output()[..], b"earlier;now;");
        assert!(replies.waiting(seq).is_some());
    }

    #[test]
    fn a_reply_reads_the_same_straight_from_the_store_as_from_its_native_frame() {
        let replies = [
            Reply::Stored {
                version_clock: 41,
                version_node: 7,
                expires_ms: 1_800_000_000_000,
                copies: 2,
                pending: true,
            },
            Reply::NotStored,
            Reply::Value {
                value: b"sealed at rest, opened for this read",
                expires_ms: 1_800_000_000_001,
                version_clock: 42,
                version_node: 7,
            },
            Reply::NotFound,
            Reply::Deleted,
            Reply::Error {
                code: ErrorCode::StoreFull,
                retry_after_ms: 0,
                message: "the store is full",
            },
            Reply::Pong,
        ];
        for reply in replies {
            let direct = Outcome::from(&reply);
            let mut frames = Vec::new();
            crate::node::shard::respond(&mut frames, 9, reply.clone());
            let mut seen = 0;
            each_answer(&frames, |id, archived| {
                assert_eq!((id, Outcome::from(archived)), (9, direct));
                seen += 1;
            });
            assert_eq!(seen, 1, "{reply:?}");
        }
        assert_eq!(Outcome::from(&Reply::Pong), Outcome::Other);
    }

    #[test]
    fn flushed_answer_buffers_are_wiped_and_reused() {
        let mut replies = OrderedReplies::new();
        // An answer behind a waiting one is encoded in a buffer of its own.
        let first = replies.push_waiting(());
        let seq = replies.push_waiting(());
        replies.answer(seq, |_, buf| {
            buf.extend_from_slice(b"a secret value");
            true
        });
        replies.answer(first, |_, out| {
            out.extend_from_slice(b"first;");
            true
        });
        assert_eq!(replies.spare.len(), 1);
        assert!(replies.spare[0].is_empty() && replies.spare[0].capacity() >= 14);
        let first = replies.push_waiting(());
        let seq = replies.push_waiting(());
        replies.answer(seq, |_, buf| {
            assert!(
                buf.is_empty() && buf.capacity() >= 14,
                "the spare buffer, empty"
            );
            buf.extend_from_slice(b"next");
            true
        });
        assert!(replies.spare.is_empty());
        replies.finish(first, Zeroizing::new(b"then;".to_vec()));
        assert_eq!(&replies.output()[..], b"first;a secret valuethen;next");
        // A large answer's buffer is not kept.
        let first = replies.push_waiting(());
        let seq = replies.push_waiting(());
        replies.answer(seq, |_, buf| {
            buf.resize(SPARE_ANSWER_BYTES_MAX + 1, b'x');
            true
        });
        replies.finish(first, Zeroizing::new(Vec::new()));
        assert!(replies
            .spare
            .iter()
            .all(|b| b.capacity() <= SPARE_ANSWER_BYTES_MAX));
    }
}
