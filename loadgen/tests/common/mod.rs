//! Helpers shared by the loadgen's integration tests: real `redis-server` and `memcached`
//! started on free 127.0.0.1 ports (and killed on drop), a glommio executor for async
//! checks, run plans with test-sized bounds, and scratch file paths.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use repram_loadgen::run::RunPlan;
use repram_loadgen::schedule::Pace;
use repram_loadgen::target::{TargetKind, TargetSpec};
use repram_loadgen::workload::{KeyDistribution, ValueSize, Workload};

/// A server process this test started; killed when dropped.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

fn require(binary: &str, package: &str) {
    let found = Command::new(binary)
        .arg(if binary == "memcached" {
            "-V"
        } else {
            "--version"
        })
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "{binary} is not installed: this test drives a real {binary}. \
         Install it with `apt-get install -y {package}` (.ci/run does)."
    );
}

/// Starts `binary` with the args `args_for(port)` and waits (at most 10 s) until it accepts.
fn start(binary: &str, package: &str, args_for: impl Fn(u16) -> Vec<String>) -> ServerProcess {
    require(binary, package);
    for _attempt in 0..3 {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut child = Command::new(binary)
            .args(args_for(port))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let ready_by = Instant::now() + Duration::from_secs(10);
        while Instant::now() < ready_by {
            if let Ok(Some(_)) = child.try_wait() {
                break; // exited: the port was taken meanwhile; try another
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return ServerProcess { child, addr };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("{binary} did not start listening on 127.0.0.1 within 10 s (three ports tried)");
}

/// redis-server without persistence, on a free port.
pub fn start_redis() -> ServerProcess {
    start("redis-server", "redis-server", |port| {
        [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    })
}

/// memcached with one worker thread, on a free port.
pub fn start_memcached() -> ServerProcess {
    start("memcached", "memcached", |port| {
        let mut args: Vec<String> = [
            "-l",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "0",
            "-t",
            "1",
            "-m",
            "64",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // SAFETY: geteuid only reads this process's credentials.
        if unsafe { libc::geteuid() } == 0 {
            // memcached refuses to run as root unless told which user to be.
            args.extend(["-u".to_string(), "root".to_string()]);
        }
        args
    })
}

/// Runs `body` on a fresh glommio executor (64 KiB of io_uring memory, unpinned).
pub fn on_executor<T>(body: impl std::future::Future<Output = T> + 'static) -> T {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(64 * 1024)
        .make()
        .expect("an io_uring executor")
        .run(body)
}

pub fn spec(kind: TargetKind, addr: SocketAddr) -> TargetSpec {
    TargetSpec {
        kind,
        addr,
        shard_aware: true,
        connect_timeout: Duration::from_secs(2),
        token: None,
        tls: None,
    }
}

/// A small closed-loop plan: 1 thread, 2 connections, pipeline 2, 1 s, 200 ms timeouts.
pub fn small_plan(kind: TargetKind, addr: SocketAddr) -> RunPlan {
    RunPlan {
        label: String::new(),
        target: TargetSpec {
            connect_timeout: Duration::from_millis(300),
            ..spec(kind, addr)
        },
        workload: Workload {
            keys: 1000,
            distribution: KeyDistribution::Uniform,
            read_ratio: 0.9,
            value_size: ValueSize {
                min_bytes: 100,
                max_bytes: 100,
            },
            ttl: Duration::from_secs(60),
        },
        threads: 1,
        cpus: Vec::new(),
        connections_per_thread: 2,
        pipeline_depth: 2,
        pace: Pace::Closed,
        duration: Duration::from_secs(1),
        requests_max: None,
        preload: false,
        preload_time_limit: Duration::from_secs(10),
        request_timeout: Duration::from_millis(200),
        server_pid: None,
        progress: false,
        seed: 1,
    }
}

/// A fresh scratch directory for this test.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("repram-loadgen-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}
