//! Hostile clients for hardening checks: many connections that never send, that send one byte
//! a second, or that pipeline reads without ever reading the answers. Each flood is bounded in
//! connections and time and reports what the server did to it (refused, closed and when).
//!
//! Owns its sockets only (plain std, non-blocking, one thread: ten thousand connections need no
//! executor). It never measures the server's latency or memory: the caller does that beside it.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// What each connection of a flood does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FloodMode {
    /// Connect and never send.
    Idle,
    /// Send the start of a large request (its first 16 bytes), then one byte a second, never
    /// finishing it.
    Trickle,
    /// Pipeline reads of one key as fast as the socket takes them, never reading an answer.
    NoRead,
}

/// Bytes a trickling connection sends at first (enough for any frame header).
const TRICKLE_FIRST_BYTES: usize = 16;

/// Which protocol the flood's bytes speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FloodProtocol {
    Native,
    Resp,
    Http,
}

#[derive(Clone, Debug)]
pub struct FloodPlan {
    pub addr: SocketAddr,
    pub mode: FloodMode,
    pub protocol: FloodProtocol,
    pub connections: usize,
    /// The flood ends after this long, or once the server has closed every connection.
    pub duration: Duration,
    /// The key `no-read` asks for.
    pub key: Vec<u8>,
    pub connect_timeout: Duration,
}

/// What the server did to a flood.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FloodReport {
    pub connections: usize,
    /// Connections made (the rest failed to connect).
    pub opened: usize,
    pub connect_failed: usize,
    /// Connections the server said something to and then closed (a refusal, a timeout's reason).
    pub answered_then_closed: usize,
    /// Connections the server closed without a word.
    pub closed_silently: usize,
    /// Connections still open when the flood ended.
    pub open_at_end: usize,
    /// How long after it opened the server closed a connection without a word (a timeout):
    /// fewest, median, most ms (0 when none was).
    pub silent_close_after_ms: [u64; 3],
    /// Bytes the flood sent in all.
    pub bytes_sent: u64,
    pub elapsed_ms: u64,
}

impl std::fmt::Display for FloodReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [first, median, last] = self.silent_close_after_ms;
        write!(
            f,
            "flood connections={} opened={} connect_failed={} answered_then_closed={} \
             closed_silently={} open_at_end={} silent_close_ms_min={first} \
             silent_close_ms_median={median} silent_close_ms_max={last} bytes_sent={} \
             elapsed_ms={}",
            self.connections,
            self.opened,
            self.connect_failed,
            self.answered_then_closed,
            self.closed_silently,
            self.open_at_end,
            self.bytes_sent,
            self.elapsed_ms
        )
    }
}

impl FloodReport {
    /// Reads a report back from its [`Display`](std::fmt::Display) line (for tests and scripts).
    pub fn parse(line: &str) -> Option<FloodReport> {
        let field = |name: &str| -> Option<u64> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?
                .parse()
                .ok()
        };
        Some(FloodReport {
            connections: field("connections")? as usize,
            opened: field("opened")? as usize,
            connect_failed: field("connect_failed")? as usize,
            answered_then_closed: field("answered_then_closed")? as usize,
            closed_silently: field("closed_silently")? as usize,
            open_at_end: field("open_at_end")? as usize,
            silent_close_after_ms: [
                field("silent_close_ms_min")?,
                field("silent_close_ms_median")?,
                field("silent_close_ms_max")?,
            ],
            bytes_sent: field("bytes_sent")?,
            elapsed_ms: field("elapsed_ms")?,
        })
    }
}

struct FloodConn {
    stream: TcpStream,
    opened_at: Instant,
    /// Bytes of `pattern` sent so far (wrapping).
    sent_at: usize,
    heard: bool,
}

/// The bytes a connection sends: for `trickle`, the start of one request that announces far
/// more than will ever come; for `no-read`, one read request, repeated.
fn pattern(mode: FloodMode, protocol: FloodProtocol, key: &[u8]) -> Vec<u8> {
    let key_text = String::from_utf8_lossy(key);
    match (mode, protocol) {
        (FloodMode::Idle, _) => Vec::new(),
        (FloodMode::Trickle, FloodProtocol::Native) => {
            // Announces a frame near the usual 1 MiB value limit; a node that reserved what
            // headers announce would hold that much for each such connection.
            let value = vec![b'v'; 1_000_000];
            let mut out = Vec::new();
            repram::wire::encode_request(
                &mut out,
                &repram::wire::Request {
                    id: 1,
                    op: repram::wire::Op::Put {
                        key,
                        value: &value,
                        ttl_ms: 60_000,
                        copies: 0,
                        only_if: 0,
                    },
                },
            );
            out
        }
        (FloodMode::Trickle, FloodProtocol::Resp) => format!(
            "*3\r\n$3\r\nSET\r\n${}\r\n{key_text}\r\n$60000\r\n",
            key.len()
        )
        .into_bytes()
        .into_iter()
        .chain(std::iter::repeat_n(b'v', 60_000))
        .collect(),
        (FloodMode::Trickle, FloodProtocol::Http) => {
            let mut head = b"GET /v1/data/".to_vec();
            head.extend_from_slice(key);
            head.extend_from_slice(b" HTTP/1.1\r\nHost: flood\r\n");
            for i in 0..1_000 {
                head.extend_from_slice(format!("X-Flood-{i}: {}\r\n", "a".repeat(16)).as_bytes());
            }
            head
        }
        (FloodMode::NoRead, FloodProtocol::Native) => {
            let mut out = Vec::new();
            for id in 0..64 {
                repram::wire::encode_request(
                    &mut out,
                    &repram::wire::Request {
                        id,
                        op: repram::wire::Op::Get {
                            key,
                            local_only: false,
                        },
                    },
                );
            }
            out
        }
        (FloodMode::NoRead, FloodProtocol::Resp) => {
            format!("*2\r\n$3\r\nGET\r\n${}\r\n{key_text}\r\n", key.len())
                .repeat(64)
                .into_bytes()
        }
        (FloodMode::NoRead, FloodProtocol::Http) => {
            format!("GET /v1/data/{key_text} HTTP/1.1\r\nHost: flood\r\n\r\n")
                .repeat(64)
                .into_bytes()
        }
    }
}

/// Raises this process's soft open-files limit to its hard limit (ten thousand connections
/// need more than the usual 1,024).
pub fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a pointer to a live local; setrlimit reads
    // one during the call.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Runs one flood to its end and reports what the server did.
pub fn flood(plan: &FloodPlan) -> FloodReport {
    raise_open_files_limit();
    let started = Instant::now();
    let ends_at = started + plan.duration;
    let pattern = pattern(plan.mode, plan.protocol, &plan.key);
    let mut report = FloodReport {
        connections: plan.connections,
        ..FloodReport::default()
    };
    let mut open: Vec<FloodConn> = Vec::with_capacity(plan.connections);
    let mut close_ages: Vec<u64> = Vec::new();
    let mut scratch = vec![0u8; 64 * 1024];
    let mut next_trickle = started;

    for _ in 0..plan.connections {
        if Instant::now() >= ends_at {
            break;
        }
        match TcpStream::connect_timeout(&plan.addr, plan.connect_timeout) {
            Ok(stream) if stream.set_nonblocking(true).is_ok() => {
                report.opened += 1;
                open.push(FloodConn {
                    stream,
                    opened_at: Instant::now(),
                    sent_at: 0,
                    heard: false,
                });
            }
            _ => report.connect_failed += 1,
        }
    }

    while !open.is_empty() && Instant::now() < ends_at {
        let now = Instant::now();
        let trickle_now = plan.mode == FloodMode::Trickle && now >= next_trickle;
        if trickle_now {
            next_trickle = now + Duration::from_secs(1);
        }
        open.retain_mut(|conn| {
            let mut closed = false;
            match plan.mode {
                FloodMode::NoRead => loop {
                    let at = conn.sent_at % pattern.len();
                    match conn.stream.write(&pattern[at..]) {
                        Ok(0) => break,
                        Ok(n) => {
                            conn.sent_at += n;
                            report.bytes_sent += n as u64;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => {
                            closed = true;
                            break;
                        }
                    }
                },
                FloodMode::Idle | FloodMode::Trickle => {
                    if trickle_now && conn.sent_at < pattern.len() {
                        // The first write carries the request's start (a frame header says
                        // how long the frame is), then one byte a second.
                        let step = if conn.sent_at == 0 {
                            TRICKLE_FIRST_BYTES
                        } else {
                            1
                        };
                        let end = (conn.sent_at + step).min(pattern.len());
                        match conn.stream.write(&pattern[conn.sent_at..end]) {
                            Ok(n) => {
                                conn.sent_at += n;
                                report.bytes_sent += n as u64;
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                            Err(_) => closed = true,
                        }
                    }
                    loop {
                        match conn.stream.read(&mut scratch) {
                            Ok(0) => {
                                closed = true;
                                break;
                            }
                            Ok(_) => conn.heard = true,
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(_) => {
                                closed = true;
                                break;
                            }
                        }
                    }
                }
            }
            if closed {
                if conn.heard {
                    report.answered_then_closed += 1;
                } else {
                    report.closed_silently += 1;
                    close_ages.push(conn.opened_at.elapsed().as_millis() as u64);
                }
            }
            !closed
        });
        let pause = match plan.mode {
            FloodMode::NoRead => Duration::from_millis(5),
            _ => Duration::from_millis(20),
        };
        std::thread::sleep(pause.min(ends_at.saturating_duration_since(Instant::now())));
    }
    report.open_at_end = open.len();
    close_ages.sort_unstable();
    if let (Some(first), Some(last)) = (close_ages.first(), close_ages.last()) {
        report.silent_close_after_ms = [*first, close_ages[close_ages.len() / 2], *last];
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_back_from_its_line() {
        let report = FloodReport {
            connections: 10,
            opened: 9,
            connect_failed: 1,
            answered_then_closed: 2,
            closed_silently: 3,
            open_at_end: 4,
            silent_close_after_ms: [5, 6, 7],
            bytes_sent: 8,
            elapsed_ms: 9,
        };
        assert_eq!(FloodReport::parse(&report.to_string()), Some(report));
    }

    #[test]
    fn a_trickled_request_never_completes_and_a_no_read_pattern_is_whole_requests() {
        let native = pattern(FloodMode::Trickle, FloodProtocol::Native, b"k");
        let announced = u32::from_le_bytes(native[..4].try_into().unwrap()) as usize;
        assert!(announced + 4 == native.len() && native.len() > 1_000_000);
        let resp = pattern(FloodMode::NoRead, FloodProtocol::Resp, b"k");
        assert!(resp.starts_with(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n") && resp.len() % 64 == 0);
    }
}
