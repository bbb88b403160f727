//! One RESP connection: commands parsed in place from the receive buffer, each turned into
//! native requests (one per key) that run on the shard owning the key, here or forwarded in
//! a batch per read, and the answers written back in command order.
//!
//! Owns the command table, the ordering of replies and the per-connection limits. It never
//! opens the store: [`Shard::execute`] does, on the owner.

use std::collections::VecDeque;
use std::io;
use std::rc::Rc;

use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver};
use glommio::net::TcpStream;
use zeroize::{Zeroize, Zeroizing};

use super::parse::{parse_command, RespLimits};
use super::reply;
use crate::buffers::{reserve_wiping, wipe_and_clear, RecvBuffer};
use crate::node::shard::{bump, Answer, ConnId, Inbound, Shard, ShardRequest};
use crate::wire::{
    self, ArchivedReply, ErrorCode, Op, Request, ShardStats, PUT_ALWAYS, PUT_IF_ABSENT,
    PUT_IF_PRESENT,
};

const RECV_BUFFER_INITIAL_BYTES: usize = 4 * 1024;
const RECV_BUFFER_STREAMING_BYTES: usize = 64 * 1024;
const SEND_BUFFER_KEEP_BYTES: usize = 64 * 1024;
/// Commands read ahead of their replies at most; past it the connection stops reading.
const PIPELINE_MAX: usize = 4_096;
/// A native request id is the command's sequence number and the key's place in it.
const PART_BITS: u32 = 16;

/// Serves one accepted RESP connection until the client leaves, quits, idles out or sends
/// something unreadable.
pub(crate) async fn serve(
    shard: Rc<Shard>,
    mut stream: TcpStream,
    limits: RespLimits,
    default_ttl_ms: u64,
) {
    let conn = shard.next_conn.get();
    shard.next_conn.set(conn + 1);
    let (sender, inbox) = local_channel::new_unbounded();
    shard.conns.borrow_mut().insert(conn, sender);
    bump(&shard.counters.connections_open, 1);
    bump(&shard.counters.connections_accepted, 1);
    let _ = stream.set_nodelay(true);
    if let Some(idle) = shard.idle_timeout {
        let _ = stream.set_read_timeout(Some(idle));
    }
    let mut connection = RespConnection {
        shard: &shard,
        conn,
        limits,
        default_ttl_ms,
        rx: RecvBuffer::new(RECV_BUFFER_INITIAL_BYTES, RECV_BUFFER_STREAMING_BYTES),
        out: Zeroizing::new(Vec::new()),
        slots: VecDeque::new(),
        first_seq: 0,
        next_seq: 0,
        frame: Zeroizing::new(Vec::new()),
        local_out: Zeroizing::new(Vec::new()),
        batches: (0..shard.count).map(|_| Batch::default()).collect(),
        in_flight: 0,
        closing: false,
        draining: false,
    };
    if let Err(error) = connection.run(&mut stream, &inbox).await {
        tracing::debug!(conn, %error, "resp connection ended");
    }
    drop(connection);
    shard.conns.borrow_mut().remove(&conn);
    let open = &shard.counters.connections_open;
    open.set(open.get().saturating_sub(1));
}

/// Native requests for one other shard gathered from one read.
#[derive(Default)]
struct Batch {
    frames: Vec<u8>,
    ids: Vec<u64>,
}

/// Redis's wording for a native error.
fn redis_error(code: ErrorCode, message: &str) -> String {
    match code {
        ErrorCode::BadTtl => "ERR invalid expire time in 'set' command".into(),
        ErrorCode::StoreFull => "OOM command not allowed when used memory > 'maxmemory'.".into(),
        ErrorCode::ValueTooLarge => "ERR string exceeds maximum allowed size".into(),
        ErrorCode::BadKey => format!("ERR invalid key: {message}"),
        ErrorCode::Busy => format!("ERR busy, retry: {message}"),
        _ => format!("ERR {message}"),
    }
}

/// One command's reply, in the order commands came.
enum Slot {
    /// Encoded, waiting for the replies before it.
    Done(Zeroizing<Vec<u8>>),
    /// Waiting for native answers.
    Waiting { pending: Pending, remaining: usize },
}

enum Pending {
    Set,
    Get,
    Mget(Vec<Option<Zeroizing<Vec<u8>>>>),
    /// `DEL` and `EXISTS`: how many keys were deleted or found.
    Count(i64),
    Ttl {
        millis: bool,
    },
    Expire,
    /// `DBSIZE` (or `INFO` when `info`): counters summed over shards.
    Stats {
        total: ShardStats,
        info: bool,
    },
}

enum Event {
    Read(io::Result<usize>),
    Inbound(Option<Inbound>),
}

struct RespConnection<'s> {
    shard: &'s Shard,
    conn: ConnId,
    limits: RespLimits,
    default_ttl_ms: u64,
    rx: RecvBuffer,
    out: Zeroizing<Vec<u8>>,
    slots: VecDeque<Slot>,
    /// Sequence number of `slots[0]`.
    first_seq: u64,
    next_seq: u64,
    /// One native request frame being built.
    frame: Zeroizing<Vec<u8>>,
    /// Native answers of requests run here.
    local_out: Zeroizing<Vec<u8>>,
    batches: Vec<Batch>,
    /// Native requests and stats questions sent elsewhere and not answered yet.
    in_flight: usize,
    /// Quit, or a protocol error: write what is due, then close.
    closing: bool,
    /// The client closed its side: answer what is in flight, then close.
    draining: bool,
}

impl RespConnection<'_> {
    async fn run(
        &mut self,
        stream: &mut TcpStream,
        inbox: &LocalReceiver<Inbound>,
    ) -> io::Result<()> {
        loop {
            self.flush_ready();
            if !self.out.is_empty() {
                stream.write_all(&self.out).await?;
                wipe_and_clear(&mut self.out, SEND_BUFFER_KEEP_BYTES);
            }
            if (self.closing || self.draining) && self.slots.is_empty() {
                return Ok(());
            }
            let readable = !self.closing
                && !self.draining
                && self.in_flight < self.shard.in_flight_max
                && self.slots.len() < PIPELINE_MAX;
            let event = if readable {
                self.rx.make_room(RECV_BUFFER_INITIAL_BYTES);
                let spare = self.rx.spare_mut();
                future::or(async { Event::Read(stream.read(spare).await) }, async {
                    Event::Inbound(inbox.recv().await)
                })
                .await
            } else {
                Event::Inbound(inbox.recv().await)
            };
            match event {
                Event::Read(Ok(0)) => self.draining = true,
                Event::Read(Ok(n)) => {
                    let filled_spare = n == self.rx.spare_mut().len();
                    self.rx.advance(n);
                    self.process_commands();
                    if filled_spare {
                        self.rx.grow_toward(RECV_BUFFER_STREAMING_BYTES);
                    }
                }
                Event::Read(Err(error)) => return Err(error),
                Event::Inbound(Some(inbound)) => {
                    self.accept_inbound(inbound);
                    while let Some(Some(inbound)) = future::poll_once(inbox.recv()).await {
                        self.accept_inbound(inbound);
                    }
                }
                Event::Inbound(None) => return Ok(()),
            }
        }
    }

    /// Handles every complete command in the receive buffer.
    fn process_commands(&mut self) {
        while !self.closing && self.slots.len() < PIPELINE_MAX {
            let parsed = parse_command(self.rx.filled(), &self.limits);
            let command = match parsed {
                Ok(Some(command)) => command,
                Ok(None) => {
                    // A bulk string longer than the buffer: make room for what is announced.
                    let wanted = self.rx.filled().len() + RECV_BUFFER_INITIAL_BYTES;
                    self.rx
                        .make_room(wanted.min(self.limits.bulk_bytes_max + 1024));
                    break;
                }
                Err(error) => {
                    bump(&self.shard.counters.bad_frames, 1);
                    let mut done = Zeroizing::new(Vec::new());
                    reply::error(&mut done, &format!("ERR Protocol error: {}", error.0));
                    self.slots.push_back(Slot::Done(done));
                    self.next_seq += 1;
                    self.closing = true;
                    break;
                }
            };
            if !command.args.is_empty() {
                self.command(&command.args);
            }
            // Values were copied into native frames: wipe them here before the bytes go.
            self.rx.filled_mut()[..command.len].zeroize();
            self.rx.consume(command.len);
        }
        self.flush_batches();
        self.rx.shrink_when_empty();
    }

    /// Runs one command (its arguments are ranges of the receive buffer).
    fn command(&mut self, args: &[std::ops::Range<usize>]) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let buf = self.rx.filled();
        let arg = |i: usize| &buf[args[i].clone()];
        let name = arg(0).to_ascii_uppercase();
        let argc = args.len();
        let mut done = Zeroizing::new(Vec::new());
        let wrong_args = |done: &mut Vec<u8>, name: &[u8]| {
            let name = String::from_utf8_lossy(name).to_lowercase();
            reply::error(
                done,
                &format!("ERR wrong number of arguments for '{name}' command"),
            );
        };
        match name.as_slice() {
            b"PING" if argc <= 2 => {
                if argc == 2 {
                    reply::bulk(&mut done, arg(1));
                } else {
                    reply::simple(&mut done, "PONG");
                }
            }
            b"ECHO" if argc == 2 => reply::bulk(&mut done, arg(1)),
            b"QUIT" => {
                reply::simple(&mut done, "OK");
                self.closing = true;
            }
            b"HELLO" => match args.get(1).map(|r| &buf[r.clone()]) {
                None | Some(b"2") => self.hello(&mut done),
                Some(_) => reply::error(
                    &mut done,
                    "NOPROTO sorry, this protocol version is not supported",
                ),
            },
            // redis-cli and redis-benchmark ask these at start; an empty answer satisfies them.
            b"COMMAND" => reply::array(&mut done, 0),
            b"CONFIG" if argc >= 2 && arg(1).eq_ignore_ascii_case(b"GET") => {
                reply::array(&mut done, 0)
            }
            b"SELECT" if argc == 2 => {
                if arg(1) == b"0" {
                    reply::simple(&mut done, "OK");
                } else {
                    reply::error(&mut done, "ERR DB index is out of range");
                }
            }
            b"SET" if argc >= 3 => return self.set(seq, args),
            b"GET" if argc == 2 => {
                self.push_waiting(Pending::Get, 1);
                return self.ask_get(seq, 0, args[1].clone());
            }
            b"MGET" | b"EXISTS" if argc >= 2 => {
                let pending = if name == b"MGET" {
                    Pending::Mget(vec![None; argc - 1])
                } else {
                    Pending::Count(0)
                };
                self.push_waiting(pending, argc - 1);
                for (part, key) in args[1..].iter().enumerate() {
                    self.ask_get(seq, part, key.clone());
                }
                return;
            }
            b"DEL" | b"UNLINK" if argc >= 2 => {
                self.push_waiting(Pending::Count(0), argc - 1);
                for (part, key) in args[1..].iter().enumerate() {
                    let key = self.rx.filled()[key.clone()].to_vec();
                    self.native(seq, part, Op::Delete { key: &key });
                }
                return;
            }
            b"TTL" | b"PTTL" if argc == 2 => {
                let millis = name == b"PTTL";
                self.push_waiting(Pending::Ttl { millis }, 1);
                return self.ask_get(seq, 0, args[1].clone());
            }
            b"DBSIZE" if argc == 1 => return self.gather_stats(seq, false),
            b"INFO" if argc <= 2 => return self.gather_stats(seq, true),
            b"EXPIRE" | b"PEXPIRE" if argc == 3 => {
                let amount = std::str::from_utf8(arg(2))
                    .ok()
                    .and_then(|t| t.parse::<i64>().ok());
                let Some(amount) = amount else {
                    reply::error(&mut done, "ERR value is not an integer or out of range");
                    self.slots.push_back(Slot::Done(done));
                    return;
                };
                let key = arg(1).to_vec();
                // An expiry in the past deletes the key, as in Redis.
                if amount <= 0 {
                    self.push_waiting(Pending::Count(0), 1);
                    return self.native(seq, 0, Op::Delete { key: &key });
                }
                let ttl_ms = if name == b"EXPIRE" {
                    (amount as u64).saturating_mul(1_000)
                } else {
                    amount as u64
                };
                self.push_waiting(Pending::Expire, 1);
                return self.native(seq, 0, Op::Expire { key: &key, ttl_ms });
            }
            b"PING" | b"ECHO" | b"SET" | b"GET" | b"MGET" | b"EXISTS" | b"DEL" | b"UNLINK"
            | b"TTL" | b"PTTL" | b"DBSIZE" | b"SELECT" | b"CONFIG" => wrong_args(&mut done, &name),
            _ => {
                // Redis's wording: the name, then the first arguments, each quoted.
                let shown = |bytes: &[u8]| -> String {
                    String::from_utf8_lossy(bytes).chars().take(64).collect()
                };
                let mut text = format!(
                    "ERR unknown command '{}', with args beginning with: ",
                    shown(arg(0))
                );
                for i in 1..argc.min(4) {
                    text.push_str(&format!("'{}' ", shown(arg(i))));
                }
                reply::error(&mut done, &text);
            }
        }
        self.slots.push_back(Slot::Done(done));
    }

    fn hello(&self, done: &mut Vec<u8>) {
        let fields: [(&str, String); 7] = [
            ("server", "redis".into()),
            ("version", "7.0.0".into()),
            ("proto", "2".into()),
            ("id", self.conn.to_string()),
            ("mode", "standalone".into()),
            ("role", "master".into()),
            ("modules", String::new()),
        ];
        reply::array(done, fields.len() * 2);
        for (name, value) in fields {
            reply::bulk(done, name.as_bytes());
            if name == "proto" || name == "id" {
                reply::integer(done, value.parse().unwrap_or(0));
            } else if name == "modules" {
                reply::array(done, 0);
            } else {
                reply::bulk(done, value.as_bytes());
            }
        }
    }

    /// `SET key value [EX s|PX ms] [NX|XX]`: no expiry given takes the default TTL (every
    /// value here expires); an expiry out of the node's range is refused, as Redis refuses
    /// an invalid one.
    fn set(&mut self, seq: u64, args: &[std::ops::Range<usize>]) {
        let buf = self.rx.filled();
        let mut ttl_ms = None;
        let mut only_if = PUT_ALWAYS;
        let mut error = None;
        let mut at = 3;
        while at < args.len() {
            let option = buf[args[at].clone()].to_ascii_uppercase();
            match option.as_slice() {
                b"EX" | b"PX" if at + 1 < args.len() && ttl_ms.is_none() => {
                    let text = &buf[args[at + 1].clone()];
                    let amount = std::str::from_utf8(text)
                        .ok()
                        .and_then(|t| t.parse::<i64>().ok());
                    match amount {
                        Some(n) if n > 0 => {
                            let n = n as u64;
                            ttl_ms = Some(if option == b"EX" {
                                n.saturating_mul(1_000)
                            } else {
                                n
                            });
                        }
                        Some(_) => error = Some("ERR invalid expire time in 'set' command"),
                        None => error = Some("ERR value is not an integer or out of range"),
                    }
                    at += 2;
                }
                b"NX" if only_if == PUT_ALWAYS => {
                    only_if = PUT_IF_ABSENT;
                    at += 1;
                }
                b"XX" if only_if == PUT_ALWAYS => {
                    only_if = PUT_IF_PRESENT;
                    at += 1;
                }
                _ => {
                    error = Some("ERR syntax error");
                    break;
                }
            }
            if error.is_some() {
                break;
            }
        }
        if let Some(message) = error {
            let mut done = Zeroizing::new(Vec::new());
            reply::error(&mut done, message);
            self.slots.push_back(Slot::Done(done));
            return;
        }
        let ttl_ms = ttl_ms.unwrap_or(self.default_ttl_ms);
        let (key, value) = (args[1].clone(), args[2].clone());
        let buf = self.rx.filled();
        let op = Op::Put {
            key: &buf[key],
            value: &buf[value],
            ttl_ms,
            copies: 0,
            only_if,
        };
        let id = seq << PART_BITS;
        self.frame.clear();
        reserve_wiping(&mut self.frame, buf.len() + 64);
        wire::encode_request(&mut self.frame, &Request { id, op });
        self.slots.push_back(Slot::Waiting {
            pending: Pending::Set,
            remaining: 1,
        });
        self.dispatch_frame(id);
    }

    /// Asks for the value of the key at `key` (a range of the receive buffer) as part `part`
    /// of command `seq`.
    fn ask_get(&mut self, seq: u64, part: usize, key: std::ops::Range<usize>) {
        let key = self.rx.filled()[key].to_vec();
        self.native(
            seq,
            part,
            Op::Get {
                key: &key,
                local_only: false,
            },
        );
    }

    /// Encodes one native request (no value) and sends it to the owner of its key.
    fn native(&mut self, seq: u64, part: usize, op: Op<'_>) {
        let id = (seq << PART_BITS) | part as u64;
        self.frame.clear();
        wire::encode_request(&mut self.frame, &Request { id, op });
        self.dispatch_frame(id);
    }

    /// Runs the native frame in `self.frame` here, or batches it for the shard that owns its
    /// key; answers of requests run here are taken at once.
    fn dispatch_frame(&mut self, id: u64) {
        let shard = self.shard;
        let payload_at = wire::FRAME_HEADER_BYTES;
        let Ok(view) = wire::decode_request(&self.frame[payload_at..]) else {
            // We encoded it: failing here is a bug; answered, never left hanging.
            self.frame.zeroize();
            let mut out = Zeroizing::new(Vec::new());
            crate::node::shard::respond_error(
                &mut out,
                id,
                ErrorCode::Internal,
                0,
                "request unreadable",
            );
            return self.take_native(&out);
        };
        if shard.count > 1 {
            let owner = shard.owner_of(&self.frame[payload_at..][view.key.clone()]);
            if owner != shard.id {
                let batch = &mut self.batches[owner as usize];
                reserve_wiping(&mut batch.frames, self.frame.len());
                batch.frames.extend_from_slice(&self.frame);
                batch.ids.push(id);
                self.frame.zeroize();
                return;
            }
        }
        let mut local_out = std::mem::take(&mut self.local_out);
        let answer = shard.execute(
            &mut self.frame[payload_at..],
            &view,
            self.conn,
            &mut local_out,
        );
        self.frame.zeroize();
        if answer == Answer::Deferred {
            self.in_flight += 1;
        }
        self.take_native(&local_out);
        wipe_and_clear(&mut local_out, SEND_BUFFER_KEEP_BYTES);
        self.local_out = local_out;
    }

    /// Sends each other shard the requests this read gathered for it; a shard without room
    /// gets none, and its requests are answered busy.
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
            };
            if self.shard.forward(owner as u32, request).is_ok() {
                self.in_flight += count;
                bump(&self.shard.counters.forwarded, count as u64);
            } else {
                bump(&self.shard.counters.busy, count as u64);
                let ids = std::mem::take(&mut self.batches[owner].ids);
                let mut out = Zeroizing::new(Vec::new());
                for id in ids {
                    crate::node::shard::respond_error(
                        &mut out,
                        id,
                        ErrorCode::Busy,
                        0,
                        "BUSY the shard owning this key is busy, retry",
                    );
                }
                self.take_native(&out);
            }
            self.batches[owner].ids.clear();
        }
    }

    /// `DBSIZE` or `INFO`: this shard's counters plus every other shard's, asked over the
    /// mesh.
    fn gather_stats(&mut self, seq: u64, info: bool) {
        let shard = self.shard;
        let mut total = shard.snapshot();
        total.live_set_xor = 0;
        let others = shard.count as usize - 1;
        self.push_waiting(Pending::Stats { total, info }, others);
        if others == 0 {
            return self.complete(seq);
        }
        for other in (0..shard.count).filter(|&s| s != shard.id) {
            let request = ShardRequest::Stats {
                conn: self.conn,
                request_id: seq,
            };
            if shard.forward(other, request).is_ok() {
                self.in_flight += 1;
            } else {
                // Answers already asked for still come, and find the slot done.
                let mut done = Zeroizing::new(Vec::new());
                reply::error(&mut done, "ERR a shard is busy, retry");
                self.finish(seq, done);
                return;
            }
        }
    }

    /// Adds the slot of the command being read, waiting for `remaining` answers.
    fn push_waiting(&mut self, pending: Pending, remaining: usize) {
        self.slots.push_back(Slot::Waiting { pending, remaining });
    }

    fn accept_inbound(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Responses { responses, count } => {
                self.in_flight = self.in_flight.saturating_sub(count as usize);
                self.take_native(&responses);
            }
            Inbound::Stats {
                request_id, stats, ..
            } => {
                self.in_flight = self.in_flight.saturating_sub(1);
                if let Some((Pending::Stats { total, .. }, remaining)) = self.waiting(request_id) {
                    total.add(&stats);
                    *remaining = remaining.saturating_sub(1);
                    self.complete(request_id);
                }
            }
        }
    }

    /// The waiting slot of command `seq`, if it is still waiting.
    fn waiting(&mut self, seq: u64) -> Option<(&mut Pending, &mut usize)> {
        let at = seq.checked_sub(self.first_seq)? as usize;
        match self.slots.get_mut(at)? {
            Slot::Waiting { pending, remaining } => Some((pending, remaining)),
            Slot::Done(_) => None,
        }
    }

    /// Takes native answers (a run of response frames) into their commands' slots.
    fn take_native(&mut self, frames: &[u8]) {
        let mut at = 0;
        while let Ok(Some(len)) = wire::frame_len(&frames[at..], usize::MAX) {
            let end = at + wire::FRAME_HEADER_BYTES + len;
            let Some(payload) = frames.get(at + wire::FRAME_HEADER_BYTES..end) else {
                break;
            };
            if let Ok(response) = wire::decode_response(payload) {
                let id = response.id.to_native();
                let part = (id & ((1 << PART_BITS) - 1)) as usize;
                self.take_one(id >> PART_BITS, part, &response.reply);
            }
            at = end;
        }
    }

    /// One native answer: part `part` of command `seq`.
    fn take_one(&mut self, seq: u64, part: usize, answer: &ArchivedReply<'_>) {
        let now_ms = self.shard.now_ms();
        let Some((pending, remaining)) = self.waiting(seq) else {
            return;
        };
        *remaining = remaining.saturating_sub(1);
        let last = *remaining == 0;
        let mut done = Zeroizing::new(Vec::new());
        match (pending, answer) {
            // A command of one key fails with its key; one of many counts the key as absent.
            (
                Pending::Set | Pending::Get | Pending::Ttl { .. },
                ArchivedReply::Error { code, message, .. },
            ) => reply::error(
                &mut done,
                &redis_error(ErrorCode::from(code), message.get()),
            ),
            (Pending::Set, ArchivedReply::Stored { .. }) => reply::simple(&mut done, "OK"),
            (Pending::Set, ArchivedReply::NotStored) => reply::nil(&mut done),
            (Pending::Get, ArchivedReply::Value { value, .. }) => {
                reply::bulk(&mut done, value.get())
            }
            (Pending::Get, _) => reply::nil(&mut done),
            (Pending::Mget(parts), reply) => {
                if let (ArchivedReply::Value { value, .. }, Some(slot)) =
                    (reply, parts.get_mut(part))
                {
                    *slot = Some(Zeroizing::new(value.get().to_vec()));
                }
                if !last {
                    return;
                }
                reply::array(&mut done, parts.len());
                for part in parts.iter() {
                    match part {
                        Some(value) => reply::bulk(&mut done, value),
                        None => reply::nil(&mut done),
                    }
                }
            }
            (Pending::Count(n), reply) => {
                if matches!(reply, ArchivedReply::Value { .. } | ArchivedReply::Deleted) {
                    *n += 1;
                }
                if !last {
                    return;
                }
                reply::integer(&mut done, *n);
            }
            (Pending::Ttl { millis }, ArchivedReply::Value { expires_ms, .. }) => {
                let left_ms = expires_ms.to_native().saturating_sub(now_ms);
                let left = if *millis {
                    left_ms
                } else {
                    left_ms.saturating_add(500) / 1_000
                };
                reply::integer(&mut done, i64::try_from(left).unwrap_or(i64::MAX));
            }
            (Pending::Ttl { .. }, _) => reply::integer(&mut done, -2),
            (Pending::Expire, ArchivedReply::Stored { .. }) => reply::integer(&mut done, 1),
            (Pending::Expire, ArchivedReply::NotFound) => reply::integer(&mut done, 0),
            (Pending::Expire, ArchivedReply::Error { code, message, .. }) => {
                let text = match ErrorCode::from(code) {
                    ErrorCode::BadTtl => "ERR invalid expire time in 'expire' command".into(),
                    code => redis_error(code, message.get()),
                };
                reply::error(&mut done, &text);
            }
            (Pending::Set | Pending::Expire | Pending::Stats { .. }, _) => {
                reply::error(&mut done, "ERR unexpected answer from the store")
            }
        }
        self.finish(seq, done);
    }

    /// Command `seq` is answered: its slot holds the reply.
    fn finish(&mut self, seq: u64, done: Zeroizing<Vec<u8>>) {
        if let Some(at) = seq.checked_sub(self.first_seq) {
            if let Some(slot) = self.slots.get_mut(at as usize) {
                *slot = Slot::Done(done);
            }
        }
    }

    /// Encodes `DBSIZE` or `INFO` once every shard answered.
    fn complete(&mut self, seq: u64) {
        let (total, info) = match self.waiting(seq) {
            Some((Pending::Stats { total, info }, 0)) => (*total, *info),
            _ => return,
        };
        let mut done = Zeroizing::new(Vec::new());
        if info {
            reply::bulk(&mut done, self.info_text(&total).as_bytes());
        } else {
            reply::integer(&mut done, total.keys as i64);
        }
        self.finish(seq, done);
    }

    /// `INFO` in Redis's layout: the server, clients, memory, stats and keyspace sections.
    fn info_text(&self, total: &ShardStats) -> String {
        let shard = self.shard;
        let uptime = shard.now_ms().saturating_sub(shard.started_ms) / 1_000;
        let commands = total.puts + total.gets + total.deletes + total.pings + total.stats;
        [
            "# Server".to_string(),
            "redis_version:7.0.0".into(),
            format!("repram_version:{}", env!("CARGO_PKG_VERSION")),
            "redis_mode:standalone".into(),
            format!("process_id:{}", std::process::id()),
            format!("run_id:{:016x}", shard.node_id),
            format!("uptime_in_seconds:{uptime}"),
            format!("shards:{}", shard.count),
            String::new(),
            "# Clients".into(),
            format!("connected_clients:{}", total.connections_open),
            String::new(),
            "# Memory".into(),
            format!("used_memory:{}", total.used_bytes),
            format!("maxmemory:{}", total.budget_bytes),
            "maxmemory_policy:noeviction".into(),
            String::new(),
            "# Stats".into(),
            format!("total_connections_received:{}", total.connections_accepted),
            format!("total_commands_processed:{commands}"),
            format!("rejected_connections:{}", total.connections_refused),
            format!("expired_keys:{}", total.expirations),
            format!("keyspace_hits:{}", total.hits),
            format!("keyspace_misses:{}", total.misses),
            String::new(),
            "# Keyspace".into(),
            format!("db0:keys={},expires={},avg_ttl=0", total.keys, total.keys),
            String::new(),
        ]
        .join("\r\n")
    }

    /// Moves finished replies at the front to the output, in order.
    fn flush_ready(&mut self) {
        while let Some(Slot::Done(_)) = self.slots.front() {
            if let Some(Slot::Done(bytes)) = self.slots.pop_front() {
                reserve_wiping(&mut self.out, bytes.len());
                self.out.extend_from_slice(&bytes);
            }
            self.first_seq += 1;
        }
    }
}
