//! Idle connections: how long each client connection may wait on its client, and one sweep
//! per shard that closes those past their time.
//!
//! A per-read socket timeout would do the same, but glommio keeps read timeouts in a timer
//! map that every pending read inserts into and removes from: a GET at pipeline 1 cost 7,290
//! server instructions with it and 6,323 without (callgrind). Here a request costs a store
//! into a cell, and the shard walks its connections a few times a second. Owns the deadlines and the sweep; it never reads or writes a connection's bytes.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::RawFd;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use crate::buffers::RecvBuffer;

/// The sweep runs this often at most, and at least twenty times per idle timeout (so a
/// connection is closed within 5% of its timeout, or 250 ms, after it).
const SWEEP_INTERVAL_MAX: Duration = Duration::from_millis(250);
const SWEEP_INTERVAL_MIN: Duration = Duration::from_millis(10);

/// One connection's deadline, as the sweep sees it.
struct IdleClock {
    fd: RawFd,
    /// Past this the connection is closed; `None` while it is not waiting on its client.
    deadline: Cell<Option<Instant>>,
    /// The sweep shut the socket down; the connection task has not ended yet.
    shut: Cell<bool>,
    /// The shard's count of such connections (`IdleConnections::closing`).
    closing: Rc<Cell<usize>>,
}

/// The connections of one shard that have an idle timeout.
#[derive(Default)]
pub(crate) struct IdleConnections {
    clocks: RefCell<Vec<Weak<IdleClock>>>,
    /// Connections shut down by the sweep whose tasks have not ended yet.
    closing: Rc<Cell<usize>>,
}

impl IdleConnections {
    /// How often the sweep must run for `idle`.
    pub(crate) fn sweep_interval(idle: Duration) -> Duration {
        (idle / 20).clamp(SWEEP_INTERVAL_MIN, SWEEP_INTERVAL_MAX)
    }

    /// Closes (both ways) every connection past its deadline, and forgets those that ended;
    /// returns how many it closed. A closed connection's pending read returns at once.
    pub(crate) fn sweep(&self, now: Instant) -> usize {
        let mut closed = 0;
        self.clocks.borrow_mut().retain(|clock| {
            let Some(clock) = clock.upgrade() else {
                return false;
            };
            if clock.deadline.get().is_some_and(|at| at <= now) {
                clock.deadline.set(None);
                if !clock.shut.replace(true) {
                    self.closing.set(self.closing.get() + 1);
                }
                // SAFETY: `clock` is alive, so the `ReadDeadline` holding it is, and that
                // lives inside a connection task that owns the socket `fd` for longer (the
                // deadline is dropped before the stream). This executor is single-threaded:
                // nothing closes the socket between the upgrade and this call. `shutdown`
                // only reads its integer arguments.
                unsafe { libc::shutdown(clock.fd, libc::SHUT_RDWR) };
                closed += 1;
            }
            true
        });
        closed
    }

    /// Connections the sweep has shut down whose tasks have not ended yet. They hold no slot
    /// under the connection limit: their client has already read the end of the stream and
    /// may connect again at once, before the task gets its turn to wake up and end.
    pub(crate) fn closing(&self) -> usize {
        self.closing.get()
    }

    fn register(&self, clock: &Rc<IdleClock>) {
        self.clocks.borrow_mut().push(Rc::downgrade(clock));
    }
}

/// How long a client may take before its connection is closed: an idle one, the idle timeout
/// between requests; one part-way through a request, the idle timeout from the last request it
/// completed (or from the read that began this one). So a client sending a byte a second,
/// which no read timeout alone would catch, is closed too.
pub(crate) struct ReadDeadline {
    idle: Option<Duration>,
    clock: Option<Rc<IdleClock>>,
    /// When the client last began or completed a request.
    progress_at: Instant,
    consumed_total: u64,
}

impl ReadDeadline {
    /// The deadline of the connection on socket `fd`, watched by `idle_connections`. Must be
    /// dropped before the socket is closed.
    pub(crate) fn new(idle: Option<Duration>, fd: RawFd, connections: &IdleConnections) -> Self {
        let clock = idle.map(|_| {
            let clock = Rc::new(IdleClock {
                fd,
                deadline: Cell::new(None),
                shut: Cell::new(false),
                closing: connections.closing.clone(),
            });
            connections.register(&clock);
            clock
        });
        ReadDeadline {
            idle,
            clock,
            progress_at: Instant::now(),
            consumed_total: 0,
        }
    }

    /// The connection is about to wait on its client (`now` is recent: the last read's
    /// return will do); an error when the client has used up its time on a request it has not
    /// finished.
    pub(crate) fn arm(&self, rx: &RecvBuffer, now: Instant) -> io::Result<()> {
        let (Some(idle), Some(clock)) = (self.idle, &self.clock) else {
            return Ok(());
        };
        let deadline = if rx.filled().is_empty() {
            now.max(self.progress_at) + idle
        } else {
            let deadline = self.progress_at + idle;
            if deadline <= now {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "a request was not completed within the idle timeout",
                ));
            }
            deadline
        };
        clock.deadline.set(Some(deadline));
        Ok(())
    }

    /// The connection waits on the node, not its client (answers from other shards).
    pub(crate) fn disarm(&self) {
        if let Some(clock) = &self.clock {
            clock.deadline.set(None);
        }
    }

    /// A read returned at `now`; `was_empty` says the buffer held nothing before it.
    pub(crate) fn read_done(&mut self, rx: &RecvBuffer, was_empty: bool, now: Instant) {
        if was_empty || rx.consumed_total() != self.consumed_total {
            self.progress_at = now;
            self.consumed_total = rx.consumed_total();
        }
    }
}

impl Drop for ReadDeadline {
    fn drop(&mut self) {
        // The task's end: a connection the sweep shut down stops counting as closing. The
        // caller releases its slot under the limit in the same turn, with no await between.
        if let Some(clock) = &self.clock {
            if clock.shut.get() {
                clock.closing.set(clock.closing.get().saturating_sub(1));
            }
        }
    }
}

/// Sweeps `connections` for as long as the shard runs.
pub(crate) async fn sweep_loop(connections: Rc<IdleConnections>, idle: Duration) {
    let interval = IdleConnections::sweep_interval(idle);
    loop {
        glommio::timer::sleep(interval).await;
        let closed = connections.sweep(Instant::now());
        if closed > 0 {
            tracing::debug!(closed, "idle connections closed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (
        std::os::unix::net::UnixStream,
        std::os::unix::net::UnixStream,
    ) {
        std::os::unix::net::UnixStream::pair().expect("socket pair")
    }

    #[test]
    fn a_connection_past_its_deadline_is_shut_down_and_one_within_it_is_not() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let connections = IdleConnections::default();
        let (idle_end, mut idle_peer) = pair();
        let (busy_end, busy_peer) = pair();
        let idle = Some(Duration::from_secs(2));
        let stale = ReadDeadline::new(idle, idle_end.as_raw_fd(), &connections);
        let fresh = ReadDeadline::new(idle, busy_end.as_raw_fd(), &connections);
        let rx = RecvBuffer::new(16, 16);
        let t0 = Instant::now();
        stale.arm(&rx, t0).expect("arm");
        fresh.arm(&rx, t0 + Duration::from_secs(1)).expect("arm");
        assert_eq!(connections.sweep(t0 + Duration::from_millis(1_999)), 0);
        assert_eq!(connections.closing(), 0);
        assert_eq!(connections.sweep(t0 + Duration::from_secs(2)), 1);
        assert_eq!(connections.closing(), 1, "shut, its task not ended");
        // The peer of the closed socket reads its end.
        let mut byte = [0u8; 1];
        assert_eq!(idle_peer.read(&mut byte).expect("read"), 0);
        // Closed once, not again; the other is still open.
        assert_eq!(connections.sweep(t0 + Duration::from_millis(2_500)), 0);
        busy_peer.set_nonblocking(true).expect("nonblocking");
        let still_open = (&busy_peer).read(&mut byte).map_err(|e| e.kind());
        assert_eq!(still_open, Err(io::ErrorKind::WouldBlock));
        assert_eq!(connections.closing(), 1, "shut once, counted once");
        drop((stale, fresh));
        assert_eq!(connections.closing(), 0, "the task ended");
        assert_eq!(connections.sweep(t0 + Duration::from_secs(9)), 0);
        assert!(
            connections.clocks.borrow().is_empty(),
            "ended ones are forgotten"
        );
    }

    #[test]
    fn a_request_begun_and_not_finished_within_the_idle_timeout_is_an_error() {
        let connections = IdleConnections::default();
        let (end, _peer) = pair();
        use std::os::fd::AsRawFd;
        let mut deadline =
            ReadDeadline::new(Some(Duration::from_secs(2)), end.as_raw_fd(), &connections);
        let mut rx = RecvBuffer::new(16, 16);
        let t0 = Instant::now();
        // One byte of a request arrives: the clock starts from that read.
        rx.make_room(4);
        rx.spare_mut()[0] = 1;
        rx.advance(1);
        deadline.read_done(&rx, true, t0);
        // More bytes, a byte at a time, do not move it.
        deadline.read_done(&rx, false, t0 + Duration::from_secs(1));
        assert!(deadline.arm(&rx, t0 + Duration::from_millis(1_500)).is_ok());
        let error = deadline
            .arm(&rx, t0 + Duration::from_secs(2))
            .expect_err("used up");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        deadline.disarm();
        assert_eq!(
            connections.sweep(t0 + Duration::from_secs(60)),
            0,
            "disarmed"
        );
    }
}
