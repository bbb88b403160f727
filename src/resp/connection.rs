//! One RESP connection: commands parsed in place from the receive buffer, each turned into
//! requests (one per key) that run on the shard owning the key: on this one straight from the
//! receive buffer, its answers encoded as RESP as the store gives them; on another as native
//! frames forwarded in a batch per read. The replies are written back in command order.
//!
//! Owns the command table, the ordering of replies and the per-connection limits. It never
//! opens the store: [`Shard::execute`] does, on the owner.

use std::rc::Rc;
use std::time::Instant;

use crate::tls::ClientStream;
use zeroize::{Zeroize, Zeroizing};

use super::parse::{parse_command_into, ProtocolError, RespLimits};
use super::reply;
use crate::auth::WRONG_TOKENS_MAX;
use crate::buffers::RecvBuffer;
use crate::frontend::{
    clear_answers, drive, each_answer, FrontEnd, FrontEndKind, NativeRequests, OrderedReplies,
    Outcome, Registration, OUTPUT_PAUSE_BYTES,
};
use crate::node::shard::{bump, ConnId, Inbound, Shard};
use crate::store::{Access, PREFETCH_KEYS_MAX};
use crate::wire::{ErrorCode, RequestView, ShardStats, PUT_ALWAYS, PUT_IF_ABSENT, PUT_IF_PRESENT};

const RECV_BUFFER_INITIAL_BYTES: usize = 4 * 1024;
const RECV_BUFFER_STREAMING_BYTES: usize = 64 * 1024;
/// Commands read ahead of their replies at most; past it the connection stops reading.
const PIPELINE_MAX: usize = 4_096;
/// A native request id is the command's sequence number and the key's place in it.
const PART_BITS: u32 = 16;

/// Serves one accepted RESP connection until the client leaves, quits, idles out or sends
/// something unreadable.
pub(crate) async fn serve(
    shard: Rc<Shard>,
    mut stream: ClientStream,
    limits: RespLimits,
    default_ttl_ms: u64,
) {
    let registration = Registration::new(&shard, FrontEndKind::Resp);
    let conn = registration.conn;
    let _ = stream.tcp().set_nodelay(true);
    let mut connection = RespConnection {
        shard: &shard,
        conn,
        limits,
        default_ttl_ms,
        rx: RecvBuffer::new(RECV_BUFFER_INITIAL_BYTES, RECV_BUFFER_STREAMING_BYTES),
        args: Vec::new(),
        ahead: Vec::new(),
        ahead_args: Vec::new(),
        replies: OrderedReplies::new(),
        native: NativeRequests::new(&shard, conn),
        answers: Zeroizing::new(Vec::new()),
        closing: false,
        draining: false,
        authenticated: shard.auth.is_none(),
        wrong_tokens: 0,
    };
    if let Err(error) = drive(&mut connection, &mut stream, &registration.inbox, &shard).await {
        tracing::debug!(conn, %error, "resp connection ended");
    }
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

/// A command waiting for native answers.
struct Waiting {
    pending: Pending,
    /// Answers still to come.
    remaining: usize,
}

/// What stopped a look-ahead over the receive buffer ([`RespConnection::look_ahead`]).
enum AheadStop {
    /// It parsed as many commands as it looks ahead for: more may follow.
    Full,
    /// The head command is not all here.
    Incomplete,
    /// The head command cannot be read: answered, then the connection closes.
    Unreadable(ProtocolError),
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
    /// `DBSIZE` (or `INFO` when `info`): counters summed over shards (boxed: every
    /// command's slot is as large as this enum, and these are rare).
    Stats {
        total: Box<ShardStats>,
        info: bool,
    },
}

struct RespConnection<'s> {
    shard: &'s Shard,
    conn: ConnId,
    limits: RespLimits,
    default_ttl_ms: u64,
    rx: RecvBuffer,
    /// The arguments of the command being parsed (ranges of `rx`), kept between commands.
    args: Vec<std::ops::Range<usize>>,
    /// The complete commands at the head of `rx`, parsed ahead of running them so their keys'
    /// entries load together: each one's argument count and length in bytes (kept between
    /// reads for their room).
    ahead: Vec<(usize, usize)>,
    /// Their arguments, one list for all, as ranges of `rx`.
    ahead_args: Vec<std::ops::Range<usize>>,
    replies: OrderedReplies<Waiting>,
    native: NativeRequests<'s>,
    /// Native answers given at once to requests for other shards (a shard without room:
    /// busy), taken after each send.
    answers: Zeroizing<Vec<u8>>,
    /// Quit, or a protocol error: write what is due, then close.
    closing: bool,
    /// The client closed its side: answer what is in flight, then close.
    draining: bool,
    /// `AUTH` gave the node's token (or the node has none).
    authenticated: bool,
    wrong_tokens: u32,
}

impl FrontEnd for RespConnection<'_> {
    fn flush_ready(&mut self) {
        self.replies.flush_ready();
    }

    fn output(&mut self) -> &mut Zeroizing<Vec<u8>> {
        self.replies.output()
    }

    fn finished(&self) -> bool {
        (self.closing || self.draining) && self.replies.is_empty()
    }

    fn wants_input(&self) -> bool {
        !self.closing
            && !self.draining
            && self.native.in_flight() < self.shard.in_flight_max
            && self.replies.len() < PIPELINE_MAX
            && !self.output_full()
    }

    fn resume(&mut self) {
        if !self.rx.filled().is_empty() {
            self.native.resumed();
            self.process_commands();
        }
    }

    fn receive_buffer(&mut self) -> &mut RecvBuffer {
        &mut self.rx
    }

    fn read_room(&self) -> usize {
        RECV_BUFFER_INITIAL_BYTES
    }

    fn received(&mut self, read_at: Instant) {
        self.native.read_arrived(read_at);
        self.process_commands();
    }

    fn closed_by_client(&mut self) {
        self.draining = true;
    }

    fn inbound(&mut self, inbound: Inbound) {
        self.accept_inbound(inbound);
    }
}

impl RespConnection<'_> {
    /// Answers waiting to be written have reached [`OUTPUT_PAUSE_BYTES`]: handle no more
    /// requests until they are out.
    fn output_full(&self) -> bool {
        self.replies.unwritten_bytes() + self.answers.len() >= OUTPUT_PAUSE_BYTES
    }

    /// Handles every complete command in the receive buffer.
    fn process_commands(&mut self) {
        let mut ahead = std::mem::take(&mut self.ahead);
        let mut ahead_args = std::mem::take(&mut self.ahead_args);
        ahead.clear();
        // The next command parsed ahead, where its arguments start, and the bytes of those
        // run so far: they leave the buffer together, so the ranges parsed stay right.
        let (mut next, mut arg_at, mut ran) = (0, 0, 0);
        let mut stop = AheadStop::Full;
        while !self.closing && self.replies.len() < PIPELINE_MAX && !self.output_full() {
            if let Some(&(argc, len)) = ahead.get(next) {
                next += 1;
                let args = &ahead_args[arg_at..arg_at + argc];
                arg_at += argc;
                if !args.is_empty() {
                    self.command(args);
                }
                // Values were copied into native frames: wipe them here before the bytes go.
                self.rx.filled_mut()[ran..ran + len].zeroize();
                ran += len;
                continue;
            }
            // Every command parsed ahead has run: what stopped the look-ahead is at the head.
            self.rx.consume(std::mem::take(&mut ran));
            match std::mem::replace(&mut stop, AheadStop::Full) {
                AheadStop::Full => {
                    stop = self.look_ahead(&mut ahead, &mut ahead_args);
                    (next, arg_at) = (0, 0);
                }
                AheadStop::Incomplete => {
                    // A command longer than the buffer: room for more, up to the command
                    // limit (past it the parser refuses the command).
                    let wanted = self.rx.filled().len() + RECV_BUFFER_INITIAL_BYTES;
                    self.rx
                        .make_room(wanted.min(self.limits.command_bytes_max + 1));
                    break;
                }
                AheadStop::Unreadable(error) => {
                    bump(&self.shard.counters.bad_frames, 1);
                    let mut done = Zeroizing::new(Vec::new());
                    reply::error(&mut done, &format!("ERR Protocol error: {}", error.0));
                    self.replies.push_done(done);
                    self.closing = true;
                    break;
                }
            }
        }
        self.rx.consume(ran);
        self.ahead = ahead;
        self.ahead_args = ahead_args;
        self.native.flush(&mut self.answers);
        self.take_answers();
        self.rx.shrink_when_empty();
    }

    /// Parses the complete commands at the head of the receive buffer into `ahead`, up to
    /// [`PREFETCH_KEYS_MAX`] of them, and has the shard start loading the entries of their
    /// keys (each command's first argument: a wrong guess costs a wasted load; a lone command
    /// runs at once, with nothing to overlap its wait with). Returns what stopped it, which
    /// `process_commands` handles once the commands before it have run. The only place
    /// commands are parsed.
    fn look_ahead(
        &mut self,
        ahead: &mut Vec<(usize, usize)>,
        ahead_args: &mut Vec<std::ops::Range<usize>>,
    ) -> AheadStop {
        ahead.clear();
        ahead_args.clear();
        let filled = self.rx.filled();
        let mut at = 0;
        let stop = loop {
            if ahead.len() == PREFETCH_KEYS_MAX {
                break AheadStop::Full;
            }
            match parse_command_into(&filled[at..], &self.limits, &mut self.args) {
                Ok(Some(len)) => {
                    ahead_args.extend(self.args.iter().map(|r| r.start + at..r.end + at));
                    ahead.push((self.args.len(), len));
                    at += len;
                }
                Ok(None) => break AheadStop::Incomplete,
                Err(error) => break AheadStop::Unreadable(error),
            }
        };
        if ahead.len() >= 2 {
            let mut arg_at = 0;
            self.shard.prefetch(ahead.iter().filter_map(|&(argc, _)| {
                let name = &filled[ahead_args[arg_at].clone()];
                let access = if name.eq_ignore_ascii_case(b"GET") {
                    Access::Read
                } else {
                    Access::Write
                };
                let key = (argc >= 2).then(|| (&filled[ahead_args[arg_at + 1].clone()], access));
                arg_at += argc;
                key
            }));
        }
        stop
    }

    /// Runs one command (its arguments are ranges of the receive buffer).
    fn command(&mut self, args: &[std::ops::Range<usize>]) {
        // Every command adds exactly one slot: this number.
        let seq = self.replies.next_seq();
        let mut name_bytes = [0u8; COMMAND_NAME_BYTES_MAX];
        let name = command_name(&self.rx.filled()[args[0].clone()], &mut name_bytes);
        if let Some(reply) = self.access(name, args) {
            self.replies.push_done(reply);
            return;
        }
        let buf = self.rx.filled();
        let arg = |i: usize| &buf[args[i].clone()];
        let argc = args.len();
        let mut done = Zeroizing::new(Vec::new());
        let wrong_args = |done: &mut Vec<u8>, name: &[u8]| {
            let name = String::from_utf8_lossy(name).to_lowercase();
            reply::error(
                done,
                &format!("ERR wrong number of arguments for '{name}' command"),
            );
        };
        match name {
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
                return self.ask(RequestView::get(seq << PART_BITS, args[1].clone(), false));
            }
            b"MGET" | b"EXISTS" if argc >= 2 => {
                let pending = if name == b"MGET" {
                    Pending::Mget(vec![None; argc - 1])
                } else {
                    Pending::Count(0)
                };
                self.push_waiting(pending, argc - 1);
                for (part, key) in args[1..].iter().enumerate() {
                    self.ask(RequestView::get(part_id(seq, part), key.clone(), false));
                }
                return;
            }
            b"DEL" | b"UNLINK" if argc >= 2 => {
                self.push_waiting(Pending::Count(0), argc - 1);
                for (part, key) in args[1..].iter().enumerate() {
                    self.ask(RequestView::delete(part_id(seq, part), key.clone()));
                }
                return;
            }
            b"TTL" | b"PTTL" if argc == 2 => {
                let millis = name == b"PTTL";
                self.push_waiting(Pending::Ttl { millis }, 1);
                return self.ask(RequestView::get(seq << PART_BITS, args[1].clone(), false));
            }
            b"DBSIZE" if argc == 1 => return self.gather_stats(seq, false),
            b"INFO" if argc <= 2 => return self.gather_stats(seq, true),
            b"EXPIRE" | b"PEXPIRE" if argc == 3 => {
                let amount = std::str::from_utf8(arg(2))
                    .ok()
                    .and_then(|t| t.parse::<i64>().ok());
                let Some(amount) = amount else {
                    reply::error(&mut done, "ERR value is not an integer or out of range");
                    self.replies.push_done(done);
                    return;
                };
                let key = args[1].clone();
                // An expiry in the past deletes the key, as in Redis.
                if amount <= 0 {
                    self.push_waiting(Pending::Count(0), 1);
                    return self.ask(RequestView::delete(seq << PART_BITS, key));
                }
                let ttl_ms = if name == b"EXPIRE" {
                    (amount as u64).saturating_mul(1_000)
                } else {
                    amount as u64
                };
                self.push_waiting(Pending::Expire, 1);
                return self.ask(RequestView::expire(seq << PART_BITS, key, ttl_ms));
            }
            b"PING" | b"ECHO" | b"SET" | b"GET" | b"MGET" | b"EXISTS" | b"DEL" | b"UNLINK"
            | b"TTL" | b"PTTL" | b"DBSIZE" | b"SELECT" | b"CONFIG" => wrong_args(&mut done, name),
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
        self.replies.push_done(done);
    }

    /// The node's token rules: `AUTH [default] token` and `HELLO 2 AUTH default token` let a
    /// connection in; until then only `AUTH`, `HELLO`, `PING` and `QUIT` are served. Answers
    /// the command itself when the rules decide it, in Redis's words.
    fn access(
        &mut self,
        name: &[u8],
        args: &[std::ops::Range<usize>],
    ) -> Option<Zeroizing<Vec<u8>>> {
        let buf = self.rx.filled();
        let arg = |i: usize| &buf[args[i].clone()];
        let mut done = Zeroizing::new(Vec::new());
        let given = match name {
            b"AUTH" => match args.len() {
                2 => Some((&b"default"[..], arg(1))),
                3 => Some((arg(1), arg(2))),
                _ => {
                    reply::error(
                        &mut done,
                        "ERR wrong number of arguments for 'auth' command",
                    );
                    return Some(done);
                }
            },
            b"HELLO" => {
                (args.len() >= 5 && arg(2).eq_ignore_ascii_case(b"AUTH")).then(|| (arg(3), arg(4)))
            }
            _ => None,
        };
        let Some(auth) = &self.shard.auth else {
            if name == b"AUTH" {
                reply::error(
                    &mut done,
                    "ERR AUTH <password> called without any password configured for the default \
                     user. Are you sure your configuration is correct?",
                );
                return Some(done);
            }
            return None;
        };
        if let Some((user, token)) = given {
            if user == b"default" && auth.check(token) {
                self.authenticated = true;
                if name == b"AUTH" {
                    reply::simple(&mut done, "OK");
                    return Some(done);
                }
                return None;
            }
            self.wrong_tokens += 1;
            // A few tries, then the connection goes: guessing costs a connection each.
            self.closing |= self.wrong_tokens >= WRONG_TOKENS_MAX;
            reply::error(
                &mut done,
                "WRONGPASS invalid username-password pair or user is disabled.",
            );
            return Some(done);
        }
        if self.authenticated || matches!(name, b"PING" | b"QUIT") {
            return None;
        }
        if name == b"HELLO" {
            reply::error(
                &mut done,
                "NOAUTH HELLO must be called with the client already authenticated, otherwise \
                 the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the \
                 client and select the RESP protocol version at the same time",
            );
        } else {
            reply::error(&mut done, "NOAUTH Authentication required.");
        }
        Some(done)
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
            let mut option_bytes = [0u8; COMMAND_NAME_BYTES_MAX];
            let option = command_name(&buf[args[at].clone()], &mut option_bytes);
            match option {
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
            self.replies.push_done(done);
            return;
        }
        let ttl_ms = ttl_ms.unwrap_or(self.default_ttl_ms);
        self.push_waiting(Pending::Set, 1);
        // Stored straight from the receive buffer, whose copy is wiped once consumed.
        let view = RequestView::put(
            seq << PART_BITS,
            args[1].clone(),
            args[2].clone(),
            ttl_ms,
            only_if,
        );
        self.ask(view);
    }

    /// Sends one request on a key of the command being read (`view`'s ranges are of the
    /// receive buffer). One this shard owns is answered straight into its command's slot;
    /// an answer given at once to one for another shard (busy) waits in `answers` until the
    /// read's commands have run.
    fn ask(&mut self, view: RequestView) {
        let RespConnection {
            native,
            rx,
            replies,
            answers,
            ..
        } = self;
        native.send_in_place(rx.filled_mut(), &view, replies, take_part, answers);
    }

    /// Takes the native answers of requests sent elsewhere that were answered at once (a
    /// shard without room: busy).
    #[inline]
    fn take_answers(&mut self) {
        if !self.answers.is_empty() {
            self.take_given_answers();
        }
    }

    fn take_given_answers(&mut self) {
        let mut answers = std::mem::take(&mut self.answers);
        self.take_native(&answers);
        clear_answers(&mut answers);
        self.answers = answers;
    }

    /// `DBSIZE` or `INFO`: this shard's counters plus every other shard's, asked over the
    /// mesh.
    fn gather_stats(&mut self, seq: u64, info: bool) {
        let shard = self.shard;
        let mut total = shard.snapshot();
        total.live_set_xor = 0;
        let others = shard.count as usize - 1;
        self.push_waiting(
            Pending::Stats {
                total: Box::new(total),
                info,
            },
            others,
        );
        if others == 0 {
            return self.complete(seq);
        }
        if self.native.ask_stats(seq).is_none() {
            // Answers already asked for still come, and find the slot done.
            let mut done = Zeroizing::new(Vec::new());
            reply::error(&mut done, "ERR a shard is busy, retry");
            self.finish(seq, done);
        }
    }

    /// Adds the slot of the command being read, waiting for `remaining` answers.
    fn push_waiting(&mut self, pending: Pending, remaining: usize) {
        self.replies.push_waiting(Waiting { pending, remaining });
    }

    fn accept_inbound(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Responses { responses, count } => {
                self.native.answered(count as usize);
                self.take_native(&responses);
            }
            // This front end lists no keys: nothing asks.
            Inbound::Keys { .. } => self.native.answered(1),
            Inbound::Stats {
                request_id, stats, ..
            } => {
                self.native.answered(1);
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
        let waiting = self.replies.waiting(seq)?;
        Some((&mut waiting.pending, &mut waiting.remaining))
    }

    /// Takes native answers (a run of response frames) into their commands' slots.
    fn take_native(&mut self, frames: &[u8]) {
        let shard = self.shard;
        each_answer(frames, |id, answer| {
            take_part(&mut self.replies, shard, id, Outcome::from(answer));
        });
    }

    /// Command `seq` is answered: its slot holds the reply.
    fn finish(&mut self, seq: u64, done: Zeroizing<Vec<u8>>) {
        self.replies.finish(seq, done);
    }

    /// Encodes `DBSIZE` or `INFO` once every shard answered.
    fn complete(&mut self, seq: u64) {
        let (total, info) = match self.waiting(seq) {
            Some((Pending::Stats { total, info }, 0)) => (std::mem::take(total), *info),
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
}
/// A command's native request id: its sequence number and the key's place in it.
fn part_id(seq: u64, part: usize) -> u64 {
    (seq << PART_BITS) | part as u64
}

/// One answer to the native request `id`: a part of its command's reply.
fn take_part(replies: &mut OrderedReplies<Waiting>, shard: &Shard, id: u64, answer: Outcome<'_>) {
    let part = (id & ((1 << PART_BITS) - 1)) as usize;
    replies.answer(id >> PART_BITS, |waiting, done| {
        take_answer(waiting, part, answer, done, shard)
    });
}

/// Encodes part `part` of a waiting command's answer into `done`; true once the reply is
/// complete (a command of many keys waits for all of them).
fn take_answer(
    waiting: &mut Waiting,
    part: usize,
    answer: Outcome<'_>,
    done: &mut Vec<u8>,
    shard: &Shard,
) -> bool {
    let Waiting { pending, remaining } = waiting;
    *remaining = remaining.saturating_sub(1);
    let last = *remaining == 0;
    match (pending, answer) {
        // A command of one key fails with its key; one of many counts the key as absent.
        (Pending::Set | Pending::Get | Pending::Ttl { .. }, Outcome::Error { code, message }) => {
            reply::error(done, &redis_error(code, message))
        }
        (Pending::Set, Outcome::Stored { .. }) => reply::simple(done, "OK"),
        (Pending::Set, Outcome::NotStored) => reply::nil(done),
        (Pending::Get, Outcome::Value { value, .. }) => reply::bulk(done, value),
        (Pending::Get, _) => reply::nil(done),
        (Pending::Mget(parts), reply) => {
            if let (Outcome::Value { value, .. }, Some(slot)) = (reply, parts.get_mut(part)) {
                *slot = Some(Zeroizing::new(value.to_vec()));
            }
            if !last {
                return false;
            }
            reply::array(done, parts.len());
            for part in parts.iter() {
                match part {
                    Some(value) => reply::bulk(done, value),
                    None => reply::nil(done),
                }
            }
        }
        (Pending::Count(n), reply) => {
            if matches!(reply, Outcome::Value { .. } | Outcome::Deleted) {
                *n += 1;
            }
            if !last {
                return false;
            }
            reply::integer(done, *n);
        }
        (Pending::Ttl { millis }, Outcome::Value { expires_ms, .. }) => {
            let left_ms = expires_ms.saturating_sub(shard.now_ms());
            let left = if *millis {
                left_ms
            } else {
                left_ms.saturating_add(500) / 1_000
            };
            reply::integer(done, i64::try_from(left).unwrap_or(i64::MAX));
        }
        (Pending::Ttl { .. }, _) => reply::integer(done, -2),
        (Pending::Expire, Outcome::Stored { .. }) => reply::integer(done, 1),
        (Pending::Expire, Outcome::NotFound) => reply::integer(done, 0),
        (Pending::Expire, Outcome::Error { code, message }) => {
            let text = match code {
                ErrorCode::BadTtl => "ERR invalid expire time in 'expire' command".into(),
                code => redis_error(code, message),
            };
            reply::error(done, &text);
        }
        (Pending::Set | Pending::Expire | Pending::Stats { .. }, _) => {
            reply::error(done, "ERR unexpected answer from the store")
        }
    }
    true
}

/// Longest command name or option this front end knows (`CONFIG`, `UNLINK`, `EX` ...), with
/// room to spare.
const COMMAND_NAME_BYTES_MAX: usize = 16;

/// A command's name (or an option) in capitals, in `scratch`: no allocation per command. A
/// longer name than any known one is given as empty, which matches none of them.
fn command_name<'a>(raw: &[u8], scratch: &'a mut [u8; COMMAND_NAME_BYTES_MAX]) -> &'a [u8] {
    let Some(name) = scratch.get_mut(..raw.len()) else {
        return &[];
    };
    name.copy_from_slice(raw);
    name.make_ascii_uppercase();
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_names_are_matched_in_capitals_and_overlong_ones_match_nothing() {
        let mut scratch = [0u8; COMMAND_NAME_BYTES_MAX];
        assert_eq!(command_name(b"gEt", &mut scratch), b"GET");
        let longest = [b'a'; COMMAND_NAME_BYTES_MAX];
        assert_eq!(
            command_name(&longest, &mut scratch),
            &[b'A'; COMMAND_NAME_BYTES_MAX][..]
        );
        let overlong = [b'a'; COMMAND_NAME_BYTES_MAX + 1];
        assert_eq!(command_name(&overlong, &mut scratch), b"");
    }
}
