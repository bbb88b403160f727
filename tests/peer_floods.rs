//! A hostile peer floods a node of a real two-node network with pull requests it never reads
//! the answers to, then with pushes far past the node's memory budget, then claims a frame
//! of a gigabyte: the node throttles the pulls, holds the pushes to its budget, cuts the link
//! at the gigabyte, its memory stays bounded, and its real peer keeps syncing with it.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{held_within, NodeProcess};
use repram::client::{BlockingClient, ClientOptions};
use repram::cluster::entry::Plaintext;
use repram::cluster::message::{Message, PEER_PROTOCOL_MAJOR};
use repram::cluster::{Entry, Version};
use repram::wire::peer::{encode_peer, encode_peer_hello, PeerHello};

const MIB: u64 = 1024 * 1024;
const BUDGET: u64 = 64 * MIB;
/// What one peer's queue of unsent messages may hold before the node drops the link.
const OUTBOUND_BYTES_MAX: u64 = 32 * MIB;

fn client(node: &NodeProcess) -> BlockingClient {
    BlockingClient::connect(&node.client.to_string(), &ClientOptions::default()).expect("connect")
}

fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// Writes `frames` to the node; false once the node has closed the link.
fn send(stream: &mut TcpStream, frames: &[u8]) -> bool {
    stream.write_all(frames).is_ok()
}

#[test]
fn a_flooding_peer_is_throttled_or_cut_off_and_the_real_peers_keep_syncing() {
    let budget = format!("{}MiB", BUDGET / MIB);
    let a = NodeProcess::start(&["--shards", "1", "--memory-budget", &budget]);
    let b = NodeProcess::start(&["--shards", "1", "--root", &a.peer.to_string()]);
    let (on_a, on_b) = (client(&a), client(&b));
    let formed = Instant::now() + Duration::from_secs(15);
    let mut joined = false;
    while !joined && Instant::now() < formed {
        on_b.put(b"joined", b"1", Duration::from_secs(120))
            .expect("put");
        joined = held_within(&on_a, b"joined", Duration::from_millis(500));
    }
    assert!(joined, "the two nodes never formed a network");
    on_a.put(b"big", &[9u8; 16 * 1024], Duration::from_secs(120))
        .expect("put the value the flood pulls");

    // Sample A's memory through the whole flood.
    let pid = a.pid();
    let done = Arc::new(AtomicBool::new(false));
    let before = resident_bytes(pid);
    let peak = Arc::new(AtomicU64::new(before));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                peak.fetch_max(resident_bytes(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // The flooder says its answers go to a listener that never accepts: what the node sends
    // it piles up unread.
    let sink = TcpListener::bind("127.0.0.1:0").expect("bind");
    let sink_addr: SocketAddr = sink.local_addr().expect("addr");
    let mut flooder = TcpStream::connect(a.peer).expect("connect to A's peer port");
    flooder
        .set_write_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut frames = Vec::new();
    encode_peer_hello(
        &mut frames,
        &PeerHello {
            major: PEER_PROTOCOL_MAJOR,
            node_id: 0xf100d,
            addr: sink_addr,
        },
    );
    assert!(send(&mut flooder, &frames));

    // 1. Pull requests for a 16 KiB value, 60,000 of them, as fast as the node reads.
    let key: Rc<[u8]> = Rc::from(&b"big"[..]);
    for batch in 0..60u64 {
        frames.clear();
        for i in 0..1_000 {
            let msg = Message::Pull {
                nonce: batch * 1_000 + i,
                key: key.clone(),
            };
            encode_peer(&mut frames, &msg);
        }
        assert!(
            send(&mut flooder, &frames),
            "pulls are throttled, not refused"
        );
    }

    // 2. Pushes of 100,000 fresh 1 KiB values in 10,000 frames: past A's 64 MiB budget.
    // They expire 10 s on, which gives A its room back for the check at the end.
    let value = Plaintext::shared(&[3u8; 1024]);
    let mut pushed_frames = 0;
    let expires_ms = now_ms() + 10_000;
    for batch in 0..10_000u64 {
        frames.clear();
        let entries = (0..10)
            .map(|i| Entry {
                key: Rc::from(format!("flood-{batch}-{i}").into_bytes()),
                value: Some(value.clone()),
                expires_ms,
                version: Version {
                    clock: now_ms() << 16,
                    node: 0xf100d,
                },
            })
            .collect();
        encode_peer(&mut frames, &Message::Push { entries, ack: None });
        if !send(&mut flooder, &frames) {
            break;
        }
        pushed_frames += 1;
    }

    // 3. A frame header claiming a gigabyte: the link is cut, nothing is reserved for it.
    let claimed = (1u32 << 30).to_le_bytes();
    let _ = flooder.write_all(&claimed);
    let _ = flooder.write_all(&[0u8; 4096]);
    let cut = Instant::now() + Duration::from_secs(10);
    let mut closed = false;
    while !closed && Instant::now() < cut {
        closed = flooder.write_all(&[0u8; 4096]).is_err();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(closed, "a gigabyte frame header ends the link");

    done.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let peak = peak.load(Ordering::Relaxed);
    // The network counters reach the stats within a moment.
    let mut stats = on_a.stats().expect("A answers");
    let counted = Instant::now() + Duration::from_secs(5);
    while stats.network.peer_frames_refused == 0 && Instant::now() < counted {
        std::thread::sleep(Duration::from_millis(100));
        stats = on_a.stats().expect("A answers");
    }
    let network = &stats.network;
    eprintln!(
        "pushed frames {pushed_frames}; A: resident {:.1} MiB before, peak {:.1} MiB, keys {}, store {} of {} MiB, \
         peers cut off {}, peer frames refused {}, entries received {}",
        before as f64 / MIB as f64,
        peak as f64 / MIB as f64,
        stats.total.keys,
        stats.total.used_bytes / MIB,
        stats.total.budget_bytes / MIB,
        network.peers_cut_off,
        network.peer_frames_refused,
        network.entries_received
    );
    assert_eq!(pushed_frames, 10_000, "the pushes were read");
    assert!(
        network.peer_frames_refused >= 1,
        "the gigabyte frame was refused"
    );
    // The pushes filled A to its budget and no further.
    assert!(
        stats.total.used_bytes <= stats.total.budget_bytes
            && stats.total.used_bytes > stats.total.budget_bytes * 8 / 10,
        "{} of {} bytes used",
        stats.total.used_bytes,
        stats.total.budget_bytes
    );
    // Growth: the budget and the usual slack, plus what the real peer B may have queued
    // (the writes A passes on to it: one batch being written and one waiting behind it).
    let limit = BUDGET * 12 / 10 + 64 * MIB + 2 * OUTBOUND_BYTES_MAX;
    let growth = peak.saturating_sub(before);
    assert!(
        growth <= limit,
        "A grew by {} MiB, over {} MiB",
        growth / MIB,
        limit / MIB
    );

    // The real peers still sync both ways (once the flood's values expire and give A room),
    // and A still serves its clients.
    let fresh = Instant::now() + Duration::from_secs(30);
    let mut both_ways = false;
    let mut round = 0;
    while !both_ways && Instant::now() < fresh {
        let (from_a, from_b) = (format!("after-a-{round}"), format!("after-b-{round}"));
        let wrote_a = on_a
            .put(from_a.as_bytes(), b"1", Duration::from_secs(60))
            .is_ok();
        on_b.put(from_b.as_bytes(), b"1", Duration::from_secs(60))
            .expect("B has room");
        both_ways = wrote_a
            && held_within(&on_b, from_a.as_bytes(), Duration::from_secs(2))
            && held_within(&on_a, from_b.as_bytes(), Duration::from_secs(2));
        round += 1;
        if !both_ways {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    assert!(both_ways, "A and B stopped syncing after the flood");
    let big = on_a.get(b"big").expect("A serves reads").expect("held");
    assert_eq!(big.bytes.len(), 16 * 1024);
    drop(sink);
}
