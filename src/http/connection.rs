//! One HTTP/1.1 connection (keep-alive, pipelined): each request is routed; requests on a key
//! run on the key's owner shard (see `frontend`): on this one straight from the receive
//! buffer, on another as native frames. The answers are written back in request order.
//!
//! Owns the routes, the status codes and headers of the REPRAM API, and the per-connection
//! limits. It never opens the store.

use std::rc::Rc;
use std::time::Instant;

use crate::tls::ClientStream;
use zeroize::{Zeroize, Zeroizing};

use super::request::{decode, parse_head, query_value, Head, HttpLimits, Method};
use crate::auth::WRONG_TOKENS_MAX;
use crate::buffers::{reserve_wiping, RecvBuffer};
use crate::frontend::{
    clear_answers, drive, each_answer, FrontEnd, FrontEndKind, NativeRequests, OrderedReplies,
    Outcome, Registration, OUTPUT_PAUSE_BYTES,
};
use crate::node::shard::{bump, Inbound, KeyPage, Shard};
use crate::store::KeyQuery;
use crate::wire::{ArchivedReply, ErrorCode, Op, RequestView, ShardStats, PUT_ALWAYS};
use repram_cluster::Message;

const RECV_BUFFER_INITIAL_BYTES: usize = 4 * 1024;
const RECV_BUFFER_STREAMING_BYTES: usize = 64 * 1024;
/// Requests read ahead of their answers at most; past it the connection stops reading.
const PIPELINE_MAX: usize = 1_024;

/// TTLs of the HTTP API: a write without a usable one takes `default_ms`; others are clamped
/// into `min_ms..=max_ms`, as REPRAM's API does.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HttpTtls {
    pub default_ms: u64,
    pub min_ms: u64,
    pub max_ms: u64,
}

/// Serves one accepted HTTP connection until the client leaves or closes, idles out or sends
/// something unreadable.
pub(crate) async fn serve(
    shard: Rc<Shard>,
    mut stream: ClientStream,
    limits: HttpLimits,
    ttls: HttpTtls,
) {
    let registration = Registration::new(&shard, FrontEndKind::Http);
    let _ = stream.tcp().set_nodelay(true);
    let mut connection = HttpConnection {
        shard: &shard,
        limits,
        ttls,
        rx: RecvBuffer::new(RECV_BUFFER_INITIAL_BYTES, RECV_BUFFER_STREAMING_BYTES),
        replies: OrderedReplies::new(),
        native: NativeRequests::new(&shard, registration.conn),
        answers: Zeroizing::new(Vec::new()),
        next_bytes: 0,
        closing: false,
        draining: false,
        wrong_tokens: 0,
    };
    if let Err(error) = drive(&mut connection, &mut stream, &registration.inbox, &shard).await {
        tracing::debug!(conn = registration.conn, %error, "http connection ended");
    }
}

/// A request waiting for its answer, and whether its connection stays open after it.
struct Waiting {
    pending: Pending,
    keep_alive: bool,
}

enum Pending {
    Put,
    Get {
        head_only: bool,
    },
    Delete,
    /// Boxed: every request's slot is as large as this enum, and these are rare.
    Status(Box<ShardStats>, usize),
    /// `/metrics` or `/v1/stats`: every shard's counters, by shard, how many are still to
    /// come, and the page they make.
    Metrics(Vec<ShardStats>, usize, FiguresPage),
    Topology,
    /// A key listing: pages still to come, and the smallest `limit` keys so far.
    Keys {
        remaining: usize,
        limit: usize,
        keys: Vec<Vec<u8>>,
        more: bool,
    },
}

/// The pages made of every shard's counters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FiguresPage {
    /// `/metrics`: Prometheus.
    Prometheus,
    /// `/v1/stats`: JSON, for the dashboard.
    Json,
}

/// Keys in one `/v1/keys` page by default and at most.
const KEYS_PAGE_DEFAULT: usize = 100;
const KEYS_PAGE_MAX: usize = 1_000;

struct HttpConnection<'s> {
    shard: &'s Shard,
    limits: HttpLimits,
    ttls: HttpTtls,
    rx: RecvBuffer,
    replies: OrderedReplies<Waiting>,
    native: NativeRequests<'s>,
    answers: Zeroizing<Vec<u8>>,
    /// Bytes the next request needs in the buffer (its head and body, once the head is read).
    next_bytes: usize,
    /// `Connection: close`, or an unreadable request: answer what is due, then close.
    closing: bool,
    draining: bool,
    /// Requests that carried a wrong token.
    wrong_tokens: u32,
}

/// Headers on every answer: CORS as a browser client needs it, and the usual hardening.
const COMMON_HEADERS: &str = "Access-Control-Allow-Origin: *\r\n\
Access-Control-Expose-Headers: X-Created-At, X-Original-TTL, X-Remaining-TTL\r\n\
X-Content-Type-Options: nosniff\r\n\
X-Frame-Options: DENY\r\n\
Referrer-Policy: no-referrer\r\n\
Cache-Control: no-store\r\n";

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "Unknown",
    }
}

/// One whole answer: status line, common and extra headers, the body (left out for `HEAD`,
/// its length still told).
/// A response header's value, written straight into the response (no string built for it).
enum Field<'a> {
    Text(&'a str),
    Decimal(u64),
    /// Milliseconds since the epoch, as RFC 3339 to the second.
    Time(u64),
}

/// A whole response: status line, the common headers, `extra`, content headers, the body
/// (left out for HEAD). Written into one buffer with no formatting machinery: at 100 B values
/// `format!` here was a fifth of a GET's server instructions.
fn answer(
    status: u16,
    extra: &[(&str, Field<'_>)],
    content_type: &str,
    body: &[u8],
    head_only: bool,
    keep_alive: bool,
) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::new());
    let mut digits = itoa::Buffer::new();
    reserve_wiping(&mut out, 512 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(digits.format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(COMMON_HEADERS.as_bytes());
    for (name, value) in extra {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        match value {
            Field::Text(text) => out.extend_from_slice(text.as_bytes()),
            Field::Decimal(n) => out.extend_from_slice(digits.format(*n).as_bytes()),
            Field::Time(ms) => out.extend_from_slice(&rfc3339_bytes(*ms)),
        }
        out.extend_from_slice(b"\r\n");
    }
    if status != 204 {
        out.extend_from_slice(b"Content-Type: ");
        out.extend_from_slice(content_type.as_bytes());
        out.extend_from_slice(b"\r\nContent-Length: ");
        out.extend_from_slice(digits.format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        reserve_wiping(&mut out, body.len());
        out.extend_from_slice(body);
    }
    out
}

fn json(status: u16, body: &serde_json::Value, keep_alive: bool) -> Zeroizing<Vec<u8>> {
    let text = body.to_string();
    answer(
        status,
        &[],
        "application/json",
        text.as_bytes(),
        false,
        keep_alive,
    )
}

fn error_json(status: u16, message: &str, keep_alive: bool) -> Zeroizing<Vec<u8>> {
    json(status, &serde_json::json!({ "error": message }), keep_alive)
}

/// The status a native error maps to, as REPRAM's API answers.
fn status_of(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::ValueTooLarge => 413,
        ErrorCode::StoreFull => 507,
        ErrorCode::BadKey | ErrorCode::BadTtl | ErrorCode::BadCopies => 400,
        ErrorCode::Busy | ErrorCode::Unavailable => 503,
        _ => 500,
    }
}

/// Latest instant RFC 3339 can write (9999-12-31T23:59:59Z); a time from a lying peer is cut
/// to it rather than failing to format.
const RFC3339_MS_MAX: u64 = 253_402_300_799_000;

/// `ms` since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC, to the second; past year 9999, the
/// last second of it). The civil date comes from the day count by Howard Hinnant's
/// `civil_from_days`.
fn rfc3339_bytes(ms: u64) -> [u8; 20] {
    let secs = ms.min(RFC3339_MS_MAX) / 1_000;
    let (days, of_day) = (secs / 86_400, secs % 86_400);
    // Days since 0000-03-01 in eras of 400 years (146,097 days); no date here is before 1970.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let mut out = *b"0000-00-00T00:00:00Z";
    let mut put = |at: usize, width: usize, mut n: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, of_day / 3_600);
    put(14, 2, of_day / 60 % 60);
    put(17, 2, of_day % 60);
    out
}

/// The body answering a stored PUT, as `serde_json` would write it (keys in order), without
/// building a JSON value for it.
fn stored_json(ttl_seconds: u64, expires_ms: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(80);
    out.extend_from_slice(b"{\"expires_at\":\"");
    out.extend_from_slice(&rfc3339_bytes(expires_ms));
    out.extend_from_slice(b"\",\"status\":\"stored\",\"ttl_seconds\":");
    out.extend_from_slice(itoa::Buffer::new().format(ttl_seconds).as_bytes());
    out.push(b'}');
    out
}

impl FrontEnd for HttpConnection<'_> {
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
            self.process_requests();
        }
    }

    fn receive_buffer(&mut self) -> &mut RecvBuffer {
        &mut self.rx
    }

    fn read_room(&self) -> usize {
        self.next_bytes.max(RECV_BUFFER_INITIAL_BYTES)
    }

    fn received(&mut self, read_at: Instant) {
        self.native.read_arrived(read_at);
        self.process_requests();
    }

    fn closed_by_client(&mut self) {
        self.draining = true;
    }

    fn inbound(&mut self, inbound: Inbound) {
        self.accept_inbound(inbound);
    }
}

impl HttpConnection<'_> {
    /// Answers waiting to be written have reached [`OUTPUT_PAUSE_BYTES`]: handle no more
    /// requests until they are out.
    fn output_full(&self) -> bool {
        self.replies.unwritten_bytes() + self.answers.len() >= OUTPUT_PAUSE_BYTES
    }

    /// Handles every complete request in the receive buffer.
    fn process_requests(&mut self) {
        while !self.closing && self.replies.len() < PIPELINE_MAX && !self.output_full() {
            let head = match parse_head(self.rx.filled(), &self.limits) {
                Ok(Some(head)) => head,
                Ok(None) => {
                    self.next_bytes = self.rx.filled().len() + 1;
                    break;
                }
                Err(error) => {
                    bump(&self.shard.counters.bad_frames, 1);
                    self.done(error_json(error.status(), error.message(), false));
                    self.closing = true;
                    break;
                }
            };
            let total = head.len + head.content_length;
            if self.rx.filled().len() < total {
                // The body is still coming: room for all of it (the head checked its size).
                self.next_bytes = total;
                break;
            }
            self.next_bytes = 0;
            if !head.keep_alive {
                self.closing = true;
            }
            self.route(&head);
            // A value was copied into its native frame: wipe it here before the bytes go.
            self.rx.filled_mut()[..total].zeroize();
            self.rx.consume(total);
        }
        self.native.flush(&mut self.answers);
        self.take_answers();
        self.rx.shrink_when_empty();
    }

    fn done(&mut self, bytes: Zeroizing<Vec<u8>>) {
        self.replies.push_done(bytes);
    }

    fn wait(&mut self, pending: Pending, keep_alive: bool) -> u64 {
        self.replies.push_waiting(Waiting {
            pending,
            keep_alive,
        })
    }

    fn route(&mut self, head: &Head) {
        let keep = head.keep_alive;
        let path = decode(&head.path);
        if head.method == Method::Options {
            let extra = [
                (
                    "Access-Control-Allow-Methods",
                    Field::Text("GET, HEAD, PUT, POST, DELETE, OPTIONS"),
                ),
                (
                    "Access-Control-Allow-Headers",
                    Field::Text("Content-Type, X-TTL, Authorization"),
                ),
                ("Access-Control-Max-Age", Field::Text("600")),
            ];
            return self.done(answer(204, &extra, "", b"", false, keep));
        }
        // With a token, everything but the health check and the dashboard's page itself (its
        // figures need the token) wants `Authorization: Bearer`.
        let open = matches!(path.as_str(), "/v1/health" | "/" | "/dashboard");
        if let (Some(auth), false) = (&self.shard.auth, open) {
            let given = head.bearer.clone().map(|at| &self.rx.filled()[at]);
            let refusal = match given {
                None => Some("authentication required: send Authorization: Bearer <token>"),
                Some(token) if !auth.check(token) => Some("invalid token"),
                Some(_) => None,
            };
            if let Some(message) = refusal {
                if given.is_some() {
                    self.wrong_tokens += 1;
                    // A few tries, then the connection goes: guessing costs a connection each.
                    self.closing |= self.wrong_tokens >= WRONG_TOKENS_MAX;
                }
                let challenge = [("WWW-Authenticate", Field::Text("Bearer realm=\"repram\""))];
                let body = serde_json::json!({ "error": message }).to_string();
                let refused = answer(
                    401,
                    &challenge,
                    "application/json",
                    body.as_bytes(),
                    false,
                    keep,
                );
                return self.done(refused);
            }
        }
        if let Some(key) = path.strip_prefix(DATA_PATH) {
            if key.is_empty() {
                return self.done(error_json(400, "empty key", keep));
            }
            let Some(key) = self.key_in_buffer(head, key.as_bytes()) else {
                return self.done(error_json(400, "unreadable key", keep));
            };
            return self.data(head, key);
        }
        match (head.method, path.as_str()) {
            (Method::Get, "/v1/health") => {
                let body = serde_json::json!({
                    "status": "healthy",
                    "node_id": format!("{:016x}", self.shard.node_id),
                    "version": env!("CARGO_PKG_VERSION"),
                });
                self.done(json(200, &body, keep));
            }
            (Method::Get, "/v1/status") => self.status(keep),
            (Method::Get, "/v1/keys") if !self.shard.key_listing => self.done(error_json(
                403,
                "key listing is turned off on this node (--no-key-listing)",
                keep,
            )),
            (Method::Get, "/v1/keys") => self.keys(head, keep),
            (Method::Get, "/metrics" | "/v1/metrics") => {
                self.metrics(FiguresPage::Prometheus, keep)
            }
            (Method::Get, "/v1/stats") => self.metrics(FiguresPage::Json, keep),
            (Method::Get, "/" | "/dashboard") => {
                let extra = [(
                    "Content-Security-Policy",
                    Field::Text(super::dashboard::POLICY),
                )];
                let page = super::dashboard::PAGE.as_bytes();
                self.done(answer(
                    200,
                    &extra,
                    "text/html; charset=utf-8",
                    page,
                    false,
                    keep,
                ));
            }
            (Method::Get, "/v1/topology") => {
                let seq = self.wait(Pending::Topology, keep);
                self.native.send(seq, Op::Topology, &mut self.answers);
                self.take_answers();
            }
            (
                _,
                "/v1/health" | "/v1/status" | "/v1/topology" | "/v1/keys" | "/metrics"
                | "/v1/metrics" | "/v1/stats" | "/" | "/dashboard",
            ) => self.done(error_json(405, "method not allowed", keep)),
            _ => self.done(error_json(404, "not found", keep)),
        }
    }

    /// The key of a `/v1/data/` path (`key`, decoded) as a range of the receive buffer, where
    /// requests on it run from. The decoded key is written over its encoded form: decoding
    /// never lengthens it (`%XX` is one byte, or the three of U+FFFD), so every key is in the
    /// buffer, encoded or not. `None` if it does not fit (never, but never trusted either).
    fn key_in_buffer(&mut self, head: &Head, key: &[u8]) -> Option<std::ops::Range<usize>> {
        let start = head.path_at.start + DATA_PATH.len();
        let at = start..start.checked_add(key.len())?;
        if at.end > head.path_at.end {
            return None;
        }
        let bytes = self.rx.filled_mut().get_mut(at.clone())?;
        if bytes != key {
            bytes.copy_from_slice(key);
        }
        Some(at)
    }

    /// `PUT`/`POST`, `GET`/`HEAD` and `DELETE` of `/v1/data/{key}` (`key`: where it is in the
    /// receive buffer).
    fn data(&mut self, head: &Head, key: std::ops::Range<usize>) {
        let keep = head.keep_alive;
        let view = match head.method {
            Method::Put | Method::Post => {
                let ttl_ms = self.ttl_ms(head);
                let seq = self.wait(Pending::Put, keep);
                let body = head.len..head.len + head.content_length;
                RequestView::put(seq, key, body, ttl_ms, PUT_ALWAYS)
            }
            Method::Get | Method::Head => {
                let head_only = head.method == Method::Head;
                let seq = self.wait(Pending::Get { head_only }, keep);
                RequestView::get(seq, key, false)
            }
            Method::Delete => {
                let seq = self.wait(Pending::Delete, keep);
                RequestView::delete(seq, key)
            }
            Method::Options | Method::Other => {
                return self.done(error_json(405, "method not allowed", keep))
            }
        };
        let HttpConnection {
            native,
            rx,
            replies,
            answers,
            ..
        } = self;
        native.send_in_place(rx.filled_mut(), &view, replies, take_answer, answers);
        self.take_answers();
    }

    /// `?ttl=` first, then `X-TTL`, in seconds; missing, unreadable or not positive takes the
    /// default; otherwise clamped to the node's range (the HTTP API's documented behaviour).
    fn ttl_ms(&self, head: &Head) -> u64 {
        let given = query_value(&head.query, "ttl")
            .or_else(|| head.x_ttl.clone())
            .and_then(|t| t.trim().parse::<i64>().ok())
            .filter(|&s| s > 0);
        match given {
            Some(seconds) => (seconds as u64)
                .saturating_mul(1_000)
                .clamp(self.ttls.min_ms, self.ttls.max_ms),
            None => self.ttls.default_ms,
        }
    }

    /// `GET /v1/keys?prefix=&limit=&cursor=`: every shard scans its keys once, in slices,
    /// keeping its smallest `limit` after the cursor; the pages are merged here.
    fn keys(&mut self, head: &Head, keep: bool) {
        let limit = query_value(&head.query, "limit")
            .and_then(|l| l.parse::<usize>().ok())
            .unwrap_or(KEYS_PAGE_DEFAULT)
            .clamp(1, KEYS_PAGE_MAX);
        let query = KeyQuery {
            prefix: query_value(&head.query, "prefix")
                .unwrap_or_default()
                .into_bytes(),
            after: query_value(&head.query, "cursor")
                .filter(|c| !c.is_empty())
                .map(String::into_bytes),
            limit,
        };
        let pending = Pending::Keys {
            remaining: self.shard.count as usize,
            limit,
            keys: Vec::new(),
            more: false,
        };
        let seq = self.wait(pending, keep);
        if self.native.ask_keys(seq, &query).is_none() {
            self.finish(seq, error_json(503, "a shard is busy, retry", keep));
        }
    }

    fn take_keys(&mut self, seq: u64, page: KeyPage) {
        let Some((
            Pending::Keys {
                remaining,
                limit,
                keys,
                more,
            },
            keep,
        )) = self.waiting(seq)
        else {
            return;
        };
        keys.extend(page.keys);
        keys.sort_unstable();
        if keys.len() > *limit {
            keys.truncate(*limit);
            *more = true;
        }
        *more |= page.more;
        *remaining = remaining.saturating_sub(1);
        if *remaining > 0 {
            return;
        }
        let names: Vec<String> = keys
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        let mut body = serde_json::json!({ "keys": names });
        if *more {
            body["next_cursor"] = serde_json::Value::from(names.last().cloned());
        }
        self.finish(seq, json(200, &body, keep));
    }

    fn metrics(&mut self, page: FiguresPage, keep: bool) {
        let count = self.shard.count as usize;
        let mut shards = vec![ShardStats::default(); count];
        shards[self.shard.id as usize] = self.shard.snapshot();
        let seq = self.wait(Pending::Metrics(shards, count - 1, page), keep);
        if count == 1 {
            return self.complete_metrics(seq);
        }
        if self.native.ask_stats(seq).is_none() {
            self.finish(seq, error_json(503, "a shard is busy, retry", keep));
        }
    }

    fn complete_metrics(&mut self, seq: u64) {
        let Some((Pending::Metrics(shards, 0, page), keep)) = self.waiting(seq) else {
            return;
        };
        let (shards, page) = (std::mem::take(shards), *page);
        let network = self.shard.network.snapshot();
        let done = match page {
            FiguresPage::Prometheus => {
                let text = super::metrics::render(&shards, &network, &Message::KINDS);
                answer(
                    200,
                    &[],
                    super::metrics::CONTENT_TYPE,
                    text.as_bytes(),
                    false,
                    keep,
                )
            }
            FiguresPage::Json => {
                let uptime_ms = self.shard.now_ms().saturating_sub(self.shard.started_ms);
                let node = super::metrics::NodeFacts {
                    node_id: self.shard.node_id,
                    uptime_ms,
                };
                let body = super::metrics::render_json(&node, &shards, &network);
                json(200, &body, keep)
            }
        };
        self.finish(seq, done);
    }

    fn status(&mut self, keep: bool) {
        let mut total = self.shard.snapshot();
        total.live_set_xor = 0;
        let others = self.shard.count as usize - 1;
        let seq = self.wait(Pending::Status(Box::new(total), others), keep);
        if others == 0 {
            return self.complete_status(seq);
        }
        if self.native.ask_stats(seq).is_none() {
            self.finish(seq, error_json(503, "a shard is busy, retry", keep));
        }
    }

    fn complete_status(&mut self, seq: u64) {
        let Some((Pending::Status(total, 0), keep)) = self.waiting(seq) else {
            return;
        };
        let (total, keep) = (std::mem::take(total), keep);
        let uptime = self.shard.now_ms().saturating_sub(self.shard.started_ms) / 1_000;
        let body = serde_json::json!({
            "status": "ok",
            "node_id": format!("{:016x}", self.shard.node_id),
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": uptime,
            "shards": self.shard.count,
            "keys": total.keys,
            "memory": { "used_bytes": total.used_bytes, "budget_bytes": total.budget_bytes },
            "connections": total.connections_open,
        });
        self.finish(seq, json(200, &body, keep));
    }

    fn waiting(&mut self, seq: u64) -> Option<(&mut Pending, bool)> {
        let waiting = self.replies.waiting(seq)?;
        Some((&mut waiting.pending, waiting.keep_alive))
    }

    fn finish(&mut self, seq: u64, done: Zeroizing<Vec<u8>>) {
        self.replies.finish(seq, done);
    }

    fn take_answers(&mut self) {
        let mut answers = std::mem::take(&mut self.answers);
        each_answer(&answers, |seq, reply| self.take_one(seq, reply));
        clear_answers(&mut answers);
        self.answers = answers;
    }

    fn accept_inbound(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Responses { responses, count } => {
                self.native.answered(count as usize);
                each_answer(&responses, |seq, reply| self.take_one(seq, reply));
            }
            Inbound::Keys { request_id, page } => {
                self.native.answered(1);
                self.take_keys(request_id, page);
            }
            Inbound::Stats {
                request_id,
                shard,
                stats,
            } => {
                self.native.answered(1);
                match self.waiting(request_id) {
                    Some((Pending::Status(total, remaining), _)) => {
                        total.add(&stats);
                        *remaining = remaining.saturating_sub(1);
                        self.complete_status(request_id);
                    }
                    Some((Pending::Metrics(shards, remaining, _), _)) => {
                        if let Some(slot) = shards.get_mut(shard as usize) {
                            *slot = stats;
                        }
                        *remaining = remaining.saturating_sub(1);
                        self.complete_metrics(request_id);
                    }
                    _ => {}
                }
            }
        }
    }

    /// The native answer to request `seq`.
    fn take_one(&mut self, seq: u64, reply: &ArchivedReply<'_>) {
        let ArchivedReply::Topology(topology) = reply else {
            return take_answer(&mut self.replies, self.shard, seq, Outcome::from(reply));
        };
        let Some((pending, keep)) = self.waiting(seq) else {
            return;
        };
        let done = match pending {
            Pending::Topology => {
                let peer = |p: &crate::wire::ArchivedPeerView| {
                    serde_json::json!({
                        "node_id": format!("{:016x}", p.node_id.to_native()),
                        "address": p.addr.as_str(),
                        "role": crate::wire::role_name(p.role),
                        "children": p.children.to_native(),
                        "capacity": p.capacity.to_native(),
                        "last_heard_ms": p.silent_ms.to_native(),
                    })
                };
                let body = serde_json::json!({
                    "node": peer(&topology.node),
                    "attached": topology.attached,
                    "path": topology.path.iter().map(|id| format!("{:016x}", id.to_native())).collect::<Vec<_>>(),
                    "parent": topology.parent.as_ref().map(peer),
                    "parent_rtt_ms": topology.parent_rtt_ms.as_ref().map(|ms| ms.to_native()),
                    "children": topology.children.iter().map(peer).collect::<Vec<_>>(),
                    "root_peers": topology.root_peers.iter().map(peer).collect::<Vec<_>>(),
                });
                json(200, &body, keep)
            }
            _ => error_json(500, "unexpected answer from the store", keep),
        };
        self.finish(seq, done);
    }
}

/// The start of every path on a key.
const DATA_PATH: &str = "/v1/data/";

/// The answer to request `seq` on a key, from its owner's store (here, or in a native frame).
fn take_answer(replies: &mut OrderedReplies<Waiting>, shard: &Shard, seq: u64, reply: Outcome<'_>) {
    let Some(Waiting {
        pending,
        keep_alive,
    }) = replies.waiting(seq)
    else {
        return;
    };
    let keep = *keep_alive;
    let done = match (pending, reply) {
        (
            Pending::Put,
            Outcome::Stored {
                pending,
                expires_ms,
                version_clock,
            },
        ) => {
            let status = if pending { 202 } else { 201 };
            let created = crate::Version {
                clock: version_clock,
                node: 0,
            }
            .physical_ms();
            // The TTL as applied (the API clamps it), so a client need not ask again.
            let body = stored_json(expires_ms.saturating_sub(created) / 1_000, expires_ms);
            answer(status, &[], "application/json", &body, false, keep)
        }
        (
            Pending::Get { head_only },
            Outcome::Value {
                value,
                expires_ms,
                version_clock,
            },
        ) => {
            let created = crate::Version {
                clock: version_clock,
                node: 0,
            }
            .physical_ms();
            let now_ms = shard.now_ms();
            let extra = [
                ("X-Created-At", Field::Time(created)),
                (
                    "X-Original-TTL",
                    Field::Decimal(expires_ms.saturating_sub(created) / 1_000),
                ),
                (
                    "X-Remaining-TTL",
                    Field::Decimal(expires_ms.saturating_sub(now_ms) / 1_000),
                ),
            ];
            let head_only = *head_only;
            answer(
                200,
                &extra,
                "application/octet-stream",
                value,
                head_only,
                keep,
            )
        }
        (Pending::Get { head_only }, Outcome::NotFound) => {
            answer(404, &[], "text/plain", b"", *head_only, keep)
        }
        (Pending::Delete, Outcome::Deleted) => answer(204, &[], "", b"", false, keep),
        (Pending::Delete, Outcome::NotFound) => error_json(404, "not found", keep),
        (_, Outcome::Error { code, message }) => error_json(status_of(code), message, keep),
        (_, _) => error_json(500, "unexpected answer from the store", keep),
    };
    replies.finish(seq, done);
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::{Duration, UNIX_EPOCH};

    fn rfc3339(ms: u64) -> String {
        String::from_utf8(rfc3339_bytes(ms).to_vec()).expect("ascii")
    }

    #[test]
    fn times_format_as_rfc3339_and_never_fail() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn times_format_as_humantime_writes_them_across_the_whole_range() {
        // 20,000 instants spread over the whole range (xorshift), then some day ends.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ms = x % (RFC3339_MS_MAX + 1);
            let expected =
                humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms));
            assert_eq!(rfc3339(ms), expected.to_string(), "at {ms} ms");
        }
        for day_end in [68_169_599_999u64, 4_107_542_399_999, 946_684_799_999] {
            let expected =
                humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(day_end));
            assert_eq!(rfc3339(day_end), expected.to_string());
        }
    }

    #[test]
    fn a_stored_put_is_answered_with_the_json_serde_json_would_write() {
        for (ttl, expires) in [(0, 0), (7_200, 1_795_000_000_000), (u64::MAX, u64::MAX)] {
            let expected = serde_json::json!({
                "status": "stored",
                "ttl_seconds": ttl,
                "expires_at": rfc3339(expires),
            })
            .to_string();
            assert_eq!(
                String::from_utf8(stored_json(ttl, expires)).expect("utf-8"),
                expected
            );
        }
    }

    #[test]
    fn an_answer_has_its_status_headers_and_body() {
        let extra = [
            ("X-Created-At", Field::Time(0)),
            ("X-Remaining-TTL", Field::Decimal(42)),
            ("X-Text", Field::Text("t")),
        ];
        let out = answer(200, &extra, "text/plain", b"body", false, false);
        let text = String::from_utf8(out.to_vec()).expect("utf-8");
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains(
            "\r\nX-Created-At: 1970-01-01T00:00:00Z\r\nX-Remaining-TTL: 42\r\nX-Text: t\r\n"
        ));
        assert!(text.contains(
            "\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody"
        ));
        assert!(text.ends_with("\r\n\r\nbody"));
        let head = answer(204, &[], "", b"", true, true);
        let head = String::from_utf8(head.to_vec()).expect("utf-8");
        assert!(!head.contains("Content-Length") && head.ends_with("\r\n\r\n"));
    }
}
