//! A pipelined connection for protocols that answer in order (RESP, memcached text): callers
//! append an encoded request and wait for the reply in their position; one driver task writes
//! what is queued and reads replies at the same time, handing each to the oldest waiter.
//!
//! Owns one socket, its buffers and the order of waiters. It never encodes or decodes a
//! protocol itself (the `TextProtocol` does) and never retries: a broken connection fails
//! every waiter and stays failed.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_lite::{future, AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use super::{memcache, resp, OpError};

/// Longest reply line (status, error, header) a server may send.
pub const REPLY_LINE_BYTES_MAX: usize = 64 * 1024;
/// Largest value a reply may carry; a server announcing more is treated as broken.
pub const REPLY_VALUE_BYTES_MAX: usize = 64 * 1024 * 1024;
const RECV_CHUNK_BYTES: usize = 16 * 1024;

/// One reply, in the terms both text protocols share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A value read (RESP bulk string, memcached VALUE … END).
    Value(Vec<u8>),
    /// No such key (RESP null, memcached END alone).
    Nil,
    /// A status line: `OK`, `STORED`, `NOT_STORED`, `PONG`…
    Status(String),
    /// A RESP integer.
    Integer(i64),
    /// The server refused: `code` is the error's first word (`ERR`, `WRONGTYPE`,
    /// `SERVER_ERROR`…), `message` the rest.
    Error { code: String, message: String },
}

/// Which protocol a text connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextProtocol {
    Resp,
    Memcache,
}

impl TextProtocol {
    /// Parses the first reply in `buf`: `Ok(None)` until it is whole, with its length once
    /// it is.
    pub fn parse(self, buf: &[u8]) -> Result<Option<(Reply, usize)>, OpError> {
        match self {
            TextProtocol::Resp => resp::parse_reply(buf),
            TextProtocol::Memcache => memcache::parse_reply(buf),
        }
    }
}

struct Waiter {
    reply: RefCell<Option<Result<Reply, OpError>>>,
    waker: Cell<Option<Waker>>,
}

struct Shared {
    protocol: TextProtocol,
    outgoing: RefCell<Vec<u8>>,
    /// Waiters in the order their requests were queued; replies complete the oldest.
    waiters: RefCell<VecDeque<Rc<Waiter>>>,
    driver: Cell<Option<Waker>>,
    closed: RefCell<Option<OpError>>,
    stop: Cell<bool>,
}

/// A handle on one text-protocol connection; dropping it (or `close`) ends the connection.
pub struct TextConnection {
    shared: Rc<Shared>,
}

impl Drop for TextConnection {
    fn drop(&mut self) {
        self.close();
    }
}

impl TextConnection {
    pub async fn open(
        protocol: TextProtocol,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<TextConnection, OpError> {
        let stream = TcpStream::connect_timeout(addr, timeout)
            .await
            .map_err(|e| OpError::from_connect(addr, io::Error::from(e)))?;
        let _ = stream.set_nodelay(true);
        let shared = Rc::new(Shared {
            protocol,
            outgoing: RefCell::new(Vec::with_capacity(RECV_CHUNK_BYTES)),
            waiters: RefCell::new(VecDeque::new()),
            driver: Cell::new(None),
            closed: RefCell::new(None),
            stop: Cell::new(false),
        });
        glommio::spawn_local(drive(shared.clone(), stream)).detach();
        Ok(TextConnection { shared })
    }

    /// Queues the request `encode` appends and waits for its reply. Dropping the future
    /// before the reply comes leaves its place in line, so later replies still match.
    pub async fn call(&self, encode: impl FnOnce(&mut Vec<u8>)) -> Result<Reply, OpError> {
        if let Some(error) = self.shared.closed.borrow().as_ref() {
            return Err(error.clone());
        }
        encode(&mut self.shared.outgoing.borrow_mut());
        let waiter = Rc::new(Waiter {
            reply: RefCell::new(None),
            waker: Cell::new(None),
        });
        self.shared.waiters.borrow_mut().push_back(waiter.clone());
        if let Some(waker) = self.shared.driver.take() {
            waker.wake();
        }
        WaitReply { waiter }.await
    }

    pub fn protocol(&self) -> TextProtocol {
        self.shared.protocol
    }

    /// Ends the connection: every waiter gets `closed`.
    pub fn close(&self) {
        self.shared.stop.set(true);
        if let Some(waker) = self.shared.driver.take() {
            waker.wake();
        }
    }
}

struct WaitReply {
    waiter: Rc<Waiter>,
}

impl Future for WaitReply {
    type Output = Result<Reply, OpError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.waiter.reply.borrow_mut().take() {
            Some(reply) => Poll::Ready(reply),
            None => {
                self.waiter.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        }
    }
}

enum Event {
    Read(io::Result<usize>),
    Wrote(io::Result<usize>),
    Queued,
    Stop,
}

/// Moves bytes both ways until the socket fails or the handle goes, then fails every waiter.
async fn drive(shared: Rc<Shared>, mut stream: TcpStream) {
    let mut received: Vec<u8> = vec![0; RECV_CHUNK_BYTES];
    let mut filled = 0usize;
    let mut sending: Vec<u8> = Vec::with_capacity(RECV_CHUNK_BYTES);
    let mut sent = 0usize;
    let error = loop {
        if sent == sending.len() {
            sending.clear();
            sent = 0;
            std::mem::swap(&mut sending, &mut *shared.outgoing.borrow_mut());
        }
        if filled == received.len() {
            // A reply longer than the buffer: grow, within what a reply may be.
            if received.len() >= REPLY_VALUE_BYTES_MAX + REPLY_LINE_BYTES_MAX {
                break OpError::Protocol("reply larger than the loadgen accepts".into());
            }
            received.resize(received.len() * 2, 0);
        }
        let event = {
            let unsent = &sending[sent..];
            let spare = &mut received[filled..];
            future::poll_fn(|cx| {
                if shared.stop.get() {
                    return Poll::Ready(Event::Stop);
                }
                if !unsent.is_empty() {
                    if let Poll::Ready(result) = Pin::new(&mut stream).poll_write(cx, unsent) {
                        return Poll::Ready(Event::Wrote(result));
                    }
                } else if !shared.outgoing.borrow().is_empty() {
                    return Poll::Ready(Event::Queued);
                } else {
                    shared.driver.set(Some(cx.waker().clone()));
                }
                if let Poll::Ready(result) = Pin::new(&mut stream).poll_read(cx, spare) {
                    return Poll::Ready(Event::Read(result));
                }
                Poll::Pending
            })
            .await
        };
        match event {
            Event::Stop => break OpError::Closed("closed by the loadgen".into()),
            Event::Queued => {}
            Event::Wrote(Ok(n)) => sent += n,
            Event::Wrote(Err(e)) | Event::Read(Err(e)) => break OpError::from_io(e),
            Event::Read(Ok(0)) => break OpError::Closed("the server closed the connection".into()),
            Event::Read(Ok(n)) => {
                filled += n;
                match take_replies(&shared, &received[..filled]) {
                    Ok(consumed) => {
                        received.copy_within(consumed..filled, 0);
                        filled -= consumed;
                        if filled == 0 && received.len() > RECV_CHUNK_BYTES {
                            received.truncate(RECV_CHUNK_BYTES);
                            received.shrink_to_fit();
                        }
                    }
                    Err(error) => break error,
                }
            }
        }
    };
    drop(stream);
    *shared.closed.borrow_mut() = Some(error.clone());
    for waiter in shared.waiters.borrow_mut().drain(..) {
        *waiter.reply.borrow_mut() = Some(Err(error.clone()));
        if let Some(waker) = waiter.waker.take() {
            waker.wake();
        }
    }
}

/// Hands every whole reply in `buf` to its waiter; returns the bytes consumed.
fn take_replies(shared: &Shared, buf: &[u8]) -> Result<usize, OpError> {
    let mut consumed = 0;
    while let Some((reply, len)) = shared.protocol.parse(&buf[consumed..])? {
        consumed += len;
        let Some(waiter) = shared.waiters.borrow_mut().pop_front() else {
            return Err(OpError::Protocol("a reply to no request".into()));
        };
        *waiter.reply.borrow_mut() = Some(Ok(reply));
        if let Some(waker) = waiter.waker.take() {
            waker.wake();
        }
    }
    Ok(consumed)
}

/// Finds the end of the CRLF-terminated line at the start of `buf`: the line's length
/// without CRLF, or `None` while it is incomplete.
pub(crate) fn line_end(buf: &[u8]) -> Result<Option<usize>, OpError> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(end) => Ok(Some(end)),
        None if buf.len() > REPLY_LINE_BYTES_MAX => Err(OpError::Protocol(format!(
            "a reply line longer than {REPLY_LINE_BYTES_MAX} bytes"
        ))),
        None => Ok(None),
    }
}

/// Splits an error line into its first word and the rest.
pub(crate) fn error_reply(line: &str) -> Reply {
    let (code, message) = line.split_once(' ').unwrap_or((line, ""));
    Reply::Error {
        code: code.to_string(),
        message: message.to_string(),
    }
}

pub(crate) fn line_text(line: &[u8]) -> Result<&str, OpError> {
    std::str::from_utf8(line).map_err(|_| OpError::Protocol("a reply line is not text".into()))
}
