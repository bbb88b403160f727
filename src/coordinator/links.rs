//! Peer links: the TCP connections between this node and the others.
//!
//! A node sends on the connections it opens (one per peer, opened on first use, reused, closed
//! when idle) and reads the ones peers open to it; every connection starts with a hello naming
//! the caller's advertised address, so a message is known to come from a node, not from an
//! ephemeral port. Owns sockets, framing, timeouts and the bounds on connections and buffered
//! bytes; it never decides what to send (the coordinator's cluster node does).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use ahash::AHashMap;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use repram_cluster::message::{Message, PEER_PROTOCOL_MAJOR};
use zeroize::Zeroizing;

use super::sealed::{self, ClusterKeys, HandshakeGuard, SealedSession, TAG_BYTES};
use crate::buffers::{reserve_wiping, wipe_and_clear};
use crate::wire::peer::{decode_peer, decode_peer_hello, encode_peer, encode_peer_hello};
use crate::wire::peer::{PeerHello, PeerLimits};
use crate::wire::FRAME_HEADER_BYTES;

/// How long opening a connection to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one write to a peer may block before the peer counts as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection we opened and have not used for this long is closed (reopened on next use).
const OUTBOUND_IDLE: Duration = Duration::from_secs(60);
/// A connection a peer opened that sends nothing for this long is closed (children heartbeat
/// every second; a parent answers them).
const INBOUND_IDLE: Duration = Duration::from_secs(120);
/// A caller must say hello within this.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes queued for one peer past which entries that sync rounds bring again (pushes, a
/// round's repairs) are dropped for it rather than queued: a peer slower than a burst of
/// writes falls behind by entries, repaired later, and keeps its link and its place in the
/// tree. Cutting it off instead made it rejoin and catch up with more than the queue holds,
/// over and over (a million-write burst cut a root's children off 126 times).
const SHED_ENTRIES_BYTES: usize = 8 * 1024 * 1024;
/// Bytes queued for one peer at most: a peer that cannot keep up even with what must arrive
/// (the tree, dumps, pulls) is cut off (and counted unreachable) rather than allowed to grow
/// our memory.
const OUTBOUND_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Connections peers may hold open to us at once.
const INBOUND_MAX: usize = 1_024;
/// Peer messages read and not yet taken by the coordinator: past this, links stop reading
/// (each message can be a frame of up to the frame limit).
const LINK_EVENTS_MAX: usize = 64;
/// A frame is read into memory in steps of this, so a peer that claims a large frame and
/// sends little costs little.
const READ_STEP_BYTES: usize = 64 * 1024;

/// What the links tell the coordinator.
pub(crate) enum LinkEvent {
    /// A message from the node that says hello as `from`.
    Message { from: SocketAddr, msg: Message },
    /// `addr` could not be reached, or its connection broke.
    Unreachable { addr: SocketAddr },
}

/// One connection we opened: frames waiting to be written, and a nudge for its writer.
struct Outbound {
    id: u64,
    /// Encoded frames (values in the clear until sealed by issue 8's sessions): wiped after
    /// they are written and when dropped.
    pending: Rc<RefCell<Zeroizing<Vec<u8>>>>,
    wake: LocalSender<()>,
}

/// Counters of the peer links.
#[derive(Default)]
pub(crate) struct LinkCounters {
    pub bytes_sent: Cell<u64>,
    pub bytes_received: Cell<u64>,
    /// By message kind, indexed like `Message::KINDS`.
    pub bytes_sent_by_kind: [Cell<u64>; Message::KINDS.len()],
    pub bytes_received_by_kind: [Cell<u64>; Message::KINDS.len()],
    pub frames_refused: Cell<u64>,
    pub connections_refused: Cell<u64>,
    pub peers_cut_off: Cell<u64>,
    /// Entries not sent to a peer that was too far behind ([`SHED_ENTRIES_BYTES`]).
    pub entries_shed: Cell<u64>,
    /// Handshakes of a private network that failed (a wrong cluster key, a stranger, an
    /// untrusted node, a frame that would not open), either side.
    pub handshakes_failed: Cell<u64>,
}

pub(crate) struct PeerLinks {
    hello: PeerHello,
    limits: PeerLimits,
    /// A private network's keys: every connection is sealed. `None`: open links.
    keys: Option<Arc<ClusterKeys>>,
    guard: HandshakeGuard,
    outbound: RefCell<AHashMap<SocketAddr, Outbound>>,
    next_id: Cell<u64>,
    inbound: Cell<usize>,
    /// Writes under way (for a clean goodbye).
    writing: Cell<usize>,
    events: LocalSender<LinkEvent>,
    pub(crate) counters: LinkCounters,
}

impl PeerLinks {
    /// Links that introduce themselves with `hello` and report to `events`.
    pub(crate) fn new(
        hello: PeerHello,
        limits: PeerLimits,
        keys: Option<Arc<ClusterKeys>>,
    ) -> (Rc<PeerLinks>, LocalReceiver<LinkEvent>) {
        let (events, receiver) = local_channel::new_bounded(LINK_EVENTS_MAX);
        let links = PeerLinks {
            hello,
            limits,
            keys,
            guard: HandshakeGuard::default(),
            outbound: RefCell::new(AHashMap::new()),
            next_id: Cell::new(0),
            inbound: Cell::new(0),
            writing: Cell::new(0),
            events,
            counters: LinkCounters::default(),
        };
        (Rc::new(links), receiver)
    }

    /// Queues `msg` for `to`, opening a connection if there is none.
    pub(crate) fn send(self: &Rc<Self>, to: SocketAddr, msg: &Message) {
        let mut outbound = self.outbound.borrow_mut();
        let link = outbound.entry(to).or_insert_with(|| self.open(to));
        let mut pending = link.pending.borrow_mut();
        let before = pending.len();
        if let Some(entries) = msg.entries_sheddable() {
            if before >= SHED_ENTRIES_BYTES {
                let shed = &self.counters.entries_shed;
                shed.set(shed.get() + entries as u64);
                return;
            }
        }
        // Room first, so encoding does not reallocate and leave a copy behind.
        reserve_wiping(&mut pending, msg.wire_bytes() * 2 + 1_024);
        encode_peer(&mut pending, msg);
        if self.keys.is_some() {
            add_tag_room(&mut pending, before);
        }
        let added = pending.len() - before;
        if pending.len() > OUTBOUND_BYTES_MAX {
            // Freed now, not when the writer's stalled write gives up.
            *pending = Zeroizing::new(Vec::new());
            drop(pending);
            // The writer ends when its nudges stop (the sender is dropped with the link).
            outbound.remove(&to);
            drop(outbound);
            bump(&self.counters.peers_cut_off);
            tracing::warn!(peer = %to, "peer cannot keep up: connection dropped");
            self.report(LinkEvent::Unreachable { addr: to });
            return;
        }
        drop(pending);
        let counters = &self.counters;
        counters
            .bytes_sent
            .set(counters.bytes_sent.get() + added as u64);
        let by_kind = &counters.bytes_sent_by_kind[msg.kind_index()];
        by_kind.set(by_kind.get() + added as u64);
        let _ = link.wake.try_send(());
    }

    fn open(self: &Rc<Self>, to: SocketAddr) -> Outbound {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let pending = Rc::new(RefCell::new(Zeroizing::new(Vec::new())));
        let (wake, woken) = local_channel::new_bounded(1);
        let _ = wake.try_send(());
        glommio::spawn_local(write_link(self.clone(), to, id, pending.clone(), woken)).detach();
        Outbound { id, pending, wake }
    }

    /// The connection `id` to `addr` failed: forget it and tell the coordinator.
    fn lost(&self, addr: SocketAddr, id: u64) {
        let mut outbound = self.outbound.borrow_mut();
        if outbound.get(&addr).is_some_and(|l| l.id == id) {
            outbound.remove(&addr);
        }
        drop(outbound);
        self.report(LinkEvent::Unreachable { addr });
    }

    /// Outbound links open, and the bytes queued on them (not yet handed to a write).
    pub(crate) fn queued(&self) -> (usize, usize) {
        let outbound = self.outbound.borrow();
        let bytes = outbound.values().map(|l| l.pending.borrow().len()).sum();
        (outbound.len(), bytes)
    }

    /// Waits until everything queued has been written (or cannot be), `within` at most.
    pub(crate) async fn flushed(&self, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            let queued = self
                .outbound
                .borrow()
                .values()
                .any(|l| !l.pending.borrow().is_empty());
            if !queued && self.writing.get() == 0 {
                return;
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Closes the idle connection `id` to `addr` if nothing was queued meanwhile.
    fn idle(&self, addr: SocketAddr, id: u64) -> bool {
        let mut outbound = self.outbound.borrow_mut();
        let idle = outbound
            .get(&addr)
            .is_some_and(|l| l.id == id && l.pending.borrow().is_empty());
        if idle {
            outbound.remove(&addr);
        }
        idle
    }

    fn report(&self, event: LinkEvent) {
        if self.events.try_send(event).is_err() {
            // The coordinator is far behind; a lost "unreachable" is noticed again by
            // heartbeats, so dropping it is safe.
            tracing::debug!("link event dropped");
        }
    }

    /// Accepts connections from peers for as long as the listener lives.
    pub(crate) async fn accept(self: Rc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok(stream) => {
                    if self.inbound.get() >= INBOUND_MAX {
                        bump(&self.counters.connections_refused);
                        continue;
                    }
                    self.inbound.set(self.inbound.get() + 1);
                    let links = self.clone();
                    glommio::spawn_local(async move {
                        if let Err(error) = links.read_link(stream).await {
                            tracing::debug!(%error, "peer connection ended");
                        }
                        links.inbound.set(links.inbound.get().saturating_sub(1));
                    })
                    .detach();
                }
                Err(error) => {
                    tracing::warn!(%error, "peer accept failed");
                    glommio::timer::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// Reads one peer's connection: its hello, then its messages, until it ends or errs.
    async fn read_link(&self, mut stream: TcpStream) -> Result<(), String> {
        stream
            .set_read_timeout(Some(HELLO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut session = match &self.keys {
            None => None,
            Some(keys) => {
                let ip = stream.peer_addr().map_err(|e| e.to_string())?.ip();
                let now = std::time::Instant::now();
                if !self.guard.admits(ip, now) {
                    bump(&self.counters.connections_refused);
                    return Err(format!("{ip}: too many failed handshakes, refused for now"));
                }
                match sealed::handshake(&mut stream, keys, false).await {
                    Ok(session) => {
                        tracing::debug!(%ip, key = %hex::encode(session.remote), "sealed peer link");
                        Some(session)
                    }
                    Err(error) => {
                        bump(&self.counters.handshakes_failed);
                        if self.guard.failed(ip, now) {
                            tracing::warn!(%ip, %error, "peer handshake failed: connection refused");
                        }
                        return Err(error);
                    }
                }
            }
        };
        let tag = if session.is_some() { TAG_BYTES } else { 0 };
        let mut payload = read_frame(&mut stream, 256 + tag).await?;
        let plain = open(&mut session, &mut payload)?;
        let hello = decode_peer_hello(plain).map_err(|e| format!("bad hello: {e}"))?;
        if hello.major != PEER_PROTOCOL_MAJOR {
            tracing::warn!(
                peer = %hello.addr,
                major = hello.major,
                ours = PEER_PROTOCOL_MAJOR,
                "peer speaks another protocol major: refused"
            );
            return Err("protocol major".into());
        }
        stream
            .set_read_timeout(Some(INBOUND_IDLE))
            .map_err(|e| e.to_string())?;
        loop {
            let max = self.limits.frame_bytes_max + tag;
            let mut payload = match read_frame(&mut stream, max).await {
                Ok(payload) => payload,
                Err(error) => {
                    if error.starts_with(FRAME_TOO_LARGE) {
                        bump(&self.counters.frames_refused);
                        tracing::warn!(peer = %hello.addr, %error, "peer frame refused: connection closed");
                    }
                    return Err(error);
                }
            };
            let bytes = (payload.len() + FRAME_HEADER_BYTES) as u64;
            self.counters
                .bytes_received
                .set(self.counters.bytes_received.get() + bytes);
            let plain = match open(&mut session, &mut payload) {
                Ok(plain) => plain,
                Err(error) => {
                    bump(&self.counters.frames_refused);
                    tracing::warn!(peer = %hello.addr, %error, "sealed peer frame refused: connection closed");
                    return Err(error);
                }
            };
            match decode_peer(plain, &self.limits) {
                Ok(msg) => {
                    let by_kind = &self.counters.bytes_received_by_kind[msg.kind_index()];
                    by_kind.set(by_kind.get() + bytes);
                    // Waiting here when the coordinator is behind stops reading this peer:
                    // TCP pushes back on it.
                    let event = LinkEvent::Message {
                        from: hello.addr,
                        msg,
                    };
                    if self.events.send(event).await.is_err() {
                        return Ok(());
                    }
                }
                Err(error) => {
                    bump(&self.counters.frames_refused);
                    tracing::warn!(peer = %hello.addr, %error, "peer frame refused: connection closed");
                    return Err(error.to_string());
                }
            }
        }
    }
}

/// Writes what is queued for `addr` on connection `id`, opening it first.
async fn write_link(
    links: Rc<PeerLinks>,
    addr: SocketAddr,
    id: u64,
    pending: Rc<RefCell<Zeroizing<Vec<u8>>>>,
    woken: LocalReceiver<()>,
) {
    let mut stream = match TcpStream::connect_timeout(addr, CONNECT_TIMEOUT).await {
        Ok(stream) => stream,
        Err(error) => {
            tracing::debug!(peer = %addr, %error, "cannot reach peer");
            return links.lost(addr, id);
        }
    };
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut session = match &links.keys {
        None => None,
        Some(keys) => {
            let _ = stream.set_read_timeout(Some(HELLO_TIMEOUT));
            match sealed::handshake(&mut stream, keys, true).await {
                Ok(session) => Some(session),
                Err(error) => {
                    bump(&links.counters.handshakes_failed);
                    tracing::warn!(peer = %addr, %error, "peer handshake failed");
                    return links.lost(addr, id);
                }
            }
        }
    };
    let mut hello = Vec::new();
    encode_peer_hello(&mut hello, &links.hello);
    if let Some(session) = session.as_mut() {
        add_tag_room(&mut hello, 0);
        if session.seal_frames(&mut hello).is_err() {
            return links.lost(addr, id);
        }
    }
    if stream.write_all(&hello).await.is_err() {
        return links.lost(addr, id);
    }
    let mut batch = Zeroizing::new(Vec::new());
    loop {
        if pending.borrow().is_empty() {
            let nudged =
                futures_lite::future::or(async { woken.recv().await.map(|()| true) }, async {
                    glommio::timer::sleep(OUTBOUND_IDLE).await;
                    Some(false)
                })
                .await;
            match nudged {
                // The link was dropped (cut off): stop.
                None => return,
                Some(false) => {
                    if links.idle(addr, id) {
                        return;
                    }
                    continue;
                }
                Some(true) => {}
            }
        }
        std::mem::swap(&mut batch, &mut *pending.borrow_mut());
        if batch.is_empty() {
            continue;
        }
        if let Some(session) = session.as_mut() {
            // Sealed in place, in the order they go on the wire (each frame's number).
            if let Err(error) = session.seal_frames(&mut batch) {
                tracing::warn!(peer = %addr, %error, "sealing failed: connection dropped");
                return links.lost(addr, id);
            }
        }
        links.writing.set(links.writing.get() + 1);
        // A link cut off while its write stalls (a peer that stopped reading) ends at once:
        // its batch is freed now, not when the write timeout gives up.
        let written =
            futures_lite::future::or(async { stream.write_all(&batch).await.is_ok() }, async {
                while woken.recv().await.is_some() {}
                false
            })
            .await;
        links.writing.set(links.writing.get() - 1);
        if !written {
            return links.lost(addr, id);
        }
        wipe_and_clear(&mut batch, 1024 * 1024);
    }
}

/// How [`read_frame`]'s error for a frame over its limit begins.
const FRAME_TOO_LARGE: &str = "frame too large";

/// Reads one length-prefixed frame of at most `max` bytes, growing the buffer only as bytes
/// arrive.
pub(super) async fn read_frame(
    stream: &mut TcpStream,
    max: usize,
) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|e| e.to_string())?;
    let len = u32::from_le_bytes(header) as usize;
    if len > max {
        return Err(format!(
            "{FRAME_TOO_LARGE}: {len} bytes, over the limit of {max}"
        ));
    }
    let mut payload = Zeroizing::new(Vec::new());
    while payload.len() < len {
        let from = payload.len();
        let step = (len - from).min(READ_STEP_BYTES);
        reserve_wiping(&mut payload, step);
        payload.resize(from + step, 0);
        stream
            .read_exact(&mut payload[from..])
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(payload)
}

/// Makes the frame that starts at `at` (the last in `frames`) a frame with room for its
/// seal's tag: zeros after it, counted in its length prefix.
fn add_tag_room(frames: &mut Vec<u8>, at: usize) {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    header.copy_from_slice(&frames[at..at + FRAME_HEADER_BYTES]);
    let len = u32::from_le_bytes(header) as usize + TAG_BYTES;
    frames[at..at + FRAME_HEADER_BYTES].copy_from_slice(&(len as u32).to_le_bytes());
    reserve_wiping(frames, TAG_BYTES);
    frames.extend_from_slice(&[0u8; TAG_BYTES]);
}

/// The plaintext of a frame's payload: opened in place on a sealed link, as it is on an
/// open one.
fn open<'a>(
    session: &mut Option<SealedSession>,
    payload: &'a mut [u8],
) -> Result<&'a [u8], String> {
    match session {
        Some(session) => session.open_frame(payload).map(|plain| &*plain),
        None => Ok(payload),
    }
}

fn bump(counter: &Cell<u64>) {
    counter.set(counter.get() + 1);
}
