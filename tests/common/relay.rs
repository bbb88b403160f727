//! A fault relay for peer links (this kernel has no `netem`): a TCP relay that sits in front of
//! one node's peer port. The node advertises the relay's address, so every peer's messages to
//! it pass through here, frame by frame. On command the relay adds latency, stalls (holds
//! frames back without closing), drops every connection, partitions the node from chosen
//! peers (closes their connections and refuses new ones, by the address in their hello),
//! drops frames a predicate picks, flips a byte in (or garbles) the next frame, replays a
//! recorded frame, or reads no faster than a set bandwidth (a slow link or a slow node: what
//! it cannot take backs up into the sender's queue).
//!
//! Plain threads and blocking sockets: a test's relay carries a few connections at most.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use repram::cluster::message::Message;
use repram::wire::peer::{decode_peer, decode_peer_hello, PeerLimits};

/// Picks frames to drop, by the message they carry.
pub type FramePredicate = Box<dyn Fn(&Message) -> bool + Send>;

/// A frame larger than this ends the relayed connection (no node sends one).
const FRAME_BYTES_MAX: usize = 64 << 20;

#[derive(Default)]
struct Faults {
    latency: Duration,
    /// Bytes a second each relayed connection reads at most; `None`: as fast as they come.
    bandwidth: Option<u64>,
    /// Peers cut off from the node behind the relay, by advertised address.
    blocked: HashSet<SocketAddr>,
    /// Every peer is cut off.
    blocked_all: bool,
    drop_frames: Option<FramePredicate>,
    flip_next: bool,
    garble_next: bool,
    /// The last frame of each kind seen, for replay.
    recorded: Vec<(String, Vec<u8>)>,
}

struct Link {
    id: u64,
    /// The caller's advertised address, from its hello (`None` on a sealed link, whose hello
    /// the relay cannot read).
    from: Option<SocketAddr>,
    /// Frames to write towards the node (with when they may leave).
    frames: mpsc::Sender<(Instant, Vec<u8>)>,
    streams: [TcpStream; 2],
}

struct Shared {
    upstream: Mutex<SocketAddr>,
    faults: Mutex<Faults>,
    links: Mutex<Vec<Link>>,
    stalled: AtomicBool,
    stopped: AtomicBool,
    next_link: AtomicU64,
    /// Frames passed on towards the node and frames dropped, for tests to check the relay
    /// was in the path.
    frames_passed: AtomicU64,
    frames_dropped: AtomicU64,
}

pub struct Relay {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Relay {
    /// A relay on a free 127.0.0.1 port in front of the peer port `upstream`.
    pub fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        Self::on(listener, upstream)
    }

    /// A relay on `listener` (bound before the node behind it starts, so the node can
    /// advertise its address) in front of the peer port `upstream`.
    pub fn on(listener: TcpListener, upstream: SocketAddr) -> Relay {
        let addr = listener.local_addr().expect("relay address");
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            faults: Mutex::default(),
            links: Mutex::default(),
            stalled: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            next_link: AtomicU64::new(0),
            frames_passed: AtomicU64::new(0),
            frames_dropped: AtomicU64::new(0),
        });
        let accepting = shared.clone();
        std::thread::spawn(move || accept(listener, accepting));
        Relay { addr, shared }
    }

    /// New connections go to `upstream` from now on (a node restarted on another port).
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.shared.upstream.lock().expect("upstream") = upstream;
        self.drop_connections();
    }

    /// Every frame waits `latency` before it is passed on.
    pub fn set_latency(&self, latency: Duration) {
        self.faults().latency = latency;
    }

    /// Each connection towards the node reads at most `bytes_per_second` from now on (`None`:
    /// no limit).
    pub fn set_bandwidth(&self, bytes_per_second: Option<u64>) {
        self.faults().bandwidth = bytes_per_second.map(|b| b.max(1));
    }

    /// Holds every frame back (connections stay open) until `resume`.
    pub fn stall(&self) {
        self.shared.stalled.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.shared.stalled.store(false, Ordering::SeqCst);
    }

    /// Closes every relayed connection now (callers may connect again).
    pub fn drop_connections(&self) {
        let links = std::mem::take(&mut *self.shared.links.lock().expect("links"));
        for link in links {
            link.close();
        }
    }

    /// Cuts the node off from the peers at `from`: their connections close and new ones are
    /// refused, until `heal`.
    pub fn block(&self, from: &[SocketAddr]) {
        self.faults().blocked.extend(from.iter().copied());
        self.close_blocked();
    }

    /// Cuts the node off from every peer until `heal`.
    pub fn partition(&self) {
        self.faults().blocked_all = true;
        self.close_blocked();
    }

    pub fn heal(&self) {
        let mut faults = self.faults();
        faults.blocked.clear();
        faults.blocked_all = false;
    }

    /// Drops (does not pass on) every frame whose message `predicate` picks.
    pub fn drop_frames(&self, predicate: FramePredicate) {
        self.faults().drop_frames = Some(predicate);
    }

    pub fn pass_all_frames(&self) {
        self.faults().drop_frames = None;
    }

    /// Flips one byte in the payload of the next frame passed on.
    pub fn flip_next_byte(&self) {
        self.faults().flip_next = true;
    }

    /// Inverts every payload byte of the next frame passed on (garbage no node can read).
    pub fn garble_next_frame(&self) {
        self.faults().garble_next = true;
    }

    /// Sends the last recorded frame of `kind` (see `Message::kind`; `"sealed"` for a sealed
    /// link's) to the node again, on every open connection; `false` if none was recorded or
    /// no connection is open.
    pub fn replay(&self, kind: &str) -> bool {
        let frame = {
            let faults = self.faults();
            faults
                .recorded
                .iter()
                .find(|(k, _)| k == kind)
                .map(|(_, f)| f.clone())
        };
        let Some(frame) = frame else {
            return false;
        };
        let links = self.shared.links.lock().expect("links");
        let mut sent = false;
        for link in links.iter() {
            sent |= link.frames.send((Instant::now(), frame.clone())).is_ok();
        }
        sent
    }

    pub fn frames_passed(&self) -> u64 {
        self.shared.frames_passed.load(Ordering::SeqCst)
    }

    pub fn frames_dropped(&self) -> u64 {
        self.shared.frames_dropped.load(Ordering::SeqCst)
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.shared.faults.lock().expect("faults")
    }

    fn close_blocked(&self) {
        let faults = self.faults();
        let mut links = self.shared.links.lock().expect("links");
        links.retain(|link| {
            let cut = faults.blocked_all || link.from.is_some_and(|f| faults.blocked.contains(&f));
            if cut {
                link.close();
            }
            !cut
        });
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.drop_connections();
        // Wake the accept loop so it sees the stop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

impl Link {
    fn close(&self) {
        for stream in &self.streams {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn accept(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let shared = shared.clone();
        std::thread::spawn(move || {
            let _ = relay_connection(stream, &shared);
        });
    }
}

/// Reads one length-prefixed frame (prefix included); `None` at a clean end.
fn read_frame(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; 4];
    match stream.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(header) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    let mut frame = vec![0u8; 4 + len];
    frame[..4].copy_from_slice(&header);
    stream.read_exact(&mut frame[4..])?;
    Ok(Some(frame))
}

fn relay_connection(mut inbound: TcpStream, shared: &Arc<Shared>) -> io::Result<()> {
    inbound.set_nodelay(true)?;
    let Some(hello) = read_frame(&mut inbound)? else {
        return Ok(());
    };
    // A sealed link opens with a handshake the relay cannot read: it is relayed all the same.
    let caller = decode_peer_hello(&hello[4..]).ok().map(|h| h.addr);
    {
        let faults = shared.faults.lock().expect("faults");
        if faults.blocked_all || caller.is_some_and(|c| faults.blocked.contains(&c)) {
            return Ok(()); // partitioned: refused
        }
    }
    let to = *shared.upstream.lock().expect("upstream");
    let mut upstream = TcpStream::connect(to)?;
    upstream.set_nodelay(true)?;
    upstream.write_all(&hello)?;
    let (frames, queued) = mpsc::channel::<(Instant, Vec<u8>)>();
    let id = shared.next_link.fetch_add(1, Ordering::SeqCst);
    shared.links.lock().expect("links").push(Link {
        id,
        from: caller,
        frames: frames.clone(),
        streams: [inbound.try_clone()?, upstream.try_clone()?],
    });

    // Towards the node: written in order, each frame once its time has come.
    let writer = {
        let shared = shared.clone();
        let mut upstream = upstream.try_clone()?;
        std::thread::spawn(move || {
            for (due, frame) in queued {
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                while shared.stalled.load(Ordering::SeqCst)
                    && !shared.stopped.load(Ordering::SeqCst)
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if upstream.write_all(&frame).is_err() {
                    return;
                }
            }
        })
    };
    // Back towards the caller: whatever the node writes on this connection, as it comes.
    {
        let mut from_node = upstream.try_clone()?;
        let mut to_caller = inbound.try_clone()?;
        std::thread::spawn(move || {
            let _ = io::copy(&mut from_node, &mut to_caller);
            let _ = to_caller.shutdown(Shutdown::Both);
        });
    }
    let limits = PeerLimits::default();
    let mut pause = Duration::ZERO;
    while let Ok(Some(mut frame)) = read_frame(&mut inbound) {
        let due = {
            let mut faults = shared.faults.lock().expect("faults");
            let decoded = decode_peer(&frame[4..], &limits);
            // Frames of a sealed link are recorded as kind "sealed".
            let kind = decoded
                .as_ref()
                .map_or("sealed".to_string(), |m| m.kind().to_string());
            match faults.recorded.iter_mut().find(|(k, _)| *k == kind) {
                Some(slot) => slot.1.clone_from(&frame),
                None => faults.recorded.push((kind, frame.clone())),
            }
            if let Ok(msg) = decoded {
                if faults.drop_frames.as_ref().is_some_and(|pick| pick(&msg)) {
                    shared.frames_dropped.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
            }
            if faults.flip_next && frame.len() > 4 {
                faults.flip_next = false;
                let at = 4 + (frame.len() - 4) / 2;
                frame[at] ^= 0xff;
            }
            if faults.garble_next {
                faults.garble_next = false;
                for byte in &mut frame[4..] {
                    *byte ^= 0xff;
                }
            }
            if let Some(bandwidth) = faults.bandwidth {
                // Not reading meanwhile is what makes the sender's queue grow.
                pause = Duration::from_secs_f64(frame.len() as f64 / bandwidth as f64);
            }
            Instant::now() + faults.latency
        };
        if !pause.is_zero() {
            std::thread::sleep(std::mem::take(&mut pause));
        }
        shared.frames_passed.fetch_add(1, Ordering::SeqCst);
        if frames.send((due, frame)).is_err() {
            break;
        }
    }
    // The caller left (or was cut off): close towards the node once queued frames are out.
    drop(frames);
    shared
        .links
        .lock()
        .expect("links")
        .retain(|link| link.id != id);
    let _ = writer.join();
    let _ = upstream.shutdown(Shutdown::Both);
    let _ = inbound.shutdown(Shutdown::Both);
    Ok(())
}

/// Starts a node (`repram serve ARGS`, joining through `root` if given) behind a new relay:
/// it advertises the relay's address, so every peer's messages to it pass through the relay.
pub fn node_behind_relay_with(
    root: Option<&super::NodeProcess>,
    args: &[&str],
) -> (super::NodeProcess, Relay) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
    let advertise = listener.local_addr().expect("relay address").to_string();
    let mut all = vec!["--peer-advertise", advertise.as_str()];
    let root_addr = root.map(|r| r.peer.to_string());
    if let Some(root_addr) = &root_addr {
        all.extend(["--root", root_addr.as_str()]);
    }
    all.extend_from_slice(args);
    let node = super::NodeProcess::start(&all);
    let relay = Relay::on(listener, node.peer_listen);
    (node, relay)
}
