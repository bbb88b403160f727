//! Captures real traffic into the fuzz corpora: a client session (writes, reads, misses,
//! deletes, TTL changes, pipelined lanes, stats) and every peer link of a two-node network
//! that bootstraps and reconciles (join, attach, dump, heartbeats, pushes, sync rounds with
//! filters, pulls), recorded by TCP proxies in front of each port.
//!
//! Writes `fuzz/corpus/client_frame/captured-*`, `fuzz/corpus/peer_frame/captured-*` and
//! `fuzz/corpus/cluster_inputs/captured-*`. Run from the repository root:
//! `cargo run --release --example capture_corpus`.

use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use repram::client::{BlockingClient, ClientOptions};
use repram::config::ServeArgs;
use repram::wire::peer::{decode_peer, PeerLimits};
use repram::wire::{frame_len, FRAME_HEADER_BYTES};

/// Bytes kept per recorded connection.
const RECORD_BYTES_MAX: usize = 4 << 20;

/// What one proxied connection sent upstream.
type Recording = Arc<Mutex<Vec<u8>>>;

/// A recording proxy: what each accepted connection sends upstream is kept; while `open` is
/// false, connections are refused (closed at once).
struct Proxy {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<Recording>>>,
}

impl Proxy {
    fn start(target: SocketAddr, open: bool) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let open = Arc::new(AtomicBool::new(open));
        let streams: Arc<Mutex<Vec<Recording>>> = Arc::default();
        let (is_open, kept) = (open.clone(), streams.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !is_open.load(Ordering::Relaxed) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let record = Arc::new(Mutex::new(Vec::new()));
                kept.lock().expect("streams").push(record.clone());
                pipe(
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                    Some(record),
                );
                pipe(server, client, None);
            }
        });
        Proxy {
            addr,
            open,
            streams,
        }
    }

    fn recorded(&self) -> Vec<Vec<u8>> {
        let streams = self.streams.lock().expect("streams");
        streams
            .iter()
            .map(|s| s.lock().expect("stream").clone())
            .collect()
    }
}

/// Copies `from` to `to` on a thread of its own, keeping what passes in `record`.
fn pipe(mut from: TcpStream, mut to: TcpStream, record: Option<Recording>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
            if let Some(record) = &record {
                let mut kept = record.lock().expect("record");
                let room = RECORD_BYTES_MAX.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The whole frames of a recorded stream (payloads, without their headers).
fn frames(stream: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Ok(Some(len)) = frame_len(&stream[at..], usize::MAX) {
        let Some(payload) = stream.get(at + FRAME_HEADER_BYTES..at + FRAME_HEADER_BYTES + len)
        else {
            break;
        };
        out.push(payload);
        at += FRAME_HEADER_BYTES + len;
    }
    out
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = std::path::Path::new("fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    std::fs::write(dir.join(name), bytes).expect("corpus file");
}

fn connect(addr: SocketAddr) -> BlockingClient {
    BlockingClient::connect(&addr.to_string(), &ClientOptions::default()).expect("connect")
}

fn main() {
    // Each node is reached only through its proxy: B's root is A's proxy, and each advertises
    // its proxy, so every peer link in either direction passes one.
    let (a_peer, b_peer) = (free_port(), free_port());
    let a_proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], a_peer)), false);
    let b_proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], b_peer)), true);
    let node = |peer: u16, advertise: SocketAddr, roots: Vec<String>| {
        let config = ServeArgs {
            listen: Some("127.0.0.1:0".into()),
            shards: Some(2),
            memory_budget: Some("64MiB".into()),
            peer_listen: Some(format!("127.0.0.1:{peer}")),
            peer_advertise: Some(advertise.to_string()),
            roots,
            ..Default::default()
        }
        .resolve()
        .expect("node config");
        repram::node::start(config).expect("start node")
    };
    let a = node(a_peer, a_proxy.addr, Vec::new());
    let b = node(b_peer, b_proxy.addr, vec![a_proxy.addr.to_string()]);
    let client_proxy = Proxy::start(a.client_addr, true);

    // A client session on A, before B can join: writes of every size, reads that hit and
    // miss, deletes, TTL changes, stats and topology, then pipelined lanes.
    // Through the shared port (not shard-aware), so the whole session passes the proxy.
    let options = ClientOptions {
        shard_aware: false,
        ..ClientOptions::default()
    };
    let on_a = BlockingClient::connect(&client_proxy.addr.to_string(), &options).expect("connect");
    let on_b = connect(b.client_addr);
    for i in 0..300u32 {
        let value = vec![b'a' + (i % 26) as u8; [1, 10, 100, 1_000, 10_000][i as usize % 5]];
        let ttl = Duration::from_secs(60 + u64::from(i % 7) * 30);
        on_a.put(format!("a-{i}").as_bytes(), &value, ttl)
            .expect("put on A");
        on_b.put(format!("b-{i}").as_bytes(), &value, ttl)
            .expect("put on B");
    }
    for i in 0..100u32 {
        let _ = on_a.get(format!("a-{i}").as_bytes());
        let _ = on_a.get_local(format!("none-{i}").as_bytes());
    }
    for i in 0..20u32 {
        let _ = on_a.delete(format!("a-{i}").as_bytes());
    }
    let _ = on_a.stats();
    let _ = on_a.topology();
    on_a.run(async {
        let client = on_a.client();
        let lanes = (0..16u32).map(|lane| async move {
            for i in 0..50u32 {
                let key = format!("lane-{lane}-{i}");
                let _ = client
                    .put(key.as_bytes(), b"pipelined", Duration::from_secs(120))
                    .await;
                let _ = client.get(key.as_bytes()).await;
            }
        });
        let mut lanes: Vec<_> = lanes.map(Box::pin).collect();
        std::future::poll_fn(|cx| {
            lanes.retain_mut(|f| f.as_mut().poll(cx).is_pending());
            if lanes.is_empty() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await
    });

    // B joins: it takes A's dump, and sync rounds (filters) bring B's earlier writes to A.
    a_proxy.open.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let held_on_a = (0..300u32)
            .filter(|i| matches!(on_a.get_local(format!("b-{i}").as_bytes()), Ok(Some(_))))
            .count();
        let held_on_b = (20..300u32)
            .filter(|i| matches!(on_b.get_local(format!("a-{i}").as_bytes()), Ok(Some(_))))
            .count();
        if held_on_a == 300 && held_on_b == 280 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Reads on A of keys only B holds now pull them; writes on both push.
    for i in 0..50u32 {
        on_b.put(
            format!("late-{i}").as_bytes(),
            b"late",
            Duration::from_secs(60),
        )
        .expect("put on B");
        let _ = on_a.get(format!("b-{i}").as_bytes());
        on_a.put(
            format!("after-{i}").as_bytes(),
            b"after",
            Duration::from_secs(60),
        )
        .expect("put on A");
    }
    std::thread::sleep(Duration::from_secs(6));
    drop((on_a, on_b));

    // Client streams: cut at frame boundaries into inputs of at most 16 KiB, a dozen at most
    // (the large values take the most bytes, not the most paths).
    let mut written = HashMap::<&str, usize>::new();
    for (c, stream) in client_proxy.recorded().iter().enumerate() {
        let mut at = 0;
        let mut part = 0;
        while at < stream.len() {
            let mut end = at;
            while let Ok(Some(len)) = frame_len(&stream[end..], usize::MAX) {
                let next = end + FRAME_HEADER_BYTES + len;
                if next > stream.len() || (next - at > 16 * 1024 && end > at) {
                    break;
                }
                end = next;
            }
            if end == at {
                break;
            }
            if part % 4 == 0 && written.get("client_frame").copied().unwrap_or(0) < 12 {
                write(
                    "client_frame",
                    &format!("captured-{c}-{part}"),
                    &stream[at..end],
                );
                *written.entry("client_frame").or_default() += 1;
            }
            at = end;
            part += 1;
        }
    }
    // Peer streams: each message kind's frames (three of each at most) for the frame decoder,
    // and each link's whole sequence of messages for the state machine.
    let limits = PeerLimits::default();
    let mut per_kind = HashMap::<usize, usize>::new();
    for (p, stream) in a_proxy
        .recorded()
        .into_iter()
        .chain(b_proxy.recorded())
        .enumerate()
    {
        let frames = frames(&stream);
        let mut sequence = vec![0u8];
        for (f, payload) in frames.iter().enumerate() {
            let kind = decode_peer(payload, &limits).map_or(usize::MAX, |m| m.kind_index());
            let seen = per_kind.entry(kind).or_default();
            // Large dump chunks add bytes, not paths: frames up to 64 KiB are kept.
            if *seen < 3 && payload.len() <= 64 * 1024 {
                *seen += 1;
                write("peer_frame", &format!("captured-{p}-{f}"), payload);
                *written.entry("peer_frame").or_default() += 1;
            }
            if sequence.len() + payload.len() < 64 * 1024 && payload.len() <= usize::from(u16::MAX)
            {
                sequence.extend_from_slice(&[0, 1]);
                sequence.extend_from_slice(&(payload.len() as u16).to_le_bytes());
                sequence.extend_from_slice(payload);
                // A clock step of a second between messages, as heartbeats are spaced.
                sequence.extend_from_slice(&[3, 20]);
            }
        }
        if frames.len() > 1 {
            write("cluster_inputs", &format!("captured-link-{p}"), &sequence);
            *written.entry("cluster_inputs").or_default() += 1;
        }
    }
    a.stop();
    b.stop();
    for (target, count) in written {
        println!("{target}: {count} captured inputs");
    }
}
