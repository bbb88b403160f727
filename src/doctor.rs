//! `repram doctor`: checks that this machine can run a node (io_uring usable, locked-memory
//! limit high enough) and says plainly what to change if not.
//!
//! Owns only these checks; it starts no node. `.ci/run` runs it before the tests.

use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};

/// glommio refuses to start an executor under a locked-memory limit below this.
pub const MEMLOCK_BYTES_MIN: u64 = 512 * 1024;
/// Locked memory one executor registers with io_uring: its I/O memory, once in each of
/// glommio's three rings (an unprivileged user's io_uring charges add up across processes).
pub const MEMLOCK_BYTES_PER_EXECUTOR: u64 = 3 * crate::node::EXECUTOR_IO_MEMORY_BYTES as u64;

/// One finding: whether it is fine, and what it says.
pub struct Finding {
    pub ok: bool,
    pub message: String,
}

/// Runs every check for a node of `shards` shards.
pub fn check(shards: usize) -> Vec<Finding> {
    let mut findings = vec![memlock(shards)];
    if let Ok(text) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        let value = text.trim();
        findings.push(Finding {
            ok: value == "0",
            message: match value {
                "0" => "io_uring is enabled (kernel.io_uring_disabled = 0)".into(),
                other => format!(
                    "kernel.io_uring_disabled = {other}: io_uring is off or restricted; \
                     set it to 0 (sysctl -w kernel.io_uring_disabled=0)"
                ),
            },
        });
    }
    findings.push(io_uring_echo());
    findings
}

fn memlock(shards: usize) -> Finding {
    let needed = MEMLOCK_BYTES_MIN.max(MEMLOCK_BYTES_PER_EXECUTOR * (shards as u64 + 1));
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return Finding {
            ok: false,
            message: "cannot read the locked-memory limit".into(),
        };
    }
    let current = limit.rlim_cur;
    let ok = current == libc::RLIM_INFINITY || current >= needed;
    let shown = if current == libc::RLIM_INFINITY {
        "unlimited".to_string()
    } else {
        format!("{} KiB", current / 1024)
    };
    Finding {
        ok,
        message: if ok {
            format!(
                "locked-memory limit {shown} covers {shards} shards (needs {} KiB)",
                needed / 1024
            )
        } else {
            format!(
                "locked-memory limit {shown} is below the {} KiB that {shards} shards need; \
                 raise it (ulimit -l {}, or LimitMEMLOCK= in a systemd unit)",
                needed / 1024,
                needed / 1024
            )
        },
    }
}

/// Starts an io_uring executor and echoes a few bytes over TCP on 127.0.0.1.
fn io_uring_echo() -> Finding {
    let outcome = std::thread::spawn(|| -> Result<(), String> {
        let executor = LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(64 * 1024)
            .make()
            .map_err(|e| format!("cannot start an io_uring executor: {e}"))?;
        executor.run(async {
            let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            let server = glommio::spawn_local(async move {
                let mut stream = listener.accept().await.map_err(|e| e.to_string())?;
                let mut buf = [0u8; 4];
                stream
                    .read_exact(&mut buf)
                    .await
                    .map_err(|e| e.to_string())?;
                stream.write_all(&buf).await.map_err(|e| e.to_string())
            });
            let mut client = TcpStream::connect_timeout(addr, Duration::from_secs(5))
                .await
                .map_err(|e| e.to_string())?;
            client.write_all(b"ping").await.map_err(|e| e.to_string())?;
            let mut back = [0u8; 4];
            client
                .read_exact(&mut back)
                .await
                .map_err(|e| e.to_string())?;
            server.await?;
            if &back == b"ping" {
                Ok(())
            } else {
                Err("the echo came back altered".into())
            }
        })
    })
    .join()
    .unwrap_or_else(|_| Err("the io_uring check panicked".into()));
    match outcome {
        Ok(()) => Finding {
            ok: true,
            message: "io_uring works: a TCP echo on 127.0.0.1 went through glommio".into(),
        },
        Err(e) => Finding {
            ok: false,
            message: format!("io_uring does not work here: {e}"),
        },
    }
}
