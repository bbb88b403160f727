//! One pipelined client connection: callers queue framed requests and wait on their ids; a
//! driver task writes what is queued and reads responses, at the same time.
//!
//! Owns request ids and response matching for one socket. It never routes keys (the `Client`
//! does) and never blocks: it runs on the caller's glommio executor.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use ahash::AHashMap;
use futures_lite::{future, AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use super::{Answer, ClientError, Stored, Value};
use crate::buffers::{wipe_and_clear, RecvBuffer};
use crate::wire::{self, ArchivedReply, ErrorCode, Request};
use crate::Version;

const RECV_BUFFER_INITIAL_BYTES: usize = 16 * 1024;
const SEND_BUFFER_KEEP_BYTES: usize = 64 * 1024;
/// Largest response frame the client accepts: above the largest value a node may be set to
/// hold, so a confused or hostile server cannot make the client allocate without bound.
const RESPONSE_FRAME_BYTES_MAX: usize = crate::limits::VALUE_BYTES_CEILING + 64 * 1024;

#[derive(Default)]
struct Pending {
    answer: Option<Result<Answer, ClientError>>,
    waker: Option<Waker>,
}

/// State shared by the callers and the driver task.
struct Shared {
    outgoing: RefCell<Vec<u8>>,
    pending: RefCell<AHashMap<u64, Pending>>,
    next_id: Cell<u64>,
    driver: Cell<Option<Waker>>,
    /// Why the connection ended, once it has.
    closed: RefCell<Option<ClientError>>,
    /// The last handle was dropped: the driver closes the socket.
    abandoned: Cell<bool>,
    /// An error the node sent for no request (a frame it could not read), kept to explain
    /// the close that follows.
    unsolicited: RefCell<Option<ClientError>>,
}

/// A handle on one connection; dropping the last one closes it.
pub(crate) struct Connection {
    shared: Rc<Shared>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.abandoned.set(true);
        if let Some(waker) = self.shared.driver.take() {
            waker.wake();
        }
    }
}

impl Connection {
    /// Connects to `addr` (through TLS with `tls`, the certificate naming `addr`'s IP).
    pub(crate) async fn open(
        addr: SocketAddr,
        timeout: Duration,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> Result<Rc<Connection>, ClientError> {
        let stream = TcpStream::connect_timeout(addr, timeout)
            .await
            .map_err(|e| ClientError::Io(format!("cannot connect to {addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let shared = Rc::new(Shared {
            outgoing: RefCell::new(Vec::new()),
            pending: RefCell::new(AHashMap::new()),
            next_id: Cell::new(1),
            driver: Cell::new(None),
            closed: RefCell::new(None),
            abandoned: Cell::new(false),
            unsolicited: RefCell::new(None),
        });
        match tls {
            None => {
                glommio::spawn_local(drive(shared.clone(), stream)).detach();
            }
            Some(config) => {
                let _ = stream.set_read_timeout(Some(timeout));
                let stream = crate::tls::connect(config, addr.ip(), stream)
                    .await
                    .map_err(|e| ClientError::Io(format!("TLS with {addr} failed: {e}")))?;
                let _ = stream.get_ref().0.set_read_timeout(None);
                glommio::spawn_local(drive(shared.clone(), stream)).detach();
            }
        }
        Ok(Rc::new(Connection { shared }))
    }

    /// Sends the request `make` builds for a fresh id and waits for its answer.
    pub(crate) async fn call<'a>(
        &self,
        make: impl FnOnce(u64) -> Request<'a>,
    ) -> Result<Answer, ClientError> {
        if let Some(error) = self.shared.closed.borrow().as_ref() {
            return Err(error.clone());
        }
        let id = self.shared.next_id.get();
        self.shared.next_id.set(id.wrapping_add(1));
        wire::encode_request(&mut self.shared.outgoing.borrow_mut(), &make(id));
        self.shared
            .pending
            .borrow_mut()
            .insert(id, Pending::default());
        if let Some(waker) = self.shared.driver.take() {
            waker.wake();
        }
        Call {
            shared: &self.shared,
            id,
        }
        .await
    }
}

/// Waits for the answer to one request; dropping it forgets the request.
struct Call<'c> {
    shared: &'c Rc<Shared>,
    id: u64,
}

impl Future for Call<'_> {
    type Output = Result<Answer, ClientError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut pending = self.shared.pending.borrow_mut();
        let Some(slot) = pending.get_mut(&self.id) else {
            return Poll::Ready(Err(ClientError::Closed("request lost".into())));
        };
        if slot.answer.is_some() {
            let answer = pending.remove(&self.id).and_then(|p| p.answer);
            return Poll::Ready(
                answer.unwrap_or_else(|| Err(ClientError::Closed("request lost".into()))),
            );
        }
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        self.shared.pending.borrow_mut().remove(&self.id);
    }
}

enum Event {
    Read(io::Result<usize>),
    Wrote(io::Result<usize>),
    Queued,
    Abandoned,
}

/// Moves bytes both ways until the socket or the handle goes, then fails what is left.
async fn drive<S: AsyncRead + AsyncWrite + Unpin>(shared: Rc<Shared>, mut stream: S) {
    let mut rx = RecvBuffer::new(RECV_BUFFER_INITIAL_BYTES, SEND_BUFFER_KEEP_BYTES);
    let mut next_frame_bytes = wire::FRAME_HEADER_BYTES;
    let mut sending: Vec<u8> = Vec::new();
    let mut sent = 0;
    let error = loop {
        if sent == sending.len() {
            wipe_and_clear(&mut sending, SEND_BUFFER_KEEP_BYTES);
            sent = 0;
            std::mem::swap(&mut sending, &mut *shared.outgoing.borrow_mut());
        }
        rx.make_room(next_frame_bytes);
        let event = {
            let spare = rx.spare_mut();
            let unsent = &sending[sent..];
            future::poll_fn(|cx| {
                if shared.abandoned.get() {
                    return Poll::Ready(Event::Abandoned);
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
            Event::Abandoned => break ClientError::Closed("client dropped".into()),
            Event::Queued => {}
            Event::Wrote(Ok(n)) => sent += n,
            Event::Wrote(Err(e)) | Event::Read(Err(e)) => break ClientError::from(e),
            Event::Read(Ok(0)) => {
                break shared.unsolicited.borrow_mut().take().unwrap_or_else(|| {
                    ClientError::Closed("the node closed the connection".into())
                });
            }
            Event::Read(Ok(n)) => {
                rx.advance(n);
                if let Err(error) = take_responses(&shared, &mut rx, &mut next_frame_bytes) {
                    break error;
                }
            }
        }
    };
    wipe_and_clear(&mut sending, 0);
    *shared.closed.borrow_mut() = Some(error.clone());
    for slot in shared.pending.borrow_mut().values_mut() {
        if slot.answer.is_none() {
            slot.answer = Some(Err(error.clone()));
        }
        if let Some(waker) = slot.waker.take() {
            waker.wake();
        }
    }
}

/// Completes the callers of every whole response in `rx`.
fn take_responses(
    shared: &Shared,
    rx: &mut RecvBuffer,
    next_frame_bytes: &mut usize,
) -> Result<(), ClientError> {
    loop {
        let filled = rx.filled();
        let len = match wire::frame_len(filled, RESPONSE_FRAME_BYTES_MAX) {
            Ok(Some(len)) => len,
            Ok(None) => {
                *next_frame_bytes = wire::FRAME_HEADER_BYTES;
                break;
            }
            Err(e) => return Err(ClientError::Protocol(e.to_string())),
        };
        let total = wire::FRAME_HEADER_BYTES + len;
        if filled.len() < total {
            *next_frame_bytes = total;
            break;
        }
        let response = wire::decode_response(&filled[wire::FRAME_HEADER_BYTES..total])
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let id = response.id.to_native();
        let answer = answer_of(&response.reply)?;
        let mut pending = shared.pending.borrow_mut();
        match pending.get_mut(&id) {
            Some(slot) => {
                slot.answer = Some(answer);
                if let Some(waker) = slot.waker.take() {
                    waker.wake();
                }
            }
            None => {
                if let Err(error) = answer {
                    *shared.unsolicited.borrow_mut() = Some(error);
                }
            }
        }
        drop(pending);
        rx.consume(total);
        *next_frame_bytes = wire::FRAME_HEADER_BYTES;
    }
    rx.shrink_when_empty();
    Ok(())
}

fn answer_of(reply: &ArchivedReply<'_>) -> Result<Result<Answer, ClientError>, ClientError> {
    let version = |clock: u64, node: u64| Version { clock, node };
    Ok(Ok(match reply {
        ArchivedReply::Hello(info) => Answer::Hello(
            rkyv::deserialize::<_, rkyv::rancor::Error>(info)
                .map_err(|e| ClientError::Protocol(e.to_string()))?,
        ),
        ArchivedReply::Stored {
            version_clock,
            version_node,
            expires_ms,
            copies,
            pending,
        } => Answer::Stored(Stored {
            version: version(version_clock.to_native(), version_node.to_native()),
            expires_ms: expires_ms.to_native(),
            copies: copies.to_native(),
            pending: *pending,
        }),
        ArchivedReply::Value {
            value,
            expires_ms,
            version_clock,
            version_node,
        } => Answer::Value(Value {
            bytes: value.get().to_vec(),
            expires_ms: expires_ms.to_native(),
            version: version(version_clock.to_native(), version_node.to_native()),
        }),
        ArchivedReply::NotFound => Answer::NotFound,
        ArchivedReply::NotStored => Answer::NotStored,
        ArchivedReply::Deleted => Answer::Deleted,
        ArchivedReply::Pong => Answer::Pong,
        ArchivedReply::Stats(stats) => Answer::Stats(
            rkyv::deserialize::<_, rkyv::rancor::Error>(stats)
                .map_err(|e| ClientError::Protocol(e.to_string()))?,
        ),
        ArchivedReply::Topology(topology) => Answer::Topology(
            rkyv::deserialize::<_, rkyv::rancor::Error>(topology)
                .map_err(|e| ClientError::Protocol(e.to_string()))?,
        ),
        ArchivedReply::Error {
            code,
            retry_after_ms,
            message,
        } => {
            return Ok(Err(ClientError::Node {
                code: ErrorCode::from(code),
                message: message.get().to_string(),
                retry_after_ms: retry_after_ms.to_native(),
            }))
        }
    }))
}
